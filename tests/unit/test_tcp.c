/*
 * Unit tests of the TCP transport (transports/tcp.c) over loopback.
 *
 * A "server" is a transport whose rpc and heartbeat handlers queue incoming
 * rpcs (through rpc->consumer_data[0], as craft does); a responder thread
 * answers them, or the test pops and answers them itself when it needs
 * control over the timing. Raw sockets play broken, hostile and old
 * (hashicorp v1.1.2) peers. Every wait is on a condition with a generous
 * deadline; nothing relies on sleeping.
 */
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <arpa/inet.h>

#include "craft.h"
#include "craft/tcp.h"
#include "tests/testutil.h"
#include "transports/tcp.h"
#include "transports/wire.h"

/* How long we wait for something that must happen. */
#define WAIT_MS 30000
/* How long we give something that must not happen the chance to happen. */
#define NEGATIVE_WAIT_MS 200

/* ------------------------------------------------------------------------ */
/* Digests of requests                                                       */
/* ------------------------------------------------------------------------ */

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h = (h ^ b[i]) * 1099511628211ULL;
    }
    return h;
}

static uint64_t fnv_u64(uint64_t h, uint64_t v)
{
    return fnv(h, &v, sizeof v);
}

static uint64_t fnv_str(uint64_t h, const char *s)
{
    return s == NULL ? fnv_u64(h, 0xdeadbeef) : fnv(h, s, strlen(s) + 1);
}

static uint64_t fnv_header(uint64_t h, const craft_rpc_header_t *hd)
{
    h = fnv_u64(h, (uint64_t)hd->protocol_version);
    h = fnv_str(h, hd->id);
    return fnv_str(h, hd->addr);
}

static uint64_t digest_req(craft_rpc_type_t type, const void *req)
{
    uint64_t h = fnv_u64(14695981039346656037ULL, (uint64_t)type);
    switch (type) {
    case CRAFT_RPC_APPEND_ENTRIES: {
        const craft_append_entries_req_t *q = req;
        h = fnv_header(h, &q->header);
        h = fnv_u64(h, q->term);
        h = fnv_str(h, q->leader);
        h = fnv_u64(h, q->prev_log_entry);
        h = fnv_u64(h, q->prev_log_term);
        h = fnv_u64(h, q->leader_commit_index);
        h = fnv_u64(h, q->n_entries);
        for (size_t i = 0; i < q->n_entries; i++) {
            const craft_log_t *e = &q->entries[i];
            h = fnv_u64(h, e->index);
            h = fnv_u64(h, e->term);
            h = fnv_u64(h, (uint64_t)e->type);
            h = fnv_u64(h, e->len);
            h = fnv(h, e->data, e->len);
            h = fnv_u64(h, e->ext_len);
            h = fnv(h, e->ext, e->ext_len);
            h = fnv_u64(h, (uint64_t)e->appended_at_ns);
        }
        break;
    }
    case CRAFT_RPC_REQUEST_VOTE: {
        const craft_request_vote_req_t *q = req;
        h = fnv_header(h, &q->header);
        h = fnv_u64(h, q->term);
        h = fnv_str(h, q->candidate);
        h = fnv_u64(h, q->last_log_index);
        h = fnv_u64(h, q->last_log_term);
        h = fnv_u64(h, q->leadership_transfer);
        break;
    }
    case CRAFT_RPC_REQUEST_PREVOTE: {
        const craft_request_prevote_req_t *q = req;
        h = fnv_header(h, &q->header);
        h = fnv_u64(h, q->term);
        h = fnv_u64(h, q->last_log_index);
        h = fnv_u64(h, q->last_log_term);
        break;
    }
    case CRAFT_RPC_INSTALL_SNAPSHOT: {
        const craft_install_snapshot_req_t *q = req;
        h = fnv_header(h, &q->header);
        h = fnv_u64(h, (uint64_t)q->snapshot_version);
        h = fnv_u64(h, q->term);
        h = fnv_str(h, q->leader);
        h = fnv_u64(h, q->last_log_index);
        h = fnv_u64(h, q->last_log_term);
        h = fnv_u64(h, q->configuration.n);
        for (size_t i = 0; i < q->configuration.n; i++) {
            h = fnv_u64(h, (uint64_t)q->configuration.servers[i].suffrage);
            h = fnv_str(h, q->configuration.servers[i].id);
            h = fnv_str(h, q->configuration.servers[i].address);
        }
        h = fnv_u64(h, q->configuration_index);
        h = fnv_u64(h, (uint64_t)q->size);
        break;
    }
    case CRAFT_RPC_TIMEOUT_NOW: {
        const craft_timeout_now_req_t *q = req;
        h = fnv_header(h, &q->header);
        break;
    }
    }
    return h;
}

/* ------------------------------------------------------------------------ */
/* A snapshot stream: deterministic bytes, hashed and counted as read       */
/* ------------------------------------------------------------------------ */

typedef struct gen_reader {
    craft_reader_t r;
    uint64_t state;
    int64_t left;
    size_t chunk; /* most bytes per read */
    uint64_t hash;
    int64_t produced;
} gen_reader_t;

static int64_t gen_read(void *ctx, void *buf, size_t len)
{
    gen_reader_t *g = ctx;
    size_t n = len < g->chunk ? len : g->chunk;
    if ((int64_t)n > g->left) {
        n = (size_t)g->left;
    }
    unsigned char *b = buf;
    for (size_t i = 0; i < n; i++) {
        g->state ^= g->state << 13;
        g->state ^= g->state >> 7;
        g->state ^= g->state << 17;
        b[i] = (unsigned char)g->state;
    }
    g->hash = fnv(g->hash, b, n);
    g->left -= (int64_t)n;
    g->produced += (int64_t)n;
    return (int64_t)n;
}

static void gen_close(void *ctx)
{
    (void)ctx;
}

static void gen_init(gen_reader_t *g, int64_t size, size_t chunk)
{
    memset(g, 0, sizeof *g);
    g->r.ctx = g;
    g->r.read = gen_read;
    g->r.close = gen_close;
    g->state = 0x9e3779b97f4a7c15ULL;
    g->left = size;
    g->chunk = chunk;
    g->hash = 14695981039346656037ULL;
}

/* ------------------------------------------------------------------------ */
/* Servers                                                                   */
/* ------------------------------------------------------------------------ */

static atomic_int warnings;

static void test_logger(void *ctx, craft_level_t level, const char *component,
                        const char *message)
{
    (void)ctx;
    if (level >= CRAFT_LEVEL_WARN) {
        atomic_fetch_add(&warnings, 1);
    }
    if (getenv("TCP_TEST_VERBOSE") != NULL || level >= CRAFT_LEVEL_ERROR) {
        fprintf(stderr, "[%d] %s: %s\n", (int)level, component, message);
    }
}

/* "shared-loop" mode (second meson test): every transport a test creates
 * with opts_init runs on one loop shared by the whole test. "spinning-loop"
 * (third): the same loop, spinning when idle (craft_tcp_loop_set_spin). */
static bool shared_mode;
static int64_t shared_spin_us;
static craft_tcp_loop_t *shared_loop;

static void shared_loop_setup(void)
{
    if (shared_mode) {
        ck_assert_int_eq(craft_tcp_loop_new(&shared_loop), 0);
        ck_assert_int_eq(craft_tcp_loop_set_spin(shared_loop, shared_spin_us), 0);
    }
}

static void shared_loop_teardown(void)
{
    craft_tcp_loop_free(shared_loop); /* freed after its last transport */
    shared_loop = NULL;
}

static void opts_init(craft_tcp_options_t *o)
{
    craft_tcp_options_default(o);
    o->loop = shared_loop;
    o->logger = test_logger;
    o->log_level = getenv("TCP_TEST_VERBOSE") != NULL ? CRAFT_LEVEL_TRACE
                                                      : CRAFT_LEVEL_WARN;
}

typedef struct server {
    craft_transport_t *t;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    craft_rpc_t *head; /* linked through consumer_data[0] */
    craft_rpc_t *tail;
    unsigned received;
    unsigned heartbeats;
    bool stop;
    bool responder;
    pthread_t thread;
    uint64_t digest[5]; /* of the last request of each type */
    pthread_t handler_thread; /* the thread of the last handler call */
    /* InstallSnapshot, as read by the responder */
    uint64_t snap_hash;
    int64_t snap_bytes;
    int snap_err;
    size_t snap_buf; /* read size */
} server_t;

static void server_push(server_t *s, craft_rpc_t *rpc, bool heartbeat)
{
    pthread_mutex_lock(&s->mu);
    rpc->consumer_data[0] = NULL;
    if (s->tail != NULL) {
        s->tail->consumer_data[0] = rpc;
    } else {
        s->head = rpc;
    }
    s->tail = rpc;
    s->handler_thread = pthread_self();
    s->received++;
    if (heartbeat) {
        s->heartbeats++;
    }
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->mu);
}

static void on_rpc(void *arg, craft_rpc_t *rpc)
{
    server_push(arg, rpc, false);
}

static void on_heartbeat(void *arg, craft_rpc_t *rpc)
{
    server_push(arg, rpc, true);
}

/* Pops the oldest rpc, waiting up to WAIT_MS; NULL on stop or timeout. */
static craft_rpc_t *server_pop(server_t *s, bool forever)
{
    craft_rpc_t *rpc = NULL;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += WAIT_MS / 1000;
    pthread_mutex_lock(&s->mu);
    while (s->head == NULL && !s->stop) {
        if (forever) {
            pthread_cond_wait(&s->cond, &s->mu);
        } else if (pthread_cond_timedwait(&s->cond, &s->mu, &ts) == ETIMEDOUT) {
            break;
        }
    }
    if (s->head != NULL) {
        rpc = s->head;
        s->head = rpc->consumer_data[0];
        if (s->head == NULL) {
            s->tail = NULL;
        }
    }
    pthread_mutex_unlock(&s->mu);
    return rpc;
}

static const craft_rpc_header_t SRV_HEADER = {3, "srv", "127.0.0.1:1"};

/* Answers `rpc` from its content (see each case). */
static void answer(server_t *s, craft_rpc_t *rpc)
{
    uint64_t d = digest_req(rpc->type, &rpc->req);
    pthread_mutex_lock(&s->mu);
    s->digest[rpc->type] = d;
    pthread_mutex_unlock(&s->mu);
    switch (rpc->type) {
    case CRAFT_RPC_APPEND_ENTRIES: {
        const craft_append_entries_req_t *q = &rpc->req.append_entries;
        if (q->term == 666) {
            rpc->respond(rpc, CRAFT_ENOTLEADER);
            return;
        }
        craft_append_entries_resp_t *r = &rpc->resp.append_entries;
        r->header = SRV_HEADER;
        r->term = q->term + 1;
        r->last_log = q->prev_log_entry + q->n_entries;
        r->success = true;
        r->no_retry_backoff = q->n_entries % 2 == 1;
        break;
    }
    case CRAFT_RPC_REQUEST_VOTE:
        rpc->resp.request_vote.header = SRV_HEADER;
        rpc->resp.request_vote.term = rpc->req.request_vote.term;
        rpc->resp.request_vote.granted = rpc->req.request_vote.last_log_index == 7;
        break;
    case CRAFT_RPC_REQUEST_PREVOTE:
        rpc->resp.request_prevote.header = SRV_HEADER;
        rpc->resp.request_prevote.term = rpc->req.request_prevote.term + 1;
        rpc->resp.request_prevote.granted = true;
        break;
    case CRAFT_RPC_INSTALL_SNAPSHOT: {
        size_t cap = s->snap_buf != 0 ? s->snap_buf : 100003;
        unsigned char *buf = malloc(cap);
        ck_assert_ptr_nonnull(buf);
        uint64_t h = 14695981039346656037ULL;
        int64_t total = 0;
        int err = 0;
        for (;;) {
            int64_t n = rpc->reader->read(rpc->reader->ctx, buf, cap);
            if (n < 0) {
                err = (int)n;
                break;
            }
            if (n == 0) {
                break;
            }
            h = fnv(h, buf, (size_t)n);
            total += n;
        }
        free(buf);
        pthread_mutex_lock(&s->mu);
        s->snap_hash = h;
        s->snap_bytes = total;
        s->snap_err = err;
        pthread_mutex_unlock(&s->mu);
        rpc->resp.install_snapshot.term = rpc->req.install_snapshot.term;
        rpc->resp.install_snapshot.success =
            err == 0 && total == rpc->req.install_snapshot.size;
        break;
    }
    case CRAFT_RPC_TIMEOUT_NOW:
        rpc->resp.timeout_now.header = SRV_HEADER;
        break;
    }
    rpc->respond(rpc, 0);
}

static void *responder_main(void *arg)
{
    server_t *s = arg;
    craft_rpc_t *rpc;
    while ((rpc = server_pop(s, true)) != NULL) {
        answer(s, rpc);
    }
    return NULL;
}

static server_t *server_new(const craft_tcp_options_t *o, bool responder)
{
    server_t *s = calloc(1, sizeof *s);
    ck_assert_ptr_nonnull(s);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cond, NULL);
    craft_tcp_options_t def;
    if (o == NULL) {
        opts_init(&def);
        o = &def;
    }
    ck_assert_int_eq(craft_tcp_transport_new("127.0.0.1:0", NULL, o, &s->t), 0);
    s->t->set_rpc_handler(s->t->ctx, on_rpc, s);
    s->t->set_heartbeat_handler(s->t->ctx, on_heartbeat, s);
    s->responder = responder;
    if (responder) {
        ck_assert_int_eq(pthread_create(&s->thread, NULL, responder_main, s), 0);
    }
    return s;
}

static const char *server_addr(server_t *s)
{
    return s->t->local_addr(s->t->ctx);
}

/* Stops the responder, answers what is left with an error, closes. */
static void server_free(server_t *s)
{
    pthread_mutex_lock(&s->mu);
    s->stop = true;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->mu);
    if (s->responder) {
        pthread_join(s->thread, NULL);
    }
    s->t->set_rpc_handler(s->t->ctx, NULL, NULL);
    s->t->set_heartbeat_handler(s->t->ctx, NULL, NULL);
    craft_rpc_t *rpc;
    while ((rpc = s->head) != NULL) {
        s->head = rpc->consumer_data[0];
        rpc->respond(rpc, CRAFT_ESHUTDOWN);
    }
    s->t->close(s->t->ctx);
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

static unsigned server_received(server_t *s)
{
    pthread_mutex_lock(&s->mu);
    unsigned n = s->received;
    pthread_mutex_unlock(&s->mu);
    return n;
}

/* Reads a field the responder writes, under its lock. */
#define SRV_GET(s, field)                                                      \
    __extension__({                                                            \
        pthread_mutex_lock(&(s)->mu);                                          \
        __typeof__((s)->field) v_ = (s)->field;                                \
        pthread_mutex_unlock(&(s)->mu);                                        \
        v_;                                                                    \
    })

static craft_transport_t *client_new(const craft_tcp_options_t *o)
{
    craft_tcp_options_t def;
    if (o == NULL) {
        opts_init(&def);
        o = &def;
    }
    craft_transport_t *t = NULL;
    ck_assert_int_eq(craft_tcp_transport_new("127.0.0.1:0", NULL, o, &t), 0);
    return t;
}

static craft__tcp_stats_t stats_of(craft_transport_t *t)
{
    craft__tcp_stats_t st;
    craft__tcp_stats(t, &st);
    return st;
}

static void heartbeat_req(craft_append_entries_req_t *q, uint64_t term)
{
    memset(q, 0, sizeof *q);
    q->header.protocol_version = 3;
    q->header.id = "leader";
    q->header.addr = "127.0.0.1:7000";
    q->term = term;
    q->leader = "127.0.0.1:7000";
}

static int send_heartbeat(craft_transport_t *c, const char *target, uint64_t term,
                          craft_append_entries_resp_t *resp)
{
    craft_append_entries_req_t q;
    heartbeat_req(&q, term);
    memset(resp, 0, sizeof *resp);
    return c->append_entries(c->ctx, "srv", target, &q, resp);
}

/* ------------------------------------------------------------------------ */
/* Raw sockets                                                               */
/* ------------------------------------------------------------------------ */

static int raw_connect(const char *addr)
{
    char host[64];
    const char *colon = strrchr(addr, ':');
    ck_assert_ptr_nonnull(colon);
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = '\0';
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)atoi(colon + 1));
    ck_assert_int_eq(inet_pton(AF_INET, host, &sa.sin_addr), 1);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    return fd;
}

static bool raw_send(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            return false;
        }
        p += w;
        n -= (size_t)w;
    }
    return true;
}

/* Waits until the peer closes `fd` (EOF or reset), discarding data. */
static bool raw_wait_closed(int fd)
{
    char buf[4096];
    struct pollfd pfd = {fd, POLLIN, 0};
    for (;;) {
        int rv = poll(&pfd, 1, WAIT_MS);
        if (rv <= 0) {
            return false;
        }
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) {
            return true;
        }
    }
}

/* Reads one response frame of `type` from `fd`. */
static int raw_read_response(int fd, craft_rpc_type_t type,
                             craft__wire_response_t *resp)
{
    craft__wire_decoder_t d;
    craft__wire_decoder_init(&d, NULL);
    uint8_t buf[8192];
    size_t len = 0;
    for (;;) {
        size_t consumed = 0;
        if (len > 0) {
            int rv = craft__wire_decode_response(&d, type, buf, len, resp, &consumed);
            if (rv != CRAFT__WIRE_NEED_MORE) {
                ck_assert_uint_eq(consumed, rv == 0 ? len : 0);
                return rv;
            }
        }
        struct pollfd pfd = {fd, POLLIN, 0};
        if (poll(&pfd, 1, WAIT_MS) <= 0) {
            return CRAFT_ETIMEDOUT;
        }
        ssize_t n = recv(fd, buf + len, sizeof buf - len, 0);
        if (n <= 0) {
            return CRAFT_EIO;
        }
        len += (size_t)n;
    }
}

static size_t encode_req(uint8_t **out, craft_rpc_type_t type, const void *req)
{
    craft__mp_buf_t b;
    craft__mp_buf_init(&b);
    ck_assert_int_eq(craft__wire_encode_request(&b, CRAFT__WIRE_FORMAT_DEFAULT, type, req), 0);
    size_t len = 0;
    *out = craft__mp_buf_steal(&b, &len);
    return len;
}

/* ------------------------------------------------------------------------ */
/* Construction                                                              */
/* ------------------------------------------------------------------------ */

START_TEST(test_addresses_and_options)
{
    craft_tcp_options_t o;
    opts_init(&o);
    craft_transport_t *t = NULL;
    ck_assert_int_eq(craft_tcp_transport_new("127.0.0.1:0", NULL, &o, &t), 0);
    const char *addr = t->local_addr(t->ctx);
    ck_assert_int_eq(strncmp(addr, "127.0.0.1:", 10), 0);
    ck_assert_int_gt(atoi(addr + 10), 0);
    t->close(t->ctx);

    /* hashicorp's errNotAdvertisable */
    ck_assert_int_eq(craft_tcp_transport_new("0.0.0.0:0", NULL, &o, &t), CRAFT_EINVAL);
    ck_assert_int_eq(craft_tcp_transport_new("127.0.0.1:0", "0.0.0.0:8300", &o, &t),
                     CRAFT_EINVAL);
    ck_assert_int_eq(craft_tcp_transport_new("127.0.0.1:0", "[::]:8300", &o, &t),
                     CRAFT_EINVAL);
    ck_assert_int_eq(craft_tcp_transport_new("127.0.0.1:0", "127.0.0.1:0", &o, &t),
                     CRAFT_EINVAL);
    ck_assert_int_eq(craft_tcp_transport_new("nonsense", NULL, &o, &t), CRAFT_EINVAL);
    ck_assert_int_eq(craft_tcp_transport_new("127.0.0.1:99999", NULL, &o, &t),
                     CRAFT_EINVAL);

    ck_assert_int_eq(craft_tcp_transport_new("0.0.0.0:0", "127.0.0.1:8300", &o, &t), 0);
    ck_assert_str_eq(t->local_addr(t->ctx), "127.0.0.1:8300");
    t->close(t->ctx);

    craft_tcp_options_t bad = o;
    bad.timeout_ms = 0;
    ck_assert_int_eq(craft_tcp_transport_new("127.0.0.1:0", NULL, &bad, &t), CRAFT_EINVAL);
    bad = o;
    bad.max_inflight = 0;
    ck_assert_int_eq(craft_tcp_transport_new("127.0.0.1:0", NULL, &bad, &t), CRAFT_EINVAL);
    bad = o;
    bad.max_pool = -1;
    ck_assert_int_eq(craft_tcp_transport_new("127.0.0.1:0", NULL, &bad, &t), CRAFT_EINVAL);

    /* NULL options = defaults */
    ck_assert_int_eq(craft_tcp_transport_new("127.0.0.1:0", NULL, NULL, &t), 0);
    t->close(t->ctx);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Every RPC type                                                            */
/* ------------------------------------------------------------------------ */

START_TEST(test_every_rpc)
{
    server_t *s = server_new(NULL, true);
    craft_transport_t *c = client_new(NULL);
    const char *target = server_addr(s);

    /* AppendEntries with entries (data, ext, empty and nil payloads). */
    craft_log_t entries[3];
    memset(entries, 0, sizeof entries);
    entries[0] = (craft_log_t){11, 4, CRAFT_LOG_COMMAND, "hello", 5, "ext", 3,
                               1704164645000000006LL};
    entries[1] = (craft_log_t){12, 4, CRAFT_LOG_NOOP, NULL, 0, NULL, 0, 0};
    entries[2] = (craft_log_t){13, 4, CRAFT_LOG_CONFIGURATION, "", 0, NULL, 0,
                               1000000000LL};
    craft_append_entries_req_t ae = {{3, "leader", "127.0.0.1:7000"}, 4,
                                     "127.0.0.1:7000", 10, 3, entries, 3, 9};
    craft_append_entries_resp_t aer;
    memset(&aer, 0, sizeof aer);
    ck_assert_int_eq(c->append_entries(c->ctx, "srv", target, &ae, &aer), 0);
    ck_assert_uint_eq(aer.term, 5);
    ck_assert_uint_eq(aer.last_log, 13);
    ck_assert(aer.success);
    ck_assert(aer.no_retry_backoff);
    ck_assert_int_eq(aer.header.protocol_version, 3);
    ck_assert_str_eq(aer.header.id, "srv");
    ck_assert_str_eq(aer.header.addr, "127.0.0.1:1");
    ck_assert_uint_eq(SRV_GET(s, digest[CRAFT_RPC_APPEND_ENTRIES]),
                      digest_req(CRAFT_RPC_APPEND_ENTRIES, &ae));

    /* Heartbeat: through the heartbeat handler. */
    ck_assert_int_eq(send_heartbeat(c, target, 8, &aer), 0);
    ck_assert_uint_eq(aer.term, 9);
    ck_assert_uint_eq(SRV_GET(s, heartbeats), 1);

    craft_request_vote_req_t rv = {{3, "cand", "127.0.0.1:7001"}, 6,
                                   "127.0.0.1:7001", 7, 5, true};
    craft_request_vote_resp_t rvr;
    memset(&rvr, 0, sizeof rvr);
    ck_assert_int_eq(c->request_vote(c->ctx, "srv", target, &rv, &rvr), 0);
    ck_assert_uint_eq(rvr.term, 6);
    ck_assert(rvr.granted);
    ck_assert_uint_eq(SRV_GET(s, digest[CRAFT_RPC_REQUEST_VOTE]),
                      digest_req(CRAFT_RPC_REQUEST_VOTE, &rv));

    craft_request_prevote_req_t pv = {{3, "cand", "127.0.0.1:7001"}, 7, 9, 6};
    craft_request_prevote_resp_t pvr;
    memset(&pvr, 0, sizeof pvr);
    ck_assert_int_eq(c->request_prevote(c->ctx, "srv", target, &pv, &pvr), 0);
    ck_assert_uint_eq(pvr.term, 8);
    ck_assert(pvr.granted);
    ck_assert_uint_eq(SRV_GET(s, digest[CRAFT_RPC_REQUEST_PREVOTE]),
                      digest_req(CRAFT_RPC_REQUEST_PREVOTE, &pv));

    craft_timeout_now_req_t tn = {{3, "leader", "127.0.0.1:7000"}};
    craft_timeout_now_resp_t tnr;
    memset(&tnr, 0, sizeof tnr);
    ck_assert_int_eq(c->timeout_now(c->ctx, "srv", target, &tn, &tnr), 0);
    ck_assert_str_eq(tnr.header.id, "srv");
    ck_assert_uint_eq(SRV_GET(s, digest[CRAFT_RPC_TIMEOUT_NOW]),
                      digest_req(CRAFT_RPC_TIMEOUT_NOW, &tn));

    craft_server_t servers[2] = {{CRAFT_VOTER, "n1", "127.0.0.1:7000"},
                                 {CRAFT_NONVOTER, "n2", "127.0.0.1:7001"}};
    gen_reader_t g;
    gen_init(&g, 100000, 777);
    craft_install_snapshot_req_t is = {{3, "leader", "127.0.0.1:7000"}, 1, 4,
                                       "127.0.0.1:7000", 50, 3, {2, servers}, 40,
                                       100000};
    craft_install_snapshot_resp_t isr;
    memset(&isr, 0, sizeof isr);
    ck_assert_int_eq(c->install_snapshot(c->ctx, "srv", target, &is, &isr, &g.r), 0);
    ck_assert(isr.success);
    ck_assert_uint_eq(isr.term, 4);
    ck_assert_int_eq(SRV_GET(s, snap_bytes), 100000);
    ck_assert_uint_eq(SRV_GET(s, snap_hash), g.hash);
    ck_assert_uint_eq(SRV_GET(s, digest[CRAFT_RPC_INSTALL_SNAPSHOT]),
                      digest_req(CRAFT_RPC_INSTALL_SNAPSHOT, &is));

    /* An empty snapshot. */
    is.size = 0;
    ck_assert_int_eq(c->install_snapshot(c->ctx, "srv", target, &is, &isr, NULL), 0);
    ck_assert(isr.success);
    ck_assert_int_eq(SRV_GET(s, snap_bytes), 0);

    c->close(c->ctx);
    server_free(s);
}
END_TEST

START_TEST(test_error_string_and_reuse)
{
    server_t *s = server_new(NULL, true);
    craft_transport_t *c = client_new(NULL);
    craft_append_entries_resp_t r;
    ck_assert_int_eq(send_heartbeat(c, server_addr(s), 1, &r), 0);
    /* The responder answers term 666 with CRAFT_ENOTLEADER: the peer's
     * message "node is not the leader" comes back as the code. */
    ck_assert_int_eq(send_heartbeat(c, server_addr(s), 666, &r), CRAFT_ENOTLEADER);
    ck_assert_int_eq(send_heartbeat(c, server_addr(s), 2, &r), 0);
    ck_assert_uint_eq(r.term, 3);
    /* One connection served all three (an error string keeps it usable). */
    ck_assert_uint_eq(stats_of(c).dials, 1);
    ck_assert_uint_eq(stats_of(s->t).accepts, 1);
    c->close(c->ctx);
    server_free(s);
}
END_TEST

START_TEST(test_no_handler_and_unreachable)
{
    craft_tcp_options_t o;
    opts_init(&o);
    craft_transport_t *srv = client_new(&o); /* no handler installed */
    craft_transport_t *c = client_new(&o);
    craft_append_entries_resp_t r;
    ck_assert_int_eq(send_heartbeat(c, srv->local_addr(srv->ctx), 1, &r),
                     CRAFT_ESHUTDOWN);
    char addr[64];
    snprintf(addr, sizeof addr, "%s", srv->local_addr(srv->ctx));
    srv->close(srv->ctx);
    ck_assert_int_eq(send_heartbeat(c, addr, 1, &r), CRAFT_EUNREACHABLE);
    ck_assert_int_eq(send_heartbeat(c, "not an address", 1, &r), CRAFT_EINVAL);
    c->close(c->ctx);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Pool                                                                      */
/* ------------------------------------------------------------------------ */

typedef struct hammer {
    craft_transport_t *c;
    const char *target;
    int n;
    atomic_int failures;
} hammer_t;

static void *hammer_main(void *arg)
{
    hammer_t *h = arg;
    for (int i = 0; i < h->n; i++) {
        craft_append_entries_resp_t r;
        if (send_heartbeat(h->c, h->target, (uint64_t)i + 1, &r) != 0 ||
            r.term != (uint64_t)i + 2) {
            atomic_fetch_add(&h->failures, 1);
        }
    }
    return NULL;
}

/* The loop returns a connection to the pool just after waking its caller:
 * wait until no connection is in use. */
static bool all_idle(void *arg)
{
    craft__tcp_stats_t st = stats_of(arg);
    return st.outbound_open == st.pooled_idle;
}

START_TEST(test_pool_reuse)
{
    server_t *s = server_new(NULL, true);
    craft_transport_t *c = client_new(NULL);
    hammer_t h = {c, server_addr(s), 50, 0};
    hammer_main(&h);
    ck_assert_int_eq(atomic_load(&h.failures), 0);
    ck_assert(tu_wait_for(all_idle, c, WAIT_MS));
    craft__tcp_stats_t st = stats_of(c);
    ck_assert_uint_eq(st.dials, 1);
    ck_assert_uint_eq(st.pooled_idle, 1);

    /* Three concurrent callers never need more than three connections,
     * and all of them fit in the pool (max_pool 3). */
    pthread_t th[6];
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(pthread_create(&th[i], NULL, hammer_main, &h), 0);
    }
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
    }
    ck_assert_int_eq(atomic_load(&h.failures), 0);
    ck_assert(tu_wait_for(all_idle, c, WAIT_MS));
    st = stats_of(c);
    ck_assert_uint_le(st.dials, 3);
    ck_assert_uint_eq(st.pooled_idle, st.dials);
    /* Six need more; connections beyond max_pool are closed when they
     * come back (hashicorp's returnConn), so at most 3 stay idle. */
    for (int i = 0; i < 6; i++) {
        ck_assert_int_eq(pthread_create(&th[i], NULL, hammer_main, &h), 0);
    }
    for (int i = 0; i < 6; i++) {
        pthread_join(th[i], NULL);
    }
    ck_assert_int_eq(atomic_load(&h.failures), 0);
    ck_assert(tu_wait_for(all_idle, c, WAIT_MS));
    st = stats_of(c);
    ck_assert_uint_le(st.pooled_idle, 3);
    ck_assert_uint_ge(st.pooled_idle, 1);
    c->close(c->ctx);
    server_free(s);
}
END_TEST

static craft_transport_t *stale_client;
static server_t *stale_server;

static bool server_has_no_inbound(void *arg)
{
    (void)arg;
    return stats_of(stale_server->t).inbound_open == 0;
}

/* The server closes idle connections: the client's pooled one goes stale.
 * Whether the client notices before reusing it or not, the next calls
 * succeed, and a pre-vote is not mistaken for "no pre-vote". */
START_TEST(test_stale_pooled_connection)
{
    craft_tcp_options_t so;
    opts_init(&so);
    so.idle_timeout_ms = 100;
    stale_server = server_new(&so, true);
    stale_client = client_new(NULL);
    craft_append_entries_resp_t r;
    for (int round = 0; round < 3; round++) {
        ck_assert_int_eq(send_heartbeat(stale_client, server_addr(stale_server), 1, &r), 0);
        ck_assert(tu_wait_for(server_has_no_inbound, NULL, WAIT_MS));
        craft_request_prevote_req_t pv = {{3, "cand", "127.0.0.1:7001"}, 7, 9, 6};
        craft_request_prevote_resp_t pvr;
        ck_assert_int_eq(stale_client->request_prevote(stale_client->ctx, "srv",
                                                       server_addr(stale_server),
                                                       &pv, &pvr), 0);
        ck_assert(pvr.granted);
        ck_assert(tu_wait_for(server_has_no_inbound, NULL, WAIT_MS));
    }
    ck_assert_uint_eq(stats_of(stale_client).prevote_fallbacks, 0);
    stale_client->close(stale_client->ctx);
    server_free(stale_server);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Pipeline                                                                  */
/* ------------------------------------------------------------------------ */

typedef struct pl_sender {
    craft_pipeline_t *p;
    int n;
    int err;
} pl_sender_t;

static void *pl_sender_main(void *arg)
{
    pl_sender_t *ps = arg;
    craft_log_t e = {0, 1, CRAFT_LOG_COMMAND, "x", 1, NULL, 0, 0};
    for (int i = 0; i < ps->n; i++) {
        craft_append_entries_req_t q;
        heartbeat_req(&q, 1);
        q.prev_log_entry = (uint64_t)i;
        q.leader_commit_index = 1;
        e.index = (uint64_t)i + 1;
        q.entries = &e;
        q.n_entries = (size_t)(i % 2);
        int rv = ps->p->append_entries(ps->p->ctx, &q, (void *)(uintptr_t)(i + 1));
        if (rv != 0) {
            ps->err = rv;
            break;
        }
    }
    return NULL;
}

static void pipeline_in_order(int max_inflight)
{
    server_t *s = server_new(NULL, true);
    craft_tcp_options_t o;
    opts_init(&o);
    o.max_inflight = max_inflight;
    craft_transport_t *c = client_new(&o);
    craft_pipeline_t *p = NULL;
    ck_assert_int_eq(c->append_entries_pipeline(c->ctx, "srv", server_addr(s), &p), 0);
    pl_sender_t ps = {p, 1000, 0};
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, pl_sender_main, &ps), 0);
    for (int i = 0; i < 1000; i++) {
        craft_append_entries_resp_t r;
        void *tag = NULL;
        ck_assert_int_eq(p->next_response(p->ctx, &r, &tag), 0);
        ck_assert_ptr_eq(tag, (void *)(uintptr_t)(i + 1));
        ck_assert_uint_eq(r.last_log, (uint64_t)i + (uint64_t)(i % 2));
        ck_assert(r.success);
        ck_assert_str_eq(r.header.id, "srv");
    }
    pthread_join(th, NULL);
    ck_assert_int_eq(ps.err, 0);
    p->close(p->ctx);
    craft_append_entries_resp_t r;
    void *tag = (void *)1;
    ck_assert_int_eq(p->next_response(p->ctx, &r, &tag), CRAFT_ECLOSED);
    ck_assert_ptr_null(tag);
    p->free(p->ctx);
    ck_assert_uint_eq(server_received(s), 1000);
    /* One dedicated connection. */
    ck_assert_uint_eq(stats_of(s->t).accepts, 1);
    c->close(c->ctx);
    server_free(s);
}

START_TEST(test_pipeline_1000_window_16)
{
    pipeline_in_order(16);
}
END_TEST

START_TEST(test_pipeline_1000_default_window)
{
    pipeline_in_order(2);
}
END_TEST

typedef struct pl_big {
    craft_pipeline_t *p;
    int n;
    size_t size;
    int err;
    uint64_t last_digest;
} pl_big_t;

/* Requests of `size` bytes each, every one different. */
static void *pl_big_main(void *arg)
{
    pl_big_t *pb = arg;
    unsigned char *data = malloc(pb->size);
    ck_assert_ptr_nonnull(data);
    for (int i = 0; i < pb->n; i++) {
        memset(data, 'a' + i % 26, pb->size);
        data[(size_t)i * 7919 % pb->size] = (unsigned char)i;
        craft_log_t e = {(uint64_t)i + 1, 1, CRAFT_LOG_COMMAND, data, pb->size,
                         NULL, 0, 0};
        craft_append_entries_req_t q;
        heartbeat_req(&q, 1);
        q.prev_log_entry = (uint64_t)i;
        q.entries = &e;
        q.n_entries = 1;
        pb->last_digest = digest_req(CRAFT_RPC_APPEND_ENTRIES, &q);
        int rv = pb->p->append_entries(pb->p->ctx, &q, (void *)(uintptr_t)(i + 1));
        if (rv != 0) {
            pb->err = rv;
            break;
        }
    }
    free(data);
    return NULL;
}

/* Frames larger than the socket takes at once: the caller's direct writes
 * are partial, the loop finishes them, later requests queue behind them;
 * everything arrives whole and in order. */
START_TEST(test_pipeline_large_frames_in_order)
{
    server_t *s = server_new(NULL, true);
    craft_tcp_options_t o;
    opts_init(&o);
    o.max_inflight = 16;
    craft_transport_t *c = client_new(&o);
    craft_pipeline_t *p = NULL;
    ck_assert_int_eq(c->append_entries_pipeline(c->ctx, "srv", server_addr(s), &p), 0);
    pl_big_t pb = {p, 16, 1024 * 1024, 0, 0};
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, pl_big_main, &pb), 0);
    for (int i = 0; i < pb.n; i++) {
        craft_append_entries_resp_t r;
        void *tag = NULL;
        ck_assert_int_eq(p->next_response(p->ctx, &r, &tag), 0);
        ck_assert_ptr_eq(tag, (void *)(uintptr_t)(i + 1));
        ck_assert_uint_eq(r.last_log, (uint64_t)i + 1);
    }
    pthread_join(th, NULL);
    ck_assert_int_eq(pb.err, 0);
    ck_assert_uint_eq(SRV_GET(s, digest[CRAFT_RPC_APPEND_ENTRIES]), pb.last_digest);
    p->close(p->ctx);
    p->free(p->ctx);
    ck_assert_uint_eq(server_received(s), (unsigned)pb.n);
    c->close(c->ctx);
    server_free(s);
}
END_TEST

START_TEST(test_pipeline_unsupported_with_window_1)
{
    craft_tcp_options_t o;
    opts_init(&o);
    o.max_inflight = 1;
    craft_transport_t *c = client_new(&o);
    craft_pipeline_t *p = NULL;
    ck_assert_int_eq(c->append_entries_pipeline(c->ctx, "srv", "127.0.0.1:1", &p),
                     CRAFT_ENOTSUP);
    c->close(c->ctx);
}
END_TEST

START_TEST(test_pipeline_close_and_failures)
{
    server_t *s = server_new(NULL, false); /* never answers by itself */
    craft_transport_t *c = client_new(NULL);
    craft_pipeline_t *p = NULL;
    ck_assert_int_eq(c->append_entries_pipeline(c->ctx, "srv", server_addr(s), &p), 0);
    craft_append_entries_req_t q;
    heartbeat_req(&q, 1);
    q.leader_commit_index = 5;
    ck_assert_int_eq(p->append_entries(p->ctx, &q, (void *)1), 0);
    ck_assert_int_eq(p->append_entries(p->ctx, &q, (void *)2), 0);
    craft_rpc_t *first = server_pop(s, false);
    ck_assert_ptr_nonnull(first);
    answer(s, first);
    craft_append_entries_resp_t r;
    void *tag = NULL;
    ck_assert_int_eq(p->next_response(p->ctx, &r, &tag), 0);
    ck_assert_ptr_eq(tag, (void *)1);
    /* The second stays unanswered: close hands its tag back. */
    ck_assert_int_eq(p->append_entries(p->ctx, &q, (void *)3), 0);
    p->close(p->ctx);
    ck_assert_int_eq(p->append_entries(p->ctx, &q, (void *)4), CRAFT_ECLOSED);
    ck_assert_int_eq(p->next_response(p->ctx, &r, &tag), CRAFT_ECLOSED);
    ck_assert_ptr_eq(tag, (void *)2);
    ck_assert_int_eq(p->next_response(p->ctx, &r, &tag), CRAFT_ECLOSED);
    ck_assert_ptr_eq(tag, (void *)3);
    ck_assert_int_eq(p->next_response(p->ctx, &r, &tag), CRAFT_ECLOSED);
    ck_assert_ptr_null(tag);
    p->free(p->ctx);

    /* A pipeline whose peer goes away: outstanding requests fail in order,
     * later appends fail. */
    ck_assert_int_eq(c->append_entries_pipeline(c->ctx, "srv", server_addr(s), &p), 0);
    ck_assert_int_eq(p->append_entries(p->ctx, &q, (void *)5), 0);
    craft_rpc_t *held = server_pop(s, false);
    ck_assert_ptr_nonnull(held);
    server_free(s); /* the peer goes away with the request unanswered */
    ck_assert_int_ne(p->next_response(p->ctx, &r, &tag), 0);
    ck_assert_ptr_eq(tag, (void *)5);
    int rv = p->append_entries(p->ctx, &q, (void *)6);
    if (rv == 0) {
        /* Raced with the close being noticed: it fails instead. */
        ck_assert_int_ne(p->next_response(p->ctx, &r, &tag), 0);
        ck_assert_ptr_eq(tag, (void *)6);
    }
    p->close(p->ctx);
    p->free(p->ctx);
    c->close(c->ctx);
    held->respond(held, CRAFT_ESHUTDOWN); /* releases it */
}
END_TEST

START_TEST(test_pipeline_response_timeout)
{
    server_t *s = server_new(NULL, false);
    craft_tcp_options_t o;
    opts_init(&o);
    o.timeout_ms = 200;
    craft_transport_t *c = client_new(&o);
    craft_pipeline_t *p = NULL;
    ck_assert_int_eq(c->append_entries_pipeline(c->ctx, "srv", server_addr(s), &p), 0);
    craft_append_entries_req_t q;
    heartbeat_req(&q, 1);
    ck_assert_int_eq(p->append_entries(p->ctx, &q, (void *)1), 0);
    craft_append_entries_resp_t r;
    void *tag = NULL;
    ck_assert_int_eq(p->next_response(p->ctx, &r, &tag), CRAFT_ETIMEDOUT);
    ck_assert_ptr_eq(tag, (void *)1);
    p->close(p->ctx);
    p->free(p->ctx);
    c->close(c->ctx);
    server_free(s);
}
END_TEST

/* ---- pipelines with a response callback ---- */

enum { CB_MAX = 1000 };

/* What the response callback saw, call by call. */
typedef struct cb_log {
    pthread_mutex_t mu;
    unsigned n;
    int err[CB_MAX];
    uintptr_t tag[CB_MAX];
    uint64_t last_log[CB_MAX];
    bool inside;
    bool overlapped; /* two calls at once */
} cb_log_t;

static void cb_record(void *arg, int err, const craft_append_entries_resp_t *resp, void *tag)
{
    cb_log_t *l = arg;
    pthread_mutex_lock(&l->mu);
    l->overlapped |= l->inside;
    l->inside = true;
    if (l->n < CB_MAX) {
        l->err[l->n] = err;
        l->tag[l->n] = (uintptr_t)tag;
        l->last_log[l->n] = err == 0 && resp != NULL ? resp->last_log : UINT64_MAX;
    }
    l->n++;
    l->inside = false;
    pthread_mutex_unlock(&l->mu);
}

static unsigned cb_count(cb_log_t *l)
{
    pthread_mutex_lock(&l->mu);
    unsigned n = l->n;
    pthread_mutex_unlock(&l->mu);
    return n;
}

typedef struct cb_wait {
    cb_log_t *l;
    unsigned n;
} cb_wait_t;

static bool cb_reached(void *arg)
{
    cb_wait_t *w = arg;
    return cb_count(w->l) >= w->n;
}

/* Every response reaches the callback once, in order, one call at a time;
 * next_response is refused and the handler is installed once. */
START_TEST(test_pipeline_callback_in_order)
{
    server_t *s = server_new(NULL, true);
    craft_tcp_options_t o;
    opts_init(&o);
    o.max_inflight = 16;
    craft_transport_t *c = client_new(&o);
    craft_pipeline_t *p = NULL;
    ck_assert_int_eq(c->append_entries_pipeline(c->ctx, "srv", server_addr(s), &p), 0);
    ck_assert(p->set_response_handler != NULL);
    cb_log_t l;
    memset(&l, 0, sizeof l);
    pthread_mutex_init(&l.mu, NULL);
    ck_assert_int_eq(p->set_response_handler(p->ctx, NULL, &l), CRAFT_EINVAL);
    ck_assert_int_eq(p->set_response_handler(p->ctx, cb_record, &l), 0);
    ck_assert_int_eq(p->set_response_handler(p->ctx, cb_record, &l), CRAFT_EINVAL);
    pl_sender_t ps = {p, CB_MAX, 0};
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, pl_sender_main, &ps), 0);
    cb_wait_t all = {&l, CB_MAX};
    ck_assert(tu_wait_for(cb_reached, &all, WAIT_MS));
    pthread_join(th, NULL);
    ck_assert_int_eq(ps.err, 0);
    craft_append_entries_resp_t r;
    void *tag = NULL;
    ck_assert_int_eq(p->next_response(p->ctx, &r, &tag), CRAFT_EINVAL);
    p->close(p->ctx);
    p->free(p->ctx);
    ck_assert_uint_eq(l.n, CB_MAX);
    ck_assert(!l.overlapped);
    for (unsigned i = 0; i < CB_MAX; i++) {
        ck_assert_int_eq(l.err[i], 0);
        ck_assert_uint_eq(l.tag[i], i + 1);
        ck_assert_uint_eq(l.last_log[i], (uint64_t)i + (uint64_t)(i % 2));
    }
    pthread_mutex_destroy(&l.mu);
    c->close(c->ctx);
    server_free(s);
}
END_TEST

/* close() hands every outstanding request back as CRAFT_ECLOSED, in order,
 * before it returns; a peer going away fails them through the callback. */
START_TEST(test_pipeline_callback_close_and_failures)
{
    server_t *s = server_new(NULL, false); /* never answers by itself */
    craft_transport_t *c = client_new(NULL);
    craft_pipeline_t *p = NULL;
    ck_assert_int_eq(c->append_entries_pipeline(c->ctx, "srv", server_addr(s), &p), 0);
    cb_log_t l;
    memset(&l, 0, sizeof l);
    pthread_mutex_init(&l.mu, NULL);
    ck_assert_int_eq(p->set_response_handler(p->ctx, cb_record, &l), 0);
    craft_append_entries_req_t q;
    heartbeat_req(&q, 1);
    ck_assert_int_eq(p->append_entries(p->ctx, &q, (void *)1), 0);
    ck_assert_int_eq(p->append_entries(p->ctx, &q, (void *)2), 0);
    craft_rpc_t *first = server_pop(s, false);
    ck_assert_ptr_nonnull(first);
    answer(s, first);
    cb_wait_t one = {&l, 1};
    ck_assert(tu_wait_for(cb_reached, &one, WAIT_MS));
    ck_assert_int_eq(p->append_entries(p->ctx, &q, (void *)3), 0);
    p->close(p->ctx);
    pthread_mutex_lock(&l.mu);
    ck_assert_uint_eq(l.n, 3);
    ck_assert_int_eq(l.err[0], 0);
    ck_assert_uint_eq(l.tag[0], 1);
    ck_assert_int_eq(l.err[1], CRAFT_ECLOSED);
    ck_assert_uint_eq(l.tag[1], 2);
    ck_assert_int_eq(l.err[2], CRAFT_ECLOSED);
    ck_assert_uint_eq(l.tag[2], 3);
    pthread_mutex_unlock(&l.mu);
    ck_assert_int_eq(p->append_entries(p->ctx, &q, (void *)4), CRAFT_ECLOSED);
    p->close(p->ctx); /* idempotent */
    p->free(p->ctx);
    ck_assert_uint_eq(cb_count(&l), 3); /* nothing after close */

    /* A pipeline whose peer goes away: the outstanding request fails. */
    memset(&l.err, 0, sizeof l.err);
    l.n = 0;
    ck_assert_int_eq(c->append_entries_pipeline(c->ctx, "srv", server_addr(s), &p), 0);
    ck_assert_int_eq(p->set_response_handler(p->ctx, cb_record, &l), 0);
    ck_assert_int_eq(p->append_entries(p->ctx, &q, (void *)5), 0);
    craft_rpc_t *held = server_pop(s, false);
    ck_assert_ptr_nonnull(held);
    server_free(s); /* the peer goes away with the request unanswered */
    ck_assert(tu_wait_for(cb_reached, &one, WAIT_MS));
    pthread_mutex_lock(&l.mu);
    ck_assert_int_ne(l.err[0], 0);
    ck_assert_int_ne(l.err[0], CRAFT_ECLOSED);
    ck_assert_uint_eq(l.tag[0], 5);
    pthread_mutex_unlock(&l.mu);
    unsigned want = 1;
    if (p->append_entries(p->ctx, &q, (void *)6) == 0) {
        /* Raced with the connection's end being noticed (the peer's
         * shutdown answer came first): it fails instead. */
        cb_wait_t two = {&l, 2};
        ck_assert(tu_wait_for(cb_reached, &two, WAIT_MS));
        pthread_mutex_lock(&l.mu);
        ck_assert_int_ne(l.err[1], 0);
        ck_assert_uint_eq(l.tag[1], 6);
        pthread_mutex_unlock(&l.mu);
        want = 2;
    }
    p->close(p->ctx);
    ck_assert_int_eq(p->set_response_handler(p->ctx, cb_record, &l), CRAFT_ECLOSED);
    p->free(p->ctx);
    ck_assert_uint_eq(cb_count(&l), want);
    pthread_mutex_destroy(&l.mu);
    c->close(c->ctx);
    held->respond(held, CRAFT_ESHUTDOWN); /* releases it */
}
END_TEST

/* ------------------------------------------------------------------------ */
/* InstallSnapshot streaming                                                 */
/* ------------------------------------------------------------------------ */

START_TEST(test_snapshot_64mib_streamed)
{
    server_t *s = server_new(NULL, true);
    s->snap_buf = 50000; /* a consumer reading in small pieces */
    craft_transport_t *c = client_new(NULL);
    const int64_t size = (int64_t)64 << 20;
    gen_reader_t g;
    gen_init(&g, size, 1 << 20);
    craft_install_snapshot_req_t is = {{3, "leader", "127.0.0.1:7000"}, 1, 4,
                                       "127.0.0.1:7000", 50, 3, {0, NULL}, 40, size};
    craft_install_snapshot_resp_t isr;
    memset(&isr, 0, sizeof isr);
    ck_assert_int_eq(c->install_snapshot(c->ctx, "srv", server_addr(s), &is, &isr, &g.r), 0);
    ck_assert(isr.success);
    ck_assert_int_eq(g.produced, size);
    ck_assert_int_eq(SRV_GET(s, snap_err), 0);
    ck_assert_int_eq(SRV_GET(s, snap_bytes), size);
    ck_assert_uint_eq(SRV_GET(s, snap_hash), g.hash);
    /* Neither side held more than a few MiB of it at any time. */
    craft__tcp_stats_t cs = stats_of(c);
    craft__tcp_stats_t ss = stats_of(s->t);
    ck_assert_uint_gt(cs.snapshot_out_peak, 0);
    ck_assert_uint_le(cs.snapshot_out_peak, (size_t)4 << 20);
    ck_assert_uint_gt(ss.snapshot_in_peak, 0);
    ck_assert_uint_le(ss.snapshot_in_peak, (size_t)4 << 20);
    /* The snapshot connection is not pooled. */
    ck_assert(tu_wait_for(all_idle, c, WAIT_MS));
    ck_assert_uint_eq(stats_of(c).pooled_idle, 0);
    c->close(c->ctx);
    server_free(s);
}
END_TEST

/* The consumer answers without reading the data (craft refuses snapshots
 * that way): the server drains it and the next request on the same
 * connection is understood. */
START_TEST(test_snapshot_unread_data_is_drained)
{
    server_t *s = server_new(NULL, false);
    int fd = raw_connect(server_addr(s));
    const size_t size = (size_t)3 << 20;
    craft_install_snapshot_req_t is = {{3, "leader", "127.0.0.1:7000"}, 1, 4,
                                       "127.0.0.1:7000", 50, 3, {0, NULL}, 40,
                                       (int64_t)size};
    uint8_t *frame;
    size_t len = encode_req(&frame, CRAFT_RPC_INSTALL_SNAPSHOT, &is);
    ck_assert(raw_send(fd, frame, len));
    free(frame);
    craft_rpc_t *rpc = server_pop(s, false);
    ck_assert_ptr_nonnull(rpc);
    rpc->resp.install_snapshot.term = 4;
    rpc->respond(rpc, CRAFT_ENOTSUP);
    /* The data follows (its bytes look like garbage requests). */
    uint8_t *data = malloc(size);
    ck_assert_ptr_nonnull(data);
    memset(data, 0xc1, size);
    ck_assert(raw_send(fd, data, size));
    free(data);
    craft__wire_response_t resp;
    ck_assert_int_eq(raw_read_response(fd, CRAFT_RPC_INSTALL_SNAPSHOT, &resp), 0);
    ck_assert_str_eq(resp.error, "operation not supported");
    craft__wire_response_free(&resp);

    craft_timeout_now_req_t tn = {{3, "leader", "127.0.0.1:7000"}};
    len = encode_req(&frame, CRAFT_RPC_TIMEOUT_NOW, &tn);
    ck_assert(raw_send(fd, frame, len));
    free(frame);
    rpc = server_pop(s, false);
    ck_assert_ptr_nonnull(rpc);
    ck_assert_int_eq(rpc->type, CRAFT_RPC_TIMEOUT_NOW);
    answer(s, rpc);
    ck_assert_int_eq(raw_read_response(fd, CRAFT_RPC_TIMEOUT_NOW, &resp), 0);
    ck_assert_ptr_null(resp.error);
    ck_assert_str_eq(resp.body.timeout_now.header.id, "srv");
    craft__wire_response_free(&resp);
    close(fd);
    server_free(s);
}
END_TEST

/* Snapshot data stalls half-way: the connection times out and the
 * consumer's reader fails instead of hanging. */
START_TEST(test_snapshot_stalled_sender)
{
    craft_tcp_options_t so;
    opts_init(&so);
    so.idle_timeout_ms = 200;
    server_t *s = server_new(&so, true);
    int fd = raw_connect(server_addr(s));
    craft_install_snapshot_req_t is = {{3, "leader", "127.0.0.1:7000"}, 1, 4,
                                       "127.0.0.1:7000", 50, 3, {0, NULL}, 40,
                                       1 << 20};
    uint8_t *frame;
    size_t len = encode_req(&frame, CRAFT_RPC_INSTALL_SNAPSHOT, &is);
    ck_assert(raw_send(fd, frame, len));
    free(frame);
    uint8_t half[1000];
    memset(half, 7, sizeof half);
    ck_assert(raw_send(fd, half, sizeof half));
    ck_assert(raw_wait_closed(fd));
    close(fd);
    /* The responder read 1000 bytes, then the error. */
    for (int i = 0; i < WAIT_MS / 5 && SRV_GET(s, snap_err) == 0; i++) {
        tu_sleep_ms(5);
    }
    ck_assert_int_eq(SRV_GET(s, snap_err), CRAFT_EIO);
    ck_assert_int_eq(SRV_GET(s, snap_bytes), 1000);
    server_free(s);
}
END_TEST

/* The caller's reader ends early: CRAFT_EIO, nothing hangs. */
START_TEST(test_snapshot_short_reader)
{
    server_t *s = server_new(NULL, true);
    craft_transport_t *c = client_new(NULL);
    gen_reader_t g;
    gen_init(&g, 5000, 1000); /* yields 5000 of the 10000 announced */
    craft_install_snapshot_req_t is = {{3, "leader", "127.0.0.1:7000"}, 1, 4,
                                       "127.0.0.1:7000", 50, 3, {0, NULL}, 40, 10000};
    craft_install_snapshot_resp_t isr;
    ck_assert_int_eq(c->install_snapshot(c->ctx, "srv", server_addr(s), &is, &isr, &g.r),
                     CRAFT_EIO);
    /* Still usable. */
    craft_append_entries_resp_t r;
    ck_assert_int_eq(send_heartbeat(c, server_addr(s), 1, &r), 0);
    c->close(c->ctx);
    server_free(s);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Malformed input from raw clients                                          */
/* ------------------------------------------------------------------------ */

/* Sends `bytes`, optionally half-closes, and expects the server to close
 * the connection; then checks the transport still serves a real client. */
static void expect_rejected(server_t *s, craft_transport_t *c, const uint8_t *bytes,
                            size_t len, bool shut_wr)
{
    uint64_t before = stats_of(s->t).inbound_rejected;
    int fd = raw_connect(server_addr(s));
    /* May fail once the server has seen enough and closed. */
    (void)raw_send(fd, bytes, len);
    if (shut_wr) {
        shutdown(fd, SHUT_WR);
    }
    ck_assert(raw_wait_closed(fd));
    close(fd);
    ck_assert_uint_eq(stats_of(s->t).inbound_rejected, before + 1);
    craft_append_entries_resp_t r;
    ck_assert_int_eq(send_heartbeat(c, server_addr(s), 41, &r), 0);
    ck_assert_uint_eq(r.term, 42);
}

START_TEST(test_malformed_input)
{
    craft_tcp_options_t so;
    opts_init(&so);
    so.idle_timeout_ms = 300;
    so.max_frame_bytes = 64 * 1024;
    server_t *s = server_new(&so, true);
    craft_transport_t *c = client_new(NULL);
    uint8_t buf[70000];
    size_t n;

    /* Unknown rpc type. */
    n = tu_hex("09 80", buf, sizeof buf);
    expect_rejected(s, c, buf, n, false);
    /* Wrong types: Term as a string, Entries as a number. */
    n = tu_hex("00 81 a4\"Term\" a3\"abc\"", buf, sizeof buf);
    expect_rejected(s, c, buf, n, false);
    n = tu_hex("00 81 a7\"Entries\" 05", buf, sizeof buf);
    expect_rejected(s, c, buf, n, false);
    /* Not a map at all. */
    n = tu_hex("01 93 01 02 03", buf, sizeof buf);
    expect_rejected(s, c, buf, n, false);
    /* Huge declared lengths: a 4 GiB string, a 4G-entry array, a 4G map. */
    n = tu_hex("00 81 a6\"Leader\" db ff ff ff f0", buf, sizeof buf);
    expect_rejected(s, c, buf, n, false);
    n = tu_hex("00 81 a7\"Entries\" dd ff ff ff ff", buf, sizeof buf);
    expect_rejected(s, c, buf, n, false);
    n = tu_hex("00 df ff ff ff ff", buf, sizeof buf);
    expect_rejected(s, c, buf, n, false);
    /* Deep nesting under an unknown key. */
    n = tu_hex("00 81 a3\"Foo\"", buf, sizeof buf);
    for (int i = 0; i < 200; i++) {
        buf[n++] = 0x91;
    }
    buf[n++] = 0xc0;
    expect_rejected(s, c, buf, n, false);
    /* A frame over max_frame_bytes (a 65 KiB Leader). */
    n = tu_hex("00 81 a6\"Leader\" db 00 01 04 00", buf, sizeof buf);
    memset(buf + n, 'a', 66560);
    n += 66560;
    expect_rejected(s, c, buf, n, false);
    /* Negative snapshot size. */
    n = tu_hex("02 81 a4\"Size\" ff", buf, sizeof buf);
    expect_rejected(s, c, buf, n, false);
    /* Truncated frame, then the client closes. */
    n = tu_hex("00 87 a7\"Entries\" 92 85 a4\"Data\" a5\"he", buf, sizeof buf);
    expect_rejected(s, c, buf, n, true);
    /* Half a frame, then a stall: the idle timeout closes it. */
    expect_rejected(s, c, buf, n, false);
    /* A connection that never sends anything is closed too (not counted
     * as rejected: it did nothing wrong). */
    int fd = raw_connect(server_addr(s));
    ck_assert(raw_wait_closed(fd));
    close(fd);

    ck_assert_uint_ge(atomic_load(&warnings), 12);
    c->close(c->ctx);
    server_free(s);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Timeouts, close, handlers                                                 */
/* ------------------------------------------------------------------------ */

START_TEST(test_timeout_when_consumer_never_answers)
{
    server_t *s = server_new(NULL, false);
    craft_tcp_options_t o;
    opts_init(&o);
    o.timeout_ms = 200;
    craft_transport_t *c = client_new(&o);
    craft_append_entries_resp_t r;
    ck_assert_int_eq(send_heartbeat(c, server_addr(s), 1, &r), CRAFT_ETIMEDOUT);
    craft_rpc_t *late = server_pop(s, false);
    ck_assert_ptr_nonnull(late);
    /* The timed-out connection was dropped, not pooled. */
    ck_assert(tu_wait_for(all_idle, c, WAIT_MS));
    ck_assert_uint_eq(stats_of(c).pooled_idle, 0);
    /* A late answer goes nowhere, harmlessly. */
    answer(s, late);
    c->close(c->ctx);
    server_free(s);
}
END_TEST

typedef struct caller {
    craft_transport_t *c;
    const char *target;
    int rv;
    pthread_t th;
} caller_t;

static void *caller_main(void *arg)
{
    caller_t *k = arg;
    craft_append_entries_resp_t r;
    k->rv = send_heartbeat(k->c, k->target, 1, &r);
    return NULL;
}

static server_t *close_server;

static bool three_received(void *arg)
{
    (void)arg;
    return server_received(close_server) >= 3;
}

START_TEST(test_close_with_calls_pending)
{
    close_server = server_new(NULL, false);
    craft_transport_t *c = client_new(NULL);
    caller_t k[3];
    for (int i = 0; i < 3; i++) {
        k[i] = (caller_t){c, server_addr(close_server), 1, 0};
        ck_assert_int_eq(pthread_create(&k[i].th, NULL, caller_main, &k[i]), 0);
    }
    ck_assert(tu_wait_for(three_received, NULL, WAIT_MS));
    c->close(c->ctx);
    for (int i = 0; i < 3; i++) {
        pthread_join(k[i].th, NULL);
        ck_assert_int_eq(k[i].rv, CRAFT_ECLOSED);
    }
    server_free(close_server);
}
END_TEST

/* The server closes while its consumer holds requests: callers get
 * "transport shutdown" (CRAFT_ECLOSED), held rpcs stay valid and can still
 * be answered after close. */
START_TEST(test_server_close_with_rpcs_held)
{
    close_server = server_new(NULL, false);
    craft_transport_t *c = client_new(NULL);
    caller_t k[3];
    for (int i = 0; i < 3; i++) {
        k[i] = (caller_t){c, server_addr(close_server), 1, 0};
        ck_assert_int_eq(pthread_create(&k[i].th, NULL, caller_main, &k[i]), 0);
    }
    ck_assert(tu_wait_for(three_received, NULL, WAIT_MS));
    craft_rpc_t *held[3];
    for (int i = 0; i < 3; i++) {
        held[i] = server_pop(close_server, false);
        ck_assert_ptr_nonnull(held[i]);
    }
    craft_transport_t *st = close_server->t;
    st->set_rpc_handler(st->ctx, NULL, NULL);
    st->set_heartbeat_handler(st->ctx, NULL, NULL);
    st->close(st->ctx);
    for (int i = 0; i < 3; i++) {
        pthread_join(k[i].th, NULL);
        ck_assert_int_eq(k[i].rv, CRAFT_ECLOSED);
    }
    for (int i = 0; i < 3; i++) {
        ck_assert_uint_eq(held[i]->req.append_entries.term, 1);
        answer(close_server, held[i]);
    }
    pthread_cond_destroy(&close_server->cond);
    pthread_mutex_destroy(&close_server->mu);
    free(close_server);
    c->close(c->ctx);
}
END_TEST

typedef struct blocking_handler {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    bool entered;
    bool release;
    bool detached;
} blocking_handler_t;

static blocking_handler_t bh;

static void on_rpc_blocking(void *arg, craft_rpc_t *rpc)
{
    (void)arg;
    pthread_mutex_lock(&bh.mu);
    bh.entered = true;
    pthread_cond_broadcast(&bh.cond);
    while (!bh.release) {
        pthread_cond_wait(&bh.cond, &bh.mu);
    }
    pthread_mutex_unlock(&bh.mu);
    rpc->resp.append_entries.term = 77;
    rpc->respond(rpc, 0);
}

static void *detacher_main(void *arg)
{
    craft_transport_t *t = arg;
    t->set_rpc_handler(t->ctx, NULL, NULL);
    pthread_mutex_lock(&bh.mu);
    bh.detached = true;
    pthread_cond_broadcast(&bh.cond);
    pthread_mutex_unlock(&bh.mu);
    return NULL;
}

static bool bh_flag(bool *f)
{
    pthread_mutex_lock(&bh.mu);
    bool v = *f;
    pthread_mutex_unlock(&bh.mu);
    return v;
}

static bool bh_entered(void *arg)
{
    (void)arg;
    return bh_flag(&bh.entered);
}

static bool bh_detached(void *arg)
{
    (void)arg;
    return bh_flag(&bh.detached);
}

START_TEST(test_detach_waits_for_handler)
{
    memset(&bh, 0, sizeof bh);
    pthread_mutex_init(&bh.mu, NULL);
    pthread_cond_init(&bh.cond, NULL);
    craft_transport_t *srv = client_new(NULL);
    srv->set_rpc_handler(srv->ctx, on_rpc_blocking, NULL);
    craft_transport_t *c = client_new(NULL);
    caller_t k = {c, srv->local_addr(srv->ctx), 1, 0};
    /* No heartbeat handler: heartbeats go to the rpc handler. */
    ck_assert_int_eq(pthread_create(&k.th, NULL, caller_main, &k), 0);
    ck_assert(tu_wait_for(bh_entered, NULL, WAIT_MS));
    pthread_t det;
    ck_assert_int_eq(pthread_create(&det, NULL, detacher_main, srv), 0);
    ck_assert(!tu_wait_for(bh_detached, NULL, NEGATIVE_WAIT_MS));
    pthread_mutex_lock(&bh.mu);
    bh.release = true;
    pthread_cond_broadcast(&bh.cond);
    pthread_mutex_unlock(&bh.mu);
    ck_assert(tu_wait_for(bh_detached, NULL, WAIT_MS));
    pthread_join(det, NULL);
    pthread_join(k.th, NULL);
    ck_assert_int_eq(k.rv, 0);
    /* Detached: the next call is refused by the transport itself. */
    craft_append_entries_resp_t r;
    ck_assert_int_eq(send_heartbeat(c, srv->local_addr(srv->ctx), 1, &r), CRAFT_ESHUTDOWN);
    c->close(c->ctx);
    srv->close(srv->ctx);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Pre-vote against an old (hashicorp v1.1.2) peer                           */
/* ------------------------------------------------------------------------ */

typedef struct old_peer {
    int lfd;
    char addr[64];
    atomic_int accepted;
    pthread_t th;
} old_peer_t;

/* v1.1.2's NetworkTransport: reads the type byte and closes the
 * connection on an unknown one, without a reply. */
static void *old_peer_main(void *arg)
{
    old_peer_t *op = arg;
    for (;;) {
        int fd = accept(op->lfd, NULL, NULL);
        if (fd < 0) {
            return NULL;
        }
        atomic_fetch_add(&op->accepted, 1);
        unsigned char b;
        ssize_t n = recv(fd, &b, 1, 0);
        if (n == 1 && b == 0xff) { /* the test's stop signal */
            close(fd);
            return NULL;
        }
        close(fd);
    }
}

static void old_peer_start(old_peer_t *op)
{
    memset(op, 0, sizeof *op);
    op->lfd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(op->lfd, 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(bind(op->lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    ck_assert_int_eq(listen(op->lfd, 16), 0);
    socklen_t len = sizeof sa;
    ck_assert_int_eq(getsockname(op->lfd, (struct sockaddr *)&sa, &len), 0);
    snprintf(op->addr, sizeof op->addr, "127.0.0.1:%u", (unsigned)ntohs(sa.sin_port));
    ck_assert_int_eq(pthread_create(&op->th, NULL, old_peer_main, op), 0);
}

static void old_peer_stop(old_peer_t *op)
{
    int fd = raw_connect(op->addr);
    unsigned char b = 0xff;
    ck_assert(raw_send(fd, &b, 1));
    pthread_join(op->th, NULL);
    close(fd);
    close(op->lfd);
}

static int prevote(craft_transport_t *c, const char *target)
{
    craft_request_prevote_req_t pv = {{3, "cand", "127.0.0.1:7001"}, 7, 9, 6};
    craft_request_prevote_resp_t pvr;
    return c->request_prevote(c->ctx, "old", target, &pv, &pvr);
}

START_TEST(test_prevote_old_peer_fallback)
{
    old_peer_t op;
    old_peer_start(&op);
    craft_transport_t *c = client_new(NULL);
    ck_assert_int_eq(prevote(c, op.addr), CRAFT_ENOTSUP);
    ck_assert_int_eq(atomic_load(&op.accepted), 1);
    ck_assert_uint_eq(stats_of(c).prevote_fallbacks, 1);
    /* Remembered: no new connection. */
    ck_assert_int_eq(prevote(c, op.addr), CRAFT_ENOTSUP);
    ck_assert_int_eq(atomic_load(&op.accepted), 1);
    /* Other RPCs to that peer are not affected by the memory: they fail
     * as I/O errors (the fake peer closes everything). */
    craft_append_entries_resp_t r;
    ck_assert_int_eq(send_heartbeat(c, op.addr, 1, &r), CRAFT_EIO);
    c->close(c->ctx);

    /* Without memory every pre-vote probes again. */
    craft_tcp_options_t o;
    opts_init(&o);
    o.no_prevote_ttl_ms = 0;
    c = client_new(&o);
    int before = atomic_load(&op.accepted);
    ck_assert_int_eq(prevote(c, op.addr), CRAFT_ENOTSUP);
    ck_assert_int_eq(prevote(c, op.addr), CRAFT_ENOTSUP);
    ck_assert_int_eq(atomic_load(&op.accepted), before + 2);
    c->close(c->ctx);
    old_peer_stop(&op);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Shared loops                                                              */
/* ------------------------------------------------------------------------ */

/* One RPC from `c` to `s`; returns the thread that ran s's handler. */
static pthread_t handler_thread_of(server_t *s, craft_transport_t *c)
{
    craft_append_entries_resp_t resp;
    ck_assert_int_eq(send_heartbeat(c, server_addr(s), 3, &resp), 0);
    ck_assert_uint_eq(resp.term, 4);
    return SRV_GET(s, handler_thread);
}

START_TEST(test_shared_loop_lifecycle)
{
    ck_assert_int_eq(craft_tcp_loop_new(NULL), CRAFT_EINVAL);
    craft_tcp_loop_free(NULL);

    /* A loop nobody uses stops at once. */
    craft_tcp_loop_t *idle = NULL;
    ck_assert_int_eq(craft_tcp_loop_new(&idle), 0);
    craft_tcp_loop_free(idle);

    /* Private loops: each transport's handlers run on its own thread. */
    craft_tcp_options_t own;
    craft_tcp_options_default(&own);
    own.logger = test_logger;
    own.log_level = CRAFT_LEVEL_WARN;
    server_t *p1 = server_new(&own, true);
    server_t *p2 = server_new(&own, true);
    craft_transport_t *pc = client_new(&own);
    ck_assert(!pthread_equal(handler_thread_of(p1, pc), handler_thread_of(p2, pc)));

    /* Two servers and a client on one loop: one thread runs them all. */
    craft_tcp_loop_t *loop = NULL;
    ck_assert_int_eq(craft_tcp_loop_new(&loop), 0);
    craft_tcp_options_t o = own;
    o.loop = loop;
    server_t *s1 = server_new(&o, true);
    server_t *s2 = server_new(&o, true);
    craft_transport_t *c = client_new(&o);
    pthread_t h1 = handler_thread_of(s1, c);
    ck_assert(pthread_equal(h1, handler_thread_of(s2, c)));
    ck_assert(!pthread_equal(h1, handler_thread_of(p1, pc)));
    /* A private-loop client reaches a shared-loop server and back. */
    ck_assert(pthread_equal(h1, handler_thread_of(s1, pc)));
    ck_assert(pthread_equal(handler_thread_of(p2, c), handler_thread_of(p2, pc)));

    /* The application's reference goes; the transports keep the loop. */
    craft_tcp_loop_free(loop);
    ck_assert(pthread_equal(handler_thread_of(s2, c), h1));

    /* Closing one transport leaves the others on the loop working. */
    server_free(s1);
    ck_assert(pthread_equal(handler_thread_of(s2, c), h1));
    craft_append_entries_resp_t resp;
    c->close(c->ctx);
    ck_assert(pthread_equal(handler_thread_of(s2, pc), h1));
    ck_assert_int_eq(send_heartbeat(pc, server_addr(p1), 3, &resp), 0);
    server_free(s2); /* the last one: the loop thread stops here */

    server_free(p1);
    server_free(p2);
    pc->close(pc->ctx);
}
END_TEST

/* Transports on one loop send each other pipelined AppendEntries in both
 * directions at once: every response comes back, in order. */
typedef struct {
    craft_transport_t *from;
    const char *to;
    int err;
    unsigned ok;
} pl_pair_t;

static void *pl_pair_main(void *arg)
{
    pl_pair_t *pp = arg;
    craft_pipeline_t *pl = NULL;
    pp->err = pp->from->append_entries_pipeline(pp->from->ctx, "srv", pp->to, &pl);
    if (pp->err != 0) {
        return NULL;
    }
    craft_append_entries_req_t q;
    heartbeat_req(&q, 1);
    q.prev_log_entry = 1; /* not the heartbeat shape */
    uintptr_t next = 1;
    uintptr_t sent = 0;
    while (next <= 300 && pp->err == 0) {
        while (sent < next + 3 && sent < 300) {
            sent++;
            q.prev_log_entry = sent;
            pp->err = pl->append_entries(pl->ctx, &q, (void *)sent);
            if (pp->err != 0) {
                break;
            }
        }
        craft_append_entries_resp_t resp;
        void *tag = NULL;
        int rv = pl->next_response(pl->ctx, &resp, &tag);
        if (rv != 0 || (uintptr_t)tag != next) {
            pp->err = rv != 0 ? rv : CRAFT_EPROTOCOL;
            break;
        }
        pp->ok++;
        next++;
    }
    pl->close(pl->ctx);
    pl->free(pl->ctx);
    return NULL;
}

START_TEST(test_shared_loop_pipelines_both_ways)
{
    craft_tcp_loop_t *loop = NULL;
    ck_assert_int_eq(craft_tcp_loop_new(&loop), 0);
    craft_tcp_options_t o;
    opts_init(&o);
    o.loop = loop;
    o.max_inflight = 4;
    server_t *a = server_new(&o, true);
    server_t *b = server_new(&o, true);
    craft_tcp_loop_free(loop);
    pl_pair_t ab = {a->t, server_addr(b), 0, 0};
    pl_pair_t ba = {b->t, server_addr(a), 0, 0};
    pthread_t t1;
    pthread_t t2;
    ck_assert_int_eq(pthread_create(&t1, NULL, pl_pair_main, &ab), 0);
    ck_assert_int_eq(pthread_create(&t2, NULL, pl_pair_main, &ba), 0);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    ck_assert_int_eq(ab.err, 0);
    ck_assert_int_eq(ba.err, 0);
    ck_assert_uint_eq(ab.ok, 300);
    ck_assert_uint_eq(ba.ok, 300);
    ck_assert_uint_eq(server_received(a), 300);
    ck_assert_uint_eq(server_received(b), 300);
    server_free(a);
    server_free(b);
}
END_TEST

/* craft_tcp_loop_set_spin: arguments, and that it turns spinning on and off
 * (counted by craft_tcp_loop_stats) while every RPC is answered. */
START_TEST(test_loop_spin)
{
    craft_tcp_loop_stats_t st;
    memset(&st, 0xff, sizeof st);
    craft_tcp_loop_stats(NULL, &st);
    ck_assert_uint_eq(st.spins + st.spin_hits + st.sleeps, 0);
    craft_tcp_loop_stats(NULL, NULL);
    ck_assert_int_eq(craft_tcp_loop_set_spin(NULL, 10), CRAFT_EINVAL);

    craft_tcp_loop_t *loop = NULL;
    ck_assert_int_eq(craft_tcp_loop_new(&loop), 0);
    ck_assert_int_eq(craft_tcp_loop_set_spin(loop, -1), CRAFT_EINVAL);
    ck_assert_int_eq(craft_tcp_loop_set_spin(loop, CRAFT_TCP_LOOP_SPIN_MAX_US + 1), CRAFT_EINVAL);
    craft_tcp_options_t o;
    opts_init(&o);
    o.loop = loop;
    server_t *s = server_new(&o, true);
    craft_transport_t *c = client_new(&o);
    craft_append_entries_resp_t resp;

    /* Off (the default): nothing spins. */
    for (int i = 0; i < 20; i++) {
        ck_assert_int_eq(send_heartbeat(c, server_addr(s), 3, &resp), 0);
    }
    craft_tcp_loop_stats(loop, &st);
    ck_assert_uint_eq(st.spins + st.spin_hits + st.sleeps, 0);

    /* On: having answered, the loop polls (a fresh loop has no history
     * telling it that spinning does not pay), and once traffic stops
     * it goes to sleep. */
    ck_assert_int_eq(craft_tcp_loop_set_spin(loop, 2000), 0);
    for (int i = 0; i < 20; i++) {
        ck_assert_int_eq(send_heartbeat(c, server_addr(s), 3, &resp), 0);
        ck_assert_uint_eq(resp.term, 4);
    }
    craft_tcp_loop_stats(loop, &st);
    ck_assert_uint_gt(st.spins, 0);
    ck_assert_uint_le(st.spin_hits, st.spins);
    for (int i = 0; i < 1000 && st.sleeps == 0; i++) {
        tu_sleep_ms(10);
        craft_tcp_loop_stats(loop, &st);
    }
    ck_assert_uint_gt(st.sleeps, 0);

    /* Off again: once a round trip went through, no more spins. */
    ck_assert_int_eq(craft_tcp_loop_set_spin(loop, 0), 0);
    ck_assert_int_eq(send_heartbeat(c, server_addr(s), 3, &resp), 0);
    craft_tcp_loop_stats_t before;
    craft_tcp_loop_stats(loop, &before);
    for (int i = 0; i < 20; i++) {
        ck_assert_int_eq(send_heartbeat(c, server_addr(s), 3, &resp), 0);
    }
    craft_tcp_loop_stats(loop, &st);
    ck_assert_uint_eq(st.spins, before.spins);
    ck_assert_uint_eq(st.sleeps, before.sleeps);

    /* A spinning loop stops when its last transport closes. */
    ck_assert_int_eq(craft_tcp_loop_set_spin(loop, CRAFT_TCP_LOOP_SPIN_MAX_US), 0);
    ck_assert_int_eq(send_heartbeat(c, server_addr(s), 3, &resp), 0);
    craft_tcp_loop_free(loop);
    c->close(c->ctx);
    server_free(s);
}
END_TEST

/* craft_tcp_loop_free on a spinning loop returns: its kick may be run by
 * the poll just before the loop would go to sleep (which then must not
 * sleep). A budget of 1-2 us seldom spins, so nearly every wake-up is
 * followed by that poll and then a sleep; each round closes a transport,
 * which wakes the loop just before the free. Four threads make the rounds
 * at once so that they also contend for the CPUs. Before loop_spin looked
 * at `stopping` before sleeping, this hung in every run on a 2-CPU machine. */
static void *free_while_polling_main(void *arg)
{
    (void)arg;
    for (int i = 0; i < 1000; i++) {
        craft_tcp_loop_t *loop = NULL;
        if (craft_tcp_loop_new(&loop) != 0 ||
            craft_tcp_loop_set_spin(loop, (i % 2) + 1) != 0) {
            return (void *)1;
        }
        craft_tcp_options_t o;
        opts_init(&o);
        o.loop = loop;
        craft_transport_t *c = NULL;
        if (craft_tcp_transport_new("127.0.0.1:0", NULL, &o, &c) != 0) {
            craft_tcp_loop_free(loop);
            return (void *)1;
        }
        c->close(c->ctx);
        craft_tcp_loop_free(loop);
    }
    return NULL;
}

START_TEST(test_loop_spin_free_while_polling)
{
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(pthread_create(&th[i], NULL, free_while_polling_main, NULL), 0);
    }
    for (int i = 0; i < 4; i++) {
        void *rv = NULL;
        pthread_join(th[i], &rv);
        ck_assert_ptr_null(rv);
    }
}
END_TEST

static Suite *tcp_suite(void)
{
    Suite *s = suite_create(!shared_mode      ? "tcp"
                            : shared_spin_us ? "tcp (spinning shared loop)"
                                             : "tcp (shared loop)");
    TCase *basic = tcase_create("rpc");
    tcase_set_timeout(basic, 120);
    tcase_add_test(basic, test_addresses_and_options);
    tcase_add_test(basic, test_every_rpc);
    tcase_add_test(basic, test_error_string_and_reuse);
    tcase_add_test(basic, test_no_handler_and_unreachable);
    tcase_add_test(basic, test_pool_reuse);
    tcase_add_test(basic, test_stale_pooled_connection);
    tcase_add_test(basic, test_prevote_old_peer_fallback);
    suite_add_tcase(s, basic);

    TCase *pipe = tcase_create("pipeline");
    tcase_set_timeout(pipe, 120);
    tcase_add_test(pipe, test_pipeline_1000_window_16);
    tcase_add_test(pipe, test_pipeline_1000_default_window);
    tcase_add_test(pipe, test_pipeline_large_frames_in_order);
    tcase_add_test(pipe, test_pipeline_unsupported_with_window_1);
    tcase_add_test(pipe, test_pipeline_close_and_failures);
    tcase_add_test(pipe, test_pipeline_response_timeout);
    tcase_add_test(pipe, test_pipeline_callback_in_order);
    tcase_add_test(pipe, test_pipeline_callback_close_and_failures);
    suite_add_tcase(s, pipe);

    TCase *snap = tcase_create("snapshot");
    tcase_set_timeout(snap, 300);
    tcase_add_test(snap, test_snapshot_64mib_streamed);
    tcase_add_test(snap, test_snapshot_unread_data_is_drained);
    tcase_add_test(snap, test_snapshot_stalled_sender);
    tcase_add_test(snap, test_snapshot_short_reader);
    suite_add_tcase(s, snap);

    TCase *bad = tcase_create("malformed");
    tcase_set_timeout(bad, 120);
    tcase_add_test(bad, test_malformed_input);
    suite_add_tcase(s, bad);

    TCase *life = tcase_create("lifecycle");
    tcase_set_timeout(life, 120);
    tcase_add_test(life, test_timeout_when_consumer_never_answers);
    tcase_add_test(life, test_close_with_calls_pending);
    tcase_add_test(life, test_server_close_with_rpcs_held);
    tcase_add_test(life, test_detach_waits_for_handler);
    suite_add_tcase(s, life);

    TCase *shared = tcase_create("shared loop");
    tcase_set_timeout(shared, 120);
    tcase_add_test(shared, test_shared_loop_lifecycle);
    tcase_add_test(shared, test_shared_loop_pipelines_both_ways);
    tcase_add_test(shared, test_loop_spin);
    tcase_add_test(shared, test_loop_spin_free_while_polling);
    suite_add_tcase(s, shared);

    TCase *all[] = {basic, pipe, snap, bad, life, shared};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        tcase_add_checked_fixture(all[i], shared_loop_setup, shared_loop_teardown);
    }
    return s;
}

int main(int argc, char **argv)
{
    shared_mode = argc > 1 && (strcmp(argv[1], "shared-loop") == 0 ||
                               strcmp(argv[1], "spinning-loop") == 0);
    shared_spin_us = shared_mode && strcmp(argv[1], "spinning-loop") == 0 ? 200 : 0;
    SRunner *sr = srunner_create(tcp_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
