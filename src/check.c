/* Invariant checks (WEFT_ASSERT in internal.h), compiled in debug and sanitizer builds. */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>

#ifdef WEFT_DEBUG
_Noreturn void weft_assert_failed(const char *expr, const char *file, int line)
{
    fprintf(stderr, "weft: internal check failed: %s (%s:%d)\n", expr, file, line);
    abort();
}
#endif
