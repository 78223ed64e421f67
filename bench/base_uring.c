/* base_uring: the hand-written io_uring line echo server weft is measured against.
 *
 * liburing, one thread, one ring: a multishot accept, and per connection a multishot receive
 * drawing from a ring of provided buffers (IORING_OP_PROVIDE_BUFFERS' successor, the
 * registered buffer ring), so an idle connection holds no buffer at all. Received bytes are
 * copied out of the provided buffer at once (the buffer goes straight back to the ring) into
 * the connection's output: complete lines are sent with one send, and while that send is in
 * flight further lines accumulate and leave together with the next one (one send in flight
 * per connection keeps the byte order). Per-connection buffers are allocated on demand and
 * freed when empty.
 *
 * The ring is set up with IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN when the
 * kernel takes it, else COOP_TASKRUN, else plain; the mode chosen is printed on stderr.
 *
 * Protocol: as base_epoll (a partial last line at EOF gets a '\n'; then the server closes).
 * Usage: base_uring [-p PORT]   (0: any free port); prints "listening on 127.0.0.1:PORT".
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define NBUF 2048          /* provided buffers (power of two) */
#define BUFSZ (16 * 1024)
#define BGID 1
#define SQ_ENTRIES 4096
#define CQ_ENTRIES 32768
#define MAX_PENDING (4 * 1024 * 1024)

enum { OP_ACCEPT = 1, OP_RECV = 2, OP_SEND = 3 };

struct conn {
    int fd;
    unsigned recv_armed : 1, sending : 1, eof : 1, dead : 1, cancelled : 1;
    char *obuf;            /* obuf[0, ready) complete lines to send next, obuf[ready, olen) partial line */
    size_t ready, olen, ocap;
    char *sbuf;            /* the send in flight: sbuf[soff, slen) still to go */
    size_t soff, slen, scap;
};

static struct io_uring ring;
static struct io_uring_buf_ring *br;
static char *bufs;
static int buf_added;      /* buffers re-added since the last advance */
static int lfd;
static volatile sig_atomic_t stop;
static int verbose = 1; /* -q: do not print the ring mode */

static void on_signal(int sig) { (void)sig; stop = 1; }

static struct io_uring_sqe *get_sqe(void)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
    while (!sqe) {
        io_uring_submit(&ring);
        sqe = io_uring_get_sqe(&ring);
    }
    return sqe;
}

static void arm_accept(void)
{
    struct io_uring_sqe *sqe = get_sqe();
    io_uring_prep_multishot_accept(sqe, lfd, NULL, NULL, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, OP_ACCEPT);
}

static void arm_recv(struct conn *c)
{
    struct io_uring_sqe *sqe = get_sqe();
    io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = BGID;
    io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)c | OP_RECV);
    c->recv_armed = 1;
}

static int grow(char **b, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 1024;
    while (n < need)
        n *= 2;
    char *p = realloc(*b, n);
    if (!p)
        return -1;
    *b = p;
    *cap = n;
    return 0;
}

static void submit_send(struct conn *c)
{
    struct io_uring_sqe *sqe = get_sqe();
    io_uring_prep_send(sqe, c->fd, c->sbuf + c->soff, c->slen - c->soff, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)c | OP_SEND);
    c->sending = 1;
}

/* Start a send of the complete lines in obuf, if none is in flight. */
static void start_send(struct conn *c)
{
    if (c->sending || c->ready == 0)
        return;
    /* swap buffers: obuf's lines become the send buffer, the partial tail moves over */
    char *b = c->sbuf;
    size_t cap = c->scap;
    c->sbuf = c->obuf;
    c->scap = c->ocap;
    c->slen = c->ready;
    c->soff = 0;
    c->obuf = b;
    c->ocap = cap;
    size_t tail = c->olen - c->ready;
    c->ready = 0;
    c->olen = 0;
    if (tail) {
        if (grow(&c->obuf, &c->ocap, tail) != 0) {
            c->dead = 1;
            return;
        }
        memcpy(c->obuf, c->sbuf + c->slen, tail);
        c->olen = tail;
    }
    submit_send(c);
}

static void maybe_free(struct conn *c)
{
    if (c->recv_armed || c->sending)
        return;
    if (!c->dead && !c->eof)
        return;
    close(c->fd);
    free(c->obuf);
    free(c->sbuf);
    free(c);
}

/* A dead connection stops its receive; the receive's final CQE then frees it. */
static void cancel_recv_if_dead(struct conn *c)
{
    if (!c->dead || !c->recv_armed || c->cancelled)
        return;
    struct io_uring_sqe *sqe = get_sqe();
    io_uring_prep_cancel64(sqe, (uint64_t)(uintptr_t)c | OP_RECV, 0);
    io_uring_sqe_set_data64(sqe, 0);
    c->cancelled = 1;
}

static void recycle(int bid)
{
    io_uring_buf_ring_add(br, bufs + (size_t)bid * BUFSZ, BUFSZ, (unsigned short)bid,
                          io_uring_buf_ring_mask(NBUF), buf_added);
    buf_added++;
}

static void on_recv(struct conn *c, struct io_uring_cqe *cqe)
{
    int more = (cqe->flags & IORING_CQE_F_MORE) != 0;
    if (!more)
        c->recv_armed = 0;
    if (cqe->res > 0) {
        int bid = (int)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
        const char *data = bufs + (size_t)bid * BUFSZ;
        size_t n = (size_t)cqe->res;
        if (!c->dead) {
            if (c->olen + n > MAX_PENDING || grow(&c->obuf, &c->ocap, c->olen + n) != 0) {
                c->dead = 1;
            } else {
                memcpy(c->obuf + c->olen, data, n);
                const char *nl = memrchr(c->obuf + c->olen, '\n', n);
                c->olen += n;
                if (nl)
                    c->ready = (size_t)(nl - c->obuf) + 1;
                start_send(c);
            }
        }
        recycle(bid);
        if (!more && !c->dead && !c->eof)
            arm_recv(c);
    } else if (cqe->res == 0) {
        c->eof = 1;
        if (!c->dead && c->olen > c->ready) {
            if (grow(&c->obuf, &c->ocap, c->olen + 1) == 0) {
                c->obuf[c->olen++] = '\n';
                c->ready = c->olen;
            }
        }
        c->ready = c->olen;
        if (!c->dead)
            start_send(c);
    } else if (cqe->res == -ENOBUFS) {
        if (!more && !c->dead && !c->eof)
            arm_recv(c); /* buffers come back as this batch is processed */
    } else {
        if (!more)
            c->dead = 1;
    }
    if (!c->recv_armed && !c->eof && !c->dead)
        arm_recv(c);
    cancel_recv_if_dead(c);
    maybe_free(c);
}

static void on_send(struct conn *c, struct io_uring_cqe *cqe)
{
    c->sending = 0;
    if (cqe->res < 0) {
        c->dead = 1;
    } else {
        c->soff += (size_t)cqe->res;
        if (c->soff < c->slen && !c->dead) {
            submit_send(c);
            return;
        }
        if (c->ready)
            start_send(c);
        else if (c->olen == 0) { /* nothing pending: give the memory back */
            free(c->obuf);
            c->obuf = NULL;
            c->ocap = 0;
        }
        if (!c->sending) {
            free(c->sbuf);
            c->sbuf = NULL;
            c->scap = 0;
        }
    }
    cancel_recv_if_dead(c);
    maybe_free(c);
}

static int setup_ring(void)
{
    static const struct {
        unsigned flags;
        const char *name;
    } modes[] = {
        {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN, "SINGLE_ISSUER|DEFER_TASKRUN"},
        {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN, "SINGLE_ISSUER|COOP_TASKRUN"},
        {IORING_SETUP_COOP_TASKRUN, "COOP_TASKRUN"},
        {0, "plain"},
    };
    int err = 0;
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        struct io_uring_params p;
        memset(&p, 0, sizeof p);
        p.flags = modes[i].flags | IORING_SETUP_CQSIZE;
        p.cq_entries = CQ_ENTRIES;
        err = io_uring_queue_init_params(SQ_ENTRIES, &ring, &p);
        if (err == 0) {
            if (!(p.features & IORING_FEAT_FAST_POLL))
                fprintf(stderr, "base_uring: note: no IORING_FEAT_FAST_POLL\n");
            if (verbose)
                fprintf(stderr, "base_uring: ring mode %s\n", modes[i].name);
            return 0;
        }
    }
    fprintf(stderr, "base_uring: io_uring_queue_init: %s\n", strerror(-err));
    return -1;
}

int main(int argc, char **argv)
{
    int port = 1234, opt;
    while ((opt = getopt(argc, argv, "p:q")) != -1) {
        if (opt == 'p')
            port = atoi(optarg);
        else if (opt == 'q')
            verbose = 0;
        else {
            fprintf(stderr, "usage: %s [-p PORT]\n", argv[0]);
            return 2;
        }
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    if (setup_ring() != 0)
        return 1;
    /* the provided-buffer ring; its buffers are touched now, a fixed cost of the server */
    size_t rsz = NBUF * sizeof(struct io_uring_buf);
    if (posix_memalign((void **)&br, 4096, rsz) != 0 ||
        posix_memalign((void **)&bufs, 4096, (size_t)NBUF * BUFSZ) != 0) {
        fprintf(stderr, "base_uring: out of memory\n");
        return 1;
    }
    memset(bufs, 0, (size_t)NBUF * BUFSZ);
    struct io_uring_buf_reg reg = {.ring_addr = (uint64_t)(uintptr_t)br, .ring_entries = NBUF, .bgid = BGID};
    int err = io_uring_register_buf_ring(&ring, &reg, 0);
    if (err) {
        fprintf(stderr, "base_uring: io_uring_register_buf_ring: %s\n", strerror(-err));
        return 1;
    }
    io_uring_buf_ring_init(br);
    for (int i = 0; i < NBUF; i++)
        recycle(i);
    io_uring_buf_ring_advance(br, buf_added);
    buf_added = 0;

    lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof addr;
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(lfd, SOMAXCONN) != 0 ||
        getsockname(lfd, (struct sockaddr *)&addr, &alen) != 0) {
        perror("listen");
        return 1;
    }
    arm_accept();
    printf("listening on 127.0.0.1:%d\n", ntohs(addr.sin_port));
    fflush(stdout);

    while (!stop) {
        int r = io_uring_submit_and_wait(&ring, 1);
        if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY) {
            fprintf(stderr, "base_uring: io_uring_submit_and_wait: %s\n", strerror(-r));
            return 1;
        }
        struct io_uring_cqe *cqe;
        unsigned head, count = 0;
        io_uring_for_each_cqe(&ring, head, cqe) {
            count++;
            uint64_t ud = io_uring_cqe_get_data64(cqe);
            struct conn *c = (struct conn *)(uintptr_t)(ud & ~(uint64_t)3);
            switch (ud & 3) {
            case OP_ACCEPT:
                if (cqe->res >= 0) {
                    setsockopt(cqe->res, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct conn *nc = calloc(1, sizeof *nc);
                    if (!nc) {
                        close(cqe->res);
                    } else {
                        nc->fd = cqe->res;
                        arm_recv(nc);
                    }
                }
                if (!(cqe->flags & IORING_CQE_F_MORE))
                    arm_accept();
                break;
            case OP_RECV:
                on_recv(c, cqe);
                break;
            case OP_SEND:
                on_send(c, cqe);
                break;
            default:
                break; /* cancel results */
            }
        }
        io_uring_cq_advance(&ring, count);
        if (buf_added) {
            io_uring_buf_ring_advance(br, buf_added);
            buf_added = 0;
        }
    }
    io_uring_queue_exit(&ring);
    return 0;
}
