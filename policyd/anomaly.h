/*
 * policyd/anomaly.h - the anomaly-score check of the pipeline: each
 * outbound recipient request is scored 0-100 against the account's own
 * profile (cache/profile.h, "@profile" namespace of the store), with the
 * components that made the score, and the [anomaly] thresholds turn the
 * score into WARN / HOLD / DEFER verdict parts and a flag.
 */
#ifndef POLICYD_ANOMALY_H
#define POLICYD_ANOMALY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache/profile.h"
#include "config_section.h"
#include "module.h"
#include "pipeline.h"

#define ANOMALY_MAX_DNSBL 8
#define ANOMALY_MAX_COMP  16 /* every kind at once: 14 */
#define ANOMALY_ZONE_MAX  128

/* A client DNSBL: zone and the answers that count as listed. */
struct anomaly_dnsbl {
	char zone[ANOMALY_ZONE_MAX];
	uint32_t lo, hi; /* 127.x.y.z range (host order); 0,0 = any valid code */
};

/* The [anomaly] section. */
struct anomaly_conf {
	bool enabled;
	unsigned warn, hold, defer, flag; /* thresholds, 0-100 (101 = never) */
	unsigned dry;                     /* ACT_* bits (1 << action) that only log */
	bool flag_dry;                    /* flag threshold only logs */
	unsigned flag_min_components;     /* independent components a flag needs */
	uint64_t freeze_us;               /* no learning after a flag, for this long */
	uint64_t ttl_us;                  /* an idle profile is forgotten after this */
	int64_t flag_duration_us;         /* 0: the flag module's default */
	struct anomaly_dnsbl dnsbl[ANOMALY_MAX_DNSBL];
	size_t ndnsbl;
	char asn_zone[ANOMALY_ZONE_MAX]; /* "" = no ASN look-ups */
	char asn_zone6[ANOMALY_ZONE_MAX];
	struct profile_prior prior;
	char reply[200];
	char dsn[16];
};

extern const struct config_section anomaly_section;

/* What a component is about; components of one family are not
 * independent evidence (a flag needs several families). */
enum anomaly_family {
	ANOMALY_VOLUME = 0, /* recipients/h, messages/h, recipients/message, distinct/day */
	ANOMALY_NOVELTY,
	ANOMALY_NETWORK,
	ANOMALY_DNSBL,
	ANOMALY_SENDER,
	ANOMALY_BOUNCE,
	ANOMALY_CONCURRENT, /* a new network while a settled one is in use */
	ANOMALY_CONTEXT,    /* off-hours, persistence: never evidence alone */
	ANOMALY__FAMILIES
};

/* What a component says (its text is made only when needed). */
enum anomaly_kind {
	ANOMALY_K_RCPT_H = 0, /* a: rate, b: usual, c: sigmas */
	ANOMALY_K_MSG_H,
	ANOMALY_K_RCPT_MSG,
	ANOMALY_K_DISTINCT,
	ANOMALY_K_MSG_DAY,
	ANOMALY_K_NETVOL,  /* a: messages from the new network, b: usual/day, c: hours */
	ANOMALY_K_NOVELTY, /* a: share, b: of how many, c: usual share */
	ANOMALY_K_COUNTRY, /* u: ASN, s: network, cc */
	ANOMALY_K_ASN,
	ANOMALY_K_PREFIX,     /* u: ASN (0: unknown), s: network */
	ANOMALY_K_DNSBL,      /* s: client, s2: zone, u: code, a: on the usual provider */
	ANOMALY_K_SENDER,     /* s: sender, s2: login, a: first use */
	ANOMALY_K_BOUNCE,     /* a: recent ratio, b: usual ratio, c: recent outcomes */
	ANOMALY_K_CONCURRENT, /* a: minutes since the settled network was used */
	ANOMALY_K_HOURS,      /* u: hour, a: usual share */
	ANOMALY_K_PERSIST,    /* a: accumulated points */
};

struct anomaly_component {
	enum anomaly_family family;
	enum anomaly_kind kind;
	unsigned points;
	double a, b, c;
	uint32_t u;
	const char *s, *s2; /* valid while the request and the config are */
	char cc[3];
	char text[112]; /* filled by anomaly_texts() */
};

/* Everything the score is computed from, besides the profile features. */
struct anomaly_input {
	const struct profile_features *f;
	const char *client;  /* canonical address, "" when none */
	const char *network; /* "203.0.113.0/24" */
	uint32_t asn;        /* 0 = not known */
	char cc[3];
	const char *login, *sender;
	bool sender_foreign;    /* another domain than the login's */
	bool sender_checked;    /* the sender can be judged (not null, not the login) */
	const char *dnsbl_zone; /* a listing, or NULL */
	uint32_t dnsbl_code;
	double persist; /* decayed excess score before this request */
	double since_s; /* since the account's previous request */
};

struct anomaly_result {
	unsigned score;
	struct anomaly_component c[ANOMALY_MAX_COMP];
	size_t n;
	unsigned families;            /* independent kinds of evidence (10 points or more) */
	unsigned behaviour;           /* points of volume and novelty */
	double persist;               /* the accumulator after this request */
	bool flag;                    /* over the flag threshold with enough families */
	bool flag_raised;             /* ... and a flag was raised (not dry run, not frozen) */
	enum verdict_action action;   /* the strongest threshold crossed */
	const struct pipeline_ctx *x; /* the request it belongs to */
	bool texts;                   /* c[].text are made */
	char network[64];             /* what components' s may point to */
};

void anomaly_prepare(struct pipeline_ctx *x);
void anomaly_finish(struct pipeline_ctx *x);

/* The score of one request (pure; exposed for the tests). */
void anomaly_score(const struct anomaly_conf *c, const struct anomaly_input *in,
                   struct anomaly_result *r);

/* The bounce component's points for these features (0: none). */
#define ANOMALY_BOUNCE_MIN_N 20   /* outcomes in the recent window */
#define ANOMALY_BOUNCE_MIN_K 5    /* bounces in it */
#define ANOMALY_BOUNCE_FLOOR 0.05 /* the lower bound must exceed this (and 2x usual) */
#define ANOMALY_BOUNCE_BITS  10.0 /* and the recent ratio this unlikely under the usual */
unsigned anomaly_bounce_points(const struct profile_features *f);

/* Make the components' texts (once). */
void anomaly_texts(struct anomaly_result *r);
/* Make them for every scored request, not only those over `warn` (replay). */
void anomaly_set_always_texts(bool on);

/* "recipients/h 14σ over baseline; 92% new recipients; ..." into out. */
size_t anomaly_components_text(struct anomaly_result *r, const char *sep, char *out, size_t outsz);

/* The result of the last request the check scored (replay, tests). */
const struct anomaly_result *anomaly_last(void);
void anomaly_reset_last(void);

/* How a flag is raised (flag_raise by default; replay and tests record). */
struct flag_request;
typedef void anomaly_flag_fn(const struct flag_request *r);
void anomaly_set_flag_fn(anomaly_flag_fn *fn);

/* The module that publishes the anomaly and DNS metrics (modules.c). */
extern const struct module anomaly_module;

struct anomaly_stats {
	unsigned long long scored, warned, held, deferred, flagged, flag_dry;
	unsigned long long bad_profiles, bad_addresses, no_room;
	/* NDR outcomes: noted, learned by a profile, for a principal without
	 * one, dropped (queue full, store error) */
	unsigned long long outcomes, outcomes_applied, outcomes_no_profile, outcomes_dropped;
};

/*
 * NDR detection's outcomes into the stored profiles (ndr_module.c): the
 * final outcome of one recipient of the principal, bounced = for a reason
 * that indicts the sender (ndr_class_indicts).  Queued, then written within
 * a second (with a loop) or at anomaly_outcomes_flush(); nothing happens
 * unless attached to a store and [anomaly] is enabled.  The anomaly module
 * attaches the daemon's store; tests attach their own (loop NULL: only
 * flush writes).
 */
struct ev_loop;
struct store;
void anomaly_outcomes_attach(struct store *s, const struct config *cfg, struct ev_loop *loop);
void anomaly_note_outcome(const char *principal, bool bounced, int64_t t_us);
void anomaly_outcomes_flush(void);
/* Flush what the store answers at once, drop the rest, detach. */
void anomaly_outcomes_detach(void);
extern struct anomaly_stats anomaly_stats;

#endif
