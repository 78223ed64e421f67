/* Command line shared by the example servers: [-p PORT] [-h HOST] [-q] [-g GRACE_MS]
 * [--cert FILE --key FILE] (TLS, where the server supports it). Each of them also writes a
 * dump of its coroutines to stderr on SIGUSR1 (weft_dump_on_signal). */
#ifndef EXAMPLE_OPTIONS_H
#define EXAMPLE_OPTIONS_H

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct server_args {
    char addr[300]; /* "host:port" for weft_listen */
    int quiet;
    long grace_ms;  /* -g: shutdown grace period (-1: the library's default) */
    const char *cert, *key; /* --cert, --key: serve TLS with these PEM files */
};

static inline void parse_server_args(int argc, char **argv, struct server_args *a)
{
    const char *host = "127.0.0.1", *port = "1234";
    int opt;
    static const struct option longopts[] = {
        {"cert", required_argument, NULL, 'C'},
        {"key", required_argument, NULL, 'K'},
        {NULL, 0, NULL, 0},
    };
    a->quiet = 0;
    a->grace_ms = -1;
    a->cert = a->key = NULL;
    while ((opt = getopt_long(argc, argv, "p:h:qg:", longopts, NULL)) != -1) {
        switch (opt) {
        case 'p': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*optarg < '0' || *optarg > '9' || *end != '\0' || v > 65535) {
                fprintf(stderr, "%s: -p wants a port number from 0 to 65535\n", argv[0]);
                exit(2);
            }
            port = optarg;
            break;
        }
        case 'h': host = optarg; break;
        case 'q': a->quiet = 1; break;
        case 'g': a->grace_ms = atol(optarg); break;
        case 'C': a->cert = optarg; break;
        case 'K': a->key = optarg; break;
        default:
            fprintf(stderr,
                    "usage: %s [-p PORT] [-h HOST] [-q] [-g GRACE_MS] [--cert FILE --key FILE]\n"
                    "  kill -USR1 PID writes what each coroutine is doing to stderr\n",
                    argv[0]);
            exit(2);
        }
    }
    if (!a->cert != !a->key) {
        fprintf(stderr, "%s: --cert and --key go together\n", argv[0]);
        exit(2);
    }
    if (host[0] != '[' && host[0] != '\0' && host[1] != '\0' && strchr(host, ':'))
        snprintf(a->addr, sizeof a->addr, "[%s]:%s", host, port); /* bare IPv6 address */
    else
        snprintf(a->addr, sizeof a->addr, "%s:%s", host, port);
}

#endif
