/*
 * tests/unit/test_store_memory.c - cmocka tests of the embedded store
 * (cache/store_memory.c, cache/journal.c): batch semantics, persistence
 * (clean restart, crash, torn and corrupt files, snapshots), eviction,
 * the max_keys cap, bad ops, and a randomized comparison with a plain
 * model of the batch semantics; key-value blobs (GET/PUT/DEL, TTL, the
 * value bound, persistence in journal and snapshot, version 1 files,
 * list() of a namespace and of a rule, ordering with GCRA ops).  State dirs are made under /tmp and
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

#include "cache/journal.h"
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
	/* 1/500 of the slots per tick, a deletion costs one more */
	for (int t = 0; t < 1000; t++)
		s->be->tick(s, T0 + 1000 + t);
	struct store_stats st = stats(s);
	assert_int_equal(st.keys, 5000);
	assert_int_equal(st.evicted, 5000);
	assert_true(st.bytes < bytes);
	for (int i = 0; i < 10000; i++) {
		snprintf(subj, sizeof(subj), "user%d@example.org", i);
		assert_int_equal(used1(s, "rcpt", subj, 10, HOUR, T0 + 2000), i % 2 ? 0 : 1);
	}
	for (int t = 0; t < 2000; t++)
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

/* Ticks in slices: a tick writes once 64 KB wait, long before flush_ms; and
 * when the caller slows from STORE_TICK_MS to STORE_IDLE_TICK_MS, no record
 * waits longer than flush_ms. */
static void test_tick_slices(void **state)
{
	(void)state;
	char *dir = make_dir();
	struct store *s = open_store(dir, 0, 0, T0); /* flush_ms: the default, 1000 */
	long hdr = journal_size(dir);
	char subj[32];
	for (int i = 0; i < 3000; i++) { /* well over 64 KB of records */
		snprintf(subj, sizeof(subj), "user%d@example.org", i);
		take_n(s, "rcpt", subj, 1, T0);
	}
	s->be->tick(s, T0 + STORE_TICK_MS * 1000); /* writes: last write at +10 ms */
	assert_true(journal_size(dir) > hdr + 60000);

	/* one record just after that write, ticks every STORE_TICK_MS, then the
	 * caller goes idle (STORE_IDLE_TICK_MS): the tick before must write */
	int64_t made = T0 + 15000, t = T0 + STORE_TICK_MS * 1000, written = 0;
	take_n(s, "rcpt", "kate", 1, made);
	long before = journal_size(dir);
	while (t < made + 3 * SEC) {
		t += t < made + 950000 ? STORE_TICK_MS * 1000 : STORE_IDLE_TICK_MS * 1000;
		s->be->tick(s, t);
		if (!written && journal_size(dir) > before)
			written = t;
	}
	assert_true(written > made);
	assert_true(written <= made + SEC);
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

/* ---- key-value blobs ---- */

static struct store_op kv(enum store_op_kind kind, const char *ns, const char *subj,
                          const char *val, uint64_t ttl)
{
	struct store_op op;
	memset(&op, 0, sizeof(op));
	op.kind = kind;
	op.rule = ns;
	op.subject = subj;
	op.val = val;
	op.vlen = val ? strlen(val) : 0;
	op.ttl_us = ttl;
	return op;
}

/* GET (ns, subj) into out (NUL-terminated); -1 when not found. */
static long get_str(struct store *s, const char *ns, const char *subj, int64_t now, char *out,
                    size_t outsz);

struct got {
	char val[STORE_MAX_BATCH][64];
	bool found[STORE_MAX_BATCH];
	size_t vlen[STORE_MAX_BATCH];
	size_t n;
	enum store_status st;
	int calls;
};

/* Copies GET values while they are valid: during the callback. */
static void got_cb(void *arg, enum store_status st, const struct store_result *res, size_t n)
{
	struct got *g = arg;
	g->calls++;
	g->st = st;
	g->n = n;
	for (size_t i = 0; i < n; i++) {
		g->found[i] = res[i].found;
		g->vlen[i] = res[i].vlen;
		size_t k =
		    res[i].vlen < sizeof(g->val[i]) - 1 ? res[i].vlen : sizeof(g->val[i]) - 1;
		if (k)
			memcpy(g->val[i], res[i].val, k);
		g->val[i][k] = '\0';
	}
}

static struct got run_got(struct store *s, const struct store_op *ops, size_t n, int64_t now)
{
	struct got g;
	memset(&g, 0, sizeof(g));
	assert_int_equal(store_batch(s, ops, n, now, got_cb, &g), 0);
	assert_int_equal(g.calls, 1);
	return g;
}

static long get_str(struct store *s, const char *ns, const char *subj, int64_t now, char *out,
                    size_t outsz)
{
	struct store_op op = kv(STORE_GET, ns, subj, NULL, 0);
	struct got g = run_got(s, &op, 1, now);
	assert_int_equal(g.st, STORE_OK);
	snprintf(out, outsz, "%s", g.val[0]);
	return g.found[0] ? (long)g.vlen[0] : -1;
}

static void test_kv_basic(void **state)
{
	(void)state;
	struct store *s = open_store(NULL, 0, 0, T0);
	char v[64];
	assert_int_equal(get_str(s, "@flag", "alice", T0, v, sizeof(v)), -1);
	struct store_op put = kv(STORE_PUT, "@flag", "alice", "one", 0);
	struct got g = run_got(s, &put, 1, T0);
	assert_int_equal(g.st, STORE_OK);
	assert_false(g.found[0]);
	assert_int_equal(get_str(s, "@flag", "alice", T0, v, sizeof(v)), 3);
	assert_string_equal(v, "one");
	/* same subject, other namespace: another blob */
	assert_int_equal(get_str(s, "@outbox", "alice", T0, v, sizeof(v)), -1);
	/* overwrite: found says it existed */
	put = kv(STORE_PUT, "@flag", "alice", "two!", 0);
	g = run_got(s, &put, 1, T0);
	assert_true(g.found[0]);
	assert_int_equal(get_str(s, "@flag", "alice", T0, v, sizeof(v)), 4);
	assert_string_equal(v, "two!");
	/* an empty value is a value */
	put = kv(STORE_PUT, "@flag", "empty", "", 0);
	run_got(s, &put, 1, T0);
	assert_int_equal(get_str(s, "@flag", "empty", T0, v, sizeof(v)), 0);
	/* DEL */
	struct store_op del = kv(STORE_DEL, "@flag", "alice", NULL, 0);
	g = run_got(s, &del, 1, T0);
	assert_true(g.found[0]);
	g = run_got(s, &del, 1, T0);
	assert_false(g.found[0]);
	assert_int_equal(get_str(s, "@flag", "alice", T0, v, sizeof(v)), -1);
	assert_int_equal(stats(s).keys, 1); /* "empty" */

	/* the value bound: STORE_MAX_VALUE fits, one more is EINVAL */
	static char big[STORE_MAX_VALUE + 1];
	memset(big, 'b', sizeof(big));
	put = kv(STORE_PUT, "@flag", "big", NULL, 0);
	put.val = big;
	put.vlen = STORE_MAX_VALUE;
	assert_int_equal(run_got(s, &put, 1, T0).st, STORE_OK);
	put.vlen = STORE_MAX_VALUE + 1;
	struct cap c = run(s, &put, 1, T0);
	assert_int_equal(c.st, STORE_EINVAL);
	assert_non_null(strstr(s->err, "8193"));
	put.vlen = 5;
	put.val = NULL;
	assert_int_equal(run(s, &put, 1, T0).st, STORE_EINVAL);
	/* namespaces and rule names stay apart */
	put = kv(STORE_PUT, "flag", "x", "v", 0);
	assert_int_equal(run(s, &put, 1, T0).st, STORE_EINVAL);
	assert_non_null(strstr(s->err, "not a namespace"));
	struct store_op take = op1(STORE_TAKE, "@flag", "x", 1, true, 10, HOUR);
	assert_int_equal(run(s, &take, 1, T0).st, STORE_EINVAL);
	/* a key too long for a blob too */
	char subj[STORE_MAX_KEY + 1];
	memset(subj, 's', sizeof(subj));
	subj[STORE_MAX_KEY - 5] = '\0'; /* "@flag" + 507 = 512 */
	put = kv(STORE_PUT, "@flag", subj, "v", 0);
	assert_int_equal(run(s, &put, 1, T0).st, STORE_OK);
	subj[STORE_MAX_KEY - 5] = 's';
	subj[STORE_MAX_KEY - 4] = '\0';
	assert_int_equal(run(s, &put, 1, T0).st, STORE_EINVAL);
	s->be->close(s);
}

static void test_kv_ttl(void **state)
{
	(void)state;
	struct store *s = open_store(NULL, 0, 0, T0);
	char v[64];
	struct store_op put = kv(STORE_PUT, "@outbox", "id1", "pending", 10 * SEC);
	run_got(s, &put, 1, T0);
	assert_int_equal(get_str(s, "@outbox", "id1", T0 + 10 * SEC - 1, v, sizeof(v)), 7);
	assert_int_equal(get_str(s, "@outbox", "id1", T0 + 10 * SEC, v, sizeof(v)), -1);
	/* a PUT renews the expiry; ttl 0 never expires */
	run_got(s, &put, 1, T0 + 20 * SEC);
	put.ttl_us = 0;
	run_got(s, &put, 1, T0 + 25 * SEC);
	assert_int_equal(get_str(s, "@outbox", "id1", T0 + 400 * DAY, v, sizeof(v)), 7);
	/* an expired blob is not "found" by a PUT either */
	put = kv(STORE_PUT, "@outbox", "id2", "x", SEC);
	run_got(s, &put, 1, T0);
	struct got g = run_got(s, &put, 1, T0 + 2 * SEC);
	assert_false(g.found[0]);
	/* the sweep frees expired blobs without a GET */
	char subj[32];
	for (int i = 0; i < 3000; i++) {
		snprintf(subj, sizeof(subj), "t%d", i);
		put = kv(STORE_PUT, "@profile", subj, "short-lived", (uint64_t)(1 + i % 5) * SEC);
		run_got(s, &put, 1, T0);
	}
	assert_int_equal(stats(s).keys, 3002);
	for (int k = 0; k < 60; k++)
		s->be->tick(s, T0 + 3 * SEC + k * 100000);
	uint64_t left = stats(s).keys;
	assert_true(left > 2 && left < 3002); /* 1 s and 2 s ones gone, at least partly */
	for (int k = 0; k < 200; k++)
		s->be->tick(s, T0 + 10 * SEC + k * 100000);
	assert_int_equal(stats(s).keys, 1); /* id1 */
	s->be->close(s);
}

/* The header's version field of a state file. */
static uint32_t file_version(const char *dir, const char *name)
{
	char path[512];
	uint8_t h[24];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	int fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	assert_int_equal(read(fd, h, sizeof(h)), (ssize_t)sizeof(h));
	close(fd);
	return (uint32_t)h[8] | (uint32_t)h[9] << 8 | (uint32_t)h[10] << 16 | (uint32_t)h[11] << 24;
}

static void test_kv_persist(void **state)
{
	(void)state;
	char *dir = make_dir();
	struct store *s = open_store(dir, 0, 0, T0);
	static uint8_t bin[STORE_MAX_VALUE];
	for (size_t i = 0; i < sizeof(bin); i++)
		bin[i] = (uint8_t)(i * 7 + 3); /* NULs and all */
	struct store_op ops[5] = {
	    kv(STORE_PUT, "@flag", "alice", "{\"active\":true}", 0),
	    kv(STORE_PUT, "@flag", "bob", "gone soon", 0),
	    kv(STORE_PUT, "@outbox", "f-1", "short", 30 * SEC),
	    kv(STORE_PUT, "@outbox", "f-2", "long", DAY),
	    kv(STORE_PUT, "@bin", "b", NULL, 0),
	};
	ops[4].val = bin;
	ops[4].vlen = sizeof(bin);
	assert_int_equal(run_got(s, ops, 5, T0).st, STORE_OK);
	struct store_op del = kv(STORE_DEL, "@flag", "bob", NULL, 0);
	run_got(s, &del, 1, T0);
	take_n(s, "rcpt", "alice", 4, T0);
	s->be->close(s);
	char last[256];
	count_files(dir, "journal.", last, sizeof(last));
	assert_int_equal(file_version(dir, last), JOURNAL_VERSION);

	/* a restart after f-1 expired */
	s = open_store(dir, 0, 0, T0 + 60 * SEC);
	char v[64];
	assert_int_equal(get_str(s, "@flag", "alice", T0 + 60 * SEC, v, sizeof(v)), 15);
	assert_string_equal(v, "{\"active\":true}");
	assert_int_equal(get_str(s, "@flag", "bob", T0 + 60 * SEC, v, sizeof(v)), -1);
	assert_int_equal(get_str(s, "@outbox", "f-1", T0 + 60 * SEC, v, sizeof(v)), -1);
	assert_int_equal(get_str(s, "@outbox", "f-2", T0 + 60 * SEC, v, sizeof(v)), 4);
	struct cap c;
	struct store_op get = kv(STORE_GET, "@bin", "b", NULL, 0);
	memset(&c, 0, sizeof(c));
	/* compare the whole binary value inside the callback */
	struct got g = run_got(s, &get, 1, T0 + 60 * SEC);
	assert_true(g.found[0]);
	assert_int_equal(g.vlen[0], sizeof(bin));
	assert_memory_equal(g.val[0], bin, 63);
	assert_int_equal(used1(s, "rcpt", "alice", 1000, DAY, T0), 4);
	assert_int_equal(stats(s).keys, 4); /* alice, f-2, b, rcpt/alice */

	/* through a snapshot: the blobs (more than its 1 MB buffer) survive */
	char subj[32];
	static char val[6000];
	for (int i = 0; i < 400; i++) {
		snprintf(subj, sizeof(subj), "p%d", i);
		memset(val, 'a' + i % 26, sizeof(val));
		struct store_op p = kv(STORE_PUT, "@profile", subj, NULL, i % 2 ? DAY : 0);
		p.val = val;
		p.vlen = sizeof(val) - (size_t)i;
		run_got(s, &p, 1, T0 + 60 * SEC);
	}
	assert_int_equal(store_memory_snapshot(s), 0);
	wait_snapshot(s);
	s->be->tick(s, T0 + 61 * SEC);
	assert_int_equal(count_files(dir, "journal.", NULL, 0), 1);
	assert_int_equal(file_version(dir, "snapshot"), JOURNAL_VERSION);
	s->be->close(s);
	s = open_store(dir, 0, 0, T0 + 62 * SEC);
	assert_int_equal(stats(s).keys, 404);
	for (int i = 0; i < 400; i += 37) {
		snprintf(subj, sizeof(subj), "p%d", i);
		assert_int_equal(get_str(s, "@profile", subj, T0 + 62 * SEC, v, sizeof(v)),
		                 (long)(sizeof(val) - (size_t)i));
		assert_int_equal(v[0], 'a' + i % 26);
	}
	assert_int_equal(get_str(s, "@flag", "alice", T0 + 62 * SEC, v, sizeof(v)), 15);
	s->be->close(s);
	/* two days later the DAY ones are gone, the others stay */
	s = open_store(dir, 0, 0, T0 + 2 * DAY);
	assert_int_equal(get_str(s, "@profile", "p1", T0 + 2 * DAY, v, sizeof(v)), -1);
	assert_true(get_str(s, "@profile", "p2", T0 + 2 * DAY, v, sizeof(v)) > 0);
	s->be->close(s);
	remove_dir(dir);
}

/* A version 1 journal (key records only) still loads; a blob in one does not. */
static void test_kv_old_version(void **state)
{
	(void)state;
	char *dir = make_dir();
	uint8_t buf[JOURNAL_HDR_SIZE + JOURNAL_REC_MAX];
	journal_header(buf, JOURNAL_LOG, 0);
	buf[8] = 1; /* version 1 */
	struct journal_rec r = {.rule = "rcpt", .rlen = 4, .subj = "old", .slen = 3, .nwin = 1};
	r.tat[0].us = T0 + HOUR; /* 1 h of 1/h in use */
	r.tat[0].rem = 0;
	size_t len = JOURNAL_HDR_SIZE;
	len += journal_encode(buf + len, sizeof(buf) - len, &r);
	char path[512];
	snprintf(path, sizeof(path), "%s/journal.0000000000000000", dir);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, buf, len), (ssize_t)len);
	close(fd);
	struct store *s = open_store(dir, 0, 0, T0);
	assert_int_equal(used1(s, "rcpt", "old", 24, DAY, T0), 1);
	s->be->close(s);

	/* the same file with a blob record after the key record */
	struct journal_rec b = {.rule = "@flag",
	                        .rlen = 5,
	                        .subj = "x",
	                        .slen = 1,
	                        .blob = true,
	                        .val = "v",
	                        .vlen = 1};
	size_t bl = journal_encode(buf + len, sizeof(buf) - len, &b);
	assert_true(bl > 0);
	uint8_t pad[64];
	memset(pad, 0xee, sizeof(pad)); /* so that the blob is not a torn tail */
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_int_equal(write(fd, buf, len + bl), (ssize_t)(len + bl));
	assert_int_equal(write(fd, pad, sizeof(pad)), (ssize_t)sizeof(pad));
	close(fd);
	struct store_memory_opts o = {.state_dir = dir};
	char err[256] = "";
	assert_null(store_memory_open(&o, T0, err, sizeof(err)));
	assert_non_null(strstr(err, "journal.0000000000000000"));
	remove_dir(dir);
}

struct listed {
	char subj[64][32];
	char val[64][32];
	uint64_t used[64];
	size_t n, stop_after;
	int done;
	enum store_status st;
	struct store *s; /* when set, the callback deletes "@flag" "carol" */
};

static bool list_cb(void *arg, const char *subject, const struct store_result *res)
{
	struct listed *l = arg;
	assert_true(l->n < 64);
	snprintf(l->subj[l->n], sizeof(l->subj[0]), "%s", subject);
	size_t k = res->vlen < sizeof(l->val[0]) - 1 ? res->vlen : sizeof(l->val[0]) - 1;
	if (res->found && k)
		memcpy(l->val[l->n], res->val, k);
	l->val[l->n][k] = '\0';
	l->used[l->n] = res->used[0];
	l->n++;
	if (l->s) {
		struct store_op del = kv(STORE_DEL, "@flag", "carol", NULL, 0);
		struct store_op put = kv(STORE_PUT, "@flag", "new", "n", 0);
		run_got(l->s, &del, 1, T0);
		run_got(l->s, &put, 1, T0);
	}
	return l->stop_after == 0 || l->n < l->stop_after;
}

static void list_done(void *arg, enum store_status st)
{
	struct listed *l = arg;
	l->done++;
	l->st = st;
}

static const char *listed_val(const struct listed *l, const char *subj)
{
	for (size_t i = 0; i < l->n; i++)
		if (strcmp(l->subj[i], subj) == 0)
			return l->val[i];
	return NULL;
}

static void test_kv_list(void **state)
{
	(void)state;
	struct store *s = open_store(NULL, 0, 0, T0);
	assert_non_null(s->be->list);
	struct store_op ops[] = {
	    kv(STORE_PUT, "@flag", "alice", "A", 0),   kv(STORE_PUT, "@flag", "bob", "B", 0),
	    kv(STORE_PUT, "@flag", "carol", "C", 0),   kv(STORE_PUT, "@flag", "old", "O", SEC),
	    kv(STORE_PUT, "@outbox", "alice", "X", 0),
	};
	run_got(s, ops, 5, T0);
	take_n(s, "rcpt", "alice", 3, T0);
	take_n(s, "rcpt", "bob", 5, T0);
	take_n(s, "msg", "alice", 1, T0);

	struct listed l;
	memset(&l, 0, sizeof(l));
	assert_int_equal(s->be->list(s, "@flag", NULL, 0, T0 + 2 * SEC, list_cb, list_done, &l), 0);
	assert_int_equal(l.done, 1);
	assert_int_equal(l.st, STORE_OK);
	assert_int_equal(l.n, 3); /* "old" expired, "@outbox" is another namespace */
	assert_string_equal(listed_val(&l, "alice"), "A");
	assert_string_equal(listed_val(&l, "bob"), "B");
	assert_string_equal(listed_val(&l, "carol"), "C");
	/* a rule: PEEK of cost 0 with the given windows */
	struct gcra_window w = {1000, DAY};
	memset(&l, 0, sizeof(l));
	s->be->list(s, "rcpt", &w, 1, T0, list_cb, list_done, &l);
	assert_int_equal(l.n, 2);
	for (size_t i = 0; i < l.n; i++)
		assert_int_equal(l.used[i], strcmp(l.subj[i], "alice") == 0 ? 3 : 5);
	/* stop early */
	memset(&l, 0, sizeof(l));
	l.stop_after = 1;
	s->be->list(s, "@flag", NULL, 0, T0, list_cb, list_done, &l);
	assert_int_equal(l.n, 1);
	assert_int_equal(l.done, 1);
	/* unknown names list nothing; bad windows are EINVAL */
	memset(&l, 0, sizeof(l));
	s->be->list(s, "@nothing", NULL, 0, T0, list_cb, list_done, &l);
	assert_int_equal(l.n, 0);
	assert_int_equal(l.st, STORE_OK);
	w.limit = 0;
	s->be->list(s, "rcpt", &w, 1, T0, list_cb, list_done, &l);
	assert_int_equal(l.st, STORE_EINVAL);
	s->be->list(s, "", NULL, 0, T0, list_cb, list_done, &l);
	assert_int_equal(l.st, STORE_EINVAL);
	assert_int_equal(l.done, 3);
	/* the callback may run batches: what it lists was copied first */
	memset(&l, 0, sizeof(l));
	l.s = s;
	s->be->list(s, "@flag", NULL, 0, T0 + 2 * SEC, list_cb, list_done, &l);
	assert_int_equal(l.n, 3);
	assert_string_equal(listed_val(&l, "carol"), "C");
	char v[8];
	assert_int_equal(get_str(s, "@flag", "carol", T0, v, sizeof(v)), -1);
	s->be->close(s);
}

/* GET results stay valid during the callback even when the batch replaced them. */
static void order_cb(void *arg, enum store_status st, const struct store_result *res, size_t n)
{
	struct got *g = arg;
	got_cb(arg, st, res, n);
	/* res[0] is a GET of the blob that res[1] replaced and res[3] deleted */
	assert_int_equal(n, 9);
	assert_true(res[0].found);
	assert_memory_equal(res[0].val, "first", 5);
	(void)g;
}

static void test_kv_batch_order(void **state)
{
	(void)state;
	struct store *s = open_store(NULL, 0, 0, T0);
	struct store_op p = kv(STORE_PUT, "@flag", "dan", "first", 0);
	run_got(s, &p, 1, T0);
	struct store_op t2 = op1(STORE_TAKE, "rcpt", "dan", 1, true, 2, HOUR);
	assert_true(run(s, &t2, 1, T0).res[0].committed);
	assert_true(run(s, &t2, 1, T0).res[0].committed);
	/* a refused batch: the refusing TAKE does not conform (limit 2), the
	 * other TAKE is not committed, the blob ops apply in order */
	struct store_op ops[9] = {
	    kv(STORE_GET, "@flag", "dan", NULL, 0),
	    kv(STORE_PUT, "@flag", "dan", "second", 0),
	    kv(STORE_GET, "@flag", "dan", NULL, 0),
	    kv(STORE_DEL, "@flag", "dan", NULL, 0),
	    op1(STORE_TAKE, "msg", "dan", 1, true, 10, HOUR),
	    kv(STORE_GET, "@flag", "dan", NULL, 0),
	    op1(STORE_TAKE, "rcpt", "dan", 1, true, 2, HOUR),
	    kv(STORE_PUT, "@flag", "dan", "third", 0),
	    kv(STORE_GET, "@flag", "dan", NULL, 0),
	};
	struct got g;
	memset(&g, 0, sizeof(g));
	assert_int_equal(store_batch(s, ops, 9, T0, order_cb, &g), 0);
	assert_int_equal(g.st, STORE_OK);
	assert_string_equal(g.val[0], "first");
	assert_string_equal(g.val[2], "second");
	assert_true(g.found[3]); /* DEL found it */
	assert_false(g.found[5]);
	assert_string_equal(g.val[8], "third");
	char v[16];
	assert_int_equal(get_str(s, "@flag", "dan", T0, v, sizeof(v)), 5);
	assert_string_equal(v, "third");
	assert_int_equal(used1(s, "msg", "dan", 10, HOUR, T0), 0); /* refused: not taken */
	assert_int_equal(used1(s, "rcpt", "dan", 2, HOUR, T0), 2); /* as before */
	/* a batch where the blob ops sit between TAKEs that conform */
	struct store_op ok[3] = {
	    op1(STORE_TAKE, "msg", "dan", 1, true, 10, HOUR),
	    kv(STORE_DEL, "@flag", "dan", NULL, 0),
	    op1(STORE_TAKE, "msg", "dan", 1, true, 10, HOUR),
	};
	g = run_got(s, ok, 3, T0);
	assert_int_equal(g.st, STORE_OK);
	assert_int_equal(used1(s, "msg", "dan", 10, HOUR, T0), 2);
	assert_int_equal(get_str(s, "@flag", "dan", T0, v, sizeof(v)), -1);
	s->be->close(s);
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
	    cmocka_unit_test(test_batch_take_peek),
	    cmocka_unit_test(test_batch_refused),
	    cmocka_unit_test(test_batch_windows),
	    cmocka_unit_test(test_bad_ops),
	    cmocka_unit_test(test_evict_empty),
	    cmocka_unit_test(test_max_keys),
	    cmocka_unit_test(test_persist_roundtrip),
	    cmocka_unit_test(test_crash),
	    cmocka_unit_test(test_flush_interval),
	    cmocka_unit_test(test_tick_slices),
	    cmocka_unit_test(test_corrupt),
	    cmocka_unit_test(test_snapshot),
	    cmocka_unit_test(test_model),
	    cmocka_unit_test(test_kv_basic),
	    cmocka_unit_test(test_kv_ttl),
	    cmocka_unit_test(test_kv_persist),
	    cmocka_unit_test(test_kv_old_version),
	    cmocka_unit_test(test_kv_list),
	    cmocka_unit_test(test_kv_batch_order),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
