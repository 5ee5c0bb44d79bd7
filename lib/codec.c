/* msgpack helpers over msgpack-c (go-msgpack-exact writer on its packer,
 * a cursor over its decoded trees, a resumable scanner in front of it) and
 * hashicorp's configuration-entry encoding. */
#include "lib/codec.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Writer                                                                    */
/* ------------------------------------------------------------------------ */

void craft__mp_buf_init(craft__mp_buf_t *b)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->err = 0;
}

void craft__mp_buf_free(craft__mp_buf_t *b)
{
    if (b == NULL) {
        return;
    }
    free(b->data);
    craft__mp_buf_init(b);
}

void craft__mp_buf_reset(craft__mp_buf_t *b)
{
    b->len = 0;
    b->err = 0;
}

int craft__mp_buf_reserve(craft__mp_buf_t *b, size_t n)
{
    if (b->err != 0) {
        return b->err;
    }
    if (n <= b->cap - b->len) {
        return 0;
    }
    if (n > SIZE_MAX / 2 - b->len) {
        b->err = CRAFT_ENOMEM;
        return b->err;
    }
    size_t cap = b->cap < 64 ? 64 : b->cap;
    while (cap - b->len < n) {
        cap *= 2;
    }
    uint8_t *d = realloc(b->data, cap);
    if (d == NULL) {
        b->err = CRAFT_ENOMEM;
        return b->err;
    }
    b->data = d;
    b->cap = cap;
    return 0;
}

void *craft__mp_buf_steal(craft__mp_buf_t *b, size_t *len)
{
    if (b->err == 0 && b->data == NULL) {
        craft__mp_buf_reserve(b, 1);
    }
    if (b->err != 0) {
        craft__mp_buf_free(b);
        *len = 0;
        return NULL;
    }
    void *p = b->data;
    *len = b->len;
    craft__mp_buf_init(b);
    return p;
}

void craft__mp_put_bytes(craft__mp_buf_t *b, const void *p, size_t n)
{
    if (n == 0 || craft__mp_buf_reserve(b, n) != 0) {
        return;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

/* msgpack-c's packer writes through this into a craft buffer. */
static int pack_write(void *data, const char *p, size_t n)
{
    craft__mp_buf_t *b = data;
    craft__mp_put_bytes(b, p, n);
    return b->err == 0 ? 0 : -1;
}

static void packer(msgpack_packer *pk, craft__mp_buf_t *b)
{
    msgpack_packer_init(pk, b, pack_write);
}

void craft__mp_put_nil(craft__mp_buf_t *b)
{
    msgpack_packer pk;
    packer(&pk, b);
    msgpack_pack_nil(&pk);
}

void craft__mp_put_bool(craft__mp_buf_t *b, bool v)
{
    msgpack_packer pk;
    packer(&pk, b);
    if (v) {
        msgpack_pack_true(&pk);
    } else {
        msgpack_pack_false(&pk);
    }
}

/* msgpack-c picks the smallest form: fixint, cc, cd, ce, cf. */
void craft__mp_put_uint(craft__mp_buf_t *b, uint64_t v)
{
    msgpack_packer pk;
    packer(&pk, b);
    msgpack_pack_uint64(&pk, v);
}

void craft__mp_put_int(craft__mp_buf_t *b, int64_t v, craft__mp_int_form_t form)
{
    msgpack_packer pk;
    packer(&pk, b);
    if (v >= 0 && (form == CRAFT__MP_INT_V055 || v <= 0x7f)) {
        msgpack_pack_uint64(&pk, (uint64_t)v);
    } else if (v > INT32_MAX) { /* v2: positives above 127 as signed */
        msgpack_pack_fix_int64(&pk, v);
    } else if (v > INT16_MAX) {
        msgpack_pack_fix_int32(&pk, (int32_t)v);
    } else if (v > 0) {
        msgpack_pack_fix_int16(&pk, (int16_t)v);
    } else {
        /* negatives: the smallest of fixneg, d0..d3 */
        msgpack_pack_int64(&pk, v);
    }
}

/* go-msgpack writes strings and []byte as raw (the pre-2013 spec: no str8,
 * no bin): msgpack-c's v4raw forms. */
void craft__mp_put_str(craft__mp_buf_t *b, const void *p, size_t n)
{
    if (n > UINT32_MAX) {
        if (b->err == 0) {
            b->err = CRAFT_EINVAL;
        }
        return;
    }
    msgpack_packer pk;
    packer(&pk, b);
    if (msgpack_pack_v4raw(&pk, n) == 0 && n > 0) {
        msgpack_pack_v4raw_body(&pk, p, n);
    }
}

void craft__mp_put_cstr_or_nil(craft__mp_buf_t *b, const char *s)
{
    if (s == NULL) {
        craft__mp_put_nil(b);
    } else {
        craft__mp_put_str(b, s, strlen(s));
    }
}

void craft__mp_put_blob_or_nil(craft__mp_buf_t *b, const void *p, size_t n)
{
    if (p == NULL) {
        craft__mp_put_nil(b);
    } else {
        craft__mp_put_str(b, p, n);
    }
}

void craft__mp_put_map(craft__mp_buf_t *b, uint32_t n)
{
    msgpack_packer pk;
    packer(&pk, b);
    msgpack_pack_map(&pk, n);
}

void craft__mp_put_array(craft__mp_buf_t *b, uint32_t n)
{
    msgpack_packer pk;
    packer(&pk, b);
    msgpack_pack_array(&pk, n);
}

/* ------------------------------------------------------------------------ */
/* Value headers                                                             */
/* ------------------------------------------------------------------------ */

/* One decoded value header. For str/bin/ext, `len` payload bytes follow the
 * `hdr` header bytes (an ext's type byte is part of the header). For ints
 * the value bytes are part of the header. */
typedef struct mp_head {
    craft__mp_type_t type;
    size_t hdr;
    uint64_t len;   /* str/bin/ext payload length */
    uint32_t count; /* array items / map pairs */
    uint64_t u;     /* UINT value */
    int64_t i;      /* INT value */
    bool b;         /* BOOL value */
} mp_head_t;

static uint64_t be(const uint8_t *p, int width)
{
    uint64_t v = 0;
    for (int i = 0; i < width; i++) {
        v = (v << 8) | p[i];
    }
    return v;
}

/* Decodes the header at p[pos]. SHORT when the header itself is incomplete
 * (payloads are not checked here). */
static int mp_head(const uint8_t *p, size_t len, size_t pos, mp_head_t *h)
{
    if (pos >= len) {
        return CRAFT__MP_SHORT;
    }
    const uint8_t c = p[pos];
    size_t avail = len - pos - 1; /* bytes after the marker */
    int width = 0;                /* big-endian field after the marker */
    memset(h, 0, sizeof *h);
    h->hdr = 1;

    if (c <= 0x7f) {
        h->type = CRAFT__MP_T_UINT;
        h->u = c;
        return CRAFT__MP_OK;
    }
    if (c >= 0xe0) {
        h->type = CRAFT__MP_T_INT;
        h->i = (int8_t)c;
        return CRAFT__MP_OK;
    }
    if (c <= 0x8f) {
        h->type = CRAFT__MP_T_MAP;
        h->count = c & 0x0f;
        return CRAFT__MP_OK;
    }
    if (c <= 0x9f) {
        h->type = CRAFT__MP_T_ARRAY;
        h->count = c & 0x0f;
        return CRAFT__MP_OK;
    }
    if (c <= 0xbf) {
        h->type = CRAFT__MP_T_STR;
        h->len = c & 0x1f;
        return CRAFT__MP_OK;
    }
    switch (c) {
    case 0xc0:
        h->type = CRAFT__MP_T_NIL;
        return CRAFT__MP_OK;
    case 0xc1:
        h->type = CRAFT__MP_T_INVALID;
        return CRAFT__MP_OK;
    case 0xc2:
    case 0xc3:
        h->type = CRAFT__MP_T_BOOL;
        h->b = c == 0xc3;
        return CRAFT__MP_OK;
    case 0xc4: case 0xc5: case 0xc6:
        h->type = CRAFT__MP_T_BIN;
        width = 1 << (c - 0xc4);
        break;
    case 0xc7: case 0xc8: case 0xc9:
        h->type = CRAFT__MP_T_EXT;
        width = 1 << (c - 0xc7);
        break;
    case 0xca:
        h->type = CRAFT__MP_T_FLOAT;
        width = 4;
        break;
    case 0xcb:
        h->type = CRAFT__MP_T_FLOAT;
        width = 8;
        break;
    case 0xcc: case 0xcd: case 0xce: case 0xcf:
        h->type = CRAFT__MP_T_UINT;
        width = 1 << (c - 0xcc);
        break;
    case 0xd0: case 0xd1: case 0xd2: case 0xd3:
        h->type = CRAFT__MP_T_INT;
        width = 1 << (c - 0xd0);
        break;
    case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8:
        h->type = CRAFT__MP_T_EXT;
        if (avail < 1) {
            return CRAFT__MP_SHORT;
        }
        h->hdr = 2; /* marker + ext type */
        h->len = (uint64_t)1 << (c - 0xd4);
        return CRAFT__MP_OK;
    case 0xd9: case 0xda: case 0xdb:
        h->type = CRAFT__MP_T_STR;
        width = 1 << (c - 0xd9);
        break;
    case 0xdc: case 0xdd:
        h->type = CRAFT__MP_T_ARRAY;
        width = c == 0xdc ? 2 : 4;
        break;
    default: /* 0xde, 0xdf */
        h->type = CRAFT__MP_T_MAP;
        width = c == 0xde ? 2 : 4;
        break;
    }
    if (avail < (size_t)width) {
        return CRAFT__MP_SHORT;
    }
    uint64_t v = be(p + pos + 1, width);
    h->hdr = 1 + (size_t)width;
    switch (h->type) {
    case CRAFT__MP_T_UINT:
        h->u = v;
        break;
    case CRAFT__MP_T_INT:
        switch (width) {
        case 1: h->i = (int8_t)(uint8_t)v; break;
        case 2: h->i = (int16_t)(uint16_t)v; break;
        case 4: h->i = (int32_t)(uint32_t)v; break;
        default: h->i = (int64_t)v; break;
        }
        break;
    case CRAFT__MP_T_ARRAY:
    case CRAFT__MP_T_MAP:
        h->count = (uint32_t)v;
        break;
    case CRAFT__MP_T_EXT:
        if (avail < (size_t)width + 1) {
            return CRAFT__MP_SHORT;
        }
        h->hdr += 1; /* ext type byte */
        h->len = v;
        break;
    case CRAFT__MP_T_FLOAT:
        h->hdr = 1; /* the float bytes are its payload */
        h->len = (uint64_t)width;
        break;
    default: /* STR, BIN */
        h->len = v;
        break;
    }
    return CRAFT__MP_OK;
}

/* ------------------------------------------------------------------------ */
/* Reader                                                                    */
/* ------------------------------------------------------------------------ */

void craft__mp_reader_init(craft__mp_reader_t *r, const void *p, size_t len,
                           unsigned max_depth, size_t max_str)
{
    r->p = p;
    r->len = len;
    r->pos = 0;
    r->depth = 0;
    r->max_depth = (max_depth == 0 || max_depth > CRAFT__MP_MAX_DEPTH)
                       ? CRAFT__MP_MAX_DEPTH
                       : max_depth;
    r->max_str = max_str == 0 ? len : max_str;
    r->reason = NULL;
    r->scanned = false;
    r->zone = NULL;
    r->top_pos = SIZE_MAX;
    r->top_end = 0;
}

void craft__mp_reader_scanned(craft__mp_reader_t *r)
{
    r->scanned = true;
}

/* One msgpack-c zone per thread is kept between readers (a reader holds it
 * only while inside a top-level value), so decoding a message costs no
 * zone allocation once its thread has decoded one before. */
static pthread_once_t zone_once = PTHREAD_ONCE_INIT;
static pthread_key_t zone_key;
static bool zone_key_ok;

static void zone_key_free(void *z)
{
    msgpack_zone_free(z);
}

static void zone_key_init(void)
{
    zone_key_ok = pthread_key_create(&zone_key, zone_key_free) == 0;
}

static msgpack_zone *zone_take(void)
{
    pthread_once(&zone_once, zone_key_init);
    if (zone_key_ok) {
        msgpack_zone *z = pthread_getspecific(zone_key);
        if (z != NULL && pthread_setspecific(zone_key, NULL) == 0) {
            return z;
        }
    }
    return msgpack_zone_new(MSGPACK_ZONE_CHUNK_SIZE);
}

static void zone_give(msgpack_zone *z)
{
    msgpack_zone_clear(z); /* keeps one chunk */
    if (zone_key_ok && pthread_getspecific(zone_key) == NULL &&
        pthread_setspecific(zone_key, z) == 0) {
        return;
    }
    msgpack_zone_free(z);
}

void craft__mp_reader_destroy(craft__mp_reader_t *r)
{
    if (r->zone != NULL) {
        zone_give(r->zone);
        r->zone = NULL;
    }
    r->top_pos = SIZE_MAX;
}

static int bad(craft__mp_reader_t *r, const char *why)
{
    r->reason = why;
    return CRAFT__MP_BAD;
}

/* The top-level value at `pos`, decoded by msgpack-c once the scanner has
 * found it complete and within the limits (so msgpack-c never sizes an
 * array from a count the bytes cannot hold, nor nests past its stack). */
static int top_value(craft__mp_reader_t *r, const msgpack_object **o)
{
    if (r->top_pos == r->pos) {
        *o = &r->top;
        return CRAFT__MP_OK;
    }
    r->top_pos = SIZE_MAX;
    if (r->pos >= r->len) {
        return CRAFT__MP_SHORT;
    }
    size_t end = r->len;
    if (!r->scanned) {
        craft__mp_scan_t s;
        craft__mp_scan_init(&s, 1, SIZE_MAX, r->max_str, CRAFT__MP_MAX_DEPTH);
        int rv = craft__mp_scan_run(&s, r->p + r->pos, r->len - r->pos);
        if (rv == CRAFT__MP_BAD) {
            return bad(r, s.reason);
        }
        if (rv != CRAFT__MP_OK) {
            return rv;
        }
        end = r->pos + s.pos;
    }
    if (r->zone == NULL) {
        if ((r->zone = zone_take()) == NULL) {
            return CRAFT_ENOMEM;
        }
    } else {
        msgpack_zone_clear(r->zone);
    }
    size_t off = r->pos;
    msgpack_unpack_return ur =
        msgpack_unpack((const char *)r->p, end, &off, r->zone, &r->top);
    if (ur == MSGPACK_UNPACK_NOMEM_ERROR) {
        return CRAFT_ENOMEM;
    }
    if (ur == MSGPACK_UNPACK_CONTINUE) {
        return CRAFT__MP_SHORT; /* the scan found the value complete: not expected */
    }
    if (ur != MSGPACK_UNPACK_SUCCESS && ur != MSGPACK_UNPACK_EXTRA_BYTES) {
        return bad(r, "msgpack-c rejected the value");
    }
    r->top_pos = r->pos;
    r->top_end = off;
    *o = &r->top;
    return CRAFT__MP_OK;
}

/* The next value, not consumed. */
static int next(craft__mp_reader_t *r, const msgpack_object **o)
{
    if (r->depth == 0) {
        return top_value(r, o);
    }
    const craft__mp_level_t *l = &r->lv[r->depth - 1];
    if (l->i >= l->n) {
        return bad(r, "read past the end of a map or array");
    }
    if (l->kv != NULL) {
        const msgpack_object_kv *kv = &l->kv[l->i / 2];
        *o = l->i % 2 == 0 ? &kv->key : &kv->val;
    } else {
        *o = &l->items[l->i];
    }
    return CRAFT__MP_OK;
}

/* Moves past the value next() returned. A finished top-level value's tree
 * is released at once (the views handed out point into the buffer). */
static void consume(craft__mp_reader_t *r)
{
    if (r->depth > 0) {
        r->lv[r->depth - 1].i++;
        return;
    }
    r->pos = r->top_end;
    craft__mp_reader_destroy(r);
}

bool craft__mp_next_is_nil(craft__mp_reader_t *r)
{
    const msgpack_object *o;
    return next(r, &o) == CRAFT__MP_OK && o->type == MSGPACK_OBJECT_NIL;
}

static craft__mp_type_t type_of(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL: return CRAFT__MP_T_NIL;
    case MSGPACK_OBJECT_BOOLEAN: return CRAFT__MP_T_BOOL;
    case MSGPACK_OBJECT_POSITIVE_INTEGER: return CRAFT__MP_T_UINT;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: return CRAFT__MP_T_INT;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: return CRAFT__MP_T_FLOAT;
    case MSGPACK_OBJECT_STR: return CRAFT__MP_T_STR;
    case MSGPACK_OBJECT_BIN: return CRAFT__MP_T_BIN;
    case MSGPACK_OBJECT_ARRAY: return CRAFT__MP_T_ARRAY;
    case MSGPACK_OBJECT_MAP: return CRAFT__MP_T_MAP;
    case MSGPACK_OBJECT_EXT: return CRAFT__MP_T_EXT;
    }
    return CRAFT__MP_T_INVALID;
}

int craft__mp_peek(craft__mp_reader_t *r, craft__mp_type_t *t)
{
    const msgpack_object *o;
    int rv = next(r, &o);
    if (rv == CRAFT__MP_OK) {
        *t = type_of(o);
    }
    return rv;
}

bool craft__mp_try_nil(craft__mp_reader_t *r)
{
    if (craft__mp_next_is_nil(r)) {
        consume(r);
        return true;
    }
    return false;
}

static int read_container(craft__mp_reader_t *r, msgpack_object_type want,
                          uint32_t *n)
{
    const msgpack_object *o;
    int rv = next(r, &o);
    if (rv != CRAFT__MP_OK) {
        return rv;
    }
    if (o->type != want) {
        return bad(r, want == MSGPACK_OBJECT_MAP ? "expected a map"
                                                 : "expected an array");
    }
    if (r->depth >= r->max_depth) {
        return bad(r, "nesting too deep");
    }
    craft__mp_level_t *l = &r->lv[r->depth];
    if (want == MSGPACK_OBJECT_MAP) {
        l->kv = o->via.map.ptr;
        l->items = NULL;
        l->n = (uint64_t)o->via.map.size * 2;
        *n = o->via.map.size;
    } else {
        l->items = o->via.array.ptr;
        l->kv = NULL;
        l->n = o->via.array.size;
        *n = o->via.array.size;
    }
    l->i = 0;
    r->depth++;
    return CRAFT__MP_OK;
}

int craft__mp_read_map(craft__mp_reader_t *r, uint32_t *n)
{
    return read_container(r, MSGPACK_OBJECT_MAP, n);
}

int craft__mp_read_array(craft__mp_reader_t *r, uint32_t *n)
{
    return read_container(r, MSGPACK_OBJECT_ARRAY, n);
}

void craft__mp_leave(craft__mp_reader_t *r)
{
    if (r->depth > 0) {
        r->depth--;
        consume(r);
    }
}

int craft__mp_read_str(craft__mp_reader_t *r, const uint8_t **s, size_t *n)
{
    const msgpack_object *o;
    int rv = next(r, &o);
    if (rv != CRAFT__MP_OK) {
        return rv;
    }
    /* STR and BIN share msgpack-c's layout (size, ptr) */
    if (o->type == MSGPACK_OBJECT_STR) {
        *s = (const uint8_t *)o->via.str.ptr;
        *n = o->via.str.size;
    } else if (o->type == MSGPACK_OBJECT_BIN) {
        *s = (const uint8_t *)o->via.bin.ptr;
        *n = o->via.bin.size;
    } else {
        return bad(r, "expected a string");
    }
    if (*n > r->max_str) {
        return bad(r, "string too long");
    }
    consume(r);
    return CRAFT__MP_OK;
}

int craft__mp_read_uint(craft__mp_reader_t *r, uint64_t *v)
{
    const msgpack_object *o;
    int rv = next(r, &o);
    if (rv != CRAFT__MP_OK) {
        return rv;
    }
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        *v = 0;
        break;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        *v = o->via.u64;
        break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return bad(r, "negative value for an unsigned field");
    default:
        return bad(r, "expected an integer");
    }
    consume(r);
    return CRAFT__MP_OK;
}

int craft__mp_read_int(craft__mp_reader_t *r, int64_t *v)
{
    const msgpack_object *o;
    int rv = next(r, &o);
    if (rv != CRAFT__MP_OK) {
        return rv;
    }
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        *v = 0;
        break;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        if (o->via.u64 > INT64_MAX) {
            return bad(r, "integer overflows a signed field");
        }
        *v = (int64_t)o->via.u64;
        break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        *v = o->via.i64;
        break;
    default:
        return bad(r, "expected an integer");
    }
    consume(r);
    return CRAFT__MP_OK;
}

int craft__mp_read_bool(craft__mp_reader_t *r, bool *v)
{
    const msgpack_object *o;
    int rv = next(r, &o);
    if (rv != CRAFT__MP_OK) {
        return rv;
    }
    if (o->type == MSGPACK_OBJECT_BOOLEAN) {
        *v = o->via.boolean;
    } else if (o->type == MSGPACK_OBJECT_NIL) {
        *v = false;
    } else if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= 1) {
        *v = o->via.u64 == 1; /* go-msgpack accepts 0/1 for bools */
    } else {
        return bad(r, "expected a bool");
    }
    consume(r);
    return CRAFT__MP_OK;
}

int craft__mp_read_ext(craft__mp_reader_t *r, int8_t *type, const uint8_t **data,
                       size_t *n)
{
    const msgpack_object *o;
    int rv = next(r, &o);
    if (rv != CRAFT__MP_OK) {
        return rv;
    }
    if (o->type != MSGPACK_OBJECT_EXT) {
        return bad(r, "expected an ext value");
    }
    if (o->via.ext.size > r->max_str) {
        return bad(r, "ext value too long");
    }
    *type = o->via.ext.type;
    *data = (const uint8_t *)o->via.ext.ptr;
    *n = o->via.ext.size;
    consume(r);
    return CRAFT__MP_OK;
}

/* Nesting of a decoded value (non-empty maps and arrays, as the scanner
 * counts it), or limit + 1 when it is deeper than `limit`. */
static unsigned nesting(const msgpack_object *o, unsigned limit)
{
    bool array = o->type == MSGPACK_OBJECT_ARRAY && o->via.array.size > 0;
    bool map = o->type == MSGPACK_OBJECT_MAP && o->via.map.size > 0;
    if (!array && !map) {
        return 0;
    }
    if (limit == 0) {
        return 1;
    }
    unsigned deepest = 0;
    uint32_t n = array ? o->via.array.size : o->via.map.size;
    for (uint32_t i = 0; i < n && deepest < limit; i++) {
        unsigned d;
        if (array) {
            d = nesting(&o->via.array.ptr[i], limit - 1);
        } else {
            unsigned k = nesting(&o->via.map.ptr[i].key, limit - 1);
            unsigned v = nesting(&o->via.map.ptr[i].val, limit - 1);
            d = k > v ? k : v;
        }
        deepest = d > deepest ? d : deepest;
    }
    return deepest + 1;
}

int craft__mp_skip(craft__mp_reader_t *r)
{
    const msgpack_object *o;
    int rv = next(r, &o);
    if (rv != CRAFT__MP_OK) {
        return rv;
    }
    unsigned left = r->max_depth - r->depth;
    if (nesting(o, left) > left) {
        return bad(r, "nesting too deep");
    }
    consume(r);
    return CRAFT__MP_OK;
}

int craft__mp_read_cstr_dup(craft__mp_reader_t *r, char **out)
{
    const uint8_t *s;
    size_t n;
    *out = NULL;
    if (craft__mp_try_nil(r)) {
        return CRAFT__MP_OK;
    }
    int rv = craft__mp_read_str(r, &s, &n);
    if (rv != CRAFT__MP_OK) {
        return rv;
    }
    if (n > 0 && memchr(s, 0, n) != NULL) {
        return bad(r, "NUL byte inside a string");
    }
    char *c = malloc(n + 1);
    if (c == NULL) {
        return CRAFT_ENOMEM;
    }
    if (n > 0) {
        memcpy(c, s, n);
    }
    c[n] = '\0';
    *out = c;
    return CRAFT__MP_OK;
}

int craft__mp_read_blob_dup(craft__mp_reader_t *r, void **out, size_t *n)
{
    const uint8_t *s;
    size_t len;
    *out = NULL;
    *n = 0;
    if (craft__mp_try_nil(r)) {
        return CRAFT__MP_OK;
    }
    int rv = craft__mp_read_str(r, &s, &len);
    if (rv != CRAFT__MP_OK) {
        return rv;
    }
    void *c = malloc(len > 0 ? len : 1);
    if (c == NULL) {
        return CRAFT_ENOMEM;
    }
    if (len > 0) {
        memcpy(c, s, len);
    }
    *out = c;
    *n = len;
    return CRAFT__MP_OK;
}

bool craft__mp_key_is(const uint8_t *key, size_t n, const char *name)
{
    size_t l = strlen(name);
    return l == n && memcmp(key, name, n) == 0;
}

/* ------------------------------------------------------------------------ */
/* Scanner                                                                   */
/* ------------------------------------------------------------------------ */

void craft__mp_scan_init(craft__mp_scan_t *s, unsigned count, size_t max_total,
                         size_t max_str, unsigned max_depth)
{
    s->max_total = max_total;
    s->max_str = max_str;
    s->max_depth = max_depth > CRAFT__MP_MAX_DEPTH ? CRAFT__MP_MAX_DEPTH
                                                   : max_depth;
    s->pos = 0;
    s->need = 0;
    s->depth = 0;
    s->rem[0] = count;
    s->reason = NULL;
}

static int scan_bad(craft__mp_scan_t *s, const char *why)
{
    s->reason = why;
    return CRAFT__MP_BAD;
}

int craft__mp_scan_run(craft__mp_scan_t *s, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    for (;;) {
        /* close finished containers */
        while (s->rem[s->depth] == 0) {
            if (s->depth == 0) {
                /* all values seen; their payloads must be present */
                if (s->pos > len) {
                    s->need = s->pos;
                    return CRAFT__MP_SHORT;
                }
                return CRAFT__MP_OK;
            }
            s->depth--;
        }
        if (s->pos >= len) {
            s->need = s->pos + 1;
            return CRAFT__MP_SHORT;
        }
        mp_head_t h;
        int rv = mp_head(p, len, s->pos, &h);
        if (rv == CRAFT__MP_SHORT) {
            /* the header itself is cut: at least one more byte */
            s->need = len + 1;
            return CRAFT__MP_SHORT;
        }
        if (h.type == CRAFT__MP_T_INVALID) {
            return scan_bad(s, "invalid msgpack byte 0xc1");
        }
        uint64_t payload = 0;
        switch (h.type) {
        case CRAFT__MP_T_STR:
        case CRAFT__MP_T_BIN:
        case CRAFT__MP_T_EXT:
            if (h.len > s->max_str) {
                return scan_bad(s, "string too long");
            }
            payload = h.len;
            break;
        case CRAFT__MP_T_FLOAT:
            payload = h.len;
            break;
        default:
            break;
        }
        if (h.hdr + payload > s->max_total - s->pos) {
            return scan_bad(s, "message too large");
        }
        s->rem[s->depth]--;
        s->pos += h.hdr + (size_t)payload;
        if (h.type == CRAFT__MP_T_ARRAY || h.type == CRAFT__MP_T_MAP) {
            if (h.count == 0) {
                continue;
            }
            if (s->depth + 1 > s->max_depth) {
                return scan_bad(s, "nesting too deep");
            }
            s->depth++;
            s->rem[s->depth] =
                (uint64_t)h.count * (h.type == CRAFT__MP_T_MAP ? 2 : 1);
        }
        if (s->pos > len) {
            /* a payload extends past the data we have: wait for it
             * without touching it (it is skipped, not read). `need` is a
             * lower bound: the values may end right after it. */
            s->need = s->pos;
            return CRAFT__MP_SHORT;
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Configuration entries                                                     */
/* ------------------------------------------------------------------------ */

int craft__configuration_encode(const craft_configuration_t *c, void **buf,
                                size_t *len)
{
    craft__mp_buf_t b;
    craft__mp_buf_init(&b);
    *buf = NULL;
    *len = 0;
    if (c->n > UINT32_MAX) {
        return CRAFT_EINVAL;
    }
    craft__mp_put_map(&b, 1);
    craft__mp_put_str(&b, "Servers", 7);
    if (c->n == 0) {
        craft__mp_put_nil(&b); /* Go's nil []Server */
    } else {
        craft__mp_put_array(&b, (uint32_t)c->n);
    }
    for (size_t i = 0; i < c->n; i++) {
        const craft_server_t *s = &c->servers[i];
        craft__mp_put_map(&b, 3);
        craft__mp_put_str(&b, "Address", 7);
        craft__mp_put_cstr_or_nil(&b, s->address ? s->address : "");
        craft__mp_put_str(&b, "ID", 2);
        craft__mp_put_cstr_or_nil(&b, s->id ? s->id : "");
        craft__mp_put_str(&b, "Suffrage", 8);
        craft__mp_put_int(&b, (int64_t)s->suffrage, CRAFT__MP_INT_V055);
    }
    int err = b.err;
    *buf = craft__mp_buf_steal(&b, len);
    return *buf == NULL ? err : 0;
}

/* hashicorp's ServerSuffrage values */
enum { HC_VOTER = 0, HC_NONVOTER = 1, HC_STAGING = 2 };

#define CONFIG_MAX_DEPTH 16

/* Decodes one server map into *s (strings malloc'd). */
static int decode_server(craft__mp_reader_t *r, craft_server_t *s)
{
    uint32_t n;
    int rv = craft__mp_read_map(r, &n);
    if (rv != CRAFT__MP_OK) {
        return rv;
    }
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *k;
        size_t kl;
        rv = craft__mp_read_str(r, &k, &kl);
        if (rv != CRAFT__MP_OK) {
            return rv;
        }
        if (craft__mp_key_is(k, kl, "Address")) {
            free(s->address);
            rv = craft__mp_read_cstr_dup(r, &s->address);
        } else if (craft__mp_key_is(k, kl, "ID")) {
            free(s->id);
            rv = craft__mp_read_cstr_dup(r, &s->id);
        } else if (craft__mp_key_is(k, kl, "Suffrage")) {
            int64_t v;
            rv = craft__mp_read_int(r, &v);
            if (rv == CRAFT__MP_OK) {
                if (v == HC_VOTER) {
                    s->suffrage = CRAFT_VOTER;
                } else if (v == HC_NONVOTER || v == HC_STAGING) {
                    s->suffrage = CRAFT_NONVOTER;
                } else {
                    rv = bad(r, "unknown suffrage");
                }
            }
        } else {
            rv = craft__mp_skip(r);
        }
        if (rv != CRAFT__MP_OK) {
            return rv;
        }
    }
    craft__mp_leave(r);
    /* Go zero-fills missing fields: nil strings become "" */
    if (s->address == NULL && (s->address = strdup("")) == NULL) {
        return CRAFT_ENOMEM;
    }
    if (s->id == NULL && (s->id = strdup("")) == NULL) {
        return CRAFT_ENOMEM;
    }
    return CRAFT__MP_OK;
}

static int decode_servers(craft__mp_reader_t *r, craft_configuration_t *out)
{
    craft_configuration_free(out);
    if (craft__mp_try_nil(r)) {
        return CRAFT__MP_OK;
    }
    uint32_t n;
    int rv = craft__mp_read_array(r, &n);
    if (rv != CRAFT__MP_OK) {
        return rv;
    }
    if (n > 0) {
        /* n <= remaining bytes (checked by read_array) bounds this */
        out->servers = calloc(n, sizeof *out->servers);
        if (out->servers == NULL) {
            return CRAFT_ENOMEM;
        }
    }
    for (uint32_t i = 0; i < n; i++) {
        out->n = i + 1; /* so that free releases partial servers */
        rv = decode_server(r, &out->servers[i]);
        if (rv != CRAFT__MP_OK) {
            return rv;
        }
    }
    craft__mp_leave(r);
    return CRAFT__MP_OK;
}

int craft__configuration_decode(const void *buf, size_t len,
                                craft_configuration_t *out)
{
    craft__mp_reader_t r;
    bool have_servers = false;
    uint32_t n;
    int rv;

    out->n = 0;
    out->servers = NULL;
    if (buf == NULL) {
        return CRAFT_ECORRUPT;
    }
    craft__mp_reader_init(&r, buf, len, CONFIG_MAX_DEPTH, len);
    rv = craft__mp_read_map(&r, &n);
    for (uint32_t i = 0; rv == CRAFT__MP_OK && i < n; i++) {
        const uint8_t *k;
        size_t kl;
        rv = craft__mp_read_str(&r, &k, &kl);
        if (rv != CRAFT__MP_OK) {
            break;
        }
        if (craft__mp_key_is(k, kl, "Servers")) {
            have_servers = true;
            rv = decode_servers(&r, out);
        } else {
            rv = craft__mp_skip(&r);
        }
    }
    if (rv == CRAFT__MP_OK) {
        craft__mp_leave(&r);
    }
    if (rv == CRAFT__MP_OK && (!have_servers || r.pos != len)) {
        rv = CRAFT__MP_BAD;
    }
    craft__mp_reader_destroy(&r);
    if (rv != CRAFT__MP_OK) {
        craft_configuration_free(out);
        return rv == CRAFT_ENOMEM ? CRAFT_ENOMEM : CRAFT_ECORRUPT;
    }
    return 0;
}
