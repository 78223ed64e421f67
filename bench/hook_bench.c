/* hook_bench: hiredis GET/SET over 100 connections to one redis-server, three ways, same run:
 *
 *   hooked    hiredis's synchronous API (redisCommand) in 100 weft coroutines of one thread,
 *             libweft_hook linked in: each call parks its coroutine
 *   async     hiredis's asynchronous API on libevent (the adapter hiredis ships), one thread,
 *             100 redisAsyncContexts, each issuing its next command from its reply callback
 *   threads   hiredis's synchronous API in 100 threads, one connection each
 *
 * Each connection alternates SET k v / GET k with one command in flight (GET's reply is
 * checked). Figures: operations (commands) per second, per client CPU-second (this process:
 * getrusage) and per server CPU-second (redis-server: /proc/PID/stat). The three run in turn,
 * the order rotating between repetitions; medians shown. The ratios are hooked / async and
 * hooked / threads; the targets are >= 0.9 and >= 2 per client CPU-second. redis-server is
 * started here on a free loopback port without persistence and ended by its PID.
 *
 * usage: hook_bench [-q] [-r REPS] [-t SECONDS] [-c CONNS] [-w WAY]
 *   -q quick (CI): 1 repetition of 0.3 s each;  -r repetitions (5);  -t seconds per run (2);
 *   -c connections (100);  -w hooked|async|threads: that way alone (for perf or strace)
 */
#include <weft.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_REPS 21
#define MAX_CONNS 1000

enum { HOOKED, ASYNC, THREADS, NWAYS };
static const char *way_name[NWAYS] = {"hooked (sync API in coroutines)", "async (libevent)",
                                      "threads (sync API)"};

static int port;
static pid_t server = -1;
static int conns = 100;
static double seconds = 2;
static char tmpdir[256];

static void die(const char *what)
{
    fprintf(stderr, "hook_bench: %s: %s\n", what, strerror(errno));
    if (server > 0)
        kill(server, SIGKILL);
    exit(1);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double client_cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
           (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static double server_cpu(void)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)server);
    FILE *f = fopen(path, "r");
    if (!f)
        die("reading the server's CPU time");
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* fields after the command name */
    unsigned long ut = 0, st = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        die("parsing /proc/PID/stat");
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* ---- redis-server ---- */

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sin;
    if (fd < 0 || bind(fd, (struct sockaddr *)&sin, sizeof sin) != 0 ||
        getsockname(fd, (struct sockaddr *)&sin, &len) != 0)
        die("finding a free port");
    close(fd);
    return ntohs(sin.sin_port);
}

static void start_server(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/hook-bench-XXXXXX");
    if (!mkdtemp(tmpdir))
        die("mkdtemp");
    port = free_port();
    char p[16];
    snprintf(p, sizeof p, "%d", port);
    server = fork();
    if (server < 0)
        die("fork");
    if (server == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        dup2(null, 2);
        execlp("redis-server", "redis-server", "--port", p, "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", tmpdir, "--loglevel", "warning", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 500; i++) {
        redisContext *c = redisConnect("127.0.0.1", port);
        bool ok = c && !c->err;
        redisFree(c);
        if (ok)
            return;
        usleep(20000);
    }
    die("redis-server did not start (is it installed?)");
}

static void stop_server(void)
{
    kill(server, SIGTERM);
    waitpid(server, NULL, 0);
    rmdir(tmpdir);
}

/* ---- One connection's loop: SET k v, GET k, checked ---- */

static long set_get(redisContext *c, int id, volatile bool *stop)
{
    char key[32], val[32];
    snprintf(key, sizeof key, "bench:%d", id);
    long ops = 0;
    for (unsigned i = 0; !*stop; i++) {
        snprintf(val, sizeof val, "v%u", i);
        redisReply *r = redisCommand(c, "SET %s %s", key, val);
        if (!r || r->type != REDIS_REPLY_STATUS)
            die("SET");
        freeReplyObject(r);
        r = redisCommand(c, "GET %s", key);
        if (!r || r->type != REDIS_REPLY_STRING || strcmp(r->str, val) != 0)
            die("GET");
        freeReplyObject(r);
        ops += 2;
    }
    return ops;
}

static redisContext *connect_sync(void)
{
    redisContext *c = redisConnect("127.0.0.1", port);
    if (!c || c->err)
        die("redisConnect");
    return c;
}

/* ---- hooked ---- */

static volatile bool co_stop;

struct co_conn {
    redisContext *c;
    int id;
    long ops;
};

static void *co_client(void *p)
{
    struct co_conn *cc = p;
    cc->ops = set_get(cc->c, cc->id, &co_stop);
    return NULL;
}

static void *co_timer(void *unused)
{
    (void)unused;
    weft_sleep((int64_t)(seconds * 1000));
    co_stop = true;
    return NULL;
}

static struct co_conn *hooked_setup(void)
{
    struct co_conn *cc = calloc((size_t)conns, sizeof *cc);
    for (int i = 0; i < conns; i++)
        cc[i] = (struct co_conn){connect_sync(), i, 0}; /* (outside any coroutine: plain) */
    return cc;
}

static long hooked_run(struct co_conn *cc)
{
    weft_co **cos = calloc((size_t)conns, sizeof *cos);
    co_stop = false;
    weft_co *t = weft_spawn(co_timer, NULL);
    for (int i = 0; i < conns; i++)
        if (!(cos[i] = weft_spawn(co_client, &cc[i])))
            die("weft_spawn");
    if (!t || weft_run() != 0)
        die("weft_run");
    long ops = 0;
    weft_join(t, NULL, -1);
    for (int i = 0; i < conns; i++) {
        weft_join(cos[i], NULL, -1);
        ops += cc[i].ops;
        redisFree(cc[i].c);
    }
    free(cc);
    free(cos);
    return ops;
}

/* ---- async (libevent) ---- */

struct async_conn {
    redisAsyncContext *ac;
    int id;
    unsigned i;
    char key[32], val[32];
};

static struct event_base *base;
static bool async_stop;
static long async_ops;
static int async_connected, async_busy;

static void send_set(struct async_conn *a);

static void on_get(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)ac;
    struct async_conn *a = priv;
    redisReply *r = reply;
    if (!r || r->type != REDIS_REPLY_STRING || strcmp(r->str, a->val) != 0)
        die("async GET");
    async_ops++;
    if (async_stop) {
        if (--async_busy == 0)
            event_base_loopbreak(base);
        return;
    }
    send_set(a);
}

static void on_set(redisAsyncContext *ac, void *reply, void *priv)
{
    struct async_conn *a = priv;
    redisReply *r = reply;
    if (!r || r->type != REDIS_REPLY_STATUS)
        die("async SET");
    async_ops++;
    redisAsyncCommand(ac, on_get, a, "GET %s", a->key);
}

static void send_set(struct async_conn *a)
{
    snprintf(a->val, sizeof a->val, "v%u", a->i++);
    redisAsyncCommand(a->ac, on_set, a, "SET %s %s", a->key, a->val);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    (void)ac;
    if (status != REDIS_OK)
        die("redisAsyncConnect");
    if (++async_connected == conns)
        event_base_loopbreak(base);
}

static void on_time_up(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what, (void)arg;
    async_stop = true;
}

static long run_async(void)
{
    base = event_base_new();
    struct async_conn *a = calloc((size_t)conns, sizeof *a);
    async_connected = 0;
    for (int i = 0; i < conns; i++) {
        a[i].id = i;
        snprintf(a[i].key, sizeof a[i].key, "bench:%d", i);
        a[i].ac = redisAsyncConnect("127.0.0.1", port);
        if (!a[i].ac || a[i].ac->err)
            die("redisAsyncConnect");
        redisLibeventAttach(a[i].ac, base);
        redisAsyncSetConnectCallback(a[i].ac, on_connect);
    }
    event_base_dispatch(base); /* until every one is connected */
    return (long)(intptr_t)a;
}

/* The timed part, after run_async connected everything. */
static long run_async_timed(struct async_conn *a)
{
    async_stop = false;
    async_ops = 0;
    async_busy = conns;
    struct timeval tv = {(time_t)seconds, (suseconds_t)((seconds - (time_t)seconds) * 1e6)};
    struct event *timer = evtimer_new(base, on_time_up, NULL);
    evtimer_add(timer, &tv);
    for (int i = 0; i < conns; i++)
        send_set(&a[i]);
    event_base_dispatch(base);
    event_free(timer);
    for (int i = 0; i < conns; i++)
        redisAsyncFree(a[i].ac);
    event_base_free(base);
    free(a);
    return async_ops;
}

/* ---- threads ---- */

static volatile bool th_stop;
static pthread_barrier_t th_start;

struct th_conn {
    redisContext *c;
    int id;
    long ops;
};

static void *th_client(void *p)
{
    struct th_conn *tc = p;
    pthread_barrier_wait(&th_start);
    tc->ops = set_get(tc->c, tc->id, &th_stop);
    return NULL;
}

/* ---- Measuring ---- */

typedef struct result {
    double ops_s, ops_client_cpu, ops_server_cpu, ops_cpu;
} result;

static result measure(int way)
{
    double w0, c0, s0;
    long ops;
    if (way == HOOKED) {
        struct co_conn *cc = hooked_setup();
        w0 = now_s(), c0 = client_cpu(), s0 = server_cpu();
        ops = hooked_run(cc);
    } else if (way == ASYNC) {
        struct async_conn *a = (struct async_conn *)(intptr_t)run_async();
        w0 = now_s(), c0 = client_cpu(), s0 = server_cpu();
        ops = run_async_timed(a);
    } else {
        struct th_conn *tc = calloc((size_t)conns, sizeof *tc);
        pthread_t *th = calloc((size_t)conns, sizeof *th);
        pthread_barrier_init(&th_start, NULL, (unsigned)conns + 1);
        th_stop = false;
        for (int i = 0; i < conns; i++) {
            tc[i] = (struct th_conn){connect_sync(), i, 0};
            if (pthread_create(&th[i], NULL, th_client, &tc[i]) != 0)
                die("pthread_create");
        }
        w0 = now_s(), c0 = client_cpu(), s0 = server_cpu();
        pthread_barrier_wait(&th_start);
        usleep((useconds_t)(seconds * 1e6));
        th_stop = true;
        ops = 0;
        for (int i = 0; i < conns; i++) {
            pthread_join(th[i], NULL);
            ops += tc[i].ops;
            redisFree(tc[i].c);
        }
        pthread_barrier_destroy(&th_start);
        free(tc);
        free(th);
    }
    double wall = now_s() - w0, ccpu = client_cpu() - c0, scpu = server_cpu() - s0;
    if (ccpu <= 0)
        ccpu = 1e-6;
    if (scpu <= 0)
        scpu = 1.0 / (double)sysconf(_SC_CLK_TCK); /* below the clock's resolution */
    return (result){ops / wall, ops / ccpu, ops / scpu, ops / (ccpu + scpu)};
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int main(int argc, char **argv)
{
    int reps = 5, opt, only = -1;
    while ((opt = getopt(argc, argv, "qr:t:c:w:")) != -1) {
        if (opt == 'q')
            reps = 1, seconds = 0.3;
        else if (opt == 'r')
            reps = atoi(optarg);
        else if (opt == 't')
            seconds = atof(optarg);
        else if (opt == 'c')
            conns = atoi(optarg);
        else if (opt == 'w' && (only = !strcmp(optarg, "hooked")  ? HOOKED
                                       : !strcmp(optarg, "async") ? ASYNC
                                       : !strcmp(optarg, "threads") ? THREADS : -1) >= 0)
            continue;
        else {
            fprintf(stderr, "usage: %s [-q] [-r REPS] [-t SECONDS] [-c CONNS] [-w WAY]\n",
                    argv[0]);
            return 2;
        }
    }
    if (reps < 1 || reps > MAX_REPS || seconds <= 0 || seconds > 60 || conns < 1 ||
        conns > MAX_CONNS) {
        fprintf(stderr, "hook_bench: -r 1..%d, -t in (0, 60], -c 1..%d\n", MAX_REPS, MAX_CONNS);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    alarm((unsigned)(reps * NWAYS * (seconds + 10) + 60)); /* watchdog */
    start_server();
    printf("hook_bench: hiredis SET/GET, %d connections, %d repetitions x %.1f s per way, "
           "order rotating; medians\n", conns, reps, seconds);
    double v[NWAYS][4][MAX_REPS];
    if (only >= 0) {
        for (int r = 0; r < reps; r++) {
            result res = measure(only);
            printf("%-34s %12.0f ops/s %12.0f ops/client-cpu-s %12.0f ops/server-cpu-s\n",
                   way_name[only], res.ops_s, res.ops_client_cpu, res.ops_server_cpu);
        }
        stop_server();
        return 0;
    }
    for (int r = 0; r < reps; r++)
        for (int k = 0; k < NWAYS; k++) {
            int way = (k + r) % NWAYS;
            result res = measure(way);
            v[way][0][r] = res.ops_s;
            v[way][1][r] = res.ops_client_cpu;
            v[way][2][r] = res.ops_server_cpu;
            v[way][3][r] = res.ops_cpu;
        }
    stop_server();
    double m[NWAYS][4];
    printf("%-34s %10s %16s %16s %14s\n", "way", "ops/s", "ops/client-cpu-s", "ops/server-cpu-s",
           "ops/cpu-s");
    for (int w = 0; w < NWAYS; w++) {
        for (int f = 0; f < 4; f++)
            m[w][f] = median(v[w][f], reps);
        printf("%-34s %10.0f %16.0f %16.0f %14.0f\n", way_name[w], m[w][0], m[w][1], m[w][2],
               m[w][3]);
    }
    printf("%-34s %10s %16s %16s %14s\n", "ratios", "ops/s", "client cpu", "server cpu",
           "both");
    static const int baseline[2] = {ASYNC, THREADS};
    static const char *label[2] = {"hooked / async (target >= 0.9)", "hooked / threads (target >= 2)"};
    for (int k = 0; k < 2; k++)
        printf("%-34s %10.2f %16.2f %16.2f %14.2f\n", label[k], m[HOOKED][0] / m[baseline[k]][0],
               m[HOOKED][1] / m[baseline[k]][1], m[HOOKED][2] / m[baseline[k]][2],
               m[HOOKED][3] / m[baseline[k]][3]);
    return 0;
}
