/* Signals. The kernel ends a blocking call when a handler runs on its thread: the call fails
 * with EINTR, or starts again if the handler was installed with SA_RESTART and the call is one
 * the kernel restarts. A parked coroutine is not in the kernel, so the hook has to learn that
 * a handler ran: sigaction and signal install the caller's handler behind a small wrapper
 * that counts, per thread, the handlers that ran (and those without SA_RESTART) and writes
 * the thread's eventfd, whose input the loop hands to wait.c, which wakes the hooked calls
 * parked on this thread. Each then decides as the kernel would (hook_call_restart).
 *
 * sigaction(sig, NULL, &old) still reports the caller's handler and flags. Signals that
 * report a fault of the running code (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS) are
 * not wrapped: they interrupt nothing but the code that faulted. Handlers installed by weft
 * itself (SIGINT/SIGTERM for graceful shutdown) are wrapped like any other, deliberately: a
 * call parked in a hook is interrupted by them as the same call in a thread would be. */
#include "hook.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#define NSIGNALS 65 /* 1..64 */

typedef struct user_action {
    _Atomic uintptr_t handler; /* the caller's handler; 0 when ours is not installed */
    _Atomic int flags;         /* the caller's sa_flags */
} user_action;

static user_action actions[NSIGNALS];
static _Atomic uint64_t interrupting; /* siginterrupt(sig, 1): bit sig - 1, for signal() */
static atomic_flag table_lock = ATOMIC_FLAG_INIT;

static HOOK_TLS unsigned long sig_count, sig_nonrestart;
HOOK_TLS int hook_in_handler;
static HOOK_TLS uintptr_t handler_frame; /* the innermost wrapper's frame */
static HOOK_TLS int sig_efd = -1;

unsigned long hook_sig_count(void)
{
    return __atomic_load_n(&sig_count, __ATOMIC_RELAXED);
}

unsigned long hook_sig_nonrestart(void)
{
    return __atomic_load_n(&sig_nonrestart, __ATOMIC_RELAXED);
}

/* ---- The wrapper (runs in signal context: async-signal-safe only) ---- */

static void wrapper(int sig, siginfo_t *si, void *uc)
{
    int saved = errno;
    uintptr_t h = atomic_load_explicit(&actions[sig].handler, memory_order_relaxed);
    int flags = atomic_load_explicit(&actions[sig].flags, memory_order_relaxed);
    __atomic_store_n(&sig_count, sig_count + 1, __ATOMIC_RELAXED);
    if (!(flags & SA_RESTART))
        __atomic_store_n(&sig_nonrestart, sig_nonrestart + 1, __ATOMIC_RELAXED);
    if (sig_efd >= 0) {
        uint64_t one = 1;
        syscall(SYS_write, sig_efd, &one, sizeof one);
    }
    if (flags & SA_RESETHAND) /* the kernel has put SIG_DFL back already */
        atomic_store_explicit(&actions[sig].handler, 0, memory_order_relaxed);
    errno = saved;
    if (h == 0 || h == (uintptr_t)SIG_DFL || h == (uintptr_t)SIG_IGN)
        return; /* (changed while it was being delivered) */
    uintptr_t outer = handler_frame;
    handler_frame = (uintptr_t)__builtin_frame_address(0);
    hook_in_handler++;
    if (flags & SA_SIGINFO)
        ((void (*)(int, siginfo_t *, void *))h)(sig, si, uc);
    else
        ((void (*)(int))h)(sig);
    hook_in_handler--;
    handler_frame = outer;
}

/* A call made from the handler runs on the stack below the wrapper's frame, near it; a
 * handler that left by longjmp left hook_in_handler set, and then a call runs above that
 * frame, or on another coroutine's stack, far from it. */
bool hook_still_in_handler(void)
{
    uintptr_t sp = (uintptr_t)__builtin_frame_address(0);
    if (sp < handler_frame && handler_frame - sp < ((uintptr_t)1 << 20))
        return true;
    hook_in_handler = 0;
    return false;
}

static bool wrappable(int sig)
{
    switch (sig) {
    case SIGSEGV: case SIGBUS: case SIGFPE: case SIGILL: case SIGTRAP: case SIGSYS:
    case SIGKILL: case SIGSTOP:
        return false;
    default:
        return sig > 0 && sig < NSIGNALS;
    }
}

static uintptr_t handler_of(const struct sigaction *a)
{
    return a->sa_flags & SA_SIGINFO ? (uintptr_t)a->sa_sigaction : (uintptr_t)a->sa_handler;
}

/* The table and the kernel change together: other threads wait on a spin lock, and this
 * thread's own handlers (which may call sigaction too) are held off meanwhile. */
static void table_enter(sigset_t *saved)
{
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, saved);
    while (atomic_flag_test_and_set_explicit(&table_lock, memory_order_acquire)) {
    }
}

static void table_leave(const sigset_t *saved)
{
    atomic_flag_clear_explicit(&table_lock, memory_order_release);
    pthread_sigmask(SIG_SETMASK, saved, NULL);
}

HOOK_API int sigaction(int sig, const struct sigaction *act, struct sigaction *old)
{
    if (!wrappable(sig))
        return REAL(sigaction)(sig, act, old);
    struct sigaction mine, prev;
    const struct sigaction *pass = act;
    uintptr_t h = act ? handler_of(act) : 0;
    bool wrap = act && h != (uintptr_t)SIG_DFL && h != (uintptr_t)SIG_IGN;
    if (wrap) {
        mine = *act;
        mine.sa_sigaction = wrapper;
        mine.sa_flags |= SA_SIGINFO;
        pass = &mine;
    }
    sigset_t saved;
    table_enter(&saved);
    uintptr_t user_h = atomic_load(&actions[sig].handler);
    int user_flags = atomic_load(&actions[sig].flags);
    int rc = REAL(sigaction)(sig, pass, &prev);
    int err = errno;
    if (rc == 0 && act) {
        atomic_store(&actions[sig].handler, wrap ? h : 0);
        atomic_store(&actions[sig].flags, act->sa_flags);
    }
    table_leave(&saved);
    if (rc == 0 && old) {
        *old = prev;
        if (prev.sa_sigaction == wrapper) { /* report the caller's own, not ours */
            old->sa_flags = user_flags;
            if (user_flags & SA_SIGINFO)
                old->sa_sigaction = (void (*)(int, siginfo_t *, void *))user_h;
            else
                old->sa_handler = (void (*)(int))user_h;
        }
    }
    errno = err;
    return rc;
}

/* glibc's signal(): BSD semantics (SA_RESTART unless siginterrupt said otherwise, the signal
 * itself blocked in its handler). */
HOOK_API sighandler_t signal(int sig, sighandler_t handler)
{
    if (!wrappable(sig))
        return REAL(signal)(sig, handler);
    struct sigaction a, old;
    memset(&a, 0, sizeof a);
    a.sa_handler = handler;
    sigemptyset(&a.sa_mask);
    sigaddset(&a.sa_mask, sig);
    a.sa_flags = atomic_load(&interrupting) & ((uint64_t)1 << (sig - 1)) ? 0 : SA_RESTART;
    if (sigaction(sig, &a, &old) != 0)
        return SIG_ERR;
    return old.sa_handler;
}

HOOK_API int siginterrupt(int sig, int flag)
{
    if (!wrappable(sig))
        return REAL(siginterrupt)(sig, flag);
    struct sigaction a;
    if (sigaction(sig, NULL, &a) != 0)
        return -1;
    if (flag) {
        atomic_fetch_or(&interrupting, (uint64_t)1 << (sig - 1));
        a.sa_flags &= ~SA_RESTART;
    } else {
        atomic_fetch_and(&interrupting, ~((uint64_t)1 << (sig - 1)));
        a.sa_flags |= SA_RESTART;
    }
    return sigaction(sig, &a, NULL);
}

/* ---- The thread's eventfd ---- */

static pthread_key_t efd_key;
static pthread_once_t efd_once = PTHREAD_ONCE_INIT;

static void efd_close(void *unused)
{
    (void)unused;
    if (sig_efd >= 0) {
        int fd = sig_efd;
        sig_efd = -1;
        REAL(close)(fd); /* (the thread's backend goes with it) */
    }
}

/* A forked child shares the parent's eventfd: it makes its own when it first needs one. */
static void efd_after_fork(void)
{
    if (sig_efd >= 0) {
        REAL(close)(sig_efd);
        sig_efd = -1;
    }
}

static void efd_init(void)
{
    pthread_key_create(&efd_key, efd_close);
    pthread_atfork(NULL, NULL, efd_after_fork);
}

int hook_sig_eventfd(void)
{
    if (sig_efd < 0) {
        pthread_once(&efd_once, efd_init);
        int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (fd < 0)
            return -1;
        fd_forget(fd); /* the number may have been watched here before */
        pthread_setspecific(efd_key, &sig_efd);
        sig_efd = fd;
    }
    return sig_efd;
}

/* ---- ppoll and pselect's mask ---- */

/* Signals this thread blocks now that mask lets in. */
static bool let_in(const sigset_t *mask, sigset_t *out)
{
    sigset_t cur;
    pthread_sigmask(SIG_BLOCK, NULL, &cur);
    sigemptyset(out);
    bool any = false;
    for (int s = 1; s < NSIGNALS; s++)
        if (sigismember(&cur, s) == 1 && sigismember(mask, s) == 0) {
            sigaddset(out, s);
            any = true;
        }
    return any;
}

bool hook_sig_deliver_pending(const sigset_t *mask)
{
    sigset_t in, pending, now;
    if (!let_in(mask, &in) || sigpending(&pending) != 0)
        return false;
    bool any = false;
    for (int s = 1; s < NSIGNALS; s++)
        any |= sigismember(&in, s) == 1 && sigismember(&pending, s) == 1;
    if (!any)
        return false;
    /* Unblocking delivers them, on this thread, before pthread_sigmask returns. */
    pthread_sigmask(SIG_SETMASK, mask, &now);
    pthread_sigmask(SIG_SETMASK, &now, NULL);
    return true;
}

int hook_sig_unblock_fd(const sigset_t *mask)
{
    sigset_t in;
    if (!let_in(mask, &in))
        return -1;
    int fd = signalfd(-1, &in, SFD_NONBLOCK | SFD_CLOEXEC);
    if (fd >= 0)
        fd_forget(fd);
    return fd;
}
