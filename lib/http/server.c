/*
 * HTTP servers: an ioloop_server (lib/net) whose connections run the HTTP handlers of
 * server_conn.c, plus one http_loop per pool loop — found by comparing the connection's loop
 * with the pool's — holding that loop's connections, timeout queues, request cache and
 * orphaned requests. The per-loop state is the server's own (the loop's ioloop_data belongs
 * to the application).
 *
 * Work in the loops from the owning thread (drain, teardown) is posted to each loop and
 * waited for. Teardown comes in either order: ioloop_http_server_free() first closes the
 * connections through ioloop_server_free(), then releases each loop's state in that loop;
 * ioloop_pool_free() first (a pool user, as ioloop_server is) cancels the loops' timers while
 * they still run, and their connections close as the loops are freed, so that
 * ioloop_http_server_free() then only releases memory.
 */
#include "http/server.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/loop.h"

#define DEFAULT_MAX_HEADER ((size_t)16 << 10)
#define DEFAULT_MAX_BODY ((size_t)8 << 20)
#define DEFAULT_HEADER_TIMEOUT_MS 10000
#define DEFAULT_IDLE_TIMEOUT_MS 60000
/* A head's size is counted in 32 bits, and http-parser refuses heads beyond 80 KiB anyway. */
#define MAX_HEADER_LIMIT ((size_t)1 << 30)

/* ---- Timeout queues --------------------------------------------------------------------- */

static void on_tq_timer(ioloop_t *loop, void *arg);

static void tq_arm(struct http_tq *tq, uint64_t now_ms)
{
    int64_t id;

    if (tq->timer != 0 || tq->head == NULL || tq->hl->timers_off)
        return;
    id = ioloop_run_after(tq->hl->loop, tq->head->deadline_ms > now_ms
                                            ? tq->head->deadline_ms - now_ms : 0,
                          on_tq_timer, tq);
    /* Without a timer (out of memory) the next connection to join tries again. */
    tq->timer = id > 0 ? id : 0;
}

void ioloop__http_tq_remove(struct http_conn *hc)
{
    struct http_tq *tq = hc->tq;

    if (tq == NULL)
        return;
    if (hc->tq_prev != NULL)
        hc->tq_prev->tq_next = hc->tq_next;
    else
        tq->head = hc->tq_next;
    if (hc->tq_next != NULL)
        hc->tq_next->tq_prev = hc->tq_prev;
    else
        tq->tail = hc->tq_prev;
    hc->tq = NULL;
    hc->tq_prev = hc->tq_next = NULL;
    /* An armed timer stays: it fires for the new head early at worst, and re-arms. */
}

void ioloop__http_tq_add(struct http_tq *tq, struct http_conn *hc)
{
    uint64_t now = ioloop_now_ms(tq->hl->loop);

    ioloop__http_tq_remove(hc);
    hc->tq = tq;
    /* Saturated: a timeout beyond the clock's range is "never", not a deadline that wrapped
     * into the past. */
    hc->deadline_ms = tq->timeout_ms > UINT64_MAX - now ? UINT64_MAX : now + tq->timeout_ms;
    hc->tq_next = NULL;
    hc->tq_prev = tq->tail;
    if (tq->tail != NULL)
        tq->tail->tq_next = hc;
    else
        tq->head = hc;
    tq->tail = hc;
    tq_arm(tq, now);
}

static void on_tq_timer(ioloop_t *loop, void *arg)
{
    struct http_tq *tq = arg;
    uint64_t now = ioloop_now_ms(loop);
    struct http_conn *hc;

    tq->timer = 0;
    while ((hc = tq->head) != NULL && hc->deadline_ms <= now) {
        ioloop__http_tq_remove(hc);
        ioloop__http_conn_expired(hc, tq);
    }
    tq_arm(tq, now);
}

static void tq_cancel(struct http_tq *tq)
{
    if (tq->timer != 0)
        ioloop_cancel_timer(tq->hl->loop, tq->timer);
    tq->timer = 0;
}

/* ---- Work in every loop ----------------------------------------------------------------- */

static void task_done(ioloop_http_server_t *hs)
{
    pthread_mutex_lock(&hs->lock);
    if (--hs->tasks_left == 0)
        pthread_cond_broadcast(&hs->cond);
    pthread_mutex_unlock(&hs->lock);
}

static void on_task(ioloop_t *loop, void *arg)
{
    struct loop_task *task = arg;

    task->fn(task->hl);
    task_done(task->hl->hs);
}

/*
 * Runs fn(hl) for every loop, in that loop's thread, and returns once all ran. A loop that
 * does not run (it was stopped some other way) takes no task: once its start returned,
 * nobody runs it, and fn runs for it in this thread. The tasks are the server's own, made
 * with it, so this cannot fail. The owning thread (or ioloop_pool_free()'s).
 */
static void run_in_loops(ioloop_http_server_t *hs, void (*fn)(struct http_loop *hl))
{
    hs->tasks_left = hs->nloops;
    for (int i = 0; i < hs->nloops; i++) {
        hs->tasks[i] = (struct loop_task){&hs->loops[i], fn};
        if (ioloop_add_callback(hs->loops[i].loop, on_task, &hs->tasks[i]) < 0) {
            ioloop__wait_stopped(hs->loops[i].loop);
            fn(&hs->loops[i]);
            task_done(hs);
        }
    }
    pthread_mutex_lock(&hs->lock);
    while (hs->tasks_left > 0)
        pthread_cond_wait(&hs->cond, &hs->lock);
    pthread_mutex_unlock(&hs->lock);
}

static bool in_pool_loop(const ioloop_http_server_t *hs)
{
    ioloop_t *current = ioloop_current();

    for (int i = 0; current != NULL && i < hs->nloops; i++)
        if (hs->loops[i].loop == current)
            return true;
    return false;
}

static void stop_timers(struct http_loop *hl)
{
    tq_cancel(&hl->head_q);
    tq_cancel(&hl->idle_q);
    hl->timers_off = true;
}

/* The loop's memory: what the application never ended, and the cache. */
static void release_loop(struct http_loop *hl)
{
    ioloop_http_request_t *req;

    while ((req = hl->orphans) != NULL) {
        hl->orphans = req->next;
        ioloop__http_req_destroy(req);
    }
    while ((req = hl->cache) != NULL) {
        hl->cache = req->next;
        ioloop__http_req_destroy(req);
    }
    hl->ncached = 0;
}

static void stop_loop(struct http_loop *hl)
{
    stop_timers(hl);
    release_loop(hl);
}

/* ioloop_pool_free() before ioloop_http_server_free(): the loops still run; their timers go
 * now, their connections when the loops are freed. */
static void on_pool_freed(struct ioloop_pool_user *user)
{
    ioloop_http_server_t *hs = ioloop__container_of(user, ioloop_http_server_t, pool_user);

    run_in_loops(hs, stop_timers);
    atomic_store_explicit(&hs->detached, true, memory_order_release);
}

/* ---- Servers ---------------------------------------------------------------------------- */

ioloop_http_server_t *ioloop_http_server_new(ioloop_pool_t *pool, const char *address,
                                             ioloop_http_handler_fn handler, void *user,
                                             const ioloop_http_options_t *options)
{
    static const ioloop_http_options_t defaults;
    const ioloop_http_options_t *o = options != NULL ? options : &defaults;
    ioloop_http_server_t *hs;
    int err;

    if (pool == NULL || handler == NULL || o->max_header_bytes > MAX_HEADER_LIMIT) {
        errno = EINVAL;
        return NULL;
    }
    hs = calloc(1, sizeof *hs);
    if (hs == NULL)
        return NULL;
    hs->pool = pool;
    hs->handler = handler;
    hs->user = user;
    hs->max_header_bytes = o->max_header_bytes > 0 ? o->max_header_bytes : DEFAULT_MAX_HEADER;
    hs->max_body_bytes = o->max_body_bytes > 0 ? o->max_body_bytes : DEFAULT_MAX_BODY;
    hs->max_output = o->server.max_output > 0 ? o->server.max_output : IOLOOP_CONN_MAX_OUTPUT;
    hs->nloops = ioloop_pool_size(pool);
    hs->loops = calloc((size_t)hs->nloops, sizeof *hs->loops);
    hs->tasks = calloc((size_t)hs->nloops, sizeof *hs->tasks);
    if (hs->loops == NULL || hs->tasks == NULL) {
        free(hs->loops);
        free(hs->tasks);
        free(hs);
        errno = ENOMEM;
        return NULL;
    }
    for (int i = 0; i < hs->nloops; i++) {
        struct http_loop *hl = &hs->loops[i];

        hl->hs = hs;
        hl->loop = ioloop_pool_loop(pool, i);
        hl->head_q = (struct http_tq){.hl = hl, .timeout_ms = o->header_timeout_ms > 0
                                                 ? o->header_timeout_ms
                                                 : DEFAULT_HEADER_TIMEOUT_MS};
        hl->idle_q = (struct http_tq){.hl = hl, .timeout_ms = o->idle_timeout_ms > 0
                                                 ? o->idle_timeout_ms
                                                 : DEFAULT_IDLE_TIMEOUT_MS};
    }
    hs->server = ioloop_server_new_opts(pool, address, &ioloop__http_conn_handlers, hs,
                                        &o->server);
    if (hs->server == NULL) {
        err = errno;
        free(hs->tasks);
        free(hs->loops);
        free(hs);
        errno = err;
        return NULL;
    }
    pthread_mutex_init(&hs->lock, NULL);
    pthread_cond_init(&hs->cond, NULL);
    hs->pool_user.detach = on_pool_freed;
    ioloop__pool_attach(pool, &hs->pool_user);
    return hs;
}

int ioloop_http_server_start(ioloop_http_server_t *server)
{
    return server != NULL ? ioloop_server_start(server->server) : -EINVAL;
}

int ioloop_http_server_port(const ioloop_http_server_t *server)
{
    return server != NULL ? ioloop_server_port(server->server) : -EINVAL;
}

static void drain_loop(struct http_loop *hl)
{
    struct http_conn *hc, *next;

    for (hc = hl->conns; hc != NULL; hc = next) {
        next = hc->next; /* closing defers on_close: the list holds still meanwhile */
        ioloop__http_conn_drain(hc);
    }
}

int ioloop_http_server_drain(ioloop_http_server_t *server, uint64_t timeout_ms)
{
    if (server == NULL)
        return -EINVAL;
    if (atomic_load_explicit(&server->detached, memory_order_acquire))
        return 0; /* the pool's ioloop_free() closed every connection */
    if (in_pool_loop(server))
        return -EDEADLK;
    /* First the flag, which every request dispatched from now on sees; then each loop closes
     * its idle connections and marks the last request of the busy ones. */
    atomic_store_explicit(&server->draining, true, memory_order_relaxed);
    run_in_loops(server, drain_loop);
    return ioloop_server_drain(server->server, timeout_ms);
}

void ioloop_http_server_free(ioloop_http_server_t *server)
{
    bool detached;

    if (server == NULL)
        return;
    detached = atomic_load_explicit(&server->detached, memory_order_acquire);
    if (!detached)
        ioloop__pool_detach(server->pool, &server->pool_user);
    ioloop_server_free(server->server); /* every connection closed: requests are orphans */
    if (!detached) {
        run_in_loops(server, stop_loop);
    } else {
        for (int i = 0; i < server->nloops; i++)
            release_loop(&server->loops[i]); /* the loops and their timers are gone */
    }
    pthread_cond_destroy(&server->cond);
    pthread_mutex_destroy(&server->lock);
    free(server->tasks);
    free(server->loops);
    free(server);
}
