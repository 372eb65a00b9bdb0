/*
 * timers — run_after, run_every, cancel, and a signal handler that stops the loop.
 *
 * A heartbeat ticks every 200 ms; a one-shot timer cancels it after ten ticks; another one-shot
 * timer that was cancelled before its time never fires; Ctrl-C (SIGINT) stops the loop early.
 * The loop stops by itself after three seconds.
 *
 *   build/samples/timers
 */
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>

#include <ioloop.h>

struct demo {
    int64_t heartbeat;
    int ticks;
    uint64_t started_ms;
};

static void on_tick(ioloop_t *loop, void *arg)
{
    struct demo *d = arg;

    printf("tick %2d at +%" PRIu64 " ms\n", ++d->ticks, ioloop_now_ms(loop) - d->started_ms);
}

static void on_enough(ioloop_t *loop, void *arg)
{
    struct demo *d = arg;

    printf("ten ticks: cancelling the heartbeat (%s)\n",
           ioloop_cancel_timer(loop, d->heartbeat) == 0 ? "ok" : "already gone");
}

static void on_never(ioloop_t *loop, void *arg)
{
    printf("this line never prints: its timer was cancelled\n");
}

static void on_done(ioloop_t *loop, void *arg)
{
    printf("three seconds: stopping\n");
    ioloop_stop(loop);
}

static void on_signal(ioloop_t *loop, int signo, void *arg)
{
    printf("\n%s: stopping\n", signo == SIGINT ? "SIGINT" : "SIGTERM");
    ioloop_stop(loop);
}

int main(void)
{
    struct demo d = {0};
    ioloop_t *loop = ioloop_new();
    int64_t never;

    if (loop == NULL) {
        perror("ioloop_new");
        return 1;
    }
    ioloop_add_signal(loop, SIGINT, on_signal, NULL);
    ioloop_add_signal(loop, SIGTERM, on_signal, NULL);

    d.started_ms = ioloop_now_ms(loop);
    d.heartbeat = ioloop_run_every(loop, 200, on_tick, &d);
    ioloop_run_after(loop, 2050, on_enough, &d);
    ioloop_run_after(loop, 3000, on_done, NULL);
    never = ioloop_run_after(loop, 1000, on_never, NULL);
    printf("cancelling timer %" PRId64 " before it fires: %d\n", never,
           ioloop_cancel_timer(loop, never));

    ioloop_start(loop);

    ioloop_stats_t stats;
    ioloop_get_stats(loop, &stats);
    printf("%" PRIu64 " iterations, %" PRIu64 " timers fired\n", stats.iterations,
           stats.timers_fired);
    ioloop_free(loop);
    return 0;
}
