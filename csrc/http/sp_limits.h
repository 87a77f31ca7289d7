/* sp_limits.h -- default limits of the request parser and the statuses it answers with.
 *
 * Named sp_limits.h rather than limits.h: with -Icsrc on a compiler's command line, a local
 * "limits.h" would shadow the system <limits.h> for every file that includes it.
 *
 * Each default cites the precedent it follows. A zero field in sp_limits means "use the default".
 */
#ifndef SP_LIMITS_H
#define SP_LIMITS_H

/* Longest request line, without its CRLF. gunicorn's limit_request_line is 4094 and nginx's
 * large_client_header_buffers holds 8 KiB lines; 8190 is gunicorn's field figure, so a request
 * line may be as long as any one header field. Over it: 414. */
#define SP_DEFAULT_MAX_REQUEST_LINE 8190

/* Longest single header field line (name, colon, value), without its CRLF: gunicorn's
 * limit_request_field_size (8190), just under nginx's 8 KiB buffer. Over it: 431. */
#define SP_DEFAULT_MAX_FIELD_SIZE 8190

/* Whole head: request line plus every field line plus the blank line. nginx allows 4 buffers of
 * 8 KiB (32 KiB); h11's max_incomplete_event_size is 16 KiB; we allow 64 KiB for cookie-heavy
 * sites. Over it: 431 (414 while the request line itself is still unfinished). */
#define SP_DEFAULT_MAX_HEAD_SIZE 65536

/* Most header fields: gunicorn's limit_request_fields (100). Over it: 431. */
#define SP_DEFAULT_MAX_HEADERS 100

/* Trailer section of a chunked body (read and discarded): the same budget as one header field
 * line, rounded to 8 KiB. Over it: 400. */
#define SP_MAX_TRAILER_BYTES 8192

/* Hex digits in a chunk-size line. 16 digits hold 2^63-1; leading zeros are legal (RFC 9112 7.1)
 * but an endless run of them is only a way to keep us busy, so we stop at 64. Over it: 400. */
#define SP_MAX_CHUNK_SIZE_DIGITS 64

/* The statuses the parser returns negated (h11's error_status_hint). */
#define SP_HTTP_BAD_REQUEST 400
#define SP_HTTP_URI_TOO_LONG 414
#define SP_HTTP_HEADERS_TOO_LARGE 431
#define SP_HTTP_NOT_IMPLEMENTED 501
#define SP_HTTP_VERSION_NOT_SUPPORTED 505

#endif
