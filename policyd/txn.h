/*
 * policyd/txn.h - the state of one SMTP transaction as seen on one policy
 * connection, tied together by `instance`: which recipients were admitted
 * (a repeated recipient counts once), which (rule, subject) pairs hold
 * reserved recipients to settle at END-OF-MESSAGE, and whether the message
 * was already counted.  Bounded: TXN_MAX_RCPT recipients, TXN_MAX_RESV
 * reservations; beyond that, counts stand (never under-count).
 */
#ifndef POLICYD_TXN_H
#define POLICYD_TXN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TXN_INSTANCE_MAX 64
#define TXN_MAX_RCPT     4096
#define TXN_MAX_RESV     1024

struct txn_resv {
	char *rule;    /* rule name */
	char *subject; /* normalised key value */
	uint32_t count;
	bool is_domain; /* a recipient_domain key: refunded per recipient */
};

struct txn {
	char instance[TXN_INSTANCE_MAX];
	bool active;
	uint64_t *rcpt; /* hashes of admitted recipients */
	size_t nrcpt, rcpt_cap;
	struct txn_resv *resv;
	size_t nresv, resv_cap;
	bool message_counted; /* messages/bytes taken already (no-EOM modes) */
	bool overflow;        /* a bound was hit: settle conservatively */
};

void txn_init(struct txn *t);
void txn_reset(struct txn *t); /* forget everything, keep buffers */
void txn_free(struct txn *t);

/*
 * Switch to `instance`.  Returns true when a different transaction was
 * active and is now abandoned (it never reached END-OF-MESSAGE).
 */
bool txn_begin(struct txn *t, const char *instance);

uint64_t txn_hash(const char *s);
bool txn_has_rcpt(const struct txn *t, uint64_t h);
void txn_add_rcpt(struct txn *t, uint64_t h);

/* Record `n` reserved units for (rule, subject). */
void txn_reserve(struct txn *t, const char *rule, const char *subject, uint32_t n, bool is_domain);

#endif
