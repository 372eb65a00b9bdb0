/*
 * Signals. A loop receives signals through one signalfd, created by its first
 * ioloop_add_signal() and registered in its handler table like any fd. A process-wide registry
 * (the library's only global besides the logger) records which loop owns each signal, so a
 * signal has at most one handler however many loops there are.
 *
 * A signal reaches a signalfd only while it is blocked: ioloop_add_signal() blocks it in the
 * calling thread and remembers whether it was blocked before, so that ioloop_remove_signal()
 * and ioloop_free() can put the mask back as they found it.
 */
#include "core/loop.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/signalfd.h>
#include <unistd.h>

/* How many signals one read takes from the signalfd. */
#define READ_BATCH 16

struct ioloop_signal {
    ioloop_signal_fn fn;    /* NULL: this loop does not handle the signal */
    void *arg;
    bool was_blocked;       /* the mask before ioloop_add_signal() */
};

struct ioloop_signals {
    int sfd;
    sigset_t mask;          /* the signals this loop handles */
    struct ioloop_signal handlers[_NSIG];
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static ioloop_t *registry[_NSIG];

/* Signals glibc reserves for its own threads (between 31 and SIGRTMIN) must stay deliverable:
 * blocking them breaks thread cancellation and setuid. */
static bool valid_signo(int signo)
{
    return signo > 0 && signo < _NSIG && signo != SIGKILL && signo != SIGSTOP &&
           (signo < 32 || signo >= SIGRTMIN);
}

static void on_signalfd(ioloop_t *loop, int fd, int events, void *arg)
{
    struct signalfd_siginfo info[READ_BATCH];
    ssize_t n;

    do {
        n = read(fd, info, sizeof info);
        for (ssize_t i = 0; i < n / (ssize_t)sizeof info[0]; i++) {
            int signo = (int)info[i].ssi_signo;
            /* Re-read each time: an earlier handler may have removed this one. */
            struct ioloop_signal *h = &loop->signals->handlers[signo];

            if (signo > 0 && signo < _NSIG && h->fn != NULL)
                h->fn(loop, signo, h->arg);
        }
    } while (n == (ssize_t)sizeof info);
}

/* Creates the loop's signalfd, watching no signal yet. Called with the registry locked. */
static int signals_create(ioloop_t *loop)
{
    struct ioloop_signals *s = calloc(1, sizeof *s);
    int err;

    if (s == NULL)
        return -ENOMEM;
    sigemptyset(&s->mask);
    s->sfd = signalfd(-1, &s->mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (s->sfd < 0) {
        err = -errno;
        free(s);
        return err;
    }
    err = ioloop__handler_add(loop, s->sfd, IOLOOP_READ | IOLOOP__HANDLER_INTERNAL,
                              on_signalfd, NULL);
    if (err < 0) {
        close(s->sfd);
        free(s);
        return err;
    }
    loop->signals = s;
    return 0;
}

int ioloop_add_signal(ioloop_t *loop, int signo, ioloop_signal_fn fn, void *arg)
{
    sigset_t one, old;
    struct ioloop_signals *s;
    int err;

    if (loop == NULL || fn == NULL || !valid_signo(signo))
        return -EINVAL;
    if ((err = ioloop__check_thread(loop)) < 0)
        return err;

    pthread_mutex_lock(&registry_lock);
    if (registry[signo] != NULL) {
        err = -EEXIST;
        goto out;
    }
    if (loop->signals == NULL && (err = signals_create(loop)) < 0)
        goto out;
    s = loop->signals;

    sigemptyset(&one);
    sigaddset(&one, signo);
    pthread_sigmask(SIG_BLOCK, &one, &old);
    sigaddset(&s->mask, signo);
    if (signalfd(s->sfd, &s->mask, 0) < 0) {
        err = -errno;
        sigdelset(&s->mask, signo);
        if (!sigismember(&old, signo))
            pthread_sigmask(SIG_UNBLOCK, &one, NULL);
        goto out;
    }
    s->handlers[signo] = (struct ioloop_signal){fn, arg, sigismember(&old, signo) == 1};
    registry[signo] = loop;
out:
    pthread_mutex_unlock(&registry_lock);
    return err;
}

int ioloop_remove_signal(ioloop_t *loop, int signo)
{
    struct ioloop_signals *s;
    sigset_t one;
    int err;

    if (loop == NULL || !valid_signo(signo))
        return -EINVAL;
    if ((err = ioloop__check_thread(loop)) < 0)
        return err;

    pthread_mutex_lock(&registry_lock);
    if (registry[signo] != loop) {
        pthread_mutex_unlock(&registry_lock);
        return -ENOENT;
    }
    s = loop->signals;
    registry[signo] = NULL;
    sigdelset(&s->mask, signo);
    (void)signalfd(s->sfd, &s->mask, 0); /* cannot fail: the fd and the mask are valid */
    if (!s->handlers[signo].was_blocked) {
        sigemptyset(&one);
        sigaddset(&one, signo);
        pthread_sigmask(SIG_UNBLOCK, &one, NULL);
    }
    s->handlers[signo] = (struct ioloop_signal){0};
    pthread_mutex_unlock(&registry_lock);
    return 0;
}

void ioloop__signals_fini(ioloop_t *loop)
{
    struct ioloop_signals *s = loop->signals;
    sigset_t unblock;

    if (s == NULL)
        return;
    sigemptyset(&unblock);
    pthread_mutex_lock(&registry_lock);
    for (int signo = 1; signo < _NSIG; signo++) {
        if (registry[signo] != loop)
            continue;
        registry[signo] = NULL;
        if (!s->handlers[signo].was_blocked)
            sigaddset(&unblock, signo);
    }
    /* As ioloop_remove_signal() does for each: the calling thread's mask as it was before. */
    pthread_sigmask(SIG_UNBLOCK, &unblock, NULL);
    pthread_mutex_unlock(&registry_lock);
    close(s->sfd);
    free(s);
    loop->signals = NULL;
}
