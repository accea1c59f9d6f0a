/*
 * policyd/hook.h - the lockout hook: runs `lockout_command` once per flag,
 * from an outbox kept in the store ("@outbox", by flag id), so that each
 * flag reaches the command exactly once even across a crash or restart
 * (the flag id is the idempotency key; see hook.c for the protocol).
 *
 * Used by flag.c only: flag.c writes a new flag's outbox entry (encoded
 * here) in the same batch as the flag, makes it durable, then calls
 * hook_enqueue(); hook.c reports results back with flag_note_hook().
 */
#ifndef POLICYD_HOOK_H
#define POLICYD_HOOK_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache/store.h"
#include "flag.h"

#define HOOK_NS        "@outbox"
#define HOOK_KEEP_US   (7 * 86400 * (int64_t)1000000) /* a finished entry stays this long */
#define HOOK_OWNER_MAX 384                            /* "hostname:hooks directory" */

/* One outbox entry. */
struct hook_entry {
	char id[FLAG_ID_MAX];
	char account[FLAG_ACCOUNT_MAX];
	char reason[FLAG_REASON_MAX];
	char evidence[FLAG_EVIDENCE_MAX];
	enum flag_source source;
	enum verdict_action action;
	unsigned score;
	int64_t raised_us;
	int64_t due_us;               /* not before */
	enum flag_hook_state state;   /* PENDING, RUNNING, DONE or FAILED */
	struct flag_hook_result last; /* attempts, the last attempt's result */
	char owner[HOOK_OWNER_MAX];   /* the daemon that runs it ("": any, old entries) */
};

/* JSON for the store; 0 when it does not fit.  Decode: 0 or -1 + err. */
size_t hook_entry_encode(const struct hook_entry *e, char *out, size_t outsz);
int hook_entry_decode(const void *val, size_t vlen, struct hook_entry *e, char *err, size_t errsz);

/*
 * Start: remember loop, store and settings, and queue every outbox entry
 * left pending or running (interrupted) by a previous run.  0, or -1 +
 * err (the outbox could not be read).
 */
int hook_start(struct ev_loop *loop, struct store *store, const struct flag_config *fc,
               const char *state_dir, char *err, size_t errsz);
/* New settings (a reload); running commands keep theirs. */
void hook_reload(const struct flag_config *fc, const char *state_dir);
/* Stop: running commands get SIGTERM (then SIGKILL); their entries stay
 * "running" and run again at the next start. */
void hook_stop(void);
/* Is a lockout_command configured? */
bool hook_enabled(void);
/* This daemon's name as an outbox entry's owner: "hostname:hooks directory". */
const char *hook_owner(void);
/* The outbox entry of flag `id` is durable: run it at due_us or later. */
void hook_enqueue(const char *id, int64_t due_us);

/* Counters (logs, metrics). */
struct hook_stats {
	unsigned long long started, done, failed, retried, timeouts, interrupted;
	unsigned long long restored; /* results the store had lost, written back from hooks/ */
	unsigned running, queued;
};
void hook_get_stats(struct hook_stats *out);

/* Split lockout_args into words ("..." and '...' quote, no shell); checks
 * the %{...} placeholders.  Returns the count, -1 + err. */
int hook_split_args(const char *args, char **argv, size_t max, char *buf, size_t bufsz, char *err,
                    size_t errsz);

#endif
