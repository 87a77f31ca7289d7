/* head.c -- response heads: the status line, the app's header lines (validated), and ours
 * (Date, Server, framing, Connection). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "conn.h"
#include "loop/sysio.h"

/* ---- responses ----------------------------------------------------------------------------- */

/* Writes v in the given base (10 or 16) at dst; returns the length. snprintf costs more than the
 * rest of a small response's head on the hot path. */
size_t conn_fmt_u64(char *dst, uint64_t v, unsigned base) {
    static const char digits[] = "0123456789abcdef";
    char tmp[24];
    size_t n = 0;
    do { tmp[n++] = digits[v % base]; v /= base; } while (v);
    for (size_t i = 0; i < n; i++) dst[i] = tmp[n - 1 - i];
    return n;
}

/* "Content-Length: N\r\n" into dst (>= 40 bytes); returns the length. */
static size_t fmt_content_length(char *dst, int64_t v) {
    memcpy(dst, "Content-Length: ", 16);
    size_t n = 16 + conn_fmt_u64(dst + 16, (uint64_t)v, 10);
    dst[n++] = '\r';
    dst[n++] = '\n';
    return n;
}

/* RFC 9110 5.6.2 tchar, as a table: names are checked byte by byte on every response. */
static const unsigned char tchar[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1,
    ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1, ['~'] = 1,
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1,
    ['8'] = 1, ['9'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1,
    ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1,
    ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1,
    ['Y'] = 1, ['Z'] = 1,
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1,
    ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1,
    ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1,
    ['y'] = 1, ['z'] = 1,
};

/* Case-insensitive compare of a[0..al) with b (length bl), lowercase letters and "-" only:
 * OR-ing 0x20 folds case and maps nothing else onto those (a is a validated token). */
static int ieq_n(const char *a, size_t al, const char *b, size_t bl) {
    if (al != bl) return 0;
    for (size_t i = 0; i < al; i++)
        if ((a[i] | 0x20) != b[i]) return 0;   /* b is lowercase letters and '-' */
    return 1;
}
#define ieq(a, al, lit) ieq_n((a), (al), (lit), sizeof(lit) - 1)

static int contains_token(const char *v, size_t n, const char *tok) {
    size_t tl = strlen(tok);
    for (size_t i = 0; i + tl <= n; i++) {
        if ((i == 0 || v[i - 1] == ',' || v[i - 1] == ' ') && ieq_n(v + i, tl, tok, tl) &&
            (i + tl == n || v[i + tl] == ',' || v[i + tl] == ' '))
            return 1;
    }
    return 0;
}

/* Validates the packed "Name\0value\0..." list h and writes its lines to out. Returns 0, -EINVAL
 * (bad name or value, hop-by-hop field, conflicting Content-Length) or -ENOSPC. A response with
 * status 204 carries no Content-Length (RFC 9110 8.6): the app's is checked, then left out. */
static int format_app_headers(const char *h, size_t hlen, char *out, size_t cap, app_headers *ah,
                              int status) {
    size_t n = 0, i = 0;
    ah->content_length = -1;
    ah->has_date = ah->has_server = ah->close = 0;
#define PUT(p, l) do { size_t _l = (l); if (n + _l > cap) return -ENOSPC; memcpy(out + n, (p), _l); n += _l; } while (0)
    while (i < hlen) {
        const char *name = h + i;
        const char *z = memchr(name, 0, hlen - i);
        if (!z) return -EINVAL;
        size_t nl = (size_t)(z - name);
        i += nl + 1;
        if (i > hlen) return -EINVAL;
        const char *val = h + i;
        const char *z2 = memchr(val, 0, hlen - i);
        size_t vl = z2 ? (size_t)(z2 - val) : hlen - i;
        i += vl + 1;
        if (!nl) return -EINVAL;
        for (size_t k = 0; k < nl; k++) if (!tchar[(unsigned char)name[k]]) return -EINVAL;
        for (size_t k = 0; k < vl; k++) {
            unsigned char ch = (unsigned char)val[k];
            if ((ch < 0x20 && ch != '\t') || ch == 0x7f) return -EINVAL;   /* CR/LF injection */
        }
        if (ieq(name, nl, "content-length")) {
            if (!vl || vl > 18) return -EINVAL;
            int64_t v = 0;
            for (size_t k = 0; k < vl; k++) {
                if (val[k] < '0' || val[k] > '9') return -EINVAL;
                v = v * 10 + (val[k] - '0');
            }
            if (ah->content_length >= 0 && ah->content_length != v) return -EINVAL;
            ah->content_length = v;
            if (status == 204) continue;
        } else if (ieq(name, nl, "transfer-encoding") || ieq(name, nl, "keep-alive") ||
                   ieq(name, nl, "upgrade") || ieq(name, nl, "proxy-connection")) {
            return -EINVAL;   /* hop-by-hop: framing is the server's job (PEP 3333) */
        } else if (ieq(name, nl, "connection")) {
            if (contains_token(val, vl, "close")) ah->close = 1;
            continue;         /* we write our own Connection header */
        } else if (ieq(name, nl, "date")) {
            ah->has_date = 1;
        } else if (ieq(name, nl, "server")) {
            ah->has_server = 1;
        }
        PUT(name, nl);
        PUT(": ", 2);
        PUT(val, vl);
        PUT("\r\n", 2);
    }
#undef PUT
    ah->len = n;
    return 0;
}

/* Validates status ("NNN" or "NNN reason", a final status) and writes "HTTP/1.1 status\r\n" to
 * dst. Returns the length and sets *code, or -EINVAL, or -ENOSPC if cap is too small. */
static ssize_t format_status_line(char *dst, size_t cap, const char *status, size_t slen, int *code) {
    /* The status nearly every response has, as one compare and one copy of its whole line
     * (~10 instructions where the checks below take ~45). */
    static const char ok_line[] = "HTTP/1.1 200 OK\r\n";
    if (slen == 6 && memcmp(status, ok_line + 9, 6) == 0 && slen + 13 <= cap) {   /* cap: as below */
        memcpy(dst, ok_line, sizeof ok_line - 1);
        *code = 200;
        return (ssize_t)(sizeof ok_line - 1);
    }
    if (slen < 3 || slen > 512) return -EINVAL;
    for (int i = 0; i < 3; i++) if (status[i] < '0' || status[i] > '9') return -EINVAL;
    if (slen > 3 && status[3] != ' ') return -EINVAL;
    for (size_t i = 4; i < slen; i++) {
        unsigned char ch = (unsigned char)status[i];
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f) return -EINVAL;
    }
    int v = (status[0] - '0') * 100 + (status[1] - '0') * 10 + (status[2] - '0');
    /* A final status only (RFC 9110 15): a 1xx from the app would leave the client waiting for
     * the real answer, or take the next one for it. */
    if (v < 200 || v > 599) return -EINVAL;
    if (slen + 13 > cap) return -ENOSPC;
    memcpy(dst, "HTTP/1.1 ", 9);
    memcpy(dst + 9, status, slen);
    size_t n = 9 + slen;
    if (slen == 3) dst[n++] = ' ';   /* RFC 9112 4: the SP stays when the reason is empty */
    dst[n++] = '\r';
    dst[n++] = '\n';
    *code = v;
    return (ssize_t)n;
}

/* Ends a head whose status line and app header lines are dst[0..n): Date, Server, framing and
 * Connection, and sets the connection's response state from them. blen >= 0: the whole body is
 * known (the one-crossing answer). Returns the head's length or -ENOSPC. */
static ssize_t end_head(sp_server *s, sp_conn *c, char *dst, size_t n, size_t cap, int code,
                        const app_headers *ah, int64_t blen) {
    c->status = code;
    c->no_body = c->req.head || code == 204 || code == 304;
#define PUT(p, l) do { size_t _l = (l); if (n + _l > cap) return -ENOSPC; memcpy(dst + n, (p), _l); n += _l; } while (0)
    if (ah->close || s->draining || c->close_after) c->keep_alive = 0;
    if (!ah->has_date) {
        const char *date = conn_date(s);   /* first: it sets date_len */
        PUT(date, s->date_len);
    }
    if (!ah->has_server && s->server_line_len) PUT(s->server_line, s->server_line_len);
    int64_t app_cl = ah->content_length;
    char tmp[48];
    if (c->no_body) {
        c->resp_left = 0;
        /* HEAD tells the length GET would send, except for a 204 (RFC 9110 8.6) */
        if (c->req.head && code != 204 && app_cl < 0 && blen > 0) {
            PUT(tmp, fmt_content_length(tmp, blen));
        }
    } else if (app_cl >= 0) {
        c->resp_left = app_cl;
    } else if (blen >= 0) {
        PUT(tmp, fmt_content_length(tmp, blen));
        c->resp_left = blen;
    } else if (c->http11) {
        PUT("Transfer-Encoding: chunked\r\n", 28);   /* length unknown: chunks (RFC 9112 7.1) */
        c->chunked_out = 1;
        c->resp_left = -1;
    } else {
        c->keep_alive = 0;   /* HTTP/1.0 cannot take chunks: the close delimits the body */
        c->resp_left = -1;
    }
    if (!c->keep_alive) PUT("Connection: close\r\n", 19);
    else if (!c->http11) PUT("Connection: keep-alive\r\n", 24);
    PUT("\r\n", 2);
#undef PUT
    c->started = 1;
    return (ssize_t)n;
}

/* Formats the response head into dst. blen >= 0: the whole body is known (respond fast path).
 * Returns the length, -EINVAL for an invalid status/header, -ENOSPC if cap is too small, -ERANGE
 * with whole when the app's Content-Length is not blen (before end_head touches c: the caller
 * may still stream the response).
 *
 * Apps answer most requests with the same header list, so the last list that validated is kept
 * (input and output, per server, under the lock) and an identical one costs a memcmp and a
 * memcpy instead of a scan of every byte. */
ssize_t conn_format_head(sp_server *s, sp_conn *c, char *dst, size_t cap, const char *status,
                           size_t slen, const char *h, size_t hlen, int64_t blen, int whole) {
    int code;
    ssize_t sl = format_status_line(dst, cap, status, slen, &code);
    if (sl < 0) return sl;
    size_t n = (size_t)sl;
    app_headers ah;
    sp_head_cache *hc = &s->head_cache;
    if (hc->in_len == hlen && hc->out && hc->no_content == (code == 204) &&
        memcmp(hc->in, h, hlen) == 0) {
        ah = hc->ah;
        if (n + ah.len > cap) return -ENOSPC;
        memcpy(dst + n, hc->out, ah.len);
    } else {
        int rc = format_app_headers(h, hlen, dst + n, cap - n, &ah, code);
        if (rc < 0) return rc;
        if (hlen <= SP_HEAD_CACHE_MAX && ah.len <= SP_HEAD_CACHE_MAX * 2) {
            if (!hc->out) hc->out = malloc(SP_HEAD_CACHE_MAX * 3);
            if (hc->out) {
                hc->in = hc->out + SP_HEAD_CACHE_MAX * 2;
                memcpy(hc->in, h, hlen);
                memcpy(hc->out, dst + n, ah.len);
                hc->in_len = hlen;
                hc->no_content = code == 204;
                hc->ah = ah;
            }
        }
    }
    if (whole && ah.content_length != blen) return -ERANGE;
    return end_head(s, c, dst, n + ah.len, cap, code, &ah, blen);
}

