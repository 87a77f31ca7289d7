/* The cffi declarations of csrc/sp.h (cffi's parser takes no preprocessor includes, so the API is
 * restated here; tests/test_core.py checks the two stay in step). */
#define SP_PARTIAL -1
#define SP_WRITE_COMPLETE -2
#define SP_EV_REQUEST 1
#define SP_EV_FD 2
#define SP_EV_WAKEUP 3
#define SP_READ 1
#define SP_WRITE 2
#define SP_CORK_OFF 0
#define SP_CORK_ALWAYS 1
#define SP_CORK_BURSTS 2

typedef struct sp_header { const char *name; size_t name_len; const char *value; size_t value_len; } sp_header;
typedef struct sp_limits { size_t max_request_line; size_t max_field_size; size_t max_head_size; size_t max_headers; } sp_limits;
typedef struct sp_request_head {
    const char *method; size_t method_len; const char *target; size_t target_len;
    int minor_version; sp_header *headers; size_t num_headers;
} sp_request_head;
typedef struct sp_framing { int64_t content_length; int chunked; int keep_alive; int expect_continue; int upgrade; } sp_framing;
typedef struct sp_chunked { uint64_t remaining; int state; size_t line_len; uint64_t size_acc; size_t max_ext; size_t trailer_bytes; ...; } sp_chunked;

int sp_parse_request(const char *buf, size_t len, size_t last_len, const sp_limits *lim, sp_request_head *req);
int sp_request_framing(const sp_request_head *req, sp_framing *f);
int sp_chunked_decode(sp_chunked *d, char *buf, size_t len, size_t *out_len, size_t *consumed);
ssize_t sp_decode_path(const char *path, size_t len, char *out);
ssize_t sp_env_pack(const sp_request_head *req, char *out, size_t cap);
#define SP_ENV_LINKED 256
#define SP_ENV_AGAIN 2
typedef struct sp_env_iter { const char *path; size_t path_len; const char *query; size_t query_len; ...; } sp_env_iter;
typedef struct sp_env_field {
    const char *name; size_t name_len; uint32_t hash; int cgi; const char *value; size_t value_len;
    const char *sep; size_t first;
} sp_env_field;
void sp_env_begin(sp_env_iter *it, const sp_request_head *req);
int sp_env_next(sp_env_iter *it, sp_env_field *f);
size_t sp_env_all(sp_env_iter *it, sp_env_field *out);
int sp_env_replayable(const sp_env_iter *it);
void sp_env_replay(const sp_env_iter *it, const unsigned char *first, size_t n, sp_env_field *out);
size_t sp_env_key(const sp_env_field *f, char *out);
void sp_env_join(const sp_env_iter *it, const sp_env_field *f, char *out);
ssize_t sp_env_path(const sp_request_head *req, char *out, size_t cap);

#define SP_PROXY_KEEP 0
#define SP_PROXY_INET 4
#define SP_PROXY_INET6 6
#define SP_PROXY_V1_MAX 107
#define SP_PROXY_V2_MAX 4096
typedef struct sp_proxy_addr { int version; int family; unsigned char src[16]; uint16_t src_port; } sp_proxy_addr;
int sp_parse_proxy(const char *buf, size_t len, sp_proxy_addr *out);

typedef struct sp_server sp_server;
typedef struct sp_config {
    sp_limits limits; int64_t max_body_size; int max_connections; int header_timeout_ms;
    int keepalive_timeout_ms; int send_timeout_ms; int body_timeout_ms; int keepalive;
    size_t max_chunk_ext;
    const char *server_header;
    int cork;
    int chain;
    uint64_t proxy_listeners;
    uint64_t max_requests;
} sp_config;
typedef struct sp_request {
    const char *env; size_t env_len; int fd; int listener; int body; int head;
    int64_t content_length; uint64_t serial;
} sp_request;
typedef struct sp_event { int kind; int fd; int mask; sp_request *req; int64_t token; int64_t code; } sp_event;
#define SP_CODE_SLOT_SHIFT 16
#define SP_CODE_SLOT_MASK 0xFFFFF
#define SP_CODE_GEN_SHIFT 36
#define SP_CODE_GEN_MASK 0x1FF
#define SP_CODE_KEEP 0x2000000000000000
#define SP_CODE_FULL 0x4000000000000000
#define SP_CODE_REPEAT 0x20000000
#define SP_CODE_REPEAT_MASK 0x1FFFFFFF
typedef struct sp_stats {
    uint64_t requests; uint64_t accepted; uint64_t rejected; int connections; int in_flight;
    uint64_t bytes_out; uint64_t status_class[6]; int64_t oldest_busy_ms;
    uint64_t duration_count[21]; uint64_t duration_sum_us;
    uint64_t accept_pauses; int retiring;
} sp_stats;
#define SP_DURATION_BUCKETS 21
extern const int64_t sp_duration_bounds_us[20];
int64_t sp_last_duration_us(void);

const char *sp_backend_name(void);
sp_server *sp_server_new(const sp_config *cfg);
void sp_server_free(sp_server *s);
int sp_server_add_listener(sp_server *s, int fd, int index);
int sp_server_drain(sp_server *s);
int sp_server_accept_pending(sp_server *s);
int sp_server_connections(sp_server *s);
void sp_server_stats(sp_server *s, sp_stats *out);
size_t sp_server_busy(sp_server *s, char *out, size_t cap);
int sp_server_wakeup_fd(sp_server *s);
void sp_server_wakeup(sp_server *s);
int sp_poll(sp_server *s, sp_event *out, int max, int timeout_ms);
int64_t sp_poll_one(sp_server *s, int timeout_ms);
int sp_poll_codes(sp_server *s, sp_event *out, int64_t *codes, int max, int timeout_ms);
int sp_watch(sp_server *s, int fd, int mask, int64_t token);
int sp_unwatch(sp_server *s, int fd);

int sp_req_wait(sp_server *s, int64_t code, int mask, int64_t token);
int sp_req_start(sp_server *s, int64_t code, const char *status, size_t slen, const char *headers, size_t hlen);
ssize_t sp_req_write(sp_server *s, int64_t code, const char *buf, size_t len);
ssize_t sp_req_flush(sp_server *s, int64_t code);
ssize_t sp_req_drain(sp_server *s, int64_t code, size_t low_water);
ssize_t sp_req_sendfile(sp_server *s, int64_t code, int fd, int64_t offset, size_t count);
int sp_req_respond(sp_server *s, int64_t code, const char *status, size_t slen, const char *headers, size_t hlen, const char *body, size_t blen);
int sp_req_finish(sp_server *s, int64_t code, int abort);
ssize_t sp_req_read(sp_server *s, int64_t code, char *buf, size_t n);
ssize_t sp_code_peek(sp_server *s, int64_t code, const char **data, size_t n);
sp_request *sp_code_req(sp_server *s, int64_t code);
sp_request *sp_code_env(sp_server *s, int64_t code);
typedef struct sp_head {
    sp_request_head req; const char *path; size_t path_len; const char *addr; size_t addr_len;
    const char *port; size_t port_len;
} sp_head;
sp_request *sp_code_head(sp_server *s, int64_t code, const sp_head **head);
int sp_code_respond(sp_server *s, int64_t code, const char *head, size_t hlen, const char *body, size_t blen);
void sp_server_flush(sp_server *s);
int sp_server_flusher(sp_server *s);
void sp_server_flusher_stop(sp_server *s);
int64_t sp_code_answer(sp_server *s, int64_t code, const char *head, size_t hlen, const char *body, size_t blen);
int64_t sp_code_answer_whole(sp_server *s, int64_t code, const char *head, size_t hlen, const char *body, size_t blen);
int sp_py_setup(void);
ssize_t sp_req_read_wait(sp_server *s, int64_t code, char *buf, size_t n, int timeout_ms);
