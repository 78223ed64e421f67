/* libFuzzer target: the address parser net_parse_addr on arbitrary strings.
 *
 * It must never crash; a success must be self-consistent and say exactly what the input
 * says (a Unix path, or a host and a port that re-assemble into the input); and a "host:port"
 * result, formatted again the usual way (brackets around a host with a ':'), must parse back
 * to the same result. An independent small parser of the documented forms checks that good
 * addresses are accepted and bad ones refused.
 */
#include "../../src/internal.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <ctype.h>
#include <string.h>

#define CHECK(cond)                                                                            \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "fuzz_addr: check failed at line %d: %s\n  input: \"%s\"\n",       \
                    __LINE__, #cond, cur_input);                                               \
            abort();                                                                           \
        }                                                                                      \
    } while (0)

static const char *cur_input = "";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A field is a NUL-terminated string inside its array. */
#define TERMINATED(field) (memchr((field), '\0', sizeof(field)) != NULL)

static bool all_zero(const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i])
            return false;
    return true;
}

/* The reference: "unix:PATH" (PATH 1..107 bytes); "[HOST]:PORT" (HOST up to the first ']');
 * else "HOST:PORT" split at the last ':'. HOST below 256 bytes, PORT 1..31 bytes. */
static bool ref_parse(const char *a, bool *is_unix, const char **h, size_t *hlen, const char **port)
{
    size_t n = strlen(a);
    *is_unix = n >= 5 && memcmp(a, "unix:", 5) == 0;
    if (*is_unix)
        return n - 5 >= 1 && n - 5 <= 107;
    const char *sep;
    if (a[0] == '[') {
        const char *close = strchr(a, ']');
        if (!close || close[1] != ':')
            return false;
        *h = a + 1;
        *hlen = (size_t)(close - a - 1);
        sep = close + 1;
    } else {
        sep = NULL;
        for (const char *q = a; *q; q++)
            if (*q == ':')
                sep = q;
        if (!sep)
            return false;
        *h = a;
        *hlen = (size_t)(sep - a);
    }
    *port = sep + 1;
    size_t plen = strlen(*port);
    if (*hlen >= 256 || plen < 1 || plen >= 32)
        return false;
    /* A number from 0 to 65535 (leading zeros allowed), or a service name (a letter first). */
    const char *p = *port;
    if (isalpha((unsigned char)*p))
        return true;
    unsigned long v = 0;
    for (; *p; p++) {
        if (!isdigit((unsigned char)*p))
            return false;
        v = v * 10 + (unsigned long)(*p - '0');
        if (v > 65535)
            return false;
    }
    return true;
}

static void same(const parsed_addr *x, const parsed_addr *y)
{
    CHECK(x->is_unix == y->is_unix);
    CHECK(x->wildcard == y->wildcard);
    CHECK(strcmp(x->host, y->host) == 0);
    CHECK(strcmp(x->port, y->port) == 0);
    CHECK(strcmp(x->path, y->path) == 0);
}

static void check_one(const char *a)
{
    cur_input = a;
    parsed_addr pa;
    memset(&pa, 0xA5, sizeof pa); /* the parser must clear what it does not set */
    errno = 0;
    int rc = net_parse_addr(a, &pa);

    bool is_unix = false;
    const char *h = NULL, *port = NULL;
    size_t hlen = 0;
    bool ok = ref_parse(a, &is_unix, &h, &hlen, &port);
    CHECK((rc == 0) == ok);
    if (rc != 0) {
        CHECK(rc == -1 && errno == EINVAL);
        return;
    }
    CHECK(TERMINATED(pa.host) && TERMINATED(pa.port) && TERMINATED(pa.path));
    CHECK(pa.is_unix == is_unix);
    if (pa.is_unix) {
        CHECK(!pa.wildcard);
        CHECK(pa.path[0] != '\0');
        CHECK(strcmp(pa.path, a + 5) == 0); /* all of it, so it fits in sun_path */
        CHECK(all_zero(pa.host, sizeof pa.host) && all_zero(pa.port, sizeof pa.port));
        return;
    }
    CHECK(pa.path[0] == '\0');
    CHECK(pa.port[0] != '\0');
    CHECK(strlen(pa.host) == hlen && memcmp(pa.host, h, hlen) == 0);
    CHECK(strcmp(pa.port, port) == 0);
    CHECK(pa.wildcard == (strcmp(pa.host, "") == 0 || strcmp(pa.host, "*") == 0));
    /* The pieces are the input without its separators: "[" host "]:" port or host ":" port. */
    char again[512];
    if (a[0] == '[')
        snprintf(again, sizeof again, "[%s]:%s", pa.host, pa.port);
    else
        snprintf(again, sizeof again, "%s:%s", pa.host, pa.port);
    CHECK(strcmp(again, a) == 0);

    /* Round trip through the usual formatting. Some results have no such form: a host
     * containing ']' cannot be bracketed, and a port containing ':' (accepted after a
     * bracketed host) or a host of exactly "unix" or starting with '[' only parse back
     * bracketed; those are formatted that way when they can be. */
    bool needs_brackets = strchr(pa.host, ':') || strchr(pa.port, ':') || pa.host[0] == '[' ||
                          strcmp(pa.host, "unix") == 0;
    if (needs_brackets && strchr(pa.host, ']'))
        return; /* no bracketed form exists; the original string is its only spelling */
    if (needs_brackets)
        snprintf(again, sizeof again, "[%s]:%s", pa.host, pa.port);
    else
        snprintf(again, sizeof again, "%s:%s", pa.host, pa.port);
    parsed_addr pb;
    memset(&pb, 0x5A, sizeof pb);
    cur_input = again;
    CHECK(net_parse_addr(again, &pb) == 0);
    same(&pa, &pb);
    cur_input = a;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool once;
    if (!once) {
        once = true;
        parsed_addr pa;
        errno = 0;
        CHECK(net_parse_addr(NULL, &pa) == -1 && errno == EINVAL);
    }
    char *a = malloc(size + 1); /* exact size: an over-read past the NUL is caught */
    if (!a)
        abort();
    memcpy(a, data, size);
    a[size] = '\0';
    check_one(a);
    /* The same bytes with "unix:" or a bracket in front reach the other branches. */
    if (size > 0 && size < 300 && (data[0] & 3) == 0) {
        char *b = malloc(size + 6);
        if (!b)
            abort();
        memcpy(b, data[0] & 4 ? "unix:" : "[::1]", 5);
        memcpy(b + 5, data + 1, size - 1);
        b[size + 4] = '\0';
        check_one(b);
        free(b);
    }
    free(a);
    return 0;
}
