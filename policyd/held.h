/*
 * policyd/held.h - the held ledger: why policyd put a message on Postfix's
 * hold queue.  When a request's verdict is HOLD, the account, the rule
 * that won, every contribution (rule or score component) and the time are
 * noted under the transaction's `instance`; as soon as the transaction's
 * queue_id is known (a later RCPT, DATA or END-OF-MESSAGE request, or the
 * same request) the note is written to the store as
 *   "@held" / QUEUEID -> JSON record (HELD_TTL_US)
 * and rewritten at END-OF-MESSAGE with the final recipient count and size.
 * policyctl's "report held" reads the records back through the control
 * command "held".
 *
 * Record: {"v":1,"queue_id","instance","account","principal_kind",
 *   "sender","client","time","state","action","rule","check","reason",
 *   "components":[{"check","rule","action","dry_run","reason"}],
 *   "recipient_count","size"}   (time in epoch seconds)
 *
 * Limits: HELD_MAX_PENDING transactions awaiting a queue id (the oldest is
 * dropped, logged); a note older than HELD_PENDING_MAX_AGE_S is dropped;
 * a record is cut to STORE_MAX_VALUE bytes (components dropped first).
 * Mail held with only the RCPT hook and a single recipient never shows a
 * queue id to policyd: its record cannot be written (counted).
 */
#ifndef POLICYD_HELD_H
#define POLICYD_HELD_H

#include "module.h"
#include "pipeline.h"

#define HELD_NS                "@held"
#define HELD_TTL_US            (30ULL * 86400 * 1000000)
#define HELD_MAX_PENDING       1024
#define HELD_PENDING_MAX_AGE_S 3600

/* After the decision of every request (server.c conn_answer).  Cheap when
 * nothing is held: one compare. */
void held_note(const struct pipeline_ctx *x);

struct held_stats {
	unsigned long long noted;   /* HOLD verdicts seen */
	unsigned long long written; /* records written (first write per queue id) */
	unsigned long long updated; /* rewritten at END-OF-MESSAGE */
	unsigned long long dropped; /* notes that never met a queue id */
	unsigned long long errors;  /* store errors writing records */
};
extern struct held_stats held_stats;

/* The module (modules.c): holds the store for the ledger, metrics. */
extern const struct module held_module;

#endif
