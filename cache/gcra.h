/*
 * cache/gcra.h - exact GCRA (generic cell rate algorithm) arithmetic for
 * "limit units per period" windows.  Shared by every store backend so that
 * they all admit exactly the same requests.
 *
 * One window's state is its theoretical arrival time (TAT), kept as an
 * exact rational: tat_us + tat_rem / limit microseconds, so that a cost of
 * c units advances the TAT by exactly c * period / limit with no rounding:
 * from an empty state `limit` units of cost 1 conform within one instant
 * and unit limit+1 does not, whatever limit and period are.  Time is
 * microseconds since the epoch (int64).
 *
 * A window is empty (equivalent to no state at all) when tat <= now.
 */
#ifndef CACHE_GCRA_H
#define CACHE_GCRA_H

#include <stdbool.h>
#include <stdint.h>

struct gcra_tat {
	int64_t us;   /* whole microseconds */
	uint64_t rem; /* remainder, in units of 1/limit microsecond; < limit */
};

struct gcra_window {
	uint64_t limit;     /* units per period, >= 1 */
	uint64_t period_us; /* period length, >= 1 */
};

/*
 * Would `cost` units conform now?  On true, *next is the TAT after taking
 * them.  On false, *retry_us is how long until they would conform
 * (UINT64_MAX if cost > limit: never).  cost 0 always conforms.
 */
bool gcra_take(const struct gcra_window *w, struct gcra_tat tat, int64_t now, uint64_t cost,
               struct gcra_tat *next, uint64_t *retry_us);

/* Give back `cost` units: the TAT moves back, but never before now. */
struct gcra_tat gcra_refund(const struct gcra_window *w, struct gcra_tat tat, int64_t now,
                            uint64_t cost);

/* Units in use now (0 .. limit), rounded up; and microseconds until empty. */
uint64_t gcra_used(const struct gcra_window *w, struct gcra_tat tat, int64_t now);
uint64_t gcra_empty_in(struct gcra_tat tat, int64_t now);

/*
 * The same TAT with rem < limit (a remainder >= limit, left by a larger
 * limit before a config change, is folded into whole microseconds).
 */
struct gcra_tat gcra_normalize(const struct gcra_window *w, struct gcra_tat tat);

static inline bool gcra_is_empty(struct gcra_tat tat, int64_t now)
{
	return tat.us < now || (tat.us == now && tat.rem == 0);
}

#endif
