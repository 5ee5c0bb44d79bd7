/*
 * The tiny blocking HTTP client of http_client.h.
 */
#include "http_client.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_RESPONSE ((size_t)128 << 20)
#define MAX_REDIRECTS 5

static void set_err(char *err, size_t size, const char *fmt, ...)
{
    if (err == NULL || size == 0) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, size, fmt, ap);
    va_end(ap);
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void kvc_response_free(kvc_response_t *r)
{
    if (r == NULL) {
        return;
    }
    free(r->location);
    free(r->body);
    memset(r, 0, sizeof *r);
}

int kvc_split_hostport(const char *hostport, char *host, size_t host_size, char *port,
                       size_t port_size)
{
    const char *h = hostport, *colon;
    size_t hlen;
    if (hostport[0] == '[') {
        const char *close = strchr(hostport, ']');
        if (close == NULL || close[1] != ':') {
            return -1;
        }
        h = hostport + 1;
        hlen = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(hostport, ':');
        if (colon == NULL) {
            return -1;
        }
        hlen = (size_t)(colon - hostport);
    }
    const char *p = colon + 1;
    size_t plen = strlen(p);
    if (hlen == 0 || hlen >= host_size || plen == 0 || plen >= port_size ||
        strspn(p, "0123456789") != plen) {
        return -1;
    }
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    memcpy(port, p, plen + 1);
    return 0;
}

static int wait_fd(int fd, short events, long long deadline)
{
    for (;;) {
        long long left = deadline - now_ms();
        if (left <= 0) {
            return -1;
        }
        struct pollfd p = {fd, events, 0};
        int n = poll(&p, 1, (int)(left > 1000000 ? 1000000 : left));
        if (n > 0) {
            return 0;
        }
        if (n < 0 && errno != EINTR) {
            return -1;
        }
    }
}

static int dial(const char *hostport, long long deadline, char *err, size_t err_size)
{
    char host[256], port[16];
    if (kvc_split_hostport(hostport, host, sizeof host, port, sizeof port) != 0) {
        set_err(err, err_size, "bad address %s", hostport);
        return -1;
    }
    struct addrinfo hints = {0}, *res;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rv = getaddrinfo(host, port, &hints, &res);
    if (rv != 0) {
        set_err(err, err_size, "resolve %s: %s", hostport, gai_strerror(rv));
        return -1;
    }
    int fd = -1;
    for (struct addrinfo *ai = res; ai != NULL && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
                    ai->ai_protocol);
        if (fd < 0) {
            continue;
        }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
            int e = errno;
            socklen_t elen = sizeof e;
            if (e == EINPROGRESS) {
                if (wait_fd(fd, POLLOUT, deadline) != 0) {
                    e = ETIMEDOUT;
                } else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &elen) != 0) {
                    e = errno;
                }
            }
            if (e != 0) {
                set_err(err, err_size, "connect %s: %s", hostport, strerror(e));
                close(fd);
                fd = -1;
            }
        }
    }
    freeaddrinfo(res);
    return fd;
}

static int send_all(int fd, const char *p, size_t len, long long deadline)
{
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
        } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            if (wait_fd(fd, POLLOUT, deadline) != 0) {
                return -1;
            }
        } else {
            return -1;
        }
    }
    return 0;
}

/* Finds header `name` in the header block [h, end); copies its value. */
static char *find_header(const char *h, const char *end, const char *name)
{
    size_t nlen = strlen(name);
    while (h < end) {
        const char *eol = strstr(h, "\r\n");
        if (eol == NULL || eol > end) {
            eol = end;
        }
        if ((size_t)(eol - h) > nlen && strncasecmp(h, name, nlen) == 0 && h[nlen] == ':') {
            const char *v = h + nlen + 1;
            while (v < eol && (*v == ' ' || *v == '\t')) {
                v++;
            }
            return strndup(v, (size_t)(eol - v));
        }
        h = eol + 2;
    }
    return NULL;
}

static int parse_response(char *buf, size_t len, kvc_response_t *out, char *err,
                          size_t err_size)
{
    char *hend = strstr(buf, "\r\n\r\n");
    int status;
    if (hend == NULL || sscanf(buf, "HTTP/1.%*d %d", &status) != 1) {
        set_err(err, err_size, "malformed HTTP response");
        return -1;
    }
    const char *body = hend + 4;
    size_t body_len = len - (size_t)(body - buf);
    char *cl = find_header(buf, hend, "Content-Length");
    if (cl != NULL) {
        char *endp;
        unsigned long long n = strtoull(cl, &endp, 10);
        bool bad = *endp != '\0' || n > body_len;
        free(cl);
        if (bad) {
            set_err(err, err_size, "truncated HTTP response");
            return -1;
        }
        body_len = (size_t)n;
    }
    out->status = status;
    out->location = find_header(buf, hend, "Location");
    out->body = malloc(body_len + 1);
    if (out->body == NULL) {
        kvc_response_free(out);
        set_err(err, err_size, "out of memory");
        return -1;
    }
    memcpy(out->body, body, body_len);
    out->body[body_len] = '\0';
    out->body_len = body_len;
    return 0;
}

int kvc_request(const char *hostport, const char *method, const char *target,
                const void *body, size_t len, int timeout_ms, kvc_response_t *out,
                char *err, size_t err_size)
{
    memset(out, 0, sizeof *out);
    long long deadline = now_ms() + timeout_ms;
    int fd = dial(hostport, deadline, err, err_size);
    if (fd < 0) {
        return -1;
    }
    char head[2048];
    int n = snprintf(head, sizeof head,
                     "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n"
                     "Content-Length: %zu\r\n\r\n",
                     method, target, hostport, len);
    if (n < 0 || (size_t)n >= sizeof head) {
        close(fd);
        set_err(err, err_size, "request target too long");
        return -1;
    }
    if (send_all(fd, head, (size_t)n, deadline) != 0 ||
        (len > 0 && send_all(fd, body, len, deadline) != 0)) {
        set_err(err, err_size, "send to %s: %s", hostport, strerror(errno));
        close(fd);
        return -1;
    }
    size_t cap = 4096, used = 0;
    char *buf = malloc(cap);
    int rv = -1;
    while (buf != NULL) {
        if (used + 1 == cap) {
            char *nb = cap * 2 <= MAX_RESPONSE ? realloc(buf, cap * 2) : NULL;
            if (nb == NULL) {
                set_err(err, err_size, "response too large");
                break;
            }
            buf = nb;
            cap *= 2;
        }
        ssize_t r = recv(fd, buf + used, cap - used - 1, 0);
        if (r > 0) {
            used += (size_t)r;
        } else if (r == 0) {
            buf[used] = '\0';
            rv = parse_response(buf, used, out, err, err_size);
            break;
        } else if (errno == EAGAIN || errno == EINTR) {
            if (wait_fd(fd, POLLIN, deadline) != 0) {
                set_err(err, err_size, "timed out waiting for %s", hostport);
                break;
            }
        } else {
            set_err(err, err_size, "recv from %s: %s", hostport, strerror(errno));
            break;
        }
    }
    free(buf);
    close(fd);
    return rv;
}

int kvc_request_follow(const char *hostport, const char *method, const char *target,
                       const void *body, size_t len, int timeout_ms, kvc_response_t *out,
                       char *err, size_t err_size)
{
    char hp[512], tg[2048];
    snprintf(hp, sizeof hp, "%s", hostport);
    snprintf(tg, sizeof tg, "%s", target);
    for (int i = 0;; i++) {
        if (kvc_request(hp, method, tg, body, len, timeout_ms, out, err, err_size) != 0) {
            return -1;
        }
        if ((out->status != 307 && out->status != 308) || i == MAX_REDIRECTS) {
            return 0;
        }
        const char *loc = out->location;
        const char *slash = loc != NULL && strncmp(loc, "http://", 7) == 0
                                ? strchr(loc + 7, '/')
                                : NULL;
        if (slash == NULL || (size_t)(slash - (loc + 7)) >= sizeof hp ||
            strlen(slash) >= sizeof tg) {
            return 0; /* not one we can follow: hand it to the caller */
        }
        memcpy(hp, loc + 7, (size_t)(slash - (loc + 7)));
        hp[slash - (loc + 7)] = '\0';
        snprintf(tg, sizeof tg, "%s", slash);
        kvc_response_free(out);
    }
}
