/*
 * TCP transport: small helpers (time, addresses, pre-vote memory, input
 * buffers), object references, and connections: direct writes, the pool,
 * dialing and conn_close. See transports/tcp_internal.h.
 */
#include "transports/tcp_internal.h"

/* ------------------------------------------------------------------------ */
/* Small helpers                                                             */
/* ------------------------------------------------------------------------ */

int64_t craft__tcp_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static struct timespec ts_of_ns(int64_t ns)
{
    struct timespec ts;
    ts.tv_sec = (time_t)(ns / 1000000000);
    ts.tv_nsec = (long)(ns % 1000000000);
    return ts;
}

struct timeval craft__tcp_tv_of_ms(int64_t ms)
{
    struct timeval tv;
    tv.tv_sec = (time_t)(ms / 1000);
    tv.tv_usec = (suseconds_t)((ms % 1000) * 1000);
    return tv;
}

/* Waits on `c` until `deadline_ns`; false once it has passed. */
bool craft__tcp_cond_wait_until(pthread_cond_t *c, pthread_mutex_t *mu,
                                int64_t deadline_ns)
{
    struct timespec ts = ts_of_ns(deadline_ns);
    return pthread_cond_timedwait(c, mu, &ts) != ETIMEDOUT;
}

/* Frees `extra`: the start of an allocation handed over from within. */
void craft__tcp_chunk_cleanup(const void *data, size_t len, void *extra)
{
    (void)data;
    (void)len;
    free(extra);
}

void craft__tcp_chunks_free(chunk_t *ch)
{
    while (ch != NULL) {
        chunk_t *next = ch->next;
        free(ch);
        ch = next;
    }
}

void craft__tcp_transport_ref(tcp_t *t)
{
    atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
}

void craft__tcp_transport_unref(tcp_t *t)
{
    if (atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) != 1) {
        return;
    }
    for (size_t i = 0; i < t->n_interned; i++) {
        free(t->interned[i]);
    }
    free(t->interned);
    for (size_t i = 0; i < t->n_no_prevote; i++) {
        free(t->no_prevote[i].addr);
    }
    free(t->no_prevote);
    pthread_cond_destroy(&t->torn_down_cond);
    pthread_cond_destroy(&t->handlers_idle);
    pthread_mutex_destroy(&t->mu);
    free(t);
}

/* Queues `task` for the loop. Called with mu held. Returns 1 when newly
 * queued (the caller then takes a reference for it), 0 when it already was,
 * -1 when the loop accepts no more tasks. */
int craft__tcp_post_locked(tcp_t *t, task_t *task)
{
    if (t->loop_done) {
        return -1;
    }
    if (task->queued) {
        return 0;
    }
    task->queued = true;
    task->next = NULL;
    if (t->task_tail != NULL) {
        t->task_tail->next = task;
    } else {
        t->task_head = task;
    }
    t->task_tail = task;
    if (!t->wakeup_pending) {
        t->wakeup_pending = true;
        event_active(t->wakeup, EV_READ, 0);
    }
    return 1;
}

/* A copy of `s` owned by `t`, valid until `t` is freed; NULL when `s` is
 * NULL, on allocation failure or once MAX_INTERNED strings are kept. Called
 * with mu held. */
const char *craft__tcp_intern_locked(tcp_t *t, const char *s)
{
    if (s == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < t->n_interned; i++) {
        if (strcmp(t->interned[i], s) == 0) {
            return t->interned[i];
        }
    }
    if (t->n_interned >= MAX_INTERNED) {
        return NULL;
    }
    if (t->interned == NULL) {
        t->interned = malloc(MAX_INTERNED * sizeof *t->interned);
        if (t->interned == NULL) {
            return NULL;
        }
    }
    char *copy = strdup(s);
    if (copy == NULL) {
        return NULL;
    }
    t->interned[t->n_interned++] = copy;
    return copy;
}

/* The craft code for a peer's error string (see tcp.h). */
int craft__tcp_map_peer_error(const char *msg)
{
#define CRAFT__TCP_MAP(name, code, text)                                       \
    if (strcmp(msg, text) == 0) {                                              \
        return code;                                                           \
    }
    CRAFT_ERRNO_MAP(CRAFT__TCP_MAP)
#undef CRAFT__TCP_MAP
    if (strstr(msg, "unexpected command") != NULL) {
        return CRAFT_ENOTSUP;
    }
    if (strcmp(msg, TRANSPORT_SHUTDOWN_MSG) == 0) {
        return CRAFT_ECLOSED;
    }
    return CRAFT_EPROTOCOL;
}

/* ---- addresses ---- */

/* Splits "host:port" / "[v6]:port". Returns 0 or CRAFT_EINVAL. */
static int split_hostport(const char *s, char *host, size_t host_cap,
                          char *port, size_t port_cap)
{
    const char *h;
    size_t hlen;
    const char *p;
    if (s == NULL) {
        return CRAFT_EINVAL;
    }
    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (end == NULL || end[1] != ':') {
            return CRAFT_EINVAL;
        }
        h = s + 1;
        hlen = (size_t)(end - h);
        p = end + 2;
    } else {
        const char *colon = strrchr(s, ':');
        if (colon == NULL) {
            return CRAFT_EINVAL;
        }
        h = s;
        hlen = (size_t)(colon - s);
        if (memchr(h, ':', hlen) != NULL) {
            return CRAFT_EINVAL; /* IPv6 without brackets */
        }
        p = colon + 1;
    }
    size_t plen = strlen(p);
    if (hlen >= host_cap || plen == 0 || plen >= port_cap ||
        strspn(p, "0123456789") != plen) {
        return CRAFT_EINVAL;
    }
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    memcpy(port, p, plen + 1);
    return 0;
}

/* Resolves `addr` into *sa. `passive`: for bind (an empty host = any).
 * `numeric`: the host must be an IP literal. Returns 0, CRAFT_EINVAL (not
 * an address) or CRAFT_EUNREACHABLE (name does not resolve). */
int craft__tcp_resolve(const char *addr, bool passive, bool numeric,
                       struct sockaddr_storage *sa, socklen_t *salen)
{
    char host[256];
    char port[16];
    if (split_hostport(addr, host, sizeof host, port, sizeof port) != 0) {
        return CRAFT_EINVAL;
    }
    if (atol(port) > 65535) {
        return CRAFT_EINVAL;
    }
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0) |
                     (numeric ? AI_NUMERICHOST : 0);
    struct addrinfo *res = NULL;
    int rv = getaddrinfo(host[0] != '\0' ? host : NULL, port, &hints, &res);
    if (rv != 0 || res == NULL) {
        if (res != NULL) {
            freeaddrinfo(res);
        }
        return numeric || rv == EAI_NONAME ? CRAFT_EINVAL : CRAFT_EUNREACHABLE;
    }
    memcpy(sa, res->ai_addr, res->ai_addrlen);
    *salen = (socklen_t)res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

void craft__tcp_format_addr(const struct sockaddr *sa, char *buf, size_t cap)
{
    char ip[INET6_ADDRSTRLEN];
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)(const void *)sa;
        inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof ip);
        snprintf(buf, cap, "[%s]:%u", ip, (unsigned)ntohs(s6->sin6_port));
    } else if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)(const void *)sa;
        inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof ip);
        snprintf(buf, cap, "%s:%u", ip, (unsigned)ntohs(s4->sin_port));
    } else {
        snprintf(buf, cap, "?");
    }
}

/* hashicorp refuses to advertise 0.0.0.0 / :: (errNotAdvertisable). */
bool craft__tcp_advertisable(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)(const void *)sa;
        return s4->sin_addr.s_addr != htonl(INADDR_ANY) && s4->sin_port != 0;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)(const void *)sa;
        return !IN6_IS_ADDR_UNSPECIFIED(&s6->sin6_addr) && s6->sin6_port != 0;
    }
    return false;
}

/* ---- pre-vote memory (under mu) ---- */

bool craft__tcp_no_prevote_locked(tcp_t *t, const char *addr, int64_t now)
{
    for (size_t i = 0; i < t->n_no_prevote; i++) {
        if (strcmp(t->no_prevote[i].addr, addr) == 0) {
            return now < t->no_prevote[i].until_ns;
        }
    }
    return false;
}

void craft__tcp_remember_no_prevote_locked(tcp_t *t, const char *addr)
{
    if (t->opts.no_prevote_ttl_ms <= 0) {
        return;
    }
    int64_t now = craft__tcp_now_ns();
    int64_t until = now + t->opts.no_prevote_ttl_ms * 1000000;
    for (size_t i = 0; i < t->n_no_prevote; i++) {
        if (strcmp(t->no_prevote[i].addr, addr) == 0) {
            t->no_prevote[i].until_ns = until;
            return;
        }
    }
    /* Forget expired entries before growing. */
    for (size_t i = 0; i < t->n_no_prevote;) {
        if (t->no_prevote[i].until_ns <= now) {
            free(t->no_prevote[i].addr);
            t->no_prevote[i] = t->no_prevote[--t->n_no_prevote];
        } else {
            i++;
        }
    }
    if (t->n_no_prevote >= MAX_NO_PREVOTE) {
        return;
    }
    if (t->no_prevote == NULL) {
        t->no_prevote = malloc(MAX_NO_PREVOTE * sizeof *t->no_prevote);
        if (t->no_prevote == NULL) {
            return;
        }
    }
    char *copy = strdup(addr);
    if (copy == NULL) {
        return;
    }
    t->no_prevote[t->n_no_prevote].addr = copy;
    t->no_prevote[t->n_no_prevote].until_ns = until;
    t->n_no_prevote++;
}

/* ---- linear input buffer ---- */

/* Makes room for `n` more bytes at the end of `b`. */
int craft__tcp_inbuf_reserve(inbuf_t *b, size_t n)
{
    if (b->off + b->len + n > b->cap) {
        if (b->off > 0) {
            memmove(b->p, b->p + b->off, b->len);
            b->off = 0;
        }
        if (b->len + n > b->cap) {
            size_t cap = b->cap > 0 ? b->cap : 4096;
            while (cap < b->len + n) {
                cap *= 2;
            }
            uint8_t *p = realloc(b->p, cap);
            if (p == NULL) {
                return CRAFT_ENOMEM;
            }
            b->p = p;
            b->cap = cap;
        }
    }
    return 0;
}

const uint8_t *craft__tcp_inbuf_data(const inbuf_t *b)
{
    return b->p + b->off;
}

void craft__tcp_inbuf_consume(inbuf_t *b, size_t n)
{
    b->off += n;
    b->len -= n;
    if (b->len == 0) {
        b->off = 0;
        if (b->cap > INBUF_KEEP) {
            free(b->p);
            b->p = NULL;
            b->cap = 0;
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Object references                                                         */
/* ------------------------------------------------------------------------ */

void craft__tcp_call_free(out_call_t *call)
{
    craft__tcp_chunks_free(call->chunks);
    if (call->has_resp) {
        craft__wire_response_free(&call->resp);
    }
    free(call->frame);
    free(call->target);
    pthread_cond_destroy(&call->cond);
    free(call);
}

void craft__tcp_call_unref(tcp_t *t, out_call_t *call)
{
    pthread_mutex_lock(&t->mu);
    bool last = --call->refs == 0;
    pthread_mutex_unlock(&t->mu);
    if (last) {
        craft__tcp_call_free(call);
    }
}

void craft__tcp_rpc_free(in_rpc_t *rpc)
{
    tcp_t *t = rpc->t;
    craft__wire_request_free(&rpc->rpc);
    free(rpc->resp_frame);
    if (rpc->queue != NULL) {
        evbuffer_free(rpc->queue);
    }
    pthread_cond_destroy(&rpc->cond);
    free(rpc);
    craft__tcp_transport_unref(t);
}

void craft__tcp_rpc_unref(tcp_t *t, in_rpc_t *rpc)
{
    pthread_mutex_lock(&t->mu);
    bool last = --rpc->refs == 0;
    pthread_mutex_unlock(&t->mu);
    if (last) {
        craft__tcp_rpc_free(rpc);
    }
}

void craft__tcp_pl_item_free(craft__pq_item_t *qi)
{
    pl_item_t *it = CRAFT__PQ_CONTAINER(qi, pl_item_t, q);
    free(it->frame);
    craft__wire_response_free(&it->resp);
    free(it);
}

void craft__tcp_pipe_free_mem(pipeline_t *p)
{
    tcp_t *t = p->t;
    craft__pq_destroy(&p->q);
    craft__wire_response_free(&p->last_resp);
    free(p->target);
    free(p);
    craft__tcp_transport_unref(t);
}

void craft__tcp_pipe_unref(tcp_t *t, pipeline_t *p)
{
    pthread_mutex_lock(&t->mu);
    bool last = --p->refs == 0;
    pthread_mutex_unlock(&t->mu);
    if (last) {
        craft__tcp_pipe_free_mem(p);
    }
}

/* ------------------------------------------------------------------------ */
/* Connections (loop thread)                                                 */
/* ------------------------------------------------------------------------ */

void craft__tcp_set_reading(conn_t *c, bool on)
{
    if (on == c->reading) {
        return;
    }
    c->reading = on;
    if (on) {
        event_add(c->rd, NULL);
    } else {
        event_del(c->rd);
    }
}

void craft__tcp_set_nodelay(struct bufferevent *bev)
{
    evutil_socket_t fd = bufferevent_getfd(bev);
    if (fd >= 0) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
}

/* Sends what the socket takes at once: the number of bytes written. On a
 * failure nothing is written; the bytes then go through the output buffer,
 * whose write reports the error to the loop. */
static size_t send_now(int fd, const uint8_t *data, size_t len)
{
    ssize_t n;
    do {
        n = send(fd, data, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    return n > 0 ? (size_t)n : 0;
}

/* Moves the tail of a frame another thread could not write into the
 * output buffer, ahead of anything the loop adds. Loop thread, wmu held. */
static int conn_flush_locked(conn_t *c)
{
    uint8_t *rest = c->wrest;
    if (rest == NULL) {
        return 0;
    }
    c->wrest = NULL;
    if (evbuffer_add_reference(bufferevent_get_output(c->bev), rest + c->wrest_off,
                               c->wrest_len - c->wrest_off, craft__tcp_chunk_cleanup,
                               rest) != 0) {
        free(rest);
        return CRAFT_ENOMEM;
    }
    return 0;
}

/* Writes `len` bytes at `data` on `c`: to the socket at once when nothing
 * waits before them (no epoll round for EPOLLOUT), the rest through the
 * output buffer. `owned`: `data` is an allocation that passes to us (else
 * the rest is copied). Loop thread. 0 or CRAFT_ENOMEM (the caller closes
 * the connection). */
int craft__tcp_conn_write(conn_t *c, const uint8_t *data, size_t len, bool owned)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    pthread_mutex_lock(&c->wmu);
    int rv = conn_flush_locked(c);
    size_t n = 0;
    if (rv == 0 && c->wopen && evbuffer_get_length(out) == 0) {
        n = send_now(c->wfd, data, len);
    }
    if (rv == 0 && n < len) {
        if (owned) {
            rv = evbuffer_add_reference(out, data + n, len - n, craft__tcp_chunk_cleanup,
                                        (void *)data);
            owned = rv != 0;
        } else {
            rv = evbuffer_add(out, data + n, len - n);
        }
        rv = rv != 0 ? CRAFT_ENOMEM : 0;
    }
    c->wbusy = evbuffer_get_length(out) > 0;
    pthread_mutex_unlock(&c->wmu);
    if (owned) {
        free((void *)data);
    }
    return rv;
}

/* Writes `frame` (ownership passes) on `c` from a thread other than the
 * loop; what the socket does not take is left to the loop. wmu held,
 * c->wopen and nothing waiting (!c->wbusy). */
void craft__tcp_conn_write_direct_locked(conn_t *c, uint8_t *frame, size_t len)
{
    size_t n = send_now(c->wfd, frame, len);
    if (n == len) {
        free(frame);
        return;
    }
    c->wrest = frame;
    c->wrest_off = n;
    c->wrest_len = len;
    c->wbusy = true;
    event_active(c->flush, EV_WRITE, 0);
}

/* The `flush` event: a direct write left a tail. */
static void conn_flush_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    conn_t *c = arg;
    pthread_mutex_lock(&c->wmu);
    int rv = conn_flush_locked(c);
    pthread_mutex_unlock(&c->wmu);
    if (rv != 0) {
        craft__tcp_conn_close(c, rv);
    }
}

/* libevent wrote from the output: direct writes resume once it is empty. */
void craft__tcp_conn_on_written(conn_t *c)
{
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) > 0) {
        return;
    }
    pthread_mutex_lock(&c->wmu);
    c->wbusy = c->wrest != NULL;
    pthread_mutex_unlock(&c->wmu);
}


/* Wraps `bev` into a connection; frees `bev` on failure. */
conn_t *craft__tcp_conn_new(tcp_t *t, struct bufferevent *bev, bool inbound)
{
    conn_t *c = calloc(1, sizeof *c);
    if (c == NULL) {
        bufferevent_free(bev);
        return NULL;
    }
    c->timer = evtimer_new(t->loop->base, inbound ? craft__tcp_in_timer_cb : craft__tcp_out_timer_cb, c);
    c->flush = event_new(t->loop->base, -1, 0, conn_flush_cb, c);
    c->rd = event_new(t->loop->base, bufferevent_getfd(bev), EV_READ | EV_PERSIST,
                      craft__tcp_conn_read_cb, c);
    if (c->timer == NULL || c->flush == NULL || c->rd == NULL ||
        pthread_mutex_init(&c->wmu, NULL) != 0) {
        if (c->timer != NULL) {
            event_free(c->timer);
        }
        if (c->flush != NULL) {
            event_free(c->flush);
        }
        if (c->rd != NULL) {
            event_free(c->rd);
        }
        bufferevent_free(bev);
        free(c);
        return NULL;
    }
    c->t = t;
    c->bev = bev;
    c->inbound = inbound;
    c->wfd = bufferevent_getfd(bev);
    c->wopen = inbound; /* outbound: once connected */
    craft__wire_decoder_init(&c->dec, &t->limits);
    if (inbound) {
        bufferevent_setcb(bev, NULL, craft__tcp_in_write_cb, craft__tcp_in_event_cb, c);
    } else {
        bufferevent_setcb(bev, NULL, craft__tcp_out_write_cb, craft__tcp_out_event_cb, c);
    }
    c->next = t->conns;
    if (t->conns != NULL) {
        t->conns->prev = c;
    }
    t->conns = c;
    pthread_mutex_lock(&t->mu);
    if (inbound) {
        t->stats.accepts++;
        t->stats.inbound_open++;
    } else {
        t->stats.dials++;
        t->stats.outbound_open++;
    }
    pthread_mutex_unlock(&t->mu);
    return c;
}

peer_t *craft__tcp_peer_get(tcp_t *t, const char *addr)
{
    for (peer_t *p = t->peers; p != NULL; p = p->next) {
        if (strcmp(p->addr, addr) == 0) {
            return p;
        }
    }
    peer_t *p = calloc(1, sizeof *p);
    if (p == NULL) {
        return NULL;
    }
    p->addr = strdup(addr);
    if (p->addr == NULL) {
        free(p);
        return NULL;
    }
    p->next = t->peers;
    t->peers = p;
    return p;
}

static void pool_remove(conn_t *c)
{
    peer_t *peer = c->peer;
    for (conn_t **pp = &peer->idle; *pp != NULL; pp = &(*pp)->pool_next) {
        if (*pp == c) {
            *pp = c->pool_next;
            break;
        }
    }
    c->pool_next = NULL;
    c->pooled = false;
    peer->n_idle--;
    pthread_mutex_lock(&c->t->mu);
    c->t->stats.pooled_idle--;
    pthread_mutex_unlock(&c->t->mu);
}

conn_t *craft__tcp_pool_take(peer_t *peer)
{
    conn_t *c = peer->idle;
    if (c != NULL) {
        pool_remove(c);
    }
    return c;
}

/* Keeps an idle connection (hashicorp returnConn), or closes it when the
 * pool for its address is full. */
void craft__tcp_pool_put(conn_t *c)
{
    tcp_t *t = c->t;
    peer_t *peer = c->peer;
    if (t->stopping || peer->n_idle >= t->opts.max_pool || c->in.len > 0) {
        craft__tcp_conn_close(c, CRAFT_ECLOSED);
        return;
    }
    c->pooled = true;
    c->from_pool = false;
    c->pool_next = peer->idle;
    peer->idle = c;
    peer->n_idle++;
    pthread_mutex_lock(&t->mu);
    t->stats.pooled_idle++;
    pthread_mutex_unlock(&t->mu);
}

/* Starts connecting to `sa`. NULL when the connect fails at once. */
conn_t *craft__tcp_dial(tcp_t *t, peer_t *peer, const struct sockaddr_storage *sa,
                        socklen_t salen)
{
    struct bufferevent *bev =
        bufferevent_socket_new(t->loop->base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (bev == NULL) {
        return NULL;
    }
    /* No callbacks yet: on an immediate failure libevent would run the
     * event callback from inside bufferevent_socket_connect. */
    if (bufferevent_socket_connect(bev, (const struct sockaddr *)sa,
                                   (int)salen) != 0) {
        bufferevent_free(bev);
        return NULL;
    }
    conn_t *c = craft__tcp_conn_new(t, bev, false);
    if (c == NULL) {
        return NULL;
    }
    c->peer = peer;
    snprintf(c->name, sizeof c->name, "%s", peer->addr);
    craft__tcp_set_nodelay(bev);
    craft__tcp_set_reading(c, true);
    return c;
}

/* Best effort on close: tells a peer waiting for a response that we are
 * going away (hashicorp sends nothing, which old clients survive too). */
static void send_shutdown_error(conn_t *c)
{
    craft__mp_buf_t b;
    craft__mp_buf_init(&b);
    if (craft__wire_encode_response(&b, CRAFT__WIRE_FORMAT_DEFAULT,
                                    c->rpc->rpc.type, TRANSPORT_SHUTDOWN_MSG,
                                    NULL) == 0) {
        /* The bufferevent's output is frozen for anyone but itself: write
         * directly, and only when nothing else is queued (order). */
        struct evbuffer *out = bufferevent_get_output(c->bev);
        pthread_mutex_lock(&c->wmu);
        if (c->wopen && !c->wbusy && evbuffer_get_length(out) == 0) {
            (void)send_now(c->wfd, b.data, b.len); /* best effort */
        }
        pthread_mutex_unlock(&c->wmu);
    }
    craft__mp_buf_free(&b);
}


void craft__tcp_call_finish(tcp_t *t, out_call_t *call, int result,
                            craft__wire_response_t *resp)
{
    pthread_mutex_lock(&t->mu);
    if (!call->done) {
        call->done = true;
        call->result = result;
        if (resp != NULL) {
            call->resp = *resp;
            call->has_resp = true;
            resp = NULL;
        }
        pthread_cond_broadcast(&call->cond);
    }
    pthread_mutex_unlock(&t->mu);
    if (resp != NULL) {
        craft__wire_response_free(resp);
    }
}

/* Closes `c`: its call or pipeline fails with `err` (unless already
 * complete), its rpc is detached (its reader then fails with `err`). */
void craft__tcp_conn_close(conn_t *c, int err)
{
    tcp_t *t = c->t;
    if (c->call != NULL) {
        out_call_t *call = c->call;
        craft__tcp_call_finish(t, call, err, NULL);
        c->call = NULL;
        call->conn = NULL;
        craft__tcp_call_unref(t, call);
    }
    if (c->pipe != NULL) {
        pipeline_t *p = c->pipe;
        craft__tcp_pipe_break(t, p, err);
        c->pipe = NULL;
        p->conn = NULL;
        craft__tcp_pipe_unref(t, p);
    }
    if (c->rpc != NULL) {
        in_rpc_t *rpc = c->rpc;
        pthread_mutex_lock(&t->mu);
        bool answered = rpc->answered; /* the response is out already */
        rpc->conn = NULL;
        rpc->conn_err = err;
        pthread_cond_broadcast(&rpc->cond);
        bool last = --rpc->refs == 0;
        pthread_mutex_unlock(&t->mu);
        if (t->stopping && !answered) {
            send_shutdown_error(c);
        }
        c->rpc = NULL;
        if (last) {
            craft__tcp_rpc_free(rpc);
        }
    }
    if (c->pooled) {
        pool_remove(c);
    }
    if (c->prev != NULL) {
        c->prev->next = c->next;
    } else {
        t->conns = c->next;
    }
    if (c->next != NULL) {
        c->next->prev = c->prev;
    }
    pthread_mutex_lock(&t->mu);
    if (c->inbound) {
        t->stats.inbound_open--;
    } else {
        t->stats.outbound_open--;
    }
    pthread_mutex_unlock(&t->mu);
    /* No other thread can reach `c` any more; wait for one writing. */
    pthread_mutex_lock(&c->wmu);
    c->wopen = false;
    free(c->wrest);
    c->wrest = NULL;
    pthread_mutex_unlock(&c->wmu);
    event_free(c->flush);
    event_free(c->rd);
    event_free(c->timer);
    bufferevent_free(c->bev);
    pthread_mutex_destroy(&c->wmu);
    free(c->in.p);
    free(c);
}

/* Closes an inbound connection for bad input or a timeout. */
void craft__tcp_conn_reject(conn_t *c, const char *reason)
{
    tcp_t *t = c->t;
    CRAFT__WARN(&t->log, COMPONENT, "closing inbound connection: peer=%s reason=%s",
                c->name, reason);
    pthread_mutex_lock(&t->mu);
    t->stats.inbound_rejected++;
    pthread_mutex_unlock(&t->mu);
    craft__tcp_conn_close(c, CRAFT_EIO);
}

