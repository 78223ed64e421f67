/* The examples' log lines. */
#ifndef EXAMPLES_LOG_H
#define EXAMPLES_LOG_H

/* Write one line to stderr: fmt with %d (int), %s (string) and %% only, at most 255 bytes
 * (longer lines are cut). Formatted here rather than by fprintf, whose formatting takes
 * about 3 KB of stack: a coroutine that logged through it keeps a second stack page for the
 * rest of its life, 4 KB more for every idle connection (docs/performance.md). */
void log_line(const char *fmt, ...);

#endif
