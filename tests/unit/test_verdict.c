/*
 * tests/unit/test_verdict.c - unit tests of policyd/verdict.c.
 *
 * Covers: the severity order REJECT > DEFER > HOLD > WARN > DUNNO for every
 * pair of actions in both orders, dry-run parts never winning, the first of
 * equal severity winning, more parts than VERDICT_MAX_FIRED (the most
 * severe still wins, drops are counted), the reply line of each action
 * (default and configured enhanced status codes, DUNNO without text),
 * verdict_dsn_valid, verdict_check_action_text, verdict_fmt_duration.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policyd/verdict.h"
#include "proto/reply.h"

static const enum verdict_action all_actions[] = {ACT_DUNNO, ACT_WARN, ACT_HOLD, ACT_DEFER,
                                                  ACT_REJECT};
#define NACTIONS (sizeof(all_actions) / sizeof(all_actions[0]))

/* The rule names parts get: "r0", "r1", ... (static for the verdict's life). */
static const char *const rule_names[] = {"r0",  "r1",  "r2",  "r3",  "r4",  "r5",  "r6",  "r7",
                                         "r8",  "r9",  "r10", "r11", "r12", "r13", "r14", "r15",
                                         "r16", "r17", "r18", "r19", "r20", "r21", "r22", "r23",
                                         "r24", "r25", "r26", "r27", "r28", "r29", "r30", "r31",
                                         "r32", "r33", "r34", "r35", "r36", "r37", "r38", "r39"};
#define NRULES (sizeof(rule_names) / sizeof(rule_names[0]))

static void test_severity_order(void **state)
{
	(void)state;
	/* the enum order is the severity order the code relies on */
	assert_true(ACT_DUNNO < ACT_WARN);
	assert_true(ACT_WARN < ACT_HOLD);
	assert_true(ACT_HOLD < ACT_DEFER);
	assert_true(ACT_DEFER < ACT_REJECT);
	assert_string_equal(verdict_action_word(ACT_DUNNO), "DUNNO");
	assert_string_equal(verdict_action_word(ACT_WARN), "WARN");
	assert_string_equal(verdict_action_word(ACT_HOLD), "HOLD");
	assert_string_equal(verdict_action_word(ACT_DEFER), "DEFER");
	assert_string_equal(verdict_action_word(ACT_REJECT), "REJECT");
	assert_string_equal(verdict_action_word((enum verdict_action)99), "DUNNO");
}

static void test_empty(void **state)
{
	struct verdict v;
	char out[PROTO_REPLY_BUFSZ];

	(void)state;
	verdict_init(&v);
	verdict_decide(&v);
	assert_int_equal(v.action, ACT_DUNNO);
	assert_int_equal(v.winner, -1);
	assert_int_equal(verdict_reply(&v, out, sizeof(out)), 14);
	assert_string_equal(out, "action=DUNNO\n\n");
}

static void test_every_pair(void **state)
{
	(void)state;
	for (size_t i = 0; i < NACTIONS; i++)
		for (size_t j = 0; j < NACTIONS; j++) {
			enum verdict_action a = all_actions[i], b = all_actions[j];
			struct verdict v;
			verdict_init(&v);
			assert_non_null(verdict_add(&v, "limit", "first", a, false));
			assert_non_null(verdict_add(&v, "limit", "second", b, false));
			verdict_decide(&v);
			enum verdict_action want = a > b ? a : b;
			assert_int_equal(v.action, want);
			if (want == ACT_DUNNO)
				assert_int_equal(v.winner, -1);
			else if (a >= b) /* the first of equal severity */
				assert_int_equal(v.winner, 0);
			else
				assert_int_equal(v.winner, 1);
		}
}

static void test_dry_run(void **state)
{
	(void)state;
	for (size_t i = 0; i < NACTIONS; i++)
		for (size_t j = 0; j < NACTIONS; j++) {
			enum verdict_action dry = all_actions[i], real = all_actions[j];
			struct verdict v;
			/* dry-run part first, then after */
			for (int order = 0; order < 2; order++) {
				verdict_init(&v);
				if (order == 0) {
					verdict_add(&v, "limit", "dry", dry, true);
					verdict_add(&v, "limit", "real", real, false);
				} else {
					verdict_add(&v, "limit", "real", real, false);
					verdict_add(&v, "limit", "dry", dry, true);
				}
				assert_int_equal(v.nparts, 2);
				verdict_decide(&v);
				assert_int_equal(v.action, real);
				if (real == ACT_DUNNO) {
					assert_int_equal(v.winner, -1);
				} else {
					assert_int_equal(v.winner, order == 0 ? 1 : 0);
					assert_string_equal(v.part[v.winner].rule, "real");
				}
			}
		}
	/* only dry runs: DUNNO, no winner */
	struct verdict v;
	char out[PROTO_REPLY_BUFSZ];
	verdict_init(&v);
	struct verdict_part *p = verdict_add(&v, "limit", "dry", ACT_REJECT, true);
	snprintf(p->text, sizeof(p->text), "would reject");
	verdict_add(&v, "limit", "dry2", ACT_DEFER, true);
	verdict_decide(&v);
	assert_int_equal(v.action, ACT_DUNNO);
	assert_int_equal(v.winner, -1);
	verdict_reply(&v, out, sizeof(out));
	assert_string_equal(out, "action=DUNNO\n\n");
}

static void test_first_of_equal(void **state)
{
	struct verdict v;

	(void)state;
	verdict_init(&v);
	verdict_add(&v, "limit", "a", ACT_WARN, false);
	verdict_add(&v, "limit", "b", ACT_DEFER, false);
	verdict_add(&v, "limit", "c", ACT_DEFER, false);
	verdict_add(&v, "limit", "d", ACT_HOLD, false);
	verdict_add(&v, "limit", "e", ACT_DEFER, false);
	verdict_decide(&v);
	assert_int_equal(v.action, ACT_DEFER);
	assert_int_equal(v.winner, 1);
	assert_string_equal(v.part[v.winner].rule, "b");
	/* deciding twice gives the same answer */
	verdict_decide(&v);
	assert_int_equal(v.winner, 1);
}

static void test_add_fields(void **state)
{
	struct verdict v;

	(void)state;
	verdict_init(&v);
	struct verdict_part *p = verdict_add(&v, "flag", "rule-x", ACT_HOLD, true);
	assert_non_null(p);
	assert_ptr_equal(p, &v.part[0]);
	assert_int_equal(p->action, ACT_HOLD);
	assert_true(p->dry_run);
	assert_string_equal(p->rule, "rule-x");
	assert_string_equal(p->check, "flag");
	assert_string_equal(p->reason, "");
	assert_string_equal(p->text, "");
	assert_string_equal(p->dsn, "");
	assert_int_equal(v.nparts, 1);
	assert_int_equal(v.dropped, 0);
}

/* Add parts (action, dry) in order; check the winner is the first part with
 * the highest non-dry-run severity, and that drops are counted. */
static void check_overflow(const enum verdict_action *acts, const bool *dry, size_t n)
{
	struct verdict v;
	enum verdict_action best = ACT_DUNNO;
	size_t best_i = 0;

	assert_true(n <= NRULES);
	verdict_init(&v);
	for (size_t i = 0; i < n; i++) {
		struct verdict_part *p = verdict_add(&v, "limit", rule_names[i], acts[i], dry[i]);
		if (p)
			snprintf(p->text, sizeof(p->text), "text of %s", rule_names[i]);
		if (!dry[i] && acts[i] > best) {
			best = acts[i];
			best_i = i;
		}
		assert_true(v.nparts <= VERDICT_MAX_FIRED);
	}
	assert_int_equal(v.nparts, n < VERDICT_MAX_FIRED ? n : VERDICT_MAX_FIRED);
	assert_int_equal(v.dropped, n > VERDICT_MAX_FIRED ? n - VERDICT_MAX_FIRED : 0);
	verdict_decide(&v);
	assert_int_equal(v.action, best);
	if (best == ACT_DUNNO) {
		assert_int_equal(v.winner, -1);
	} else {
		assert_true(v.winner >= 0);
		assert_string_equal(v.part[v.winner].rule, rule_names[best_i]);
		char want[64];
		snprintf(want, sizeof(want), "text of %s", rule_names[best_i]);
		assert_string_equal(v.part[v.winner].text, want);
	}
}

static void test_overflow(void **state)
{
	enum verdict_action acts[NRULES];
	bool dry[NRULES];

	(void)state;
	/* 16 WARN, then a REJECT */
	for (size_t i = 0; i < NRULES; i++) {
		acts[i] = ACT_WARN;
		dry[i] = false;
	}
	acts[VERDICT_MAX_FIRED] = ACT_REJECT;
	check_overflow(acts, dry, VERDICT_MAX_FIRED + 1);
	/* ... and more after it, more or less severe */
	acts[VERDICT_MAX_FIRED + 1] = ACT_DEFER;
	acts[VERDICT_MAX_FIRED + 2] = ACT_REJECT;
	check_overflow(acts, dry, VERDICT_MAX_FIRED + 3);
	/* a DEFER late, then a REJECT later still */
	acts[VERDICT_MAX_FIRED] = ACT_DEFER;
	acts[VERDICT_MAX_FIRED + 1] = ACT_HOLD;
	acts[VERDICT_MAX_FIRED + 2] = ACT_REJECT;
	check_overflow(acts, dry, VERDICT_MAX_FIRED + 3);
	/* 16 dry-run REJECTs then a real HOLD: HOLD wins */
	for (size_t i = 0; i < NRULES; i++) {
		acts[i] = ACT_REJECT;
		dry[i] = i < VERDICT_MAX_FIRED;
	}
	acts[VERDICT_MAX_FIRED] = ACT_HOLD;
	check_overflow(acts, dry, VERDICT_MAX_FIRED + 1);
	/* 16 DUNNO then a dry-run REJECT: still DUNNO */
	for (size_t i = 0; i < NRULES; i++) {
		acts[i] = ACT_DUNNO;
		dry[i] = false;
	}
	dry[VERDICT_MAX_FIRED] = true;
	acts[VERDICT_MAX_FIRED] = ACT_REJECT;
	check_overflow(acts, dry, VERDICT_MAX_FIRED + 1);
	/* the REJECT early, equals later are dropped */
	for (size_t i = 0; i < NRULES; i++) {
		acts[i] = ACT_REJECT;
		dry[i] = false;
	}
	check_overflow(acts, dry, NRULES);

	/* pseudo-random sequences (fixed seed) of every length up to NRULES */
	uint32_t seed = 12345;
	for (int round = 0; round < 2000; round++) {
		size_t n = (size_t)round % (NRULES + 1);
		for (size_t i = 0; i < n; i++) {
			seed = seed * 1103515245u + 12345u;
			acts[i] = all_actions[(seed >> 16) % NACTIONS];
			seed = seed * 1103515245u + 12345u;
			dry[i] = ((seed >> 16) % 4) == 0;
		}
		check_overflow(acts, dry, n);
	}
}

static void fill(struct verdict *v, enum verdict_action a, const char *text, const char *dsn)
{
	verdict_init(v);
	struct verdict_part *p = verdict_add(v, "limit", "r", a, false);
	assert_non_null(p);
	snprintf(p->text, sizeof(p->text), "%s", text);
	snprintf(p->dsn, sizeof(p->dsn), "%s", dsn);
	verdict_decide(v);
}

static void expect_reply(enum verdict_action a, const char *text, const char *dsn, const char *want)
{
	struct verdict v;
	char out[PROTO_REPLY_BUFSZ];

	fill(&v, a, text, dsn);
	memset(out, 'x', sizeof(out));
	assert_int_equal(verdict_reply(&v, out, sizeof(out)), strlen(want));
	assert_string_equal(out, want);
}

static void test_reply(void **state)
{
	(void)state;
	expect_reply(ACT_DUNNO, "ignored", "4.7.28", "action=DUNNO\n\n");
	expect_reply(ACT_WARN, "Rate limit exceeded for alice", "",
	             "action=WARN Rate limit exceeded for alice\n\n");
	expect_reply(ACT_HOLD, "Held for review", "", "action=HOLD Held for review\n\n");
	expect_reply(ACT_HOLD, "Held for review", "4.7.28", "action=HOLD Held for review\n\n");
	expect_reply(ACT_HOLD, "", "", "action=HOLD\n\n");
	expect_reply(ACT_DEFER, "Too many recipients; try again in 35s", "",
	             "action=DEFER 4.7.1 Too many recipients; try again in 35s\n\n");
	expect_reply(ACT_REJECT, "Go away", "", "action=REJECT 5.7.1 Go away\n\n");
	/* a configured enhanced status code replaces the default */
	expect_reply(ACT_DEFER, "Slow down", "4.7.28", "action=DEFER 4.7.28 Slow down\n\n");
	expect_reply(ACT_REJECT, "Go away", "5.7.28", "action=REJECT 5.7.28 Go away\n\n");
	/* text is made safe by proto_reply_format */
	expect_reply(ACT_DEFER, "a\tb", "", "action=DEFER 4.7.1 a?b\n\n");

	/* the winner's text, not another part's */
	struct verdict v;
	char out[PROTO_REPLY_BUFSZ];
	verdict_init(&v);
	struct verdict_part *p = verdict_add(&v, "limit", "a", ACT_HOLD, false);
	snprintf(p->text, sizeof(p->text), "hold text");
	p = verdict_add(&v, "limit", "b", ACT_REJECT, true);
	snprintf(p->text, sizeof(p->text), "dry text");
	p = verdict_add(&v, "limit", "c", ACT_DEFER, false);
	snprintf(p->text, sizeof(p->text), "defer text");
	snprintf(p->dsn, sizeof(p->dsn), "4.7.28");
	verdict_decide(&v);
	verdict_reply(&v, out, sizeof(out));
	assert_string_equal(out, "action=DEFER 4.7.28 defer text\n\n");

	/* a long text is cut, the line stays within the protocol's limit */
	char big[VERDICT_TEXT_MAX];
	memset(big, 'a', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	fill(&v, ACT_DEFER, big, "");
	size_t n = verdict_reply(&v, out, sizeof(out));
	assert_true(n > 0 && n < sizeof(out));
	assert_true(n <= strlen("action=") + PROTO_REPLY_MAX_TEXT + 2);
	assert_memory_equal(out, "action=DEFER 4.7.1 aaa", 22);
	assert_string_equal(out + n - 2, "\n\n");
	/* a small buffer: cut, never overflowed */
	char small[24];
	n = verdict_reply(&v, small, sizeof(small));
	assert_true(n < sizeof(small));
	assert_int_equal(n, strlen(small));
}

static void test_reply_no_text(void **state)
{
	(void)state;
	expect_reply(ACT_DEFER, "", "", "action=DEFER 4.7.1\n\n");
	expect_reply(ACT_REJECT, "", "5.7.28", "action=REJECT 5.7.28\n\n");
}

static void test_dsn_valid(void **state)
{
	static const char *const good[] = {"4.7.1",  "5.7.1",     "2.0.0",
	                                   "4.7.28", "5.123.999", "4.0.0"};
	static const char *const bad[] = {"",         "4",     "4.",     "4.7",     "4.7.",
	                                  "3.7.1",    "6.7.1", "4.7.1 ", " 4.7.1",  "4.7.1000",
	                                  "4.1000.1", "a.b.c", "4..1",   "4.7.1.2", "44.7.1",
	                                  "4.7.x",    "4-7-1", "4.7.-1", "x4.7.1",  "4.7.1x"};

	(void)state;
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		if (!verdict_dsn_valid(good[i]))
			fail_msg("'%s' should be valid", good[i]);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (verdict_dsn_valid(bad[i]))
			fail_msg("'%s' should be invalid", bad[i]);
}

static void test_action_text(void **state)
{
	static const char *const good[] = {
	    "DUNNO",
	    "dunno",
	    "OK",
	    "DEFER",
	    "DEFER text",
	    "DEFER_IF_PERMIT x",
	    "451 4.3.5 Try later",
	    "450",
	    "550 5.7.1 No",
	    "REJECT",
	    "REJECT go away",
	    "HOLD",
	    "WARN x",
	    "INFO x",
	    "DEFER_IF_REJECT x",
	};
	static const char *const bad[] = {
	    "BLAH",       "",
	    " DUNNO",     "DUNNOX",
	    "DEFERtext",  "45",
	    "4510",       "451x",
	    "351 text",   "650 text",
	    "DISCARD",    "PREPEND X-A: b",
	    "OK\x01",     "DEFER\ttext",
	    "DEFER \xff",
	};
	char err[256];

	(void)state;
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		if (verdict_check_action_text(good[i], err, sizeof(err)) != 0)
			fail_msg("'%s' should be accepted: %s", good[i], err);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err[0] = '\0';
		if (verdict_check_action_text(bad[i], err, sizeof(err)) != -1)
			fail_msg("'%s' should be refused", bad[i]);
		assert_true(err[0] != '\0');
	}
	assert_int_equal(verdict_check_action_text("BLAH", err, sizeof(err)), -1);
	assert_non_null(strstr(err, "'BLAH'"));
	/* too long for a reply line */
	char big[PROTO_REPLY_MAX_TEXT + 8];
	memcpy(big, "DEFER ", 6);
	memset(big + 6, 'a', sizeof(big) - 7);
	big[sizeof(big) - 1] = '\0';
	assert_int_equal(verdict_check_action_text(big, err, sizeof(err)), -1);
	/* a tiny error buffer is enough */
	char tiny[4];
	assert_int_equal(verdict_check_action_text("BLAH", tiny, sizeof(tiny)), -1);
	assert_int_equal(strlen(tiny), 3);
}

static void expect_dur(uint64_t us, const char *want)
{
	char out[32];
	verdict_fmt_duration(out, sizeof(out), us);
	if (strcmp(out, want) != 0)
		fail_msg("%llu us: '%s', want '%s'", (unsigned long long)us, out, want);
}

#define S  1000000ULL
#define MN (60 * S)
#define HR (3600 * S)
#define DY (86400 * S)

static void test_fmt_duration(void **state)
{
	(void)state;
	expect_dur(0, "0s");
	expect_dur(1, "1s"); /* rounded up: never "0s" while waiting */
	expect_dur(35 * S, "35s");
	expect_dur(35 * S - 1, "35s");
	expect_dur(35 * S + 1, "36s");
	expect_dur(119 * S, "119s");
	expect_dur(119 * S + 1, "2m");
	expect_dur(120 * S, "2m");
	expect_dur(120 * S + 1, "3m");
	expect_dur(121 * S, "3m");
	expect_dur(180 * S, "3m");
	expect_dur(3599 * S, "60m");
	expect_dur(7199 * S, "120m");
	expect_dur(7200 * S, "2h");
	expect_dur(7201 * S, "3h");
	expect_dur(10 * HR, "10h");
	expect_dur(47 * HR, "47h");
	expect_dur(2 * DY - S, "48h");
	expect_dur(2 * DY, "2d");
	expect_dur(2 * DY + 1, "3d");
	expect_dur(366 * DY, "366d");
	/* a small buffer: cut, terminated */
	char out[3];
	verdict_fmt_duration(out, sizeof(out), 119 * S);
	assert_string_equal(out, "11");
}

static void test_fmt_duration_huge(void **state)
{
	char out[32];

	(void)state;
	verdict_fmt_duration(out, sizeof(out), UINT64_MAX);
	assert_string_equal(out, "213503983d");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_severity_order),    cmocka_unit_test(test_empty),
	    cmocka_unit_test(test_every_pair),        cmocka_unit_test(test_dry_run),
	    cmocka_unit_test(test_first_of_equal),    cmocka_unit_test(test_add_fields),
	    cmocka_unit_test(test_overflow),          cmocka_unit_test(test_reply),
	    cmocka_unit_test(test_reply_no_text),     cmocka_unit_test(test_dsn_valid),
	    cmocka_unit_test(test_action_text),       cmocka_unit_test(test_fmt_duration),
	    cmocka_unit_test(test_fmt_duration_huge),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
