/*
 * The loop pool: N threads, each running one loop for its whole life, handed work round-robin.
 *
 * ioloop_pool_new() returns only once every loop runs: each thread's first callback (posted
 * before the thread starts, so it runs before the loop first waits) counts itself in, and the
 * creator waits for the count. From then on every loop belongs to its thread.
 */
#include "core/pool.h"

#include <errno.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "core/loop.h"
#include "core/thread.h"

struct pool_worker {
    ioloop_t *loop;
    pthread_t thread;
    bool started;               /* the thread exists (and must be joined) */
};

struct ioloop_pool {
    int size;
    uint32_t first_uid;         /* the loops' uids are first_uid, first_uid + 1, ... */
    atomic_uint next;           /* the round-robin counter */
    pthread_mutex_t lock;
    pthread_cond_t running_cond;
    int running;                /* loops that have started; under lock */
    struct ioloop_pool_user users; /* list head: servers on this pool; under lock */
    struct pool_worker workers[];
};

static void on_started(ioloop_t *loop, void *arg)
{
    ioloop_pool_t *pool = arg;

    pthread_mutex_lock(&pool->lock);
    pool->running++;
    pthread_cond_signal(&pool->running_cond);
    pthread_mutex_unlock(&pool->lock);
}

static void *worker_main(void *arg)
{
    ioloop_start(arg);
    return NULL;
}

ioloop_pool_t *ioloop_pool_new(int nloops)
{
    ioloop_pool_t *pool;
    int err = 0;

    if (nloops <= 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);

        nloops = cpus > 0 ? (int)cpus : 1;
    }
    pool = calloc(1, sizeof *pool + (size_t)nloops * sizeof pool->workers[0]);
    if (pool == NULL)
        return NULL;
    pool->size = nloops;
    pool->users.prev = pool->users.next = &pool->users;
    pool->first_uid = ioloop__uid_reserve((unsigned)nloops);
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->running_cond, NULL);

    for (int i = 0; i < nloops && err == 0; i++) {
        struct pool_worker *w = &pool->workers[i];

        if ((w->loop = ioloop__new_with_uid(pool->first_uid + (uint32_t)i)) == NULL)
            err = -errno;
        else if ((err = ioloop_add_callback(w->loop, on_started, pool)) == 0 &&
                 (err = ioloop__thread_start(&w->thread, "ioloop-loop", worker_main, w->loop)) == 0)
            w->started = true;
    }
    if (err < 0) {
        ioloop_pool_free(pool);
        errno = -err;
        return NULL;
    }

    pthread_mutex_lock(&pool->lock);
    while (pool->running < nloops)
        pthread_cond_wait(&pool->running_cond, &pool->lock);
    pthread_mutex_unlock(&pool->lock);
    return pool;
}

int ioloop_pool_size(const ioloop_pool_t *pool)
{
    return pool != NULL ? pool->size : -EINVAL;
}

ioloop_t *ioloop_pool_loop(ioloop_pool_t *pool, int index)
{
    if (pool == NULL || index < 0 || index >= pool->size) {
        errno = EINVAL;
        return NULL;
    }
    return pool->workers[index].loop;
}

ioloop_t *ioloop__pool_next(ioloop_pool_t *pool, int *index)
{
    unsigned n = atomic_fetch_add_explicit(&pool->next, 1, memory_order_relaxed);

    *index = (int)(n % (unsigned)pool->size);
    return pool->workers[*index].loop;
}

ioloop_t *ioloop__pool_loop_by_uid(ioloop_pool_t *pool, uint32_t uid)
{
    uint32_t index = uid - pool->first_uid; /* wraps to a huge value below first_uid */

    return index < (uint32_t)pool->size ? pool->workers[index].loop : NULL;
}

ioloop_t *ioloop_pool_next(ioloop_pool_t *pool)
{
    int index;

    if (pool == NULL) {
        errno = EINVAL;
        return NULL;
    }
    return ioloop__pool_next(pool, &index);
}

void ioloop__pool_attach(ioloop_pool_t *pool, struct ioloop_pool_user *user)
{
    pthread_mutex_lock(&pool->lock);
    user->prev = pool->users.prev;
    user->next = &pool->users;
    pool->users.prev->next = user;
    pool->users.prev = user;
    pthread_mutex_unlock(&pool->lock);
}

void ioloop__pool_detach(ioloop_pool_t *pool, struct ioloop_pool_user *user)
{
    pthread_mutex_lock(&pool->lock);
    user->prev->next = user->next;
    user->next->prev = user->prev;
    user->prev = user->next = user;
    pthread_mutex_unlock(&pool->lock);
}

void ioloop_pool_free(ioloop_pool_t *pool)
{
    if (pool == NULL)
        return;
    /* Users first, while the loops still run: a server stops feeding them. */
    for (;;) {
        struct ioloop_pool_user *user;

        pthread_mutex_lock(&pool->lock);
        user = pool->users.next != &pool->users ? pool->users.next : NULL;
        pthread_mutex_unlock(&pool->lock);
        if (user == NULL)
            break;
        ioloop__pool_detach(pool, user);
        user->detach(user);
    }
    for (int i = 0; i < pool->size; i++)
        if (pool->workers[i].started)
            ioloop_stop(pool->workers[i].loop);
    for (int i = 0; i < pool->size; i++) {
        struct pool_worker *w = &pool->workers[i];

        if (w->started)
            pthread_join(w->thread, NULL);
        ioloop_free(w->loop);
    }
    pthread_cond_destroy(&pool->running_cond);
    pthread_mutex_destroy(&pool->lock);
    free(pool);
}
