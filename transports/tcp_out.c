/*
 * TCP transport: outgoing synchronous calls, loop side (sending, snapshot
 * data, responses) and caller side (rpc_call, snapshot streaming out), and
 * the outgoing connection callbacks. See transports/tcp_internal.h.
 */
#include "transports/tcp_internal.h"

/* ------------------------------------------------------------------------ */
/* Outgoing synchronous calls (loop side)                                    */
/* ------------------------------------------------------------------------ */

static void call_attach(tcp_t *t, out_call_t *call, conn_t *c)
{
    pthread_mutex_lock(&t->mu);
    call->refs++;
    pthread_mutex_unlock(&t->mu);
    c->call = call;
    c->resp_seen = false;
    c->need = 0;
    craft__wire_decoder_reset(&c->dec);
    call->conn = c;
}

static void call_detach(tcp_t *t, conn_t *c)
{
    out_call_t *call = c->call;
    c->call = NULL;
    call->conn = NULL;
    craft__tcp_call_unref(t, call);
}

/* Moves handed-over snapshot chunks into the connection's output. */
void craft__tcp_call_move_chunks(tcp_t *t, out_call_t *call)
{
    conn_t *c = call->conn;
    pthread_mutex_lock(&t->mu);
    chunk_t *ch = call->chunks;
    call->chunks = call->chunks_tail = NULL;
    call->pending = 0;
    bool live = c != NULL && !call->done;
    pthread_mutex_unlock(&t->mu);
    if (!live) {
        craft__tcp_chunks_free(ch);
        return;
    }
    struct evbuffer *out = bufferevent_get_output(c->bev);
    while (ch != NULL) {
        chunk_t *next = ch->next;
        if (evbuffer_add_reference(out, ch->data, ch->n, craft__tcp_chunk_cleanup, ch) != 0) {
            craft__tcp_chunks_free(ch);
            craft__tcp_conn_close(c, CRAFT_ENOMEM);
            return;
        }
        ch = next;
    }
    pthread_mutex_lock(&t->mu);
    call->out_buffered = evbuffer_get_length(out);
    size_t held = call->out_buffered + call->pending;
    if (held > t->stats.snapshot_out_peak) {
        t->stats.snapshot_out_peak = held;
    }
    pthread_mutex_unlock(&t->mu);
}

/* Sends `call` on a pooled connection or a new one. */
static void call_connect(tcp_t *t, out_call_t *call, bool allow_pool)
{
    peer_t *peer = craft__tcp_peer_get(t, call->target);
    if (peer == NULL) {
        craft__tcp_call_finish(t, call, CRAFT_ENOMEM, NULL);
        return;
    }
    conn_t *c = NULL;
    if (allow_pool && call->type != CRAFT_RPC_INSTALL_SNAPSHOT) {
        c = craft__tcp_pool_take(peer);
    }
    if (c != NULL) {
        c->from_pool = true;
    } else {
        c = craft__tcp_dial(t, peer, &call->sa, call->salen);
        if (c == NULL) {
            CRAFT__DEBUG(&t->log, COMPONENT, "failed to dial: target=%s",
                         call->target);
            craft__tcp_call_finish(t, call, CRAFT_EUNREACHABLE, NULL);
            return;
        }
    }
    call_attach(t, call, c);
    if (call->type == CRAFT_RPC_INSTALL_SNAPSHOT) {
        bufferevent_setwatermark(c->bev, EV_WRITE, SNAP_OUT_LIMIT / 2, 0);
    }
    if (craft__tcp_conn_write(c, call->frame, call->frame_len, false) != 0) {
        craft__tcp_conn_close(c, CRAFT_ENOMEM);
        return;
    }
    if (call->type == CRAFT_RPC_INSTALL_SNAPSHOT) {
        craft__tcp_call_move_chunks(t, call);
    }
}

void craft__tcp_call_start(tcp_t *t, out_call_t *call)
{
    pthread_mutex_lock(&t->mu);
    bool done = call->done;
    pthread_mutex_unlock(&t->mu);
    if (done) {
        return;
    }
    if (t->stopping) {
        craft__tcp_call_finish(t, call, CRAFT_ECLOSED, NULL);
        return;
    }
    call_connect(t, call, true);
}

/* A connection carrying `call` failed before its response completed. */
static void call_conn_failed(tcp_t *t, conn_t *c, const char *why)
{
    out_call_t *call = c->call;
    if (!c->resp_seen && c->from_pool && !call->retried && !t->stopping) {
        /* A pooled connection the peer closed while idle: once more on a
         * fresh one (hashicorp would fail the call). */
        call->retried = true;
        c->call = NULL; /* the connection's reference is now ours */
        call->conn = NULL;
        craft__tcp_conn_close(c, CRAFT_EIO);
        pthread_mutex_lock(&t->mu);
        bool done = call->done;
        pthread_mutex_unlock(&t->mu);
        if (!done) {
            call_connect(t, call, false);
        }
        craft__tcp_call_unref(t, call);
        return;
    }
    int rv = CRAFT_EIO;
    if (!c->connected) {
        rv = CRAFT_EUNREACHABLE;
    } else if (!c->resp_seen && call->type == CRAFT_RPC_REQUEST_PREVOTE) {
        rv = CRAFT_ENOTSUP;
        CRAFT__INFO(&t->log, COMPONENT,
                    "peer closed the connection on RequestPreVote, treating it "
                    "as a peer without pre-vote: target=%s", call->target);
        pthread_mutex_lock(&t->mu);
        craft__tcp_remember_no_prevote_locked(t, call->target);
        t->stats.prevote_fallbacks++;
        pthread_mutex_unlock(&t->mu);
    } else {
        CRAFT__DEBUG(&t->log, COMPONENT, "rpc failed: target=%s error=%s",
                     call->target, why);
    }
    craft__tcp_conn_close(c, rv);
}

/* Response bytes for the call on `c`. */
static void call_on_read(tcp_t *t, conn_t *c)
{
    out_call_t *call = c->call;
    if (c->in.len == 0) {
        return;
    }
    c->resp_seen = true;
    if (c->in.len < c->need) {
        return;
    }
    craft__wire_response_t resp;
    size_t consumed = 0;
    int rv = craft__wire_decode_response(&c->dec, call->type, craft__tcp_inbuf_data(&c->in),
                                         c->in.len, &resp, &consumed);
    if (rv == CRAFT__WIRE_NEED_MORE) {
        c->need = craft__wire_decoder_need(&c->dec);
        return;
    }
    c->need = 0;
    if (rv != 0) {
        const char *reason = craft__wire_decoder_reason(&c->dec);
        CRAFT__WARN(&t->log, COMPONENT, "malformed response: target=%s reason=%s",
                    call->target, reason != NULL ? reason : "out of memory");
        craft__tcp_conn_close(c, rv == CRAFT_ENOMEM ? CRAFT_ENOMEM : CRAFT_EPROTOCOL);
        return;
    }
    craft__tcp_inbuf_consume(&c->in, consumed);
    int result = 0;
    if (resp.error != NULL) {
        result = craft__tcp_map_peer_error(resp.error);
        CRAFT__DEBUG(&t->log, COMPONENT, "peer returned an error: target=%s error=%s",
                     call->target, resp.error);
    }
    bool reusable = call->type != CRAFT_RPC_INSTALL_SNAPSHOT;
    craft__tcp_call_finish(t, call, result, &resp);
    call_detach(t, c);
    if (reusable) {
        craft__tcp_pool_put(c);
    } else {
        craft__tcp_conn_close(c, CRAFT_ECLOSED);
    }
}

/* ------------------------------------------------------------------------ */
/* Outgoing connection callbacks                                             */
/* ------------------------------------------------------------------------ */

/* Bytes arrived on an outgoing connection. */
void craft__tcp_out_on_read(conn_t *c)
{
    tcp_t *t = c->t;
    if (c->pipe != NULL) {
        craft__tcp_pipe_on_read(t, c);
    } else if (c->call != NULL) {
        call_on_read(t, c);
    } else {
        CRAFT__DEBUG(&t->log, COMPONENT,
                     "unexpected data on an idle connection: target=%s", c->name);
        craft__tcp_conn_close(c, CRAFT_EPROTOCOL);
    }
}

void craft__tcp_out_write_cb(struct bufferevent *bev, void *arg)
{
    conn_t *c = arg;
    tcp_t *t = c->t;
    out_call_t *call = c->call;
    craft__tcp_conn_on_written(c);
    if (call == NULL || call->type != CRAFT_RPC_INSTALL_SNAPSHOT) {
        return;
    }
    pthread_mutex_lock(&t->mu);
    call->out_buffered = evbuffer_get_length(bufferevent_get_output(bev));
    pthread_cond_broadcast(&call->cond);
    pthread_mutex_unlock(&t->mu);
}

void craft__tcp_out_event_cb(struct bufferevent *bev, short what, void *arg)
{
    conn_t *c = arg;
    tcp_t *t = c->t;
    if (what & BEV_EVENT_CONNECTED) {
        c->connected = true;
        craft__tcp_set_nodelay(bev);
        pthread_mutex_lock(&c->wmu);
        c->wfd = bufferevent_getfd(bev);
        c->wopen = true;
        pthread_mutex_unlock(&c->wmu);
        if (c->pipe != NULL) {
            craft__tcp_pipe_ready(t, c->pipe);
        }
        return;
    }
    int sockerr = EVUTIL_SOCKET_ERROR();
    const char *why = (what & BEV_EVENT_EOF) ? "connection closed by peer"
                                             : evutil_socket_error_to_string(sockerr);
    if (c->call != NULL) {
        call_conn_failed(t, c, why);
    } else if (c->pipe != NULL) {
        CRAFT__DEBUG(&t->log, COMPONENT, "pipeline connection failed: target=%s error=%s",
                     c->name, why);
        craft__tcp_conn_close(c, c->connected ? CRAFT_EIO : CRAFT_EUNREACHABLE);
    } else {
        craft__tcp_conn_close(c, CRAFT_EIO); /* an idle pooled connection went away */
    }
}

void craft__tcp_out_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    conn_t *c = arg;
    if (c->pipe != NULL && !craft__tcp_pipe_arm_timer(c->t, c)) {
        CRAFT__WARN(&c->t->log, COMPONENT, "pipeline response timed out: target=%s",
                    c->name);
        craft__tcp_conn_close(c, CRAFT_ETIMEDOUT);
    }
}

/* ------------------------------------------------------------------------ */
/* Synchronous RPCs (caller side)                                            */
/* ------------------------------------------------------------------------ */

static int validate_req(craft_rpc_type_t type, const void *req,
                        const craft_reader_t *data)
{
    if (req == NULL) {
        return CRAFT_EINVAL;
    }
    if (type == CRAFT_RPC_INSTALL_SNAPSHOT) {
        const craft_install_snapshot_req_t *is = req;
        if (is->size < 0 || (is->size > 0 && (data == NULL || data->read == NULL))) {
            return CRAFT_EINVAL;
        }
    }
    return 0;
}

/* Copies the decoded response body into the caller's struct; header
 * strings are interned. Called with mu held. */
static void copy_resp_locked(tcp_t *t, craft_rpc_type_t type,
                             const craft__wire_response_t *resp, void *out)
{
    craft_rpc_header_t *h = NULL;
    switch (type) {
    case CRAFT_RPC_APPEND_ENTRIES: {
        craft_append_entries_resp_t *o = out;
        *o = resp->body.append_entries;
        h = &o->header;
        break;
    }
    case CRAFT_RPC_REQUEST_VOTE: {
        craft_request_vote_resp_t *o = out;
        *o = resp->body.request_vote;
        h = &o->header;
        break;
    }
    case CRAFT_RPC_REQUEST_PREVOTE: {
        craft_request_prevote_resp_t *o = out;
        *o = resp->body.request_prevote;
        h = &o->header;
        break;
    }
    case CRAFT_RPC_INSTALL_SNAPSHOT: {
        craft_install_snapshot_resp_t *o = out;
        *o = resp->body.install_snapshot;
        h = &o->header;
        break;
    }
    case CRAFT_RPC_TIMEOUT_NOW: {
        craft_timeout_now_resp_t *o = out;
        *o = resp->body.timeout_now;
        h = &o->header;
        break;
    }
    }
    if (h != NULL) {
        h->id = craft__tcp_intern_locked(t, h->id);
        h->addr = craft__tcp_intern_locked(t, h->addr);
    }
}

/* Marks the call timed out (mu held) and has the loop drop its
 * connection. */
static void call_time_out_locked(tcp_t *t, out_call_t *call)
{
    if (call->done) {
        return;
    }
    call->done = true;
    call->result = CRAFT_ETIMEDOUT;
    if (craft__tcp_post_locked(t, &call->cancel_task) == 1) {
        call->refs++;
    }
}

/* Caller side of InstallSnapshot: reads `data` in chunks and hands them to
 * the loop while little is outstanding. */
static void stream_snapshot(tcp_t *t, out_call_t *call, craft_reader_t *data,
                            int64_t size, int64_t deadline)
{
    int64_t remaining = size;
    while (remaining > 0) {
        pthread_mutex_lock(&t->mu);
        while (!call->done && call->pending + call->out_buffered >= SNAP_OUT_LIMIT) {
            if (!craft__tcp_cond_wait_until(&call->cond, &t->mu, deadline) && !call->done) {
                call_time_out_locked(t, call);
            }
        }
        bool done = call->done;
        pthread_mutex_unlock(&t->mu);
        if (done) {
            return;
        }
        size_t want = remaining < SNAP_CHUNK ? (size_t)remaining : SNAP_CHUNK;
        chunk_t *ch = malloc(sizeof *ch + want);
        int64_t n = ch != NULL ? data->read(data->ctx, ch->data, want) : CRAFT_ENOMEM;
        if (n <= 0 || n > (int64_t)want) {
            free(ch);
            int err = n < 0 ? (int)n : (n == 0 ? CRAFT_EIO : CRAFT_EPROTOCOL);
            CRAFT__WARN(&t->log, COMPONENT,
                        "snapshot reader failed: target=%s sent=%lld size=%lld error=%s",
                        call->target, (long long)(size - remaining), (long long)size,
                        n == 0 ? "short read" : craft_strerror(err));
            pthread_mutex_lock(&t->mu);
            if (!call->done) {
                call->done = true;
                call->result = err;
                if (craft__tcp_post_locked(t, &call->cancel_task) == 1) {
                    call->refs++;
                }
            }
            pthread_mutex_unlock(&t->mu);
            return;
        }
        ch->n = (size_t)n;
        ch->next = NULL;
        remaining -= n;
        pthread_mutex_lock(&t->mu);
        if (call->done) {
            free(ch);
        } else {
            if (call->chunks_tail != NULL) {
                call->chunks_tail->next = ch;
            } else {
                call->chunks = ch;
            }
            call->chunks_tail = ch;
            call->pending += ch->n;
            size_t held = call->pending + call->out_buffered;
            if (held > t->stats.snapshot_out_peak) {
                t->stats.snapshot_out_peak = held;
            }
            if (craft__tcp_post_locked(t, &call->data_task) == 1) {
                call->refs++;
            }
        }
        pthread_mutex_unlock(&t->mu);
    }
}

static int rpc_call(tcp_t *t, const char *target, craft_rpc_type_t type,
                    const void *req, void *resp, craft_reader_t *data)
{
    if (target == NULL || resp == NULL) {
        return CRAFT_EINVAL;
    }
    int rv = validate_req(type, req, data);
    if (rv != 0) {
        return rv;
    }
    if (type == CRAFT_RPC_REQUEST_PREVOTE) {
        pthread_mutex_lock(&t->mu);
        bool skip = craft__tcp_no_prevote_locked(t, target, craft__tcp_now_ns());
        pthread_mutex_unlock(&t->mu);
        if (skip) {
            return CRAFT_ENOTSUP;
        }
    }
    out_call_t *call = calloc(1, sizeof *call);
    if (call == NULL) {
        return CRAFT_ENOMEM;
    }
    call->type = type;
    call->start_task.kind = TASK_CALL_START;
    call->data_task.kind = TASK_CALL_DATA;
    call->cancel_task.kind = TASK_CALL_CANCEL;
    call->target = strdup(target);
    if (call->target == NULL) {
        free(call);
        return CRAFT_ENOMEM;
    }
    rv = craft__tcp_resolve(target, false, false, &call->sa, &call->salen);
    if (rv != 0) {
        CRAFT__DEBUG(&t->log, COMPONENT, "cannot resolve target: target=%s", target);
        goto err_after_target;
    }
    craft__mp_buf_t b;
    craft__mp_buf_init(&b);
    rv = craft__wire_encode_request(&b, CRAFT__WIRE_FORMAT_DEFAULT, type, req);
    if (rv != 0) {
        craft__mp_buf_free(&b);
        goto err_after_target;
    }
    call->frame = craft__mp_buf_steal(&b, &call->frame_len);
    if (call->frame == NULL) {
        rv = CRAFT_ENOMEM;
        goto err_after_target;
    }
    if (craft__cond_init_monotonic(&call->cond) != 0) {
        rv = CRAFT_ENOMEM;
        goto err_after_frame;
    }

    int64_t timeout_ms = t->opts.timeout_ms;
    int64_t size = 0;
    if (type == CRAFT_RPC_INSTALL_SNAPSHOT) {
        size = ((const craft_install_snapshot_req_t *)req)->size;
        int64_t scale = size / TIMEOUT_SCALE;
        if (scale > 1) {
            timeout_ms = scale > INT64_MAX / 1000000 / timeout_ms
                             ? INT64_MAX / 1000000 / 2
                             : timeout_ms * scale;
        }
    }
    int64_t deadline = craft__tcp_now_ns() + timeout_ms * 1000000;

    pthread_mutex_lock(&t->mu);
    if (t->closed) {
        pthread_mutex_unlock(&t->mu);
        pthread_cond_destroy(&call->cond);
        rv = CRAFT_ECLOSED;
        goto err_after_frame;
    }
    /* close() may run while we wait: keep the transport's memory. */
    craft__tcp_transport_ref(t);
    call->refs = 1;
    call->next = t->calls;
    if (t->calls != NULL) {
        t->calls->prev = call;
    }
    t->calls = call;
    if (craft__tcp_post_locked(t, &call->start_task) == 1) {
        call->refs++;
    }
    pthread_mutex_unlock(&t->mu);

    if (type == CRAFT_RPC_INSTALL_SNAPSHOT && size > 0) {
        stream_snapshot(t, call, data, size, deadline);
    }

    pthread_mutex_lock(&t->mu);
    while (!call->done) {
        if (!craft__tcp_cond_wait_until(&call->cond, &t->mu, deadline) && !call->done) {
            call_time_out_locked(t, call);
        }
    }
    rv = call->result;
    if (rv == 0) {
        copy_resp_locked(t, type, &call->resp, resp);
    }
    if (call->prev != NULL) {
        call->prev->next = call->next;
    } else {
        t->calls = call->next;
    }
    if (call->next != NULL) {
        call->next->prev = call->prev;
    }
    bool last = --call->refs == 0;
    pthread_mutex_unlock(&t->mu);
    if (last) {
        craft__tcp_call_free(call);
    }
    craft__tcp_transport_unref(t);
    return rv;

err_after_frame:
    free(call->frame);
err_after_target:
    free(call->target);
    free(call);
    return rv;
}

int craft__tcp_append_entries(void *ctx, const char *id, const char *target,
                              const craft_append_entries_req_t *req,
                              craft_append_entries_resp_t *resp)
{
    (void)id;
    return rpc_call(ctx, target, CRAFT_RPC_APPEND_ENTRIES, req, resp, NULL);
}

int craft__tcp_request_vote(void *ctx, const char *id, const char *target,
                            const craft_request_vote_req_t *req,
                            craft_request_vote_resp_t *resp)
{
    (void)id;
    return rpc_call(ctx, target, CRAFT_RPC_REQUEST_VOTE, req, resp, NULL);
}

int craft__tcp_request_prevote(void *ctx, const char *id, const char *target,
                               const craft_request_prevote_req_t *req,
                               craft_request_prevote_resp_t *resp)
{
    (void)id;
    return rpc_call(ctx, target, CRAFT_RPC_REQUEST_PREVOTE, req, resp, NULL);
}

int craft__tcp_install_snapshot(void *ctx, const char *id, const char *target,
                                const craft_install_snapshot_req_t *req,
                                craft_install_snapshot_resp_t *resp,
                                craft_reader_t *data)
{
    (void)id;
    return rpc_call(ctx, target, CRAFT_RPC_INSTALL_SNAPSHOT, req, resp, data);
}

int craft__tcp_timeout_now(void *ctx, const char *id, const char *target,
                           const craft_timeout_now_req_t *req,
                           craft_timeout_now_resp_t *resp)
{
    (void)id;
    return rpc_call(ctx, target, CRAFT_RPC_TIMEOUT_NOW, req, resp, NULL);
}

