/* The pieces of a request that need more than a comparison: the target's path (decoded once,
 * then checked, so that no spelling of ".." gets through), token lists, Range and
 * Content-Length. Pure functions on byte ranges: no channel, no allocation. */
#include "http.h"

#include <string.h>

static int hex_digit(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

static char lower(char ch)
{
    return ch >= 'A' && ch <= 'Z' ? (char)(ch - 'A' + 'a') : ch;
}

/* Whether p[0..n) starts with the lower-case literal prefix, ignoring case. */
static bool starts_with_ci(const char *p, size_t n, const char *prefix)
{
    size_t k = strlen(prefix);
    if (n < k)
        return false;
    for (size_t i = 0; i < k; i++)
        if (lower(p[i]) != prefix[i])
            return false;
    return true;
}

/* Where the path of an absolute-form target starts (after "http://authority"), or NULL. */
static const char *absolute_path(const char *t, size_t n, const char **end)
{
    size_t skip = starts_with_ci(t, n, "http://") ? 7 : starts_with_ci(t, n, "https://") ? 8 : 0;
    if (skip == 0)
        return NULL;
    const char *p = t + skip, *e = t + n;
    while (p < e && *p != '/' && *p != '?' && *p != '#')
        p++; /* the authority: the Host field says the same, and we serve one site */
    *end = e;
    return p;
}

/* No ".." segment in the decoded path p[0..n): checked after decoding, so "%2e%2e" and
 * "..%2f" are caught the same way as "..". */
static bool no_dotdot(const char *p, size_t n)
{
    size_t start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i == n || p[i] == '/') {
            if (i - start == 2 && p[start] == '.' && p[start + 1] == '.')
                return false;
            start = i + 1;
        }
    }
    return true;
}

ssize_t http_decode_path(const char *target, size_t n, char *out)
{
    const char *p = target, *end = target + n;
    if (n == 0)
        return -1;
    if (*p != '/') {
        p = absolute_path(target, n, &end);
        if (!p)
            return -1; /* "*", or a relative or unknown form */
    }
    size_t o = 0;
    out[o++] = '/'; /* an absolute form without a path means "/" */
    if (p < end && *p == '/')
        p++;
    for (; p < end && *p != '?' && *p != '#'; p++) {
        char ch = *p;
        if (ch == '%') {
            int hi = end - p > 2 ? hex_digit(p[1]) : -1, lo = hi >= 0 ? hex_digit(p[2]) : -1;
            if (lo < 0)
                return -1;
            ch = (char)(hi * 16 + lo);
            p += 2;
        }
        if (ch == '\0')
            return -1;
        out[o++] = ch;
    }
    out[o] = '\0';
    return no_dotdot(out, o) ? (ssize_t)o : -1;
}

bool http_name_is(const char *name, size_t n, const char *lit)
{
    return strlen(lit) == n && starts_with_ci(name, n, lit);
}

static bool is_ows(char ch)
{
    return ch == ' ' || ch == '\t';
}

bool http_has_token(const char *v, size_t n, const char *lit)
{
    size_t i = 0;
    while (i < n) {
        while (i < n && (is_ows(v[i]) || v[i] == ','))
            i++;
        size_t start = i;
        while (i < n && v[i] != ',')
            i++;
        size_t e = i;
        while (e > start && is_ows(v[e - 1]))
            e--;
        if (e > start && http_name_is(v + start, e - start, lit))
            return true;
    }
    return false;
}

/* Digits at *p (at least one), saturating at UINT64_MAX; advances *p. */
static bool parse_u64(const char **p, const char *e, uint64_t *v)
{
    const char *s = *p;
    uint64_t x = 0;
    while (*p < e && **p >= '0' && **p <= '9') {
        unsigned d = (unsigned)(**p - '0');
        x = x > (UINT64_MAX - d) / 10 ? UINT64_MAX : x * 10 + d;
        (*p)++;
    }
    *v = x;
    return *p > s;
}

void http_parse_range(const char *v, size_t n, struct http_request *r)
{
    r->range = RANGE_NONE;
    const char *e = v + n;
    while (e > v && is_ows(e[-1]))
        e--;
    if (!starts_with_ci(v, (size_t)(e - v), "bytes="))
        return;
    const char *p = v + 6;
    while (p < e && is_ows(*p))
        p++;
    uint64_t first, last = UINT64_MAX;
    if (p < e && *p == '-') { /* -suffix */
        p++;
        if (!parse_u64(&p, e, &last) || p != e)
            return;
        r->range = RANGE_SUFFIX;
        r->range_last = last;
        return;
    }
    if (!parse_u64(&p, e, &first) || p == e || *p++ != '-')
        return;
    if (p < e && !parse_u64(&p, e, &last))
        return;
    if (p != e || first > last)
        return; /* several ranges (we serve the whole file then), or not a range */
    r->range = RANGE_FROM;
    r->range_first = first;
    r->range_last = last;
}

int64_t http_parse_length(const char *v, size_t n)
{
    const char *p = v, *e = v + n;
    uint64_t x;
    if (!parse_u64(&p, e, &x) || p != e)
        return -1;
    return x > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)x;
}
