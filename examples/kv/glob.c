/* Glob matching with Redis's semantics, quirks included, since KEYS replies must be the same
 * as redis-server's: a '[' left open runs to the end of the pattern, a range may be written
 * backwards ([z-a]), a quoted byte in a set is compared case-sensitively even in nocase
 * mode, and "*" alone does not match the empty string (KEYS special-cases it). */
#include "glob.h"

/* Bytes are compared as plain chars, as Redis compares them, so a range over bytes past
 * 0x7f means what it means to redis-server built for the same CPU; case folds ASCII only, as
 * tolower does in the C locale. */
static int lower(int c, bool nocase)
{
    return nocase && c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

/* One bracket set at *pp (just after '['), matched against ch; *pp, *plenp move past it. */
static bool match_set(const char **pp, size_t *plenp, char ch, bool nocase)
{
    const char *p = *pp;
    size_t plen = *plenp;
    bool negate = plen > 0 && p[0] == '^', hit = false;
    if (negate) {
        p++;
        plen--;
    }
    for (;;) {
        if (plen >= 2 && p[0] == '\\') {
            p++;
            plen--;
            if (p[0] == ch)
                hit = true;
        } else if (plen > 0 && p[0] == ']') {
            break;
        } else if (plen == 0) {
            p--; /* unterminated: the set ends with the pattern */
            plen++;
            break;
        } else if (plen >= 3 && p[1] == '-') {
            int lo = p[0], hi = p[2], c = ch;
            if (lo > hi) {
                int t = lo;
                lo = hi;
                hi = t;
            }
            lo = lower(lo, nocase);
            hi = lower(hi, nocase);
            c = lower(c, nocase);
            if (c >= lo && c <= hi)
                hit = true;
            p += 2;
            plen -= 2;
        } else if (lower(p[0], nocase) == lower(ch, nocase)) {
            hit = true;
        }
        p++;
        plen--;
    }
    *pp = p;
    *plenp = plen;
    return negate ? !hit : hit;
}

/* Whether the one-byte element at p (a literal, an escaped byte, '?' or a set) matches ch;
 * *used is how many pattern bytes the element takes. */
static bool element(const char *p, size_t plen, char ch, bool nocase, size_t *used)
{
    if (p[0] == '?') {
        *used = 1;
        return true;
    }
    if (p[0] == '[') {
        const char *q = p + 1;
        size_t qlen = plen - 1;
        bool hit = match_set(&q, &qlen, ch, nocase);
        *used = plen - qlen + 1; /* q is on the closing ']' (or the last byte) */
        return hit;
    }
    size_t at = p[0] == '\\' && plen >= 2 ? 1 : 0;
    *used = at + 1;
    return lower(p[at], nocase) == lower(ch, nocase);
}

/* Iterative, remembering only the last '*' (what it absorbed can grow by one byte at a time):
 * O(pattern x string), no recursion however many stars a client sends. Redis recurses on
 * each star; the answers are the same. */
bool kv_glob_match(const char *p, size_t plen, const char *s, size_t slen, bool nocase)
{
    if (slen == 0)
        return plen == 0; /* Redis's loop never starts: even "*" does not match "" */
    const char *star_p = NULL, *star_s = NULL;
    size_t star_plen = 0, star_slen = 0;
    while (slen) {
        size_t used;
        if (plen && p[0] == '*') {
            while (plen > 1 && p[1] == '*') {
                p++;
                plen--;
            }
            if (plen == 1)
                return true;
            star_p = ++p;
            star_plen = --plen;
            star_s = s;
            star_slen = slen;
        } else if (plen && element(p, plen, s[0], nocase, &used)) {
            p += used;
            plen -= used;
            s++;
            slen--;
        } else if (star_p && star_slen > 1) {
            /* The last star takes one more byte; the rest is tried again after it. */
            p = star_p;
            plen = star_plen;
            s = ++star_s;
            slen = --star_slen;
        } else {
            return false;
        }
    }
    while (plen && p[0] == '*') {
        p++;
        plen--;
    }
    return plen == 0;
}
