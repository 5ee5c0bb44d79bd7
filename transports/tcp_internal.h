/*
 * TCP transport: hashicorp/raft's NetworkTransport protocol (WIRE.md) on
 * libevent. The public contract is in include/craft/tcp.h.
 *
 * Design
 * ------
 * One loop thread owns the event_base, the listener and every bufferevent
 * (no bufferevent is touched by another thread, so none needs its own
 * lock). The loop (struct craft_tcp_loop) is the transport's own unless the
 * application shares one between transports; either way a transport's
 * sockets, tasks and `wakeup` event live on it, and close() runs TASK_STOP
 * there and waits for `torn_down` instead of stopping the thread, which the
 * loop's last reference does. A connection's bufferevent writes and connects; the loop reads the
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
 * Files: tcp.c (the loop, tasks, the vtable, lifecycle), tcp_conn.c
 * (helpers, references, connections, the pool), tcp_out.c (synchronous
 * calls), tcp_pipeline.c (pipelines), tcp_in.c (incoming rpcs). This header
 * holds the private types and what those files share (craft__tcp_*).
 *
 * Lock order: mu, then a connection's wmu; libevent's base lock may be
 * taken under either (by event_active / event_add), and libevent never
 * calls back into these files with its base lock held.
 */
#ifndef CRAFT_TRANSPORTS_TCP_INTERNAL_H
#define CRAFT_TRANSPORTS_TCP_INTERNAL_H

#include "craft/tcp.h"

#include "lib/logger.h"
#include "lib/queue.h"
#include "lib/runtime.h"
#include "transports/pipeline_queue.h"
#include "transports/sync.h"
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

/* An event loop: a libevent base and the thread running it. Each transport
 * holds a reference; an application-created (shared) loop also holds the
 * application's until craft_tcp_loop_free. The last reference stops the
 * thread and frees the base. */
struct craft_tcp_loop {
    struct event_base *base;
    /* Activated by the last unref (after setting `stopping`) and by
     * craft_tcp_loop_set_spin: breaks event_base_loop so that loop_main
     * looks at both again. */
    struct event *kick;
    pthread_t thread;
    atomic_int refs;
    atomic_bool stopping;
    _Atomic int64_t spin_ns; /* craft_tcp_loop_set_spin; 0 = never spin */
    /* Loop thread only: reads and task batches handled (the traffic that
     * spinning waits for), the moving average of the time from running
     * out of work to the next traffic, idle periods without a spin since
     * the last one (see loop_spin in tcp.c). */
    uint64_t traffic;
    int64_t gap_avg_ns;
    unsigned unprobed;
    atomic_uint_fast64_t st_spins, st_spin_hits, st_sleeps;
};

/* Whether the calling thread is `t`'s loop thread. */
bool craft__tcp_on_loop(const tcp_t *t);

struct tcp {
    craft_transport_t iface; /* handed out; ctx points back here */
    craft_tcp_options_t opts;
    craft__wire_limits_t limits;
    craft__logger_t log;
    char local_addr[INET6_ADDRSTRLEN + 16];
    atomic_int refs;

    craft_tcp_loop_t *loop; /* referenced; private or shared */
    struct evconnlistener *listener;
    struct event *wakeup;

    pthread_mutex_t mu;
    pthread_cond_t handlers_idle;
    /* Under mu. */
    task_t *task_head;
    task_t *task_tail;
    bool wakeup_pending;
    bool closed;    /* close() started */
    bool loop_done; /* the loop accepts no more tasks */
    bool torn_down; /* TASK_STOP finished: the loop is done with `t` */
    pthread_cond_t torn_down_cond;
    handler_slot_t rpc_handler;
    handler_slot_t hb_handler;
    out_call_t *calls;     /* synchronous calls in progress */
    craft__queue_t pipelines; /* pipeline_t by link: not yet freed */
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

/* Counts traffic on `t`'s loop (on the loop thread): what a spinning loop
 * waits for (see loop_spin in tcp.c). */
static inline void craft__tcp_loop_traffic(tcp_t *t)
{
    t->loop->traffic++;
}

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
     * craft__tcp_conn_close clears those pointers, then takes wmu once before the
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

/* A pipelined request: QUEUED until written (by its caller or the loop),
 * then SENT, then DONE with the response matched to it. */
typedef struct pl_item {
    craft__pq_item_t q;
    uint8_t *frame; /* NULL once handed to the connection */
    size_t frame_len;
    int64_t sent_ns;
    craft__wire_response_t resp; /* owns the strings of q.resp */
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
    /* Requests and outcomes, under mu; `broken` is the error that broke
     * the connection. Its cond also signals `ready`. */
    craft__pq_t q;

    /* Under mu. */
    int refs;
    bool ready;
    conn_t *wconn; /* the connection callers may write to (see conn) */
    /* Strings of the last next_response; next_response's thread only. */
    craft__wire_response_t last_resp;
    craft__queue_t link; /* in t->pipelines */

    /* Loop thread only. */
    conn_t *conn;
};

/* tcp_conn.c */
int64_t craft__tcp_now_ns(void);
struct timeval craft__tcp_tv_of_ms(int64_t ms);
bool craft__tcp_cond_wait_until(pthread_cond_t *c, pthread_mutex_t *mu,
                                int64_t deadline_ns);
void craft__tcp_chunk_cleanup(const void *data, size_t len, void *extra);
void craft__tcp_chunks_free(chunk_t *ch);
void craft__tcp_transport_ref(tcp_t *t);
void craft__tcp_transport_unref(tcp_t *t);
int craft__tcp_post_locked(tcp_t *t, task_t *task);
const char *craft__tcp_intern_locked(tcp_t *t, const char *s);
int craft__tcp_map_peer_error(const char *msg);
int craft__tcp_resolve(const char *addr, bool passive, bool numeric,
                       struct sockaddr_storage *sa, socklen_t *salen);
void craft__tcp_format_addr(const struct sockaddr *sa, char *buf, size_t cap);
bool craft__tcp_advertisable(const struct sockaddr *sa);
bool craft__tcp_no_prevote_locked(tcp_t *t, const char *addr, int64_t now);
void craft__tcp_remember_no_prevote_locked(tcp_t *t, const char *addr);
int craft__tcp_inbuf_reserve(inbuf_t *b, size_t n);
const uint8_t *craft__tcp_inbuf_data(const inbuf_t *b);
void craft__tcp_inbuf_consume(inbuf_t *b, size_t n);
void craft__tcp_call_free(out_call_t *call);
void craft__tcp_call_unref(tcp_t *t, out_call_t *call);
void craft__tcp_rpc_free(in_rpc_t *rpc);
void craft__tcp_rpc_unref(tcp_t *t, in_rpc_t *rpc);
void craft__tcp_pl_item_free(craft__pq_item_t *qi);
void craft__tcp_pipe_free_mem(pipeline_t *p);
void craft__tcp_pipe_unref(tcp_t *t, pipeline_t *p);
void craft__tcp_set_reading(conn_t *c, bool on);
void craft__tcp_set_nodelay(struct bufferevent *bev);
int craft__tcp_conn_write(conn_t *c, const uint8_t *data, size_t len, bool owned);
void craft__tcp_conn_write_direct_locked(conn_t *c, uint8_t *frame, size_t len);
void craft__tcp_conn_on_written(conn_t *c);
conn_t *craft__tcp_conn_new(tcp_t *t, struct bufferevent *bev, bool inbound);
peer_t *craft__tcp_peer_get(tcp_t *t, const char *addr);
conn_t *craft__tcp_pool_take(peer_t *peer);
void craft__tcp_pool_put(conn_t *c);
conn_t *craft__tcp_dial(tcp_t *t, peer_t *peer, const struct sockaddr_storage *sa,
                        socklen_t salen);
void craft__tcp_call_finish(tcp_t *t, out_call_t *call, int result,
                            craft__wire_response_t *resp);
void craft__tcp_conn_close(conn_t *c, int err);
void craft__tcp_conn_reject(conn_t *c, const char *reason);

/* tcp_out.c */
void craft__tcp_call_move_chunks(tcp_t *t, out_call_t *call);
void craft__tcp_call_start(tcp_t *t, out_call_t *call);
void craft__tcp_out_on_read(conn_t *c);
void craft__tcp_out_write_cb(struct bufferevent *bev, void *arg);
void craft__tcp_out_event_cb(struct bufferevent *bev, short what, void *arg);
void craft__tcp_out_timer_cb(evutil_socket_t fd, short what, void *arg);
int craft__tcp_append_entries(void *ctx, const char *id, const char *target,
                              const craft_append_entries_req_t *req,
                              craft_append_entries_resp_t *resp);
int craft__tcp_request_vote(void *ctx, const char *id, const char *target,
                            const craft_request_vote_req_t *req,
                            craft_request_vote_resp_t *resp);
int craft__tcp_request_prevote(void *ctx, const char *id, const char *target,
                               const craft_request_prevote_req_t *req,
                               craft_request_prevote_resp_t *resp);
int craft__tcp_install_snapshot(void *ctx, const char *id, const char *target,
                                const craft_install_snapshot_req_t *req,
                                craft_install_snapshot_resp_t *resp,
                                craft_reader_t *data);
int craft__tcp_timeout_now(void *ctx, const char *id, const char *target,
                           const craft_timeout_now_req_t *req,
                           craft_timeout_now_resp_t *resp);

/* tcp_pipeline.c */
void craft__tcp_pipe_break(tcp_t *t, pipeline_t *p, int err);
void craft__tcp_pipe_ready(tcp_t *t, pipeline_t *p);
bool craft__tcp_pipe_arm_timer(tcp_t *t, conn_t *c);
void craft__tcp_pipe_start(tcp_t *t, pipeline_t *p);
void craft__tcp_pipe_send(tcp_t *t, pipeline_t *p);
void craft__tcp_pipe_on_read(tcp_t *t, conn_t *c);
int craft__tcp_pipeline(void *ctx, const char *id, const char *target,
                        craft_pipeline_t **out);

/* tcp_in.c */
void craft__tcp_in_write_cb(struct bufferevent *bev, void *arg);
void craft__tcp_in_event_cb(struct bufferevent *bev, short what, void *arg);
void craft__tcp_in_timer_cb(evutil_socket_t fd, short what, void *arg);
void craft__tcp_conn_read_cb(evutil_socket_t fd, short what, void *arg);
void craft__tcp_on_accept(struct evconnlistener *l, evutil_socket_t fd,
                          struct sockaddr *sa, int salen, void *arg);
void craft__tcp_on_accept_error(struct evconnlistener *l, void *arg);
void craft__tcp_rpc_respond_task(tcp_t *t, in_rpc_t *rpc);
void craft__tcp_rpc_resume_task(tcp_t *t, in_rpc_t *rpc);

#endif /* CRAFT_TRANSPORTS_TCP_INTERNAL_H */
