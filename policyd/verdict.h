/*
 * policyd/verdict.h - what the checks of the pipeline contribute, how the
 * contributions combine (REJECT > DEFER > HOLD > WARN > DUNNO), and the
 * action line sent back to Postfix.
 */
#ifndef POLICYD_VERDICT_H
#define POLICYD_VERDICT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

#define VERDICT_MAX_FIRED 16
#define VERDICT_TEXT_MAX  320

/* One check's contribution. */
struct verdict_part {
	enum verdict_action action;  /* what the rule says (before dry run) */
	bool dry_run;                /* logged, not enforced */
	const char *rule;            /* rule name (static for the config's life) */
	const char *check;           /* "limit", "flag", ... */
	char reason[160];            /* short, for the log */
	char text[VERDICT_TEXT_MAX]; /* reply text for the client */
	char dsn[16];
};

struct verdict {
	enum verdict_action action; /* the enforced result */
	int winner;                 /* index in part[] of the enforced result, -1 if none */
	struct verdict_part part[VERDICT_MAX_FIRED];
	size_t nparts;
	size_t dropped; /* parts that did not fit */
};

void verdict_init(struct verdict *v);
/* Add a part (copied); returns it for filling, or NULL when full. */
struct verdict_part *verdict_add(struct verdict *v, const char *check, const char *rule,
                                 enum verdict_action a, bool dry_run);
/* Decide: the most severe non-dry-run part wins. */
void verdict_decide(struct verdict *v);

/* The reply line for Postfix (proto_reply_format'd) into out. */
size_t verdict_reply(const struct verdict *v, char *out, size_t outsz);

/* Is s a usable fallback action ("DUNNO", "DEFER text", "451 4.3.5 text", ...)? */
int verdict_check_action_text(const char *s, char *err, size_t errsz);
bool verdict_dsn_valid(const char *dsn);
const char *verdict_action_word(enum verdict_action a); /* "DUNNO", "DEFER", ... */

/* "35s", "12m", "3h", "2d" */
void verdict_fmt_duration(char *out, size_t outsz, uint64_t us);

#endif
