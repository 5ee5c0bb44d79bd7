/*
 * TCP transport: AppendEntries pipelines, loop side (sending, matching
 * responses, the deadline timer) and caller side (the craft_pipeline_t
 * vtable). See transports/tcp_internal.h.
 */
#include "transports/tcp_internal.h"

/* ------------------------------------------------------------------------ */
/* Pipelines (loop side)                                                     */
/* ------------------------------------------------------------------------ */

/* Fails every outstanding request of `p` with `err`; later appends fail. */
void craft__tcp_pipe_break(tcp_t *t, pipeline_t *p, int err)
{
    pthread_mutex_lock(&t->mu);
    p->wconn = NULL;
    craft__pq_break_locked(&p->q, err);
    pthread_mutex_unlock(&t->mu);
    craft__pq_deliver(&p->q);
}

void craft__tcp_pipe_ready(tcp_t *t, pipeline_t *p)
{
    pthread_mutex_lock(&t->mu);
    p->ready = true;
    p->wconn = p->conn;
    pthread_cond_broadcast(&p->q.cond);
    pthread_mutex_unlock(&t->mu);
}

/* Arms the timer of a pipeline's connection for the response deadline of
 * the oldest request in flight, or one timeout from now when none is: it
 * stays armed, since callers write requests without the loop's knowledge
 * (a request sent later is due later). false when the deadline passed. */
bool craft__tcp_pipe_arm_timer(tcp_t *t, conn_t *c)
{
    pipeline_t *p = c->pipe;
    int64_t oldest = -1;
    pthread_mutex_lock(&t->mu);
    craft__pq_item_t *qi = craft__pq_first_locked(&p->q, CRAFT__PQ_SENT);
    if (qi != NULL) {
        oldest = CRAFT__PQ_CONTAINER(qi, pl_item_t, q)->sent_ns;
    }
    pthread_mutex_unlock(&t->mu);
    int64_t now = craft__tcp_now_ns();
    int64_t due = (oldest >= 0 ? oldest : now) + t->opts.timeout_ms * 1000000;
    if (due <= now) {
        return false;
    }
    int64_t left_us = (due - now + 999) / 1000;
    struct timeval tv;
    tv.tv_sec = (time_t)(left_us / 1000000);
    tv.tv_usec = (suseconds_t)(left_us % 1000000);
    evtimer_add(c->timer, &tv);
    return true;
}

void craft__tcp_pipe_start(tcp_t *t, pipeline_t *p)
{
    pthread_mutex_lock(&t->mu);
    bool closed = p->q.closed;
    pthread_mutex_unlock(&t->mu);
    if (closed || t->stopping) {
        craft__tcp_pipe_break(t, p, CRAFT_ECLOSED);
        return;
    }
    peer_t *peer = craft__tcp_peer_get(t, p->target);
    if (peer == NULL) {
        craft__tcp_pipe_break(t, p, CRAFT_ENOMEM);
        return;
    }
    conn_t *c = craft__tcp_pool_take(peer);
    bool pooled = c != NULL;
    if (c == NULL) {
        c = craft__tcp_dial(t, peer, &p->sa, p->salen);
        if (c == NULL) {
            craft__tcp_pipe_break(t, p, CRAFT_EUNREACHABLE);
            return;
        }
    }
    pthread_mutex_lock(&t->mu);
    p->refs++;
    pthread_mutex_unlock(&t->mu);
    c->pipe = p;
    c->need = 0;
    craft__wire_decoder_reset(&c->dec);
    p->conn = c;
    craft__tcp_pipe_arm_timer(t, c);
    if (pooled) {
        craft__tcp_pipe_ready(t, p);
    }
}

void craft__tcp_pipe_send(tcp_t *t, pipeline_t *p)
{
    conn_t *c = p->conn;
    if (c == NULL) {
        return; /* broken or closed: the requests already failed */
    }
    int rv = 0;
    int64_t now = craft__tcp_now_ns();
    /* mu held while writing: a caller must not write directly between
     * these requests (see pipe_append_entries). */
    pthread_mutex_lock(&t->mu);
    for (craft__pq_item_t *qi = p->q.head; qi != NULL && rv == 0; qi = qi->next) {
        if (qi->state != CRAFT__PQ_QUEUED) {
            continue;
        }
        pl_item_t *it = CRAFT__PQ_CONTAINER(qi, pl_item_t, q);
        uint8_t *frame = it->frame;
        it->frame = NULL;
        qi->state = CRAFT__PQ_SENT;
        it->sent_ns = now;
        rv = craft__tcp_conn_write(c, frame, it->frame_len, true);
    }
    pthread_mutex_unlock(&t->mu);
    if (rv != 0) {
        craft__tcp_conn_close(c, rv);
    }
}

void craft__tcp_pipe_on_read(tcp_t *t, conn_t *c)
{
    pipeline_t *p = c->pipe;
    while (c->in.len > 0 && c->in.len >= c->need) {
        craft__wire_response_t resp;
        size_t consumed = 0;
        int rv = craft__wire_decode_response(&c->dec, CRAFT_RPC_APPEND_ENTRIES,
                                             craft__tcp_inbuf_data(&c->in), c->in.len,
                                             &resp, &consumed);
        if (rv == CRAFT__WIRE_NEED_MORE) {
            c->need = craft__wire_decoder_need(&c->dec);
            break;
        }
        c->need = 0;
        if (rv != 0) {
            const char *reason = craft__wire_decoder_reason(&c->dec);
            CRAFT__WARN(&t->log, COMPONENT,
                        "malformed pipeline response: target=%s reason=%s",
                        p->target, reason != NULL ? reason : "out of memory");
            craft__tcp_conn_close(c, rv == CRAFT_ENOMEM ? CRAFT_ENOMEM : CRAFT_EPROTOCOL);
            return;
        }
        craft__tcp_inbuf_consume(&c->in, consumed);
        pthread_mutex_lock(&t->mu);
        craft__pq_item_t *qi = craft__pq_first_locked(&p->q, CRAFT__PQ_SENT);
        bool deliver = false;
        if (qi != NULL) {
            pl_item_t *it = CRAFT__PQ_CONTAINER(qi, pl_item_t, q);
            it->resp = resp;
            int err = resp.error != NULL ? craft__tcp_map_peer_error(resp.error) : 0;
            deliver = craft__pq_done_locked(&p->q, qi, err, &it->resp.body.append_entries);
        }
        pthread_mutex_unlock(&t->mu);
        if (qi != NULL) {
            /* Delivered on this thread (no hand-off). The connection's
             * reference keeps `p`. */
            craft__pq_wake(&p->q, deliver);
        } else {
            craft__wire_response_free(&resp);
            CRAFT__WARN(&t->log, COMPONENT,
                        "pipeline response without a request: target=%s",
                        p->target);
            craft__tcp_conn_close(c, CRAFT_EPROTOCOL);
            return;
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Pipelines (caller side)                                                   */
/* ------------------------------------------------------------------------ */

static int pipe_append_entries(void *ctx, const craft_append_entries_req_t *req,
                               void *tag)
{
    pipeline_t *p = ctx;
    tcp_t *t = p->t;
    if (req == NULL) {
        return CRAFT_EINVAL;
    }
    pl_item_t *it = calloc(1, sizeof *it);
    if (it == NULL) {
        return CRAFT_ENOMEM;
    }
    craft__mp_buf_t b;
    craft__mp_buf_init(&b);
    int rv = craft__wire_encode_request(&b, CRAFT__WIRE_FORMAT_DEFAULT,
                                        CRAFT_RPC_APPEND_ENTRIES, req);
    if (rv != 0) {
        craft__mp_buf_free(&b);
        free(it);
        return rv;
    }
    it->frame = craft__mp_buf_steal(&b, &it->frame_len);
    if (it->frame == NULL) {
        free(it);
        return CRAFT_ENOMEM;
    }
    it->q.tag = tag;
    it->q.state = CRAFT__PQ_QUEUED;

    pthread_mutex_lock(&t->mu);
    rv = craft__pq_reserve_locked(&p->q);
    if (rv != 0) {
        pthread_mutex_unlock(&t->mu);
        craft__tcp_pl_item_free(&it->q);
        return rv;
    }
    /* Written from this thread when the connection is up and nothing
     * waits before this request: neither queued requests (craft__tcp_pipe_send
     * writes them all under mu) nor bytes in the connection's output. */
    conn_t *c = p->wconn;
    bool direct = false;
    if (c != NULL && (p->q.tail == NULL || p->q.tail->state != CRAFT__PQ_QUEUED)) {
        pthread_mutex_lock(&c->wmu);
        direct = c->wopen && !c->wbusy;
        if (!direct) {
            pthread_mutex_unlock(&c->wmu);
        }
    }
    uint8_t *frame = NULL;
    size_t len = it->frame_len;
    if (direct) {
        /* Sent before mu is released: the response may arrive at once. */
        it->q.state = CRAFT__PQ_SENT;
        it->sent_ns = craft__tcp_now_ns();
        frame = it->frame;
        it->frame = NULL;
    } else {
        int posted = craft__tcp_post_locked(t, &p->send_task);
        if (posted < 0) {
            pthread_mutex_unlock(&t->mu);
            craft__tcp_pl_item_free(&it->q);
            return CRAFT_ECLOSED;
        }
        if (posted == 1) {
            p->refs++;
        }
    }
    craft__pq_append_locked(&p->q, &it->q);
    pthread_mutex_unlock(&t->mu);
    if (direct) {
        craft__tcp_conn_write_direct_locked(c, frame, len);
        pthread_mutex_unlock(&c->wmu);
    }
    return 0;
}

static int pipe_next_response(void *ctx, craft_append_entries_resp_t *resp,
                              void **tag)
{
    pipeline_t *p = ctx;
    if (resp == NULL || tag == NULL) {
        return CRAFT_EINVAL;
    }
    craft__wire_response_free(&p->last_resp); /* the caller's thread only */
    craft__pq_item_t *done;
    int rv = craft__pq_next_response(&p->q, resp, tag, &done);
    if (done != NULL) {
        pl_item_t *it = CRAFT__PQ_CONTAINER(done, pl_item_t, q);
        if (rv == 0) {
            /* *resp's strings live until the next call. */
            p->last_resp = it->resp;
            memset(&it->resp, 0, sizeof it->resp);
        }
        craft__tcp_pl_item_free(done);
    }
    return rv;
}

static void pipe_close(void *ctx)
{
    pipeline_t *p = ctx;
    tcp_t *t = p->t;
    pthread_mutex_lock(&t->mu);
    if (craft__pq_stop_locked(&p->q) && craft__tcp_post_locked(t, &p->close_task) == 1) {
        p->refs++;
    }
    pthread_mutex_unlock(&t->mu);
    craft__pq_hand_back(&p->q);
}

static int pipe_set_response_handler(void *ctx, craft_pipeline_response_fn fn, void *arg)
{
    pipeline_t *p = ctx;
    return craft__pq_set_response_handler(&p->q, fn, arg);
}

static void pipe_free(void *ctx)
{
    pipeline_t *p = ctx;
    if (p == NULL) {
        return;
    }
    tcp_t *t = p->t;
    pipe_close(p); /* the contract asks for close first; be lenient */
    pthread_mutex_lock(&t->mu);
    craft__queue_remove(&p->link);
    bool last = --p->refs == 0; /* the owner's */
    pthread_mutex_unlock(&t->mu);
    if (last) {
        craft__tcp_pipe_free_mem(p);
    }
}

int craft__tcp_pipeline(void *ctx, const char *id, const char *target,
                        craft_pipeline_t **out)
{
    tcp_t *t = ctx;
    (void)id;
    if (target == NULL || out == NULL) {
        return CRAFT_EINVAL;
    }
    if (t->opts.max_inflight <= 1) {
        return CRAFT_ENOTSUP; /* hashicorp: MaxRPCsInFlight 1 disables it */
    }
    pipeline_t *p = calloc(1, sizeof *p);
    if (p == NULL) {
        return CRAFT_ENOMEM;
    }
    int rv = craft__tcp_resolve(target, false, false, &p->sa, &p->salen);
    if (rv != 0) {
        free(p);
        return rv;
    }
    p->target = strdup(target);
    if (p->target == NULL ||
        craft__pq_init(&p->q, &t->mu, (size_t)t->opts.max_inflight,
                       craft__tcp_pl_item_free) != 0) {
        free(p->target);
        free(p);
        return CRAFT_ENOMEM;
    }
    craft__queue_init(&p->link);
    p->iface.ctx = p;
    p->iface.append_entries = pipe_append_entries;
    p->iface.next_response = pipe_next_response;
    p->iface.close = pipe_close;
    p->iface.free = pipe_free;
    p->iface.set_response_handler = pipe_set_response_handler;
    p->start_task.kind = TASK_PIPE_START;
    p->send_task.kind = TASK_PIPE_SEND;
    p->close_task.kind = TASK_PIPE_CLOSE;
    craft__tcp_transport_ref(t);
    p->t = t;
    p->refs = 1;

    int64_t deadline = craft__tcp_now_ns() + t->opts.timeout_ms * 1000000;
    pthread_mutex_lock(&t->mu);
    if (t->closed) {
        pthread_mutex_unlock(&t->mu);
        craft__tcp_pipe_free_mem(p);
        return CRAFT_ECLOSED;
    }
    craft__queue_push(&t->pipelines, &p->link);
    if (craft__tcp_post_locked(t, &p->start_task) == 1) {
        p->refs++;
    }
    bool timed_out = false;
    while (!p->ready && p->q.broken == 0 && !p->q.closed && !timed_out) {
        timed_out = !craft__tcp_cond_wait_until(&p->q.cond, &t->mu, deadline);
    }
    rv = 0;
    if (p->q.closed) {
        rv = CRAFT_ECLOSED;
    } else if (p->q.broken != 0) {
        rv = p->q.broken;
    } else if (!p->ready) {
        rv = CRAFT_ETIMEDOUT;
    }
    pthread_mutex_unlock(&t->mu);
    if (rv != 0) {
        CRAFT__DEBUG(&t->log, COMPONENT, "cannot open pipeline: target=%s error=%s",
                     target, craft_strerror(rv));
        pipe_free(p);
        return rv;
    }
    *out = &p->iface;
    return 0;
}

