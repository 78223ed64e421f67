/* Time for httpd: HTTP dates (RFC 9110, 5.6.7), written as IMF-fixdate and read in all three
 * forms a recipient must accept, by hand rather than with strftime/strptime, whose names of
 * days and months follow the locale; and a coarse clock for deadlines. */
#include "http.h"

#include <string.h>

static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
static const char *const long_days[7] = {"Sunday",   "Monday", "Tuesday", "Wednesday",
                                         "Thursday", "Friday", "Saturday"};

int64_t http_coarse_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void two(char *p, int v)
{
    p[0] = (char)('0' + v / 10 % 10);
    p[1] = (char)('0' + v % 10);
}

void http_format_date(time_t t, char *out)
{
    struct tm tm;
    gmtime_r(&t, &tm);
    /* "Sun, 06 Nov 1994 08:49:37 GMT" */
    memcpy(out, days[tm.tm_wday], 3);
    memcpy(out + 3, ", ", 2);
    two(out + 5, tm.tm_mday);
    out[7] = ' ';
    memcpy(out + 8, months[tm.tm_mon], 3);
    out[11] = ' ';
    int year = tm.tm_year + 1900;
    two(out + 12, year / 100);
    two(out + 14, year % 100);
    out[16] = ' ';
    two(out + 17, tm.tm_hour);
    out[19] = ':';
    two(out + 20, tm.tm_min);
    out[22] = ':';
    two(out + 23, tm.tm_sec);
    memcpy(out + 25, " GMT", 5); /* with the NUL */
}

/* A cursor over the value being parsed. */
struct cur {
    const char *p, *e;
};

static bool lit(struct cur *c, const char *s)
{
    size_t n = strlen(s);
    if ((size_t)(c->e - c->p) < n || memcmp(c->p, s, n) != 0)
        return false;
    c->p += n;
    return true;
}

/* Exactly `width` digits (width 0: one or two, for asctime's day). */
static bool num(struct cur *c, int width, int *v)
{
    int n = 0, x = 0, max = width ? width : 2;
    while (n < max && c->p < c->e && *c->p >= '0' && *c->p <= '9') {
        x = x * 10 + (*c->p++ - '0');
        n++;
    }
    *v = x;
    return width ? n == width : n > 0;
}

static bool month(struct cur *c, int *m)
{
    for (int i = 0; i < 12; i++)
        if (lit(c, months[i])) {
            *m = i;
            return true;
        }
    return false;
}

static bool day_name(struct cur *c, bool long_form)
{
    for (int i = 0; i < 7; i++)
        if (lit(c, long_form ? long_days[i] : days[i]))
            return true;
    return false;
}

static bool clock_time(struct cur *c, struct tm *tm)
{
    return num(c, 2, &tm->tm_hour) && lit(c, ":") && num(c, 2, &tm->tm_min) && lit(c, ":") &&
           num(c, 2, &tm->tm_sec);
}

/* "Sun, 06 Nov 1994 08:49:37 GMT" */
static bool imf_fixdate(struct cur c, struct tm *tm)
{
    int year = 0;
    bool ok = day_name(&c, false) && lit(&c, ", ") && num(&c, 2, &tm->tm_mday) && lit(&c, " ") &&
              month(&c, &tm->tm_mon) && lit(&c, " ") && num(&c, 4, &year) && lit(&c, " ") &&
              clock_time(&c, tm) && lit(&c, " GMT") && c.p == c.e;
    tm->tm_year = year - 1900;
    return ok;
}

/* "Sunday, 06-Nov-94 08:49:37 GMT": a two-digit year more than 50 years ahead is in the past. */
static bool rfc850(struct cur c, struct tm *tm, int this_year)
{
    int yy = 0;
    bool ok = day_name(&c, true) && lit(&c, ", ") && num(&c, 2, &tm->tm_mday) && lit(&c, "-") &&
              month(&c, &tm->tm_mon) && lit(&c, "-") && num(&c, 2, &yy) && lit(&c, " ") &&
              clock_time(&c, tm) && lit(&c, " GMT") && c.p == c.e;
    int year = this_year / 100 * 100 + yy;
    if (year > this_year + 50)
        year -= 100;
    tm->tm_year = year - 1900;
    return ok;
}

/* "Sun Nov  6 08:49:37 1994" */
static bool asctime_form(struct cur c, struct tm *tm)
{
    int year = 0;
    if (!day_name(&c, false) || !lit(&c, " ") || !month(&c, &tm->tm_mon) || !lit(&c, " "))
        return false;
    lit(&c, " "); /* a day of one digit is padded with a space: "Nov  6" */
    bool ok = num(&c, 0, &tm->tm_mday) && lit(&c, " ") && clock_time(&c, tm) && lit(&c, " ") &&
              num(&c, 4, &year) && c.p == c.e;
    tm->tm_year = year - 1900;
    return ok;
}

bool http_parse_date(const char *v, size_t n, time_t *t)
{
    struct cur c = {v, v + n};
    while (c.e > c.p && (c.e[-1] == ' ' || c.e[-1] == '\t'))
        c.e--;
    time_t now = time(NULL);
    struct tm today;
    gmtime_r(&now, &today);
    struct tm tm = {0};
    if (!imf_fixdate(c, &tm) && !rfc850(c, &tm, today.tm_year + 1900) &&
        !asctime_form(c, &tm))
        return false;
    if (tm.tm_mday < 1 || tm.tm_mday > 31 || tm.tm_hour > 23 || tm.tm_min > 59 ||
        tm.tm_sec > 60 || tm.tm_year < 0)
        return false;
    *t = timegm(&tm);
    return *t != (time_t)-1;
}
