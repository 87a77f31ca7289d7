/* sp.h -- the whole public C API of spawning's HTTP core, on one screen.
 *
 * Conventions (libuv's):
 *   - Functions that touch the OS return >= 0 on success and -errno on failure. They never abort.
 *   - HTTP-level failures are returned as -STATUS (-400, -413, -414, -431, -501, -505): the status to
 *     answer the client with (h11's error_status_hint).
 *   - SP_PARTIAL (-1) means "need more input"; it never collides with -errno values we return
 *     (EPERM is never produced by the parser).
 *
 * Threads: every sp_server_* / sp_req_* function takes the server's mutex, so thread-mode workers may
 * call them from any thread. sp_poll() is the only one that may block (and it does so without the
 * mutex held; cffi calls it with the GIL released).
 */
#ifndef SP_H
#define SP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define SP_PARTIAL (-1)

/* ---- Parser (parser.c): zero-copy, incremental, no allocation. ---------------------------------- */

typedef struct sp_header {
    const char *name;   /* points into the caller's buffer */
    size_t name_len;
    const char *value;  /* leading/trailing whitespace already trimmed */
    size_t value_len;
} sp_header;

typedef struct sp_limits {
    size_t max_request_line;  /* longest request line (bytes, without CRLF); over it: -414 */
    size_t max_field_size;    /* longest single header line; over it: -431 */
    size_t max_head_size;     /* request line + all headers; over it: -431 (or -414 if still in the line) */
    size_t max_headers;       /* most header fields; over it: -431 */
} sp_limits;

typedef struct sp_request_head {
    const char *method; size_t method_len;
    const char *target; size_t target_len;   /* the raw request-target */
    int minor_version;                       /* HTTP/1.minor_version: 0 or 1 */
    sp_header *headers;                      /* caller-provided array ... */
    size_t num_headers;                      /* in: capacity of headers[]; out: fields found */
} sp_request_head;

/* Parses a request head in buf[0..len). last_len is the length already known to be incomplete on the
 * previous call (0 the first time), so a byte-at-a-time sender costs only a scan of the new bytes
 * before the full parse. Returns the head's length in bytes (> 0, including the blank line),
 * SP_PARTIAL, or -STATUS. Empty lines before the request line are skipped (RFC 9112 2.2). */
int sp_parse_request(const char *buf, size_t len, size_t last_len, const sp_limits *lim,
                     sp_request_head *req);

/* What the headers say about framing and the connection, validated strictly (RFC 9112 6). */
typedef struct sp_framing {
    int64_t content_length;   /* -1 when absent */
    int chunked;              /* Transfer-Encoding ends in chunked */
    int keep_alive;           /* persistence per version and Connection */
    int expect_continue;      /* Expect: 100-continue on HTTP/1.1 */
    int upgrade;              /* Connection: upgrade with an Upgrade header (we do not switch) */
} sp_framing;

/* Validates the framing headers of a head sp_parse_request parsed (its names are tokens: they are
 * compared by words, parser.c's NAME_IS) and fills *f. Returns 0 or -STATUS (-400 for CL
 * with TE, conflicting CL, TE on 1.0, missing/duplicate Host on 1.1; -501 for an unknown coding). */
int sp_request_framing(const sp_request_head *req, sp_framing *f);

/* Chunked body decoder; zero-fill before first use. */
typedef struct sp_chunked {
    uint64_t remaining;   /* data bytes left in the current chunk */
    int state;            /* private */
    size_t line_len;      /* private: bytes in the current size/ext/trailer line */
    uint64_t size_acc;    /* private */
    size_t max_ext;       /* chunk-extension limit; 0 means the default (SP_DEFAULT_MAX_CHUNK_EXT) */
    size_t trailer_bytes; /* private */
} sp_chunked;

#define SP_DEFAULT_MAX_CHUNK_EXT 4096   /* extensions are never used by apps; 4 KiB is generous */

/* Decodes buf[0..len) in place: the decoded data ends up in buf[0..*out_len), *consumed is the input
 * consumed. Returns SP_PARTIAL (all input consumed, body not finished), 0 (body finished: bytes
 * after *consumed belong to the next request), or -400 on malformed input. */
int sp_chunked_decode(sp_chunked *d, char *buf, size_t len, size_t *out_len, size_t *consumed);

/* Percent-decodes the path part of target into out (capacity >= target_len). Returns the decoded
 * length or -400 (bad escape, or %00 which could not be carried in a C string). */
ssize_t sp_decode_path(const char *path, size_t len, char *out);

/* Builds the packed environ block into out (capacity cap): first the values of the SP_ENV_FIXED
 * keys, in that order, each NUL-terminated; then "KEY\0value\0" for every header (CONTENT_TYPE,
 * CONTENT_LENGTH, HTTP_*). Repeated headers are joined with ", " ("; " for Cookie); names holding
 * '_' (and Proxy: httpoxy) are dropped so they can never collide with dashed names. Returns bytes
 * written, -400 for a bad path, or -431 when cap is too small. */
#define SP_ENV_FIXED "REQUEST_METHOD PATH_INFO QUERY_STRING SERVER_PROTOCOL RAW_URI"
#define SP_ENV_NFIXED 5
ssize_t sp_env_pack(const sp_request_head *req, char *out, size_t cap);

/* The environ's entries one at a time: the one owner of the rules sp_env_pack packs by (which
 * fields become which keys, what is dropped, how repeats join, Host from an absolute-form
 * target), for a reader that makes its environ from the head itself (the CPython runner).
 * sp_env_begin reads the whole head once; the iterator then points into it (and into req), so
 * the head must outlive it. No allocation. */
#define SP_ENV_LINKED 256   /* repeats found by a hash index up to this many fields */
#define SP_ENV_AGAIN 2      /* sp_env_next: the entries so far come again (below) */
typedef struct sp_env_iter {
    const char *path; size_t path_len;    /* PATH_INFO, not yet decoded (sp_env_path) */
    const char *query; size_t query_len;  /* QUERY_STRING */
    /* private */
    const sp_request_head *req;
    size_t i, mask;
    const char *authority; size_t authority_len;
    int absolute, mode;
    uint32_t slot[2 * SP_ENV_LINKED];
    uint16_t next[SP_ENV_LINKED];
    unsigned char later[SP_ENV_LINKED];
} sp_env_iter;

typedef struct sp_env_field {
    const char *name; size_t name_len;    /* the name as its first field sent it */
    uint32_t hash;                        /* of the name, ASCII case ignored (0: made up) */
    int cgi;                              /* 1: CONTENT_TYPE/CONTENT_LENGTH, no HTTP_ prefix */
    const char *value; size_t value_len;  /* the value; when sep is set only its first piece,
                                             and value_len is the joined value's (sp_env_join) */
    const char *sep;                      /* NULL, or ", " / "; ": the name's fields are joined */
    size_t first;                         /* the index in req->headers of the name's first field
                                             (req->num_headers: made up) */
} sp_env_field;

/* Starts the entries of req's fields. */
void sp_env_begin(sp_env_iter *it, const sp_request_head *req);
/* The next entry into *f: 1, or 0 after the last; or SP_ENV_AGAIN (*f untouched) when a name
 * turns out to repeat: every entry given so far is void and comes again from the first, its value
 * joined with its repeats' (a reader that keeps entries by key may let the new ones replace
 * them; a packer starts its fields over). */
int sp_env_next(sp_env_iter *it, sp_env_field *f);
/* Every entry (what sp_env_next gives, repeats resolved) into out, which has room for
 * req->num_headers + 1; returns their count. */
size_t sp_env_all(sp_env_iter *it, sp_env_field *out);
/* Whether the entries of the head are each one field's, told by the fields' names alone: no name
 * repeats and the target is not in absolute form (its authority would be Host). True of a new
 * iterator of such a head, and still true after the walk (sp_env_all) of one. */
int sp_env_replayable(const sp_env_iter *it);
/* The entries of the fields req->headers[first[j]], j < n, into out[j], hash 0: what sp_env_all
 * gives, for a replayable head (sp_env_replayable) whose fields' names are byte for byte those
 * of a head whose entries' fields (f->first) were first[0..n). For a reader that keeps which
 * fields of a head's names make entries (the CPython runner's shapes), so that a head of the
 * same names is not walked. */
void sp_env_replay(const sp_env_iter *it, const unsigned char *first, size_t n, sp_env_field *out);
/* Writes f's key ("HTTP_ACCEPT", "CONTENT_TYPE") to out (room for 5 + f->name_len); returns its
 * length. */
size_t sp_env_key(const sp_env_field *f, char *out);
/* Writes f's joined value (f->sep set) to out: exactly f->value_len bytes. */
void sp_env_join(const sp_env_iter *it, const sp_env_field *f, char *out);
/* Decodes req's PATH_INFO into out[0..cap) (cap >= req->target_len is always room). Returns its
 * length, -400 for a bad escape or %00, -431 when out is too small. */
ssize_t sp_env_path(const sp_request_head *req, char *out, size_t cap);

/* ---- PROXY protocol preamble (proxy.c): zero-copy, no allocation, pure. ------------------------ */

/* The client address a load balancer's PROXY preamble gives (HAProxy's proxy-protocol.txt, v1 text
 * and v2 binary). family 0 means "keep the connection's own address": a v2 LOCAL command (the
 * balancer's health check), v1 UNKNOWN, v2 UNSPEC or AF_UNIX addresses. */
#define SP_PROXY_KEEP 0
#define SP_PROXY_INET 4
#define SP_PROXY_INET6 6
typedef struct sp_proxy_addr {
    int version;               /* 1 (text) or 2 (binary) */
    int family;                /* SP_PROXY_INET, SP_PROXY_INET6 or SP_PROXY_KEEP */
    unsigned char src[16];     /* source address, network order (4 bytes used for INET) */
    uint16_t src_port;         /* host order */
} sp_proxy_addr;

/* Longest preamble accepted: v1 is at most 107 bytes with its CRLF (the spec's own bound); v2 is
 * 16 bytes plus a declared length of up to 65535, capped here (below). */
#define SP_PROXY_V1_MAX 107
#define SP_PROXY_V2_MAX 4096

/* Parses the PROXY preamble at the start of buf[0..len). Returns the bytes it takes (> 0; what
 * follows is the first request), SP_PARTIAL while the bytes so far may still begin a valid
 * preamble, or -400: not a preamble (an HTTP request, garbage), malformed, or longer than
 * SP_PROXY_V1_MAX / SP_PROXY_V2_MAX. Garbage is refused at its first byte that cannot fit. */
int sp_parse_proxy(const char *buf, size_t len, sp_proxy_addr *out);

/* ---- Server (csrc/loop/, csrc/conn/) --------------------------------------------------------- */

typedef struct sp_server sp_server;

/* sp_config.cork. ALWAYS: every small keep-alive response is held, for several app threads (another
 * thread could serve the client's next request, and log it, before this one logs its own). BURSTS:
 * only one that others can join (another is held, a request is queued or another is with the
 * app), for a single app thread (green mode, --threads 1); a lone one goes at once. */
#define SP_CORK_OFF 0
#define SP_CORK_ALWAYS 1
#define SP_CORK_BURSTS 2

/* Python (spawning.server.make_core_config) fills every field from its Settings, whose defaults
 * live in spawning/config/options.py only; C has no defaults of its own for these but the
 * parser's (sp_limits.h, SP_DEFAULT_MAX_CHUNK_EXT), for C callers that pass zeros. */
typedef struct sp_config {
    sp_limits limits;
    int64_t max_body_size;       /* -1 for no limit; over it: 413 */
    int max_connections;         /* per worker; beyond it, stop accepting */
    int header_timeout_ms;       /* the whole head must arrive within this (slowloris) */
    int keepalive_timeout_ms;    /* idle keep-alive connections are closed after this */
    int send_timeout_ms;         /* a client that reads nothing of the response for this long */
    int body_timeout_ms;         /* a request body that stalls this long */
    int keepalive;               /* 0: every response closes its connection */
    size_t max_chunk_ext;        /* chunk-extension limit; 0: SP_DEFAULT_MAX_CHUNK_EXT */
    const char *server_header;   /* "Server: ..." value, NULL or "" for none */
    int cork;                    /* hold small keep-alive responses to send them in bursts
                                    (conn/output.c, "Corking"): SP_CORK_OFF, SP_CORK_ALWAYS or
                                    SP_CORK_BURSTS */
    int chain;                   /* thread mode: sp_code_answer() also takes the next request */
    uint64_t proxy_listeners;    /* bit i: connections on listener i (0-63) start with a PROXY
                                    preamble (sp_parse_proxy), which gives REMOTE_ADDR and
                                    REMOTE_PORT; one without a valid preamble is closed unanswered */
    uint64_t max_requests;       /* once this many requests went to the app the server drains
                                    itself (as sp_server_drain) and says so in sp_stats.retiring;
                                    0: no limit */
} sp_config;

/* What Python reads of one request. Valid from its SP_EV_REQUEST until sp_req_finish(); the
 * functions that act on the request take its code instead (sp_req_*, below). */
typedef struct sp_request {
    const char *env;             /* "REMOTE_ADDR value\0", sp_env_pack()'s block, then the REMOTE_PORT
                                    value (env_len stops before its NUL). The port comes last so
                                    that everything before the final NUL is the same for requests
                                    repeated on any connection from one address: that part (and
                                    the listener) is the environ key of request codes. Packed on
                                    the first sp_code_env() for the request: NULL until then (the
                                    C runner reads sp_code_head() instead and never asks). */
    size_t env_len;
    int fd;                      /* the connection's socket (for wait_read/wait_write in green mode) */
    int listener;                /* index given to sp_server_add_listener() */
    int body;                    /* 0 none, 1 Content-Length, 2 chunked */
    int head;                    /* 1 for HEAD: no body is sent whatever the app returns */
    int64_t content_length;      /* -1 if not given */
    uint64_t serial;             /* requests served on this connection before this one */
} sp_request;

enum { SP_EV_REQUEST = 1, SP_EV_FD = 2, SP_EV_WAKEUP = 3 };
enum { SP_READ = 1, SP_WRITE = 2 };

typedef struct sp_event {
    int kind;                    /* SP_EV_* */
    int fd;                      /* SP_EV_FD: the watched fd */
    int mask;                    /* SP_EV_FD: SP_READ | SP_WRITE (errors report as both) */
    sp_request *req;             /* SP_EV_REQUEST */
    int64_t token;               /* SP_EV_FD: the caller's token from sp_watch() */
    int64_t code;                /* SP_EV_REQUEST: the request's code (below) */
} sp_event;

/* A request's code: one positive integer that names a request the caller holds, so that the
 * per-request path reads no struct and makes no pointer object. Two forms.
 *
 * A full code (SP_CODE_FULL set):
 *   bits  0..15  REMOTE_PORT as a number (0 for a Unix socket)
 *   bits 16..35  the connection's slot (what the sp_code_* functions look up)
 *   bits 36..44  the connection's generation, counted per connection: a code kept past its
 *                request does not name a later connection in the same slot (nor does the port)
 *   bit  61      SP_CODE_KEEP: the connection stays open and the head is short enough to be
 *                remembered. The next request on it whose head repeats this one byte for byte
 *                comes with a repeat code, SP_CODE_REPEAT | (code >> SP_CODE_SLOT_SHIFT &
 *                SP_CODE_REPEAT_MASK): a caller may keep what it made of this request under that
 *                number (the CPython runner keeps the environ).
 * A repeat code (below 2^30: one CPython digit, cheap to pass, hash and compare):
 *   bits  0..19  the slot, bits 20..28 the generation, bit 29 SP_CODE_REPEAT.
 * Valid, like the request, until it is finished. */
#define SP_CODE_SLOT_SHIFT 16
#define SP_CODE_SLOT_MASK 0xFFFFF
#define SP_CODE_GEN_SHIFT 36
#define SP_CODE_GEN_MASK 0x1FF
#define SP_CODE_KEEP 0x2000000000000000
#define SP_CODE_FULL 0x4000000000000000
#define SP_CODE_REPEAT 0x20000000
#define SP_CODE_REPEAT_MASK 0x1FFFFFFF
#define SP_CODE_REPEAT_GEN_SHIFT 20
#define SP_SLOTS_MAX (SP_CODE_SLOT_MASK + 1)   /* connections per server, at most */

#define SP_DURATION_BUCKETS 21

typedef struct sp_stats {
    uint64_t requests;           /* responses finished */
    uint64_t accepted;           /* connections accepted */
    uint64_t rejected;           /* requests answered with a 4xx/5xx by the core itself */
    int connections;             /* open now */
    int in_flight;               /* requests handed to Python and not finished */
    uint64_t bytes_out;
    uint64_t status_class[6];    /* responses by status class: [1]=1xx ... [5]=5xx */
    int64_t oldest_busy_ms;      /* age of the oldest request Python holds, 0 if none */
    uint64_t duration_count[SP_DURATION_BUCKETS];  /* requests the app finished, by time from hand-off
                                                       to sp_req_finish: bucket i counts durations <=
                                                       sp_duration_bounds_us[i] (and over the bound
                                                       before); the last bucket counts the rest */
    uint64_t duration_sum_us;    /* the sum of those durations */
    uint64_t accept_pauses;      /* times accepting paused for lack of descriptors (EMFILE...) */
    int retiring;                /* 1 once cfg.max_requests requests went to the app */
} sp_stats;

/* Upper bounds of the duration histogram's buckets: Prometheus' default buckets, and finer ones
 * below 5 ms down to 5 us, where the requests of a fast application fall (a hello-world request
 * takes a few microseconds from hand-off to finish). */
extern const int64_t sp_duration_bounds_us[SP_DURATION_BUCKETS - 1];

/* The duration (microseconds, as the histogram counts it) of the last request the calling thread
 * finished, 0 before any: what the access log reads right after the request is answered. */
int64_t sp_last_duration_us(void);

const char *sp_backend_name(void);  /* "epoll", "kqueue" or "poll": the backend compiled in */

/* Creates a server with a copy of *cfg. Returns NULL with errno set on failure. */
sp_server *sp_server_new(const sp_config *cfg);
/* Closes every connection and frees the server; listening fds are NOT closed (the controller owns them). */
void sp_server_free(sp_server *s);
/* Accepts on an already bound, listening socket (set non-blocking here). Returns 0 or -errno. */
int sp_server_add_listener(sp_server *s, int fd, int index);
/* Stops accepting, closes idle connections, and makes every busy one close after its response.
 * Returns the number of connections still open. */
int sp_server_drain(sp_server *s);
/* Accepts every connection waiting in the listeners' queues now, whatever the threads are doing,
 * and reads what each sent: before the listeners are shut down at the end (which resets what
 * their queues hold), so that a request the kernel took in is served. Stops early only at
 * max_connections or out of descriptors. Returns the number accepted. */
int sp_server_accept_pending(sp_server *s);
/* Connections still open (0 after a drain means the worker may exit). */
int sp_server_connections(sp_server *s);
void sp_server_stats(sp_server *s, sp_stats *out);
/* The requests Python holds now (the app runs them), for a worker that is about to cut them: for
 * each, "METHOD\0PATH_INFO\0AGE_MS\0" into out[0..cap), requests that do not fit whole left out.
 * Returns the bytes written. */
size_t sp_server_busy(sp_server *s, char *out, size_t cap);
/* The write end of the loop's wake-up pipe (non-blocking): suits signal.set_wakeup_fd(). */
int sp_server_wakeup_fd(sp_server *s);
/* Interrupts a sp_poll() in progress (async-signal-safe). */
void sp_server_wakeup(sp_server *s);

/* Runs one turn of the loop: waits at most timeout_ms (-1: forever) for I/O, does all the
 * accepting, reading, parsing and writing it can, and returns up to max events (requests ready
 * for the app, watched fds ready). Returns the count, 0 on timeout or wakeup, or -errno.
 * Several threads may call it: one polls, the others wait for its results (leader/follower). */
int sp_poll(sp_server *s, sp_event *out, int max, int timeout_ms);

/* Green mode: sp_poll(), and codes[i] is out[i]'s request code, or 0 for other events: one array
 * of integers Python takes in one piece (ffi.unpack) instead of reading each struct. In one batch
 * every fd event comes before every request. */
int sp_poll_codes(sp_server *s, sp_event *out, int64_t *codes, int max, int timeout_ms);

/* Thread mode: sp_poll() for one request, returned as its code; 0 on timeout or wakeup (fd events
 * have no taker in thread mode and are dropped), or -errno. */
int64_t sp_poll_one(sp_server *s, int timeout_ms);

/* Green mode: one-shot interest in fd; its readiness comes back from sp_poll() as SP_EV_FD with
 * token. Call again to re-arm. sp_unwatch() before closing the fd. Return 0 or -errno. */
int sp_watch(sp_server *s, int fd, int mask, int64_t token);
int sp_unwatch(sp_server *s, int fd);

/* ---- Responding to a request (conn/api.c) ------------------------------------------------------ *
 *
 * Every sp_req_* function takes the request's code (above), never a pointer to it: it looks the
 * code up under the server's mutex and answers -ESTALE when the code names no request Python
 * holds now (answered, cut, or its connection closed), so that a code kept past its request (an
 * app's stale write() callable) can reach neither freed memory nor another request. */

/* Green mode: the request's own socket is already in the loop, so sp_watch() cannot take it. This
 * asks for one SP_EV_FD event with token when the connection may make progress for mask (SP_READ:
 * body bytes or hang-up; SP_WRITE: room to write). Reported at once if it already can. 0 or -errno. */
int sp_req_wait(sp_server *s, int64_t code, int mask, int64_t token);

/* Starts the response: status is "200 OK", headers is "Name\0value\0Name\0value\0" (hlen bytes).
 * Validates the status (a final one, 200-599, then SP and a reason without controls, or nothing)
 * and every name (token) and value (no CR/LF/NUL), adds Date, Server, Connection and chunked
 * framing as needed. Nothing is sent until body data or finish. Returns 0, -EINVAL for an invalid
 * status or header (answer 500), or -EPIPE if the client is gone. */
int sp_req_start(sp_server *s, int64_t code, const char *status, size_t slen,
                 const char *headers, size_t hlen);
/* Queues body bytes (chunk-framed if needed) and writes what the socket takes without blocking.
 * Returns the bytes still queued (the caller waits for writability when over its high-water mark);
 * SP_WRITE_COMPLETE when these bytes complete the Content-Length the head declares (bytes past it
 * are cut and the connection closes after the response): the body is whole, and the caller stops
 * asking the app for more (PEP 3333) and finishes, leaving what is still queued to the loop, as
 * with a one-crossing answer; -EMSGSIZE when no more body may go and none of these bytes went
 * (the Content-Length was all sent before, or the response has no body: HEAD, 204, 304); or
 * -EPIPE / -ECONNRESET when the client is gone. The core is the one owner of "the body is whole". */
ssize_t sp_req_write(sp_server *s, int64_t code, const char *buf, size_t len);
/* sp_req_write()'s "the body is complete": not an -errno (ENOENT is never one of its results). */
#define SP_WRITE_COMPLETE (-2)
/* Writes queued bytes without blocking; returns the bytes still queued or -errno. */
ssize_t sp_req_flush(sp_server *s, int64_t code);
/* Blocks (thread mode) until at most low_water bytes stay queued. Returns the bytes queued,
 * -ETIMEDOUT after the send timeout without progress, or -EPIPE. */
ssize_t sp_req_drain(sp_server *s, int64_t code, size_t low_water);
/* Sends count bytes of file fd from offset with sendfile(2) after the queued bytes are out. Returns
 * bytes sent (maybe fewer), -EAGAIN when the socket is full, or -errno (-ENOSYS: caller falls back). */
ssize_t sp_req_sendfile(sp_server *s, int64_t code, int fd, int64_t offset, size_t count);
/* Start + write + finish in one crossing: the common case of a one-piece body. A small response on
 * a keep-alive connection may be held back briefly to leave in a burst with others (conn/output.c,
 * "Corking"); it is never held past the caller's next sp_poll() that finds no work. Returns -EINVAL
 * (invalid status/header: nothing was sent and the request is still the caller's, to answer 500),
 * else the request is finished: 0, or -errno when the client was gone. */
int sp_req_respond(sp_server *s, int64_t code, const char *status, size_t slen,
                   const char *headers, size_t hlen, const char *body, size_t blen);
/* The request a code names, NULL if it names none that Python holds now. Read it at once: the
 * pointer is not to be kept (another call may finish the request and free it). Its env may be
 * NULL: sp_code_env() packs it. */
sp_request *sp_code_req(sp_server *s, int64_t code);
/* sp_code_req() with the request's env block packed (on the first ask for a head: the Python
 * path's environ is made from it). NULL also when there was no memory to pack it. */
sp_request *sp_code_env(sp_server *s, int64_t code);
/* What the core keeps of a request's head, for a reader that makes its environ from it with
 * sp_env_begin() (the CPython runner) instead of the packed block: the parse's results pointing
 * into a copy of the head's bytes, which the connection keeps (not the read buffer, which goes
 * back to the pool or moves under a body). Valid, like the request, until it is finished. */
typedef struct sp_head {
    sp_request_head req;                 /* headers[] and every pointer: into the copy */
    const char *path; size_t path_len;   /* PATH_INFO, decoded (sp_env_path) */
    const char *addr; size_t addr_len;   /* REMOTE_ADDR's value */
    const char *port; size_t port_len;   /* REMOTE_PORT's value */
} sp_head;
/* sp_code_req(), and *head the request's head. NULL (and *head untouched) if the code names no
 * request Python holds now. */
sp_request *sp_code_head(sp_server *s, int64_t code, const sp_head **head);
/* sp_req_respond() for the request a code names (-ESTALE if none), with status and headers in
 * one buffer: head is "status\0headers" (the status holds no NUL: callers check). */
int sp_code_respond(sp_server *s, int64_t code, const char *head, size_t hlen,
                    const char *body, size_t blen);
/* Sends every held-back response (conn/output.c, "Corking") now, as far as the sockets take them. */
void sp_server_flush(sp_server *s);
/* The flusher (loop/flusher.c): sends held-back responses once they are due while the one app
 * thread runs a long request. For a caller with a single app thread (--threads 1), whose held
 * responses nothing else would send meanwhile: it runs this in a thread of its own, without the
 * GIL, until sp_server_flusher_stop(), and joins that thread before sp_server_free(). Returns 0. */
int sp_server_flusher(sp_server *s);
/* Makes sp_server_flusher() return, now or as soon as it is called. */
void sp_server_flusher_stop(sp_server *s);
/* sp_code_respond(), then, when the server's config says chain (thread mode), the calling
 * thread's next request if one is queued (first polling without waiting if the queue has gone
 * unpolled too long, as sp_poll does, so that pipelining cannot starve other connections): one
 * crossing from one request to the next that never waits, so that its binding may keep the GIL.
 * Returns -ESTALE as sp_code_respond, -EINVAL (invalid status or header: nothing was sent) or
 * -EALREADY (the response had started: nothing was sent), the last two leaving the request with
 * the caller, and then nothing was taken; else the next request's code, or 0 (none queued, or no
 * chain: the caller polls). The body is copied or sent before it returns. */
int64_t sp_code_answer(sp_server *s, int64_t code, const char *head, size_t hlen,
                       const char *body, size_t blen);
/* sp_code_answer() for the first piece of a body that may have more (an iterable's first chunk):
 * it answers when the head declares a Content-Length and body is exactly that long, so that the
 * body is whole; else (no Content-Length, another length, or a head too big for the one-crossing
 * path) it sends no body byte, starts the response as sp_req_start() does and returns
 * -EINPROGRESS: the request is still the caller's, which writes the body (sp_req_write), this
 * piece first. Otherwise as sp_code_answer(). */
int64_t sp_code_answer_whole(sp_server *s, int64_t code, const char *head, size_t hlen,
                             const char *body, size_t blen);
/* Ends the response (terminal chunk if chunked). The connection goes on to its next pipelined
 * request or back to the loop; the code names nothing afterwards. abort != 0 closes the connection (an app
 * failure after the head went out). Returns 0 or -errno (the connection was lost; still released). */
int sp_req_finish(sp_server *s, int64_t code, int abort);


/* Reads request body bytes without blocking (sends 100 Continue first when the client expects it).
 * Returns bytes copied, 0 at the end of the body, -EAGAIN when none are buffered yet, -413 over the
 * body limit, -400 for a malformed chunked body, or -errno (client gone). */
ssize_t sp_req_read(sp_server *s, int64_t code, char *buf, size_t n);
/* Body bytes the loop already holds, without a copy: points *data at up to n of them and consumes
 * them; the bytes stay valid until the next call for the request. Returns the count, 0 at the end
 * of the body, -EAGAIN when sp_req_read must do the work (nothing decoded and buffered yet, or 100
 * Continue still to send), -ECONNRESET, or -ESTALE. */
ssize_t sp_code_peek(sp_server *s, int64_t code, const char **data, size_t n);
/* Thread mode: blocks until body bytes arrive or timeout_ms; then behaves as sp_req_read. */
ssize_t sp_req_read_wait(sp_server *s, int64_t code, char *buf, size_t n, int timeout_ms);

#endif
