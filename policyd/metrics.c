/*
 * policyd/metrics.c - owns the metrics registry (metrics.h), its
 * Prometheus text rendering, the daemon's own request/verdict/latency
 * numbers, the collectors of the server, store and limit statistics, and
 * the "metrics" module: GET /metrics over HTTP on [server] metrics =
 * inet:HOST:PORT.
 *
 * HTTP is libmicrohttpd in external-polling epoll mode, driven from the
 * libev loop (one ev_io on MHD's epoll fd, one ev_timer for its
 * timeouts): no extra thread, so counters are read on the thread that
 * writes them.  The listening socket is bound here (numeric address only)
 * and must be loopback unless metrics_allow_remote = yes.
 *
 * Limits: METRICS_HTTP_CONNS connections, METRICS_HTTP_TIMEOUT_S idle
 * seconds per connection, METRICS_MAX_TEXT bytes of text per scrape,
 * METRICS_RULE_SLOTS (check, rule) pairs (more are counted as
 * rule="(other)").  Only GET and HEAD; paths / and /metrics.
 */
#include "metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "limit.h"
#include "log.h"
#include "proto/request.h"
#include "server.h"

#define METRICS_HTTP_CONNS     16
#define METRICS_HTTP_TIMEOUT_S 10
#define METRICS_RULE_SLOTS     512
#define METRICS_NAME_MAX       64
#define METRICS_MAX_COLL       8

/* ---------------------------------------------------------------- registry */

struct metrics_family {
	char name[METRICS_NAME_MAX + 32];
	const char *help;
	enum metrics_type type;
	struct metrics_counter *counters;
	struct metrics_histogram *hists;
	struct {
		metrics_collect_fn *fn;
		void *arg;
	} coll[METRICS_MAX_COLL];
	size_t ncoll;
};

struct metrics_out {
	char *buf;
	size_t len, cap;
	bool cut;
	const struct metrics_family *fam;
};

static struct metrics_family metrics_fams[METRICS_MAX_FAMILIES];
static size_t metrics_nfams;
static uint64_t metrics_truncated, metrics_scrapes, metrics_render_us_last;

const uint64_t metrics_hist_bounds_us[METRICS_HIST_NBUCKETS] = {
    50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 1000000, 5000000};

static struct metrics_family *metrics_family(const char *name, const char *help,
                                             enum metrics_type type)
{
	for (size_t i = 0; i < metrics_nfams; i++)
		if (!strcmp(metrics_fams[i].name, name))
			return metrics_fams[i].type == type ? &metrics_fams[i] : NULL;
	if (metrics_nfams == METRICS_MAX_FAMILIES || strlen(name) >= sizeof(metrics_fams[0].name))
		return NULL;
	struct metrics_family *f = &metrics_fams[metrics_nfams++];
	memset(f, 0, sizeof(*f));
	snprintf(f->name, sizeof(f->name), "%s", name);
	f->help = help;
	f->type = type;
	return f;
}

int metrics_counter_register(struct metrics_counter *c)
{
	if (c->registered)
		return 0;
	struct metrics_family *f = metrics_family(c->family, c->help, METRICS_COUNTER_T);
	if (f == NULL) {
		log_warn("metrics: cannot register %s (table full or type clash)", c->family);
		return -1;
	}
	/* append: samples come out in registration order */
	struct metrics_counter **pp = &f->counters;
	while (*pp)
		pp = &(*pp)->next;
	c->next = NULL;
	*pp = c;
	c->registered = true;
	return 0;
}

int metrics_histogram_register(struct metrics_histogram *h)
{
	if (h->registered)
		return 0;
	struct metrics_family *f = metrics_family(h->family, h->help, METRICS_HISTOGRAM_T);
	if (f == NULL) {
		log_warn("metrics: cannot register %s (table full or type clash)", h->family);
		return -1;
	}
	struct metrics_histogram **pp = &f->hists;
	while (*pp)
		pp = &(*pp)->next;
	h->next = NULL;
	*pp = h;
	h->registered = true;
	return 0;
}

void metrics_observe_us(struct metrics_histogram *h, uint64_t us)
{
	size_t i = 0;
	while (i < METRICS_HIST_NBUCKETS && us > metrics_hist_bounds_us[i])
		i++;
	h->bucket[i]++;
	h->count++;
	h->sum_us += us;
}

int metrics_register(const char *family, const char *help, enum metrics_type type,
                     metrics_collect_fn *fn, void *arg)
{
	if (type == METRICS_HISTOGRAM_T)
		return -1;
	struct metrics_family *f = metrics_family(family, help, type);
	if (f == NULL || f->ncoll == METRICS_MAX_COLL) {
		log_warn("metrics: cannot register %s (table full or type clash)", family);
		return -1;
	}
	for (size_t i = 0; i < f->ncoll; i++)
		if (f->coll[i].fn == fn && f->coll[i].arg == arg)
			return 0;
	f->coll[f->ncoll].fn = fn;
	f->coll[f->ncoll].arg = arg;
	f->ncoll++;
	return 0;
}

void metrics_unregister(void *arg)
{
	for (size_t i = 0; i < metrics_nfams; i++) {
		struct metrics_family *f = &metrics_fams[i];
		size_t k = 0;
		for (size_t j = 0; j < f->ncoll; j++)
			if (f->coll[j].arg != arg)
				f->coll[k++] = f->coll[j];
		f->ncoll = k;
	}
}

/* ---------------------------------------------------------------- rendering */

static bool metrics_reserve(struct metrics_out *o, size_t more)
{
	if (o->cut)
		return false;
	if (o->len + more + 1 <= o->cap)
		return true;
	size_t ncap = o->cap ? o->cap : 16384;
	while (ncap < o->len + more + 1)
		ncap *= 2;
	if (ncap > METRICS_MAX_TEXT)
		ncap = METRICS_MAX_TEXT;
	if (o->len + more + 1 > ncap) {
		o->cut = true;
		return false;
	}
	char *nb = realloc(o->buf, ncap);
	if (nb == NULL) {
		o->cut = true;
		return false;
	}
	o->buf = nb;
	o->cap = ncap;
	return true;
}

static void metrics_printf(struct metrics_out *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void metrics_printf(struct metrics_out *o, const char *fmt, ...)
{
	char tmp[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(tmp)) /* a sample line longer than 1 KB: skip it */
		return;
	if (!metrics_reserve(o, (size_t)n))
		return;
	memcpy(o->buf + o->len, tmp, (size_t)n);
	o->len += (size_t)n;
	o->buf[o->len] = '\0';
}

static void metrics_sample(struct metrics_out *o, const char *suffix, const char *labels,
                           const char *value)
{
	const char *name = o->fam ? o->fam->name : "policyd_unknown";
	if (labels && labels[0])
		metrics_printf(o, "%s%s{%s} %s\n", name, suffix, labels, value);
	else
		metrics_printf(o, "%s%s %s\n", name, suffix, value);
}

void metrics_out_u64(struct metrics_out *out, const char *labels, uint64_t v)
{
	char val[24];
	snprintf(val, sizeof(val), "%llu", (unsigned long long)v);
	metrics_sample(out, "", labels, val);
}

void metrics_out_double(struct metrics_out *out, const char *labels, double v)
{
	char val[40];
	if (isnan(v))
		snprintf(val, sizeof(val), "NaN");
	else if (isinf(v))
		snprintf(val, sizeof(val), "%s", v > 0 ? "+Inf" : "-Inf");
	else
		snprintf(val, sizeof(val), "%.17g", v);
	metrics_sample(out, "", labels, val);
}

size_t metrics_label(char *out, size_t outsz, const char *name, const char *value)
{
	size_t n = strnlen(out, outsz);
	if (outsz == 0 || n >= outsz - 1)
		return n;
	size_t start = n;
	int k = snprintf(out + n, outsz - n, "%s%s=\"", n ? "," : "", name);
	if (k < 0 || (size_t)k >= outsz - n) {
		out[start] = '\0';
		return start;
	}
	n += (size_t)k;
	for (const char *p = value ? value : ""; *p; p++) {
		const char *esc = NULL;
		char one[2] = {*p, '\0'};
		if (*p == '\\')
			esc = "\\\\";
		else if (*p == '"')
			esc = "\\\"";
		else if (*p == '\n')
			esc = "\\n";
		else
			esc = one;
		size_t el = strlen(esc);
		if (n + el + 2 > outsz) /* keep room for the closing quote */
			break;
		memcpy(out + n, esc, el);
		n += el;
	}
	out[n++] = '"';
	out[n] = '\0';
	return n;
}

static const char *metrics_type_name(enum metrics_type t)
{
	return t == METRICS_GAUGE_T ? "gauge" : t == METRICS_HISTOGRAM_T ? "histogram" : "counter";
}

static void metrics_render_hist(struct metrics_out *o, const struct metrics_histogram *h)
{
	uint64_t cum = 0;
	char labels[512], val[24], le[32];
	for (size_t i = 0; i <= METRICS_HIST_NBUCKETS; i++) {
		cum += h->bucket[i];
		labels[0] = '\0';
		if (h->labels && h->labels[0])
			snprintf(labels, sizeof(labels), "%s", h->labels);
		if (i < METRICS_HIST_NBUCKETS) {
			/* decimal seconds without trailing zeros: 0.00005, 0.1, 5 */
			uint64_t b = metrics_hist_bounds_us[i];
			snprintf(le, sizeof(le), "%llu.%06llu", (unsigned long long)(b / 1000000),
			         (unsigned long long)(b % 1000000));
			size_t n = strlen(le);
			while (le[n - 1] == '0')
				le[--n] = '\0';
			if (le[n - 1] == '.')
				le[--n] = '\0';
		} else
			snprintf(le, sizeof(le), "+Inf");
		metrics_label(labels, sizeof(labels), "le", le);
		snprintf(val, sizeof(val), "%llu", (unsigned long long)cum);
		metrics_sample(o, "_bucket", labels, val);
	}
	char sum[40];
	snprintf(sum, sizeof(sum), "%.6f", (double)h->sum_us / 1e6);
	metrics_sample(o, "_sum", h->labels, sum);
	snprintf(val, sizeof(val), "%llu", (unsigned long long)h->count);
	metrics_sample(o, "_count", h->labels, val);
}

static struct metrics_family metrics_self_fam[3];

char *metrics_render(size_t *len)
{
	struct metrics_out o;
	struct timespec t0, t1;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	memset(&o, 0, sizeof(o));
	if (!metrics_reserve(&o, 0))
		return NULL;
	o.buf[0] = '\0';
	for (size_t i = 0; i < metrics_nfams; i++) {
		const struct metrics_family *f = &metrics_fams[i];
		if (f->counters == NULL && f->hists == NULL && f->ncoll == 0)
			continue;
		o.fam = f;
		metrics_printf(&o, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help ? f->help : "",
		               f->name, metrics_type_name(f->type));
		for (const struct metrics_counter *c = f->counters; c; c = c->next)
			metrics_out_u64(&o, c->labels, c->v);
		for (const struct metrics_histogram *h = f->hists; h; h = h->next)
			metrics_render_hist(&o, h);
		for (size_t j = 0; j < f->ncoll; j++)
			f->coll[j].fn(&o, f->coll[j].arg);
	}
	metrics_scrapes++;
	if (o.cut)
		metrics_truncated++;
	/* about the scrape itself (a few lines: written unless the cap is hit) */
	o.cut = false;
	clock_gettime(CLOCK_MONOTONIC, &t1);
	metrics_render_us_last =
	    (uint64_t)((t1.tv_sec - t0.tv_sec) * 1000000 + (t1.tv_nsec - t0.tv_nsec) / 1000);
	static const char *const names[3] = {"policyd_metrics_scrapes_total",
	                                     "policyd_metrics_truncated_total",
	                                     "policyd_metrics_render_seconds"};
	static const char *const helps[3] = {"Renderings of this text.",
	                                     "Renderings cut at the size limit.",
	                                     "How long the previous rendering of this text took."};
	for (int k = 0; k < 3; k++) {
		snprintf(metrics_self_fam[k].name, sizeof(metrics_self_fam[k].name), "%s",
		         names[k]);
		o.fam = &metrics_self_fam[k];
		metrics_printf(&o, "# HELP %s %s\n# TYPE %s %s\n", names[k], helps[k], names[k],
		               k == 2 ? "gauge" : "counter");
		if (k == 0)
			metrics_out_u64(&o, NULL, metrics_scrapes);
		else if (k == 1)
			metrics_out_u64(&o, NULL, metrics_truncated);
		else
			metrics_out_double(&o, NULL, (double)metrics_render_us_last / 1e6);
	}
	*len = o.len;
	return o.buf;
}

/* ------------------------------------------------ the daemon's own numbers */

struct metrics_rule_slot {
	char rule[CONFIG_NAME_MAX];
	char check[24];
	bool used;
	uint64_t parts[ACT_REJECT + 1][2]; /* [action][dry_run] */
	uint64_t enforced[ACT_REJECT + 1]; /* verdicts this rule won */
};

static struct metrics_rule_slot metrics_rules[METRICS_RULE_SLOTS];
static struct metrics_rule_slot metrics_rule_other = {.rule = "(other)", .check = "", .used = true};
static uint64_t metrics_req_state[PROTO_STATE_OTHER + 1];
static uint64_t metrics_verdict_norule[ACT_REJECT + 1];
static struct metrics_histogram metrics_latency = METRICS_HISTOGRAM(
    "policyd_request_duration_seconds",
    "Time from a complete policy request to its answer (store round trip included).", NULL);

static uint32_t metrics_hash(const char *a, const char *b)
{
	uint32_t h = 2166136261u;
	for (; *a; a++)
		h = (h ^ (unsigned char)*a) * 16777619u;
	h = (h ^ 0xff) * 16777619u;
	for (; *b; b++)
		h = (h ^ (unsigned char)*b) * 16777619u;
	return h;
}

/* (check, rule) -> its slot: a direct-mapped cache on the name pointers (stable
 * for a config's life; checked by content, so a reused address is harmless),
 * then the hash table by content. */
static struct {
	const char *check, *rule;
	struct metrics_rule_slot *slot;
} metrics_rule_cache[64];

static struct metrics_rule_slot *metrics_rule_slot(const char *check, const char *rule)
{
	if (rule == NULL)
		rule = "";
	if (check == NULL)
		check = "";
	size_t ci = (((uintptr_t)rule >> 3) ^ ((uintptr_t)check >> 5)) & 63;
	if (metrics_rule_cache[ci].rule == rule && metrics_rule_cache[ci].check == check) {
		struct metrics_rule_slot *s = metrics_rule_cache[ci].slot;
		if (!strcmp(s->rule, rule) && !strcmp(s->check, check))
			return s;
	}
	uint32_t h = metrics_hash(check, rule);
	struct metrics_rule_slot *found = &metrics_rule_other;
	for (size_t k = 0; k < 16; k++) {
		struct metrics_rule_slot *s = &metrics_rules[(h + k) % METRICS_RULE_SLOTS];
		if (!s->used) {
			s->used = true;
			snprintf(s->rule, sizeof(s->rule), "%s", rule);
			snprintf(s->check, sizeof(s->check), "%s", check);
			found = s;
			break;
		}
		if (!strcmp(s->rule, rule) && !strcmp(s->check, check)) {
			found = s;
			break;
		}
	}
	if (found != &metrics_rule_other) {
		metrics_rule_cache[ci].check = check;
		metrics_rule_cache[ci].rule = rule;
		metrics_rule_cache[ci].slot = found;
	}
	return found;
}

void metrics_request_done(int state, const struct verdict *v, uint64_t us)
{
	if (state >= 0 && state <= PROTO_STATE_OTHER)
		metrics_req_state[state]++;
	metrics_observe_us(&metrics_latency, us);
	if (v == NULL)
		return;
	for (size_t i = 0; i < v->nparts; i++) {
		const struct verdict_part *p = &v->part[i];
		if (p->action > ACT_REJECT)
			continue;
		metrics_rule_slot(p->check, p->rule)->parts[p->action][p->dry_run ? 1 : 0]++;
	}
	if (v->action > ACT_REJECT)
		return;
	if (v->winner >= 0 && (size_t)v->winner < v->nparts)
		metrics_rule_slot(v->part[v->winner].check, v->part[v->winner].rule)
		    ->enforced[v->action]++;
	else
		metrics_verdict_norule[v->action]++;
}

static void metrics_collect_states(struct metrics_out *o, void *arg)
{
	for (int s = 0; s <= PROTO_STATE_OTHER; s++) {
		char l[64] = "";
		if (metrics_req_state[s] == 0 && s != PROTO_STATE_RCPT && s != PROTO_STATE_EOM)
			continue;
		metrics_label(l, sizeof(l), "state", s == 0 ? "none" : proto_state_name(s));
		metrics_out_u64(o, l, metrics_req_state[s]);
	}
}

static void metrics_collect_verdicts(struct metrics_out *o, void *arg)
{
	for (int a = 0; a <= ACT_REJECT; a++) {
		char l[128] = "";
		metrics_label(l, sizeof(l), "action", config_action_name(a));
		metrics_label(l, sizeof(l), "rule", "");
		metrics_out_u64(o, l, metrics_verdict_norule[a]);
	}
	for (size_t i = 0; i <= METRICS_RULE_SLOTS; i++) {
		const struct metrics_rule_slot *s =
		    i < METRICS_RULE_SLOTS ? &metrics_rules[i] : &metrics_rule_other;
		if (!s->used)
			continue;
		for (int a = 0; a <= ACT_REJECT; a++) {
			if (s->enforced[a] == 0)
				continue;
			char l[256] = "";
			metrics_label(l, sizeof(l), "action", config_action_name(a));
			metrics_label(l, sizeof(l), "rule", s->rule);
			metrics_out_u64(o, l, s->enforced[a]);
		}
	}
}

static void metrics_collect_parts(struct metrics_out *o, void *arg)
{
	for (size_t i = 0; i <= METRICS_RULE_SLOTS; i++) {
		const struct metrics_rule_slot *s =
		    i < METRICS_RULE_SLOTS ? &metrics_rules[i] : &metrics_rule_other;
		if (!s->used)
			continue;
		for (int a = 0; a <= ACT_REJECT; a++)
			for (int d = 0; d < 2; d++) {
				if (s->parts[a][d] == 0)
					continue;
				char l[320] = "";
				metrics_label(l, sizeof(l), "check", s->check);
				metrics_label(l, sizeof(l), "rule", s->rule);
				metrics_label(l, sizeof(l), "action", config_action_name(a));
				metrics_label(l, sizeof(l), "dry_run", d ? "yes" : "no");
				metrics_out_u64(o, l, s->parts[a][d]);
			}
	}
}

/* ------------------------------------------------ server / store / limit */

struct metrics_module_state {
	struct module_ctx *m;
	struct MHD_Daemon *mhd;
	int lfd;
	ev_io io;
	ev_timer tm;
	char endpoint[128];
	uint64_t http_requests, http_errors;
};

static struct metrics_module_state metrics_st = {.lfd = -1};

#define METRICS_SERVER_FIELD(fn, field)                                                            \
	static void fn(struct metrics_out *o, void *arg)                                           \
	{                                                                                          \
		struct metrics_module_state *ms = arg;                                             \
		if (ms->m && ms->m->srv)                                                           \
			metrics_out_u64(o, NULL, server_stats(ms->m->srv)->field);                 \
	}
METRICS_SERVER_FIELD(metrics_c_requests, requests)
METRICS_SERVER_FIELD(metrics_c_bad, bad_requests)
METRICS_SERVER_FIELD(metrics_c_fatal, fatal_streams)
METRICS_SERVER_FIELD(metrics_c_accepted, accepted)
METRICS_SERVER_FIELD(metrics_c_refused, refused_conns)
METRICS_SERVER_FIELD(metrics_c_idle, closed_idle)
METRICS_SERVER_FIELD(metrics_c_store_errors, store_errors)

static void metrics_c_store(struct metrics_out *o, void *arg)
{
	struct metrics_module_state *ms = arg;
	struct store_stats st;
	if (ms->m == NULL || ms->m->store == NULL || ms->m->store->be->stats == NULL)
		return;
	memset(&st, 0, sizeof(st));
	ms->m->store->be->stats(ms->m->store, &st);
	char l[96] = "";
	metrics_label(l, sizeof(l), "backend", ms->m->store->be->name);
	const char *fam = o->fam->name;
	if (!strcmp(fam, "policyd_store_keys"))
		metrics_out_u64(o, l, st.keys);
	else if (!strcmp(fam, "policyd_store_bytes"))
		metrics_out_u64(o, l, st.bytes);
	else if (!strcmp(fam, "policyd_store_batches_total"))
		metrics_out_u64(o, l, st.batches);
	else if (!strcmp(fam, "policyd_store_evicted_total")) {
		char l2[128];
		snprintf(l2, sizeof(l2), "%s", l);
		metrics_label(l2, sizeof(l2), "why", "empty");
		metrics_out_u64(o, l2, st.evicted);
		snprintf(l2, sizeof(l2), "%s", l);
		metrics_label(l2, sizeof(l2), "why", "size_cap");
		metrics_out_u64(o, l2, st.evicted_full);
	} else if (!strcmp(fam, "policyd_store_errors_total"))
		metrics_out_u64(o, l, st.errors);
}

static void metrics_c_fallbacks(struct metrics_out *o, void *arg)
{
	/* every store error and every bad request got the fallback answer */
	struct metrics_module_state *ms = arg;
	if (ms->m == NULL || ms->m->srv == NULL)
		return;
	const struct server_stats *s = server_stats(ms->m->srv);
	metrics_out_u64(o, "reason=\"store_error\"", s->store_errors);
	metrics_out_u64(o, "reason=\"bad_request\"", s->bad_requests);
}

static void metrics_c_limit(struct metrics_out *o, void *arg)
{
	const char *fam = o->fam->name;
	if (!strcmp(fam, "policyd_limit_fired_total"))
		metrics_out_u64(o, NULL, limit_stats.fired);
	else if (!strcmp(fam, "policyd_limit_refunded_total"))
		metrics_out_u64(o, NULL, limit_stats.refunded);
	else if (!strcmp(fam, "policyd_limit_settled_total"))
		metrics_out_u64(o, NULL, limit_stats.settled);
	else if (!strcmp(fam, "policyd_limit_abandoned_total"))
		metrics_out_u64(o, NULL, limit_stats.abandoned);
}

static void metrics_c_http(struct metrics_out *o, void *arg)
{
	struct metrics_module_state *ms = arg;
	metrics_out_u64(o, "result=\"ok\"", ms->http_requests);
	metrics_out_u64(o, "result=\"error\"", ms->http_errors);
}

static void metrics_register_builtin(struct metrics_module_state *ms)
{
	static const struct {
		const char *name, *help;
		enum metrics_type type;
		metrics_collect_fn *fn;
	} b[] = {
	    {"policyd_requests_total", "Policy requests answered.", METRICS_COUNTER_T,
	     metrics_c_requests},
	    {"policyd_requests_by_state_total", "Policy requests by protocol_state.",
	     METRICS_COUNTER_T, metrics_collect_states},
	    {"policyd_verdicts_total",
	     "Verdicts sent to Postfix, by action and the rule that decided (rule=\"\": none).",
	     METRICS_COUNTER_T, metrics_collect_verdicts},
	    {"policyd_verdict_parts_total",
	     "Contributions of the checks, by check, rule, action and dry run.", METRICS_COUNTER_T,
	     metrics_collect_parts},
	    {"policyd_bad_requests_total", "Malformed requests (answered with the fallback).",
	     METRICS_COUNTER_T, metrics_c_bad},
	    {"policyd_bad_streams_total", "Connections closed on an unparsable stream.",
	     METRICS_COUNTER_T, metrics_c_fatal},
	    {"policyd_connections_accepted_total", "Policy connections accepted.",
	     METRICS_COUNTER_T, metrics_c_accepted},
	    {"policyd_connections_refused_total", "Policy connections refused (max_connections).",
	     METRICS_COUNTER_T, metrics_c_refused},
	    {"policyd_connections_idle_closed_total", "Policy connections closed by idle_timeout.",
	     METRICS_COUNTER_T, metrics_c_idle},
	    {"policyd_store_request_errors_total",
	     "Requests whose store batch failed (answered with the fallback).", METRICS_COUNTER_T,
	     metrics_c_store_errors},
	    {"policyd_fallbacks_total", "Requests answered with fallback_action, by reason.",
	     METRICS_COUNTER_T, metrics_c_fallbacks},
	    {"policyd_store_keys", "Keys held by the store.", METRICS_GAUGE_T, metrics_c_store},
	    {"policyd_store_bytes", "Approximate bytes of state in the store.", METRICS_GAUGE_T,
	     metrics_c_store},
	    {"policyd_store_batches_total", "Store batches run.", METRICS_COUNTER_T,
	     metrics_c_store},
	    {"policyd_store_evicted_total", "Keys dropped by the store, by why.", METRICS_COUNTER_T,
	     metrics_c_store},
	    {"policyd_store_errors_total", "Store errors.", METRICS_COUNTER_T, metrics_c_store},
	    {"policyd_limit_fired_total", "Rate-limit rules found over their limit.",
	     METRICS_COUNTER_T, metrics_c_limit},
	    {"policyd_limit_refunded_total", "Recipients given back at END-OF-MESSAGE.",
	     METRICS_COUNTER_T, metrics_c_limit},
	    {"policyd_limit_settled_total", "END-OF-MESSAGE settlements.", METRICS_COUNTER_T,
	     metrics_c_limit},
	    {"policyd_limit_abandoned_total", "Transactions that never reached END-OF-MESSAGE.",
	     METRICS_COUNTER_T, metrics_c_limit},
	    {"policyd_http_requests_total", "Requests to this metrics endpoint.", METRICS_COUNTER_T,
	     metrics_c_http},
	};
	for (size_t i = 0; i < sizeof(b) / sizeof(b[0]); i++)
		metrics_register(b[i].name, b[i].help, b[i].type, b[i].fn, ms);
	metrics_histogram_register(&metrics_latency);
}

/* ------------------------------------------------------------ HTTP (MHD) */

static void metrics_mhd_log(void *cls, const char *fmt, va_list ap)
{
	char buf[256];
	vsnprintf(buf, sizeof(buf), fmt, ap);
	size_t n = strlen(buf);
	while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
		buf[--n] = '\0';
	log_warn("metrics: http: %s", buf);
}

static enum MHD_Result metrics_answer(struct MHD_Connection *conn, unsigned code, const char *ctype,
                                      char *body, size_t len, bool owned)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(
	    len, body, owned ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
	if (r == NULL) {
		if (owned)
			free(body);
		return MHD_NO;
	}
	MHD_add_response_header(r, "Content-Type", ctype);
	MHD_add_response_header(r, "Cache-Control", "no-store");
	if (code == MHD_HTTP_METHOD_NOT_ALLOWED)
		MHD_add_response_header(r, "Allow", "GET, HEAD");
	enum MHD_Result rc = MHD_queue_response(conn, code, r);
	MHD_destroy_response(r);
	return rc;
}

static enum MHD_Result metrics_handler(void *cls, struct MHD_Connection *conn, const char *url,
                                       const char *method, const char *version,
                                       const char *upload_data, size_t *upload_data_size,
                                       void **con_cls)
{
	struct metrics_module_state *ms = cls;
	static char nf[] = "not found: try /metrics\n";
	static char na[] = "method not allowed: GET or HEAD\n";
	static char root[] = "policyd: metrics at /metrics\n";
	static char oom[] = "out of memory\n";

	if (*con_cls == NULL) { /* first call: headers only */
		*con_cls = ms;
		return MHD_YES;
	}
	if (*upload_data_size) { /* a body we do not want */
		*upload_data_size = 0;
		return MHD_YES;
	}
	if (strcmp(method, "GET") && strcmp(method, "HEAD")) {
		ms->http_errors++;
		return metrics_answer(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain", na,
		                      strlen(na), false);
	}
	if (!strcmp(url, "/")) {
		ms->http_requests++;
		return metrics_answer(conn, MHD_HTTP_OK, "text/plain", root, strlen(root), false);
	}
	if (strcmp(url, "/metrics")) {
		ms->http_errors++;
		return metrics_answer(conn, MHD_HTTP_NOT_FOUND, "text/plain", nf, strlen(nf),
		                      false);
	}
	ms->http_requests++;
	size_t len = 0;
	char *text = metrics_render(&len);
	if (text == NULL)
		return metrics_answer(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "text/plain", oom,
		                      strlen(oom), false);
	return metrics_answer(conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", text,
	                      len, true);
}

static void metrics_arm_timer(struct metrics_module_state *ms)
{
	MHD_UNSIGNED_LONG_LONG to = 0;
	ev_timer_stop(ms->m->loop, &ms->tm);
	if (MHD_get_timeout(ms->mhd, &to) == MHD_YES) {
		ev_timer_set(&ms->tm, (double)to / 1000.0, 0);
		ev_timer_start(ms->m->loop, &ms->tm);
	}
}

static void metrics_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct metrics_module_state *ms = w->data;
	MHD_run(ms->mhd);
	metrics_arm_timer(ms);
}

static void metrics_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct metrics_module_state *ms = w->data;
	MHD_run(ms->mhd);
	metrics_arm_timer(ms);
}

/* Bind endpoint "inet:HOST:PORT" (numeric HOST; brackets for v6). */
static int metrics_listen(const char *ep, bool allow_remote, char *err, size_t errsz)
{
	char host[80], port[16];
	int fam;
	if (server_parse_endpoint(ep, &fam, host, sizeof(host), port, sizeof(port), err, errsz) < 0)
		return -1;
	if (fam != AF_INET && fam != AF_INET6) {
		snprintf(err, errsz, "metrics = %s: an inet: endpoint is needed", ep);
		return -1;
	}
	struct addrinfo hints, *res = NULL;
	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | (strcmp(host, "localhost") ? AI_NUMERICHOST : 0);
	int gai = getaddrinfo(host, port, &hints, &res);
	if (gai != 0 || res == NULL) {
		snprintf(err, errsz, "metrics = %s: %s", ep, gai_strerror(gai));
		return -1;
	}
	bool loop4 = res->ai_family == AF_INET &&
	             (ntohl(((struct sockaddr_in *)res->ai_addr)->sin_addr.s_addr) >> 24) == 127;
	bool loop6 = res->ai_family == AF_INET6 &&
	             IN6_IS_ADDR_LOOPBACK(&((struct sockaddr_in6 *)res->ai_addr)->sin6_addr);
	if (!loop4 && !loop6 && !allow_remote) {
		snprintf(err, errsz,
		         "metrics = %s is not a loopback address (set metrics_allow_remote = yes)",
		         ep);
		freeaddrinfo(res);
		return -1;
	}
	int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	int one = 1;
	if (fd < 0) {
		snprintf(err, errsz, "metrics: socket: %s", strerror(errno));
		freeaddrinfo(res);
		return -1;
	}
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (res->ai_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, 64) < 0) {
		snprintf(err, errsz, "metrics = %s: %s", ep, strerror(errno));
		close(fd);
		freeaddrinfo(res);
		return -1;
	}
	freeaddrinfo(res);
	return fd;
}

static int metrics_start(struct module_ctx *m, char *err, size_t errsz)
{
	struct metrics_module_state *ms = &metrics_st;
	ms->m = m;
	metrics_register_builtin(ms);
	if (m->cfg->metrics == NULL)
		return 0;
	if (!MHD_is_feature_supported(MHD_FEATURE_EPOLL)) {
		snprintf(err, errsz, "this libmicrohttpd has no epoll support");
		return -1;
	}
	ms->lfd = metrics_listen(m->cfg->metrics, m->cfg->metrics_allow_remote, err, errsz);
	if (ms->lfd < 0)
		return -1;
	ms->mhd = MHD_start_daemon(
	    MHD_USE_EPOLL | MHD_USE_ERROR_LOG, 0, NULL, NULL, metrics_handler, ms,
	    MHD_OPTION_EXTERNAL_LOGGER, metrics_mhd_log, ms, MHD_OPTION_LISTEN_SOCKET, ms->lfd,
	    MHD_OPTION_CONNECTION_LIMIT, (unsigned)METRICS_HTTP_CONNS,
	    MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)METRICS_HTTP_TIMEOUT_S,
	    MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)32768, MHD_OPTION_END);
	if (ms->mhd == NULL) {
		snprintf(err, errsz, "metrics = %s: libmicrohttpd did not start", m->cfg->metrics);
		close(ms->lfd);
		ms->lfd = -1;
		return -1;
	}
	ms->lfd = -1; /* MHD owns and closes it now */
	const union MHD_DaemonInfo *di = MHD_get_daemon_info(ms->mhd, MHD_DAEMON_INFO_EPOLL_FD);
	if (di == NULL) {
		snprintf(err, errsz, "metrics: no epoll fd from libmicrohttpd");
		MHD_stop_daemon(ms->mhd);
		ms->mhd = NULL;
		return -1;
	}
	ev_io_init(&ms->io, metrics_io_cb, di->epoll_fd, EV_READ);
	ms->io.data = ms;
	ev_init(&ms->tm, metrics_timer_cb);
	ms->tm.data = ms;
	ev_io_start(m->loop, &ms->io);
	metrics_arm_timer(ms);
	snprintf(ms->endpoint, sizeof(ms->endpoint), "%s", m->cfg->metrics);
	log_info("event=listen endpoint=%s what=metrics path=/metrics", ms->endpoint);
	return 0;
}

static void metrics_reload(struct module_ctx *m, const struct config *cfg)
{
	const char *now = cfg->metrics ? cfg->metrics : "";
	if (strcmp(now, metrics_st.endpoint))
		log_warn("metrics changed in %s: restart policyd to apply it (still serving %s)",
		         cfg->path, metrics_st.endpoint[0] ? metrics_st.endpoint : "nothing");
}

static void metrics_stop(struct module_ctx *m)
{
	struct metrics_module_state *ms = &metrics_st;
	if (ms->mhd) {
		ev_io_stop(m->loop, &ms->io);
		ev_timer_stop(m->loop, &ms->tm);
		MHD_stop_daemon(ms->mhd);
		ms->mhd = NULL;
	}
	if (ms->lfd >= 0) {
		close(ms->lfd);
		ms->lfd = -1;
	}
	metrics_unregister(ms);
	ms->m = NULL;
	ms->endpoint[0] = '\0';
}

const struct module metrics_module = {"metrics", metrics_start, metrics_reload, metrics_stop};
