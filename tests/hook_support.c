/* Helpers for the libweft_hook tests (see hook_support.h). */
#include "hook_support.h"

#include "harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <pthread.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static void *tick(void *arg)
{
    ticker *t = arg;
    while (!t->stop) {
        if (weft_sleep(10) != 0)
            break;
        t->ticks++;
    }
    return NULL;
}

void ticker_start(ticker *t)
{
    t->ticks = 0;
    t->stop = false;
    t->co = weft_spawn(tick, t);
    CHECK(t->co);
}

void ticker_stop(ticker *t)
{
    t->stop = true;
    CHECK(weft_join(t->co, NULL, -1) == 0);
}

void *run_on_plain_thread(void *(*fn)(void *), void *arg)
{
    pthread_t th;
    void *r;
    CHECK(pthread_create(&th, NULL, fn, arg) == 0);
    CHECK(pthread_join(th, &r) == 0);
    return r;
}

struct in_co {
    void *(*fn)(void *);
    void *arg;
    ticker *t;
    void *result;
};

static void *in_co_main(void *p)
{
    struct in_co *ic = p;
    ic->result = ic->fn(ic->arg);
    ic->t->stop = true;
    return NULL;
}

void *run_in_coroutine(void *(*fn)(void *), void *arg, long *ticks)
{
    ticker t;
    ticker_start(&t);
    struct in_co ic = {fn, arg, &t, NULL};
    weft_co *co = weft_spawn(in_co_main, &ic);
    CHECK(co);
    CHECK(weft_run() == 0);
    CHECK(weft_join(co, NULL, -1) == 0);
    CHECK(weft_join(t.co, NULL, -1) == 0);
    if (ticks)
        *ticks = t.ticks;
    return ic.result;
}

int listen_loopback(int *port, int backlog)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)*port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(bind(fd, (struct sockaddr *)&sin, sizeof sin) == 0);
    CHECK(listen(fd, backlog) == 0);
    socklen_t len = sizeof sin;
    CHECK(getsockname(fd, (struct sockaddr *)&sin, &len) == 0);
    *port = ntohs(sin.sin_port);
    return fd;
}

int free_port(void)
{
    int port = 0;
    int fd = listen_loopback(&port, 1);
    close(fd);
    return port;
}

void make_temp_dir(char *out, size_t cap)
{
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(out, cap, "%s/weft-hook-XXXXXX", tmp);
    CHECK(mkdtemp(out));
}

void remove_tree(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    int rc = system(cmd);
    (void)rc;
}

void wait_port_open(int port, int timeout_ms)
{
    for (int waited = 0;; waited += 20) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        CHECK(fd >= 0);
        struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        int rc = connect(fd, (struct sockaddr *)&sin, sizeof sin);
        close(fd);
        if (rc == 0)
            return;
        CHECK(waited < timeout_ms);
        usleep(20000);
    }
}

pid_t start_process(char *const argv[], const char *log, const char *user)
{
    struct passwd *pw = user && geteuid() == 0 ? getpwnam(user) : NULL;
    CHECK(!user || geteuid() != 0 || pw);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        int out = open(log ? log : "/dev/null", O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (out >= 0) {
            dup2(out, 1);
            dup2(out, 2);
        }
        if (pw && (setgroups(0, NULL) != 0 || setgid(pw->pw_gid) != 0 ||
                   setuid(pw->pw_uid) != 0))
            _exit(126);
        execvp(argv[0], argv);
        _exit(127);
    }
    return pid;
}
