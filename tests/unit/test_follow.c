/*
 * tests/unit/test_follow.c - the log follower (policyd/follow.c) on temp
 * files and a libev loop: appends, partial last lines, overlong lines,
 * rotation by rename-and-create, copytruncate (shrunk, and regrown past
 * the offset), deletion, replacement, restart from a saved position (same
 * file, rotated while stopped, truncated while stopped), replay, the
 * datagram socket (RFC 3164 and RFC 5424), and reading driven by the loop
 * alone.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "policyd/follow.h"

#define MAXL 64

struct got {
	char *line[MAXL];
	size_t n;
	int notes[16];
	char last_note[512];
};

static void got_line(void *arg, const char *line, size_t len)
{
	struct got *g = arg;
	if (g->n < MAXL) {
		g->line[g->n] = malloc(len + 1);
		memcpy(g->line[g->n], line, len);
		g->line[g->n][len] = '\0';
	}
	g->n++;
}

static void got_note(void *arg, enum follow_note n, const char *detail)
{
	struct got *g = arg;
	g->notes[n]++;
	snprintf(g->last_note, sizeof(g->last_note), "%s", detail);
}

static void got_reset(struct got *g)
{
	for (size_t i = 0; i < g->n && i < MAXL; i++)
		free(g->line[i]);
	memset(g, 0, sizeof(*g));
}

struct env {
	char dir[64];
	char path[128];
	struct ev_loop *loop;
	struct got g;
};

static int setup(void **state)
{
	struct env *e = calloc(1, sizeof(*e));
	snprintf(e->dir, sizeof(e->dir), "/tmp/policyd-test-follow-XXXXXX");
	assert_non_null(mkdtemp(e->dir));
	snprintf(e->path, sizeof(e->path), "%s/maillog", e->dir);
	e->loop = ev_loop_new(EVFLAG_AUTO);
	*state = e;
	return 0;
}

static int teardown(void **state)
{
	struct env *e = *state;
	char cmd[256];
	got_reset(&e->g);
	ev_loop_destroy(e->loop);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", e->dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", e->dir);
	free(e);
	return 0;
}

static void append(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
}

static struct follow *start(struct env *e, bool from_start, const struct follow_pos *resume,
                            size_t max_line, size_t slice)
{
	struct follow_opts o;
	char err[256];
	memset(&o, 0, sizeof(o));
	o.path = e->path;
	o.from_start = from_start;
	o.resume = resume;
	o.max_line = max_line;
	o.slice_bytes = slice;
	o.line = got_line;
	o.note = got_note;
	o.arg = &e->g;
	struct follow *f = follow_file(e->loop, &o, err, sizeof(err));
	if (f == NULL)
		fail_msg("follow_file: %s", err);
	return f;
}

/* Poll until nothing more comes. */
static void drain(struct follow *f)
{
	for (int i = 0; i < 1000; i++)
		if (follow_poll(f) == 0 && !follow_backlog(f))
			break;
}

static void test_append_and_partial(void **state)
{
	struct env *e = *state;
	append(e->path, "one\ntwo\nthree\n");
	struct follow *f = start(e, true, NULL, 0, 0);
	drain(f);
	assert_int_equal(e->g.n, 3);
	assert_string_equal(e->g.line[2], "three");
	append(e->path, "four\npar");
	drain(f);
	assert_int_equal(e->g.n, 4);
	append(e->path, "tial\r\n");
	drain(f);
	assert_int_equal(e->g.n, 5);
	assert_string_equal(e->g.line[4], "partial"); /* \r dropped too */
	struct follow_pos pos;
	assert_true(follow_position(f, &pos));
	assert_int_equal(pos.offset, strlen("one\ntwo\nthree\nfour\npartial\r\n"));
	assert_true(pos.line_len > 0);
	follow_free(f);
}

static void test_start_at_end(void **state)
{
	struct env *e = *state;
	/* without a saved position: from the end, but a partial line is read whole */
	append(e->path, "old1\nold2\nhalf");
	struct follow *f = start(e, false, NULL, 0, 0);
	drain(f);
	assert_int_equal(e->g.n, 0);
	append(e->path, "-line\nnew\n");
	drain(f);
	assert_int_equal(e->g.n, 2);
	assert_string_equal(e->g.line[0], "half-line");
	assert_string_equal(e->g.line[1], "new");
	follow_free(f);
}

static void test_overlong(void **state)
{
	struct env *e = *state;
	char *big = malloc(300000);
	memset(big, 'x', 299998);
	big[299998] = '\n';
	big[299999] = '\0';
	append(e->path, "a\n");
	append(e->path, big);
	append(e->path, "b\n");
	memset(big, 'y', 150);
	big[150] = '\n';
	big[151] = '\0';
	append(e->path, big); /* longer than max_line, but inside the buffer */
	append(e->path, "c\n");
	struct follow *f = start(e, true, NULL, 100, 4096);
	drain(f);
	assert_int_equal(e->g.n, 3);
	assert_string_equal(e->g.line[0], "a");
	assert_string_equal(e->g.line[1], "b");
	assert_string_equal(e->g.line[2], "c");
	assert_int_equal(follow_stats(f)->too_long, 2);
	free(big);
	follow_free(f);
}

static void test_rename_and_create(void **state)
{
	struct env *e = *state;
	char old[160];
	snprintf(old, sizeof(old), "%s.1", e->path);
	append(e->path, "1\n2\n");
	struct follow *f = start(e, true, NULL, 0, 0);
	drain(f);
	assert_int_equal(e->g.n, 2);
	assert_int_equal(rename(e->path, old), 0);
	append(old, "3-late-in-old\n"); /* the writer has not reopened yet */
	append(e->path, "4-new\n5-new\n");
	drain(f);
	assert_int_equal(e->g.n, 5);
	assert_string_equal(e->g.line[2], "3-late-in-old");
	assert_string_equal(e->g.line[3], "4-new");
	assert_int_equal(follow_stats(f)->rotations, 1);
	assert_int_equal(e->g.notes[FOLLOW_N_ROTATED], 1);
	append(e->path, "6\n");
	drain(f);
	assert_int_equal(e->g.n, 6);
	follow_free(f);
}

static void test_copytruncate(void **state)
{
	struct env *e = *state;
	append(e->path, "line-1\nline-2\nline-3\n");
	struct follow *f = start(e, true, NULL, 0, 0);
	drain(f);
	assert_int_equal(e->g.n, 3);
	assert_int_equal(truncate(e->path, 0), 0);
	append(e->path, "after-1\n");
	drain(f);
	assert_int_equal(e->g.n, 4);
	assert_string_equal(e->g.line[3], "after-1");
	assert_int_equal(follow_stats(f)->truncations, 1);
	/* truncated and regrown past our offset before we looked: the hash tells */
	assert_int_equal(truncate(e->path, 0), 0);
	append(e->path, "regrown-a-long-line-1\nregrown-a-long-line-2\n");
	drain(f);
	assert_int_equal(e->g.n, 6);
	assert_string_equal(e->g.line[4], "regrown-a-long-line-1");
	assert_int_equal(follow_stats(f)->truncations, 2);
	follow_free(f);
}

static void test_delete_and_replace(void **state)
{
	struct env *e = *state;
	char tmp[160];
	append(e->path, "a\n");
	struct follow *f = start(e, true, NULL, 0, 0);
	drain(f);
	assert_int_equal(unlink(e->path), 0);
	drain(f);
	assert_int_equal(e->g.notes[FOLLOW_N_DELETED], 1);
	drain(f); /* noted once */
	assert_int_equal(e->g.notes[FOLLOW_N_DELETED], 1);
	append(e->path, "b\n");
	drain(f);
	assert_int_equal(e->g.n, 2);
	assert_string_equal(e->g.line[1], "b");
	/* replaced by an atomic rename */
	snprintf(tmp, sizeof(tmp), "%s/new", e->dir);
	append(tmp, "c\nd\n");
	assert_int_equal(rename(tmp, e->path), 0);
	drain(f);
	assert_int_equal(e->g.n, 4);
	assert_string_equal(e->g.line[3], "d");
	/* the path is a directory for a while: an error note, no crash */
	assert_int_equal(unlink(e->path), 0);
	assert_int_equal(mkdir(e->path, 0755), 0);
	drain(f);
	assert_int_equal(rmdir(e->path), 0);
	append(e->path, "e\n");
	drain(f);
	assert_int_equal(e->g.n, 5);
	follow_free(f);
}

static void test_missing_at_start(void **state)
{
	struct env *e = *state;
	struct follow *f = start(e, false, NULL, 0, 0);
	drain(f);
	assert_int_equal(e->g.n, 0);
	append(e->path, "first\n");
	drain(f);
	assert_int_equal(e->g.n, 1); /* a file that appears later is new: from its start */
	follow_free(f);
}

static void test_resume(void **state)
{
	struct env *e = *state;
	struct follow_pos pos;
	append(e->path, "r1\nr2\nr3\n");
	struct follow *f = start(e, true, NULL, 0, 0);
	drain(f);
	assert_true(follow_position(f, &pos));
	follow_free(f);
	append(e->path, "r4\nr5\n");
	got_reset(&e->g);
	f = start(e, false, &pos, 0, 0);
	drain(f);
	assert_int_equal(e->g.notes[FOLLOW_N_RESUMED], 1);
	assert_int_equal(e->g.n, 2); /* nothing twice */
	assert_string_equal(e->g.line[0], "r4");
	assert_true(follow_position(f, &pos));
	follow_free(f);

	/* rotated while stopped: the rest of the old file, then the new one */
	char old[160];
	snprintf(old, sizeof(old), "%s-20261123", e->path);
	append(e->path, "r6\n");
	assert_int_equal(rename(e->path, old), 0);
	append(e->path, "n1\n");
	got_reset(&e->g);
	f = start(e, false, &pos, 0, 0);
	drain(f);
	assert_int_equal(e->g.n, 2);
	assert_string_equal(e->g.line[0], "r6");
	assert_string_equal(e->g.line[1], "n1");
	assert_true(follow_position(f, &pos));
	follow_free(f);

	/* truncated (copytruncate) while stopped: from the start, noted */
	assert_int_equal(truncate(e->path, 0), 0);
	append(e->path, "t1\nt2\nt3\nt4\n"); /* longer than before: only the hash can tell */
	got_reset(&e->g);
	f = start(e, false, &pos, 0, 0);
	drain(f);
	assert_int_equal(e->g.notes[FOLLOW_N_RESUME_LOST], 1);
	assert_int_equal(e->g.n, 4);
	follow_free(f);

	/* the saved file is gone entirely: the new one from its start */
	assert_true(pos.ino != 0);
	unlink(e->path);
	unlink(old);
	append(e->path, "z\n");
	got_reset(&e->g);
	f = start(e, false, &pos, 0, 0);
	drain(f);
	assert_int_equal(e->g.notes[FOLLOW_N_RESUME_LOST], 1);
	assert_int_equal(e->g.n, 1);
	follow_free(f);
}

static void test_replay(void **state)
{
	struct env *e = *state;
	struct follow_opts o;
	char err[256];
	append(e->path, "x\ny\nlast-without-newline");
	memset(&o, 0, sizeof(o));
	o.path = e->path;
	o.line = got_line;
	o.note = got_note;
	o.arg = &e->g;
	o.slice_lines = 1;
	struct follow *f = follow_replay(e->loop, &o, err, sizeof(err));
	assert_non_null(f);
	drain(f);
	assert_int_equal(e->g.n, 3);
	assert_string_equal(e->g.line[2], "last-without-newline");
	assert_int_equal(e->g.notes[FOLLOW_N_DONE], 1);
	assert_int_equal(follow_poll(f), 0);
	follow_free(f);
	o.path = "/nonexistent/policyd-test";
	assert_null(follow_replay(e->loop, &o, err, sizeof(err)));
}

static void test_socket(void **state)
{
	struct env *e = *state;
	struct follow_opts o;
	char err[256], sp[160];
	snprintf(sp, sizeof(sp), "%s/log.sock", e->dir);
	memset(&o, 0, sizeof(o));
	o.socket = sp;
	o.line = got_line;
	o.note = got_note;
	o.arg = &e->g;
	o.max_line = 200;
	struct follow *f = follow_socket(e->loop, &o, err, sizeof(err));
	if (f == NULL)
		fail_msg("follow_socket: %s", err);
	int s = socket(AF_UNIX, SOCK_DGRAM, 0);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	memcpy(sa.sun_path, sp, strlen(sp) + 1);
	const char *msgs[] = {
	    "<22>Nov 23 00:31:29 lab postfix/smtpd[1]: ABC: client=x[1.2.3.4]\n",
	    "<22>Nov 23 00:31:29 postfix/qmgr[2]: ABC: removed",
	    "<22>1 2026-11-23T00:31:29.1Z lab postfix/smtp 77 - - ABC: to=<a@b>",
	    ("<22>1 2026-11-23T00:31:29Z lab postfix/smtp - - [x@1 a=\"\\]\"][y@2] "
	     "\xef\xbb\xbfhello"),
	};
	for (size_t i = 0; i < 4; i++)
		assert_true(
		    sendto(s, msgs[i], strlen(msgs[i]), 0, (struct sockaddr *)&sa, sizeof(sa)) > 0);
	char big[400];
	memset(big, 'q', sizeof(big));
	assert_true(sendto(s, big, sizeof(big), 0, (struct sockaddr *)&sa, sizeof(sa)) > 0);
	close(s);
	follow_poll(f);
	assert_int_equal(e->g.n, 4);
	assert_string_equal(e->g.line[0],
	                    "Nov 23 00:31:29 lab postfix/smtpd[1]: ABC: client=x[1.2.3.4]");
	assert_string_equal(e->g.line[1],
	                    "Nov 23 00:31:29 localhost postfix/qmgr[2]: ABC: removed");
	assert_string_equal(e->g.line[2],
	                    "2026-11-23T00:31:29.1Z lab postfix/smtp[77]: ABC: to=<a@b>");
	assert_string_equal(e->g.line[3], "2026-11-23T00:31:29Z lab postfix/smtp: hello");
	assert_int_equal(follow_stats(f)->too_long, 1);
	follow_free(f);
	struct stat sb;
	assert_int_equal(stat(sp, &sb), -1); /* removed */
	/* a path that is not a socket is never replaced */
	append(sp, "x");
	assert_null(follow_socket(e->loop, &o, err, sizeof(err)));
}

static void stop_loop(struct ev_loop *loop, ev_timer *w, int revents)
{
	ev_break(loop, EVBREAK_ALL);
}

static void writer(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct env *e = w->data;
	append(e->path, "from-the-loop\n");
}

static void test_loop_driven(void **state)
{
	struct env *e = *state;
	append(e->path, "l1\nl2\n");
	struct follow *f = start(e, true, NULL, 0, 0);
	ev_timer w, stop;
	ev_timer_init(&w, writer, 0.05, 0);
	w.data = e;
	ev_timer_init(&stop, stop_loop, 1.5, 0);
	ev_timer_start(e->loop, &w);
	ev_timer_start(e->loop, &stop);
	ev_run(e->loop, 0);
	assert_int_equal(e->g.n, 3);
	assert_string_equal(e->g.line[2], "from-the-loop");
	assert_false(follow_backlog(f));
	follow_free(f);
}

static void test_hash(void **state)
{
	(void)state;
	assert_true(follow_hash("a", 1) != follow_hash("b", 1));
	assert_int_equal(follow_hash("", 0), 14695981039346656037ULL);
	assert_string_equal(follow_note_name(FOLLOW_N_TRUNCATED), "truncated");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_append_and_partial, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_start_at_end, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_overlong, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_rename_and_create, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_copytruncate, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_delete_and_replace, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_missing_at_start, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_resume, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_replay, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_socket, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_loop_driven, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_hash, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
