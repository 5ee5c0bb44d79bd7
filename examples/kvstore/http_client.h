/*
 * A tiny blocking HTTP/1.1 client (one request per connection, "Connection:
 * close", no TLS, no chunked responses): enough for craftkv's --join and its
 * smoke test. Thread-safe (no shared state).
 */
#ifndef CRAFTKV_HTTP_CLIENT_H
#define CRAFTKV_HTTP_CLIENT_H

#include <stddef.h>

typedef struct kvc_response {
    int status;     /* e.g. 200 */
    char *location; /* Location header (malloc'd) or NULL */
    char *body;     /* malloc'd, NUL-terminated (NUL not counted) */
    size_t body_len;
} kvc_response_t;

/* Frees the strings of `r` and zeroes it. NULL-safe. */
void kvc_response_free(kvc_response_t *r);

/* Splits "host:port" or "[v6]:port" into `host` and `port` (copied, at most
 * the given sizes including the NUL). Returns 0 or -1 when malformed. */
int kvc_split_hostport(const char *hostport, char *host, size_t host_size, char *port,
                       size_t port_size);

/* Sends `method target` to http://`hostport` with `body` (may be NULL when
 * len == 0) and reads the whole response into *out (kvc_response_free),
 * all within about `timeout_ms`. Returns 0, or -1 on a connection, I/O or
 * parse error, with a reason in err[0..err_size). */
int kvc_request(const char *hostport, const char *method, const char *target,
                const void *body, size_t len, int timeout_ms, kvc_response_t *out,
                char *err, size_t err_size);

/* As kvc_request, following up to 5 redirects (307/308: same method and
 * body; Location must be "http://host:port/..."). */
int kvc_request_follow(const char *hostport, const char *method, const char *target,
                       const void *body, size_t len, int timeout_ms, kvc_response_t *out,
                       char *err, size_t err_size);

#endif /* CRAFTKV_HTTP_CLIENT_H */
