/*
 * policyd/limit.h - the rate-limit check of the pipeline: [limit NAME]
 * rules counting recipients, messages or bytes per key over GCRA windows.
 */
#ifndef POLICYD_LIMIT_H
#define POLICYD_LIMIT_H

#include "pipeline.h"

void limit_prepare(struct pipeline_ctx *x);
void limit_finish(struct pipeline_ctx *x);

/* The normalised subject of rule r for this request ("" when the rule does
 * not apply, e.g. no sasl_username). */
size_t limit_subject(const struct pipeline_ctx *x, const struct rule *r, char *out, size_t outsz);

/* Counters for status/metrics. */
struct limit_stats {
	unsigned long long abandoned; /* transactions that never reached EOM */
	unsigned long long settled;   /* EOM settlements */
	unsigned long long refunded;  /* recipients given back */
	unsigned long long fired;     /* rule over its limit */
};
extern struct limit_stats limit_stats;

#endif
