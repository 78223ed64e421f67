/* The real functions behind the hooks: the next definition after ours in the lookup order
 * (dlsym(RTLD_NEXT)), which is libc's, or a sanitizer's interceptor that ends in libc's. Looked
 * up on first use, since another library's constructor may call read or close before ours
 * runs. A name with no next definition (a fully static program, which has no dynamic
 * linker to ask) ends the process with a message naming it. */
#include "hook.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#define HOOK_REAL_DEF(ret, name, args) void *hook_real_##name;
HOOK_REAL_LIST(HOOK_REAL_DEF)
#undef HOOK_REAL_DEF

void *hook_next(const char *name)
{
    return dlsym(RTLD_NEXT, name);
}

void *hook_real_resolve(void **slot, const char *name)
{
    void *f = hook_next(name);
    if (!f) {
        /* Nothing to fall back on: say which, rather than jump to address zero. */
        static const char msg[] = "weft_hook: no next definition of a hooked function: ";
        syscall(SYS_write, 2, msg, sizeof msg - 1);
        syscall(SYS_write, 2, name, __builtin_strlen(name));
        syscall(SYS_write, 2, "\n", 1);
        abort();
    }
    __atomic_store_n(slot, f, __ATOMIC_RELAXED);
    return f;
}

/* Look every one up before main, while the program is still single-threaded. */
__attribute__((constructor)) static void resolve_all(void)
{
#define HOOK_REAL_RESOLVE(ret, name, args)                                                 \
    if (!hook_real_##name)                                                                 \
        hook_real_##name = hook_next(#name);
    HOOK_REAL_LIST(HOOK_REAL_RESOLVE)
#undef HOOK_REAL_RESOLVE
}
