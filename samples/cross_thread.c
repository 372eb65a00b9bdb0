/*
 * cross_thread — worker threads post their results into a loop with ioloop_add_callback().
 *
 * Four workers each compute a few sums and post every result to the main loop; a callback
 * posted from a worker runs in the loop's thread, so the loop's state needs no lock. When every
 * result is in, the loop stops. The stats show how many eventfd wakeups the posts cost.
 *
 *   build/samples/cross_thread
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include <ioloop.h>

#define WORKERS 4
#define JOBS_PER_WORKER 1000

struct result {
    int worker;
    uint64_t sum;
};

static ioloop_t *loop;
static uint64_t total;    /* touched only in the loop's thread */
static int results_in;    /* likewise */

static void on_result(ioloop_t *l, void *arg)
{
    struct result *r = arg;

    total += r->sum;
    free(r);
    if (++results_in == WORKERS * JOBS_PER_WORKER)
        ioloop_stop(l);
}

static void *worker(void *arg)
{
    int id = (int)(intptr_t)arg;

    for (int job = 0; job < JOBS_PER_WORKER; job++) {
        struct result *r = malloc(sizeof *r);

        if (r == NULL)
            abort();
        r->worker = id;
        r->sum = 0;
        for (int i = 0; i <= job; i++)
            r->sum += (uint64_t)i;
        if (ioloop_add_callback(loop, on_result, r) < 0) {
            free(r); /* refused: the result is still ours */
            break;
        }
    }
    return NULL;
}

int main(void)
{
    const uint64_t expected = WORKERS * ((uint64_t)(JOBS_PER_WORKER - 1) * JOBS_PER_WORKER *
                                         (JOBS_PER_WORKER + 1) / 6);
    pthread_t threads[WORKERS];
    ioloop_stats_t stats;

    loop = ioloop_new();
    if (loop == NULL) {
        perror("ioloop_new");
        return 1;
    }
    for (int i = 0; i < WORKERS; i++)
        pthread_create(&threads[i], NULL, worker, (void *)(intptr_t)i);

    ioloop_start(loop);
    for (int i = 0; i < WORKERS; i++)
        pthread_join(threads[i], NULL);

    ioloop_get_stats(loop, &stats);
    printf("%d results, total %" PRIu64 " (expected %" PRIu64 ")\n", results_in, total,
           expected);
    printf("%" PRIu64 " callbacks cost %" PRIu64 " eventfd wakeups in %" PRIu64
           " loop iterations\n", stats.callbacks_run, stats.wakeups, stats.iterations);
    ioloop_free(loop);
    return total == expected ? 0 : 1;
}
