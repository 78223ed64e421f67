/* Run by test_hook's preload_mode, linked with libweft.so only: a coroutine reads a socket
 * with plain read() while a ticker coroutine counts. With LD_PRELOAD=libweft_hook.so the read
 * parks its coroutine, the ticker ticks and another coroutine's write ends the read; without,
 * the read blocks the thread until a plain thread writes. Prints "parked" or "blocked". */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <weft.h>

static int sv[2];
static volatile long ticks;
static volatile int done;

static void *tick(void *unused)
{
    (void)unused;
    while (!done && weft_sleep(10) == 0)
        ticks++;
    return NULL;
}

static void *write_soon(void *unused)
{
    (void)unused;
    weft_sleep(100);
    return write(sv[1], "c", 1) == 1 ? NULL : (void *)1;
}

static void *read_it(void *unused)
{
    (void)unused;
    char c;
    long before = ticks;
    ssize_t r = read(sv[0], &c, 1);
    long during = ticks - before;
    done = 1;
    printf("%s (read %zd, %ld ticks meanwhile)\n", during > 0 ? "parked" : "blocked", r, during);
    return NULL;
}

/* Without the hooks nothing in this thread can write while the read blocks it. */
static void *thread_writes_later(void *unused)
{
    (void)unused;
    struct timespec ts = {0, 400000000};
    nanosleep(&ts, NULL);
    return write(sv[1], "t", 1) == 1 ? NULL : (void *)1;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
        return 1;
    pthread_t th;
    pthread_create(&th, NULL, thread_writes_later, NULL);
    weft_co *a = weft_spawn(tick, NULL), *b = weft_spawn(write_soon, NULL);
    weft_co *c = weft_spawn(read_it, NULL);
    if (!a || !b || !c || weft_run() != 0)
        return 1;
    weft_join(a, NULL, -1);
    weft_join(b, NULL, -1);
    weft_join(c, NULL, -1);
    pthread_join(th, NULL);
    close(sv[0]);
    close(sv[1]);
    return 0;
}
