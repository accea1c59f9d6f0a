/*
 * tests/unit/test_anomaly.c - the anomaly-score check through the pipeline
 * with the embedded store and a DNS fixture: the [anomaly] section, cold
 * start, a learned account against a hijack (components, verdict parts,
 * dry run, the flag and its evidence), sender forgery, an exploit-listed
 * client, what a refused request teaches, a corrupt stored profile, the
 * size of the stored profile, the scoring rules themselves (volume from
 * a new network, two places at once, sustained evidence, the bounce
 * ratio), bounces from real log lines (the NDR tracker) reaching the
 * stored profile, and the same through policyd --replay --maillog.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cache/store.h"
#include "policyd/anomaly.h"
#include "policyd/config.h"
#include "policyd/dns.h"
#include "policyd/flag.h"
#include "policyd/ndr.h"
#include "policyd/pipeline.h"
#include "policyd/replay.h"

#define DAY  86400LL
#define HOUR 3600LL
#define T0   (1790000000LL - 1790000000LL % DAY) /* a midnight, seconds */

struct env {
	struct config *cfg;
	struct store *store;
	struct txn txn;
	struct pipeline_ctx x;
	char path[64], fix[64];
	size_t put_len;
};

static unsigned flags_raised;
static char flag_evidence[FLAG_EVIDENCE_MAX];
static char flag_reason[FLAG_REASON_MAX];

static void record_flag(const struct flag_request *r)
{
	flags_raised++;
	snprintf(flag_evidence, sizeof(flag_evidence), "%s", r->evidence);
	snprintf(flag_reason, sizeof(flag_reason), "%s", r->reason);
	assert_int_equal(r->source, FLAG_SRC_ANOMALY);
}

static const char *FIXTURE =
    "# client networks (origin.asn.test) and the exploit list (xbl.test)\n"
    "0.100.51.198.origin.asn.test TXT \"64501 | 198.51.100.0/24 | DE | ripencc | 2001-01-01\"\n"
    "0.113.0.203.origin.asn.test TXT \"64500 | 203.0.113.0/24 | NL | ripencc | 2001-01-01\"\n"
    "0.2.0.192.origin.asn.test TXT \"64502 | 192.0.2.0/24 | RU | ripencc | 2001-01-01\"\n"
    "9.2.0.192.xbl.test A 127.0.0.4\n";

static struct env *env_new(const char *anomaly)
{
	struct env *e = calloc(1, sizeof(*e));
	char err[512];
	snprintf(e->path, sizeof(e->path), "/tmp/policyd-test-anomaly-XXXXXX");
	int fd = mkstemp(e->path);
	assert_true(fd >= 0);
	FILE *fp = fdopen(fd, "w");
	fprintf(fp, "[server]\nstate_dir =\nlog = stderr\nhooks = rcpt\n\n[anomaly]\n%s\n",
	        anomaly);
	fclose(fp);
	e->cfg = config_load(e->path, err, sizeof(err));
	if (e->cfg == NULL)
		fail_msg("config: %s", err);
	snprintf(e->fix, sizeof(e->fix), "/tmp/policyd-test-anomaly-fix-XXXXXX");
	fd = mkstemp(e->fix);
	assert_true(fd >= 0);
	assert_true(write(fd, FIXTURE, strlen(FIXTURE)) == (ssize_t)strlen(FIXTURE));
	close(fd);
	assert_int_equal(dns_fixture_load(e->fix, err, sizeof(err)), 0);
	struct store_memory_opts mo = {.state_dir = NULL, .flush_ms = 1000};
	e->store = store_memory_open(&mo, T0 * 1000000, err, sizeof(err));
	assert_non_null(e->store);
	txn_init(&e->txn);
	anomaly_set_flag_fn(record_flag);
	anomaly_set_always_texts(true);
	flags_raised = 0;
	return e;
}

static void env_free(struct env *e)
{
	txn_free(&e->txn);
	e->store->be->close(e->store);
	config_free(e->cfg);
	dns_fixture_free();
	anomaly_set_flag_fn(NULL);
	anomaly_set_always_texts(false);
	unlink(e->path);
	unlink(e->fix);
	free(e);
}

static void batch_cb(void *arg, enum store_status st, const struct store_result *res, size_t n)
{
	struct pipeline_ctx *x = arg;
	x->st = st;
	if (n)
		memcpy(x->res, res, n * sizeof(*res));
	pipeline_finish(x); /* GET values live only during the callback */
}

static void follow_cb(void *arg, enum store_status st, const struct store_result *res, size_t n)
{
	(void)arg;
	(void)res;
	(void)n;
	assert_int_equal(st, STORE_OK);
}

/* One RCPT request at t (seconds); returns the scored result. */
static const struct anomaly_result *rcpt(struct env *e, int64_t t, const char *login,
                                         const char *sender, const char *rcpt_to,
                                         const char *client, const char *instance)
{
	static char buf[4096];
	static struct proto_request req;
	static struct proto_kv extra[16];
	int n = snprintf(buf, sizeof(buf),
	                 "request=smtpd_access_policy\nprotocol_state=RCPT\nsasl_method=PLAIN\n"
	                 "sasl_username=%s\nsender=%s\nrecipient=%s\nclient_address=%s\n"
	                 "instance=%s\n\n",
	                 login, sender, rcpt_to, client, instance);
	struct proto_parser p;
	struct proto_limits lim;
	size_t used;
	proto_limits_default(&lim);
	proto_parser_init(&p, &lim);
	memset(&req, 0, sizeof(req));
	req.extra = extra;
	req.extra_cap = 16;
	assert_int_equal(proto_parse(&p, buf, (size_t)n, &req, &used, NULL), PROTO_OK);
	struct pipeline_ctx *x = &e->x;
	anomaly_reset_last();
	pipeline_begin(x, e->cfg, &req, &e->txn, t * 1000000);
	pipeline_prepare(x);
	assert_true(x->nops > 0);
	assert_int_equal(store_batch(e->store, x->ops, x->nops, x->now_us, batch_cb, x), 0);
	e->put_len = 0;
	for (size_t i = 0; i < x->nfollow; i++)
		if (x->follow[i].kind == STORE_PUT)
			e->put_len = x->follow[i].vlen;
	if (x->nfollow)
		store_batch(e->store, x->follow, x->nfollow, x->now_us, follow_cb, NULL);
	const struct anomaly_result *r = anomaly_last();
	assert_ptr_equal(r->x, x);
	return r;
}

static bool has(const struct anomaly_result *r, const char *text)
{
	for (size_t i = 0; i < r->n; i++)
		if (strstr(r->c[i].text, text))
			return true;
	return false;
}

/* Three weeks of an ordinary account: 6 messages a workday 08-16h UTC,
 * 1-2 of 20 colleagues, from 198.51.100.7 (AS64501, DE). */
static int64_t learn_month(struct env *e, const char *login)
{
	char to[64], inst[32];
	unsigned k = 0;
	int64_t t = T0;
	for (int d = 0; d < 21; d++) {
		if (d % 7 >= 5)
			continue;
		for (int m = 0; m < 6; m++) {
			t = T0 + d * DAY + 8 * HOUR + m * 80 * 60;
			snprintf(inst, sizeof(inst), "%d.%d", d, m);
			for (int r = 0; r < 1 + (m % 3 == 0); r++) {
				snprintf(to, sizeof(to), "colleague%u@example.org", (k++ * 7) % 20);
				const struct anomaly_result *res =
				    rcpt(e, t + r, login, login, to, "198.51.100.7", inst);
				if (d > 10)
					assert_true(res->score < 40);
			}
		}
	}
	return t;
}

static void test_config(void **state)
{
	(void)state;
	char path[64] = "/tmp/policyd-test-anomaly-cfg-XXXXXX", err[512];
	static const struct {
		const char *text, *error;
	} bad[] = {
	    {"warn = 80\nhold = 60\n", "warn (80) is above hold (60)"},
	    {"dnsbl = zen.example=127.0.0.9-127.0.0.4\n", "codes are 127.x.y.z"},
	    {"dnsbl = not a zone!\n", "is not a DNS zone"},
	    {"flag = 150\n", "a score 1 .. 100"},
	    {"dry_run = hold, sometimes\n", "dry_run: 'sometimes'"},
	    {"colour = blue\n", "unknown parameter 'colour' in [anomaly]"},
	    {"dsn = 5.7.1\n", "a 4.X.Y enhanced status code"},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(path, sizeof(path), "/tmp/policyd-test-anomaly-cfg-XXXXXX");
		int fd = mkstemp(path);
		FILE *fp = fdopen(fd, "w");
		fprintf(fp, "[server]\nstate_dir =\n\n[anomaly]\n%s", bad[i].text);
		fclose(fp);
		struct config *c = config_load(path, err, sizeof(err));
		unlink(path);
		assert_null(c);
		if (!strstr(err, bad[i].error))
			fail_msg("'%s' gave '%s'", bad[i].text, err);
	}
	struct env *e = env_new("warn = 35\nhold = 60\ndefer = never\nflag = 75\n"
	                        "dry_run = hold, flag\ndnsbl = xbl.test=127.0.0.4-127.0.0.7, "
	                        "other.test\nasn_zone = origin.asn.test\n");
	const struct anomaly_conf *c = config_section_get(e->cfg, &anomaly_section);
	assert_true(c->enabled);
	assert_int_equal(c->warn, 35);
	assert_int_equal(c->defer, 101);
	assert_true(c->flag_dry);
	assert_true(c->dry & (1u << ACT_HOLD));
	assert_int_equal(c->ndnsbl, 2);
	assert_int_equal(c->dnsbl[0].lo, 0x7f000004u);
	assert_int_equal(c->dnsbl[0].hi, 0x7f000007u);
	env_free(e);
}

static void test_cold_start(void **state)
{
	(void)state;
	struct env *e = env_new("asn_zone = origin.asn.test\n");
	char to[64];
	const struct anomaly_result *r = NULL;
	/* a brand-new account mails 40 strangers from a new network: nothing to flag yet */
	for (int i = 0; i < 40; i++) {
		snprintf(to, sizeof(to), "stranger%d@example.net", i);
		r = rcpt(e, T0 + i * 30, "new@example.org", "new@example.org", to, "192.0.2.9",
		         "c1");
		assert_false(r->flag);
	}
	assert_true(r->score < 40);
	assert_true(e->put_len > 0 && e->put_len <= 1024);
	env_free(e);
}

static void test_hijack(void **state)
{
	(void)state;
	struct env *e = env_new("asn_zone = origin.asn.test\ndnsbl = xbl.test\n");
	int64_t t = learn_month(e, "alice@example.org");
	/* an ordinary message the next morning */
	const struct anomaly_result *r =
	    rcpt(e, t + 16 * HOUR, "alice@example.org", "alice@example.org",
	         "colleague3@example.org", "198.51.100.7", "n1");
	assert_int_equal(r->score, 0);
	/* a burst at 03h from another country, to strangers, 20 per message */
	char to[64], inst[32];
	int64_t h = T0 + 22 * DAY + 3 * HOUR;
	unsigned first_flag = 0;
	for (int i = 0; i < 200 && !first_flag; i++) {
		snprintf(to, sizeof(to), "victim%d@example.net", i);
		snprintf(inst, sizeof(inst), "h%d", i / 20);
		r = rcpt(e, h + i * 2, "alice@example.org", "alice@example.org", to, "203.0.113.50",
		         inst);
		if (i == 0)
			assert_true(has(r, "first login from AS64500 (NL), a new country"));
		if (r->flag_raised)
			first_flag = (unsigned)i + 1;
	}
	/* one kind of behaviour from one unusual place flags once it is
	 * sustained (an invitation sent from abroad is not): a few messages */
	assert_true(first_flag > 0 && first_flag <= 160);
	assert_int_equal(flags_raised, 1);
	assert_true(r->score >= 80);
	assert_true(r->families >= 2);
	assert_true(has(r, "new recipients"));
	assert_true(strstr(flag_evidence, "first login from AS64500 (NL)") != NULL);
	assert_true(strstr(flag_evidence, "anomaly score") != NULL);
	assert_true(strstr(flag_reason, "[+") != NULL);
	/* the verdict: a HOLD part of check "anomaly", the components in its reason */
	const struct verdict *v = &e->x.v;
	bool held = false;
	for (size_t i = 0; i < v->nparts; i++)
		if (!strcmp(v->part[i].check, "anomaly") && v->part[i].action >= ACT_HOLD) {
			held = true;
			assert_true(strstr(v->part[i].reason, "score ") == v->part[i].reason);
		}
	assert_true(held);
	/* frozen: no second flag for the rest of the burst */
	for (int i = 0; i < 20; i++) {
		snprintf(to, sizeof(to), "more%d@example.net", i);
		r = rcpt(e, h + 1000 + i, "alice@example.org", "alice@example.org", to,
		         "203.0.113.50", "h99");
	}
	assert_int_equal(flags_raised, 1);
	/* the owner, the next day, from her usual network, to a colleague: the
	 * hijack was not learned as her behaviour */
	r = rcpt(e, h + DAY + 6 * HOUR, "alice@example.org", "alice@example.org",
	         "colleague5@example.org", "198.51.100.7", "n2");
	if (r->score >= 40) {
		char text[600];
		anomaly_components_text((struct anomaly_result *)r, "; ", text, sizeof(text));
		fail_msg("the owner scored %u: %s", r->score, text);
	}
	env_free(e);
}

static void test_dry_run(void **state)
{
	(void)state;
	struct env *e = env_new("asn_zone = origin.asn.test\ndry_run = hold, defer, flag\n");
	int64_t t = learn_month(e, "bob@example.org");
	char to[64];
	bool dry_part = false;
	unsigned top = 0;
	for (int i = 0; i < 150; i++) {
		snprintf(to, sizeof(to), "v%d@example.net", i);
		const struct anomaly_result *r = rcpt(e, t + DAY + i, "bob@example.org",
		                                      "bob@example.org", to, "203.0.113.51", "d1");
		top = r->score > top ? r->score : top;
		for (size_t k = 0; k < e->x.v.nparts; k++)
			if (e->x.v.part[k].dry_run && e->x.v.part[k].action >= ACT_HOLD)
				dry_part = true;
		assert_int_not_equal(e->x.v.action, ACT_HOLD);
		assert_int_not_equal(e->x.v.action, ACT_DEFER);
	}
	assert_true(dry_part);
	assert_true(top >= 80);
	assert_int_equal(flags_raised, 0); /* a dry-run flag is logged only */
	env_free(e);
}

static void test_forgery_and_listing(void **state)
{
	(void)state;
	struct env *e = env_new("asn_zone = origin.asn.test\ndnsbl = xbl.test\n");
	int64_t t = learn_month(e, "carol@example.org");
	const struct anomaly_result *r =
	    rcpt(e, t + DAY, "carol@example.org", "security@bank.example", "x1@example.net",
	         "192.0.2.9", "f1");
	assert_true(has(r, "sender security@bank.example not the login carol@example.org"));
	assert_true(has(r, "client 192.0.2.9 on exploit list xbl.test (127.0.0.4)"));
	assert_true(has(r, "first login from AS64502 (RU), a new country"));
	env_free(e);
}

static void test_bad_profile(void **state)
{
	(void)state;
	struct env *e = env_new("");
	static const char junk[] = "this is not a profile";
	struct store_op op = {.kind = STORE_PUT,
	                      .rule = "@profile",
	                      .subject = "dave@example.org",
	                      .val = junk,
	                      .vlen = sizeof(junk)};
	assert_int_equal(store_batch(e->store, &op, 1, T0 * 1000000, follow_cb, NULL), 0);
	unsigned long long before = anomaly_stats.bad_profiles;
	const struct anomaly_result *r = rcpt(e, T0 + 10, "dave@example.org", "dave@example.org",
	                                      "a@example.net", "198.51.100.7", "b1");
	assert_int_equal(anomaly_stats.bad_profiles, before + 1);
	assert_int_equal(r->score, 0);
	assert_int_equal(e->put_len, PROFILE_WIRE_SIZE); /* started afresh, stored again */
	env_free(e);
}

/* The rules of the score, without a pipeline. */
static void test_score_rules(void **state)
{
	(void)state;
	struct anomaly_conf c;
	anomaly_section.defaults(&c);
	struct profile_features f;
	struct anomaly_result r;
	memset(&f, 0, sizeof(f));
	f.maturity = 1;
	f.hour_share = -1;
	f.net_any_settled = true;
	struct anomaly_input in = {.f = &f,
	                           .client = "203.0.113.9",
	                           .network = "203.0.113.0/24",
	                           .asn = 64500,
	                           .cc = "NL",
	                           .login = "a@example.org",
	                           .sender = "a@example.org",
	                           .dnsbl_zone = "xbl.test",
	                           .dnsbl_code = 0x7f000004u,
	                           .since_s = 600};
	/* where the login comes from, alone, never flags */
	anomaly_score(&c, &in, &r);
	assert_true(r.score >= 60);
	assert_int_equal(r.families, 0);
	assert_false(r.flag);
	/* with something unusual in what is sent, it does */
	f.nov_short = 0.95;
	f.nov_short_n = 40;
	f.nov_base = 0.3;
	f.nov_bits = profile_kl_bits(0.95, 0.3, 40);
	anomaly_score(&c, &in, &r);
	assert_true(r.families >= 2);
	assert_true(r.flag);
	anomaly_texts(&r);
	char text[600];
	anomaly_components_text(&r, "; ", text, sizeof(text));
	assert_non_null(strstr(text, "95% new recipients (last 40) vs usual 30%"));
	assert_non_null(strstr(text, "first login from AS64500 (NL), a new country"));
	/* the same behaviour on a young profile counts for little */
	f.maturity = 0.1;
	in.dnsbl_zone = NULL;
	anomaly_score(&c, &in, &r);
	assert_false(r.flag);
}

/* One behaviour from one unusual place (an invitation sent from abroad)
 * flags only when sustained; a drip's volume from a new network and the
 * usual network in use at the same time are components of their own. */
static void test_score_context(void **state)
{
	(void)state;
	struct anomaly_conf c;
	anomaly_section.defaults(&c);
	struct profile_features f;
	struct anomaly_result r;
	char text[600];
	memset(&f, 0, sizeof(f));
	f.maturity = 1;
	f.hour_share = -1;
	f.net_any_settled = true;
	f.nov_short = 0.97;
	f.nov_short_n = 40;
	f.nov_base = 0.3;
	f.nov_bits = profile_kl_bits(0.97, 0.3, 40);
	f.rate_r = 40;
	f.rh_mu = log1p(2);
	f.z_rh = 4;
	struct anomaly_input in = {.f = &f,
	                           .client = "203.0.113.9",
	                           .network = "203.0.113.0/24",
	                           .asn = 64500,
	                           .cc = "NL",
	                           .login = "a@example.org",
	                           .sender = "a@example.org",
	                           .since_s = 30};
	/* new recipients and a new country: over the threshold, not sustained */
	anomaly_score(&c, &in, &r);
	assert_true(r.score >= c.flag);
	assert_int_equal(r.families, 2);
	assert_false(r.flag);
	/* the same after an hour of it */
	in.persist = 150;
	anomaly_score(&c, &in, &r);
	assert_true(r.flag);
	anomaly_components_text(&r, "; ", text, sizeof(text));
	assert_non_null(strstr(text, "sustained: "));

	/* a lateral drip: known recipients, 40 messages in 5 h from a network
	 * abroad for an account of 4 a day, the usual network used 3 min ago */
	memset(&f, 0, sizeof(f));
	f.maturity = 1;
	f.hour_share = -1;
	f.net_any_settled = true;
	f.md_mu = log1p(4);
	f.net_slot = 2;
	f.net_count = 39;
	f.new_message = true;
	f.net_age_s = 5 * 3600;
	in.persist = 0;
	anomaly_score(&c, &in, &r);
	assert_false(r.flag);
	anomaly_components_text(&r, "; ", text, sizeof(text));
	assert_non_null(
	    strstr(text, "40 messages from a new network in 5h vs usual 4.0/day [+35]"));
	assert_null(strstr(text, "usual network was used"));
	f.other_net = true;
	f.other_idle_s = 180;
	in.persist = 100; /* and it has gone on for a while */
	anomaly_score(&c, &in, &r);
	anomaly_components_text(&r, "; ", text, sizeof(text));
	assert_non_null(strstr(text, "the usual network was used 3 min ago [+15]"));
	assert_int_equal(r.families, 3);
	assert_true(r.flag);
	/* a traveller: a day's usual mail from the hotel, home idle */
	f.net_count = 5;
	f.net_age_s = 20 * 3600;
	f.other_idle_s = 3 * 86400;
	in.persist = 0;
	anomaly_score(&c, &in, &r);
	assert_int_equal(r.score, 25);
	assert_int_equal(r.families, 0);
	/* a new ASN at home (a phone) is not two places at once */
	f.asn_known = false;
	f.cc_known = true;
	f.other_idle_s = 60;
	anomaly_score(&c, &in, &r);
	assert_int_equal(r.families, 0);
	assert_false(r.flag);

	/* a new country while the settled network was used a minute ago ... */
	f.cc_known = false;
	f.other_idle_s = 60;
	f.home_nov = 0.3;
	f.home_nov_n = 20;
	f.home_nov_bits = 0;
	anomaly_score(&c, &in, &r);
	anomaly_components_text(&r, "; ", text, sizeof(text));
	assert_non_null(strstr(text, "the usual network was used 1 min ago"));
	/* ... is one user on two networks (a VPN toggled) when the settled
	 * network sends the same unusual recipients at the time */
	f.home_nov = 0.95;
	f.home_nov_bits = profile_kl_bits(0.95, f.nov_base > 0 ? f.nov_base : 0.3, 20);
	anomaly_score(&c, &in, &r);
	anomaly_components_text(&r, "; ", text, sizeof(text));
	assert_null(strstr(text, "the usual network was used"));
}

/* The bounce component: minimum counts, the threshold (5 % and twice the
 * usual ratio), its text, and that it is evidence about what is sent. */
static void test_score_bounce(void **state)
{
	(void)state;
	struct anomaly_conf c;
	anomaly_section.defaults(&c);
	struct profile_features f;
	struct anomaly_result r;
	char text[600];
	memset(&f, 0, sizeof(f));
	f.maturity = 1;
	f.hour_share = -1;
	/* 15 of the last 40 recipients bounced, usually 2 % */
	f.bounce_recent = 15.0 / 40;
	f.bounce_n = 40;
	f.bounce_usual = 0.02;
	f.bounce_lb = profile_wilson_lb(15, 40, 1.96);
	f.bounce_bits = profile_kl_bits(f.bounce_recent, f.bounce_usual, f.bounce_n);
	assert_true(anomaly_bounce_points(&f) == 35);
	struct anomaly_input in = {.f = &f,
	                           .client = "203.0.113.9",
	                           .network = "203.0.113.0/24",
	                           .asn = 64500,
	                           .cc = "NL",
	                           .login = "a@example.org",
	                           .sender = "a@example.org",
	                           .since_s = 600};
	anomaly_score(&c, &in, &r);
	anomaly_components_text(&r, "; ", text, sizeof(text));
	assert_string_equal(text, "bounce ratio 38% (usual 2%) over 40 recipients [+35]");
	assert_int_equal(r.families, 1); /* evidence about what is sent, alone */
	assert_false(r.flag);
	/* with a login from a new country: two kinds of evidence */
	f.net_any_settled = true;
	anomaly_score(&c, &in, &r);
	assert_int_equal(r.families, 2);
	assert_true(r.score >= 60);
	/* too few outcomes, or too few bounces: nothing */
	f.bounce_n = 19;
	assert_int_equal(anomaly_bounce_points(&f), 0);
	f.bounce_n = 40;
	f.bounce_recent = 4.0 / 40;
	f.bounce_lb = profile_wilson_lb(4, 40, 1.96);
	f.bounce_bits = profile_kl_bits(f.bounce_recent, 0.02, 40);
	assert_int_equal(anomaly_bounce_points(&f), 0);
	/* 25 % of 40 is news for an account at 2 %, not for one at 15 % */
	f.bounce_recent = 0.25;
	f.bounce_lb = profile_wilson_lb(10, 40, 1.96);
	f.bounce_bits = profile_kl_bits(0.25, 0.02, 40);
	assert_true(anomaly_bounce_points(&f) >= 10);
	f.bounce_usual = 0.15;
	f.bounce_bits = profile_kl_bits(0.25, 0.15, 40);
	assert_int_equal(anomaly_bounce_points(&f), 0);
}

/* ---- bounces from the log (ndr.c) into the stored profile */

static void to_profile(void *arg, const char *principal, enum ndr_kind kind, bool bounced,
                       int64_t t_us)
{
	(void)arg;
	(void)kind;
	anomaly_note_outcome(principal, bounced, t_us);
}

static struct classify_db *load_patterns(void)
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

static void logline(struct ndr *n, int64_t t, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void logline(struct ndr *n, int64_t t, const char *fmt, ...)
{
	char line[2048];
	va_list ap;
	int len = snprintf(line, sizeof(line), "2020-01-01T00:00:00Z out1 postfix/");
	va_start(ap, fmt);
	len += vsnprintf(line + len, sizeof(line) - (size_t)len, fmt, ap);
	va_end(ap);
	ndr_feed_line(n, line, (size_t)len, t * 1000000);
}

/* One message of login from the log: nrcpt recipients, the first nbad
 * rejected as unknown users by the receiver. */
static void logged_message(struct ndr *n, int64_t t, unsigned id, const char *login, unsigned nrcpt,
                           unsigned nbad)
{
	char qid[16];
	snprintf(qid, sizeof(qid), "%010X", 0xB0000000u + id);
	logline(n, t,
	        "submission/smtpd[4242]: %s: client=mua.example.net[198.51.100.7], "
	        "sasl_method=PLAIN, sasl_username=%s",
	        qid, login);
	for (unsigned i = 0; i < nrcpt; i++) {
		if (i < nbad)
			logline(n, t + 1,
			        "smtp[4243]: %s: to=<x%u.%u@example.net>, "
			        "relay=mx.example.net[203.0.113.9]:25, delay=1.2, "
			        "delays=0.1/0/0.5/0.6, dsn=5.1.1, status=bounced (host "
			        "mx.example.net[203.0.113.9] said: 550 5.1.1 <x@example.net>: "
			        "Recipient address rejected: User unknown (in reply to RCPT TO "
			        "command))",
			        qid, id, i);
		else
			logline(n, t + 1,
			        "smtp[4243]: %s: to=<c%u@example.org>, "
			        "relay=mx.example.org[203.0.113.10]:25, delay=1.2, "
			        "delays=0.1/0/0.5/0.6, dsn=2.0.0, status=sent (250 2.0.0 Ok: "
			        "queued as 4F1A2B3C4D)",
			        qid, (id * 7 + i) % 20);
	}
	logline(n, t + 2, "qmgr[4244]: %s: removed", qid);
}

/* Real log lines, attributed by the NDR tracker, reach the account's
 * stored profile: ordinary deliveries make no component, a run of
 * unknown users does ("bounce ratio ... (usual 2%) over N recipients"),
 * and outcomes of a principal without a profile are not stored. */
static void test_outcomes_from_log(void **state)
{
	(void)state;
	struct env *e = env_new("");
	int64_t t = learn_month(e, "dave@example.org");
	struct ndr_conf nc;
	ndr_conf_defaults(&nc);
	struct classify_db *db = load_patterns();
	struct ndr_actions act = {.outcome = to_profile};
	struct ndr *n = ndr_new(&nc, e->cfg, db, &act);
	assert_non_null(n);
	anomaly_outcomes_attach(e->store, e->cfg, NULL);

	/* a week of ordinary mail: 60 recipients, one unknown */
	unsigned long long applied = anomaly_stats.outcomes_applied;
	for (unsigned m = 0; m < 30; m++)
		logged_message(n, t + 3600 + m * 600, m, "dave@example.org", 2, m == 10);
	anomaly_outcomes_flush();
	assert_int_equal(anomaly_stats.outcomes_applied, applied + 60);
	const struct anomaly_result *r =
	    rcpt(e, t + 6 * HOUR, "dave@example.org", "dave@example.org", "colleague3@example.org",
	         "198.51.100.7", "o1");
	assert_false(has(r, "bounce ratio"));

	/* then 30 recipients to a harvested list: 21 unknown users */
	for (unsigned m = 0; m < 10; m++)
		logged_message(n, t + 7 * HOUR + m * 60, 100 + m, "dave@example.org", 3,
		               2 + (m & 1));
	anomaly_outcomes_flush();
	assert_int_equal(anomaly_stats.outcomes_applied, applied + 90);
	r = rcpt(e, t + 8 * HOUR, "dave@example.org", "dave@example.org", "colleague4@example.org",
	         "198.51.100.7", "o2");
	assert_true(has(r, "bounce ratio "));
	bool found = false;
	for (size_t i = 0; i < r->n; i++)
		if (r->c[i].kind == ANOMALY_K_BOUNCE) {
			found = true;
			assert_int_equal(r->c[i].family, ANOMALY_BOUNCE);
			assert_true(r->c[i].points >= 30);
			assert_true(r->c[i].a > 0.4);  /* recent */
			assert_true(r->c[i].b < 0.08); /* usual: the run was not learned */
			assert_true(r->c[i].c >= 20);  /* recipients in the recent window */
		}
	assert_true(found);

	/* nobody scored "erin": her outcomes have no profile to go to */
	unsigned long long none = anomaly_stats.outcomes_no_profile;
	logged_message(n, t + 9 * HOUR, 500, "erin@example.org", 3, 1);
	anomaly_outcomes_flush();
	assert_int_equal(anomaly_stats.outcomes_no_profile, none + 3);

	anomaly_outcomes_detach();
	ndr_free(n);
	classify_db_free(db);
	ndr_config_section.free(&nc);
	env_free(e);
}

/* policyd --replay --maillog: the log's bounces reach the profiles on the
 * replay's virtual clock. */
static void test_replay_maillog(void **state)
{
	(void)state;
	char req[64] = "/tmp/policyd-test-replay-req-XXXXXX";
	char log[64] = "/tmp/policyd-test-replay-log-XXXXXX";
	char conf[64] = "/tmp/policyd-test-replay-conf-XXXXXX";
	int fr = mkstemp(req), fl = mkstemp(log), fc = mkstemp(conf);
	assert_true(fr >= 0 && fl >= 0 && fc >= 0);
	FILE *r = fdopen(fr, "w"), *l = fdopen(fl, "w"), *c = fdopen(fc, "w");
	const char *root = getenv("POLICYD_SOURCE_ROOT");
	fprintf(c,
	        "[server]\nstate_dir =\nlog = stderr\nhooks = rcpt\n\n[ndr]\n"
	        "patterns = %s/data/ndr-patterns.conf\nlocal_domains = local.test\n"
	        "queue_check_interval = 0\n\n[anomaly]\nwarn = 30\n",
	        root ? root : "..");
	fclose(c);
	/* ten days of a few messages, then one message of 30 recipients of
	 * which the log bounces 20, then one more request */
	int64_t t = T0;
	for (int d = 0; d < 10; d++)
		for (int m = 0; m < 4; m++) {
			t = T0 + d * DAY + 9 * HOUR + m * HOUR;
			fprintf(
			    r,
			    "request=smtpd_access_policy\nprotocol_state=RCPT\nsasl_method=PLAIN\n"
			    "sasl_username=erin@example.org\nsender=erin@example.org\n"
			    "recipient=c%d@example.org\nclient_address=198.51.100.7\n"
			    "instance=i%d.%d\ntimestamp=%lld\n\n",
			    m, d, m, (long long)t);
		}
	char stamp[32];
	time_t ts = (time_t)(t + 60);
	strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", gmtime(&ts));
	fprintf(l,
	        "%s out1 postfix/submission/smtpd[1]: 0C0000000C: client=mua[198.51.100.7], "
	        "sasl_method=PLAIN, sasl_username=erin@example.org\n",
	        stamp);
	for (int i = 0; i < 30; i++)
		fprintf(l,
		        "%s out1 postfix/smtp[2]: 0C0000000C: to=<x%d@example.net>, "
		        "relay=mx.example.net[203.0.113.9]:25, delay=1, delays=0/0/0.5/0.5, %s\n",
		        stamp, i,
		        i < 20
		            ? "dsn=5.1.1, status=bounced (host mx.example.net[203.0.113.9] said: "
		              "550 5.1.1 <x@example.net>: Recipient address rejected: User "
		              "unknown (in reply to RCPT TO command))"
		            : "dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 4F1A2B3C4D)");
	fprintf(l, "not a stamped line\n");
	fclose(l);
	fprintf(r,
	        "request=smtpd_access_policy\nprotocol_state=RCPT\nsasl_method=PLAIN\n"
	        "sasl_username=erin@example.org\nsender=erin@example.org\n"
	        "recipient=c1@example.org\nclient_address=198.51.100.7\ninstance=last\n"
	        "timestamp=%lld\n\n",
	        (long long)(t + 600));
	fclose(r);

	char err[512];
	struct config *cfg = config_load(conf, err, sizeof(err));
	if (cfg == NULL)
		fail_msg("config: %s", err);
	FILE *out = tmpfile();
	assert_non_null(out);
	unsigned long long applied = anomaly_stats.outcomes_applied;
	assert_int_equal(replay_run(req, NULL, log, cfg, out), 0);
	assert_int_equal(anomaly_stats.outcomes_applied, applied + 30);
	/* the last line: the bounce ratio */
	char line[4096], last[4096] = "";
	rewind(out);
	unsigned n = 0;
	while (fgets(line, sizeof(line), out)) {
		n++;
		if (n < 41)
			assert_null(strstr(line, "bounce ratio"));
		memcpy(last, line, sizeof(last));
	}
	assert_int_equal(n, 41);
	if (strstr(last, "\"bounce ratio 6") == NULL ||
	    strstr(last, "\"verdict\":\"WARN\"") == NULL)
		fail_msg("last request: %s", last);
	fclose(out);
	/* without an [ndr] section --maillog is refused */
	config_free(cfg);
	c = fopen(conf, "w");
	fprintf(c, "[server]\nstate_dir =\nlog = stderr\nhooks = rcpt\n\n[anomaly]\n");
	fclose(c);
	cfg = config_load(conf, err, sizeof(err));
	assert_non_null(cfg);
	out = tmpfile();
	assert_int_equal(replay_run(req, NULL, log, cfg, out), 1);
	fclose(out);
	config_free(cfg);
	unlink(req);
	unlink(log);
	unlink(conf);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_config),
	    cmocka_unit_test(test_cold_start),
	    cmocka_unit_test(test_hijack),
	    cmocka_unit_test(test_dry_run),
	    cmocka_unit_test(test_forgery_and_listing),
	    cmocka_unit_test(test_bad_profile),
	    cmocka_unit_test(test_score_rules),
	    cmocka_unit_test(test_score_context),
	    cmocka_unit_test(test_score_bounce),
	    cmocka_unit_test(test_outcomes_from_log),
	    cmocka_unit_test(test_replay_maillog),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
