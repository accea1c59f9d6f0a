/*
 * policyd/hook.c - owns the lockout hook: the "@outbox" entries of flags,
 * running `lockout_command` for each (no shell), its output, timeout,
 * retries with backoff, the concurrency limit, and the results.
 *
 * Entry points: hook.h (hook_start/reload/stop, hook_enqueue, the outbox
 * entry format, hook_split_args).
 *
 * Exactly once.  flag.c writes a new flag and its outbox entry (state
 * "pending") in one store batch and flushes the store before it calls
 * hook_enqueue(), so the entry is durable before the command can run.
 * Before each run the entry is marked "running" (attempts + 1) and the
 * store flushed again; after the run it becomes "done" (exit 0: never run
 * again), "pending" with a later due time (a retry, backoff doubling), or
 * "failed" (no retries left).  At start every entry still "pending" is
 * queued, and every entry found "running" was interrupted (policyd killed,
 * the machine down): it runs again with POLICYD_RETRY=1 and
 * POLICYD_INTERRUPTED=1.  So the command sees each flag id once, or more
 * than once only after a crash mid-run or a failure, always with the same
 * POLICYD_FLAG_ID: the flag id is the idempotency key the command must
 * honour (contrib/hooks/ do).
 *
 * Failover (Redis).  "Flushed" means little to Redis: replication is
 * asynchronous, and a write its master acknowledged is lost when the master
 * dies before a replica has it and the replica is promoted.  A lost new
 * flag + entry means the hook never runs (and the account is not flagged);
 * a lost "done" means it runs twice.  So every write of this protocol is a
 * durable op (store.h): store_redis sends WAIT redis_wait_replicas
 * redis_wait_timeout after the script, on the same connection (WAIT counts
 * that client's own offset), and answers STORE_EREPLICA when fewer replicas
 * acknowledged.  The caller then writes the SAME value again - the flag id
 * is the key, so a retry never makes a second flag - after a backoff
 * (flag.c: a new flag, up to FLAG_DURABLE_TRIES, before hook_enqueue();
 * here: "running" and each result, up to HOOK_DURABLE_TRIES), and after the
 * last try goes on without the replicas (logged *_not_replicated: better a
 * lockout that may be lost than none).  STORE_EUNAVAIL (master dead, the
 * script may or may not have run) is retried the same way.  A flag is
 * acknowledged, and hook_enqueue() called, only once it is replicated; the
 * start-up scan leaves an entry whose raise is still retrying to it
 * (flag_raising()).
 *
 * This host's record.  WAIT bounds the window, it does not close it (a
 * replica that did not acknowledge may be promoted; the tries run out).
 * So before the "running" mark and before each result is stored, the entry
 * as it will be stored is written to hooks/ID.state (temporary file, fsync,
 * rename, fsync of the directory).  Before any run the record is compared
 * with the store's entry by rank (2 x attempts, + 1 once the attempt ended):
 * when the record is ahead, the store lost a write - a result is written
 * back and the command NOT run again (hook_store_behind); a "running" makes
 * the next run an interrupted one.  Records older than HOOK_KEEP_US + 1 day
 * are removed at start.
 *
 * Several daemons on one store.  Who runs an entry?  Before this, every
 * daemon queued every pending entry it found at start, and two of them
 * could both read "pending", both mark "running" and both run it: the
 * store has GET and PUT, no compare-and-set to claim an entry.  And the
 * record above only protects the host that wrote it.  So an entry has an
 * owner, "hostname:hooks directory" (hook_owner()), set by the daemon that
 * raised the flag (manual flags too: the daemon whose control socket got
 * the command): only the owner runs it - hook_enqueue() is only called by
 * the raising daemon, the start-up scan skips other owners' entries
 * (hook_resume_foreign) and a fetch of one is skipped.  Exactly once thus
 * needs one runner and its own records.  The price: the entries of a host
 * that never comes back stay pending (visible in the flag's history) until
 * a daemon with the same host name and state_dir starts; entries without an
 * owner (written before owners existed) are resumed by any daemon, as
 * before.  Not covered either (policyd.8 lists them): several replicas per
 * master with fewer acknowledging, every copy lost at once, policyd killed
 * while a new flag's write retries and the entry (another hash slot than the
 * flag) lost in the same failover, state_dir lost with a "done".
 *
 * A run: posix_spawn() of the command in its own process group, stdin
 * /dev/null, stdout and stderr into one non-blocking pipe watched by
 * ev_io (the first lockout_output_max bytes kept, the rest read and
 * dropped), ev_child for the exit, a timer for lockout_timeout (SIGTERM
 * to the group, SIGKILL 5 s later).  Environment: a fixed PATH and the
 * POLICYD_* variables only; the evidence in a 0600 file under state_dir
 * (hooks/ID.evidence), removed after the final attempt.  Each run ends in
 * one key=value log line and the result goes to the flag's history.
 */
#include "hook.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "chroot.h"
#include "log.h"
#include "verdict.h"

#define HOOK_SEC         ((int64_t)1000000)
#define HOOK_KILL_AFTER  5.0 /* s from SIGTERM to SIGKILL */
#define HOOK_GRACE       1.0 /* s to wait for the pipe's end after the exit */
#define HOOK_STORE_RETRY 5.0 /* s before retrying after a store error */
#define HOOK_MAX_ARGS    64
#define HOOK_ARGBUF      4096
#define HOOK_READ_CHUNK  4096
#define HOOK_READS       16 /* per callback: a flood cannot starve the loop */
#define HOOK_BACKOFF_MAX (86400 * HOOK_SEC)
#define HOOK_PATH_ENV    "PATH=/usr/sbin:/usr/bin:/sbin:/bin"
/* a state change of an entry that did not reach the replicas (STORE_EREPLICA,
 * STORE_EUNAVAIL): written again this many times, backoff doubling */
#define HOOK_DURABLE_TRIES 8
#define HOOK_DURABLE_FIRST 0.2
#define HOOK_LOCAL_SUFFIX  ".state"

extern char **environ;

struct hook_settings {
	char *command; /* NULL: none */
	char *args;
	uint64_t timeout_us, backoff_us;
	unsigned retries, concurrency;
	size_t output_max;
	char *dir; /* where evidence files go */
};

enum hook_phase { HP_WAIT = 0, HP_FETCH, HP_MARK, HP_RUN, HP_SAVE };

struct hook_job {
	struct hook_job *next;
	char id[FLAG_ID_MAX];
	int64_t due_us;
	enum hook_phase phase;
	bool interrupted; /* found "running": the last run's end is unknown */
	bool final;
	bool inflight;   /* a store callback is due */
	bool orphan;     /* stopped while inflight: the callback frees it */
	unsigned wtries; /* writes of the current state change (durable retries) */
	struct hook_entry e;
	struct store_op op;
	char buf[STORE_MAX_VALUE];
	/* the child */
	pid_t pid;
	int fd;
	ev_io io;
	ev_child cw;
	ev_timer tw; /* timeout, then the SIGKILL delay */
	ev_timer gw; /* grace for the pipe after the exit; store retries */
	char *out;
	size_t outlen, outmax;
	unsigned long long outtotal;
	bool exited, eof, timed_out, killed;
	int status;
	ev_tstamp t0;
	char evpath[512];
	struct flag_hook_result res;
};

static struct {
	bool started;
	struct ev_loop *loop;
	struct store *store;
	struct hook_settings set;
	char owner[HOOK_OWNER_MAX];
	struct hook_job *queue;   /* waiting, by due time */
	struct hook_job *running; /* fetching, running or saving */
	unsigned nrunning;
	ev_timer kick;
	struct hook_stats st;
} H;

static int64_t hook_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * HOOK_SEC + ts.tv_nsec / 1000;
}

/* ------------------------------------------------------- outbox entries */

static const char *hook_jstr(json_t *o, const char *key)
{
	const char *s = json_string_value(json_object_get(o, key));
	return s ? s : "";
}

static int64_t hook_jint(json_t *o, const char *key)
{
	json_t *v = json_object_get(o, key);
	return json_is_integer(v) ? (int64_t)json_integer_value(v) : 0;
}

size_t hook_entry_encode(const struct hook_entry *e, char *out, size_t outsz)
{
	char ev[FLAG_EVIDENCE_MAX], reason[FLAG_REASON_MAX], acc[FLAG_ACCOUNT_MAX];
	size_t evlen = strlen(e->evidence);
	flag_clean_text(reason, sizeof(reason), e->reason, strlen(e->reason), false);
	flag_clean_text(acc, sizeof(acc), e->account, strlen(e->account), false);
	for (;;) {
		flag_clean_text(ev, sizeof(ev), e->evidence, evlen, true);
		json_t *o = json_object();
		json_object_set_new(o, "v", json_integer(1));
		json_object_set_new(o, "id", json_string(e->id));
		json_object_set_new(o, "account", json_string(acc));
		json_object_set_new(o, "reason", json_string(reason));
		json_object_set_new(o, "evidence", json_string(ev));
		json_object_set_new(o, "source", json_string(flag_source_name(e->source)));
		json_object_set_new(o, "action", json_string(config_action_name(e->action)));
		json_object_set_new(o, "score", json_integer(e->score));
		json_object_set_new(o, "raised", json_integer(e->raised_us));
		json_object_set_new(o, "due", json_integer(e->due_us));
		json_object_set_new(o, "state", json_string(flag_hook_state_name(e->state)));
		json_object_set_new(o, "attempts", json_integer(e->last.attempts));
		if (e->owner[0])
			json_object_set_new(o, "owner", json_string(e->owner));
		if (e->last.attempts > 0 && e->state != FLAG_HOOK_RUNNING) {
			json_t *l = json_object();
			json_object_set_new(l, "exit",
			                    e->last.exit_code >= 0 ? json_integer(e->last.exit_code)
			                                           : json_null());
			json_object_set_new(l, "signal", json_integer(e->last.signal));
			json_object_set_new(l, "timeout", json_boolean(e->last.timed_out));
			json_object_set_new(l, "ms", json_integer((json_int_t)e->last.duration_ms));
			json_object_set_new(l, "output", json_string(e->last.output));
			json_object_set_new(o, "last", l);
		}
		size_t len = json_dumpb(o, out, outsz, JSON_COMPACT);
		json_decref(o);
		if (len > 0 && len <= outsz)
			return len;
		if (evlen == 0)
			return 0;
		evlen /= 2;
	}
}

static enum flag_source hook_source_parse(const char *s)
{
	for (int i = FLAG_SRC_MANUAL; i <= FLAG_SRC_BLOCKLIST; i++)
		if (strcmp(s, flag_source_name((enum flag_source)i)) == 0)
			return (enum flag_source)i;
	return FLAG_SRC_MANUAL;
}

int hook_entry_decode(const void *val, size_t vlen, struct hook_entry *e, char *err, size_t errsz)
{
	json_error_t je;
	memset(e, 0, sizeof(*e));
	e->last.exit_code = -1;
	json_t *o = json_loadb(val, vlen, 0, &je);
	if (o == NULL || !json_is_object(o)) {
		snprintf(err, errsz, "bad outbox entry: %s", o ? "not an object" : je.text);
		json_decref(o);
		return -1;
	}
	const char *id = hook_jstr(o, "id"), *acc = hook_jstr(o, "account");
	if (id[0] == '\0' || acc[0] == '\0' || strlen(id) >= sizeof(e->id)) {
		snprintf(err, errsz, "bad outbox entry: no id or account");
		json_decref(o);
		return -1;
	}
	snprintf(e->id, sizeof(e->id), "%s", id);
	snprintf(e->account, sizeof(e->account), "%s", acc);
	snprintf(e->reason, sizeof(e->reason), "%s", hook_jstr(o, "reason"));
	snprintf(e->evidence, sizeof(e->evidence), "%s", hook_jstr(o, "evidence"));
	e->source = hook_source_parse(hook_jstr(o, "source"));
	if (flag_action_parse(hook_jstr(o, "action"), &e->action) < 0)
		e->action = ACT_DEFER;
	e->score = (unsigned)hook_jint(o, "score");
	e->raised_us = hook_jint(o, "raised");
	e->due_us = hook_jint(o, "due");
	const char *st = hook_jstr(o, "state");
	e->state = !strcmp(st, "running")  ? FLAG_HOOK_RUNNING
	           : !strcmp(st, "done")   ? FLAG_HOOK_DONE
	           : !strcmp(st, "failed") ? FLAG_HOOK_FAILED
	                                   : FLAG_HOOK_PENDING;
	e->last.state = e->state;
	e->last.attempts = (unsigned)hook_jint(o, "attempts");
	snprintf(e->owner, sizeof(e->owner), "%s", hook_jstr(o, "owner"));
	json_t *l = json_object_get(o, "last");
	if (json_is_object(l)) {
		json_t *ex = json_object_get(l, "exit");
		e->last.exit_code = json_is_integer(ex) ? (int)json_integer_value(ex) : -1;
		e->last.signal = (int)hook_jint(l, "signal");
		e->last.timed_out = json_is_true(json_object_get(l, "timeout"));
		e->last.duration_ms = (uint64_t)hook_jint(l, "ms");
		snprintf(e->last.output, sizeof(e->last.output), "%s", hook_jstr(l, "output"));
	}
	json_decref(o);
	return 0;
}

/* ------------------------------------------------------------ arguments */

static const char *const hook_placeholders[] = {
    "account", "id", "reason", "source", "score", "action", "attempt", "evidence_file",
};
#define HOOK_NPH (sizeof(hook_placeholders) / sizeof(hook_placeholders[0]))

/* Is "%{" at p a known placeholder?  Its length (with "%{" and "}"), 0 if not. */
static size_t hook_placeholder(const char *p, size_t *which)
{
	for (size_t i = 0; i < HOOK_NPH; i++) {
		size_t n = strlen(hook_placeholders[i]);
		if (strncmp(p + 2, hook_placeholders[i], n) == 0 && p[2 + n] == '}') {
			*which = i;
			return n + 3;
		}
	}
	return 0;
}

int hook_split_args(const char *args, char **argv, size_t max, char *buf, size_t bufsz, char *err,
                    size_t errsz)
{
	size_t n = 0, o = 0;
	const char *p = args ? args : "";
	for (;;) {
		while (*p == ' ' || *p == '\t')
			p++;
		if (*p == '\0')
			break;
		if (n + 1 >= max) {
			snprintf(err, errsz, "more than %zu arguments", max - 1);
			return -1;
		}
		argv[n++] = buf + o;
		char quote = 0;
		while (*p && (quote || (*p != ' ' && *p != '\t'))) {
			char c = *p++;
			if (quote == 0 && (c == '"' || c == '\'')) {
				quote = c;
				continue;
			}
			if (quote && c == quote) {
				quote = 0;
				continue;
			}
			if (quote == '"' && c == '\\' && (*p == '"' || *p == '\\'))
				c = *p++;
			if (c == '%' && *p == '{') {
				size_t which;
				if (hook_placeholder(p - 1, &which) == 0) {
					snprintf(err, errsz,
					         "unknown placeholder '%.20s' (%%{account} %%{id} "
					         "%%{reason} "
					         "%%{source} %%{score} %%{action} %%{attempt} "
					         "%%{evidence_file})",
					         p - 1);
					return -1;
				}
			}
			if (o + 2 > bufsz) {
				snprintf(err, errsz, "arguments too long (at most %zu bytes)",
				         bufsz);
				return -1;
			}
			buf[o++] = c;
		}
		if (quote) {
			snprintf(err, errsz, "unbalanced %c quote", quote);
			return -1;
		}
		buf[o++] = '\0';
	}
	argv[n] = NULL;
	return (int)n;
}

/* Expand the placeholders of word into out; false when it does not fit. */
static bool hook_expand(const char *word, const char *const val[HOOK_NPH], char *out, size_t outsz)
{
	size_t o = 0;
	for (const char *p = word; *p;) {
		size_t which, n;
		if (p[0] == '%' && p[1] == '{' && (n = hook_placeholder(p, &which)) > 0) {
			size_t vl = strlen(val[which]);
			if (o + vl + 1 > outsz)
				return false;
			memcpy(out + o, val[which], vl);
			o += vl;
			p += n;
			continue;
		}
		if (o + 2 > outsz)
			return false;
		out[o++] = *p++;
	}
	out[o] = '\0';
	return true;
}

/* ------------------------------------------------------------- settings */

static void hook_settings_free(struct hook_settings *s)
{
	free(s->command);
	free(s->args);
	free(s->dir);
	memset(s, 0, sizeof(*s));
}

static void hook_settings_set(const struct flag_config *fc, const char *state_dir)
{
	hook_settings_free(&H.set);
	H.set.command = fc->lockout_command ? strdup(fc->lockout_command) : NULL;
	H.set.args = fc->lockout_args ? strdup(fc->lockout_args) : NULL;
	H.set.timeout_us = fc->lockout_timeout_us;
	H.set.backoff_us = fc->lockout_backoff_us;
	H.set.retries = fc->lockout_retries;
	H.set.concurrency = fc->lockout_concurrency ? fc->lockout_concurrency : 1;
	H.set.output_max = fc->lockout_output_max;
	char dir[400];
	if (state_dir && state_dir[0])
		snprintf(dir, sizeof(dir), "%s/hooks", state_dir);
	else
		snprintf(dir, sizeof(dir), "/tmp/policyd-hooks.%ld", (long)geteuid());
	H.set.dir = strdup(dir);
	char host[256] = "";
	if (gethostname(host, sizeof(host) - 1) < 0 || host[0] == '\0')
		snprintf(host, sizeof(host), "localhost");
	snprintf(H.owner, sizeof(H.owner), "%.255s:%.120s", host, dir);
	if ((fc->lockout_command && H.set.command == NULL) || (fc->lockout_args && !H.set.args) ||
	    H.set.dir == NULL)
		log_err("hook: out of memory copying the settings");
}

const char *hook_owner(void)
{
	return H.owner;
}

bool hook_enabled(void)
{
	return H.started && H.set.command != NULL;
}

void hook_get_stats(struct hook_stats *out)
{
	*out = H.st;
	out->running = H.nrunning;
	unsigned q = 0;
	for (struct hook_job *j = H.queue; j; j = j->next)
		q++;
	out->queued = q;
}

/* ----------------------------------------------------------------- queue */

static void hook_kick(void)
{
	if (!H.started)
		return;
	ev_timer_stop(H.loop, &H.kick);
	ev_timer_set(&H.kick, 0., 0.);
	ev_timer_start(H.loop, &H.kick);
}

static bool hook_known(const char *id)
{
	for (struct hook_job *j = H.queue; j; j = j->next)
		if (strcmp(j->id, id) == 0)
			return true;
	for (struct hook_job *j = H.running; j; j = j->next)
		if (strcmp(j->id, id) == 0)
			return true;
	return false;
}

static void hook_queue_insert(struct hook_job *j)
{
	struct hook_job **pp = &H.queue;
	while (*pp && (*pp)->due_us <= j->due_us)
		pp = &(*pp)->next;
	j->next = *pp;
	*pp = j;
	j->phase = HP_WAIT;
}

static void hook_running_remove(struct hook_job *j)
{
	for (struct hook_job **pp = &H.running; *pp; pp = &(*pp)->next)
		if (*pp == j) {
			*pp = j->next;
			H.nrunning--;
			return;
		}
}

static void hook_job_free(struct hook_job *j)
{
	free(j->out);
	free(j);
}

static struct hook_job *hook_job_new(const char *id, int64_t due_us)
{
	struct hook_job *j = calloc(1, sizeof(*j));
	if (j == NULL) {
		log_err("event=hook_error id=%s error=\"out of memory\" (runs at the next start)",
		        id);
		return NULL;
	}
	snprintf(j->id, sizeof(j->id), "%s", id);
	j->due_us = due_us;
	j->fd = -1;
	j->pid = -1;
	return j;
}

/* Back to the queue (a retry, or a store that failed). */
static void hook_requeue(struct hook_job *j, int64_t due_us)
{
	hook_running_remove(j);
	j->due_us = due_us;
	hook_queue_insert(j);
	hook_kick();
}

static void hook_done_with(struct hook_job *j)
{
	hook_running_remove(j);
	hook_job_free(j);
	hook_kick();
}

void hook_enqueue(const char *id, int64_t due_us)
{
	if (!H.started || H.set.command == NULL || hook_known(id))
		return;
	struct hook_job *j = hook_job_new(id, due_us);
	if (j == NULL)
		return;
	hook_queue_insert(j);
	hook_kick();
}

/* ------------------------------------------------------------ one run */

static int hook_batch(struct hook_job *j, store_cb *cb)
{
	j->inflight = true;
	int rc = store_batch(H.store, &j->op, 1, hook_now(), cb, j);
	if (rc != 0)
		j->inflight = false;
	return rc;
}

/* At the top of every store callback: false when the job was orphaned by hook_stop(). */
static bool hook_landed(struct hook_job *j)
{
	j->inflight = false;
	if (!j->orphan)
		return true;
	hook_job_free(j);
	return false;
}

static void hook_fetch(struct hook_job *j);
static void hook_spawn(struct hook_job *j);
static int hook_local_write(const struct hook_job *j, const char *val, size_t len, char *err,
                            size_t errsz);
static int hook_local_read(const char *id, struct hook_entry *e);
static void hook_mark_send(struct hook_job *j);
static void hook_on_grace(struct ev_loop *loop, ev_timer *w, int revents);
static void hook_safe_name(char *out, size_t outsz, const char *id);
static void hook_finish(struct hook_job *j);
static void hook_save(struct hook_job *j);

static void hook_on_kick(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)w;
	(void)revents;
	int64_t now = hook_now();
	while (H.queue && H.nrunning < H.set.concurrency && H.queue->due_us <= now &&
	       H.set.command) {
		struct hook_job *j = H.queue;
		H.queue = j->next;
		j->next = H.running;
		H.running = j;
		H.nrunning++;
		hook_fetch(j);
	}
	/* (a job that ended at once may have kicked the timer again already) */
	if (H.queue && H.nrunning < H.set.concurrency && H.set.command && !ev_is_active(&H.kick)) {
		double in = (double)(H.queue->due_us - now) / 1e6;
		ev_timer_set(&H.kick, in > 0.001 ? in : 0.001, 0.);
		ev_timer_start(loop, &H.kick);
	}
}

/* A store error before the run: try again in a few seconds. */
static void hook_store_trouble(struct hook_job *j, const char *what)
{
	log_warn("event=hook_store_error id=%s step=%s error=\"%s\" retry_in=%.0fs", j->id, what,
	         H.store ? H.store->err : "closed", HOOK_STORE_RETRY);
	hook_requeue(j, hook_now() + (int64_t)(HOOK_STORE_RETRY * 1e6));
}

/* A durable write of j's entry came back short: when to write it again (s), or < 0. */
static double hook_durable_retry(struct hook_job *j, enum store_status st, const char *step)
{
	if ((st != STORE_EREPLICA && st != STORE_EUNAVAIL) || j->wtries >= HOOK_DURABLE_TRIES)
		return -1;
	double in = HOOK_DURABLE_FIRST;
	for (unsigned k = 1; k < j->wtries && in < HOOK_STORE_RETRY; k++)
		in *= 2;
	if (in > HOOK_STORE_RETRY)
		in = HOOK_STORE_RETRY;
	log_warn("event=hook_write_again id=%s step=%s try=%u in=%.1fs error=\"%s\"", j->id, step,
	         j->wtries + 1, in,
	         st == STORE_EUNAVAIL ? "unavailable"
	         : H.store            ? H.store->err
	                              : "closed");
	return in;
}

static void hook_marked(void *arg, enum store_status st, const struct store_result *res, size_t n)
{
	struct hook_job *j = arg;
	(void)res;
	if (!hook_landed(j))
		return;
	if (st != STORE_OK || n != 1) {
		double in = hook_durable_retry(j, st, "mark_running");
		if (in >= 0) {
			ev_timer_init(&j->gw, hook_on_grace, in, 0.);
			j->gw.data = j;
			ev_timer_start(H.loop, &j->gw);
			return;
		}
		if (st != STORE_EREPLICA) {
			hook_store_trouble(j, "mark_running");
			return;
		}
		/* on the master, not on a replica: run anyway, hooks/ guards a re-run here */
		log_err("event=hook_not_replicated id=%s step=mark_running tries=%u error=\"%s\"",
		        j->id, j->wtries, H.store->err);
	}
	/* "running" must be on disk before the command can act */
	if (H.store->be->flush(H.store) < 0) {
		hook_store_trouble(j, "flush");
		return;
	}
	hook_spawn(j);
}

/* An attempt's rank: 2 x attempts, + 1 once it ended (pending again, done, failed). */
static unsigned hook_rank(const struct hook_entry *e)
{
	return 2 * e->last.attempts + (e->state == FLAG_HOOK_RUNNING ? 0 : 1);
}

/*
 * This host's record (hooks/ID.state) against the store's entry j->e: when
 * the record is further (the store lost a "running" or a result in a
 * failover), the record wins.  A result is written back and NOT run again
 * (true: j is on its way); a "running" makes the next run an interrupted
 * one (false: go on).
 */
static bool hook_local_ahead(struct hook_job *j)
{
	struct hook_entry *l = malloc(sizeof(*l));
	if (l == NULL || hook_local_read(j->id, l) <= 0 || hook_rank(l) <= hook_rank(&j->e)) {
		free(l);
		return false;
	}
	log_warn("event=hook_store_behind id=%s store_state=%s store_attempts=%u local_state=%s "
	         "local_attempts=%u (the store lost a write, a failover?: this host's record "
	         "wins)",
	         j->id, flag_hook_state_name(j->e.state), j->e.last.attempts,
	         flag_hook_state_name(l->state), l->last.attempts);
	if (l->state == FLAG_HOOK_RUNNING) {
		j->e.state = FLAG_HOOK_RUNNING;
		j->e.last.attempts = l->last.attempts;
		j->interrupted = true;
		free(l);
		return false;
	}
	j->e.state = l->state;
	j->e.last = l->last;
	j->e.last.state = l->state;
	j->e.due_us = l->due_us;
	j->res = l->last;
	j->res.state = l->state;
	j->final = l->state != FLAG_HOOK_PENDING;
	j->interrupted = false;
	H.st.restored++;
	free(l);
	hook_save(j); /* then done with it, or queued for its retry at due_us */
	return true;
}

static void hook_fetched(void *arg, enum store_status st, const struct store_result *res, size_t n)
{
	struct hook_job *j = arg;
	char err[200];
	if (!hook_landed(j))
		return;
	if (st != STORE_OK || n != 1) {
		hook_store_trouble(j, "read");
		return;
	}
	if (!res[0].found) {
		log_warn("event=hook_skip id=%s reason=\"no outbox entry\"", j->id);
		hook_done_with(j);
		return;
	}
	if (hook_entry_decode(res[0].val, res[0].vlen, &j->e, err, sizeof(err)) < 0) {
		log_err("event=hook_skip id=%s reason=\"%s\"", j->id, err);
		hook_done_with(j);
		return;
	}
	if (j->e.owner[0] && strcmp(j->e.owner, H.owner) != 0) {
		log_info("event=hook_skip id=%s reason=\"owned by %s\"", j->id, j->e.owner);
		hook_done_with(j);
		return;
	}
	if (hook_local_ahead(j))
		return;
	if (j->e.state == FLAG_HOOK_DONE || j->e.state == FLAG_HOOK_FAILED) {
		log_debug("event=hook_skip id=%s reason=\"already %s\"", j->id,
		          flag_hook_state_name(j->e.state));
		hook_done_with(j);
		return;
	}
	if (j->e.state == FLAG_HOOK_RUNNING && !j->interrupted) {
		j->interrupted = true; /* enqueued again while a crashed run was recorded */
	}
	j->e.state = FLAG_HOOK_RUNNING;
	j->e.last.attempts++;
	j->e.last.state = FLAG_HOOK_RUNNING;
	size_t len = hook_entry_encode(&j->e, j->buf, sizeof(j->buf));
	if (len == 0) {
		log_err("event=hook_skip id=%s reason=\"entry does not fit\"", j->id);
		hook_done_with(j);
		return;
	}
	/* this host's record first: a crash from here on reruns it as interrupted */
	if (hook_local_write(j, j->buf, len, err, sizeof(err)) < 0) {
		log_err("event=hook_local_error id=%s error=\"%s\" retry_in=%.0fs", j->id, err,
		        HOOK_STORE_RETRY);
		hook_requeue(j, hook_now() + (int64_t)(HOOK_STORE_RETRY * 1e6));
		return;
	}
	memset(&j->op, 0, sizeof(j->op));
	j->op.kind = STORE_PUT;
	j->op.rule = HOOK_NS;
	j->op.subject = j->id;
	j->op.val = j->buf;
	j->op.vlen = len;
	j->op.durable = true;
	j->wtries = 0;
	hook_mark_send(j);
}

static void hook_mark_send(struct hook_job *j)
{
	j->phase = HP_MARK;
	j->wtries++;
	if (hook_batch(j, hook_marked) != 0)
		hook_store_trouble(j, "mark_running");
}

static void hook_fetch(struct hook_job *j)
{
	j->phase = HP_FETCH;
	memset(&j->op, 0, sizeof(j->op));
	j->op.kind = STORE_GET;
	j->op.rule = HOOK_NS;
	j->op.subject = j->id;
	if (hook_batch(j, hook_fetched) != 0)
		hook_store_trouble(j, "read");
}

/* A file name from an id (ids are ours, but the store is data). */
static void hook_safe_name(char *out, size_t outsz, const char *id)
{
	size_t o = 0;
	for (const char *p = id; *p && o + 1 < outsz; p++)
		out[o++] = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		                   (*p >= '0' && *p <= '9') || *p == '-' || *p == '.' || *p == '_'
		               ? *p
		               : '_';
	out[o] = '\0';
	if (out[0] == '.')
		out[0] = '_';
}

static int hook_write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* hooks/ exists and is ours. */
/* The hooks directory as seen now (inside a chroot: without its prefix). */
static const char *hook_dir(void)
{
	return chroot_path(H.set.dir);
}

static int hook_dir_ready(char *err, size_t errsz)
{
	struct stat st;
	const char *dir = hook_dir(); /* the command runs chrooted too */
	if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
		snprintf(err, errsz, "%s: %s", dir, strerror(errno));
		return -1;
	}
	if (lstat(dir, &st) < 0 || !S_ISDIR(st.st_mode) || st.st_uid != geteuid()) {
		snprintf(err, errsz, "%s: not a directory of ours", dir);
		return -1;
	}
	return 0;
}

/*
 * hooks/ID.state: this host's copy of the entry at each state change
 * (the same JSON), written to a temporary file, fsync'd, renamed over the
 * old one, the directory fsync'd.  0, or -1 + err.
 */
static int hook_local_write(const struct hook_job *j, const char *val, size_t len, char *err,
                            size_t errsz)
{
	char name[FLAG_ID_MAX + 16], path[600], tmp[620];
	if (hook_dir_ready(err, errsz) < 0)
		return -1;
	hook_safe_name(name, sizeof(name), j->id);
	snprintf(path, sizeof(path), "%s/%s" HOOK_LOCAL_SUFFIX, hook_dir(), name);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0) {
		snprintf(err, errsz, "%.300s: %s", tmp, strerror(errno));
		return -1;
	}
	int rc = hook_write_all(fd, val, len);
	if (rc == 0)
		rc = fsync(fd);
	int e = errno;
	if (close(fd) < 0 && rc == 0) {
		rc = -1;
		e = errno;
	}
	if (rc == 0 && rename(tmp, path) < 0) {
		rc = -1;
		e = errno;
	}
	if (rc < 0) {
		snprintf(err, errsz, "%.300s: %s", tmp, strerror(e));
		unlink(tmp);
		return -1;
	}
	int dfd = open(hook_dir(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0 || fsync(dfd) < 0) {
		snprintf(err, errsz, "%s: fsync: %s", hook_dir(), strerror(errno));
		if (dfd >= 0)
			close(dfd);
		return -1;
	}
	close(dfd);
	return 0;
}

/* 1 and *e when hooks/ID.state holds an entry for id, 0 when none, -1 unreadable. */
static int hook_local_read(const char *id, struct hook_entry *e)
{
	char name[FLAG_ID_MAX + 16], path[600], buf[STORE_MAX_VALUE], err[200];
	hook_safe_name(name, sizeof(name), id);
	snprintf(path, sizeof(path), "%s/%s" HOOK_LOCAL_SUFFIX, hook_dir(), name);
	int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOENT)
			return 0;
		log_err("event=hook_local_error id=%s error=\"%s: %s\"", id, path, strerror(errno));
		return -1;
	}
	size_t len = 0;
	for (;;) {
		ssize_t r = read(fd, buf + len, sizeof(buf) - len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		len += (size_t)r;
		if (len == sizeof(buf))
			break;
	}
	close(fd);
	if (hook_entry_decode(buf, len, e, err, sizeof(err)) < 0 || strcmp(e->id, id) != 0) {
		log_err("event=hook_local_error id=%s error=\"%s: %s\"", id, path,
		        strcmp(e->id, id) ? "another flag's record" : err);
		return -1;
	}
	return 1;
}

/* At start: records of this host older than the store keeps entries go. */
static void hook_local_sweep(void)
{
	DIR *d = opendir(hook_dir());
	if (d == NULL)
		return;
	time_t before = time(NULL) - (time_t)(HOOK_KEEP_US / HOOK_SEC) - 86400;
	unsigned gone = 0;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		size_t l = strlen(de->d_name), sl = strlen(HOOK_LOCAL_SUFFIX);
		struct stat st;
		if (l <= sl || strcmp(de->d_name + l - sl, HOOK_LOCAL_SUFFIX) != 0)
			continue;
		if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
		    S_ISREG(st.st_mode) && st.st_mtime < before &&
		    unlinkat(dirfd(d), de->d_name, 0) == 0)
			gone++;
	}
	closedir(d);
	if (gone)
		log_info("event=hook_local_sweep removed=%u", gone);
}

/* The evidence file: a few header lines, then the evidence. */
static int hook_write_evidence(struct hook_job *j, char *err, size_t errsz)
{
	char name[FLAG_ID_MAX + 16], head[1024];
	if (hook_dir_ready(err, errsz) < 0)
		return -1;
	hook_safe_name(name, sizeof(name), j->id);
	snprintf(j->evpath, sizeof(j->evpath), "%s/%s.evidence", hook_dir(), name);
	int fd = open(j->evpath, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0) {
		snprintf(err, errsz, "%s: %s", j->evpath, strerror(errno));
		return -1;
	}
	(void)fchmod(fd, 0600);
	time_t t = (time_t)(j->e.raised_us / HOOK_SEC);
	struct tm tm;
	char when[40];
	gmtime_r(&t, &tm);
	strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
	int n = snprintf(head, sizeof(head),
	                 "flag_id: %s\naccount: %s\nsource: %s\naction: %s\nscore: %u\n"
	                 "raised: %s\nreason: %s\n\n",
	                 j->e.id, j->e.account, flag_source_name(j->e.source),
	                 config_action_name(j->e.action), j->e.score, when, j->e.reason);
	size_t hl = n < 0 ? 0 : (size_t)n < sizeof(head) ? (size_t)n : sizeof(head) - 1;
	int rc = hook_write_all(fd, head, hl);
	if (rc == 0 && j->e.evidence[0])
		rc = hook_write_all(fd, j->e.evidence, strlen(j->e.evidence));
	if (rc == 0)
		rc = hook_write_all(fd, "\n", 1);
	if (close(fd) < 0 || rc < 0) {
		snprintf(err, errsz, "%s: %s", j->evpath, strerror(errno));
		unlink(j->evpath);
		return -1;
	}
	return 0;
}

static void hook_on_read(struct ev_loop *loop, ev_io *w, int revents);
static void hook_on_child(struct ev_loop *loop, ev_child *w, int revents);
static void hook_on_timeout(struct ev_loop *loop, ev_timer *w, int revents);
static void hook_on_grace(struct ev_loop *loop, ev_timer *w, int revents);

/* The run could not start: it counts as a failed attempt. */
static void hook_spawn_failed(struct hook_job *j, const char *why)
{
	j->exited = j->eof = true;
	j->status = 127 << 8;
	j->t0 = ev_now(H.loop);
	flag_clean_text(j->res.output, sizeof(j->res.output), why, strlen(why), false);
	j->outlen = 0;
	hook_finish(j);
}

static void hook_spawn(struct hook_job *j)
{
	char err[700];
	j->phase = HP_RUN;
	j->exited = j->eof = j->timed_out = j->killed = false;
	j->outlen = 0;
	j->outtotal = 0;
	j->res.output[0] = '\0';
	j->evpath[0] = '\0';
	unsigned attempt = j->e.last.attempts;
	bool retry = attempt > 1 || j->interrupted;

	if (hook_write_evidence(j, err, sizeof(err)) < 0) {
		log_warn("event=hook_evidence_error id=%s error=\"%s\"", j->id, err);
		j->evpath[0] = '\0';
	}
	/* argv: the command, then lockout_args with placeholders expanded */
	char reason[FLAG_REASON_MAX], score[16], att[16];
	flag_clean_text(reason, sizeof(reason), j->e.reason, strlen(j->e.reason), false);
	snprintf(score, sizeof(score), "%u", j->e.score);
	snprintf(att, sizeof(att), "%u", attempt);
	const char *val[HOOK_NPH] = {
	    j->e.account, j->e.id,
	    reason,       flag_source_name(j->e.source),
	    score,        config_action_name(j->e.action),
	    att,          j->evpath,
	};
	char *words[HOOK_MAX_ARGS], wbuf[HOOK_ARGBUF];
	static char xbuf[HOOK_MAX_ARGS][HOOK_ARGBUF / 4];
	char *argv[HOOK_MAX_ARGS + 1];
	int nw = hook_split_args(H.set.args, words, HOOK_MAX_ARGS - 1, wbuf, sizeof(wbuf), err,
	                         sizeof(err));
	if (nw < 0) {
		snprintf(err + strlen(err), sizeof(err) - strlen(err), " (lockout_args)");
		hook_spawn_failed(j, err);
		return;
	}
	argv[0] = (char *)chroot_path(H.set.command);
	for (int i = 0; i < nw; i++) {
		if (!hook_expand(words[i], val, xbuf[i], sizeof(xbuf[i]))) {
			hook_spawn_failed(j, "lockout_args: an argument is too long once expanded");
			return;
		}
		argv[i + 1] = xbuf[i];
	}
	argv[nw + 1] = NULL;

	/* environment: nothing inherited */
	static char envs[11][FLAG_EVIDENCE_MAX / 4];
	char *envp[12];
	size_t ne = 0;
	snprintf(envs[ne], sizeof(envs[ne]), "%s", HOOK_PATH_ENV);
	envp[ne] = envs[ne];
	ne++;
#define HOOK_ENV(fmt, ...)                                                                         \
	do {                                                                                       \
		snprintf(envs[ne], sizeof(envs[ne]), fmt, __VA_ARGS__);                            \
		envp[ne] = envs[ne];                                                               \
		ne++;                                                                              \
	} while (0)
	HOOK_ENV("POLICYD_ACCOUNT=%s", j->e.account);
	HOOK_ENV("POLICYD_REASON=%s", reason);
	HOOK_ENV("POLICYD_SCORE=%u", j->e.score);
	HOOK_ENV("POLICYD_FLAG_ID=%s", j->e.id);
	HOOK_ENV("POLICYD_SOURCE=%s", flag_source_name(j->e.source));
	HOOK_ENV("POLICYD_ACTION=%s", config_action_name(j->e.action));
	HOOK_ENV("POLICYD_EVIDENCE_FILE=%s", j->evpath);
	HOOK_ENV("POLICYD_ATTEMPT=%u", attempt);
	HOOK_ENV("POLICYD_RETRY=%d", retry ? 1 : 0);
	HOOK_ENV("POLICYD_INTERRUPTED=%d", j->interrupted ? 1 : 0);
#undef HOOK_ENV
	envp[ne] = NULL;

	int pfd[2];
	if (pipe2(pfd, O_CLOEXEC) < 0) {
		snprintf(err, sizeof(err), "pipe: %s", strerror(errno));
		hook_spawn_failed(j, err);
		return;
	}
	(void)fcntl(pfd[0], F_SETFL, O_NONBLOCK);
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t at;
	sigset_t none, dflt;
	sigemptyset(&none);
	sigemptyset(&dflt);
	static const int sigs[] = {SIGPIPE, SIGHUP,  SIGINT,  SIGTERM, SIGQUIT,
	                           SIGUSR1, SIGUSR2, SIGCHLD, SIGALRM, SIGXFSZ};
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		sigaddset(&dflt, sigs[i]);
	posix_spawn_file_actions_init(&fa);
	if (chroot_devnull() >= 0) /* no /dev/null inside a chroot */
		posix_spawn_file_actions_adddup2(&fa, chroot_devnull(), 0);
	else
		posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_adddup2(&fa, pfd[1], 1);
	posix_spawn_file_actions_adddup2(&fa, pfd[1], 2);
	posix_spawn_file_actions_addclosefrom_np(&fa, 3);
	posix_spawn_file_actions_addchdir_np(&fa, "/");
	posix_spawnattr_init(&at);
	posix_spawnattr_setsigmask(&at, &none);
	posix_spawnattr_setsigdefault(&at, &dflt);
	posix_spawnattr_setpgroup(&at, 0);
	posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF |
	                                  POSIX_SPAWN_SETPGROUP);
	pid_t pid;
	int rc = posix_spawn(&pid, argv[0], &fa, &at, argv, envp);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&at);
	close(pfd[1]);
	if (rc != 0) {
		close(pfd[0]);
		snprintf(err, sizeof(err), "cannot run %s: %s", H.set.command, strerror(rc));
		hook_spawn_failed(j, err);
		return;
	}
	j->pid = pid;
	j->fd = pfd[0];
	j->t0 = ev_time();
	if (j->outmax != H.set.output_max || j->out == NULL) {
		free(j->out);
		j->outmax = H.set.output_max;
		j->out = malloc(j->outmax);
		if (j->out == NULL)
			j->outmax = 0;
	}
	ev_io_init(&j->io, hook_on_read, j->fd, EV_READ);
	j->io.data = j;
	ev_io_start(H.loop, &j->io);
	ev_child_init(&j->cw, hook_on_child, pid, 0);
	j->cw.data = j;
	ev_child_start(H.loop, &j->cw);
	ev_timer_init(&j->tw, hook_on_timeout, (double)H.set.timeout_us / 1e6, 0.);
	j->tw.data = j;
	ev_timer_start(H.loop, &j->tw);
	H.st.started++;
	if (j->interrupted)
		H.st.interrupted++;
	log_info("event=hook_exec id=%s account=%s attempt=%u retry=%d interrupted=%d pid=%ld "
	         "latency_ms=%lld",
	         j->id, j->e.account, attempt, retry ? 1 : 0, j->interrupted ? 1 : 0, (long)pid,
	         (long long)((hook_now() - j->e.raised_us) / 1000));
}

static void hook_close_pipe(struct hook_job *j)
{
	if (j->fd < 0)
		return;
	ev_io_stop(H.loop, &j->io);
	close(j->fd);
	j->fd = -1;
	j->eof = true;
}

static void hook_maybe_finish(struct hook_job *j)
{
	if (!j->exited)
		return;
	if (!j->eof) {
		if (!ev_is_active(&j->gw)) {
			ev_timer_init(&j->gw, hook_on_grace, HOOK_GRACE, 0.);
			j->gw.data = j;
			ev_timer_start(H.loop, &j->gw);
		}
		return;
	}
	ev_timer_stop(H.loop, &j->gw);
	hook_finish(j);
}

/* Read what the pipe has (bounded per call); closes it at its end. */
static void hook_drain(struct hook_job *j)
{
	char tmp[HOOK_READ_CHUNK];
	for (int k = 0; k < HOOK_READS && j->fd >= 0; k++) {
		ssize_t n = read(j->fd, tmp, sizeof(tmp));
		if (n > 0) {
			size_t keep = j->outmax - j->outlen;
			if (keep > (size_t)n)
				keep = (size_t)n;
			memcpy(j->out + j->outlen, tmp, keep);
			j->outlen += keep;
			j->outtotal += (unsigned long long)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		hook_close_pipe(j); /* end of file or an error */
	}
}

static void hook_on_read(struct ev_loop *loop, ev_io *w, int revents)
{
	struct hook_job *j = w->data;
	(void)loop;
	(void)revents;
	hook_drain(j);
	if (j->eof)
		hook_maybe_finish(j);
}

static void hook_on_child(struct ev_loop *loop, ev_child *w, int revents)
{
	struct hook_job *j = w->data;
	(void)revents;
	ev_child_stop(loop, w);
	ev_timer_stop(loop, &j->tw);
	j->status = w->rstatus;
	j->exited = true;
	hook_drain(j); /* what is already in the pipe */
	hook_maybe_finish(j);
}

static void hook_on_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct hook_job *j = w->data;
	(void)revents;
	if (!j->timed_out) {
		j->timed_out = true;
		H.st.timeouts++;
		log_warn("event=hook_timeout id=%s pid=%ld after=%.0fs signal=TERM", j->id,
		         (long)j->pid, (double)H.set.timeout_us / 1e6);
		if (kill(-j->pid, SIGTERM) < 0)
			(void)kill(j->pid, SIGTERM);
		ev_timer_set(w, HOOK_KILL_AFTER, 0.);
		ev_timer_start(loop, w);
		return;
	}
	j->killed = true;
	log_warn("event=hook_kill id=%s pid=%ld signal=KILL", j->id, (long)j->pid);
	if (kill(-j->pid, SIGKILL) < 0)
		(void)kill(j->pid, SIGKILL);
}

static void hook_on_grace(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct hook_job *j = w->data;
	(void)loop;
	(void)revents;
	if (j->phase == HP_SAVE) {
		hook_save(j); /* a retry of a failed store write */
		return;
	}
	if (j->phase == HP_MARK) {
		hook_mark_send(j); /* the same "running" entry again */
		return;
	}
	/* the command exited but something it started holds the pipe: stop reading */
	hook_drain(j);
	hook_close_pipe(j);
	hook_finish(j);
}

static void hook_log(struct hook_job *j, const char *result, int64_t next_in_us)
{
	struct log_kv kv;
	log_kv_init(&kv, "hook");
	log_kv_str(&kv, "id", j->id);
	log_kv_str(&kv, "account", j->e.account);
	log_kv_u64(&kv, "attempt", j->res.attempts);
	if (j->res.exit_code >= 0)
		log_kv_u64(&kv, "exit", (unsigned long long)j->res.exit_code);
	else
		log_kv_str(&kv, "exit", "none");
	log_kv_u64(&kv, "signal", (unsigned long long)j->res.signal);
	log_kv_str(&kv, "timeout", j->res.timed_out ? "yes" : "no");
	log_kv_u64(&kv, "duration_ms", j->res.duration_ms);
	log_kv_u64(&kv, "output_bytes", j->outtotal);
	log_kv_str(&kv, "output", j->res.output);
	log_kv_str(&kv, "result", result);
	if (next_in_us > 0) {
		char in[32];
		verdict_fmt_duration(in, sizeof(in), (uint64_t)next_in_us);
		log_kv_str(&kv, "next_in", in);
	}
	log_kv_emit(&kv, strcmp(result, "done") == 0 ? LOG_L_INFO : LOG_L_WARN);
}

static void hook_finish(struct hook_job *j)
{
	ev_timer_stop(H.loop, &j->tw);
	ev_timer_stop(H.loop, &j->gw);
	hook_close_pipe(j);
	struct flag_hook_result *r = &j->res;
	r->attempts = j->e.last.attempts;
	r->duration_ms = (uint64_t)((ev_time() - j->t0) * 1000.0 + 0.5);
	r->timed_out = j->timed_out;
	r->exit_code = WIFEXITED(j->status) ? WEXITSTATUS(j->status) : -1;
	r->signal = WIFSIGNALED(j->status) ? WTERMSIG(j->status) : 0;
	if (j->pid > 0 || j->outlen > 0) {
		/* the first line of the output */
		size_t n = 0;
		while (n < j->outlen && j->out[n] != '\n')
			n++;
		flag_clean_text(r->output, sizeof(r->output), j->out, n, false);
	}
	j->pid = -1;
	bool ok = r->exit_code == 0 && !r->timed_out;
	int64_t now = hook_now(), next_in = 0;
	if (ok) {
		r->state = FLAG_HOOK_DONE;
		H.st.done++;
	} else if (r->attempts < 1 + H.set.retries) {
		r->state = FLAG_HOOK_PENDING;
		int64_t b = (int64_t)H.set.backoff_us;
		for (unsigned k = 1; k < r->attempts && b < HOOK_BACKOFF_MAX; k++)
			b *= 2;
		next_in = b < HOOK_BACKOFF_MAX ? b : HOOK_BACKOFF_MAX;
		H.st.retried++;
	} else {
		r->state = FLAG_HOOK_FAILED;
		H.st.failed++;
	}
	j->final = r->state != FLAG_HOOK_PENDING;
	j->interrupted = false;
	j->e.state = r->state;
	j->e.last = *r;
	j->e.due_us = now + next_in;
	hook_log(j,
	         r->state == FLAG_HOOK_DONE     ? "done"
	         : r->state == FLAG_HOOK_FAILED ? "failed"
	                                        : "retry",
	         next_in);
	if (j->final && j->evpath[0])
		unlink(j->evpath);
	hook_save(j);
}

static void hook_saved(void *arg, enum store_status st, const struct store_result *res, size_t n)
{
	struct hook_job *j = arg;
	(void)res;
	if (!hook_landed(j))
		return;
	double in = st == STORE_OK ? -1 : hook_durable_retry(j, st, "save");
	if (in >= 0) {
		ev_timer_init(&j->gw, hook_on_grace, in, 0.);
		j->gw.data = j;
		ev_timer_start(H.loop, &j->gw);
		return;
	}
	if (st == STORE_EREPLICA) {
		/* on the master: go on; a failover that loses it finds hooks/ID.state */
		log_err("event=hook_not_replicated id=%s step=save tries=%u error=\"%s\"", j->id,
		        j->wtries, H.store->err);
		st = STORE_OK;
		n = 1;
	}
	if (st != STORE_OK || n != 1 || H.store->be->flush(H.store) < 0) {
		/* keep the result in memory and write it again: a success is not run again
		 * by this process; after a crash it would run with POLICYD_INTERRUPTED=1 */
		log_warn("event=hook_store_error id=%s step=save error=\"%s\" retry_in=%.0fs",
		         j->id, H.store ? H.store->err : "closed", HOOK_STORE_RETRY);
		ev_timer_init(&j->gw, hook_on_grace, HOOK_STORE_RETRY, 0.);
		j->gw.data = j;
		ev_timer_start(H.loop, &j->gw);
		return;
	}
	flag_note_hook(j->e.account, j->id, &j->res);
	if (j->final)
		hook_done_with(j);
	else
		hook_requeue(j, j->e.due_us);
}

static void hook_save(struct hook_job *j)
{
	char err[600];
	if (j->phase != HP_SAVE)
		j->wtries = 0;
	j->phase = HP_SAVE;
	j->wtries++;
	size_t len = hook_entry_encode(&j->e, j->buf, sizeof(j->buf));
	if (len == 0) {
		log_err("event=hook_error id=%s error=\"entry does not fit\"", j->id);
		hook_done_with(j);
		return;
	}
	/* this host's record of the result, before the store's: a store that loses
	 * it (a failover) cannot make the command run again here */
	if (hook_local_write(j, j->buf, len, err, sizeof(err)) < 0)
		log_err("event=hook_local_error id=%s error=\"%s\" (a failover that loses the "
		        "result may run it again)",
		        j->id, err);
	memset(&j->op, 0, sizeof(j->op));
	j->op.kind = STORE_PUT;
	j->op.rule = HOOK_NS;
	j->op.subject = j->id;
	j->op.val = j->buf;
	j->op.vlen = len;
	j->op.ttl_us = j->final ? (uint64_t)HOOK_KEEP_US : 0;
	j->op.durable = true;
	if (hook_batch(j, hook_saved) != 0)
		hook_saved(j, STORE_EINTERNAL, NULL, 0);
}

/* --------------------------------------------------------- start, stop */

struct hook_scan {
	int64_t now;
	unsigned pending, interrupted, foreign;
};

static bool hook_scan_one(void *arg, const char *subject, const struct store_result *res)
{
	struct hook_scan *sc = arg;
	char err[200];
	if (!H.started)
		return false;
	struct hook_entry *e = malloc(sizeof(*e));
	if (e == NULL)
		return false;
	if (hook_entry_decode(res->val, res->vlen, e, err, sizeof(err)) < 0) {
		log_err("event=hook_outbox_bad key=%s error=\"%s\"", subject, err);
		free(e);
		return true;
	}
	bool open = e->state == FLAG_HOOK_PENDING || e->state == FLAG_HOOK_RUNNING;
	if (open && e->owner[0] && strcmp(e->owner, H.owner) != 0) {
		sc->foreign++; /* another daemon's: it runs it */
		log_debug("event=hook_resume_skip id=%s owner=%s", e->id, e->owner);
	} else if (open && flag_raising(e->id)) {
		/* written by a raise still waiting for the replicas: it enqueues it */
		log_debug("event=hook_resume_skip id=%s reason=\"being raised\"", e->id);
	} else if (open && !hook_known(e->id)) {
		bool running = e->state == FLAG_HOOK_RUNNING;
		struct hook_job *j =
		    hook_job_new(e->id, running || e->due_us < sc->now ? sc->now : e->due_us);
		if (j) {
			j->interrupted = running;
			hook_queue_insert(j);
			if (running)
				sc->interrupted++;
			else
				sc->pending++;
		}
	}
	free(e);
	return true;
}

static void hook_scan_done(void *arg, enum store_status st)
{
	struct hook_scan *sc = arg;
	if (st != STORE_OK)
		log_err("event=hook_outbox_scan_failed error=\"%s\"",
		        H.store ? H.store->err : "closed");
	else if (sc->pending || sc->interrupted)
		log_warn("event=hook_resume pending=%u interrupted=%u (queued again)", sc->pending,
		         sc->interrupted);
	if (st == STORE_OK && sc->foreign)
		log_info("event=hook_resume_foreign entries=%u (pending or running for another "
		         "daemon sharing the store: left to it)",
		         sc->foreign);
	free(sc);
	hook_kick();
}

int hook_start(struct ev_loop *loop, struct store *store, const struct flag_config *fc,
               const char *state_dir, char *err, size_t errsz)
{
	memset(&H.st, 0, sizeof(H.st));
	H.loop = loop;
	H.store = store;
	H.queue = H.running = NULL;
	H.nrunning = 0;
	hook_settings_set(fc, state_dir);
	ev_timer_init(&H.kick, hook_on_kick, 0., 0.);
	H.started = true;
	hook_local_sweep();
	if (store->be->list == NULL) {
		log_warn("event=hook_outbox_scan_skipped store=%s reason=\"the store cannot list "
		         "keys: lockout hooks left pending by an earlier run are not resumed\"",
		         store->be->name);
		return 0;
	}
	struct hook_scan *sc = calloc(1, sizeof(*sc));
	if (sc == NULL) {
		snprintf(err, errsz, "out of memory");
		H.started = false;
		return -1;
	}
	sc->now = hook_now();
	if (store->be->list(store, HOOK_NS, NULL, 0, sc->now, hook_scan_one, hook_scan_done, sc) !=
	    0) {
		snprintf(err, errsz, "reading the lockout outbox: %s", store->err);
		free(sc);
		H.started = false;
		return -1;
	}
	return 0;
}

void hook_reload(const struct flag_config *fc, const char *state_dir)
{
	if (!H.started)
		return;
	hook_settings_set(fc, state_dir);
	hook_kick();
}

void hook_stop(void)
{
	if (!H.started)
		return;
	H.started = false;
	ev_timer_stop(H.loop, &H.kick);
	/* running commands: SIGTERM to their groups, up to 2 s, then SIGKILL */
	int left = 0;
	for (struct hook_job *j = H.running; j; j = j->next)
		if (j->phase == HP_RUN && !j->exited && j->pid > 0) {
			if (kill(-j->pid, SIGTERM) < 0)
				(void)kill(j->pid, SIGTERM);
			left++;
		}
	for (int k = 0; left > 0 && k < 200; k++) {
		struct timespec ts = {0, 10 * 1000 * 1000};
		nanosleep(&ts, NULL);
		left = 0;
		for (struct hook_job *j = H.running; j; j = j->next) {
			if (j->phase != HP_RUN || j->exited || j->pid <= 0)
				continue;
			int status;
			pid_t r = waitpid(j->pid, &status, WNOHANG);
			if (r == j->pid || (r < 0 && errno == ECHILD))
				j->exited = true;
			else
				left++;
		}
	}
	while (H.running) {
		struct hook_job *j = H.running;
		H.running = j->next;
		if (j->inflight) {
			j->orphan = true; /* its store callback frees it */
			continue;
		}
		if (j->phase == HP_RUN && !j->exited && j->pid > 0) {
			if (kill(-j->pid, SIGKILL) < 0)
				(void)kill(j->pid, SIGKILL);
			(void)waitpid(j->pid, NULL, 0);
		}
		if (j->phase == HP_RUN || j->phase == HP_SAVE)
			log_warn(
			    "event=hook_abandoned id=%s account=%s (runs again at the next start "
			    "with POLICYD_INTERRUPTED=1)",
			    j->id, j->e.account);
		ev_child_stop(H.loop, &j->cw);
		ev_timer_stop(H.loop, &j->tw);
		ev_timer_stop(H.loop, &j->gw);
		if (j->fd >= 0) {
			ev_io_stop(H.loop, &j->io);
			close(j->fd);
		}
		hook_job_free(j);
	}
	while (H.queue) {
		struct hook_job *j = H.queue;
		H.queue = j->next;
		hook_job_free(j);
	}
	H.nrunning = 0;
	hook_settings_free(&H.set);
}
