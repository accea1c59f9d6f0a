/*
 * tests/unit/test_gcra.c - cmocka tests of cache/gcra.c: window edges,
 * several windows, large limits (limit > period_us), byte costs, cost >
 * limit, refunds, exact retry values, overflow safety near 2^60 µs.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "cache/gcra.h"

#define SEC  ((int64_t)1000000)
#define HOUR (3600 * SEC)
#define DAY  (86400 * SEC)
#define T0   ((int64_t)1700000000 * SEC)

static const struct gcra_tat empty = {0, 0};

static uint64_t test_rng = 0x9e3779b97f4a7c15ULL;

static uint64_t test_rand(void)
{
	test_rng ^= test_rng >> 12;
	test_rng ^= test_rng << 25;
	test_rng ^= test_rng >> 27;
	return test_rng * 0x2545f4914f6cdd1dULL;
}

/* 1 + a random number below n */
static uint64_t test_rand_upto(uint64_t n)
{
	return 1 + test_rand() % n;
}

/* Take cost from *t; commits on success. */
static bool take(const struct gcra_window *w, struct gcra_tat *t, int64_t now, uint64_t cost,
                 uint64_t *retry)
{
	struct gcra_tat next;
	uint64_t r = 0;
	if (!gcra_take(w, *t, now, cost, &next, &r)) {
		if (retry)
			*retry = r;
		return false;
	}
	*t = next;
	return true;
}

/* Like the store: an op conforms when every window does; commits then. */
static bool take_all(const struct gcra_window *w, struct gcra_tat *t, unsigned n, int64_t now,
                     uint64_t cost, int *window, uint64_t *retry)
{
	struct gcra_tat next[4];
	bool ok = true;
	*window = -1;
	*retry = 0;
	for (unsigned i = 0; i < n; i++) {
		uint64_t r;
		if (gcra_take(&w[i], t[i], now, cost, &next[i], &r))
			continue;
		if (ok)
			*window = (int)i;
		ok = false;
		if (r > *retry)
			*retry = r;
	}
	if (ok)
		for (unsigned i = 0; i < n; i++)
			t[i] = next[i];
	return ok;
}

static void test_window_edges(void **state)
{
	(void)state;
	struct gcra_window w = {100, HOUR};
	struct gcra_tat t = empty;
	uint64_t retry = 0;

	for (int i = 0; i < 100; i++)
		assert_true(take(&w, &t, T0, 1, NULL));
	assert_int_equal(gcra_used(&w, t, T0), 100);
	assert_false(take(&w, &t, T0, 1, &retry));
	assert_int_equal(retry, 36 * SEC); /* period / limit */
	assert_int_equal(gcra_empty_in(t, T0), HOUR);

	/* one µs early: no; exactly period/limit later: one more, and only one */
	assert_false(take(&w, &t, T0 + 36 * SEC - 1, 1, &retry));
	assert_int_equal(retry, 1);
	assert_true(take(&w, &t, T0 + 36 * SEC, 1, NULL));
	assert_false(take(&w, &t, T0 + 36 * SEC, 1, &retry));
	assert_int_equal(retry, 36 * SEC);

	/* a whole period after the last take the window is empty again */
	int64_t later = T0 + 36 * SEC + HOUR;
	assert_true(gcra_is_empty(t, later));
	assert_false(gcra_is_empty(t, later - 1));
	assert_int_equal(gcra_used(&w, t, later), 0);
	assert_int_equal(gcra_used(&w, t, later - 1), 1);
	for (int i = 0; i < 100; i++)
		assert_true(take(&w, &t, later, 1, NULL));
	assert_false(take(&w, &t, later, 1, NULL));
}

/* limit units of cost 1 conform at one instant, limit + 1 do not */
static void check_burst(uint64_t limit, uint64_t period)
{
	struct gcra_window w = {limit, period};
	struct gcra_tat t = empty;
	uint64_t retry = 0;
	for (uint64_t i = 0; i < limit; i++) {
		if (!take(&w, &t, T0, 1, NULL))
			fail_msg("limit %llu period %llu: unit %llu refused",
			         (unsigned long long)limit, (unsigned long long)period,
			         (unsigned long long)i + 1);
	}
	assert_int_equal(gcra_used(&w, t, T0), limit);
	assert_int_equal(gcra_empty_in(t, T0), period);
	assert_false(take(&w, &t, T0, 1, &retry));
	/* ceil(period / limit) */
	assert_int_equal(retry, (period + limit - 1) / limit);
}

static void test_burst_any_limit(void **state)
{
	(void)state;
	check_burst(1, 1);
	check_burst(1, DAY);
	check_burst(3, 10);
	check_burst(7, 100);
	check_burst(1000, 1);    /* limit > period_us */
	check_burst(1000000, 7); /* 1e6 per 7 µs */
	check_burst(1000003, HOUR);
	for (int i = 0; i < 200; i++)
		check_burst(test_rand_upto(3000), test_rand_upto(i % 2 ? 5000 : (uint64_t)DAY));
}

/* large limits: take exactly limit in random chunks, then 1 more fails */
static void test_large_limits(void **state)
{
	(void)state;
	struct {
		uint64_t limit, period;
	} cases[] = {
	    {100000000, HOUR}, /* 100 MB per hour of bytes */
	    {1000000000, DAY}, /* 1e9 per day */
	    {1000000000, SEC}, /* 1e9 per second: limit > period_us */
	    {UINT64_MAX, DAY}, {UINT64_MAX, 1}, {(uint64_t)1 << 63, (uint64_t)1 << 62},
	};
	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		struct gcra_window w = {cases[c].limit, cases[c].period};
		for (int rep = 0; rep < 20; rep++) {
			struct gcra_tat t = empty;
			uint64_t left = w.limit;
			while (left > 0) {
				uint64_t cost = rep == 0 ? left / 3 + 1 : test_rand_upto(left);
				if (cost > left)
					cost = left;
				assert_true(take(&w, &t, T0, cost, NULL));
				left -= cost;
			}
			assert_int_equal(gcra_used(&w, t, T0), w.limit);
			assert_int_equal(gcra_empty_in(t, T0), w.period_us);
			uint64_t retry = 0;
			assert_false(take(&w, &t, T0, 1, &retry));
			assert_int_equal(retry,
			                 w.period_us / w.limit + (w.period_us % w.limit != 0));
		}
	}
	/* 1e9 per day in costs of 333,333,333: increments are not whole µs */
	struct gcra_window w = {1000000000, DAY};
	struct gcra_tat t = empty;
	for (int i = 0; i < 3; i++)
		assert_true(take(&w, &t, T0, 333333333, NULL));
	assert_int_equal(gcra_used(&w, t, T0), 999999999);
	assert_true(take(&w, &t, T0, 1, NULL));
	assert_false(take(&w, &t, T0, 1, NULL));
}

static void test_several_windows(void **state)
{
	(void)state;
	/* 100 per hour and 1000 per day */
	struct gcra_window w[2] = {{100, HOUR}, {1000, DAY}};
	struct gcra_tat t[2] = {empty, empty};
	int win;
	uint64_t retry;

	for (int i = 0; i < 100; i++)
		assert_true(take_all(w, t, 2, T0, 1, &win, &retry));
	assert_false(take_all(w, t, 2, T0, 1, &win, &retry));
	assert_int_equal(win, 0);
	assert_int_equal(retry, 36 * SEC);

	/*
	 * Bursts of 100 every hour: the day window (86.4 s per unit, 5040 s
	 * net per hour) lets hours 1..15 through whole; hour 16 gets 66.
	 */
	for (int64_t h = 1; h <= 15; h++) {
		for (int i = 0; i < 100; i++)
			assert_true(take_all(w, t, 2, T0 + h * HOUR, 1, &win, &retry));
		assert_false(take_all(w, t, 2, T0 + h * HOUR, 1, &win, &retry));
		assert_int_equal(win, 0);
	}
	int64_t now = T0 + 16 * HOUR;
	for (int i = 0; i < 66; i++)
		assert_true(take_all(w, t, 2, now, 1, &win, &retry));
	assert_false(take_all(w, t, 2, now, 1, &win, &retry));
	assert_int_equal(win, 1);
	/* 80640 s + 67 * 86.4 s - 86400 s = 28.8 s */
	assert_int_equal(retry, 28800000);
	assert_int_equal(gcra_used(&w[1], t[1], now), 1000);
	assert_int_equal(gcra_used(&w[0], t[0], now), 66);
	assert_false(take_all(w, t, 2, now + 28800000 - 1, 1, &win, &retry));
	assert_true(take_all(w, t, 2, now + 28800000, 1, &win, &retry));
}

static void test_bytes(void **state)
{
	(void)state;
	struct gcra_window w = {100000000, HOUR}; /* 100 MB per hour, 36 µs per byte */
	struct gcra_tat t = empty;
	uint64_t retry = 0;
	assert_true(take(&w, &t, T0, 40000000, NULL));
	assert_int_equal(gcra_used(&w, t, T0), 40000000);
	assert_true(take(&w, &t, T0, 40000000, NULL));
	assert_false(take(&w, &t, T0, 30000000, &retry));
	assert_int_equal(retry, 10000000ULL * 36); /* until 30 MB fit */
	assert_true(take(&w, &t, T0, 20000000, NULL));
	assert_false(take(&w, &t, T0, 1, &retry));
	assert_int_equal(retry, 36);
	assert_false(take(&w, &t, T0, 10000000, &retry));
	assert_int_equal(retry, 360 * SEC);
	assert_true(take(&w, &t, T0 + 360 * SEC, 10000000, NULL));

	/* cost 0 always conforms and changes nothing */
	struct gcra_tat before = t;
	assert_true(take(&w, &t, T0, 0, NULL));
	assert_int_equal(t.us, before.us);
	assert_int_equal(t.rem, before.rem);
}

static void test_cost_over_limit(void **state)
{
	(void)state;
	struct gcra_window w = {10, HOUR};
	struct gcra_tat t = empty;
	uint64_t retry = 0;
	assert_false(take(&w, &t, T0, 11, &retry));
	assert_int_equal(retry, UINT64_MAX);
	assert_false(take(&w, &t, T0, UINT64_MAX, &retry));
	assert_int_equal(retry, UINT64_MAX);
	assert_true(gcra_is_empty(t, T0));
	assert_true(take(&w, &t, T0, 10, NULL));
	assert_false(take(&w, &t, T0 + 10 * HOUR, 11, &retry));
	assert_int_equal(retry, UINT64_MAX);
}

static void test_refund(void **state)
{
	(void)state;
	struct gcra_window w = {100, HOUR};
	struct gcra_tat t = empty;
	for (int i = 0; i < 100; i++)
		assert_true(take(&w, &t, T0, 1, NULL));
	assert_false(take(&w, &t, T0, 1, NULL));
	t = gcra_refund(&w, t, T0, 1);
	assert_int_equal(gcra_used(&w, t, T0), 99);
	assert_true(take(&w, &t, T0, 1, NULL));
	assert_false(take(&w, &t, T0, 1, NULL));
	t = gcra_refund(&w, t, T0, 30);
	assert_int_equal(gcra_used(&w, t, T0), 70);

	/* never before now: refunding more than is in use empties the window */
	t = gcra_refund(&w, t, T0, 1000);
	assert_int_equal(t.us, T0);
	assert_int_equal(t.rem, 0);
	assert_true(gcra_is_empty(t, T0));
	/* on an empty window */
	t = gcra_refund(&w, empty, T0, 5);
	assert_true(gcra_is_empty(t, T0));

	/* 10 taken, 3 minutes later 5 are still in use; refunding 10 empties */
	t = empty;
	assert_true(take(&w, &t, T0, 10, NULL));
	assert_int_equal(gcra_used(&w, t, T0 + 180 * SEC), 5);
	t = gcra_refund(&w, t, T0 + 180 * SEC, 10);
	assert_true(gcra_is_empty(t, T0 + 180 * SEC));

	/* inexact increments: refund undoes a take exactly */
	struct gcra_window w7 = {7, 100};
	t = empty;
	assert_true(take(&w7, &t, T0, 3, NULL));
	struct gcra_tat mid = t;
	assert_true(take(&w7, &t, T0, 2, NULL));
	t = gcra_refund(&w7, t, T0, 2);
	assert_int_equal(t.us, mid.us);
	assert_int_equal(t.rem, mid.rem);
	/* and a refund of 1 from 300/7 µs: 2 * 100/7 = 28 + 4/7 */
	t = gcra_refund(&w7, t, T0, 1);
	assert_int_equal(t.us, T0 + 28);
	assert_int_equal(t.rem, 4);
	/* huge refund cost: no overflow */
	t = gcra_refund(&w7, t, T0, UINT64_MAX);
	assert_true(gcra_is_empty(t, T0));
}

static void test_retry_exact(void **state)
{
	(void)state;
	/* 7 per 100 µs: each unit is 14 + 2/7 µs */
	struct gcra_window w = {7, 100};
	struct gcra_tat t = empty;
	uint64_t retry = 0;
	for (int i = 0; i < 7; i++)
		assert_true(take(&w, &t, T0, 1, NULL));
	assert_false(take(&w, &t, T0, 1, &retry));
	assert_int_equal(retry, 15);
	assert_false(take(&w, &t, T0 + 14, 1, NULL));
	assert_true(take(&w, &t, T0 + 15, 1, NULL));
	assert_false(take(&w, &t, T0 + 15, 2, &retry));
	/* tat = T0 + 800/7; + 200/7 - 15 - 100 = 27 + 6/7 -> 28 */
	assert_int_equal(retry, 28);
	assert_false(take(&w, &t, T0 + 15 + 27, 2, NULL));
	assert_true(take(&w, &t, T0 + 15 + 28, 2, NULL));

	/* property: the retry is the smallest wait that works */
	for (int n = 0; n < 3000; n++) {
		struct gcra_window rw = {test_rand_upto(n % 3 ? 50 : 5000000),
		                         test_rand_upto(n % 2 ? 1000 : (uint64_t)DAY)};
		struct gcra_tat rt = empty;
		int64_t now = T0;
		for (int step = 0; step < 40; step++) {
			uint64_t cost = test_rand_upto(rw.limit);
			uint64_t r = 0;
			struct gcra_tat next;
			if (gcra_take(&rw, rt, now, cost, &next, &r)) {
				rt = next;
			} else {
				assert_true(r >= 1);
				assert_true(gcra_take(&rw, rt, now + (int64_t)r, cost, &next, &r));
				assert_false(
				    gcra_take(&rw, rt, now + (int64_t)r - 1, cost, &next, &r));
			}
			now += (int64_t)(test_rand() % (rw.period_us / 4 + 1));
		}
	}
}

static void test_used_and_empty_in(void **state)
{
	(void)state;
	struct gcra_window w = {3, 10}; /* 3 1/3 µs per unit */
	struct gcra_tat t = empty;
	assert_int_equal(gcra_used(&w, t, T0), 0);
	assert_int_equal(gcra_empty_in(t, T0), 0);
	assert_true(take(&w, &t, T0, 1, NULL));
	assert_int_equal(gcra_used(&w, t, T0), 1);
	assert_int_equal(gcra_empty_in(t, T0), 4);
	assert_int_equal(gcra_used(&w, t, T0 + 3), 1); /* 1/3 µs left: rounds up */
	assert_int_equal(gcra_empty_in(t, T0 + 3), 1);
	assert_false(gcra_is_empty(t, T0 + 3));
	assert_true(gcra_is_empty(t, T0 + 4));
	assert_int_equal(gcra_used(&w, t, T0 + 4), 0);
	assert_true(take(&w, &t, T0, 2, NULL));
	assert_int_equal(gcra_used(&w, t, T0), 3);
	assert_int_equal(gcra_used(&w, t, T0 + 1), 3); /* 9 µs left = 2.7 units */
	assert_int_equal(gcra_used(&w, t, T0 + 4), 2);

	/* capped at limit when the TAT is further out (a lowered limit) */
	struct gcra_window small = {2, 10};
	assert_int_equal(gcra_used(&small, t, T0), 2);

	/* a remainder from a larger limit is folded */
	struct gcra_tat odd = {T0, 25};
	struct gcra_tat n = gcra_normalize(&w, odd);
	assert_int_equal(n.us, T0 + 8);
	assert_int_equal(n.rem, 1);
	assert_int_equal(gcra_used(&w, odd, T0), 3); /* 8 1/3 µs * 3 / 10 -> 2.5 -> 3 */
}

static void test_overflow(void **state)
{
	(void)state;
	const int64_t now = (int64_t)1 << 60;
	struct gcra_window ws[] = {
	    {(uint64_t)1 << 40, (uint64_t)1 << 50},
	    {UINT64_MAX, (uint64_t)1 << 60},
	    {UINT64_MAX - 1, UINT64_MAX / 8},
	    {3, (uint64_t)1 << 61},
	    {1, (uint64_t)INT64_MAX}, /* the TAT saturates */
	};
	for (size_t i = 0; i < sizeof(ws) / sizeof(ws[0]); i++) {
		struct gcra_window *w = &ws[i];
		struct gcra_tat t = empty;
		uint64_t retry = 0;
		assert_true(take(w, &t, now, w->limit / 2, NULL));
		assert_true(take(w, &t, now, w->limit - w->limit / 2, NULL));
		assert_int_equal(gcra_used(w, t, now), w->limit);
		assert_false(take(w, &t, now, 1, &retry));
		assert_true(retry >= 1);
		assert_true(gcra_empty_in(t, now) > 0);
		struct gcra_tat r = gcra_refund(w, t, now, w->limit);
		assert_true(gcra_is_empty(r, now));
		assert_int_equal(gcra_used(w, t, now + (int64_t)(w->period_us / 2)) <= w->limit, 1);
	}
	/* a TAT already at INT64_MAX */
	struct gcra_window w = {10, HOUR};
	struct gcra_tat t = {INT64_MAX, 0};
	uint64_t retry = 0;
	assert_false(take(&w, &t, now, 1, &retry));
	assert_true(retry > 0);
	assert_int_equal(gcra_used(&w, t, now), 10);
	/* negative and very old times */
	struct gcra_tat old = {INT64_MIN, 0};
	assert_true(take(&w, &old, now, 10, NULL));
	assert_int_equal(old.us, now + HOUR);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_window_edges),
	    cmocka_unit_test(test_burst_any_limit),
	    cmocka_unit_test(test_large_limits),
	    cmocka_unit_test(test_several_windows),
	    cmocka_unit_test(test_bytes),
	    cmocka_unit_test(test_cost_over_limit),
	    cmocka_unit_test(test_refund),
	    cmocka_unit_test(test_retry_exact),
	    cmocka_unit_test(test_used_and_empty_in),
	    cmocka_unit_test(test_overflow),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
