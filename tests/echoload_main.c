/* echoload: command-line front end to echoload_run().
 *
 * usage: echoload -H host -p port -c conns -n lines -s maxlen [-r] [-P pipeline]
 *                 [-S seed] [-t timeout_ms]
 * Prints "ok lines=N bytes=N" and exits 0 when every byte was verified; otherwise prints
 * the first error to stderr and exits 1 (2 for bad usage).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "echoload.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static _Noreturn void usage(void)
{
    fprintf(stderr, "usage: echoload -H host -p port -c conns -n lines -s maxlen [-r] "
                    "[-P pipeline] [-S seed] [-t timeout_ms]\n");
    exit(2);
}

/* Whole-string decimal in [min, max], or usage error. */
static long long num(const char *s, long long min, long long max)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (*s == '\0' || *end != '\0' || errno != 0 || v < min || v > max)
        usage();
    return v;
}

int main(int argc, char **argv)
{
    struct echoload_opts o = { .host = "127.0.0.1", .port = 1234, .conns = 1, .lines = 100,
                               .max_len = 100, .seed = 1, .timeout_ms = 60000 };
    struct echoload_result r;
    int opt;

    while ((opt = getopt(argc, argv, "H:p:c:n:s:rP:S:t:")) != -1) {
        switch (opt) {
        case 'H': o.host = optarg; break;
        case 'p': o.port = (int)num(optarg, 1, 65535); break;
        case 'c': o.conns = (int)num(optarg, 1, 1000000); break;
        case 'n': o.lines = (int)num(optarg, 0, 1000000000); break;
        case 's': o.max_len = (size_t)num(optarg, 0, 1 << 30); break;
        case 'r': o.random_chunks = 1; break;
        case 'P': o.pipeline = (int)num(optarg, 0, 1000000000); break;
        case 'S': o.seed = (unsigned)num(optarg, 0, 4294967295LL); break;
        case 't': o.timeout_ms = (int)num(optarg, 1, 2147483647); break;
        default: usage();
        }
    }
    if (optind != argc)
        usage();

    if (echoload_run(&o, &r) == 0) {
        printf("ok lines=%lld bytes=%lld\n", r.lines_ok, r.bytes_in);
        return 0;
    }
    fprintf(stderr, "echoload: FAIL: %s (lines_ok=%lld conns_failed=%d)\n", r.error,
            r.lines_ok, r.conns_failed);
    return 1;
}
