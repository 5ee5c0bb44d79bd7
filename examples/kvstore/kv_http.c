/*
 * craftkv's HTTP API: see kv_http.h and README.md in this directory.
 *
 * Every request that needs craft becomes an `op`: the handler starts the
 * craft operation, registers future_done with craft_future_on_done and
 * returns to the loop. future_done runs on whichever craft thread completes
 * the future; it only appends the op to `done` under a mutex and wakes the
 * loop (event_active is thread-safe once evthread_use_pthreads was called).
 * The loop then finishes the op: replies, chains another craft call (join
 * records the new member's HTTP address) or, for a linearizable read,
 * parks it until the FSM has applied the read index.
 */
#include "kv_http.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/thread.h>

#include "http_client.h"

/* Largest request body (a value). craft batches up to max_append_entries
 * (64) entries per AppendEntries with no byte bound, and the receiving TCP
 * transport refuses frames over its max_frame_bytes (craftkv sets 128 MiB):
 * 64 x 1 MiB stays well below. */
#define MAX_BODY ((size_t)1 << 20)
/* Enqueue timeout of applies and membership changes (craft flow control). */
#define ENQUEUE_TIMEOUT_MS 10000
/* How long a linearizable read waits for the FSM to reach its read index. */
#define READ_APPLY_TIMEOUT_MS 10000
/* Poll period of reads waiting for the FSM. */
#define READ_POLL_US 1000
/* Idle keep-alive connections are closed after this long. */
#define HTTP_IDLE_TIMEOUT_S 120

typedef enum {
    OP_WRITE,       /* PUT / DELETE / cas: apply a command */
    OP_READ,        /* GET: read_index, then wait for the FSM */
    OP_JOIN,        /* POST /join: add_voter / add_nonvoter */
    OP_JOIN_MEMBER, /* then record the member's HTTP address */
    OP_LEAVE,       /* POST /leave: remove_server */
    OP_SNAPSHOT,    /* POST /snapshot */
    OP_STATUS,      /* GET /status: get_configuration */
    OP_ANNOUNCE     /* new leader records its own HTTP address (no request) */
} op_kind_t;

typedef struct op {
    struct op *next;
    struct kv_server *s;
    op_kind_t kind;
    struct evhttp_request *req; /* NULL for OP_ANNOUNCE */
    craft_future_t *f;
    char *key; /* OP_READ: decoded key */
    size_t klen;
    uint64_t read_index;
    int64_t deadline_ns;
    uint64_t index;            /* OP_JOIN_MEMBER: index of the membership change */
    char *member_id, *member_http; /* OP_JOIN */
} op_t;

struct kv_server {
    kv_server_config_t cfg;
    craft_t *raft;
    struct event_base *base;
    struct evhttp *http;
    struct evhttp_bound_socket *listener;
    struct event *done_ev;     /* futures completed: drain `done` */
    struct event *stop_ev;     /* kv_server_stop */
    struct event *read_ev;     /* timer: reads waiting for the FSM */
    struct event *announce_ev; /* leadership gained, or announce retry */
    pthread_t thread;
    bool started;

    pthread_mutex_t mu; /* guards done_head/done_tail */
    op_t *done_head, *done_tail;

    /* Loop thread only. */
    op_t *readers;       /* parked linearizable reads */
    size_t outstanding;  /* futures not yet finished */
    bool announcing;
    bool closing;
    int stop_rounds;
};

/* ------------------------------------------------------------------------ */
/* Helpers                                                                   */
/* ------------------------------------------------------------------------ */

static void logf_(kv_server_t *s, craft_level_t level, const char *fmt, ...)
{
    if (level < s->cfg.log_level) {
        return;
    }
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    s->cfg.logger(s->cfg.logger_ctx, level, "http", msg);
}

static void op_free(op_t *op)
{
    craft_future_free(op->f);
    free(op->key);
    free(op->member_id);
    free(op->member_http);
    free(op);
}

static op_t *op_new(kv_server_t *s, op_kind_t kind, struct evhttp_request *req)
{
    op_t *op = calloc(1, sizeof *op);
    if (op != NULL) {
        op->s = s;
        op->kind = kind;
        op->req = req;
    }
    return op;
}

static void reply_text(struct evhttp_request *req, int code, const char *reason,
                       const char *fmt, ...)
{
    struct evbuffer *b = evbuffer_new();
    if (b != NULL && fmt != NULL) {
        va_list ap;
        va_start(ap, fmt);
        evbuffer_add_vprintf(b, fmt, ap);
        va_end(ap);
        evbuffer_add(b, "\n", 1);
    }
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", "text/plain; charset=utf-8");
    if (code == 503) {
        evhttp_add_header(h, "Retry-After", "1");
    }
    evhttp_send_reply(req, code, reason, b);
    if (b != NULL) {
        evbuffer_free(b);
    }
}

static void reply_json(struct evhttp_request *req, int code, struct evbuffer *b)
{
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "application/json");
    evhttp_send_reply(req, code, code == 200 ? "OK" : NULL, b);
}

static void json_string(struct evbuffer *b, const char *str)
{
    if (str == NULL) {
        evbuffer_add(b, "null", 4);
        return;
    }
    evbuffer_add(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)str; *p != '\0'; p++) {
        if (*p == '"' || *p == '\\') {
            evbuffer_add_printf(b, "\\%c", *p);
        } else if (*p < 0x20) {
            evbuffer_add_printf(b, "\\u%04x", *p);
        } else {
            evbuffer_add(b, p, 1);
        }
    }
    evbuffer_add(b, "\"", 1);
}

/* The decoded value of query parameter `name` (malloc'd, NUL-terminated,
 * '+' meaning space as in HTML forms), or NULL when absent. */
static char *query_get(struct evhttp_request *req, const char *name, size_t *len_out)
{
    const char *q = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
    size_t nlen = strlen(name);
    while (q != NULL && *q != '\0') {
        const char *amp = strchr(q, '&');
        size_t plen = amp != NULL ? (size_t)(amp - q) : strlen(q);
        if (plen >= nlen && strncmp(q, name, nlen) == 0 &&
            (plen == nlen || q[nlen] == '=')) {
            const char *v = plen == nlen ? "" : q + nlen + 1;
            size_t vlen = plen == nlen ? 0 : plen - nlen - 1;
            char *raw = strndup(v, vlen);
            if (raw == NULL) {
                return NULL;
            }
            size_t len = 0;
            char *dec = evhttp_uridecode(raw, 1, &len);
            free(raw);
            if (dec != NULL && len_out != NULL) {
                *len_out = len;
            }
            return dec;
        }
        q = amp != NULL ? amp + 1 : NULL;
    }
    return NULL;
}

static bool query_flag(struct evhttp_request *req, const char *name)
{
    char *v = query_get(req, name, NULL);
    bool on = v != NULL && strcmp(v, "0") != 0 && strcmp(v, "false") != 0;
    free(v);
    return on;
}

/* The HTTP address of leader `id` at raft address `addr`: recorded in the
 * FSM, else given on the command line. malloc'd or NULL. */
static char *leader_http(kv_server_t *s, const char *id, const char *addr)
{
    char *http = id != NULL ? kv_fsm_member_http(s->cfg.fsm, id) : NULL;
    for (size_t i = 0; http == NULL && i < s->cfg.n_hints; i++) {
        const kv_peer_hint_t *h = &s->cfg.hints[i];
        if (h->http != NULL && ((id != NULL && strcmp(h->id, id) == 0) ||
                                (addr != NULL && strcmp(h->raft, addr) == 0))) {
            http = strdup(h->http);
        }
    }
    return http;
}

/* A follower's answer to a request only the leader can serve. */
static void redirect_to_leader(kv_server_t *s, struct evhttp_request *req)
{
    char *id = NULL, *addr = NULL;
    if (craft_leader(s->raft, &id, &addr) != 0) {
        reply_text(req, 503, "Service Unavailable", "no leader");
        return;
    }
    char *http = leader_http(s, id, addr);
    if (strcmp(id, s->cfg.id) == 0) {
        /* Leadership is changing under us: let the client retry. */
        reply_text(req, 503, "Service Unavailable", "leadership changing");
    } else if (http == NULL) {
        reply_text(req, 503, "Service Unavailable",
                   "leader %s (raft %s) has not announced its HTTP address yet", id, addr);
    } else {
        char loc[4096];
        snprintf(loc, sizeof loc, "http://%s%s", http, evhttp_request_get_uri(req));
        struct evkeyvalq *h = evhttp_request_get_output_headers(req);
        evhttp_add_header(h, "Location", loc);
        evhttp_add_header(h, "X-Craft-Leader", id);
        reply_text(req, 307, "Temporary Redirect", "leader is %s at http://%s", id, http);
    }
    free(http);
    free(id);
    free(addr);
}

static void reply_error(kv_server_t *s, struct evhttp_request *req, int rv)
{
    switch (rv) {
    case CRAFT_ENOTLEADER:
        redirect_to_leader(s, req);
        break;
    case CRAFT_ELEADERSHIPLOST:
        reply_text(req, 503, "Service Unavailable",
                   "leadership lost while committing: the outcome is unknown");
        break;
    case CRAFT_ESHUTDOWN:
    case CRAFT_ETIMEDOUT:
    case CRAFT_ETRANSFER:
    case CRAFT_EABORTED:
        reply_text(req, 503, "Service Unavailable", "%s", craft_strerror(rv));
        break;
    case CRAFT_EINVAL:
        reply_text(req, 400, "Bad Request", "%s", craft_strerror(rv));
        break;
    case CRAFT_ENOTFOUND:
        reply_text(req, 404, "Not Found", "%s", craft_strerror(rv));
        break;
    case CRAFT_ECONFLICT:
    case CRAFT_EBUSY:
    case CRAFT_ENOTHINGNEW:
        reply_text(req, 409, "Conflict", "%s", craft_strerror(rv));
        break;
    default:
        reply_text(req, 500, "Internal Server Error", "%s (%s)", craft_strerror(rv),
                   craft_err_name(rv));
        break;
    }
}

/* ------------------------------------------------------------------------ */
/* Futures back to the loop                                                  */
/* ------------------------------------------------------------------------ */

/* On a craft thread (or the loop, if already complete): hand `op` back. */
static void future_done(craft_future_t *f, void *arg)
{
    (void)f;
    op_t *op = arg;
    kv_server_t *s = op->s;
    pthread_mutex_lock(&s->mu);
    if (s->done_tail != NULL) {
        s->done_tail->next = op;
    } else {
        s->done_head = op;
    }
    s->done_tail = op;
    pthread_mutex_unlock(&s->mu);
    event_active(s->done_ev, EV_READ, 0);
}

/* Waits (off the loop) for `f` on behalf of `op`; replies 500 when the
 * future could not even be allocated. */
static void submit(op_t *op, craft_future_t *f)
{
    if (f == NULL) {
        if (op->req != NULL) {
            reply_text(op->req, 500, "Internal Server Error", "out of memory");
        }
        op_free(op);
        return;
    }
    op->f = f;
    op->next = NULL;
    op->s->outstanding++;
    craft_future_on_done(f, future_done, op);
}

static void apply_member(op_t *op, const char *id, const char *http)
{
    void *cmd;
    size_t len;
    int rv = kv_command_encode(KV_OP_MEMBER, id, strlen(id), http, strlen(http), NULL, 0,
                               &cmd, &len);
    if (rv != 0) {
        if (op->req != NULL) {
            reply_error(op->s, op->req, rv);
        }
        op_free(op);
        return;
    }
    craft_future_t *f = craft_apply(op->s->raft, cmd, len, ENQUEUE_TIMEOUT_MS);
    free(cmd);
    submit(op, f);
}

static void serve_read(kv_server_t *s, op_t *op)
{
    void *val;
    size_t vlen;
    int rv = kv_fsm_get(s->cfg.fsm, op->key, op->klen, &val, &vlen);
    if (rv == CRAFT_ENOTFOUND) {
        reply_text(op->req, 404, "Not Found", "no such key");
        return;
    }
    if (rv != 0) {
        reply_error(s, op->req, rv);
        return;
    }
    struct evbuffer *b = evbuffer_new();
    if (b == NULL) {
        free(val);
        reply_error(s, op->req, CRAFT_ENOMEM);
        return;
    }
    evbuffer_add(b, val, vlen);
    free(val);
    evhttp_add_header(evhttp_request_get_output_headers(op->req), "Content-Type",
                      "application/octet-stream");
    evhttp_send_reply(op->req, 200, "OK", b);
    evbuffer_free(b);
}

static void park_reader(kv_server_t *s, op_t *op)
{
    op->next = s->readers;
    s->readers = op;
    if (!evtimer_pending(s->read_ev, NULL)) {
        struct timeval tv = {0, READ_POLL_US};
        evtimer_add(s->read_ev, &tv);
    }
}

static void on_read_poll(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    kv_server_t *s = arg;
    uint64_t applied = craft_applied_index(s->raft);
    int64_t now = craft_now_ns();
    op_t **p = &s->readers;
    while (*p != NULL) {
        op_t *op = *p;
        if (applied >= op->read_index) {
            *p = op->next;
            serve_read(s, op);
            op_free(op);
        } else if (now >= op->deadline_ns || s->closing) {
            *p = op->next;
            reply_text(op->req, 503, "Service Unavailable",
                       "timed out waiting to apply index %llu (applied %llu)",
                       (unsigned long long)op->read_index, (unsigned long long)applied);
            op_free(op);
        } else {
            p = &op->next;
        }
    }
    if (s->readers != NULL) {
        struct timeval tv = {0, READ_POLL_US};
        evtimer_add(s->read_ev, &tv);
    }
}

static void finish_snapshot(kv_server_t *s, op_t *op)
{
    craft_snapshot_meta_t *meta = NULL;
    craft_reader_t *reader = NULL;
    int rv = craft_future_snapshot_open(op->f, &meta, &reader);
    if (rv != 0) {
        reply_error(s, op->req, rv);
        return;
    }
    reader->close(reader->ctx);
    struct evbuffer *b = evbuffer_new();
    if (b == NULL) {
        craft_snapshot_meta_free(meta);
        reply_error(s, op->req, CRAFT_ENOMEM);
        return;
    }
    evbuffer_add_printf(b, "{\"id\":");
    json_string(b, meta->id);
    evbuffer_add_printf(b, ",\"index\":%llu,\"term\":%llu,\"size\":%lld}\n",
                        (unsigned long long)meta->index, (unsigned long long)meta->term,
                        (long long)meta->size);
    craft_snapshot_meta_free(meta);
    reply_json(op->req, 200, b);
    evbuffer_free(b);
}

static void finish_status(kv_server_t *s, op_t *op, int rv)
{
    craft_stats_t st;
    craft_stats(s->raft, &st);
    char *lid = NULL, *laddr = NULL;
    craft_leader(s->raft, &lid, &laddr);
    char *lhttp = lid != NULL ? leader_http(s, lid, laddr) : NULL;
    struct evbuffer *b = evbuffer_new();
    if (b == NULL) {
        free(lid);
        free(laddr);
        free(lhttp);
        reply_error(s, op->req, CRAFT_ENOMEM);
        return;
    }
    evbuffer_add_printf(b, "{\"id\":");
    json_string(b, s->cfg.id);
    evbuffer_add_printf(b, ",\"address\":");
    json_string(b, s->cfg.raft_addr);
    evbuffer_add_printf(b, ",\"http\":");
    json_string(b, s->cfg.http_addr);
    evbuffer_add_printf(b, ",\"state\":");
    json_string(b, craft_state_name(st.state));
    evbuffer_add_printf(b, ",\"leader\":");
    if (lid != NULL) {
        evbuffer_add_printf(b, "{\"id\":");
        json_string(b, lid);
        evbuffer_add_printf(b, ",\"address\":");
        json_string(b, laddr);
        evbuffer_add_printf(b, ",\"http\":");
        json_string(b, lhttp);
        evbuffer_add_printf(b, "}");
    } else {
        evbuffer_add_printf(b, "null");
    }
    evbuffer_add_printf(b,
                        ",\"term\":%llu,\"last_index\":%llu,\"commit_index\":%llu,"
                        "\"applied_index\":%llu,\"last_snapshot_index\":%llu,\"keys\":%zu",
                        (unsigned long long)st.term, (unsigned long long)st.last_log_index,
                        (unsigned long long)st.commit_index,
                        (unsigned long long)st.applied_index,
                        (unsigned long long)st.last_snapshot_index,
                        kv_fsm_count(s->cfg.fsm));
    const craft_configuration_t *c = rv == 0 ? craft_future_configuration(op->f) : NULL;
    evbuffer_add_printf(b, ",\"configuration\":");
    if (c != NULL) {
        evbuffer_add_printf(b, "{\"index\":%llu,\"servers\":[",
                            (unsigned long long)craft_future_index(op->f));
        for (size_t i = 0; i < c->n; i++) {
            const craft_server_t *srv = &c->servers[i];
            char *http = leader_http(s, srv->id, srv->address);
            evbuffer_add_printf(b, "%s{\"id\":", i > 0 ? "," : "");
            json_string(b, srv->id);
            evbuffer_add_printf(b, ",\"address\":");
            json_string(b, srv->address);
            evbuffer_add_printf(b, ",\"http\":");
            json_string(b, http);
            evbuffer_add_printf(b, ",\"suffrage\":\"%s\"}",
                                srv->suffrage == CRAFT_VOTER ? "Voter" : "Nonvoter");
            free(http);
        }
        evbuffer_add_printf(b, "]}");
    } else {
        evbuffer_add_printf(b, "null");
    }
    evbuffer_add_printf(b, "}\n");
    reply_json(op->req, 200, b);
    evbuffer_free(b);
    free(lid);
    free(laddr);
    free(lhttp);
}

static void finish_announce(kv_server_t *s, op_t *op, int rv)
{
    s->announcing = false;
    if (rv == 0) {
        logf_(s, CRAFT_LEVEL_INFO, "recorded http=%s for id=%s in the FSM", s->cfg.http_addr,
              s->cfg.id);
    } else if (!s->closing && craft_state(s->raft) == CRAFT_LEADER) {
        logf_(s, CRAFT_LEVEL_WARN, "recording our http address failed: %s; retrying",
              craft_strerror(rv));
        struct timeval tv = {1, 0};
        event_add(s->announce_ev, &tv);
    }
    (void)op;
}

/* Finishes one completed op on the loop thread. */
static void finish(kv_server_t *s, op_t *op)
{
    int rv = craft_future_wait(op->f); /* already complete: does not block */
    switch (op->kind) {
    case OP_WRITE:
        if (rv != 0) {
            reply_error(s, op->req, rv);
            break;
        }
        switch ((kv_result_t)(intptr_t)craft_future_response(op->f)) {
        case KV_RESULT_OK: {
            char idx[32];
            snprintf(idx, sizeof idx, "%llu", (unsigned long long)craft_future_index(op->f));
            evhttp_add_header(evhttp_request_get_output_headers(op->req), "X-Craft-Index", idx);
            evhttp_send_reply(op->req, 204, "No Content", NULL);
            break;
        }
        case KV_RESULT_CAS_FAILED:
            reply_text(op->req, 409, "Conflict", "compare-and-set failed");
            break;
        default:
            reply_text(op->req, 400, "Bad Request", "invalid command");
            break;
        }
        break;
    case OP_READ:
        if (rv != 0) {
            reply_error(s, op->req, rv);
            break;
        }
        op->read_index = craft_future_index(op->f);
        if (craft_applied_index(s->raft) >= op->read_index) {
            serve_read(s, op);
            break;
        }
        op->deadline_ns = craft_now_ns() + (int64_t)READ_APPLY_TIMEOUT_MS * 1000000;
        park_reader(s, op);
        return; /* still in use */
    case OP_JOIN:
        if (rv != 0) {
            reply_error(s, op->req, rv);
            break;
        }
        logf_(s, CRAFT_LEVEL_INFO, "added id=%s at index %llu", op->member_id,
              (unsigned long long)craft_future_index(op->f));
        if (op->member_http != NULL) {
            op_t *next = op_new(s, OP_JOIN_MEMBER, op->req);
            if (next == NULL) {
                reply_error(s, op->req, CRAFT_ENOMEM);
                break;
            }
            next->index = craft_future_index(op->f);
            apply_member(next, op->member_id, op->member_http);
            op_free(op);
            return;
        }
        /* fall through */
    case OP_JOIN_MEMBER:
    case OP_LEAVE: {
        if (rv != 0) {
            reply_error(s, op->req, rv);
            break;
        }
        uint64_t index = op->kind == OP_JOIN_MEMBER ? op->index : craft_future_index(op->f);
        struct evbuffer *b = evbuffer_new();
        if (b != NULL) {
            evbuffer_add_printf(b, "{\"index\":%llu}\n", (unsigned long long)index);
        }
        reply_json(op->req, 200, b);
        if (b != NULL) {
            evbuffer_free(b);
        }
        break;
    }
    case OP_SNAPSHOT:
        if (rv != 0) {
            reply_error(s, op->req, rv);
        } else {
            finish_snapshot(s, op);
        }
        break;
    case OP_STATUS:
        finish_status(s, op, rv);
        break;
    case OP_ANNOUNCE:
        finish_announce(s, op, rv);
        break;
    }
    op_free(op);
}

static void on_done(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    kv_server_t *s = arg;
    pthread_mutex_lock(&s->mu);
    op_t *op = s->done_head;
    s->done_head = s->done_tail = NULL;
    pthread_mutex_unlock(&s->mu);
    while (op != NULL) {
        op_t *next = op->next;
        op->next = NULL;
        s->outstanding--;
        finish(s, op);
        op = next;
    }
}

/* ------------------------------------------------------------------------ */
/* Leadership: record our HTTP address                                       */
/* ------------------------------------------------------------------------ */

void kv_server_notify_leader(void *arg, bool is_leader)
{
    kv_server_t *s = arg;
    if (is_leader) {
        event_active(s->announce_ev, EV_TIMEOUT, 0);
    }
}

static void on_announce(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    kv_server_t *s = arg;
    if (s->announcing || s->closing || craft_state(s->raft) != CRAFT_LEADER) {
        return;
    }
    char *known = kv_fsm_member_http(s->cfg.fsm, s->cfg.id);
    bool same = known != NULL && strcmp(known, s->cfg.http_addr) == 0;
    free(known);
    if (same) {
        return;
    }
    op_t *op = op_new(s, OP_ANNOUNCE, NULL);
    if (op == NULL) {
        return;
    }
    s->announcing = true;
    apply_member(op, s->cfg.id, s->cfg.http_addr);
}

/* ------------------------------------------------------------------------ */
/* Handlers                                                                  */
/* ------------------------------------------------------------------------ */

static bool is_leader_or_redirect(kv_server_t *s, struct evhttp_request *req)
{
    if (craft_state(s->raft) == CRAFT_LEADER) {
        return true;
    }
    redirect_to_leader(s, req);
    return false;
}

static void handle_kv(kv_server_t *s, struct evhttp_request *req, const char *raw_key)
{
    size_t klen = 0;
    char *key = evhttp_uridecode(raw_key, 0, &klen);
    if (key == NULL || klen == 0) {
        free(key);
        reply_text(req, 400, "Bad Request", "missing key: use /kv/<key>");
        return;
    }
    enum evhttp_cmd_type method = evhttp_request_get_command(req);
    if (method == EVHTTP_REQ_GET) {
        if (query_flag(req, "stale")) {
            op_t tmp = {.req = req, .key = key, .klen = klen};
            serve_read(s, &tmp);
            free(key);
            return;
        }
        if (!is_leader_or_redirect(s, req)) {
            free(key);
            return;
        }
        op_t *op = op_new(s, OP_READ, req);
        if (op == NULL) {
            free(key);
            reply_error(s, req, CRAFT_ENOMEM);
            return;
        }
        op->key = key;
        op->klen = klen;
        submit(op, craft_read_index(s->raft));
        return;
    }
    kv_op_t kop;
    char *old = NULL;
    size_t olen = 0;
    if (method == EVHTTP_REQ_PUT) {
        kop = KV_OP_PUT;
    } else if (method == EVHTTP_REQ_DELETE) {
        kop = KV_OP_DELETE;
    } else if (method == EVHTTP_REQ_POST && (old = query_get(req, "cas", &olen)) != NULL) {
        kop = KV_OP_CAS;
    } else {
        free(key);
        reply_text(req, method == EVHTTP_REQ_POST ? 400 : 405,
                   method == EVHTTP_REQ_POST ? "Bad Request" : "Method Not Allowed",
                   "use GET, PUT, DELETE or POST ?cas=<old>");
        return;
    }
    if (!is_leader_or_redirect(s, req)) {
        free(key);
        free(old);
        return;
    }
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t vlen = kop == KV_OP_DELETE ? 0 : evbuffer_get_length(in);
    const void *val = vlen > 0 ? evbuffer_pullup(in, -1) : NULL;
    void *cmd = NULL;
    size_t len = 0;
    int rv = kv_command_encode(kop, key, klen, val, vlen, old, olen, &cmd, &len);
    free(key);
    free(old);
    op_t *op = rv == 0 ? op_new(s, OP_WRITE, req) : NULL;
    if (op == NULL) {
        free(cmd);
        reply_error(s, req, rv != 0 ? rv : CRAFT_ENOMEM);
        return;
    }
    craft_future_t *f = craft_apply(s->raft, cmd, len, ENQUEUE_TIMEOUT_MS);
    free(cmd);
    submit(op, f);
}

static void handle_join(kv_server_t *s, struct evhttp_request *req)
{
    char *id = query_get(req, "id", NULL);
    char *addr = query_get(req, "addr", NULL);
    char *http = query_get(req, "http", NULL);
    bool nonvoter = query_flag(req, "nonvoter");
    if (id == NULL || addr == NULL || id[0] == '\0' || addr[0] == '\0' ||
        (http != NULL && http[0] == '\0')) {
        reply_text(req, 400, "Bad Request", "use /join?id=ID&addr=RAFT_ADDR[&http=HTTP_ADDR]");
        goto out;
    }
    if (!is_leader_or_redirect(s, req)) {
        goto out;
    }
    op_t *op = op_new(s, OP_JOIN, req);
    if (op == NULL) {
        reply_error(s, req, CRAFT_ENOMEM);
        goto out;
    }
    op->member_id = id;
    op->member_http = http;
    id = http = NULL;
    logf_(s, CRAFT_LEVEL_INFO, "adding id=%s address=%s http=%s as %s", op->member_id, addr,
          op->member_http != NULL ? op->member_http : "-", nonvoter ? "nonvoter" : "voter");
    submit(op, nonvoter ? craft_add_nonvoter(s->raft, op->member_id, addr, 0, ENQUEUE_TIMEOUT_MS)
                        : craft_add_voter(s->raft, op->member_id, addr, 0, ENQUEUE_TIMEOUT_MS));
out:
    free(id);
    free(addr);
    free(http);
}

static void handle_leave(kv_server_t *s, struct evhttp_request *req)
{
    char *id = query_get(req, "id", NULL);
    if (id == NULL || id[0] == '\0') {
        reply_text(req, 400, "Bad Request", "use /leave?id=ID");
    } else if (is_leader_or_redirect(s, req)) {
        op_t *op = op_new(s, OP_LEAVE, req);
        if (op == NULL) {
            reply_error(s, req, CRAFT_ENOMEM);
        } else {
            logf_(s, CRAFT_LEVEL_INFO, "removing id=%s", id);
            submit(op, craft_remove_server(s->raft, id, 0, ENQUEUE_TIMEOUT_MS));
        }
    }
    free(id);
}

static void handle_request(struct evhttp_request *req, void *arg)
{
    kv_server_t *s = arg;
    if (s->closing) {
        reply_text(req, 503, "Service Unavailable", "shutting down");
        return;
    }
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    enum evhttp_cmd_type method = evhttp_request_get_command(req);
    if (path == NULL) {
        reply_text(req, 400, "Bad Request", "no path");
    } else if (strncmp(path, "/kv/", 4) == 0) {
        handle_kv(s, req, path + 4);
    } else if (strcmp(path, "/status") == 0 && method == EVHTTP_REQ_GET) {
        op_t *op = op_new(s, OP_STATUS, req);
        if (op == NULL) {
            reply_error(s, req, CRAFT_ENOMEM);
        } else {
            submit(op, craft_get_configuration(s->raft));
        }
    } else if (strcmp(path, "/join") == 0 && method == EVHTTP_REQ_POST) {
        handle_join(s, req);
    } else if (strcmp(path, "/leave") == 0 && method == EVHTTP_REQ_POST) {
        handle_leave(s, req);
    } else if (strcmp(path, "/snapshot") == 0 && method == EVHTTP_REQ_POST) {
        op_t *op = op_new(s, OP_SNAPSHOT, req);
        if (op == NULL) {
            reply_error(s, req, CRAFT_ENOMEM);
        } else {
            submit(op, craft_snapshot(s->raft));
        }
    } else if (strcmp(path, "/status") == 0 || strcmp(path, "/join") == 0 ||
               strcmp(path, "/leave") == 0 || strcmp(path, "/snapshot") == 0) {
        reply_text(req, 405, "Method Not Allowed", "method not allowed");
    } else {
        reply_text(req, 404, "Not Found",
                   "endpoints: /kv/<key>, /status, /join, /leave, /snapshot");
    }
}

/* ------------------------------------------------------------------------ */
/* Lifecycle                                                                 */
/* ------------------------------------------------------------------------ */

static void on_stop(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    kv_server_t *s = arg;
    s->closing = true;
    on_done(-1, 0, s);
    on_read_poll(-1, 0, s); /* closing: answers every parked read */
    if (s->outstanding > 0 && ++s->stop_rounds < 250) {
        /* craft completes every future at shutdown; wait for the last ones. */
        struct timeval tv = {0, 20000};
        event_add(s->stop_ev, &tv);
        return;
    }
    if (s->outstanding > 0) {
        logf_(s, CRAFT_LEVEL_WARN, "%zu requests still waiting for craft at shutdown",
              s->outstanding);
    }
    if (s->listener != NULL) {
        evhttp_del_accept_socket(s->http, s->listener);
        s->listener = NULL;
    }
    /* Give the replies just sent a moment to reach their clients. */
    struct timeval flush = {0, 200000};
    event_base_loopexit(s->base, &flush);
}

static void *loop_main(void *arg)
{
    kv_server_t *s = arg;
    event_base_loop(s->base, EVLOOP_NO_EXIT_ON_EMPTY);
    return NULL;
}

int kv_server_new(const kv_server_config_t *cfg, kv_server_t **out)
{
    char host[256], port[16];
    if (kvc_split_hostport(cfg->http_addr, host, sizeof host, port, sizeof port) != 0) {
        return CRAFT_EINVAL;
    }
    if (evthread_use_pthreads() != 0) {
        return CRAFT_ENOMEM;
    }
    kv_server_t *s = calloc(1, sizeof *s);
    if (s == NULL) {
        return CRAFT_ENOMEM;
    }
    s->cfg = *cfg;
    pthread_mutex_init(&s->mu, NULL);
    int rv = CRAFT_ENOMEM;
    s->base = event_base_new();
    if (s->base == NULL) {
        goto err_after_alloc;
    }
    s->http = evhttp_new(s->base);
    s->done_ev = event_new(s->base, -1, 0, on_done, s);
    s->stop_ev = event_new(s->base, -1, 0, on_stop, s);
    s->read_ev = evtimer_new(s->base, on_read_poll, s);
    s->announce_ev = evtimer_new(s->base, on_announce, s);
    if (s->http == NULL || s->done_ev == NULL || s->stop_ev == NULL || s->read_ev == NULL ||
        s->announce_ev == NULL) {
        goto err_after_base;
    }
    evhttp_set_max_body_size(s->http, (ev_ssize_t)MAX_BODY);
    evhttp_set_timeout(s->http, HTTP_IDLE_TIMEOUT_S);
    evhttp_set_allowed_methods(s->http, EVHTTP_REQ_GET | EVHTTP_REQ_PUT | EVHTTP_REQ_POST |
                                            EVHTTP_REQ_DELETE);
    evhttp_set_gencb(s->http, handle_request, s);
    s->listener = evhttp_bind_socket_with_handle(s->http, host, (ev_uint16_t)atoi(port));
    if (s->listener == NULL) {
        logf_(s, CRAFT_LEVEL_ERROR, "cannot listen on %s", cfg->http_addr);
        rv = CRAFT_EIO;
        goto err_after_base;
    }
    *out = s;
    return 0;

err_after_base:
    if (s->http != NULL) {
        evhttp_free(s->http);
    }
    if (s->done_ev != NULL) {
        event_free(s->done_ev);
    }
    if (s->stop_ev != NULL) {
        event_free(s->stop_ev);
    }
    if (s->read_ev != NULL) {
        event_free(s->read_ev);
    }
    if (s->announce_ev != NULL) {
        event_free(s->announce_ev);
    }
    event_base_free(s->base);
err_after_alloc:
    pthread_mutex_destroy(&s->mu);
    free(s);
    return rv;
}

int kv_server_start(kv_server_t *s, craft_t *raft)
{
    s->raft = raft;
    if (pthread_create(&s->thread, NULL, loop_main, s) != 0) {
        return CRAFT_ENOMEM;
    }
    s->started = true;
    return 0;
}

void kv_server_stop(kv_server_t *s)
{
    if (s == NULL) {
        return;
    }
    bool leak_ops = false;
    if (s->started) {
        event_active(s->stop_ev, EV_TIMEOUT, 0);
        pthread_join(s->thread, NULL);
        leak_ops = s->outstanding > 0;
    }
    /* Ops queued after the last drain: their requests die with evhttp. */
    for (op_t *op = s->done_head; op != NULL;) {
        op_t *next = op->next;
        op_free(op);
        op = next;
    }
    evhttp_free(s->http);
    if (leak_ops) {
        /* A future still holds `s` through its callback: keep the memory
         * it may touch (done_ev, the base) rather than risk a use after
         * free. Never seen: craft completes every future at shutdown. */
        return;
    }
    event_free(s->done_ev);
    event_free(s->stop_ev);
    event_free(s->read_ev);
    event_free(s->announce_ev);
    event_base_free(s->base);
    pthread_mutex_destroy(&s->mu);
    free(s);
}
