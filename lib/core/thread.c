/*
 * Starting the library's threads. A new thread inherits its creator's signal mask, so the
 * creator blocks everything around pthread_create() and puts its own mask back afterwards.
 */
#include "core/thread.h"

#include <signal.h>

int ioloop__thread_start(pthread_t *thread, const char *name, void *(*fn)(void *), void *arg)
{
    sigset_t all, old;
    int err;

    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    err = pthread_create(thread, NULL, fn, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err != 0)
        return -err;
    if (name != NULL)
        (void)pthread_setname_np(*thread, name);
    return 0;
}
