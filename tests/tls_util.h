/* TLS test support: certificates made by the openssl command line (tests/tls_certs.sh), a
 * TLS peer written on OpenSSL directly (not weft: blocking, for a thread or a process of the
 * test's own), and a weft TLS server in a child process with a plain control port. Without
 * OpenSSL at build time only tls_built and the skip message are here. */
#ifndef WEFT_TEST_TLS_UTIL_H
#define WEFT_TEST_TLS_UTIL_H

#include <stddef.h>
#include <sys/types.h>
#include <weft.h>

/* Nonzero when weft was built with TLS; otherwise every TLS call fails with ENOTSUP, which
 * this checks (a failed check fails the test). */
int tls_built(void);
/* The line a test prints when TLS is not built in. */
#define TLS_SKIPPED "  skipped: built without TLS\n"

#ifdef WEFT_HAVE_TLS
#include <openssl/ssl.h>

/* The path of a test certificate or key (see tests/tls_certs.sh for the names), made on first
 * use in /tmp/weft-tls-PID (PID: the harness process), which test_teardown removes. */
const char *cert(const char *name);

/* A connected loopback TCP pair: blocking descriptors. */
void tcp_pair(int sv[2]);

/* ---- A TLS peer on OpenSSL alone (blocking; every call fails the test on error) ---- */
typedef struct raw_tls {
    int fd;
    SSL_CTX *ctx;
    SSL *ssl;
    int records_in; /* records received (counted only when count_records was asked) */
} raw_tls;

typedef struct raw_opts {
    const char *cafile;     /* client: verify against it (NULL: no verification) */
    const char *servername; /* client: SNI and name checked */
    const char *alpn;       /* client: offer this protocol (one) */
    int max_version;        /* e.g. TLS1_2_VERSION (0: any) */
    int count_records;      /* count records received in records_in */
    int rcvbuf;             /* client: SO_RCVBUF before the handshake (0: default) */
} raw_opts;

/* Client handshake on fd (which it then owns). NULL if the handshake failed (why: *err). */
raw_tls *raw_client(int fd, const raw_opts *o, char *err, size_t errlen);
/* Server handshake on fd with cert/key. NULL on failure. */
raw_tls *raw_server(int fd, const char *certfile, const char *keyfile);
/* One SSL_write: one record for each 16 KiB. */
void raw_write(raw_tls *r, const void *p, size_t n);
void raw_puts(raw_tls *r, const char *s); /* s as it is, one record */
/* Read exactly n bytes. */
void raw_read_exact(raw_tls *r, void *p, size_t n);
/* Read strlen(s) bytes and check they are s. */
void raw_expect(raw_tls *r, const char *s);
/* Read until the stream ends; 1 if it ended with close_notify, 0 without one (EOF or reset). */
int raw_read_to_end(raw_tls *r);
/* 1 if no application data comes within ms (records of the handshake, such as session
 * tickets, do not count). */
int raw_quiet_for(raw_tls *r, int ms);
/* Close: RAW_NOTIFY sends close_notify first, RAW_FIN only closes the socket, RAW_RESET
 * resets it. The first two take in what has arrived unread first, so that the kernel sends a
 * FIN, not a reset. */
enum { RAW_NOTIFY, RAW_FIN, RAW_RESET };
void raw_close(raw_tls *r, int how);

/* Send n_out bytes of pattern(seed_out) and receive n_in bytes of pattern(seed_in) at the
 * same time (non-blocking, interleaved), checking every byte received. */
void raw_pump(raw_tls *r, size_t n_out, unsigned seed_out, size_t n_in, unsigned seed_in);
/* Bytes [off, off + n) of the test pattern for seed; check_pattern fails the test on a
 * difference. */
void fill_pattern(unsigned char *p, size_t off, size_t n, unsigned seed);
void check_pattern(const unsigned char *p, size_t off, size_t n, unsigned seed);

/* A ClientHello for servername, as the bytes a client sends first (malloc'd, *n long), made
 * with OpenSSL on memory BIOs; the SSL is kept in *ssl_out for raw_client_resume (or NULL). */
unsigned char *client_hello(size_t *n, SSL **ssl_out);
/* Go on with that client's handshake on fd (the ClientHello already sent): the raw_tls. */
raw_tls *raw_client_resume(SSL *ssl, int fd);

/* Start fn(arg) on a thread; join it with peer_join (fails the test if it cannot). */
typedef struct peer peer;
peer *peer_start(void *(*fn)(void *), void *arg);
void *peer_join(peer *p);

/* A timeout of ms for a server's handshakes, longer where everything runs slowly
 * (WEFT_TEST_LIGHT: valgrind, ThreadSanitizer), so that good clients keep up with it. */
int handshake_ms(int ms);

/* ---- weft contexts for the test certificates ---- */
weft_tls *server_ctx(const char *name); /* name.pem and name.key ("leaf", "rsa") */
weft_tls *client_ctx(void);             /* trusts ca.pem */

/* ---- Talking to a TLS echo server (tests/servers.c with opts->tls, or examples/echo) ---- */
/* A raw client to 127.0.0.1:port, handshaken (o NULL: verifying localhost against ca.pem). */
raw_tls *raw_connect(int port, const raw_opts *o);
/* Send line + '\n' and check the echo. */
void raw_expect_echo(raw_tls *r, const char *line);
/* test_server_asker for a TLS server (tests/servers.h). */
void tls_ask(int port, const char *q, char *answer, size_t cap);

/* ---- Programs that are not built here (openssl, python3) ---- */
/* Start argv (PATH is searched) with stdin and stdout on pipes (*in_fd, *out_fd: -1 to get
 * /dev/null instead) and stderr to *err_fd if given, else /dev/null. Its pid. */
pid_t spawn_tool(char *const argv[], int *in_fd, int *out_fd, int *err_fd);
/* The same for a program built here (argv[0] relative to the build directory), run through
 * $WEFT_RUN (qemu, valgrind) as spawn_program runs it. */
pid_t spawn_built(char *const argv[], int *in_fd, int *out_fd, int *err_fd);
/* Write all of buf to a pipe (SIGPIPE is ignored: a program gone fails the test instead). */
void write_pipe(int fd, const void *buf, size_t n);
/* Read from fd until it ends or timeout_ms passes without data; NUL-terminated, malloc'd. */
char *read_all_fd(int fd, int timeout_ms, size_t *len);
/* Whether a tool runs here ("python3 -c 'import ssl'" and the like): exit status 0. */
int tool_works(char *const argv[]);
#endif

#endif
