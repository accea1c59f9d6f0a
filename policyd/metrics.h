/*
 * policyd/metrics.h - the daemon's metrics registry and its Prometheus
 * text exposition (served over HTTP by the "metrics" module, metrics.c,
 * with libmicrohttpd driven from the libev loop: one thread).
 *
 * Two ways to publish a number; both cost nothing on the hot path:
 *
 * 1. A counter you own.  Declare it static, register it once (at module
 *    start), bump it with metrics_inc(): a plain 64-bit add, no lock, no
 *    allocation, no lookup.  Counters with the same family name are
 *    grouped under one # HELP / # TYPE; give each its label set:
 *
 *        static struct metrics_counter flags_raised =
 *            METRICS_COUNTER("policyd_flags_raised_total",
 *                            "Flags raised, by source.", "source=\"ndr\"");
 *        ...start():  metrics_counter_register(&flags_raised);
 *        ...hot path: metrics_inc(&flags_raised, 1);
 *
 * 2. A collector: numbers you already keep (a stats struct, a table whose
 *    label sets change at run time).  It is called only when /metrics is
 *    scraped and writes one sample per label set:
 *
 *        static void my_collect(struct metrics_out *o, void *arg)
 *        {
 *                char l[128];
 *                metrics_label(l, sizeof(l), "rule", rule_name);   // rule="x"
 *                metrics_out_u64(o, l, count);
 *        }
 *        ...start(): metrics_register("policyd_x_total", "Help.", METRICS_COUNTER_T,
 *                                     my_collect, state);
 *
 * Names follow Prometheus: [a-zA-Z_:][a-zA-Z0-9_:]*, counters end in
 * _total.  Label strings are written as given ('a="x",b="y"', no braces):
 * build values that come from outside (rule names, accounts) with
 * metrics_label(), which escapes them.
 *
 * Everything here runs on the loop thread; the registry is global to the
 * daemon and exists whether the HTTP endpoint is configured or not (then
 * nobody reads it).  Limits: METRICS_MAX_FAMILIES families; a scrape's
 * text is capped at METRICS_MAX_TEXT bytes (the rest is cut, and counted in
 * policyd_metrics_truncated_total).
 */
#ifndef POLICYD_METRICS_H
#define POLICYD_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "module.h"
#include "verdict.h"

#define METRICS_MAX_FAMILIES 128
#define METRICS_MAX_TEXT     (4u << 20)

enum metrics_type { METRICS_COUNTER_T = 0, METRICS_GAUGE_T, METRICS_HISTOGRAM_T };

/* ------------------------------------------------------------ counters */

struct metrics_counter {
	const char *family; /* e.g. "policyd_hook_runs_total" */
	const char *help;
	const char *labels; /* 'exit="0"' or NULL; static */
	uint64_t v;
	struct metrics_counter *next; /* registry's */
	bool registered;
};

#define METRICS_COUNTER(family, help, labels)                                                      \
	{                                                                                          \
		(family), (help), (labels), 0, NULL, false                                         \
	}

/* Register (idempotent). 0, or -1 when the family table is full. */
int metrics_counter_register(struct metrics_counter *c);

static inline void metrics_inc(struct metrics_counter *c, uint64_t n)
{
	c->v += n;
}

/* ---------------------------------------------------------- histograms */

/* Fixed buckets in microseconds (upper bounds; +Inf implied). */
#define METRICS_HIST_NBUCKETS 14
extern const uint64_t metrics_hist_bounds_us[METRICS_HIST_NBUCKETS];

struct metrics_histogram {
	const char *family; /* e.g. "policyd_request_duration_seconds" */
	const char *help;
	const char *labels;                         /* or NULL */
	uint64_t bucket[METRICS_HIST_NBUCKETS + 1]; /* not cumulative; last is +Inf */
	uint64_t count, sum_us;
	struct metrics_histogram *next;
	bool registered;
};

#define METRICS_HISTOGRAM(family, help, labels)                                                    \
	{                                                                                          \
		(family), (help), (labels), {0}, 0, 0, NULL, false                                 \
	}

/* Register (idempotent); exposed in seconds. 0 or -1. */
int metrics_histogram_register(struct metrics_histogram *h);
/* Observe one value in microseconds: a short scan of 14 bounds, no allocation. */
void metrics_observe_us(struct metrics_histogram *h, uint64_t us);

/* ---------------------------------------------------------- collectors */

struct metrics_out;
typedef void metrics_collect_fn(struct metrics_out *out, void *arg);

/*
 * One family whose samples come from fn(out, arg) at scrape time.  type
 * METRICS_COUNTER_T or METRICS_GAUGE_T.  0, or -1 when the table is full
 * or the family is already registered with another kind.
 */
int metrics_register(const char *family, const char *help, enum metrics_type type,
                     metrics_collect_fn *fn, void *arg);
/* Remove every collector registered with this arg (a module that stops). */
void metrics_unregister(void *arg);

/* A sample of the family being collected; labels as 'k="v",...' or NULL/"". */
void metrics_out_u64(struct metrics_out *out, const char *labels, uint64_t v);
void metrics_out_double(struct metrics_out *out, const char *labels, double v);

/*
 * Append name="escaped value" to a label string in out (with a ',' when
 * out is not empty).  Returns the new length; cut values stay valid text.
 */
size_t metrics_label(char *out, size_t outsz, const char *name, const char *value);

/* ---------------------------------------------------------- exposition */

/*
 * The whole text exposition (format 0.0.4) into a malloc'ed buffer that
 * the caller frees; NULL when out of memory.
 */
char *metrics_render(size_t *len);

/* --------------------------------------------- the daemon's own numbers */

/*
 * One answered policy request (server.c conn_answer): requests by
 * protocol state, verdict parts by check/rule/action, the latency
 * histogram.  state is an enum proto_state.
 */
void metrics_request_done(int state, const struct verdict *v, uint64_t us);

/* The module serving GET /metrics (modules.c): [server] metrics = inet:HOST:PORT. */
extern const struct module metrics_module;

#endif
