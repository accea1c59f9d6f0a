/*
 * proto/maillog.h - one Postfix log line, parsed into string views.
 *
 * The log follower hands maillog_parse() one line at a time (without or
 * with its '\n').  The result says what kind of record the line is (an
 * enum) and points into the caller's line for every field: no copy, no
 * allocation, the line is not modified.  The only bytes the parser writes
 * are in the result itself: the internal (unquoted) form of an address
 * logged in external form (`"john doe"@example.org`) is built in
 * line->scratch.  The views stay valid while both the line and the result
 * live and the result is not reused.
 *
 * Understood (docs/postfix-logs.md §1, docs/postfix-policy.md §5):
 * - prefixes: classic syslog `Nov  3 07:05:09`, postlogd `Nov 03 07:05:09`,
 *   RFC 3339 `2026-11-03T07:05:09.114502+01:00`; then host, tag, [pid];
 * - the tag `syslog_name/.../program`: program is its last element;
 * - warning:/error:/fatal:/panic: records (never taken for a queue id);
 * - queue ids short (hex), long (base 52 + `z` + base 51) and NOQUEUE;
 * - the records attribution needs: smtpd connect/disconnect and client=,
 *   pickup uid=/from=/orig_id=, cleanup message-id=, qmgr from=/size=/
 *   nrcpt= and status=expired|force-expired, delivery records (fields by
 *   name, unknown fields tolerated), bounce notifications, removed, the
 *   reject/hold/... records of smtpd, postscreen and cleanup, and the
 *   postsuper hold/release/requeue records.
 *
 * Limits: a line longer than opts->max_line is MAILLOG_TOO_LONG and nothing
 * is parsed.  Anything else that is not understood is MAILLOG_OTHER (a log
 * line of another program, or a Postfix record we do not need) or
 * MAILLOG_GARBAGE (no syslog prefix, or a record we know that is
 * malformed); never a crash.  Bytes are bytes: invalid UTF-8 and NULs are
 * carried through.
 *
 * Syslog timestamps have no year and are local time: the caller gives a
 * reference time ("now") and the UTC offset of the log; a stamp more than
 * 7 days after the reference time is taken from the year before (New Year
 * roll-over).  Without a reference time, has_time is false for them.
 *
 * No I/O, no globals, no allocation.
 */
#ifndef PROTO_MAILLOG_H
#define PROTO_MAILLOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MAILLOG_DEFAULT_MAX_LINE 8192
#define MAILLOG_MAX_QUEUE_ID     64   /* longest queue id accepted */
#define MAILLOG_SCRATCH          2048 /* room for unquoted addresses */

/* A string inside the caller's line (or line->scratch).  Not NUL-terminated. */
struct maillog_str {
	const char *p; /* NULL when absent */
	size_t len;
};

enum maillog_event {
	MAILLOG_GARBAGE = 0,  /* no syslog prefix, or a known record malformed (err) */
	MAILLOG_TOO_LONG,     /* longer than max_line: nothing parsed */
	MAILLOG_OTHER,        /* a log line we do not interpret */
	MAILLOG_DIAG,         /* warning:/error:/fatal:/panic: without queue id (msg) */
	MAILLOG_CONNECT,      /* `connect from NAME[ADDR]` */
	MAILLOG_DISCONNECT,   /* `disconnect from NAME[ADDR] ...` */
	MAILLOG_CLIENT,       /* `QID: client=NAME[ADDR], sasl_method=...` */
	MAILLOG_PICKUP,       /* `QID: uid=N from=<S>[ orig_id=Q]` */
	MAILLOG_MESSAGE_ID,   /* `QID: message-id=<...>` (or resent-message-id=) */
	MAILLOG_QUEUED,       /* qmgr `QID: from=<S>, size=N, nrcpt=K (queue active)` */
	MAILLOG_EXPIRED,      /* qmgr `QID: from=<S>, status=expired, returned to sender` */
	MAILLOG_DELIVERY,     /* `QID: to=<R>, ..., dsn=X, status=S (reason)` */
	MAILLOG_NOTIFICATION, /* bounce `QID: sender non-delivery notification: NQID` */
	MAILLOG_ACTION,       /* `QID|NOQUEUE: reject|hold|...: ...; from=<> to=<> ...` */
	MAILLOG_REMOVED,      /* `QID: removed` */
	MAILLOG_HOLD,         /* postsuper `QID: placed on hold` */
	MAILLOG_RELEASED,     /* postsuper `QID: released from hold` */
	MAILLOG_REQUEUED,     /* postsuper `QID: requeued` */
	MAILLOG_CANCELED,     /* cleanup `QID: canceled` (3.10+) */
	MAILLOG_QUEUE_OTHER,  /* any other `QID: text` record (msg) */
	MAILLOG_EVENT__COUNT
};

enum maillog_error {
	MAILLOG_E_NONE = 0,
	MAILLOG_E_TOO_LONG,
	MAILLOG_E_TIMESTAMP, /* no timestamp of a known form */
	MAILLOG_E_PREFIX,    /* no `host tag[pid]: ` after it */
	MAILLOG_E_DELIVERY,  /* a `to=<` record without status= or with a bad field */
	MAILLOG_E_QMGR,      /* a `from=<` record of neither known form */
	MAILLOG_E_CLIENT,    /* a `client=` record without NAME[ADDR] */
	MAILLOG_E_PICKUP,
	MAILLOG_E_NOTIFICATION,
	MAILLOG_E_ACTION,
};

enum maillog_severity {
	MAILLOG_SEV_INFO = 0,
	MAILLOG_SEV_WARNING,
	MAILLOG_SEV_ERROR,
	MAILLOG_SEV_FATAL,
	MAILLOG_SEV_PANIC,
};

/* status= of a delivery record, or of qmgr's expiry record. */
enum maillog_status {
	MAILLOG_ST_NONE = 0,
	MAILLOG_ST_SENT,
	MAILLOG_ST_BOUNCED,
	MAILLOG_ST_DEFERRED,
	MAILLOG_ST_SOFTBOUNCE,    /* soft_bounce = yes: a deferral */
	MAILLOG_ST_UNDELIVERABLE, /* address-verification probe */
	MAILLOG_ST_DELIVERABLE,   /* address-verification probe */
	MAILLOG_ST_EXPANDED,      /* trace/verify */
	MAILLOG_ST_DELIVERED,     /* trace/verify */
	MAILLOG_ST_EXPIRED,       /* qmgr: expired, returned to sender */
	MAILLOG_ST_FORCE_EXPIRED, /* qmgr: force-expired (postsuper -e) */
	MAILLOG_ST_OTHER,         /* a word we do not know (status_str) */
};

/* How the reason text of a delivery record was built (§1.4, §1.5). */
enum maillog_reason_kind {
	MAILLOG_R_NONE = 0, /* no reason text */
	MAILLOG_R_SAID,     /* host H[A] said: TEXT (in reply to CMD) */
	MAILLOG_R_REFUSED,  /* host H[A] refused to talk to me: TEXT */
	MAILLOG_R_CONNECT,  /* connect to H[A]:P: TEXT */
	MAILLOG_R_LOST,     /* lost connection with H[A] while TEXT */
	MAILLOG_R_TIMEOUT,  /* conversation with H[A] timed out while TEXT */
	MAILLOG_R_LOCAL,    /* any other text (Postfix's own, local(8), ...) */
};

struct maillog_reason {
	enum maillog_reason_kind kind;
	bool suspended;          /* `delivery temporarily suspended: ` came first */
	bool truncated;          /* the record did not end with ')' */
	struct maillog_str host; /* H of the forms above */
	struct maillog_str addr; /* A */
	struct maillog_str port; /* P (connect to) */
	struct maillog_str text; /* SAID/REFUSED: the remote reply; CONNECT: the
	                          * error; LOST/TIMEOUT: the stage; LOCAL: all */
	struct maillog_str cmd;  /* SAID: `RCPT TO command` etc., else absent */
};

struct maillog_opts {
	size_t max_line;    /* bytes without the line end; 0: the default */
	int64_t ref_time;   /* unix time "now" for the year of syslog stamps; 0: none */
	int32_t utc_offset; /* seconds east of UTC of syslog (local time) stamps */
};

struct maillog_line {
	enum maillog_event event;
	enum maillog_error err; /* why GARBAGE / TOO_LONG */

	/* The prefix. */
	struct maillog_str timestamp; /* as written */
	bool has_time;                /* time/usec are set */
	int64_t time;                 /* unix seconds */
	uint32_t usec;                /* RFC 3339 fraction, in microseconds */
	struct maillog_str host;
	struct maillog_str tag;         /* `postfix/submission/smtpd` */
	struct maillog_str syslog_name; /* `postfix/submission` (absent: no '/') */
	struct maillog_str program;     /* `smtpd` */
	bool has_pid;
	uint32_t pid;
	enum maillog_severity severity;
	struct maillog_str queue_id; /* the id, or `NOQUEUE` */
	bool noqueue;                /* queue_id is NOQUEUE */
	struct maillog_str msg;      /* after `]: `, `warning: ` and `QID: ` */

	/* Addresses: internal form (unquoted; may point into scratch) and as logged. */
	struct maillog_str from, from_ext; /* QUEUED, EXPIRED, PICKUP, ACTION */
	struct maillog_str to, to_ext;     /* DELIVERY, ACTION */
	struct maillog_str orig_to, orig_to_ext;

	/* DELIVERY */
	struct maillog_str relay;      /* as written: `mx[addr]:25`, `local`, `none` */
	struct maillog_str relay_host; /* before '[' (the whole relay without one) */
	struct maillog_str relay_addr; /* inside [] (`private/dovecot-lmtp` too) */
	struct maillog_str relay_port; /* after `]:` */
	bool relay_none;
	uint32_t conn_use;
	struct maillog_str delay, delays, tls, dsn;
	enum maillog_status status; /* DELIVERY and EXPIRED */
	struct maillog_str status_str;
	struct maillog_str reply; /* the text in parentheses after status= */
	struct maillog_reason reason;

	/* QUEUED */
	uint64_t size;
	uint32_t nrcpt;
	struct maillog_str queue_name; /* `active`, `deferred` */

	/* CLIENT, CONNECT, DISCONNECT, ACTION (the client of the action) */
	struct maillog_str client_name, client_addr, client_port;
	struct maillog_str sasl_method, sasl_username, sasl_sender; /* also ACTION (3.10+) */
	struct maillog_str orig_queue_id, orig_client;

	/* PICKUP */
	struct maillog_str uid, orig_id;

	/* MESSAGE_ID */
	struct maillog_str message_id;
	bool resent;

	/* NOTIFICATION */
	struct maillog_str notice; /* `sender non-delivery notification` */
	struct maillog_str new_queue_id;

	/* ACTION */
	struct maillog_str action;      /* `reject`, `hold`, `milter-reject`, ... */
	struct maillog_str stage;       /* `RCPT`, `END-OF-MESSAGE`, `header`, `body` */
	struct maillog_str action_text; /* smtpd: the reply; cleanup: text after the attributes */
	struct maillog_str proto, helo;

	size_t scratch_used;
	char scratch[MAILLOG_SCRATCH]; /* not cleared between parses */
};

void maillog_opts_default(struct maillog_opts *o);

/*
 * Parse line[0..len) (a trailing "\n" or "\r\n" is ignored) into *out and
 * return out->event.  o may be NULL for the defaults.
 */
enum maillog_event maillog_parse(const struct maillog_opts *o, const char *line, size_t len,
                                 struct maillog_line *out);

/* Split a delivery reason text into its parts (done by maillog_parse too). */
void maillog_reason_parse(const char *text, size_t len, struct maillog_reason *r);

/* A short queue id, a long one, or NOQUEUE (docs/postfix-policy.md §5.2). */
bool maillog_queue_id_valid(const char *s, size_t len);

/*
 * Write the internal form of an address in external form (quotes and
 * backslash escapes of the local part removed; the domain as is) to out.
 * Returns the length (never more than len), or (size_t)-1 when outsz < len + 1.
 * The result is NUL-terminated.
 */
size_t maillog_addr_unquote(const char *ext, size_t len, char *out, size_t outsz);

/* Bounced, undeliverable, expired or force-expired: the mail will not go. */
bool maillog_status_permanent(enum maillog_status st);

const char *maillog_event_name(enum maillog_event ev);
const char *maillog_status_name(enum maillog_status st);
const char *maillog_error_str(enum maillog_error err);

#endif
