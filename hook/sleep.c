/* sleep, usleep, nanosleep, clock_nanosleep. In a coroutine they park it on weft's timers
 * (whole milliseconds, never shorter than asked: the end is checked on the nanosecond clock
 * and the park renewed if it came early). A handler that runs meanwhile ends them with EINTR
 * and the time left, whatever SA_RESTART says, as the kernel does. Clocks other than
 * CLOCK_REALTIME, CLOCK_MONOTONIC, CLOCK_BOOTTIME and CLOCK_TAI go to libc as they are; an
 * absolute sleep on CLOCK_REALTIME is turned into a length when it starts (a change of the
 * system time during it is not followed). A sleep of zero lets the other coroutines run. */
#include "hook.h"

#include <errno.h>
#include <stdint.h>

/* Park until the monotonic clock reaches end_ns. 0; or -1 with EINTR or ECANCELED, and in
 * *left_ns what was left. */
static int sleep_until_ns(int64_t end_ns, int64_t *left_ns)
{
    int saved = errno;
    hook_call c;
    hook_call_begin(&c);
    int64_t now = hook_now_ns();
    if (end_ns <= now) {
        weft_yield();
        return 0;
    }
    for (; now < end_ns; now = hook_now_ns()) {
        if (hook_sleep_until(&c, hook_ms_deadline(end_ns)) == 0)
            continue;
        if (errno == EINTR && !hook_call_interrupted(&c))
            continue; /* (woken for a handler that ran before this call began) */
        int err = errno;
        int64_t left = end_ns - hook_now_ns();
        *left_ns = left > 0 ? left : 0;
        errno = err;
        return -1;
    }
    errno = saved;
    return 0;
}

static int64_t span_ns(const struct timespec *ts)
{
    if (ts->tv_sec > INT64_MAX / 2000000000) /* decades: as good as forever */
        return INT64_MAX / 2;
    return (int64_t)ts->tv_sec * 1000000000 + ts->tv_nsec;
}

static struct timespec to_timespec(int64_t ns)
{
    return (struct timespec){.tv_sec = (time_t)(ns / 1000000000), .tv_nsec = (long)(ns % 1000000000)};
}

static bool valid(const struct timespec *ts)
{
    return ts->tv_sec >= 0 && ts->tv_nsec >= 0 && ts->tv_nsec < 1000000000;
}

/* nanosleep's work, for sleep and usleep too. */
static int sleep_for(const struct timespec *req, struct timespec *rem)
{
    if (!valid(req)) {
        errno = EINVAL;
        return -1;
    }
    int64_t left = 0;
    if (sleep_until_ns(hook_now_ns() + span_ns(req), &left) == 0)
        return 0;
    if (errno == EINTR && rem)
        *rem = to_timespec(left);
    return -1;
}

HOOK_API int nanosleep(const struct timespec *req, struct timespec *rem)
{
    if (!hook_in_coroutine() || !req)
        return REAL(nanosleep)(req, rem);
    return sleep_for(req, rem);
}

HOOK_API int usleep(useconds_t us)
{
    if (!hook_in_coroutine())
        return REAL(usleep)(us);
    struct timespec ts = to_timespec((int64_t)us * 1000);
    return sleep_for(&ts, NULL);
}

/* glibc's sleep: the whole seconds not slept when a handler cut it short. */
HOOK_API unsigned sleep(unsigned seconds)
{
    if (!hook_in_coroutine())
        return REAL(sleep)(seconds);
    int saved = errno;
    int64_t left = 0;
    if (sleep_until_ns(hook_now_ns() + (int64_t)seconds * 1000000000, &left) != 0)
        return (unsigned)(left / 1000000000); /* interrupted (or cancelled) */
    errno = saved;
    return 0;
}

HOOK_API int clock_nanosleep(clockid_t clk, int flags, const struct timespec *req,
                             struct timespec *rem)
{
    if (!hook_in_coroutine() || !req ||
        (clk != CLOCK_REALTIME && clk != CLOCK_MONOTONIC && clk != CLOCK_BOOTTIME &&
         clk != CLOCK_TAI))
        return REAL(clock_nanosleep)(clk, flags, req, rem);
    if (!valid(req))
        return EINVAL;
    int64_t span = span_ns(req);
    if (flags & TIMER_ABSTIME) {
        struct timespec now;
        clock_gettime(clk, &now);
        span -= span_ns(&now);
    }
    int64_t left = 0;
    int saved = errno;
    if (sleep_until_ns(hook_now_ns() + (span > 0 ? span : 0), &left) == 0)
        return 0;
    int err = errno;
    errno = saved; /* (clock_nanosleep returns its error; errno stays) */
    if (err == EINTR && rem && !(flags & TIMER_ABSTIME))
        *rem = to_timespec(left);
    return err;
}
