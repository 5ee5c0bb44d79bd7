/* meta.json of the file snapshot store: a strict writer and parser for
 * exactly its format (include/craft/file_snapshot.h). */
#include "stores/file_snapshot_meta.h"

#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* meta.json writer                                                          */
/* ------------------------------------------------------------------------ */

typedef struct sbuf {
    char *p;
    size_t len;
    size_t cap;
    bool oom;
} sbuf_t;

static void sb_put(sbuf_t *b, const char *s, size_t n)
{
    if (b->oom) {
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        char *p;
        while (cap < b->len + n + 1) {
            cap *= 2;
        }
        p = realloc(b->p, cap);
        if (p == NULL) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_puts(sbuf_t *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

static void sb_u64(sbuf_t *b, uint64_t v)
{
    char tmp[24];
    int n = snprintf(tmp, sizeof tmp, "%" PRIu64, v);
    sb_put(b, tmp, (size_t)n);
}

/* A JSON string: quotes, backslashes and control bytes escaped, everything
 * else (UTF-8 included) as is. */
static void sb_str(sbuf_t *b, const char *s)
{
    sb_put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        switch (*p) {
        case '"': sb_put(b, "\\\"", 2); break;
        case '\\': sb_put(b, "\\\\", 2); break;
        case '\n': sb_put(b, "\\n", 2); break;
        case '\r': sb_put(b, "\\r", 2); break;
        case '\t': sb_put(b, "\\t", 2); break;
        case '\b': sb_put(b, "\\b", 2); break;
        case '\f': sb_put(b, "\\f", 2); break;
        default:
            if (*p < 0x20 || *p == 0x7f) {
                snprintf(esc, sizeof esc, "\\u%04x", *p);
                sb_put(b, esc, 6);
            } else {
                sb_put(b, (const char *)p, 1);
            }
        }
    }
    sb_put(b, "\"", 1);
}

/* Encodes meta.json into a malloc'd NUL-terminated string. */
int craft__snapshot_meta_encode(const craft_snapshot_meta_t *m, uint64_t crc,
                       char **out, size_t *len)
{
    sbuf_t b = {0};
    char hex[17];
    sb_puts(&b, "{\n  \"version\": ");
    sb_u64(&b, (uint64_t)m->version);
    sb_puts(&b, ",\n  \"id\": ");
    sb_str(&b, m->id);
    sb_puts(&b, ",\n  \"index\": ");
    sb_u64(&b, m->index);
    sb_puts(&b, ",\n  \"term\": ");
    sb_u64(&b, m->term);
    sb_puts(&b, ",\n  \"configuration\": {\n    \"servers\": [");
    for (size_t i = 0; i < m->configuration.n; i++) {
        const craft_server_t *s = &m->configuration.servers[i];
        sb_puts(&b, i == 0 ? "\n      {\"suffrage\": " : ",\n      {\"suffrage\": ");
        sb_puts(&b, s->suffrage == CRAFT_VOTER ? "\"Voter\"" : "\"Nonvoter\"");
        sb_puts(&b, ", \"id\": ");
        sb_str(&b, s->id ? s->id : "");
        sb_puts(&b, ", \"address\": ");
        sb_str(&b, s->address ? s->address : "");
        sb_puts(&b, "}");
    }
    sb_puts(&b, m->configuration.n > 0 ? "\n    ]\n  },\n" : "]\n  },\n");
    sb_puts(&b, "  \"configuration_index\": ");
    sb_u64(&b, m->configuration_index);
    sb_puts(&b, ",\n  \"size\": ");
    sb_u64(&b, (uint64_t)m->size);
    snprintf(hex, sizeof hex, "%016" PRIx64, crc);
    sb_puts(&b, ",\n  \"crc\": \"");
    sb_puts(&b, hex);
    sb_puts(&b, "\"\n}\n");
    if (b.oom) {
        free(b.p);
        return CRAFT_ENOMEM;
    }
    *out = b.p;
    *len = b.len;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* meta.json parser: strict, for exactly the format meta_encode writes      */
/* (any whitespace and key order). Every error is CRAFT_ECORRUPT except     */
/* CRAFT_ENOMEM.                                                             */
/* ------------------------------------------------------------------------ */

typedef struct jp {
    const char *p;
    const char *end;
} jp_t;

static void jp_ws(jp_t *j)
{
    while (j->p < j->end &&
           (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) {
        j->p++;
    }
}

/* Skips whitespace, then consumes `c` if it is next. */
static bool jp_eat(jp_t *j, char c)
{
    jp_ws(j);
    if (j->p < j->end && *j->p == c) {
        j->p++;
        return true;
    }
    return false;
}

static int jp_hex4(jp_t *j, unsigned *out)
{
    unsigned v = 0;
    if (j->end - j->p < 4) {
        return CRAFT_ECORRUPT;
    }
    for (int i = 0; i < 4; i++) {
        char c = *j->p++;
        v <<= 4;
        if (c >= '0' && c <= '9') {
            v |= (unsigned)(c - '0');
        } else if (c >= 'a' && c <= 'f') {
            v |= (unsigned)(c - 'a' + 10);
        } else if (c >= 'A' && c <= 'F') {
            v |= (unsigned)(c - 'A' + 10);
        } else {
            return CRAFT_ECORRUPT;
        }
    }
    *out = v;
    return 0;
}

static void put_utf8(sbuf_t *b, unsigned cp)
{
    char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xC0 | (cp >> 6));
        u[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | (cp >> 12));
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        u[0] = (char)(0xF0 | (cp >> 18));
        u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    sb_put(b, u, n);
}

/* A JSON string into a malloc'd C string. NUL (escaped or raw) is refused:
 * it cannot be part of a C string. */
static int jp_string(jp_t *j, char **out)
{
    sbuf_t b = {0};
    int rv = CRAFT_ECORRUPT;
    if (!jp_eat(j, '"')) {
        return CRAFT_ECORRUPT;
    }
    sb_put(&b, "", 0); /* an empty string is still allocated */
    while (j->p < j->end) {
        unsigned char c = (unsigned char)*j->p++;
        if (c == '"') {
            if (b.oom) {
                rv = CRAFT_ENOMEM;
                goto err;
            }
            *out = b.p;
            return 0;
        }
        if (c < 0x20) {
            goto err;
        }
        if (c != '\\') {
            sb_put(&b, (const char *)&c, 1);
            continue;
        }
        if (j->p >= j->end) {
            goto err;
        }
        c = (unsigned char)*j->p++;
        switch (c) {
        case '"': sb_put(&b, "\"", 1); break;
        case '\\': sb_put(&b, "\\", 1); break;
        case '/': sb_put(&b, "/", 1); break;
        case 'b': sb_put(&b, "\b", 1); break;
        case 'f': sb_put(&b, "\f", 1); break;
        case 'n': sb_put(&b, "\n", 1); break;
        case 'r': sb_put(&b, "\r", 1); break;
        case 't': sb_put(&b, "\t", 1); break;
        case 'u': {
            unsigned cp, lo;
            if (jp_hex4(j, &cp) != 0 || cp == 0 || (cp >= 0xDC00 && cp <= 0xDFFF)) {
                goto err;
            }
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                /* A high surrogate must be followed by an escaped low one. */
                if (j->end - j->p < 2 || j->p[0] != '\\' || j->p[1] != 'u') {
                    goto err;
                }
                j->p += 2;
                if (jp_hex4(j, &lo) != 0 || lo < 0xDC00 || lo > 0xDFFF) {
                    goto err;
                }
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            put_utf8(&b, cp);
            break;
        }
        default:
            goto err;
        }
    }
err:
    free(b.p);
    return rv;
}

/* An unsigned JSON integer: "0" or [1-9][0-9]*, no sign, fraction or
 * exponent, at most `max`. */
static int jp_uint(jp_t *j, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;
    const char *start;
    jp_ws(j);
    start = j->p;
    while (j->p < j->end && *j->p >= '0' && *j->p <= '9') {
        unsigned d = (unsigned)(*j->p - '0');
        if (v > (max - d) / 10) {
            return CRAFT_ECORRUPT;
        }
        v = v * 10 + d;
        j->p++;
    }
    if (j->p == start || (*start == '0' && j->p - start > 1)) {
        return CRAFT_ECORRUPT;
    }
    if (j->p < j->end && (*j->p == '.' || *j->p == 'e' || *j->p == 'E')) {
        return CRAFT_ECORRUPT;
    }
    *out = v;
    return 0;
}

/* Reads `"key":` into a malloc'd key. */
static int jp_key(jp_t *j, char **key)
{
    int rv = jp_string(j, key);
    if (rv != 0) {
        return rv;
    }
    if (!jp_eat(j, ':')) {
        free(*key);
        *key = NULL;
        return CRAFT_ECORRUPT;
    }
    return 0;
}

/* Calls member(j, key, arg) for each member of an object; it parses the
 * value. Duplicates and unknown keys are the member function's to refuse. */
static int jp_object(jp_t *j, int (*member)(jp_t *, const char *, void *),
                     void *arg)
{
    if (!jp_eat(j, '{')) {
        return CRAFT_ECORRUPT;
    }
    if (jp_eat(j, '}')) {
        return 0;
    }
    for (;;) {
        char *key;
        int rv = jp_key(j, &key);
        if (rv != 0) {
            return rv;
        }
        rv = member(j, key, arg);
        free(key);
        if (rv != 0) {
            return rv;
        }
        if (jp_eat(j, '}')) {
            return 0;
        }
        if (!jp_eat(j, ',')) {
            return CRAFT_ECORRUPT;
        }
    }
}

/* Marks `bit` seen; a second sighting (duplicate key) is corrupt. */
static int seen_once(unsigned *seen, unsigned bit)
{
    if (*seen & bit) {
        return CRAFT_ECORRUPT;
    }
    *seen |= bit;
    return 0;
}

typedef struct server_parse {
    craft_server_t *s;
    unsigned seen;
} server_parse_t;

static int server_member(jp_t *j, const char *key, void *arg)
{
    server_parse_t *sp = arg;
    char *v;
    int rv;
    if (strcmp(key, "suffrage") == 0) {
        if ((rv = seen_once(&sp->seen, 1)) != 0 || (rv = jp_string(j, &v)) != 0) {
            return rv;
        }
        if (strcmp(v, "Voter") == 0) {
            sp->s->suffrage = CRAFT_VOTER;
        } else if (strcmp(v, "Nonvoter") == 0) {
            sp->s->suffrage = CRAFT_NONVOTER;
        } else {
            rv = CRAFT_ECORRUPT;
        }
        free(v);
        return rv;
    }
    if (strcmp(key, "id") == 0) {
        if ((rv = seen_once(&sp->seen, 2)) != 0) {
            return rv;
        }
        return jp_string(j, &sp->s->id);
    }
    if (strcmp(key, "address") == 0) {
        if ((rv = seen_once(&sp->seen, 4)) != 0) {
            return rv;
        }
        return jp_string(j, &sp->s->address);
    }
    return CRAFT_ECORRUPT;
}

static int jp_servers(jp_t *j, craft_configuration_t *c)
{
    size_t cap = 0;
    if (!jp_eat(j, '[')) {
        return CRAFT_ECORRUPT;
    }
    if (jp_eat(j, ']')) {
        return 0;
    }
    for (;;) {
        server_parse_t sp = {0};
        int rv;
        if (c->n == cap) {
            size_t ncap = cap ? cap * 2 : 4;
            craft_server_t *ns = realloc(c->servers, ncap * sizeof *ns);
            if (ns == NULL) {
                return CRAFT_ENOMEM;
            }
            c->servers = ns;
            cap = ncap;
        }
        /* Counted before parsing so craft_configuration_free releases a
         * half-parsed server's strings. */
        sp.s = &c->servers[c->n++];
        memset(sp.s, 0, sizeof *sp.s);
        rv = jp_object(j, server_member, &sp);
        if (rv != 0) {
            return rv;
        }
        if (sp.seen != 7) {
            return CRAFT_ECORRUPT;
        }
        if (jp_eat(j, ']')) {
            return 0;
        }
        if (!jp_eat(j, ',')) {
            return CRAFT_ECORRUPT;
        }
    }
}

typedef struct config_parse {
    craft_configuration_t *c;
    unsigned seen;
} config_parse_t;

static int config_member(jp_t *j, const char *key, void *arg)
{
    config_parse_t *cp = arg;
    int rv;
    if (strcmp(key, "servers") != 0) {
        return CRAFT_ECORRUPT;
    }
    if ((rv = seen_once(&cp->seen, 1)) != 0) {
        return rv;
    }
    return jp_servers(j, cp->c);
}

enum {
    M_VERSION = 1 << 0,
    M_ID = 1 << 1,
    M_INDEX = 1 << 2,
    M_TERM = 1 << 3,
    M_CONFIGURATION = 1 << 4,
    M_CONFIGURATION_INDEX = 1 << 5,
    M_SIZE = 1 << 6,
    M_CRC = 1 << 7,
    M_ALL = (1 << 8) - 1
};

typedef struct meta_parse {
    craft_snapshot_meta_t *m;
    uint64_t crc;
    unsigned seen;
} meta_parse_t;

static int meta_member(jp_t *j, const char *key, void *arg)
{
    meta_parse_t *mp = arg;
    uint64_t v;
    int rv;
    if (strcmp(key, "version") == 0) {
        if ((rv = seen_once(&mp->seen, M_VERSION)) != 0 ||
            (rv = jp_uint(j, INT_MAX, &v)) != 0) {
            return rv;
        }
        mp->m->version = (int)v;
    } else if (strcmp(key, "id") == 0) {
        if ((rv = seen_once(&mp->seen, M_ID)) != 0 ||
            (rv = jp_string(j, &mp->m->id)) != 0) {
            return rv;
        }
    } else if (strcmp(key, "index") == 0) {
        if ((rv = seen_once(&mp->seen, M_INDEX)) != 0 ||
            (rv = jp_uint(j, UINT64_MAX, &mp->m->index)) != 0) {
            return rv;
        }
    } else if (strcmp(key, "term") == 0) {
        if ((rv = seen_once(&mp->seen, M_TERM)) != 0 ||
            (rv = jp_uint(j, UINT64_MAX, &mp->m->term)) != 0) {
            return rv;
        }
    } else if (strcmp(key, "configuration") == 0) {
        config_parse_t cp = {&mp->m->configuration, 0};
        if ((rv = seen_once(&mp->seen, M_CONFIGURATION)) != 0 ||
            (rv = jp_object(j, config_member, &cp)) != 0) {
            return rv;
        }
        if (cp.seen != 1) {
            return CRAFT_ECORRUPT;
        }
    } else if (strcmp(key, "configuration_index") == 0) {
        if ((rv = seen_once(&mp->seen, M_CONFIGURATION_INDEX)) != 0 ||
            (rv = jp_uint(j, UINT64_MAX, &mp->m->configuration_index)) != 0) {
            return rv;
        }
    } else if (strcmp(key, "size") == 0) {
        if ((rv = seen_once(&mp->seen, M_SIZE)) != 0 ||
            (rv = jp_uint(j, INT64_MAX, &v)) != 0) {
            return rv;
        }
        mp->m->size = (int64_t)v;
    } else if (strcmp(key, "crc") == 0) {
        char *hex, *end;
        if ((rv = seen_once(&mp->seen, M_CRC)) != 0 ||
            (rv = jp_string(j, &hex)) != 0) {
            return rv;
        }
        rv = CRAFT_ECORRUPT;
        if (strlen(hex) == 16 && strspn(hex, "0123456789abcdef") == 16) {
            mp->crc = strtoull(hex, &end, 16);
            rv = *end == '\0' ? 0 : CRAFT_ECORRUPT;
        }
        free(hex);
        return rv;
    } else {
        return CRAFT_ECORRUPT;
    }
    return 0;
}

/* Parses meta.json text into a malloc'd meta. */
int craft__snapshot_meta_decode(const char *text, size_t len,
                       craft_snapshot_meta_t **out, uint64_t *crc)
{
    jp_t j = {text, text + len};
    meta_parse_t mp = {0};
    int rv;
    mp.m = calloc(1, sizeof *mp.m);
    if (mp.m == NULL) {
        return CRAFT_ENOMEM;
    }
    rv = jp_object(&j, meta_member, &mp);
    if (rv == 0) {
        jp_ws(&j);
        if (j.p != j.end || mp.seen != M_ALL) {
            rv = CRAFT_ECORRUPT;
        }
    }
    if (rv != 0) {
        craft_snapshot_meta_free(mp.m);
        return rv;
    }
    *out = mp.m;
    *crc = mp.crc;
    return 0;
}
