/*
 * Thread-safe error text: glibc's strerrordesc_np() returns static strings and touches no
 * shared buffer, unlike strerror().
 */
#include "core/strerror.h"

#include <string.h>

const char *ioloop__strerror(int err)
{
    const char *text = strerrordesc_np(err < 0 ? -err : err);

    return text != NULL ? text : "Unknown error";
}
