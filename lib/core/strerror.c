/*
 * Thread-safe error text: glibc's strerrordesc_np() returns static strings and touches no
 * shared buffer, unlike strerror().
 */
#include "core/strerror.h"

#include <limits.h>
#include <string.h>

const char *ioloop__strerror(int err)
{
    /* INT_MIN has no positive counterpart to negate to (nor a description). */
    const char *text = err == INT_MIN ? NULL : strerrordesc_np(err < 0 ? -err : err);

    return text != NULL ? text : "Unknown error";
}
