/*
 * tests/unit/test_proto_maillog.c - unit tests of proto/maillog.c.
 *
 * Covers: every `# expect:` line of tests/unit/data/maillog-corpus.txt
 * (prefix forms and times, tags, queue ids, each record kind, delivery
 * fields, reasons; the class/list/ip keys are the classify test's), and by
 * hand: lines too long (and the limit option), line ends, NUL and invalid
 * UTF-8 bytes, every prefix of real lines (no crash, views inside the line),
 * queue id shapes, address unquoting and its bounds, the reason splitter,
 * the names of events/statuses/errors.
 *
 * The corpus is $MAILLOG_CORPUS, else $POLICYD_SOURCE_ROOT/tests/unit/data/
 * maillog-corpus.txt (meson sets it), else found next to this source file
 * (the path the compiler saw, relative to the build directory).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/maillog.h"

/* ---- the corpus ---- */

#define CORPUS_MAX_KV 64

struct corpus_kv {
	char key[32];
	char val[1024];
};

struct corpus_case {
	size_t lineno; /* of the log line in the corpus */
	const char *line;
	size_t len;
	struct corpus_kv kv[CORPUS_MAX_KV];
	size_t nkv;
	struct maillog_opts opts;
};

static char *corpus_read(size_t *len)
{
	const char *env = getenv("MAILLOG_CORPUS");
	char path[4096];
	FILE *f;
	char *buf;
	long n;

	const char *root = getenv("POLICYD_SOURCE_ROOT");

	if (env && *env) {
		snprintf(path, sizeof(path), "%s", env);
	} else if (root && *root) {
		snprintf(path, sizeof(path), "%s/tests/unit/data/maillog-corpus.txt", root);
	} else {
		const char *src = __FILE__, *slash = strrchr(src, '/');
		int dirlen = slash ? (int)(slash - src) : 1;

		snprintf(path, sizeof(path), "%.*s/data/maillog-corpus.txt", dirlen,
		         slash ? src : ".");
	}
	f = fopen(path, "rb");
	if (!f) {
		fprintf(stderr, "cannot open corpus %s (set MAILLOG_CORPUS)\n", path);
		return NULL;
	}
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	buf = malloc((size_t)n + 1);
	if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
		free(buf);
		fclose(f);
		return NULL;
	}
	fclose(f);
	buf[n] = '\0';
	*len = (size_t)n;
	return buf;
}

/* `KEY=VALUE ...` with VALUE a word or a "quoted string". */
static int corpus_parse_kv(const char *p, const char *e, struct corpus_case *c)
{
	c->nkv = 0;
	for (;;) {
		struct corpus_kv *kv;
		size_t n = 0;

		while (p < e && *p == ' ')
			p++;
		if (p >= e)
			return 0;
		if (c->nkv == CORPUS_MAX_KV)
			return -1;
		kv = &c->kv[c->nkv++];
		while (p < e && *p != '=' && n < sizeof(kv->key) - 1)
			kv->key[n++] = *p++;
		kv->key[n] = '\0';
		if (p >= e || *p != '=')
			return -1;
		p++;
		n = 0;
		if (p < e && *p == '"') {
			for (p++; p < e && *p != '"'; p++) {
				if (*p == '\\' && p + 1 < e)
					p++;
				if (n < sizeof(kv->val) - 1)
					kv->val[n++] = *p;
			}
			if (p >= e)
				return -1;
			p++;
		} else {
			while (p < e && *p != ' ' && n < sizeof(kv->val) - 1)
				kv->val[n++] = *p++;
		}
		kv->val[n] = '\0';
	}
}

/*
 * Walk the corpus: fn() for each log line that has an expectation.
 * Returns the number of cases, or -1 on a malformed corpus.
 */
static long corpus_walk(void (*fn)(const struct corpus_case *c, void *arg), void *arg)
{
	size_t len, lineno = 0;
	char *buf = corpus_read(&len);
	const char *p, *e;
	static struct corpus_case c;
	bool pending = false;
	long cases = 0;

	if (!buf)
		return -1;
	memset(&c, 0, sizeof(c));
	maillog_opts_default(&c.opts);
	p = buf;
	e = buf + len;
	while (p < e) {
		const char *nl = memchr(p, '\n', (size_t)(e - p));
		const char *le = nl ? nl : e;

		lineno++;
		if (le == p) {
			/* empty */
		} else if (*p == '#') {
			if (le - p > 10 && memcmp(p, "# expect: ", 10) == 0) {
				if (pending || corpus_parse_kv(p + 10, le, &c) != 0) {
					fprintf(stderr, "corpus line %zu: bad expectation\n",
					        lineno);
					free(buf);
					return -1;
				}
				pending = true;
			} else if (le - p > 8 && memcmp(p, "# opts: ", 8) == 0) {
				long long rt = 0, off = 0;

				if (sscanf(p + 8, "ref_time=%lld utc_offset=%lld", &rt, &off) !=
				    2) {
					fprintf(stderr, "corpus line %zu: bad opts\n", lineno);
					free(buf);
					return -1;
				}
				c.opts.ref_time = rt;
				c.opts.utc_offset = (int32_t)off;
			}
		} else if (pending) {
			c.lineno = lineno;
			c.line = p;
			c.len = (size_t)(le - p);
			fn(&c, arg);
			cases++;
			pending = false;
		}
		p = nl ? nl + 1 : e;
	}
	free(buf);
	return pending ? -1 : cases;
}

/* ---- checking one case ---- */

static size_t corpus_failures; /* every mismatch is printed, the test fails at the end */

#define corpus_fail(...)                                                                           \
	do {                                                                                       \
		print_error(__VA_ARGS__);                                                          \
		print_error("\n");                                                                 \
		corpus_failures++;                                                                 \
	} while (0)

struct maillog_field {
	const char *key;
	size_t off;
};

#define F(k, m)                                                                                    \
	{                                                                                          \
		k, offsetof(struct maillog_line, m)                                                \
	}
static const struct maillog_field maillog_fields[] = {
    F("qid", queue_id),
    F("program", program),
    F("syslog_name", syslog_name),
    F("tag", tag),
    F("host", host),
    F("timestamp", timestamp),
    F("msg", msg),
    F("to", to),
    F("to_ext", to_ext),
    F("orig_to", orig_to),
    F("orig_to_ext", orig_to_ext),
    F("from", from),
    F("from_ext", from_ext),
    F("relay", relay),
    F("relay_host", relay_host),
    F("relay_addr", relay_addr),
    F("relay_port", relay_port),
    F("delay", delay),
    F("delays", delays),
    F("tls", tls),
    F("dsn", dsn),
    F("reply", reply),
    F("remote", reason.text),
    F("cmd", reason.cmd),
    F("rhost", reason.host),
    F("raddr", reason.addr),
    F("queue", queue_name),
    F("client_name", client_name),
    F("client_addr", client_addr),
    F("client_port", client_port),
    F("sasl_method", sasl_method),
    F("sasl_username", sasl_username),
    F("sasl_sender", sasl_sender),
    F("orig_queue_id", orig_queue_id),
    F("orig_client", orig_client),
    F("uid", uid),
    F("orig_id", orig_id),
    F("message_id", message_id),
    F("notice", notice),
    F("new_qid", new_queue_id),
    F("action", action),
    F("stage", stage),
    F("action_text", action_text),
    F("proto", proto),
    F("helo", helo),
};
#undef F

static const char *const kind_names[] = {"none", "said",    "refused", "connect",
                                         "lost", "timeout", "local"};
static const char *const sev_names[] = {"info", "warning", "error", "fatal", "panic"};
static const char *const err_names[] = {"none", "too_long", "timestamp", "prefix",       "delivery",
                                        "qmgr", "client",   "pickup",    "notification", "action"};

static void check_str(const struct corpus_case *c, const char *key, const struct maillog_str *s,
                      const char *want)
{
	bool ok;

	if (strcmp(want, "~") == 0)
		ok = s->p == NULL;
	else
		ok = s->p && s->len == strlen(want) && memcmp(s->p, want, s->len) == 0;
	if (!ok)
		corpus_fail("corpus line %zu: %s: want `%s`, got `%.*s`%s", c->lineno, key, want,
		            s->p ? (int)s->len : 0, s->p ? s->p : "", s->p ? "" : " (absent)");
}

static void check_num(const struct corpus_case *c, const char *key, bool has, long long got,
                      const char *want)
{
	if (strcmp(want, "~") == 0) {
		if (has)
			corpus_fail("corpus line %zu: %s: want absent, got %lld", c->lineno, key,
			            got);
		return;
	}
	if (!has || got != strtoll(want, NULL, 10))
		corpus_fail("corpus line %zu: %s: want %s, got %lld%s", c->lineno, key, want, got,
		            has ? "" : " (absent)");
}

static void check_bool(const struct corpus_case *c, const char *key, bool got, const char *want)
{
	if (got != (strcmp(want, "true") == 0))
		corpus_fail("corpus line %zu: %s: want %s", c->lineno, key, want);
}

static void check_name(const struct corpus_case *c, const char *key, const char *got,
                       const char *want)
{
	if (strcmp(got, want) != 0)
		corpus_fail("corpus line %zu: %s: want %s, got %s", c->lineno, key, want, got);
}

/* Every view lies in the line (or in ln->scratch). */
static void check_views_inside(const struct maillog_line *ln, const char *line, size_t len)
{
	for (size_t i = 0; i < sizeof(maillog_fields) / sizeof(maillog_fields[0]); i++) {
		const struct maillog_str *s =
		    (const struct maillog_str *)(const void *)((const char *)ln +
		                                               maillog_fields[i].off);
		bool in_line = s->p >= line && s->p + s->len <= line + len;
		bool in_scratch =
		    s->p >= ln->scratch && s->p + s->len <= ln->scratch + MAILLOG_SCRATCH;

		if (s->p)
			assert_true(in_line || in_scratch);
	}
}

static void maillog_case(const struct corpus_case *c, void *arg)
{
	static struct maillog_line ln;
	size_t *nchecks = arg;

	maillog_parse(&c->opts, c->line, c->len, &ln);
	check_views_inside(&ln, c->line, c->len);
	for (size_t i = 0; i < c->nkv; i++) {
		const char *k = c->kv[i].key, *v = c->kv[i].val;
		size_t f;

		(*nchecks)++;
		for (f = 0; f < sizeof(maillog_fields) / sizeof(maillog_fields[0]); f++)
			if (strcmp(k, maillog_fields[f].key) == 0)
				break;
		if (f < sizeof(maillog_fields) / sizeof(maillog_fields[0])) {
			check_str(c, k,
			          (const struct maillog_str *)(const void *)((const char *)&ln +
			                                                     maillog_fields[f].off),
			          v);
		} else if (strcmp(k, "event") == 0) {
			check_name(c, k, maillog_event_name(ln.event), v);
		} else if (strcmp(k, "status") == 0) {
			check_name(c, k, maillog_status_name(ln.status), v);
		} else if (strcmp(k, "kind") == 0) {
			check_name(c, k, kind_names[ln.reason.kind], v);
		} else if (strcmp(k, "severity") == 0) {
			check_name(c, k, sev_names[ln.severity], v);
		} else if (strcmp(k, "err") == 0) {
			check_name(c, k, err_names[ln.err], v);
		} else if (strcmp(k, "time") == 0) {
			check_num(c, k, ln.has_time, ln.time, v);
		} else if (strcmp(k, "usec") == 0) {
			check_num(c, k, ln.has_time, ln.usec, v);
		} else if (strcmp(k, "pid") == 0) {
			check_num(c, k, ln.has_pid, ln.pid, v);
		} else if (strcmp(k, "size") == 0) {
			check_num(c, k, true, (long long)ln.size, v);
		} else if (strcmp(k, "nrcpt") == 0) {
			check_num(c, k, true, ln.nrcpt, v);
		} else if (strcmp(k, "conn_use") == 0) {
			check_num(c, k, true, ln.conn_use, v);
		} else if (strcmp(k, "resent") == 0) {
			check_bool(c, k, ln.resent, v);
		} else if (strcmp(k, "suspended") == 0) {
			check_bool(c, k, ln.reason.suspended, v);
		} else if (strcmp(k, "relay_none") == 0) {
			check_bool(c, k, ln.relay_none, v);
		} else if (strcmp(k, "class") == 0 || strcmp(k, "list") == 0 ||
		           strcmp(k, "ip") == 0) {
			(*nchecks)--; /* the classify test's */
		} else {
			corpus_fail("corpus line %zu: unknown key `%s`", c->lineno, k);
		}
	}
}

static void test_corpus(void **state)
{
	size_t nchecks = 0;
	long cases;

	(void)state;
	corpus_failures = 0;
	cases = corpus_walk(maillog_case, &nchecks);
	print_message("maillog corpus: %ld lines, %zu field checks, %zu failed\n", cases, nchecks,
	              corpus_failures);
	assert_true(cases >= 150);
	assert_int_equal(corpus_failures, 0);
}

/* ---- by hand ---- */

static const char line_sent[] =
    "Nov  3 07:05:09 out1 postfix/smtp[4431]: 7C41A2E09B: to=<ana@example.net>, "
    "relay=mx.example.net[203.0.113.25]:25, delay=0.38, delays=0.04/0/0.21/0.13, dsn=2.0.0, "
    "status=sent (250 2.0.0 Ok: queued as 4F1A2B3C4D)";

static const char line_bounce[] =
    "2026-11-03T07:05:09.114502+01:00 out1 postfix/smtp[4431]: 7C41A2E09B: "
    "to=<\"john doe\"@example.net>, orig_to=<x@example.net>, relay=mx.example.net"
    "[2001:db8:5::25]:25, conn_use=2, delay=0.38, delays=0.04/0/0.21/0.13, tls=a/b, dsn=5.7.1, "
    "status=bounced (host mx.example.net[2001:db8:5::25] said: 550 5.7.1 Client host "
    "[198.51.100.23] blocked using zen.spamhaus.org (in reply to RCPT TO command))";

static void test_too_long(void **state)
{
	static struct maillog_line ln;
	struct maillog_opts o;
	char *big;
	size_t n = MAILLOG_DEFAULT_MAX_LINE + 1;

	(void)state;
	big = malloc(n + 2);
	assert_non_null(big);
	memset(big, 'x', n + 2);
	memcpy(big, line_sent, sizeof(line_sent) - 1);
	assert_int_equal(maillog_parse(NULL, big, n, &ln), MAILLOG_TOO_LONG);
	assert_int_equal(ln.err, MAILLOG_E_TOO_LONG);
	/* exactly the limit is parsed (and is garbage here: the reply runs on) */
	assert_int_not_equal(maillog_parse(NULL, big, n - 1, &ln), MAILLOG_TOO_LONG);
	/* the line end does not count */
	big[n - 1] = '\n';
	assert_int_not_equal(maillog_parse(NULL, big, n, &ln), MAILLOG_TOO_LONG);
	big[n - 1] = '\r';
	big[n] = '\n';
	assert_int_not_equal(maillog_parse(NULL, big, n + 1, &ln), MAILLOG_TOO_LONG);
	free(big);
	/* a smaller limit */
	maillog_opts_default(&o);
	o.max_line = 100;
	assert_int_equal(maillog_parse(&o, line_sent, sizeof(line_sent) - 1, &ln),
	                 MAILLOG_TOO_LONG);
	o.max_line = sizeof(line_sent) - 1;
	assert_int_equal(maillog_parse(&o, line_sent, sizeof(line_sent) - 1, &ln),
	                 MAILLOG_DELIVERY);
	o.max_line = 0; /* the default */
	assert_int_equal(maillog_parse(&o, line_sent, sizeof(line_sent) - 1, &ln),
	                 MAILLOG_DELIVERY);
}

static void test_line_ends(void **state)
{
	static struct maillog_line ln;
	char buf[sizeof(line_sent) + 1]; /* the line, "\r\n" */

	(void)state;
	memcpy(buf, line_sent, sizeof(line_sent) - 1);
	memcpy(buf + sizeof(line_sent) - 1, "\r\n", 2);
	assert_int_equal(maillog_parse(NULL, buf, sizeof(buf), &ln), MAILLOG_DELIVERY);
	assert_int_equal(ln.reply.len, strlen("250 2.0.0 Ok: queued as 4F1A2B3C4D"));
	assert_int_equal(maillog_parse(NULL, buf, sizeof(buf) - 1, &ln), MAILLOG_DELIVERY);
	assert_int_equal(ln.reply.len, strlen("250 2.0.0 Ok: queued as 4F1A2B3C4D"));
	assert_int_equal(maillog_parse(NULL, "", 0, &ln), MAILLOG_GARBAGE);
	assert_int_equal(maillog_parse(NULL, "\n", 1, &ln), MAILLOG_GARBAGE);
	assert_int_equal(maillog_parse(NULL, NULL, 0, &ln), MAILLOG_GARBAGE);
}

static void test_bytes(void **state)
{
	static struct maillog_line ln;
	char buf[sizeof(line_bounce)];
	size_t at;

	(void)state;
	memcpy(buf, line_bounce, sizeof(buf));
	/* invalid UTF-8 and a NUL inside the reply */
	at = (size_t)(strstr(buf, "blocked") - buf);
	buf[at] = '\xff';
	buf[at + 1] = '\0';
	buf[at + 2] = '\xc3';
	assert_int_equal(maillog_parse(NULL, buf, sizeof(buf) - 1, &ln), MAILLOG_DELIVERY);
	assert_int_equal(ln.status, MAILLOG_ST_BOUNCED);
	assert_int_equal(ln.reason.kind, MAILLOG_R_SAID);
	assert_true(ln.reason.text.p + ln.reason.text.len > buf + at + 2);
	assert_int_equal(ln.reason.cmd.len, strlen("RCPT TO command"));
}

static void test_fields(void **state)
{
	static struct maillog_line ln;
	struct maillog_opts o;

	(void)state;
	maillog_opts_default(&o);
	assert_int_equal(maillog_parse(&o, line_bounce, sizeof(line_bounce) - 1, &ln),
	                 MAILLOG_DELIVERY);
	assert_true(ln.has_time);
	assert_int_equal(ln.time, 1793685909);
	assert_int_equal(ln.usec, 114502);
	assert_int_equal(ln.pid, 4431);
	assert_int_equal(ln.conn_use, 2);
	assert_int_equal(ln.to.len, strlen("john doe@example.net"));
	assert_memory_equal(ln.to.p, "john doe@example.net", ln.to.len);
	assert_ptr_equal(ln.to.p, ln.scratch);
	assert_memory_equal(ln.relay_addr.p, "2001:db8:5::25", ln.relay_addr.len);
	assert_memory_equal(ln.tls.p, "a/b", 3);
	assert_memory_equal(ln.reason.host.p, "mx.example.net", ln.reason.host.len);
	assert_memory_equal(ln.reason.text.p, "550 5.7.1 Client host", 21);
	assert_true(maillog_status_permanent(ln.status));
	assert_false(maillog_status_permanent(MAILLOG_ST_DEFERRED));
	assert_false(maillog_status_permanent(MAILLOG_ST_SOFTBOUNCE));
	assert_true(maillog_status_permanent(MAILLOG_ST_FORCE_EXPIRED));
}

/* Every prefix of real lines: no crash, and views stay inside. */
static void test_prefixes(void **state)
{
	static const char *const lines[] = {
	    line_sent,
	    line_bounce,
	    "Nov  3 07:05:09 out1 postfix/submission/smtpd[4417]: 9A2C71E0F3: "
	    "client=unknown[192.0.2.140]:4242, sasl_method=PLAIN, sasl_username=ines@example.com, "
	    "orig_client=x[1.2.3.4]",
	    "Nov  3 07:05:09 out1 postfix/qmgr[988]: 9A2C71E0F3: from=<\"a b\"@example.com>, "
	    "size=12877, nrcpt=2 (queue active)",
	    "Nov  3 07:05:09 out1 postfix/qmgr[988]: 9A2C71E0F3: from=<ines@example.com>, "
	    "status=force-expired, returned to sender",
	    "Nov  3 07:05:09 out1 postfix/pickup[1]: 7AC77A7412E: uid=106 from=<h@example.org> "
	    "orig_id=16F05A741FB",
	    "Nov  3 07:05:09 out1 postfix/bounce[1]: 9A2C71E0F3: sender non-delivery notification: "
	    "5D0E8B1A77",
	    "Nov  3 07:05:09 out1 postfix/smtpd[1]: NOQUEUE: reject: RCPT from "
	    "unknown[192.0.2.140]:"
	    " 450 4.7.1 <a@example.net>: Recipient address rejected: x; from=<i@example.com> "
	    "to=<\"a b\"@example.net> proto=ESMTP helo=<L> sasl_method=PLAIN",
	    "Nov  3 07:05:09 out1 postfix/cleanup[1]: C254BA74290: hold: header Subject: t from "
	    "localhost[127.0.0.1]; from=<h@example.org> to=<h@ok.test> proto=ESMTP helo=<c>: held",
	    "Nov  3 07:05:09 out1 postfix/error[1]: 9C0D1E2F09: to=<gi@example.org>, relay=none, "
	    "delay=60, delays=59/1/0/0, dsn=4.0.0, status=deferred (delivery temporarily suspended:"
	    " connect to mx.example.org[203.0.113.26]:25: Connection refused)",
	    "Nov  3 07:05:09 out1 postfix/smtp[1]: 9C0D1E2F09: to=<g@e.org>, relay=none, delay=60, "
	    "delays=59/1/0/0, dsn=4.0.0, status=deferred (lost connection with m[1.2.3.4] while x)",
	    "Nov  3 07:05:09 out1 postfix/smtp[1]: 9C0D1E2F09: to=<g@e.org>, relay=none, delay=60, "
	    "delays=59/1/0/0, dsn=4.0.0, status=deferred (conversation with m[1.2.3.4] timed out "
	    "while y)",
	};
	static struct maillog_line ln;
	char buf[1024];

	(void)state;
	for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
		size_t n = strlen(lines[i]);

		assert_true(n < sizeof(buf));
		for (size_t k = 0; k <= n; k++) {
			/* a copy of exactly k bytes, so that ASan sees a read past it */
			char *cp = malloc(k ? k : 1);

			assert_non_null(cp);
			memcpy(cp, lines[i], k);
			maillog_parse(NULL, cp, k, &ln);
			check_views_inside(&ln, cp, k);
			free(cp);
		}
		memcpy(buf, lines[i], n);
		assert_int_not_equal(maillog_parse(NULL, buf, n, &ln), MAILLOG_GARBAGE);
	}
}

static void test_queue_ids(void **state)
{
	(void)state;
	assert_true(maillog_queue_id_valid("7C41A2E09B", 10));
	assert_true(maillog_queue_id_valid("ABCDEF", 6));
	assert_false(maillog_queue_id_valid("ABCDE", 5));
	assert_true(maillog_queue_id_valid("NOQUEUE", 7));
	assert_true(maillog_queue_id_valid("4dTq8H2Nwbz3Rk7", 15));
	assert_true(maillog_queue_id_valid("4jXnCj3ts9z1bcCP", 16));
	/* the time part may contain z: the last z splits */
	assert_true(maillog_queue_id_valid("4dTqzH2Nwbz3Rk7", 15));
	assert_false(maillog_queue_id_valid("4dTq8H2Nwbz", 11));     /* no inode part */
	assert_false(maillog_queue_id_valid("4dTq8H2Nz3Rk7", 13));   /* < 10 before z */
	assert_false(maillog_queue_id_valid("4dTq8H2Nwbz3Ra7", 15)); /* a vowel */
	assert_false(maillog_queue_id_valid("warning", 7));
	assert_false(maillog_queue_id_valid("statistics", 10));
	assert_false(maillog_queue_id_valid("7c41a2e09b", 10));       /* hex is upper case */
	assert_false(maillog_queue_id_valid("AEAEAEAE", 8) == false); /* hex with vowels: ok */
	{
		char big[MAILLOG_MAX_QUEUE_ID + 1];

		memset(big, 'A', sizeof(big));
		assert_true(maillog_queue_id_valid(big, MAILLOG_MAX_QUEUE_ID));
		assert_false(maillog_queue_id_valid(big, MAILLOG_MAX_QUEUE_ID + 1));
	}
}

static void test_unquote(void **state)
{
	char out[64];

	(void)state;
	assert_int_equal(maillog_addr_unquote("\"john doe\"@example.org", 22, out, sizeof(out)),
	                 20);
	assert_string_equal(out, "john doe@example.org");
	maillog_addr_unquote("\"a@b\"@example.org", 17, out, sizeof(out));
	assert_string_equal(out, "a@b@example.org");
	maillog_addr_unquote("\"a\\\"b\"@ex\"am\"ple.org", 20, out, sizeof(out));
	assert_string_equal(out, "a\"b@ex\"am\"ple.org"); /* the domain is kept */
	maillog_addr_unquote("plain@example.org", 17, out, sizeof(out));
	assert_string_equal(out, "plain@example.org");
	maillog_addr_unquote("@a,@b:\"x y\"@c", 13, out, sizeof(out));
	assert_string_equal(out, "@a,@b:x y@c");
	maillog_addr_unquote("\"unterminated@x", 15, out, sizeof(out));
	assert_string_equal(out, "unterminated@x");
	maillog_addr_unquote("trailing\\", 9, out, sizeof(out));
	assert_string_equal(out, "trailing\\");
	assert_int_equal(maillog_addr_unquote("", 0, out, sizeof(out)), 0);
	assert_string_equal(out, "");
	/* the output needs len + 1 bytes */
	assert_int_equal(maillog_addr_unquote("\"ab\"", 4, out, 4), (size_t)-1);
	assert_int_equal(maillog_addr_unquote("\"ab\"", 4, out, 5), 2);
}

static void test_reason(void **state)
{
	struct maillog_reason r;
	const char *t;

	(void)state;
	maillog_reason_parse(NULL, 0, &r);
	assert_int_equal(r.kind, MAILLOG_R_NONE);
	t = "host a[1.2.3.4] said: 550 x (in reply to RCPT TO command)";
	maillog_reason_parse(t, strlen(t), &r);
	assert_int_equal(r.kind, MAILLOG_R_SAID);
	assert_int_equal(r.text.len, 5);
	assert_int_equal(r.cmd.len, strlen("RCPT TO command"));
	t = "host a[1.2.3.4] said: 550 x (in reply to";
	maillog_reason_parse(t, strlen(t), &r);
	assert_int_equal(r.kind, MAILLOG_R_SAID);
	assert_null(r.cmd.p);
	t = "host a[1.2.3.4] said: 550 x (in reply to )";
	maillog_reason_parse(t, strlen(t), &r);
	assert_int_equal(r.kind, MAILLOG_R_SAID);
	t = "host with space[1.2.3.4] said: x";
	maillog_reason_parse(t, strlen(t), &r);
	assert_int_equal(r.kind, MAILLOG_R_LOCAL);
	assert_null(r.host.p);
	t = "host a[1.2.3.4] mumbled: x";
	maillog_reason_parse(t, strlen(t), &r);
	assert_int_equal(r.kind, MAILLOG_R_LOCAL);
	t = "connect to a[1.2.3.4]:25 Connection refused";
	maillog_reason_parse(t, strlen(t), &r);
	assert_int_equal(r.kind, MAILLOG_R_LOCAL);
	t = "delivery temporarily suspended: conversation with a[1.2.3.4] timed out while x";
	maillog_reason_parse(t, strlen(t), &r);
	assert_int_equal(r.kind, MAILLOG_R_TIMEOUT);
	assert_true(r.suspended);
	assert_int_equal(r.text.len, 1);
	t = "delivery temporarily suspended: ";
	maillog_reason_parse(t, strlen(t), &r);
	assert_int_equal(r.kind, MAILLOG_R_LOCAL);
	assert_int_equal(r.text.len, 0);
}

static void test_names(void **state)
{
	(void)state;
	assert_string_equal(maillog_event_name(MAILLOG_DELIVERY), "delivery");
	assert_string_equal(maillog_event_name(MAILLOG_QUEUE_OTHER), "queue_other");
	assert_string_equal(maillog_event_name((enum maillog_event)999), "?");
	assert_string_equal(maillog_status_name(MAILLOG_ST_SOFTBOUNCE), "softbounce");
	assert_string_equal(maillog_status_name((enum maillog_status)999), "?");
	for (int e = MAILLOG_E_NONE; e <= MAILLOG_E_ACTION; e++)
		assert_string_not_equal(maillog_error_str((enum maillog_error)e), "?");
	assert_string_equal(maillog_error_str((enum maillog_error)999), "?");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_corpus),    cmocka_unit_test(test_too_long),
	    cmocka_unit_test(test_line_ends), cmocka_unit_test(test_bytes),
	    cmocka_unit_test(test_fields),    cmocka_unit_test(test_prefixes),
	    cmocka_unit_test(test_queue_ids), cmocka_unit_test(test_unquote),
	    cmocka_unit_test(test_reason),    cmocka_unit_test(test_names),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
