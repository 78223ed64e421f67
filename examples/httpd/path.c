/* Opening a request's path under the root, one segment at a time (openat with O_NOFOLLOW),
 * so that the kernel itself refuses every symbolic link on the way: no link, however it is
 * spelled or whenever it appears, can lead out of the root, and there is no window between
 * a check and the open. The path arrives decoded and without ".." segments (parse.c); "."
 * and empty segments are skipped. A symbolic link inside the root is refused too: simpler
 * than resolving it and checking where it lands, and it never surprises. */
#include "files.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <unistd.h>

/* The next segment of p[*at..len) into name; false at the end. */
static bool next_segment(const char *p, size_t len, size_t *at, char *name, int *err)
{
    size_t i = *at;
    for (;;) {
        while (i < len && p[i] == '/')
            i++;
        if (i == len) {
            *at = i;
            return false;
        }
        size_t start = i;
        while (i < len && p[i] != '/')
            i++;
        size_t n = i - start;
        if (n == 1 && p[start] == '.')
            continue;
        if (n > NAME_MAX) {
            *err = ENAMETOOLONG;
            *at = i;
            return false;
        }
        memcpy(name, p + start, n);
        name[n] = '\0';
        *at = i;
        return true;
    }
}

/* Open name in dirfd for reading as a regular file, or a directory's index.html. */
static int open_file(int dirfd, const char *name, struct stat *st, bool *index)
{
    int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0)
        return errno == ELOOP ? (errno = ENOENT, -1) : -1;
    if (fstat(fd, st) != 0) {
        close(fd);
        return -1;
    }
    if (S_ISDIR(st->st_mode) && !*index) {
        *index = true;
        int f = open_file(fd, "index.html", st, index);
        close(fd);
        return f;
    }
    if (!S_ISREG(st->st_mode)) { /* a FIFO, device, socket, or a directory's index directory */
        close(fd);
        errno = ENOENT;
        return -1;
    }
    return fd;
}

int path_open(int rootfd, const char *path, size_t len, struct stat *st, bool *index)
{
    char name[NAME_MAX + 1], next[NAME_MAX + 1];
    size_t at = 0;
    int err = 0, dir = rootfd;
    *index = false;
    if (!next_segment(path, len, &at, name, &err)) {
        if (err) {
            errno = err;
            return -1;
        }
        return open_file(rootfd, ".", st, index); /* "/": the root's index.html */
    }
    /* Directories on the way: O_PATH opens cost no permission beyond search, and with
     * O_NOFOLLOW | O_DIRECTORY a symbolic link fails (ENOTDIR) instead of being followed. */
    while (next_segment(path, len, &at, next, &err)) {
        int d = openat(dir, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (dir != rootfd)
            close(dir);
        if (d < 0)
            return errno == ENOTDIR || errno == ELOOP ? (errno = ENOENT, -1) : -1;
        dir = d;
        memcpy(name, next, strlen(next) + 1);
    }
    int fd = err ? (errno = err, -1) : open_file(dir, name, st, index);
    if (dir != rootfd) {
        int e = errno;
        close(dir);
        errno = e;
    }
    return fd;
}
