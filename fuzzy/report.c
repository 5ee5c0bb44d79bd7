/* Findings reports: a growable text buffer with counters. */
#include "craft/fuzzy.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void vappend(craft_fuzzy_report_t *r, const char *prefix, const char *fmt, va_list ap)
{
    char line[2048];
    int n = vsnprintf(line, sizeof line, fmt, ap);
    if (n < 0) {
        return;
    }
    size_t need = strlen(prefix) + strlen(line) + 2;
    if (r->len + need + 1 > r->cap) {
        size_t cap = r->cap ? r->cap : 1024;
        while (cap < r->len + need + 1) {
            cap *= 2;
        }
        char *p = realloc(r->text, cap);
        if (p == NULL) {
            return;
        }
        r->text = p;
        r->cap = cap;
    }
    r->len += (size_t)sprintf(r->text + r->len, "%s%s\n", prefix, line);
}

/* Past this many violations only the count grows: one bug tends to
 * violate the same property at every later index. */
#define MAX_LISTED 40

void craft_fuzzy_report_violation(craft_fuzzy_report_t *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (r->violations < MAX_LISTED) {
        vappend(r, "VIOLATION: ", fmt, ap);
    } else if (r->violations == MAX_LISTED) {
        va_end(ap);
        va_start(ap, fmt);
        vappend(r, "", "(further violations counted, not listed)", ap);
    }
    va_end(ap);
    r->violations++;
}

void craft_fuzzy_report_note(craft_fuzzy_report_t *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vappend(r, "note: ", fmt, ap);
    va_end(ap);
    r->notes++;
}

void craft_fuzzy_report_free(craft_fuzzy_report_t *r)
{
    free(r->text);
    memset(r, 0, sizeof *r);
}
