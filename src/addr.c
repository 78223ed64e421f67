/* Addresses: the strings weft takes ("host:port", "[v6]:port", ":port", "*:port",
 * "unix:/path") and the "host:port" names it gives peers and listeners. No system calls
 * beyond inet_ntop; resolving names is net.c's. */
#include "internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

void sockaddr_format(const void *sa, size_t salen, char *out, size_t outlen)
{
    const struct sockaddr *s = sa;
    char host[INET6_ADDRSTRLEN] = "?";
    if (s->sa_family == AF_INET) {
        const struct sockaddr_in *in = sa;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        snprintf(out, outlen, "%s:%u", host, ntohs(in->sin_port));
    } else if (s->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
        snprintf(out, outlen, "[%s]:%u", host, ntohs(in6->sin6_port));
    } else if (s->sa_family == AF_UNIX) {
        const struct sockaddr_un *un = sa;
        size_t off = offsetof(struct sockaddr_un, sun_path);
        if (salen > off + 1 && un->sun_path[0])
            snprintf(out, outlen, "unix:%.*s", (int)(salen - off), un->sun_path);
        else
            snprintf(out, outlen, "unix");
    } else {
        snprintf(out, outlen, "?");
    }
}

/* ---- Address strings ---- */

/* A port is a decimal number from 0 to 65535 (getaddrinfo would wrap 70000 to 4464), or a
 * service name from /etc/services ("http"), which getaddrinfo checks. */
static bool port_ok(const char *p)
{
    if (*p < '0' || *p > '9')
        return (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z');
    unsigned long v = 0;
    for (; *p; p++) {
        if (*p < '0' || *p > '9')
            return false;
        v = v * 10 + (unsigned long)(*p - '0');
        if (v > 65535)
            return false;
    }
    return true;
}

int net_parse_addr(const char *addr, parsed_addr *pa)
{
    memset(pa, 0, sizeof *pa);
    if (!addr)
        goto bad;
    if (strncmp(addr, "unix:", 5) == 0) {
        size_t n = strlen(addr + 5);
        if (n == 0 || n >= sizeof pa->path)
            goto bad;
        memcpy(pa->path, addr + 5, n + 1);
        pa->is_unix = true;
        return 0;
    }
    const char *colon;
    if (addr[0] == '[') {
        const char *end = strchr(addr, ']');
        if (!end || end[1] != ':' || (size_t)(end - addr - 1) >= sizeof pa->host)
            goto bad;
        memcpy(pa->host, addr + 1, (size_t)(end - addr - 1));
        colon = end + 1;
    } else {
        colon = strrchr(addr, ':');
        if (!colon || (size_t)(colon - addr) >= sizeof pa->host)
            goto bad;
        memcpy(pa->host, addr, (size_t)(colon - addr));
    }
    if (strlen(colon + 1) == 0 || strlen(colon + 1) >= sizeof pa->port || !port_ok(colon + 1))
        goto bad;
    strcpy(pa->port, colon + 1);
    pa->wildcard = pa->host[0] == '\0' || strcmp(pa->host, "*") == 0;
    return 0;
bad:
    errno = EINVAL;
    return -1;
}
