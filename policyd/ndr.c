/*
 * policyd/ndr.c - owns the NDR tracker (see ndr.h): the attribution table
 * (queue id -> principal), the sliding windows of outcomes per principal,
 * per recipient domain, globally, for inbound NDRs per local user and for
 * our own bounces (backscatter), the baselines, the Wilson-bound spike
 * test, the blocklist alert, the pickup limit, and the state file.
 *
 * Entry points: ndr_new/ndr_free/ndr_set_conf, ndr_feed_line,
 * ndr_note_queue_id, ndr_note_inbound, ndr_spiking, ndr_clear, ndr_tick,
 * ndr_json, ndr_save/ndr_load, ndr_wilson_lower.
 *
 * Attribution (docs/postfix-policy.md s.5.4, docs/postfix-logs.md s.1.6):
 * a queue id's owner comes, best first, from a content-filter hand-off
 * ("queued as NEWID" from a filter_relays address), from the policy hook
 * (END-OF-MESSAGE), from smtpd's `client=` line (sasl_username; or the
 * sender, read from qmgr's from= line, for a client in trusted_networks;
 * orig_queue_id), from pickup (`uid=N from=<S>`: the sender, or uid:N;
 * orig_id= of a requeue).  A queue id named by a bounce notification, or a
 * null-sender message with no smtpd or pickup line, is our own NDR: its
 * deliveries count as backscatter, never to a user.  A delivery whose
 * orig_to differs from to and leaves the host is charged to orig_to (a
 * local forwarding address).  Queue ids are dropped at `removed`, after
 * queue_id_ttl, or oldest first beyond max_queue_ids.
 *
 * Windows: a ring of NDR_SHORT_BUCKETS buckets over the short window and
 * one of NDR_LONG_BUCKETS over the long one, of 7 counters each; a
 * per-principal class ring is allocated on its first failure.  Completed
 * long buckets fold into a decayed baseline (half-life baseline_us)
 * unless the account was spiking then.
 *
 * Limits: max_principals / max_domains / max_inbound entries (least
 * recently active evicted first), NDR_MAX_DEFERRED deferred recipients per
 * queue id (more are counted without a class), events older than a window
 * are dropped (late_events).  No event loop, no I/O but the state file.
 */
#include "ndr.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "proto/maillog.h"

enum ndr_ctr { C_N = 0, C_SENT, C_BOUNCED, C_DEFERRED, C_EXPIRED, C_BADP, C_BADD, C__N };

#define EV_FIRST    (1u << C_N)
#define EV_SENT     (1u << C_SENT)
#define EV_BOUNCED  (1u << C_BOUNCED)
#define EV_DEFERRED (1u << C_DEFERRED)
#define EV_EXPIRED  (1u << C_EXPIRED)
#define EV_BADP     (1u << C_BADP)
#define EV_BADD     (1u << C_BADD)

#define NDR_EVRING     64  /* recent failure lines, for evidence */
#define NDR_EVLINE     400 /* bytes kept of each */
#define NDR_BLMAX      32  /* (list, ip) pairs remembered for alert suppression */
#define NDR_DOM_PH     8   /* distinct failing principals remembered per domain */
#define NDR_FUTURE_US  (300LL * 1000000)
#define NDR_STATE_LINE 8192

/* ------------------------------------------------------------ tables */

struct ndr_node {
	struct ndr_node *hnext;
	struct ndr_node *prev, *next; /* LRU: most recently touched first */
	uint64_t hash;
	char *key;
};

struct ndr_table {
	struct ndr_node **b;
	size_t nb, count;
	struct ndr_node lru; /* sentinel */
};

static uint64_t ndr_hash(const char *s, size_t len)
{
	uint64_t h = 14695981039346656037ULL;
	for (size_t i = 0; i < len; i++) {
		h ^= (unsigned char)s[i];
		h *= 1099511628211ULL;
	}
	return h ^ (h >> 29);
}

static void tab_init(struct ndr_table *t)
{
	memset(t, 0, sizeof(*t));
	t->lru.prev = t->lru.next = &t->lru;
}

static struct ndr_node *tab_find(const struct ndr_table *t, const char *key, uint64_t h)
{
	if (t->nb == 0)
		return NULL;
	for (struct ndr_node *e = t->b[h & (t->nb - 1)]; e; e = e->hnext)
		if (e->hash == h && strcmp(e->key, key) == 0)
			return e;
	return NULL;
}

static void tab_lru_unlink(struct ndr_node *e)
{
	e->prev->next = e->next;
	e->next->prev = e->prev;
}

static void tab_lru_front(struct ndr_table *t, struct ndr_node *e)
{
	e->next = t->lru.next;
	e->prev = &t->lru;
	t->lru.next->prev = e;
	t->lru.next = e;
}

static void tab_touch(struct ndr_table *t, struct ndr_node *e)
{
	if (t->lru.next == e)
		return;
	tab_lru_unlink(e);
	tab_lru_front(t, e);
}

static bool tab_grow(struct ndr_table *t)
{
	size_t nb = t->nb ? t->nb * 2 : 64;
	struct ndr_node **b = calloc(nb, sizeof(*b));
	if (b == NULL)
		return false;
	for (size_t i = 0; i < t->nb; i++)
		for (struct ndr_node *e = t->b[i], *nx; e; e = nx) {
			nx = e->hnext;
			e->hnext = b[e->hash & (nb - 1)];
			b[e->hash & (nb - 1)] = e;
		}
	free(t->b);
	t->b = b;
	t->nb = nb;
	return true;
}

/* Insert e (key and hash set); false when out of memory. */
static bool tab_insert(struct ndr_table *t, struct ndr_node *e)
{
	if (t->count + 1 > t->nb && !tab_grow(t))
		return false;
	size_t i = e->hash & (t->nb - 1);
	e->hnext = t->b[i];
	t->b[i] = e;
	tab_lru_front(t, e);
	t->count++;
	return true;
}

static void tab_remove(struct ndr_table *t, struct ndr_node *e)
{
	struct ndr_node **pp = &t->b[e->hash & (t->nb - 1)];
	while (*pp && *pp != e)
		pp = &(*pp)->hnext;
	if (*pp)
		*pp = e->hnext;
	tab_lru_unlink(e);
	t->count--;
}

static struct ndr_node *tab_oldest(struct ndr_table *t)
{
	return t->lru.prev == &t->lru ? NULL : t->lru.prev;
}

/* ------------------------------------------------------------ records */

struct ndr_win {
	int64_t s_head, l_head; /* bucket epochs of the newest buckets (-1: empty) */
	uint32_t s[NDR_SHORT_BUCKETS][C__N];
	uint32_t l[NDR_LONG_BUCKETS][C__N];
	uint16_t (*cls)[CLASSIFY__COUNT]; /* long-ring geometry; NULL until a failure */
	double base_n, base_bp, base_bd;  /* decayed totals of completed long buckets */
	bool spike_bucket;                /* the current long bucket is a spike's */
};

struct ndr_acct {
	struct ndr_node node;
	enum ndr_scope scope;
	enum ndr_kind kind;
	struct ndr_win w;
	bool spike;
	int64_t spike_since;
	char reason[200];
	struct ndr_acct *sprev, *snext; /* list of spiking accounts */
	int64_t last_us;
	uint64_t ph[NDR_DOM_PH]; /* domain: failing principals in the current long bucket */
	uint8_t nph;
	int64_t ph_epoch;
};

struct ndr_def {
	uint64_t h; /* recipient */
	uint8_t cls;
	char *domain;
};

struct ndr_qid {
	struct ndr_node node;
	char *principal; /* NULL: none (yet) */
	uint8_t kind;
	bool has_source; /* smtpd client=, pickup, policy hook or hand-off seen */
	bool from_policy, from_handoff;
	bool own_ndr;         /* our bounce daemon made it */
	bool inbound;         /* from outside: not charged to anyone */
	bool trusted_pending; /* trusted client: the principal is the sender, when known */
	bool sender_known;
	char client[48];
	struct ndr_def *def;
	uint16_t ndef, defcap;
	uint32_t def_overflow;
	int64_t seen_us;
};

struct ndr_inb {
	struct ndr_node node;
	int64_t s_head;
	uint32_t s[NDR_SHORT_BUCKETS];
	bool spike;
	uint64_t total;
	int64_t last_us;
};

struct ndr_pick {
	struct ndr_node node;
	struct gcra_tat tat[STORE_MAX_WINDOWS];
	uint64_t total;
};

struct ndr_bl {
	char list[64], ip[64];
	int64_t last_us;
	uint64_t suppressed;
};

struct ndr_evline {
	uint64_t ph; /* principal hash, 0 for none */
	char line[NDR_EVLINE];
};

struct ndr {
	const struct ndr_conf *conf;
	const struct config *cfg;
	const struct classify_db *db;
	struct ndr_actions act;
	struct maillog_opts mopts;
	struct maillog_line ln;
	int64_t s_width, l_width;   /* bucket widths, µs */
	uint64_t short_us, long_us; /* the windows they were made for */
	double decay;               /* baseline decay per long bucket */
	struct ndr_table principals, domains, qids, inbound, picks;
	struct ndr_acct global, backscatter;
	struct ndr_acct spiking; /* sentinel of the spiking list */
	char **local;            /* extra local domains (postconf) */
	size_t nlocal;
	struct ndr_evline ev[NDR_EVRING];
	size_t evpos;
	struct ndr_bl bl[NDR_BLMAX];
	int64_t last_us; /* newest event time (replays) */
	int64_t ref_s;
	struct ndr_counters cnt;
};

/* ------------------------------------------------------------ maths */

static double ndr_sqrt(double x)
{
	if (!(x > 0))
		return 0;
	double r = x > 1 ? x : 1;
	for (int i = 0; i < 80; i++) {
		double nr = 0.5 * (r + x / r);
		if (nr >= r)
			break;
		r = nr;
	}
	return r;
}

/* 0.5^x for x >= 0 */
static double ndr_half_pow(double x)
{
	double r = 1;
	if (!(x >= 0))
		return 1;
	while (x >= 1 && r > 1e-300) {
		r *= 0.5;
		x -= 1;
	}
	/* 0.5^f = e^(-f ln 2), |f ln 2| < 0.7: a short series */
	double y = -x * 0.69314718055994530942, term = 1, e = 1;
	for (int i = 1; i < 20; i++) {
		term *= y / i;
		e += term;
	}
	return r * e;
}

double ndr_wilson_lower(uint64_t k, uint64_t n, double z)
{
	if (n == 0)
		return 0;
	if (k > n)
		k = n;
	double dn = (double)n, p = (double)k / dn, z2 = z * z;
	double centre = p + z2 / (2 * dn);
	double margin = z * ndr_sqrt(p * (1 - p) / dn + z2 / (4 * dn * dn));
	double lb = (centre - margin) / (1 + z2 / dn);
	return lb > 0 ? lb : 0;
}

bool ndr_class_indicts(enum classify_class c)
{
	switch (c) {
	case CLASSIFY_USER_UNKNOWN:
	case CLASSIFY_BLOCKLIST_IP:
	case CLASSIFY_BLOCKLIST_DOMAIN:
	case CLASSIFY_REPUTATION:
	case CLASSIFY_CONTENT_SPAM:
	case CLASSIFY_AUTH_POLICY:
		return true;
	default:
		return false;
	}
}

const char *ndr_kind_name(enum ndr_kind k)
{
	static const char *const names[] = {"none",   "sasl",   "sender",
	                                    "client", "pickup", "forward"};
	return (size_t)k < NDR_K__COUNT ? names[k] : "?";
}

/* ------------------------------------------------------------ windows */

static void win_init(struct ndr_win *w)
{
	memset(w, 0, sizeof(*w));
	w->s_head = w->l_head = -1;
}

/* Fold the completed long bucket at epoch `e` into the baseline. */
static void win_fold(struct ndr *n, struct ndr_win *w, int64_t from, int64_t to)
{
	int64_t gap = to - from;
	const uint32_t *b = w->l[from % NDR_LONG_BUCKETS];
	w->base_n *= n->decay;
	w->base_bp *= n->decay;
	w->base_bd *= n->decay;
	if (!w->spike_bucket) {
		w->base_n += b[C_N];
		w->base_bp += b[C_BADP];
		w->base_bd += b[C_BADD];
	}
	for (int64_t i = 1; i < gap && i < 4096; i++) {
		w->base_n *= n->decay;
		w->base_bp *= n->decay;
		w->base_bd *= n->decay;
	}
	if (gap >= 4096)
		w->base_n = w->base_bp = w->base_bd = 0;
}

/* Move the rings forward to time t (never back). */
static void win_advance(struct ndr *n, struct ndr_win *w, int64_t t, bool spiking)
{
	int64_t se = t / n->s_width, le = t / n->l_width;
	if (se > w->s_head) {
		int64_t gap = w->s_head < 0 ? NDR_SHORT_BUCKETS : se - w->s_head;
		for (int64_t i = 0; i < gap && i < NDR_SHORT_BUCKETS; i++)
			memset(w->s[(se - i) % NDR_SHORT_BUCKETS], 0, sizeof(w->s[0]));
		w->s_head = se;
	}
	if (le > w->l_head) {
		if (w->l_head >= 0)
			win_fold(n, w, w->l_head, le);
		int64_t gap = w->l_head < 0 ? NDR_LONG_BUCKETS : le - w->l_head;
		for (int64_t i = 0; i < gap && i < NDR_LONG_BUCKETS; i++) {
			memset(w->l[(le - i) % NDR_LONG_BUCKETS], 0, sizeof(w->l[0]));
			if (w->cls)
				memset(w->cls[(le - i) % NDR_LONG_BUCKETS], 0, sizeof(w->cls[0]));
		}
		w->l_head = le;
		w->spike_bucket = spiking;
	}
}

/* Count one event at time t; false when it is older than the windows. */
static bool win_add(struct ndr *n, struct ndr_win *w, int64_t t, unsigned ev,
                    enum classify_class cls, bool spiking)
{
	bool counted = false;
	win_advance(n, w, t, spiking);
	int64_t se = t / n->s_width, le = t / n->l_width;
	if (se > w->s_head - NDR_SHORT_BUCKETS) {
		uint32_t *b = w->s[se % NDR_SHORT_BUCKETS];
		for (unsigned c = 0; c < C__N; c++)
			if (ev & (1u << c) && b[c] < UINT32_MAX)
				b[c]++;
		counted = true;
	}
	if (le > w->l_head - NDR_LONG_BUCKETS) {
		uint32_t *b = w->l[le % NDR_LONG_BUCKETS];
		for (unsigned c = 0; c < C__N; c++)
			if (ev & (1u << c) && b[c] < UINT32_MAX)
				b[c]++;
		if (cls != CLASSIFY_NONE && cls != CLASSIFY_DELIVERED &&
		    (ev & (EV_BOUNCED | EV_EXPIRED | EV_DEFERRED))) {
			if (w->cls == NULL)
				w->cls = calloc(NDR_LONG_BUCKETS, sizeof(*w->cls));
			if (w->cls && w->cls[le % NDR_LONG_BUCKETS][cls] < UINT16_MAX)
				w->cls[le % NDR_LONG_BUCKETS][cls]++;
		}
		counted = true;
	}
	return counted;
}

static void win_sums(struct ndr *n, struct ndr_win *w, int64_t now, bool spiking, bool lng,
                     uint64_t out[C__N])
{
	memset(out, 0, sizeof(uint64_t) * C__N);
	if (now > 0)
		win_advance(n, w, now, spiking);
	size_t nb = lng ? NDR_LONG_BUCKETS : NDR_SHORT_BUCKETS;
	for (size_t i = 0; i < nb; i++)
		for (unsigned c = 0; c < C__N; c++)
			out[c] += lng ? w->l[i][c] : w->s[i][c];
}

static void win_free(struct ndr_win *w)
{
	free(w->cls);
	w->cls = NULL;
}

/* ------------------------------------------------------------ spike test */

struct ndr_eval {
	const char *what, *window;
	uint64_t n, k;
	double ratio, bound, threshold, baseline;
};

static unsigned ndr_min_count(const struct ndr *n, const struct ndr_acct *a)
{
	if (a->scope == NDR_S_GLOBAL)
		return n->conf->global_min_count;
	if (a->scope == NDR_S_DOMAIN)
		return n->conf->domain_min_count;
	return n->conf->min_count;
}

/* Does a's window hold a spike at `scale` x the thresholds? */
static bool ndr_test(struct ndr *n, struct ndr_acct *a, int64_t now, double scale,
                     struct ndr_eval *e)
{
	const struct ndr_conf *c = n->conf;
	unsigned minc = ndr_min_count(n, a);
	double bb = a->w.base_n >= 1 ? a->w.base_bp / a->w.base_n : 0;
	double bd = a->w.base_n >= 1 ? a->w.base_bd / a->w.base_n : 0;
	double tb = c->bounce_threshold, td = c->defer_threshold;

	if (c->bounce_relative * bb > tb)
		tb = c->bounce_relative * bb;
	if (c->defer_relative * bd > td)
		td = c->defer_relative * bd;
	tb *= scale;
	td *= scale;
	for (int lng = 0; lng < 2; lng++) {
		uint64_t s[C__N];
		win_sums(n, &a->w, now, a->spike, lng, s);
		if (s[C_N] < minc || s[C_N] == 0)
			continue;
		double lb = ndr_wilson_lower(s[C_BADP], s[C_N], c->z);
		if (c->bounce_threshold < 1 && lb > tb) {
			*e = (struct ndr_eval){"bounce",
			                       lng ? "long" : "short",
			                       s[C_N],
			                       s[C_BADP],
			                       (double)s[C_BADP] / (double)s[C_N],
			                       lb,
			                       tb,
			                       bb};
			return true;
		}
		double ld = ndr_wilson_lower(s[C_BADD], s[C_N], c->z);
		if (c->defer_threshold < 1 && ld > td) {
			*e = (struct ndr_eval){"deferral",
			                       lng ? "long" : "short",
			                       s[C_N],
			                       s[C_BADD],
			                       (double)s[C_BADD] / (double)s[C_N],
			                       ld,
			                       td,
			                       bd};
			return true;
		}
	}
	return false;
}

static void ndr_spiking_link(struct ndr *n, struct ndr_acct *a)
{
	a->snext = n->spiking.snext;
	a->sprev = &n->spiking;
	n->spiking.snext->sprev = a;
	n->spiking.snext = a;
}

static void ndr_spiking_unlink(struct ndr_acct *a)
{
	if (a->snext == NULL)
		return;
	a->sprev->snext = a->snext;
	a->snext->sprev = a->sprev;
	a->snext = a->sprev = NULL;
}

static const char *ndr_acct_name(const struct ndr_acct *a)
{
	if (a->scope == NDR_S_GLOBAL)
		return "global";
	if (a->scope == NDR_S_BACKSCATTER)
		return "backscatter";
	return a->node.key;
}

/* The top classes of a, as "class:count,..." */
static void ndr_top_classes(const struct ndr_acct *a, char *out, size_t outsz, unsigned want,
                            enum classify_class *cls_out, uint64_t *cnt_out, unsigned *nout)
{
	uint64_t tot[CLASSIFY__COUNT] = {0};
	size_t o = 0;
	unsigned k = 0;

	if (outsz)
		out[0] = '\0';
	if (a->w.cls)
		for (size_t i = 0; i < NDR_LONG_BUCKETS; i++)
			for (size_t c = 0; c < CLASSIFY__COUNT; c++)
				tot[c] += a->w.cls[i][c];
	for (; k < want; k++) {
		size_t best = 0;
		for (size_t c = 1; c < CLASSIFY__COUNT; c++)
			if (tot[c] > tot[best])
				best = c;
		if (tot[best] == 0)
			break;
		if (cls_out)
			cls_out[k] = (enum classify_class)best;
		if (cnt_out)
			cnt_out[k] = tot[best];
		if (out && o < outsz) {
			int w = snprintf(out + o, outsz - o, "%s%s:%llu", o ? "," : "",
			                 classify_class_name((enum classify_class)best),
			                 (unsigned long long)tot[best]);
			if (w > 0)
				o += (size_t)w < outsz - o ? (size_t)w : outsz - o - 1;
		}
		tot[best] = 0;
	}
	if (nout)
		*nout = k;
}

/* Evidence lines of a principal (hash ph; 0: any), newest last. */
static void ndr_evidence(const struct ndr *n, uint64_t ph, char *out, size_t outsz)
{
	size_t o = 0, found = 0;
	out[0] = '\0';
	for (size_t i = 0; i < NDR_EVRING && found < NDR_EVIDENCE; i++) {
		const struct ndr_evline *e = &n->ev[(n->evpos + NDR_EVRING - 1 - i) % NDR_EVRING];
		if (e->line[0] == '\0' || (ph && e->ph != ph))
			continue;
		int w = snprintf(out + o, outsz - o, "%s%s", o ? "\n" : "", e->line);
		if (w < 0 || (size_t)w >= outsz - o)
			break;
		o += (size_t)w;
		found++;
	}
}

static void ndr_report(struct ndr *n, struct ndr_acct *a, bool start, const struct ndr_eval *e)
{
	struct ndr_spike s;
	char top[200], ev[NDR_EVIDENCE * (NDR_EVLINE + 1) + 1];

	memset(&s, 0, sizeof(s));
	s.scope = a->scope;
	s.name = ndr_acct_name(a);
	s.kind = a->kind;
	s.start = start;
	ndr_top_classes(a, top, sizeof(top), 3, NULL, NULL, NULL);
	if (e) {
		s.what = e->what;
		s.window = e->window;
		s.n = e->n;
		s.failures = e->k;
		s.ratio = e->ratio;
		s.bound = e->bound;
		s.threshold = e->threshold;
		s.baseline = e->baseline;
	} else {
		s.what = "";
		s.window = "";
	}
	if (start && a->scope == NDR_S_BACKSCATTER) {
		snprintf(a->reason, sizeof(a->reason),
		         "%llu bounces of ours to remote senders in the short window (limit %.0f)",
		         (unsigned long long)s.n, s.threshold);
		n->cnt.spikes++;
	} else if (start) {
		snprintf(a->reason, sizeof(a->reason),
		         "%s spike: %llu of %llu over the %s window (%.1f%%, lower bound %.1f%% > "
		         "%.1f%%)%s%.60s",
		         s.what, (unsigned long long)s.failures, (unsigned long long)s.n, s.window,
		         100 * s.ratio, 100 * s.bound, 100 * s.threshold, top[0] ? "; " : "", top);
		n->cnt.spikes++;
	}
	s.reason = a->reason;
	if (a->scope == NDR_S_PRINCIPAL)
		ndr_evidence(n, a->node.hash, ev, sizeof(ev));
	else if (a->scope == NDR_S_GLOBAL)
		ndr_evidence(n, 0, ev, sizeof(ev));
	else
		ev[0] = '\0';
	s.evidence = ev;
	if (n->act.spike)
		n->act.spike(n->act.arg, &s);
}

/* After a failure: does a start a spike? */
static void ndr_check(struct ndr *n, struct ndr_acct *a, int64_t t)
{
	struct ndr_eval e;
	if (a->spike || !ndr_test(n, a, t, 1.0, &e))
		return;
	a->spike = true;
	a->spike_since = t;
	a->w.spike_bucket = true;
	ndr_spiking_link(n, a);
	ndr_report(n, a, true, &e);
}

static void ndr_unspike(struct ndr *n, struct ndr_acct *a)
{
	a->spike = false;
	ndr_spiking_unlink(a);
	ndr_report(n, a, false, NULL);
	a->reason[0] = '\0';
}

/* ------------------------------------------------------------ accounts */

static struct ndr_acct *ndr_acct_get(struct ndr *n, struct ndr_table *t, enum ndr_scope scope,
                                     const char *key, bool create)
{
	size_t len = strlen(key);
	uint64_t h = ndr_hash(key, len);
	struct ndr_node *e = tab_find(t, key, h);
	if (e) {
		tab_touch(t, e);
		return (struct ndr_acct *)e;
	}
	if (!create)
		return NULL;
	size_t max = scope == NDR_S_DOMAIN ? n->conf->max_domains : n->conf->max_principals;
	while (t->count >= max && t->count > 0) {
		/* the least recently active first, sparing a spiking one if it can */
		struct ndr_node *v = tab_oldest(t);
		for (int i = 0; i < 8 && v != &t->lru && ((struct ndr_acct *)v)->spike; i++)
			v = v->prev;
		if (v == &t->lru || ((struct ndr_acct *)v)->spike)
			v = tab_oldest(t);
		struct ndr_acct *old = (struct ndr_acct *)v;
		tab_remove(t, &old->node);
		ndr_spiking_unlink(old);
		win_free(&old->w);
		free(old->node.key);
		free(old);
		n->cnt.principal_evicted++;
	}
	struct ndr_acct *a = calloc(1, sizeof(*a));
	if (a == NULL)
		return NULL;
	a->node.key = strdup(key);
	a->node.hash = h;
	a->scope = scope;
	win_init(&a->w);
	if (a->node.key == NULL || !tab_insert(t, &a->node)) {
		free(a->node.key);
		free(a);
		return NULL;
	}
	return a;
}

static void ndr_acct_free_all(struct ndr_table *t)
{
	for (struct ndr_node *e = t->lru.next, *nx; e != &t->lru; e = nx) {
		nx = e->next;
		struct ndr_acct *a = (struct ndr_acct *)e;
		win_free(&a->w);
		free(e->key);
		free(a);
	}
	free(t->b);
	tab_init(t);
}

/* ------------------------------------------------------------ queue ids */

static void ndr_qid_free(struct ndr_qid *q)
{
	for (size_t i = 0; i < q->ndef; i++)
		free(q->def[i].domain);
	free(q->def);
	free(q->principal);
	free(q->node.key);
	free(q);
}

static void ndr_qid_drop(struct ndr *n, struct ndr_qid *q)
{
	tab_remove(&n->qids, &q->node);
	ndr_qid_free(q);
}

static struct ndr_qid *ndr_qid_get(struct ndr *n, const char *qid, size_t len, bool create,
                                   int64_t t)
{
	char key[MAILLOG_MAX_QUEUE_ID + 1];
	if (len == 0 || len > MAILLOG_MAX_QUEUE_ID)
		return NULL;
	memcpy(key, qid, len);
	key[len] = '\0';
	uint64_t h = ndr_hash(key, len);
	struct ndr_node *e = tab_find(&n->qids, key, h);
	if (e) {
		tab_touch(&n->qids, e);
		((struct ndr_qid *)e)->seen_us = t;
		return (struct ndr_qid *)e;
	}
	if (!create)
		return NULL;
	while (n->qids.count >= n->conf->max_queue_ids && n->qids.count > 0) {
		ndr_qid_drop(n, (struct ndr_qid *)tab_oldest(&n->qids));
		n->cnt.qid_evicted++;
	}
	struct ndr_qid *q = calloc(1, sizeof(*q));
	if (q == NULL)
		return NULL;
	q->node.key = strdup(key);
	q->node.hash = h;
	q->seen_us = t;
	if (q->node.key == NULL || !tab_insert(&n->qids, &q->node)) {
		free(q->node.key);
		free(q);
		return NULL;
	}
	return q;
}

static void ndr_qid_set_owner(struct ndr_qid *q, const char *principal, enum ndr_kind kind)
{
	if (principal == NULL || principal[0] == '\0') {
		free(q->principal);
		q->principal = NULL;
		q->kind = NDR_K_NONE;
		return;
	}
	if (q->principal == NULL || strcmp(q->principal, principal) != 0) {
		char *p = strdup(principal);
		if (p == NULL)
			return;
		free(q->principal);
		q->principal = p;
	}
	q->kind = (uint8_t)kind;
	q->inbound = false;
	q->trusted_pending = false;
	q->has_source = true;
}

/* Find (or add) a deferred recipient; its index, or -1 (not there and full). */
static int ndr_def_find(struct ndr_qid *q, uint64_t h)
{
	for (uint16_t i = 0; i < q->ndef; i++)
		if (q->def[i].h == h)
			return i;
	return -1;
}

static void ndr_def_remove(struct ndr_qid *q, int i)
{
	free(q->def[i].domain);
	q->def[i] = q->def[--q->ndef];
}

static bool ndr_def_add(struct ndr_qid *q, uint64_t h, enum classify_class cls, const char *dom)
{
	if (q->ndef == q->defcap) {
		if (q->defcap >= NDR_MAX_DEFERRED)
			return false;
		uint16_t cap = q->defcap ? (uint16_t)(q->defcap * 2) : 4;
		if (cap > NDR_MAX_DEFERRED)
			cap = NDR_MAX_DEFERRED;
		struct ndr_def *d = realloc(q->def, cap * sizeof(*d));
		if (d == NULL)
			return false;
		q->def = d;
		q->defcap = cap;
	}
	q->def[q->ndef].h = h;
	q->def[q->ndef].cls = (uint8_t)cls;
	q->def[q->ndef].domain = dom[0] ? strdup(dom) : NULL;
	q->ndef++;
	return true;
}

/* ------------------------------------------------------------ life */

static void ndr_geometry(struct ndr *n)
{
	n->short_us = n->conf->short_us;
	n->long_us = n->conf->long_us;
	n->s_width = (int64_t)(n->conf->short_us / NDR_SHORT_BUCKETS);
	n->l_width = (int64_t)(n->conf->long_us / NDR_LONG_BUCKETS);
	if (n->s_width < 1000000)
		n->s_width = 1000000;
	if (n->l_width < n->s_width)
		n->l_width = n->s_width;
	double hl = (double)(n->conf->baseline_us ? n->conf->baseline_us : 7 * 86400000000ULL);
	n->decay = ndr_half_pow((double)n->l_width / hl);
}

struct ndr *ndr_new(const struct ndr_conf *conf, const struct config *cfg,
                    const struct classify_db *db, const struct ndr_actions *act)
{
	struct ndr *n = calloc(1, sizeof(*n));
	if (n == NULL)
		return NULL;
	n->conf = conf;
	n->cfg = cfg;
	n->db = db;
	if (act)
		n->act = *act;
	maillog_opts_default(&n->mopts);
	tab_init(&n->principals);
	tab_init(&n->domains);
	tab_init(&n->qids);
	tab_init(&n->inbound);
	tab_init(&n->picks);
	n->global.scope = NDR_S_GLOBAL;
	n->backscatter.scope = NDR_S_BACKSCATTER;
	win_init(&n->global.w);
	win_init(&n->backscatter.w);
	n->spiking.snext = n->spiking.sprev = &n->spiking;
	ndr_geometry(n);
	return n;
}

void ndr_set_conf(struct ndr *n, const struct ndr_conf *conf, const struct config *cfg,
                  const struct classify_db *db)
{
	/* n->conf may be gone already (the old config is freed first on reload) */
	bool geometry = conf->short_us != n->short_us || conf->long_us != n->long_us;
	n->conf = conf;
	n->cfg = cfg;
	n->db = db;
	if (geometry) {
		/* other bucket widths: the windows start again (baselines kept) */
		struct ndr_table *ts[] = {&n->principals, &n->domains};
		for (size_t i = 0; i < 2; i++)
			for (struct ndr_node *e = ts[i]->lru.next; e != &ts[i]->lru; e = e->next) {
				struct ndr_win *w = &((struct ndr_acct *)e)->w;
				double bn = w->base_n, bp = w->base_bp, bd = w->base_bd;
				win_free(w);
				win_init(w);
				w->base_n = bn;
				w->base_bp = bp;
				w->base_bd = bd;
			}
		win_free(&n->global.w);
		win_init(&n->global.w);
		win_free(&n->backscatter.w);
		win_init(&n->backscatter.w);
	}
	ndr_geometry(n);
}

void ndr_set_local_domains(struct ndr *n, char *const *domains, size_t nd)
{
	for (size_t i = 0; i < n->nlocal; i++)
		free(n->local[i]);
	free(n->local);
	n->local = NULL;
	n->nlocal = 0;
	if (nd == 0)
		return;
	n->local = calloc(nd, sizeof(*n->local));
	if (n->local == NULL)
		return;
	for (size_t i = 0; i < nd; i++) {
		char d[KEY_MAX];
		key_norm_login(d, sizeof(d), domains[i], true);
		if (d[0] && (n->local[n->nlocal] = strdup(d)) != NULL)
			n->nlocal++;
	}
}

void ndr_free(struct ndr *n)
{
	if (n == NULL)
		return;
	ndr_acct_free_all(&n->principals);
	ndr_acct_free_all(&n->domains);
	for (struct ndr_node *e = n->qids.lru.next, *nx; e != &n->qids.lru; e = nx) {
		nx = e->next;
		ndr_qid_free((struct ndr_qid *)e);
	}
	free(n->qids.b);
	struct ndr_table *simple[] = {&n->inbound, &n->picks};
	for (size_t i = 0; i < 2; i++) {
		for (struct ndr_node *e = simple[i]->lru.next, *nx; e != &simple[i]->lru; e = nx) {
			nx = e->next;
			free(e->key);
			free(e);
		}
		free(simple[i]->b);
	}
	win_free(&n->global.w);
	win_free(&n->backscatter.w);
	ndr_set_local_domains(n, NULL, 0);
	free(n);
}

bool ndr_is_local_domain(const struct ndr *n, const char *domain)
{
	for (size_t i = 0; i < n->conf->nlocal_domains; i++)
		if (strcmp(n->conf->local_domains[i], domain) == 0)
			return true;
	for (size_t i = 0; i < n->nlocal; i++)
		if (strcmp(n->local[i], domain) == 0)
			return true;
	return false;
}

static bool ndr_have_local(const struct ndr *n)
{
	return n->conf->nlocal_domains > 0 || n->nlocal > 0;
}

/* ------------------------------------------------------------ counting */

/* Copy a view into a NUL-terminated buffer (cut to size). */
static const char *ndr_str(char *buf, size_t sz, const struct maillog_str *s)
{
	size_t l = s->p ? s->len : 0;
	if (l >= sz)
		l = sz - 1;
	if (l)
		memcpy(buf, s->p, l);
	buf[l] = '\0';
	return buf;
}

static void ndr_remember_line(struct ndr *n, uint64_t ph, const char *line, size_t len)
{
	struct ndr_evline *e = &n->ev[n->evpos];
	n->evpos = (n->evpos + 1) % NDR_EVRING;
	e->ph = ph;
	if (len >= sizeof(e->line))
		len = sizeof(e->line) - 1;
	for (size_t i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)line[i];
		e->line[i] = (ch < 0x20 || ch == 0x7f) ? '?' : (char)ch;
	}
	e->line[len] = '\0';
}

/* Was this domain's failure a receiver-wide problem (not the sender's)? */
static bool ndr_domain_noise(struct ndr *n, struct ndr_acct *d)
{
	return d && d->spike && d->nph >= n->conf->domain_min_principals;
}

static void ndr_domain_note_principal(struct ndr *n, struct ndr_acct *d, const char *principal)
{
	int64_t epoch = d->w.l_head;
	if (d->ph_epoch != epoch) {
		d->nph = 0;
		d->ph_epoch = epoch;
	}
	uint64_t h = principal ? ndr_hash(principal, strlen(principal)) : 1;
	for (uint8_t i = 0; i < d->nph; i++)
		if (d->ph[i] == h)
			return;
	if (d->nph < NDR_DOM_PH)
		d->ph[d->nph++] = h;
}

/*
 * One outcome: ev (EV_*), class, to the principal (may be NULL), the
 * recipient domain (may be "") and the global account.
 */
static void ndr_outcome(struct ndr *n, const char *principal, enum ndr_kind kind,
                        const char *domain, unsigned ev, enum classify_class cls, int64_t t,
                        const char *line, size_t len)
{
	struct ndr_acct *d = NULL, *p = NULL;
	bool failure = (ev & (EV_BOUNCED | EV_EXPIRED | EV_DEFERRED)) != 0;

	n->cnt.outcomes++;
	if (domain && domain[0])
		d = ndr_acct_get(n, &n->domains, NDR_S_DOMAIN, domain, true);
	if (d && failure && ndr_class_indicts(cls))
		ndr_domain_note_principal(n, d, principal);
	unsigned pev = ev;
	if ((ev & (EV_BADP | EV_BADD)) && ndr_domain_noise(n, d))
		pev &= ~(EV_BADP | EV_BADD); /* a receiver-wide problem */
	if (principal && principal[0]) {
		n->cnt.attributed++;
		p = ndr_acct_get(n, &n->principals, NDR_S_PRINCIPAL, principal, true);
		if (p) {
			if (p->kind == NDR_K_NONE || kind == NDR_K_SASL)
				p->kind = kind;
			p->last_us = t;
			if (failure && line)
				ndr_remember_line(n, p->node.hash, line, len);
			if (!win_add(n, &p->w, t, pev, cls, p->spike))
				n->cnt.late_events++;
			else if (pev & (EV_BADP | EV_BADD))
				ndr_check(n, p, t);
		}
		/* final outcomes only: a deferral is counted when it ends
		 * (delivered, bounced or expired), and greylisting or a
		 * receiver's throttle of our shared IP says little of the
		 * account */
		if (n->act.outcome && (ev & (EV_SENT | EV_BOUNCED | EV_EXPIRED)))
			n->act.outcome(n->act.arg, principal, kind, (pev & EV_BADP) != 0, t);
	} else {
		n->cnt.unattributed++;
		if (failure && line)
			ndr_remember_line(n, 0, line, len);
	}
	if (d) {
		d->last_us = t;
		win_add(n, &d->w, t, ev, cls, d->spike);
		if (ev & (EV_BADP | EV_BADD))
			ndr_check(n, d, t);
	}
	win_add(n, &n->global.w, t, ev, cls, n->global.spike);
	if (ev & (EV_BADP | EV_BADD))
		ndr_check(n, &n->global, t);
}

static void ndr_backscatter(struct ndr *n, unsigned ev, enum classify_class cls, int64_t t)
{
	uint64_t s[C__N];
	win_add(n, &n->backscatter.w, t, ev, cls, n->backscatter.spike);
	if (!(ev & EV_FIRST) || n->backscatter.spike || n->conf->backscatter_max == 0)
		return;
	win_sums(n, &n->backscatter.w, t, false, false, s);
	if (s[C_N] >= n->conf->backscatter_max) {
		struct ndr_eval e = {"backscatter",
		                     "short",
		                     s[C_N],
		                     s[C_N],
		                     1,
		                     1,
		                     (double)n->conf->backscatter_max,
		                     0};
		n->backscatter.spike = true;
		n->backscatter.spike_since = t;
		ndr_report(n, &n->backscatter, true, &e);
	}
}

/* The time of a line: its own stamp when plausible, else now. */
static int64_t ndr_time(struct ndr *n, const struct maillog_line *ln, int64_t now_us)
{
	int64_t t;
	if (ln->has_time) {
		t = ln->time * 1000000 + ln->usec;
		/* a stamp far from now (a backlog, or a log in another time zone)
		 * would land outside the short window: then now counts */
		if (now_us == 0 ||
		    (t <= now_us + NDR_FUTURE_US && t >= now_us - (int64_t)n->conf->short_us))
			goto out;
	}
	t = now_us ? now_us : n->last_us;
out:
	if (t > n->last_us)
		n->last_us = t;
	return t;
}

static uint64_t ndr_rcpt_hash(const char *to)
{
	return ndr_hash(to, strlen(to)) | 1;
}

/* Is the relay a local delivery (mail that does not leave this host)? */
static bool ndr_relay_local(const struct maillog_line *ln)
{
	const struct maillog_str *r = &ln->relay;
	if (r->p == NULL)
		return false;
	if ((r->len == 5 && memcmp(r->p, "local", 5) == 0) ||
	    (r->len == 7 && memcmp(r->p, "virtual", 7) == 0))
		return true;
	/* LMTP over a unix socket, pipe transports: no address in brackets */
	if (ln->relay_addr.p && ln->relay_addr.len > 0 &&
	    memchr(ln->relay_addr.p, '/', ln->relay_addr.len))
		return true;
	return false;
}

static void ndr_blocklist(struct ndr *n, const struct classify_result *r, const char *principal,
                          int64_t t, const char *line, size_t len)
{
	char ip[64] = "", norm[64] = "";
	const char *list = r->list ? r->list : "unknown";

	if (r->ip.p) {
		ndr_str(ip, sizeof(ip), &r->ip);
		if (key_norm_ip(norm, sizeof(norm), ip) > 0)
			memcpy(ip, norm, sizeof(ip));
	}
	if (n->conf->nour_ips > 0 && ip[0] && !key_addr_in(ip, n->conf->our_ips, n->conf->nour_ips))
		return; /* another host's address */
	struct ndr_bl *slot = NULL, *oldest = &n->bl[0];
	for (size_t i = 0; i < NDR_BLMAX; i++) {
		struct ndr_bl *b = &n->bl[i];
		if (b->list[0] && strcmp(b->list, list) == 0 && strcmp(b->ip, ip) == 0) {
			slot = b;
			break;
		}
		if (b->last_us < oldest->last_us)
			oldest = b;
	}
	if (slot && slot->last_us && t - slot->last_us < (int64_t)n->conf->blocklist_interval_us) {
		slot->suppressed++;
		return;
	}
	if (slot == NULL) {
		slot = oldest;
		memset(slot, 0, sizeof(*slot));
		snprintf(slot->list, sizeof(slot->list), "%s", list);
		snprintf(slot->ip, sizeof(slot->ip), "%s", ip);
	}
	uint64_t sup = slot->suppressed;
	slot->suppressed = 0;
	slot->last_us = t;
	n->cnt.blocklist_alerts++;
	char ev[NDR_EVLINE + 1];
	size_t l = len < NDR_EVLINE ? len : NDR_EVLINE;
	for (size_t i = 0; i < l; i++) {
		unsigned char ch = (unsigned char)line[i];
		ev[i] = (ch < 0x20 || ch == 0x7f) ? '?' : (char)ch;
	}
	ev[l] = '\0';
	if (n->act.blocklist)
		n->act.blocklist(n->act.arg, list, ip[0] ? ip : "unknown",
		                 principal ? principal : "", sup, ev);
}

static void ndr_on_delivery(struct ndr *n, const struct maillog_line *ln, int64_t t,
                            const char *line, size_t len)
{
	struct classify_result r;
	char to[KEY_MAX], tmp[KEY_MAX], dom[KEY_MAX], fwd[KEY_MAX];
	enum maillog_status st = ln->status;

	switch (st) {
	case MAILLOG_ST_SENT:
	case MAILLOG_ST_BOUNCED:
	case MAILLOG_ST_DEFERRED:
	case MAILLOG_ST_SOFTBOUNCE:
		break;
	default:
		n->cnt.probes++; /* address probes, trace records, unknown words */
		return;
	}
	struct ndr_qid *q = ndr_qid_get(n, ln->queue_id.p, ln->queue_id.len, true, t);
	if (q == NULL)
		return;
	if (n->db)
		classify_line(n->db, ln, &r);
	else {
		memset(&r, 0, sizeof(r));
		r.cls = st == MAILLOG_ST_SENT      ? CLASSIFY_DELIVERED
		        : st == MAILLOG_ST_BOUNCED ? CLASSIFY_OTHER_PERMANENT
		                                   : CLASSIFY_OTHER_TEMPORARY;
	}
	n->cnt.by_class[r.cls]++;
	bool local = ndr_relay_local(ln);

	/* a content-filter hop: the message goes on as NEWID, owned as this one */
	if (st == MAILLOG_ST_SENT && ln->relay_addr.p && n->conf->nfilter_relays && ln->reply.p) {
		char ra[64];
		ndr_str(ra, sizeof(ra), &ln->relay_addr);
		const char *qa = memmem(ln->reply.p, ln->reply.len, "queued as ", 10);
		if (qa && key_addr_in(ra, n->conf->filter_relays, n->conf->nfilter_relays)) {
			const char *id = qa + 10, *end = ln->reply.p + ln->reply.len;
			size_t il = 0;
			while (id + il < end && ((id[il] >= '0' && id[il] <= '9') ||
			                         (id[il] >= 'A' && id[il] <= 'Z') ||
			                         (id[il] >= 'a' && id[il] <= 'z')))
				il++;
			struct ndr_qid *nq = il ? ndr_qid_get(n, id, il, true, t) : NULL;
			if (nq && nq != q) {
				n->cnt.handoffs++;
				ndr_qid_set_owner(nq, q->principal, (enum ndr_kind)q->kind);
				nq->own_ndr = q->own_ndr;
				nq->inbound = q->inbound;
				nq->has_source = true;
				nq->from_handoff = true;
				return;
			}
		}
	}

	ndr_str(tmp, sizeof(tmp), &ln->to);
	key_norm_address(to, sizeof(to), tmp, n->cfg ? &n->cfg->keyopts : NULL);
	key_norm_domain(dom, sizeof(dom), to);

	if (r.cls == CLASSIFY_BLOCKLIST_IP)
		ndr_blocklist(n, &r, q->principal, t, line, len);
	if (q->own_ndr) {
		n->cnt.own_ndr++;
		if (local)
			return; /* a double bounce to postmaster, or our bounce to a local user */
	}

	/* first outcome of this recipient? */
	uint64_t rh = ndr_rcpt_hash(to);
	int di = ndr_def_find(q, rh);
	unsigned ev = 0;
	bool indicts = ndr_class_indicts(r.cls);
	if (st == MAILLOG_ST_SENT) {
		ev = EV_SENT | (di < 0 ? EV_FIRST : 0);
		if (di >= 0)
			ndr_def_remove(q, di);
	} else if (st == MAILLOG_ST_BOUNCED) {
		ev = EV_BOUNCED | (di < 0 ? EV_FIRST : 0) | (indicts ? EV_BADP : 0);
		if (di >= 0)
			ndr_def_remove(q, di);
	} else { /* deferred, soft bounce */
		if (di >= 0) {
			q->def[di].cls = (uint8_t)r.cls; /* a retry: the class is updated */
			ev = 0;
		} else {
			ev = EV_FIRST | EV_DEFERRED | (indicts ? EV_BADD : 0);
			if (!ndr_def_add(q, rh, r.cls, dom))
				q->def_overflow++;
		}
	}
	if (q->own_ndr) {
		if (ev)
			ndr_backscatter(n, ev, r.cls, t);
		return;
	}

	if (ev == 0)
		return;

	/* who pays */
	const char *principal = q->principal;
	enum ndr_kind kind = (enum ndr_kind)q->kind;
	if (ln->orig_to.p && !local) {
		char ot[KEY_MAX], od[KEY_MAX];
		ndr_str(tmp, sizeof(tmp), &ln->orig_to);
		key_norm_address(ot, sizeof(ot), tmp, n->cfg ? &n->cfg->keyopts : NULL);
		key_norm_domain(od, sizeof(od), ot);
		if (strcmp(ot, to) != 0 && (!ndr_have_local(n) || ndr_is_local_domain(n, od))) {
			memcpy(fwd, ot, sizeof(fwd));
			principal = fwd;
			kind = NDR_K_FORWARD;
			n->cnt.forwarded++;
		}
	}
	if (principal == NULL && q->inbound && local)
		return; /* inbound mail delivered here: nobody's outbound mail */
	ndr_outcome(n, principal, kind, dom, ev, r.cls, t, line, len);
}

static void ndr_on_expired(struct ndr *n, const struct maillog_line *ln, int64_t t,
                           const char *line, size_t len)
{
	struct ndr_qid *q = ndr_qid_get(n, ln->queue_id.p, ln->queue_id.len, false, t);
	if (q == NULL)
		return;
	for (uint16_t i = 0; i < q->ndef; i++) {
		enum classify_class cls = (enum classify_class)q->def[i].cls;
		unsigned ev = EV_EXPIRED | (ndr_class_indicts(cls) ? EV_BADP : 0);
		n->cnt.expired_rcpts++;
		if (q->own_ndr)
			ndr_backscatter(n, ev, cls, t);
		else
			ndr_outcome(n, q->principal, (enum ndr_kind)q->kind,
			            q->def[i].domain ? q->def[i].domain : "", ev, cls, t, line,
			            len);
		free(q->def[i].domain);
	}
	q->ndef = 0;
	for (uint32_t i = 0; i < q->def_overflow; i++) {
		n->cnt.expired_rcpts++;
		if (!q->own_ndr)
			ndr_outcome(n, q->principal, (enum ndr_kind)q->kind, "", EV_EXPIRED,
			            CLASSIFY_OTHER_PERMANENT, t, line, len);
	}
	q->def_overflow = 0;
}

static void ndr_on_client(struct ndr *n, const struct maillog_line *ln, int64_t t)
{
	char tmp[KEY_MAX], p[KEY_MAX];
	struct ndr_qid *q = ndr_qid_get(n, ln->queue_id.p, ln->queue_id.len, true, t);
	if (q == NULL || q->from_policy || q->from_handoff)
		return;
	q->has_source = true;
	if (ln->sasl_username.p && ln->sasl_username.len) {
		ndr_str(tmp, sizeof(tmp), &ln->sasl_username);
		if (key_norm_login(p, sizeof(p), tmp,
		                   n->cfg ? n->cfg->keyopts.fold_localpart : true))
			ndr_qid_set_owner(q, p, NDR_K_SASL);
		return;
	}
	if (ln->orig_queue_id.p) {
		struct ndr_qid *o =
		    ndr_qid_get(n, ln->orig_queue_id.p, ln->orig_queue_id.len, false, t);
		if (o && o->principal) {
			ndr_qid_set_owner(q, o->principal, (enum ndr_kind)o->kind);
			q->from_handoff = true;
			return;
		}
	}
	char addr[64] = "";
	ndr_str(tmp, sizeof(tmp), &ln->client_addr);
	if (key_norm_ip(addr, sizeof(addr), tmp) > 0 && n->cfg &&
	    key_addr_in(addr, n->cfg->trusted, n->cfg->ntrusted)) {
		q->trusted_pending = true;
		q->inbound = false;
		snprintf(q->client, sizeof(q->client), "%s", addr);
		return;
	}
	q->inbound = true;
}

static void ndr_on_queued(struct ndr *n, const struct maillog_line *ln, int64_t t)
{
	char tmp[KEY_MAX], s[KEY_MAX];
	struct ndr_qid *q = ndr_qid_get(n, ln->queue_id.p, ln->queue_id.len, true, t);
	if (q == NULL || q->sender_known)
		return;
	q->sender_known = true;
	ndr_str(tmp, sizeof(tmp), &ln->from);
	key_norm_address(s, sizeof(s), tmp, n->cfg ? &n->cfg->keyopts : NULL);
	if (!q->has_source && s[0] == '\0') {
		q->own_ndr = true; /* a null-sender message nobody submitted: our bounce */
		return;
	}
	if (q->trusted_pending) {
		if (s[0])
			ndr_qid_set_owner(q, s, NDR_K_SENDER);
		else
			ndr_qid_set_owner(q, q->client, NDR_K_CLIENT);
	}
}

static bool ndr_pickup_take(struct ndr *n, const char *key, int64_t t)
{
	const struct ndr_conf *c = n->conf;
	if (c->pickup_nwin == 0)
		return true;
	uint64_t h = ndr_hash(key, strlen(key));
	struct ndr_pick *p = (struct ndr_pick *)tab_find(&n->picks, key, h);
	if (p == NULL) {
		while (n->picks.count >= c->max_principals && n->picks.count > 0) {
			struct ndr_node *o = tab_oldest(&n->picks);
			tab_remove(&n->picks, o);
			free(o->key);
			free(o);
		}
		p = calloc(1, sizeof(*p));
		if (p == NULL)
			return true;
		p->node.key = strdup(key);
		p->node.hash = h;
		if (p->node.key == NULL || !tab_insert(&n->picks, &p->node)) {
			free(p->node.key);
			free(p);
			return true;
		}
	} else
		tab_touch(&n->picks, &p->node);
	p->total++;
	struct gcra_tat next[STORE_MAX_WINDOWS];
	uint64_t retry;
	for (uint8_t i = 0; i < c->pickup_nwin; i++)
		if (!gcra_take(&c->pickup_win[i], p->tat[i], t, 1, &next[i], &retry))
			return false;
	for (uint8_t i = 0; i < c->pickup_nwin; i++)
		p->tat[i] = next[i];
	return true;
}

static void ndr_on_pickup(struct ndr *n, const struct maillog_line *ln, int64_t t)
{
	char tmp[KEY_MAX], s[KEY_MAX], uid[24], p[KEY_MAX], key[KEY_MAX + 40];
	char qid[MAILLOG_MAX_QUEUE_ID + 1];
	struct ndr_qid *q = ndr_qid_get(n, ln->queue_id.p, ln->queue_id.len, true, t);
	if (q == NULL)
		return;
	ndr_str(qid, sizeof(qid), &ln->queue_id);
	q->has_source = true;
	q->inbound = false;
	if (ln->orig_id.p) { /* postsuper -r: the same message again */
		struct ndr_qid *o = ndr_qid_get(n, ln->orig_id.p, ln->orig_id.len, false, t);
		if (o) {
			ndr_qid_set_owner(q, o->principal, (enum ndr_kind)o->kind);
			q->own_ndr = o->own_ndr;
			q->from_handoff = true;
		}
		return;
	}
	ndr_str(tmp, sizeof(tmp), &ln->from);
	key_norm_address(s, sizeof(s), tmp, n->cfg ? &n->cfg->keyopts : NULL);
	ndr_str(uid, sizeof(uid), &ln->uid);
	if (s[0])
		snprintf(p, sizeof(p), "%s", s);
	else
		snprintf(p, sizeof(p), "uid:%s", uid);
	if (!q->from_policy && !q->from_handoff)
		ndr_qid_set_owner(q, p, NDR_K_PICKUP);
	n->cnt.pickups++;
	snprintf(key, sizeof(key), "uid:%s %s", uid, s[0] ? s : "<>");
	if (!ndr_pickup_take(n, key, t)) {
		n->cnt.pickup_over++;
		if (n->act.pickup_over)
			n->act.pickup_over(n->act.arg, key, qid);
		if (n->conf->pickup_hold && n->act.hold) {
			n->cnt.holds++;
			n->act.hold(n->act.arg, qid, p, "pickup_limit");
		}
		return;
	}
	const char *why;
	if (n->conf->spike_action != NDR_ACT_WARN && ndr_spiking(n, p, &why) && n->act.hold) {
		n->cnt.holds++;
		n->act.hold(n->act.arg, qid, p, "ndr_spike");
	}
}

static void ndr_on_notification(struct ndr *n, const struct maillog_line *ln, int64_t t)
{
	struct ndr_qid *nq = ndr_qid_get(n, ln->new_queue_id.p, ln->new_queue_id.len, true, t);
	if (nq == NULL)
		return;
	ndr_qid_set_owner(nq, NULL, NDR_K_NONE);
	nq->own_ndr = true;
	nq->has_source = true;
	nq->inbound = false;
	nq->trusted_pending = false;
}

void ndr_feed_line(struct ndr *n, const char *line, size_t len, int64_t now_us)
{
	const struct maillog_line *ln = &n->ln;

	n->cnt.lines++;
	int64_t ref = (now_us ? now_us : (int64_t)time(NULL) * 1000000) / 1000000;
	if (ref != n->ref_s) {
		struct tm tm;
		time_t tt = (time_t)ref;
		n->ref_s = ref;
		n->mopts.ref_time = ref;
		if (localtime_r(&tt, &tm))
			n->mopts.utc_offset = (int32_t)tm.tm_gmtoff;
	}
	enum maillog_event ev = maillog_parse(&n->mopts, line, len, &n->ln);
	switch (ev) {
	case MAILLOG_GARBAGE:
		n->cnt.garbage++;
		return;
	case MAILLOG_TOO_LONG:
		n->cnt.too_long++;
		return;
	case MAILLOG_CLIENT:
	case MAILLOG_PICKUP:
	case MAILLOG_QUEUED:
	case MAILLOG_EXPIRED:
	case MAILLOG_DELIVERY:
	case MAILLOG_NOTIFICATION:
	case MAILLOG_REMOVED:
		break;
	default:
		n->cnt.other++;
		return;
	}
	if (ln->noqueue || ln->queue_id.p == NULL) {
		n->cnt.other++;
		return;
	}
	n->cnt.parsed++;
	int64_t t = ndr_time(n, ln, now_us);
	switch (ev) {
	case MAILLOG_CLIENT:
		ndr_on_client(n, ln, t);
		break;
	case MAILLOG_PICKUP:
		ndr_on_pickup(n, ln, t);
		break;
	case MAILLOG_QUEUED:
		ndr_on_queued(n, ln, t);
		break;
	case MAILLOG_EXPIRED:
		ndr_on_expired(n, ln, t, line, len);
		break;
	case MAILLOG_DELIVERY:
		ndr_on_delivery(n, ln, t, line, len);
		break;
	case MAILLOG_NOTIFICATION:
		ndr_on_notification(n, ln, t);
		break;
	case MAILLOG_REMOVED: {
		struct ndr_qid *q = ndr_qid_get(n, ln->queue_id.p, ln->queue_id.len, false, t);
		if (q)
			ndr_qid_drop(n, q);
		break;
	}
	default:
		break;
	}
}

void ndr_note_queue_id(struct ndr *n, const char *queue_id, const char *principal,
                       enum ndr_kind kind, int64_t now_us)
{
	struct ndr_qid *q = ndr_qid_get(n, queue_id, strlen(queue_id), true, now_us);
	if (q == NULL || q->from_handoff)
		return;
	if (q->from_policy && q->principal && strcmp(q->principal, principal) == 0)
		return;
	ndr_qid_set_owner(q, principal, kind);
	q->from_policy = true;
}

void ndr_note_inbound(struct ndr *n, const char *local_user, int64_t now_us)
{
	size_t len = strlen(local_user);
	uint64_t h = ndr_hash(local_user, len);
	struct ndr_inb *b = (struct ndr_inb *)tab_find(&n->inbound, local_user, h);

	n->cnt.inbound_ndr++;
	if (b == NULL) {
		while (n->inbound.count >= n->conf->max_inbound && n->inbound.count > 0) {
			struct ndr_node *o = tab_oldest(&n->inbound);
			tab_remove(&n->inbound, o);
			free(o->key);
			free(o);
		}
		b = calloc(1, sizeof(*b));
		if (b == NULL)
			return;
		b->node.key = strdup(local_user);
		b->node.hash = h;
		b->s_head = -1;
		if (b->node.key == NULL || !tab_insert(&n->inbound, &b->node)) {
			free(b->node.key);
			free(b);
			return;
		}
	} else
		tab_touch(&n->inbound, &b->node);
	int64_t se = now_us / n->s_width;
	if (se > b->s_head) {
		int64_t gap = b->s_head < 0 ? NDR_SHORT_BUCKETS : se - b->s_head;
		for (int64_t i = 0; i < gap && i < NDR_SHORT_BUCKETS; i++)
			b->s[(se - i) % NDR_SHORT_BUCKETS] = 0;
		b->s_head = se;
	}
	if (se <= b->s_head - NDR_SHORT_BUCKETS)
		return;
	b->s[se % NDR_SHORT_BUCKETS]++;
	b->total++;
	b->last_us = now_us;
	if (b->spike || n->conf->inbound_max == 0)
		return;
	uint64_t sum = 0;
	for (size_t i = 0; i < NDR_SHORT_BUCKETS; i++)
		sum += b->s[i];
	if (sum >= n->conf->inbound_max) {
		b->spike = true;
		struct ndr_spike s = {.scope = NDR_S_INBOUND,
		                      .name = local_user,
		                      .start = true,
		                      .what = "inbound",
		                      .window = "short",
		                      .n = sum,
		                      .failures = sum,
		                      .threshold = n->conf->inbound_max,
		                      .reason = "null-sender mail (NDRs) to this local user: the "
		                                "address is forged as a sender, or the account "
		                                "mails bad lists",
		                      .evidence = ""};
		n->cnt.spikes++;
		if (n->act.spike)
			n->act.spike(n->act.arg, &s);
	}
}

bool ndr_spiking(struct ndr *n, const char *principal, const char **why)
{
	if (principal == NULL || principal[0] == '\0')
		return false;
	size_t len = strlen(principal);
	struct ndr_acct *a =
	    (struct ndr_acct *)tab_find(&n->principals, principal, ndr_hash(principal, len));
	if (a == NULL || !a->spike)
		return false;
	if (why)
		*why = a->reason;
	return true;
}

void ndr_queued_of(struct ndr *n, const char *principal, void (*fn)(void *arg, const char *qid),
                   void *arg)
{
	for (struct ndr_node *e = n->qids.lru.next, *nx; e != &n->qids.lru; e = nx) {
		nx = e->next; /* fn may not change the table, but be safe */
		const struct ndr_qid *q = (const struct ndr_qid *)e;
		if (q->principal && !q->own_ndr && strcmp(q->principal, principal) == 0)
			fn(arg, e->key);
	}
}

bool ndr_clear(struct ndr *n, const char *principal, int64_t now_us)
{
	struct ndr_acct *a = ndr_acct_get(n, &n->principals, NDR_S_PRINCIPAL, principal, false);
	if (a == NULL)
		return false;
	double bn = a->w.base_n, bp = a->w.base_bp, bd = a->w.base_bd;
	if (a->spike)
		ndr_unspike(n, a);
	win_free(&a->w);
	win_init(&a->w);
	a->w.base_n = bn;
	a->w.base_bp = bp;
	a->w.base_bd = bd;
	(void)now_us;
	return true;
}

void ndr_tick(struct ndr *n, int64_t now_us)
{
	struct ndr_eval e;
	if (now_us == 0)
		now_us = n->last_us;
	/* spikes that are over (0.8 x the thresholds: no flapping) */
	for (struct ndr_acct *a = n->spiking.snext, *nx; a != &n->spiking; a = nx) {
		nx = a->snext;
		if (!ndr_test(n, a, now_us, 0.8, &e))
			ndr_unspike(n, a);
	}
	if (n->backscatter.spike) {
		uint64_t s[C__N];
		win_sums(n, &n->backscatter.w, now_us, false, false, s);
		if (s[C_N] * 2 < n->conf->backscatter_max) {
			n->backscatter.spike = false;
			ndr_report(n, &n->backscatter, false, NULL);
		}
	}
	for (struct ndr_node *e2 = n->inbound.lru.next; e2 != &n->inbound.lru; e2 = e2->next) {
		struct ndr_inb *b = (struct ndr_inb *)e2;
		if (!b->spike)
			continue;
		int64_t se = now_us / n->s_width;
		uint64_t sum = 0;
		for (int64_t i = 0; i < NDR_SHORT_BUCKETS; i++)
			if (se - i <= b->s_head && se - i > b->s_head - NDR_SHORT_BUCKETS)
				sum += b->s[(se - i) % NDR_SHORT_BUCKETS];
		if (sum * 2 < n->conf->inbound_max) {
			b->spike = false;
			struct ndr_spike s = {.scope = NDR_S_INBOUND,
			                      .name = b->node.key,
			                      .start = false,
			                      .what = "inbound",
			                      .window = "short",
			                      .n = sum,
			                      .reason = "",
			                      .evidence = ""};
			if (n->act.spike)
				n->act.spike(n->act.arg, &s);
		}
	}
	/* queue ids not seen for queue_id_ttl (oldest last in the LRU) */
	struct ndr_node *o;
	while ((o = tab_oldest(&n->qids)) != NULL &&
	       ((struct ndr_qid *)o)->seen_us < now_us - (int64_t)n->conf->queue_id_ttl_us) {
		ndr_qid_drop(n, (struct ndr_qid *)o);
		n->cnt.qid_expired++;
	}
}

/* ------------------------------------------------------------ reading */

const struct ndr_counters *ndr_counters(const struct ndr *n)
{
	return &n->cnt;
}

size_t ndr_queue_ids(const struct ndr *n)
{
	return n->qids.count;
}

size_t ndr_principals(const struct ndr *n)
{
	return n->principals.count;
}

static void ndr_sums_out(const uint64_t s[C__N], struct ndr_window_sums *o)
{
	o->n = s[C_N];
	o->sent = s[C_SENT];
	o->bounced = s[C_BOUNCED];
	o->deferred = s[C_DEFERRED];
	o->expired = s[C_EXPIRED];
	o->bad_perm = s[C_BADP];
	o->bad_defer = s[C_BADD];
}

bool ndr_principal_sums(struct ndr *n, const char *principal, bool long_window, int64_t now_us,
                        struct ndr_window_sums *out)
{
	uint64_t s[C__N];
	struct ndr_acct *a = ndr_acct_get(n, &n->principals, NDR_S_PRINCIPAL, principal, false);
	memset(out, 0, sizeof(*out));
	if (a == NULL)
		return false;
	win_sums(n, &a->w, now_us ? now_us : n->last_us, a->spike, long_window, s);
	ndr_sums_out(s, out);
	return true;
}

static json_t *ndr_sums_json(const uint64_t s[C__N], double z)
{
	double fail = (double)(s[C_BOUNCED] + s[C_EXPIRED]);
	return json_pack("{sI sI sI sI sI sI sI sf sf sf}", "n", (json_int_t)s[C_N], "sent",
	                 (json_int_t)s[C_SENT], "bounced", (json_int_t)s[C_BOUNCED], "deferred",
	                 (json_int_t)s[C_DEFERRED], "expired", (json_int_t)s[C_EXPIRED], "failures",
	                 (json_int_t)s[C_BADP], "deferrals_indicting", (json_int_t)s[C_BADD],
	                 "ratio", s[C_N] ? fail / (double)s[C_N] : 0.0, "bound",
	                 ndr_wilson_lower(s[C_BADP], s[C_N], z), "defer_bound",
	                 ndr_wilson_lower(s[C_BADD], s[C_N], z));
}

static json_t *ndr_acct_json(struct ndr *n, struct ndr_acct *a, int64_t now)
{
	uint64_t ss[C__N], ls[C__N];
	enum classify_class top[4];
	uint64_t topn[4];
	unsigned ntop = 0;

	win_sums(n, &a->w, now, a->spike, false, ss);
	win_sums(n, &a->w, now, a->spike, true, ls);
	json_t *o = ndr_sums_json(ls, n->conf->z);
	if (o == NULL)
		return NULL;
	if (a->scope == NDR_S_PRINCIPAL) {
		json_object_set_new(o, "principal", json_string(a->node.key));
		json_object_set_new(o, "kind", json_string(ndr_kind_name(a->kind)));
	} else if (a->scope == NDR_S_DOMAIN)
		json_object_set_new(o, "domain", json_string(a->node.key));
	json_object_set_new(o, "short", ndr_sums_json(ss, n->conf->z));
	json_object_set_new(o, "baseline",
	                    json_real(a->w.base_n >= 1 ? a->w.base_bp / a->w.base_n : 0.0));
	json_object_set_new(o, "spike", json_boolean(a->spike));
	if (a->spike) {
		json_object_set_new(o, "spike_since", json_integer(a->spike_since / 1000000));
		json_object_set_new(o, "reason", json_string(a->reason));
	}
	ndr_top_classes(a, NULL, 0, 4, top, topn, &ntop);
	json_t *tc = json_array();
	for (unsigned i = 0; i < ntop; i++)
		json_array_append_new(tc, json_pack("{ss sI}", "class", classify_class_name(top[i]),
		                                    "count", (json_int_t)topn[i]));
	json_object_set_new(o, "top_classes", tc);
	return o;
}

struct ndr_rank {
	struct ndr_acct *a;
	uint64_t fail, n;
};

static int ndr_rank_cmp(const void *x, const void *y)
{
	const struct ndr_rank *a = x, *b = y;
	if (a->a->spike != b->a->spike)
		return a->a->spike ? -1 : 1;
	if (a->fail != b->fail)
		return a->fail > b->fail ? -1 : 1;
	if (a->n != b->n)
		return a->n > b->n ? -1 : 1;
	return strcmp(a->a->node.key, b->a->node.key);
}

static json_t *ndr_table_json(struct ndr *n, struct ndr_table *t, int64_t now, size_t limit)
{
	json_t *arr = json_array();
	if (t->count == 0)
		return arr;
	struct ndr_rank *r = calloc(t->count, sizeof(*r));
	size_t k = 0;
	if (r == NULL)
		return arr;
	for (struct ndr_node *e = t->lru.next; e != &t->lru && k < t->count; e = e->next) {
		uint64_t s[C__N];
		struct ndr_acct *a = (struct ndr_acct *)e;
		win_sums(n, &a->w, now, a->spike, true, s);
		r[k].a = a;
		r[k].fail = s[C_BOUNCED] + s[C_EXPIRED] + s[C_DEFERRED];
		r[k].n = s[C_N];
		k++;
	}
	qsort(r, k, sizeof(*r), ndr_rank_cmp);
	for (size_t i = 0; i < k && (limit == 0 || i < limit); i++)
		json_array_append_new(arr, ndr_acct_json(n, r[i].a, now));
	free(r);
	return arr;
}

json_t *ndr_json(struct ndr *n, int64_t now_us, size_t limit)
{
	int64_t now = now_us ? now_us : n->last_us;
	json_t *o = json_object();
	if (o == NULL)
		return NULL;
	json_object_set_new(o, "now", json_integer(now / 1000000));
	json_object_set_new(o, "windows",
	                    json_pack("{sI sI}", "short_s",
	                              (json_int_t)(n->conf->short_us / 1000000), "long_s",
	                              (json_int_t)(n->conf->long_us / 1000000)));
	json_object_set_new(o, "global", ndr_acct_json(n, &n->global, now));
	json_t *bs = ndr_acct_json(n, &n->backscatter, now);
	json_object_set_new(o, "backscatter", bs);
	json_object_set_new(o, "principals", ndr_table_json(n, &n->principals, now, limit));
	json_object_set_new(o, "domains", ndr_table_json(n, &n->domains, now, limit ? limit : 50));
	json_t *inb = json_array();
	for (struct ndr_node *e = n->inbound.lru.next; e != &n->inbound.lru; e = e->next) {
		struct ndr_inb *b = (struct ndr_inb *)e;
		int64_t se = now / n->s_width;
		uint64_t sum = 0;
		for (int64_t i = 0; i < NDR_SHORT_BUCKETS; i++)
			if (se - i <= b->s_head && se - i > b->s_head - NDR_SHORT_BUCKETS)
				sum += b->s[(se - i) % NDR_SHORT_BUCKETS];
		json_array_append_new(inb, json_pack("{ss sI sI sb}", "user", e->key, "short",
		                                     (json_int_t)sum, "total", (json_int_t)b->total,
		                                     "spike", b->spike));
		if (limit && json_array_size(inb) >= limit)
			break;
	}
	json_object_set_new(o, "inbound", inb);
	const struct ndr_counters *c = &n->cnt;
	json_t *cj = json_pack(
	    "{sI sI sI sI sI sI sI sI sI sI sI sI sI sI sI sI sI sI sI sI sI}", "lines",
	    (json_int_t)c->lines, "parsed", (json_int_t)c->parsed, "garbage",
	    (json_int_t)c->garbage, "too_long", (json_int_t)c->too_long, "other",
	    (json_int_t)c->other, "outcomes", (json_int_t)c->outcomes, "attributed",
	    (json_int_t)c->attributed, "unattributed", (json_int_t)c->unattributed, "probes",
	    (json_int_t)c->probes, "handoffs", (json_int_t)c->handoffs, "forwarded",
	    (json_int_t)c->forwarded, "own_ndr", (json_int_t)c->own_ndr, "inbound_ndr",
	    (json_int_t)c->inbound_ndr, "expired_rcpts", (json_int_t)c->expired_rcpts, "pickups",
	    (json_int_t)c->pickups, "pickup_over", (json_int_t)c->pickup_over, "holds",
	    (json_int_t)c->holds, "blocklist_alerts", (json_int_t)c->blocklist_alerts, "spikes",
	    (json_int_t)c->spikes, "queue_ids", (json_int_t)n->qids.count, "late_events",
	    (json_int_t)c->late_events);
	json_object_set_new(o, "counters", cj);
	json_t *bc = json_object();
	for (size_t i = 1; i < CLASSIFY__COUNT; i++)
		if (c->by_class[i])
			json_object_set_new(bc, classify_class_name((enum classify_class)i),
			                    json_integer((json_int_t)c->by_class[i]));
	json_object_set_new(o, "classes", bc);
	return o;
}

/* ------------------------------------------------------------ state file */

/* Keys are written with %XX for bytes outside 0x21..0x7e and for '%'. */
static void ndr_put_key(FILE *f, const char *k)
{
	for (; *k; k++) {
		unsigned char ch = (unsigned char)*k;
		if (ch <= 0x20 || ch >= 0x7f || ch == '%')
			fprintf(f, "%%%02X", ch);
		else
			fputc(ch, f);
	}
}

static int ndr_get_key(const char *in, char *out, size_t outsz)
{
	size_t o = 0;
	for (; *in && *in != ' ' && *in != '\n'; in++) {
		unsigned v;
		char ch = *in;
		if (ch == '%') {
			if (sscanf(in + 1, "%2X", &v) != 1)
				return -1;
			ch = (char)v;
			in += 2;
		}
		if (o + 1 >= outsz)
			return -1;
		out[o++] = ch;
	}
	out[o] = '\0';
	return o ? 0 : -1;
}

static void ndr_put_win(FILE *f, const struct ndr_win *w)
{
	fprintf(f, "w %lld %lld %.17g %.17g %.17g %d\n", (long long)w->s_head, (long long)w->l_head,
	        w->base_n, w->base_bp, w->base_bd, w->spike_bucket ? 1 : 0);
	for (int i = 0; i < NDR_SHORT_BUCKETS; i++) {
		const uint32_t *b = w->s[i];
		if (b[C_N] | b[C_SENT] | b[C_BOUNCED] | b[C_DEFERRED] | b[C_EXPIRED] | b[C_BADP] |
		    b[C_BADD])
			fprintf(f, "s %d %u %u %u %u %u %u %u\n", i, b[0], b[1], b[2], b[3], b[4],
			        b[5], b[6]);
	}
	for (int i = 0; i < NDR_LONG_BUCKETS; i++) {
		const uint32_t *b = w->l[i];
		if (b[C_N] | b[C_SENT] | b[C_BOUNCED] | b[C_DEFERRED] | b[C_EXPIRED] | b[C_BADP] |
		    b[C_BADD])
			fprintf(f, "l %d %u %u %u %u %u %u %u\n", i, b[0], b[1], b[2], b[3], b[4],
			        b[5], b[6]);
		if (w->cls)
			for (int c = 0; c < CLASSIFY__COUNT; c++)
				if (w->cls[i][c])
					fprintf(f, "c %d %s %u\n", i,
					        classify_class_name((enum classify_class)c),
					        w->cls[i][c]);
	}
}

static void ndr_put_acct(FILE *f, const char *tag, const struct ndr_acct *a)
{
	fprintf(f, "%s ", tag);
	ndr_put_key(f, a->scope == NDR_S_GLOBAL        ? "global"
	               : a->scope == NDR_S_BACKSCATTER ? "bs"
	                                               : a->node.key);
	fprintf(f, " %d %d %lld ", (int)a->kind, a->spike ? 1 : 0, (long long)a->spike_since);
	ndr_put_key(f, a->reason[0] ? a->reason : "-");
	fputc('\n', f);
	ndr_put_win(f, &a->w);
}

int ndr_save(struct ndr *n, const char *path, const void *pos, size_t poslen, char *err,
             size_t errsz)
{
	char tmp[4096];
	if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp)) {
		snprintf(err, errsz, "%s: path too long", path);
		return -1;
	}
	FILE *f = fopen(tmp, "w");
	if (f == NULL) {
		snprintf(err, errsz, "%s: %s", tmp, strerror(errno));
		return -1;
	}
	/* the tracker's own copies: n->conf may be a freed config (stop on reload) */
	fprintf(f, "policyd-ndr 1 %llu %llu\npos ", (unsigned long long)n->short_us,
	        (unsigned long long)n->long_us);
	for (size_t i = 0; i < poslen; i++)
		fprintf(f, "%02x", ((const unsigned char *)pos)[i]);
	fprintf(f, "\nlast %lld\n", (long long)n->last_us);
	ndr_put_acct(f, "g", &n->global);
	ndr_put_acct(f, "b", &n->backscatter);
	/* oldest first, so that loading keeps the LRU order */
	for (struct ndr_node *e = n->principals.lru.prev; e != &n->principals.lru; e = e->prev)
		ndr_put_acct(f, "p", (const struct ndr_acct *)e);
	for (struct ndr_node *e = n->domains.lru.prev; e != &n->domains.lru; e = e->prev)
		ndr_put_acct(f, "d", (const struct ndr_acct *)e);
	for (struct ndr_node *e = n->qids.lru.prev; e != &n->qids.lru; e = e->prev) {
		const struct ndr_qid *q = (const struct ndr_qid *)e;
		unsigned fl = (q->has_source ? 1u : 0) | (q->from_policy ? 2u : 0) |
		              (q->from_handoff ? 4u : 0) | (q->own_ndr ? 8u : 0) |
		              (q->inbound ? 16u : 0) | (q->trusted_pending ? 32u : 0) |
		              (q->sender_known ? 64u : 0);
		fprintf(f, "q %s %u %u %lld %u ", e->key, (unsigned)q->kind, fl,
		        (long long)q->seen_us, (unsigned)q->def_overflow);
		ndr_put_key(f, q->principal ? q->principal : "-");
		fputc(' ', f);
		ndr_put_key(f, q->client[0] ? q->client : "-");
		fputc('\n', f);
		for (uint16_t i = 0; i < q->ndef; i++) {
			fprintf(f, "r %llx %u ", (unsigned long long)q->def[i].h, q->def[i].cls);
			ndr_put_key(f, q->def[i].domain ? q->def[i].domain : "-");
			fputc('\n', f);
		}
	}
	for (struct ndr_node *e = n->picks.lru.prev; e != &n->picks.lru; e = e->prev) {
		const struct ndr_pick *p = (const struct ndr_pick *)e;
		fprintf(f, "k ");
		ndr_put_key(f, e->key);
		fprintf(f, " %llu", (unsigned long long)p->total);
		for (int i = 0; i < STORE_MAX_WINDOWS; i++)
			fprintf(f, " %lld %llu", (long long)p->tat[i].us,
			        (unsigned long long)p->tat[i].rem);
		fputc('\n', f);
	}
	fprintf(f, "end\n");
	if (fflush(f) != 0 || ferror(f) || fsync(fileno(f)) < 0) {
		snprintf(err, errsz, "%s: %s", tmp, strerror(errno));
		fclose(f);
		unlink(tmp);
		return -1;
	}
	if (fclose(f) != 0 || rename(tmp, path) < 0) {
		snprintf(err, errsz, "%s: %s", path, strerror(errno));
		unlink(tmp);
		return -1;
	}
	return 0;
}

static int ndr_load_win(struct ndr_win *w, char *line, bool geometry_ok)
{
	long long sh, lh;
	int sb, idx;
	unsigned v[C__N];
	char cname[40];
	unsigned cnt;

	if (line[0] == 'w' && sscanf(line, "w %lld %lld %lf %lf %lf %d", &sh, &lh, &w->base_n,
	                             &w->base_bp, &w->base_bd, &sb) == 6) {
		if (geometry_ok) {
			w->s_head = sh;
			w->l_head = lh;
			w->spike_bucket = sb != 0;
		}
		return 0;
	}
	if ((line[0] == 's' || line[0] == 'l') &&
	    sscanf(line + 1, " %d %u %u %u %u %u %u %u", &idx, &v[0], &v[1], &v[2], &v[3], &v[4],
	           &v[5], &v[6]) == 8) {
		if (!geometry_ok)
			return 0;
		if (idx < 0 || idx >= (line[0] == 's' ? NDR_SHORT_BUCKETS : NDR_LONG_BUCKETS))
			return -1;
		uint32_t *b = line[0] == 's' ? w->s[idx] : w->l[idx];
		for (int c = 0; c < C__N; c++)
			b[c] = v[c];
		return 0;
	}
	if (line[0] == 'c' && sscanf(line, "c %d %39s %u", &idx, cname, &cnt) == 3) {
		enum classify_class c = classify_class_lookup(cname, strlen(cname));
		if (!geometry_ok || c == CLASSIFY__COUNT)
			return 0;
		if (idx < 0 || idx >= NDR_LONG_BUCKETS)
			return -1;
		if (w->cls == NULL && (w->cls = calloc(NDR_LONG_BUCKETS, sizeof(*w->cls))) == NULL)
			return -1;
		w->cls[idx][c] = (uint16_t)(cnt > UINT16_MAX ? UINT16_MAX : cnt);
		return 0;
	}
	return 1; /* not a window line */
}

int ndr_load(struct ndr *n, const char *path, void *pos, size_t possz, size_t *poslen, char *err,
             size_t errsz)
{
	char *line = malloc(NDR_STATE_LINE);
	char key[KEY_MAX * 3 + 1], k2[KEY_MAX * 3 + 1];
	unsigned long lineno = 0;
	struct ndr_win *cur = NULL;
	struct ndr_qid *curq = NULL;
	bool geometry_ok = false, ended = false;
	unsigned long long su, lu;

	*poslen = 0;
	if (line == NULL) {
		snprintf(err, errsz, "out of memory");
		return -1;
	}
	FILE *f = fopen(path, "r");
	if (f == NULL) {
		free(line);
		if (errno == ENOENT)
			return 0;
		snprintf(err, errsz, "%s: %s", path, strerror(errno));
		return -1;
	}
#define NDR_BAD()                                                                                  \
	do {                                                                                       \
		snprintf(err, errsz, "%s:%lu: malformed line", path, lineno);                      \
		goto fail;                                                                         \
	} while (0)
	while (fgets(line, NDR_STATE_LINE, f)) {
		lineno++;
		line[strcspn(line, "\n")] = '\0';
		if (lineno == 1) {
			if (sscanf(line, "policyd-ndr 1 %llu %llu", &su, &lu) != 2)
				NDR_BAD();
			geometry_ok = su == n->conf->short_us && lu == n->conf->long_us;
			continue;
		}
		if (!strncmp(line, "pos ", 4)) {
			size_t hl = strlen(line + 4);
			if (hl % 2 || hl / 2 > possz)
				NDR_BAD();
			for (size_t i = 0; i < hl / 2; i++) {
				unsigned v;
				if (sscanf(line + 4 + 2 * i, "%2x", &v) != 1)
					NDR_BAD();
				((unsigned char *)pos)[i] = (unsigned char)v;
			}
			*poslen = hl / 2;
			continue;
		}
		if (!strncmp(line, "last ", 5)) {
			long long v;
			if (sscanf(line + 5, "%lld", &v) != 1)
				NDR_BAD();
			n->last_us = v;
			continue;
		}
		if (!strcmp(line, "end")) {
			ended = true;
			break;
		}
		if (cur) {
			int r = ndr_load_win(cur, line, geometry_ok);
			if (r < 0)
				NDR_BAD();
			if (r == 0)
				continue;
		}
		if ((line[0] == 'g' || line[0] == 'b' || line[0] == 'p' || line[0] == 'd') &&
		    line[1] == ' ') {
			int kind, spike;
			long long since;
			if (ndr_get_key(line + 2, key, sizeof(key)) < 0)
				NDR_BAD();
			const char *rest = line + 2 + strcspn(line + 2, " ");
			int off = 0;
			if (sscanf(rest, " %d %d %lld %n", &kind, &spike, &since, &off) != 3 ||
			    off == 0)
				NDR_BAD();
			if (ndr_get_key(rest + off, k2, sizeof(k2)) < 0)
				NDR_BAD();
			struct ndr_acct *a;
			if (line[0] == 'g')
				a = &n->global;
			else if (line[0] == 'b')
				a = &n->backscatter;
			else
				a = ndr_acct_get(n, line[0] == 'p' ? &n->principals : &n->domains,
				                 line[0] == 'p' ? NDR_S_PRINCIPAL : NDR_S_DOMAIN,
				                 key, true);
			if (a == NULL)
				NDR_BAD();
			a->kind =
			    (kind >= 0 && kind < NDR_K__COUNT) ? (enum ndr_kind)kind : NDR_K_NONE;
			if (spike && !a->spike) {
				a->spike = true;
				a->spike_since = since;
				if (a->scope == NDR_S_PRINCIPAL || a->scope == NDR_S_DOMAIN)
					ndr_spiking_link(n, a);
			}
			snprintf(a->reason, sizeof(a->reason), "%.199s", strcmp(k2, "-") ? k2 : "");
			cur = &a->w;
			curq = NULL;
			continue;
		}
		cur = NULL;
		if (line[0] == 'q' && line[1] == ' ') {
			char qid[MAILLOG_MAX_QUEUE_ID + 1];
			unsigned kind, fl, ovf;
			long long seen;
			int off = 0;
			if (sscanf(line + 2, "%64s %u %u %lld %u %n", qid, &kind, &fl, &seen, &ovf,
			           &off) != 5 ||
			    off == 0)
				NDR_BAD();
			const char *rest = line + 2 + off;
			if (ndr_get_key(rest, key, sizeof(key)) < 0)
				NDR_BAD();
			rest += strcspn(rest, " ");
			if (*rest == ' ')
				rest++;
			if (ndr_get_key(rest, k2, sizeof(k2)) < 0)
				NDR_BAD();
			curq = ndr_qid_get(n, qid, strlen(qid), true, seen);
			if (curq == NULL)
				NDR_BAD();
			if (strcmp(key, "-"))
				ndr_qid_set_owner(curq, key,
				                  kind < NDR_K__COUNT ? (enum ndr_kind)kind
				                                      : NDR_K_NONE);
			curq->has_source = fl & 1;
			curq->from_policy = fl & 2;
			curq->from_handoff = fl & 4;
			curq->own_ndr = fl & 8;
			curq->inbound = fl & 16;
			curq->trusted_pending = fl & 32;
			curq->sender_known = fl & 64;
			curq->def_overflow = ovf;
			if (strcmp(k2, "-"))
				snprintf(curq->client, sizeof(curq->client), "%.47s", k2);
			continue;
		}
		if (line[0] == 'r' && line[1] == ' ' && curq) {
			unsigned long long h;
			unsigned cls;
			int off = 0;
			if (sscanf(line + 2, "%llx %u %n", &h, &cls, &off) != 2 || off == 0 ||
			    ndr_get_key(line + 2 + off, key, sizeof(key)) < 0)
				NDR_BAD();
			if (!ndr_def_add(curq, h,
			                 cls < CLASSIFY__COUNT ? (enum classify_class)cls
			                                       : CLASSIFY_OTHER_TEMPORARY,
			                 strcmp(key, "-") ? key : ""))
				curq->def_overflow++;
			continue;
		}
		if (line[0] == 'k' && line[1] == ' ') {
			unsigned long long total, rem[STORE_MAX_WINDOWS];
			long long us[STORE_MAX_WINDOWS];
			if (ndr_get_key(line + 2, key, sizeof(key)) < 0)
				NDR_BAD();
			const char *rest = line + 2 + strcspn(line + 2, " ");
			if (sscanf(rest, " %llu %lld %llu %lld %llu %lld %llu %lld %llu", &total,
			           &us[0], &rem[0], &us[1], &rem[1], &us[2], &rem[2], &us[3],
			           &rem[3]) != 9)
				NDR_BAD();
			struct ndr_pick *p = calloc(1, sizeof(*p));
			if (p == NULL)
				NDR_BAD();
			p->node.key = strdup(key);
			p->node.hash = ndr_hash(key, strlen(key));
			p->total = total;
			for (int i = 0; i < STORE_MAX_WINDOWS; i++) {
				p->tat[i].us = us[i];
				p->tat[i].rem = rem[i];
			}
			if (p->node.key == NULL || tab_find(&n->picks, key, p->node.hash) ||
			    !tab_insert(&n->picks, &p->node)) {
				free(p->node.key);
				free(p);
			}
			continue;
		}
		NDR_BAD();
	}
#undef NDR_BAD
	if (ferror(f) || !ended) {
		snprintf(err, errsz, "%s: %s", path, ferror(f) ? strerror(errno) : "truncated");
		goto fail;
	}
	fclose(f);
	free(line);
	return 0;
fail:
	fclose(f);
	free(line);
	*poslen = 0;
	return -1;
}
