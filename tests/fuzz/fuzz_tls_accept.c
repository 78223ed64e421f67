/* libFuzzer target: the server side of a TLS handshake fed arbitrary bytes as the client's.
 *
 * In-process, outside any coroutine: a Unix socketpair; the input goes into the peer's end,
 * which is then shut down for writing, and weft_tls_accept runs on a channel over the other
 * end with a deadline. Whatever the bytes, it must fail with EPROTO (a reason in
 * weft_tls_error), ECONNRESET (the input ended mid-handshake) or ETIMEDOUT, never crash or
 * leak, and the channel must close cleanly after. The certificate and key are made once, at
 * start, by tests/tls_certs.sh (the openssl command line; run from the top of the tree, as
 * `make fuzz` does). Built without OpenSSL the target only checks ENOTSUP. */
#include "weft.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static weft_tls *ctx;
static char dir[] = "/tmp/weft-fuzz-tls-XXXXXX";

static void remove_certs(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "fuzz_tls_accept: could not remove %s\n", dir);
    weft_tls_free(ctx);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    ctx = weft_tls_server("/nonexistent", "/nonexistent");
    if (!ctx && errno == ENOTSUP)
        return 0; /* built without TLS */
    char cmd[256], cert[96], key[96];
    if (!mkdtemp(dir)) {
        perror("fuzz_tls_accept: mkdtemp");
        abort();
    }
    snprintf(cmd, sizeof cmd, "sh tests/tls_certs.sh '%s'", dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "fuzz_tls_accept: tests/tls_certs.sh failed (run from the top)\n");
        abort();
    }
    snprintf(cert, sizeof cert, "%s/leaf.pem", dir);
    snprintf(key, sizeof key, "%s/leaf.key", dir);
    ctx = weft_tls_server(cert, key);
    if (!ctx) {
        perror("fuzz_tls_accept: weft_tls_server");
        abort();
    }
    atexit(remove_certs);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        perror("fuzz_tls_accept: socketpair (fd leak?)");
        abort();
    }
    int big = 1 << 20; /* the whole input, and all the server answers, fit */
    for (int i = 0; i < 2; i++) {
        setsockopt(sv[i], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
        setsockopt(sv[i], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    }
    for (size_t off = 0; off < size;) {
        ssize_t w = write(sv[1], data + off, size - off);
        if (w <= 0)
            abort();
        off += (size_t)w;
    }
    shutdown(sv[1], SHUT_WR);
    weft_chan *c = weft_chan_open(sv[0]);
    if (!c)
        abort();
    errno = 0;
    int rc = weft_tls_accept(c, ctx, weft_now() + 2000);
    int err = errno;
    if (!ctx) {
        if (rc != -1 || err != ENOTSUP)
            abort();
    } else if (rc == 0) {
        /* (a handshake the input completed: cannot happen without the key, but fine) */
    } else if (err == EPROTO) {
        if (!*weft_tls_error(c)) { /* a protocol failure always says why */
            fprintf(stderr, "fuzz_tls_accept: EPROTO without a reason\n");
            abort();
        }
    } else if (err != ECONNRESET && err != ETIMEDOUT) {
        fprintf(stderr, "fuzz_tls_accept: unexpected errno %d (%s), reason \"%s\"\n", err,
                strerror(err), weft_tls_error(c));
        abort();
    }
    if (rc != 0 && weft_puts(c, "x") != -1) /* a failed channel only closes */
        abort();
    weft_close(c);
    close(sv[1]);
    return 0;
}
