/*
 * policyd/replay.c - owns replay mode: requests read from a file (the
 * Postfix policy format, blank-line separated, each with an extra
 * `timestamp=<unix seconds>` attribute, fractions allowed) run through the
 * whole pipeline with a virtual clock, the embedded store in memory (no
 * state_dir, no journal) and DNS answers from an optional fixture; one
 * JSON line per request:
 *   {"timestamp":..., "principal":..., "verdict":"DUNNO", "rule":...,
 *    "score":N, "components":["...", ...], "flagged":false}
 * A request that cannot be used prints {"timestamp":null,"error":...} so
 * that line N of the output is request N of the input.
 *
 * No sockets, no wall clock: the same file and config give the same
 * output.  Flags are recorded (the "flagged" member), not handed to the
 * flag module (whose records and hooks use the wall clock); the lockout
 * hook never runs.  Transactions are tracked per `instance` as Postfix's
 * connections would (at most REPLAY_MAX_TXN open at once: beyond, the
 * table starts afresh, which only matters to limits settled at
 * END-OF-MESSAGE).
 *
 * With a maillog (--maillog), its lines go through the NDR tracker of the
 * [ndr] section (its patterns) on the same virtual clock: every line
 * stamped at or before a request is fed before it, and the final outcomes
 * the tracker charges to principals reach their anomaly profiles (the
 * bounce ratio) as in the daemon; spikes and holds are not acted upon.
 *
 * Entry point: replay_run().
 */
#include "replay.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "anomaly.h"
#include "cache/store.h"
#include "dns.h"
#include "flag.h"
#include "log.h"
#include "ndr.h"
#include "pipeline.h"
#include "proto/request.h"

#define REPLAY_MAX_TXN   4096
#define REPLAY_TXN_SLOTS 8192 /* power of two, twice REPLAY_MAX_TXN */
#define REPLAY_BUF       (1u << 20)

struct replay_txn {
	char instance[TXN_INSTANCE_MAX];
	struct txn txn;
	bool live;
};

struct replay {
	const struct config *cfg;
	struct store *store;
	FILE *out;
	struct pipeline_ctx *x;
	struct replay_txn *txn;
	size_t ntxn;
	unsigned long long requests, bad, flags, txn_cleared;
	unsigned long long verdicts[ACT_REJECT + 1];
	int64_t last_tick;
	/* --maillog */
	FILE *log;
	struct ndr *nd;
	char *line; /* the next log line, not fed yet */
	size_t linecap;
	ssize_t linelen; /* -1: none (end of the log) */
	int64_t line_us;
	int64_t ndr_tick;
	unsigned long long log_lines, log_bad_stamps;
};

static unsigned long long replay_flags;

static void replay_flag(const struct flag_request *r)
{
	(void)r;
	replay_flags++;
}

/* The transaction of `instance`: an open-addressing table; when it is
 * full (transactions that never reach END-OF-MESSAGE) it starts afresh. */
static size_t replay_txn_slot(const struct replay *R, const char *inst)
{
	uint64_t h = txn_hash(inst);
	size_t mask = REPLAY_TXN_SLOTS - 1;
	for (size_t i = h & mask;; i = (i + 1) & mask)
		if (!R->txn[i].live || !strcmp(R->txn[i].instance, inst))
			return i;
}

static void replay_txn_clear(struct replay *R)
{
	for (size_t i = 0; i < REPLAY_TXN_SLOTS; i++)
		if (R->txn[i].live) {
			txn_reset(&R->txn[i].txn);
			R->txn[i].live = false;
		}
	R->ntxn = 0;
}

static struct txn *replay_txn_get(struct replay *R, const char *inst)
{
	if (inst[0] == '\0')
		inst = "-";
	size_t i = replay_txn_slot(R, inst);
	struct replay_txn *t = &R->txn[i];
	if (t->live)
		return &t->txn;
	if (R->ntxn == REPLAY_MAX_TXN) {
		R->txn_cleared++;
		replay_txn_clear(R);
		i = replay_txn_slot(R, inst);
		t = &R->txn[i];
	}
	t->live = true;
	R->ntxn++;
	snprintf(t->instance, sizeof(t->instance), "%s", inst);
	txn_reset(&t->txn);
	return &t->txn;
}

/* END-OF-MESSAGE: the transaction is over (backward-shift deletion). */
static void replay_txn_done(struct replay *R, const char *inst)
{
	size_t mask = REPLAY_TXN_SLOTS - 1;
	size_t i = replay_txn_slot(R, inst);
	if (!R->txn[i].live)
		return;
	txn_reset(&R->txn[i].txn);
	R->txn[i].live = false;
	R->ntxn--;
	for (size_t j = (i + 1) & mask; R->txn[j].live; j = (j + 1) & mask) {
		size_t home = txn_hash(R->txn[j].instance) & mask;
		/* can j move to the hole at i? (home not cyclically in (i, j]) */
		if ((j > i && (home <= i || home > j)) || (j < i && home <= i && home > j)) {
			struct replay_txn tmp = R->txn[i];
			R->txn[i] = R->txn[j];
			R->txn[j] = tmp; /* the hole moves to j, keeping its buffers */
			i = j;
		}
	}
}

static void replay_error(struct replay *R, const char *msg)
{
	R->bad++;
	json_t *o = json_pack("{s:n,s:s}", "timestamp", "error", msg);
	char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
	if (s) {
		fputs(s, R->out);
		fputc('\n', R->out);
	}
	free(s);
	json_decref(o);
}

static void replay_print(struct replay *R, double ts)
{
	struct pipeline_ctx *x = R->x;
	const struct anomaly_result *a = anomaly_last();
	bool scored = a->x == x;
	const struct verdict_part *w = x->v.winner >= 0 ? &x->v.part[x->v.winner] : NULL;
	json_t *comps = json_array();
	char buf[160];

	for (size_t i = 0; scored && i < a->n; i++) {
		snprintf(buf, sizeof(buf), "%s [+%u]", a->c[i].text, a->c[i].points);
		json_array_append_new(comps, json_string(buf));
	}
	json_t *o = json_object();
	if (ts == (double)(int64_t)ts)
		json_object_set_new(o, "timestamp", json_integer((json_int_t)ts));
	else
		json_object_set_new(o, "timestamp", json_real(ts));
	json_object_set_new(o, "principal", json_string(x->principal));
	json_object_set_new(o, "verdict", json_string(verdict_action_word(x->v.action)));
	json_object_set_new(o, "rule", w ? json_string(w->rule) : json_null());
	json_object_set_new(o, "score", scored ? json_integer(a->score) : json_null());
	json_object_set_new(o, "components", comps);
	json_object_set_new(o, "flagged", json_boolean(scored && a->flag_raised));
	char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(14));
	if (s) {
		fputs(s, R->out);
		fputc('\n', R->out);
	}
	free(s);
	json_decref(o);
	R->verdicts[x->v.action]++;
	R->flags += scored && a->flag_raised;
}

struct replay_call {
	struct replay *R;
	double ts;
	bool done;
};

static void replay_done(void *arg, enum store_status st, const struct store_result *res, size_t n)
{
	struct replay_call *c = arg;
	struct pipeline_ctx *x = c->R->x;
	c->done = true;
	x->st = st;
	if (st == STORE_OK && n == x->nops && n)
		memcpy(x->res, res, n * sizeof(*res));
	else if (st == STORE_OK && n != x->nops)
		x->st = STORE_EINTERNAL;
	if (x->st != STORE_OK) {
		replay_error(c->R, "store error");
		return;
	}
	/* GET results are valid only here: finish now */
	pipeline_finish(x);
	replay_print(c->R, c->ts);
}

static void replay_follow_done(void *arg, enum store_status st, const struct store_result *res,
                               size_t n)
{
	(void)res;
	(void)n;
	if (st != STORE_OK)
		((struct replay *)arg)->bad++;
}

/* "2026-12-07T12:00:00[.ffffff](Z|+00:00) ..." -> µs, or -1 */
static int64_t replay_stamp(const char *l)
{
	struct tm tm;
	memset(&tm, 0, sizeof(tm));
	char *end = strptime(l, "%Y-%m-%dT%H:%M:%S", &tm);
	if (end == NULL)
		return -1;
	int64_t us = 0;
	if (*end == '.') {
		int64_t scale = 100000;
		for (end++; *end >= '0' && *end <= '9'; end++, scale /= 10)
			us += scale * (*end - '0');
	}
	if (*end != 'Z' && strncmp(end, "+00:00", 6))
		return -1; /* only UTC stamps */
	time_t t = timegm(&tm);
	return t < 0 ? -1 : (int64_t)t * 1000000 + us;
}

static void replay_next_line(struct replay *R)
{
	for (;;) {
		R->linelen = getline(&R->line, &R->linecap, R->log);
		if (R->linelen < 0)
			return;
		while (R->linelen > 0 &&
		       (R->line[R->linelen - 1] == '\n' || R->line[R->linelen - 1] == '\r'))
			R->line[--R->linelen] = '\0';
		R->line_us = replay_stamp(R->line);
		if (R->line_us >= 0)
			return;
		R->log_bad_stamps++;
	}
}

/* Feed the log up to now. */
static void replay_feed_log(struct replay *R, int64_t now)
{
	bool fed = false;
	while (R->linelen >= 0 && R->line_us <= now) {
		ndr_feed_line(R->nd, R->line, (size_t)R->linelen, R->line_us);
		R->log_lines++;
		fed = true;
		replay_next_line(R);
	}
	if (now - R->ndr_tick >= 1000000) {
		ndr_tick(R->nd, now);
		R->ndr_tick = now;
	}
	if (fed)
		anomaly_outcomes_flush();
}

static void replay_outcome(void *arg, const char *principal, enum ndr_kind kind, bool bounced,
                           int64_t t_us)
{
	(void)arg;
	if (kind == NDR_K_SASL || kind == NDR_K_SENDER || kind == NDR_K_CLIENT)
		anomaly_note_outcome(principal, bounced, t_us);
}

static void replay_one(struct replay *R, const struct proto_request *q)
{
	const char *tsv = NULL;
	for (size_t i = 0; i < q->nextra; i++)
		if (q->extra[i].name.len == 9 && !memcmp(q->extra[i].name.p, "timestamp", 9))
			tsv = q->extra[i].value.p;
	char *end = NULL;
	errno = 0;
	double ts = tsv ? strtod(tsv, &end) : 0;
	if (tsv == NULL || errno || end == tsv || *end || !(ts >= 0 && ts < 4e9)) {
		replay_error(R, tsv ? "bad timestamp" : "no timestamp attribute");
		return;
	}
	int64_t now = (int64_t)(ts * 1e6);
	if (R->nd)
		replay_feed_log(R, now);
	/* virtual time: the idle rate is plenty (ticks only free memory and write
	 * the journal; a busy daemon ticks every STORE_TICK_MS to keep each short) */
	if (now - R->last_tick >= STORE_IDLE_TICK_MS * 1000) {
		R->store->be->tick(R->store, now);
		R->last_tick = now;
	}
	const char *inst = proto_get(q, PROTO_A_INSTANCE);
	struct txn *t = replay_txn_get(R, inst);
	struct pipeline_ctx *x = R->x;
	anomaly_reset_last();
	pipeline_begin(x, R->cfg, q, t, now);
	pipeline_prepare(x);
	struct replay_call c = {.R = R, .ts = ts};
	if (x->nops == 0)
		replay_done(&c, STORE_OK, NULL, 0);
	else if (store_batch(R->store, x->ops, x->nops, now, replay_done, &c) != 0 || !c.done) {
		if (!c.done)
			replay_error(R, "store did not answer");
		return;
	}
	if (x->nfollow)
		store_batch(R->store, x->follow, x->nfollow, now, replay_follow_done, R);
	if (q->state == PROTO_STATE_EOM && inst[0])
		replay_txn_done(R, inst);
}

int replay_run(const char *path, const char *dns_fixture, const char *maillog,
               const struct config *cfg, FILE *out)
{
	struct replay R;
	struct classify_db *db = NULL;
	char *pattern_names[NDR_MAX_LIST] = {NULL};
	size_t npattern_names = 0;
	char err[512];
	FILE *in = strcmp(path, "-") ? fopen(path, "r") : stdin;
	int rc = 0;

	if (in == NULL) {
		fprintf(stderr, "policyd: --replay %s: %s\n", path, strerror(errno));
		return 1;
	}
	memset(&R, 0, sizeof(R));
	R.cfg = cfg;
	R.out = out;
	if (dns_fixture && dns_fixture_load(dns_fixture, err, sizeof(err)) < 0) {
		fprintf(stderr, "policyd: --dns-fixture: %s\n", err);
		if (in != stdin)
			fclose(in);
		return 1;
	}
	struct store_memory_opts mo = {
	    .state_dir = NULL, .max_keys = cfg->max_keys, .flush_ms = 1000};
	R.store = store_memory_open(&mo, 0, err, sizeof(err));
	R.x = malloc(sizeof(*R.x));
	R.txn = calloc(REPLAY_TXN_SLOTS, sizeof(*R.txn));
	for (size_t i = 0; R.txn && i < REPLAY_TXN_SLOTS; i++)
		txn_init(&R.txn[i].txn);
	size_t max_extra = cfg->max_attrs ? cfg->max_attrs : PROTO_DEFAULT_MAX_ATTRS;
	struct proto_kv *extra = calloc(max_extra, sizeof(*extra));
	char *buf = malloc(REPLAY_BUF);
	if (R.store == NULL || R.x == NULL || R.txn == NULL || extra == NULL || buf == NULL) {
		fprintf(stderr, "policyd: replay: %s\n", R.store ? "out of memory" : err);
		rc = 1;
		goto out;
	}
	if (maillog) {
		const struct ndr_conf *nc = config_section_get(cfg, &ndr_config_section);
		if (nc == NULL || !config_section_present(cfg, &ndr_config_section)) {
			fprintf(stderr,
			        "policyd: --maillog needs an [ndr] section (its patterns)\n");
			rc = 1;
			goto out;
		}
		if ((R.log = fopen(maillog, "r")) == NULL) {
			fprintf(stderr, "policyd: --maillog %s: %s\n", maillog, strerror(errno));
			rc = 1;
			goto out;
		}
		db = ndr_load_patterns(nc, pattern_names, &npattern_names, err, sizeof(err));
		struct ndr_actions act = {.outcome = replay_outcome};
		if (db == NULL || (R.nd = ndr_new(nc, cfg, db, &act)) == NULL) {
			fprintf(stderr, "policyd: --maillog: %s\n", db ? "out of memory" : err);
			rc = 1;
			goto out;
		}
		anomaly_outcomes_attach(R.store, cfg, NULL);
		replay_next_line(&R);
	}
	anomaly_set_flag_fn(replay_flag);
	anomaly_set_always_texts(true);
	anomaly_reset_last();

	struct proto_limits lim;
	proto_limits_default(&lim);
	if (cfg->max_request)
		lim.max_request = cfg->max_request < REPLAY_BUF ? cfg->max_request : REPLAY_BUF;
	if (cfg->max_line)
		lim.max_line = cfg->max_line;
	lim.max_attrs = max_extra;
	struct proto_parser p;
	proto_parser_init(&p, &lim);
	size_t len = 0;
	bool eof = false;
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0); /* only for the summary line */
	for (;;) {
		if (!eof && len < REPLAY_BUF) {
			size_t k = fread(buf + len, 1, REPLAY_BUF - len, in);
			len += k;
			if (k == 0)
				eof = true;
		}
		/* a last request without its empty line */
		if (eof && len > 0 && (len < 2 || memcmp(buf + len - 2, "\n\n", 2)) &&
		    len + 2 <= REPLAY_BUF) {
			if (buf[len - 1] != '\n')
				buf[len++] = '\n';
			buf[len++] = '\n';
		}
		size_t off = 0;
		for (;;) {
			/* blank lines between requests are not requests */
			while (off < len && (buf[off] == '\n' || buf[off] == '\r'))
				off++;
			if (off == len)
				break;
			struct proto_request q;
			struct proto_diag d;
			size_t used = 0;
			memset(&q, 0, sizeof(q));
			q.extra = extra;
			q.extra_cap = max_extra;
			enum proto_status st = proto_parse(&p, buf + off, len - off, &q, &used, &d);
			if (st == PROTO_MORE)
				break;
			if (st == PROTO_FATAL) {
				replay_error(&R, proto_error_str(d.code));
				off = len; /* cannot resynchronise in this chunk */
				break;
			}
			R.requests++;
			if (st == PROTO_BAD)
				replay_error(&R, proto_error_str(d.code));
			else
				replay_one(&R, &q);
			off += used;
		}
		memmove(buf, buf + off, len - off);
		len -= off;
		if (eof && (len == 0 || off == 0))
			break;
	}
	if (ferror(in)) {
		fprintf(stderr, "policyd: --replay %s: read error\n", path);
		rc = 1;
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	fprintf(stderr,
	        "policyd: replay: %llu requests (%llu unusable) in %.2fs; DUNNO %llu WARN %llu "
	        "HOLD %llu DEFER %llu REJECT %llu; flags %llu%s\n",
	        R.requests, R.bad, secs, R.verdicts[ACT_DUNNO], R.verdicts[ACT_WARN],
	        R.verdicts[ACT_HOLD], R.verdicts[ACT_DEFER], R.verdicts[ACT_REJECT], R.flags,
	        R.txn_cleared ? "; transaction table restarted (no END-OF-MESSAGE?)" : "");
	if (R.nd) {
		const struct ndr_counters *nc = ndr_counters(R.nd);
		fprintf(stderr,
		        "policyd: replay: maillog: %llu lines (%llu without a UTC stamp), %llu "
		        "outcomes attributed; profiles learned %llu outcomes (%llu without a "
		        "profile, %llu dropped)\n",
		        R.log_lines, R.log_bad_stamps, (unsigned long long)nc->attributed,
		        anomaly_stats.outcomes_applied, anomaly_stats.outcomes_no_profile,
		        anomaly_stats.outcomes_dropped);
	}
out:
	if (R.nd) {
		anomaly_outcomes_detach();
		ndr_free(R.nd);
	}
	if (db)
		classify_db_free(db);
	for (size_t i = 0; i < npattern_names; i++)
		free(pattern_names[i]);
	if (R.log)
		fclose(R.log);
	free(R.line);
	anomaly_set_flag_fn(NULL);
	anomaly_set_always_texts(false);
	for (size_t i = 0; R.txn && i < REPLAY_TXN_SLOTS; i++)
		txn_free(&R.txn[i].txn);
	free(R.txn);
	free(R.x);
	free(extra);
	free(buf);
	if (R.store)
		R.store->be->close(R.store);
	dns_fixture_free();
	if (in != stdin)
		fclose(in);
	if (fflush(out) != 0)
		rc = 1;
	return rc;
}
