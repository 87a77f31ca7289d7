/* test_server.c -- the event loop and connection state machine (server.c, conn.c) driven over
 * real loopback sockets, built with ASan/UBSan (and once more with -DSP_FORCE_POLL for the poll
 * backend). A client thread plays the scenarios; the main thread is the "app": it runs sp_poll()
 * and answers through the same calls the Python side makes.
 *
 * Scenarios: keep-alive, pipelining in order, chunked request body, streamed (chunked) response,
 * Expect: 100-continue, HEAD, bad request (400 + close), a big response to a slow reader
 * (backpressure through sp_req_drain), a client that disconnects mid-response, bodies freed as
 * soon as the answer returns (sp.h: copied or sent by then, so ASan reports a late read), which
 * answers are held back to leave in a burst (corking) and which leave at once, drain.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "sp.h"

static int failures, checks;
#define CHECK(cond, ...) do { checks++; if (!(cond)) { failures++; \
    fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); fprintf(stderr, __VA_ARGS__); \
    fprintf(stderr, "\n"); } } while (0)

#define LEND_SINGLE 20             /* freed bodies asked for one at a time, after 4 pipelined */

static int port;
static sp_server *srv;
static volatile int client_done;

/* ---- client side ------------------------------------------------------------------------------ */

static int dial(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) { perror("connect"); exit(2); }
    struct timeval tv = { .tv_sec = 10 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    return fd;
}

static void send_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0) return;
        p += w;
        n -= (size_t)w;
    }
}

/* Reads until `want` bytes arrived, the peer closed, or `needle` appeared `times` times. */
static size_t read_until(int fd, char *buf, size_t cap, const char *needle, int times) {
    size_t n = 0;
    while (n < cap - 1) {
        ssize_t r = recv(fd, buf + n, cap - 1 - n, 0);
        if (r <= 0) break;
        n += (size_t)r;
        buf[n] = 0;
        if (needle) {
            int k = 0;
            for (const char *p = buf; (p = strstr(p, needle)); p++) k++;
            if (k >= times) break;
        }
    }
    buf[n] = 0;
    return n;
}

static void send_str(int fd, const char *s) { send_all(fd, s, strlen(s)); }

static void *client(void *arg) {
    (void)arg;
    static char buf[1 << 20];

    /* keep-alive: three requests on one connection */
    int fd = dial();
    for (int i = 0; i < 3; i++) {
        send_str(fd, "GET /ka HTTP/1.1\r\nHost: x\r\n\r\n");
        read_until(fd, buf, sizeof buf, "path=/ka", 1);
        CHECK(strncmp(buf, "HTTP/1.1 200 OK\r\n", 17) == 0, "keep-alive %d: %.40s", i, buf);
        CHECK(strstr(buf, "Content-Length: 8\r\n") != NULL, "content-length: %s", buf);
        CHECK(strstr(buf, "Date: ") && strstr(buf, "Server: sp-test\r\n"), "date/server: %s", buf);
    }
    close(fd);

    /* pipelining: answers in order */
    fd = dial();
    const char *pipe3 = "GET /p1 HTTP/1.1\r\nHost: x\r\n\r\nGET /p2 HTTP/1.1\r\nHost: x\r\n\r\n"
                        "GET /p3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    send_all(fd, pipe3, strlen(pipe3));
    read_until(fd, buf, sizeof buf, NULL, 0);
    char *a = strstr(buf, "path=/p1"), *b = strstr(buf, "path=/p2"), *c = strstr(buf, "path=/p3");
    CHECK(a && b && c && a < b && b < c, "pipelined order: %s", buf);
    CHECK(strstr(buf, "Connection: close") != NULL, "last one closes");
    close(fd);

    /* chunked request body, echoed */
    fd = dial();
    const char *chunked = "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                          "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    send_all(fd, chunked, strlen(chunked));
    read_until(fd, buf, sizeof buf, "hello world", 1);
    CHECK(strstr(buf, "\r\n\r\nhello world") != NULL, "chunked echo: %s", buf);
    close(fd);

    /* 100-continue: the interim answer comes when the app reads */
    fd = dial();
    send_str(fd, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n");
    read_until(fd, buf, sizeof buf, "\r\n\r\n", 1);
    CHECK(strcmp(buf, "HTTP/1.1 100 Continue\r\n\r\n") == 0, "100-continue: %s", buf);
    send_str(fd, "abc");
    read_until(fd, buf, sizeof buf, "abc", 1);
    CHECK(strstr(buf, "200 OK") && strstr(buf, "\r\n\r\nabc"), "after continue: %s", buf);
    close(fd);

    /* streamed response: chunked framing */
    fd = dial();
    send_str(fd, "GET /stream HTTP/1.1\r\nHost: x\r\n\r\n");
    read_until(fd, buf, sizeof buf, "0\r\n\r\n", 1);
    CHECK(strstr(buf, "Transfer-Encoding: chunked") && strstr(buf, "3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n"),
          "stream: %s", buf);
    /* HEAD on the same connection: no body */
    send_str(fd, "HEAD /ka HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    size_t n = read_until(fd, buf, sizeof buf, NULL, 0);
    CHECK(n > 0 && strstr(buf, "path=") == NULL && strstr(buf, "Content-Length: 8"), "head: %s", buf);
    close(fd);

    /* bad request: 400 and close */
    fd = dial();
    send_str(fd, "GET /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n");
    read_until(fd, buf, sizeof buf, NULL, 0);
    CHECK(strncmp(buf, "HTTP/1.1 400 ", 13) == 0 && strstr(buf, "Connection: close"), "400: %s", buf);
    close(fd);

    /* big response to a slow reader: everything arrives */
    fd = dial();
    send_str(fd, "GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    usleep(200 * 1000);
    size_t total = 0;
    for (int i = 0;; i++) {
        ssize_t r = recv(fd, buf, 65536, 0);
        if (r <= 0) break;
        total += (size_t)r;
        if (i < 20) usleep(10 * 1000);   /* slow at first: the app must wait (sp_req_drain) */
    }
    CHECK(total > 4 * 1024 * 1024, "big: got %zu", total);
    close(fd);

    /* bodies freed at once: pipelined (a response behind a held-back one), then one by one */
    fd = dial();
    char lendreq[4 * 40];
    size_t lrl = 0;
    for (int i = 0; i < 4; i++)
        lrl += (size_t)snprintf(lendreq + lrl, sizeof lendreq - lrl, "GET /lend HTTP/1.1\r\nHost: x\r\n\r\n");
    send_all(fd, lendreq, lrl);
    size_t got = 0;   /* bytes in buf: pipelined answers may arrive together */
    for (int i = 0; i < 4 + LEND_SINGLE; i++) {
        if (i >= 4) send_str(fd, "GET /lend HTTP/1.1\r\nHost: x\r\n\r\n");
        size_t want = 0;
        char *body = NULL;
        for (;;) {   /* one response: head, then its 65536 bytes */
            char *e = body ? body : memmem(buf, got, "\r\n\r\n", 4);
            if (e && !body) { body = e + 4; want = (size_t)(body - buf) + 65536; }
            if (body && got >= want) break;
            ssize_t r = recv(fd, buf + got, sizeof buf - got, 0);
            if (r <= 0) break;
            got += (size_t)r;
        }
        CHECK(body && got >= want, "lent %d: %zu of %zu bytes", i, got, want);
        if (!body || got < want) break;
        int same = 1;
        for (size_t k = 0; same && k < 65536; k++) same = body[k] == body[0];
        CHECK(same && body[0] == 'a' + (i % 26), "lent %d: bytes %c, not all %c", i, body[0], 'a' + i % 26);
        memmove(buf, buf + want, got - want);
        got -= want;
    }
    close(fd);

    /* a client that leaves in the middle of a big response */
    fd = dial();
    send_str(fd, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
    recv(fd, buf, 1000, 0);
    struct linger lg = { 1, 0 };
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));   /* RST on close */
    close(fd);

    /* still serving */
    fd = dial();
    send_str(fd, "GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    read_until(fd, buf, sizeof buf, NULL, 0);
    CHECK(strstr(buf, "path=/after") != NULL, "after reset: %s", buf);
    close(fd);

    client_done = 1;
    sp_server_wakeup(srv);
    return NULL;
}

/* ---- the "app" ------------------------------------------------------------------------------ */

static const char c_head[] = "200 OK\0Content-Type\0text/plain";   /* the head /c answers with */

static const char *env_get(const sp_request *r, int index) {
    /* values: REMOTE_ADDR, REQUEST_METHOD, PATH_INFO, ... */
    const char *p = r->env;
    for (int i = 0; i < index; i++) p += strlen(p) + 1;
    return p;
}

/* A 64 KiB body freed as soon as the answer returns: sp.h says it is copied or sent by then. */
static void answer_lent(int64_t code) {
    static unsigned k;
    static const char head[] = "200 OK\0Content-Type\0application/octet-stream";
    char *b = malloc(65536);
    memset(b, 'a' + (int)(k++ % 26), 65536);
    CHECK(sp_code_respond(srv, code, head, sizeof head - 1, b, 65536) == 0, "lend respond");
    free(b);
}

static void answer(sp_request *r, int64_t code) {
    /* The env block is packed when asked for (sp.h, sp_request.env): a new head's has none
     * before (a repeated head's is the last one's). */
    CHECK((r->env == NULL || r->serial > 0) && sp_code_env(srv, code) == r && r->env != NULL,
          "env packed when asked");
    const char *path = env_get(r, 2);
    static const char hdrs[] = "Content-Type\0text/plain";
    /* Small responses must not wait for the client's ACK (Nagle): set per connection, or
     * inherited from the listener (Linux). */
    int nodelay = 0;
    socklen_t ndl = sizeof nodelay;
    CHECK(getsockopt(r->fd, IPPROTO_TCP, TCP_NODELAY, &nodelay, &ndl) == 0 && nodelay,
          "TCP_NODELAY on an accepted connection");
    if (strcmp(path, "/lend") == 0) { answer_lent(code); return; }
    if (strcmp(path, "/echo") == 0) {
        char body[256];
        size_t n = 0;
        for (;;) {
            /* What the loop holds, without a copy (a few bytes at a time, to cross chunk and
             * buffer edges); the rest through the blocking read. */
            const char *p = NULL;
            ssize_t k = sp_code_peek(srv, code, &p, 3 < sizeof(body) - n ? 3 : sizeof(body) - n);
            if (k > 0) { memcpy(body + n, p, (size_t)k); n += (size_t)k; continue; }
            if (k == 0) break;
            CHECK(k == -EAGAIN, "peek body: %zd", k);
            k = sp_req_read_wait(srv, code, body + n, sizeof(body) - n, 5000);
            if (k <= 0) { CHECK(k == 0, "read body: %zd", k); break; }
            n += (size_t)k;
        }
        CHECK(sp_req_respond(srv, code, "200 OK", 6, hdrs, sizeof hdrs, body, n) == 0, "echo respond");
        return;
    }
    if (strcmp(path, "/stream") == 0) {
        CHECK(sp_req_start(srv, code, "200 OK", 6, hdrs, sizeof hdrs) == 0, "start");
        sp_req_write(srv, code, "one", 3);
        sp_req_write(srv, code, "two", 3);
        CHECK(sp_req_finish(srv, code, 0) == 0, "finish stream");
        /* The code names nothing now: a kept one reaches no connection (the next request's). */
        CHECK(sp_req_write(srv, code, "x", 1) == -ESTALE, "write with a finished request's code");
        CHECK(sp_req_finish(srv, code, 0) == -ESTALE, "finish with a finished request's code");
        return;
    }
    if (strcmp(path, "/big") == 0) {
        static char chunk[65536];
        memset(chunk, 'b', sizeof chunk);
        CHECK(sp_req_start(srv, code, "200 OK", 6, hdrs, sizeof hdrs) == 0, "start big");
        int abort = 0;
        for (int i = 0; i < 80 && !abort; i++) {   /* 5 MiB */
            ssize_t q = sp_req_write(srv, code, chunk, sizeof chunk);
            if (q > 256 * 1024) q = sp_req_drain(srv, code, 64 * 1024);
            if (q < 0) abort = 1;   /* the client left: expected in one scenario */
        }
        sp_req_finish(srv, code, abort);
        return;
    }
    char body[64];
    int n = snprintf(body, sizeof body, "path=%s", path);
    if (strcmp(path, "/c") == 0) {
        usleep(1500);   /* slow enough that another thread polls meanwhile */
        /* as Python answers, taking the thread's next request when one is there without
         * waiting */
        int64_t rc = sp_code_answer(srv, code, c_head, sizeof c_head - 1, body, (size_t)n);
        CHECK(rc >= 0, "answer: %lld", (long long)rc);
        if (rc > 0) {
            sp_request *next = sp_code_req(srv, rc);
            CHECK(next != NULL, "the code answer took names a request");
            if (next) answer(next, rc);
        }
        return;
    }
    CHECK(sp_req_respond(srv, code, "200 OK", 6, hdrs, sizeof hdrs, body, (size_t)n) == 0, "respond");
}

/* ---- phase 2: several app threads (thread mode), short connections ------------------------- */

static volatile int churn_done;

static void *app_thread(void *arg) {
    (void)arg;
    sp_event ev[1];
    while (!churn_done) {
        int n = sp_poll(srv, ev, 1, 200);
        if (n > 0 && ev[0].kind == SP_EV_REQUEST) answer(ev[0].req, ev[0].code);
    }
    return NULL;
}

static void *churn_client(void *arg) {
    (void)arg;
    char buf[4096];
    for (int i = 0; i < 300; i++) {
        int fd = dial();
        /* half of them close right after the response, before the server reads on */
        send_str(fd, i % 3 ? "GET /c HTTP/1.1\r\nHost: x\r\n\r\n"
                           : "GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        size_t n = read_until(fd, buf, sizeof buf, "path=/c", 1);
        CHECK(n > 0 && strstr(buf, "path=/c"), "churn %d: %.60s", i, buf);
        if (i % 2) { struct linger lg = { 1, 0 }; setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg); }
        close(fd);
    }
    return NULL;
}

/* Connections closed by an app thread while another thread waits in the backend must not be
 * freed under the poller's feet (the graveyard); ASan catches it if they are. */
static void churn(void) {
    pthread_t apps[3], clients[2];
    for (int i = 0; i < 3; i++) pthread_create(&apps[i], NULL, app_thread, NULL);
    for (int i = 0; i < 2; i++) pthread_create(&clients[i], NULL, churn_client, NULL);
    for (int i = 0; i < 2; i++) pthread_join(clients[i], NULL);
    churn_done = 1;
    sp_server_wakeup(srv);
    for (int i = 0; i < 3; i++) pthread_join(apps[i], NULL);
}

/* ---- phase 3: corking, from the main thread alone ------------------------------------------ */

#define CORK_REQUESTS 3             /* the requests phase 3 makes */

/* Polls until `want` requests are taken (codes[0..want)); with fewer after ~5 s, a failure. */
static int take_requests(int64_t *codes, int want) {
    sp_event ev[4];
    int got = 0;
    for (int i = 0; i < 50 && got < want; i++) {
        int n = sp_poll(srv, ev, 4, 100);
        for (int k = 0; k < n; k++)
            if (ev[k].kind == SP_EV_REQUEST && got < want) codes[got++] = ev[k].code;
    }
    CHECK(got == want, "took %d of %d requests", got, want);
    return got == want;
}

/* Whether fd has bytes to read within ms. */
static int readable(int fd, int ms) {
    struct pollfd p = { .fd = fd, .events = POLLIN };
    return poll(&p, 1, ms) == 1;
}

static void *run_flusher(void *srv) {
    sp_server_flusher(srv);
    return NULL;
}

/* With SP_CORK_BURSTS a small keep-alive response is held back only when it has a burst to join
 * (conn/output.c, "Corking"): the answer to a request that is the only one in flight, with nothing
 * queued or held, leaves at once, before any poll; an answer while another request is with the
 * app waits for the next poll (or flush), or, with the flusher running (--threads 1's), about
 * SP_CORK_US while that other request is still with the app. */
static void cork_phase(const sp_config *base, int flusher) {
    static const char head[] = "200 OK\0Content-Type\0text/plain";
    char buf[4096];
    /* A server of its own: green mode's (no chain) or --threads 1's (chain and the flusher). */
    sp_server *main_srv = srv;
    int main_port = port;
    sp_config cfg = *base;
    cfg.chain = flusher;
    cfg.cork = SP_CORK_BURSTS;
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof(sa);
    if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(lfd, 8) < 0) { perror("listen"); exit(2); }
    getsockname(lfd, (struct sockaddr *)&sa, &sl);
    port = ntohs(sa.sin_port);
    srv = sp_server_new(&cfg);
    CHECK(srv != NULL && sp_server_add_listener(srv, lfd, 0) == 0, "cork phase's server");
    pthread_t ft;
    if (flusher) pthread_create(&ft, NULL, run_flusher, srv);
    int a = dial(), b = dial();
    int64_t codes[2];
    send_str(a, "GET /alone HTTP/1.1\r\nHost: x\r\n\r\n");
    if (take_requests(codes, 1)) {
        CHECK(sp_code_respond(srv, codes[0], head, sizeof head - 1, "alone", 5) == 0, "respond alone");
        CHECK(readable(a, 2000), "a lone answer left at once, without waiting for a poll");
        size_t n = read_until(a, buf, sizeof buf, "alone", 1);
        CHECK(n > 0 && strstr(buf, "alone"), "lone answer: %.60s", buf);
    }
    send_str(a, "GET /first HTTP/1.1\r\nHost: x\r\n\r\n");
    send_str(b, "GET /second HTTP/1.1\r\nHost: x\r\n\r\n");
    if (take_requests(codes, 2)) {
        CHECK(sp_code_respond(srv, codes[0], head, sizeof head - 1, "first", 5) == 0, "respond first");
        if (flusher) {   /* the other request stays with the app: the flusher sends it when due */
            CHECK(readable(a, 2000), "the flusher sent a held answer while the app held another");
        } else {
            CHECK(!readable(a, 100), "an answer with another request in flight is held back");
        }
        /* (The second may find the first held longer than SP_CORK_US, on a slow machine, and
         * send it, then itself at once: the order is all this checks of it.) */
        CHECK(sp_code_respond(srv, codes[1], head, sizeof head - 1, "second", 6) == 0, "respond second");
        sp_server_flush(srv);
        size_t n = read_until(a, buf, sizeof buf, "first", 1);
        CHECK(n > 0 && strstr(buf, "first"), "first, flushed: %.60s", buf);
        n = read_until(b, buf, sizeof buf, "second", 1);
        CHECK(n > 0 && strstr(buf, "second"), "second, flushed: %.60s", buf);
    }
    close(a);
    close(b);
    sp_stats st;
    sp_server_stats(srv, &st);
    CHECK(st.requests == CORK_REQUESTS, "cork phase: %llu requests", (unsigned long long)st.requests);
    if (flusher) {
        sp_server_flusher_stop(srv);
        pthread_join(ft, NULL);
    }
    sp_server_free(srv);
    close(lfd);
    srv = main_srv;
    port = main_port;
}

int main(void) {
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = { .sin_family = AF_INET };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof(a);
    if (bind(lfd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(lfd, 64) < 0) { perror("listen"); return 2; }
    getsockname(lfd, (struct sockaddr *)&a, &al);
    port = ntohs(a.sin_port);

    sp_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.limits = (sp_limits){ 8190, 8190, 65536, 100 };
    cfg.max_body_size = 1 << 20;
    cfg.max_connections = 100;
    cfg.header_timeout_ms = 5000;
    cfg.keepalive_timeout_ms = 5000;
    cfg.send_timeout_ms = 5000;
    cfg.body_timeout_ms = 5000;
    cfg.keepalive = 1;
    cfg.server_header = "sp-test";
    cfg.chain = 1;   /* answers take the next queued request, as in thread mode */
    cfg.cork = SP_CORK_ALWAYS;      /* the corking paths run under ASan too */
    srv = sp_server_new(&cfg);
    CHECK(srv != NULL, "server_new");
    CHECK(sp_server_add_listener(srv, lfd, 0) == 0, "add_listener");
    printf("backend: %s\n", sp_backend_name());

    pthread_t t;
    pthread_create(&t, NULL, client, NULL);
    sp_event ev[16];
    while (!client_done) {
        int n = sp_poll(srv, ev, 16, 1000);
        CHECK(n >= 0, "poll: %d", n);
        for (int i = 0; i < n; i++)
            if (ev[i].kind == SP_EV_REQUEST) answer(ev[i].req, ev[i].code);
    }
    pthread_join(t, NULL);

    CHECK(sp_code_answer(srv, 0, c_head, sizeof c_head - 1, "x", 1) == -ESTALE, "no such request");
    churn();
    cork_phase(&cfg, 0);
    cork_phase(&cfg, 1);

    /* drain: no new connections are accepted, open ones finish */
    int left = sp_server_drain(srv);
    for (int i = 0; i < 50 && sp_server_connections(srv) > 0; i++) sp_poll(srv, ev, 16, 100);
    CHECK(sp_server_connections(srv) == 0, "drained: %d left of %d", sp_server_connections(srv), left);
    sp_stats st;
    sp_server_stats(srv, &st);
    CHECK(st.requests == 13 + 4 + LEND_SINGLE + 600 && st.rejected == 1, "stats: %llu requests %llu rejected",
          (unsigned long long)st.requests, (unsigned long long)st.rejected);
    sp_server_free(srv);
    close(lfd);
    printf("test_server (%s): %d checks, %d failures\n", sp_backend_name(), checks, failures);
    return failures ? 1 : 0;
}
