/*
 * tests/unit/test_profile.c - the profile maths of cache/profile.c: EWMA
 * mean and variance, decay, HyperLogLog error, the CLOCK recipient set,
 * KL and Wilson bounds, the wire format (round trip, size, corrupt input,
 * version 1), cold start, a month of a quiet account against a burst, and
 * the bounce ratio (usual and recent).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "cache/profile.h"

#define T0 1790000000u

static uint64_t hs(const char *s)
{
	return profile_hash(s, strlen(s));
}

static void test_ewma(void **state)
{
	(void)state;
	float mu = 0, var = 0;
	/* alternating 1 and 3: mean 2, variance 1 */
	for (int i = 0; i < 4000; i++)
		profile_ewma(&mu, &var, (i & 1) ? 3.0 : 1.0, 0.01);
	assert_true(fabs(mu - 2.0) < 0.05);
	assert_true(fabs(var - 1.0) < 0.05);
	/* alpha 1: the value itself, no variance */
	profile_ewma(&mu, &var, 7.0, 1.0);
	assert_true(fabs(mu - 7.0) < 1e-6);
	assert_true(var < 1e-6);
	/* alpha 0: nothing moves */
	profile_ewma(&mu, &var, 100.0, 0);
	assert_true(fabs(mu - 7.0) < 1e-6);
}

static void test_decay(void **state)
{
	(void)state;
	assert_true(fabs(profile_decay(8, 3600 * log(2), 3600) - 4) < 1e-9);
	assert_true(profile_decay(8, 0, 3600) == 8);
	assert_true(profile_decay(8, -5, 3600) == 8);
	/* a steady 10/h converges to about 10 with a 1 h time constant */
	double c = 0;
	for (int i = 0; i < 200; i++)
		c = profile_decay(c, 360, 3600) + 1;
	assert_true(fabs(c - 10.5) < 0.6);
}

static void test_hll(void **state)
{
	(void)state;
	static const unsigned ns[] = {1, 10, 100, 1000, 10000};
	for (size_t k = 0; k < sizeof(ns) / sizeof(ns[0]); k++) {
		uint8_t reg[PROFILE_HLL_M] = {0};
		char b[64];
		for (unsigned i = 0; i < ns[k]; i++) {
			snprintf(b, sizeof(b), "user%u@example.net", i);
			profile_hll_add(reg, hs(b));
			profile_hll_add(reg, hs(b)); /* duplicates do not count */
		}
		double e = profile_hll_count(reg);
		double err = fabs(e - ns[k]) / ns[k];
		/* 1.04/sqrt(64) = 13 %; allow 3 standard errors */
		assert_true(err < 0.39);
		if (ns[k] <= 10)
			assert_true(fabs(e - ns[k]) < 1.5); /* linear counting is exact-ish */
	}
	uint8_t z[PROFILE_HLL_M] = {0};
	assert_true(profile_hll_count(z) == 0);
}

static void test_rcpt_set(void **state)
{
	(void)state;
	static struct profile p;
	char b[64];
	profile_init(&p, T0);
	unsigned collisions = 0; /* 15-bit fingerprints: about 224^2/65536 expected */
	for (unsigned i = 0; i < PROFILE_FP_SLOTS; i++) {
		snprintf(b, sizeof(b), "friend%u@example.org", i);
		collisions += profile_rcpt_known(&p, hs(b));
		profile_rcpt_add(&p, hs(b));
		assert_true(profile_rcpt_known(&p, hs(b)));
	}
	assert_true(collisions <= 4);
	assert_int_equal(p.fp_used, PROFILE_FP_SLOTS);
	/* the first 20 are mailed again: referenced, they survive the next 100 */
	for (unsigned i = 0; i < 20; i++) {
		snprintf(b, sizeof(b), "friend%u@example.org", i);
		assert_true(profile_rcpt_seen(&p, hs(b)));
	}
	for (unsigned i = 0; i < 100; i++) {
		snprintf(b, sizeof(b), "stranger%u@example.com", i);
		profile_rcpt_add(&p, hs(b));
	}
	for (unsigned i = 0; i < 20; i++) {
		snprintf(b, sizeof(b), "friend%u@example.org", i);
		assert_true(profile_rcpt_known(&p, hs(b)));
	}
	/* false positives for never-seen recipients: about used/32768 */
	unsigned fp = 0;
	for (unsigned i = 0; i < 20000; i++) {
		snprintf(b, sizeof(b), "never%u@example.info", i);
		fp += profile_rcpt_known(&p, hs(b));
	}
	assert_true(fp < 20000 * 2 * PROFILE_FP_SLOTS / 32768);
}

static void test_bounds(void **state)
{
	(void)state;
	/* anomaly-notes.md §6: 10/50 -> 0.11, 4/20 -> 0.08, 1/2 -> 0.09, 0/1 -> 0 */
	assert_true(fabs(profile_wilson_lb(10, 50, 1.96) - 0.112) < 0.005);
	assert_true(fabs(profile_wilson_lb(4, 20, 1.96) - 0.081) < 0.005);
	assert_true(fabs(profile_wilson_lb(1, 2, 1.96) - 0.0945) < 0.005);
	assert_true(profile_wilson_lb(0, 1, 1.96) == 0);
	assert_true(profile_wilson_lb(0, 0, 1.96) == 0);
	/* KL: nothing below the baseline; 20 x KL(0.9 || 0.2) */
	assert_true(profile_kl_bits(0.1, 0.2, 20) == 0);
	double kl = 0.9 * log2(0.9 / 0.2) + 0.1 * log2(0.1 / 0.8);
	assert_true(fabs(profile_kl_bits(0.9, 0.2, 20) - 20 * kl) < 1e-9);
	assert_true(profile_kl_bits(1.0, 0.0, 10) > 100); /* clamped, finite */
	assert_true(isfinite(profile_kl_bits(1.0, 0.0, 10)));
}

/* One recipient request of account p; returns the features. */
static void send1(struct profile *p, const struct profile_prior *pr, uint32_t now, const char *rcpt,
                  uint32_t inst, const char *sender, uint32_t prefix, uint32_t asn, const char *cc,
                  struct profile_features *f)
{
	struct profile_obs o;
	memset(&o, 0, sizeof(o));
	o.now_s = now;
	o.rcpt = hs(rcpt);
	o.inst = inst;
	o.sender = (uint32_t)hs(sender);
	o.sender_is_login = true;
	o.prefix = prefix;
	o.asn = asn;
	if (cc) {
		o.cc[0] = cc[0];
		o.cc[1] = cc[1];
	}
	profile_observe(p, &o, pr, f);
	profile_update(p, &o, f, 1.0, 1.0);
}

static void test_cold_start(void **state)
{
	(void)state;
	static struct profile p;
	struct profile_prior pr;
	struct profile_features f;
	profile_prior_default(&pr);
	profile_init(&p, T0);
	send1(&p, &pr, T0, "a@example.org", 1, "me@example.net", 11, 64500, "NL", &f);
	assert_true(f.cold);
	assert_true(f.new_message);
	assert_true(f.z_rh < 1);
	assert_true(f.nov_bits < 1); /* new recipients are expected of a new account */
	assert_false(f.net_any_settled);
	/* a first burst of 30 new recipients in one message: unusual, not extreme */
	for (int i = 0; i < 30; i++) {
		char b[64];
		snprintf(b, sizeof(b), "r%d@example.com", i);
		send1(&p, &pr, T0 + 60 + (uint32_t)i, b, 2, "me@example.net", 11, 64500, "NL", &f);
	}
	assert_true(f.z_rh < 4);
	assert_true(f.maturity < 0.01); /* the score discounts what it cannot know yet */
}

static void test_month_then_burst(void **state)
{
	(void)state;
	static struct profile p;
	struct profile_prior pr;
	struct profile_features f;
	char b[64];
	profile_prior_default(&pr);
	profile_init(&p, T0);
	uint32_t inst = 1;
	/* 30 days, 6 messages a day between 08h and 17h UTC, 1-2 recipients
	 * among 25 friends, from one network */
	for (unsigned d = 0; d < 30; d++)
		for (unsigned m = 0; m < 6; m++) {
			uint32_t t = T0 - T0 % 86400 + d * 86400 + 8 * 3600 + m * 5400;
			unsigned nr = 1 + (m % 3 == 0);
			for (unsigned r = 0; r < nr; r++) {
				snprintf(b, sizeof(b), "friend%u@example.org",
				         (d * 7 + m * 3 + r) % 25);
				send1(&p, &pr, t + r, b, inst, "me@example.net", 11, 64500, "NL",
				      &f);
			}
			inst++;
		}
	/* an ordinary message now: nothing unusual */
	uint32_t t = T0 - T0 % 86400 + 30 * 86400 + 10 * 3600;
	send1(&p, &pr, t, "friend3@example.org", inst++, "me@example.net", 11, 64500, "NL", &f);
	assert_true(f.z_rh < 2);
	assert_true(f.nov_bits < 1);
	assert_true(f.net_established);
	assert_true(f.snd_established);
	assert_true(f.hour_share > 0.05);
	assert_true(f.bounce_lb == 0);

	/* the wire round trip keeps everything */
	uint8_t w[PROFILE_WIRE_SIZE], w2[PROFILE_WIRE_SIZE];
	static struct profile q;
	assert_int_equal(profile_encode(&p, w, sizeof(w)), PROFILE_WIRE_SIZE);
	assert_true(PROFILE_WIRE_SIZE <= 1024);
	assert_int_equal(profile_decode(&q, w, sizeof(w)), 0);
	assert_int_equal(profile_encode(&q, w2, sizeof(w2)), PROFILE_WIRE_SIZE);
	assert_memory_equal(w, w2, sizeof(w));

	/* then a burst at 03h from a new network, new recipients, 10 a message */
	t = T0 - T0 % 86400 + 31 * 86400 + 3 * 3600;
	double zmax = 0, bits = 0;
	for (unsigned i = 0; i < 120; i++) {
		snprintf(b, sizeof(b), "victim%u@example.biz", i);
		struct profile_obs o;
		memset(&o, 0, sizeof(o));
		o.now_s = t + i * 10;
		o.rcpt = hs(b);
		o.inst = 100000 + i / 10;
		o.sender = (uint32_t)hs("me@example.net");
		o.prefix = 99;
		o.asn = 64999;
		o.cc[0] = 'R';
		o.cc[1] = 'U';
		profile_observe(&p, &o, &pr, &f);
		profile_update(&p, &o, &f, 0, 0); /* anomalous: not learned */
		if (f.z_rh > zmax)
			zmax = f.z_rh;
		bits = f.nov_bits;
	}
	assert_true(zmax > 5);
	assert_true(bits > 20);
	assert_true(f.z_rm > 2);
	assert_false(f.net_established);
	assert_false(f.asn_known);
	assert_false(f.cc_known);
	assert_true(f.net_any_settled);
	assert_true(f.hour_share >= 0 && f.hour_share < 0.01);
	/* nothing of the burst was learned into the baselines */
	assert_true(p.rh_mu < 1.5);
	assert_false(profile_rcpt_known(&p, hs("victim5@example.biz")));
}

static void test_sender_and_net(void **state)
{
	(void)state;
	static struct profile p;
	struct profile_prior pr;
	struct profile_features f;
	profile_prior_default(&pr);
	profile_init(&p, T0);
	/* mobile: a new /24 every message, one ASN */
	for (unsigned i = 0; i < 40; i++)
		send1(&p, &pr, T0 + i * 7200, "x@example.org", i + 1, "me@example.net", 1000 + i,
		      64501, "DE", &f);
	send1(&p, &pr, T0 + 41 * 7200, "x@example.org", 99, "me@example.net", 5000, 64501, "DE",
	      &f);
	assert_int_equal(f.net_slot, -1);
	assert_true(f.asn_known); /* the ASN is settled though no /24 is */
	assert_true(f.cc_known);
	send1(&p, &pr, T0 + 42 * 7200, "x@example.org", 100, "me@example.net", 6000, 64777, "DE",
	      &f);
	assert_false(f.asn_known);
	assert_true(f.cc_known);
	/* a new sender */
	send1(&p, &pr, T0 + 43 * 7200, "x@example.org", 101, "ceo@bank.example", 1000, 64501, "DE",
	      &f);
	assert_int_equal(f.snd_slot, -1);
	assert_int_equal(f.snd_known, 1);
	/* outcomes feed the recent bounce window */
	for (int i = 0; i < 50; i++)
		profile_note_outcome(&p, T0 + 44 * 7200, i % 5 == 0);
	send1(&p, &pr, T0 + 44 * 7200, "x@example.org", 102, "me@example.net", 1000, 64501, "DE",
	      &f);
	assert_true(f.bounce_recent > 0.15 && f.bounce_recent < 0.25);
	assert_true(f.bounce_n > 25 && f.bounce_n < 40); /* ~40 (1 - e^(-50/40)) */
	assert_true(f.bounce_lb > 0.07 && f.bounce_lb < 0.15);
}

/* The bounce ratio: the usual one is learned from ordinary outcomes (with
 * a 2 % prior), a spike fills the recent window without becoming the
 * usual, the recent window forgets with outcomes and with time. */
static void test_bounce_ratio(void **state)
{
	(void)state;
	static struct profile p;
	struct profile_features f;
	profile_init(&p, T0);
	/* nothing yet: the prior */
	profile_outcome_features(&p, T0, &f);
	assert_true(fabs(f.bounce_usual - 0.02) < 1e-9);
	assert_true(f.bounce_n == 0 && f.bounce_lb == 0 && f.bounce_bits == 0);
	/* two weeks of 30 recipients a day, 1 in 50 bounced (2 %) */
	uint32_t t = T0;
	unsigned k = 0;
	for (int d = 0; d < 14; d++)
		for (int i = 0; i < 30; i++, k++) {
			t = T0 + d * 86400 + 9 * 3600 + i * 600;
			profile_note_outcome(&p, t, k % 50 == 0);
		}
	profile_outcome_features(&p, t, &f);
	assert_true(f.bounce_usual > 0.012 && f.bounce_usual < 0.03);
	assert_true(f.bounce_usual_n > 150);
	assert_true(f.bounce_recent < 0.06);
	assert_true(f.bounce_bits < 3);
	/* a spam run: 40 recipients, 15 of them bounced (38 %) */
	for (int i = 0; i < 40; i++)
		profile_note_outcome(&p, t + 60 + i * 30, i % 8 < 3);
	t += 60 + 40 * 30;
	profile_outcome_features(&p, t, &f);
	assert_true(f.bounce_recent > 0.25 && f.bounce_recent < 0.4);
	assert_true(f.bounce_n > 30 && f.bounce_n < 40);
	assert_true(f.bounce_lb > 0.12);
	assert_true(f.bounce_bits > 15);
	/* ... and the usual ratio did not learn most of it */
	assert_true(f.bounce_usual < 0.04);
	double usual = f.bounce_usual;
	/* the recent window forgets with time (1-day time constant) */
	profile_outcome_features(&p, t + 3 * 86400, &f);
	assert_true(f.bounce_n < 2.5);
	assert_true(f.bounce_bits < 5);
	assert_true(fabs(f.bounce_usual - usual) < 0.01);
	/* ... and with ordinary outcomes */
	for (int i = 0; i < 200; i++)
		profile_note_outcome(&p, t + 3600 + i * 60, false);
	profile_outcome_features(&p, t + 3600 + 200 * 60, &f);
	assert_true(f.bounce_recent < 0.01);
	assert_true(f.bounce_bits == 0);
	/* the wire keeps it */
	static struct profile q;
	uint8_t w[PROFILE_WIRE_SIZE];
	assert_int_equal(profile_encode(&p, w, sizeof(w)), PROFILE_WIRE_SIZE);
	assert_int_equal(profile_decode(&q, w, sizeof(w)), 0);
	assert_true(q.ob_sk == p.ob_sk && q.ob_sn == p.ob_sn && q.out_sent == p.out_sent &&
	            q.out_bounced == p.out_bounced);
}

/* A version 1 profile (808 bytes, no home novelty or recent bounce
 * window) still decodes: the new fields start at zero. */
static void test_wire_v1(void **state)
{
	(void)state;
	static struct profile p, q;
	uint8_t w[PROFILE_WIRE_SIZE];
	profile_init(&p, T0);
	p.n_rcpts = 77;
	p.out_sent = 10;
	p.out_bounced = 1;
	p.hn_sk = 3;
	p.hn_sn = 4;
	p.ob_sk = 1;
	p.ob_sn = 2;
	assert_int_equal(profile_encode(&p, w, sizeof(w)), PROFILE_WIRE_SIZE);
	w[0] = 1;
	assert_int_equal(profile_decode(&q, w, PROFILE_V1_SIZE), 0);
	assert_int_equal(q.version, PROFILE_VERSION);
	assert_int_equal(q.n_rcpts, 77);
	assert_true(q.out_sent == 10 && q.out_bounced == 1);
	assert_true(q.hn_sk == 0 && q.hn_sn == 0 && q.ob_sk == 0 && q.ob_sn == 0);
	/* a version 1 byte on a version 2 size, or the reverse, is refused */
	assert_int_equal(profile_decode(&q, w, sizeof(w)), -1);
	w[0] = PROFILE_VERSION;
	assert_int_equal(profile_decode(&q, w, PROFILE_V1_SIZE), -1);
}

/* A new network abroad while the settled one is in use: its age, its
 * messages (counted even when nothing is learned) and the other one's
 * idle time are features. */
static void test_new_network_volume(void **state)
{
	(void)state;
	static struct profile p;
	struct profile_prior pr;
	struct profile_features f;
	struct profile_obs o;
	profile_prior_default(&pr);
	profile_init(&p, T0);
	for (unsigned i = 0; i < 40; i++)
		send1(&p, &pr, T0 + i * 7200, "x@example.org", i + 1, "me@example.net", 1000, 64501,
		      "DE", &f);
	uint32_t t = T0 + 40 * 7200;
	assert_true(f.other_net == false); /* the one network is this one */
	/* ten messages from elsewhere, none learned (learn_ctx 0) */
	for (unsigned i = 0; i < 10; i++) {
		memset(&o, 0, sizeof(o));
		o.now_s = t + i * 600;
		o.rcpt = hs("y@example.org");
		o.inst = 100 + i;
		o.sender_is_login = true;
		o.prefix = 7777;
		o.asn = 64999;
		o.cc[0] = 'N';
		o.cc[1] = 'G';
		profile_observe(&p, &o, &pr, &f);
		if (i == 0)
			assert_int_equal(f.net_slot, -1);
		profile_update(&p, &o, &f, 0, 0);
	}
	assert_true(f.other_net);
	assert_true(f.other_idle_s >= 7200 - 1 && f.other_idle_s <= 7200 + 6000);
	assert_true(f.net_slot >= 0);
	assert_false(f.net_established);
	assert_int_equal(f.net_count, 9); /* before this one */
	assert_true(fabs(f.net_age_s - 5400) < 1);
	/* the settled network used a minute ago */
	send1(&p, &pr, t + 5460, "x@example.org", 200, "me@example.net", 1000, 64501, "DE", &f);
	memset(&o, 0, sizeof(o));
	o.now_s = t + 5520;
	o.rcpt = hs("y@example.org");
	o.inst = 201;
	o.prefix = 7777;
	o.asn = 64999;
	profile_observe(&p, &o, &pr, &f);
	assert_true(f.other_net);
	assert_true(f.other_idle_s <= 60);
	assert_int_equal(f.net_count, 10);
}

static void test_wire_bad(void **state)
{
	(void)state;
	static struct profile p, q;
	uint8_t w[PROFILE_WIRE_SIZE];
	profile_init(&p, T0);
	assert_int_equal(profile_encode(&p, w, sizeof(w)), PROFILE_WIRE_SIZE);
	assert_int_equal(profile_encode(&p, w, sizeof(w) - 1), 0);
	assert_int_equal(profile_decode(&q, w, sizeof(w)), 0);
	assert_int_equal(profile_decode(&q, w, sizeof(w) - 1), -1);
	w[0] = PROFILE_VERSION + 1;
	assert_int_equal(profile_decode(&q, w, sizeof(w)), -1);
	w[0] = PROFILE_VERSION;
	/* rate_r (offset 28) = NaN */
	uint32_t nan = 0x7fc00000u;
	memcpy(w + 28, &nan, 4);
	assert_int_equal(profile_decode(&q, w, sizeof(w)), -1);
	/* random bytes never crash, and decode or refuse */
	uint32_t x = 12345;
	for (int k = 0; k < 2000; k++) {
		for (size_t i = 0; i < sizeof(w); i++) {
			x = x * 1103515245u + 12345u;
			w[i] = (uint8_t)(x >> 16);
		}
		w[0] = PROFILE_VERSION;
		if (profile_decode(&q, w, sizeof(w)) == 0) {
			struct profile_features f;
			struct profile_obs o = {.now_s = T0, .rcpt = 5, .inst = 7};
			struct profile_prior pr;
			profile_prior_default(&pr);
			profile_observe(&q, &o, &pr, &f);
			profile_update(&q, &o, &f, 1, 1);
		}
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_ewma),
	    cmocka_unit_test(test_decay),
	    cmocka_unit_test(test_hll),
	    cmocka_unit_test(test_rcpt_set),
	    cmocka_unit_test(test_bounds),
	    cmocka_unit_test(test_cold_start),
	    cmocka_unit_test(test_month_then_burst),
	    cmocka_unit_test(test_sender_and_net),
	    cmocka_unit_test(test_new_network_volume),
	    cmocka_unit_test(test_wire_bad),
	    cmocka_unit_test(test_bounce_ratio),
	    cmocka_unit_test(test_wire_v1),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
