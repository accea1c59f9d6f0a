/*
 * policyd/flag.c - owns flagged accounts: raising and clearing flags, their
 * history and escalation, the global pause, the [flags] config section,
 * the "flags" daemon module, and the pipeline checks "pause" and "flag".
 *
 * Entry points: flag.h (flag_raise, flag_clear, flag_list_active,
 * flag_history, flag_pause, flag_paused; flag_init and the checks).
 *
 * Store layout (either backend):
 *   "@flag"  / account  one JSON record: {"v":1, "evidence":"...",
 *                       "history":[{id, raised, expires, cleared, cleared_by,
 *                       reason, source, action, score, actor, hook:{...}}]}
 *                       oldest first; the last entry is the active flag when
 *                       it is neither cleared nor expired.  Times in µs.
 *                       At most `history` entries, fewer when the record
 *                       would pass STORE_MAX_VALUE (oldest dropped first).
 *   "@outbox"/ flag id  the lockout hook's entry (hook.c owns its format).
 *   "@pause" / "global" {"on":bool, "action", "by", "since"}.
 *
 * Changes of flag records are read-modify-write, so they run one at a time
 * (a queue, started from the loop: raising a flag never delays the answer
 * of the request that raised it): two raises for one account never make
 * two flags.  Several
 * daemons sharing one Redis are not serialised against each other.  A new
 * flag and its outbox entry are written in ONE batch and made durable
 * (store flush; with Redis: durable ops, acknowledged once on
 * redis_wait_replicas replicas, else the same batch written again, see
 * flag_put_retry()) before the hook is queued; see hook.c for the rest of
 * the exactly-once protocol.  The pause state is cached here (flag_paused() is
 * synchronous) and re-read every 2 s for daemons sharing a store.
 */
#include "flag.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "chroot.h"
#include "config_section.h"
#include "hook.h"
#include "key.h"
#include "log.h"
#include "metrics.h"
#include "module.h"
#include "pipeline.h"
#include "proto/reply.h"
#include "verdict.h"

#define FLAG_NS        "@flag"
#define FLAG_PAUSE_NS  "@pause"
#define FLAG_PAUSE_KEY "global"
#define FLAG_SEC       ((int64_t)1000000)
#define FLAG_REFRESH_S 2.0
/* durable writes (a new flag and its outbox entry, a clear) not yet on the
 * replicas: written again, with backoff, this many times */
#define FLAG_DURABLE_TRIES 12
#define FLAG_DURABLE_FIRST 0.1 /* s before the first retry, doubling */
#define FLAG_DURABLE_MAX   4.0

#define FLAG_DEFAULT_REPLY                                                                         \
	"Your account has been suspended because of unusual sending activity; please contact "     \
	"support"
#define FLAG_DEFAULT_PAUSE_REPLY                                                                   \
	"Outbound mail is paused by the mail administrators; it will be sent later"

/* ------------------------------------------------------------------ names */

const char *flag_source_name(enum flag_source s)
{
	static const char *const names[] = {"manual", "limit", "anomaly", "ndr", "blocklist"};
	return (unsigned)s < sizeof(names) / sizeof(names[0]) ? names[s] : "manual";
}

static enum flag_source flag_source_parse(const char *s)
{
	for (int i = FLAG_SRC_MANUAL; i <= FLAG_SRC_BLOCKLIST; i++)
		if (s && strcmp(s, flag_source_name((enum flag_source)i)) == 0)
			return (enum flag_source)i;
	return FLAG_SRC_MANUAL;
}

const char *flag_hook_state_name(enum flag_hook_state s)
{
	static const char *const names[] = {"none", "pending", "running", "done", "failed"};
	return (unsigned)s < sizeof(names) / sizeof(names[0]) ? names[s] : "none";
}

static enum flag_hook_state flag_hook_state_parse(const char *s)
{
	for (int i = FLAG_HOOK_NONE; i <= FLAG_HOOK_FAILED; i++)
		if (s && strcmp(s, flag_hook_state_name((enum flag_hook_state)i)) == 0)
			return (enum flag_hook_state)i;
	return FLAG_HOOK_NONE;
}

int flag_action_parse(const char *s, enum verdict_action *a)
{
	if (strcmp(s, "hold") == 0)
		*a = ACT_HOLD;
	else if (strcmp(s, "defer") == 0)
		*a = ACT_DEFER;
	else if (strcmp(s, "reject") == 0)
		*a = ACT_REJECT;
	else
		return -1;
	return 0;
}

size_t flag_clean_text(char *out, size_t outsz, const char *in, size_t n, bool newlines)
{
	size_t o = 0;
	if (outsz == 0)
		return 0;
	for (size_t i = 0; in && i < n && in[i] && o + 1 < outsz;) {
		unsigned char c = (unsigned char)in[i];
		size_t len = c < 0x80             ? 1
		             : (c & 0xe0) == 0xc0 ? 2
		             : (c & 0xf0) == 0xe0 ? 3
		             : (c & 0xf8) == 0xf0 ? 4
		                                  : 0;
		bool ok = len > 0 && i + len <= n;
		for (size_t k = 1; ok && k < len; k++)
			ok = ((unsigned char)in[i + k] & 0xc0) == 0x80;
		if (ok && len >= 2) {
			unsigned char d = (unsigned char)in[i + 1];
			if ((len == 2 && c < 0xc2) || (len == 3 && c == 0xe0 && d < 0xa0) ||
			    (len == 3 && c == 0xed && d >= 0xa0) || (len == 4 && c > 0xf4) ||
			    (len == 4 && c == 0xf0 && d < 0x90) ||
			    (len == 4 && c == 0xf4 && d >= 0x90))
				ok = false;
		}
		if (!ok) {
			out[o++] = '?';
			i++;
			continue;
		}
		if (len == 1 && (c < 0x20 || c == 0x7f) && !(newlines && c == '\n')) {
			out[o++] = c == '\t' ? ' ' : '?';
			i++;
			continue;
		}
		if (o + len >= outsz)
			break;
		memcpy(out + o, in + i, len);
		o += len;
		i += len;
	}
	out[o] = '\0';
	return o;
}

/* ------------------------------------------------------------- [flags] */

static void flag_cfg_defaults(void *blk)
{
	struct flag_config *c = blk;
	c->action = ACT_DEFER;
	c->duration_us = -1;
	c->escalate_after = 2;
	c->escalate_window_us = 30 * 86400 * (uint64_t)FLAG_SEC;
	c->escalate_action = ACT_HOLD;
	c->history = 20;
	c->lockout_timeout_us = 30 * (uint64_t)FLAG_SEC;
	c->lockout_retries = 3;
	c->lockout_backoff_us = 10 * (uint64_t)FLAG_SEC;
	c->lockout_concurrency = 2;
	c->lockout_delay_us = 0;
	c->lockout_output_max = 4096;
}

/* A duration that may be zero ("0", "0s"). */
static int flag_parse_dur0(const char *v, uint64_t *us, char *err, size_t errsz)
{
	if (v[0] == '0' && (v[1] == '\0' || (strchr("smhdw", v[1]) && v[2] == '\0'))) {
		*us = 0;
		return 0;
	}
	return config_parse_duration(v, us, err, errsz);
}

static int flag_parse_num(const char *v, unsigned long min, unsigned long max, unsigned long *out)
{
	char *end;
	if (v[0] < '0' || v[0] > '9')
		return -1;
	errno = 0;
	unsigned long n = strtoul(v, &end, 10);
	if (*end || errno || n < min || n > max)
		return -1;
	*out = n;
	return 0;
}

static int flag_text_ok(const char *v)
{
	size_t n = strlen(v);
	return n > 0 && n <= 300 && proto_utf8_valid(v, n);
}

static int flag_cfg_set(void *blk, const char *name, const char *v, char *err, size_t errsz)
{
	struct flag_config *c = blk;
	char e[200];
	uint64_t us;
	unsigned long n;

	if (!strcmp(name, "action") || !strcmp(name, "escalate_action")) {
		enum verdict_action a;
		if (flag_action_parse(v, &a) < 0) {
			snprintf(err, errsz, "%s: '%s' (hold, defer or reject)", name, v);
			return -1;
		}
		if (name[0] == 'a')
			c->action = a;
		else
			c->escalate_action = a;
	} else if (!strcmp(name, "reply") || !strcmp(name, "pause_reply")) {
		if (!flag_text_ok(v)) {
			snprintf(err, errsz, "%s: must be UTF-8 text of 1 to 300 bytes", name);
			return -1;
		}
		char **dst = name[0] == 'r' ? &c->reply : &c->pause_reply;
		free(*dst);
		*dst = strdup(v);
		if (*dst == NULL) {
			snprintf(err, errsz, "out of memory");
			return -1;
		}
	} else if (!strcmp(name, "dsn")) {
		if (!verdict_dsn_valid(v) || (v[0] != '4' && v[0] != '5')) {
			snprintf(err, errsz, "dsn: '%s' is not an enhanced status code like 4.7.1",
			         v);
			return -1;
		}
		snprintf(c->dsn, sizeof(c->dsn), "%s", v);
	} else if (!strcmp(name, "duration")) {
		if (!strcmp(v, "until_cleared") || !strcmp(v, "until-cleared")) {
			c->duration_us = -1;
		} else if (config_parse_duration(v, &us, e, sizeof(e)) < 0) {
			snprintf(err, errsz, "duration: %s, or until_cleared", e);
			return -1;
		} else {
			c->duration_us = (int64_t)us;
		}
	} else if (!strcmp(name, "escalate_after")) {
		if (flag_parse_num(v, 0, FLAG_HISTORY_MAX, &n) < 0) {
			snprintf(err, errsz, "escalate_after: '%s' (0 .. %d; 0: never)", v,
			         FLAG_HISTORY_MAX);
			return -1;
		}
		c->escalate_after = (unsigned)n;
	} else if (!strcmp(name, "escalate_window")) {
		if (config_parse_duration(v, &us, e, sizeof(e)) < 0) {
			snprintf(err, errsz, "escalate_window: %s", e);
			return -1;
		}
		c->escalate_window_us = us;
	} else if (!strcmp(name, "history")) {
		if (flag_parse_num(v, 1, FLAG_HISTORY_MAX, &n) < 0) {
			snprintf(err, errsz, "history: '%s' (1 .. %d)", v, FLAG_HISTORY_MAX);
			return -1;
		}
		c->history = (unsigned)n;
	} else if (!strcmp(name, "lockout_command")) {
		free(c->lockout_command);
		c->lockout_command = strdup(v);
		if (c->lockout_command == NULL) {
			snprintf(err, errsz, "out of memory");
			return -1;
		}
	} else if (!strcmp(name, "lockout_args")) {
		char *argv[64], buf[1024];
		if (hook_split_args(v, argv, 63, buf, sizeof(buf), e, sizeof(e)) < 0) {
			snprintf(err, errsz, "lockout_args: %s", e);
			return -1;
		}
		free(c->lockout_args);
		c->lockout_args = strdup(v);
		if (c->lockout_args == NULL) {
			snprintf(err, errsz, "out of memory");
			return -1;
		}
	} else if (!strcmp(name, "lockout_timeout")) {
		if (config_parse_duration(v, &us, e, sizeof(e)) < 0) {
			snprintf(err, errsz, "lockout_timeout: %s", e);
			return -1;
		}
		c->lockout_timeout_us = us;
	} else if (!strcmp(name, "lockout_retries")) {
		if (flag_parse_num(v, 0, 100, &n) < 0) {
			snprintf(err, errsz, "lockout_retries: '%s' (0 .. 100)", v);
			return -1;
		}
		c->lockout_retries = (unsigned)n;
	} else if (!strcmp(name, "lockout_backoff") || !strcmp(name, "lockout_delay")) {
		if (flag_parse_dur0(v, &us, e, sizeof(e)) < 0) {
			snprintf(err, errsz, "%s: %s", name, e);
			return -1;
		}
		if (!strcmp(name, "lockout_backoff"))
			c->lockout_backoff_us = us;
		else
			c->lockout_delay_us = us;
	} else if (!strcmp(name, "lockout_concurrency")) {
		if (flag_parse_num(v, 1, 64, &n) < 0) {
			snprintf(err, errsz, "lockout_concurrency: '%s' (1 .. 64)", v);
			return -1;
		}
		c->lockout_concurrency = (unsigned)n;
	} else if (!strcmp(name, "lockout_output_max")) {
		if (flag_parse_num(v, 64, 1024 * 1024, &n) < 0) {
			snprintf(err, errsz, "lockout_output_max: '%s' (64 .. 1048576 bytes)", v);
			return -1;
		}
		c->lockout_output_max = (size_t)n;
	} else {
		snprintf(err, errsz, "unknown parameter '%s'", name);
		return -1;
	}
	return 0;
}

static int flag_cfg_check(void *blk, const struct config *cfg, char *err, size_t errsz)
{
	struct flag_config *c = blk;
	if (c->lockout_args && !c->lockout_command) {
		snprintf(err, errsz, "lockout_args without lockout_command");
		return -1;
	}
	if (c->lockout_command) {
		struct stat st;
		if (c->lockout_command[0] != '/') {
			snprintf(err, errsz, "lockout_command: '%s' is not an absolute path",
			         c->lockout_command);
			return -1;
		}
		if (chroot_check_path(cfg, "lockout_command", c->lockout_command, err, errsz) < 0)
			return -1;
		const char *cmd = chroot_path(c->lockout_command); /* on a reload, chrooted */
		if (stat(cmd, &st) < 0) {
			snprintf(err, errsz, "lockout_command: %s: %s", c->lockout_command,
			         strerror(errno));
			return -1;
		}
		if (!S_ISREG(st.st_mode) || access(cmd, X_OK) < 0) {
			snprintf(err, errsz, "lockout_command: %s: not an executable file",
			         c->lockout_command);
			return -1;
		}
	}
	return 0;
}

static void flag_cfg_free(void *blk)
{
	struct flag_config *c = blk;
	free(c->reply);
	free(c->pause_reply);
	free(c->lockout_command);
	free(c->lockout_args);
}

const struct config_section flag_config_section = {
    .name = "flags",
    .size = sizeof(struct flag_config),
    .defaults = flag_cfg_defaults,
    .set = flag_cfg_set,
    .check = flag_cfg_check,
    .free = flag_cfg_free,
};

const struct flag_config *flag_config(const struct config *c)
{
	static struct flag_config dflt;
	static bool init;
	const struct flag_config *fc = c ? config_section_get(c, &flag_config_section) : NULL;
	if (fc)
		return fc;
	if (!init) {
		flag_cfg_defaults(&dflt);
		init = true;
	}
	return &dflt;
}

/* ------------------------------------------------------------- records */

static void flag_copy(char *out, size_t outsz, const char *in)
{
	flag_clean_text(out, outsz, in, in ? strlen(in) : 0, false);
}

static const char *flag_jstr(json_t *o, const char *key)
{
	const char *s = json_string_value(json_object_get(o, key));
	return s ? s : "";
}

static int64_t flag_jint(json_t *o, const char *key)
{
	json_t *v = json_object_get(o, key);
	return json_is_integer(v) ? (int64_t)json_integer_value(v) : 0;
}

static void flag_decode_hook(json_t *h, struct flag_hook_result *r)
{
	memset(r, 0, sizeof(*r));
	r->exit_code = -1;
	if (!json_is_object(h))
		return;
	r->state = flag_hook_state_parse(flag_jstr(h, "state"));
	r->attempts = (unsigned)flag_jint(h, "attempts");
	json_t *ex = json_object_get(h, "exit");
	r->exit_code = json_is_integer(ex) ? (int)json_integer_value(ex) : -1;
	r->signal = (int)flag_jint(h, "signal");
	r->timed_out = json_is_true(json_object_get(h, "timeout"));
	r->duration_ms = (uint64_t)flag_jint(h, "ms");
	flag_copy(r->output, sizeof(r->output), flag_jstr(h, "output"));
}

int flag_record_decode(const void *val, size_t vlen, struct flag_record *r, char *err, size_t errsz)
{
	json_error_t je;
	memset(r, 0, sizeof(*r));
	json_t *root = json_loadb(val, vlen, 0, &je);
	if (root == NULL) {
		snprintf(err, errsz, "bad flag record: %s (offset %d)", je.text, je.position);
		return -1;
	}
	json_t *hist = json_object_get(root, "history");
	if (!json_is_object(root) || !json_is_array(hist)) {
		snprintf(err, errsz, "bad flag record: no history");
		json_decref(root);
		return -1;
	}
	size_t n = json_array_size(hist);
	size_t skip = n > FLAG_HISTORY_MAX ? n - FLAG_HISTORY_MAX : 0;
	for (size_t i = skip; i < n; i++) {
		json_t *o = json_array_get(hist, i);
		if (!json_is_object(o))
			continue;
		struct flag_entry *e = &r->hist[r->nhist++];
		flag_copy(e->id, sizeof(e->id), flag_jstr(o, "id"));
		e->raised_us = flag_jint(o, "raised");
		e->expires_us = flag_jint(o, "expires");
		e->cleared_us = flag_jint(o, "cleared");
		flag_copy(e->cleared_by, sizeof(e->cleared_by), flag_jstr(o, "cleared_by"));
		flag_copy(e->reason, sizeof(e->reason), flag_jstr(o, "reason"));
		e->source = flag_source_parse(flag_jstr(o, "source"));
		if (flag_action_parse(flag_jstr(o, "action"), &e->action) < 0)
			e->action = ACT_DEFER;
		e->score = (unsigned)flag_jint(o, "score");
		flag_copy(e->actor, sizeof(e->actor), flag_jstr(o, "actor"));
		flag_decode_hook(json_object_get(o, "hook"), &e->hook);
	}
	const char *ev = flag_jstr(root, "evidence");
	flag_clean_text(r->evidence, sizeof(r->evidence), ev, strlen(ev), true);
	json_decref(root);
	return 0;
}

/* A JSON string of any text (cleaned: jansson takes valid UTF-8 only). */
static json_t *flag_jstring(const char *s)
{
	char buf[FLAG_EVIDENCE_MAX];
	flag_clean_text(buf, sizeof(buf), s, strlen(s), true);
	return json_string(buf);
}

static json_t *flag_json_hook(const struct flag_hook_result *h, bool api)
{
	json_t *o = json_object();
	json_object_set_new(o, "state", json_string(flag_hook_state_name(h->state)));
	json_object_set_new(o, "attempts", json_integer(h->attempts));
	if (h->attempts > 0 && h->state != FLAG_HOOK_RUNNING) {
		json_object_set_new(o, "exit",
		                    h->exit_code >= 0 ? json_integer(h->exit_code) : json_null());
		if (h->signal || api)
			json_object_set_new(o, "signal", json_integer(h->signal));
		if (h->timed_out || api)
			json_object_set_new(o, "timeout", json_boolean(h->timed_out));
		json_object_set_new(o, api ? "duration_ms" : "ms",
		                    json_integer((json_int_t)h->duration_ms));
		json_object_set_new(o, "output", flag_jstring(h->output));
	}
	return o;
}

/* One history entry for the store (µs) or the API (seconds, null for none). */
static json_t *flag_json_entry(const struct flag_entry *e, bool api)
{
	json_t *o = json_object();
	json_object_set_new(o, "id", flag_jstring(e->id));
	if (api) {
		json_object_set_new(o, "raised", json_integer(e->raised_us / FLAG_SEC));
		json_object_set_new(o, "expires",
		                    e->expires_us ? json_integer(e->expires_us / FLAG_SEC)
		                                  : json_null());
		json_object_set_new(o, "cleared",
		                    e->cleared_us ? json_integer(e->cleared_us / FLAG_SEC)
		                                  : json_null());
		json_object_set_new(o, "cleared_by",
		                    e->cleared_by[0] ? flag_jstring(e->cleared_by) : json_null());
	} else {
		json_object_set_new(o, "raised", json_integer(e->raised_us));
		if (e->expires_us)
			json_object_set_new(o, "expires", json_integer(e->expires_us));
		if (e->cleared_us)
			json_object_set_new(o, "cleared", json_integer(e->cleared_us));
		if (e->cleared_by[0])
			json_object_set_new(o, "cleared_by", flag_jstring(e->cleared_by));
	}
	json_object_set_new(o, "reason", flag_jstring(e->reason));
	json_object_set_new(o, "source", json_string(flag_source_name(e->source)));
	json_object_set_new(o, "action", json_string(config_action_name(e->action)));
	if (e->score || api)
		json_object_set_new(o, "score", json_integer(e->score));
	if (e->actor[0] || api)
		json_object_set_new(o, "actor", flag_jstring(e->actor));
	if (e->hook.state != FLAG_HOOK_NONE)
		json_object_set_new(o, "hook", flag_json_hook(&e->hook, api));
	else if (api)
		json_object_set_new(o, "hook", json_null());
	return o;
}

size_t flag_record_encode(const struct flag_record *r, unsigned keep, char *out, size_t outsz)
{
	size_t n = r->nhist < keep ? r->nhist : keep;
	size_t evlen = strlen(r->evidence);
	if (n == 0 && r->nhist > 0)
		n = 1; /* the newest always stays */
	for (;;) {
		json_t *root = json_object();
		json_t *hist = json_array();
		json_object_set_new(root, "v", json_integer(1));
		if (evlen) {
			char ev[FLAG_EVIDENCE_MAX];
			flag_clean_text(ev, sizeof(ev), r->evidence, evlen, true);
			json_object_set_new(root, "evidence", json_string(ev));
		}
		for (size_t i = r->nhist - n; i < r->nhist; i++)
			json_array_append_new(hist, flag_json_entry(&r->hist[i], false));
		json_object_set_new(root, "history", hist);
		size_t len = json_dumpb(root, out, outsz, JSON_COMPACT);
		json_decref(root);
		if (len > 0 && len <= outsz)
			return len;
		if (n > 1)
			n--;
		else if (evlen > 0)
			evlen /= 2;
		else
			return 0;
	}
}

const struct flag_entry *flag_record_active(const struct flag_record *r, int64_t now)
{
	if (r->nhist == 0)
		return NULL;
	const struct flag_entry *e = &r->hist[r->nhist - 1];
	if (e->cleared_us || (e->expires_us && e->expires_us <= now))
		return NULL;
	return e;
}

unsigned flag_record_recent(const struct flag_record *r, int64_t now, uint64_t window_us)
{
	unsigned n = 0;
	for (size_t i = 0; i < r->nhist; i++)
		if (r->hist[i].raised_us > now - (int64_t)window_us && r->hist[i].raised_us <= now)
			n++;
	return n;
}

enum verdict_action flag_new_action(const struct flag_config *fc, const struct flag_record *r,
                                    int64_t now)
{
	if (fc->escalate_after == 0)
		return fc->action;
	unsigned before = flag_record_recent(r, now, fc->escalate_window_us);
	return before + 1 >= fc->escalate_after ? fc->escalate_action : fc->action;
}

/* -------------------------------------------------------------- module */

enum flag_op_kind { FOP_RAISE = 0, FOP_CLEAR, FOP_HOOK };

struct flag_op {
	enum flag_op_kind kind;
	struct flag_op *next;
	char account[FLAG_ACCOUNT_MAX];
	char by[FLAG_ACTOR_MAX];
	char reason[FLAG_REASON_MAX];
	char evidence[FLAG_EVIDENCE_MAX];
	char id[FLAG_ID_MAX]; /* FOP_HOOK: which flag; then the result id */
	enum flag_source source;
	unsigned score;
	int64_t duration_us;
	struct flag_hook_result hook;
	flag_cb *cb;
	void *arg;
	/* while it runs */
	struct flag_record *rec;
	struct store_op ops[2];
	size_t nops;
	char buf[STORE_MAX_VALUE];
	char obuf[STORE_MAX_VALUE];
	bool created;
	int64_t due_us;
	enum verdict_action action;
	unsigned recent;
	unsigned tries; /* writes of ops[] sent (durable retries) */
};

static struct {
	bool started;
	struct module_ctx *m;
	struct ev_loop *loop;
	struct store *store;
	struct flag_op *head, *tail;
	bool busy, pumping;
	/* pause, as last read or written */
	bool paused;
	enum verdict_action pause_action;
	char pause_by[FLAG_ACTOR_MAX];
	int64_t pause_since;
	bool refreshing;
	ev_timer refresh;
	ev_timer kick;  /* runs queued ops from the loop, not inside a request */
	ev_timer retry; /* the op at the head writes its ops[] again (durable) */
	unsigned long long raised, cleared;
} F;

static int64_t flag_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * FLAG_SEC + ts.tv_nsec / 1000;
}

static const struct flag_config *flag_cfg(void)
{
	return flag_config(F.m ? F.m->cfg : NULL);
}

/* Accounts as the pipeline writes principals: an address, else a login. */
static void flag_norm_account(char *out, size_t outsz, const char *in)
{
	const struct config *c = F.m ? F.m->cfg : NULL;
	if (key_norm_ip(out, outsz, in) > 0)
		return;
	if (key_norm_login(out, outsz, in, c ? c->keyopts.fold_localpart : true) == 0)
		out[0] = '\0';
}

/* "20250101-120000-3fa2c1d9": time of the flag and 32 random bits. */
static void flag_new_id(char *out, size_t outsz, int64_t now)
{
	uint32_t rnd = 0;
	if (getrandom(&rnd, sizeof(rnd), GRND_NONBLOCK) != (ssize_t)sizeof(rnd))
		rnd = (uint32_t)(now ^ (now >> 32) ^ (int64_t)getpid() * 2654435761u);
	time_t t = (time_t)(now / FLAG_SEC);
	struct tm tm;
	gmtime_r(&t, &tm);
	char ts[16];
	if (strftime(ts, sizeof(ts), "%Y%m%d-%H%M%S", &tm) == 0)
		snprintf(ts, sizeof(ts), "0");
	snprintf(out, outsz, "%s-%08" PRIx32, ts, rnd);
}

static void flag_pump(void);

static void flag_op_free(struct flag_op *op)
{
	free(op->rec);
	free(op);
}

/* The op at the head finished: report, then start the next one. */
static void flag_op_done(struct flag_op *op, int rc, const char *msg)
{
	F.head = op->next;
	if (F.head == NULL)
		F.tail = NULL;
	F.busy = false;
	if (op->cb)
		op->cb(op->arg, rc, msg);
	flag_op_free(op);
	if (!F.pumping)
		flag_pump();
}

static void flag_store_fail(struct flag_op *op, enum store_status st)
{
	char msg[320];
	snprintf(msg, sizeof(msg), "store: %s",
	         st == STORE_EUNAVAIL ? "unavailable"
	         : F.store            ? F.store->err
	                              : "not open");
	flag_op_done(op, -1, msg);
}

static void flag_got(void *arg, enum store_status st, const struct store_result *res, size_t n);

static void flag_op_start(struct flag_op *op)
{
	op->rec = calloc(1, sizeof(*op->rec));
	if (op->rec == NULL) {
		flag_op_done(op, -1, "out of memory");
		return;
	}
	memset(&op->ops[0], 0, sizeof(op->ops[0]));
	op->ops[0].kind = STORE_GET;
	op->ops[0].rule = FLAG_NS;
	op->ops[0].subject = op->account;
	if (store_batch(F.store, op->ops, 1, flag_now(), flag_got, op) != 0)
		flag_store_fail(op, STORE_EINTERNAL);
}

static void flag_pump(void)
{
	F.pumping = true;
	while (!F.busy && F.head) {
		F.busy = true;
		flag_op_start(F.head);
	}
	F.pumping = false;
}

static void flag_enqueue(struct flag_op *op)
{
	if (!F.started || F.store == NULL) {
		if (op->cb)
			op->cb(op->arg, -1, "the flags module is not running");
		flag_op_free(op);
		return;
	}
	op->next = NULL;
	if (F.tail)
		F.tail->next = op;
	else
		F.head = op;
	F.tail = op;
	/* from the loop: a flag raised while a request is answered (its store batch,
	 * the flush) does not delay that answer */
	if (!ev_is_active(&F.kick))
		ev_timer_start(F.loop, &F.kick);
}

static void flag_on_kick(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)w;
	(void)revents;
	if (!F.pumping)
		flag_pump();
}

static void flag_put_done(void *arg, enum store_status st, const struct store_result *res,
                          size_t n);
static void flag_put_send(struct flag_op *op);

static void flag_put_send(struct flag_op *op)
{
	op->tries++;
	if (store_batch(F.store, op->ops, op->nops, flag_now(), flag_put_done, op) != 0)
		flag_store_fail(op, STORE_EINTERNAL);
}

static void flag_on_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)w;
	(void)revents;
	if (F.busy && F.head && F.store)
		flag_put_send(F.head);
}

/*
 * A durable write came back STORE_EREPLICA (on the master, not known to be
 * on a replica) or STORE_EUNAVAIL (maybe applied, maybe not): write the
 * same values again (same flag id: never a second flag) after a backoff.
 * After FLAG_DURABLE_TRIES, one last plain write: the flag must not be
 * lost to a Redis that has no replica left, but a failover may lose it.
 * true when a retry is scheduled.
 */
static bool flag_put_retry(struct flag_op *op, enum store_status st)
{
	if (!op->ops[0].durable || (st != STORE_EREPLICA && st != STORE_EUNAVAIL))
		return false;
	if (op->tries >= FLAG_DURABLE_TRIES) {
		log_err("event=flag_not_replicated account=%s id=%s tries=%u error=\"%s\" "
		        "(written without waiting for replicas: a failover now may lose it)",
		        op->account, op->id, op->tries,
		        st == STORE_EUNAVAIL ? "unavailable" : F.store->err);
		for (size_t i = 0; i < op->nops; i++)
			op->ops[i].durable = false;
		ev_timer_set(&F.retry, 0., 0.);
		ev_timer_start(F.loop, &F.retry);
		return true;
	}
	double in = FLAG_DURABLE_FIRST;
	for (unsigned k = 1; k < op->tries && in < FLAG_DURABLE_MAX; k++)
		in *= 2;
	if (in > FLAG_DURABLE_MAX)
		in = FLAG_DURABLE_MAX;
	log_warn("event=flag_write_again account=%s id=%s try=%u in=%.1fs error=\"%s\"",
	         op->account, op->id, op->tries + 1, in,
	         st == STORE_EUNAVAIL ? "unavailable" : F.store->err);
	ev_timer_set(&F.retry, in, 0.);
	ev_timer_start(F.loop, &F.retry);
	return true;
}

/* Write op->buf (and op->obuf) and finish in flag_put_done(). */
static void flag_put(struct flag_op *op, size_t len, size_t olen)
{
	memset(op->ops, 0, sizeof(op->ops));
	op->ops[0].kind = STORE_PUT;
	op->ops[0].rule = FLAG_NS;
	op->ops[0].subject = op->account;
	op->ops[0].val = op->buf;
	op->ops[0].vlen = len;
	op->nops = 1;
	if (olen) {
		op->ops[1].kind = STORE_PUT;
		op->ops[1].rule = HOOK_NS;
		op->ops[1].subject = op->id;
		op->ops[1].val = op->obuf;
		op->ops[1].vlen = olen;
		op->nops = 2;
	}
	/* a new flag (and its outbox entry) and a clear must survive a failover:
	 * acknowledged only once on the replicas (store_redis: WAIT) */
	bool durable = op->kind == FOP_CLEAR || (op->kind == FOP_RAISE && op->created);
	for (size_t i = 0; i < op->nops; i++)
		op->ops[i].durable = durable;
	op->tries = 0;
	flag_put_send(op);
}

/* Append evidence lines to the record's, bounded. */
static void flag_add_evidence(struct flag_record *r, const char *ev)
{
	size_t have = strlen(r->evidence), add = strlen(ev);
	if (add == 0)
		return;
	if (have && have + 1 < sizeof(r->evidence))
		r->evidence[have++] = '\n';
	if (have + add >= sizeof(r->evidence)) {
		static const char cut[] = "\n[evidence cut]";
		if (have + sizeof(cut) <= sizeof(r->evidence))
			memcpy(r->evidence + have, cut, sizeof(cut));
		return;
	}
	memcpy(r->evidence + have, ev, add + 1);
}

static void flag_raise_got(struct flag_op *op)
{
	const struct flag_config *fc = flag_cfg();
	int64_t now = flag_now();
	struct flag_record *r = op->rec;
	const struct flag_entry *act = flag_record_active(r, now);
	if (act) {
		/* already flagged: the evidence joins it */
		snprintf(op->id, sizeof(op->id), "%s", act->id);
		op->created = false;
		if (op->evidence[0] == '\0') {
			flag_op_done(op, 0, op->id);
			return;
		}
		flag_add_evidence(r, op->evidence);
		size_t len = flag_record_encode(r, fc->history, op->buf, sizeof(op->buf));
		if (len == 0) {
			flag_op_done(op, -1, "flag record does not fit");
			return;
		}
		flag_put(op, len, 0);
		return;
	}
	/* an expired flag becomes history */
	if (r->nhist > 0 && r->hist[r->nhist - 1].cleared_us == 0) {
		struct flag_entry *last = &r->hist[r->nhist - 1];
		last->cleared_us = last->expires_us;
		snprintf(last->cleared_by, sizeof(last->cleared_by), "expired");
	}
	op->action = flag_new_action(fc, r, now);
	op->recent = flag_record_recent(r, now, fc->escalate_window_us) + 1;
	if (r->nhist == FLAG_HISTORY_MAX) {
		memmove(r->hist, r->hist + 1, (FLAG_HISTORY_MAX - 1) * sizeof(r->hist[0]));
		r->nhist--;
	}
	struct flag_entry *e = &r->hist[r->nhist++];
	memset(e, 0, sizeof(*e));
	flag_new_id(e->id, sizeof(e->id), now);
	snprintf(op->id, sizeof(op->id), "%s", e->id);
	e->raised_us = now;
	int64_t dur = op->duration_us ? op->duration_us : fc->duration_us;
	e->expires_us = dur < 0 ? 0 : now + dur;
	snprintf(e->reason, sizeof(e->reason), "%s", op->reason);
	e->source = op->source;
	e->action = op->action;
	e->score = op->score;
	snprintf(e->actor, sizeof(e->actor), "%s", op->by);
	e->hook.state = hook_enabled() ? FLAG_HOOK_PENDING : FLAG_HOOK_NONE;
	e->hook.exit_code = -1;
	snprintf(r->evidence, sizeof(r->evidence), "%s", op->evidence);
	op->created = true;

	size_t len = flag_record_encode(r, fc->history, op->buf, sizeof(op->buf));
	size_t olen = 0;
	if (len == 0) {
		flag_op_done(op, -1, "flag record does not fit");
		return;
	}
	if (e->hook.state == FLAG_HOOK_PENDING) {
		struct hook_entry *h = calloc(1, sizeof(*h));
		if (h == NULL) {
			flag_op_done(op, -1, "out of memory");
			return;
		}
		snprintf(h->id, sizeof(h->id), "%s", e->id);
		snprintf(h->account, sizeof(h->account), "%s", op->account);
		snprintf(h->reason, sizeof(h->reason), "%s", e->reason);
		snprintf(h->evidence, sizeof(h->evidence), "%s", op->evidence);
		h->source = e->source;
		h->action = e->action;
		h->score = e->score;
		h->raised_us = now;
		h->due_us = now + (int64_t)fc->lockout_delay_us;
		h->state = FLAG_HOOK_PENDING;
		h->last.exit_code = -1;
		snprintf(h->owner, sizeof(h->owner), "%s", hook_owner());
		op->due_us = h->due_us;
		olen = hook_entry_encode(h, op->obuf, sizeof(op->obuf));
		free(h);
		if (olen == 0) {
			flag_op_done(op, -1, "outbox entry does not fit");
			return;
		}
	}
	flag_put(op, len, olen);
}

static void flag_clear_got(struct flag_op *op)
{
	int64_t now = flag_now();
	struct flag_record *r = op->rec;
	const struct flag_entry *act = flag_record_active(r, now);
	char msg[FLAG_ACCOUNT_MAX + 64];
	if (act == NULL) {
		bool expired = r->nhist > 0 && r->hist[r->nhist - 1].cleared_us == 0;
		snprintf(msg, sizeof(msg), "%s is not flagged%s", op->account,
		         expired ? " (its flag expired)" : "");
		flag_op_done(op, -1, msg);
		return;
	}
	struct flag_entry *e = &r->hist[r->nhist - 1];
	e->cleared_us = now;
	snprintf(e->cleared_by, sizeof(e->cleared_by), "%s", op->by);
	snprintf(op->id, sizeof(op->id), "%s", e->id);
	size_t len = flag_record_encode(r, flag_cfg()->history, op->buf, sizeof(op->buf));
	if (len == 0) {
		flag_op_done(op, -1, "flag record does not fit");
		return;
	}
	flag_put(op, len, 0);
}

static void flag_hook_got(struct flag_op *op)
{
	struct flag_record *r = op->rec;
	for (size_t i = r->nhist; i-- > 0;) {
		if (strcmp(r->hist[i].id, op->id) != 0)
			continue;
		r->hist[i].hook = op->hook;
		size_t len = flag_record_encode(r, flag_cfg()->history, op->buf, sizeof(op->buf));
		if (len == 0)
			break;
		flag_put(op, len, 0);
		return;
	}
	flag_op_done(op, 0, op->id); /* gone from the history: nothing to note */
}

static void flag_got(void *arg, enum store_status st, const struct store_result *res, size_t n)
{
	struct flag_op *op = arg;
	char err[200];
	if (st != STORE_OK || n != 1) {
		flag_store_fail(op, st == STORE_OK ? STORE_EINTERNAL : st);
		return;
	}
	if (res[0].found &&
	    flag_record_decode(res[0].val, res[0].vlen, op->rec, err, sizeof(err)) < 0) {
		/* a damaged record must not stop flagging: start a new one */
		log_warn("event=flag_record_bad account=%s error=\"%s\" (replaced)", op->account,
		         err);
		memset(op->rec, 0, sizeof(*op->rec));
	}
	switch (op->kind) {
	case FOP_RAISE:
		flag_raise_got(op);
		break;
	case FOP_CLEAR:
		flag_clear_got(op);
		break;
	case FOP_HOOK:
		flag_hook_got(op);
		break;
	}
}

static void flag_log_raise(struct flag_op *op)
{
	const struct flag_entry *e = &op->rec->hist[op->rec->nhist - 1];
	const struct flag_config *fc = flag_cfg();
	struct log_kv kv;
	char exp[32] = "until_cleared";
	if (e->expires_us) {
		verdict_fmt_duration(exp, sizeof(exp), (uint64_t)(e->expires_us - e->raised_us));
	}
	log_kv_init(&kv, "flag");
	log_kv_str(&kv, "account", op->account);
	log_kv_str(&kv, "id", e->id);
	log_kv_str(&kv, "source", flag_source_name(e->source));
	log_kv_str(&kv, "action", config_action_name(e->action));
	log_kv_str(&kv, "escalated",
	           fc->escalate_after && op->recent >= fc->escalate_after ? "yes" : "no");
	log_kv_u64(&kv, "flags_in_window", op->recent);
	log_kv_str(&kv, "expires", exp);
	if (e->score)
		log_kv_u64(&kv, "score", e->score);
	log_kv_str(&kv, "by", e->actor);
	log_kv_str(&kv, "hook", flag_hook_state_name(e->hook.state));
	log_kv_str(&kv, "reason", e->reason);
	log_kv_emit(&kv, LOG_L_WARN);
}

static void flag_put_done(void *arg, enum store_status st, const struct store_result *res, size_t n)
{
	struct flag_op *op = arg;
	(void)res;
	if (F.started && F.store && flag_put_retry(op, st))
		return;
	if (st != STORE_OK || n != op->nops) {
		flag_store_fail(op, st == STORE_OK ? STORE_EINTERNAL : st);
		return;
	}
	if (op->kind == FOP_HOOK) {
		flag_op_done(op, 0, op->id);
		return;
	}
	/* a flag or a clear is acknowledged only once it is durable */
	if (F.store && F.store->be->flush(F.store) < 0)
		log_err("event=flag_not_durable account=%s id=%s error=\"%s\"", op->account, op->id,
		        F.store->err);
	if (op->kind == FOP_CLEAR) {
		F.cleared++;
		log_info("event=flag_clear account=%s id=%s by=%s", op->account, op->id, op->by);
	} else if (op->created) {
		F.raised++;
		flag_log_raise(op);
		if (op->nops == 2)
			hook_enqueue(op->id, op->due_us);
	} else {
		log_info("event=flag_evidence account=%s id=%s (already flagged)", op->account,
		         op->id);
	}
	flag_op_done(op, 0, op->id);
}

static struct flag_op *flag_op_new(enum flag_op_kind kind, const char *account, flag_cb *cb,
                                   void *arg)
{
	struct flag_op *op = calloc(1, sizeof(*op));
	if (op == NULL) {
		if (cb)
			cb(arg, -1, "out of memory");
		return NULL;
	}
	op->kind = kind;
	op->cb = cb;
	op->arg = arg;
	flag_norm_account(op->account, sizeof(op->account), account ? account : "");
	if (op->account[0] == '\0') {
		if (cb)
			cb(arg, -1, "no account given");
		free(op);
		return NULL;
	}
	return op;
}

void flag_raise(const struct flag_request *r, flag_cb *cb, void *arg)
{
	struct flag_op *op = flag_op_new(FOP_RAISE, r->account, cb, arg);
	if (op == NULL)
		return;
	op->source = r->source;
	op->score = r->score > 100 ? 100 : r->score;
	op->duration_us = r->duration_us;
	flag_copy(op->reason, sizeof(op->reason),
	          r->reason && r->reason[0] ? r->reason : "flagged");
	flag_copy(op->by, sizeof(op->by), r->actor && r->actor[0] ? r->actor : "policyd");
	if (r->evidence)
		flag_clean_text(op->evidence, sizeof(op->evidence), r->evidence,
		                strlen(r->evidence), true);
	flag_enqueue(op);
}

void flag_clear(const char *account, const char *by, flag_cb *cb, void *arg)
{
	struct flag_op *op = flag_op_new(FOP_CLEAR, account, cb, arg);
	if (op == NULL)
		return;
	flag_copy(op->by, sizeof(op->by), by && by[0] ? by : "admin");
	flag_enqueue(op);
}

static void flag_note_done(void *arg, int rc, const char *msg)
{
	(void)arg;
	if (rc < 0)
		log_warn("event=flag_hook_note_failed error=\"%s\"", msg);
}

bool flag_raising(const char *id)
{
	const struct flag_op *op = F.busy ? F.head : NULL;
	return op && op->kind == FOP_RAISE && op->created && strcmp(op->id, id) == 0;
}

void flag_note_hook(const char *account, const char *id, const struct flag_hook_result *h)
{
	struct flag_op *op = flag_op_new(FOP_HOOK, account, flag_note_done, NULL);
	if (op == NULL)
		return;
	snprintf(op->id, sizeof(op->id), "%s", id);
	op->hook = *h;
	flag_enqueue(op);
}

/* ---------------------------------------------------------------- JSON */

static json_t *flag_json_active(const char *account, const struct flag_record *r,
                                const struct flag_entry *e, bool evidence)
{
	json_t *o = flag_json_entry(e, true);
	char acc[FLAG_ACCOUNT_MAX];
	flag_copy(acc, sizeof(acc), account);
	json_object_set_new(o, "account", json_string(acc));
	json_object_del(o, "cleared");
	json_object_del(o, "cleared_by");
	if (evidence)
		json_object_set_new(o, "evidence", json_string(r->evidence));
	return o;
}

static void flag_json_reply(flag_json_cb *cb, void *arg, int rc, const char *msg, json_t *j)
{
	char *s = j ? json_dumps(j, JSON_COMPACT) : strdup(msg ? msg : "out of memory");
	if (j)
		json_decref(j);
	cb(arg, s ? rc : -1, s);
}

struct flag_lister {
	flag_json_cb *cb;
	void *arg;
	json_t *arr;
	struct flag_record rec;
	int64_t now;
};

static bool flag_list_one(void *arg, const char *subject, const struct store_result *res)
{
	struct flag_lister *L = arg;
	char err[200];
	if (flag_record_decode(res->val, res->vlen, &L->rec, err, sizeof(err)) < 0)
		return true;
	const struct flag_entry *e = flag_record_active(&L->rec, L->now);
	if (e)
		json_array_append_new(L->arr, flag_json_active(subject, &L->rec, e, false));
	return true;
}

static void flag_list_done(void *arg, enum store_status st)
{
	struct flag_lister *L = arg;
	if (st != STORE_OK) {
		char msg[320];
		snprintf(msg, sizeof(msg), "store: %s", F.store ? F.store->err : "closed");
		json_decref(L->arr);
		flag_json_reply(L->cb, L->arg, -1, msg, NULL);
	} else {
		flag_json_reply(L->cb, L->arg, 0, NULL, L->arr);
	}
	free(L);
}

void flag_list_active(flag_json_cb *cb, void *arg)
{
	if (!F.started || F.store == NULL) {
		flag_json_reply(cb, arg, -1, "the flags module is not running", NULL);
		return;
	}
	if (F.store->be->list == NULL) {
		flag_json_reply(cb, arg, -1, "the store backend cannot list keys", NULL);
		return;
	}
	struct flag_lister *L = calloc(1, sizeof(*L));
	if (L == NULL || (L->arr = json_array()) == NULL) {
		free(L);
		flag_json_reply(cb, arg, -1, "out of memory", NULL);
		return;
	}
	L->cb = cb;
	L->arg = arg;
	L->now = flag_now();
	if (F.store->be->list(F.store, FLAG_NS, NULL, 0, L->now, flag_list_one, flag_list_done,
	                      L) != 0) {
		json_decref(L->arr);
		free(L);
		flag_json_reply(cb, arg, -1, "store: list failed", NULL);
	}
}

struct flag_histq {
	flag_json_cb *cb;
	void *arg;
	char account[FLAG_ACCOUNT_MAX];
	struct store_op op;
};

static void flag_history_got(void *arg, enum store_status st, const struct store_result *res,
                             size_t n)
{
	struct flag_histq *q = arg;
	struct flag_record *r = calloc(1, sizeof(*r));
	char err[320];
	if (r == NULL || st != STORE_OK || n != 1) {
		snprintf(err, sizeof(err), "%s", r ? "store: lookup failed" : "out of memory");
		flag_json_reply(q->cb, q->arg, -1, err, NULL);
		free(r);
		free(q);
		return;
	}
	if (res[0].found && flag_record_decode(res[0].val, res[0].vlen, r, err, sizeof(err)) < 0) {
		flag_json_reply(q->cb, q->arg, -1, err, NULL);
		free(r);
		free(q);
		return;
	}
	int64_t now = flag_now();
	const struct flag_config *fc = flag_cfg();
	const struct flag_entry *act = flag_record_active(r, now);
	json_t *o = json_object();
	char acc[FLAG_ACCOUNT_MAX];
	flag_copy(acc, sizeof(acc), q->account);
	json_object_set_new(o, "account", json_string(acc));
	json_object_set_new(o, "active",
	                    act ? flag_json_active(q->account, r, act, true) : json_null());
	json_t *h = json_array();
	for (size_t i = r->nhist; i-- > 0;) {
		json_t *e = flag_json_entry(&r->hist[i], true);
		if (r->hist[i].cleared_us == 0 && &r->hist[i] != act) {
			/* expired, not yet moved to history by a later flag */
			json_object_set_new(e, "cleared",
			                    json_integer(r->hist[i].expires_us / FLAG_SEC));
			json_object_set_new(e, "cleared_by", json_string("expired"));
		}
		json_array_append_new(h, e);
	}
	json_object_set_new(o, "history", h);
	json_object_set_new(o, "times_flagged",
	                    json_integer(flag_record_recent(r, now, fc->escalate_window_us)));
	json_object_set_new(
	    o, "window_days",
	    json_integer((json_int_t)(fc->escalate_window_us / (86400 * FLAG_SEC))));
	flag_json_reply(q->cb, q->arg, 0, NULL, o);
	free(r);
	free(q);
}

void flag_history(const char *account, flag_json_cb *cb, void *arg)
{
	if (!F.started || F.store == NULL) {
		flag_json_reply(cb, arg, -1, "the flags module is not running", NULL);
		return;
	}
	struct flag_histq *q = calloc(1, sizeof(*q));
	if (q == NULL) {
		flag_json_reply(cb, arg, -1, "out of memory", NULL);
		return;
	}
	q->cb = cb;
	q->arg = arg;
	flag_norm_account(q->account, sizeof(q->account), account ? account : "");
	if (q->account[0] == '\0') {
		free(q);
		flag_json_reply(cb, arg, -1, "no account given", NULL);
		return;
	}
	q->op.kind = STORE_GET;
	q->op.rule = FLAG_NS;
	q->op.subject = q->account;
	if (store_batch(F.store, &q->op, 1, flag_now(), flag_history_got, q) != 0) {
		free(q);
		flag_json_reply(cb, arg, -1, "store: lookup failed", NULL);
	}
}

/* --------------------------------------------------------------- pause */

/* Read a pause record into the cache; logs a change seen from the store. */
static void flag_pause_apply(const void *val, size_t vlen, bool found, bool quiet)
{
	bool on = false;
	enum verdict_action a = ACT_HOLD;
	char by[FLAG_ACTOR_MAX] = "";
	int64_t since = 0;
	if (found) {
		json_error_t je;
		json_t *o = json_loadb(val, vlen, 0, &je);
		if (o == NULL) {
			log_warn("event=pause_record_bad error=\"%s\"", je.text);
			return;
		}
		on = json_is_true(json_object_get(o, "on"));
		if (flag_action_parse(flag_jstr(o, "action"), &a) < 0 || a == ACT_REJECT)
			a = ACT_HOLD;
		flag_copy(by, sizeof(by), flag_jstr(o, "by"));
		since = flag_jint(o, "since");
		json_decref(o);
	}
	if (!quiet && (on != F.paused || (on && a != F.pause_action)))
		log_warn("event=%s action=%s by=%s (from the store)", on ? "pause" : "resume",
		         config_action_name(a), by);
	F.paused = on;
	F.pause_action = a;
	snprintf(F.pause_by, sizeof(F.pause_by), "%s", by);
	F.pause_since = since;
}

bool flag_paused(enum verdict_action *action)
{
	if (F.paused && action)
		*action = F.pause_action;
	return F.paused;
}

struct flag_pauseq {
	bool on;
	enum verdict_action action;
	char by[FLAG_ACTOR_MAX];
	int64_t now;
	flag_cb *cb;
	void *arg;
	char buf[512];
	struct store_op op;
};

static void flag_pause_done(void *arg, enum store_status st, const struct store_result *res,
                            size_t n)
{
	struct flag_pauseq *q = arg;
	(void)res;
	if (st != STORE_OK || n != 1) {
		char msg[320];
		snprintf(msg, sizeof(msg), "store: %s", F.store ? F.store->err : "closed");
		if (q->cb)
			q->cb(q->arg, -1, msg);
		free(q);
		return;
	}
	if (F.store && F.store->be->flush(F.store) < 0)
		log_err("event=pause_not_durable error=\"%s\"", F.store->err);
	F.paused = q->on;
	F.pause_action = q->action;
	snprintf(F.pause_by, sizeof(F.pause_by), "%s", q->by);
	F.pause_since = q->now;
	log_warn("event=%s action=%s by=%s", q->on ? "pause" : "resume",
	         config_action_name(q->action), q->by);
	if (q->cb)
		q->cb(q->arg, 0, q->on ? "paused" : "resumed");
	free(q);
}

void flag_pause(bool on, enum verdict_action action, const char *by, flag_cb *cb, void *arg)
{
	if (!F.started || F.store == NULL) {
		if (cb)
			cb(arg, -1, "the flags module is not running");
		return;
	}
	if (on && action != ACT_HOLD && action != ACT_DEFER) {
		if (cb)
			cb(arg, -1, "the pause action must be hold or defer");
		return;
	}
	struct flag_pauseq *q = calloc(1, sizeof(*q));
	if (q == NULL) {
		if (cb)
			cb(arg, -1, "out of memory");
		return;
	}
	q->on = on;
	q->action = on ? action : F.pause_action;
	flag_copy(q->by, sizeof(q->by), by && by[0] ? by : "admin");
	q->now = flag_now();
	q->cb = cb;
	q->arg = arg;
	json_t *o = json_object();
	json_object_set_new(o, "on", json_boolean(on));
	json_object_set_new(o, "action", json_string(config_action_name(q->action)));
	json_object_set_new(o, "by", json_string(q->by));
	json_object_set_new(o, "since", json_integer(q->now));
	size_t len = json_dumpb(o, q->buf, sizeof(q->buf), JSON_COMPACT);
	json_decref(o);
	if (len == 0 || len > sizeof(q->buf)) {
		free(q);
		if (cb)
			cb(arg, -1, "pause record does not fit");
		return;
	}
	q->op.kind = STORE_PUT;
	q->op.rule = FLAG_PAUSE_NS;
	q->op.subject = FLAG_PAUSE_KEY;
	q->op.val = q->buf;
	q->op.vlen = len;
	if (store_batch(F.store, &q->op, 1, q->now, flag_pause_done, q) != 0) {
		free(q);
		if (cb)
			cb(arg, -1, "store: batch not accepted");
	}
}

static void flag_pause_got(void *arg, enum store_status st, const struct store_result *res,
                           size_t n)
{
	bool quiet = arg != NULL; /* the first read at start */
	F.refreshing = false;
	if (st != STORE_OK || n != 1)
		return; /* keep what is cached */
	flag_pause_apply(res[0].val, res[0].vlen, res[0].found, quiet);
	if (quiet && F.paused)
		log_warn("event=paused action=%s by=%s (outbound mail is held back until "
		         "resumed)",
		         config_action_name(F.pause_action), F.pause_by);
}

static void flag_pause_read(bool first)
{
	static struct store_op op = {
	    .kind = STORE_GET, .rule = FLAG_PAUSE_NS, .subject = FLAG_PAUSE_KEY};
	if (F.refreshing || F.store == NULL)
		return;
	F.refreshing = true;
	if (store_batch(F.store, &op, 1, flag_now(), flag_pause_got, first ? &F : NULL) != 0)
		F.refreshing = false;
}

static void flag_on_refresh(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)w;
	(void)revents;
	flag_pause_read(false);
}

/* -------------------------------------------------------------- checks */

void flag_pause_prepare(struct pipeline_ctx *x)
{
	(void)x; /* the state is cached: no store op */
}

void flag_pause_finish(struct pipeline_ctx *x)
{
	enum verdict_action a;
	if (!x->outbound || !flag_paused(&a))
		return;
	const struct flag_config *fc = flag_config(x->cfg);
	struct verdict_part *p = verdict_add(&x->v, "pause", "pause", a, false);
	if (p == NULL)
		return;
	snprintf(p->reason, sizeof(p->reason), "outbound mail paused by %s",
	         F.pause_by[0] ? F.pause_by : "admin");
	snprintf(p->text, sizeof(p->text), "%s",
	         fc->pause_reply ? fc->pause_reply : FLAG_DEFAULT_PAUSE_REPLY);
	if (a == ACT_DEFER)
		snprintf(p->dsn, sizeof(p->dsn), "4.7.1");
}

static const struct rule flag_ns_rule = {.name = FLAG_NS};

void flag_check_prepare(struct pipeline_ctx *x)
{
	if (!x->outbound || x->principal[0] == '\0')
		return;
	(void)pipeline_add_op(x, STORE_GET, &flag_ns_rule, x->principal, NULL);
}

/* A window's period as configured: "h", "5m", "1d", "90s". */
static void flag_fmt_period(char *out, size_t outsz, uint64_t us)
{
	static const struct {
		uint64_t us;
		const char *unit;
	} units[] = {
	    {86400000000ULL, "d"}, {3600000000ULL, "h"}, {60000000ULL, "m"}, {1000000ULL, "s"}};
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
		if (us % units[i].us == 0) {
			snprintf(out, outsz, "%llu%s", (unsigned long long)(us / units[i].us),
			         units[i].unit);
			return;
		}
	snprintf(out, outsz, "%lluus", (unsigned long long)us);
}

/* The evidence of a [limit] rule with flag = yes that fired on this request. */
static void flag_limit_fired(struct pipeline_ctx *x, size_t i)
{
	const struct rule *r = x->meta[i].rule;
	const struct store_op *op = &x->ops[i];
	const struct store_result *res = &x->res[i];
	const struct proto_request *q = x->req;
	const struct gcra_window *w = &op->win[res->window >= 0 ? res->window : 0];
	char reason[FLAG_REASON_MAX], per[32], ev[1024];
	flag_fmt_period(per, sizeof(per), w->period_us);
	snprintf(reason, sizeof(reason), "limit %s: %s over %llu per %s for %s", r->name,
	         config_count_name(r->count), (unsigned long long)w->limit, per, op->subject);
	int wi = res->window >= 0 ? res->window : 0;
	snprintf(ev, sizeof(ev),
	         "rule=%s key=%s subject=%s count=%s limit=%llu/%s used=%llu cost=%llu\n"
	         "request: state=%s sender=%s recipient=%s client=%s queue_id=%s",
	         r->name, key_type_name(r->key), op->subject, config_count_name(r->count),
	         (unsigned long long)w->limit, per, (unsigned long long)res->used[wi],
	         (unsigned long long)op->cost, proto_state_name(q->state),
	         proto_get(q, PROTO_A_SENDER), proto_get(q, PROTO_A_RECIPIENT),
	         proto_get(q, PROTO_A_CLIENT_ADDRESS), proto_get(q, PROTO_A_QUEUE_ID));
	struct flag_request fr = {
	    .account = x->principal,
	    .source = FLAG_SRC_LIMIT,
	    .reason = reason,
	    .evidence = ev,
	    .actor = "policyd",
	};
	flag_raise(&fr, NULL, NULL);
}

void flag_check_finish(struct pipeline_ctx *x)
{
	static struct flag_record rec; /* one thread: a scratch record */
	bool flagged = false;
	char err[200];

	if (x->st != STORE_OK)
		return;
	const struct flag_config *fc = flag_config(x->cfg);
	for (size_t i = 0; i < x->nops && !flagged; i++) {
		if (x->meta[i].check != PIPELINE_CHECK_FLAG || x->ops[i].kind != STORE_GET ||
		    !x->res[i].found)
			continue;
		if (flag_record_decode(x->res[i].val, x->res[i].vlen, &rec, err, sizeof(err)) < 0) {
			log_warn("event=flag_record_bad account=%s error=\"%s\"", x->principal,
			         err);
			continue;
		}
		const struct flag_entry *e = flag_record_active(&rec, x->now_us);
		if (e == NULL)
			continue;
		flagged = true;
		struct verdict_part *p = verdict_add(&x->v, "flag", "flag", e->action, false);
		if (p == NULL)
			continue;
		snprintf(p->reason, sizeof(p->reason), "account flagged (id %s): %.80s", e->id,
		         e->reason);
		snprintf(p->text, sizeof(p->text), "%s",
		         fc->reply ? fc->reply : FLAG_DEFAULT_REPLY);
		if (fc->dsn[0])
			snprintf(p->dsn, sizeof(p->dsn), "%s", fc->dsn);
	}
	if (flagged || !x->outbound || x->principal[0] == '\0')
		return;
	/* a [limit] rule with flag = yes that fired (and is enforced) flags the principal */
	for (size_t i = 0; i < x->nops; i++) {
		const struct pipeline_opmeta *m = &x->meta[i];
		if (m->check != PIPELINE_CHECK_LIMIT || m->rule == NULL || !m->rule->flag ||
		    m->rule->dry_run || m->rule->action == ACT_WARN)
			continue;
		if ((x->ops[i].kind != STORE_TAKE && x->ops[i].kind != STORE_PEEK) ||
		    x->res[i].conform)
			continue;
		flag_limit_fired(x, i);
		break;
	}
}

/* -------------------------------------------------------------- module */

/* Flags and lockout hooks for /metrics (collected at scrape time). */
static void flag_collect(struct metrics_out *o, void *arg)
{
	int which = (int)(intptr_t)arg;
	if (which == 0) {
		metrics_out_u64(o, "event=\"raised\"", F.raised);
		metrics_out_u64(o, "event=\"cleared\"", F.cleared);
	} else if (which == 1) {
		metrics_out_u64(o, "", F.paused ? 1 : 0);
	} else {
		struct hook_stats h;
		hook_get_stats(&h);
		metrics_out_u64(o, "result=\"started\"", h.started);
		metrics_out_u64(o, "result=\"done\"", h.done);
		metrics_out_u64(o, "result=\"failed\"", h.failed);
		metrics_out_u64(o, "result=\"retried\"", h.retried);
		metrics_out_u64(o, "result=\"timeout\"", h.timeouts);
		metrics_out_u64(o, "result=\"interrupted\"", h.interrupted);
		metrics_out_u64(o, "result=\"restored\"", h.restored);
	}
}

static void flag_metrics_register(void)
{
	static bool done;
	if (done)
		return;
	done = true;
	metrics_register("policyd_flags_total", "Account flags raised and cleared.",
	                 METRICS_COUNTER_T, flag_collect, (void *)(intptr_t)0);
	metrics_register("policyd_paused", "1 while outbound mail is paused (policyctl pause).",
	                 METRICS_GAUGE_T, flag_collect, (void *)(intptr_t)1);
	metrics_register("policyd_lockout_hook_runs_total", "Lockout command runs, by result.",
	                 METRICS_COUNTER_T, flag_collect, (void *)(intptr_t)2);
}

int flag_init(struct module_ctx *m, char *err, size_t errsz)
{
	flag_metrics_register();
	const struct flag_config *fc = flag_config(m->cfg);
	F.m = m;
	F.loop = m->loop;
	F.store = m->store;
	ev_timer_init(&F.kick, flag_on_kick, 0., 0.);
	ev_timer_init(&F.retry, flag_on_retry, 0., 0.);
	F.paused = false;
	F.pause_action = ACT_HOLD;
	F.pause_by[0] = '\0';
	F.started = true;
	flag_pause_read(true);
	if (hook_start(m->loop, m->store, fc, m->cfg->state_dir, err, errsz) < 0) {
		F.started = false;
		return -1;
	}
	ev_timer_init(&F.refresh, flag_on_refresh, FLAG_REFRESH_S, FLAG_REFRESH_S);
	ev_timer_start(m->loop, &F.refresh);
	ev_unref(m->loop); /* the refresh alone does not keep the loop running */
	char dur[32] = "until_cleared";
	if (fc->duration_us > 0)
		verdict_fmt_duration(dur, sizeof(dur), (uint64_t)fc->duration_us);
	log_info("event=flags_start action=%s duration=%s escalate_after=%u escalate_action=%s "
	         "lockout_command=%s paused=%s",
	         config_action_name(fc->action), dur, fc->escalate_after,
	         config_action_name(fc->escalate_action),
	         fc->lockout_command ? fc->lockout_command : "none", F.paused ? "yes" : "no");
	return 0;
}

static void flag_reload(struct module_ctx *m, const struct config *cfg)
{
	(void)m;
	hook_reload(flag_config(cfg), cfg->state_dir);
}

static void flag_stop(struct module_ctx *m)
{
	(void)m;
	if (!F.started)
		return;
	hook_stop();
	ev_ref(F.loop);
	ev_timer_stop(F.loop, &F.refresh);
	ev_timer_stop(F.loop, &F.kick);
	/* ops still queued (an asynchronous store): they fail */
	F.started = false;
	/* the op in flight (an asynchronous store) finishes when its callback comes;
	 * one waiting to write again is given up (an outbox entry on the master is
	 * resumed at the next start) */
	if (ev_is_active(&F.retry)) {
		ev_timer_stop(F.loop, &F.retry);
		struct flag_op *w = F.head;
		F.head = w->next;
		F.busy = false;
		log_warn("event=flag_write_abandoned account=%s id=%s (policyd is stopping)",
		         w->account, w->id);
		if (w->cb)
			w->cb(w->arg, -1, "policyd is stopping");
		flag_op_free(w);
	}
	struct flag_op *keep = F.busy ? F.head : NULL;
	struct flag_op *op = keep ? keep->next : F.head;
	while (op) {
		struct flag_op *next = op->next;
		if (op->cb)
			op->cb(op->arg, -1, "policyd is stopping");
		flag_op_free(op);
		op = next;
	}
	if (keep)
		keep->next = NULL;
	F.head = F.tail = keep;
	F.store = NULL;
	F.m = NULL;
}

const struct module flag_module = {
    .name = "flags",
    .start = flag_init,
    .reload = flag_reload,
    .stop = flag_stop,
};
