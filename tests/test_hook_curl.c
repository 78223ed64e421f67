/* libcurl's easy interface in coroutines, with libweft_hook linked in. The HTTP server is a
 * weft server in this very thread, whose handlers take 300 ms to answer: 50 coroutines each
 * run curl_easy_perform against it at once. Had a transfer blocked the thread, the server
 * could not have answered at all; that all 50 were being served at the same moment shows
 * they ran together. Every body is checked. (URLs use 127.0.0.1: no resolver thread.) */
#include "harness.h"
#include "hook_support.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <weft.h>

static int serving, max_serving;

/* GET /N -> "body of N" after 300 ms. */
static void slow_http(weft_chan *c, void *arg)
{
    (void)arg;
    size_t len;
    const char *line = weft_gets(c, &len);
    int n = -1;
    if (!line || sscanf(line, "GET /%d ", &n) != 1)
        return;
    while ((line = weft_gets(c, &len)) != NULL && !(len == 0 || (len == 1 && line[0] == '\r'))) {
    }
    if (++serving > max_serving)
        max_serving = serving;
    weft_sleep(300);
    serving--;
    char body[64];
    int blen = snprintf(body, sizeof body, "body of %d", n);
    weft_printf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", blen,
                body);
}

struct fetch {
    int n;
    int port;
    char body[128];
    size_t len;
    long status;
};

static size_t collect(char *data, size_t size, size_t nmemb, void *p)
{
    struct fetch *f = p;
    size_t n = size * nmemb;
    if (f->len + n >= sizeof f->body)
        return 0; /* too long: fails the transfer */
    memcpy(f->body + f->len, data, n);
    f->len += n;
    f->body[f->len] = '\0';
    return n;
}

static void *fetch_one(void *p)
{
    struct fetch *f = p;
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/%d", f->port, f->n);
    CURL *h = curl_easy_init();
    CHECK(h);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 30L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, f);
    CURLcode rc = curl_easy_perform(h);
    if (rc != CURLE_OK)
        fprintf(stderr, "  fetch %d: %s\n", f->n, curl_easy_strerror(rc));
    CHECK(rc == CURLE_OK);
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &f->status);
    curl_easy_cleanup(h);
    return NULL;
}

static void fifty_fetches_together(void)
{
    CHECK(curl_global_init(CURL_GLOBAL_DEFAULT) == 0);
    weft_listener *l = weft_listen("127.0.0.1:0", 0);
    CHECK(l);
    weft_server *s = weft_server_start(l, slow_http, NULL);
    CHECK(s);
    int n = test_scale(50);
    struct fetch *f = calloc((size_t)n, sizeof *f);
    weft_co **cos = calloc((size_t)n, sizeof *cos);
    ticker t;
    ticker_start(&t);
    for (int i = 0; i < n; i++) {
        f[i] = (struct fetch){.n = i, .port = weft_listener_port(l)};
        CHECK((cos[i] = weft_spawn(fetch_one, &f[i])));
    }
    for (int i = 0; i < n; i++)
        CHECK(weft_join(cos[i], NULL, -1) == 0);
    ticker_stop(&t);
    printf("  %d fetches: %d served at once, %ld ticks meanwhile\n", n, max_serving, t.ticks);
    for (int i = 0; i < n; i++) {
        char want[64];
        snprintf(want, sizeof want, "body of %d", i);
        CHECK(f[i].status == 200 && strcmp(f[i].body, want) == 0);
    }
    CHECK(max_serving == n);
    CHECK(t.ticks > 0);
    CHECK(weft_server_shutdown(s, 1000) == 0);
    free(f);
    free(cos);
    curl_global_cleanup();
}

/* A refused connection, reported by libcurl as without the hooks. */
static void *fetch_refused(void *unused)
{
    (void)unused;
    struct fetch f = {.n = 1, .port = free_port()};
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/1", f.port);
    CURL *h = curl_easy_init();
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &f);
    CHECK(curl_easy_perform(h) == CURLE_COULDNT_CONNECT);
    curl_easy_cleanup(h);
    return NULL;
}

static void refused(void)
{
    CHECK(curl_global_init(CURL_GLOBAL_DEFAULT) == 0);
    run_in_coroutine(fetch_refused, NULL, NULL);
    curl_global_cleanup();
}

const struct test tests[] = {
    {"fifty_fetches_together", fifty_fetches_together, 60},
    {"refused", refused, 30},
};
const size_t tests_count = sizeof tests / sizeof tests[0];
