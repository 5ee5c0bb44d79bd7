/*
 * TCP transport: hashicorp/raft's NetworkTransport protocol (WIRE.md) on
 * libevent. The public contract is in include/craft/tcp.h.
 *
 * Design
 * ------
 * One loop thread owns the event_base, the listener and every bufferevent
 * (no bufferevent is touched by another thread, so none needs its own
 * lock). A connection's bufferevent writes and connects; the loop reads the
 * socket itself, straight into the connection's linear buffer (libevent
 * would ask FIONREAD before every read and copy through its own buffer).
 * Other threads hand work to the loop as tasks: small nodes embedded in
 * the object they concern (a call, a pipeline, an incoming rpc), appended
 * under the transport mutex `mu` to one FIFO; the first task of a batch
 * activates the `wakeup` user event (event_active is thread-safe once
 * evthread_use_pthreads was called). A task node is queued at most once at
 * a time and holds a reference on its object while queued.
 *
 * `mu` guards everything shared between the loop and other threads: the
 * task queue, the fields of calls, pipelines and rpcs marked "under mu",
 * the handler slots, the pre-vote memory, the interned strings and the
 * statistics. Each waiter has its own condition variable (CLOCK_MONOTONIC)
 * used with `mu`. Objects shared across threads are reference counted under
 * `mu` and freed outside it by whoever drops the last reference; the
 * transport itself is reference counted (atomically) by its owner and by
 * every object that may outlive close().
 *
 * Direct writes. Every thread wake-up costs more than the syscalls around
 * it, so frames are written by whichever thread has them, at once: the
 * loop with send() when the output buffer is empty (no EPOLLOUT round), a
 * pipeline's caller or an rpc's responder under the connection's `wmu`
 * when nothing waits to go out before its frame (the loop is not woken at
 * all). What the socket does not take goes through the output buffer, in
 * order (see struct conn).
 *
 * Outgoing. The caller encodes its request, registers an out_call in
 * t->calls and posts CALL_START; the loop takes an idle pooled connection or
 * dials and writes the frame. The caller waits on the call's condvar until
 * the loop completes it or the deadline passes (then it marks the call done
 * with CRAFT_ETIMEDOUT and posts CALL_CANCEL, which closes the connection).
 * InstallSnapshot data is read by the caller in chunks and handed over with
 * CALL_DATA while less than SNAP_OUT_LIMIT bytes are pending or in the
 * socket's output buffer; the output buffer's low watermark tells the
 * caller when there is room again.
 *
 * Pipelines. The caller writes its request itself when it can (above),
 * else queues it and posts PIPE_SEND. The loop matches responses to
 * requests in order; the connection's timer stays armed and checks the
 * oldest request in flight.
 *
 * Incoming. Each inbound connection is a small state machine: DECODING
 * (the incremental wire decoder scans the linear input buffer), AWAITING
 * (one request is with the consumer; further bytes are read up to
 * READ_AHEAD, then reading stops), SNAPSHOT (data following an
 * InstallSnapshot moves into the rpc's queue, read by the consumer's
 * thread, at most SNAP_IN_LIMIT bytes; reading stops while it is full) and
 * DRAINING (snapshot bytes left unread at respond() are discarded).
 * respond() encodes the response on the consumer's thread and writes it
 * there when it can; the loop notices on its next look at the connection
 * (input, EOF, the timer, or RPC_RESPOND when it already holds the next
 * request). Otherwise it posts RPC_RESPOND and the loop writes it. Either
 * way the next request is decoded only after the response went out, so
 * responses go out in request order, one request at a time.
 *
 * Lock order: mu, then a connection's wmu; libevent's base lock may be
 * taken under either (by event_active / event_add), and libevent never
 * calls back into this file with its base lock held.
 */
#include "craft/tcp.h"

#include "lib/logger.h"
#include "transports/tcp.h"
#include "transports/wire.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/thread.h>
#include <event2/util.h>

#define COMPONENT "transport"

#define DEFAULT_MAX_POOL 3
#define DEFAULT_TIMEOUT_MS 10000
#define DEFAULT_MAX_INFLIGHT 2
#define MAX_INFLIGHT_LIMIT 1024
#define DEFAULT_IDLE_TIMEOUT_MS 60000
#define DEFAULT_NO_PREVOTE_TTL_MS 60000

/* hashicorp's DefaultTimeoutScale: InstallSnapshot gets one timeout per
 * 256 KiB. */
#define TIMEOUT_SCALE (256 * 1024)
/* Snapshot streaming, both directions. */
#define SNAP_CHUNK (64 * 1024)
#define SNAP_OUT_LIMIT (1024 * 1024)
#define SNAP_IN_LIMIT (1024 * 1024)
/* Bytes an inbound connection may buffer past the request in progress. */
#define READ_AHEAD (256 * 1024)
/* Bytes asked of one read (more when the decoder knows it needs more). */
#define READ_MIN (16 * 1024)
#define READ_MAX (1024 * 1024)
/* Linear input buffers bigger than this are released when empty. */
#define INBUF_KEEP (256 * 1024)
#define MAX_INTERNED 4096
#define MAX_NO_PREVOTE 1024
/* hashicorp's ErrTransportShutdown text. */
#define TRANSPORT_SHUTDOWN_MSG "transport shutdown"

#define CONTAINER_OF(p, type, member)                                          \
    ((type *)(void *)((char *)(p) - offsetof(type, member)))

typedef struct tcp tcp_t;
typedef struct conn conn_t;
typedef struct out_call out_call_t;
typedef struct in_rpc in_rpc_t;
typedef struct pipeline pipeline_t;
typedef struct peer peer_t;

typedef enum {
    TASK_CALL_START,
    TASK_CALL_DATA,
    TASK_CALL_CANCEL,
    TASK_PIPE_START,
    TASK_PIPE_SEND,
    TASK_PIPE_CLOSE,
    TASK_RPC_RESPOND,
    TASK_RPC_RESUME,
    TASK_STOP
} task_kind_t;

typedef struct task {
    struct task *next;
    task_kind_t kind;
    bool queued; /* under mu */
} task_t;

typedef struct handler_slot {
    craft_rpc_handler_fn fn;
    void *arg;
    uint64_t gen;
    unsigned active_cur; /* invocations of generation `gen` in progress */
    unsigned active_old; /* invocations of older generations in progress */
} handler_slot_t;

typedef struct no_prevote {
    char *addr;
    int64_t until_ns;
} no_prevote_t;

struct tcp {
    craft_transport_t iface; /* handed out; ctx points back here */
    craft_tcp_options_t opts;
    craft__wire_limits_t limits;
    craft__logger_t log;
    char local_addr[INET6_ADDRSTRLEN + 16];
    atomic_int refs;

    struct event_base *base;
    struct evconnlistener *listener;
    struct event *wakeup;
    pthread_t thread;
    bool thread_started;

    pthread_mutex_t mu;
    pthread_cond_t handlers_idle;
    /* Under mu. */
    task_t *task_head;
    task_t *task_tail;
    bool wakeup_pending;
    bool closed;    /* close() started */
    bool loop_done; /* the loop accepts no more tasks */
    handler_slot_t rpc_handler;
    handler_slot_t hb_handler;
    out_call_t *calls;     /* synchronous calls in progress */
    pipeline_t *pipelines; /* pipelines not yet freed */
    no_prevote_t *no_prevote;
    size_t n_no_prevote;
    char **interned;
    size_t n_interned;
    craft__tcp_stats_t stats;
    task_t stop_task;

    /* Loop thread only. */
    bool stopping;
    conn_t *conns; /* every open connection */
    peer_t *peers;
};

/* Linear input buffer: bytes at p[off .. off+len). */
typedef struct inbuf {
    uint8_t *p;
    size_t off;
    size_t len;
    size_t cap;
} inbuf_t;

typedef enum {
    IN_DECODING,
    IN_AWAITING,
    IN_SNAPSHOT,
    IN_DRAINING
} in_state_t;

/* A connection; all fields are the loop's. */
struct conn {
    tcp_t *t;
    /* Writes, connects and reports write errors; never reads: `rd` reads
     * straight into `in` (libevent would ask FIONREAD before each read and
     * copy through its input buffer). */
    struct bufferevent *bev;
    struct event *rd;
    struct event *timer; /* inbound: idle; pipeline: response deadline */
    bool inbound;
    bool reading;
    inbuf_t in;
    size_t need; /* bytes the decoder wants before another try */
    craft__wire_decoder_t dec;
    conn_t *prev; /* in t->conns */
    conn_t *next;
    char name[INET6_ADDRSTRLEN + 16];

    /* Outgoing. */
    peer_t *peer;
    bool connected;
    bool from_pool; /* reused from the pool for the current call */
    bool resp_seen; /* a byte arrived for the current call */
    bool pooled;
    conn_t *pool_next;
    out_call_t *call;
    pipeline_t *pipe;

    /* Inbound. */
    in_state_t state;
    in_rpc_t *rpc;
    int64_t drain_left;

    /* Direct writes. A thread holding wmu may write to wfd itself when
     * nothing waits to go out before its bytes. Other threads reach a
     * connection only through a pointer published under mu
     * (pipeline->wconn, in_rpc->conn) and lock wmu before releasing mu;
     * conn_close clears those pointers, then takes wmu once before the
     * socket is closed and the memory freed. */
    pthread_mutex_t wmu;
    struct event *flush; /* activated to move `wrest` into the output */
    /* Under wmu. */
    bool wopen;     /* connected and not closing */
    bool wbusy;     /* bytes wait in the output buffer or in wrest */
    int wfd;
    uint8_t *wrest; /* a frame another thread could not write whole */
    size_t wrest_off;
    size_t wrest_len;
};

/* Idle pooled connections to one address (loop thread only). */
struct peer {
    char *addr;
    conn_t *idle; /* LIFO */
    int n_idle;
    peer_t *next;
};

typedef struct chunk {
    struct chunk *next;
    size_t n;
    uint8_t data[];
} chunk_t;

struct out_call {
    task_t start_task;
    task_t data_task;
    task_t cancel_task;
    craft_rpc_type_t type;
    char *target;
    struct sockaddr_storage sa;
    socklen_t salen;
    uint8_t *frame;
    size_t frame_len;
    pthread_cond_t cond;

    /* Under mu. */
    int refs;
    bool done;
    int result;
    bool has_resp;
    craft__wire_response_t resp;
    chunk_t *chunks; /* snapshot data handed over, not yet at the loop */
    chunk_t *chunks_tail;
    size_t pending;      /* bytes in `chunks` */
    size_t out_buffered; /* bytes in the connection's output buffer */
    out_call_t *prev;    /* in t->calls */
    out_call_t *next;

    /* Loop thread only. */
    conn_t *conn;
    bool retried;
};

struct in_rpc {
    craft_rpc_t rpc; /* first: respond() is handed &rpc */
    tcp_t *t;        /* referenced */
    task_t respond_task;
    task_t resume_task;
    pthread_cond_t cond; /* reader waits */
    craft_reader_t reader;

    /* Under mu. */
    int refs;
    conn_t *conn; /* NULL once the connection is gone */
    int conn_err; /* why it is gone */
    bool responded;
    bool answered; /* the consumer wrote the response itself */
    bool kick;     /* the loop holds input: wake it when answered */
    bool paused;   /* the loop stopped reading: queue full */
    uint8_t *resp_frame;
    size_t resp_len;
    struct evbuffer *queue; /* snapshot bytes not yet read */
    int64_t to_read;        /* snapshot bytes the consumer has not read */

    /* Loop thread only. */
    int64_t to_queue; /* snapshot bytes not yet moved into `queue` */
};

typedef enum { PL_QUEUED, PL_SENT, PL_DONE } pl_state_t;

typedef struct pl_item {
    struct pl_item *next;
    uint8_t *frame;
    size_t frame_len;
    void *tag;
    pl_state_t state;
    int err;
    int64_t sent_ns;
    craft__wire_response_t resp;
} pl_item_t;

struct pipeline {
    craft_pipeline_t iface;
    tcp_t *t; /* referenced */
    char *target;
    struct sockaddr_storage sa;
    socklen_t salen;
    task_t start_task;
    task_t send_task;
    task_t close_task;
    pthread_cond_t cond;

    /* Under mu. */
    int refs;
    pl_item_t *head; /* unconsumed requests, oldest first */
    pl_item_t *tail;
    size_t n_items;
    bool ready;
    bool closed;
    int broken; /* 0 or the error that broke the connection */
    conn_t *wconn; /* the connection callers may write to (see conn) */
    /* Strings of the last next_response; next_response's thread only. */
    craft__wire_response_t last_resp;
    /* Response callback (set_response_handler) or NULL; under mu. */
    craft_pipeline_response_fn fn;
    void *fn_arg;
    bool delivering; /* a thread is handing responses to fn */
    pipeline_t *prev;                 /* in t->pipelines */
    pipeline_t *next;

    /* Loop thread only. */
    conn_t *conn;
};

static void conn_close(conn_t *c, int err);
static void in_process(conn_t *c);

/* ------------------------------------------------------------------------ */
/* Small helpers                                                             */
/* ------------------------------------------------------------------------ */

static int64_t now_ns(void)
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

static struct timeval tv_of_ms(int64_t ms)
{
    struct timeval tv;
    tv.tv_sec = (time_t)(ms / 1000);
    tv.tv_usec = (suseconds_t)((ms % 1000) * 1000);
    return tv;
}

static int cond_init_monotonic(pthread_cond_t *c)
{
    pthread_condattr_t attr;
    if (pthread_condattr_init(&attr) != 0) {
        return CRAFT_ENOMEM;
    }
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    int rv = pthread_cond_init(c, &attr);
    pthread_condattr_destroy(&attr);
    return rv == 0 ? 0 : CRAFT_ENOMEM;
}

/* Waits on `c` until `deadline_ns`; false once it has passed. */
static bool cond_wait_until(pthread_cond_t *c, pthread_mutex_t *mu,
                            int64_t deadline_ns)
{
    struct timespec ts = ts_of_ns(deadline_ns);
    return pthread_cond_timedwait(c, mu, &ts) != ETIMEDOUT;
}

/* Frees `extra`: the start of an allocation handed over from within. */
static void chunk_cleanup(const void *data, size_t len, void *extra)
{
    (void)data;
    (void)len;
    free(extra);
}

static void chunks_free(chunk_t *ch)
{
    while (ch != NULL) {
        chunk_t *next = ch->next;
        free(ch);
        ch = next;
    }
}

static void transport_ref(tcp_t *t)
{
    atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
}

static void transport_unref(tcp_t *t)
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
    pthread_cond_destroy(&t->handlers_idle);
    pthread_mutex_destroy(&t->mu);
    free(t);
}

/* Queues `task` for the loop. Called with mu held. Returns 1 when newly
 * queued (the caller then takes a reference for it), 0 when it already was,
 * -1 when the loop accepts no more tasks. */
static int post_locked(tcp_t *t, task_t *task)
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
static const char *intern_locked(tcp_t *t, const char *s)
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
static int map_peer_error(const char *msg)
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
static int resolve(const char *addr, bool passive, bool numeric,
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

static void format_addr(const struct sockaddr *sa, char *buf, size_t cap)
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
static bool advertisable(const struct sockaddr *sa)
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

static bool no_prevote_locked(tcp_t *t, const char *addr, int64_t now)
{
    for (size_t i = 0; i < t->n_no_prevote; i++) {
        if (strcmp(t->no_prevote[i].addr, addr) == 0) {
            return now < t->no_prevote[i].until_ns;
        }
    }
    return false;
}

static void remember_no_prevote_locked(tcp_t *t, const char *addr)
{
    if (t->opts.no_prevote_ttl_ms <= 0) {
        return;
    }
    int64_t now = now_ns();
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
static int inbuf_reserve(inbuf_t *b, size_t n)
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

static const uint8_t *inbuf_data(const inbuf_t *b)
{
    return b->p + b->off;
}

static void inbuf_consume(inbuf_t *b, size_t n)
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

static void call_free(out_call_t *call)
{
    chunks_free(call->chunks);
    if (call->has_resp) {
        craft__wire_response_free(&call->resp);
    }
    free(call->frame);
    free(call->target);
    pthread_cond_destroy(&call->cond);
    free(call);
}

static void call_unref(tcp_t *t, out_call_t *call)
{
    pthread_mutex_lock(&t->mu);
    bool last = --call->refs == 0;
    pthread_mutex_unlock(&t->mu);
    if (last) {
        call_free(call);
    }
}

static void rpc_free(in_rpc_t *rpc)
{
    tcp_t *t = rpc->t;
    craft__wire_request_free(&rpc->rpc);
    free(rpc->resp_frame);
    if (rpc->queue != NULL) {
        evbuffer_free(rpc->queue);
    }
    pthread_cond_destroy(&rpc->cond);
    free(rpc);
    transport_unref(t);
}

static void rpc_unref(tcp_t *t, in_rpc_t *rpc)
{
    pthread_mutex_lock(&t->mu);
    bool last = --rpc->refs == 0;
    pthread_mutex_unlock(&t->mu);
    if (last) {
        rpc_free(rpc);
    }
}

static void pl_item_free(pl_item_t *it)
{
    free(it->frame);
    craft__wire_response_free(&it->resp);
    free(it);
}

static void pipe_free_mem(pipeline_t *p)
{
    tcp_t *t = p->t;
    while (p->head != NULL) {
        pl_item_t *it = p->head;
        p->head = it->next;
        pl_item_free(it);
    }
    craft__wire_response_free(&p->last_resp);
    free(p->target);
    pthread_cond_destroy(&p->cond);
    free(p);
    transport_unref(t);
}

static void pipe_unref(tcp_t *t, pipeline_t *p)
{
    pthread_mutex_lock(&t->mu);
    bool last = --p->refs == 0;
    pthread_mutex_unlock(&t->mu);
    if (last) {
        pipe_free_mem(p);
    }
}

/* ------------------------------------------------------------------------ */
/* Connections (loop thread)                                                 */
/* ------------------------------------------------------------------------ */

static void set_reading(conn_t *c, bool on)
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

static void set_nodelay(struct bufferevent *bev)
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
                               c->wrest_len - c->wrest_off, chunk_cleanup,
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
static int conn_write(conn_t *c, const uint8_t *data, size_t len, bool owned)
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
            rv = evbuffer_add_reference(out, data + n, len - n, chunk_cleanup,
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
static void conn_write_direct_locked(conn_t *c, uint8_t *frame, size_t len)
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
        conn_close(c, rv);
    }
}

/* libevent wrote from the output: direct writes resume once it is empty. */
static void conn_on_written(conn_t *c)
{
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) > 0) {
        return;
    }
    pthread_mutex_lock(&c->wmu);
    c->wbusy = c->wrest != NULL;
    pthread_mutex_unlock(&c->wmu);
}

static void conn_read_cb(evutil_socket_t fd, short what, void *arg);
static void in_write_cb(struct bufferevent *bev, void *arg);
static void in_event_cb(struct bufferevent *bev, short what, void *arg);
static void in_timer_cb(evutil_socket_t fd, short what, void *arg);
static void out_write_cb(struct bufferevent *bev, void *arg);
static void out_event_cb(struct bufferevent *bev, short what, void *arg);
static void out_timer_cb(evutil_socket_t fd, short what, void *arg);

/* Wraps `bev` into a connection; frees `bev` on failure. */
static conn_t *conn_new(tcp_t *t, struct bufferevent *bev, bool inbound)
{
    conn_t *c = calloc(1, sizeof *c);
    if (c == NULL) {
        bufferevent_free(bev);
        return NULL;
    }
    c->timer = evtimer_new(t->base, inbound ? in_timer_cb : out_timer_cb, c);
    c->flush = event_new(t->base, -1, 0, conn_flush_cb, c);
    c->rd = event_new(t->base, bufferevent_getfd(bev), EV_READ | EV_PERSIST,
                      conn_read_cb, c);
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
        bufferevent_setcb(bev, NULL, in_write_cb, in_event_cb, c);
    } else {
        bufferevent_setcb(bev, NULL, out_write_cb, out_event_cb, c);
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

static peer_t *peer_get(tcp_t *t, const char *addr)
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

static conn_t *pool_take(peer_t *peer)
{
    conn_t *c = peer->idle;
    if (c != NULL) {
        pool_remove(c);
    }
    return c;
}

/* Keeps an idle connection (hashicorp returnConn), or closes it when the
 * pool for its address is full. */
static void pool_put(conn_t *c)
{
    tcp_t *t = c->t;
    peer_t *peer = c->peer;
    if (t->stopping || peer->n_idle >= t->opts.max_pool || c->in.len > 0) {
        conn_close(c, CRAFT_ECLOSED);
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
static conn_t *dial(tcp_t *t, peer_t *peer, const struct sockaddr_storage *sa,
                    socklen_t salen)
{
    struct bufferevent *bev =
        bufferevent_socket_new(t->base, -1, BEV_OPT_CLOSE_ON_FREE);
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
    conn_t *c = conn_new(t, bev, false);
    if (c == NULL) {
        return NULL;
    }
    c->peer = peer;
    snprintf(c->name, sizeof c->name, "%s", peer->addr);
    set_nodelay(bev);
    set_reading(c, true);
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

static void pipe_break(tcp_t *t, pipeline_t *p, int err);
static void pipe_deliver(tcp_t *t, pipeline_t *p);

static void call_finish(tcp_t *t, out_call_t *call, int result,
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
static void conn_close(conn_t *c, int err)
{
    tcp_t *t = c->t;
    if (c->call != NULL) {
        out_call_t *call = c->call;
        call_finish(t, call, err, NULL);
        c->call = NULL;
        call->conn = NULL;
        call_unref(t, call);
    }
    if (c->pipe != NULL) {
        pipeline_t *p = c->pipe;
        pipe_break(t, p, err);
        c->pipe = NULL;
        p->conn = NULL;
        pipe_unref(t, p);
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
            rpc_free(rpc);
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
static void conn_reject(conn_t *c, const char *reason)
{
    tcp_t *t = c->t;
    CRAFT__WARN(&t->log, COMPONENT, "closing inbound connection: peer=%s reason=%s",
                c->name, reason);
    pthread_mutex_lock(&t->mu);
    t->stats.inbound_rejected++;
    pthread_mutex_unlock(&t->mu);
    conn_close(c, CRAFT_EIO);
}

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
    call_unref(t, call);
}

/* Moves handed-over snapshot chunks into the connection's output. */
static void call_move_chunks(tcp_t *t, out_call_t *call)
{
    conn_t *c = call->conn;
    pthread_mutex_lock(&t->mu);
    chunk_t *ch = call->chunks;
    call->chunks = call->chunks_tail = NULL;
    call->pending = 0;
    bool live = c != NULL && !call->done;
    pthread_mutex_unlock(&t->mu);
    if (!live) {
        chunks_free(ch);
        return;
    }
    struct evbuffer *out = bufferevent_get_output(c->bev);
    while (ch != NULL) {
        chunk_t *next = ch->next;
        if (evbuffer_add_reference(out, ch->data, ch->n, chunk_cleanup, ch) != 0) {
            chunks_free(ch);
            conn_close(c, CRAFT_ENOMEM);
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
    peer_t *peer = peer_get(t, call->target);
    if (peer == NULL) {
        call_finish(t, call, CRAFT_ENOMEM, NULL);
        return;
    }
    conn_t *c = NULL;
    if (allow_pool && call->type != CRAFT_RPC_INSTALL_SNAPSHOT) {
        c = pool_take(peer);
    }
    if (c != NULL) {
        c->from_pool = true;
    } else {
        c = dial(t, peer, &call->sa, call->salen);
        if (c == NULL) {
            CRAFT__DEBUG(&t->log, COMPONENT, "failed to dial: target=%s",
                         call->target);
            call_finish(t, call, CRAFT_EUNREACHABLE, NULL);
            return;
        }
    }
    call_attach(t, call, c);
    if (call->type == CRAFT_RPC_INSTALL_SNAPSHOT) {
        bufferevent_setwatermark(c->bev, EV_WRITE, SNAP_OUT_LIMIT / 2, 0);
    }
    if (conn_write(c, call->frame, call->frame_len, false) != 0) {
        conn_close(c, CRAFT_ENOMEM);
        return;
    }
    if (call->type == CRAFT_RPC_INSTALL_SNAPSHOT) {
        call_move_chunks(t, call);
    }
}

static void call_start(tcp_t *t, out_call_t *call)
{
    pthread_mutex_lock(&t->mu);
    bool done = call->done;
    pthread_mutex_unlock(&t->mu);
    if (done) {
        return;
    }
    if (t->stopping) {
        call_finish(t, call, CRAFT_ECLOSED, NULL);
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
        conn_close(c, CRAFT_EIO);
        pthread_mutex_lock(&t->mu);
        bool done = call->done;
        pthread_mutex_unlock(&t->mu);
        if (!done) {
            call_connect(t, call, false);
        }
        call_unref(t, call);
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
        remember_no_prevote_locked(t, call->target);
        t->stats.prevote_fallbacks++;
        pthread_mutex_unlock(&t->mu);
    } else {
        CRAFT__DEBUG(&t->log, COMPONENT, "rpc failed: target=%s error=%s",
                     call->target, why);
    }
    conn_close(c, rv);
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
    int rv = craft__wire_decode_response(&c->dec, call->type, inbuf_data(&c->in),
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
        conn_close(c, rv == CRAFT_ENOMEM ? CRAFT_ENOMEM : CRAFT_EPROTOCOL);
        return;
    }
    inbuf_consume(&c->in, consumed);
    int result = 0;
    if (resp.error != NULL) {
        result = map_peer_error(resp.error);
        CRAFT__DEBUG(&t->log, COMPONENT, "peer returned an error: target=%s error=%s",
                     call->target, resp.error);
    }
    bool reusable = call->type != CRAFT_RPC_INSTALL_SNAPSHOT;
    call_finish(t, call, result, &resp);
    call_detach(t, c);
    if (reusable) {
        pool_put(c);
    } else {
        conn_close(c, CRAFT_ECLOSED);
    }
}

/* ------------------------------------------------------------------------ */
/* Pipelines (loop side)                                                     */
/* ------------------------------------------------------------------------ */

/* Fails every outstanding request of `p` with `err`; later appends fail. */
static void pipe_break(tcp_t *t, pipeline_t *p, int err)
{
    pthread_mutex_lock(&t->mu);
    if (p->broken == 0) {
        p->broken = err != 0 ? err : CRAFT_EIO;
    }
    p->wconn = NULL;
    for (pl_item_t *it = p->head; it != NULL; it = it->next) {
        if (it->state != PL_DONE) {
            it->state = PL_DONE;
            it->err = p->broken;
        }
    }
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&t->mu);
    pipe_deliver(t, p);
}

static void pipe_ready(tcp_t *t, pipeline_t *p)
{
    pthread_mutex_lock(&t->mu);
    p->ready = true;
    p->wconn = p->conn;
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&t->mu);
}

/* Arms the timer of a pipeline's connection for the response deadline of
 * the oldest request in flight, or one timeout from now when none is: it
 * stays armed, since callers write requests without the loop's knowledge
 * (a request sent later is due later). false when the deadline passed. */
static bool pipe_arm_timer(tcp_t *t, conn_t *c)
{
    pipeline_t *p = c->pipe;
    int64_t oldest = -1;
    pthread_mutex_lock(&t->mu);
    for (pl_item_t *it = p->head; it != NULL; it = it->next) {
        if (it->state == PL_SENT) {
            oldest = it->sent_ns;
            break;
        }
    }
    pthread_mutex_unlock(&t->mu);
    int64_t now = now_ns();
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

static void pipe_start(tcp_t *t, pipeline_t *p)
{
    pthread_mutex_lock(&t->mu);
    bool closed = p->closed;
    pthread_mutex_unlock(&t->mu);
    if (closed || t->stopping) {
        pipe_break(t, p, CRAFT_ECLOSED);
        return;
    }
    peer_t *peer = peer_get(t, p->target);
    if (peer == NULL) {
        pipe_break(t, p, CRAFT_ENOMEM);
        return;
    }
    conn_t *c = pool_take(peer);
    bool pooled = c != NULL;
    if (c == NULL) {
        c = dial(t, peer, &p->sa, p->salen);
        if (c == NULL) {
            pipe_break(t, p, CRAFT_EUNREACHABLE);
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
    pipe_arm_timer(t, c);
    if (pooled) {
        pipe_ready(t, p);
    }
}

static void pipe_send(tcp_t *t, pipeline_t *p)
{
    conn_t *c = p->conn;
    if (c == NULL) {
        return; /* broken or closed: the requests already failed */
    }
    int rv = 0;
    int64_t now = now_ns();
    /* mu held while writing: a caller must not write directly between
     * these requests (see pipe_append_entries). */
    pthread_mutex_lock(&t->mu);
    for (pl_item_t *it = p->head; it != NULL && rv == 0; it = it->next) {
        if (it->state != PL_QUEUED) {
            continue;
        }
        uint8_t *frame = it->frame;
        it->frame = NULL;
        it->state = PL_SENT;
        it->sent_ns = now;
        rv = conn_write(c, frame, it->frame_len, true);
    }
    pthread_mutex_unlock(&t->mu);
    if (rv != 0) {
        conn_close(c, rv);
    }
}

static void pipe_on_read(tcp_t *t, conn_t *c)
{
    pipeline_t *p = c->pipe;
    while (c->in.len > 0 && c->in.len >= c->need) {
        craft__wire_response_t resp;
        size_t consumed = 0;
        int rv = craft__wire_decode_response(&c->dec, CRAFT_RPC_APPEND_ENTRIES,
                                             inbuf_data(&c->in), c->in.len,
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
            conn_close(c, rv == CRAFT_ENOMEM ? CRAFT_ENOMEM : CRAFT_EPROTOCOL);
            return;
        }
        inbuf_consume(&c->in, consumed);
        pthread_mutex_lock(&t->mu);
        pl_item_t *it = p->head;
        while (it != NULL && it->state != PL_SENT) {
            it = it->next;
        }
        if (it != NULL) {
            it->state = PL_DONE;
            it->err = resp.error != NULL ? map_peer_error(resp.error) : 0;
            it->resp = resp;
        }
        bool push = p->fn != NULL;
        pthread_mutex_unlock(&t->mu);
        if (it != NULL && push) {
            pipe_deliver(t, p); /* on this thread: no hand-off */
        } else if (it != NULL) {
            /* After unlocking: the woken thread would block on mu at once.
             * The connection's reference keeps `p`. */
            pthread_cond_broadcast(&p->cond);
        } else {
            craft__wire_response_free(&resp);
            CRAFT__WARN(&t->log, COMPONENT,
                        "pipeline response without a request: target=%s",
                        p->target);
            conn_close(c, CRAFT_EPROTOCOL);
            return;
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Outgoing connection callbacks                                             */
/* ------------------------------------------------------------------------ */

/* Bytes arrived on an outgoing connection. */
static void out_on_read(conn_t *c)
{
    tcp_t *t = c->t;
    if (c->pipe != NULL) {
        pipe_on_read(t, c);
    } else if (c->call != NULL) {
        call_on_read(t, c);
    } else {
        CRAFT__DEBUG(&t->log, COMPONENT,
                     "unexpected data on an idle connection: target=%s", c->name);
        conn_close(c, CRAFT_EPROTOCOL);
    }
}

static void out_write_cb(struct bufferevent *bev, void *arg)
{
    conn_t *c = arg;
    tcp_t *t = c->t;
    out_call_t *call = c->call;
    conn_on_written(c);
    if (call == NULL || call->type != CRAFT_RPC_INSTALL_SNAPSHOT) {
        return;
    }
    pthread_mutex_lock(&t->mu);
    call->out_buffered = evbuffer_get_length(bufferevent_get_output(bev));
    pthread_cond_broadcast(&call->cond);
    pthread_mutex_unlock(&t->mu);
}

static void out_event_cb(struct bufferevent *bev, short what, void *arg)
{
    conn_t *c = arg;
    tcp_t *t = c->t;
    if (what & BEV_EVENT_CONNECTED) {
        c->connected = true;
        set_nodelay(bev);
        pthread_mutex_lock(&c->wmu);
        c->wfd = bufferevent_getfd(bev);
        c->wopen = true;
        pthread_mutex_unlock(&c->wmu);
        if (c->pipe != NULL) {
            pipe_ready(t, c->pipe);
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
        conn_close(c, c->connected ? CRAFT_EIO : CRAFT_EUNREACHABLE);
    } else {
        conn_close(c, CRAFT_EIO); /* an idle pooled connection went away */
    }
}

static void out_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    conn_t *c = arg;
    if (c->pipe != NULL && !pipe_arm_timer(c->t, c)) {
        CRAFT__WARN(&c->t->log, COMPONENT, "pipeline response timed out: target=%s",
                    c->name);
        conn_close(c, CRAFT_ETIMEDOUT);
    }
}

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
         * response written directly (in_timer_cb). */
        break;
    }
    set_reading(c, want_read);
    if (want_timer && t->opts.idle_timeout_ms > 0) {
        struct timeval tv = tv_of_ms(t->opts.idle_timeout_ms);
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
    if (rpc == NULL || cond_init_monotonic(&rpc->cond) != 0) {
        free(rpc);
        craft__wire_request_free(decoded);
        conn_reject(c, "out of memory");
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
    transport_ref(t);
    rpc->t = t;
    c->rpc = rpc;
    c->state = IN_AWAITING;
    if (rpc->rpc.type == CRAFT_RPC_INSTALL_SNAPSHOT) {
        rpc->queue = evbuffer_new();
        if (rpc->queue == NULL) {
            conn_reject(c, "out of memory");
            rpc_unref(t, rpc); /* the consumer never saw it */
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
        rv = evbuffer_add(rpc->queue, inbuf_data(&c->in), n1);
        if (rv == 0) {
            inbuf_consume(&c->in, n1);
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
        conn_reject(c, "out of memory");
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
        rpc_free(rpc);
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
            int rv = craft__wire_decode_request(&c->dec, inbuf_data(&c->in),
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
                             (unsigned)inbuf_data(&c->in)[0]);
                    reason = buf;
                }
                conn_reject(c, reason != NULL ? reason : "out of memory");
                return;
            }
            inbuf_consume(&c->in, consumed);
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
            inbuf_consume(&c->in, n);
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

static void in_write_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    conn_on_written(arg);
}

static void in_event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    conn_t *c = arg;
    if (what & BEV_EVENT_EOF) {
        if ((c->state == IN_DECODING && c->in.len == 0 && c->rpc == NULL) ||
            c->state == IN_AWAITING) {
            /* Between requests, or the client gave up on one. */
            CRAFT__DEBUG(&c->t->log, COMPONENT, "inbound connection closed: peer=%s",
                         c->name);
            conn_close(c, CRAFT_EIO);
        } else {
            conn_reject(c, "connection closed in the middle of a request");
        }
        return;
    }
    conn_reject(c, evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
}

static void in_timer_cb(evutil_socket_t fd, short what, void *arg)
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
        conn_close(c, CRAFT_EIO);
        return;
    }
    conn_reject(c, "timed out waiting for the rest of a request");
}

/* The socket is readable: one read straight into the linear buffer, then
 * the connection's state machine. EOF and errors go where libevent would
 * have reported them. */
static void conn_read_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    conn_t *c = arg;
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
    if (inbuf_reserve(&c->in, want) != 0) {
        if (c->inbound) {
            conn_reject(c, "out of memory");
        } else {
            conn_close(c, CRAFT_ENOMEM);
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
            in_event_cb(c->bev, ev, c);
        } else {
            out_event_cb(c->bev, ev, c);
        }
        return;
    }
    c->in.len += (size_t)n;
    if (c->inbound) {
        in_process(c);
    } else {
        out_on_read(c);
    }
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd,
                      struct sockaddr *sa, int salen, void *arg)
{
    (void)l;
    (void)salen;
    tcp_t *t = arg;
    if (t->stopping) {
        evutil_closesocket(fd);
        return;
    }
    struct bufferevent *bev = bufferevent_socket_new(t->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (bev == NULL) {
        evutil_closesocket(fd);
        return;
    }
    conn_t *c = conn_new(t, bev, true);
    if (c == NULL) {
        CRAFT__WARN(&t->log, COMPONENT, "out of memory accepting a connection");
        return;
    }
    format_addr(sa, c->name, sizeof c->name);
    set_nodelay(bev);
    c->state = IN_DECODING;
    in_update(c);
}

static void on_accept_error(struct evconnlistener *l, void *arg)
{
    (void)l;
    tcp_t *t = arg;
    CRAFT__ERROR(&t->log, COMPONENT, "failed to accept connection: error=%s",
                 evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
}

/* RPC_RESPOND: write the response, then on to the next request. */
static void rpc_respond_task(tcp_t *t, in_rpc_t *rpc)
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
        conn_reject(c, "out of memory encoding a response");
        return;
    }
    if (conn_write(c, frame, len, true) != 0) {
        conn_reject(c, "out of memory");
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
        rpc_free(rpc);
    }
    c->drain_left = left;
    c->state = left > 0 ? IN_DRAINING : IN_DECODING;
    in_process(c);
}

/* RPC_RESUME: the consumer made room in the snapshot queue. */
static void rpc_resume_task(tcp_t *t, in_rpc_t *rpc)
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
        if (rpc->kick && post_locked(t, &rpc->respond_task) == 1) {
            rpc->refs++;
        }
    } else {
        /* frame == NULL (out of memory): the loop drops the connection
         * rather than answer out of order. */
        rpc->resp_frame = frame;
        rpc->resp_len = len;
        if (c != NULL && post_locked(t, &rpc->respond_task) == 1) {
            rpc->refs++;
        }
    }
    bool last = --rpc->refs == 0; /* the consumer's */
    pthread_mutex_unlock(&t->mu);
    if (direct) {
        /* wmu held since before `answered` was set: the connection stays
         * open and the next response waits for this one. */
        conn_write_direct_locked(c, frame, len);
        pthread_mutex_unlock(&c->wmu);
    }
    if (last) {
        rpc_free(rpc);
    }
}

static int64_t snap_read(void *ctx, void *buf, size_t len)
{
    in_rpc_t *rpc = ctx;
    tcp_t *t = rpc->t;
    if (buf == NULL || len == 0) {
        return CRAFT_EINVAL;
    }
    if (pthread_equal(pthread_self(), t->thread)) {
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
                if (post_locked(t, &rpc->resume_task) == 1) {
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

/* ------------------------------------------------------------------------ */
/* The loop                                                                  */
/* ------------------------------------------------------------------------ */

static void loop_teardown(tcp_t *t);

static void run_task(tcp_t *t, task_t *task)
{
    switch (task->kind) {
    case TASK_CALL_START: {
        out_call_t *call = CONTAINER_OF(task, out_call_t, start_task);
        call_start(t, call);
        call_unref(t, call);
        break;
    }
    case TASK_CALL_DATA: {
        out_call_t *call = CONTAINER_OF(task, out_call_t, data_task);
        call_move_chunks(t, call);
        call_unref(t, call);
        break;
    }
    case TASK_CALL_CANCEL: {
        out_call_t *call = CONTAINER_OF(task, out_call_t, cancel_task);
        if (call->conn != NULL) {
            conn_close(call->conn, CRAFT_ETIMEDOUT);
        }
        call_unref(t, call);
        break;
    }
    case TASK_PIPE_START: {
        pipeline_t *p = CONTAINER_OF(task, pipeline_t, start_task);
        pipe_start(t, p);
        pipe_unref(t, p);
        break;
    }
    case TASK_PIPE_SEND: {
        pipeline_t *p = CONTAINER_OF(task, pipeline_t, send_task);
        pipe_send(t, p);
        pipe_unref(t, p);
        break;
    }
    case TASK_PIPE_CLOSE: {
        pipeline_t *p = CONTAINER_OF(task, pipeline_t, close_task);
        if (p->conn != NULL) {
            conn_close(p->conn, CRAFT_ECLOSED);
        }
        pipe_unref(t, p);
        break;
    }
    case TASK_RPC_RESPOND: {
        in_rpc_t *rpc = CONTAINER_OF(task, in_rpc_t, respond_task);
        rpc_respond_task(t, rpc);
        rpc_unref(t, rpc);
        break;
    }
    case TASK_RPC_RESUME: {
        in_rpc_t *rpc = CONTAINER_OF(task, in_rpc_t, resume_task);
        rpc_resume_task(t, rpc);
        rpc_unref(t, rpc);
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
        conn_close(t->conns, CRAFT_ECLOSED);
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
    event_base_loopbreak(t->base);
}

static void *loop_main(void *arg)
{
    tcp_t *t = arg;
    event_base_loop(t->base, EVLOOP_NO_EXIT_ON_EMPTY);
    return NULL;
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
        h->id = intern_locked(t, h->id);
        h->addr = intern_locked(t, h->addr);
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
    if (post_locked(t, &call->cancel_task) == 1) {
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
            if (!cond_wait_until(&call->cond, &t->mu, deadline) && !call->done) {
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
                if (post_locked(t, &call->cancel_task) == 1) {
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
            if (post_locked(t, &call->data_task) == 1) {
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
        bool skip = no_prevote_locked(t, target, now_ns());
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
    rv = resolve(target, false, false, &call->sa, &call->salen);
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
    if (cond_init_monotonic(&call->cond) != 0) {
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
    int64_t deadline = now_ns() + timeout_ms * 1000000;

    pthread_mutex_lock(&t->mu);
    if (t->closed) {
        pthread_mutex_unlock(&t->mu);
        pthread_cond_destroy(&call->cond);
        rv = CRAFT_ECLOSED;
        goto err_after_frame;
    }
    /* close() may run while we wait: keep the transport's memory. */
    transport_ref(t);
    call->refs = 1;
    call->next = t->calls;
    if (t->calls != NULL) {
        t->calls->prev = call;
    }
    t->calls = call;
    if (post_locked(t, &call->start_task) == 1) {
        call->refs++;
    }
    pthread_mutex_unlock(&t->mu);

    if (type == CRAFT_RPC_INSTALL_SNAPSHOT && size > 0) {
        stream_snapshot(t, call, data, size, deadline);
    }

    pthread_mutex_lock(&t->mu);
    while (!call->done) {
        if (!cond_wait_until(&call->cond, &t->mu, deadline) && !call->done) {
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
        call_free(call);
    }
    transport_unref(t);
    return rv;

err_after_frame:
    free(call->frame);
err_after_target:
    free(call->target);
    free(call);
    return rv;
}

static int tcp_append_entries(void *ctx, const char *id, const char *target,
                              const craft_append_entries_req_t *req,
                              craft_append_entries_resp_t *resp)
{
    (void)id;
    return rpc_call(ctx, target, CRAFT_RPC_APPEND_ENTRIES, req, resp, NULL);
}

static int tcp_request_vote(void *ctx, const char *id, const char *target,
                            const craft_request_vote_req_t *req,
                            craft_request_vote_resp_t *resp)
{
    (void)id;
    return rpc_call(ctx, target, CRAFT_RPC_REQUEST_VOTE, req, resp, NULL);
}

static int tcp_request_prevote(void *ctx, const char *id, const char *target,
                               const craft_request_prevote_req_t *req,
                               craft_request_prevote_resp_t *resp)
{
    (void)id;
    return rpc_call(ctx, target, CRAFT_RPC_REQUEST_PREVOTE, req, resp, NULL);
}

static int tcp_install_snapshot(void *ctx, const char *id, const char *target,
                                const craft_install_snapshot_req_t *req,
                                craft_install_snapshot_resp_t *resp,
                                craft_reader_t *data)
{
    (void)id;
    return rpc_call(ctx, target, CRAFT_RPC_INSTALL_SNAPSHOT, req, resp, data);
}

static int tcp_timeout_now(void *ctx, const char *id, const char *target,
                           const craft_timeout_now_req_t *req,
                           craft_timeout_now_resp_t *resp)
{
    (void)id;
    return rpc_call(ctx, target, CRAFT_RPC_TIMEOUT_NOW, req, resp, NULL);
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
    it->tag = tag;
    it->state = PL_QUEUED;

    pthread_mutex_lock(&t->mu);
    while (!p->closed && p->broken == 0 &&
           p->n_items >= (size_t)t->opts.max_inflight) {
        pthread_cond_wait(&p->cond, &t->mu);
    }
    if (p->closed || p->broken != 0) {
        rv = p->closed ? CRAFT_ECLOSED : p->broken;
        pthread_mutex_unlock(&t->mu);
        pl_item_free(it);
        return rv;
    }
    /* Written from this thread when the connection is up and nothing
     * waits before this request: neither queued requests (pipe_send
     * writes them all under mu) nor bytes in the connection's output. */
    conn_t *c = p->wconn;
    bool direct = false;
    if (c != NULL && (p->tail == NULL || p->tail->state != PL_QUEUED)) {
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
        it->state = PL_SENT;
        it->sent_ns = now_ns();
        frame = it->frame;
        it->frame = NULL;
    } else {
        int posted = post_locked(t, &p->send_task);
        if (posted < 0) {
            pthread_mutex_unlock(&t->mu);
            pl_item_free(it);
            return CRAFT_ECLOSED;
        }
        if (posted == 1) {
            p->refs++;
        }
    }
    if (p->tail != NULL) {
        p->tail->next = it;
    } else {
        p->head = it;
    }
    p->tail = it;
    p->n_items++;
    pthread_mutex_unlock(&t->mu);
    if (direct) {
        conn_write_direct_locked(c, frame, len);
        pthread_mutex_unlock(&c->wmu);
    }
    return 0;
}

static pl_item_t *pipe_pop_locked(pipeline_t *p);

/* Callback mode: hands the answered requests at the head to fn, in order,
 * one thread at a time (whoever finds `delivering` set leaves its items to
 * the thread already delivering). Not after close (close hands back the
 * rest itself). */
static void pipe_deliver(tcp_t *t, pipeline_t *p)
{
    pthread_mutex_lock(&t->mu);
    if (p->fn == NULL || p->delivering) {
        pthread_mutex_unlock(&t->mu);
        return;
    }
    p->delivering = true;
    while (!p->closed && p->head != NULL && p->head->state == PL_DONE) {
        pl_item_t *it = pipe_pop_locked(p);
        pthread_mutex_unlock(&t->mu);
        p->fn(p->fn_arg, it->err, it->err == 0 ? &it->resp.body.append_entries : NULL, it->tag);
        pl_item_free(it);
        pthread_mutex_lock(&t->mu);
    }
    p->delivering = false;
    pthread_mutex_unlock(&t->mu);
    pthread_cond_broadcast(&p->cond); /* room in the window; close waits */
}

/* Removes the oldest item; mu held. */
static pl_item_t *pipe_pop_locked(pipeline_t *p)
{
    pl_item_t *it = p->head;
    p->head = it->next;
    if (p->head == NULL) {
        p->tail = NULL;
    }
    p->n_items--;
    return it;
}

static int pipe_next_response(void *ctx, craft_append_entries_resp_t *resp,
                              void **tag)
{
    pipeline_t *p = ctx;
    tcp_t *t = p->t;
    if (resp == NULL || tag == NULL) {
        return CRAFT_EINVAL;
    }
    int rv;
    pl_item_t *done = NULL;
    craft__wire_response_free(&p->last_resp); /* the caller's thread only */
    pthread_mutex_lock(&t->mu);
    if (p->fn != NULL) {
        pthread_mutex_unlock(&t->mu);
        return CRAFT_EINVAL; /* responses go to the callback */
    }
    for (;;) {
        pl_item_t *it = p->head;
        if (p->closed) {
            /* Hand back every unconsumed tag, then nothing. */
            *tag = NULL;
            if (it != NULL) {
                done = pipe_pop_locked(p);
                *tag = done->tag;
            }
            rv = CRAFT_ECLOSED;
            break;
        }
        if (it != NULL && it->state == PL_DONE) {
            done = pipe_pop_locked(p);
            *tag = done->tag;
            rv = done->err;
            if (rv == 0) {
                *resp = done->resp.body.append_entries;
                p->last_resp = done->resp;
                memset(&done->resp, 0, sizeof done->resp);
            }
            break;
        }
        pthread_cond_wait(&p->cond, &t->mu);
    }
    pthread_mutex_unlock(&t->mu);
    if (done != NULL) {
        pthread_cond_broadcast(&p->cond); /* room in the window */
        pl_item_free(done);
    }
    return rv;
}

static void pipe_close(void *ctx)
{
    pipeline_t *p = ctx;
    tcp_t *t = p->t;
    pthread_mutex_lock(&t->mu);
    if (!p->closed) {
        p->closed = true;
        pthread_cond_broadcast(&p->cond);
        if (post_locked(t, &p->close_task) == 1) {
            p->refs++;
        }
    }
    if (p->fn == NULL) {
        pthread_mutex_unlock(&t->mu);
        return;
    }
    /* Callback mode: wait for a delivery in progress, then hand back every
     * request left (answered or not) as CRAFT_ECLOSED, in order. */
    while (p->delivering) {
        pthread_cond_wait(&p->cond, &t->mu);
    }
    pl_item_t *rest = p->head;
    p->head = p->tail = NULL;
    p->n_items = 0;
    pthread_mutex_unlock(&t->mu);
    pthread_cond_broadcast(&p->cond);
    while (rest != NULL) {
        pl_item_t *next = rest->next;
        p->fn(p->fn_arg, CRAFT_ECLOSED, NULL, rest->tag);
        pl_item_free(rest);
        rest = next;
    }
}

static int pipe_set_response_handler(void *ctx, craft_pipeline_response_fn fn, void *arg)
{
    pipeline_t *p = ctx;
    tcp_t *t = p->t;
    if (fn == NULL) {
        return CRAFT_EINVAL;
    }
    pthread_mutex_lock(&t->mu);
    int rv = 0;
    if (p->closed) {
        rv = CRAFT_ECLOSED;
    } else if (p->fn != NULL || p->head != NULL) {
        rv = CRAFT_EINVAL; /* once, before the first request */
    } else {
        p->fn = fn;
        p->fn_arg = arg;
    }
    pthread_mutex_unlock(&t->mu);
    return rv;
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
    if (p->prev != NULL) {
        p->prev->next = p->next;
    } else {
        t->pipelines = p->next;
    }
    if (p->next != NULL) {
        p->next->prev = p->prev;
    }
    bool last = --p->refs == 0; /* the owner's */
    pthread_mutex_unlock(&t->mu);
    if (last) {
        pipe_free_mem(p);
    }
}

static int tcp_pipeline(void *ctx, const char *id, const char *target,
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
    int rv = resolve(target, false, false, &p->sa, &p->salen);
    if (rv != 0) {
        free(p);
        return rv;
    }
    p->target = strdup(target);
    if (p->target == NULL || cond_init_monotonic(&p->cond) != 0) {
        free(p->target);
        free(p);
        return CRAFT_ENOMEM;
    }
    p->iface.ctx = p;
    p->iface.append_entries = pipe_append_entries;
    p->iface.next_response = pipe_next_response;
    p->iface.close = pipe_close;
    p->iface.free = pipe_free;
    p->iface.set_response_handler = pipe_set_response_handler;
    p->start_task.kind = TASK_PIPE_START;
    p->send_task.kind = TASK_PIPE_SEND;
    p->close_task.kind = TASK_PIPE_CLOSE;
    transport_ref(t);
    p->t = t;
    p->refs = 1;

    int64_t deadline = now_ns() + t->opts.timeout_ms * 1000000;
    pthread_mutex_lock(&t->mu);
    if (t->closed) {
        pthread_mutex_unlock(&t->mu);
        pipe_free_mem(p);
        return CRAFT_ECLOSED;
    }
    p->next = t->pipelines;
    if (t->pipelines != NULL) {
        t->pipelines->prev = p;
    }
    t->pipelines = p;
    if (post_locked(t, &p->start_task) == 1) {
        p->refs++;
    }
    bool timed_out = false;
    while (!p->ready && p->broken == 0 && !p->closed && !timed_out) {
        timed_out = !cond_wait_until(&p->cond, &t->mu, deadline);
    }
    rv = 0;
    if (p->closed) {
        rv = CRAFT_ECLOSED;
    } else if (p->broken != 0) {
        rv = p->broken;
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

/* ------------------------------------------------------------------------ */
/* Handlers, lifecycle                                                       */
/* ------------------------------------------------------------------------ */

static void handler_set(tcp_t *t, handler_slot_t *h, craft_rpc_handler_fn fn,
                        void *arg)
{
    pthread_mutex_lock(&t->mu);
    /* From inside a handler (on the loop thread) the only invocation in
     * progress is the caller's own: waiting for it would never end. */
    bool on_loop = t->thread_started && pthread_equal(pthread_self(), t->thread);
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
    for (pipeline_t *p = t->pipelines; p != NULL; p = p->next) {
        p->closed = true;
        pthread_cond_broadcast(&p->cond);
    }
    t->stop_task.kind = TASK_STOP;
    post_locked(t, &t->stop_task);
    pthread_mutex_unlock(&t->mu);

    pthread_join(t->thread, NULL);
    event_free(t->wakeup);
    t->wakeup = NULL;
    event_base_free(t->base);
    t->base = NULL;
    /* The loop thread made every handler call: none is in progress. */
    handler_set(t, &t->rpc_handler, NULL, NULL);
    handler_set(t, &t->hb_handler, NULL, NULL);
    transport_unref(t);
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

static int evthread_rv = -1;
static pthread_once_t evthread_once = PTHREAD_ONCE_INIT;

static void init_evthread(void)
{
    evthread_rv = evthread_use_pthreads();
}

static int start_loop(tcp_t *t)
{
    /* Writes happen on the loop thread only: with SIGPIPE blocked there a
     * write to a reset connection fails with EPIPE instead of killing the
     * process (libevent does not use MSG_NOSIGNAL). */
    sigset_t block;
    sigset_t old;
    sigemptyset(&block);
    sigaddset(&block, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    int rv = pthread_create(&t->thread, NULL, loop_main, t);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rv != 0) {
        return CRAFT_ENOMEM;
    }
    t->thread_started = true;
    return 0;
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
    pthread_once(&evthread_once, init_evthread);
    if (evthread_rv != 0) {
        return CRAFT_ENOMEM;
    }
    struct sockaddr_storage bind_sa;
    socklen_t bind_len = 0;
    int rv = resolve(bind, true, false, &bind_sa, &bind_len);
    if (rv != 0) {
        return CRAFT_EINVAL;
    }
    struct sockaddr_storage adv_sa;
    socklen_t adv_len = 0;
    if (advertise != NULL) {
        rv = resolve(advertise, false, true, &adv_sa, &adv_len);
        if (rv != 0 || !advertisable((struct sockaddr *)&adv_sa)) {
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
    rv = CRAFT_ENOMEM;
    if (pthread_mutex_init(&t->mu, NULL) != 0) {
        goto err_after_alloc;
    }
    if (pthread_cond_init(&t->handlers_idle, NULL) != 0) {
        goto err_after_mu;
    }
    t->base = event_base_new();
    if (t->base == NULL) {
        goto err_after_cond;
    }
    t->listener = evconnlistener_new_bind(
        t->base, on_accept, t,
        LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC, -1,
        (struct sockaddr *)&bind_sa, (int)bind_len);
    if (t->listener == NULL) {
        CRAFT__ERROR(&t->log, COMPONENT, "cannot listen: bind=%s error=%s", bind,
                     evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
        rv = CRAFT_EIO;
        goto err_after_base;
    }
    evconnlistener_set_error_cb(t->listener, on_accept_error);
    if (advertise == NULL) {
        adv_len = sizeof adv_sa;
        if (getsockname(evconnlistener_get_fd(t->listener),
                        (struct sockaddr *)&adv_sa, &adv_len) != 0) {
            rv = CRAFT_EIO;
            goto err_after_listener;
        }
        if (!advertisable((struct sockaddr *)&adv_sa)) {
            CRAFT__ERROR(&t->log, COMPONENT,
                         "local bind address is not advertisable: bind=%s", bind);
            rv = CRAFT_EINVAL;
            goto err_after_listener;
        }
    }
    format_addr((struct sockaddr *)&adv_sa, t->local_addr, sizeof t->local_addr);
    t->wakeup = event_new(t->base, -1, 0, on_wakeup, t);
    if (t->wakeup == NULL) {
        goto err_after_listener;
    }
    t->iface.ctx = t;
    t->iface.set_rpc_handler = tcp_set_rpc_handler;
    t->iface.set_heartbeat_handler = tcp_set_heartbeat_handler;
    t->iface.local_addr = tcp_local_addr;
    t->iface.append_entries = tcp_append_entries;
    t->iface.request_vote = tcp_request_vote;
    t->iface.request_prevote = tcp_request_prevote;
    t->iface.install_snapshot = tcp_install_snapshot;
    t->iface.timeout_now = tcp_timeout_now;
    t->iface.append_entries_pipeline = tcp_pipeline;
    t->iface.close = tcp_close;
    if (start_loop(t) != 0) {
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
    event_base_free(t->base);
err_after_cond:
    pthread_cond_destroy(&t->handlers_idle);
err_after_mu:
    pthread_mutex_destroy(&t->mu);
err_after_alloc:
    free(t);
    return rv;
}
