/*
 * cache/gcra.c - exact GCRA arithmetic on rational TATs (see gcra.h).
 *
 * Entry points: gcra_take(), gcra_refund(), gcra_used(), gcra_empty_in(),
 * gcra_normalize().
 *
 * A TAT is us + rem/limit microseconds.  The increment of a cost c is
 * c * period / limit, kept as quotient + remainder (128-bit product), so
 * sums of increments never drift.  All sums of microseconds are done in
 * 128 bits; a TAT that would pass INT64_MAX (a period of ~290,000 years)
 * saturates there.  A remainder >= limit (the limit was lowered since the
 * state was written) is folded into whole microseconds first.
 */
#include "gcra.h"

typedef __int128 gcra_i128;
typedef unsigned __int128 gcra_u128;

/* Fold rem into whole microseconds so that rem < limit. */
struct gcra_tat gcra_normalize(const struct gcra_window *w, struct gcra_tat tat)
{
	if (w->limit == 0 || tat.rem < w->limit)
		return tat;
	gcra_i128 us = (gcra_i128)tat.us + (gcra_i128)(tat.rem / w->limit);
	tat.rem %= w->limit;
	if (us > INT64_MAX) {
		tat.us = INT64_MAX;
		tat.rem = 0;
	} else {
		tat.us = (int64_t)us;
	}
	return tat;
}

/* tat > now, exactly */
static bool gcra_after(struct gcra_tat tat, int64_t now)
{
	return tat.us > now || (tat.us == now && tat.rem > 0);
}

bool gcra_take(const struct gcra_window *w, struct gcra_tat tat, int64_t now, uint64_t cost,
               struct gcra_tat *next, uint64_t *retry_us)
{
	if (cost == 0) {
		*next = gcra_normalize(w, tat);
		return true;
	}
	if (w->limit == 0 || cost > w->limit) {
		*retry_us = UINT64_MAX;
		return false;
	}
	tat = gcra_normalize(w, tat);

	/* inc = cost * period / limit = q + r / limit; q <= period since cost <= limit */
	gcra_u128 prod = (gcra_u128)cost * w->period_us;
	uint64_t q = (uint64_t)(prod / w->limit);
	uint64_t r = (uint64_t)(prod % w->limit);

	struct gcra_tat base = gcra_after(tat, now) ? tat : (struct gcra_tat){now, 0};
	gcra_i128 us = (gcra_i128)base.us + q;
	uint64_t rem;
	if (r > 0 && base.rem >= w->limit - r) {
		rem = base.rem - (w->limit - r);
		us += 1;
	} else {
		rem = base.rem + r;
	}

	gcra_i128 d = us - now; /* new_tat - now = d + rem/limit */
	if (d < (gcra_i128)w->period_us || (d == (gcra_i128)w->period_us && rem == 0)) {
		if (us > INT64_MAX) {
			next->us = INT64_MAX;
			next->rem = 0;
		} else {
			next->us = (int64_t)us;
			next->rem = rem;
		}
		return true;
	}
	/* smallest whole wait w with new_tat - (now + w) <= period */
	gcra_i128 wait = d - (gcra_i128)w->period_us + (rem > 0 ? 1 : 0);
	*retry_us = wait > (gcra_i128)UINT64_MAX ? UINT64_MAX : (uint64_t)wait;
	return false;
}

struct gcra_tat gcra_refund(const struct gcra_window *w, struct gcra_tat tat, int64_t now,
                            uint64_t cost)
{
	struct gcra_tat floor = {now, 0};
	if (w->limit == 0)
		return gcra_after(tat, now) ? tat : floor;
	tat = gcra_normalize(w, tat);
	if (!gcra_after(tat, now))
		return floor;

	gcra_u128 prod = (gcra_u128)cost * w->period_us;
	gcra_u128 q = prod / w->limit;
	uint64_t r = (uint64_t)(prod % w->limit);
	if (q > (gcra_u128)INT64_MAX)
		return floor;
	gcra_i128 us = (gcra_i128)tat.us - (gcra_i128)q;
	uint64_t rem;
	if (tat.rem >= r) {
		rem = tat.rem - r;
	} else {
		rem = tat.rem + (w->limit - r);
		us -= 1;
	}
	if (us < now)
		return floor;
	return (struct gcra_tat){(int64_t)us, rem};
}

uint64_t gcra_used(const struct gcra_window *w, struct gcra_tat tat, int64_t now)
{
	if (w->limit == 0)
		return 0;
	tat = gcra_normalize(w, tat);
	if (!gcra_after(tat, now))
		return 0;
	gcra_i128 d = (gcra_i128)tat.us - now;
	if (d >= (gcra_i128)w->period_us)
		return w->limit; /* (tat - now) >= period: at least limit in use */
	/* ceil((d + rem/limit) * limit / period); d < period so this fits */
	gcra_u128 num = (gcra_u128)d * w->limit + tat.rem;
	gcra_u128 used = num / w->period_us;
	if (num % w->period_us)
		used++;
	return used > w->limit ? w->limit : (uint64_t)used;
}

uint64_t gcra_empty_in(struct gcra_tat tat, int64_t now)
{
	if (!gcra_after(tat, now))
		return 0;
	gcra_i128 d = (gcra_i128)tat.us - now + (tat.rem > 0 ? 1 : 0);
	return d > (gcra_i128)UINT64_MAX ? UINT64_MAX : (uint64_t)d;
}
