/*
 * proto/request.h - the Postfix SMTPD policy request, parsed incrementally.
 *
 * A request is `name=value` lines ended by an empty line (LF; CRLF is
 * accepted too).  proto_parse() is handed the bytes a connection has read
 * so far, starting at a request boundary.  It either asks for more, or
 * returns one request whose strings point into (and are NUL-terminated
 * inside) the caller's buffer, which it modifies in place.
 *
 * Limits: the whole request (max_request), one line (max_line) and the
 * number of attributes (max_attrs) are bounded.  A request that is complete
 * but malformed is consumed and reported as PROTO_BAD, so the caller can
 * answer with its default action and stay in sync; a stream that cannot be
 * resynchronised (max_request bytes without an end) is PROTO_FATAL.
 *
 * No I/O, no globals, no allocation: fuzzable.
 */
#ifndef PROTO_REQUEST_H
#define PROTO_REQUEST_H

#include <stddef.h>
#include <stdint.h>

#define PROTO_DEFAULT_MAX_REQUEST 65536
#define PROTO_DEFAULT_MAX_LINE    8192
#define PROTO_DEFAULT_MAX_ATTRS   64
#define PROTO_MAX_ATTRS_LIMIT     1024 /* hard ceiling for max_attrs */

/* protocol_state values; PROTO_STATE_OTHER for anything unknown. */
enum proto_state {
	PROTO_STATE_NONE = 0, /* attribute absent */
	PROTO_STATE_CONNECT,
	PROTO_STATE_EHLO,
	PROTO_STATE_HELO,
	PROTO_STATE_MAIL,
	PROTO_STATE_RCPT,
	PROTO_STATE_DATA,
	PROTO_STATE_EOM, /* END-OF-MESSAGE */
	PROTO_STATE_VRFY,
	PROTO_STATE_ETRN,
	PROTO_STATE_XCLIENT,
	PROTO_STATE_OTHER,
};

/* The attributes Postfix 2.1 .. 3.12 sends. Order is not significant. */
enum proto_attr {
	PROTO_A_REQUEST = 0,
	PROTO_A_PROTOCOL_STATE,
	PROTO_A_PROTOCOL_NAME,
	PROTO_A_HELO_NAME,
	PROTO_A_QUEUE_ID,
	PROTO_A_SENDER,
	PROTO_A_RECIPIENT,
	PROTO_A_RECIPIENT_COUNT,
	PROTO_A_CLIENT_ADDRESS,
	PROTO_A_CLIENT_NAME,
	PROTO_A_REVERSE_CLIENT_NAME,
	PROTO_A_INSTANCE,
	PROTO_A_SASL_METHOD,
	PROTO_A_SASL_USERNAME,
	PROTO_A_SASL_SENDER,
	PROTO_A_SIZE,
	PROTO_A_CCERT_SUBJECT,
	PROTO_A_CCERT_ISSUER,
	PROTO_A_CCERT_FINGERPRINT,
	PROTO_A_CCERT_PUBKEY_FINGERPRINT,
	PROTO_A_ENCRYPTION_PROTOCOL,
	PROTO_A_ENCRYPTION_CIPHER,
	PROTO_A_ENCRYPTION_KEYSIZE,
	PROTO_A_ETRN_DOMAIN,
	PROTO_A_STRESS,
	PROTO_A_CLIENT_PORT,
	PROTO_A_POLICY_CONTEXT,
	PROTO_A_SERVER_ADDRESS,
	PROTO_A_SERVER_PORT,
	PROTO_A_COMPATIBILITY_LEVEL,
	PROTO_A_MAIL_VERSION,
	PROTO_A_TLS_SNI,
	PROTO_A__COUNT
};

/* A string inside the parse buffer, NUL-terminated there. */
struct proto_str {
	const char *p; /* NULL when the attribute was absent */
	size_t len;
};

struct proto_kv {
	struct proto_str name;
	struct proto_str value;
};

struct proto_request {
	struct proto_str attr[PROTO_A__COUNT]; /* known attributes */
	enum proto_state state;                /* from protocol_state */
	uint64_t size;                         /* `size`, 0 if absent/invalid */
	uint32_t recipient_count;              /* `recipient_count`, 0 if absent */
	struct proto_kv *extra;                /* unknown attributes, caller's array */
	size_t nextra;                         /* how many are filled */
	size_t extra_cap;                      /* capacity of extra (set by caller) */
	size_t nattrs;                         /* attributes seen in total */
};

struct proto_limits {
	size_t max_request; /* bytes, including the ending empty line */
	size_t max_line;    /* bytes of one name=value line, without its end */
	size_t max_attrs;   /* attribute lines per request */
};

enum proto_status {
	PROTO_MORE = 0, /* no complete request in the buffer yet */
	PROTO_OK,       /* one request parsed, *used bytes consumed */
	PROTO_BAD,      /* a complete but malformed request, *used bytes consumed */
	PROTO_FATAL,    /* cannot resynchronise: close the connection */
};

enum proto_error {
	PROTO_E_NONE = 0,
	PROTO_E_TOO_LARGE,     /* FATAL: no end of request within max_request */
	PROTO_E_LINE_TOO_LONG, /* BAD */
	PROTO_E_TOO_MANY,      /* BAD: more than max_attrs lines */
	PROTO_E_NUL,           /* BAD: NUL byte */
	PROTO_E_NO_EQUALS,     /* BAD: a line without '=' */
	PROTO_E_EMPTY_NAME,    /* BAD: a line starting with '=' */
	PROTO_E_BAD_REQUEST,   /* BAD: request= missing or not smtpd_access_policy */
	PROTO_E_BAD_NUMBER,    /* BAD: size / recipient_count not a number */
};

struct proto_diag {
	enum proto_error code;
	size_t line; /* 1-based line of the request where it went wrong, 0 if n/a */
};

/* Incremental state: how far the caller's buffer has been scanned. */
struct proto_parser {
	struct proto_limits lim;
	size_t scanned; /* bytes already searched for the end without success */
};

void proto_limits_default(struct proto_limits *lim);
void proto_parser_init(struct proto_parser *p, const struct proto_limits *lim);

/*
 * Look for one complete request at the start of buf[0..len).  On PROTO_OK
 * and PROTO_BAD, *used is the number of bytes the request took (the caller
 * drops them before the next call) and the parser is reset for the next
 * request.  req->extra/extra_cap must be set by the caller (may be 0).
 * On PROTO_OK the strings of req point into buf.  On PROTO_BAD, req holds
 * what was parsed before the error (all of it for E_BAD_REQUEST and
 * E_BAD_NUMBER), and diag says why; on PROTO_FATAL req is emptied.  On
 * PROTO_MORE req is not touched.  diag may be NULL.
 */
enum proto_status proto_parse(struct proto_parser *p, char *buf, size_t len,
                              struct proto_request *req, size_t *used, struct proto_diag *diag);

/*
 * The attribute called name[0..len) (not NUL-terminated), or PROTO_A__COUNT
 * when it is not one of enum proto_attr.  Case-sensitive, as Postfix sends.
 */
enum proto_attr proto_attr_lookup(const char *name, size_t len);

const char *proto_error_str(enum proto_error e);
const char *proto_state_name(enum proto_state s); /* "RCPT", "END-OF-MESSAGE", ... */
const char *proto_attr_name(enum proto_attr a);   /* "client_address", ... */

/* The attribute value, or "" when absent. */
static inline const char *proto_get(const struct proto_request *r, enum proto_attr a)
{
	return r->attr[a].p ? r->attr[a].p : "";
}

#endif
