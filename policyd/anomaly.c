/*
 * policyd/anomaly.c - owns the anomaly-score check ("anomaly", after the
 * rate limits) and the [anomaly] config section: each outbound RCPT
 * request is scored 0-100 against the principal's profile, with the
 * components that made the score; thresholds turn it into verdict parts
 * (WARN, HOLD, DEFER; each may be a dry run) and a flag whose evidence is
 * the components.
 *
 * Store: prepare() adds one STORE_GET "@profile"/principal to the
 * request's batch; finish() scores, learns, and writes the profile back
 * with a STORE_PUT among the request's follow-up ops (x->follow), so a
 * request costs no extra round trip.  Two requests of one principal in
 * flight at once may lose one update (a statistic, not a count).
 *
 * DNS: ASN/country and client DNSBLs come from dns.c's cache and never
 * delay the answer; a look-up started by one request serves the next.
 *
 * Score (anomaly_score): points per component, "what is sent" (volume,
 * new recipients, sender, bounces) and "where the login comes from" (new
 * network, exploit-listed client); a flag needs two independent kinds of
 * evidence, one of them about what is sent (or the settled network in use
 * while a new country logs in: two users at once).  The volume sent from
 * a new network against the account's day catches a slow drip to known
 * recipients.  An accumulator (CUSUM, at most ANOMALY_PERSIST_RATE points
 * an hour) turns a sustained anomaly into points; one behaviour from one
 * unusual place (an invitation from abroad) flags only once the
 * accumulator shows it lasts.  The flag rule and the weights were tuned on
 * tests/bench/gen_traffic.py; tests/bench/RESULTS.md has the figures.
 *
 * Learning: nothing of a request with two independent kinds of evidence
 * (what a flag needs), a tenth of one scored 25 or more, nothing while the
 * account is frozen after a flag: a hijack does not become the baseline;
 * one kind of evidence alone (a campaign, a trip, a move) is learned
 * slowly.  A young profile learns regardless (cold start).  A refused
 * request is not learned (it was not sent).
 *
 * Outcomes: NDR detection feeds each attributed recipient outcome
 * (anomaly_note_outcome) into the principal's stored profile, batched
 * (see "outcomes" below); the score compares the recent bounce ratio with
 * the account's usual one.
 *
 * Limits: ANOMALY_MAX_COMP components; texts are cut to fit the verdict
 * reason (160 bytes) and the flag evidence (FLAG_EVIDENCE_MAX).  Metrics:
 * the "anomaly" module publishes policyd_anomaly_total and
 * policyd_dns_total.
 */
#include "anomaly.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <ev.h>

#include "dns.h"
#include "flag.h"
#include "log.h"
#include "metrics.h"

#define ANOMALY_NS           "@profile"
#define ANOMALY_PURPOSE_GET  1
#define ANOMALY_MIN_POINTS   10 /* a component is evidence from here */
#define ANOMALY_PERSIST_TAU  (6 * 3600.0)
#define ANOMALY_PERSIST_K    30           /* allowance of the accumulator (CUSUM) */
#define ANOMALY_PERSIST_RATE 150.0        /* most the accumulator gains an hour */
#define ANOMALY_NETVOL_MIN   10           /* messages from a new network before its volume counts */
#define ANOMALY_NETVOL_SPAN  (6 * 3600.0) /* ... extrapolated to a day from this long */
#define ANOMALY_CONCUR_S     (3 * 3600.0) /* a settled network used this recently: concurrent */
#define ANOMALY_CONCUR_PTS   15
#define ANOMALY_WEAK_PERSIST 60   /* one behaviour + one place flags only when sustained */
#define ANOMALY_OUT_MAX      4096 /* principals with outcomes waiting for the store */
#define ANOMALY_OUT_BATCH    32   /* principals per store batch */
#define ANOMALY_OUT_BUCKETS  1024
#define ANOMALY_OUT_DELAY    1.0 /* seconds outcomes gather before they are written */

struct anomaly_stats anomaly_stats;

static struct anomaly_result anomaly_last_r;
static const struct rule anomaly_rule = {.name = ANOMALY_NS};

/* ---------------------------------------------------------------- config */

static void anomaly_defaults(void *blk)
{
	struct anomaly_conf *c = blk;
	memset(c, 0, sizeof(*c));
	c->enabled = true;
	c->warn = 40;
	c->hold = 70;
	c->defer = 95;
	c->flag = 80;
	c->flag_min_components = 2;
	c->freeze_us = 86400ULL * 1000000;
	c->ttl_us = 90ULL * 86400 * 1000000;
	profile_prior_default(&c->prior);
	snprintf(c->dsn, sizeof(c->dsn), "4.7.1");
}

static int anomaly_uint(const char *v, unsigned long lo, unsigned long hi, unsigned long *out)
{
	char *end;
	errno = 0;
	unsigned long n = strtoul(v, &end, 10);
	if (errno || end == v || *end || v[0] == '-' || n < lo || n > hi)
		return -1;
	*out = n;
	return 0;
}

static int anomaly_double(const char *v, double lo, double hi, double *out)
{
	char *end;
	errno = 0;
	double d = strtod(v, &end);
	if (errno || end == v || *end || !(d >= lo && d <= hi))
		return -1;
	*out = d;
	return 0;
}

static int anomaly_bool(const char *v, bool *out)
{
	if (!strcasecmp(v, "yes") || !strcasecmp(v, "true") || !strcmp(v, "1") ||
	    !strcasecmp(v, "on")) {
		*out = true;
		return 0;
	}
	if (!strcasecmp(v, "no") || !strcasecmp(v, "false") || !strcmp(v, "0") ||
	    !strcasecmp(v, "off")) {
		*out = false;
		return 0;
	}
	return -1;
}

static int anomaly_zone_ok(const char *z)
{
	size_t n = strlen(z);
	if (n == 0 || n >= ANOMALY_ZONE_MAX || z[0] == '.' || z[n - 1] == '.')
		return -1;
	for (const char *p = z; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		      (*p >= '0' && *p <= '9') || *p == '-' || *p == '.' || *p == '_'))
			return -1;
	return 0;
}

static int anomaly_code(const char *s, uint32_t *out)
{
	unsigned a, b, c, d;
	char tail;
	if (sscanf(s, "%u.%u.%u.%u%c", &a, &b, &c, &d, &tail) != 4 || a != 127 || b > 255 ||
	    c > 255 || d > 255)
		return -1;
	*out = a << 24 | b << 16 | c << 8 | d;
	return 0;
}

/* "zen.spamhaus.org=127.0.0.4-127.0.0.7, xbl.example" */
static int anomaly_set_dnsbl(struct anomaly_conf *c, const char *v, char *err, size_t errsz)
{
	char buf[1024];
	if (strlen(v) >= sizeof(buf)) {
		snprintf(err, errsz, "dnsbl: list too long");
		return -1;
	}
	snprintf(buf, sizeof(buf), "%s", v);
	c->ndnsbl = 0;
	for (char *save = NULL, *t = strtok_r(buf, ", \t", &save); t;
	     t = strtok_r(NULL, ", \t", &save)) {
		if (c->ndnsbl == ANOMALY_MAX_DNSBL) {
			snprintf(err, errsz, "dnsbl: at most %d lists", ANOMALY_MAX_DNSBL);
			return -1;
		}
		struct anomaly_dnsbl *d = &c->dnsbl[c->ndnsbl];
		memset(d, 0, sizeof(*d));
		char *eq = strchr(t, '=');
		if (eq) {
			*eq = '\0';
			char *dash = strchr(eq + 1, '-');
			if (dash)
				*dash = '\0';
			if (anomaly_code(eq + 1, &d->lo) < 0 ||
			    anomaly_code(dash ? dash + 1 : eq + 1, &d->hi) < 0 || d->hi < d->lo) {
				snprintf(err, errsz,
				         "dnsbl: '%s': codes are 127.x.y.z or 127.x.y.z-127.x.y.z",
				         t);
				return -1;
			}
		}
		if (anomaly_zone_ok(t) < 0) {
			snprintf(err, errsz, "dnsbl: '%s' is not a DNS zone", t);
			return -1;
		}
		snprintf(d->zone, sizeof(d->zone), "%s", t);
		c->ndnsbl++;
	}
	return 0;
}

static int anomaly_threshold(const char *v, unsigned *out)
{
	unsigned long n;
	if (!strcasecmp(v, "never") || !strcasecmp(v, "off")) {
		*out = 101;
		return 0;
	}
	if (anomaly_uint(v, 1, 101, &n) < 0)
		return -1;
	*out = (unsigned)n;
	return 0;
}

static int anomaly_set(void *blk, const char *name, const char *v, char *err, size_t errsz)
{
	struct anomaly_conf *c = blk;
	unsigned long n;
	double d;
	uint64_t us;

	if (!strcmp(name, "enabled")) {
		if (anomaly_bool(v, &c->enabled) < 0)
			goto badbool;
		return 0;
	}
	if (!strcmp(name, "warn") || !strcmp(name, "hold") || !strcmp(name, "defer") ||
	    !strcmp(name, "flag")) {
		unsigned *t = name[0] == 'w'   ? &c->warn
		              : name[0] == 'h' ? &c->hold
		              : name[0] == 'd' ? &c->defer
		                               : &c->flag;
		if (anomaly_threshold(v, t) < 0) {
			snprintf(err, errsz, "%s: '%s' (a score 1 .. 100, or never)", name, v);
			return -1;
		}
		return 0;
	}
	if (!strcmp(name, "dry_run")) {
		char buf[128];
		snprintf(buf, sizeof(buf), "%s", v);
		c->dry = 0;
		c->flag_dry = false;
		for (char *save = NULL, *t = strtok_r(buf, ", \t", &save); t;
		     t = strtok_r(NULL, ", \t", &save)) {
			if (!strcmp(t, "hold"))
				c->dry |= 1u << ACT_HOLD;
			else if (!strcmp(t, "defer"))
				c->dry |= 1u << ACT_DEFER;
			else if (!strcmp(t, "flag"))
				c->flag_dry = true;
			else if (!strcmp(t, "all")) {
				c->dry |= 1u << ACT_HOLD | 1u << ACT_DEFER;
				c->flag_dry = true;
			} else if (strcmp(t, "none") && strcmp(t, "warn")) {
				snprintf(err, errsz,
				         "dry_run: '%s' (a list of hold, defer, flag; all; none)",
				         t);
				return -1;
			}
		}
		return 0;
	}
	if (!strcmp(name, "flag_min_components")) {
		if (anomaly_uint(v, 1, 5, &n) < 0) {
			snprintf(err, errsz, "flag_min_components: '%s' (1 .. 5)", v);
			return -1;
		}
		c->flag_min_components = (unsigned)n;
		return 0;
	}
	if (!strcmp(name, "freeze") || !strcmp(name, "profile_ttl") ||
	    !strcmp(name, "network_settle")) {
		if (config_parse_duration(v, &us, err, errsz) < 0)
			return -1;
		if (name[0] == 'f')
			c->freeze_us = us;
		else if (name[0] == 'p')
			c->ttl_us = us;
		else
			c->prior.net_settle_s = (double)us / 1e6;
		return 0;
	}
	if (!strcmp(name, "flag_duration")) {
		if (!strcmp(v, "default")) {
			c->flag_duration_us = 0;
			return 0;
		}
		if (!strcmp(v, "until_cleared") || !strcmp(v, "forever")) {
			c->flag_duration_us = -1;
			return 0;
		}
		if (config_parse_duration(v, &us, err, errsz) < 0)
			return -1;
		c->flag_duration_us = (int64_t)us;
		return 0;
	}
	if (!strcmp(name, "network_settle_messages")) {
		if (anomaly_uint(v, 1, 10000, &n) < 0) {
			snprintf(err, errsz, "network_settle_messages: '%s' (1 .. 10000)", v);
			return -1;
		}
		c->prior.net_settle_msgs = (unsigned)n;
		return 0;
	}
	if (!strcmp(name, "dnsbl"))
		return anomaly_set_dnsbl(c, v, err, errsz);
	if (!strcmp(name, "asn_zone") || !strcmp(name, "asn_zone6")) {
		char *dst = name[8] == '6' ? c->asn_zone6 : c->asn_zone;
		if (v[0] && anomaly_zone_ok(v) < 0) {
			snprintf(err, errsz, "%s: '%s' is not a DNS zone", name, v);
			return -1;
		}
		snprintf(dst, ANOMALY_ZONE_MAX, "%s", v);
		return 0;
	}
	static const struct {
		const char *name;
		size_t off;
		double lo, hi;
	} priors[] = {
	    {"prior_recipients_per_hour", offsetof(struct profile_prior, rcpts_per_hour), 0.1, 1e6},
	    {"prior_messages_per_hour", offsetof(struct profile_prior, msgs_per_hour), 0.1, 1e6},
	    {"prior_recipients_per_message", offsetof(struct profile_prior, rcpts_per_msg), 1, 1e4},
	    {"prior_distinct_per_day", offsetof(struct profile_prior, distinct_per_day), 1, 1e7},
	    {"prior_new_recipients", offsetof(struct profile_prior, novelty), 0.01, 0.99},
	    {"cold_start_samples", offsetof(struct profile_prior, n0), 1, 1e5},
	    {"sigma_floor", offsetof(struct profile_prior, sigma_floor), 0.05, 5},
	};
	for (size_t i = 0; i < sizeof(priors) / sizeof(priors[0]); i++)
		if (!strcmp(name, priors[i].name)) {
			if (anomaly_double(v, priors[i].lo, priors[i].hi, &d) < 0) {
				snprintf(err, errsz, "%s: '%s' (%g .. %g)", name, v, priors[i].lo,
				         priors[i].hi);
				return -1;
			}
			*(double *)((char *)&c->prior + priors[i].off) = d;
			return 0;
		}
	if (!strcmp(name, "reply")) {
		if (strlen(v) >= sizeof(c->reply)) {
			snprintf(err, errsz, "reply: longer than %zu characters",
			         sizeof(c->reply) - 1);
			return -1;
		}
		for (const char *p = v; *p; p++)
			if ((unsigned char)*p < 0x20) {
				snprintf(err, errsz, "reply: control characters");
				return -1;
			}
		snprintf(c->reply, sizeof(c->reply), "%s", v);
		return 0;
	}
	if (!strcmp(name, "dsn")) {
		if (!verdict_dsn_valid(v) || v[0] != '4') {
			snprintf(err, errsz, "dsn: '%s' (a 4.X.Y enhanced status code)", v);
			return -1;
		}
		snprintf(c->dsn, sizeof(c->dsn), "%s", v);
		return 0;
	}
	snprintf(err, errsz,
	         "unknown parameter '%s' in [anomaly] (enabled, warn, hold, defer, flag, dry_run, "
	         "flag_min_components, flag_duration, freeze, profile_ttl, dnsbl, asn_zone, "
	         "asn_zone6, network_settle, network_settle_messages, prior_*, "
	         "cold_start_samples, sigma_floor, reply, dsn)",
	         name);
	return -1;
badbool:
	snprintf(err, errsz, "%s: '%s' (yes or no)", name, v);
	return -1;
}

static int anomaly_check(void *blk, const struct config *cfg, char *err, size_t errsz)
{
	struct anomaly_conf *c = blk;
	if (!config_section_present(cfg, &anomaly_section))
		c->enabled = false;
	if (c->warn > c->hold && c->hold <= 100) {
		snprintf(err, errsz, "warn (%u) is above hold (%u)", c->warn, c->hold);
		return -1;
	}
	if (c->hold > c->defer && c->defer <= 100) {
		snprintf(err, errsz, "hold (%u) is above defer (%u)", c->hold, c->defer);
		return -1;
	}
	if (c->asn_zone6[0] == '\0' && !strcmp(c->asn_zone, "origin.asn.cymru.com"))
		snprintf(c->asn_zone6, sizeof(c->asn_zone6), "origin6.asn.cymru.com");
	return 0;
}

const struct config_section anomaly_section = {
    .name = "anomaly",
    .lists = (const char *const[]){"dnsbl", NULL},
    .size = sizeof(struct anomaly_conf),
    .defaults = anomaly_defaults,
    .set = anomaly_set,
    .check = anomaly_check,
};

/* ---------------------------------------------------------------- scoring */

/* snprintf that may cut (texts for logs and flags) */
static void anomaly_fmt(char *out, size_t outsz, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void anomaly_fmt(char *out, size_t outsz, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(out, outsz, fmt, ap);
	va_end(ap);
}

static unsigned anomaly_pts(double v, double cap)
{
	if (!(v > 0))
		return 0;
	return (unsigned)lround(v < cap ? v : cap);
}

static bool anomaly_always_texts;

void anomaly_set_always_texts(bool on)
{
	anomaly_always_texts = on;
}

static struct anomaly_component *anomaly_add(struct anomaly_result *r, enum anomaly_family fam,
                                             enum anomaly_kind kind, unsigned points, double a,
                                             double b, double c)
{
	if (points == 0 || r->n == ANOMALY_MAX_COMP)
		return NULL;
	struct anomaly_component *k = &r->c[r->n++];
	memset(k, 0, offsetof(struct anomaly_component, text));
	k->text[0] = '\0';
	k->family = fam;
	k->kind = kind;
	k->points = points;
	k->a = a;
	k->b = b;
	k->c = c;
	return k;
}

static void anomaly_text(struct anomaly_component *k)
{
	char *o = k->text;
	size_t n = sizeof(k->text);
	char code[20];
	switch (k->kind) {
	case ANOMALY_K_RCPT_H:
		anomaly_fmt(o, n, "recipients/h %.0f vs usual %.1f (%.1fσ)", k->a, k->b, k->c);
		break;
	case ANOMALY_K_MSG_H:
		anomaly_fmt(o, n, "messages/h %.0f vs usual %.1f (%.1fσ)", k->a, k->b, k->c);
		break;
	case ANOMALY_K_RCPT_MSG:
		anomaly_fmt(o, n, "recipients/message %.0f vs usual %.1f (%.1fσ)", k->a, k->b,
		            k->c);
		break;
	case ANOMALY_K_DISTINCT:
		anomaly_fmt(o, n, "distinct recipients today %.0f vs usual %.0f (%.1fσ)", k->a,
		            k->b, k->c);
		break;
	case ANOMALY_K_MSG_DAY:
		anomaly_fmt(o, n, "messages/24h %.0f vs usual %.1f (%.1fσ)", k->a, k->b, k->c);
		break;
	case ANOMALY_K_NETVOL:
		anomaly_fmt(o, n, "%.0f messages from a new network in %.0fh vs usual %.1f/day",
		            k->a, k->c, k->b);
		break;
	case ANOMALY_K_NOVELTY:
		anomaly_fmt(o, n, "%.0f%% new recipients (last %.0f) vs usual %.0f%%", 100 * k->a,
		            k->b, 100 * k->c);
		break;
	case ANOMALY_K_COUNTRY:
		anomaly_fmt(o, n, "first login from AS%u (%s), a new country, %s", k->u, k->cc,
		            k->s);
		break;
	case ANOMALY_K_ASN:
		anomaly_fmt(o, n, "first login from AS%u (%s), %s", k->u, k->cc[0] ? k->cc : "??",
		            k->s);
		break;
	case ANOMALY_K_PREFIX:
		if (k->u)
			anomaly_fmt(o, n, "new network %s (AS%u, usual)", k->s, k->u);
		else
			anomaly_fmt(o, n, "new network %s", k->s);
		break;
	case ANOMALY_K_DNSBL:
		anomaly_fmt(code, sizeof(code), "%u.%u.%u.%u", k->u >> 24, (k->u >> 16) & 255,
		            (k->u >> 8) & 255, k->u & 255);
		anomaly_fmt(o, n, "client %s on exploit list %s (%s)%s", k->s, k->s2, code,
		            k->a > 0 ? " on its usual provider" : "");
		break;
	case ANOMALY_K_SENDER:
		anomaly_fmt(o, n, "sender %s not the login %s%s", k->s, k->s2,
		            k->a > 0 ? " (first use)" : " (recent)");
		break;
	case ANOMALY_K_BOUNCE:
		anomaly_fmt(o, n, "bounce ratio %.0f%% (usual %.*f%%) over %.0f recipients",
		            100 * k->a, k->b < 0.01 ? 1 : 0, 100 * k->b, k->c);
		break;
	case ANOMALY_K_CONCURRENT:
		anomaly_fmt(o, n, "the usual network was used %.0f min ago", k->a);
		break;
	case ANOMALY_K_HOURS:
		anomaly_fmt(o, n, "off-hours (%02uh UTC, usual %.1f%%)", k->u, 100 * k->a);
		break;
	case ANOMALY_K_PERSIST:
		anomaly_fmt(o, n, "sustained: %.0f points over %d in the last hours", k->a,
		            ANOMALY_PERSIST_K);
		break;
	}
}

void anomaly_texts(struct anomaly_result *r)
{
	if (r->texts)
		return;
	for (size_t i = 0; i < r->n; i++)
		anomaly_text(&r->c[i]);
	r->texts = true;
}

/*
 * The bounce component (anomaly-notes.md §6): the recent window needs
 * ANOMALY_BOUNCE_MIN_N outcomes and ANOMALY_BOUNCE_MIN_K bounces, its
 * Wilson 95 % lower bound must exceed both 5 % (SES's review level) and
 * twice the account's usual ratio, and the recent ratio must be
 * ANOMALY_BOUNCE_BITS unlikely under the usual one (KL divergence times
 * the outcomes, ~ log2 of the likelihood ratio); 10 points there, 3 more
 * per point of lower bound above the threshold, at most 35.
 */
unsigned anomaly_bounce_points(const struct profile_features *f)
{
	double thr =
	    2 * f->bounce_usual > ANOMALY_BOUNCE_FLOOR ? 2 * f->bounce_usual : ANOMALY_BOUNCE_FLOOR;
	if (f->bounce_n < ANOMALY_BOUNCE_MIN_N ||
	    f->bounce_recent * f->bounce_n < ANOMALY_BOUNCE_MIN_K || f->bounce_lb <= thr ||
	    f->bounce_bits < ANOMALY_BOUNCE_BITS)
		return 0;
	return anomaly_pts(10 + (f->bounce_lb - thr) * 300, 35);
}

/*
 * Points per component (anomaly-notes.md §4): volumes as z-scores in log
 * space (a factor e^σ_floor per σ), novelty as the KL divergence of the
 * recent share of new recipients from the account's own (bits), login
 * context and identity as fixed weights.  Volume and novelty describe the
 * same behaviour and count as ONE kind of evidence, unless the volume is
 * extreme (a spam run no person sends by hand); the sender and bounces are
 * the others about WHAT is sent.  The network and an exploit listing say
 * WHERE the login comes from: evidence only beside something unusual in
 * what is sent.  Off-hours and persistence add to the score but are never
 * evidence by themselves.
 */
void anomaly_score(const struct anomaly_conf *c, const struct anomaly_input *in,
                   struct anomaly_result *r)
{
	const struct profile_features *f = in->f;
	unsigned fam[ANOMALY__FAMILIES] = {0};
	struct anomaly_component *k;

	memset(r, 0, offsetof(struct anomaly_result, c));
	r->n = 0;
	r->texts = false;
	r->persist = 0;
	r->flag = r->flag_raised = false;
	r->x = NULL;
	r->action = ACT_DUNNO;
	snprintf(r->network, sizeof(r->network), "%s", in->network);

	/* volume: the strongest counts whole, the others half; a young
	 * profile (cold start) knows little of what is usual: its behaviour
	 * counts as much as it is mature */
	double mat = f->maturity;
	unsigned v[5];
	v[0] = f->rate_r >= 10 ? anomaly_pts((f->z_rh - 1.5) * 8 * mat, 35) : 0;
	v[1] = f->rate_m >= 5 ? anomaly_pts((f->z_mh - 1.5) * 6 * mat, 25) : 0;
	v[2] = f->msg_rcpts >= 5 ? anomaly_pts((f->z_rm - 1.5) * 6 * mat, 25) : 0;
	v[3] = f->distinct_today >= 25 ? anomaly_pts((f->z_dd - 1.5) * 10 * mat, 30) : 0;
	v[4] = f->rate_md >= 20 ? anomaly_pts((f->z_md - 1.5) * 10 * mat, 30) : 0;
	if (v[0])
		anomaly_add(r, ANOMALY_VOLUME, ANOMALY_K_RCPT_H, v[0], f->rate_r, expm1(f->rh_mu),
		            f->z_rh);
	if (v[1])
		anomaly_add(r, ANOMALY_VOLUME, ANOMALY_K_MSG_H, v[1], f->rate_m, expm1(f->mh_mu),
		            f->z_mh);
	if (v[2])
		anomaly_add(r, ANOMALY_VOLUME, ANOMALY_K_RCPT_MSG, v[2], f->msg_rcpts,
		            expm1(f->rm_mu), f->z_rm);
	if (v[3])
		anomaly_add(r, ANOMALY_VOLUME, ANOMALY_K_DISTINCT, v[3], f->distinct_today,
		            expm1(f->dd_mu), f->z_dd);
	if (v[4])
		anomaly_add(r, ANOMALY_VOLUME, ANOMALY_K_MSG_DAY, v[4], f->rate_md, expm1(f->md_mu),
		            f->z_md);
	unsigned vmax = 0, vsum = 0;
	for (int i = 0; i < 5; i++) {
		vsum += v[i];
		vmax = v[i] > vmax ? v[i] : vmax;
	}
	fam[ANOMALY_VOLUME] = vmax + (vsum - vmax) / 2;
	if (fam[ANOMALY_VOLUME] > 40)
		fam[ANOMALY_VOLUME] = 40;

	/* novelty: the short window against the account's own share */
	unsigned nv = f->nov_short_n >= 5 ? anomaly_pts((f->nov_bits - 4) * 1.5 * mat, 40) : 0;
	if (anomaly_add(r, ANOMALY_NOVELTY, ANOMALY_K_NOVELTY, nv, f->nov_short, f->nov_short_n,
	                f->nov_base))
		fam[ANOMALY_NOVELTY] = nv;

	/* network: only once the account has a settled one */
	bool new_country = false;
	if (f->net_any_settled && !f->net_established && in->network[0]) {
		enum anomaly_kind kind;
		unsigned p;
		if (in->asn && !f->asn_known && !f->cc_known && in->cc[0]) {
			kind = ANOMALY_K_COUNTRY;
			p = 25;
			new_country = true;
		} else if (in->asn && !f->asn_known) {
			kind = ANOMALY_K_ASN;
			p = 15;
		} else {
			kind = ANOMALY_K_PREFIX;
			p = in->asn ? 4 : 8;
		}
		if ((k = anomaly_add(r, ANOMALY_NETWORK, kind, p, 0, 0, 0))) {
			k->u = in->asn;
			k->s = r->network;
			memcpy(k->cc, in->cc, sizeof(k->cc));
			fam[ANOMALY_NETWORK] = p;
		}
	}

	/* sustained volume from a new network: a hijacker's drip from abroad
	 * sends many times the account's day from one new network, a
	 * traveller what they usually send (extrapolated to a day from
	 * ANOMALY_NETVOL_SPAN at least; 10 points a doubling over twice) */
	if (fam[ANOMALY_NETWORK] >= ANOMALY_MIN_POINTS && f->net_slot >= 0) {
		double usual = expm1(f->md_mu) > 1 ? expm1(f->md_mu) : 1;
		double msgs = (double)f->net_count + (f->new_message ? 1 : 0);
		double days = f->net_age_s > ANOMALY_NETVOL_SPAN ? f->net_age_s / 86400
		                                                 : ANOMALY_NETVOL_SPAN / 86400;
		unsigned p = msgs >= ANOMALY_NETVOL_MIN
		                 ? anomaly_pts((log2(msgs / (days * usual)) - 1) * 10 * mat, 35)
		                 : 0;
		if (p && anomaly_add(r, ANOMALY_VOLUME, ANOMALY_K_NETVOL, p, msgs, usual,
		                     f->net_age_s / 3600)) {
			vsum += p;
			vmax = p > vmax ? p : vmax;
			fam[ANOMALY_VOLUME] = vmax + (vsum - vmax) / 2;
			if (fam[ANOMALY_VOLUME] > 40)
				fam[ANOMALY_VOLUME] = 40;
		}
	}

	/* two places at once: a new country while a settled network of the
	 * account is in use (the owner at home, a hijacker abroad; a
	 * traveller's home network is idle; a new ASN at home is a phone) --
	 * unless the settled network itself is sending unusually many new
	 * recipients (more than 4 bits from the usual share, the novelty
	 * component's allowance) at the time: then one person is doing one
	 * unusual thing over two networks (a VPN toggled during an
	 * invitation), and a hijacker's recipients never touch the owner's
	 * networks' window */
	bool home_too = f->home_nov_n >= 5 && f->home_nov_bits > 4;
	if (new_country && f->other_net && f->other_idle_s < ANOMALY_CONCUR_S && !home_too) {
		if (anomaly_add(r, ANOMALY_CONCURRENT, ANOMALY_K_CONCURRENT, ANOMALY_CONCUR_PTS,
		                f->other_idle_s / 60, 0, 0))
			fam[ANOMALY_CONCURRENT] = ANOMALY_CONCUR_PTS;
	}

	/* client on an exploit / botnet list: little weight on the account's
	 * usual provider (CGNAT addresses are listed for somebody else's phone) */
	if (in->dnsbl_zone) {
		bool usual = f->asn_known && in->asn;
		unsigned p = usual ? 15 : 40;
		if ((k = anomaly_add(r, ANOMALY_DNSBL, ANOMALY_K_DNSBL, p, usual, 0, 0))) {
			k->s = in->client;
			k->s2 = in->dnsbl_zone;
			k->u = in->dnsbl_code;
			fam[ANOMALY_DNSBL] = p;
		}
	}

	/* sender identity */
	if (in->sender_checked && !f->snd_established) {
		unsigned p = 0;
		bool first = f->snd_slot < 0;
		if (in->sender_foreign)
			p = first ? 25 : 20;
		else if (f->snd_known > 0)
			p = first ? 8 : 5;
		if (p && (k = anomaly_add(r, ANOMALY_SENDER, ANOMALY_K_SENDER, p, first, 0, 0))) {
			k->s = in->sender;
			k->s2 = in->login;
			fam[ANOMALY_SENDER] = p;
		}
	}

	/* bounces (NDR detection feeds the profile): the recent ratio against
	 * the account's usual one, once there are enough outcomes */
	unsigned bp = anomaly_bounce_points(f);
	if (bp && (k = anomaly_add(r, ANOMALY_BOUNCE, ANOMALY_K_BOUNCE, bp, f->bounce_recent,
	                           f->bounce_usual, f->bounce_n)))
		fam[ANOMALY_BOUNCE] = bp;

	unsigned sum = 0;
	for (int i = 0; i < ANOMALY__FAMILIES; i++)
		sum += fam[i];
	r->behaviour = fam[ANOMALY_VOLUME] + fam[ANOMALY_NOVELTY];

	/* independent evidence: volume and novelty are one behaviour, unless
	 * the run is extreme */
	bool extreme = fam[ANOMALY_VOLUME] >= 35 && fam[ANOMALY_NOVELTY] >= 20 &&
	               f->rate_r >= 200 && f->z_rh >= 4;
	unsigned what = (fam[ANOMALY_VOLUME] >= ANOMALY_MIN_POINTS ||
	                 fam[ANOMALY_NOVELTY] >= ANOMALY_MIN_POINTS) +
	                extreme + (fam[ANOMALY_SENDER] >= ANOMALY_MIN_POINTS) +
	                (fam[ANOMALY_BOUNCE] >= ANOMALY_MIN_POINTS) +
	                (fam[ANOMALY_CONCURRENT] >= ANOMALY_MIN_POINTS);
	unsigned where = (fam[ANOMALY_NETWORK] >= ANOMALY_MIN_POINTS) +
	                 (fam[ANOMALY_DNSBL] >= ANOMALY_MIN_POINTS);
	/* where the login comes from is no evidence without something
	 * unusual in what is sent (CGNAT addresses are listed, people travel) */
	r->families = what ? what + where : 0;

	/* off-hours: a multiplier on the rest, never evidence alone */
	if (sum > 0 && f->hour_share >= 0 && f->hour_share < 0.01) {
		unsigned p = (sum + 2) / 4;
		if ((k = anomaly_add(r, ANOMALY_CONTEXT, ANOMALY_K_HOURS, p, f->hour_share, 0,
		                     0))) {
			k->u = f->hour;
			sum += p;
		}
	}

	/* persistence: excess score of requests with independent evidence,
	 * accumulated over the last hours */
	double excess = (double)sum - ANOMALY_PERSIST_K;
	double most = in->since_s * ANOMALY_PERSIST_RATE / 3600; /* sustained, not a burst */
	if (excess > most)
		excess = most;
	r->persist = in->persist + (excess > 0 && r->families >= 2 ? excess : 0);
	if (r->families >= 2 && r->persist >= 60) {
		unsigned p = anomaly_pts(r->persist / 8, 45);
		if (anomaly_add(r, ANOMALY_CONTEXT, ANOMALY_K_PERSIST, p, r->persist, 0, 0))
			sum += p;
	}

	r->score = sum > 100 ? 100 : sum;
	if (r->score >= c->warn)
		r->action = ACT_WARN;
	if (r->score >= c->hold)
		r->action = ACT_HOLD;
	if (r->score >= c->defer)
		r->action = ACT_DEFER;
	/* one kind of behaviour from one unusual place is what a trip's or a
	 * VPN's one-off invitation looks like: it flags once it has lasted
	 * (the accumulator), or with a third kind of evidence */
	bool weak =
	    r->families == 2 && what == 1 && where == 1 && r->persist < ANOMALY_WEAK_PERSIST;
	r->flag = !weak && r->score >= c->flag && r->families >= c->flag_min_components;
	if (anomaly_always_texts || r->action >= ACT_WARN || r->flag)
		anomaly_texts(r);
}

/* Components, strongest first. */
size_t anomaly_components_text(struct anomaly_result *r, const char *sep, char *out, size_t outsz)
{
	size_t n = 0;
	bool used[ANOMALY_MAX_COMP] = {false};
	if (outsz == 0)
		return 0;
	out[0] = '\0';
	anomaly_texts(r);
	for (size_t k = 0; k < r->n; k++) {
		int best = -1;
		for (size_t i = 0; i < r->n; i++)
			if (!used[i] && (best < 0 || r->c[i].points > r->c[best].points))
				best = (int)i;
		used[best] = true;
		int w = snprintf(out + n, outsz - n, "%s%s [+%u]", n ? sep : "", r->c[best].text,
		                 r->c[best].points);
		if (w < 0 || (size_t)w >= outsz - n) {
			n = strlen(out);
			break;
		}
		n += (size_t)w;
	}
	return n;
}

const struct anomaly_result *anomaly_last(void)
{
	return &anomaly_last_r;
}

void anomaly_reset_last(void)
{
	memset(&anomaly_last_r, 0, sizeof(anomaly_last_r));
}

/* ---------------------------------------------------------------- flags */

static void anomaly_flag_done(void *arg, int rc, const char *id_or_error)
{
	(void)arg;
	if (rc < 0)
		log_err("event=anomaly_flag_failed error=\"%s\"", id_or_error);
}

/* The daemon's way: flag.c (persisted, hooked, exactly once). */
static void anomaly_flag_default(const struct flag_request *r)
{
	flag_raise(r, anomaly_flag_done, NULL);
}

static anomaly_flag_fn *anomaly_flag = anomaly_flag_default;

void anomaly_set_flag_fn(anomaly_flag_fn *fn)
{
	anomaly_flag = fn ? fn : anomaly_flag_default;
}

/* ---------------------------------------------------------------- the check */

static const struct anomaly_conf *anomaly_conf(const struct config *cfg)
{
	return config_section_get(cfg, &anomaly_section);
}

void anomaly_prepare(struct pipeline_ctx *x)
{
	const struct anomaly_conf *c = anomaly_conf(x->cfg);
	struct pipeline_opmeta *m;

	if (c == NULL || !c->enabled || !x->outbound || x->req->state != PROTO_STATE_RCPT ||
	    x->principal[0] == '\0')
		return;
	if (pipeline_add_op(x, STORE_GET, &anomaly_rule, x->principal, &m))
		m->purpose = ANOMALY_PURPOSE_GET;
}

static uint32_t anomaly_h32(const char *s)
{
	return (uint32_t)profile_hash(s, strlen(s));
}

static const char *anomaly_domain(const char *addr)
{
	const char *at = strrchr(addr, '@');
	return at ? at + 1 : NULL;
}

/* Queue the profile's write-back after the answer. */
static void anomaly_put(struct pipeline_ctx *x, const struct anomaly_conf *c,
                        const struct profile *p)
{
	size_t slen = strlen(x->principal) + 1;
	if (x->nfollow == STORE_MAX_BATCH ||
	    x->arena_used + slen + PROFILE_WIRE_SIZE > sizeof(x->arena)) {
		anomaly_stats.no_room++;
		return;
	}
	char *subject = x->arena + x->arena_used;
	memcpy(subject, x->principal, slen);
	x->arena_used += slen;
	uint8_t *val = (uint8_t *)x->arena + x->arena_used;
	size_t vlen = profile_encode(p, val, PROFILE_WIRE_SIZE);
	x->arena_used += PROFILE_WIRE_SIZE;
	struct store_op *op = &x->follow[x->nfollow++];
	memset(op, 0, sizeof(*op));
	op->kind = STORE_PUT;
	op->rule = ANOMALY_NS;
	op->subject = subject;
	op->val = val;
	op->vlen = vlen;
	op->ttl_us = c->ttl_us;
}

static void anomaly_raise(struct pipeline_ctx *x, const struct anomaly_conf *c,
                          struct anomaly_result *r)
{
	char reason[FLAG_REASON_MAX], ev[FLAG_EVIDENCE_MAX], comps[FLAG_EVIDENCE_MAX - 512];
	anomaly_components_text(r, "; ", reason, sizeof(reason));
	anomaly_components_text(r, "\n", comps, sizeof(comps));
	anomaly_fmt(ev, sizeof(ev),
	            "anomaly score %u (flag at %u)\n%s\nclient=%s sender=%s recipient=%s "
	            "instance=%.64s",
	            r->score, c->flag, comps, x->client, x->sender, x->recipient,
	            proto_get(x->req, PROTO_A_INSTANCE));
	struct flag_request fr = {
	    .account = x->principal,
	    .source = FLAG_SRC_ANOMALY,
	    .reason = reason,
	    .evidence = ev,
	    .score = r->score,
	    .duration_us = c->flag_duration_us,
	    .actor = "policyd",
	};
	anomaly_flag(&fr);
}

static void anomaly_log(const struct pipeline_ctx *x, struct anomaly_result *r, const char *action)
{
	struct log_kv kv;
	char comps[1024];
	anomaly_components_text(r, "; ", comps, sizeof(comps));
	log_kv_init(&kv, "anomaly");
	log_kv_str(&kv, "principal", x->principal);
	log_kv_u64(&kv, "score", r->score);
	log_kv_str(&kv, "action", action);
	log_kv_str(&kv, "client", x->client);
	log_kv_str(&kv, "sender", x->sender);
	log_kv_str(&kv, "recipient", x->recipient);
	log_kv_str(&kv, "components", comps);
	log_kv_emit(&kv, LOG_L_INFO);
}

void anomaly_finish(struct pipeline_ctx *x)
{
	const struct anomaly_conf *c = anomaly_conf(x->cfg);
	int gi = -1;

	if (x->st != STORE_OK || c == NULL || !c->enabled)
		return;
	for (size_t i = 0; i < x->nops; i++)
		if (x->meta[i].check == PIPELINE_CHECK_ANOMALY &&
		    x->meta[i].purpose == ANOMALY_PURPOSE_GET)
			gi = (int)i;
	if (gi < 0)
		return;

	static struct profile p; /* one thread; 1 KB off the stack */
	uint32_t now = (uint32_t)(x->now_us / 1000000);
	const struct store_result *res = &x->res[gi];
	if (!res->found || res->vlen == 0)
		profile_init(&p, now);
	else if (profile_decode(&p, res->val, res->vlen) < 0) {
		anomaly_stats.bad_profiles++;
		log_warn("event=anomaly_bad_profile principal=%s bytes=%zu: starting afresh",
		         x->principal, res->vlen);
		profile_init(&p, now);
	}

	/* the request, reduced */
	struct profile_obs o;
	memset(&o, 0, sizeof(o));
	o.now_s = now;
	if (x->recipient[0])
		o.rcpt = profile_hash(x->recipient, strlen(x->recipient));
	const char *inst = proto_get(x->req, PROTO_A_INSTANCE);
	o.inst = inst[0] ? anomaly_h32(inst) | 1 : 0;
	const char *ld = anomaly_domain(x->principal);
	const char *sd = anomaly_domain(x->sender);
	bool sender_checked = false, sender_foreign = false;
	if (x->sender[0]) {
		o.sender = anomaly_h32(x->sender);
		size_t ll = strlen(x->principal);
		o.sender_is_login =
		    !strcasecmp(x->sender, x->principal) ||
		    (!ld && !strncasecmp(x->sender, x->principal, ll) && x->sender[ll] == '@');
		o.sender_login_domain = ld && sd && !strcasecmp(ld, sd);
		sender_checked = !o.sender_is_login && x->pkind == PRINCIPAL_SASL;
		sender_foreign = sender_checked && ld && !o.sender_login_domain;
	}
	char network[64] = "";
	const char *raw_client = proto_get(x->req, PROTO_A_CLIENT_ADDRESS);
	if (x->client[0]) {
		key_ip_net(network, sizeof(network), &x->client_ip, 24, 64);
		o.prefix = anomaly_h32(network) | 1;
	} else if (raw_client[0] && strcasecmp(raw_client, "unknown")) {
		anomaly_stats.bad_addresses++;
		if (anomaly_stats.bad_addresses < 10 || anomaly_stats.bad_addresses % 1000 == 0)
			log_warn("event=anomaly_bad_client client=\"%.64s\" count=%llu: not an "
			         "address, no network or DNS components",
			         raw_client, anomaly_stats.bad_addresses);
	}
	struct dns_asn_info ai;
	memset(&ai, 0, sizeof(ai));
	const char *listed = NULL;
	uint32_t code = 0;
	if (x->client[0]) {
		if (c->asn_zone[0] &&
		    dns_asn(x->client, c->asn_zone, c->asn_zone6, x->now_us, &ai) == DNS_YES) {
			o.asn = ai.asn;
			o.cc[0] = ai.cc[0];
			o.cc[1] = ai.cc[1];
		}
		for (size_t i = 0; i < c->ndnsbl && !listed; i++) {
			uint32_t k;
			if (dns_dnsbl(x->client, c->dnsbl[i].zone, x->now_us, &k) != DNS_YES)
				continue;
			if (c->dnsbl[i].lo && (k < c->dnsbl[i].lo || k > c->dnsbl[i].hi))
				continue;
			listed = c->dnsbl[i].zone;
			code = k;
		}
	}

	struct profile_features f;
	profile_observe(&p, &o, &c->prior, &f);

	struct anomaly_input in = {
	    .f = &f,
	    .client = x->client,
	    .network = network,
	    .asn = o.asn ? o.asn : (f.net_slot >= 0 ? p.net[f.net_slot].asn : 0),
	    .login = x->principal,
	    .sender = x->sender,
	    .sender_foreign = sender_foreign,
	    .sender_checked = sender_checked,
	    .dnsbl_zone = listed,
	    .dnsbl_code = code,
	};
	const char *cc = o.cc[0] ? o.cc : (f.net_slot >= 0 ? p.net[f.net_slot].cc : "");
	in.cc[0] = cc[0];
	in.cc[1] = cc[0] ? cc[1] : '\0';
	in.cc[2] = '\0';
	double dt = now > p.last_s ? (double)(now - p.last_s) : 0;
	in.persist = p.n_rcpts ? profile_decay(p.persist, dt, ANOMALY_PERSIST_TAU) : 0;
	in.since_s = p.n_rcpts ? dt : 3600;

	struct anomaly_result *r = &anomaly_last_r;
	anomaly_score(c, &in, r);
	r->x = x;
	anomaly_stats.scored++;

	bool frozen = (p.flags & PROFILE_F_FROZEN) && now < p.frozen_until_s;
	if (r->action >= ACT_WARN) {
		enum verdict_action a = r->action;
		bool dry = a != ACT_WARN && (c->dry & (1u << a));
		struct verdict_part *vp = verdict_add(&x->v, "anomaly", "anomaly", a, dry);
		if (vp) {
			char comps[160];
			anomaly_components_text(r, "; ", comps, sizeof(comps));
			anomaly_fmt(vp->reason, sizeof(vp->reason), "score %u: %s", r->score,
			            comps);
			if (a == ACT_WARN) /* Postfix logs it: say why */
				anomaly_fmt(vp->text, sizeof(vp->text),
				            "policyd anomaly score %u: %s", r->score, comps);
			else if (c->reply[0])
				snprintf(vp->text, sizeof(vp->text), "%s", c->reply);
			else if (a == ACT_DEFER)
				snprintf(
				    vp->text, sizeof(vp->text),
				    "Unusual sending activity for %s; try again later or contact "
				    "support",
				    x->principal);
			else
				snprintf(vp->text, sizeof(vp->text),
				         "Held for review: unusual sending activity for %s",
				         x->principal);
			if (a == ACT_DEFER)
				snprintf(vp->dsn, sizeof(vp->dsn), "%s", c->dsn);
		}
		anomaly_stats.warned += a == ACT_WARN;
		anomaly_stats.held += a == ACT_HOLD;
		anomaly_stats.deferred += a == ACT_DEFER;
	}
	if (r->flag && !frozen) {
		if (c->flag_dry)
			anomaly_stats.flag_dry++;
		else {
			anomaly_raise(x, c, r);
			anomaly_stats.flagged++;
			r->flag_raised = true;
		}
		p.flags |= PROFILE_F_FROZEN;
		p.frozen_until_s = now + (uint32_t)(c->freeze_us / 1000000);
	}
	if (r->action >= ACT_WARN || r->flag)
		anomaly_log(x, r,
		            r->flag && !frozen ? (c->flag_dry ? "flag(dry-run)" : "flag")
		                               : config_action_name(r->action));

	/* learn, unless the request is refused (nothing was sent); keep the
	 * freeze and the accumulator either way */
	bool refused = x->refused;
	for (size_t i = 0; i < x->v.nparts; i++)
		if (!x->v.part[i].dry_run &&
		    (x->v.part[i].action == ACT_DEFER || x->v.part[i].action == ACT_REJECT))
			refused = true;
	if (!refused) {
		/* a hijack must not teach the profile what it looks like:
		 * nothing is learned of a request with independent kinds of
		 * evidence (what a flag needs), a tenth of one scored 25 or
		 * more: one kind alone is learned slowly (a campaign, a trip,
		 * a move) */
		double learn = r->families >= 2 ? 0 : r->score >= 25 ? 0.1 : 1;
		double learn_ctx = r->families >= 2 || r->score >= c->hold ? 0 : 1;
		if (learn < 1 - f.maturity) /* a young profile learns what it sees */
			learn = 1 - f.maturity;
		if (learn_ctx < 1 - f.maturity)
			learn_ctx = 1 - f.maturity;
		profile_update(&p, &o, &f, learn, learn_ctx);
	}
	p.persist = (float)r->persist;
	anomaly_put(x, c, &p);
}

/* ---------------------------------------------------------------- outcomes */

/*
 * NDR detection (ndr_module.c) charges each recipient's final outcome to
 * the principal that submitted it; anomaly_note_outcome() queues it here
 * and the profile in the store learns it (profile_note_outcome): a GET of
 * up to ANOMALY_OUT_BATCH principals, then a PUT of those that have a
 * profile (outcomes of a principal never scored are dropped).  Outcomes
 * gather for ANOMALY_OUT_DELAY seconds per principal, so a backlog of the
 * log costs one read-modify-write per principal and second, not per line.
 * One batch at a time: two writes of this queue never race; a request of
 * the same principal between the GET and the PUT (a networked store)
 * loses one side's update, as two requests in flight do (a statistic).
 */
struct anomaly_out {
	struct anomaly_out *next, *hnext; /* queue, hash chain */
	uint64_t h;
	uint32_t sent, bounced; /* outcomes waiting (bounced among sent) */
	uint32_t t_s;           /* the newest */
	char principal[];
};

static struct {
	struct store *store;
	const struct config *cfg;
	struct ev_loop *loop;
	ev_timer kick;
	struct anomaly_out *head, *tail;
	struct anomaly_out *bucket[ANOMALY_OUT_BUCKETS];
	size_t n;
	bool busy, pumping;
	struct anomaly_out *fly[ANOMALY_OUT_BATCH];
	size_t nfly;
	struct store_op ops[ANOMALY_OUT_BATCH];
	uint8_t buf[ANOMALY_OUT_BATCH][PROFILE_WIRE_SIZE];
} O;

static void anomaly_out_pump(void);

/* The store's clock: the loop's, else (tests) the newest outcome's. */
static int64_t anomaly_out_now(uint32_t t_s)
{
	return O.loop ? (int64_t)(ev_now(O.loop) * 1e6) : (int64_t)t_s * 1000000;
}

static void anomaly_out_kick(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)w;
	(void)revents;
	anomaly_out_pump();
}

void anomaly_outcomes_attach(struct store *s, const struct config *cfg, struct ev_loop *loop)
{
	if (O.loop && ev_is_active(&O.kick))
		ev_timer_stop(O.loop, &O.kick);
	O.store = s;
	O.cfg = cfg;
	O.loop = loop;
	if (loop) {
		ev_timer_init(&O.kick, anomaly_out_kick, ANOMALY_OUT_DELAY, 0);
		O.kick.data = NULL;
	}
}

static void anomaly_out_free_fly(void)
{
	for (size_t i = 0; i < O.nfly; i++)
		free(O.fly[i]);
	O.nfly = 0;
}

void anomaly_outcomes_detach(void)
{
	anomaly_outcomes_flush();
	size_t dropped = 0;
	while (O.head) {
		struct anomaly_out *e = O.head;
		O.head = e->next;
		dropped += e->sent;
		free(e);
	}
	if (O.busy) /* a networked store still owes the answer: forget it */
		O.nfly = 0;
	anomaly_stats.outcomes_dropped += dropped;
	memset(O.bucket, 0, sizeof(O.bucket));
	O.tail = NULL;
	O.n = 0;
	O.busy = false;
	if (O.loop && ev_is_active(&O.kick))
		ev_timer_stop(O.loop, &O.kick);
	O.store = NULL;
	O.loop = NULL;
}

void anomaly_note_outcome(const char *principal, bool bounced, int64_t t_us)
{
	const struct anomaly_conf *c = O.cfg ? config_section_get(O.cfg, &anomaly_section) : NULL;
	if (O.store == NULL || c == NULL || !c->enabled || principal == NULL || !principal[0])
		return;
	size_t len = strlen(principal);
	if (len >= STORE_MAX_KEY - sizeof(ANOMALY_NS))
		return;
	uint64_t h = profile_hash(principal, len);
	struct anomaly_out **b = &O.bucket[h % ANOMALY_OUT_BUCKETS], *e;
	for (e = *b; e; e = e->hnext)
		if (e->h == h && !strcmp(e->principal, principal))
			break;
	if (e == NULL) {
		if (O.n == ANOMALY_OUT_MAX || (e = malloc(sizeof(*e) + len + 1)) == NULL) {
			anomaly_stats.outcomes_dropped++;
			return;
		}
		memset(e, 0, sizeof(*e));
		e->h = h;
		memcpy(e->principal, principal, len + 1);
		e->hnext = *b;
		*b = e;
		if (O.tail)
			O.tail->next = e;
		else
			O.head = e;
		O.tail = e;
		O.n++;
	}
	if (e->sent < UINT32_MAX) {
		e->sent++;
		e->bounced += bounced;
	}
	uint32_t t = (uint32_t)(t_us / 1000000);
	if (t > e->t_s)
		e->t_s = t;
	anomaly_stats.outcomes++;
	if (O.loop && !ev_is_active(&O.kick))
		ev_timer_start(O.loop, &O.kick);
}

static void anomaly_out_unhash(struct anomaly_out *e)
{
	struct anomaly_out **b = &O.bucket[e->h % ANOMALY_OUT_BUCKETS];
	while (*b != e)
		b = &(*b)->hnext;
	*b = e->hnext;
}

static void anomaly_out_done(void)
{
	anomaly_out_free_fly();
	O.busy = false;
	if (!O.pumping)
		anomaly_out_pump();
}

static void anomaly_out_put_done(void *arg, enum store_status st, const struct store_result *res,
                                 size_t n)
{
	(void)arg;
	(void)res;
	(void)n;
	if (st != STORE_OK) {
		anomaly_stats.outcomes_dropped += O.nfly;
		log_warn("event=anomaly_outcomes_failed error=\"%s\"",
		         O.store ? O.store->err : "no store");
	}
	anomaly_out_done();
}

/* Apply sent outcomes, bounced of them, spread evenly (no order is known). */
static void anomaly_out_apply(struct profile *p, const struct anomaly_out *e)
{
	for (uint32_t i = 0; i < e->sent; i++) {
		uint64_t before = (uint64_t)i * e->bounced / e->sent;
		uint64_t after = (uint64_t)(i + 1) * e->bounced / e->sent;
		profile_note_outcome(p, e->t_s, after > before);
	}
}

static void anomaly_out_got(void *arg, enum store_status st, const struct store_result *res,
                            size_t n)
{
	(void)arg;
	const struct anomaly_conf *c = O.cfg ? config_section_get(O.cfg, &anomaly_section) : NULL;
	if (st != STORE_OK || n != O.nfly || c == NULL || O.store == NULL) {
		for (size_t i = 0; i < O.nfly; i++)
			anomaly_stats.outcomes_dropped += O.fly[i]->sent;
		if (st != STORE_OK)
			log_warn("event=anomaly_outcomes_failed error=\"%s\"",
			         O.store ? O.store->err : "no store");
		anomaly_out_done();
		return;
	}
	static struct profile p;
	size_t nput = 0;
	for (size_t i = 0; i < n; i++) {
		struct anomaly_out *e = O.fly[i];
		if (!res[i].found || res[i].vlen == 0) {
			anomaly_stats.outcomes_no_profile += e->sent;
			continue;
		}
		if (profile_decode(&p, res[i].val, res[i].vlen) < 0) {
			anomaly_stats.bad_profiles++;
			anomaly_stats.outcomes_dropped += e->sent;
			continue;
		}
		anomaly_out_apply(&p, e);
		anomaly_stats.outcomes_applied += e->sent;
		struct store_op *op = &O.ops[nput];
		memset(op, 0, sizeof(*op));
		op->kind = STORE_PUT;
		op->rule = ANOMALY_NS;
		op->subject = e->principal;
		op->vlen = profile_encode(&p, O.buf[nput], PROFILE_WIRE_SIZE);
		op->val = O.buf[nput];
		op->ttl_us = c->ttl_us;
		nput++;
	}
	if (nput == 0) {
		anomaly_out_done();
		return;
	}
	int64_t now = anomaly_out_now(O.fly[0]->t_s);
	if (store_batch(O.store, O.ops, nput, now, anomaly_out_put_done, NULL) != 0) {
		anomaly_stats.outcomes_dropped += nput;
		anomaly_out_done();
	}
}

static void anomaly_out_start(void)
{
	O.nfly = 0;
	uint32_t newest = 0;
	while (O.head && O.nfly < ANOMALY_OUT_BATCH) {
		struct anomaly_out *e = O.head;
		O.head = e->next;
		if (O.head == NULL)
			O.tail = NULL;
		anomaly_out_unhash(e);
		O.n--;
		struct store_op *op = &O.ops[O.nfly];
		memset(op, 0, sizeof(*op));
		op->kind = STORE_GET;
		op->rule = ANOMALY_NS;
		op->subject = e->principal;
		O.fly[O.nfly++] = e;
		if (e->t_s > newest)
			newest = e->t_s;
	}
	O.busy = true;
	if (store_batch(O.store, O.ops, O.nfly, anomaly_out_now(newest), anomaly_out_got, NULL) !=
	    0) {
		for (size_t i = 0; i < O.nfly; i++)
			anomaly_stats.outcomes_dropped += O.fly[i]->sent;
		anomaly_out_free_fly();
		O.busy = false;
	}
}

static void anomaly_out_pump(void)
{
	if (O.pumping || O.store == NULL)
		return;
	O.pumping = true;
	while (!O.busy && O.head)
		anomaly_out_start();
	O.pumping = false;
}

void anomaly_outcomes_flush(void)
{
	if (O.loop && ev_is_active(&O.kick))
		ev_timer_stop(O.loop, &O.kick);
	anomaly_out_pump();
}

/* ---------------------------------------------------------------- metrics */

static void anomaly_collect(struct metrics_out *o, void *arg)
{
	(void)arg;
	static const struct {
		const char *what;
		size_t off;
	} v[] = {
	    {"scored", offsetof(struct anomaly_stats, scored)},
	    {"warn", offsetof(struct anomaly_stats, warned)},
	    {"hold", offsetof(struct anomaly_stats, held)},
	    {"defer", offsetof(struct anomaly_stats, deferred)},
	    {"flag", offsetof(struct anomaly_stats, flagged)},
	    {"flag_dry_run", offsetof(struct anomaly_stats, flag_dry)},
	    {"bad_profile", offsetof(struct anomaly_stats, bad_profiles)},
	    {"bad_client_address", offsetof(struct anomaly_stats, bad_addresses)},
	    {"no_room", offsetof(struct anomaly_stats, no_room)},
	    {"outcome", offsetof(struct anomaly_stats, outcomes)},
	    {"outcome_applied", offsetof(struct anomaly_stats, outcomes_applied)},
	    {"outcome_no_profile", offsetof(struct anomaly_stats, outcomes_no_profile)},
	    {"outcome_dropped", offsetof(struct anomaly_stats, outcomes_dropped)},
	};
	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		char l[64] = "";
		metrics_label(l, sizeof(l), "event", v[i].what);
		metrics_out_u64(
		    o, l, *(const unsigned long long *)((const char *)&anomaly_stats + v[i].off));
	}
}

static void anomaly_collect_dns(struct metrics_out *o, void *arg)
{
	(void)arg;
	static const struct {
		const char *what;
		size_t off;
	} v[] = {
	    {"cache_hit", offsetof(struct dns_stats, hits)},
	    {"cache_miss", offsetof(struct dns_stats, misses)},
	    {"query", offsetof(struct dns_stats, queries)},
	    {"answer", offsetof(struct dns_stats, answers)},
	    {"nxdomain", offsetof(struct dns_stats, nxdomain)},
	    {"timeout", offsetof(struct dns_stats, timeouts)},
	    {"error", offsetof(struct dns_stats, errors)},
	    {"bad_answer", offsetof(struct dns_stats, bad_answers)},
	    {"refused_code", offsetof(struct dns_stats, refused_codes)},
	    {"broken_zone", offsetof(struct dns_stats, broken_zone)},
	    {"txt_cut", offsetof(struct dns_stats, txt_cut)},
	    {"skipped_inflight", offsetof(struct dns_stats, skipped)},
	    {"bad_address", offsetof(struct dns_stats, bad_addresses)},
	};
	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		char l[64] = "";
		metrics_label(l, sizeof(l), "event", v[i].what);
		metrics_out_u64(o, l,
		                *(const unsigned long long *)((const char *)&dns_stats + v[i].off));
	}
}

static int anomaly_mod_start(struct module_ctx *m, char *err, size_t errsz)
{
	(void)err;
	(void)errsz;
	anomaly_outcomes_attach(m->store, m->cfg, m->loop);
	metrics_register("policyd_anomaly_total",
	                 "Anomaly scoring: requests scored, thresholds "
	                 "crossed, flags, bad stored profiles and client addresses.",
	                 METRICS_COUNTER_T, anomaly_collect, &anomaly_stats);
	metrics_register("policyd_dns_total",
	                 "DNS look-ups (c-ares): cache, queries, answers, "
	                 "timeouts, bad answers ignored.",
	                 METRICS_COUNTER_T, anomaly_collect_dns, &anomaly_stats);
	return 0;
}

static void anomaly_mod_reload(struct module_ctx *m, const struct config *cfg)
{
	(void)m;
	O.cfg = cfg;
}

static void anomaly_mod_stop(struct module_ctx *m)
{
	(void)m;
	anomaly_outcomes_detach();
	metrics_unregister(&anomaly_stats);
}

const struct module anomaly_module = {
    .name = "anomaly",
    .start = anomaly_mod_start,
    .reload = anomaly_mod_reload,
    .stop = anomaly_mod_stop,
};
