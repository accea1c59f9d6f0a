/*
 * proto/postqueue.h - one line of `postqueue -j` (Postfix 3.1+): a JSON
 * object per queue file (docs/postfix-policy.md §6.1).
 *
 * Tolerant by design: unknown members are ignored (Postfix adds members
 * over releases, e.g. orig_address and bounce_reason in 3.11), optional
 * members of the wrong type are ignored and counted in `odd`, and only a
 * line that is not a JSON object, or whose queue_name / queue_id is
 * missing or malformed, is refused.  Pure: no I/O, no globals; strings
 * are copied into the caller's struct (bounded, cut strings flagged).
 */
#ifndef PROTO_POSTQUEUE_H
#define PROTO_POSTQUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define POSTQUEUE_MAX_LINE   (4u << 20) /* bytes of one line we parse */
#define POSTQUEUE_QNAME_MAX  16
#define POSTQUEUE_QID_MAX    32
#define POSTQUEUE_ADDR_MAX   1024 /* an address, NUL included (longer: cut) */
#define POSTQUEUE_REASON_MAX 256

struct postqueue_msg {
	char queue_name[POSTQUEUE_QNAME_MAX]; /* maildrop, incoming, active, deferred, hold */
	char queue_id[POSTQUEUE_QID_MAX];
	int64_t arrival_time; /* epoch seconds, -1 when absent */
	int64_t message_size; /* bytes, -1 when absent */
	bool forced_expire;
	bool has_sender;
	char sender[POSTQUEUE_ADDR_MAX]; /* "" for the null sender <> */
	size_t nrcpt;                    /* recipients still pending */
	size_t ndelayed;                 /* with a delay_reason */
	size_t nbounced;                 /* with a bounce_reason (3.11+) */
	char first_rcpt[POSTQUEUE_ADDR_MAX];
	char first_reason[POSTQUEUE_REASON_MAX]; /* the first delay_reason, if any */
	bool cut;                                /* a string was longer than its buffer */
	unsigned odd;                            /* known members of the wrong type, ignored */
};

enum postqueue_status {
	POSTQUEUE_OK = 0,
	POSTQUEUE_BAD, /* not a queue file object; err says why */
};

/*
 * Parse one line (without its '\n'; a trailing '\r' and spaces are
 * ignored).  On POSTQUEUE_BAD m is unspecified and err holds a reason.
 */
enum postqueue_status postqueue_parse(const char *line, size_t len, struct postqueue_msg *m,
                                      char *err, size_t errsz);

/* Is s a plausible queue id (1..31 of [0-9A-Za-z])? */
bool postqueue_valid_id(const char *s);

#endif
