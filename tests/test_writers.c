/* Several coroutines writing to one channel: each write keeps its bytes together whatever
 * the others do and however often it parks on a full socket, in every buffering mode; a
 * close never waits for a writer parked on a peer that does not read. */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <weft.h>

/* ---- A peer that starts reading late and keeps everything ---- */

struct sink {
    int fd;
    int delay_ms;   /* before the first read: the writers fill the socket and park */
    size_t chunk;   /* bytes per read: small reads keep the socket nearly full */
    char *data;
    size_t len, cap;
    pthread_t tid;
};

static void *sink_main(void *arg)
{
    struct sink *s = arg;
    usleep((useconds_t)s->delay_ms * 1000);
    for (;;) {
        if (s->cap - s->len < s->chunk) {
            s->cap = s->cap ? s->cap * 2 : 1 << 20;
            s->data = realloc(s->data, s->cap);
            CHECK(s->data);
        }
        ssize_t r = read(s->fd, s->data + s->len, s->chunk);
        CHECK(r >= 0);
        if (r == 0)
            return NULL;
        s->len += (size_t)r;
    }
}

static void sink_start(struct sink *s, int fd, int delay_ms, size_t chunk)
{
    memset(s, 0, sizeof *s);
    s->fd = fd;
    s->delay_ms = delay_ms;
    s->chunk = chunk;
    CHECK(pthread_create(&s->tid, NULL, sink_main, s) == 0);
}

static void sink_join(struct sink *s)
{
    CHECK(pthread_join(s->tid, NULL) == 0);
}

/* A socketpair whose sending side holds little (SO_SNDBUF 4096), so writers park often. */
static weft_chan *small_pipe(int *peer)
{
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    int sndbuf = 4096;
    CHECK(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf) == 0);
    weft_chan *c = weft_chan_open(sv[0]);
    CHECK(c);
    *peer = sv[1];
    return c;
}

/* ---- The audit's case: a writer parked mid-record keeps its turn ---- */

enum how { BY_WRITE, BY_PUTLN };

struct job {
    weft_chan *c;
    enum how how;
    char letter;
    size_t len;       /* of the record, without its newline */
    bool then_short;  /* then write "bbbb\n" */
};

static void write_record(weft_chan *c, enum how how, char letter, size_t len)
{
    char *rec = malloc(len + 1);
    CHECK(rec);
    memset(rec, letter, len);
    rec[len] = '\n';
    if (how == BY_WRITE)
        CHECK(weft_write(c, rec, len + 1) == (ssize_t)(len + 1));
    else
        CHECK(weft_putln(c, rec, len) == 0);
    free(rec);
}

static void *job_main(void *arg)
{
    struct job *j = arg;
    if (!j->then_short)
        CHECK(weft_yield() == 0); /* the other writer goes first and parks */
    write_record(j->c, j->how, j->letter, j->len);
    if (weft_chan_fd(j->c) >= 0 && j->then_short) {
        if (j->how == BY_WRITE)
            CHECK(weft_write(j->c, "bbbb\n", 5) == 5);
        else
            CHECK(weft_puts(j->c, "bbbb") == 0);
    }
    CHECK(weft_flush(j->c) == 0); /* full buffering: the record leaves now */
    return NULL;
}

/* Each '\n'-ended record of data must be one letter repeated; return how many there are and
 * store their letters and lengths. */
static size_t split_records(const char *data, size_t len, char *letters, size_t *lens, size_t max)
{
    size_t n = 0, start = 0;
    for (size_t i = 0; i < len; i++) {
        if (data[i] != '\n')
            continue;
        CHECK(n < max);
        CHECK(i > start);
        letters[n] = data[start];
        for (size_t k = start; k < i; k++)
            CHECK(data[k] == data[start]); /* another writer's bytes inside this record */
        lens[n++] = i - start;
        start = i + 1;
    }
    CHECK(start == len); /* nothing after the last newline */
    return n;
}

static void parked_record_stays_whole(enum how how, weft_buffering mode, size_t a_len,
                                      size_t b_len)
{
    int peer;
    weft_chan *c = small_pipe(&peer);
    CHECK(weft_chan_set_buffering(c, mode) == 0);
    struct sink s;
    sink_start(&s, peer, 200, 4096);
    struct job b = {c, how, 'B', b_len, true}, a = {c, how, 'A', a_len, false};
    weft_co *cb = weft_spawn(job_main, &b), *ca = weft_spawn(job_main, &a);
    CHECK(cb && ca);
    CHECK(weft_join(cb, NULL, -1) == 0 && weft_join(ca, NULL, -1) == 0);
    CHECK(weft_close(c) == 0);
    sink_join(&s);
    char letters[8];
    size_t lens[8];
    CHECK(split_records(s.data, s.len, letters, lens, 8) == 3);
    /* B's record first; A's whole, before or after B's "bbbb". */
    CHECK(letters[0] == 'B' && lens[0] == b_len);
    int ia = letters[1] == 'A' ? 1 : 2, ib = 3 - ia;
    CHECK(letters[ia] == 'A' && lens[ia] == a_len);
    CHECK(letters[ib] == 'b' && lens[ib] == 4);
    /* A record larger than the write buffer parks B with the turn held (a smaller one is
     * queued whole, without waiting): then A, waiting for the turn, gets it before B's next
     * write. */
    if (b_len > WEFT_WBUF_DEFAULT && mode != WEFT_BUF_FULL)
        CHECK(ia == 1);
    free(s.data);
    close(peer);
}

static void a_parked_writers_record_is_never_split(void)
{
    weft_buffering modes[] = {WEFT_BUF_LINE, WEFT_BUF_NONE, WEFT_BUF_FULL};
    for (int m = 0; m < 3; m++) {
        parked_record_stays_whole(BY_WRITE, modes[m], 9999, 60000);   /* the audit's sizes */
        parked_record_stays_whole(BY_PUTLN, modes[m], 30000, 60000);
        parked_record_stays_whole(BY_WRITE, modes[m], 9999, 200000);  /* B parks mid-record */
        parked_record_stays_whole(BY_PUTLN, modes[m], 30000, 200000);
    }
}

/* ---- Three writers, random records, a slow reader ---- */

#define STRESS_WRITERS 3

struct stresser {
    weft_chan *c;
    int id;
    int records;
    unsigned seed;
};

static unsigned next_rand(unsigned *seed)
{
    *seed = *seed * 1103515245u + 12345u;
    return (*seed >> 8) & 0xffffff;
}

/* A record: "<id><seq, 6 digits>:" then the letter 'a' + id repeated, then '\n'. */
static void *stress_main(void *arg)
{
    struct stresser *w = arg;
    char *rec = malloc(20000);
    CHECK(rec);
    for (int seq = 0; seq < w->records; seq++) {
        size_t body = 1 + next_rand(&w->seed) % 16000; /* up to twice the write buffer */
        int head = snprintf(rec, 16, "%d%06d:", w->id, seq);
        memset(rec + head, 'a' + w->id, body);
        size_t len = (size_t)head + body;
        switch (next_rand(&w->seed) % 3) {
        case 0:
            rec[len] = '\n';
            CHECK(weft_write(w->c, rec, len + 1) == (ssize_t)(len + 1));
            break;
        case 1:
            CHECK(weft_putln(w->c, rec, len) == 0);
            break;
        default:
            CHECK(weft_printf(w->c, "%.*s\n", (int)len, rec) == (int)len + 1);
            break;
        }
        if (next_rand(&w->seed) % 4 == 0)
            CHECK(weft_flush(w->c) == 0);
        if (next_rand(&w->seed) % 8 == 0)
            CHECK(weft_yield() == 0);
    }
    CHECK(weft_flush(w->c) == 0);
    free(rec);
    return NULL;
}

static void check_stress_stream(const char *data, size_t len, int records)
{
    int next_seq[STRESS_WRITERS] = {0};
    size_t start = 0;
    for (size_t i = 0; i < len; i++) {
        if (data[i] != '\n')
            continue;
        const char *r = data + start;
        CHECK(i - start > 8 && r[7] == ':');
        int id = r[0] - '0';
        CHECK(id >= 0 && id < STRESS_WRITERS);
        CHECK(atoi(r + 1) == next_seq[id]); /* each writer's records in order, none lost */
        next_seq[id]++;
        for (size_t k = start + 8; k < i; k++)
            CHECK(data[k] == 'a' + id); /* nobody else's bytes inside */
        start = i + 1;
    }
    CHECK(start == len);
    for (int id = 0; id < STRESS_WRITERS; id++)
        CHECK(next_seq[id] == records);
}

static void three_writers_random_records_stay_whole(void)
{
    int records = test_scale(400);
    weft_buffering modes[] = {WEFT_BUF_LINE, WEFT_BUF_NONE, WEFT_BUF_FULL};
    for (int m = 0; m < 3; m++) {
        int peer;
        weft_chan *c = small_pipe(&peer);
        CHECK(weft_chan_set_buffering(c, modes[m]) == 0);
        CHECK(weft_chan_set_wbuf(c, 8192) == 0);
        struct sink s;
        sink_start(&s, peer, 20, 1000);
        struct stresser w[STRESS_WRITERS];
        weft_co *co[STRESS_WRITERS];
        for (int i = 0; i < STRESS_WRITERS; i++) {
            w[i] = (struct stresser){c, i, records, 7u * (unsigned)(i + 1) + (unsigned)m};
            co[i] = weft_spawn(stress_main, &w[i]);
            CHECK(co[i]);
        }
        for (int i = 0; i < STRESS_WRITERS; i++)
            CHECK(weft_join(co[i], NULL, -1) == 0);
        CHECK(weft_close(c) == 0);
        sink_join(&s);
        check_stress_stream(s.data, s.len, records);
        free(s.data);
        close(peer);
    }
}

/* ---- A close while a writer is parked on a peer that never reads ---- */

static weft_chan *stuck_c;
static int stuck_reader_err, stuck_writer_err, turn_writer_err;
static bool writer_parked;

static void *stuck_reader(void *arg)
{
    (void)arg;
    size_t len;
    CHECK(weft_gets(stuck_c, &len) == NULL);
    stuck_reader_err = errno;
    return NULL;
}

static void *stuck_writer(void *arg)
{
    (void)arg;
    char line[1000];
    memset(line, 'w', sizeof line);
    for (;;) { /* line mode: each line is flushed, until one parks with bytes buffered */
        writer_parked = true;
        if (weft_putln(stuck_c, line, sizeof line) != 0) {
            stuck_writer_err = errno;
            return NULL;
        }
        writer_parked = false;
    }
}

static void *turn_writer(void *arg)
{
    (void)arg;
    if (weft_puts(stuck_c, "waits for its turn") != 0)
        turn_writer_err = errno;
    return NULL;
}

static void *turn_writer(void *arg);

static void *stuck_closer(void *arg)
{
    weft_co **t = arg;
    while (!writer_parked)
        CHECK(weft_sleep(1) == 0);
    CHECK(weft_sleep(50) == 0); /* the writer has been parked on the full socket since */
    CHECK((*t = weft_spawn(turn_writer, NULL)) && weft_yield() == 0); /* it waits its turn */
    int rc = weft_close(stuck_c);
    CHECK(rc == 0 || errno == EBUSY); /* EBUSY: the parked writer's bytes were dropped */
    return NULL;
}

static void close_does_not_wait_for_a_parked_writer(void)
{
    for (int from_main = 0; from_main < 2; from_main++) {
        int sv[2];
        CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0); /* sv[1] never reads */
        stuck_c = weft_chan_open(sv[0]);
        CHECK(stuck_c);
        stuck_reader_err = stuck_writer_err = turn_writer_err = 0;
        writer_parked = false;
        weft_co *r = weft_spawn(stuck_reader, NULL), *w = weft_spawn(stuck_writer, NULL);
        weft_co *t = NULL;
        CHECK(r && w);
        if (from_main) {
            /* The main program closes, outside any coroutine, while all three wait: the
             * writer has filled the socket and its write buffer's worth of queue. */
            for (int i = 0; i < 200; i++)
                CHECK(weft_yield() == 0);
            CHECK((t = weft_spawn(turn_writer, NULL)) && weft_yield() == 0);
            int rc = weft_close(stuck_c);
            CHECK(rc == 0 || errno == EBUSY);
        } else {
            weft_co *k = weft_spawn(stuck_closer, &t);
            CHECK(k && weft_join(k, NULL, -1) == 0);
        }
        CHECK(weft_join(r, NULL, -1) == 0 && weft_join(w, NULL, -1) == 0);
        CHECK(weft_join(t, NULL, -1) == 0);
        CHECK(stuck_reader_err == EBADF && stuck_writer_err == EBADF);
        CHECK(turn_writer_err == EBADF);
        CHECK(weft_count() == 0);
        close(sv[1]);
    }
}

/* ---- A held reply keeps flowing while its coroutine waits on something else ---- */

/* The audit's case: two requests arrive together, the reply to the first is held back
 * (coalescing) while the socket is full, and the coroutine then waits on something that only
 * the peer can end -- here a thread queue the peer posts to once it has the whole reply. The
 * reply must reach the peer as it reads, whatever the coroutine waits on. */
struct held_peer {
    int fd, go;
    size_t filled;
    weft_tqueue *q;
};

static void *held_peer_main(void *arg)
{
    struct held_peer *p = arg;
    char c;
    CHECK(read(p->go, &c, 1) == 1); /* the coroutine is about to wait */
    size_t want = p->filled + 3001, got = 0;
    char *buf = malloc(want);
    CHECK(buf);
    while (got < want) {
        ssize_t r = read(p->fd, buf + got, want - got);
        CHECK(r > 0);
        got += (size_t)r;
    }
    for (size_t i = p->filled; i < want - 1; i++)
        CHECK(buf[i] == 'r');
    CHECK(buf[want - 1] == '\n');
    free(buf);
    CHECK(weft_tqueue_send(p->q, (void *)1, -1) == 0);
    return NULL;
}

static weft_chan *held_c;
static int held_go;

static void *answer_then_wait_elsewhere(void *arg)
{
    weft_tqueue *q = arg;
    size_t len;
    const char *l = weft_gets(held_c, &len);
    CHECK(l && len == 4 && memcmp(l, "req1", 4) == 0);
    char reply[3000];
    memset(reply, 'r', sizeof reply);
    CHECK(weft_putln(held_c, reply, sizeof reply) == 0); /* held: req2 is buffered */
    CHECK(write(held_go, "g", 1) == 1);
    void *item;
    CHECK(weft_tqueue_recv(q, &item, weft_now() + 20000) == 0); /* the peer got it all */
    l = weft_gets(held_c, &len);
    CHECK(l && len == 4 && memcmp(l, "req2", 4) == 0);
    return NULL;
}

static void a_held_reply_flows_while_its_coroutine_waits_elsewhere(void)
{
    int sv[2], go[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0 && pipe(go) == 0);
    int small = 4096;
    CHECK(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small) == 0);
    /* Fill the server's side until the kernel takes no more: the held reply cannot go at
     * once when its coroutine parks. */
    CHECK(fcntl(sv[0], F_SETFL, O_NONBLOCK) == 0);
    char block[1024];
    memset(block, 'f', sizeof block);
    size_t filled = 0;
    for (;;) {
        ssize_t w = send(sv[0], block, sizeof block, 0);
        if (w < 0) {
            CHECK(errno == EAGAIN || errno == EWOULDBLOCK);
            break;
        }
        filled += (size_t)w;
    }
    held_c = weft_chan_open(sv[0]);
    CHECK(held_c);
    held_go = go[1];
    write_all(sv[1], "req1\nreq2\n", 10);
    struct held_peer p = {sv[1], go[0], filled, weft_tqueue_new(1)};
    CHECK(p.q);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, held_peer_main, &p) == 0);
    weft_co *co = weft_spawn(answer_then_wait_elsewhere, p.q);
    CHECK(co && weft_join(co, NULL, -1) == 0);
    CHECK(pthread_join(t, NULL) == 0);
    CHECK(weft_close(held_c) == 0 && weft_tqueue_free(p.q) == 0);
    close(sv[1]);
    close(go[0]);
    close(go[1]);
}


/* ---- A peer that resets while writers wait ---- */

/* A connected loopback TCP pair whose weft side (*mine) holds little in its send buffer. */
static void tcp_pair_small(int *mine, int *peer)
{
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    CHECK(l >= 0 && bind(l, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(l, 1) == 0);
    CHECK(getsockname(l, (struct sockaddr *)&sa, &len) == 0);
    *mine = socket(AF_INET, SOCK_STREAM, 0);
    int sndbuf = 4096;
    CHECK(setsockopt(*mine, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf) == 0);
    CHECK(connect(*mine, (struct sockaddr *)&sa, sizeof sa) == 0);
    CHECK((*peer = accept(l, NULL, NULL)) >= 0);
    close(l);
}

static void reset(int fd)
{
    struct linger lg = {1, 0};
    CHECK(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == 0);
    close(fd); /* RST */
}

static weft_chan *rst_c;
static char big[4 << 20];

static void *big_writer(void *arg)
{
    (void)arg;
    CHECK(weft_write(rst_c, big, sizeof big) == -1);
    CHECK(errno == ECONNRESET || errno == EPIPE);
    return NULL;
}

static void *small_writer(void *arg)
{
    (void)arg;
    CHECK(weft_write(rst_c, "bbbb\n", 5) == -1); /* its turn came after the reset */
    CHECK(errno == ECONNRESET || errno == EPIPE);
    return NULL;
}

/* The audit's case: in full buffering, a write that waited for its turn while the writer
 * ahead of it met the reset returned success, its bytes buffered for a peer that was gone.
 * Every later write and the close report the first error, not a later EPIPE. */
static void writers_waiting_for_their_turn_see_the_reset(void)
{
    for (int mode = 0; mode < 2; mode++) {
        int mine, peer;
        tcp_pair_small(&mine, &peer);
        CHECK((rst_c = weft_chan_open(mine)));
        if (mode)
            CHECK(weft_chan_set_buffering(rst_c, WEFT_BUF_FULL) == 0);
        weft_co *a = weft_spawn(big_writer, NULL), *b = weft_spawn(small_writer, NULL);
        CHECK(a && b);
        for (int i = 0; i < 20; i++) { /* a fills the socket and parks; b waits its turn */
            CHECK(weft_yield() == 0);
            usleep(1000);
        }
        reset(peer);
        CHECK(weft_join(a, NULL, -1) == 0 && weft_join(b, NULL, -1) == 0);
        CHECK(weft_write(rst_c, "later\n", 6) == -1 && errno == ECONNRESET);
        CHECK(weft_flush(rst_c) == -1 && errno == ECONNRESET);
        CHECK(weft_close(rst_c) == 0); /* nothing was left buffered */
    }
}

static void *direct_writer(void *arg)
{
    (void)arg;
    CHECK(weft_write(rst_c, big, sizeof big) == -1 && errno == EBADF);
    return NULL;
}

/* The audit's case: a close while another coroutine was parked in a large write (sent
 * straight from its memory) returned 0, though most of that write never left. */
static void a_close_that_cuts_a_direct_write_says_ebusy(void)
{
    int mine, peer;
    tcp_pair_small(&mine, &peer);
    CHECK((rst_c = weft_chan_open(mine)));
    weft_co *a = weft_spawn(direct_writer, NULL);
    CHECK(a);
    for (int i = 0; i < 10; i++) {
        CHECK(weft_yield() == 0);
        usleep(1000);
    }
    CHECK(weft_close(rst_c) == -1 && errno == EBUSY);
    CHECK(weft_join(a, NULL, -1) == 0);
    size_t got = 0;
    char buf[65536];
    ssize_t r;
    while ((r = read(peer, buf, sizeof buf)) > 0)
        got += (size_t)r;
    CHECK(r == 0 && got < sizeof big);
    close(peer);
}

const struct test tests[] = {
    {"a_parked_writers_record_is_never_split", a_parked_writers_record_is_never_split, 0},
    {"three_writers_random_records_stay_whole", three_writers_random_records_stay_whole, 0},
    {"close_does_not_wait_for_a_parked_writer", close_does_not_wait_for_a_parked_writer, 20},
    {"writers_waiting_for_their_turn_see_the_reset", writers_waiting_for_their_turn_see_the_reset,
     20},
    {"a_close_that_cuts_a_direct_write_says_ebusy", a_close_that_cuts_a_direct_write_says_ebusy,
     20},
    {"a_held_reply_flows_while_its_coroutine_waits_elsewhere",
     a_held_reply_flows_while_its_coroutine_waits_elsewhere, 60},
};
const size_t tests_count = sizeof tests / sizeof tests[0];
