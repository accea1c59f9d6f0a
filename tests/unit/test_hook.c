/*
 * tests/unit/test_hook.c - cmocka tests of policyd/hook.c through the
 * "flags" module on the embedded store and the real event loop: the
 * lockout command's argv and clean environment, the evidence file, one
 * run per flag, failures retried with doubling backoff then recorded
 * failed, a hanging command killed at the timeout (SIGTERM, then SIGKILL),
 * a flood of output bounded, a command whose child keeps the pipe, a
 * command that cannot run, the concurrency limit, and the outbox after a
 * crash (interrupted runs again with POLICYD_INTERRUPTED=1) or a stop.
 * Scripts and state live in a /tmp directory removed at the end.
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
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cache/store.h"
#include "policyd/config.h"
#include "policyd/config_section.h"
#include "policyd/flag.h"
#include "policyd/hook.h"
#include "policyd/module.h"

#define SEC ((int64_t)1000000)

static double mono(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * SEC + ts.tv_nsec / 1000;
}

struct env {
	char dir[64];   /* scripts, outputs */
	char state[96]; /* state_dir */
	struct config *cfg;
	struct store *store;
	struct module_ctx m;
	bool started;
};

static void write_file(const char *path, const char *text, mode_t mode)
{
	FILE *fp = fopen(path, "w");
	assert_non_null(fp);
	fputs(text, fp);
	fclose(fp);
	assert_int_equal(chmod(path, mode), 0);
}

/* A script in the test dir: "#!/bin/sh" + body, with @DIR@ replaced. */
static void script(struct env *e, const char *name, const char *body)
{
	char path[160], text[4096];
	size_t o = (size_t)snprintf(text, sizeof(text), "#!/bin/sh\n");
	for (const char *p = body; *p && o + 80 < sizeof(text);) {
		if (strncmp(p, "@DIR@", 5) == 0) {
			o += (size_t)snprintf(text + o, sizeof(text) - o, "%s", e->dir);
			p += 5;
		} else {
			text[o++] = *p++;
		}
	}
	text[o] = '\0';
	snprintf(path, sizeof(path), "%s/%s", e->dir, name);
	write_file(path, text, 0755);
}

static struct env *env_new(void)
{
	struct env *e = calloc(1, sizeof(*e));
	snprintf(e->dir, sizeof(e->dir), "/tmp/policyd-test-hook-XXXXXX");
	assert_non_null(mkdtemp(e->dir));
	snprintf(e->state, sizeof(e->state), "%s/state", e->dir);
	return e;
}

/* Load a config naming dir/SCRIPT, let tweak() change the block, start. */
static void env_start(struct env *e, const char *scriptname, const char *flags,
                      void (*tweak)(struct flag_config *))
{
	char conf[160], body[2048], err[512];
	snprintf(conf, sizeof(conf), "%s/policyd.conf", e->dir);
	snprintf(body, sizeof(body),
	         "[server]\nstate_dir = %s\nlog = stderr\n[flags]\nlockout_command = %s/%s\n%s",
	         e->state, e->dir, scriptname, flags ? flags : "");
	write_file(conf, body, 0644);
	e->cfg = config_load(conf, err, sizeof(err));
	if (e->cfg == NULL)
		fail_msg("config: %s", err);
	if (tweak)
		tweak(config_section_get(e->cfg, &flag_config_section));
	if (e->store == NULL) {
		struct store_memory_opts mo = {.state_dir = e->state};
		e->store = store_memory_open(&mo, now_us(), err, sizeof(err));
		assert_non_null(e->store);
	}
	e->m.loop = ev_default_loop(0);
	e->m.store = e->store;
	e->m.cfg = e->cfg;
	assert_int_equal(flag_module.start(&e->m, err, sizeof(err)), 0);
	e->started = true;
}

static void env_stop(struct env *e)
{
	if (e->started)
		flag_module.stop(&e->m);
	e->started = false;
	config_free(e->cfg);
	e->cfg = NULL;
}

static void env_free(struct env *e)
{
	env_stop(e);
	if (e->store)
		e->store->be->close(e->store);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", e->dir);
	assert_int_equal(system(cmd), 0);
	free(e);
}

static void on_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)w;
	(void)revents;
}

/* Run the loop until cond(arg) or the timeout; returns cond's last value. */
static bool spin_until(bool (*cond)(void *), void *arg, double timeout)
{
	struct ev_loop *loop = ev_default_loop(0);
	ev_timer t;
	ev_timer_init(&t, on_tick, 0.02, 0.02);
	ev_timer_start(loop, &t);
	double end = mono() + timeout;
	bool ok;
	while (!(ok = cond(arg)) && mono() < end)
		ev_run(loop, EVRUN_ONCE);
	ev_timer_stop(loop, &t);
	return ok;
}

static bool never(void *arg)
{
	(void)arg;
	return false;
}

static void spin_for(double s)
{
	(void)spin_until(never, NULL, s);
}

struct res {
	int calls, rc;
	char text[256];
};

static void res_cb(void *arg, int rc, const char *msg)
{
	struct res *r = arg;
	r->calls++;
	r->rc = rc;
	snprintf(r->text, sizeof(r->text), "%s", msg ? msg : "");
}

static bool res_done(void *arg)
{
	return ((struct res *)arg)->calls > 0;
}

/* Raise a flag; returns its id (static buffer). */
static const char *raise1(const char *account)
{
	static struct res r;
	memset(&r, 0, sizeof(r));
	struct flag_request fr = {.account = account,
	                          .source = FLAG_SRC_LIMIT,
	                          .reason = "limit rcpt: recipients over 3 per 1h",
	                          .evidence = "rule=rcpt used=4\nline two",
	                          .score = 42,
	                          .actor = "policyd"};
	flag_raise(&fr, res_cb, &r);
	assert_true(spin_until(res_done, &r, 5));
	assert_int_equal(r.rc, 0);
	return r.text;
}

/* The outbox entry of id. */
struct outbox_get {
	struct hook_entry e;
	bool found;
};

static void outbox_cb(void *arg, enum store_status st, const struct store_result *res, size_t n)
{
	struct outbox_get *g = arg;
	char err[200];
	assert_int_equal(st, STORE_OK);
	assert_int_equal(n, 1);
	g->found = res[0].found;
	if (g->found)
		assert_int_equal(
		    hook_entry_decode(res[0].val, res[0].vlen, &g->e, err, sizeof(err)), 0);
}

static struct hook_entry *outbox(struct env *e, const char *id)
{
	static struct outbox_get g;
	memset(&g, 0, sizeof(g));
	struct store_op op = {.kind = STORE_GET, .rule = HOOK_NS, .subject = id};
	assert_int_equal(store_batch(e->store, &op, 1, now_us(), outbox_cb, &g), 0);
	return g.found ? &g.e : NULL;
}

struct state_wait {
	struct env *e;
	const char *id;
	enum flag_hook_state want;
};

static bool outbox_is(void *arg)
{
	struct state_wait *w = arg;
	struct hook_entry *h = outbox(w->e, w->id);
	return h && h->state == w->want;
}

static void wait_state(struct env *e, const char *id, enum flag_hook_state want, double timeout)
{
	struct state_wait w = {e, id, want};
	if (!spin_until(outbox_is, &w, timeout)) {
		struct hook_entry *h = outbox(e, id);
		fail_msg("outbox %s: state %s, want %s", id,
		         h ? flag_hook_state_name(h->state) : "gone", flag_hook_state_name(want));
	}
}

static char *slurp(const char *path)
{
	static char buf[65536];
	FILE *fp = fopen(path, "r");
	if (fp == NULL)
		return NULL;
	size_t n = fread(buf, 1, sizeof(buf) - 1, fp);
	fclose(fp);
	buf[n] = '\0';
	return buf;
}

static int count_lines(const char *path)
{
	char *s = slurp(path);
	int n = 0;
	for (; s && *s; s++)
		n += *s == '\n';
	return n;
}

/* The flag history's hook object of the account's newest flag. */
struct hist {
	int calls;
	json_t *j;
};

static void hist_cb(void *arg, int rc, char *text)
{
	struct hist *h = arg;
	json_error_t je;
	h->calls++;
	assert_int_equal(rc, 0);
	h->j = json_loads(text, 0, &je);
	free(text);
}

static bool hist_done(void *arg)
{
	return ((struct hist *)arg)->calls > 0;
}

static json_t *hook_of(const char *account)
{
	static struct hist h;
	if (h.j)
		json_decref(h.j);
	memset(&h, 0, sizeof(h));
	/* the note from hook.c goes through the flags queue: let it run */
	spin_for(0.05);
	flag_history(account, hist_cb, &h);
	assert_true(spin_until(hist_done, &h, 5));
	return json_object_get(json_array_get(json_object_get(h.j, "history"), 0), "hook");
}

/* ---------------------------------------------------------------- tests */

static void test_success(void **state)
{
	(void)state;
	struct env *e = env_new();
	script(e, "lock.sh",
	       "env | sort > @DIR@/env.$POLICYD_FLAG_ID.$POLICYD_ATTEMPT\n"
	       "printf '%s\\n' \"$@\" > @DIR@/argv.$POLICYD_FLAG_ID\n"
	       "cp \"$POLICYD_EVIDENCE_FILE\" @DIR@/evidence.$POLICYD_FLAG_ID\n"
	       "stat -c %a \"$POLICYD_EVIDENCE_FILE\" > @DIR@/mode.$POLICYD_FLAG_ID\n"
	       "pwd > @DIR@/pwd.$POLICYD_FLAG_ID\n"
	       "date +%s.%N > @DIR@/t.$POLICYD_FLAG_ID\n"
	       "echo \"locked $POLICYD_ACCOUNT\"\necho 'more' >&2\n");
	env_start(e, "lock.sh",
	          "lockout_args = --account %{account} \"--why=%{reason}\" %{id} x%{attempt}y "
	          "%{evidence_file}\n",
	          NULL);
	double t0 = (double)now_us() / 1e6;
	char id[FLAG_ID_MAX];
	snprintf(id, sizeof(id), "%s", raise1("alice"));
	wait_state(e, id, FLAG_HOOK_DONE, 5);
	char path[256];
	snprintf(path, sizeof(path), "%s/t.%s", e->dir, id);
	double t1 = atof(slurp(path));
	print_message("# hook latency flag->exec (lockout_delay 0): %.1f ms\n", (t1 - t0) * 1e3);
	assert_true(t1 - t0 < 1.0);

	/* environment: PATH and POLICYD_* only */
	snprintf(path, sizeof(path), "%s/env.%s.1", e->dir, id);
	char *env = slurp(path);
	assert_non_null(env);
	char want[256];
	snprintf(want, sizeof(want), "POLICYD_FLAG_ID=%s\n", id);
	assert_non_null(strstr(env, want));
	assert_non_null(strstr(env, "POLICYD_ACCOUNT=alice\n"));
	assert_non_null(strstr(env, "POLICYD_REASON=limit rcpt: recipients over 3 per 1h\n"));
	assert_non_null(strstr(env, "POLICYD_SCORE=42\n"));
	assert_non_null(strstr(env, "POLICYD_SOURCE=limit\n"));
	assert_non_null(strstr(env, "POLICYD_ATTEMPT=1\n"));
	assert_non_null(strstr(env, "POLICYD_RETRY=0\n"));
	assert_non_null(strstr(env, "POLICYD_INTERRUPTED=0\n"));
	assert_non_null(strstr(env, "PATH=/usr/sbin:/usr/bin:/sbin:/bin\n"));
	assert_null(strstr(env, "HOME="));
	assert_null(strstr(env, "CMOCKA"));
	/* argv, placeholders expanded per argument */
	snprintf(path, sizeof(path), "%s/argv.%s", e->dir, id);
	char *argv = slurp(path);
	snprintf(want, sizeof(want),
	         "--account\nalice\n--why=limit rcpt: recipients over 3 per "
	         "1h\n%s\nx1y\n%s/hooks/%s.evidence\n",
	         id, e->state, id);
	assert_string_equal(argv, want);
	/* the evidence file: 0600, header and evidence; removed after the run */
	snprintf(path, sizeof(path), "%s/mode.%s", e->dir, id);
	assert_string_equal(slurp(path), "600\n");
	snprintf(path, sizeof(path), "%s/evidence.%s", e->dir, id);
	char *ev = slurp(path);
	assert_non_null(strstr(ev, "account: alice\n"));
	assert_non_null(strstr(ev, "rule=rcpt used=4\nline two\n"));
	snprintf(path, sizeof(path), "%s/hooks/%s.evidence", e->state, id);
	assert_int_not_equal(access(path, F_OK), 0);
	snprintf(path, sizeof(path), "%s/pwd.%s", e->dir, id);
	assert_string_equal(slurp(path), "/\n");
	/* the result in the outbox and in the flag's history */
	struct hook_entry *h = outbox(e, id);
	assert_int_equal(h->last.attempts, 1);
	assert_int_equal(h->last.exit_code, 0);
	assert_string_equal(h->last.output, "locked alice");
	json_t *hk = hook_of("alice");
	assert_string_equal(json_string_value(json_object_get(hk, "state")), "done");
	assert_string_equal(json_string_value(json_object_get(hk, "output")), "locked alice");
	assert_int_equal(json_integer_value(json_object_get(hk, "exit")), 0);
	/* the same account again while flagged: no new flag, no new run */
	assert_string_equal(raise1("alice"), id);
	spin_for(0.3);
	snprintf(path, sizeof(path), "%s/env.%s.2", e->dir, id);
	assert_int_not_equal(access(path, F_OK), 0);
	struct hook_stats st;
	hook_get_stats(&st);
	assert_int_equal(st.started, 1);
	assert_int_equal(st.done, 1);
	env_free(e);
}

static void fast_retry(struct flag_config *fc)
{
	fc->lockout_backoff_us = 200000;
	fc->lockout_retries = 2;
}

static void test_fail_retry(void **state)
{
	(void)state;
	struct env *e = env_new();
	script(e, "fail.sh",
	       "echo \"$POLICYD_ATTEMPT $POLICYD_RETRY $(date +%s.%N)\" >> @DIR@/runs\n"
	       "echo 'boom: no database'\nexit 3\n");
	env_start(e, "fail.sh", NULL, fast_retry);
	char id[FLAG_ID_MAX];
	snprintf(id, sizeof(id), "%s", raise1("bob"));
	wait_state(e, id, FLAG_HOOK_FAILED, 10);
	char path[160];
	snprintf(path, sizeof(path), "%s/runs", e->dir);
	assert_int_equal(count_lines(path), 3); /* 1 + lockout_retries */
	char *runs = slurp(path);
	unsigned a[3], r[3];
	double t[3];
	assert_int_equal(sscanf(runs, "%u %u %lf\n%u %u %lf\n%u %u %lf", &a[0], &r[0], &t[0], &a[1],
	                        &r[1], &t[1], &a[2], &r[2], &t[2]),
	                 9);
	assert_int_equal(a[0], 1);
	assert_int_equal(r[0], 0);
	assert_int_equal(a[2], 3);
	assert_int_equal(r[2], 1);
	/* backoff 0.2 s, then 0.4 s */
	print_message("# retry gaps: %.3f s, %.3f s (backoff 0.2 s doubling)\n", t[1] - t[0],
	              t[2] - t[1]);
	assert_true(t[1] - t[0] >= 0.19 && t[1] - t[0] < 1.0);
	assert_true(t[2] - t[1] >= 0.39 && t[2] - t[1] < 1.5);
	struct hook_entry *h = outbox(e, id);
	assert_int_equal(h->last.attempts, 3);
	assert_int_equal(h->last.exit_code, 3);
	assert_string_equal(h->last.output, "boom: no database");
	json_t *hk = hook_of("bob");
	assert_string_equal(json_string_value(json_object_get(hk, "state")), "failed");
	assert_int_equal(json_integer_value(json_object_get(hk, "attempts")), 3);
	/* the evidence file is gone after the last attempt */
	snprintf(path, sizeof(path), "%s/hooks/%s.evidence", e->state, id);
	assert_int_not_equal(access(path, F_OK), 0);
	/* a failed entry is not run again after a restart */
	env_stop(e);
	env_start(e, "fail.sh", NULL, fast_retry);
	spin_for(0.5);
	snprintf(path, sizeof(path), "%s/runs", e->dir);
	assert_int_equal(count_lines(path), 3);
	env_free(e);
}

static void quick_timeout(struct flag_config *fc)
{
	fc->lockout_timeout_us = 300000;
	fc->lockout_backoff_us = 0;
	fc->lockout_retries = 1;
}

static void test_timeout(void **state)
{
	(void)state;
	struct env *e = env_new();
	script(e, "hang.sh", "echo started >> @DIR@/runs\necho working\nsleep 30\necho never\n");
	env_start(e, "hang.sh", NULL, quick_timeout);
	double t0 = mono();
	char id[FLAG_ID_MAX];
	snprintf(id, sizeof(id), "%s", raise1("carol"));
	wait_state(e, id, FLAG_HOOK_FAILED, 5);
	double took = mono() - t0;
	print_message("# two timed-out attempts (0.3 s each) took %.2f s\n", took);
	assert_true(took < 2.0);
	char path[160];
	snprintf(path, sizeof(path), "%s/runs", e->dir);
	assert_int_equal(count_lines(path), 2);
	struct hook_entry *h = outbox(e, id);
	assert_true(h->last.timed_out);
	assert_int_equal(h->last.signal, 15);
	assert_int_equal(h->last.exit_code, -1);
	assert_string_equal(h->last.output, "working");
	struct hook_stats st;
	hook_get_stats(&st);
	assert_int_equal(st.timeouts, 2);
	env_free(e);
}

static void no_retry_timeout(struct flag_config *fc)
{
	fc->lockout_timeout_us = 200000;
	fc->lockout_retries = 0;
}

/* A command that ignores SIGTERM is killed 5 s later. */
static void test_timeout_kill(void **state)
{
	(void)state;
	struct env *e = env_new();
	script(e, "stubborn.sh", "trap '' TERM\nsleep 30\n");
	env_start(e, "stubborn.sh", NULL, no_retry_timeout);
	double t0 = mono();
	char id[FLAG_ID_MAX];
	snprintf(id, sizeof(id), "%s", raise1("dave"));
	wait_state(e, id, FLAG_HOOK_FAILED, 10);
	double took = mono() - t0;
	assert_true(took > 5.0 && took < 7.0);
	struct hook_entry *h = outbox(e, id);
	assert_true(h->last.timed_out);
	assert_int_equal(h->last.signal, 9);
	env_free(e);
}

static void small_output(struct flag_config *fc)
{
	fc->lockout_output_max = 100;
	fc->lockout_timeout_us = 20 * SEC;
}

static void test_flood(void **state)
{
	(void)state;
	struct env *e = env_new();
	/* 64 MB without a newline, then a background writer holding the pipe */
	script(e, "flood.sh",
	       "head -c 67108864 /dev/zero | tr '\\0' 'x'\n"
	       "(sleep 5; echo late) &\n"
	       "exit 0\n");
	env_start(e, "flood.sh", NULL, small_output);
	double t0 = mono();
	char id[FLAG_ID_MAX];
	snprintf(id, sizeof(id), "%s", raise1("erin"));
	wait_state(e, id, FLAG_HOOK_DONE, 20);
	double took = mono() - t0;
	print_message("# 64 MB of output drained in %.2f s (kept 100 bytes)\n", took);
	assert_true(took < 4.0); /* the grace after the exit, not the background sleep */
	struct hook_entry *h = outbox(e, id);
	assert_int_equal(strlen(h->last.output), 100);
	assert_int_equal(h->last.output[0], 'x');
	assert_int_equal(h->last.exit_code, 0);
	env_free(e);
}

static void bad_command(struct flag_config *fc)
{
	free(fc->lockout_command);
	fc->lockout_command = strdup("/nonexistent/lockout");
	fc->lockout_retries = 1;
	fc->lockout_backoff_us = 0;
}

static void test_cannot_run(void **state)
{
	(void)state;
	struct env *e = env_new();
	script(e, "ok.sh", "exit 0\n");
	env_start(e, "ok.sh", NULL, bad_command);
	char id[FLAG_ID_MAX];
	snprintf(id, sizeof(id), "%s", raise1("frank"));
	wait_state(e, id, FLAG_HOOK_FAILED, 5);
	struct hook_entry *h = outbox(e, id);
	assert_int_equal(h->last.attempts, 2);
	assert_int_equal(h->last.exit_code, 127);
	assert_non_null(strstr(h->last.output, "cannot run /nonexistent/lockout"));
	env_free(e);
}

static void two_at_a_time(struct flag_config *fc)
{
	fc->lockout_concurrency = 2;
}

static void test_concurrency(void **state)
{
	(void)state;
	struct env *e = env_new();
	script(e, "slow.sh",
	       "mkdir -p @DIR@/running\ntouch @DIR@/running/$POLICYD_FLAG_ID\n"
	       "ls @DIR@/running | wc -l >> @DIR@/seen\n"
	       "echo $POLICYD_ACCOUNT >> @DIR@/runs\nsleep 0.3\n"
	       "rm @DIR@/running/$POLICYD_FLAG_ID\n");
	env_start(e, "slow.sh", NULL, two_at_a_time);
	char ids[5][FLAG_ID_MAX];
	double t0 = mono();
	for (int i = 0; i < 5; i++) {
		char acct[16];
		snprintf(acct, sizeof(acct), "user%d", i);
		snprintf(ids[i], sizeof(ids[i]), "%s", raise1(acct));
	}
	for (int i = 0; i < 5; i++)
		wait_state(e, ids[i], FLAG_HOOK_DONE, 10);
	double took = mono() - t0;
	print_message("# 5 runs of 0.3 s, 2 at a time: %.2f s\n", took);
	char path[160];
	snprintf(path, sizeof(path), "%s/runs", e->dir);
	assert_int_equal(count_lines(path), 5);
	snprintf(path, sizeof(path), "%s/seen", e->dir);
	char *seen = slurp(path);
	int maxc = 0;
	for (char *p = seen; *p; p++)
		if (*p >= '0' && *p <= '9' && *p - '0' > maxc)
			maxc = *p - '0';
	assert_true(maxc >= 1 && maxc <= 2);
	assert_true(took >= 0.85); /* 3 rounds of 0.3 s */
	env_free(e);
}

static void put_cb(void *arg, enum store_status st, const struct store_result *res, size_t n)
{
	(void)arg;
	(void)res;
	assert_int_equal(st, STORE_OK);
	assert_int_equal(n, 1);
}

/* An outbox entry as a previous run of policyd left it. */
static void put_entry(struct env *e, const char *id, const char *account, enum flag_hook_state st,
                      unsigned attempts)
{
	static struct hook_entry h;
	static char buf[STORE_MAX_VALUE];
	memset(&h, 0, sizeof(h));
	snprintf(h.id, sizeof(h.id), "%s", id);
	snprintf(h.account, sizeof(h.account), "%s", account);
	snprintf(h.reason, sizeof(h.reason), "left over");
	h.source = FLAG_SRC_MANUAL;
	h.action = ACT_DEFER;
	h.raised_us = now_us() - 60 * SEC;
	h.due_us = h.raised_us;
	h.state = st;
	h.last.attempts = attempts;
	h.last.exit_code = -1;
	size_t len = hook_entry_encode(&h, buf, sizeof(buf));
	assert_true(len > 0);
	struct store_op op = {
	    .kind = STORE_PUT, .rule = HOOK_NS, .subject = id, .val = buf, .vlen = len};
	assert_int_equal(store_batch(e->store, &op, 1, now_us(), put_cb, NULL), 0);
}

static void test_recovery(void **state)
{
	(void)state;
	struct env *e = env_new();
	script(e, "rec.sh",
	       "echo \"$POLICYD_FLAG_ID $POLICYD_ATTEMPT $POLICYD_RETRY "
	       "$POLICYD_INTERRUPTED\" >> @DIR@/runs\n");
	/* the store as a killed policyd left it */
	char err[256];
	struct store_memory_opts mo = {.state_dir = e->state};
	e->store = store_memory_open(&mo, now_us(), err, sizeof(err));
	assert_non_null(e->store);
	put_entry(e, "id-running", "gina", FLAG_HOOK_RUNNING, 1);
	put_entry(e, "id-pending", "hank", FLAG_HOOK_PENDING, 0);
	put_entry(e, "id-done", "ivy", FLAG_HOOK_DONE, 1);
	put_entry(e, "id-failed", "jo", FLAG_HOOK_FAILED, 4);
	env_start(e, "rec.sh", NULL, NULL);
	wait_state(e, "id-running", FLAG_HOOK_DONE, 5);
	wait_state(e, "id-pending", FLAG_HOOK_DONE, 5);
	spin_for(0.2);
	char path[160];
	snprintf(path, sizeof(path), "%s/runs", e->dir);
	char *runs = slurp(path);
	assert_int_equal(count_lines(path), 2);
	assert_non_null(strstr(runs, "id-running 2 1 1\n"));
	assert_non_null(strstr(runs, "id-pending 1 0 0\n"));
	struct hook_stats st;
	hook_get_stats(&st);
	assert_int_equal(st.interrupted, 1);
	env_free(e);
}

/* This host's record hooks/ID.state, as policyd writes it. */
static void local_record(struct env *e, const char *id, const char *account,
                         enum flag_hook_state st, unsigned attempts)
{
	static struct hook_entry h;
	char buf[STORE_MAX_VALUE], path[200];
	memset(&h, 0, sizeof(h));
	snprintf(h.id, sizeof(h.id), "%s", id);
	snprintf(h.account, sizeof(h.account), "%s", account);
	h.action = ACT_DEFER;
	h.raised_us = now_us() - 60 * SEC;
	h.due_us = h.raised_us;
	h.state = st;
	h.last.attempts = attempts;
	h.last.exit_code = st == FLAG_HOOK_DONE ? 0 : -1;
	snprintf(h.last.output, sizeof(h.last.output), "locked before");
	size_t len = hook_entry_encode(&h, buf, sizeof(buf));
	assert_true(len > 0);
	buf[len] = '\0';
	snprintf(path, sizeof(path), "%s/hooks", e->state);
	(void)mkdir(e->state, 0700);
	(void)mkdir(path, 0700);
	snprintf(path, sizeof(path), "%s/hooks/%s.state", e->state, id);
	write_file(path, buf, 0600);
}

/*
 * The store lost writes (a Redis failover) that this host's records in
 * hooks/ still have: a lost "done" is written back and NOT run again; a
 * lost "running" makes an interrupted run; another daemon's entry is left.
 */
static void test_local_record(void **state)
{
	(void)state;
	struct env *e = env_new();
	script(e, "rec.sh",
	       "echo \"$POLICYD_FLAG_ID $POLICYD_ATTEMPT $POLICYD_RETRY "
	       "$POLICYD_INTERRUPTED\" >> @DIR@/runs\n");
	char err[256];
	struct store_memory_opts mo = {.state_dir = e->state};
	e->store = store_memory_open(&mo, now_us(), err, sizeof(err));
	assert_non_null(e->store);
	put_entry(e, "id-lost-done", "lena", FLAG_HOOK_RUNNING, 1);
	local_record(e, "id-lost-done", "lena", FLAG_HOOK_DONE, 1);
	put_entry(e, "id-lost-running", "max", FLAG_HOOK_PENDING, 0);
	local_record(e, "id-lost-running", "max", FLAG_HOOK_RUNNING, 1);
	put_entry(e, "id-behind-ok", "nina", FLAG_HOOK_PENDING, 1); /* a retry, recorded */
	local_record(e, "id-behind-ok", "nina", FLAG_HOOK_PENDING, 1);
	/* another daemon's entry: left to it */
	static struct hook_entry h;
	static char buf[STORE_MAX_VALUE];
	memset(&h, 0, sizeof(h));
	snprintf(h.id, sizeof(h.id), "id-foreign");
	snprintf(h.account, sizeof(h.account), "olga");
	snprintf(h.owner, sizeof(h.owner), "elsewhere:/var/lib/policyd/hooks");
	h.action = ACT_DEFER;
	h.state = FLAG_HOOK_PENDING;
	h.last.exit_code = -1;
	size_t len = hook_entry_encode(&h, buf, sizeof(buf));
	struct store_op op = {
	    .kind = STORE_PUT, .rule = HOOK_NS, .subject = "id-foreign", .val = buf, .vlen = len};
	assert_int_equal(store_batch(e->store, &op, 1, now_us(), put_cb, NULL), 0);

	env_start(e, "rec.sh", NULL, NULL);
	wait_state(e, "id-lost-done", FLAG_HOOK_DONE, 5);
	wait_state(e, "id-lost-running", FLAG_HOOK_DONE, 5);
	wait_state(e, "id-behind-ok", FLAG_HOOK_DONE, 5);
	spin_for(0.3);
	char path[160];
	snprintf(path, sizeof(path), "%s/runs", e->dir);
	char *runs = slurp(path);
	assert_int_equal(count_lines(path), 2);
	assert_null(strstr(runs, "id-lost-done"));
	assert_non_null(strstr(runs, "id-lost-running 2 1 1\n"));
	assert_non_null(strstr(runs, "id-behind-ok 2 1 0\n"));
	assert_int_equal(outbox(e, "id-foreign")->state, FLAG_HOOK_PENDING);
	assert_int_equal(outbox(e, "id-lost-done")->last.exit_code, 0);
	struct hook_stats st;
	hook_get_stats(&st);
	assert_int_equal(st.restored, 1);
	/* every run leaves its record */
	snprintf(path, sizeof(path), "%s/hooks/id-lost-running.state", e->state);
	assert_non_null(strstr(slurp(path), "\"state\":\"done\""));
	/* a flag raised here is owned here */
	char id[FLAG_ID_MAX];
	snprintf(id, sizeof(id), "%s", raise1("pia"));
	wait_state(e, id, FLAG_HOOK_DONE, 5);
	assert_string_equal(outbox(e, id)->owner, hook_owner());
	assert_non_null(strstr(hook_owner(), "/state/hooks"));
	env_free(e);
}

/* A stop while the command runs: killed, "running" kept, run again at the start. */
static void test_stop_restart(void **state)
{
	(void)state;
	struct env *e = env_new();
	script(e, "long.sh",
	       "echo \"$POLICYD_ATTEMPT $POLICYD_INTERRUPTED\" >> @DIR@/runs\n"
	       "[ \"$POLICYD_INTERRUPTED\" = 1 ] && exit 0\nsleep 30\n");
	env_start(e, "long.sh", NULL, NULL);
	char id[FLAG_ID_MAX], path[160];
	snprintf(id, sizeof(id), "%s", raise1("kim"));
	snprintf(path, sizeof(path), "%s/runs", e->dir);
	struct state_wait w = {e, id, FLAG_HOOK_RUNNING};
	assert_true(spin_until(outbox_is, &w, 5));
	spin_for(0.2);
	double t0 = mono();
	env_stop(e); /* SIGTERM to the sleeping script */
	assert_true(mono() - t0 < 2.5);
	assert_int_equal(outbox(e, id)->state, FLAG_HOOK_RUNNING);
	env_start(e, "long.sh", NULL, NULL);
	wait_state(e, id, FLAG_HOOK_DONE, 5);
	assert_string_equal(slurp(path), "1 0\n2 1\n");
	env_free(e);
}

/* A grace delay: a kill of policyd before it (here: a stop) loses nothing. */
static void delayed(struct flag_config *fc)
{
	fc->lockout_delay_us = 700000;
}

static void test_delay(void **state)
{
	(void)state;
	struct env *e = env_new();
	script(e, "d.sh", "echo \"$POLICYD_ATTEMPT $POLICYD_INTERRUPTED\" >> @DIR@/runs\n");
	env_start(e, "d.sh", NULL, delayed);
	char id[FLAG_ID_MAX], path[160];
	snprintf(id, sizeof(id), "%s", raise1("lou"));
	spin_for(0.3);
	assert_int_equal(outbox(e, id)->state, FLAG_HOOK_PENDING);
	env_stop(e);
	env_start(e, "d.sh", NULL, delayed);
	double t0 = mono();
	wait_state(e, id, FLAG_HOOK_DONE, 5);
	assert_true(mono() - t0 < 0.65); /* due time kept: 0.7 s from the flag */
	snprintf(path, sizeof(path), "%s/runs", e->dir);
	assert_string_equal(slurp(path), "1 0\n");
	env_free(e);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_success),      cmocka_unit_test(test_fail_retry),
	    cmocka_unit_test(test_timeout),      cmocka_unit_test(test_timeout_kill),
	    cmocka_unit_test(test_flood),        cmocka_unit_test(test_cannot_run),
	    cmocka_unit_test(test_concurrency),  cmocka_unit_test(test_recovery),
	    cmocka_unit_test(test_stop_restart), cmocka_unit_test(test_delay),
	    cmocka_unit_test(test_local_record),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
