/*
 * TCP transport: incoming connections, loop side (accept, the inbound state
 * machine, dispatch) and consumer side (respond, the snapshot reader). See
 * transports/tcp_internal.h.
 */
#include "transports/tcp_internal.h"

static void in_process(conn_t *c);

/* ------------------------------------------------------------------------ */
/* Incoming (loop side)                                                      */
/* ------------------------------------------------------------------------ */

static void in_rpc_respond(craft_rpc_t *r, int err);
static int64_t snap_read(void *ctx, void *buf, size_t len);
static void snap_close(void *ctx);

/* Reading and the idle timer follow the state. */
static void in_update(conn_t *c)
{
    tcp_t *t = c->t;
    bool want_read = true;
    bool want_timer = true;
    switch (c->state) {
    case IN_DECODING:
    case IN_DRAINING:
        break;
    case IN_SNAPSHOT:
        pthread_mutex_lock(&t->mu);
        want_read = evbuffer_get_length(c->rpc->queue) < SNAP_IN_LIMIT;
        c->rpc->paused = !want_read;
        pthread_mutex_unlock(&t->mu);
        want_timer = want_read;
        break;
    case IN_AWAITING:
        want_read = c->in.len < READ_AHEAD;
        /* The consumer's time does not count: the timer only looks for a
         * response written directly (craft__tcp_in_timer_cb). */
        break;
    }
    craft__tcp_set_reading(c, want_read);
    if (want_timer && t->opts.idle_timeout_ms > 0) {
        struct timeval tv = craft__tcp_tv_of_ms(t->opts.idle_timeout_ms);
        evtimer_add(c->timer, &tv);
    } else {
        evtimer_del(c->timer);
    }
}

/* Hands a decoded request to the consumer. false when `c` was closed. */
static bool in_dispatch(conn_t *c, craft_rpc_t *decoded)
{
    tcp_t *t = c->t;
    in_rpc_t *rpc = calloc(1, sizeof *rpc);
    if (rpc == NULL || craft__cond_init_monotonic(&rpc->cond) != 0) {
        free(rpc);
        craft__wire_request_free(decoded);
        craft__tcp_conn_reject(c, "out of memory");
        return false;
    }
    rpc->rpc.type = decoded->type;
    rpc->rpc.req = decoded->req;
    rpc->rpc.respond = in_rpc_respond;
    rpc->rpc.transport_data = rpc;
    rpc->respond_task.kind = TASK_RPC_RESPOND;
    rpc->resume_task.kind = TASK_RPC_RESUME;
    rpc->refs = 2; /* the connection's and the consumer's */
    rpc->conn = c;
    craft__tcp_transport_ref(t);
    rpc->t = t;
    c->rpc = rpc;
    c->state = IN_AWAITING;
    if (rpc->rpc.type == CRAFT_RPC_INSTALL_SNAPSHOT) {
        rpc->queue = evbuffer_new();
        if (rpc->queue == NULL) {
            craft__tcp_conn_reject(c, "out of memory");
            craft__tcp_rpc_unref(t, rpc); /* the consumer never saw it */
            return false;
        }
        int64_t size = rpc->rpc.req.install_snapshot.size;
        rpc->to_queue = size;
        rpc->to_read = size;
        rpc->reader.ctx = rpc;
        rpc->reader.read = snap_read;
        rpc->reader.close = snap_close;
        rpc->rpc.reader = &rpc->reader;
        if (size > 0) {
            c->state = IN_SNAPSHOT;
        }
    }

    pthread_mutex_lock(&t->mu);
    handler_slot_t *h = NULL;
    if (!t->closed) {
        if (rpc->rpc.type == CRAFT_RPC_APPEND_ENTRIES &&
            t->hb_handler.fn != NULL &&
            craft__wire_is_heartbeat(&rpc->rpc.req.append_entries)) {
            h = &t->hb_handler;
        } else if (t->rpc_handler.fn != NULL) {
            h = &t->rpc_handler;
        }
    }
    if (h == NULL) {
        pthread_mutex_unlock(&t->mu);
        CRAFT__DEBUG(&t->log, COMPONENT, "no rpc handler: refusing rpc type %d from %s",
                     (int)rpc->rpc.type, c->name);
        rpc->rpc.respond(&rpc->rpc, CRAFT_ESHUTDOWN);
        return true;
    }
    craft_rpc_handler_fn fn = h->fn;
    void *arg = h->arg;
    uint64_t gen = h->gen;
    h->active_cur++;
    pthread_mutex_unlock(&t->mu);

    fn(arg, &rpc->rpc);

    pthread_mutex_lock(&t->mu);
    if (gen == h->gen) {
        h->active_cur--;
    } else {
        h->active_old--;
    }
    pthread_cond_broadcast(&t->handlers_idle);
    pthread_mutex_unlock(&t->mu);
    return true;
}

/* Moves snapshot bytes into the rpc's queue, up to SNAP_IN_LIMIT. */
static bool in_feed_snapshot(conn_t *c)
{
    tcp_t *t = c->t;
    in_rpc_t *rpc = c->rpc;
    int rv = 0;
    pthread_mutex_lock(&t->mu);
    size_t queued = evbuffer_get_length(rpc->queue);
    size_t room = queued < SNAP_IN_LIMIT ? SNAP_IN_LIMIT - queued : 0;
    size_t n1 = c->in.len;
    if (n1 > room) {
        n1 = room;
    }
    if ((int64_t)n1 > rpc->to_queue) {
        n1 = (size_t)rpc->to_queue;
    }
    if (n1 > 0) {
        rv = evbuffer_add(rpc->queue, craft__tcp_inbuf_data(&c->in), n1);
        if (rv == 0) {
            craft__tcp_inbuf_consume(&c->in, n1);
            rpc->to_queue -= (int64_t)n1;
        }
    }
    if (n1 > 0) {
        pthread_cond_broadcast(&rpc->cond);
    }
    size_t held = evbuffer_get_length(rpc->queue) + c->in.len;
    if (held > t->stats.snapshot_in_peak) {
        t->stats.snapshot_in_peak = held;
    }
    pthread_mutex_unlock(&t->mu);
    if (rv != 0) {
        craft__tcp_conn_reject(c, "out of memory");
        return false;
    }
    if (rpc->to_queue == 0) {
        c->state = IN_AWAITING;
    }
    return true;
}

/* Whether the consumer wrote the response to the rpc in progress itself
 * (in_rpc_respond); then the connection moves on to the next request.
 * Otherwise notes whether the consumer must wake the loop when it does:
 * only when input is buffered, since new input, EOF and the timer bring
 * the loop back here anyway. */
static bool in_answered(conn_t *c)
{
    tcp_t *t = c->t;
    in_rpc_t *rpc = c->rpc;
    size_t buffered = c->in.len;
    pthread_mutex_lock(&t->mu);
    bool answered = rpc->answered;
    bool last = false;
    if (answered) {
        rpc->conn = NULL;
        rpc->conn_err = CRAFT_ECLOSED;
        last = --rpc->refs == 0; /* the connection's */
    } else {
        rpc->kick = buffered > 0; /* no read event will come for it */
    }
    pthread_mutex_unlock(&t->mu);
    if (!answered) {
        return false;
    }
    if (last) {
        craft__tcp_rpc_free(rpc);
    }
    c->rpc = NULL;
    c->state = IN_DECODING;
    return true;
}

/* Runs the inbound state machine as far as the buffered bytes allow. */
static void in_process(conn_t *c)
{
    for (;;) {
        switch (c->state) {
        case IN_DECODING: {
            if (c->in.len == 0 || c->in.len < c->need) {
                in_update(c);
                return;
            }
            craft_rpc_t decoded;
            memset(&decoded, 0, sizeof decoded);
            size_t consumed = 0;
            int rv = craft__wire_decode_request(&c->dec, craft__tcp_inbuf_data(&c->in),
                                                c->in.len, &decoded, &consumed);
            if (rv == CRAFT__WIRE_NEED_MORE) {
                c->need = craft__wire_decoder_need(&c->dec);
                in_update(c);
                return;
            }
            c->need = 0;
            if (rv != 0) {
                const char *reason = craft__wire_decoder_reason(&c->dec);
                char buf[96];
                if (rv == CRAFT_EPROTOCOL && reason != NULL &&
                    strcmp(reason, "unknown rpc type") == 0) {
                    snprintf(buf, sizeof buf, "unknown rpc type %u",
                             (unsigned)craft__tcp_inbuf_data(&c->in)[0]);
                    reason = buf;
                }
                craft__tcp_conn_reject(c, reason != NULL ? reason : "out of memory");
                return;
            }
            craft__tcp_inbuf_consume(&c->in, consumed);
            if (!in_dispatch(c, &decoded)) {
                return;
            }
            break;
        }
        case IN_SNAPSHOT:
            if (!in_feed_snapshot(c)) {
                return;
            }
            if (c->state == IN_SNAPSHOT) {
                in_update(c);
                return;
            }
            break;
        case IN_AWAITING:
            if (!in_answered(c)) {
                in_update(c);
                return;
            }
            break;
        case IN_DRAINING: {
            size_t n = c->in.len;
            if ((int64_t)n > c->drain_left) {
                n = (size_t)c->drain_left;
            }
            craft__tcp_inbuf_consume(&c->in, n);
            c->drain_left -= (int64_t)n;
            if (c->drain_left > 0) {
                in_update(c);
                return;
            }
            c->state = IN_DECODING;
            break;
        }
        }
    }
}

void craft__tcp_in_write_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    craft__tcp_conn_on_written(arg);
}

void craft__tcp_in_event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    conn_t *c = arg;
    if (what & BEV_EVENT_EOF) {
        if ((c->state == IN_DECODING && c->in.len == 0 && c->rpc == NULL) ||
            c->state == IN_AWAITING) {
            /* Between requests, or the client gave up on one. */
            CRAFT__DEBUG(&c->t->log, COMPONENT, "inbound connection closed: peer=%s",
                         c->name);
            craft__tcp_conn_close(c, CRAFT_EIO);
        } else {
            craft__tcp_conn_reject(c, "connection closed in the middle of a request");
        }
        return;
    }
    craft__tcp_conn_reject(c, evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
}

void craft__tcp_in_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    conn_t *c = arg;
    if (c->state == IN_AWAITING) {
        /* Moves on if the response was written directly, else re-arms. An
         * idle connection is thus closed within two idle timeouts. */
        in_process(c);
        return;
    }
    if (c->state == IN_DECODING && c->in.len == 0) {
        CRAFT__DEBUG(&c->t->log, COMPONENT, "closing idle inbound connection: peer=%s",
                     c->name);
        craft__tcp_conn_close(c, CRAFT_EIO);
        return;
    }
    craft__tcp_conn_reject(c, "timed out waiting for the rest of a request");
}

/* The socket is readable: one read straight into the linear buffer, then
 * the connection's state machine. EOF and errors go where libevent would
 * have reported them. */
void craft__tcp_conn_read_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    conn_t *c = arg;
    craft__tcp_loop_traffic(c->t);
    size_t want = READ_MIN;
    if (c->inbound && (c->state == IN_SNAPSHOT || c->state == IN_DRAINING)) {
        want = SNAP_CHUNK;
    }
    if (c->need > c->in.len && c->need - c->in.len > want) {
        want = c->need - c->in.len; /* the rest of a large frame at once */
    }
    if (want > READ_MAX) {
        want = READ_MAX;
    }
    if (craft__tcp_inbuf_reserve(&c->in, want) != 0) {
        if (c->inbound) {
            craft__tcp_conn_reject(c, "out of memory");
        } else {
            craft__tcp_conn_close(c, CRAFT_ENOMEM);
        }
        return;
    }
    ssize_t n;
    do {
        n = recv(fd, c->in.p + c->in.off + c->in.len, want, 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        return;
    }
    if (n <= 0) {
        short ev = BEV_EVENT_READING | (n == 0 ? BEV_EVENT_EOF : BEV_EVENT_ERROR);
        if (c->inbound) {
            craft__tcp_in_event_cb(c->bev, ev, c);
        } else {
            craft__tcp_out_event_cb(c->bev, ev, c);
        }
        return;
    }
    c->in.len += (size_t)n;
    if (c->inbound) {
        in_process(c);
    } else {
        craft__tcp_out_on_read(c);
    }
}

void craft__tcp_on_accept(struct evconnlistener *l, evutil_socket_t fd,
                          struct sockaddr *sa, int salen, void *arg)
{
    (void)l;
    (void)salen;
    tcp_t *t = arg;
    if (t->stopping) {
        evutil_closesocket(fd);
        return;
    }
    struct bufferevent *bev = bufferevent_socket_new(t->loop->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (bev == NULL) {
        evutil_closesocket(fd);
        return;
    }
    conn_t *c = craft__tcp_conn_new(t, bev, true);
    if (c == NULL) {
        CRAFT__WARN(&t->log, COMPONENT, "out of memory accepting a connection");
        return;
    }
    craft__tcp_format_addr(sa, c->name, sizeof c->name);
    craft__tcp_set_nodelay(bev);
    c->state = IN_DECODING;
    in_update(c);
}

void craft__tcp_on_accept_error(struct evconnlistener *l, void *arg)
{
    (void)l;
    tcp_t *t = arg;
    CRAFT__ERROR(&t->log, COMPONENT, "failed to accept connection: error=%s",
                 evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
}

/* RPC_RESPOND: write the response, then on to the next request. */
void craft__tcp_rpc_respond_task(tcp_t *t, in_rpc_t *rpc)
{
    pthread_mutex_lock(&t->mu);
    conn_t *c = rpc->conn;
    bool answered = rpc->answered;
    uint8_t *frame = rpc->resp_frame;
    size_t len = rpc->resp_len;
    rpc->resp_frame = NULL;
    if (c != NULL && rpc->queue != NULL) {
        evbuffer_drain(rpc->queue, evbuffer_get_length(rpc->queue));
    }
    pthread_mutex_unlock(&t->mu);
    if (c == NULL) {
        free(frame);
        return;
    }
    if (answered) {
        in_process(c); /* written by the consumer: on to buffered input */
        return;
    }
    if (frame == NULL) {
        craft__tcp_conn_reject(c, "out of memory encoding a response");
        return;
    }
    if (craft__tcp_conn_write(c, frame, len, true) != 0) {
        craft__tcp_conn_reject(c, "out of memory");
        return;
    }
    int64_t left = rpc->rpc.type == CRAFT_RPC_INSTALL_SNAPSHOT ? rpc->to_queue : 0;
    c->rpc = NULL;
    pthread_mutex_lock(&t->mu);
    rpc->conn = NULL;
    rpc->conn_err = CRAFT_ECLOSED;
    bool last = --rpc->refs == 0; /* the connection's */
    pthread_mutex_unlock(&t->mu);
    if (last) {
        craft__tcp_rpc_free(rpc);
    }
    c->drain_left = left;
    c->state = left > 0 ? IN_DRAINING : IN_DECODING;
    in_process(c);
}

/* RPC_RESUME: the consumer made room in the snapshot queue. */
void craft__tcp_rpc_resume_task(tcp_t *t, in_rpc_t *rpc)
{
    pthread_mutex_lock(&t->mu);
    conn_t *c = rpc->conn;
    pthread_mutex_unlock(&t->mu);
    if (c != NULL && c->rpc == rpc && c->state == IN_SNAPSHOT) {
        in_process(c);
    }
}

/* ------------------------------------------------------------------------ */
/* Incoming (consumer side)                                                  */
/* ------------------------------------------------------------------------ */

/* rpc->respond: encodes on the consumer's thread and writes there too when
 * nothing waits to go out before the response; else the loop writes it. */
static void in_rpc_respond(craft_rpc_t *r, int err)
{
    in_rpc_t *rpc = (in_rpc_t *)(void *)r;
    tcp_t *t = rpc->t;
    craft__mp_buf_t b;
    craft__mp_buf_init(&b);
    int rv = craft__wire_encode_response(&b, CRAFT__WIRE_FORMAT_DEFAULT, r->type,
                                         err != 0 ? craft_strerror(err) : NULL,
                                         err != 0 ? NULL : (const void *)&r->resp);
    if (rv != 0) {
        CRAFT__ERROR(&t->log, COMPONENT, "failed to encode response: type=%d error=%s",
                     (int)r->type, craft_strerror(rv));
        craft__mp_buf_reset(&b);
        craft__wire_encode_response(&b, CRAFT__WIRE_FORMAT_DEFAULT, r->type,
                                    craft_strerror(rv), NULL);
    }
    size_t len = 0;
    uint8_t *frame = craft__mp_buf_steal(&b, &len);

    pthread_mutex_lock(&t->mu);
    if (rpc->responded) { /* a second respond breaks the contract */
        pthread_mutex_unlock(&t->mu);
        free(frame);
        return;
    }
    rpc->responded = true;
    pthread_cond_broadcast(&rpc->cond); /* the reader is no longer valid */
    /* Snapshot rpcs go through the loop: it discards unread data. */
    conn_t *c = rpc->conn;
    bool direct = false;
    if (c != NULL && frame != NULL && rpc->queue == NULL) {
        pthread_mutex_lock(&c->wmu);
        direct = c->wopen && !c->wbusy;
        if (!direct) {
            pthread_mutex_unlock(&c->wmu);
        }
    }
    if (direct) {
        /* The loop moves on when it next looks at the connection; now if
         * it holds the next request already. */
        rpc->answered = true;
        if (rpc->kick && craft__tcp_post_locked(t, &rpc->respond_task) == 1) {
            rpc->refs++;
        }
    } else {
        /* frame == NULL (out of memory): the loop drops the connection
         * rather than answer out of order. */
        rpc->resp_frame = frame;
        rpc->resp_len = len;
        if (c != NULL && craft__tcp_post_locked(t, &rpc->respond_task) == 1) {
            rpc->refs++;
        }
    }
    bool last = --rpc->refs == 0; /* the consumer's */
    pthread_mutex_unlock(&t->mu);
    if (direct) {
        /* wmu held since before `answered` was set: the connection stays
         * open and the next response waits for this one. */
        craft__tcp_conn_write_direct_locked(c, frame, len);
        pthread_mutex_unlock(&c->wmu);
    }
    if (last) {
        craft__tcp_rpc_free(rpc);
    }
}

static int64_t snap_read(void *ctx, void *buf, size_t len)
{
    in_rpc_t *rpc = ctx;
    tcp_t *t = rpc->t;
    if (buf == NULL || len == 0) {
        return CRAFT_EINVAL;
    }
    if (craft__tcp_on_loop(t)) {
        /* From inside a handler: the loop would wait for itself. */
        CRAFT__ERROR(&t->log, COMPONENT,
                     "snapshot reader used on the transport's loop thread "
                     "(from a handler); read it from another thread");
        return CRAFT_EINVAL;
    }
    int64_t n;
    pthread_mutex_lock(&t->mu);
    for (;;) {
        if (rpc->responded) {
            n = CRAFT_ECLOSED;
            break;
        }
        size_t avail = evbuffer_get_length(rpc->queue);
        if (avail > 0) {
            size_t want = len < avail ? len : avail;
            n = evbuffer_remove(rpc->queue, buf, want);
            if (n > 0) {
                rpc->to_read -= n;
            }
            if (rpc->paused && rpc->conn != NULL &&
                evbuffer_get_length(rpc->queue) <= SNAP_IN_LIMIT / 2) {
                rpc->paused = false;
                if (craft__tcp_post_locked(t, &rpc->resume_task) == 1) {
                    rpc->refs++;
                }
            }
            break;
        }
        if (rpc->to_read == 0) {
            n = 0;
            break;
        }
        if (rpc->conn == NULL) {
            n = rpc->conn_err != 0 ? rpc->conn_err : CRAFT_EIO;
            break;
        }
        pthread_cond_wait(&rpc->cond, &t->mu);
    }
    pthread_mutex_unlock(&t->mu);
    return n;
}

static void snap_close(void *ctx)
{
    (void)ctx; /* the reader lives and dies with its rpc */
}

