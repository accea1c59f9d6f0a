/*
 * cache/profile.c - owns the per-account behavioural profile: its maths
 * (decayed rates, EWMA mean/variance in log space with a cold-start blend
 * toward a prior, HyperLogLog, a CLOCK set of recipient fingerprints,
 * novelty counts, network / sender / hour tables) and its fixed-size
 * little-endian serialisation (PROFILE_WIRE_SIZE bytes; a version 1
 * profile, PROFILE_V1_SIZE bytes, still decodes).
 *
 * Entry points: profile_init, profile_encode, profile_decode,
 * profile_observe (read-only features of one recipient request),
 * profile_update (learn it), profile_note_outcome (NDR feedback),
 * profile_outcome_features.
 *
 * Limits: tables are fixed (PROFILE_FP_SLOTS recipients, PROFILE_NETS
 * networks, PROFILE_SENDERS senders); the least used entry is forgotten
 * first.  A recipient fingerprint is 15 bits, so about fp_used/32768 of
 * new recipients look known (lowers recall, never raises a score).
 * No I/O, no globals, no allocation.
 */
#include "profile.h"

#include <math.h>
#include <string.h>

#define TAU_RATE_S   3600.0        /* short-term rates */
#define TAU_DAY_S    86400.0       /* daily rate */
#define TAU_OUT_S    (7 * 86400.0) /* outcomes */
#define NOV_SHORT    (1.0 / 40.0)  /* per-recipient decay, short novelty */
#define TAU_NOV_S    (6 * 3600.0)  /* time decay of the short novelty window */
#define NOV_LONG     (1.0 / 200.0) /* per-recipient decay, long novelty */
#define NOV_WARMUP   30            /* recipients before the long novelty learns */
#define ALPHA_MIN    0.02          /* EWMA weight once warmed up */
#define BUDGET_PER_H 0.15          /* most weight the rate baselines learn an hour */
#define MATURE_S     (7 * 86400.0) /* a profile is mature after a week ... */
#define MATURE_RCPTS 30            /* ... and this many recipients */
#define SD_CAP       0.75          /* largest spread used for a z-score (log space) */
#define ALPHA_DAY    0.1           /* EWMA weight of a day */
#define SND_SETTLE_S 86400u
#define SND_SETTLE_N 3
#define OB_SHORT     (1.0 / 40.0) /* per-outcome decay, recent bounce window */
#define TAU_OB_S     86400.0      /* time decay of the recent bounce window */
#define BOUNCE_PRIOR 0.02         /* usual bounce ratio before the account's own (AWS: < 2 %) */
#define BOUNCE_N0    50.0         /* its weight in outcomes */
#define BOUNCE_LEARN 4.0          /* bits: a recent window this anomalous is not learned */

void profile_prior_default(struct profile_prior *pr)
{
	pr->rcpts_per_hour = 5;
	pr->msgs_per_hour = 3;
	pr->msgs_per_day = 10;
	pr->rcpts_per_msg = 2;
	pr->distinct_per_day = 15;
	pr->sigma = 1.0;
	pr->sigma_floor = 0.5;
	pr->n0 = 10;
	pr->novelty = 0.5;
	pr->novelty_n0 = 40;
	pr->net_settle_s = 3 * 86400.0;
	pr->net_settle_msgs = 2;
}

void profile_init(struct profile *p, uint32_t now_s)
{
	memset(p, 0, sizeof(*p));
	p->version = PROFILE_VERSION;
	p->created_s = now_s;
	p->last_s = now_s;
	p->out_s = now_s;
}

/* ---------------------------------------------------------------- primitives */

uint64_t profile_hash(const void *s, size_t len)
{
	const unsigned char *b = s;
	uint64_t h = 0xcbf29ce484222325ULL;
	for (size_t i = 0; i < len; i++) {
		h ^= b[i];
		h *= 0x100000001b3ULL;
	}
	/* splitmix64 finaliser: FNV's high bits are weak */
	h ^= h >> 30;
	h *= 0xbf58476d1ce4e5b9ULL;
	h ^= h >> 27;
	h *= 0x94d049bb133111ebULL;
	h ^= h >> 31;
	return h ? h : 1;
}

double profile_decay(double v, double dt_s, double tau_s)
{
	if (dt_s <= 0)
		return v;
	return v * exp(-dt_s / tau_s);
}

void profile_ewma(float *mu, float *var, double x, double alpha)
{
	if (alpha <= 0)
		return;
	if (alpha > 1)
		alpha = 1;
	double d = x - *mu;
	double m = *mu + alpha * d;
	double s = (1 - alpha) * (*var + alpha * d * d);
	*mu = (float)m;
	*var = (float)s;
}

void profile_hll_add(uint8_t *reg, uint64_t h)
{
	unsigned j = (unsigned)(h & (PROFILE_HLL_M - 1));
	uint64_t w = h >> 6; /* 58 bits */
	uint8_t rank = w ? (uint8_t)(__builtin_clzll(w) - 6 + 1) : 59;
	if (rank > reg[j])
		reg[j] = rank;
}

double profile_hll_count(const uint8_t *reg)
{
	double sum = 0;
	unsigned zeros = 0;
	static const double inv[64] = {
	    0x1p-0,  0x1p-1,  0x1p-2,  0x1p-3,  0x1p-4,  0x1p-5,  0x1p-6,  0x1p-7,
	    0x1p-8,  0x1p-9,  0x1p-10, 0x1p-11, 0x1p-12, 0x1p-13, 0x1p-14, 0x1p-15,
	    0x1p-16, 0x1p-17, 0x1p-18, 0x1p-19, 0x1p-20, 0x1p-21, 0x1p-22, 0x1p-23,
	    0x1p-24, 0x1p-25, 0x1p-26, 0x1p-27, 0x1p-28, 0x1p-29, 0x1p-30, 0x1p-31,
	    0x1p-32, 0x1p-33, 0x1p-34, 0x1p-35, 0x1p-36, 0x1p-37, 0x1p-38, 0x1p-39,
	    0x1p-40, 0x1p-41, 0x1p-42, 0x1p-43, 0x1p-44, 0x1p-45, 0x1p-46, 0x1p-47,
	    0x1p-48, 0x1p-49, 0x1p-50, 0x1p-51, 0x1p-52, 0x1p-53, 0x1p-54, 0x1p-55,
	    0x1p-56, 0x1p-57, 0x1p-58, 0x1p-59, 0x1p-60, 0x1p-61, 0x1p-62, 0x1p-63}; /* 2^-k */
	for (unsigned j = 0; j < PROFILE_HLL_M; j++) {
		sum += inv[reg[j] & 63];
		zeros += reg[j] == 0;
	}
	double m = PROFILE_HLL_M;
	double e = 0.709 * m * m / sum;
	if (e <= 2.5 * m && zeros)
		e = m * log(m / zeros);
	return e;
}

static uint16_t profile_fp_of(uint64_t h)
{
	uint16_t fp = (uint16_t)((h >> 40) & 0x7fff);
	return fp ? fp : 1;
}

bool profile_rcpt_known(const struct profile *p, uint64_t h)
{
	uint16_t fp = profile_fp_of(h);
	unsigned n = p->fp_used;
	unsigned hit = 0;
	for (unsigned i = 0; i < n; i++)
		hit |= (p->fp[i] & 0x7fff) == fp;
	return hit != 0;
}

bool profile_rcpt_seen(struct profile *p, uint64_t h)
{
	uint16_t fp = profile_fp_of(h);
	for (unsigned i = 0; i < p->fp_used; i++)
		if ((p->fp[i] & 0x7fff) == fp) {
			p->fp[i] |= 0x8000;
			return true;
		}
	return false;
}

void profile_rcpt_add(struct profile *p, uint64_t h)
{
	uint16_t fp = profile_fp_of(h);
	if (p->fp_used < PROFILE_FP_SLOTS) {
		p->fp[p->fp_used++] = fp;
		return;
	}
	/* CLOCK: a referenced slot gets a second chance */
	for (unsigned k = 0; k < 2 * PROFILE_FP_SLOTS; k++) {
		uint16_t *s = &p->fp[p->fp_hand];
		p->fp_hand = (uint16_t)((p->fp_hand + 1) % PROFILE_FP_SLOTS);
		if (*s & 0x8000) {
			*s &= 0x7fff;
			continue;
		}
		*s = fp;
		return;
	}
}

double profile_kl_bits(double phat, double p0, double n)
{
	if (phat <= p0 || n <= 0)
		return 0;
	const double e = 1e-9;
	if (phat > 1 - e)
		phat = 1 - e;
	if (p0 < e)
		p0 = e;
	if (p0 > 1 - e)
		p0 = 1 - e;
	double kl = phat * log2(phat / p0) + (1 - phat) * log2((1 - phat) / (1 - p0));
	return kl > 0 ? n * kl : 0;
}

double profile_wilson_lb(double k, double n, double z)
{
	if (n <= 0)
		return 0;
	double ph = k / n;
	if (ph > 1)
		ph = 1;
	double z2 = z * z;
	double r =
	    (ph + z2 / (2 * n) - z * sqrt(ph * (1 - ph) / n + z2 / (4 * n * n))) / (1 + z2 / n);
	return r > 0 ? r : 0;
}

/* ---------------------------------------------------------------- features */

/* A baseline blended with the prior while it has few samples. */
static void profile_blend(double mu, double var, unsigned n, double mu0,
                          const struct profile_prior *pr, double *bmu, double *bsd)
{
	double w = n / (n + pr->n0);
	double var0 = pr->sigma * pr->sigma;
	double m = w * mu + (1 - w) * mu0;
	double v = w * var + (1 - w) * var0 + w * (1 - w) * (mu - mu0) * (mu - mu0);
	*bmu = m;
	*bsd = sqrt(v + pr->sigma_floor * pr->sigma_floor);
	/* a wide spread (young or erratic profile) must not hide a jump of
	 * orders of magnitude */
	if (*bsd > SD_CAP)
		*bsd = SD_CAP;
}

static bool profile_net_settled(const struct profile_net *e, uint32_t now,
                                const struct profile_prior *pr)
{
	return e->prefix && e->count >= pr->net_settle_msgs &&
	       (double)(now - (now > e->first_s ? e->first_s : now)) >= pr->net_settle_s;
}

/* Is a value settled across the table: enough messages, long enough ago? */
static bool profile_net_group_settled(const struct profile *p, uint32_t now,
                                      const struct profile_prior *pr, uint32_t asn, const char *cc)
{
	unsigned count = 0;
	uint32_t first = now;
	for (unsigned i = 0; i < PROFILE_NETS; i++) {
		const struct profile_net *e = &p->net[i];
		if (!e->prefix)
			continue;
		if (asn ? e->asn != asn : (e->cc[0] != cc[0] || e->cc[1] != cc[1]))
			continue;
		count += e->count;
		if (e->first_s < first)
			first = e->first_s;
	}
	return count >= pr->net_settle_msgs && (double)(now - first) >= pr->net_settle_s;
}

void profile_observe(const struct profile *p, const struct profile_obs *o,
                     const struct profile_prior *pr, struct profile_features *f)
{
	uint32_t now = o->now_s;
	double dt = now > p->last_s ? (double)(now - p->last_s) : 0;

	memset(f, 0, sizeof(*f));
	f->cold = p->n_rcpts == 0;
	double age = now > p->created_s ? (double)(now - p->created_s) : 0;
	f->maturity = age / MATURE_S;
	if (f->maturity > 1)
		f->maturity = 1;
	if (p->n_rcpts < MATURE_RCPTS)
		f->maturity *= p->n_rcpts / (double)MATURE_RCPTS;
	f->new_message = o->inst == 0 || o->inst != p->inst;

	/* rates */
	f->rate_r = profile_decay(p->rate_r, dt, TAU_RATE_S) + 1;
	f->rate_m = profile_decay(p->rate_m, dt, TAU_RATE_S) + (f->new_message ? 1 : 0);
	f->rate_md = profile_decay(p->rate_md, dt, TAU_DAY_S) + (f->new_message ? 1 : 0);
	profile_blend(p->rh_mu, p->rh_var, p->rh_n, log1p(pr->rcpts_per_hour), pr, &f->rh_mu,
	              &f->rh_sd);
	profile_blend(p->mh_mu, p->mh_var, p->mh_n, log1p(pr->msgs_per_hour), pr, &f->mh_mu,
	              &f->mh_sd);
	f->z_rh = (log1p(f->rate_r) - f->rh_mu) / f->rh_sd;
	f->z_mh = (log1p(f->rate_m) - f->mh_mu) / f->mh_sd;
	profile_blend(p->md_mu, p->md_var, p->md_n, log1p(pr->msgs_per_day), pr, &f->md_mu,
	              &f->md_sd);
	f->z_md = (log1p(f->rate_md) - f->md_mu) / f->md_sd;
	f->msg_rcpts = f->new_message ? 1 : (unsigned)p->msg_rcpts + 1;
	profile_blend(p->rm_mu, p->rm_var, p->rm_n, log1p(pr->rcpts_per_msg), pr, &f->rm_mu,
	              &f->rm_sd);
	f->z_rm = (log1p(f->msg_rcpts) - f->rm_mu) / f->rm_sd;

	/* distinct recipients today */
	uint32_t day = now / 86400;
	if (p->hll_day == day && o->rcpt) {
		uint8_t reg[PROFILE_HLL_M];
		memcpy(reg, p->hll, sizeof(reg));
		profile_hll_add(reg, o->rcpt);
		f->distinct_today = profile_hll_count(reg);
	} else
		f->distinct_today = o->rcpt ? 1 : 0;
	profile_blend(p->dd_mu, p->dd_var, p->dd_n, log1p(pr->distinct_per_day), pr, &f->dd_mu,
	              &f->dd_sd);
	f->z_dd = (log1p(f->distinct_today) - f->dd_mu) / f->dd_sd;

	/* novelty */
	if (o->rcpt)
		f->rcpt_new = !profile_rcpt_known(p, o->rcpt);
	/* the short window: the last ~40 recipients of the last few hours */
	double keep = (1 - NOV_SHORT) * exp(-dt / TAU_NOV_S);
	double sk = p->nov_sk * keep + (f->rcpt_new ? 1 : 0);
	double sn = p->nov_sn * keep + 1;
	f->nov_short = sk / sn;
	f->nov_short_n = sn;
	double base = (p->nov_lk + pr->novelty * pr->novelty_n0) / (p->nov_ln + pr->novelty_n0);
	if (base < 0.03)
		base = 0.03;
	if (base > 0.97)
		base = 0.97;
	f->nov_base = base;
	f->nov_bits = profile_kl_bits(f->nov_short, base, sn);
	/* the same window over the settled networks' recipients only (time
	 * decay only: this request is not one of them yet) */
	double hkeep = exp(-dt / TAU_NOV_S);
	f->home_nov_n = p->hn_sn * hkeep;
	f->home_nov = f->home_nov_n > 0 ? p->hn_sk * hkeep / f->home_nov_n : 0;
	f->home_nov_bits = profile_kl_bits(f->home_nov, base, f->home_nov_n);

	/* hours: the busiest of this hour and its neighbours, so that a
	 * shifted day is not news */
	f->hour = (now / 3600) % 24;
	unsigned sum = 0;
	for (unsigned i = 0; i < 24; i++)
		sum += p->hours[i];
	if (sum < 40)
		f->hour_share = -1;
	else {
		unsigned a = p->hours[(f->hour + 23) % 24], b = p->hours[f->hour],
		         c = p->hours[(f->hour + 1) % 24];
		unsigned m = a > b ? a : b;
		m = m > c ? m : c;
		f->hour_share = (double)m / sum;
	}

	/* network */
	f->net_slot = -1;
	for (unsigned i = 0; i < PROFILE_NETS; i++) {
		const struct profile_net *e = &p->net[i];
		if (e->prefix && profile_net_settled(e, now, pr))
			f->net_any_settled = true;
		if (o->prefix && e->prefix == o->prefix) {
			f->net_slot = (int)i;
			f->net_count = e->count;
			f->net_age_s = now > e->first_s ? (double)(now - e->first_s) : 0;
			f->net_established = profile_net_settled(e, now, pr);
		}
	}
	uint32_t asn = o->asn;
	char cc[2] = {o->cc[0], o->cc[1]};
	if (f->net_slot >= 0) { /* looked up before: keep what was learned */
		const struct profile_net *e = &p->net[f->net_slot];
		if (!asn)
			asn = e->asn;
		if (!cc[0]) {
			cc[0] = e->cc[0];
			cc[1] = e->cc[1];
		}
	}
	/* the account's settled networks elsewhere: two places at once is
	 * two users (the owner at home, somebody else abroad) */
	for (unsigned i = 0; o->prefix && i < PROFILE_NETS; i++) {
		const struct profile_net *e = &p->net[i];
		if (!e->prefix || e->prefix == o->prefix || (asn && e->asn == asn) ||
		    !profile_net_settled(e, now, pr))
			continue;
		double idle = now > e->last_s ? (double)(now - e->last_s) : 0;
		if (!f->other_net || idle < f->other_idle_s)
			f->other_idle_s = idle;
		f->other_net = true;
	}
	if (asn)
		f->asn_known = profile_net_group_settled(p, now, pr, asn, cc);
	if (cc[0])
		f->cc_known = profile_net_group_settled(p, now, pr, 0, cc);

	/* sender */
	f->snd_slot = -1;
	uint32_t sh = o->sender | 1;
	for (unsigned i = 0; i < PROFILE_SENDERS; i++) {
		const struct profile_sender *s = &p->snd[i];
		if (!s->hash)
			continue;
		f->snd_known++;
		if (o->sender && s->hash == sh) {
			f->snd_slot = (int)i;
			f->snd_established =
			    s->count >= SND_SETTLE_N &&
			    now - (now > s->first_s ? s->first_s : now) >= SND_SETTLE_S;
		}
	}

	profile_outcome_features(p, now, f);
}

void profile_outcome_features(const struct profile *p, uint32_t now_s, struct profile_features *f)
{
	double dt = now_s > p->out_s ? (double)(now_s - p->out_s) : 0;
	double ls = profile_decay(p->out_sent, dt, TAU_OUT_S);
	double lb = profile_decay(p->out_bounced, dt, TAU_OUT_S);
	double u = (lb + BOUNCE_PRIOR * BOUNCE_N0) / (ls + BOUNCE_N0);
	f->bounce_usual = u < 0.005 ? 0.005 : u > 0.5 ? 0.5 : u;
	f->bounce_usual_n = ls;
	double keep = exp(-dt / TAU_OB_S);
	f->bounce_n = p->ob_sn * keep;
	double k = p->ob_sk * keep;
	f->bounce_recent = f->bounce_n > 0 ? k / f->bounce_n : 0;
	f->bounce_lb = profile_wilson_lb(k, f->bounce_n, 1.96);
	f->bounce_bits = profile_kl_bits(f->bounce_recent, f->bounce_usual, f->bounce_n);
}

/* ---------------------------------------------------------------- learning */

/*
 * The weight of one sample: a running mean for the first ones, then
 * ALPHA_MIN.  Rates are sampled when the account sends, so the baseline
 * is "how busy is it when it sends": weighing samples by time instead
 * would make every busy hour look anomalous.
 */
static double profile_alpha(uint16_t n, double learn)
{
	double a = 1.0 / (n + 1.0);
	if (a < ALPHA_MIN)
		a = ALPHA_MIN;
	return a * learn;
}

/*
 * A burst is many samples in a few minutes: the rate baselines may move
 * by at most BUDGET_PER_H of the way an hour, whatever the number of
 * events (a budget that refills with time).  A young profile learns
 * without it (cold start).
 */
static double profile_spend(struct profile *p, double a, double mature)
{
	if (mature < 1)
		return a;
	if (a > p->budget)
		a = p->budget;
	p->budget -= (float)a;
	return a;
}

static void profile_count(uint16_t *n)
{
	if (*n < UINT16_MAX)
		(*n)++;
}

static void profile_net_update(struct profile *p, const struct profile_obs *o,
                               const struct profile_features *f, bool count)
{
	struct profile_net *e = NULL;
	uint32_t now = o->now_s;
	if (!o->prefix)
		return;
	if (f->net_slot >= 0)
		e = &p->net[f->net_slot];
	else {
		/* forget the least used (then the least recent) */
		unsigned v = 0;
		for (unsigned i = 0; i < PROFILE_NETS; i++) {
			struct profile_net *c = &p->net[i];
			if (!c->prefix) {
				v = i;
				break;
			}
			struct profile_net *b = &p->net[v];
			if (c->count < b->count || (c->count == b->count && c->last_s < b->last_s))
				v = i;
		}
		e = &p->net[v];
		/* the ASN's history outlives the prefix (CGNAT, mobile) */
		for (unsigned i = 0; e->prefix && e->asn && i < PROFILE_NETS; i++) {
			struct profile_net *c = &p->net[i];
			if (i == v || c->asn != e->asn)
				continue;
			unsigned n = (unsigned)c->count + e->count;
			c->count = (uint16_t)(n < UINT16_MAX ? n : UINT16_MAX);
			if (e->first_s < c->first_s)
				c->first_s = e->first_s;
			break;
		}
		memset(e, 0, sizeof(*e));
		e->prefix = o->prefix;
		e->first_s = now;
	}
	if (o->asn) {
		e->asn = o->asn;
		if (o->cc[0]) {
			e->cc[0] = o->cc[0];
			e->cc[1] = o->cc[1];
		}
	}
	e->last_s = now;
	/* an unsettled network counts every message (its volume is a feature
	 * of the score; it settles with time anyway), a settled one only
	 * those learned */
	if ((count || !f->net_established) && f->new_message && e->count < UINT16_MAX)
		e->count++;
}

static void profile_sender_update(struct profile *p, const struct profile_obs *o,
                                  const struct profile_features *f, bool count)
{
	if (!o->sender || !f->new_message)
		return;
	uint32_t sh = o->sender | 1;
	struct profile_sender *s;
	if (f->snd_slot >= 0)
		s = &p->snd[f->snd_slot];
	else {
		unsigned v = 0;
		for (unsigned i = 0; i < PROFILE_SENDERS; i++) {
			if (!p->snd[i].hash) {
				v = i;
				break;
			}
			if (p->snd[i].count < p->snd[v].count)
				v = i;
		}
		s = &p->snd[v];
		s->hash = sh;
		s->count = 0;
		s->first_s = o->now_s;
	}
	if (count && s->count < UINT16_MAX)
		s->count++;
}

void profile_update(struct profile *p, const struct profile_obs *o,
                    const struct profile_features *f, double learn, double learn_ctx)
{
	uint32_t now = o->now_s;
	if (learn < 0)
		learn = 0;
	if (learn > 1)
		learn = 1;
	if ((p->flags & PROFILE_F_FROZEN) && now >= p->frozen_until_s)
		p->flags &= (uint8_t)~PROFILE_F_FROZEN;
	if (learn_ctx < 0)
		learn_ctx = 0;
	if (p->flags & PROFILE_F_FROZEN)
		learn = learn_ctx = 0;

	/* rates advance whatever the learning */
	p->rate_r = (float)f->rate_r;
	p->rate_m = (float)f->rate_m;
	p->rate_md = (float)f->rate_md;
	double lr = log1p(f->rate_r);
	double dtb = now > p->last_s ? (double)(now - p->last_s) : 0;
	p->budget = (float)(p->budget + dtb / 3600 * BUDGET_PER_H);
	if (p->budget > BUDGET_PER_H)
		p->budget = (float)BUDGET_PER_H;
	profile_ewma(&p->rh_mu, &p->rh_var, lr,
	             profile_spend(p, profile_alpha(p->rh_n, learn), f->maturity));
	if (learn > 0)
		profile_count(&p->rh_n);

	if (f->new_message) {
		if (p->inst && p->msg_rcpts) {
			profile_ewma(&p->rm_mu, &p->rm_var, log1p(p->msg_rcpts),
			             profile_spend(p, profile_alpha(p->rm_n, learn), f->maturity));
			if (learn > 0)
				profile_count(&p->rm_n);
		}
		profile_ewma(&p->mh_mu, &p->mh_var, log1p(f->rate_m),
		             profile_spend(p, profile_alpha(p->mh_n, learn), f->maturity));
		if (learn > 0)
			profile_count(&p->mh_n);
		profile_ewma(&p->md_mu, &p->md_var, log1p(f->rate_md),
		             profile_spend(p, profile_alpha(p->md_n, learn), f->maturity));
		if (learn > 0)
			profile_count(&p->md_n);
		p->inst = o->inst;
		p->msg_rcpts = 1;
		if (p->n_msgs < UINT32_MAX)
			p->n_msgs++;
		unsigned h = (now / 3600) % 24;
		if (learn > 0) {
			if (p->hours[h] == UINT8_MAX)
				for (unsigned i = 0; i < 24; i++)
					p->hours[i] /= 2;
			p->hours[h]++;
		}
	} else if (p->msg_rcpts < UINT16_MAX)
		p->msg_rcpts++;

	/* distinct recipients per day */
	uint32_t day = now / 86400;
	if (o->rcpt && p->hll_day != day) {
		if (p->hll_day) {
			double a = (p->flags & PROFILE_F_TAINTED) ? ALPHA_DAY / 4 : ALPHA_DAY;
			double w = 1.0 / (p->dd_n + 1.0);
			profile_ewma(&p->dd_mu, &p->dd_var, log1p(profile_hll_count(p->hll)),
			             w > a ? w : a);
			profile_count(&p->dd_n);
		}
		memset(p->hll, 0, sizeof(p->hll));
		p->hll_day = day;
		p->flags &= (uint8_t)~PROFILE_F_TAINTED;
	}
	if (o->rcpt)
		profile_hll_add(p->hll, o->rcpt);
	if (learn < 1)
		p->flags |= PROFILE_F_TAINTED;

	/* novelty */
	double x = f->rcpt_new ? 1 : 0;
	p->nov_sk = (float)(f->nov_short * f->nov_short_n);
	p->nov_sn = (float)f->nov_short_n;
	p->hn_sn = (float)f->home_nov_n;
	p->hn_sk = (float)(f->home_nov * f->home_nov_n);
	if (f->net_established && o->rcpt) {
		p->hn_sk = (float)(p->hn_sk * (1 - NOV_SHORT) + x);
		p->hn_sn = (float)(p->hn_sn * (1 - NOV_SHORT) + 1);
	}
	/* the first recipients of a profile are all new: they would teach
	 * every account that everything is new */
	if (learn > 0 && p->n_rcpts >= NOV_WARMUP) {
		/* plain counts until the window is full, then decayed */
		double b = p->nov_ln < 1 / NOV_LONG ? 0 : NOV_LONG * learn;
		p->nov_lk = (float)(p->nov_lk * (1 - b) + x * learn);
		p->nov_ln = (float)(p->nov_ln * (1 - b) + learn);
	}
	if (learn > 0) {
		if (o->rcpt) {
			if (f->rcpt_new)
				profile_rcpt_add(p, o->rcpt);
			else
				profile_rcpt_seen(p, o->rcpt);
		}
	}

	profile_net_update(p, o, f, learn_ctx >= 0.5);
	profile_sender_update(p, o, f, learn_ctx >= 0.5);

	if (p->n_rcpts < UINT32_MAX)
		p->n_rcpts++;
	if (now > p->last_s)
		p->last_s = now;
}

void profile_note_outcome(struct profile *p, uint32_t now_s, bool bounced)
{
	double dt = now_s > p->out_s ? (double)(now_s - p->out_s) : 0;
	double b = bounced ? 1 : 0;
	/* the recent window first: is it anomalous with this outcome? */
	double keep = (1 - OB_SHORT) * exp(-dt / TAU_OB_S);
	p->ob_sk = (float)(p->ob_sk * keep + b);
	p->ob_sn = (float)(p->ob_sn * keep + 1);
	p->out_sent = (float)profile_decay(p->out_sent, dt, TAU_OUT_S);
	p->out_bounced = (float)profile_decay(p->out_bounced, dt, TAU_OUT_S);
	if (now_s > p->out_s)
		p->out_s = now_s;
	struct profile_features f;
	profile_outcome_features(p, p->out_s, &f);
	/* a spike is not the account's usual: learned only while the
	 * recent window is ordinary */
	if (f.bounce_bits < BOUNCE_LEARN) {
		p->out_sent = (float)(p->out_sent + 1);
		p->out_bounced = (float)(p->out_bounced + b);
	}
}

/* ---------------------------------------------------------------- wire */

struct profile_buf {
	uint8_t *p;
	const uint8_t *r;
	size_t off, len;
	bool bad;
};

static void put8(struct profile_buf *b, uint8_t v)
{
	b->p[b->off++] = v;
}

static void put16(struct profile_buf *b, uint16_t v)
{
	put8(b, (uint8_t)v);
	put8(b, (uint8_t)(v >> 8));
}

static void put32(struct profile_buf *b, uint32_t v)
{
	put16(b, (uint16_t)v);
	put16(b, (uint16_t)(v >> 16));
}

static void putf(struct profile_buf *b, float f)
{
	uint32_t v;
	memcpy(&v, &f, sizeof(v));
	put32(b, v);
}

static uint8_t get8(struct profile_buf *b)
{
	return b->r[b->off++];
}

static uint16_t get16(struct profile_buf *b)
{
	uint16_t lo = get8(b);
	return (uint16_t)(lo | (uint16_t)get8(b) << 8);
}

static uint32_t get32(struct profile_buf *b)
{
	uint32_t lo = get16(b);
	return lo | (uint32_t)get16(b) << 16;
}

static float getf(struct profile_buf *b)
{
	uint32_t v = get32(b);
	float f;
	memcpy(&f, &v, sizeof(f));
	if (!isfinite(f) || fabsf(f) > 1e12f) {
		b->bad = true;
		return 0;
	}
	return f;
}

/* One description of the layout, used both ways. */
/* clang-format off */
#define PROFILE_FIELDS(U8, U16, U32, F)                                                    \
	U8(version) U8(flags) U16(msg_rcpts) U32(created_s) U32(last_s)                    \
	U32(frozen_until_s) U32(n_msgs) U32(n_rcpts) U32(inst)                             \
	F(rate_r) F(rate_m) F(rh_mu) F(rh_var) F(mh_mu) F(mh_var) F(rm_mu) F(rm_var)       \
	U16(rh_n) U16(mh_n) U16(rm_n) U16(dd_n) U32(hll_day) F(dd_mu) F(dd_var)            \
	F(nov_sk) F(nov_sn) F(nov_lk) F(nov_ln) U16(fp_hand) U16(fp_used)                  \
	F(out_sent) F(out_bounced) U32(out_s) F(persist)                                   \
	F(rate_md) F(md_mu) F(md_var) U16(md_n) F(budget)
/* clang-format on */

/* version 2: after the tables (a version 1 profile decodes with zeros) */
#define PROFILE_FIELDS2(U8, U16, U32, F) F(hn_sk) F(hn_sn) F(ob_sk) F(ob_sn)

/* bytes the layouts above and the tables take */
#define PROFILE_PAYLOAD1                                                                           \
	(134 + PROFILE_HLL_M + 2 * PROFILE_FP_SLOTS + 24 + 20 * PROFILE_NETS + 10 * PROFILE_SENDERS)
#define PROFILE_PAYLOAD (PROFILE_PAYLOAD1 + 16)
_Static_assert(PROFILE_PAYLOAD1 <= PROFILE_V1_SIZE, "version 1 layout larger than its size");
_Static_assert(PROFILE_PAYLOAD <= PROFILE_WIRE_SIZE, "profile layout larger than its wire size");

size_t profile_encode(const struct profile *p, uint8_t *out, size_t outsz)
{
	struct profile_buf b = {.p = out, .len = outsz};
	if (outsz < PROFILE_WIRE_SIZE)
		return 0;
#define E8(n)  put8(&b, p->n);
#define E16(n) put16(&b, p->n);
#define E32(n) put32(&b, p->n);
#define EF(n)  putf(&b, p->n);
	PROFILE_FIELDS(E8, E16, E32, EF)
#undef E8
#undef E16
#undef E32
#undef EF
	memcpy(b.p + b.off, p->hll, PROFILE_HLL_M);
	b.off += PROFILE_HLL_M;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	memcpy(b.p + b.off, p->fp, sizeof(p->fp)); /* the wire is little-endian */
	b.off += sizeof(p->fp);
#else
	for (unsigned i = 0; i < PROFILE_FP_SLOTS; i++)
		put16(&b, p->fp[i]);
#endif
	for (unsigned i = 0; i < 24; i++)
		put8(&b, p->hours[i]);
	for (unsigned i = 0; i < PROFILE_NETS; i++) {
		const struct profile_net *e = &p->net[i];
		put32(&b, e->prefix);
		put32(&b, e->asn);
		put8(&b, (uint8_t)e->cc[0]);
		put8(&b, (uint8_t)e->cc[1]);
		put16(&b, e->count);
		put32(&b, e->first_s);
		put32(&b, e->last_s);
	}
	for (unsigned i = 0; i < PROFILE_SENDERS; i++) {
		put32(&b, p->snd[i].hash);
		put16(&b, p->snd[i].count);
		put32(&b, p->snd[i].first_s);
	}
	while (b.off < PROFILE_V1_SIZE)
		put8(&b, 0);
#define E8(n)  put8(&b, p->n);
#define E16(n) put16(&b, p->n);
#define E32(n) put32(&b, p->n);
#define EF(n)  putf(&b, p->n);
	PROFILE_FIELDS2(E8, E16, E32, EF)
#undef E8
#undef E16
#undef E32
#undef EF
	while (b.off < PROFILE_WIRE_SIZE)
		put8(&b, 0);
	return b.off;
}

int profile_decode(struct profile *p, const uint8_t *in, size_t len)
{
	struct profile_buf b = {.r = in, .len = len};
	bool v1 = len == PROFILE_V1_SIZE && in[0] == 1;
	if (!v1 && (len != PROFILE_WIRE_SIZE || in[0] != PROFILE_VERSION))
		return -1;
	memset(p, 0, sizeof(*p));
#define D8(n)  p->n = get8(&b);
#define D16(n) p->n = get16(&b);
#define D32(n) p->n = get32(&b);
#define DF(n)  p->n = getf(&b);
	PROFILE_FIELDS(D8, D16, D32, DF)
#undef D8
#undef D16
#undef D32
#undef DF
	memcpy(p->hll, b.r + b.off, PROFILE_HLL_M);
	b.off += PROFILE_HLL_M;
	for (unsigned i = 0; i < PROFILE_HLL_M; i++)
		if (p->hll[i] > 59)
			b.bad = true;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	memcpy(p->fp, b.r + b.off, sizeof(p->fp));
	b.off += sizeof(p->fp);
#else
	for (unsigned i = 0; i < PROFILE_FP_SLOTS; i++)
		p->fp[i] = get16(&b);
#endif
	for (unsigned i = 0; i < 24; i++)
		p->hours[i] = get8(&b);
	for (unsigned i = 0; i < PROFILE_NETS; i++) {
		struct profile_net *e = &p->net[i];
		e->prefix = get32(&b);
		e->asn = get32(&b);
		e->cc[0] = (char)get8(&b);
		e->cc[1] = (char)get8(&b);
		e->count = get16(&b);
		e->first_s = get32(&b);
		e->last_s = get32(&b);
	}
	for (unsigned i = 0; i < PROFILE_SENDERS; i++) {
		p->snd[i].hash = get32(&b);
		p->snd[i].count = get16(&b);
		p->snd[i].first_s = get32(&b);
	}
	if (!v1) {
		b.off = PROFILE_V1_SIZE;
#define D8(n)  p->n = get8(&b);
#define D16(n) p->n = get16(&b);
#define D32(n) p->n = get32(&b);
#define DF(n)  p->n = getf(&b);
		PROFILE_FIELDS2(D8, D16, D32, DF)
#undef D8
#undef D16
#undef D32
#undef DF
	}
	p->version = PROFILE_VERSION;
	if (p->fp_used > PROFILE_FP_SLOTS || p->fp_hand >= PROFILE_FP_SLOTS)
		b.bad = true;
	if (p->rh_var < 0 || p->mh_var < 0 || p->rm_var < 0 || p->dd_var < 0 || p->nov_sk < 0 ||
	    p->nov_sk > p->nov_sn * 1.001f + 0.01f || p->nov_lk < 0 ||
	    p->nov_lk > p->nov_ln * 1.001f + 0.01f || p->rate_r < 0 || p->rate_m < 0 ||
	    p->out_sent < 0 || p->out_bounced < 0 || p->persist < 0 || p->rate_md < 0 ||
	    p->md_var < 0 || p->budget < 0 || p->hn_sk < 0 ||
	    p->hn_sk > p->hn_sn * 1.001f + 0.01f || p->ob_sk < 0 ||
	    p->ob_sk > p->ob_sn * 1.001f + 0.01f || p->out_bounced > p->out_sent * 1.001f + 0.01f)
		b.bad = true;
	return b.bad ? -1 : 0;
}
