/* weft: blocking-style network code, one coroutine per connection, one event loop.
 *
 * Every call that can wait parks the calling coroutine and lets the others run; called
 * outside any coroutine, the same call simply blocks the thread. Errors are -1 (or NULL)
 * with errno set; each declaration lists the errno values it can give besides those of the
 * underlying system call. Times: weft_now() is a monotonic clock in milliseconds; a
 * "deadline" is an absolute time on that clock, a "timeout" a relative one, and -1 means
 * "wait forever" for both.
 */
#ifndef WEFT_H
#define WEFT_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#define WEFT_VERSION "0.1.0"

/* ---- Time ------------------------------------------------------------------------- */

/* Milliseconds on the monotonic clock (CLOCK_MONOTONIC); the base for every deadline. */
int64_t weft_now(void);

/* ---- Coroutines and the scheduler --------------------------------------------------- */
/* One scheduler per thread, created on first use. Coroutines of a thread run one at a time,
 * switching only inside weft calls that wait, so they share data without locks. */

typedef struct weft_co weft_co;
typedef void *(*weft_fn)(void *arg);

/* Default coroutine stack: 256 KiB of address space; only touched pages cost memory. */
#define WEFT_STACK_DEFAULT (256u * 1024u)
/* Smallest stack accepted by weft_spawn_ex (smaller requests are rounded up). */
#define WEFT_STACK_MIN (16u * 1024u)

/* Stack overflows: below every stack is a guard gap (one page by default) that no access may
 * touch; one that does ends the process with "weft: stack overflow in coroutine 'NAME'" on
 * stderr. A function whose frame is larger than the gap could jump over it into other memory
 * unless it was compiled with -fstack-clash-protection, which touches every page of a large
 * frame (or alloca, or VLA) in order: weft, its examples and tests are built with it, and
 * weft.pc gives it to programs built against weft. Code built without it needs a gap larger
 * than its largest frame (guard_size). */
typedef struct weft_spawn_opts {
    const char *name;   /* shown in diagnostics; copied, truncated to 63 bytes; NULL: "co" */
    size_t stack_size;  /* bytes; 0: WEFT_STACK_DEFAULT; rounded up to whole pages */
    int detached;       /* nonzero: freed when it returns, never joined */
    size_t guard_size;  /* bytes of guard gap below the stack; 0: one page (64 KiB on
                           aarch64, where compilers probe large frames 64 KiB apart); rounded
                           up to pages (no gap for WEFT_STACK_GUARD=auto's canary stacks) */
} weft_spawn_opts;

/* Create a joinable coroutine that will run fn(arg) on the default stack; it first runs when
 * the scheduler next gets control. NULL on error: ENOMEM (no memory or no mapping left). */
weft_co *weft_spawn(weft_fn fn, void *arg);
/* Same, with a name, a stack size and detached state. ENOMEM as above (also for sizes the
 * kernel cannot map), EINVAL (stack_size or guard_size above SIZE_MAX / 4: no mapping could
 * hold it). */
weft_co *weft_spawn_ex(weft_fn fn, void *arg, const weft_spawn_opts *opts);
/* Mark co detached: it is freed when it ends and must not be used after. EINVAL if already
 * detached or joined. */
int weft_detach(weft_co *co);
/* Wait until co ends, store its return value in *result (if non-NULL), free co. Outside a
 * coroutine it runs the scheduler until co ends. EINVAL (detached, or already has a joiner),
 * EDEADLK (co is the caller), ETIMEDOUT, ECANCELED (the caller was cancelled; co lives on). */
int weft_join(weft_co *co, void **result, int64_t deadline);
/* Cancel co: its current or next blocking call returns -1/ECANCELED, and so does every one
 * after; co is expected to clean up and return. No effect on a coroutine that has ended. */
void weft_cancel(weft_co *co);
/* The running coroutine, NULL outside any coroutine. */
weft_co *weft_self(void);
/* A coroutine's name ("co" if it was given none). */
const char *weft_name(const weft_co *co);
/* Nonzero if the running coroutine has been cancelled. */
int weft_cancelled(void);
/* Let the other runnable coroutines run, then continue. Outside a coroutine: run one
 * scheduler turn without waiting. ECANCELED if the caller is cancelled. */
int weft_yield(void);
/* Wait ms milliseconds (parks; outside a coroutine, blocks). ECANCELED. */
int weft_sleep(int64_t ms);
/* Wait until the deadline. ECANCELED. */
int weft_sleep_until(int64_t deadline);
/* Run this thread's scheduler until no coroutine is left or weft_stop() is called; returns
 * 0. EDEADLK if called from a coroutine, or if every coroutine left is parked on something
 * no event or timer can end (a deadlock: they stay parked). */
int weft_run(void);
/* Make weft_run() return after the current turn; coroutines stay as they are. */
void weft_stop(void);
/* Number of live (not yet ended) coroutines in this thread's scheduler. */
size_t weft_count(void);

/* A thread that ends with coroutines still alive: they are cancelled and its scheduler runs,
 * for at most a second, while they end and close what they hold; then whatever is left is
 * freed (stacks, coroutine structs, backend, descriptors of the scheduler itself), and
 * coroutines that still had not ended never run again. Meanwhile a joinable coroutine can
 * still be joined by another of them; whatever nobody joined is freed at the end. A server
 * still running on that thread stops accepting: its listener is closed (clients still in its
 * backlog are refused), its handlers are cancelled like the rest, and it is freed once they
 * have ended. */

/* fork(): the child has only the thread that called fork. Its scheduler gets an event backend
 * of its own and the offload pool starts anew there; the parent's coroutines are never run or
 * woken in the child (their memory stays as it is). A coroutine that calls fork goes on in
 * the child as its scheduler's only coroutine, and the child's weft_run returns when it ends.
 * If the thread itself was waiting outside any coroutine (a thread queue, a name lookup with
 * a deadline), that wait goes on in the child: it ends with what the child's coroutines or
 * threads provide, with what a thread of the parent had handed it before the fork, or at its
 * deadline (calls the parent's pool had not finished are not run again). The child may use
 * every channel it inherited: input already received stays readable there, and output a
 * channel had buffered, held back or queued at the fork is the parent's (which sends it), so
 * the child drops its copy before its own first write, flush or close on that channel; a
 * writer's turn held by a parent's coroutine passes to the child's first writer. (Both
 * processes then read from and write to the same socket, as with any inherited fd. On
 * io_uring the forking thread's receives, armed by its earlier reads, are paused at the fork,
 * so the parent takes nothing more from a socket until it reads it again; those of the
 * parent's other threads go on.) SIGINT
 * and SIGTERM get back, in the child, the actions they had before
 * weft_server_stop_on_signals. */

/* ---- Waiting on file descriptors ---------------------------------------------------- */
/* The building block under channels, for code that drives its own non-blocking fds. */

#define WEFT_READABLE 1
#define WEFT_WRITABLE 2

/* Wait until fd is readable or writable (one of the WEFT_ flags) or the deadline passes.
 * Edge-triggered: call it only after a non-blocking call on fd failed with EAGAIN, and
 * retry that call after it returns (it may return early). The fd must be non-blocking and
 * closed with weft_fd_close. ETIMEDOUT, ECANCELED, EBUSY (another coroutine already waits
 * for the same event on fd), EBADF (fd is not an open descriptor, on either backend, or was
 * closed by weft_fd_close meanwhile). */
int weft_wait_fd(int fd, int events, int64_t deadline);
/* Close fd, first waking every coroutine waiting on it with EBADF. */
int weft_fd_close(int fd);

/* ---- Event backend ----------------------------------------------------------------- */

/* Choose this thread's event backend before its scheduler starts: "epoll", "uring" or "auto"
 * (the default, also settable with the environment variable WEFT_BACKEND; auto is io_uring
 * wherever it starts, but epoll under valgrind, which stops every thread while one waits in
 * io_uring_enter). A backend that cannot start falls back to epoll, and
 * weft_backend_reason says why. EINVAL, EBUSY (the scheduler already runs). */
int weft_set_backend(const char *name);
/* The backend of this thread's scheduler: "epoll" or "uring"; on a thread whose scheduler
 * has not started, the one it would get now (asking starts nothing, so weft_set_backend
 * still works after it). */
const char *weft_backend_name(void);
/* One line saying why that backend, e.g. "io_uring unavailable (...): epoll instead". The
 * text stays valid until the thread's next call of either function. */
const char *weft_backend_reason(void);

/* ---- Channels ---------------------------------------------------------------------- */
/* A buffered byte stream over an fd, the C form of a Tcl channel. Reads yield until data
 * arrives; writes go through a bounded buffer flushed according to the buffering mode.
 * Several coroutines may share a channel: writers take turns, each write (weft_write,
 * weft_putln, weft_printf, ...) holding the turn from its first byte to its last, so its bytes
 * are never split by another's, whatever its size and however often it waits; waiting writers
 * get the turn in order. Only one reader may wait at a time (another gets EBUSY). */

typedef struct weft_chan weft_chan;

typedef enum weft_buffering {
    WEFT_BUF_NONE, /* every write goes out at once */
    WEFT_BUF_LINE, /* flushed when a newline is written or the buffer fills (sockets' default).
                    * In a coroutine, a reply written while more complete lines of input wait
                    * in the same channel is held until the coroutine reads past them,
                    * yields, parks or ends, so pipelined requests are answered in one send.
                    * Order and content never change. */
    WEFT_BUF_FULL  /* flushed when the buffer fills, or by weft_flush/weft_close */
} weft_buffering;

/* Default longest line weft_gets accepts (without its newline). */
#define WEFT_MAXLINE_DEFAULT (64u * 1024u)
/* Default size of the write buffer; a write beyond it waits for the peer to read. */
#define WEFT_WBUF_DEFAULT (64u * 1024u)

/* Wrap fd (socket, pipe, tty, ...) in a channel that owns it; fd is made non-blocking (its
 * other flags, close-on-exec among them, stay as they were; a TCP socket may get TCP_INQ).
 * ENOMEM, EBADF. Descriptors weft creates itself (listeners, accepted and connected
 * sockets) are close-on-exec. */
weft_chan *weft_chan_open(int fd);
/* The channel's file descriptor (still owned by the channel). */
int weft_chan_fd(const weft_chan *c);
/* The peer's "host:port" ("[v6addr]:port", "unix:PATH" or "unix") for sockets; "" otherwise. */
const char *weft_chan_peer(const weft_chan *c);
/* Set the buffering mode. EINVAL. */
int weft_chan_set_buffering(weft_chan *c, weft_buffering mode);
/* Set the longest accepted line, in bytes, 1 or more. EINVAL. */
int weft_chan_set_maxline(weft_chan *c, size_t max);
/* Set the write buffer limit in bytes, 1 or more; pending output is kept. EINVAL. */
int weft_chan_set_wbuf(weft_chan *c, size_t max);
/* Per-operation timeouts in ms (-1: none, the default): a read or a flush that waits longer,
 * counted from its first wait, fails with ETIMEDOUT. */
int weft_chan_set_timeouts(weft_chan *c, int64_t read_ms, int64_t write_ms);

/* Read one line. Returns it without its '\n' (a "\r" before it is kept), NUL-terminated for
 * convenience, with its length in *len (NUL bytes inside it survive); the text stays valid
 * until the next read on c. A last line without newline is returned at end of file. NULL at
 * end of file (weft_eof() is then true and errno 0) or on error: EMSGSIZE (line longer than
 * maxline: it is discarded up to its newline, the next call reads the line after it),
 * ETIMEDOUT, ECANCELED, EBADF (closed meanwhile), ECONNRESET and other read errors. */
const char *weft_gets(weft_chan *c, size_t *len);
/* Read up to n bytes (waits only if none is buffered). 0 at end of file; -1 as weft_gets. */
ssize_t weft_read(weft_chan *c, void *buf, size_t n);
/* Read exactly n bytes; fewer only at end of file (then weft_eof() is true). -1 on error
 * (as weft_gets); the bytes it had read by then stay buffered, in order, for the next read,
 * so a retry after ETIMEDOUT or ECANCELED loses nothing (ENOMEM if they could not be kept). */
ssize_t weft_read_exact(weft_chan *c, void *buf, size_t n);
/* Nonzero once a read has met end of file and no buffered input is left (Tcl's eof). */
int weft_eof(const weft_chan *c);

/* Write n bytes through the buffer; waits while the buffer is full (writes of at least the
 * buffer size go straight out). Returns n or -1: ETIMEDOUT (write timeout), ECANCELED, EBADF,
 * EPIPE, ECONNRESET. After a failed write an unknown part of buf may have been sent or
 * buffered: treat the stream as broken. After EPIPE or ECONNRESET every later write fails
 * the same way. */
ssize_t weft_write(weft_chan *c, const void *buf, size_t n);
/* Write the NUL-terminated string s and a newline. 0 or -1 as weft_write. */
int weft_puts(weft_chan *c, const char *s);
/* Write n bytes of line (NULs allowed) and a newline: the partner of weft_gets. */
int weft_putln(weft_chan *c, const void *line, size_t n);
/* printf to the channel. Returns the byte count or -1 (also EOVERFLOW). */
int weft_printf(weft_chan *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* vprintf to the channel. */
int weft_vprintf(weft_chan *c, const char *fmt, va_list ap);
/* Send count bytes of the file fd, from *offset (advanced past what was read; NULL: from and
 * advancing its file position), after what c has buffered: the kernel copies them straight
 * from the page cache (sendfile(2)) on a plain socket or pipe, else (TLS, files sendfile
 * cannot read) they pass through the write buffer. Waits as a write does, and returns once
 * they are sent or queued within the write buffer limit, in any buffering mode. Returns the
 * byte count, fewer than count only at the file's end, or -1: as weft_write, or the file's
 * read error (EIO, EBADF, ...); *offset then tells how far it got. fd must be a regular file
 * or a block device: EISDIR, EINVAL for a pipe, socket or character device (whose read could
 * block the thread), before anything is sent. */
ssize_t weft_sendfile(weft_chan *c, int fd, off_t *offset, size_t count);
/* Send all buffered output, waiting as needed. -1 as weft_write. */
int weft_flush(weft_chan *c);
/* Flush, then shut down the sending side (the peer reads end of file); reads go on. Output
 * after it fails with EPIPE where it would be sent: at once when unbuffered, else at the
 * flush (weft_flush, weft_close). */
int weft_shutdown(weft_chan *c);
/* Flush (within the write timeout), close the fd and free c. Coroutines still waiting on c
 * wake with EBADF; c is freed when the last leaves. Returns 0, or -1 with the flush or
 * close error, or with EPIPE/ECONNRESET when output was left that the vanished peer never
 * got (c is closed and freed all the same). Close never waits for another coroutine parked
 * inside a write on c: that write fails with EBADF, what it had not sent is dropped, and
 * close returns -1/EBUSY. */
int weft_close(weft_chan *c);

/* ---- Network ----------------------------------------------------------------------- */
/* Addresses are strings: "host:port", "[v6addr]:port", ":port" or "*:port" (every
 * interface), "unix:/path/to/socket". Host names are resolved with getaddrinfo. Port 0
 * picks a free port. TCP sockets get TCP_NODELAY: channels do their own buffering. */

typedef struct weft_listener weft_listener;

/* Listen on addr with the given backlog (0: SOMAXCONN). NULL: EINVAL (bad address),
 * EADDRINUSE, EAI-style resolution failures as EHOSTUNREACH, ENOMEM. */
weft_listener *weft_listen(const char *addr, int backlog);
/* weft_listen with flags: WEFT_LISTEN_REUSEPORT lets several listeners (one per thread, each
 * with its own scheduler) share a TCP port, the kernel spreading connections over them. */
#define WEFT_LISTEN_REUSEPORT 1
weft_listener *weft_listen_ex(const char *addr, int backlog, int flags);
/* The listening address, as "127.0.0.1:1234" (the real port if 0 was asked). */
const char *weft_listener_addr(const weft_listener *l);
/* The listening port (0 for Unix sockets). */
int weft_listener_port(const weft_listener *l);
/* The listening fd. */
int weft_listener_fd(const weft_listener *l);
/* Accept one client as a channel. Parks until one arrives (blocks outside a coroutine).
 * ETIMEDOUT, ECANCELED, EBADF, EMFILE/ENFILE (out of descriptors: retry later), ENOMEM,
 * EBUSY (another coroutine already accepts on l). */
weft_chan *weft_accept(weft_listener *l, int64_t deadline);
/* Stop listening, free l (and remove a Unix socket's file). Waiters wake with EBADF. */
int weft_listener_close(weft_listener *l);

/* Connect to addr, trying each resolved address in turn until the deadline. NULL:
 * ETIMEDOUT, ECANCELED, ECONNREFUSED, EINVAL, EHOSTUNREACH (name not resolved). */
weft_chan *weft_connect(const char *addr, int64_t deadline);

/* ---- TLS --------------------------------------------------------------------------- */
/* TLS on any connected channel, over OpenSSL 3: after a handshake every channel call works
 * unchanged (lines, limits, buffering modes, timeouts, coalescing, close under a waiter),
 * parking in a coroutine and blocking outside one, on either backend. A context holds the
 * settings and certificates and is shared by every connection and thread. TLS 1.2 is the
 * minimum, renegotiation is off, servers issue session tickets. Without OpenSSL at build
 * time every call here fails with ENOTSUP. Errors: EPROTO for a TLS protocol failure
 * (weft_tls_error tells OpenSSL's reason), and those of the channel's calls. */

typedef struct weft_tls weft_tls;

/* A server context from PEM files: cert_file holds the certificate chain (leaf first),
 * key_file its private key (ECDSA or RSA, not encrypted: no passphrase is ever asked for).
 * NULL: ENOENT/EACCES (a file), EPROTO (not PEM, an encrypted key, or the key does not
 * match), ENOMEM, ENOTSUP. */
weft_tls *weft_tls_server(const char *cert_file, const char *key_file);
/* A client context that verifies the peer's certificate chain against ca_file and/or ca_dir
 * (PEM; both NULL: the system's CA store) and its name against the one given to
 * weft_tls_connect. NULL: ENOENT/EACCES (a file or the directory), ENOTDIR (ca_dir is not
 * one), EPROTO, ENOMEM, ENOTSUP. */
weft_tls *weft_tls_client(const char *ca_file, const char *ca_dir);
/* Client only: verify == 0 turns verification off (insecure: any certificate is taken). */
int weft_tls_set_verify(weft_tls *ctx, int verify);
/* The application protocols offered (client) or accepted (server, in its order of
 * preference), e.g. {"h2", "http/1.1"}: ALPN. EINVAL (n == 0, a name empty or over 255
 * bytes), ENOMEM. */
int weft_tls_set_alpn(weft_tls *ctx, const char *const *protocols, size_t n);
/* Release ctx; channels and servers using it keep it until they are done. */
void weft_tls_free(weft_tls *ctx);

/* Server side: make c a TLS channel and run the handshake (until the deadline). Bytes of the
 * peer's already buffered on c are part of the handshake (a protocol that starts TLS after
 * plain lines); output buffered on c is sent first, in the clear. 0, or -1: EPROTO (with
 * weft_tls_error), ETIMEDOUT, ECANCELED, ECONNRESET (the peer went away), EBADF, ENOTSUP.
 * After a failure c only closes. */
int weft_tls_accept(weft_chan *c, weft_tls *ctx, int64_t deadline);
/* Client side: the same, sending servername (SNI, unless it is an IP address) and checking
 * the certificate is for it (unless verification is off); NULL: no name is sent or checked. */
int weft_tls_connect(weft_chan *c, weft_tls *ctx, const char *servername, int64_t deadline);
/* After a handshake: the protocol ("TLSv1.3"), cipher, ALPN result (NULL if none), or NULL
 * when c is not a TLS channel. Valid until c is closed. */
const char *weft_tls_version(const weft_chan *c);
const char *weft_tls_cipher(const weft_chan *c);
const char *weft_tls_alpn(const weft_chan *c);
/* The peer certificate's subject ("CN=example.com,O=..."), or NULL (none, or not TLS). */
const char *weft_tls_peer_subject(const weft_chan *c);
/* The reason of c's last TLS failure, as OpenSSL gives it ("certificate verify failed:
 * ..."), or "" if none. */
const char *weft_tls_error(const weft_chan *c);

/* ---- Serving ----------------------------------------------------------------------- */
/* A server accepts clients on a listener and runs each in its own detached coroutine, named
 * after the peer ("host:port" as the seed names them). Every limit below has a default, is
 * settable, and costs only the offending connection. */

typedef struct weft_server weft_server;
/* A connection handler: runs in its own coroutine; the server closes the channel (flushing
 * what is left, within the write timeout) when it returns, unless it was closed already (by
 * the handler, or by another coroutine: after weft_close nothing may use it). The channel is
 * valid until the handler returns (it lives at the top of the handler's stack): coroutines
 * still inside a call on it wake with EBADF, and the handler's coroutine ends once they have
 * left it. */
typedef void (*weft_handler)(weft_chan *c, void *arg);

/* Defaults of weft_server_opts (used where a field is 0). */
#define WEFT_MAX_CONNS_DEFAULT 16384u       /* handlers at once; more wait in the backlog */
#define WEFT_IDLE_TIMEOUT_DEFAULT 300000    /* ms a read may wait: a line must arrive in it */
#define WEFT_WRITE_TIMEOUT_DEFAULT 60000    /* ms a write may wait for a client that does not read */
#define WEFT_GRACE_DEFAULT 5000             /* ms handlers get to finish on shutdown */
#define WEFT_HANDSHAKE_TIMEOUT_DEFAULT 10000 /* ms a TLS client gets to finish its handshake */

typedef struct weft_server_opts {
    size_t max_conns;         /* concurrent handlers; beyond it accepting pauses */
    int64_t idle_timeout_ms;  /* read timeout of every client channel; -1: none */
    int64_t write_timeout_ms; /* write timeout of every client channel; -1: none */
    size_t maxline;           /* line limit of every client channel (WEFT_MAXLINE_DEFAULT) */
    size_t wbuf;              /* write buffer limit of every client channel (WEFT_WBUF_DEFAULT) */
    size_t stack_size;        /* handler stacks (WEFT_STACK_DEFAULT) */
    size_t guard_size;        /* guard gap below each handler stack (one page) */
    weft_tls *tls;            /* serve TLS with this context: each client's coroutine runs
                                 the handshake before the handler (which is then the same
                                 for TLS and plain TCP); NULL: plain */
    int64_t handshake_timeout_ms; /* TLS handshake limit (WEFT_HANDSHAKE_TIMEOUT_DEFAULT) */
    int keep_fd_limit;        /* nonzero: leave RLIMIT_NOFILE alone (by default the first
                                 server raises the soft limit to the hard one, as Go does,
                                 so thousands of clients need no ulimit) */
} weft_server_opts;

typedef struct weft_server_stats {
    uint64_t accepted;      /* connections accepted so far */
    uint64_t active;        /* handlers running now */
    uint64_t accept_errors; /* failed accept calls (EMFILE and the like) */
    uint64_t spawn_errors;  /* connections closed at once: no memory for their coroutine */
    uint64_t limit_waits;   /* times accepting paused at max_conns */
    uint64_t tls_failures;  /* connections closed because their TLS handshake failed */
} weft_server_stats;

/* Start serving l with the default options. The server owns l. On EMFILE/ENFILE or any accept
 * failure it backs off (10 ms doubling to 1 s, no busy loop) and clients wait in the backlog;
 * when no coroutine can be made for a client (ENOMEM) that client alone is closed. ENOMEM. */
weft_server *weft_server_start(weft_listener *l, weft_handler handler, void *arg);
/* Same with options (NULL or 0 fields: defaults). EINVAL (no listener or handler, or a
 * stack_size or guard_size that weft_spawn_ex refuses), ENOMEM. */
weft_server *weft_server_start_ex(weft_listener *l, weft_handler handler, void *arg,
                                  const weft_server_opts *opts);
/* Graceful shutdown (EALREADY if s is already stopping): stop accepting, take the clients
 * already waiting in the listen backlog, close the listener; give handlers grace_ms (-1:
 * WEFT_GRACE_DEFAULT) to end, starting the backlog's clients as slots free; then stop their
 * input (and start any backlog client left, input stopped): reads return what has already
 * arrived and then fail with ECANCELED instead of waiting, so every line a client got in
 * before the shutdown is answered; after a further write timeout, cancel what is left.
 * Returns when every handler has ended, and frees s. From a coroutine or outside one (then
 * it runs the scheduler meanwhile). */
int weft_server_shutdown(weft_server *s, int64_t grace_ms);
/* Stop accepting, take the clients waiting in the listen backlog, close the listener, and
 * free s once its handlers (the backlog's started as slots free) have gone on to their end.
 * EALREADY if s is already stopping. */
int weft_server_close(weft_server *s);
/* On the first SIGINT or SIGTERM, shut s down gracefully (weft_server_shutdown with grace_ms);
 * a second one ends the process at once. At most one such server per thread; every thread's
 * server hears the signal. EBUSY (and nothing changes) if s or another server of this thread
 * already stops on signals, or s is stopping; ENOMEM. */
int weft_server_stop_on_signals(weft_server *s, int64_t grace_ms);
/* Counters of s. */
void weft_server_get_stats(const weft_server *s, weft_server_stats *st);
/* Listen on addr, serve it with handler and default options, shut down gracefully on
 * SIGINT/SIGTERM, and run the scheduler: returns 0 after such a shutdown, -1 at once if
 * listening failed. */
int weft_serve(const char *addr, weft_handler handler, void *arg);

/* ---- Seeing inside a running program ------------------------------------------------- */
/* What each coroutine is doing and how busy the loop is, beside the servers' own counters;
 * tools/weft-gdb.py shows the same from outside, in a live process or a core file. */

typedef struct weft_sched_stats {
    size_t coroutines;   /* live: running + ready + parked */
    size_t running;      /* 1 when asked from a coroutine, else 0 */
    size_t ready;        /* runnable, waiting for their turn */
    size_t parked;       /* waiting for something: an event, a timer, another coroutine */
    size_t parked_io;    /* of those, on a descriptor or an I/O operation */
    uint64_t switches;   /* context switches: into a coroutine, and out of one */
    uint64_t turns;      /* loop turns */
    uint64_t events;     /* events and completions the event backend reported: descriptors'
                            readiness, I/O operations (io_uring), wake-ups from other threads */
    size_t timers;       /* timers pending (a wait that ended early leaves its timer until due) */
    const char *backend; /* "epoll" or "uring" (static storage) */
} weft_sched_stats;

/* Counters of this thread's scheduler. It starts with the thread's first weft call that needs
 * one and is freed when nothing is left for it (weft_run returned with no coroutine left);
 * its counts go with it: a thread without a scheduler gets zeros and the backend it would
 * get (weft_backend_name). */
void weft_sched_get_stats(weft_sched_stats *st);

/* Write to fd one line per coroutine of this thread's scheduler, oldest first: its id ("#N",
 * unique in the process), name, state (running, ready, parked), and for a parked one what it
 * waits on (reading or writing descriptor N, with the socket's peer or listening address; an
 * I/O operation; a sleep; a join; a queue, select, mutex (and who holds it), condition, wait
 * group, group, a channel's write turn, a thread queue, an offloaded call, a server's
 * handlers), for how long (counted from the loop turn in which it parked, to within a few
 * ms) and, if it has a deadline, the time left; then its stack, as pages in memory / size
 * (pages it touched, or an earlier coroutine that had the same pooled stack). A last line
 * sums up (as weft_sched_get_stats). From a coroutine or outside one; blocks the thread until
 * written. 0, or -1 with the errno of write(2). */
int weft_dump(int fd);
/* From now on, when signal sig arrives, every thread's scheduler writes weft_dump to standard
 * error at its next loop turn, waking its loop if it sleeps; never from the signal handler
 * itself. A thread blocked in a weft call outside any coroutine writes its dump when the signal
 * interrupts that call. A standard error that takes nothing for 2 s (a full pipe nobody reads)
 * loses the rest of that dump rather than stop the loop. Replaces sig's handler (the examples
 * use SIGUSR1). EINVAL (sig cannot
 * be caught), EMFILE/ENFILE (no eventfd for the wake-ups). */
int weft_dump_on_signal(int sig);

/* ---- Sync between coroutines ---------------------------------------------------------- */
/* Queues, select, mutex, condition and wait group for the coroutines of one scheduler (one
 * thread): no locks, no system calls. Every wait takes a deadline and fails with ETIMEDOUT
 * or ECANCELED; outside a coroutine a wait runs the scheduler until it is satisfied. */

typedef struct weft_queue weft_queue;

/* A bounded FIFO of pointers (a Go channel with a buffer of capacity >= 1). EINVAL, ENOMEM. */
weft_queue *weft_queue_new(size_t capacity);
/* Append item, waiting while the queue is full. EPIPE (closed), ETIMEDOUT, ECANCELED. */
int weft_queue_send(weft_queue *q, void *item, int64_t deadline);
/* Take the oldest item, waiting while the queue is empty. EPIPE once it is closed and
 * drained, ETIMEDOUT, ECANCELED. */
int weft_queue_recv(weft_queue *q, void **item, int64_t deadline);
/* Without waiting: EAGAIN when full (send) or empty (recv), EPIPE when closed. */
int weft_queue_try_send(weft_queue *q, void *item);
int weft_queue_try_recv(weft_queue *q, void **item);
/* Close: waiting and later senders fail with EPIPE; receivers drain what is left, then EPIPE. */
void weft_queue_close(weft_queue *q);
/* Free q. EBUSY (and nothing freed) while a coroutine waits on it. */
int weft_queue_free(weft_queue *q);
/* Items queued now. */
size_t weft_queue_len(const weft_queue *q);

#define WEFT_SEND 1
#define WEFT_RECV 2

typedef struct weft_select_op {
    weft_queue *q;
    int op;     /* WEFT_SEND or WEFT_RECV */
    void *item; /* in: the item to send; out: the item received */
    int err;    /* out: 0, or EPIPE if the queue was closed (and drained, for a receive) */
} weft_select_op;

/* Wait until one of the n operations can complete, complete it, return its index (the first
 * ready one in array order). -1: ETIMEDOUT, ECANCELED, EINVAL. */
int weft_select(weft_select_op *ops, size_t n, int64_t deadline);

typedef struct weft_mutex weft_mutex;
weft_mutex *weft_mutex_new(void);
/* Lock, waiting in FIFO order. ETIMEDOUT, ECANCELED, EDEADLK (already ours). */
int weft_mutex_lock(weft_mutex *m, int64_t deadline);
/* EBUSY if held. */
int weft_mutex_trylock(weft_mutex *m);
/* Unlock, handing the mutex to the longest waiter. EPERM if not ours. */
int weft_mutex_unlock(weft_mutex *m);
/* EBUSY while held or waited on. */
int weft_mutex_free(weft_mutex *m);

typedef struct weft_cond weft_cond;
weft_cond *weft_cond_new(void);
/* Unlock m, wait for a signal, lock m again (also when it fails). ETIMEDOUT, ECANCELED,
 * EPERM (m is not ours). */
int weft_cond_wait(weft_cond *c, weft_mutex *m, int64_t deadline);
/* Wake the longest waiter / every waiter. */
void weft_cond_signal(weft_cond *c);
void weft_cond_broadcast(weft_cond *c);
/* EBUSY while waited on. */
int weft_cond_free(weft_cond *c);

typedef struct weft_waitgroup weft_waitgroup;
weft_waitgroup *weft_waitgroup_new(void);
/* Add delta (may be negative) to the counter; at zero every waiter wakes. EINVAL if it would
 * go below zero. */
int weft_waitgroup_add(weft_waitgroup *wg, int delta);
/* Same as add(-1). */
int weft_waitgroup_done(weft_waitgroup *wg);
/* Wait until the counter is zero. ETIMEDOUT, ECANCELED. */
int weft_waitgroup_wait(weft_waitgroup *wg, int64_t deadline);
/* EBUSY while waited on. */
int weft_waitgroup_free(weft_waitgroup *wg);

/* ---- Groups: structured concurrency --------------------------------------------------- */

typedef struct weft_group weft_group;
weft_group *weft_group_new(void);
/* Spawn fn(arg) owned by g (its result is dropped; opts->detached is ignored). ENOMEM, EPIPE
 * (g is closing). */
weft_co *weft_group_spawn(weft_group *g, weft_fn fn, void *arg, const weft_spawn_opts *opts);
/* Coroutines of g still running. */
size_t weft_group_count(const weft_group *g);
/* Wait until every coroutine of g has ended. ETIMEDOUT, ECANCELED, EBADF (g was closed by
 * someone else meanwhile). */
int weft_group_wait(weft_group *g, int64_t deadline);
/* Cancel every coroutine of g, wait for them all to end, and free g. Others waiting on g wake
 * with EBADF. Must not be called from one of g's own coroutines (EDEADLK). */
int weft_group_close(weft_group *g);

/* ---- Offload: blocking work on a thread pool ----------------------------------------- */

/* Run fn(arg) on one of weft's pool threads while the calling coroutine parks (the others
 * keep running); store its return value in *result. Outside a coroutine fn simply runs here.
 * The pool starts on first use with WEFT_OFFLOAD_THREADS (default 4) threads. ECANCELED
 * (the caller was cancelled: fn still runs to its end, its result is dropped, so arg must
 * outlive it; a caller cancelled beforehand runs nothing), ENOMEM, EAGAIN (no pool thread
 * could start), EMFILE (no eventfd). */
int weft_offload(void *(*fn)(void *), void *arg, void **result);

/* ---- Across threads --------------------------------------------------------------------- */
/* Each thread has its own scheduler. A thread queue is the one way for coroutines of
 * different schedulers (or plain threads) to talk: sends and receives may come from any
 * thread; a coroutine waiting on one is woken through its scheduler's eventfd. */

typedef struct weft_tqueue weft_tqueue;
/* A bounded, thread-safe FIFO of pointers, capacity >= 1. EINVAL, ENOMEM. */
weft_tqueue *weft_tqueue_new(size_t capacity);
/* As weft_queue_send/recv, from any thread, in or out of a coroutine. EPIPE, ETIMEDOUT,
 * ECANCELED; EMFILE/ENFILE if the scheduler's eventfd cannot be made. */
int weft_tqueue_send(weft_tqueue *q, void *item, int64_t deadline);
int weft_tqueue_recv(weft_tqueue *q, void **item, int64_t deadline);
/* Close: as weft_queue_close. */
void weft_tqueue_close(weft_tqueue *q);
/* Free q. EBUSY while anyone waits on it. */
int weft_tqueue_free(weft_tqueue *q);

/* Serve addr from nthreads threads (0: one per CPU), each with its own scheduler, event loop
 * and SO_REUSEPORT listener, so the kernel spreads connections over them. SIGINT/SIGTERM shut
 * every thread down gracefully. Returns 0 after that, -1 at once if listening failed. */
int weft_serve_threads(const char *addr, weft_handler handler, void *arg, int nthreads);

#ifdef __cplusplus
}
#endif
#endif
