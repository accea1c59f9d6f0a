/*
 * tests/unit/test_flag.c - cmocka tests of policyd/flag.c: the flag record
 * (JSON encode/decode, bounds, hostile text), active/expired flags and
 * escalation, the [flags] config section, and the "flags" module on the
 * embedded store: raise (idempotent), clear, history, list, expiry, the
 * pipeline checks "flag" and "pause", and [limit] rules with flag = yes.
 * The lockout hook's runs are tested in test_hook.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ev.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cache/store.h"
#include "policyd/config.h"
#include "policyd/config_section.h"
#include "policyd/flag.h"
#include "policyd/hook.h"
#include "policyd/module.h"
#include "policyd/pipeline.h"

#define SEC ((int64_t)1000000)
#define DAY (86400 * SEC)

static int64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * SEC + ts.tv_nsec / 1000;
}

/* ------------------------------------------------------------ records */

static struct flag_entry entry(const char *id, int64_t raised, int64_t expires, int64_t cleared)
{
	struct flag_entry e;
	memset(&e, 0, sizeof(e));
	snprintf(e.id, sizeof(e.id), "%s", id);
	e.raised_us = raised;
	e.expires_us = expires;
	e.cleared_us = cleared;
	e.action = ACT_DEFER;
	e.source = FLAG_SRC_LIMIT;
	e.hook.exit_code = -1;
	snprintf(e.reason, sizeof(e.reason), "reason of %s", id);
	return e;
}

static void test_record_roundtrip(void **state)
{
	(void)state;
	static struct flag_record r, d;
	static char buf[STORE_MAX_VALUE];
	char err[200];
	int64_t t = 1700000000 * SEC;
	memset(&r, 0, sizeof(r));
	r.hist[0] = entry("a", t, t + DAY, t + 3600 * SEC);
	snprintf(r.hist[0].cleared_by, sizeof(r.hist[0].cleared_by), "admin:1000");
	r.hist[1] = entry("b", t + 2 * DAY, 0, 0);
	r.hist[1].source = FLAG_SRC_ANOMALY;
	r.hist[1].action = ACT_HOLD;
	r.hist[1].score = 87;
	snprintf(r.hist[1].actor, sizeof(r.hist[1].actor), "policyd");
	/* quotes, backslashes, newline, control and invalid UTF-8 in the reason */
	snprintf(r.hist[1].reason, sizeof(r.hist[1].reason), "rcpt \"x\" \\ y\n\x01z \xff\xfe é");
	r.hist[1].hook.state = FLAG_HOOK_DONE;
	r.hist[1].hook.attempts = 2;
	r.hist[1].hook.exit_code = 0;
	r.hist[1].hook.duration_ms = 12;
	snprintf(r.hist[1].hook.output, sizeof(r.hist[1].hook.output), "disabled alice");
	r.nhist = 2;
	snprintf(r.evidence, sizeof(r.evidence), "line 1\nline \"2\"\n");
	size_t len = flag_record_encode(&r, 20, buf, sizeof(buf));
	assert_true(len > 0 && len < 2000);
	assert_int_equal(flag_record_decode(buf, len, &d, err, sizeof(err)), 0);
	assert_int_equal(d.nhist, 2);
	assert_string_equal(d.hist[0].id, "a");
	assert_int_equal(d.hist[0].raised_us, t);
	assert_int_equal(d.hist[0].expires_us, t + DAY);
	assert_int_equal(d.hist[0].cleared_us, t + 3600 * SEC);
	assert_string_equal(d.hist[0].cleared_by, "admin:1000");
	assert_int_equal(d.hist[0].hook.state, FLAG_HOOK_NONE);
	assert_int_equal(d.hist[1].source, FLAG_SRC_ANOMALY);
	assert_int_equal(d.hist[1].action, ACT_HOLD);
	assert_int_equal(d.hist[1].score, 87);
	assert_int_equal(d.hist[1].expires_us, 0);
	assert_string_equal(d.hist[1].reason, "rcpt \"x\" \\ y??z ?? é");
	assert_int_equal(d.hist[1].hook.state, FLAG_HOOK_DONE);
	assert_int_equal(d.hist[1].hook.attempts, 2);
	assert_int_equal(d.hist[1].hook.exit_code, 0);
	assert_string_equal(d.hist[1].hook.output, "disabled alice");
	assert_string_equal(d.evidence, "line 1\nline \"2\"\n");

	/* garbage is an error, not a crash */
	assert_int_equal(flag_record_decode("{\"history\":3}", 13, &d, err, sizeof(err)), -1);
	assert_int_equal(flag_record_decode("nope", 4, &d, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "bad flag record"));
	assert_int_equal(
	    flag_record_decode("{\"history\":[1,{\"id\":5}]}", 24, &d, err, sizeof(err)), 0);
	assert_int_equal(d.nhist, 1);
}

static void test_record_bounds(void **state)
{
	(void)state;
	static struct flag_record r, d;
	static char buf[STORE_MAX_VALUE];
	char err[200];
	int64_t t = 1700000000 * SEC;
	memset(&r, 0, sizeof(r));
	/* 30 small entries, keep 20: the newest 20 */
	for (int i = 0; i < 30; i++) {
		char id[16];
		snprintf(id, sizeof(id), "f%d", i);
		r.hist[r.nhist++] = entry(id, t + i * SEC, 0, t + i * SEC + 1);
	}
	size_t len = flag_record_encode(&r, 20, buf, sizeof(buf));
	assert_true(len > 0);
	assert_int_equal(flag_record_decode(buf, len, &d, err, sizeof(err)), 0);
	assert_int_equal(d.nhist, 20);
	assert_string_equal(d.hist[0].id, "f10");
	assert_string_equal(d.hist[19].id, "f29");
	/* 100 entries with the longest reasons and outputs: fewer fit, the newest stay */
	memset(&r, 0, sizeof(r));
	for (int i = 0; i < FLAG_HISTORY_MAX; i++) {
		char id[16];
		snprintf(id, sizeof(id), "g%d", i);
		struct flag_entry *e = &r.hist[r.nhist++];
		*e = entry(id, t + i * SEC, 0, 0);
		memset(e->reason, '"', sizeof(e->reason) - 1); /* each one escaped: 2 bytes */
		e->hook.state = FLAG_HOOK_FAILED;
		e->hook.attempts = 4;
		memset(e->hook.output, 'o', sizeof(e->hook.output) - 1);
	}
	memset(r.evidence, 'e', sizeof(r.evidence) - 1);
	len = flag_record_encode(&r, FLAG_HISTORY_MAX, buf, sizeof(buf));
	assert_true(len > 0 && len <= STORE_MAX_VALUE);
	assert_int_equal(flag_record_decode(buf, len, &d, err, sizeof(err)), 0);
	assert_true(d.nhist >= 1 && d.nhist < 20);
	assert_string_equal(d.hist[d.nhist - 1].id, "g99");
	/* in a tiny buffer the newest entry stays and the evidence is cut */
	len = flag_record_encode(&r, FLAG_HISTORY_MAX, buf, 1500);
	assert_true(len > 0 && len <= 1500);
	assert_int_equal(flag_record_decode(buf, len, &d, err, sizeof(err)), 0);
	assert_int_equal(d.nhist, 1);
	assert_true(strlen(d.evidence) < sizeof(r.evidence) - 1);
	assert_int_equal(flag_record_encode(&r, 20, buf, 100), 0);
}

static void test_active_and_escalation(void **state)
{
	(void)state;
	static struct flag_record r;
	struct flag_config fc;
	int64_t t = 1700000000 * SEC;
	memset(&fc, 0, sizeof(fc));
	fc.action = ACT_DEFER;
	fc.escalate_after = 2;
	fc.escalate_window_us = 30 * (uint64_t)DAY;
	fc.escalate_action = ACT_HOLD;
	memset(&r, 0, sizeof(r));
	assert_null(flag_record_active(&r, t));
	assert_int_equal(flag_new_action(&fc, &r, t), ACT_DEFER); /* the first flag */
	r.hist[r.nhist++] = entry("a", t, t + 10 * SEC, 0);
	assert_non_null(flag_record_active(&r, t + 9 * SEC));
	assert_null(flag_record_active(&r, t + 10 * SEC)); /* expired */
	assert_int_equal(flag_record_recent(&r, t + DAY, fc.escalate_window_us), 1);
	/* the second within 30 days holds */
	assert_int_equal(flag_new_action(&fc, &r, t + DAY), ACT_HOLD);
	/* 31 days later it is a first offence again */
	assert_int_equal(flag_new_action(&fc, &r, t + 31 * DAY), ACT_DEFER);
	r.hist[0].cleared_us = t + 5 * SEC;
	assert_null(flag_record_active(&r, t + 6 * SEC));
	/* escalate_after = 3: the third; 0: never */
	fc.escalate_after = 3;
	assert_int_equal(flag_new_action(&fc, &r, t + DAY), ACT_DEFER);
	r.hist[r.nhist++] = entry("b", t + DAY, 0, t + DAY + 1);
	assert_int_equal(flag_new_action(&fc, &r, t + 2 * DAY), ACT_HOLD);
	fc.escalate_after = 0;
	assert_int_equal(flag_new_action(&fc, &r, t + 2 * DAY), ACT_DEFER);
	fc.escalate_after = 1; /* every flag gets the escalated action */
	fc.escalate_action = ACT_REJECT;
	memset(&r, 0, sizeof(r));
	assert_int_equal(flag_new_action(&fc, &r, t), ACT_REJECT);
}

static void test_clean_text(void **state)
{
	(void)state;
	char out[16];
	flag_clean_text(out, sizeof(out), "a\tb\nc\x7f", 6, false);
	assert_string_equal(out, "a b?c?");
	flag_clean_text(out, sizeof(out), "a\nb", 3, true);
	assert_string_equal(out, "a\nb");
	flag_clean_text(out, sizeof(out), "\xc0\xaf\xed\xa0\x80\xf4\x90\x80\x80", 9, false);
	assert_null(strchr(out, '\xc0'));
	json_t *js = json_string(out);
	assert_non_null(js);
	json_decref(js);
	flag_clean_text(out, sizeof(out), "éééééééééé", 20, false); /* cut on a character */
	assert_int_equal(strlen(out), 14);
	flag_clean_text(out, 4, "abcdef", 6, false);
	assert_string_equal(out, "abc");
	flag_clean_text(out, sizeof(out), "abc", 2, false);
	assert_string_equal(out, "ab");
}

/* ---------------------------------------------------------------- config */

static char conf_path[64];

static struct config *load(const char *body, char *err, size_t errsz)
{
	snprintf(conf_path, sizeof(conf_path), "/tmp/policyd-test-flag-XXXXXX");
	int fd = mkstemp(conf_path);
	assert_true(fd >= 0);
	FILE *fp = fdopen(fd, "w");
	fprintf(fp, "%s", body);
	fclose(fp);
	struct config *c = config_load(conf_path, err, errsz);
	unlink(conf_path);
	return c;
}

static void test_config(void **state)
{
	(void)state;
	char err[512];
	struct config *c = load("[server]\nstate_dir =\n", err, sizeof(err));
	assert_non_null(c);
	const struct flag_config *fc = flag_config(c);
	assert_int_equal(fc->action, ACT_DEFER);
	assert_true(fc->duration_us < 0);
	assert_int_equal(fc->escalate_after, 2);
	assert_int_equal(fc->escalate_action, ACT_HOLD);
	assert_int_equal(fc->history, 20);
	assert_null(fc->lockout_command);
	assert_int_equal(fc->lockout_timeout_us, 30 * SEC);
	assert_int_equal(fc->lockout_retries, 3);
	assert_int_equal(fc->lockout_backoff_us, 10 * SEC);
	assert_int_equal(fc->lockout_concurrency, 2);
	assert_int_equal(fc->lockout_delay_us, 0);
	assert_int_equal(fc->lockout_output_max, 4096);
	config_free(c);

	c = load("[server]\nstate_dir =\n"
	         "[limit r]\nrate = 3/1h\nflag = yes\n"
	         "[flags]\naction = hold\nreply = Call 555-0100\nduration = 1d\n"
	         "escalate_after = 3\nescalate_window = 7d\nescalate_action = reject\n"
	         "history = 5\nlockout_command = /bin/true\n"
	         "lockout_args = --account %{account} \"--why=%{reason} x\" '%{id}'\n"
	         "lockout_timeout = 5s\nlockout_retries = 0\nlockout_backoff = 0s\n"
	         "lockout_concurrency = 4\nlockout_delay = 3s\nlockout_output_max = 100\n"
	         "pause_reply = Paused\ndsn = 4.7.0\n",
	         err, sizeof(err));
	if (c == NULL)
		fail_msg("%s", err);
	fc = flag_config(c);
	assert_true(c->rules[0].flag);
	assert_int_equal(fc->action, ACT_HOLD);
	assert_string_equal(fc->reply, "Call 555-0100");
	assert_int_equal(fc->duration_us, DAY);
	assert_int_equal(fc->escalate_after, 3);
	assert_int_equal(fc->escalate_window_us, 7 * DAY);
	assert_int_equal(fc->escalate_action, ACT_REJECT);
	assert_int_equal(fc->history, 5);
	assert_string_equal(fc->lockout_command, "/bin/true");
	assert_int_equal(fc->lockout_retries, 0);
	assert_int_equal(fc->lockout_backoff_us, 0);
	assert_int_equal(fc->lockout_delay_us, 3 * SEC);
	assert_int_equal(fc->lockout_output_max, 100);
	assert_string_equal(fc->dsn, "4.7.0");
	config_free(c);

	static const struct {
		const char *body, *want;
	} bad[] = {
	    {"[flags]\naction = warn\n", ":6: [flags] action: 'warn'"},
	    {"[flags]\nduration = forever\n", ":6: [flags] duration:"},
	    {"[flags]\nlockout_command = bin/true\n", "not an absolute path"},
	    {"[flags]\nlockout_command = /nonexistent/x\n", "No such file"},
	    {"[flags]\nlockout_command = /dev/null\n", "not an executable file"},
	    {"[flags]\nlockout_command = /bin/true\nlockout_args = %{acount}\n",
	     ":7: [flags] lockout_args: unknown placeholder"},
	    {"[flags]\nlockout_command = /bin/true\nlockout_args = \"open\n",
	     "unbalanced \" quote"},
	    {"[flags]\nlockout_args = x\n", "lockout_args without lockout_command"},
	    {"[flags]\nhistory = 0\n", "history: '0'"},
	    {"[flags]\nlockout_output_max = 10\n", "lockout_output_max"},
	    {"[flags]\nlockout_concurrency = 0\n", "lockout_concurrency"},
	    {"[flags]\ncolour = red\n", "unknown parameter 'colour'"},
	    {"[limit r]\nrate = 1/1h\nflag = maybe\n", ":7: flag: 'maybe'"},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char body[512];
		snprintf(body, sizeof(body), "[server]\nstate_dir =\n\n\n%s", bad[i].body);
		err[0] = '\0';
		c = load(body, err, sizeof(err));
		if (c != NULL || strstr(err, bad[i].want) == NULL)
			fail_msg("case %zu: want '%s', got '%s'", i, bad[i].want, err);
	}

	char *argv[8], buf[256];
	int n = hook_split_args("a \"b c\" 'd \"e\"' \"x\\\"y\" %{id}", argv, 8, buf, sizeof(buf),
	                        err, sizeof(err));
	assert_int_equal(n, 5);
	assert_string_equal(argv[1], "b c");
	assert_string_equal(argv[2], "d \"e\"");
	assert_string_equal(argv[3], "x\"y");
	assert_string_equal(argv[4], "%{id}");
	assert_null(argv[5]);
	assert_int_equal(hook_split_args("a b c", argv, 3, buf, sizeof(buf), err, sizeof(err)), -1);
	assert_int_equal(hook_split_args("", argv, 3, buf, sizeof(buf), err, sizeof(err)), 0);
}

/* ---------------------------------------------------------------- module */

struct env {
	struct config *cfg;
	struct store *store;
	struct module_ctx m;
	struct txn txn;
	struct pipeline_ctx x;
	char dir[64];
};

static struct env *env_new(const char *extra)
{
	struct env *e = calloc(1, sizeof(*e));
	char err[512], body[2048];
	snprintf(e->dir, sizeof(e->dir), "/tmp/policyd-test-flag-dir-XXXXXX");
	assert_non_null(mkdtemp(e->dir));
	snprintf(body, sizeof(body),
	         "[server]\nstate_dir = %s\nlog = stderr\ntrusted_networks = 10.0.0.0/8\n%s",
	         e->dir, extra ? extra : "");
	e->cfg = load(body, err, sizeof(err));
	if (e->cfg == NULL)
		fail_msg("config: %s", err);
	struct store_memory_opts mo = {.state_dir = e->dir};
	e->store = store_memory_open(&mo, now_us(), err, sizeof(err));
	assert_non_null(e->store);
	e->m.loop = ev_default_loop(0);
	e->m.store = e->store;
	e->m.cfg = e->cfg;
	assert_int_equal(flag_module.start(&e->m, err, sizeof(err)), 0);
	txn_init(&e->txn);
	return e;
}

static void env_free(struct env *e)
{
	flag_module.stop(&e->m);
	txn_free(&e->txn);
	e->store->be->close(e->store);
	config_free(e->cfg);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", e->dir);
	assert_int_equal(system(cmd), 0);
	free(e);
}

/* Run the loop until *calls is set (the flags module works from the loop). */
static void spin(int *calls)
{
	struct ev_loop *loop = ev_default_loop(0);
	for (int i = 0; i < 1000 && *calls == 0; i++)
		ev_run(loop, EVRUN_NOWAIT);
}

/* Run the loop for a while (queued flag ops). */
static void settle(void)
{
	struct ev_loop *loop = ev_default_loop(0);
	for (int i = 0; i < 20; i++)
		ev_run(loop, EVRUN_NOWAIT);
}

struct res {
	int calls, rc;
	char text[256];
	json_t *json;
};

static void res_cb(void *arg, int rc, const char *msg)
{
	struct res *r = arg;
	r->calls++;
	r->rc = rc;
	snprintf(r->text, sizeof(r->text), "%s", msg ? msg : "");
}

static void res_json_cb(void *arg, int rc, char *text)
{
	struct res *r = arg;
	r->calls++;
	r->rc = rc;
	if (rc == 0) {
		json_error_t je;
		r->json = json_loads(text, 0, &je);
		assert_non_null(r->json);
	} else {
		snprintf(r->text, sizeof(r->text), "%s", text ? text : "");
	}
	free(text);
}

static struct res raise1(const char *account, const char *reason, const char *ev, int64_t dur)
{
	struct res r;
	memset(&r, 0, sizeof(r));
	struct flag_request fr = {.account = account,
	                          .source = FLAG_SRC_MANUAL,
	                          .reason = reason,
	                          .evidence = ev,
	                          .duration_us = dur,
	                          .actor = "admin:0"};
	flag_raise(&fr, res_cb, &r);
	spin(&r.calls);
	assert_int_equal(r.calls, 1);
	return r;
}

static json_t *history(const char *account)
{
	struct res r;
	memset(&r, 0, sizeof(r));
	flag_history(account, res_json_cb, &r);
	assert_int_equal(r.calls, 1);
	assert_int_equal(r.rc, 0);
	return r.json;
}

static const char *jstr(json_t *o, const char *path)
{
	char buf[128];
	snprintf(buf, sizeof(buf), "%s", path);
	json_t *v = o;
	for (char *save = NULL, *t = strtok_r(buf, ".", &save); t; t = strtok_r(NULL, ".", &save))
		v = t[0] >= '0' && t[0] <= '9' ? json_array_get(v, (size_t)atoi(t))
		                               : json_object_get(v, t);
	return json_is_string(v) ? json_string_value(v) : json_is_null(v) ? "null" : "?";
}

static void test_raise_clear_history(void **state)
{
	(void)state;
	struct env *e = env_new(NULL);
	struct res r = raise1("Alice", "manual test", "ev 1", 0);
	assert_int_equal(r.rc, 0);
	char id[sizeof(r.text)];
	snprintf(id, sizeof(id), "%s", r.text);
	assert_true(strlen(id) == 24 && id[8] == '-' && id[15] == '-');
	/* idempotent while active: same id, the evidence appended */
	r = raise1("alice", "again", "ev 2", 0);
	assert_int_equal(r.rc, 0);
	assert_string_equal(r.text, id);
	json_t *h = history("alice");
	assert_string_equal(jstr(h, "account"), "alice");
	assert_string_equal(jstr(h, "active.id"), id);
	assert_string_equal(jstr(h, "active.action"), "defer");
	assert_string_equal(jstr(h, "active.reason"), "manual test");
	assert_string_equal(jstr(h, "active.evidence"), "ev 1\nev 2");
	assert_string_equal(jstr(h, "active.source"), "manual");
	assert_string_equal(jstr(h, "active.expires"), "null");
	assert_string_equal(jstr(h, "active.hook"), "null"); /* no lockout_command */
	assert_int_equal(json_integer_value(json_object_get(h, "times_flagged")), 1);
	assert_int_equal(json_array_size(json_object_get(h, "history")), 1);
	json_decref(h);

	/* list */
	struct res l;
	memset(&l, 0, sizeof(l));
	raise1("bob", "other", NULL, 0);
	flag_list_active(res_json_cb, &l);
	assert_int_equal(l.rc, 0);
	assert_int_equal(json_array_size(l.json), 2);
	json_decref(l.json);

	/* clear, by whom; a second clear is an error */
	memset(&r, 0, sizeof(r));
	flag_clear("alice", "admin:1000", res_cb, &r);
	spin(&r.calls);
	assert_int_equal(r.rc, 0);
	assert_string_equal(r.text, id);
	memset(&r, 0, sizeof(r));
	flag_clear("alice", "admin:1000", res_cb, &r);
	spin(&r.calls);
	assert_int_equal(r.rc, -1);
	assert_non_null(strstr(r.text, "not flagged"));
	h = history("alice");
	assert_string_equal(jstr(h, "active"), "null");
	assert_string_equal(jstr(h, "history.0.cleared_by"), "admin:1000");
	json_decref(h);

	/* the second flag within the window escalates to hold */
	r = raise1("alice", "second", NULL, 0);
	assert_int_equal(r.rc, 0);
	assert_string_not_equal(r.text, id);
	h = history("alice");
	assert_string_equal(jstr(h, "active.action"), "hold");
	assert_int_equal(json_integer_value(json_object_get(h, "times_flagged")), 2);
	assert_string_equal(jstr(h, "history.0.reason"), "second"); /* newest first */
	json_decref(h);

	/* errors */
	memset(&r, 0, sizeof(r));
	flag_clear("nobody", "x", res_cb, &r);
	spin(&r.calls);
	assert_int_equal(r.rc, -1);
	r = raise1("", "x", NULL, 0);
	assert_int_equal(r.rc, -1);

	/* persisted: a new store on the same state_dir still has them */
	flag_module.stop(&e->m);
	e->store->be->close(e->store);
	char err[256];
	struct store_memory_opts mo = {.state_dir = e->dir};
	e->store = store_memory_open(&mo, now_us(), err, sizeof(err));
	assert_non_null(e->store);
	e->m.store = e->store;
	assert_int_equal(flag_module.start(&e->m, err, sizeof(err)), 0);
	h = history("alice");
	assert_string_equal(jstr(h, "active.reason"), "second");
	assert_int_equal(json_array_size(json_object_get(h, "history")), 2);
	json_decref(h);
	env_free(e);
}

static void batch_cb(void *arg, enum store_status st, const struct store_result *res, size_t n)
{
	struct pipeline_ctx *x = arg;
	x->st = st;
	if (n)
		memcpy(x->res, res, n * sizeof(*res));
	/* the pipeline reads GET values: finish while they are valid */
	pipeline_finish(x);
}

static enum verdict_action req(struct env *e, const char *login, const char *client,
                               const char *rcpt)
{
	static char buf[4096];
	static struct proto_request rq;
	static struct proto_kv extra[64];
	int n = snprintf(buf, sizeof(buf),
	                 "request=smtpd_access_policy\nprotocol_state=RCPT\n"
	                 "protocol_name=ESMTP\nclient_address=%s\nsasl_username=%s\n"
	                 "sender=%s@example.org\nrecipient=%s\ninstance=i%s\n\n",
	                 client, login, login[0] ? login : "nobody", rcpt, rcpt);
	struct proto_parser p;
	struct proto_limits lim;
	struct proto_diag d;
	size_t used;
	proto_limits_default(&lim);
	proto_parser_init(&p, &lim);
	memset(&rq, 0, sizeof(rq));
	rq.extra = extra;
	rq.extra_cap = 64;
	assert_int_equal(proto_parse(&p, buf, (size_t)n, &rq, &used, &d), PROTO_OK);
	struct pipeline_ctx *x = &e->x;
	pipeline_begin(x, e->cfg, &rq, &e->txn, now_us());
	pipeline_prepare(x);
	if (x->nops)
		assert_int_equal(store_batch(e->store, x->ops, x->nops, x->now_us, batch_cb, x), 0);
	else
		pipeline_finish(x);
	return x->v.action;
}

static const struct verdict_part *winner(struct env *e)
{
	return e->x.v.winner >= 0 ? &e->x.v.part[e->x.v.winner] : NULL;
}

static void test_checks(void **state)
{
	(void)state;
	struct env *e = env_new("[limit rcpt]\nkey = sasl_username\nrate = 2/1h\naction = defer\n"
	                        "flag = yes\n"
	                        "[limit quiet]\nkey = sasl_username\nrate = 1/1h\naction = warn\n"
	                        "flag = yes\n"
	                        "[flags]\naction = defer\nduration = 2s\n");
	/* carol: 2 recipients pass (the "quiet" warn rule fires but does not flag) */
	assert_int_equal(req(e, "carol", "192.0.2.1", "a@x.test"), ACT_DUNNO);
	assert_int_equal(req(e, "carol", "192.0.2.1", "b@x.test"), ACT_WARN);
	settle();
	json_t *h = history("carol");
	assert_string_equal(jstr(h, "active"), "null");
	json_decref(h);
	/* the third fires the defer rule with flag = yes: deferred by the limit and flagged */
	assert_int_equal(req(e, "carol", "192.0.2.1", "c@x.test"), ACT_DEFER);
	assert_string_equal(winner(e)->check, "limit");
	settle();
	h = history("carol");
	assert_string_equal(jstr(h, "active.source"), "limit");
	assert_non_null(strstr(jstr(h, "active.reason"), "limit rcpt: recipients over 2 per 1h"));
	assert_non_null(strstr(jstr(h, "active.evidence"), "rule=rcpt key=sasl_username"));
	assert_non_null(strstr(jstr(h, "active.evidence"), "recipient=c@x.test"));
	json_decref(h);
	/* now every request of carol's gets the flag: the defer with the support text */
	assert_int_equal(req(e, "carol", "192.0.2.1", "d@x.test"), ACT_DEFER);
	assert_string_equal(winner(e)->check, "flag");
	assert_non_null(strstr(winner(e)->text, "contact support"));
	char reply[512];
	verdict_reply(&e->x.v, reply, sizeof(reply));
	assert_non_null(strstr(reply, "action=DEFER 4.7.1 Your account has been suspended"));
	/* others and inbound mail are not affected */
	assert_int_equal(req(e, "dave", "192.0.2.1", "a@x.test"), ACT_DUNNO);
	assert_int_equal(req(e, "", "203.0.113.9", "a@x.test"), ACT_DUNNO);
	/* duration = 2s: the flag ends by itself */
	struct timespec ts = {2, 100 * 1000 * 1000};
	nanosleep(&ts, NULL);
	assert_int_equal(req(e, "carol", "192.0.2.1", "e@x.test"), ACT_DEFER);
	assert_string_equal(winner(e)->check, "limit"); /* still over the rate */
	settle();
	h = history("carol");
	assert_string_not_equal(jstr(h, "active"), "null");    /* ... so flagged again */
	assert_string_equal(jstr(h, "active.action"), "hold"); /* the second in 30 days */
	assert_string_equal(jstr(h, "history.1.cleared_by"), "expired");
	json_decref(h);

	/* pause: every outbound request is held, inbound is not */
	struct res r;
	memset(&r, 0, sizeof(r));
	flag_pause(true, ACT_REJECT, "admin:0", res_cb, &r);
	assert_int_equal(r.rc, -1); /* hold or defer only */
	enum verdict_action a = ACT_DUNNO;
	assert_false(flag_paused(&a));
	memset(&r, 0, sizeof(r));
	flag_pause(true, ACT_HOLD, "admin:0", res_cb, &r);
	assert_int_equal(r.rc, 0);
	assert_true(flag_paused(&a));
	assert_int_equal(a, ACT_HOLD);
	assert_int_equal(req(e, "dave", "192.0.2.1", "b@x.test"), ACT_HOLD);
	assert_string_equal(winner(e)->check, "pause");
	assert_int_equal(req(e, "", "10.1.2.3", "b@x.test"), ACT_HOLD); /* trusted network */
	assert_int_equal(req(e, "", "203.0.113.9", "b@x.test"), ACT_DUNNO);
	/* a defer is more severe than hold: a flagged account deferred stays deferred */
	memset(&r, 0, sizeof(r));
	flag_pause(true, ACT_DEFER, "admin:0", res_cb, &r);
	assert_int_equal(req(e, "dave", "192.0.2.1", "c@x.test"), ACT_DEFER);
	verdict_reply(&e->x.v, reply, sizeof(reply));
	assert_non_null(strstr(reply, "DEFER 4.7.1 Outbound mail is paused"));
	/* persisted: a restart of the module is still paused */
	flag_module.stop(&e->m);
	char err[256];
	assert_int_equal(flag_module.start(&e->m, err, sizeof(err)), 0);
	assert_true(flag_paused(&a));
	assert_int_equal(a, ACT_DEFER);
	memset(&r, 0, sizeof(r));
	flag_pause(false, ACT_HOLD, "admin:0", res_cb, &r);
	assert_int_equal(r.rc, 0);
	assert_false(flag_paused(NULL));
	assert_int_equal(req(e, "frank", "192.0.2.1", "d@x.test"), ACT_DUNNO);
	env_free(e);
}

/* A dry-run rule with flag = yes never flags. */
static void test_dry_run_no_flag(void **state)
{
	(void)state;
	struct env *e = env_new("[limit rcpt]\nkey = sasl_username\nrate = 1/1h\naction = defer\n"
	                        "dry_run = yes\nflag = yes\n");
	assert_int_equal(req(e, "erin", "192.0.2.1", "a@x.test"), ACT_DUNNO);
	assert_int_equal(req(e, "erin", "192.0.2.1", "b@x.test"), ACT_DUNNO);
	settle();
	json_t *h = history("erin");
	assert_string_equal(jstr(h, "active"), "null");
	assert_int_equal(json_array_size(json_object_get(h, "history")), 0);
	json_decref(h);
	env_free(e);
}

/* Without the module (e.g. policyd -t or other tests), the checks stay quiet. */
static void test_not_started(void **state)
{
	(void)state;
	struct res r;
	memset(&r, 0, sizeof(r));
	struct flag_request fr = {.account = "x", .reason = "y"};
	flag_raise(&fr, res_cb, &r);
	assert_int_equal(r.rc, -1);
	assert_non_null(strstr(r.text, "not running"));
	assert_false(flag_paused(NULL));
	memset(&r, 0, sizeof(r));
	flag_list_active(res_json_cb, &r);
	assert_int_equal(r.rc, -1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_record_roundtrip),
	    cmocka_unit_test(test_record_bounds),
	    cmocka_unit_test(test_active_and_escalation),
	    cmocka_unit_test(test_clean_text),
	    cmocka_unit_test(test_config),
	    cmocka_unit_test(test_not_started),
	    cmocka_unit_test(test_raise_clear_history),
	    cmocka_unit_test(test_checks),
	    cmocka_unit_test(test_dry_run_no_flag),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
