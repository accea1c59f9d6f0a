/*
 * tests/unit/test_store_memory.c - cmocka tests of the embedded store
 * (cache/store_memory.c, cache/journal.c): batch semantics, persistence
 * (clean restart, crash, torn and corrupt files, snapshots), eviction,
 * the max_keys cap, bad ops, and a randomized comparison with a plain
 * model of the batch semantics.  State dirs are made under /tmp and
 * removed at the end.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cache/store.h"

#define SEC  ((int64_t)1000000)
#define HOUR (3600 * SEC)
#define DAY  (86400 * SEC)
#define T0   ((int64_t)1700000000 * SEC)

/* ---- helpers ---- */

struct cap {
	int calls;
	enum store_status st;
	size_t n;
	struct store_result res[STORE_MAX_BATCH];
};

static void cap_cb(void *arg, enum store_status st, const struct store_result *res, size_t n)
{
	struct cap *c = arg;
	c->calls++;
	c->st = st;
	c->n = n;
	if (res && n <= STORE_MAX_BATCH)
		memcpy(c->res, res, n * sizeof(*res));
}

static struct cap run(struct store *s, const struct store_op *ops, size_t n, int64_t now)
{
	struct cap c;
	memset(&c, 0, sizeof(c));
	assert_int_equal(store_batch(s, ops, n, now, cap_cb, &c), 0);
	assert_int_equal(c.calls, 1); /* synchronous */
	return c;
}

static struct store_op op1(enum store_op_kind kind, const char *rule, const char *subj,
                           uint64_t cost, bool refuse, uint64_t limit, uint64_t period)
{
	struct store_op op;
	memset(&op, 0, sizeof(op));
	op.kind = kind;
	op.refuse = refuse;
	op.rule = rule;
	op.subject = subj;
	op.cost = cost;
	op.nwin = 1;
	op.win[0].limit = limit;
	op.win[0].period_us = period;
	return op;
}

/* used[0] of (rule, subject) under one window */
static uint64_t used1(struct store *s, const char *rule, const char *subj, uint64_t limit,
                      uint64_t period, int64_t now)
{
	struct store_op op = op1(STORE_PEEK, rule, subj, 0, false, limit, period);
	struct cap c = run(s, &op, 1, now);
	assert_int_equal(c.st, STORE_OK);
	return c.res[0].used[0];
}

static struct store *open_store(const char *dir, uint64_t max_keys, uint64_t snap, int64_t now)
{
	struct store_memory_opts o = {
	    .state_dir = dir, .max_keys = max_keys, .snapshot_bytes = snap};
	char err[256] = "";
	struct store *s = store_memory_open(&o, now, err, sizeof(err));
	if (s == NULL)
		fail_msg("store_memory_open: %s", err);
	return s;
}

static struct store_stats stats(struct store *s)
{
	struct store_stats st;
	s->be->stats(s, &st);
	return st;
}

static char *make_dir(void)
{
	char tmpl[] = "/tmp/test_store_memory.XXXXXX";
	char *d = mkdtemp(tmpl);
	assert_non_null(d);
	return strdup(d);
}

static void remove_dir(char *dir)
{
	DIR *d = opendir(dir);
	if (d) {
		struct dirent *de;
		while ((de = readdir(d)) != NULL) {
			if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
				continue;
			char p[512];
			snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
			unlink(p);
		}
		closedir(d);
	}
	rmdir(dir);
	free(dir);
}

/* Count files with a prefix; the last (greatest) name into last. */
static int count_files(const char *dir, const char *prefix, char *last, size_t lastsz)
{
	int n = 0;
	DIR *d = opendir(dir);
	assert_non_null(d);
	struct dirent *de;
	if (last)
		last[0] = '\0';
	while ((de = readdir(d)) != NULL) {
		if (strncmp(de->d_name, prefix, strlen(prefix)) != 0)
			continue;
		n++;
		if (last && strcmp(de->d_name, last) > 0)
			snprintf(last, lastsz, "%s", de->d_name);
	}
	closedir(d);
	return n;
}

static void append_file(const char *dir, const char *name, const void *p, size_t n)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	int fd = open(path, O_WRONLY | O_APPEND);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, p, n), (ssize_t)n);
	close(fd);
}

static void wait_snapshot(struct store *s)
{
	for (int i = 0; i < 10000 && store_memory_snapshot_running(s); i++) {
		struct timespec ts = {0, 1000000};
		nanosleep(&ts, NULL);
	}
	assert_false(store_memory_snapshot_running(s));
}

/* ---- batch semantics ---- */

static void test_batch_take_peek(void **state)
{
	(void)state;
	struct store *s = open_store(NULL, 0, 0, T0);
	struct store_op op = op1(STORE_TAKE, "rcpt", "alice@example.org", 1, true, 3, HOUR);
	for (int i = 1; i <= 3; i++) {
		struct cap c = run(s, &op, 1, T0);
		assert_int_equal(c.st, STORE_OK);
		assert_int_equal(c.n, 1);
		assert_true(c.res[0].conform);
		assert_true(c.res[0].committed);
		assert_int_equal(c.res[0].window, -1);
		assert_int_equal(c.res[0].used[0], i);
		assert_int_equal(c.res[0].empty_in_us[0], (uint64_t)i * (HOUR / 3));
	}
	struct cap c = run(s, &op, 1, T0);
	assert_false(c.res[0].conform);
	assert_false(c.res[0].committed);
	assert_int_equal(c.res[0].window, 0);
	assert_int_equal(c.res[0].retry_us, HOUR / 3);
	assert_int_equal(c.res[0].used[0], 3);
	assert_int_equal(stats(s).keys, 1);

	/* a PEEK says the same and changes nothing */
	op.kind = STORE_PEEK;
	c = run(s, &op, 1, T0 + HOUR / 3 - 1);
	assert_false(c.res[0].conform);
	assert_int_equal(c.res[0].retry_us, 1);
	c = run(s, &op, 1, T0 + HOUR / 3);
	assert_true(c.res[0].conform);
	assert_false(c.res[0].committed);
	assert_int_equal(c.res[0].used[0], 2);
	c = run(s, &op, 1, T0 + HOUR / 3);
	assert_true(c.res[0].conform);

	/* a PEEK and a refused TAKE never create a key */
	struct store_op p = op1(STORE_PEEK, "rcpt", "bob@example.org", 1, true, 3, HOUR);
	c = run(s, &p, 1, T0);
	assert_true(c.res[0].conform);
	assert_int_equal(c.res[0].used[0], 0);
	struct store_op big = op1(STORE_TAKE, "rcpt", "bob@example.org", 4, true, 3, HOUR);
	c = run(s, &big, 1, T0);
	assert_false(c.res[0].conform);
	assert_int_equal(c.res[0].retry_us, UINT64_MAX);
	assert_int_equal(stats(s).keys, 1);
	s->be->close(s);
}

static void test_batch_refused(void **state)
{
	(void)state;
	struct store *s = open_store(NULL, 0, 0, T0);
	/* fill "msg" for alice */
	struct store_op fill = op1(STORE_TAKE, "msg", "alice", 2, true, 2, HOUR);
	assert_true(run(s, &fill, 1, T0).res[0].committed);
	/* give "rcpt" some state to refund, and "size" some to clear */
	struct store_op r5 = op1(STORE_TAKE, "rcpt", "alice", 5, true, 10, HOUR);
	assert_true(run(s, &r5, 1, T0).res[0].committed);
	struct store_op sz = op1(STORE_TAKE, "size", "alice", 7, true, 100, HOUR);
	assert_true(run(s, &sz, 1, T0).res[0].committed);
	uint64_t batches = stats(s).batches;

	struct store_op ops[5] = {
	    op1(STORE_TAKE, "rcpt", "alice", 1, true, 10, HOUR), /* conforms */
	    op1(STORE_TAKE, "msg", "alice", 1, true, 2, HOUR),   /* refuses */
	    op1(STORE_REFUND, "rcpt", "alice", 2, false, 10, HOUR),
	    op1(STORE_CLEAR, "size", "alice", 0, false, 100, HOUR),
	    op1(STORE_TAKE, "hour", "alice", 1, false, 10, HOUR), /* conforms */
	};
	struct cap c = run(s, ops, 5, T0);
	assert_int_equal(c.st, STORE_OK);
	assert_int_equal(c.n, 5);
	assert_true(c.res[0].conform);
	assert_false(c.res[0].committed);
	assert_false(c.res[1].conform);
	assert_false(c.res[1].committed);
	assert_int_equal(c.res[1].window, 0);
	assert_true(c.res[2].committed);
	assert_true(c.res[3].committed);
	assert_true(c.res[4].conform);
	assert_false(c.res[4].committed);
	/* used after each op, in a batch where no TAKE was committed */
	assert_int_equal(c.res[0].used[0], 5);
	assert_int_equal(c.res[1].used[0], 2);
	assert_int_equal(c.res[2].used[0], 3); /* 5 - 2 */
	assert_int_equal(c.res[3].used[0], 0);
	assert_int_equal(c.res[4].used[0], 0);
	assert_int_equal(stats(s).batches, batches + 1);

	assert_int_equal(used1(s, "rcpt", "alice", 10, HOUR, T0), 3);
	assert_int_equal(used1(s, "msg", "alice", 2, HOUR, T0), 2);
	assert_int_equal(used1(s, "size", "alice", 100, HOUR, T0), 0);
	assert_int_equal(used1(s, "hour", "alice", 10, HOUR, T0), 0);
	assert_int_equal(stats(s).keys, 2); /* rcpt, msg; size cleared, hour never made */

	/* a non-refusing rule over its limit: not committed, the others are */
	struct store_op ops2[2] = {
	    op1(STORE_TAKE, "msg", "alice", 1, false, 2, HOUR),
	    op1(STORE_TAKE, "rcpt", "alice", 1, true, 10, HOUR),
	};
	c = run(s, ops2, 2, T0);
	assert_false(c.res[0].conform);
	assert_false(c.res[0].committed);
	assert_true(c.res[1].committed);
	assert_int_equal(c.res[1].used[0], 4);
	assert_int_equal(used1(s, "msg", "alice", 2, HOUR, T0), 2);

	/* two TAKEs of one key in one batch see each other */
	struct store_op twice[2] = {
	    op1(STORE_TAKE, "one", "carol", 1, true, 1, HOUR),
	    op1(STORE_TAKE, "one", "carol", 1, true, 1, HOUR),
	};
	c = run(s, twice, 2, T0);
	assert_true(c.res[0].conform);
	assert_false(c.res[1].conform);
	assert_false(c.res[0].committed); /* refused by the second */
	assert_int_equal(used1(s, "one", "carol", 1, HOUR, T0), 0);
	twice[1].refuse = false;
	c = run(s, twice, 2, T0);
	assert_true(c.res[0].committed);
	assert_false(c.res[1].committed);
	assert_int_equal(used1(s, "one", "carol", 1, HOUR, T0), 1);

	/* an empty batch */
	c = run(s, NULL, 0, T0);
	assert_int_equal(c.st, STORE_OK);
	assert_int_equal(c.n, 0);
	s->be->close(s);
}

static void test_batch_windows(void **state)
{
	(void)state;
	struct store *s = open_store(NULL, 0, 0, T0);
	/* 100 per hour and 1000 per day, as the daemon sends them */
	struct store_op op = op1(STORE_TAKE, "rcpt", "dave", 1, true, 100, HOUR);
	op.nwin = 2;
	op.win[1].limit = 1000;
	op.win[1].period_us = DAY;
	for (int i = 0; i < 100; i++)
		assert_true(run(s, &op, 1, T0).res[0].committed);
	struct cap c = run(s, &op, 1, T0);
	assert_false(c.res[0].conform);
	assert_int_equal(c.res[0].window, 0);
	assert_int_equal(c.res[0].retry_us, 36 * SEC);
	assert_int_equal(c.res[0].used[0], 100);
	assert_int_equal(c.res[0].used[1], 100);
	assert_int_equal(c.res[0].empty_in_us[0], HOUR);
	assert_int_equal(c.res[0].empty_in_us[1], 8640 * SEC);
	assert_int_equal(c.res[0].used[2], 0);
	/* the key's windows are matched by position: one window seen alone */
	struct store_op one = op1(STORE_PEEK, "rcpt", "dave", 1, true, 1000, DAY);
	c = run(s, &one, 1, T0);
	assert_int_equal(c.res[0].used[0], 42); /* hour's 3600 s read as 1000/day */
	/* a third window appears later: starts empty, the others keep theirs */
	op.nwin = 3;
	op.win[2].limit = 5000;
	op.win[2].period_us = 7 * DAY;
	c = run(s, &op, 1, T0 + HOUR);
	assert_true(c.res[0].committed);
	assert_int_equal(c.res[0].used[0], 1);
	assert_int_equal(c.res[0].used[1], 60); /* ceil((8640 - 3600 + 86.4) / 86.4) */
	assert_int_equal(c.res[0].used[2], 1);
	op.nwin = 1;
	c = run(s, &op, 1, T0 + HOUR);
	assert_int_equal(c.res[0].used[0], 2);
	op.nwin = 3;
	op.kind = STORE_PEEK;
	c = run(s, &op, 1, T0 + HOUR);
	assert_int_equal(c.res[0].used[1], 60);
	assert_int_equal(c.res[0].used[2], 1);

	/* several rules of one subject, and one rule of several subjects */
	const char *rules[] = {"a", "b", "c"};
	for (int r = 0; r < 3; r++)
		for (int k = 0; k <= r; k++) {
			struct store_op t = op1(STORE_TAKE, rules[r], "erin", 1, true, 10, HOUR);
			assert_true(run(s, &t, 1, T0).res[0].committed);
		}
	for (int r = 0; r < 3; r++)
		assert_int_equal(used1(s, rules[r], "erin", 10, HOUR, T0), r + 1);
	struct store_op clr = op1(STORE_CLEAR, "b", "erin", 0, false, 10, HOUR);
	clr.nwin = 0;
	run(s, &clr, 1, T0);
	assert_int_equal(used1(s, "a", "erin", 10, HOUR, T0), 1);
	assert_int_equal(used1(s, "b", "erin", 10, HOUR, T0), 0);
	assert_int_equal(used1(s, "c", "erin", 10, HOUR, T0), 3);
	assert_int_equal(stats(s).keys, 3); /* dave/rcpt, erin/a, erin/c */
	s->be->close(s);
}

static void test_bad_ops(void **state)
{
	(void)state;
	struct store *s = open_store(NULL, 0, 0, T0);
	char subj[STORE_MAX_KEY + 2];
	memset(subj, 'x', sizeof(subj));
	subj[STORE_MAX_KEY - 4] = '\0'; /* "rcpt" + 508 = 512: fits */
	struct store_op op = op1(STORE_TAKE, "rcpt", subj, 1, true, 10, HOUR);
	struct cap c = run(s, &op, 1, T0);
	assert_int_equal(c.st, STORE_OK);
	subj[STORE_MAX_KEY - 4] = 'x';
	subj[STORE_MAX_KEY - 3] = '\0'; /* 513 */
	c = run(s, &op, 1, T0);
	assert_int_equal(c.st, STORE_EINVAL);
	assert_int_equal(c.n, 0);
	assert_non_null(strstr(s->err, "513"));

	/* one bad op refuses the whole batch, nothing applied */
	struct store_op ops[2] = {
	    op1(STORE_TAKE, "rcpt", "frank", 1, true, 10, HOUR),
	    op1(STORE_TAKE, "rcpt", "frank", 1, true, 10, HOUR),
	};
	ops[1].nwin = STORE_MAX_WINDOWS + 1;
	c = run(s, ops, 2, T0);
	assert_int_equal(c.st, STORE_EINVAL);
	assert_int_equal(used1(s, "rcpt", "frank", 10, HOUR, T0), 0);
	ops[1].nwin = 1;
	ops[1].win[0].limit = 0;
	assert_int_equal(run(s, ops, 2, T0).st, STORE_EINVAL);
	ops[1].win[0].limit = 10;
	ops[1].win[0].period_us = 0;
	assert_int_equal(run(s, ops, 2, T0).st, STORE_EINVAL);
	ops[1].win[0].period_us = HOUR;
	ops[1].rule = "";
	assert_int_equal(run(s, ops, 2, T0).st, STORE_EINVAL);
	ops[1].rule = NULL;
	assert_int_equal(run(s, ops, 2, T0).st, STORE_EINVAL);
	ops[1].rule = "rcpt";
	ops[1].kind = (enum store_op_kind)9;
	assert_int_equal(run(s, ops, 2, T0).st, STORE_EINVAL);
	ops[1].kind = STORE_TAKE;
	struct store_op many[STORE_MAX_BATCH + 1];
	for (size_t i = 0; i < STORE_MAX_BATCH + 1; i++)
		many[i] = ops[0];
	assert_int_equal(run(s, many, STORE_MAX_BATCH + 1, T0).st, STORE_EINVAL);
	/* a full batch of one key: 10 conform, the rest do not, refused */
	c = run(s, many, STORE_MAX_BATCH, T0);
	assert_int_equal(c.st, STORE_OK);
	assert_true(c.res[9].conform);
	assert_false(c.res[10].conform);
	assert_int_equal(used1(s, "rcpt", "frank", 10, HOUR, T0), 0);
	assert_true(stats(s).errors >= 7);
	/* no callback */
	assert_int_equal(store_batch(s, ops, 1, T0, NULL, NULL), -1);
	s->be->close(s);
}

/* ---- eviction ---- */

static void test_evict_empty(void **state)
{
	(void)state;
	struct store *s = open_store(NULL, 0, 0, T0);
	char subj[32];
	for (int i = 0; i < 10000; i++) {
		snprintf(subj, sizeof(subj), "user%d@example.org", i);
		/* odd users: 1 ms windows; even: 1 h */
		struct store_op op =
		    op1(STORE_TAKE, "rcpt", subj, 1, true, 10, i % 2 ? 1000 : HOUR);
		assert_true(run(s, &op, 1, T0).res[0].committed);
	}
	assert_int_equal(stats(s).keys, 10000);
	uint64_t bytes = stats(s).bytes;
	/* 1/50 of the slots per tick, a deletion costs one more */
	for (int t = 0; t < 100; t++)
		s->be->tick(s, T0 + 1000 + t);
	struct store_stats st = stats(s);
	assert_int_equal(st.keys, 5000);
	assert_int_equal(st.evicted, 5000);
	assert_true(st.bytes < bytes);
	for (int i = 0; i < 10000; i++) {
		snprintf(subj, sizeof(subj), "user%d@example.org", i);
		assert_int_equal(used1(s, "rcpt", subj, 10, HOUR, T0 + 2000), i % 2 ? 0 : 1);
	}
	for (int t = 0; t < 200; t++)
		s->be->tick(s, T0 + 2 * HOUR + t);
	st = stats(s);
	assert_int_equal(st.keys, 0);
	assert_int_equal(st.evicted, 10000);
	assert_true(st.bytes < 4096); /* the table shrank back */
	/* a key with a partly empty entry: the empty rule goes, the other stays */
	struct store_op a = op1(STORE_TAKE, "short", "gina", 1, true, 10, 1000);
	struct store_op b = op1(STORE_TAKE, "long", "gina", 1, true, 10, HOUR);
	run(s, &a, 1, T0);
	run(s, &b, 1, T0);
	s->be->tick(s, T0 + 5000);
	assert_int_equal(stats(s).keys, 1);
	assert_int_equal(used1(s, "long", "gina", 10, HOUR, T0 + 5000), 1);
	s->be->close(s);
}

static void test_max_keys(void **state)
{
	(void)state;
	struct store *s = open_store(NULL, 100, 0, T0);
	char subj[32];
	for (int i = 0; i < 300; i++) {
		snprintf(subj, sizeof(subj), "u%d", i);
		struct store_op op = op1(STORE_TAKE, "rcpt", subj, 1, true, 10, HOUR);
		assert_true(run(s, &op, 1, T0 + i).res[0].committed);
		assert_true(stats(s).keys <= 100);
	}
	struct store_stats st = stats(s);
	assert_int_equal(st.keys, 100);
	assert_int_equal(st.evicted_full, 200);
	/* the newest key is there */
	assert_int_equal(used1(s, "rcpt", "u299", 10, HOUR, T0 + 300), 1);
	/* the cap prefers keys that are empty already */
	for (int i = 0; i < 100; i++) {
		snprintf(subj, sizeof(subj), "n%d", i);
		struct store_op op = op1(STORE_TAKE, "rcpt", subj, 1, true, 10, HOUR);
		assert_true(run(s, &op, 1, T0 + 2 * HOUR).res[0].committed);
	}
	st = stats(s);
	assert_int_equal(st.keys, 100);
	assert_true(st.evicted + st.evicted_full == 300);
	assert_true(st.evicted > 50);
	s->be->close(s);
}

/* ---- persistence ---- */

static void take_n(struct store *s, const char *rule, const char *subj, int n, int64_t now)
{
	struct store_op op = op1(STORE_TAKE, rule, subj, 1, true, 1000, DAY);
	for (int i = 0; i < n; i++)
		assert_true(run(s, &op, 1, now).res[0].committed);
}

static void test_persist_roundtrip(void **state)
{
	(void)state;
	char *dir = make_dir();
	struct store *s = open_store(dir, 0, 0, T0);
	take_n(s, "rcpt", "alice@example.org", 10, T0);
	take_n(s, "msg", "alice@example.org", 3, T0);
	take_n(s, "rcpt", "192.0.2.1", 7, T0);
	struct store_op op =
	    op1(STORE_TAKE, "bytes", "alice@example.org", 123456789, true, 1000000000, DAY);
	op.nwin = 2;
	op.win[1].limit = 200000000;
	op.win[1].period_us = 10 * SEC;
	assert_true(run(s, &op, 1, T0).res[0].committed);
	take_n(s, "gone", "x", 2, T0);
	struct store_op clr = op1(STORE_CLEAR, "gone", "x", 0, false, 1, 1);
	run(s, &clr, 1, T0);
	/* a second store on the same dir is refused while the first runs */
	struct store_memory_opts o = {.state_dir = dir};
	char err[256] = "";
	assert_null(store_memory_open(&o, T0, err, sizeof(err)));
	assert_non_null(strstr(err, "in use"));
	s->be->close(s);

	s = open_store(dir, 0, 0, T0 + SEC);
	assert_int_equal(used1(s, "rcpt", "alice@example.org", 1000, DAY, T0), 10);
	assert_int_equal(used1(s, "msg", "alice@example.org", 1000, DAY, T0), 3);
	assert_int_equal(used1(s, "rcpt", "192.0.2.1", 1000, DAY, T0), 7);
	assert_int_equal(used1(s, "gone", "x", 1000, DAY, T0), 0);
	op.kind = STORE_PEEK;
	op.cost = 0;
	struct cap c = run(s, &op, 1, T0 + SEC);
	assert_int_equal(c.res[0].used[0], 123445215); /* 1 s of 1e9/day drained */
	assert_int_equal(c.res[0].used[1], 103456789); /* 1 s of 2e8/10 s drained */
	assert_int_equal(stats(s).keys, 4);
	/* a restart long after: the 10 s window is gone, the rest stays */
	s->be->close(s);
	s = open_store(dir, 0, 0, T0 + 20 * SEC);
	c = run(s, &op, 1, T0 + 20 * SEC);
	assert_int_equal(c.res[0].used[1], 0);
	assert_true(c.res[0].used[0] > 0);
	/* restarts add journals; and a restart after everything expired loads nothing */
	s->be->close(s);
	s = open_store(dir, 0, 0, T0 + 2 * DAY);
	assert_int_equal(stats(s).keys, 0);
	s->be->close(s);
	remove_dir(dir);
}

/* A child that takes, ticks (journal written), takes more, and is killed. */
static void crash_child(const char *dir, int before, int after)
{
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct store_memory_opts o = {.state_dir = dir, .flush_ms = 1000};
		char err[256];
		struct store *s = store_memory_open(&o, T0, err, sizeof(err));
		if (s == NULL)
			_exit(1);
		struct store_op op = op1(STORE_TAKE, "rcpt", "henry", 1, true, 1000, DAY);
		struct cap c;
		for (int i = 0; i < before; i++)
			store_batch(s, &op, 1, T0, cap_cb, &c);
		s->be->tick(s, T0 + 100000); /* under flush_ms: nothing written */
		s->be->tick(s, T0 + SEC);    /* written */
		for (int i = 0; i < after; i++)
			store_batch(s, &op, 1, T0 + SEC, cap_cb, &c);
		s->be->tick(s, T0 + SEC + 100000); /* within flush_ms: not written */
		raise(SIGKILL);
		_exit(2);
	}
	int st = 0;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
}

static void test_crash(void **state)
{
	(void)state;
	char *dir = make_dir();
	crash_child(dir, 25, 4);
	struct store *s = open_store(dir, 0, 0, T0 + 2 * SEC);
	assert_int_equal(used1(s, "rcpt", "henry", 1000, DAY, T0 + SEC), 25);
	s->be->close(s);

	/* a torn last record: a frame that runs past the end of the file */
	char last[256];
	crash_child(dir, 5, 0); /* 25 + 5 */
	assert_true(count_files(dir, "journal.", last, sizeof(last)) >= 1);
	uint8_t torn[20] = {60, 0, 0, 0, 1, 2, 3, 4, 1, 1, 4, 0, 5, 0};
	append_file(dir, last, torn, sizeof(torn));
	s = open_store(dir, 0, 0, T0 + 2 * SEC);
	assert_int_equal(used1(s, "rcpt", "henry", 1000, DAY, T0 + SEC), 30);
	s->be->close(s);

	/* a last record with a bad checksum, and zeros after a crash */
	crash_child(dir, 5, 0);
	count_files(dir, "journal.", last, sizeof(last));
	uint8_t bad[8 + 12] = {12, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef};
	append_file(dir, last, bad, sizeof(bad));
	crash_child(dir, 5, 0);
	count_files(dir, "journal.", last, sizeof(last));
	uint8_t zeros[4096] = {0};
	append_file(dir, last, zeros, sizeof(zeros));
	s = open_store(dir, 0, 0, T0 + 2 * SEC);
	assert_int_equal(used1(s, "rcpt", "henry", 1000, DAY, T0 + SEC), 40);
	s->be->close(s);
	remove_dir(dir);
}

static long journal_size(const char *dir)
{
	char last[256], path[512];
	struct stat sb;
	count_files(dir, "journal.", last, sizeof(last));
	snprintf(path, sizeof(path), "%s/%s", dir, last);
	assert_int_equal(stat(path, &sb), 0);
	return (long)sb.st_size;
}

static void test_flush_interval(void **state)
{
	(void)state;
	char *dir = make_dir();
	struct store_memory_opts o = {.state_dir = dir, .flush_ms = 1000};
	char err[256];
	struct store *s = store_memory_open(&o, T0, err, sizeof(err));
	assert_non_null(s);
	long hdr = journal_size(dir);
	int64_t made = T0 + 150000, written = 0;
	for (int k = 1; k <= 30; k++) {
		int64_t now = T0 + k * 100000;
		if (now - 50000 == made)
			take_n(s, "rcpt", "jack", 1, made);
		s->be->tick(s, now);
		if (!written && journal_size(dir) > hdr)
			written = now;
	}
	/* written by the last tick before the record is flush_ms old, not earlier */
	assert_true(written > made + 500000);
	assert_true(written <= made + SEC);
	/* flush() writes at once */
	take_n(s, "rcpt", "jack", 1, T0 + 4 * SEC);
	long before = journal_size(dir);
	assert_int_equal(s->be->flush(s), 0);
	assert_true(journal_size(dir) > before);
	s->be->close(s);
	remove_dir(dir);
}

static void test_corrupt(void **state)
{
	(void)state;
	char *dir = make_dir();
	struct store *s = open_store(dir, 0, 0, T0);
	take_n(s, "rcpt", "ivan", 3, T0);
	s->be->close(s);
	char last[256], path[512];
	count_files(dir, "journal.", last, sizeof(last));
	snprintf(path, sizeof(path), "%s/%s", dir, last);
	/* flip a byte in the first record's payload: it is not the last one */
	int fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	uint8_t b;
	assert_int_equal(pread(fd, &b, 1, 24 + 8 + 9), 1);
	b ^= 0x40;
	assert_int_equal(pwrite(fd, &b, 1, 24 + 8 + 9), 1);
	close(fd);
	struct store_memory_opts o = {.state_dir = dir};
	char err[256] = "";
	assert_null(store_memory_open(&o, T0, err, sizeof(err)));
	assert_non_null(strstr(err, last));
	assert_non_null(strstr(err, "offset 24"));
	/* a bad magic */
	b ^= 0x40;
	fd = open(path, O_RDWR);
	assert_int_equal(pwrite(fd, &b, 1, 24 + 8 + 9), 1);
	assert_int_equal(pwrite(fd, "X", 1, 0), 1);
	close(fd);
	assert_null(store_memory_open(&o, T0, err, sizeof(err)));
	assert_non_null(strstr(err, "magic"));
	remove_dir(dir);
}

static void test_snapshot(void **state)
{
	(void)state;
	char *dir = make_dir();
	struct store *s = open_store(dir, 0, 0, T0);
	char subj[32];
	for (int i = 0; i < 2000; i++) {
		snprintf(subj, sizeof(subj), "s%d", i);
		take_n(s, "rcpt", subj, 1 + i % 5, T0);
	}
	take_n(s, "msg", "s1", 9, T0);
	assert_int_equal(store_memory_snapshot(s), 0);
	assert_int_equal(store_memory_snapshot(s), -1); /* one at a time */
	/* changes while the child writes go to the new journal */
	take_n(s, "rcpt", "s0", 4, T0); /* 1 + 4 */
	take_n(s, "late", "s7", 2, T0);
	struct store_op clr = op1(STORE_CLEAR, "msg", "s1", 0, false, 1, 1);
	run(s, &clr, 1, T0);
	wait_snapshot(s);
	s->be->tick(s, T0 + SEC);
	assert_int_equal(count_files(dir, "snapshot", NULL, 0), 1); /* no snapshot.tmp */
	assert_int_equal(count_files(dir, "journal.", NULL, 0), 1); /* old journal gone */
	s->be->close(s);

	s = open_store(dir, 0, 0, T0 + SEC);
	for (int i = 0; i < 2000; i++) {
		snprintf(subj, sizeof(subj), "s%d", i);
		assert_int_equal(used1(s, "rcpt", subj, 1000, DAY, T0), i == 0 ? 5 : 1 + i % 5);
	}
	assert_int_equal(used1(s, "msg", "s1", 1000, DAY, T0), 0);
	assert_int_equal(used1(s, "late", "s7", 1000, DAY, T0), 2);
	assert_int_equal(stats(s).keys, 2001);
	s->be->close(s);

	/* a tiny threshold: tick() starts one; the child reaped by someone else */
	s = open_store(dir, 0, 100, T0 + SEC);
	take_n(s, "rcpt", "s2", 1, T0 + SEC);
	s->be->tick(s, T0 + 2 * SEC);
	int st;
	pid_t pid = waitpid(-1, &st, 0); /* as libev's SIGCHLD handler would */
	assert_true(pid > 0);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	assert_false(store_memory_snapshot_running(s));
	assert_int_equal(count_files(dir, "journal.", NULL, 0), 1);
	assert_int_equal(stats(s).errors, 0);
	s->be->close(s);
	s = open_store(dir, 0, 0, T0 + 2 * SEC);
	assert_int_equal(used1(s, "rcpt", "s2", 1000, DAY, T0), 4);
	assert_int_equal(used1(s, "rcpt", "s0", 1000, DAY, T0), 5);

	/* a snapshot that lost its end (truncated) is an error, not silence */
	s->be->close(s);
	char path[512];
	snprintf(path, sizeof(path), "%s/snapshot", dir);
	struct stat sb;
	assert_int_equal(stat(path, &sb), 0);
	assert_int_equal(truncate(path, sb.st_size - 10), 0);
	struct store_memory_opts o = {.state_dir = dir};
	char err[256] = "";
	assert_null(store_memory_open(&o, T0, err, sizeof(err)));
	assert_non_null(strstr(err, "snapshot"));
	remove_dir(dir);
}

/* ---- randomized: the store against a plain model of the semantics ---- */

#define M_RULES 3
#define M_SUBJ  40

static uint64_t m_rng = 0x243f6a8885a308d3ULL;

static uint64_t m_rand(void)
{
	m_rng ^= m_rng >> 12;
	m_rng ^= m_rng << 25;
	m_rng ^= m_rng >> 27;
	return m_rng * 0x2545f4914f6cdd1dULL;
}

static const struct gcra_window m_win[STORE_MAX_WINDOWS] = {
    {3, 1000},
    {10, 20000},
    {40, 500000},
    {1000000, 7},
};

struct m_state {
	struct gcra_tat t[M_RULES][M_SUBJ][STORE_MAX_WINDOWS];
};

/* the semantics of store.h, written plainly */
static void m_batch(struct m_state *m, const struct store_op *ops, const int *ri, const int *si,
                    size_t n, int64_t now, struct store_result *res)
{
	struct m_state work = *m;
	bool refused = false;
	for (int pass = 0; pass < 2; pass++) {
		for (size_t i = 0; i < n; i++) {
			const struct store_op *op = &ops[i];
			struct gcra_tat *t = work.t[ri[i]][si[i]];
			struct store_result *r = &res[i];
			if (op->kind == STORE_TAKE || op->kind == STORE_PEEK) {
				if (pass == 0) {
					struct gcra_tat next[STORE_MAX_WINDOWS];
					r->conform = true;
					r->window = -1;
					r->retry_us = 0;
					for (unsigned k = 0; k < op->nwin; k++) {
						uint64_t rt;
						if (gcra_take(&op->win[k], t[k], now, op->cost,
						              &next[k], &rt))
							continue;
						if (r->conform)
							r->window = (int8_t)k;
						r->conform = false;
						r->retry_us = rt > r->retry_us ? rt : r->retry_us;
					}
					r->committed = op->kind == STORE_TAKE && r->conform;
					if (r->committed)
						memcpy(t, next, op->nwin * sizeof(*t));
					if (op->refuse && !r->conform)
						refused = true;
				} else {
					r->committed = false;
				}
			} else if (op->kind == STORE_REFUND) {
				for (unsigned k = 0; k < op->nwin; k++)
					t[k] = gcra_refund(&op->win[k], t[k], now, op->cost);
			} else {
				for (unsigned k = 0; k < STORE_MAX_WINDOWS; k++)
					t[k] = (struct gcra_tat){0, 0};
			}
			for (unsigned k = 0; k < STORE_MAX_WINDOWS; k++) {
				bool have = k < op->nwin && op->kind != STORE_CLEAR;
				r->used[k] = have ? gcra_used(&op->win[k], t[k], now) : 0;
				r->empty_in_us[k] = have ? gcra_empty_in(t[k], now) : 0;
			}
		}
		if (!refused)
			break;
		if (pass == 0)
			work = *m;
	}
	*m = work;
}

static void test_model(void **state)
{
	(void)state;
	static struct m_state m; /* zero: every window empty */
	char *dir = make_dir();
	const char *rules[M_RULES] = {"rcpt", "msg", "size"};
	char subjects[M_SUBJ][24];
	for (int i = 0; i < M_SUBJ; i++)
		snprintf(subjects[i], sizeof(subjects[i]), "subject-%d@example.net", i);
	int64_t now = T0;
	struct store *s = open_store(dir, 0, 0, now);
	int reopens = 0, snaps = 0;

	for (int iter = 0; iter < 40000; iter++) {
		struct store_op ops[6];
		int ri[6], si[6];
		size_t n = 1 + m_rand() % 6;
		for (size_t i = 0; i < n; i++) {
			ri[i] = (int)(m_rand() % M_RULES);
			si[i] = (int)(m_rand() % (iter % 1000 < 500 ? 8 : M_SUBJ));
			unsigned kind = (unsigned)(m_rand() % 10);
			ops[i] = op1(kind < 6   ? STORE_TAKE
			             : kind < 8 ? STORE_PEEK
			             : kind < 9 ? STORE_REFUND
			                        : STORE_CLEAR,
			             rules[ri[i]], subjects[si[i]], m_rand() % 4, m_rand() % 3 != 0,
			             1, 1);
			ops[i].nwin = (uint8_t)(1 + m_rand() % STORE_MAX_WINDOWS);
			memcpy(ops[i].win, m_win, sizeof(m_win));
		}
		struct store_result want[6];
		m_batch(&m, ops, ri, si, n, now, want);
		struct cap c = run(s, ops, n, now);
		assert_int_equal(c.st, STORE_OK);
		for (size_t i = 0; i < n; i++) {
			struct store_result *g = &c.res[i], *w = &want[i];
			if (ops[i].kind == STORE_TAKE || ops[i].kind == STORE_PEEK) {
				assert_int_equal(g->conform, w->conform);
				assert_int_equal(g->committed, w->committed);
				assert_int_equal(g->window, w->window);
				if (!w->conform)
					assert_int_equal(g->retry_us, w->retry_us);
			}
			for (unsigned k = 0; k < STORE_MAX_WINDOWS; k++) {
				assert_int_equal(g->used[k], w->used[k]);
				assert_int_equal(g->empty_in_us[k], w->empty_in_us[k]);
			}
		}
		now += (int64_t)(m_rand() % 400);
		if (m_rand() % 20 == 0)
			s->be->tick(s, now);
		if (m_rand() % 3000 == 0) {
			s->be->close(s);
			s = open_store(dir, 0, 0, now);
			reopens++;
		}
		if (m_rand() % 4000 == 0) {
			if (store_memory_snapshot(s) == 0)
				snaps++;
			wait_snapshot(s);
		}
	}
	s->be->close(s);
	assert_true(reopens > 3);
	assert_true(snaps > 3);
	remove_dir(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_batch_take_peek),   cmocka_unit_test(test_batch_refused),
	    cmocka_unit_test(test_batch_windows),     cmocka_unit_test(test_bad_ops),
	    cmocka_unit_test(test_evict_empty),       cmocka_unit_test(test_max_keys),
	    cmocka_unit_test(test_persist_roundtrip), cmocka_unit_test(test_crash),
	    cmocka_unit_test(test_flush_interval),    cmocka_unit_test(test_corrupt),
	    cmocka_unit_test(test_snapshot),          cmocka_unit_test(test_model),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
