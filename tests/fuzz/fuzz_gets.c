/* libFuzzer target: the channel's input side (weft_gets, weft_read, weft_read_exact) fed
 * through arbitrary chunk boundaries, checked against a reference model of the documented
 * behaviour; optionally echoes what it reads back through the channel's output buffer
 * (weft_putln/weft_write in every buffering mode) and checks that too.
 *
 * Everything runs outside any coroutine, so a wait is a poll(). The read timeout is 0: a read
 * that would wait fails with ETIMEDOUT at once, which means "needs more input".
 *
 * Input layout:
 *   byte 0, bit 0 of byte 1: line limit m (9 bits): 0 = default, else maxline = 1 + (m-1) % 300
 *   byte 1: bits 1-2 buffering (NONE, LINE, FULL, 3 = left at the default)
 *           bits 3-4 read calls (0 gets only, 1 + weft_read, 2 + weft_read_exact, 3 all)
 *           bit 5 echo every line/byte read back through the channel
 *           bit 6 small write buffer (1 + byte 2 bytes)
 *           bit 7 lazy: after a chunk run only 0..2 calls instead of reading until ETIMEDOUT
 *   byte 2: write buffer size (with bit 6)
 *   byte 3: seed of the generator choosing the read calls and their sizes
 *   rest:   chunks, each a length then that many stream bytes; a length byte below 0xC0 is
 *           the length, else ((b & 0x3F) << 8 | next byte). The stream is capped at 64 KiB.
 */
#include "weft.h"

#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define STREAM_MAX (64u * 1024u)
#define RBUF_SIZE 16384u

enum { RES_MORE, RES_TIMEOUT, RES_EOF };

typedef struct state {
    /* input under test */
    weft_chan *c;
    int peer; /* the other end: we write the stream into it and read the echo from it */
    /* stream and model */
    uint8_t *stream;
    size_t total, written; /* the whole stream; bytes handed to the socket so far */
    bool eof_sent;         /* writer side shut down */
    size_t pos;            /* stream bytes the channel has consumed (returned or discarded) */
    bool skipping;         /* after EMSGSIZE, until the over-long line's newline */
    size_t maxline;
    int readmode;
    uint32_t rng;
    /* echo */
    bool echo;
    weft_buffering mode;
    size_t wmax;
    uint8_t *exp; /* expected echo */
    size_t exp_len, got;
    size_t ops;
} state;

static uint8_t rbuf[RBUF_SIZE];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(s, cond)                                                                         \
    do {                                                                                       \
        if (!(cond))                                                                           \
            fail(s, __LINE__, #cond);                                                          \
    } while (0)

static void fail(const state *s, int line, const char *what)
{
    fprintf(stderr,
            "fuzz_gets: check failed at line %d: %s\n"
            "  maxline=%zu readmode=%d echo=%d mode=%d wmax=%zu total=%zu written=%zu "
            "eof_sent=%d pos=%zu skipping=%d ops=%zu exp_len=%zu got=%zu errno=%d\n",
            line, what, s->maxline, s->readmode, s->echo, (int)s->mode, s->wmax, s->total,
            s->written, s->eof_sent, s->pos, s->skipping, s->ops, s->exp_len, s->got, errno);
    abort();
}

static uint32_t rnd(state *s)
{
    uint32_t x = s->rng;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return s->rng = x;
}

static const uint8_t *find_nl(const state *s, size_t from, size_t to)
{
    return from < to ? memchr(s->stream + from, '\n', to - from) : NULL;
}

/* Bytes the channel has taken out of the kernel: written minus what is still queued. */
static size_t taken_from_kernel(state *s)
{
    int q = 0;
    CHECK(s, ioctl(weft_chan_fd(s->c), FIONREAD, &q) == 0 && q >= 0);
    CHECK(s, (size_t)q <= s->written);
    return s->written - (size_t)q;
}

/* ---- Echo ---- */

static void echo_expect(state *s, const void *p, size_t n)
{
    memcpy(s->exp + s->exp_len, p, n);
    s->exp_len += n;
}

/* Read whatever echo has arrived (non-blocking) and compare it with the expectation. True
 * at end of file, which only comes once the channel is closed. */
static bool echo_drain(state *s, bool closed)
{
    for (;;) {
        ssize_t r = recv(s->peer, rbuf, sizeof rbuf, MSG_DONTWAIT);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            CHECK(s, errno == EAGAIN || errno == EWOULDBLOCK);
            return false;
        }
        if (r == 0) {
            CHECK(s, closed);
            return true;
        }
        CHECK(s, s->got + (size_t)r <= s->exp_len);
        CHECK(s, memcmp(rbuf, s->exp + s->got, (size_t)r) == 0);
        s->got += (size_t)r;
    }
}

/* After a write of the echo: what the buffering mode promises about pending output. */
static void echo_check(state *s, bool had_newline)
{
    echo_drain(s, false);
    size_t pending = s->exp_len - s->got;
    CHECK(s, pending <= s->wmax); /* the write buffer never grows past its limit */
    if (s->mode == WEFT_BUF_NONE)
        CHECK(s, pending == 0);
    if (s->mode == WEFT_BUF_LINE && had_newline)
        CHECK(s, pending == 0);
}

/* Echo at most this many write-buffer loads per call. The harness is single-threaded: the
 * echo is read only between calls, so everything one call sends must fit in the socket, and
 * a small write buffer sends a long write in many small pieces (each costing a few hundred
 * bytes of socket memory; see the report on put()). */
#define ECHO_LOADS 256u

static size_t echo_cap(const state *s)
{
    return s->wmax < STREAM_MAX / ECHO_LOADS ? s->wmax * ECHO_LOADS : STREAM_MAX + 2;
}

static void echo_line(state *s, const char *line, size_t len)
{
    if (!s->echo)
        return;
    if (len >= echo_cap(s))
        len = echo_cap(s) - 1;
    CHECK(s, weft_putln(s->c, line, len) == 0);
    echo_expect(s, line, len);
    echo_expect(s, "\n", 1);
    echo_check(s, true);
}

static void echo_bytes(state *s, const void *p, size_t n)
{
    if (!s->echo || n == 0)
        return;
    if (n > echo_cap(s))
        n = echo_cap(s);
    CHECK(s, weft_write(s->c, p, n) == (ssize_t)n);
    echo_expect(s, p, n);
    echo_check(s, memchr(p, '\n', n) != NULL);
}

/* ---- The three read calls against the model ---- */

static int op_gets(state *s)
{
    /* Predict. */
    size_t p = s->pos;
    bool skip = s->skipping;
    enum { E_LINE, E_MSGSIZE, E_TIMEOUT, E_EOF } want;
    size_t want_len = 0, want_next = 0, line_nl = 0;
    if (skip) {
        const uint8_t *nl = find_nl(s, p, s->written);
        if (nl) {
            p = (size_t)(nl - s->stream) + 1;
            skip = false;
        }
    }
    if (skip) {
        want = s->eof_sent ? E_EOF : E_TIMEOUT;
        want_next = s->written; /* everything so far is discarded */
    } else {
        size_t lim = s->written - p > s->maxline ? p + s->maxline + 1 : s->written;
        const uint8_t *nl = find_nl(s, p, lim);
        if (nl) {
            want = E_LINE;
            want_len = (size_t)(nl - s->stream) - p;
            want_next = want_len + p + 1;
        } else if (s->written - p > s->maxline) {
            want = E_MSGSIZE;
            const uint8_t *end = find_nl(s, p, s->written);
            line_nl = end ? (size_t)(end - s->stream) : s->written;
        } else if (s->eof_sent) {
            want = s->written > p ? E_LINE : E_EOF;
            want_len = s->written - p;
            want_next = s->written;
        } else {
            want = E_TIMEOUT;
            want_next = p;
        }
    }

    size_t len = (size_t)-1;
    errno = EILSEQ; /* must be overwritten */
    const char *line = weft_gets(s->c, &len);
    int err = errno;
    switch (want) {
    case E_LINE:
        CHECK(s, line != NULL);
        CHECK(s, len == want_len);
        CHECK(s, len <= s->maxline);
        CHECK(s, memcmp(line, s->stream + p, len) == 0);
        CHECK(s, line[len] == '\0');
        s->pos = want_next;
        s->skipping = false;
        echo_line(s, line, len);
        return RES_MORE;
    case E_MSGSIZE: {
        CHECK(s, line == NULL && err == EMSGSIZE);
        /* The channel dropped everything it had read: the rest of the line up to its newline
         * is skipped. It must have seen more than maxline bytes of the line, and must not
         * have swallowed the newline (or anything after it) before the next call -- unless
         * the whole line was in its buffer already (bytes a failed weft_read_exact gave back
         * can reach past it): then the line went through its newline and what follows it
         * stays buffered. */
        size_t taken = taken_from_kernel(s);
        CHECK(s, taken > p + s->maxline);
        if (line_nl < s->written && taken > line_nl) {
            s->pos = line_nl + 1;
            s->skipping = false;
            return RES_MORE;
        }
        s->pos = taken;
        s->skipping = true;
        return RES_MORE;
    }
    case E_TIMEOUT:
        CHECK(s, line == NULL && err == ETIMEDOUT);
        s->pos = want_next;
        s->skipping = skip;
        return RES_TIMEOUT;
    case E_EOF:
        CHECK(s, line == NULL && err == 0);
        CHECK(s, weft_eof(s->c));
        s->pos = s->written;
        s->skipping = false;
        return RES_EOF;
    }
    return RES_MORE;
}

static size_t pick_size(state *s)
{
    uint32_t r = rnd(s) % 16;
    if (r == 0)
        return 0;
    if (r == 1) /* large: bypasses the buffer when it is empty */
        return 4096 + rnd(s) % (RBUF_SIZE - 4096 + 1);
    if (r == 2 && s->written > s->pos) /* exactly what is there */
        return s->written - s->pos < RBUF_SIZE ? s->written - s->pos : RBUF_SIZE;
    return 1 + rnd(s) % 64;
}

static int op_read(state *s)
{
    size_t n = pick_size(s);
    errno = EILSEQ;
    ssize_t r = weft_read(s->c, rbuf, n);
    if (n == 0) {
        CHECK(s, r == 0);
        return RES_MORE;
    }
    s->skipping = false; /* raw reads see the stream as it is */
    if (r > 0) {
        CHECK(s, (size_t)r <= n);
        CHECK(s, s->pos + (size_t)r <= s->written);
        CHECK(s, memcmp(rbuf, s->stream + s->pos, (size_t)r) == 0);
        s->pos += (size_t)r;
        echo_bytes(s, rbuf, (size_t)r);
        return RES_MORE;
    }
    if (r == 0) {
        CHECK(s, s->eof_sent && s->pos == s->written);
        CHECK(s, weft_eof(s->c));
        return RES_EOF;
    }
    CHECK(s, r == -1 && errno == ETIMEDOUT);
    CHECK(s, !s->eof_sent && s->pos == s->written); /* waits only if nothing is there */
    return RES_TIMEOUT;
}

static int op_read_exact(state *s)
{
    size_t n = pick_size(s);
    errno = EILSEQ;
    ssize_t r = weft_read_exact(s->c, rbuf, n);
    if (n == 0) {
        CHECK(s, r == 0);
        return RES_MORE;
    }
    s->skipping = false;
    if (r >= 0) {
        CHECK(s, (size_t)r <= n);
        CHECK(s, s->pos + (size_t)r <= s->written);
        CHECK(s, memcmp(rbuf, s->stream + s->pos, (size_t)r) == 0);
        s->pos += (size_t)r;
        echo_bytes(s, rbuf, (size_t)r);
        if ((size_t)r == n)
            return RES_MORE;
        CHECK(s, s->eof_sent && s->pos == s->written); /* short only at end of file */
        CHECK(s, weft_eof(s->c));
        return RES_EOF;
    }
    CHECK(s, r == -1 && errno == ETIMEDOUT);
    CHECK(s, !s->eof_sent && s->written - s->pos < n);
    /* What it had read stays buffered for the next read (weft.h, since a25fe89): the
     * position does not move, and the next call of any kind must return those bytes. */
    return RES_TIMEOUT;
}

static int step(state *s)
{
    s->ops++;
    uint32_t r = rnd(s) % 4;
    int rc;
    switch (s->readmode) {
    case 1:
        rc = r == 0 ? op_read(s) : op_gets(s);
        break;
    case 2:
        rc = r == 0 ? op_read_exact(s) : op_gets(s);
        break;
    case 3:
        rc = r == 0 ? op_read(s) : r == 1 ? op_read_exact(s) : op_gets(s);
        break;
    default:
        rc = op_gets(s);
        break;
    }
    if (!s->eof_sent)
        CHECK(s, !weft_eof(s->c));
    if (weft_eof(s->c))
        CHECK(s, s->eof_sent && s->pos == s->written);
    return rc;
}

/* Call until the channel needs more input (or, after the shutdown, until end of file). */
static void run_until(state *s, int stop)
{
    size_t limit = 4 * (size_t)STREAM_MAX + 1000;
    for (size_t i = 0;; i++) {
        CHECK(s, i < limit); /* no progress: something returns the same thing forever */
        int rc = step(s);
        if (rc == RES_MORE)
            continue;
        CHECK(s, rc == stop);
        return;
    }
}

static void write_chunk(state *s, size_t end)
{
    while (s->written < end) {
        ssize_t w = send(s->peer, s->stream + s->written, end - s->written,
                         MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w > 0) {
            s->written += (size_t)w;
            continue;
        }
        CHECK(s, w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR));
        run_until(s, RES_TIMEOUT); /* the socket is full: let the channel take it */
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4)
        return 0;
    static uint8_t stream[STREAM_MAX];
    static uint8_t exp[STREAM_MAX + 2];
    state st = {0}, *s = &st;
    s->stream = stream;
    s->exp = exp;

    unsigned m = data[0] | (data[1] & 1u) << 8;
    s->maxline = m ? 1 + (m - 1) % 300 : WEFT_MAXLINE_DEFAULT;
    unsigned bufsel = (data[1] >> 1) & 3;
    s->mode = bufsel == 3 ? WEFT_BUF_LINE : (weft_buffering)bufsel;
    s->readmode = (data[1] >> 3) & 3;
    s->echo = data[1] & 0x20;
    s->wmax = (data[1] & 0x40) ? 1u + data[2] : WEFT_WBUF_DEFAULT;
    bool lazy = data[1] & 0x80;
    s->rng = 0x9e3779b9u ^ (uint32_t)data[3] * 0x01000193u;

    /* Cut the rest into chunks. */
    size_t *chunk_end = malloc((size + 1) * sizeof *chunk_end);
    if (!chunk_end)
        abort();
    size_t nchunks = 0;
    const uint8_t *p = data + 4, *end = data + size;
    while (p < end && s->total < STREAM_MAX) {
        size_t len = *p++;
        if (len >= 0xC0) {
            if (p == end)
                break;
            len = (len & 0x3F) << 8 | *p++;
        }
        if (len > (size_t)(end - p))
            len = (size_t)(end - p);
        if (len > STREAM_MAX - s->total)
            len = STREAM_MAX - s->total;
        memcpy(stream + s->total, p, len);
        p += len;
        s->total += len;
        chunk_end[nchunks++] = s->total;
    }

    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        perror("fuzz_gets: socketpair (fd leak?)");
        abort();
    }
    int big = 1 << 20;
    for (int i = 0; i < 2; i++) {
        setsockopt(sv[i], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
        setsockopt(sv[i], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    }
    s->peer = sv[1];
    s->c = weft_chan_open(sv[0]);
    CHECK(s, s->c != NULL);
    if (m)
        CHECK(s, weft_chan_set_maxline(s->c, s->maxline) == 0);
    if (bufsel != 3)
        CHECK(s, weft_chan_set_buffering(s->c, s->mode) == 0);
    if (data[1] & 0x40)
        CHECK(s, weft_chan_set_wbuf(s->c, s->wmax) == 0);
    /* Reads never wait; writes (the echo) get a bound so that a stuck flush fails, not hangs. */
    weft_chan_set_timeouts(s->c, 0, 5000);

    for (size_t k = 0; k < nchunks; k++) {
        write_chunk(s, chunk_end[k]);
        if (lazy) {
            for (uint32_t n = rnd(s) % 3; n > 0; n--)
                if (step(s) == RES_TIMEOUT)
                    break;
        } else {
            run_until(s, RES_TIMEOUT);
        }
    }
    CHECK(s, s->written == s->total);
    CHECK(s, shutdown(s->peer, SHUT_WR) == 0);
    s->eof_sent = true;
    run_until(s, RES_EOF);

    /* End of file is sticky and everything was consumed exactly once. */
    CHECK(s, s->pos == s->total);
    CHECK(s, weft_eof(s->c));
    size_t len = 1;
    errno = EILSEQ;
    CHECK(s, weft_gets(s->c, &len) == NULL && errno == 0);
    CHECK(s, weft_read(s->c, rbuf, 10) == 0);
    CHECK(s, weft_eof(s->c));

    if (s->echo && (rnd(s) & 1)) {
        CHECK(s, weft_flush(s->c) == 0);
        echo_drain(s, false);
        CHECK(s, s->got == s->exp_len);
    }
    CHECK(s, weft_close(s->c) == 0); /* flushes what is left of the echo */
    if (s->echo) {
        while (!echo_drain(s, true)) {
            struct pollfd pf = {.fd = s->peer, .events = POLLIN};
            CHECK(s, poll(&pf, 1, 5000) == 1);
        }
        CHECK(s, s->got == s->exp_len);
    }
    close(s->peer);
    free(chunk_end);
    return 0;
}
