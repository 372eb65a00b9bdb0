/*
 * ioloop_prefork(): worker processes and their supervisor.
 *
 * The supervisor is a loop of its own with a signalfd (SIGCHLD, SIGTERM, SIGINT, SIGHUP) and
 * timers (restart backoff, rolling-restart settle, drain deadlines). It never forks from a
 * callback: a callback that wants a worker started marks the index's slot and stops the
 * loop, and the function itself forks between two runs of the loop,
 *
 *     for (;;) { fork every slot marked (a child returns from here); if idle: break; start; }
 *
 * so that a child leaves through a plain return, with the supervisor's loop not running:
 * it frees that loop (closing its copies of the epoll, event, timer and signal fds, which
 * leaves the parent's registrations alone, and clearing the signal registry), puts back the
 * caller's signal mask and SIGCHLD disposition, and returns 0.
 *
 * Each index has a slot: the pid of its worker, the pid of the worker a rolling restart is
 * replacing, a fork wanted, a restart timer, and the times of its recent restarts. A worker
 * that exits with 0 leaves its slot empty; one that crashes gets a restart timer (backoff)
 * or, past the cap, nothing. The supervisor returns when no slot holds anything.
 *
 * Children are reaped by pid, each SIGCHLD trying every pid it knows (SIGCHLDs coalesce: one
 * may stand for several exits), so that children the caller forked before are not taken.
 */
#include <ioloop/process.h>

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <ioloop/log.h>
#include <ioloop/loop.h>

#include "core/loop.h"
#include "core/strerror.h"
#include "log/log.h"

#define DEFAULT_MAX_RESTARTS 10
#define DEFAULT_DRAIN_MS 10000
#define DEFAULT_SETTLE_MS 1000

/* Backoff before a restart: BACKOFF_FIRST_MS for the first restart of an index within
 * WINDOW_MS, doubling with each further one, at most BACKOFF_MAX_MS. */
#define BACKOFF_FIRST_MS 100
#define BACKOFF_MAX_MS 5000
#define WINDOW_MS 60000

/*
 * Restart times kept per index. The k-th restart within a window comes at least the backoff
 * of the (k-1)-th after it (100, 200, ..., 3200, then 5000 ms), so no more than 17 fit in
 * WINDOW_MS (and a crash finds at most 16 before it): 32 always hold the whole window.
 */
#define HISTORY 32

#if defined(__SANITIZE_THREAD__)
#define UNDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define UNDER_TSAN 1
#endif
#endif

/* Why a slot wants a fork. */
enum fork_reason { FORK_NONE, FORK_START, FORK_RESTART, FORK_ROLLING };

/* Where a rolling restart is. */
enum roll_phase {
    ROLL_IDLE,   /* none in progress */
    ROLL_FORK,   /* the replacement's fork is queued */
    ROLL_SETTLE, /* the replacement runs beside the old worker until the settle timer */
    ROLL_OLD,    /* the old worker got SIGTERM; waiting for it to exit (timer: SIGKILL) */
};

struct supervisor;

struct slot {
    struct supervisor *sup;
    int index;
    pid_t pid;                 /* the index's worker; 0 while none runs */
    pid_t old;                 /* the worker a rolling restart replaces; 0 if none */
    enum fork_reason fork;     /* a fork queued for when the loop has stopped */
    int64_t timer;             /* the restart due after a crash (backoff); 0 if none */
    uint64_t history[HISTORY]; /* times (ms) of the restarts within the window, oldest first */
    unsigned nhistory;
};

struct supervisor {
    ioloop_t *loop;
    int n;
    unsigned max_restarts;
    uint64_t drain_ms, settle_ms;
    pid_t pid;                   /* the supervisor's own */
    bool forked;                 /* a worker was started: fork errors no longer return */
    bool stopping;               /* SIGTERM or SIGINT came: nothing is started any more */
    struct {
        enum roll_phase phase;
        int index;               /* the index being replaced */
        int64_t timer;           /* settle, then SIGKILL of the old worker; 0 if none */
        bool again;              /* a SIGHUP came during this one */
    } roll;
    sigset_t mask;               /* the caller's */
    struct sigaction chld;       /* the caller's SIGCHLD disposition */
    struct slot slots[];
};

static const int SIGNALS[] = {SIGCHLD, SIGTERM, SIGINT, SIGHUP};

static uint64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* "exited with status 3", "killed by signal 9 (KILL)" */
static const char *describe(int status, char *buf, size_t size)
{
    const char *abbrev;

    if (status < 0) {
        snprintf(buf, size, "was reaped by someone else");
    } else if (WIFEXITED(status)) {
        snprintf(buf, size, "exited with status %d", WEXITSTATUS(status));
    } else if (WIFSIGNALED(status)) {
        abbrev = sigabbrev_np(WTERMSIG(status));
        snprintf(buf, size, "killed by signal %d (%s)%s", WTERMSIG(status),
                 abbrev != NULL ? abbrev : "?", WCOREDUMP(status) ? ", core dumped" : "");
    } else {
        snprintf(buf, size, "ended with wait status %#x", (unsigned)status);
    }
    return buf;
}

static void cancel_timer(struct supervisor *sup, int64_t *timer)
{
    if (*timer > 0)
        (void)ioloop_cancel_timer(sup->loop, *timer);
    *timer = 0;
}

/* Nothing left to supervise: no worker, none to start, no restart pending. */
static bool idle(const struct supervisor *sup)
{
    for (int i = 0; i < sup->n; i++) {
        const struct slot *s = &sup->slots[i];

        if (s->pid != 0 || s->old != 0 || s->fork != FORK_NONE || s->timer != 0)
            return false;
    }
    return true;
}

/* Ends the loop's run when nothing is left to supervise. */
static void stop_if_idle(struct supervisor *sup)
{
    if (idle(sup))
        ioloop_stop(sup->loop);
}

/* Marks the slot for a fork, which happens once the loop has stopped. */
static void queue_fork(struct slot *s, enum fork_reason why)
{
    s->fork = why;
    ioloop_stop(s->sup->loop);
}

/* ---- Crashes and restarts --------------------------------------------------------------- */

static void on_restart_due(ioloop_t *loop, void *arg)
{
    struct slot *s = arg;

    s->timer = 0;
    queue_fork(s, FORK_RESTART);
}

/* The index's restarts within the window, the older ones forgotten. */
static unsigned recent_restarts(struct slot *s, uint64_t now)
{
    unsigned old = 0;

    while (old < s->nhistory && now - s->history[old] >= WINDOW_MS)
        old++;
    memmove(s->history, s->history + old, (s->nhistory - old) * sizeof s->history[0]);
    s->nhistory -= old;
    return s->nhistory;
}

/* The index's worker crashed (`what` says how), or its fork failed: restart it after the
 * backoff, or give it up past the cap. Logs one line. */
static void crashed(struct slot *s, const char *what)
{
    struct supervisor *sup = s->sup;
    uint64_t now = now_ms(), delay = BACKOFF_MAX_MS;
    unsigned k = recent_restarts(s, now);
    int64_t timer;

    if (k >= sup->max_restarts) {
        IOLOOP_LOG_ERROR("prefork: worker %d %s; restarted %u times within %d s: giving "
                         "index %d up", s->index, what, k, WINDOW_MS / 1000, s->index);
        return;
    }
    if (k < 6) /* 100 << 6 is past the cap */
        delay = (uint64_t)BACKOFF_FIRST_MS << k;
    if (delay > BACKOFF_MAX_MS)
        delay = BACKOFF_MAX_MS;
    timer = ioloop_run_after(sup->loop, delay, on_restart_due, s);
    if (timer < 0) {
        IOLOOP_LOG_ERROR("prefork: worker %d %s; cannot schedule its restart (%s): giving "
                         "index %d up", s->index, what, ioloop__strerror((int)timer), s->index);
        return;
    }
    if (s->nhistory == HISTORY) { /* cannot happen (see HISTORY); keep the newest */
        memmove(s->history, s->history + 1, (HISTORY - 1) * sizeof s->history[0]);
        s->nhistory--;
    }
    s->history[s->nhistory++] = now;
    s->timer = timer;
    IOLOOP_LOG_INFO("prefork: worker %d %s; restarting it in %llu ms (restart %u of %u "
                    "allowed within %d s)", s->index, what, (unsigned long long)delay, k + 1,
                    sup->max_restarts, WINDOW_MS / 1000);
}

/* ---- Rolling restart -------------------------------------------------------------------- */

static void on_settled(ioloop_t *loop, void *arg);
static void on_old_overdue(ioloop_t *loop, void *arg);

/* Starts replacing the next index that has a running worker, or ends the rolling restart
 * (and begins another if a SIGHUP came during it). */
static void roll_next(struct supervisor *sup)
{
    for (;;) {
        for (int i = sup->roll.index + 1; i < sup->n; i++) {
            struct slot *s = &sup->slots[i];

            if (s->pid == 0 || s->fork != FORK_NONE)
                continue;
            sup->roll.index = i;
            sup->roll.phase = ROLL_FORK;
            s->old = s->pid;
            s->pid = 0;
            queue_fork(s, FORK_ROLLING);
            return;
        }
        sup->roll.phase = ROLL_IDLE;
        if (!sup->roll.again) {
            IOLOOP_LOG_INFO("prefork: rolling restart done");
            stop_if_idle(sup);
            return;
        }
        IOLOOP_LOG_INFO("prefork: rolling restart done; another one follows (SIGHUP came "
                        "during it)");
        sup->roll.again = false;
        sup->roll.index = -1;
    }
}

/* The replacement of roll.index was forked: it settles before the old worker is told. */
static void roll_forked(struct supervisor *sup, struct slot *s)
{
    int64_t timer = ioloop_run_after(sup->loop, sup->settle_ms, on_settled, sup);

    IOLOOP_LOG_INFO("prefork: rolling restart of worker %d: replacement pid %d started, old "
                    "pid %d gets SIGTERM in %llu ms", s->index, (int)s->pid, (int)s->old,
                    (unsigned long long)sup->settle_ms);
    sup->roll.phase = ROLL_SETTLE;
    if (timer < 0) { /* no memory for a timer: skip the settle time rather than stall */
        on_settled(sup->loop, sup);
        return;
    }
    sup->roll.timer = timer;
}

/* The replacement's fork failed: the old worker stays, and the rolling restart ends. */
static void roll_fork_failed(struct supervisor *sup, struct slot *s, int err)
{
    s->pid = s->old;
    s->old = 0;
    sup->roll.phase = ROLL_IDLE;
    sup->roll.again = false;
    IOLOOP_LOG_ERROR("prefork: rolling restart of worker %d: cannot fork a replacement (%s); "
                     "pid %d stays, rolling restart stopped", s->index, ioloop__strerror(err),
                     (int)s->pid);
}

static void on_settled(ioloop_t *loop, void *arg)
{
    struct supervisor *sup = arg;
    struct slot *s = &sup->slots[sup->roll.index];
    int64_t timer;

    sup->roll.timer = 0;
    if (s->old == 0) { /* it exited by itself meanwhile */
        roll_next(sup);
        return;
    }
    if (s->pid == 0) {
        /* The replacement crashed: keep the old worker rather than leave the index empty. */
        cancel_timer(sup, &s->timer);
        s->fork = FORK_NONE;
        s->pid = s->old;
        s->old = 0;
        sup->roll.phase = ROLL_IDLE;
        sup->roll.again = false;
        IOLOOP_LOG_WARN("prefork: rolling restart of worker %d: the replacement is not "
                        "running; pid %d stays, rolling restart stopped", s->index,
                        (int)s->pid);
        return;
    }
    (void)kill(s->old, SIGTERM);
    sup->roll.phase = ROLL_OLD;
    timer = ioloop_run_after(sup->loop, sup->drain_ms, on_old_overdue, sup);
    sup->roll.timer = timer > 0 ? timer : 0; /* without a timer it gets all the time it needs */
    IOLOOP_LOG_INFO("prefork: rolling restart of worker %d: SIGTERM to old pid %d (SIGKILL "
                    "in %llu ms if still running)", s->index, (int)s->old,
                    (unsigned long long)sup->drain_ms);
}

static void on_old_overdue(ioloop_t *loop, void *arg)
{
    struct supervisor *sup = arg;
    struct slot *s = &sup->slots[sup->roll.index];

    sup->roll.timer = 0;
    (void)kill(s->old, SIGKILL);
    IOLOOP_LOG_INFO("prefork: rolling restart of worker %d: old pid %d still running after "
                    "%llu ms: SIGKILL", s->index, (int)s->old,
                    (unsigned long long)sup->drain_ms);
}

/* ---- Signals ---------------------------------------------------------------------------- */

/* Reaps pid if it ended: true with its wait status (or -1 if it is no longer our child). */
static bool reaped(pid_t pid, int *status)
{
    pid_t r = waitpid(pid, status, WNOHANG);

    if (r < 0 && errno == ECHILD) {
        *status = -1;
        return true;
    }
    return r == pid;
}

static void worker_ended(struct supervisor *sup, struct slot *s, pid_t pid, int status)
{
    char what[96];

    snprintf(what, sizeof what, "(pid %d) ", (int)pid);
    describe(status, what + strlen(what), sizeof what - strlen(what));
    if (sup->stopping)
        IOLOOP_LOG_INFO("prefork: worker %d %s; shutting down", s->index, what);
    else if (status >= 0 && (!WIFEXITED(status) || WEXITSTATUS(status) != 0))
        crashed(s, what);
    else
        IOLOOP_LOG_INFO("prefork: worker %d %s; not restarted", s->index, what);
}

static void old_ended(struct supervisor *sup, struct slot *s, pid_t pid, int status)
{
    char what[64];

    IOLOOP_LOG_INFO("prefork: replaced worker %d (pid %d) %s; not restarted", s->index,
                    (int)pid, describe(status, what, sizeof what));
    if (sup->roll.phase == ROLL_OLD && sup->roll.index == s->index) {
        cancel_timer(sup, &sup->roll.timer);
        roll_next(sup);
    }
}

static void on_sigchld(ioloop_t *loop, int signo, void *arg)
{
    struct supervisor *sup = arg;
    int status;
    pid_t pid;

    for (int i = 0; i < sup->n; i++) {
        struct slot *s = &sup->slots[i];

        if (s->old != 0 && reaped(s->old, &status)) {
            pid = s->old;
            s->old = 0;
            old_ended(sup, s, pid, status);
        }
        if (s->pid != 0 && reaped(s->pid, &status)) {
            pid = s->pid;
            s->pid = 0;
            worker_ended(sup, s, pid, status);
        }
    }
    stop_if_idle(sup);
}

/* Sends signo to every worker (those being replaced included); returns how many. */
static int signal_all(struct supervisor *sup, int signo)
{
    int count = 0;

    for (int i = 0; i < sup->n; i++) {
        if (sup->slots[i].pid != 0 && kill(sup->slots[i].pid, signo) == 0)
            count++;
        if (sup->slots[i].old != 0 && kill(sup->slots[i].old, signo) == 0)
            count++;
    }
    return count;
}

static void on_drain_timeout(ioloop_t *loop, void *arg)
{
    struct supervisor *sup = arg;

    IOLOOP_LOG_INFO("prefork: drain timeout (%llu ms): SIGKILL to %d workers still running",
                    (unsigned long long)sup->drain_ms, signal_all(sup, SIGKILL));
}

/* SIGTERM and SIGINT: forwarded; nothing starts any more; SIGKILL after the drain time. */
static void on_sigterm(ioloop_t *loop, int signo, void *arg)
{
    struct supervisor *sup = arg;

    if (sup->stopping) {
        IOLOOP_LOG_INFO("prefork: SIG%s again: sent to %d workers", sigabbrev_np(signo),
                        signal_all(sup, signo));
        return;
    }
    sup->stopping = true;
    for (int i = 0; i < sup->n; i++) {
        cancel_timer(sup, &sup->slots[i].timer);
        sup->slots[i].fork = FORK_NONE;
    }
    cancel_timer(sup, &sup->roll.timer);
    if (sup->roll.phase != ROLL_IDLE)
        IOLOOP_LOG_INFO("prefork: SIG%s: rolling restart stopped", sigabbrev_np(signo));
    sup->roll.phase = ROLL_IDLE;
    sup->roll.again = false;
    IOLOOP_LOG_INFO("prefork: SIG%s: sent to %d workers; SIGKILL in %llu ms to any left",
                    sigabbrev_np(signo), signal_all(sup, signo),
                    (unsigned long long)sup->drain_ms);
    if (ioloop_run_after(sup->loop, sup->drain_ms, on_drain_timeout, sup) < 0)
        on_drain_timeout(loop, sup); /* no deadline without a timer: end it now, not never */
    stop_if_idle(sup);
}

static void on_sighup(ioloop_t *loop, int signo, void *arg)
{
    struct supervisor *sup = arg;

    if (sup->stopping) {
        IOLOOP_LOG_INFO("prefork: SIGHUP ignored: shutting down");
    } else if (sup->roll.phase != ROLL_IDLE) {
        sup->roll.again = true;
        IOLOOP_LOG_INFO("prefork: SIGHUP during a rolling restart: another one follows it");
    } else {
        IOLOOP_LOG_INFO("prefork: SIGHUP: rolling restart, one worker at a time, %llu ms "
                        "settle time", (unsigned long long)sup->settle_ms);
        sup->roll.index = -1;
        roll_next(sup);
    }
}

/* ---- Setting up, forking, tearing down -------------------------------------------------- */

#ifdef UNDER_TSAN
/* A task's name and blocked signals, from /proc/self/task/TID/status. */
static bool task_status(pid_t tid, char *name, size_t size, unsigned long long *blocked)
{
    char path[64], line[256];
    bool got_name = false, got_mask = false;
    FILE *f;

    snprintf(path, sizeof path, "/proc/self/task/%d/status", (int)tid);
    if ((f = fopen(path, "re")) == NULL)
        return false;
    while (fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, "Name:\t", 6) == 0) {
            snprintf(name, size, "%s", line + 6);
            got_name = true;
        } else if (sscanf(line, "SigBlk: %llx", blocked) == 1) {
            got_mask = true;
        }
    }
    fclose(f);
    return got_name && got_mask;
}

/*
 * ThreadSanitizer's runtime starts background threads of its own (at the first
 * pthread_create, and again in a fork child: one or two), which take no lock of ours. They
 * keep the process's name and block every signal (SIGHUP to SIGTERM are looked at); an
 * application thread rarely does both. Only ThreadSanitizer builds make this guess.
 */
static bool sanitizer_thread(pid_t self, pid_t tid)
{
    char mine[32], theirs[32];
    unsigned long long mask, all = 0;

    for (int signo = SIGHUP; signo <= SIGTERM; signo++)
        if (signo != SIGKILL)
            all |= 1ull << (signo - 1);
    if (!task_status(self, mine, sizeof mine, &mask) ||
        !task_status(tid, theirs, sizeof theirs, &mask))
        return false;
    return strcmp(mine, theirs) == 0 && (mask & all) == all;
}
#endif

/* 0 if no thread runs but the caller's and the logger's, else -EBUSY (or the errno of
 * reading /proc/self/task). */
static int check_threads(void)
{
    pid_t self = gettid(), logger, joined;
    struct dirent *e;
    int others = 0, err;
    DIR *dir;

    ioloop__log_thread_ids(&logger, &joined);
    if ((dir = opendir("/proc/self/task")) == NULL)
        return -errno;
    for (;;) {
        pid_t tid;

        errno = 0; /* readdir() tells its end from an error only by errno */
        if ((e = readdir(dir)) == NULL)
            break;
        tid = (pid_t)strtol(e->d_name, NULL, 10);
        if (tid <= 0 || tid == self || tid == logger || tid == joined)
            continue;
#ifdef UNDER_TSAN
        if (sanitizer_thread(self, tid))
            continue;
#endif
        others++;
    }
    err = -errno;
    closedir(dir);
    if (err != 0)
        return err;
    return others > 0 ? -EBUSY : 0;
}

/* Puts back what the caller had: the SIGCHLD disposition, then (ioloop_free() unblocks the
 * signals the loop blocked) the whole mask. */
static void supervisor_free(struct supervisor *sup)
{
    (void)sigaction(SIGCHLD, &sup->chld, NULL);
    ioloop_free(sup->loop);
    /* ioloop_free() already unblocked what the loop blocked; this is the caller's mask
     * exactly, whatever the loop did. */
    pthread_sigmask(SIG_SETMASK, &sup->mask, NULL);
    free(sup);
}

static int supervisor_new(struct supervisor **out, int n, const ioloop_prefork_options_t *o)
{
    struct sigaction dfl = {.sa_handler = SIG_DFL};
    struct supervisor *sup = calloc(1, sizeof *sup + (size_t)n * sizeof sup->slots[0]);
    static const ioloop_signal_fn handlers[] = {on_sigchld, on_sigterm, on_sigterm, on_sighup};
    int err;

    if (sup == NULL)
        return -ENOMEM;
    sup->n = n;
    sup->max_restarts = o != NULL && o->max_restarts != 0 ? o->max_restarts
                                                          : DEFAULT_MAX_RESTARTS;
    sup->drain_ms = o != NULL && o->drain_timeout_ms != 0 ? o->drain_timeout_ms
                                                          : DEFAULT_DRAIN_MS;
    sup->settle_ms = o != NULL && o->settle_ms != 0 ? o->settle_ms : DEFAULT_SETTLE_MS;
    sup->pid = getpid();
    for (int i = 0; i < n; i++)
        sup->slots[i] = (struct slot){.sup = sup, .index = i, .fork = FORK_START};
    pthread_sigmask(SIG_SETMASK, NULL, &sup->mask);
    (void)sigaction(SIGCHLD, NULL, &sup->chld);
    if ((sup->loop = ioloop_new()) == NULL) {
        err = -errno;
        free(sup);
        return err;
    }
    for (size_t i = 0; i < sizeof SIGNALS / sizeof SIGNALS[0]; i++) {
        if ((err = ioloop_add_signal(sup->loop, SIGNALS[i], handlers[i], sup)) < 0) {
            supervisor_free(sup);
            return err;
        }
    }
    /* SIG_IGN or SA_NOCLDWAIT would have the kernel reap the workers for us. */
    (void)sigaction(SIGCHLD, &dfl, NULL);
    *out = sup;
    return 0;
}

/* In a new worker: lets go of the supervisor and puts back the caller's signal state. */
static void become_worker(struct supervisor *sup)
{
    pid_t parent = sup->pid;

    supervisor_free(sup);
    /* No worker outlives its supervisor unsupervised: SIGTERM when it dies, also if it
     * died before this call. */
    if (prctl(PR_SET_PDEATHSIG, SIGTERM) == 0 && getppid() != parent)
        (void)kill(getpid(), SIGTERM);
}

/* The supervisor's end: the signals of ours still pending are ours (the loop would have
 * read them), so the caller does not get them when its mask comes back. */
static void supervisor_end(struct supervisor *sup)
{
    const struct timespec zero = {0};
    sigset_t ours;

    sigemptyset(&ours);
    for (size_t i = 0; i < sizeof SIGNALS / sizeof SIGNALS[0]; i++)
        sigaddset(&ours, SIGNALS[i]);
    while (sigtimedwait(&ours, NULL, &zero) > 0)
        ;
    supervisor_free(sup);
}

/*
 * Forks every slot marked for it, outside the loop. Returns 0 in a new worker (with *worker
 * set and the supervisor gone), 1 in the supervisor, or a negative errno when the very first
 * fork failed (nothing was started).
 */
static int fork_queued(struct supervisor *sup, int *worker)
{
    for (int i = 0; i < sup->n; i++) {
        struct slot *s = &sup->slots[i];
        enum fork_reason why = s->fork;
        pid_t pid;
        int err;

        if (why == FORK_NONE)
            continue;
        s->fork = FORK_NONE;
        fflush(NULL); /* or buffered output would be written by both processes */
        pid = fork();
        if (pid == 0) {
            become_worker(sup);
            *worker = i;
            return 0;
        }
        if (pid < 0) {
            char what[96];

            err = -errno;
            if (!sup->forked)
                return err;
            if (why == FORK_ROLLING) {
                roll_fork_failed(sup, s, err);
                continue;
            }
            snprintf(what, sizeof what, "could not be forked (%s)", ioloop__strerror(err));
            crashed(s, what);
            continue;
        }
        sup->forked = true;
        s->pid = pid;
        if (why == FORK_ROLLING)
            roll_forked(sup, s);
        else
            IOLOOP_LOG_INFO("prefork: worker %d started, pid %d%s", i, (int)pid,
                            why == FORK_RESTART ? " (restart)" : "");
    }
    return 1;
}

int ioloop_prefork(int nworkers, const ioloop_prefork_options_t *options, int *worker)
{
    struct supervisor *sup = NULL;
    int rc;

    if (nworkers < 1 || worker == NULL)
        return -EINVAL;
    if (ioloop__live_loops() > 0)
        return -EBUSY; /* its epoll set would be every worker's */
    if ((rc = check_threads()) < 0)
        return rc;
    if ((rc = supervisor_new(&sup, nworkers, options)) < 0)
        return rc;
    for (;;) {
        rc = fork_queued(sup, worker);
        if (rc == 0)
            return 0;
        if (rc < 0) {
            supervisor_free(sup);
            return rc;
        }
        if (idle(sup))
            break;
        ioloop_start(sup->loop);
    }
    IOLOOP_LOG_INFO("prefork: every worker exited; the supervisor returns");
    supervisor_end(sup);
    *worker = -1;
    return 1;
}
