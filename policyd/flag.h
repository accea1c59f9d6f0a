/*
 * policyd/flag.h - accounts flagged as (probably) hijacked.
 *
 * A flag has an id, a reason and evidence, an expiry ("until cleared" or a
 * time), and a history per account (raised, cleared, by whom) so that
 * repeat offenders stand out and escalate.  While an account is flagged its
 * mail gets the configured action (pipeline check "flag").  Every flag
 * reaches the lockout hook (hook.c) exactly once, through an outbox kept in
 * the store.  Flags live in the store (both backends) under the "@flag"
 * namespace; see flag.c for the record format.
 *
 * THIS HEADER IS THE CONTRACT other modules (NDR spikes, anomaly score,
 * control socket) code against: extend it, do not change what is here.
 */
#ifndef POLICYD_FLAG_H
#define POLICYD_FLAG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

#define FLAG_ID_MAX       40
#define FLAG_REASON_MAX   256
#define FLAG_EVIDENCE_MAX 4096

enum flag_source {
	FLAG_SRC_MANUAL = 0, /* policyctl flag */
	FLAG_SRC_LIMIT,      /* a [limit] rule with flag = yes */
	FLAG_SRC_ANOMALY,    /* anomaly score over its flag threshold */
	FLAG_SRC_NDR,        /* bounce/deferral spike */
	FLAG_SRC_BLOCKLIST,  /* a remote reply named our IP on a blocklist */
};

struct flag_request {
	const char *account; /* principal, normalised */
	enum flag_source source;
	const char *reason;   /* one line, e.g. "recipients/h 14σ over baseline" */
	const char *evidence; /* lines: rule or score components, NDR counts, log lines */
	unsigned score;       /* 0-100 when the source is the anomaly score */
	int64_t duration_us;  /* 0: the configured default; <0: until cleared */
	const char *actor;    /* who raised it: "policyd", "admin:1000", ... */
};

struct flag_state {
	char id[FLAG_ID_MAX];
	bool active;
	int64_t raised_us, expires_us; /* expires_us 0: until cleared */
	enum verdict_action action;    /* what the account's mail gets */
	char reason[FLAG_REASON_MAX];
	unsigned times_flagged; /* in the history window (escalation) */
};

/* Result of an asynchronous flag operation: 0 or -1 with a message. */
typedef void flag_cb(void *arg, int rc, const char *id_or_error);

/*
 * Raise a flag (idempotent while one is active: the evidence is appended
 * and the existing id returned).  Persists it, records it in the history,
 * queues the lockout hook exactly once for this id, logs it.
 */
void flag_raise(const struct flag_request *r, flag_cb *cb, void *arg);

/* Clear an account's active flag; `by` is recorded in the history. */
void flag_clear(const char *account, const char *by, flag_cb *cb, void *arg);

/* JSON text results for the control socket (jansson-made, caller frees). */
typedef void flag_json_cb(void *arg, int rc, char *json_or_error);
/* [ {account, id, source, reason, raised, expires, action, score, hook}, ... ] */
void flag_list_active(flag_json_cb *cb, void *arg);
/* {account, active: {...} | null, history: [ {id, raised, cleared, cleared_by, reason,
 *  source, hook: {exit, duration_ms, output}}, ... ], times_flagged} */
void flag_history(const char *account, flag_json_cb *cb, void *arg);

/*
 * The global outbound circuit breaker (policyctl pause / resume): while
 * paused, every outbound request gets `action` (hold or defer).  Persisted;
 * the pipeline's first check.
 */
void flag_pause(bool on, enum verdict_action action, const char *by, flag_cb *cb, void *arg);
bool flag_paused(enum verdict_action *action);

/* Human-readable names, for logs and JSON. */
const char *flag_source_name(enum flag_source s);

/* ------------------------------------------------------------------------
 * Extensions (flag.c, hook.c): the daemon side.  Everything above is the
 * contract; what follows is for modules.c, pipeline.c, config_sections.c,
 * hook.c and the unit tests.
 */

struct module;
struct module_ctx;
struct pipeline_ctx;
struct config_section;

#define FLAG_HISTORY_MAX 100 /* [flags] history = at most this */
#define FLAG_OUTPUT_LINE 200 /* bytes of a hook's first output line kept */
#define FLAG_ACTOR_MAX   64
#define FLAG_ACCOUNT_MAX 384 /* KEY_MAX */

/* The [flags] section of policyd.conf (config_sections.c). */
struct flag_config {
	enum verdict_action action; /* hold, defer or reject (default defer) */
	char *reply;                /* text for the user (NULL: the default) */
	char dsn[16];               /* "" : 4.7.1 for defer, 5.7.1 for reject */
	int64_t duration_us;        /* default expiry; < 0: until cleared */
	unsigned escalate_after;    /* the Nth flag within the window escalates; 0: never */
	uint64_t escalate_window_us;
	enum verdict_action escalate_action;
	unsigned history;  /* history entries kept per account */
	char *pause_reply; /* text while paused (NULL: the default) */
	/* the lockout hook (hook.c) */
	char *lockout_command; /* absolute path, NULL: none */
	char *lockout_args;    /* argv after the command, placeholders %{...} */
	uint64_t lockout_timeout_us;
	unsigned lockout_retries;    /* after the first attempt */
	uint64_t lockout_backoff_us; /* doubles per retry */
	unsigned lockout_concurrency;
	uint64_t lockout_delay_us; /* grace delay before the first run */
	size_t lockout_output_max; /* bytes of output kept per run */
};
extern const struct config_section flag_config_section;
/* The [flags] block of c (defaults when the section is absent). */
const struct flag_config *flag_config(const struct config *c);

/* The "flags" module (modules.c): flags, the pause state, the lockout hook. */
extern const struct module flag_module;
int flag_init(struct module_ctx *m, char *err, size_t errsz);

/* Pipeline checks, first in pipeline.c's table: "pause" then "flag". */
void flag_pause_prepare(struct pipeline_ctx *x);
void flag_pause_finish(struct pipeline_ctx *x);
void flag_check_prepare(struct pipeline_ctx *x);
void flag_check_finish(struct pipeline_ctx *x);

/* The outcome of the lockout hook for one flag (kept in its history entry). */
enum flag_hook_state {
	FLAG_HOOK_NONE = 0, /* no lockout_command when it was raised */
	FLAG_HOOK_PENDING,  /* queued, or waiting to retry */
	FLAG_HOOK_RUNNING,
	FLAG_HOOK_DONE,   /* ran and exited 0: never run again */
	FLAG_HOOK_FAILED, /* every attempt failed */
};

struct flag_hook_result {
	enum flag_hook_state state;
	unsigned attempts;
	int exit_code; /* -1 when it did not exit normally */
	int signal;    /* 0, or the signal that ended it */
	bool timed_out;
	uint64_t duration_ms;          /* of the last attempt */
	char output[FLAG_OUTPUT_LINE]; /* first line of its output */
};

/* One flag in an account's history (the last one may be active). */
struct flag_entry {
	char id[FLAG_ID_MAX];
	int64_t raised_us;
	int64_t expires_us;              /* 0: until cleared */
	int64_t cleared_us;              /* 0: not cleared */
	char cleared_by[FLAG_ACTOR_MAX]; /* "admin:1000", "expired", ... */
	char reason[FLAG_REASON_MAX];
	enum flag_source source;
	enum verdict_action action;
	unsigned score;
	char actor[FLAG_ACTOR_MAX];
	struct flag_hook_result hook;
};

/* An account's record in "@flag" (a compact JSON blob in the store). */
struct flag_record {
	struct flag_entry hist[FLAG_HISTORY_MAX]; /* oldest first */
	size_t nhist;
	char evidence[FLAG_EVIDENCE_MAX]; /* of the last entry */
};

/* Decode a stored record; 0, or -1 with a message. */
int flag_record_decode(const void *val, size_t vlen, struct flag_record *r, char *err,
                       size_t errsz);
/*
 * Encode r into out (at most outsz bytes, not NUL-terminated): the newest
 * `keep` history entries, fewer (oldest dropped, then the evidence cut)
 * when they do not fit.  Returns the length, 0 if even that fails.
 */
size_t flag_record_encode(const struct flag_record *r, unsigned keep, char *out, size_t outsz);
/* The active flag at now (not cleared, not expired), or NULL. */
const struct flag_entry *flag_record_active(const struct flag_record *r, int64_t now);
/* Flags raised within window_us before now. */
unsigned flag_record_recent(const struct flag_record *r, int64_t now, uint64_t window_us);
/* The action a new flag gets, given the history before it (escalation). */
enum verdict_action flag_new_action(const struct flag_config *fc, const struct flag_record *r,
                                    int64_t now);
/* "hold" -> ACT_HOLD ...; -1 when not a flag action. */
int flag_action_parse(const char *s, enum verdict_action *a);
const char *flag_hook_state_name(enum flag_hook_state s);

/* Copy at most n bytes of in as valid UTF-8 without control characters
 * (newlines kept when asked; anything invalid becomes '?'). */
size_t flag_clean_text(char *out, size_t outsz, const char *in, size_t n, bool newlines);

/* hook.c reports a result (final or not) for the history of (account, id). */
void flag_note_hook(const char *account, const char *id, const struct flag_hook_result *h);
/* Is flag `id` being raised right now (its outbox entry written, not yet
 * acknowledged durable)?  hook.c's start-up scan leaves such an entry to
 * hook_enqueue(). */
bool flag_raising(const char *id);

#endif
