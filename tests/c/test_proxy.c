/* test_proxy.c -- vectors for proxy.c (the PROXY protocol preamble, v1 and v2).
 *
 * Every vector runs whole and byte by byte (each growing prefix parsed afresh, as the server does
 * while a balancer's preamble trickles in): every prefix shorter than the answer's must be PARTIAL
 * for a valid preamble, and garbage must be refused no later than the whole input. Each input is
 * copied right against a PROT_NONE guard page, so an over-read faults at once (and ASan/UBSan
 * watch the rest). Exit status 0 when every check passes; failures are listed by case name.
 */
#define _DEFAULT_SOURCE 1
#include "sp.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

static int failures, checks;
static const char *current_case = "";

#define CHECK(cond, ...)                                                              \
    do {                                                                              \
        checks++;                                                                     \
        if (!(cond)) {                                                                \
            failures++;                                                               \
            fprintf(stderr, "FAIL [%s] line %d: ", current_case, __LINE__);           \
            fprintf(stderr, __VA_ARGS__);                                             \
            fputc('\n', stderr);                                                      \
        }                                                                             \
    } while (0)

static char *guard_map;
static size_t guard_cap;

static void guard_init(size_t cap)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE), pages = cap / pg + 1;
    guard_map = mmap(NULL, (pages + 1) * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (guard_map == MAP_FAILED || mprotect(guard_map + pages * pg, pg, PROT_NONE) != 0) {
        perror("mmap");
        exit(2);
    }
    guard_cap = pages * pg;
}

/* s[0..n) placed so that its last byte sits just before the guard page. */
static const char *place(const char *s, size_t n)
{
    char *p = guard_map + guard_cap - n;
    if (n) memcpy(p, s, n);
    return p;
}

#define IN(lit) .in = (lit), .len = sizeof(lit) - 1
#define BAD (-400)

typedef struct vec {
    const char *name;
    const char *in;
    size_t len;
    int rc;               /* bytes consumed, SP_PARTIAL or BAD */
    int family;           /* when rc > 0 */
    const char *addr;     /* canonical text, when family is INET/INET6 */
    int port;
} vec;

#define V2SIG "\r\n\r\n\0\r\nQUIT\n"

static const vec vectors[] = {
    /* v1 */
    {"v1 TCP4", IN("PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"), 45, SP_PROXY_INET, "192.0.2.1", 56324},
    {"v1 TCP4 then a request", IN("PROXY TCP4 192.0.2.1 198.51.100.2 1 80\r\nGET / HTTP/1.1\r\n\r\n"), 40,
     SP_PROXY_INET, "192.0.2.1", 1},
    {"v1 TCP6", IN("PROXY TCP6 2001:db8::1 2001:db8::2 4711 8080\r\n"), 46, SP_PROXY_INET6, "2001:db8::1", 4711},
    {"v1 TCP6 longest (107 bytes)",
     IN("PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"),
     104, SP_PROXY_INET6, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535},
    {"v1 UNKNOWN", IN("PROXY UNKNOWN\r\n"), 15, SP_PROXY_KEEP, NULL, 0},
    {"v1 UNKNOWN with addresses ignored", IN("PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n"), 35, SP_PROXY_KEEP, NULL, 0},
    {"v1 port 0", IN("PROXY TCP4 10.0.0.1 10.0.0.2 0 0\r\n"), 34, SP_PROXY_INET, "10.0.0.1", 0},
    {"v1 port over 65535", IN("PROXY TCP4 10.0.0.1 10.0.0.2 65536 80\r\n"), BAD},
    {"v1 six-digit port", IN("PROXY TCP4 10.0.0.1 10.0.0.2 100000 80\r\n"), BAD},
    {"v1 TCP4 with an IPv6 address", IN("PROXY TCP4 ::1 ::1 1 2\r\n"), BAD},
    {"v1 TCP6 with an IPv4 address", IN("PROXY TCP6 1.2.3.4 1.2.3.4 1 2\r\n"), BAD},
    {"v1 unknown protocol", IN("PROXY UDP4 1.2.3.4 1.2.3.4 1 2\r\n"), BAD},
    {"v1 missing field", IN("PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n"), BAD},
    {"v1 extra field", IN("PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3\r\n"), BAD},
    {"v1 two spaces", IN("PROXY TCP4  1.2.3.4 1.2.3.4 1 2\r\n"), BAD},
    {"v1 trailing space", IN("PROXY TCP4 1.2.3.4 1.2.3.4 1 2 \r\n"), BAD},
    {"v1 bare LF", IN("PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n"), BAD},
    {"v1 CR inside", IN("PROXY TCP4 1.2.3.4\r1.2.3.4 1 2\r\n"), BAD},
    {"v1 NUL inside", IN("PROXY TCP4 1.2.3.4\0001.2.3.4 1 2\r\n"), BAD},
    {"v1 hostname for an address", IN("PROXY TCP4 localhost 1.2.3.4 1 2\r\n"), BAD},
    {"v1 address too long for any family", IN("PROXY TCP6 0000:0000:0000:0000:0000:0000:0000:0000:0 ::1 1 2\r\n"), BAD},
    {"v1 non-digit port", IN("PROXY TCP4 1.2.3.4 1.2.3.4 8o 2\r\n"), BAD},
    {"v1 lower-case magic", IN("proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n"), BAD},
    {"v1 no CRLF within 107 bytes",
     IN("PROXY UNKNOWN xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"),
     BAD},
    {"v1 unfinished is PARTIAL", IN("PROXY TCP4 1.2.3.4 1.2"), SP_PARTIAL},
    {"v1 magic only is PARTIAL", IN("PROXY"), SP_PARTIAL},

    /* v2 */
    {"v2 TCP4", IN(V2SIG "\x21\x11\x00\x0c" "\xc0\x00\x02\x01" "\xc6\x33\x64\x02" "\xdc\x04" "\x01\xbb"),
     28, SP_PROXY_INET, "192.0.2.1", 56324},
    {"v2 TCP4 then a request",
     IN(V2SIG "\x21\x11\x00\x0c" "\x0a\x00\x00\x01" "\x0a\x00\x00\x02" "\x00\x50" "\x00\x50" "GET / HTTP/1.0\r\n\r\n"),
     28, SP_PROXY_INET, "10.0.0.1", 80},
    {"v2 TCP6", IN(V2SIG "\x21\x21\x00\x24"
                   "\x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01"
                   "\x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02" "\x12\x67" "\x1f\x90"),
     52, SP_PROXY_INET6, "2001:db8::1", 4711},
    {"v2 TCP4 with TLVs (ALPN, AWS VPC endpoint, NOOP)",
     IN(V2SIG "\x21\x11\x00\x1f" "\x0a\x00\x00\x07" "\x0a\x00\x00\x02" "\x00\x07" "\x00\x50"
        "\x01\x00\x02" "h2" "\xea\x00\x07" "\x01vpce-1" "\x04\x00\x01" "\x00"),
     47, SP_PROXY_INET, "10.0.0.7", 7},
    {"v2 TLV running past the end",
     IN(V2SIG "\x21\x11\x00\x10" "\x0a\x00\x00\x07" "\x0a\x00\x00\x02" "\x00\x07" "\x00\x50" "\x01\x00\x05" "h"),
     BAD},
    {"v2 TLV header cut short", IN(V2SIG "\x21\x11\x00\x0e" "\x0a\x00\x00\x07" "\x0a\x00\x00\x02" "\x00\x07" "\x00\x50" "\x01\x00"),
     BAD},
    {"v2 LOCAL (health check)", IN(V2SIG "\x20\x00\x00\x00"), 16, SP_PROXY_KEEP, NULL, 0},
    {"v2 LOCAL with addresses ignored", IN(V2SIG "\x20\x11\x00\x0c" "\x01\x01\x01\x01\x02\x02\x02\x02\x00\x01\x00\x02"), 28,
     SP_PROXY_KEEP, NULL, 0},
    {"v2 PROXY UNSPEC", IN(V2SIG "\x21\x00\x00\x00"), 16, SP_PROXY_KEEP, NULL, 0},
    {"v2 version 1 in the binary form", IN(V2SIG "\x11\x11\x00\x0c" "\x0a\x00\x00\x01\x0a\x00\x00\x02\x00\x50\x00\x50"), BAD},
    {"v2 unknown command", IN(V2SIG "\x22\x11\x00\x0c" "\x0a\x00\x00\x01\x0a\x00\x00\x02\x00\x50\x00\x50"), BAD},
    {"v2 unknown family", IN(V2SIG "\x21\x41\x00\x00"), BAD},
    {"v2 unknown transport", IN(V2SIG "\x21\x13\x00\x0c" "\x0a\x00\x00\x01\x0a\x00\x00\x02\x00\x50\x00\x50"), BAD},
    {"v2 length shorter than the addresses", IN(V2SIG "\x21\x11\x00\x08" "\x0a\x00\x00\x01\x0a\x00\x00\x02"), BAD},
    {"v2 length over the cap", IN(V2SIG "\x21\x11\xff\xff"), BAD},
    {"v2 length just over the cap", IN(V2SIG "\x21\x11\x0f\xf1"), BAD},
    {"v2 bad signature", IN("\r\n\r\n\0\r\nQUIX\n\x21\x11\x00\x00"), BAD},
    {"v2 unfinished is PARTIAL", IN(V2SIG "\x21\x11\x00\x0c" "\x0a\x00"), SP_PARTIAL},
    {"v2 signature only is PARTIAL", IN(V2SIG), SP_PARTIAL},

    /* not a preamble */
    {"HTTP request without a preamble", IN("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), BAD},
    {"TLS ClientHello", IN("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"), BAD},
    {"lone CRLF", IN("\r\n\r\nGET"), BAD},
    {"P then garbage", IN("PUT / HTTP/1.1\r\n\r\n"), BAD},
    {"empty is PARTIAL", .in = "", .len = 0, SP_PARTIAL},
};

static void check_result(const vec *v, int rc, const sp_proxy_addr *a, const char *how)
{
    CHECK(rc == v->rc, "%s: rc %d, expected %d", how, rc, v->rc);
    if (rc != v->rc || rc <= 0) return;
    CHECK(a->family == v->family, "%s: family %d, expected %d", how, a->family, v->family);
    if (v->addr) {
        char text[64];
        int af = v->family == SP_PROXY_INET ? AF_INET : AF_INET6;
        CHECK(inet_ntop(af, a->src, text, sizeof(text)) && strcmp(text, v->addr) == 0,
              "%s: address %s, expected %s", how, text, v->addr);
        CHECK(a->src_port == v->port, "%s: port %u, expected %d", how, a->src_port, v->port);
    }
}

static void run(const vec *v)
{
    sp_proxy_addr a;
    current_case = v->name;
    /* whole */
    memset(&a, 0xAB, sizeof(a));
    check_result(v, sp_parse_proxy(place(v->in, v->len), v->len, &a), &a, "whole");
    /* byte by byte: growing prefixes until an answer */
    int rc = SP_PARTIAL;
    size_t k;
    for (k = 0; k <= v->len; k++) {
        memset(&a, 0xAB, sizeof(a));
        rc = sp_parse_proxy(place(v->in, k), k, &a);
        if (rc != SP_PARTIAL) break;
    }
    check_result(v, rc, &a, "byte by byte");
    if (v->rc > 0) CHECK(k == (size_t)v->rc, "byte by byte: answered at %zu bytes, expected %d", k, v->rc);
}

/* Every v2 preamble with a random body never reads past len, whatever it declares. */
static void random_v2(void)
{
    current_case = "random v2 bodies stay in bounds";
    unsigned char buf[16 + 600];
    uint64_t x = 0x9E3779B97F4A7C15u;
    for (int n = 0; n < 20000; n++) {
        memcpy(buf, V2SIG, 12);
        size_t len = 12;
        for (size_t i = 12; i < sizeof(buf); i++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            buf[i] = (unsigned char)x;
        }
        buf[12] = 0x20 | (buf[12] & 1);
        buf[13] = (unsigned char)((buf[13] % 4) << 4 | (buf[13] & 0xF) % 3);
        buf[14] = 0;
        buf[15] = (unsigned char)(buf[15] % 255);
        len = 16 + (x >> 40) % 600;
        sp_proxy_addr a;
        int rc = sp_parse_proxy(place((const char *)buf, len), len, &a);
        CHECK(rc == SP_PARTIAL || rc == BAD || (rc >= 16 && (size_t)rc <= len), "rc %d for len %zu", rc, len);
    }
}

/* AF_UNIX: two 108-byte paths; the connection's own address is kept. Built here: too long a
 * literal to read. */
static void unix_v2(void)
{
    static char buf[16 + 216 + 5];
    memcpy(buf, V2SIG "\x21\x31\x00\xd8", 16);
    memset(buf + 16, 0, 216);
    memcpy(buf + 16, "/run/lb.sock", 12);
    memcpy(buf + 16 + 108, "/run/app.sock", 13);
    memcpy(buf + 16 + 216, "GET /", 5);
    vec v = {"v2 AF_UNIX ignored", buf, sizeof(buf), 232, SP_PROXY_KEEP, NULL, 0};
    run(&v);
}

int main(void)
{
    guard_init(1 << 16);
    for (size_t i = 0; i < sizeof(vectors) / sizeof(vectors[0]); i++) run(&vectors[i]);
    unix_v2();
    random_v2();
    printf("test_proxy: %d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
