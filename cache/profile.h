/*
 * cache/profile.h - the behavioural profile of one sending account
 * (principal), learned online, and its compact serialisation for the store
 * ("@profile" namespace, PROFILE_WIRE_SIZE bytes, under 1 KB).
 *
 * What it keeps (anomaly-notes.md §5):
 *   - rates: recipients and messages per hour as decayed counters (1 h
 *     time constant), with an EWMA mean/variance of log1p(rate) sampled at
 *     each event; recipients per message (EWMA of log1p);
 *   - distinct recipients per day: a 64-register HyperLogLog for today and
 *     an EWMA of log1p(distinct) over past active days;
 *   - recipient novelty: a CLOCK-managed set of 15-bit fingerprints of past
 *     recipients, and short- and long-horizon decayed counts of new
 *     recipients;
 *   - login networks: client /24 (IPv4) or /64 (IPv6), ASN, country,
 *     messages (every message while unsettled), first and last use;
 *   - the usual hours (24-bin UTC histogram);
 *   - sender addresses used with this login;
 *   - the novelty of the recipients sent from settled networks alone
 *     (is the owner's own place doing the unusual thing too?);
 *   - outcomes fed by NDR detection (profile_note_outcome): the recent
 *     bounce ratio (last ~40 recipients) and the account's usual one.
 *
 * Entry points: profile_init, profile_encode/decode, profile_observe (the
 * features of one recipient request against the profile, read-only) and
 * profile_update (learn it).  Pure maths: no I/O, no globals, no
 * allocation.  Times are unix seconds (uint32, good until 2106).
 */
#ifndef CACHE_PROFILE_H
#define CACHE_PROFILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PROFILE_VERSION   2
#define PROFILE_FP_SLOTS  192 /* remembered recipients */
#define PROFILE_NETS      8
#define PROFILE_SENDERS   4
#define PROFILE_HLL_M     64
#define PROFILE_WIRE_SIZE 824 /* bytes of the encoded profile */
#define PROFILE_V1_SIZE   808 /* version 1 (no home novelty, no short bounce window) */

#define PROFILE_F_FROZEN  0x01 /* flagged: do not learn until frozen_until */
#define PROFILE_F_TAINTED 0x02 /* today had anomalous requests: fold it lightly */

struct profile_net {
	uint32_t prefix; /* hash of the /24 or /64, 0 = empty slot */
	uint32_t asn;    /* 0 = not known (yet) */
	char cc[2];      /* country, "\0\0" = not known */
	uint16_t count;  /* messages from it (saturating) */
	uint32_t first_s, last_s;
};

struct profile_sender {
	uint32_t hash; /* 0 = empty slot */
	uint16_t count;
	uint32_t first_s;
};

struct profile {
	uint8_t version;
	uint8_t flags;
	uint32_t created_s, last_s, frozen_until_s;
	uint32_t n_msgs, n_rcpts; /* totals, saturating */
	/* the message in progress (tied by `instance`) */
	uint32_t inst;      /* hash, 0 = none */
	uint16_t msg_rcpts; /* recipients in it so far */
	/* short-term rates: decayed counters, time constant 1 h, at last_s */
	float rate_r, rate_m;
	float rate_md; /* messages, time constant 1 day */
	/* baselines: EWMA mean/variance of log1p(...) and samples folded */
	float rh_mu, rh_var; /* recipients/h at each recipient */
	float mh_mu, mh_var; /* messages/h at each message */
	float md_mu, md_var; /* messages/24h at each message */
	float rm_mu, rm_var; /* recipients/message at each finished message */
	uint16_t rh_n, mh_n, rm_n, md_n;
	/* distinct recipients per day */
	uint32_t hll_day;
	uint8_t hll[PROFILE_HLL_M];
	float dd_mu, dd_var;
	uint16_t dd_n;
	/* novelty: short (~20 recipients) and long (~200) decayed counts */
	float nov_sk, nov_sn, nov_lk, nov_ln;
	/* recipients: 15-bit fingerprints, bit 15 = referenced (CLOCK) */
	uint16_t fp[PROFILE_FP_SLOTS];
	uint16_t fp_hand, fp_used;
	/* usual hours (UTC), halved when one reaches 255 */
	uint8_t hours[24];
	struct profile_net net[PROFILE_NETS];
	struct profile_sender snd[PROFILE_SENDERS];
	/* novelty of the recipients sent from settled networks only (the
	 * owner's own places): short window, like nov_sk/nov_sn */
	float hn_sk, hn_sn;
	/* outcomes (NDR detection): the usual ratio, decayed with a 7-day
	 * time constant at out_s and learned only while the recent one is
	 * not anomalous; the recent one over the last ~40 outcomes (and a
	 * 1-day time constant) */
	float out_sent, out_bounced;
	float ob_sk, ob_sn;
	uint32_t out_s;
	/* the scorer's own accumulator (persistence of anomalies), at last_s */
	float persist;
	/* how much the rate baselines may still move this hour (refills) */
	float budget;
};

/* Priors for a cold start (class or global baseline) and model constants. */
struct profile_prior {
	double rcpts_per_hour; /* typical recipients/h of a sending account */
	double msgs_per_hour;  /* typical messages/h */
	double msgs_per_day;   /* typical messages/24h */
	double rcpts_per_msg;  /* typical recipients/message */
	double distinct_per_day;
	double sigma;             /* prior spread, log space */
	double sigma_floor;       /* floor of every spread, log space */
	double n0;                /* samples before the account's own model dominates */
	double novelty;           /* prior share of new recipients */
	double novelty_n0;        /* its weight in recipients */
	double net_settle_s;      /* a network is established after this long ... */
	unsigned net_settle_msgs; /* ... and this many messages */
};

void profile_prior_default(struct profile_prior *pr);

/* One recipient request, already reduced to hashes and values. */
struct profile_obs {
	uint32_t now_s;
	uint64_t rcpt;            /* hash of the normalised recipient (0: none) */
	uint32_t inst;            /* hash of `instance` (0: none: each request is a message) */
	uint32_t sender;          /* hash of the normalised sender (0: null sender) */
	bool sender_is_login;     /* the sender is the login itself */
	bool sender_login_domain; /* same domain as the login */
	uint32_t prefix;          /* hash of the client /24 or /64 (0: no address) */
	uint32_t asn;             /* 0: not known */
	char cc[2];               /* country, zeros when not known */
};

/* What the request looks like against the profile (before learning it). */
struct profile_features {
	bool cold;        /* no history at all */
	double maturity;  /* 0 (new) .. 1 (a week old with MATURE_RCPTS recipients) */
	bool new_message; /* first recipient of a new message */
	/* rates including this request */
	double rate_r, rate_m, rate_md;
	double rh_mu, rh_sd, mh_mu, mh_sd; /* blended baselines (log1p space) */
	double md_mu, md_sd, z_md;
	double z_rh, z_mh;
	unsigned msg_rcpts; /* recipients of the current message, this one included */
	double rm_mu, rm_sd, z_rm;
	double distinct_today, dd_mu, dd_sd, z_dd;
	/* novelty */
	bool rcpt_new;
	double nov_short, nov_short_n, nov_base, nov_bits;
	/* hours */
	unsigned hour;
	double hour_share; /* of the account's activity in this hour, -1 = too little data */
	/* network */
	int net_slot;             /* matching slot, -1 new */
	bool net_established;     /* the prefix is a settled network of the account */
	bool net_any_settled;     /* the account has at least one settled network */
	bool asn_known, cc_known; /* seen on a settled network of the account */
	unsigned net_count;       /* messages from this prefix so far */
	double net_age_s;         /* since its first message (0: new) */
	bool other_net;           /* another settled network (another ASN) is on record */
	double other_idle_s;      /* ... and was last used this long ago */
	/* sender */
	int snd_slot; /* -1 new */
	bool snd_established;
	unsigned snd_known; /* senders on record */
	/* novelty of the settled networks' recent recipients (the owner's) */
	double home_nov, home_nov_n, home_nov_bits;
	/* outcomes: the recent window (ratio, outcomes, its Wilson 95 % lower
	 * bound), the usual ratio (with a prior) and the KL divergence of the
	 * recent from the usual in bits */
	double bounce_recent, bounce_n, bounce_lb, bounce_usual, bounce_usual_n, bounce_bits;
};

void profile_init(struct profile *p, uint32_t now_s);

/* Encode into out (outsz >= PROFILE_WIRE_SIZE); returns PROFILE_WIRE_SIZE or 0. */
size_t profile_encode(const struct profile *p, uint8_t *out, size_t outsz);
/* Decode; 0, or -1 when len or version is wrong or a value is out of range. */
int profile_decode(struct profile *p, const uint8_t *in, size_t len);

void profile_observe(const struct profile *p, const struct profile_obs *o,
                     const struct profile_prior *pr, struct profile_features *f);
/*
 * Learn the request.  learn in [0, 1] scales how much the baselines move
 * (0: counters and tables only advance, the baselines stay; used while a
 * request looks anomalous so that a hijack does not poison the baseline);
 * learn_ctx the same for the network and sender tables (a new network
 * settles only through messages counted here).
 */
void profile_update(struct profile *p, const struct profile_obs *o,
                    const struct profile_features *f, double learn, double learn_ctx);

/*
 * NDR detection: the final outcome of one recipient, delivered (bounced =
 * false) or bounced for a reason that indicts the sender.  The usual
 * ratio learns it only while the recent window is not anomalous (a spam
 * run's bounces must not become the account's usual).
 */
void profile_note_outcome(struct profile *p, uint32_t now_s, bool bounced);
/* The outcome features alone (the anomaly score's bounce component). */
void profile_outcome_features(const struct profile *p, uint32_t now_s, struct profile_features *f);

/* ---- primitives (exposed for the tests) ---- */
uint64_t profile_hash(const void *s, size_t len);
/* Decay v by exp(-dt/tau). */
double profile_decay(double v, double dt_s, double tau_s);
/* Finch's incremental EWMA mean/variance. */
void profile_ewma(float *mu, float *var, double x, double alpha);
void profile_hll_add(uint8_t *reg, uint64_t h);
double profile_hll_count(const uint8_t *reg);
/* Is the fingerprint of h in the set?  (Sets its referenced bit.) */
bool profile_rcpt_seen(struct profile *p, uint64_t h);
/* Same, read-only. */
bool profile_rcpt_known(const struct profile *p, uint64_t h);
void profile_rcpt_add(struct profile *p, uint64_t h);
/* n * KL(phat || p0) in bits when phat > p0, else 0. */
double profile_kl_bits(double phat, double p0, double n);
/* Wilson score lower bound of k successes in n at z. */
double profile_wilson_lb(double k, double n, double z);

#endif
