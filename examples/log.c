/* log_line: a formatter that needs a few hundred bytes of stack (see log.h). */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define LOG_MAX 256

static size_t put_str(char *buf, size_t n, const char *s)
{
    while (*s && n < LOG_MAX - 1)
        buf[n++] = *s++;
    return n;
}

static size_t put_int(char *buf, size_t n, int v)
{
    char digits[12];
    size_t k = 0;
    unsigned u = v < 0 ? 0u - (unsigned)v : (unsigned)v;
    do {
        digits[k++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0 && n < LOG_MAX - 1)
        buf[n++] = '-';
    while (k > 0 && n < LOG_MAX - 1)
        buf[n++] = digits[--k];
    return n;
}

void log_line(const char *fmt, ...)
{
    char buf[LOG_MAX];
    size_t n = 0;
    va_list ap;
    va_start(ap, fmt);
    for (const char *p = fmt; *p && n < LOG_MAX - 1; p++) {
        if (*p != '%' || !p[1]) {
            buf[n++] = *p;
            continue;
        }
        p++;
        if (*p == 'd')
            n = put_int(buf, n, va_arg(ap, int));
        else if (*p == 's')
            n = put_str(buf, n, va_arg(ap, const char *));
        else
            buf[n++] = *p; /* "%%", and anything else as itself */
    }
    va_end(ap);
    if (n > 0 && buf[n - 1] != '\n' && n < LOG_MAX)
        buf[n++] = '\n';
    else if (n == LOG_MAX - 1 && buf[n - 1] != '\n')
        buf[n - 1] = '\n';
    fwrite(buf, 1, n, stderr);
}
