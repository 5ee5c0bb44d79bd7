/*
 * TCP transport speaking hashicorp/raft's NetworkTransport protocol
 * (WIRE.md): a craft node and Go hashicorp/raft nodes (v1.1.2 and v1.7.x)
 * can be members of one cluster.
 *
 * Threading. Each transport runs on one event-loop thread (libevent; its
 * own, or one shared with other transports: craft_tcp_loop_t) that owns
 * every socket: the listener, inbound connections, pooled and pipeline
 * connections. Callers on any thread (craft's replication, heartbeat and
 * vote threads) encode their request on their own thread, hand it to the
 * loop and wait on a condition variable until the response, the RPC
 * deadline or close. Incoming RPCs are decoded on the loop thread and the
 * rpc and heartbeat handlers are called ON THE LOOP THREAD: they must not
 * block (craft's handlers only post to a mailbox or take a short lock), and
 * must not call set_rpc_handler / set_heartbeat_handler / close of the same
 * transport. respond() may be called from any thread, before or after the
 * handler returns; the encoded response is handed back to the loop.
 *
 * Semantics (hashicorp's NetworkTransport unless said otherwise):
 *  - Synchronous RPCs take an idle pooled connection to the target or dial
 *    a new one, send `rpcType + msgpack(request)`, and read
 *    `msgpack(error string) + msgpack(response)`. After a complete exchange
 *    the connection goes back to the pool (at most max_pool idle per
 *    target), also when the peer answered with an error string. A
 *    malformed response, a timeout or an I/O error closes it. A pooled
 *    connection found dead before any response byte arrived is retried
 *    once on a fresh connection.
 *  - Errors returned by the RPC calls: CRAFT_EUNREACHABLE (cannot connect),
 *    CRAFT_ETIMEDOUT (deadline passed: timeout_ms, scaled for
 *    InstallSnapshot), CRAFT_EIO (connection lost), CRAFT_EPROTOCOL
 *    (malformed response), CRAFT_ECLOSED (transport closed), CRAFT_EINVAL,
 *    CRAFT_ENOMEM; and when the peer answered with a non-empty error
 *    string: the craft code whose craft_strerror() text it is (craft peers
 *    and hashicorp's identical messages, e.g. "node is not the leader"),
 *    CRAFT_ENOTSUP for a message containing "unexpected command", CRAFT_ECLOSED
 *    for "transport shutdown", CRAFT_EPROTOCOL for anything else.
 *  - InstallSnapshot always uses a fresh connection, closed afterwards. The
 *    caller's thread reads `data` in chunks of 64 KiB and hands them to the
 *    loop with at most ~1 MiB outstanding (never the whole snapshot). Its
 *    deadline is timeout_ms * max(1, size / 256 KiB). The reader must yield
 *    exactly req->size bytes (short: CRAFT_EIO).
 *  - Pipelines use a dedicated connection (taken from the pool or dialed;
 *    append_entries_pipeline waits for the connection). append_entries
 *    encodes and sends; it blocks while max_inflight requests have not been
 *    consumed by next_response. Each response must arrive within timeout_ms
 *    of its request being sent, else every outstanding request fails with
 *    CRAFT_ETIMEDOUT. After a connection failure, outstanding requests come
 *    back in order with the error and later append_entries fail with it.
 *    next_response after close hands back every unconsumed tag with
 *    CRAFT_ECLOSED, then CRAFT_ECLOSED with *tag == NULL. Response header
 *    strings are valid until the next next_response call.
 *  - Response header strings of synchronous RPCs are interned in the
 *    transport (valid until it is freed; at most 4096 distinct strings are
 *    kept, further unseen ones are returned as NULL — craft never reads
 *    them).
 *  - Incoming: one request at a time per connection, responses in request
 *    order. AppendEntries with hashicorp's heartbeat shape (no entries,
 *    prev_log_entry == prev_log_term == leader_commit_index == 0, term != 0,
 *    a sender) go to the heartbeat handler when one is set, everything else
 *    to the rpc handler. With no handler installed the peer gets the error
 *    "raft is already shutdown" (CRAFT_ESHUTDOWN). An InstallSnapshot's
 *    rpc->reader yields the req.size bytes that follow the request, read
 *    from the connection as the consumer asks for them (at most ~1 MiB is
 *    buffered; reading from the socket stops while the buffer is full). It
 *    is valid until respond(); bytes not read by then are drained before
 *    the next request. A read fails with CRAFT_EIO when the connection
 *    breaks and CRAFT_ECLOSED after respond() or close. It must be read on
 *    a thread other than the loop's (not from inside the handler): a read
 *    there returns CRAFT_EINVAL at once instead of waiting for itself.
 *  - Malformed or over-limit input, or an unknown rpc type, closes the
 *    connection (logged at WARN with the reason); so does an inbound
 *    connection that receives nothing for idle_timeout_ms while waiting for
 *    (the rest of) a request or of snapshot data. Time spent waiting for the
 *    consumer does not count.
 *  - close() of the transport answers requests still waiting for the
 *    consumer with the error "transport shutdown" (best effort), closes
 *    every socket, completes every pending outgoing call and pipeline
 *    request with CRAFT_ECLOSED and frees the transport. Incoming rpcs the
 *    consumer still holds remain valid until their respond() (which then
 *    only releases them); pipelines must still be freed by their owner.
 *
 * Pre-vote with old peers. hashicorp/raft before 1.7 has no RequestPreVote
 * (rpc type 4) and closes the connection without replying to it. When a
 * RequestPreVote sent on a freshly established connection sees the
 * connection closed (or reset) before any response byte, request_prevote
 * returns CRAFT_ENOTSUP and the target address is remembered as "no
 * pre-vote" for no_prevote_ttl_ms: during that time request_prevote to it
 * returns CRAFT_ENOTSUP at once without sending anything. After it, the
 * next pre-vote probes the peer again (it may have been upgraded). A peer
 * process dying while it handles a pre-vote looks the same and is treated
 * the same way. craft counts CRAFT_ENOTSUP from request_prevote as a
 * granted pre-vote, as hashicorp does for "unexpected command".
 */
#ifndef CRAFT_TCP_H
#define CRAFT_TCP_H

#include "../craft.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* An event-loop thread that several TCP transports of one process can
 * share: a process hosting several nodes or raft groups then runs one
 * thread for all their sockets instead of one per transport, and a message
 * between two of them is handled without waking another thread (hashicorp's
 * transports share Go's network poller the same way). A shared loop runs
 * every handler of every transport on it: a handler that blocks (a follower
 * appending to a store that fsyncs, see craft_config_t.apply_inline) stalls
 * the others, so share loops between nodes with in-memory or fast stores,
 * or between many lightly loaded groups.
 *
 * craft_tcp_loop_new starts the thread; CRAFT_ENOMEM if it cannot.
 * Transports using the loop (craft_tcp_options_t.loop) hold a reference to
 * it: craft_tcp_loop_free drops the application's, and the thread stops and
 * the loop is freed when the last transport using it is closed (at once if
 * none does). Handlers on a shared loop must not close or change the
 * handlers of any transport on that loop, nor free the loop (the rules
 * above, extended to every transport sharing it). */
typedef struct craft_tcp_loop craft_tcp_loop_t;
int craft_tcp_loop_new(craft_tcp_loop_t **out);
void craft_tcp_loop_free(craft_tcp_loop_t *loop);

/* Spinning, opt-in (default 0 = off). Having run out of work, the loop
 * polls its sockets without sleeping for up to `spin_us` microseconds
 * before it sleeps in epoll_wait, so that the next message is handled at
 * once instead of after a wake-up (20-80 us on a virtual machine whose
 * vCPU went idle: at one client, the bulk of an in-memory round trip). It
 * trades CPU for latency, within limits: a loop spins only while traffic
 * has recently come sooner than `spin_us` on average after it went idle
 * (a loop whose peers answer slower, e.g. followers syncing a disk, sleeps
 * at once, probing every 16th idle period), and no more loops of the
 * process spin at once than it has CPUs to run on. For loops carrying
 * nodes with in-memory or otherwise fast stores, on machines with a core
 * to spare per spinning loop; a few tens of microseconds is the useful
 * range. May be called at any time from any thread. Returns 0, or
 * CRAFT_EINVAL (NULL loop, spin_us < 0 or > CRAFT_TCP_LOOP_SPIN_MAX_US). */
#define CRAFT_TCP_LOOP_SPIN_MAX_US 10000
int craft_tcp_loop_set_spin(craft_tcp_loop_t *loop, int64_t spin_us);

typedef struct craft_tcp_loop_stats {
    uint64_t spins;     /* idle periods spent polling */
    uint64_t spin_hits; /* ... that ended with traffic (no sleep needed) */
    uint64_t sleeps;    /* times the loop slept in epoll_wait while spinning
                         * was on (nothing counts while it is off) */
} craft_tcp_loop_stats_t;

/* Counters since the loop started; all zero for a NULL loop. */
void craft_tcp_loop_stats(craft_tcp_loop_t *loop, craft_tcp_loop_stats_t *out);

typedef struct craft_tcp_options {
    /* Idle outgoing connections kept per target address. Default 3
     * (Consul's value); 0 disables pooling. */
    int max_pool;
    /* RPC timeout: dial + request + response of a synchronous RPC, and each
     * pipelined response. Default 10000 (hashicorp's 10 s). > 0. */
    int64_t timeout_ms;
    /* Pipeline window: requests appended but not yet consumed through
     * next_response. Default 2 (hashicorp's DefaultMaxRPCsInFlight), range
     * 1..1024; 1 disables pipelining (append_entries_pipeline returns
     * CRAFT_ENOTSUP, as hashicorp). craft's own config.max_inflight also
     * bounds the window: the smaller of the two applies. */
    int max_inflight;
    /* An inbound connection waiting for a request (or the rest of one, or
     * of its snapshot data) that receives nothing for this long is closed.
     * Default 60000; 0 = never (hashicorp). craft clients notice such a
     * close on their pooled connections and retry once on a fresh one;
     * hashicorp clients keep idle pooled connections forever and fail one
     * RPC on a connection closed this way (raft retries it), so clusters
     * mixed with Go nodes may prefer 0 or a long timeout. */
    int64_t idle_timeout_ms;
    /* How long a peer that closed the connection on RequestPreVote is
     * remembered as having no pre-vote. Default 60000; 0 = not
     * remembered (each pre-vote probes again). */
    int64_t no_prevote_ttl_ms;
    /* Log sink (NULL = stderr) and its minimum level (default INFO). */
    craft_logger_fn logger;
    void *logger_ctx;
    craft_level_t log_level;
    /* Limits for decoding incoming requests and responses (0 = the wire
     * codec's defaults: 64 MiB frame, 1024 entries, 32 MiB per string or
     * blob, nesting 16; nesting is capped at 32, msgpack-c's decoder
     * stack). Snapshot data is not part of a frame. */
    size_t max_frame_bytes;
    size_t max_entries;
    size_t max_blob_bytes;
    unsigned max_depth;
    /* The event loop to run on (see craft_tcp_loop_t; the transport takes
     * a reference). NULL (default) = a loop thread of the transport's own. */
    craft_tcp_loop_t *loop;
} craft_tcp_options_t;

/* Fills `o` with the defaults above. */
void craft_tcp_options_default(craft_tcp_options_t *o);

/* Creates a transport listening on `bind` ("ip:port", "[ipv6]:port" or
 * "host:port"; port 0 picks a free port) and starts its loop thread.
 * `advertise` ("ip:port", copied) is the address given to peers and
 * returned by local_addr; NULL = the bound address with the real port.
 * An unspecified advertised IP (0.0.0.0, ::) or port 0 is refused with
 * CRAFT_EINVAL, as hashicorp's NewTCPTransport does. `opts` is copied
 * (NULL = defaults). Returns 0 with *out set, CRAFT_EINVAL (bad address or
 * option), CRAFT_EIO (cannot bind or listen; logged) or CRAFT_ENOMEM.
 * The application owns the transport and frees it with its `close`, after
 * craft_free of any node using it. */
int craft_tcp_transport_new(const char *bind, const char *advertise,
                            const craft_tcp_options_t *opts,
                            craft_transport_t **out);

#ifdef __cplusplus
}
#endif
#endif /* CRAFT_TCP_H */
