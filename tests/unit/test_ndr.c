/*
 * tests/unit/test_ndr.c - the NDR tracker (policyd/ndr.c) on synthetic
 * log streams with a fake clock: the Wilson bound, windows sliding out,
 * attribution (sasl, trusted sender, policy hook, pickup, own bounces,
 * forwarding, content-filter hand-off, requeue), deferrals counted once
 * and expiries, the bound on queue ids, small samples that are no spike,
 * spikes that start and end, baselines, receiver-side noise, blocklist
 * alerts, the pickup limit, inbound NDRs, bad input, the state file, the
 * JSON view, and the final outcomes reported for the anomaly profile.  Patterns:
 * data/ndr-patterns.conf ($POLICYD_SOURCE_ROOT).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "policyd/config.h"
#include "policyd/ndr.h"

#define T0   (1795000000LL * 1000000) /* µs */
#define MIN  (60LL * 1000000)
#define HOUR (3600LL * 1000000)

struct rec {
	int spikes_start[5], spikes_end[5];
	char last_spike[256], last_what[32], last_principal[256];
	int blocklists;
	char bl_list[64], bl_ip[64];
	unsigned long long bl_suppressed;
	int holds;
	char last_hold[64];
	int pickup_over;
	int outcomes, outcomes_bounced; /* final outcomes for the anomaly profile */
	char outcome_principal[256];
	enum ndr_kind outcome_kind;
};

struct env {
	struct config *cfg;
	struct ndr_conf conf;
	struct classify_db *db;
	struct ndr *n;
	struct rec r;
	char path[64];
	int64_t now;
};

static void on_spike(void *arg, const struct ndr_spike *s)
{
	struct rec *r = arg;
	if (s->start)
		r->spikes_start[s->scope]++;
	else
		r->spikes_end[s->scope]++;
	snprintf(r->last_spike, sizeof(r->last_spike), "%s", s->name);
	snprintf(r->last_what, sizeof(r->last_what), "%s", s->what ? s->what : "");
	if (s->scope == NDR_S_PRINCIPAL && s->start)
		snprintf(r->last_principal, sizeof(r->last_principal), "%s", s->name);
}

static void on_blocklist(void *arg, const char *list, const char *ip, const char *principal,
                         uint64_t suppressed, const char *evidence)
{
	struct rec *r = arg;
	r->blocklists++;
	snprintf(r->bl_list, sizeof(r->bl_list), "%s", list);
	snprintf(r->bl_ip, sizeof(r->bl_ip), "%s", ip);
	r->bl_suppressed = suppressed;
	assert_non_null(strstr(evidence, "blocked using"));
}

static void on_hold(void *arg, const char *qid, const char *principal, const char *why)
{
	struct rec *r = arg;
	r->holds++;
	snprintf(r->last_hold, sizeof(r->last_hold), "%s", qid);
}

static void on_pickup_over(void *arg, const char *key, const char *qid)
{
	struct rec *r = arg;
	r->pickup_over++;
}

static void on_outcome(void *arg, const char *principal, enum ndr_kind kind, bool bounced,
                       int64_t t_us)
{
	struct rec *r = arg;
	r->outcomes++;
	r->outcomes_bounced += bounced;
	r->outcome_kind = kind;
	snprintf(r->outcome_principal, sizeof(r->outcome_principal), "%s", principal);
	assert_true(t_us > 0);
}

static struct classify_db *load_db(void)
{
	const char *root = getenv("POLICYD_SOURCE_ROOT");
	char path[4096];
	snprintf(path, sizeof(path), "%s/data/ndr-patterns.conf", root ? root : "..");
	FILE *f = fopen(path, "rb");
	if (f == NULL)
		fail_msg("cannot read %s (set POLICYD_SOURCE_ROOT)", path);
	static char buf[1 << 20];
	size_t len = fread(buf, 1, sizeof(buf), f);
	fclose(f);
	struct classify_source src = {"ndr-patterns.conf", buf, len};
	struct classify_diag d;
	struct classify_db *db = classify_db_load(&src, 1, &d);
	if (db == NULL)
		fail_msg("patterns: line %zu: %s", d.line, d.msg);
	return db;
}

static void env_tracker(struct env *e)
{
	struct ndr_actions act = {.spike = on_spike,
	                          .blocklist = on_blocklist,
	                          .hold = on_hold,
	                          .pickup_over = on_pickup_over,
	                          .outcome = on_outcome,
	                          .arg = &e->r};
	ndr_free(e->n);
	e->n = ndr_new(&e->conf, e->cfg, e->db, &act);
	assert_non_null(e->n);
}

static int setup(void **state)
{
	struct env *e = calloc(1, sizeof(*e));
	char err[512];
	snprintf(e->path, sizeof(e->path), "/tmp/policyd-test-ndr-XXXXXX");
	int fd = mkstemp(e->path);
	assert_true(fd >= 0);
	FILE *fp = fdopen(fd, "w");
	fprintf(fp, "[server]\nstate_dir =\nlog = stderr\ntrusted_networks = 10.0.0.0/8\n");
	fclose(fp);
	e->cfg = config_load(e->path, err, sizeof(err));
	if (e->cfg == NULL)
		fail_msg("config: %s", err);
	ndr_conf_defaults(&e->conf);
	e->conf.global_min_count = 1000000; /* tests of the global spike set it */
	e->db = load_db();
	e->now = T0;
	env_tracker(e);
	*state = e;
	return 0;
}

static int teardown(void **state)
{
	struct env *e = *state;
	ndr_free(e->n);
	classify_db_free(e->db);
	ndr_config_section.free(&e->conf);
	config_free(e->cfg);
	unlink(e->path);
	free(e);
	return 0;
}

/* A log line with a stamp far in the past: the tracker then uses the clock. */
static void feedf(struct env *e, int64_t t, const char *prog, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void feedf(struct env *e, int64_t t, const char *prog, const char *fmt, ...)
{
	char line[4096];
	va_list ap;
	int n = snprintf(line, sizeof(line), "2020-01-01T00:00:00Z out1 postfix/%s[4242]: ", prog);
	va_start(ap, fmt);
	n += vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
	va_end(ap);
	ndr_feed_line(e->n, line, (size_t)n, t);
}

static void qidof(char *out, unsigned i)
{
	sprintf(out, "%010X", 0xA0000000u + i);
}

static void client(struct env *e, int64_t t, const char *qid, const char *sasl)
{
	if (sasl)
		feedf(e, t, "submission/smtpd",
		      "%s: client=mua.example.net[192.0.2.55], sasl_method=PLAIN, sasl_username=%s",
		      qid, sasl);
	else
		feedf(e, t, "smtpd", "%s: client=mx.example.org[203.0.113.5]", qid);
}

#define R_UNKNOWN                                                                                  \
	"host mx.example.net[203.0.113.9] said: 550 5.1.1 <x@example.net>: Recipient address "     \
	"rejected: User unknown (in reply to RCPT TO command)"
#define R_SENT "250 2.0.0 Ok: queued as 4F1A2B3C4D"
#define R_GREY                                                                                     \
	"host mx.example.net[203.0.113.9] said: 450 4.7.1 Greylisted, please try again later (in " \
	"reply to RCPT TO command)"
#define R_REPUTATION                                                                               \
	"host mta7.am0.yahoodns.net[203.0.113.7] said: 421 4.7.0 [TSS04] Messages from "           \
	"198.51.100.23 temporarily deferred due to unexpected volume or user complaints - "        \
	"4.16.55.1; "                                                                              \
	"see https://postmaster.yahooinc.com/error-codes (in reply to MAIL FROM command)"
#define R_SPAMHAUS(ip)                                                                             \
	"host mx.example.net[203.0.113.9] said: 554 5.7.1 Service unavailable; Client host [" ip   \
	"] blocked using zen.spamhaus.org; https://www.spamhaus.org/query/ip/" ip                  \
	" (in reply to RCPT TO command)"

static void deliver(struct env *e, int64_t t, const char *qid, const char *to, const char *status,
                    const char *dsn, const char *reply)
{
	feedf(e, t, "smtp",
	      "%s: to=<%s>, relay=mx.example.net[203.0.113.9]:25, delay=1.2, delays=0.1/0/0.5/0.6, "
	      "dsn=%s, status=%s (%s)",
	      qid, to, dsn, status, reply);
}

static struct ndr_window_sums sums(struct env *e, const char *p, bool lng)
{
	struct ndr_window_sums s;
	if (!ndr_principal_sums(e->n, p, lng, e->now, &s))
		memset(&s, 0xff, sizeof(s)); /* unknown: nothing matches */
	return s;
}

/* ------------------------------------------------------------ tests */

static void test_wilson(void **state)
{
	(void)state;
	assert_true(ndr_wilson_lower(0, 0, 1.96) == 0);
	assert_true(ndr_wilson_lower(0, 1, 1.96) == 0);
	double b = ndr_wilson_lower(1, 2, 1.96);
	assert_true(b > 0.094 && b < 0.095); /* anomaly-notes s.6: 0.09 */
	b = ndr_wilson_lower(10, 10, 1.96);
	assert_true(b > 0.72 && b < 0.73);
	b = ndr_wilson_lower(50, 100, 1.96);
	assert_true(b > 0.40 && b < 0.41);
	/* more evidence, the same ratio: a higher bound */
	assert_true(ndr_wilson_lower(30, 100, 1.96) > ndr_wilson_lower(3, 10, 1.96));
	assert_true(ndr_wilson_lower(5, 3, 1.96) <= 1); /* k > n is clamped */
	assert_true(ndr_class_indicts(CLASSIFY_USER_UNKNOWN));
	assert_false(ndr_class_indicts(CLASSIFY_GREYLISTED));
	assert_false(ndr_class_indicts(CLASSIFY_CONNECTION_ERROR));
}

static void test_attribution_sasl(void **state)
{
	struct env *e = *state;
	client(e, e->now, "9A2C71E0F3", "Alice");
	feedf(e, e->now, "qmgr",
	      "9A2C71E0F3: from=<alice@example.com>, size=1200, nrcpt=2 (queue active)");
	deliver(e, e->now, "9A2C71E0F3", "a@example.net", "sent", "2.0.0", R_SENT);
	deliver(e, e->now, "9A2C71E0F3", "b@example.net", "bounced", "5.1.1", R_UNKNOWN);
	struct ndr_window_sums s = sums(e, "alice", false);
	assert_int_equal(s.n, 2);
	assert_int_equal(s.sent, 1);
	assert_int_equal(s.bounced, 1);
	assert_int_equal(s.bad_perm, 1);
	s = sums(e, "alice", true);
	assert_int_equal(s.n, 2);
	/* both are final outcomes for alice's profile, one a bounce */
	assert_int_equal(e->r.outcomes, 2);
	assert_int_equal(e->r.outcomes_bounced, 1);
	assert_string_equal(e->r.outcome_principal, "alice");
	assert_int_equal(e->r.outcome_kind, NDR_K_SASL);
	const struct ndr_counters *c = ndr_counters(e->n);
	assert_int_equal(c->attributed, 2);
	assert_int_equal(c->by_class[CLASSIFY_USER_UNKNOWN], 1);
	/* removed: the queue id is forgotten */
	assert_int_equal(ndr_queue_ids(e->n), 1);
	feedf(e, e->now, "qmgr", "9A2C71E0F3: removed");
	assert_int_equal(ndr_queue_ids(e->n), 0);
}

static void test_attribution_trusted_policy_pickup(void **state)
{
	struct env *e = *state;
	/* trusted network: the sender is the principal, known from qmgr */
	feedf(e, e->now, "smtpd", "0A0000000A: client=web1[10.1.2.3]");
	feedf(e, e->now, "qmgr",
	      "0A0000000A: from=<Www@Example.COM>, size=10, nrcpt=1 (queue active)");
	deliver(e, e->now, "0A0000000A", "x@example.net", "sent", "2.0.0", R_SENT);
	assert_int_equal(sums(e, "www@example.com", false).sent, 1);

	/* the policy hook wins over the log */
	ndr_note_queue_id(e->n, "0B0000000B", "bob", NDR_K_SASL, e->now);
	client(e, e->now, "0B0000000B", "mallory");
	deliver(e, e->now, "0B0000000B", "x@example.net", "sent", "2.0.0", R_SENT);
	assert_int_equal(sums(e, "bob", false).sent, 1);
	assert_int_equal(ndr_principals(e->n), 2);

	/* pickup: the sender, or uid:N for a null sender */
	feedf(e, e->now, "pickup", "0C0000000C: uid=33 from=<form@example.com>");
	deliver(e, e->now, "0C0000000C", "y@example.net", "bounced", "5.1.1", R_UNKNOWN);
	assert_int_equal(sums(e, "form@example.com", false).bounced, 1);
	/* postsuper -r: the new id carries the owner over, and is no new submission */
	feedf(e, e->now, "pickup", "0D0000000D: uid=0 from=<form@example.com> orig_id=0C0000000C");
	deliver(e, e->now, "0D0000000D", "z@example.net", "sent", "2.0.0", R_SENT);
	assert_int_equal(sums(e, "form@example.com", false).sent, 1);
	assert_int_equal(ndr_counters(e->n)->pickups, 1);

	/* inbound mail delivered here is nobody's */
	uint64_t before = ndr_counters(e->n)->outcomes;
	client(e, e->now, "0E0000000E", NULL);
	feedf(e, e->now, "virtual",
	      "0E0000000E: to=<u@local.test>, relay=virtual, delay=0.02, delays=0.01/0.01/0/0, "
	      "dsn=2.0.0, status=sent (delivered to maildir)");
	assert_int_equal(ndr_counters(e->n)->outcomes, before);
}

static void test_own_bounces_and_forwarding(void **state)
{
	struct env *e = *state;
	client(e, e->now, "1A0000001A", "carol");
	deliver(e, e->now, "1A0000001A", "nobody@example.net", "bounced", "5.1.1", R_UNKNOWN);
	feedf(e, e->now, "bounce", "1A0000001A: sender non-delivery notification: 1B0000001B");
	feedf(e, e->now, "qmgr", "1B0000001B: from=<>, size=2400, nrcpt=1 (queue active)");
	deliver(e, e->now, "1B0000001B", "carol@example.org", "bounced", "5.1.1", R_UNKNOWN);
	/* a null-sender message nobody submitted (the bounce line came late) */
	feedf(e, e->now, "qmgr", "1C0000001C: from=<>, size=2400, nrcpt=1 (queue active)");
	deliver(e, e->now, "1C0000001C", "someone@example.org", "sent", "2.0.0", R_SENT);
	struct ndr_window_sums s = sums(e, "carol", false);
	assert_int_equal(s.n, 1); /* her NDR's delivery is not hers */
	assert_int_equal(ndr_counters(e->n)->own_ndr, 2);
	json_t *j = ndr_json(e->n, e->now, 0);
	assert_int_equal(
	    json_integer_value(json_object_get(json_object_get(j, "backscatter"), "n")), 2);
	json_decref(j);

	/* a local forwarding address sends inbound mail on: charged to it */
	client(e, e->now, "1D0000001D", NULL);
	feedf(e, e->now, "smtp",
	      "1D0000001D: to=<fwd-target@example.net>, orig_to=<Redirect@Local.Test>, "
	      "relay=mx.example.net[203.0.113.9]:25, delay=1, delays=0/0/0/1, dsn=5.1.1, "
	      "status=bounced (" R_UNKNOWN ")");
	assert_int_equal(sums(e, "redirect@local.test", false).bounced, 1);
	assert_int_equal(ndr_counters(e->n)->forwarded, 1);
	/* with local domains known, an orig_to elsewhere is not ours */
	char *doms[] = {(char *)"local.test"};
	ndr_set_local_domains(e->n, doms, 1);
	assert_true(ndr_is_local_domain(e->n, "local.test"));
	client(e, e->now, "1E0000001E", NULL);
	feedf(e, e->now, "smtp",
	      "1E0000001E: to=<t@example.net>, orig_to=<list@elsewhere.example>, "
	      "relay=mx.example.net[203.0.113.9]:25, delay=1, delays=0/0/0/1, dsn=2.0.0, "
	      "status=sent (250 ok)");
	assert_int_equal(ndr_counters(e->n)->forwarded, 1);
}

static void test_handoff(void **state)
{
	struct env *e = *state;
	client(e, e->now, "2A0000002A", "dave");
	feedf(e, e->now, "smtp",
	      "2A0000002A: to=<a@example.net>, relay=127.0.0.1[127.0.0.1]:10024, delay=0.9, "
	      "delays=0.1/0/0/0.8, dsn=2.0.0, status=sent (250 2.0.0 from "
	      "MTA(smtp:[127.0.0.1]:10025): 250 2.0.0 Ok: queued as 2B0000002B)");
	feedf(e, e->now, "smtpd", "2B0000002B: client=localhost[127.0.0.1]");
	deliver(e, e->now, "2B0000002B", "a@example.net", "bounced", "5.1.1", R_UNKNOWN);
	struct ndr_window_sums s = sums(e, "dave", false);
	assert_int_equal(s.n, 1); /* the filter hop is no delivery */
	assert_int_equal(s.bounced, 1);
	assert_int_equal(ndr_counters(e->n)->handoffs, 1);
}

static void test_deferrals_once_and_expiry(void **state)
{
	struct env *e = *state;
	client(e, e->now, "3A0000003A", "erin");
	for (int i = 0; i < 4; i++) /* retries */
		deliver(e, e->now + i * MIN, "3A0000003A", "g@example.net", "deferred", "4.7.1",
		        R_GREY);
	deliver(e, e->now + 5 * MIN, "3A0000003A", "g@example.net", "sent", "2.0.0", R_SENT);
	for (int i = 0; i < 3; i++)
		deliver(e, e->now + i * MIN, "3A0000003A", "y@yahoo.example", "deferred", "4.7.0",
		        R_REPUTATION);
	e->now += 6 * MIN;
	struct ndr_window_sums s = sums(e, "erin", false);
	assert_int_equal(s.n, 2);
	assert_int_equal(s.deferred, 2);
	assert_int_equal(s.sent, 1);
	assert_int_equal(s.bad_defer, 1); /* reputation indicts, greylisting does not */
	/* the profile hears of final outcomes only: the delivery after the
	 * greylisting, not the deferrals */
	assert_int_equal(e->r.outcomes, 1);
	assert_int_equal(e->r.outcomes_bounced, 0);
	feedf(e, e->now, "qmgr",
	      "3A0000003A: from=<erin@example.org>, status=expired, returned to sender");
	s = sums(e, "erin", false);
	assert_int_equal(s.expired, 1);
	/* the expiry is a final failure that indicts (the reputation deferral) */
	assert_int_equal(e->r.outcomes, 2);
	assert_int_equal(e->r.outcomes_bounced, 1);
	assert_int_equal(s.bad_perm, 1); /* the last deferral's class carries over */
	assert_int_equal(s.n, 2);
	assert_int_equal(ndr_counters(e->n)->expired_rcpts, 1);
}

static void test_queue_id_bound(void **state)
{
	struct env *e = *state;
	char q[16];
	e->conf.max_queue_ids = 50;
	for (unsigned i = 0; i < 200; i++) {
		qidof(q, i);
		client(e, e->now, q, "frank");
	}
	assert_int_equal(ndr_queue_ids(e->n), 50);
	assert_int_equal(ndr_counters(e->n)->qid_evicted, 150);
	/* the newest are kept */
	qidof(q, 199);
	deliver(e, e->now, q, "a@example.net", "sent", "2.0.0", R_SENT);
	assert_int_equal(sums(e, "frank", false).sent, 1);
	/* a queue id seen once, never again: dropped after queue_id_ttl */
	ndr_tick(e->n, e->now + (int64_t)e->conf.queue_id_ttl_us + HOUR);
	assert_int_equal(ndr_queue_ids(e->n), 0);
	assert_int_equal(ndr_counters(e->n)->qid_expired, 50);
	/* an outcome for an id we never saw: counted, unattributed */
	deliver(e, e->now, "4F00000000", "a@example.net", "bounced", "5.1.1", R_UNKNOWN);
	assert_int_equal(ndr_counters(e->n)->unattributed, 1);
}

/* principal sends `total` recipients, `bad` of them (spread) to unknown users. */
static void send_batch(struct env *e, const char *who, unsigned base, unsigned total, unsigned bad,
                       const char *domain)
{
	char q[16], to[128];
	qidof(q, base);
	client(e, e->now, q, who);
	for (unsigned i = 0; i < total; i++) {
		snprintf(to, sizeof(to), "r%u@%s", i, domain);
		if ((i + 1) * bad / total > i * bad / total) /* spread evenly */
			deliver(e, e->now, q, to, "bounced", "5.1.1", R_UNKNOWN);
		else
			deliver(e, e->now, q, to, "sent", "2.0.0", R_SENT);
	}
}

static void test_small_samples(void **state)
{
	struct env *e = *state;
	send_batch(e, "gina", 1, 2, 1, "example.net"); /* 1 bounce of 2: no spike */
	assert_int_equal(e->r.spikes_start[NDR_S_PRINCIPAL], 0);
	assert_false(ndr_spiking(e->n, "gina", NULL));
	send_batch(e, "hank", 2, 8, 8, "example.net"); /* 8 of 8, below min_count */
	assert_int_equal(e->r.spikes_start[NDR_S_PRINCIPAL], 0);
	send_batch(e, "ivan", 3, 40, 3, "example.net"); /* 7.5%: bound below 10% */
	assert_int_equal(e->r.spikes_start[NDR_S_PRINCIPAL], 0);
}

static void test_spike_start_and_end(void **state)
{
	struct env *e = *state;
	const char *why = NULL;
	send_batch(e, "jane", 10, 20, 12, "example.net");
	assert_int_equal(e->r.spikes_start[NDR_S_PRINCIPAL], 1);
	assert_string_equal(e->r.last_principal, "jane");
	assert_true(ndr_spiking(e->n, "jane", &why));
	assert_non_null(strstr(why, "bounce spike"));
	assert_non_null(strstr(why, "user_unknown"));
	/* more bounces: still one spike */
	send_batch(e, "jane", 11, 10, 10, "example.net");
	assert_int_equal(e->r.spikes_start[NDR_S_PRINCIPAL], 1);
	/* an hour later the short window is clear, the long one is not */
	ndr_tick(e->n, e->now + 2 * HOUR);
	assert_true(ndr_spiking(e->n, "jane", NULL));
	/* a day later it is over */
	e->now += 26 * HOUR;
	ndr_tick(e->n, e->now);
	assert_false(ndr_spiking(e->n, "jane", NULL));
	assert_int_equal(e->r.spikes_end[NDR_S_PRINCIPAL], 1);
	struct ndr_window_sums s = sums(e, "jane", true);
	assert_int_equal(s.n, 0);
	/* cleared by ops */
	send_batch(e, "jane", 12, 20, 20, "example.net");
	assert_true(ndr_spiking(e->n, "jane", NULL));
	assert_true(ndr_clear(e->n, "jane", e->now));
	assert_false(ndr_spiking(e->n, "jane", NULL));
	assert_int_equal(sums(e, "jane", false).n, 0);
	assert_false(ndr_clear(e->n, "nobody", e->now));
}

static void test_deferral_spike_and_global(void **state)
{
	struct env *e = *state;
	char q[16], to[64];
	e->conf.global_min_count = 30;
	qidof(q, 20);
	client(e, e->now, q, "kate");
	for (int i = 0; i < 30; i++) {
		snprintf(to, sizeof(to), "y%d@yahoo.example", i);
		deliver(e, e->now, q, to, "deferred", "4.7.0", R_REPUTATION);
	}
	assert_int_equal(e->r.spikes_start[NDR_S_PRINCIPAL], 1);
	assert_string_equal(e->r.last_principal, "kate");
	const char *why = NULL;
	assert_true(ndr_spiking(e->n, "kate", &why));
	assert_non_null(strstr(why, "deferral spike"));
	assert_non_null(strstr(why, "reputation"));
	assert_int_equal(e->r.spikes_start[NDR_S_GLOBAL], 1);
	assert_int_equal(e->r.spikes_start[NDR_S_DOMAIN], 1); /* yahoo.example */
}

static void test_baseline(void **state)
{
	struct env *e = *state;
	int64_t t0 = e->now;
	/* "lists" normally bounces 15%: two earlier days of it */
	for (int d = 3; d >= 2; d--) {
		e->now = t0 - d * 24 * HOUR;
		send_batch(e, "lists", 100 + (unsigned)d, 100, 15, "example.net");
	}
	e->conf.min_count = 10;
	e->now = t0;
	send_batch(e, "lists", 200, 20, 8, "example.net"); /* 40%: bound 22% < 3 x 15% */
	send_batch(e, "fresh", 201, 20, 8, "example.net"); /* the same from a new account */
	const char *why = "";
	if (ndr_spiking(e->n, "lists", &why))
		fail_msg("lists spikes: %s", why);
	assert_true(ndr_spiking(e->n, "fresh", NULL));
	json_t *j = ndr_json(e->n, e->now, 0);
	json_t *p, *ps = json_object_get(j, "principals");
	size_t i;
	double base = -1;
	json_array_foreach(ps, i, p)
	{
		if (!strcmp(json_string_value(json_object_get(p, "principal")), "lists"))
			base = json_real_value(json_object_get(p, "baseline"));
	}
	assert_true(base > 0.12 && base < 0.18);
	json_decref(j);
}

static void test_domain_noise(void **state)
{
	struct env *e = *state;
	e->conf.domain_min_count = 10;
	/* three accounts meet the same broken receiver */
	send_batch(e, "p1", 30, 5, 5, "broken.example");
	send_batch(e, "p2", 31, 5, 5, "broken.example");
	send_batch(e, "p3", 32, 5, 5, "broken.example");
	assert_int_equal(e->r.spikes_start[NDR_S_DOMAIN], 1);
	/* a fourth account's bounces there are the receiver's problem, not its own */
	send_batch(e, "p4", 33, 20, 20, "broken.example");
	assert_false(ndr_spiking(e->n, "p4", NULL));
	struct ndr_window_sums s = sums(e, "p4", false);
	assert_int_equal(s.bounced, 20);
	assert_int_equal(s.bad_perm, 0);
	/* elsewhere they count */
	send_batch(e, "p4", 34, 20, 20, "example.net");
	assert_true(ndr_spiking(e->n, "p4", NULL));
}

static void test_blocklist(void **state)
{
	struct env *e = *state;
	key_net_parse("198.51.100.23", &e->conf.our_ips[0]);
	e->conf.nour_ips = 1;
	client(e, e->now, "5A0000005A", "lena");
	deliver(e, e->now, "5A0000005A", "a@example.net", "bounced", "5.7.1",
	        R_SPAMHAUS("198.51.100.23"));
	assert_int_equal(e->r.blocklists, 1);
	assert_string_equal(e->r.bl_list, "spamhaus");
	assert_string_equal(e->r.bl_ip, "198.51.100.23");
	/* again within the interval: suppressed and counted */
	deliver(e, e->now + MIN, "5A0000005A", "b@example.net", "bounced", "5.7.1",
	        R_SPAMHAUS("198.51.100.23"));
	assert_int_equal(e->r.blocklists, 1);
	/* another host's address: no alert */
	deliver(e, e->now, "5A0000005A", "c@example.net", "bounced", "5.7.1",
	        R_SPAMHAUS("192.0.2.99"));
	assert_int_equal(e->r.blocklists, 1);
	/* after the interval: alerted again, with the suppressed count */
	deliver(e, e->now + 2 * HOUR, "5A0000005A", "d@example.net", "bounced", "5.7.1",
	        R_SPAMHAUS("198.51.100.23"));
	assert_int_equal(e->r.blocklists, 2);
	assert_int_equal(e->r.bl_suppressed, 1);
	assert_int_equal(ndr_counters(e->n)->blocklist_alerts, 2);
}

static void test_pickup_limit(void **state)
{
	struct env *e = *state;
	char q[16], err[200];
	assert_int_equal(
	    config_parse_rate("3/1h", e->conf.pickup_win, &e->conf.pickup_nwin, err, sizeof(err)),
	    0);
	for (unsigned i = 0; i < 5; i++) {
		qidof(q, 40 + i);
		feedf(e, e->now + i, "pickup", "%s: uid=33 from=<www-data@example.com>", q);
	}
	assert_int_equal(e->r.pickup_over, 2);
	assert_int_equal(e->r.holds, 2);
	qidof(q, 44);
	assert_string_equal(e->r.last_hold, q);
	/* another uid has its own budget */
	qidof(q, 50);
	feedf(e, e->now, "pickup", "%s: uid=34 from=<www-data@example.com>", q);
	assert_int_equal(e->r.pickup_over, 2);
	/* a spiking principal's locally submitted mail is held too */
	send_batch(e, "www-data@example.com", 51, 20, 20, "example.net");
	assert_true(ndr_spiking(e->n, "www-data@example.com", NULL));
	qidof(q, 52);
	feedf(e, e->now + HOUR, "pickup", "%s: uid=35 from=<www-data@example.com>", q);
	assert_int_equal(e->r.holds, 3);
}

static void test_inbound_ndr(void **state)
{
	struct env *e = *state;
	e->conf.inbound_max = 10;
	for (int i = 0; i < 12; i++)
		ndr_note_inbound(e->n, "victim@local.test", e->now + i);
	assert_int_equal(e->r.spikes_start[NDR_S_INBOUND], 1);
	assert_string_equal(e->r.last_spike, "victim@local.test");
	ndr_tick(e->n, e->now + 3 * HOUR);
	assert_int_equal(e->r.spikes_end[NDR_S_INBOUND], 1);
	json_t *j = ndr_json(e->n, e->now, 0);
	assert_int_equal(json_array_size(json_object_get(j, "inbound")), 1);
	json_decref(j);
}

static void test_bad_input(void **state)
{
	struct env *e = *state;
	const char *bad[] = {
	    "",
	    "garbage",
	    "Nov 23 00:31:29",
	    "2026-11-23T00:43:00Z vm sshd[1]: Accepted publickey for root",
	    "2026-11-23T00:43:00Z vm postfix/smtp[1]: 7C41A2E09B: to=<ana@example.net>, relay=mx",
	    ("2026-11-23T00:43:00Z vm postfix/smtp[1]: 7C41A2E09B: to=<\xff\xfe@\xc3\x28>, "
	     "relay=none, delay=1, delays=0/0/0/1, dsn=5.1.1, status=bounced (\xe2\x82 bad)"),
	    "2026-11-23T00:43:00Z vm postfix/qmgr[1]: NOQUEUE: removed",
	    "2026-11-23T00:43:00Z vm postfix/smtpd[1]: warning: 7C41A2E09B: client=x[1.2.3.4]",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ndr_feed_line(e->n, bad[i], strlen(bad[i]), e->now);
	char *huge = malloc(20000);
	memset(huge, 'a', 20000);
	ndr_feed_line(e->n, huge, 20000, e->now);
	free(huge);
	const struct ndr_counters *c = ndr_counters(e->n);
	assert_int_equal(c->lines, 9);
	assert_int_equal(c->too_long, 1);
	assert_true(c->garbage >= 3);
	assert_true(c->garbage + c->other + c->too_long + c->parsed == 9);
}

static void test_state_file(void **state)
{
	struct env *e = *state;
	char path[64], err[512];
	snprintf(path, sizeof(path), "/tmp/policyd-test-ndr-state-XXXXXX");
	int fd = mkstemp(path);
	close(fd);
	send_batch(e, "mike", 60, 20, 15, "example.net");
	client(e, e->now, "6A0000006A", "nora nobody"); /* a key with a space */
	deliver(e, e->now, "6A0000006A", "g@example.net", "deferred", "4.7.0", R_REPUTATION);
	unsigned char pos[8] = {1, 2, 3, 4, 5, 6, 7, 8}, back[16];
	size_t blen;
	assert_int_equal(ndr_save(e->n, path, pos, sizeof(pos), err, sizeof(err)), 0);
	size_t qids = ndr_queue_ids(e->n);

	env_tracker(e); /* a new, empty tracker */
	assert_int_equal(ndr_load(e->n, path, back, sizeof(back), &blen, err, sizeof(err)), 0);
	assert_int_equal(blen, sizeof(pos));
	assert_memory_equal(back, pos, sizeof(pos));
	assert_int_equal(ndr_queue_ids(e->n), qids);
	struct ndr_window_sums s = sums(e, "mike", false);
	assert_int_equal(s.n, 20);
	assert_int_equal(s.bad_perm, 15);
	assert_true(ndr_spiking(e->n, "mike", NULL));
	/* the deferral survived: its retry is no new recipient, its expiry counts */
	deliver(e, e->now, "6A0000006A", "g@example.net", "deferred", "4.7.0", R_REPUTATION);
	assert_int_equal(sums(e, "nora nobody", false).n, 1);
	feedf(e, e->now, "qmgr",
	      "6A0000006A: from=<n@example.org>, status=expired, returned to sender");
	assert_int_equal(sums(e, "nora nobody", false).expired, 1);

	/* other window sizes: the windows start again, the rest loads */
	e->conf.short_us = 2 * 3600ULL * 1000000;
	env_tracker(e);
	assert_int_equal(ndr_load(e->n, path, back, sizeof(back), &blen, err, sizeof(err)), 0);
	assert_int_equal(sums(e, "mike", false).n, 0);
	e->conf.short_us = 3600ULL * 1000000;

	/* a damaged file is refused with its line */
	struct stat sb;
	assert_int_equal(stat(path, &sb), 0);
	assert_int_equal(truncate(path, sb.st_size / 2), 0);
	env_tracker(e);
	assert_int_equal(ndr_load(e->n, path, back, sizeof(back), &blen, err, sizeof(err)), -1);
	assert_non_null(strstr(err, path));
	/* missing: nothing, no error */
	unlink(path);
	env_tracker(e);
	assert_int_equal(ndr_load(e->n, path, back, sizeof(back), &blen, err, sizeof(err)), 0);
	assert_int_equal(blen, 0);
}

static void test_json_view(void **state)
{
	struct env *e = *state;
	send_batch(e, "olga", 70, 20, 15, "example.net");
	send_batch(e, "paul", 71, 5, 0, "example.net");
	json_t *j = ndr_json(e->n, e->now, 1);
	json_t *ps = json_object_get(j, "principals");
	assert_int_equal(json_array_size(ps), 1); /* the limit; the spiking one first */
	json_t *p = json_array_get(ps, 0);
	assert_string_equal(json_string_value(json_object_get(p, "principal")), "olga");
	assert_string_equal(json_string_value(json_object_get(p, "kind")), "sasl");
	assert_int_equal(json_integer_value(json_object_get(p, "bounced")), 15);
	assert_int_equal(json_integer_value(json_object_get(p, "sent")), 5);
	assert_true(json_is_true(json_object_get(p, "spike")));
	json_t *tc = json_array_get(json_object_get(p, "top_classes"), 0);
	assert_string_equal(json_string_value(json_object_get(tc, "class")), "user_unknown");
	assert_int_equal(json_integer_value(json_object_get(tc, "count")), 15);
	assert_true(json_real_value(json_object_get(p, "ratio")) > 0.74);
	json_decref(j);
	j = ndr_json(e->n, e->now, 0);
	assert_int_equal(json_array_size(json_object_get(j, "principals")), 2);
	json_decref(j);
}

static void test_principal_bound(void **state)
{
	struct env *e = *state;
	char who[32];
	e->conf.max_principals = 10;
	send_batch(e, "spiky", 80, 20, 20, "example.net");
	for (unsigned i = 0; i < 30; i++) {
		snprintf(who, sizeof(who), "user%u", i);
		send_batch(e, who, 100 + i, 1, 0, "example.net");
	}
	assert_int_equal(ndr_principals(e->n), 10);
	assert_true(ndr_spiking(e->n, "spiky", NULL)); /* a spiking one is spared */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_wilson),
	    cmocka_unit_test_setup_teardown(test_attribution_sasl, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_attribution_trusted_policy_pickup, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(test_own_bounces_and_forwarding, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_handoff, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_deferrals_once_and_expiry, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_queue_id_bound, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_small_samples, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_spike_start_and_end, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_deferral_spike_and_global, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_baseline, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_domain_noise, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_blocklist, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_pickup_limit, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_inbound_ndr, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_bad_input, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_state_file, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_json_view, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_principal_bound, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
