/*
 * TCP transport: the loop thread and its tasks, handlers, the vtable,
 * options, craft_tcp_transport_new/close and statistics. The design and the
 * private types are in transports/tcp_internal.h.
 */
#include "transports/tcp_internal.h"

/* ------------------------------------------------------------------------ */
/* The loop                                                                  */
/* ------------------------------------------------------------------------ */

static void loop_teardown(tcp_t *t);

static void run_task(tcp_t *t, task_t *task)
{
    switch (task->kind) {
    case TASK_CALL_START: {
        out_call_t *call = CONTAINER_OF(task, out_call_t, start_task);
        craft__tcp_call_start(t, call);
        craft__tcp_call_unref(t, call);
        break;
    }
    case TASK_CALL_DATA: {
        out_call_t *call = CONTAINER_OF(task, out_call_t, data_task);
        craft__tcp_call_move_chunks(t, call);
        craft__tcp_call_unref(t, call);
        break;
    }
    case TASK_CALL_CANCEL: {
        out_call_t *call = CONTAINER_OF(task, out_call_t, cancel_task);
        if (call->conn != NULL) {
            craft__tcp_conn_close(call->conn, CRAFT_ETIMEDOUT);
        }
        craft__tcp_call_unref(t, call);
        break;
    }
    case TASK_PIPE_START: {
        pipeline_t *p = CONTAINER_OF(task, pipeline_t, start_task);
        craft__tcp_pipe_start(t, p);
        craft__tcp_pipe_unref(t, p);
        break;
    }
    case TASK_PIPE_SEND: {
        pipeline_t *p = CONTAINER_OF(task, pipeline_t, send_task);
        craft__tcp_pipe_send(t, p);
        craft__tcp_pipe_unref(t, p);
        break;
    }
    case TASK_PIPE_CLOSE: {
        pipeline_t *p = CONTAINER_OF(task, pipeline_t, close_task);
        if (p->conn != NULL) {
            craft__tcp_conn_close(p->conn, CRAFT_ECLOSED);
        }
        craft__tcp_pipe_unref(t, p);
        break;
    }
    case TASK_RPC_RESPOND: {
        in_rpc_t *rpc = CONTAINER_OF(task, in_rpc_t, respond_task);
        craft__tcp_rpc_respond_task(t, rpc);
        craft__tcp_rpc_unref(t, rpc);
        break;
    }
    case TASK_RPC_RESUME: {
        in_rpc_t *rpc = CONTAINER_OF(task, in_rpc_t, resume_task);
        craft__tcp_rpc_resume_task(t, rpc);
        craft__tcp_rpc_unref(t, rpc);
        break;
    }
    case TASK_STOP:
        loop_teardown(t);
        break;
    }
}

static task_t *pop_task(tcp_t *t)
{
    pthread_mutex_lock(&t->mu);
    task_t *task = t->task_head;
    if (task != NULL) {
        t->task_head = task->next;
        if (t->task_head == NULL) {
            t->task_tail = NULL;
        }
        task->queued = false;
    } else {
        t->wakeup_pending = false;
    }
    pthread_mutex_unlock(&t->mu);
    return task;
}

static void on_wakeup(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    tcp_t *t = arg;
    task_t *task;
    craft__tcp_loop_traffic(t);
    while (!t->stopping && (task = pop_task(t)) != NULL) {
        run_task(t, task);
    }
}

/* TASK_STOP: closes everything; the remaining tasks only release. */
static void loop_teardown(tcp_t *t)
{
    t->stopping = true;
    if (t->listener != NULL) {
        evconnlistener_free(t->listener);
        t->listener = NULL;
    }
    while (t->conns != NULL) {
        craft__tcp_conn_close(t->conns, CRAFT_ECLOSED);
    }
    while (t->peers != NULL) {
        peer_t *p = t->peers;
        t->peers = p->next;
        free(p->addr);
        free(p);
    }
    pthread_mutex_lock(&t->mu);
    t->loop_done = true;
    pthread_mutex_unlock(&t->mu);
    task_t *task;
    while ((task = pop_task(t)) != NULL) {
        run_task(t, task);
    }
    /* Nothing of `t` is left on the loop but `wakeup`, whose callback this
     * is: close() frees it (event_free waits for the callback to return). */
    pthread_mutex_lock(&t->mu);
    t->torn_down = true;
    pthread_cond_broadcast(&t->torn_down_cond);
    pthread_mutex_unlock(&t->mu);
}

/* ------------------------------------------------------------------------ */
/* Loop threads, private or shared (craft_tcp_loop_t)                        */
/* ------------------------------------------------------------------------ */

static int evthread_rv = -1;
static pthread_once_t evthread_once = PTHREAD_ONCE_INIT;

static void init_evthread(void)
{
    evthread_rv = evthread_use_pthreads();
}

/* ---- Spinning (craft_tcp_loop_set_spin) ----------------------------------
 *
 * Waking a thread that sleeps in epoll_wait costs 20-80 us on a virtual
 * machine whose vCPU went idle; a loop that polls sees the next message at
 * once. A spinning loop, having run out of work, polls (epoll_wait with a
 * zero timeout, through event_base_loop(EVLOOP_NONBLOCK)) until traffic
 * comes or spin_ns passed since it ran out, then sleeps. It spins only
 *  - while the traffic has recently come sooner than the budget on average
 *    (gap_avg_ns: the time from running out of work to the next read or
 *    task batch; measured after a sleep it includes the wake-up, so every
 *    16th idle period spins anyway as a probe and measures it exactly), so
 *    a loop whose peers answer slower than the budget (a store that syncs)
 *    goes back to sleeping at once;
 *  - while no more loops of the process spin than it has CPUs to run on. */

static atomic_int spinning_loops;

static bool take_spin_cpu(void)
{
    return craft__slot_take(&spinning_loops, craft__cpu_count());
}

static void note_gap(craft_tcp_loop_t *l, int64_t gap)
{
    l->gap_avg_ns += (gap - l->gap_avg_ns) / 8;
}

/* Runs the loop, spinning when idle, until `stopping` or the budget is set
 * to 0. */
static void loop_spin(craft_tcp_loop_t *l)
{
    uint64_t seen = l->traffic;
    int64_t idle_since = craft__tcp_now_ns();
    bool busy = true; /* traffic since the last sleep: spinning may pay */
    while (!atomic_load(&l->stopping)) {
        int64_t budget = atomic_load_explicit(&l->spin_ns, memory_order_relaxed);
        if (budget <= 0) {
            return;
        }
        event_base_loop(l->base, EVLOOP_NONBLOCK | EVLOOP_NO_EXIT_ON_EMPTY);
        if (l->traffic != seen) {
            seen = l->traffic;
            idle_since = craft__tcp_now_ns(); /* busy until now: idle from here */
            busy = true;
            continue;
        }
        /* Out of work: spin for the budget when it pays, else sleep. */
        if (busy && (l->gap_avg_ns < budget || ++l->unprobed >= 16) && take_spin_cpu()) {
            atomic_fetch_add_explicit(&l->st_spins, 1, memory_order_relaxed);
            l->unprobed = 0;
            bool hit = false;
            int64_t now = craft__tcp_now_ns();
            /* Also ends when the budget changes (craft_tcp_loop_set_spin)
             * or the loop stops. */
            while (now - idle_since < budget && !atomic_load(&l->stopping) &&
                   atomic_load_explicit(&l->spin_ns, memory_order_relaxed) == budget) {
                event_base_loop(l->base, EVLOOP_NONBLOCK | EVLOOP_NO_EXIT_ON_EMPTY);
                now = craft__tcp_now_ns();
                if (l->traffic != seen) {
                    hit = true;
                    break;
                }
            }
            atomic_fetch_sub_explicit(&spinning_loops, 1, memory_order_relaxed);
            if (hit) {
                atomic_fetch_add_explicit(&l->st_spin_hits, 1, memory_order_relaxed);
                note_gap(l, now - idle_since);
                seen = l->traffic;
                idle_since = craft__tcp_now_ns();
                continue;
            }
        }
        /* Stopped or given a new budget: look again. A kick run by one of
         * the passes above has had its loopbreak spent on that pass, so the
         * sleep would not see it; its sender stored `stopping` or the
         * budget before activating it, so looking at both here catches
         * every kick already run, and a later one is still queued and
         * breaks the sleep. */
        if (atomic_load(&l->stopping) ||
            atomic_load_explicit(&l->spin_ns, memory_order_relaxed) != budget) {
            continue;
        }
        atomic_fetch_add_explicit(&l->st_sleeps, 1, memory_order_relaxed);
        event_base_loop(l->base, EVLOOP_ONCE | EVLOOP_NO_EXIT_ON_EMPTY);
        int64_t now = craft__tcp_now_ns();
        /* Woken by traffic: its gap (with the wake-up in it) counts. Woken
         * by a timer or a kick: no reason to spin after it. */
        busy = l->traffic != seen;
        if (busy) {
            note_gap(l, now - idle_since);
            seen = l->traffic;
        }
        idle_since = now;
    }
}

static void *loop_main(void *arg)
{
    craft_tcp_loop_t *l = arg;
    while (!atomic_load(&l->stopping)) {
        if (atomic_load_explicit(&l->spin_ns, memory_order_relaxed) > 0) {
            loop_spin(l);
        } else {
            /* Until the kick: a stop or a new spin budget. */
            event_base_loop(l->base, EVLOOP_NO_EXIT_ON_EMPTY);
        }
    }
    return NULL;
}

static void on_loop_kick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    craft_tcp_loop_t *l = arg;
    event_base_loopbreak(l->base);
}

static int loop_create(craft_tcp_loop_t **out)
{
    pthread_once(&evthread_once, init_evthread);
    if (evthread_rv != 0) {
        return CRAFT_ENOMEM;
    }
    craft_tcp_loop_t *l = calloc(1, sizeof *l);
    if (l == NULL) {
        return CRAFT_ENOMEM;
    }
    atomic_init(&l->refs, 1);
    l->base = event_base_new();
    if (l->base == NULL) {
        free(l);
        return CRAFT_ENOMEM;
    }
    /* An active event survives until the loop runs it, unlike a
     * loopbreak issued before the loop started. */
    l->kick = event_new(l->base, -1, 0, on_loop_kick, l);
    if (l->kick == NULL) {
        event_base_free(l->base);
        free(l);
        return CRAFT_ENOMEM;
    }
    /* Writes happen on the loop thread (among others): with SIGPIPE blocked
     * there a write to a reset connection fails with EPIPE instead of
     * killing the process (libevent does not use MSG_NOSIGNAL). */
    sigset_t block;
    sigset_t old;
    sigemptyset(&block);
    sigaddset(&block, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    int rv = pthread_create(&l->thread, NULL, loop_main, l);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rv != 0) {
        event_free(l->kick);
        event_base_free(l->base);
        free(l);
        return CRAFT_ENOMEM;
    }
    *out = l;
    return 0;
}

/* Never on the loop's own thread: transports are not closed from their
 * handlers (include/craft/tcp.h), and the application's reference is
 * dropped from its own threads. */
static void loop_unref(craft_tcp_loop_t *l)
{
    if (atomic_fetch_sub(&l->refs, 1) != 1) {
        return;
    }
    atomic_store(&l->stopping, true);
    event_active(l->kick, EV_READ, 0);
    pthread_join(l->thread, NULL);
    event_free(l->kick);
    event_base_free(l->base);
    free(l);
}

int craft_tcp_loop_new(craft_tcp_loop_t **out)
{
    if (out == NULL) {
        return CRAFT_EINVAL;
    }
    return loop_create(out);
}

void craft_tcp_loop_free(craft_tcp_loop_t *loop)
{
    if (loop != NULL) {
        loop_unref(loop);
    }
}

int craft_tcp_loop_set_spin(craft_tcp_loop_t *loop, int64_t spin_us)
{
    if (loop == NULL || spin_us < 0 || spin_us > CRAFT_TCP_LOOP_SPIN_MAX_US) {
        return CRAFT_EINVAL;
    }
    atomic_store(&loop->spin_ns, spin_us * 1000);
    event_active(loop->kick, EV_READ, 0);
    return 0;
}

void craft_tcp_loop_stats(craft_tcp_loop_t *loop, craft_tcp_loop_stats_t *out)
{
    if (out == NULL) {
        return;
    }
    memset(out, 0, sizeof *out);
    if (loop == NULL) {
        return;
    }
    out->spins = atomic_load(&loop->st_spins);
    out->spin_hits = atomic_load(&loop->st_spin_hits);
    out->sleeps = atomic_load(&loop->st_sleeps);
}

bool craft__tcp_on_loop(const tcp_t *t)
{
    return pthread_equal(pthread_self(), t->loop->thread);
}

/* ------------------------------------------------------------------------ */
/* Handlers, lifecycle                                                       */
/* ------------------------------------------------------------------------ */

static void handler_set(tcp_t *t, handler_slot_t *h, craft_rpc_handler_fn fn,
                        void *arg)
{
    pthread_mutex_lock(&t->mu);
    /* From inside a handler (on the loop thread) the only invocation in
     * progress is the caller's own: waiting for it would never end. */
    bool on_loop = t->loop != NULL && craft__tcp_on_loop(t);
    while (!on_loop && h->active_old > 0) {
        pthread_cond_wait(&t->handlers_idle, &t->mu);
    }
    h->active_old += h->active_cur;
    h->active_cur = 0;
    h->gen++;
    h->fn = fn;
    h->arg = arg;
    while (!on_loop && h->active_old > 0) {
        pthread_cond_wait(&t->handlers_idle, &t->mu);
    }
    pthread_mutex_unlock(&t->mu);
}

static void tcp_set_rpc_handler(void *ctx, craft_rpc_handler_fn fn, void *arg)
{
    tcp_t *t = ctx;
    handler_set(t, &t->rpc_handler, fn, arg);
}

static void tcp_set_heartbeat_handler(void *ctx, craft_rpc_handler_fn fn, void *arg)
{
    tcp_t *t = ctx;
    handler_set(t, &t->hb_handler, fn, arg);
}

static const char *tcp_local_addr(void *ctx)
{
    tcp_t *t = ctx;
    return t->local_addr;
}

static void tcp_close(void *ctx)
{
    tcp_t *t = ctx;
    if (t == NULL) {
        return;
    }
    pthread_mutex_lock(&t->mu);
    t->closed = true;
    for (out_call_t *call = t->calls; call != NULL; call = call->next) {
        if (!call->done) {
            call->done = true;
            call->result = CRAFT_ECLOSED;
            pthread_cond_broadcast(&call->cond);
        }
    }
    craft__queue_t *e;
    CRAFT__QUEUE_FOREACH(e, &t->pipelines) {
        craft__pq_stop_locked(&CRAFT__QUEUE_DATA(e, pipeline_t, link)->q);
    }
    t->stop_task.kind = TASK_STOP;
    craft__tcp_post_locked(t, &t->stop_task);
    while (!t->torn_down) {
        pthread_cond_wait(&t->torn_down_cond, &t->mu);
    }
    pthread_mutex_unlock(&t->mu);

    event_free(t->wakeup);
    t->wakeup = NULL;
    loop_unref(t->loop);
    t->loop = NULL;
    /* The loop thread made every handler call: none is in progress. */
    handler_set(t, &t->rpc_handler, NULL, NULL);
    handler_set(t, &t->hb_handler, NULL, NULL);
    craft__tcp_transport_unref(t);
}

void craft__tcp_stats(craft_transport_t *trans, craft__tcp_stats_t *out)
{
    tcp_t *t = trans->ctx;
    pthread_mutex_lock(&t->mu);
    *out = t->stats;
    pthread_mutex_unlock(&t->mu);
}

void craft_tcp_options_default(craft_tcp_options_t *o)
{
    memset(o, 0, sizeof *o);
    o->max_pool = DEFAULT_MAX_POOL;
    o->timeout_ms = DEFAULT_TIMEOUT_MS;
    o->max_inflight = DEFAULT_MAX_INFLIGHT;
    o->idle_timeout_ms = DEFAULT_IDLE_TIMEOUT_MS;
    o->no_prevote_ttl_ms = DEFAULT_NO_PREVOTE_TTL_MS;
    o->log_level = CRAFT_LEVEL_INFO;
}

int craft_tcp_transport_new(const char *bind, const char *advertise,
                            const craft_tcp_options_t *opts,
                            craft_transport_t **out)
{
    craft_tcp_options_t o;
    if (opts != NULL) {
        o = *opts;
    } else {
        craft_tcp_options_default(&o);
    }
    if (bind == NULL || out == NULL || o.max_pool < 0 || o.timeout_ms <= 0 ||
        o.timeout_ms > INT64_MAX / 1000000 / 2 || o.max_inflight < 1 ||
        o.max_inflight > MAX_INFLIGHT_LIMIT || o.idle_timeout_ms < 0 ||
        o.no_prevote_ttl_ms < 0 || o.no_prevote_ttl_ms > INT64_MAX / 1000000 / 2) {
        return CRAFT_EINVAL;
    }
    struct sockaddr_storage bind_sa;
    socklen_t bind_len = 0;
    int rv = craft__tcp_resolve(bind, true, false, &bind_sa, &bind_len);
    if (rv != 0) {
        return CRAFT_EINVAL;
    }
    struct sockaddr_storage adv_sa;
    socklen_t adv_len = 0;
    if (advertise != NULL) {
        rv = craft__tcp_resolve(advertise, false, true, &adv_sa, &adv_len);
        if (rv != 0 || !craft__tcp_advertisable((struct sockaddr *)&adv_sa)) {
            return CRAFT_EINVAL;
        }
    }

    tcp_t *t = calloc(1, sizeof *t);
    if (t == NULL) {
        return CRAFT_ENOMEM;
    }
    t->opts = o;
    craft__wire_limits_default(&t->limits);
    if (o.max_frame_bytes != 0) {
        t->limits.max_frame_bytes = o.max_frame_bytes;
    }
    if (o.max_entries != 0) {
        t->limits.max_entries = o.max_entries;
    }
    if (o.max_blob_bytes != 0) {
        t->limits.max_blob_bytes = o.max_blob_bytes;
    }
    if (o.max_depth != 0) {
        t->limits.max_depth = o.max_depth;
    }
    t->log.fn = o.logger != NULL ? o.logger : craft__stderr_logger;
    t->log.ctx = o.logger_ctx;
    t->log.level = o.log_level;
    t->log.prefix = NULL;
    atomic_init(&t->refs, 1);
    craft__queue_init(&t->pipelines);
    rv = CRAFT_ENOMEM;
    if (pthread_mutex_init(&t->mu, NULL) != 0) {
        goto err_after_alloc;
    }
    if (pthread_cond_init(&t->handlers_idle, NULL) != 0) {
        goto err_after_mu;
    }
    if (pthread_cond_init(&t->torn_down_cond, NULL) != 0) {
        goto err_after_cond;
    }
    if (o.loop != NULL) {
        atomic_fetch_add(&o.loop->refs, 1);
        t->loop = o.loop;
    } else {
        rv = loop_create(&t->loop);
        if (rv != 0) {
            goto err_after_cond2;
        }
        rv = CRAFT_ENOMEM;
    }
    t->listener = evconnlistener_new_bind(
        t->loop->base, craft__tcp_on_accept, t,
        LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC | LEV_OPT_DISABLED,
        -1,
        (struct sockaddr *)&bind_sa, (int)bind_len);
    if (t->listener == NULL) {
        CRAFT__ERROR(&t->log, COMPONENT, "cannot listen: bind=%s error=%s", bind,
                     evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
        rv = CRAFT_EIO;
        goto err_after_base;
    }
    evconnlistener_set_error_cb(t->listener, craft__tcp_on_accept_error);
    if (advertise == NULL) {
        adv_len = sizeof adv_sa;
        if (getsockname(evconnlistener_get_fd(t->listener),
                        (struct sockaddr *)&adv_sa, &adv_len) != 0) {
            rv = CRAFT_EIO;
            goto err_after_listener;
        }
        if (!craft__tcp_advertisable((struct sockaddr *)&adv_sa)) {
            CRAFT__ERROR(&t->log, COMPONENT,
                         "local bind address is not advertisable: bind=%s", bind);
            rv = CRAFT_EINVAL;
            goto err_after_listener;
        }
    }
    craft__tcp_format_addr((struct sockaddr *)&adv_sa, t->local_addr, sizeof t->local_addr);
    t->wakeup = event_new(t->loop->base, -1, 0, on_wakeup, t);
    if (t->wakeup == NULL) {
        goto err_after_listener;
    }
    t->iface.ctx = t;
    t->iface.set_rpc_handler = tcp_set_rpc_handler;
    t->iface.set_heartbeat_handler = tcp_set_heartbeat_handler;
    t->iface.local_addr = tcp_local_addr;
    t->iface.append_entries = craft__tcp_append_entries;
    t->iface.request_vote = craft__tcp_request_vote;
    t->iface.request_prevote = craft__tcp_request_prevote;
    t->iface.install_snapshot = craft__tcp_install_snapshot;
    t->iface.timeout_now = craft__tcp_timeout_now;
    t->iface.append_entries_pipeline = craft__tcp_pipeline;
    t->iface.close = tcp_close;
    /* The loop may be running already: the listener was created disabled
     * so that the loop sees it only complete. */
    if (evconnlistener_enable(t->listener) != 0) {
        rv = CRAFT_EIO;
        goto err_after_wakeup;
    }
    CRAFT__DEBUG(&t->log, COMPONENT, "listening: bind=%s advertise=%s", bind,
                 t->local_addr);
    *out = &t->iface;
    return 0;

err_after_wakeup:
    event_free(t->wakeup);
err_after_listener:
    evconnlistener_free(t->listener);
err_after_base:
    loop_unref(t->loop);
err_after_cond2:
    pthread_cond_destroy(&t->torn_down_cond);
err_after_cond:
    pthread_cond_destroy(&t->handlers_idle);
err_after_mu:
    pthread_mutex_destroy(&t->mu);
err_after_alloc:
    free(t);
    return rv;
}
