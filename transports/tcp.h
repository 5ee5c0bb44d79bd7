/*
 * Internal view of the TCP transport (transports/tcp.c) for tests: counters
 * and high-water marks. The public API is include/craft/tcp.h.
 */
#ifndef CRAFT_TRANSPORTS_TCP_H
#define CRAFT_TRANSPORTS_TCP_H

#include "craft.h"

#include <stddef.h>
#include <stdint.h>

typedef struct craft__tcp_stats {
    uint64_t dials;            /* outgoing connections started */
    uint64_t accepts;          /* inbound connections accepted */
    uint64_t inbound_open;     /* inbound connections open now */
    uint64_t outbound_open;    /* outgoing connections open now (incl. idle) */
    uint64_t pooled_idle;      /* idle pooled connections now */
    uint64_t inbound_rejected; /* inbound closed for bad input or timeout */
    uint64_t prevote_fallbacks; /* peers found without pre-vote */
    /* Most snapshot bytes the transport held at once for an outgoing
     * InstallSnapshot (handed over by the caller but not yet written to the
     * socket) and for an incoming one (received but not yet read by the
     * consumer), over the transport's life. */
    size_t snapshot_out_peak;
    size_t snapshot_in_peak;
} craft__tcp_stats_t;

/* Fills *out for a transport made by craft_tcp_transport_new. */
void craft__tcp_stats(craft_transport_t *trans, craft__tcp_stats_t *out);

#endif /* CRAFT_TRANSPORTS_TCP_H */
