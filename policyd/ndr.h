/*
 * policyd/ndr.h - NDR (bounce and deferral) tracking: every delivery
 * outcome in Postfix's log charged to the principal that submitted the
 * message, sliding windows per principal, per recipient domain and
 * globally, spike detection against each one's own baseline, and the
 * actions a spike takes.
 *
 * Two layers:
 * - the tracker (ndr.c): struct ndr, fed with log lines (ndr_feed_line)
 *   and with what the policy hook knows (ndr_note_queue_id,
 *   ndr_note_inbound); it decides and reports through struct ndr_actions.
 *   No event loop, no I/O except ndr_save()/ndr_load(); unit-testable
 *   with synthetic streams and a fake clock.
 * - the daemon side (ndr_module.c): the [ndr] config section, the module
 *   (log follower, timers, queue watcher, postsuper and alert commands,
 *   state file), the pipeline check "ndr", the control command "ndr" and
 *   the metrics.
 *
 * Counting (docs/anomaly-notes.md s.6): per recipient of a message, its
 * first outcome counts once in `n` (a deferral counts once, not once per
 * retry); bounces and expiries are final failures; only classes that
 * indict the sender (user_unknown, blocklist_ip, blocklist_domain,
 * reputation, content_spam, auth_policy) count towards a spike.  A spike
 * is a Wilson score lower bound of failures/n, over the short or the long
 * window, above max(threshold, relative x baseline), with n >= min_count.
 */
#ifndef POLICYD_NDR_H
#define POLICYD_NDR_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache/gcra.h"
#include "cache/store.h"
#include "config.h"
#include "config_section.h"
#include "key.h"
#include "proto/classify.h"

#define NDR_SHORT_BUCKETS 30  /* the short window (default 1 h) in 2-minute buckets */
#define NDR_LONG_BUCKETS  24  /* the long window (default 1 d) in 1-hour buckets */
#define NDR_MAX_LIST      64  /* our_ips, local_domains, filter_relays, patterns */
#define NDR_MAX_DEFERRED  256 /* deferred recipients remembered per queue id */
#define NDR_EVIDENCE      5   /* log lines kept as evidence of a spike */

enum ndr_spike_action { NDR_ACT_FLAG = 0, NDR_ACT_DEFER, NDR_ACT_HOLD, NDR_ACT_WARN };

/* How a principal was found (kept with each queue id and account). */
enum ndr_kind {
	NDR_K_NONE = 0, /* not attributed (inbound mail, or an id seen too late) */
	NDR_K_SASL,     /* sasl_username (policy request or smtpd client= line) */
	NDR_K_SENDER,   /* the sender, for a client in trusted_networks */
	NDR_K_CLIENT,   /* the client address (trusted network, null sender) */
	NDR_K_PICKUP,   /* local submission: sendmail/pickup, the sender or uid:N */
	NDR_K_FORWARD,  /* a local forwarding address (orig_to) */
	NDR_K__COUNT
};

/* The [ndr] section. */
struct ndr_conf {
	char *log_file;   /* "" = none */
	char *log_socket; /* "" = none */
	unsigned log_socket_mode;
	int log_format;       /* 0 auto, 1 file (postlogd/syslog), 2 rfc5424 (socket) */
	bool log_from_start;  /* log_start = start|end (no saved position) */
	double log_cpu_share; /* catching up on a backlog: at most this share of a core */
	char *patterns[NDR_MAX_LIST];
	size_t npatterns;
	char *local_domains[NDR_MAX_LIST];
	size_t nlocal_domains;
	bool local_domains_postconf; /* local_domains = postconf */
	char *postfix_config_dir;
	char *queue_dir; /* "" = from postconf */
	uint64_t queue_check_us;
	uint64_t deferred_max;
	uint64_t deferred_growth, deferred_growth_us; /* N per period */
	uint64_t short_us, long_us;                   /* windows */
	uint64_t baseline_us;                         /* baseline half-life */
	unsigned min_count, domain_min_count, global_min_count;
	double z;
	double bounce_threshold, bounce_relative;
	double defer_threshold, defer_relative;
	unsigned domain_min_principals;
	enum ndr_spike_action spike_action;
	char *spike_reply;
	char spike_dsn[16];
	char *hold_command; /* "" = postsuper -h - (needs root) */
	char *blocklist_command;
	uint64_t blocklist_interval_us;
	bool global_pause;
	enum verdict_action global_pause_action;
	struct gcra_window pickup_win[STORE_MAX_WINDOWS];
	uint8_t pickup_nwin;
	bool pickup_hold; /* pickup_action = hold (else warn) */
	struct key_net our_ips[NDR_MAX_LIST];
	size_t nour_ips;
	struct key_net filter_relays[NDR_MAX_LIST];
	size_t nfilter_relays;
	size_t max_principals, max_domains, max_queue_ids, max_inbound;
	uint64_t queue_id_ttl_us;
	unsigned inbound_max;     /* inbound NDRs per local user in the short window */
	unsigned backscatter_max; /* our own bounces to remote senders in the short window */
	uint64_t save_us;
	bool dry_run; /* spike actions logged, not applied */
};

extern const struct config_section ndr_config_section;

/* Defaults (also used by tests that build a tracker without a config file). */
void ndr_conf_defaults(struct ndr_conf *c);

/*
 * Load c's pattern files; names[] (NDR_MAX_LIST) get copies of their paths,
 * which the db refers to: free them after classify_db_free().  NULL with a
 * message naming the file and line.
 */
struct classify_db *ndr_load_patterns(const struct ndr_conf *c, char **names, size_t *nnames,
                                      char *err, size_t errsz);

/* ------------------------------------------------------------ tracker */

struct ndr;

/* What a spike is about. */
enum ndr_scope {
	NDR_S_PRINCIPAL = 0,
	NDR_S_DOMAIN,
	NDR_S_GLOBAL,
	NDR_S_INBOUND,
	NDR_S_BACKSCATTER
};

struct ndr_spike {
	enum ndr_scope scope;
	const char *name;   /* principal, domain, local user, "global" */
	enum ndr_kind kind; /* principals */
	bool start;         /* false: the spike is over */
	const char *what;   /* "bounce" or "deferral" (inbound: "inbound") */
	const char *window; /* "short" or "long" */
	uint64_t n, failures;
	double ratio, bound, threshold, baseline;
	const char *reason;   /* one line */
	const char *evidence; /* log lines, '\n'-separated ("" when none) */
};

/* How the tracker acts (all may be NULL). */
struct ndr_actions {
	void (*spike)(void *arg, const struct ndr_spike *s);
	/* a reply named a blocklist (and our IP, or an IP when our_ips is empty) */
	void (*blocklist)(void *arg, const char *list, const char *ip, const char *principal,
	                  uint64_t suppressed, const char *evidence);
	/* hold this queue id (postsuper -h): pickup over its limit, or a spiking principal */
	void (*hold)(void *arg, const char *queue_id, const char *principal, const char *why);
	/* the pickup limit was exceeded (logged by the module) */
	void (*pickup_over)(void *arg, const char *key, const char *queue_id);
	/* the final outcome of one recipient charged to a principal (delivered,
	 * bounced or expired; not a deferral): bounced = a failure whose class
	 * indicts the sender and is not a receiver-wide problem (the anomaly
	 * profile's bounce ratio) */
	void (*outcome)(void *arg, const char *principal, enum ndr_kind kind, bool bounced,
	                int64_t t_us);
	void *arg;
};

struct ndr_counters {
	uint64_t lines, parsed, garbage, too_long, other;
	uint64_t outcomes, attributed, unattributed, probes, handoffs, forwarded;
	uint64_t own_ndr, inbound_ndr, expired_rcpts, pickups, pickup_over, holds;
	uint64_t blocklist_alerts, spikes, qid_evicted, qid_expired, principal_evicted;
	uint64_t late_events; /* outside the windows: dropped */
	uint64_t by_class[CLASSIFY__COUNT];
};

/*
 * A tracker.  conf and cfg (trusted networks, key options) are copied by
 * reference and must outlive it or be replaced with ndr_set_conf(); db
 * (may be NULL: every failure is other_*) likewise.
 */
struct ndr *ndr_new(const struct ndr_conf *conf, const struct config *cfg,
                    const struct classify_db *db, const struct ndr_actions *act);
void ndr_set_conf(struct ndr *n, const struct ndr_conf *conf, const struct config *cfg,
                  const struct classify_db *db);
void ndr_free(struct ndr *n);

/* Local domains given at run time (e.g. read from postconf). */
void ndr_set_local_domains(struct ndr *n, char *const *domains, size_t nd);

/* One log line (without '\n'); now_us is the wall clock. */
void ndr_feed_line(struct ndr *n, const char *line, size_t len, int64_t now_us);

/* The policy hook: queue_id -> principal (any state once queue_id is known). */
void ndr_note_queue_id(struct ndr *n, const char *queue_id, const char *principal,
                       enum ndr_kind kind, int64_t now_us);
/* The policy hook: a null-sender message to a local user (normalised address). */
void ndr_note_inbound(struct ndr *n, const char *local_user, int64_t now_us);
/* Is this domain (lower case) one of ours? */
bool ndr_is_local_domain(const struct ndr *n, const char *domain);

/* Is the principal in a spike now?  *why gets the reason (may be NULL). */
bool ndr_spiking(struct ndr *n, const char *principal, const char **why);
/* fn(arg, queue_id) for every queue id still known whose owner is principal. */
void ndr_queued_of(struct ndr *n, const char *principal, void (*fn)(void *arg, const char *qid),
                   void *arg);
/* Forget a principal's windows and spike (ops cleared it).  true if known. */
bool ndr_clear(struct ndr *n, const char *principal, int64_t now_us);
/* Housekeeping (every few seconds): ends spikes, expires queue ids. */
void ndr_tick(struct ndr *n, int64_t now_us);

/*
 * The state as JSON (policyctl ndr --json): global, backscatter,
 * principals (the `limit` with most failures first; 0 = all), domains,
 * inbound, counters.  Caller owns the result.
 */
json_t *ndr_json(struct ndr *n, int64_t now_us, size_t limit);
const struct ndr_counters *ndr_counters(const struct ndr *n);
size_t ndr_queue_ids(const struct ndr *n);
size_t ndr_principals(const struct ndr *n);

/* Window sums of a principal (tests, metrics); false if unknown. */
struct ndr_window_sums {
	uint64_t n, sent, bounced, deferred, expired, bad_perm, bad_defer;
};
bool ndr_principal_sums(struct ndr *n, const char *principal, bool long_window, int64_t now_us,
                        struct ndr_window_sums *out);

/* Wilson score lower bound of k successes in n trials (0 when n == 0). */
double ndr_wilson_lower(uint64_t k, uint64_t n, double z);

/* Does a class indict the sender (counts towards a spike)? */
bool ndr_class_indicts(enum classify_class c);
const char *ndr_kind_name(enum ndr_kind k);

/*
 * The state file: the tracker's windows, baselines, spikes, queue ids
 * and pickup counters, plus an opaque position blob of the caller (the
 * follower's), written atomically (tmp + rename).  ndr_load() on a
 * missing file returns 0 with *poslen = 0.  -1 with a message.
 */
int ndr_save(struct ndr *n, const char *path, const void *pos, size_t poslen, char *err,
             size_t errsz);
int ndr_load(struct ndr *n, const char *path, void *pos, size_t possz, size_t *poslen, char *err,
             size_t errsz);

/* ------------------------------------------------------------ daemon side */

struct pipeline_ctx;
struct control_call;

/* The pipeline check "ndr" (pipeline.c, last in the table). */
void ndr_prepare(struct pipeline_ctx *x);
void ndr_finish(struct pipeline_ctx *x);

/* The control command "ndr" (control.c): {"cmd":"ndr","limit":N} -> {"ndr":{...}}. */
void ndr_control(struct control_call *call);

/* The module "ndr" (modules.c). */
struct module;
extern const struct module ndr_module;

#endif
