/*
 * tests/unit/test_proto_classify.c - unit tests of proto/classify.c with
 * the stock rules of data/ndr-patterns.conf.
 *
 * Covers: the class/list/ip expectations of every corpus line
 * (tests/unit/data/maillog-corpus.txt; the other keys are the maillog
 * test's), the decision order of postfix-logs.md §2 on hand-made texts,
 * the loader's errors (`line N: ...`) and limits, a site file whose rules
 * come first and that uses a stock list, list=auto/any, status=/dsn=
 * options, regexes, the IP finder, and class names.
 *
 * Files: $MAILLOG_CORPUS and $NDR_PATTERNS, else under $POLICYD_SOURCE_ROOT
 * (meson sets it), else found from this source file's path (as the
 * compiler saw it, relative to the build directory).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/classify.h"
#include "proto/maillog.h"

/* $env, else $POLICYD_SOURCE_ROOT/rootrel, else rel next to this source file. */
static char *read_file(const char *env, const char *rootrel, const char *rel, size_t *len)
{
	const char *e = getenv(env), *root = getenv("POLICYD_SOURCE_ROOT");
	char path[4096];
	FILE *f;
	char *buf;
	long n;

	if (e && *e) {
		snprintf(path, sizeof(path), "%s", e);
	} else if (root && *root) {
		snprintf(path, sizeof(path), "%s/%s", root, rootrel);
	} else {
		const char *src = __FILE__, *slash = strrchr(src, '/');

		snprintf(path, sizeof(path), "%.*s/%s", slash ? (int)(slash - src) : 1,
		         slash ? src : ".", rel);
	}
	f = fopen(path, "rb");
	if (!f) {
		fprintf(stderr, "cannot open %s (set %s)\n", path, env);
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

static struct classify_db *stock_db(void)
{
	size_t len;
	char *text = read_file("NDR_PATTERNS", "data/ndr-patterns.conf",
	                       "../../data/ndr-patterns.conf", &len);
	struct classify_source src = {"ndr-patterns.conf", text, len};
	struct classify_diag diag;
	struct classify_db *db;

	if (!text)
		return NULL;
	db = classify_db_load(&src, 1, &diag);
	if (!db)
		fprintf(stderr, "%s: line %zu: %s\n", diag.source, diag.line, diag.msg);
	free(text);
	return db;
}

static int setup(void **state)
{
	*state = stock_db();
	return *state ? 0 : -1;
}

static int teardown(void **state)
{
	classify_db_free(*state);
	return 0;
}

/* ---- the corpus (same format as test_proto_maillog.c reads) ---- */

#define CORPUS_MAX_KV 64

struct corpus_kv {
	char key[32];
	char val[1024];
};

struct corpus_case {
	size_t lineno;
	const char *line;
	size_t len;
	struct corpus_kv kv[CORPUS_MAX_KV];
	size_t nkv;
	struct maillog_opts opts;
};

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

static long corpus_walk(void (*fn)(const struct corpus_case *c, void *arg), void *arg)
{
	size_t len, lineno = 0;
	char *buf = read_file("MAILLOG_CORPUS", "tests/unit/data/maillog-corpus.txt",
	                      "data/maillog-corpus.txt", &len);
	const char *p, *e;
	static struct corpus_case c;
	bool pending = false;
	long cases = 0;

	if (!buf)
		return -1;
	memset(&c, 0, sizeof(c));
	maillog_opts_default(&c.opts);
	for (p = buf, e = buf + len; p < e;) {
		const char *nl = memchr(p, '\n', (size_t)(e - p));
		const char *le = nl ? nl : e;

		lineno++;
		if (le > p && *p == '#') {
			if (le - p > 10 && memcmp(p, "# expect: ", 10) == 0) {
				if (pending || corpus_parse_kv(p + 10, le, &c) != 0) {
					free(buf);
					return -1;
				}
				pending = true;
			} else if (le - p > 8 && memcmp(p, "# opts: ", 8) == 0) {
				long long rt = 0, off = 0;

				if (sscanf(p + 8, "ref_time=%lld utc_offset=%lld", &rt, &off) !=
				    2) {
					free(buf);
					return -1;
				}
				c.opts.ref_time = rt;
				c.opts.utc_offset = (int32_t)off;
			}
		} else if (le > p && pending) {
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

struct corpus_stats {
	const struct classify_db *db;
	size_t checked, failed;
	size_t per_class[CLASSIFY__COUNT];
};

static void classify_case(const struct corpus_case *c, void *arg)
{
	struct corpus_stats *st = arg;
	static struct maillog_line ln;
	struct classify_result r;
	bool any = false;

	maillog_parse(&c->opts, c->line, c->len, &ln);
	classify_line(st->db, &ln, &r);
	/* the IP is inside the reply */
	if (r.ip.p)
		assert_true(r.ip.p >= ln.reply.p && r.ip.p + r.ip.len <= ln.reply.p + ln.reply.len);
	for (size_t i = 0; i < c->nkv; i++) {
		const char *k = c->kv[i].key, *v = c->kv[i].val;
		bool ok = true;
		char got[256];

		if (strcmp(k, "class") == 0) {
			ok = strcmp(classify_class_name(r.cls), v) == 0;
			snprintf(got, sizeof(got), "%s", classify_class_name(r.cls));
			st->per_class[r.cls]++;
		} else if (strcmp(k, "list") == 0) {
			ok = strcmp(v, "~") == 0 ? r.list == NULL
			                         : (r.list && strcmp(r.list, v) == 0);
			snprintf(got, sizeof(got), "%s", r.list ? r.list : "~");
		} else if (strcmp(k, "ip") == 0) {
			ok = strcmp(v, "~") == 0 ? r.ip.p == NULL
			                         : (r.ip.p && r.ip.len == strlen(v) &&
			                            memcmp(r.ip.p, v, r.ip.len) == 0);
			snprintf(got, sizeof(got), "%.*s", r.ip.p ? (int)r.ip.len : 1,
			         r.ip.p ? r.ip.p : "~");
		} else {
			continue;
		}
		any = true;
		st->checked++;
		if (!ok) {
			st->failed++;
			print_error("corpus line %zu: %s: want %s, got %s (rule %s:%zu)\n",
			            c->lineno, k, v, got, r.source ? r.source : "built-in", r.line);
		}
	}
	/* every delivery line of the corpus says its class */
	if (ln.event == MAILLOG_DELIVERY && !any) {
		st->failed++;
		print_error("corpus line %zu: a delivery line without class=\n", c->lineno);
	}
}

static void test_corpus(void **state)
{
	struct corpus_stats st;
	long cases;

	memset(&st, 0, sizeof(st));
	st.db = *state;
	cases = corpus_walk(classify_case, &st);
	print_message("classify corpus: %ld lines, %zu checks, %zu failed\n", cases, st.checked,
	              st.failed);
	for (int i = 1; i < CLASSIFY__COUNT; i++)
		print_message("  %-17s %zu\n", classify_class_name((enum classify_class)i),
		              st.per_class[i]);
	assert_true(cases >= 150);
	assert_int_equal(st.failed, 0);
	/* every class is exercised by the corpus */
	for (int i = 1; i < CLASSIFY__COUNT; i++)
		assert_true(st.per_class[i] > 0);
}

/* ---- the decision order, on hand-made texts ---- */

struct order_case {
	enum maillog_status st;
	const char *dsn;
	const char *text;
	enum classify_class want;
	const char *list;
};

static void test_order(void **state)
{
	static const struct order_case cases[] = {
	    /* 1: sent wins over any text */
	    {MAILLOG_ST_SENT, "2.0.0", "250 blocked using zen.spamhaus.org", CLASSIFY_DELIVERED,
	     NULL},
	    /* 2 before 3 */
	    {MAILLOG_ST_BOUNCED, "5.7.1",
	     "host a[1.2.3.4] said: 554 blocked using zen.spamhaus.org; Error: open resolver",
	     CLASSIFY_OTHER_PERMANENT, NULL},
	    {MAILLOG_ST_DEFERRED, "4.7.1", "554 blocked using zen.spamhaus.org 127.255.255.254",
	     CLASSIFY_OTHER_TEMPORARY, NULL},
	    /* 3 before 4: a list whose name says reputation */
	    {MAILLOG_ST_BOUNCED, "5.7.1",
	     "554 Client host [1.2.3.4] blocked using Barracuda "
	     "Reputation",
	     CLASSIFY_BLOCKLIST_IP, "barracuda"},
	    /* 4 before 5 and 7 */
	    {MAILLOG_ST_DEFERRED, "4.7.28",
	     "421 unusual rate of unsolicited mail originating from your SPF domain, rate limited",
	     CLASSIFY_REPUTATION, "gmail"},
	    /* 5 before 7 */
	    {MAILLOG_ST_DEFERRED, "4.7.26", "421 rate limited because it is unauthenticated",
	     CLASSIFY_AUTH_POLICY, NULL},
	    /* 6: text over code */
	    {MAILLOG_ST_BOUNCED, "5.1.1", "552 5.1.1 Recipient overquota", CLASSIFY_MAILBOX_FULL,
	     NULL},
	    {MAILLOG_ST_BOUNCED, "5.4.1", "550 5.4.1 Recipient address rejected: Access denied",
	     CLASSIFY_USER_UNKNOWN, NULL},
	    /* 6 before 7 */
	    {MAILLOG_ST_BOUNCED, "5.1.1", "550 no such user, too many recipients",
	     CLASSIFY_USER_UNKNOWN, NULL},
	    /* 7 before 8 */
	    {MAILLOG_ST_DEFERRED, "4.7.1", "451 too many connections, greylisted",
	     CLASSIFY_RATE_LIMITED, NULL},
	    /* 12: connect timeout is a connection error, conversation timeout a timeout */
	    {MAILLOG_ST_DEFERRED, "4.4.1", "connect to a[1.2.3.4]:25: Connection timed out",
	     CLASSIFY_CONNECTION_ERROR, NULL},
	    {MAILLOG_ST_DEFERRED, "4.4.2", "conversation with a[1.2.3.4] timed out while x",
	     CLASSIFY_TIMEOUT, NULL},
	    /* the receiver's host name does not name a list */
	    {MAILLOG_ST_BOUNCED, "5.0.0",
	     "host mx.spamhaus-blocked.example[1.2.3.4] said: 550 Go away",
	     CLASSIFY_OTHER_PERMANENT, NULL},
	    /* status decides permanent/temporary, not the reply code */
	    {MAILLOG_ST_DEFERRED, "4.0.0", "host a[1.2.3.4] refused to talk to me: 554 go away",
	     CLASSIFY_OTHER_TEMPORARY, NULL},
	    {MAILLOG_ST_SOFTBOUNCE, "4.0.0", "550 go away", CLASSIFY_OTHER_TEMPORARY, NULL},
	    {MAILLOG_ST_NONE, "5.0.0", "550 go away", CLASSIFY_OTHER_PERMANENT, NULL},
	    {MAILLOG_ST_NONE, NULL, "550 go away", CLASSIFY_OTHER_TEMPORARY, NULL},
	    {MAILLOG_ST_BOUNCED, "5.0.0", "", CLASSIFY_OTHER_PERMANENT, NULL},
	};
	struct classify_result r;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct order_case *c = &cases[i];

		classify_reply(*state, c->st, c->dsn, c->dsn ? strlen(c->dsn) : 0, c->text,
		               strlen(c->text), &r);
		if (r.cls != c->want)
			print_error("case %zu: want %s, got %s\n", i, classify_class_name(c->want),
			            classify_class_name(r.cls));
		assert_int_equal(r.cls, c->want);
		if (c->list)
			assert_string_equal(r.list, c->list);
		else
			assert_null(r.list);
	}
	/* NULL text and NULL db */
	classify_reply(*state, MAILLOG_ST_BOUNCED, "5.0.0", 5, NULL, 0, &r);
	assert_int_equal(r.cls, CLASSIFY_OTHER_PERMANENT);
	classify_reply(NULL, MAILLOG_ST_DEFERRED, "4.0.0", 5, "x", 1, &r);
	assert_int_equal(r.cls, CLASSIFY_OTHER_TEMPORARY);
}

/* A reply longer than CLASSIFY_MAX_TEXT: only its start is looked at. */
static void test_long_text(void **state)
{
	size_t n = CLASSIFY_MAX_TEXT * 2;
	char *t = malloc(n);
	struct classify_result r;

	memset(t, 'x', n);
	memcpy(t, "550 5.1.1 user unknown ", 23);
	memcpy(t + n - 30, " blocked using zen.spamhaus.org", 30);
	classify_reply(*state, MAILLOG_ST_BOUNCED, "5.1.1", 5, t, n, &r);
	assert_int_equal(r.cls, CLASSIFY_USER_UNKNOWN);
	memcpy(t + 10, "blocked using zen.spamhaus.org", 30);
	classify_reply(*state, MAILLOG_ST_BOUNCED, "5.1.1", 5, t, n, &r);
	assert_int_equal(r.cls, CLASSIFY_BLOCKLIST_IP);
	/* a NUL inside: literals still see past it, a regex stops at it */
	t[5] = '\0';
	classify_reply(*state, MAILLOG_ST_BOUNCED, "5.1.1", 5, t, n, &r);
	assert_int_equal(r.cls, CLASSIFY_BLOCKLIST_IP);
	free(t);
}

/* ---- the loader ---- */

static struct classify_db *load1(const char *text, struct classify_diag *d)
{
	struct classify_source s = {"t.conf", text, strlen(text)};

	return classify_db_load(&s, 1, d);
}

static void expect_error(const char *text, size_t line, const char *msg_part)
{
	struct classify_diag d;
	struct classify_db *db = load1(text, &d);

	if (db || d.line != line || !strstr(d.msg, msg_part))
		print_error("text `%s`: line %zu `%s`\n", text, d.line, d.msg);
	assert_null(db);
	assert_int_equal(d.line, line);
	assert_non_null(strstr(d.msg, msg_part));
	assert_string_equal(d.source, "t.conf");
}

static void test_load_errors(void **state)
{
	(void)state;
	expect_error("bogus \"x\"\n", 1, "unknown class");
	expect_error("# c\n\nuser_unknown \"x\n", 3, "unterminated");
	expect_error("user_unknown \"\"\n", 1, "empty literal");
	expect_error("user_unknown /(/\n", 1, "bad regex");
	expect_error("user_unknown /abc\n", 1, "unterminated /regex/");
	expect_error("user_unknown //\n", 1, "empty regex");
	expect_error("user_unknown\n", 1, "needs a term");
	expect_error("user_unknown frob=1 \"x\"\n", 1, "unknown option");
	expect_error("user_unknown dsn=x.1 \"x\"\n", 1, "dsn=");
	expect_error("user_unknown dsn=5.a \"x\"\n", 1, "dsn=");
	expect_error("user_unknown dsn=5.1.1.1.1.1.1.1.1 \"x\"\n", 1, "dsn=");
	expect_error("user_unknown ! \"x\"\n", 1, "`!`");
	expect_error("user_unknown list=a list=b \"x\"\n", 1, "twice");
	expect_error("user_unknown list=a!b \"x\"\n", 1, "name expected");
	expect_error("list\n", 1, "name");
	expect_error("list a /x/\n", 1, "only");
	expect_error("list a !\"x\"\n", 1, "plain");
	expect_error("list a w\"x\"\n", 1, "plain");
	expect_error("list a ^\"x\"\n", 1, "plain");
	expect_error("other ^x\n", 1, "`^`");
	expect_error("other !x\n", 1, "`!`");
	expect_error("list a foo\n", 1, "only");
	expect_error("\n\nblocklist_ip list=nolist \"x\"\n", 3, "not declared");
	expect_error("!\"x\"\n", 1, "unknown class");
	{
		char big[CLASSIFY_MAX_LINE + 20];

		memset(big, 'a', sizeof(big));
		memcpy(big, "other \"", 7);
		big[sizeof(big) - 2] = '"';
		big[sizeof(big) - 1] = '\0';
		expect_error(big, 1, "longer than");
	}
	{
		char lit[300];

		memset(lit, 'a', sizeof(lit));
		memcpy(lit, "other \"", 7);
		lit[sizeof(lit) - 2] = '"';
		lit[sizeof(lit) - 1] = '\0';
		expect_error(lit, 1, "literal longer");
	}
	{
		struct classify_source s = {"nul.conf", "other \"a\0b\"\n", 12};
		struct classify_diag d;

		assert_null(classify_db_load(&s, 1, &d));
		assert_non_null(strstr(d.msg, "NUL"));
	}
	/* no diag: still NULL, no crash */
	assert_null(load1("bogus\n", NULL));
}

static void test_load_ok(void **state)
{
	struct classify_diag d;
	struct classify_db *db;
	struct classify_result r;
	const char *t;

	(void)state;
	/* empty, comments only, CRLF, no final newline */
	db = load1("", &d);
	assert_non_null(db);
	assert_int_equal(classify_db_rules(db), 0);
	classify_reply(db, MAILLOG_ST_BOUNCED, "5.0.0", 5, "x", 1, &r);
	assert_int_equal(r.cls, CLASSIFY_OTHER_PERMANENT);
	classify_db_free(db);
	db = load1("# only\r\n   # comments\r\nother \"a#b\" # c\r\nuser_unknown /x\\/y/", &d);
	assert_non_null(db);
	assert_int_equal(classify_db_rules(db), 2);
	t = "550 x/y";
	classify_reply(db, MAILLOG_ST_BOUNCED, "5.0.0", 5, t, strlen(t), &r);
	assert_int_equal(r.cls, CLASSIFY_USER_UNKNOWN);
	assert_int_equal(r.line, 4);
	assert_string_equal(r.source, "t.conf");
	t = "550 A#B";
	classify_reply(db, MAILLOG_ST_DEFERRED, "4.0.0", 5, t, strlen(t), &r);
	assert_int_equal(r.cls, CLASSIFY_OTHER_TEMPORARY);
	assert_int_equal(r.line, 3);
	classify_db_free(db);
	classify_db_free(NULL);
	assert_int_equal(classify_db_rules(NULL), 0);
	assert_int_equal(classify_db_lists(NULL), 0);
}

static void test_options(void **state)
{
	struct classify_diag d;
	struct classify_db *db;
	struct classify_result r;
	const char *t;

	(void)state;
	db = load1("list l1 \"one\" \"uno\"\n"
	           "list l2 \"two\"\n"
	           "list quiet\n"
	           "blocklist_ip list=any \"listed\"\n"
	           "blocklist_domain list=auto \"domain\"\n"
	           "reputation list=quiet status=temp \"rep\"\n"
	           "user_unknown dsn=5.1.1\n"
	           "mailbox_full \"full\" !\"not full\"\n"
	           "timeout \"slow\" /sl(o)+w +down/\n"
	           "greylisted \"\\\"grey\\\\\"\n"
	           "tls_error w\"tls\"\n"
	           "connection_error ^\"connect to \"\n"
	           "relay_denied \"relay\" /^[A-Z]+ [0-9]\\.[0-9]/\n"
	           "content_spam \"virus\" !w\"free\"\n",
	           &d);
	assert_non_null(db);
	assert_int_equal(classify_db_lists(db), 3);
	/* list=any needs a list; the earliest named wins */
	t = "listed on two and one";
	classify_reply(db, MAILLOG_ST_BOUNCED, "5.0.0", 5, t, strlen(t), &r);
	assert_int_equal(r.cls, CLASSIFY_BLOCKLIST_IP);
	assert_string_equal(r.list, "l2");
	t = "listed on UNO";
	classify_reply(db, MAILLOG_ST_BOUNCED, "5.0.0", 5, t, strlen(t), &r);
	assert_string_equal(r.list, "l1");
	t = "listed on nothing";
	classify_reply(db, MAILLOG_ST_BOUNCED, "5.0.0", 5, t, strlen(t), &r);
	assert_int_equal(r.cls, CLASSIFY_OTHER_PERMANENT);
	/* list=auto holds without a list */
	t = "domain bad";
	classify_reply(db, MAILLOG_ST_BOUNCED, "5.0.0", 5, t, strlen(t), &r);
	assert_int_equal(r.cls, CLASSIFY_BLOCKLIST_DOMAIN);
	assert_null(r.list);
	/* status=temp */
	t = "bad rep";
	classify_reply(db, MAILLOG_ST_BOUNCED, "5.0.0", 5, t, strlen(t), &r);
	assert_int_equal(r.cls, CLASSIFY_OTHER_PERMANENT);
	classify_reply(db, MAILLOG_ST_DEFERRED, "4.0.0", 5, t, strlen(t), &r);
	assert_int_equal(r.cls, CLASSIFY_REPUTATION);
	assert_string_equal(r.list, "quiet");
	/* dsn= is a prefix */
	t = "whatever";
	classify_reply(db, MAILLOG_ST_BOUNCED, "5.1.10", 6, t, strlen(t), &r);
	assert_int_equal(r.cls, CLASSIFY_USER_UNKNOWN);
	classify_reply(db, MAILLOG_ST_BOUNCED, "5.1.", 4, t, strlen(t), &r);
	assert_int_equal(r.cls, CLASSIFY_OTHER_PERMANENT);
	classify_reply(db, MAILLOG_ST_BOUNCED, NULL, 0, t, strlen(t), &r);
	assert_int_equal(r.cls, CLASSIFY_OTHER_PERMANENT);
	/* negation */
	t = "mailbox FULL";
	classify_reply(db, MAILLOG_ST_BOUNCED, "5.0.0", 5, t, strlen(t), &r);
	assert_int_equal(r.cls, CLASSIFY_MAILBOX_FULL);
	t = "mailbox not full";
	classify_reply(db, MAILLOG_ST_BOUNCED, "5.0.0", 5, t, strlen(t), &r);
	assert_int_equal(r.cls, CLASSIFY_OTHER_PERMANENT);
	/* regex with its literal */
	t = "slow: SLOOOW   down";
	classify_reply(db, MAILLOG_ST_DEFERRED, "4.0.0", 5, t, strlen(t), &r);
	assert_int_equal(r.cls, CLASSIFY_TIMEOUT);
	t = "slow, not down";
	classify_reply(db, MAILLOG_ST_DEFERRED, "4.0.0", 5, t, strlen(t), &r);
	assert_int_equal(r.cls, CLASSIFY_OTHER_TEMPORARY);
	/* escapes in literals */
	t = "\"GREY\\";
	classify_reply(db, MAILLOG_ST_DEFERRED, "4.0.0", 5, t, strlen(t), &r);
	assert_int_equal(r.cls, CLASSIFY_GREYLISTED);
	/* whole words: not inside another word, at either end or next to punctuation */
	t = "STARTTLS needed";
	classify_reply(db, MAILLOG_ST_DEFERRED, "4.0.0", 5, t, strlen(t), &r);
	assert_int_equal(r.cls, CLASSIFY_OTHER_TEMPORARY);
	t = "STARTTLS needed, or TLS";
	classify_reply(db, MAILLOG_ST_DEFERRED, "4.0.0", 5, t, strlen(t), &r);
	assert_int_equal(r.cls, CLASSIFY_TLS_ERROR);
	t = "tls";
	classify_reply(db, MAILLOG_ST_DEFERRED, "4.0.0", 5, t, strlen(t), &r);
	assert_int_equal(r.cls, CLASSIFY_TLS_ERROR);
	t = "a (tls1.2) b";
	classify_reply(db, MAILLOG_ST_DEFERRED, "4.0.0", 5, t, strlen(t), &r);
	assert_int_equal(r.cls, CLASSIFY_TLS_ERROR);
	t = "virus-free";
	classify_reply(db, MAILLOG_ST_DEFERRED, "4.0.0", 5, t, strlen(t), &r);
	assert_int_equal(r.cls, CLASSIFY_OTHER_TEMPORARY);
	t = "virus freedom";
	classify_reply(db, MAILLOG_ST_DEFERRED, "4.0.0", 5, t, strlen(t), &r);
	assert_int_equal(r.cls, CLASSIFY_CONTENT_SPAM);
	/* anchored: at the start, or after "delivery temporarily suspended: " */
	t = "Connect to x[1.2.3.4]:25: refused";
	classify_reply(db, MAILLOG_ST_DEFERRED, "4.4.1", 5, t, strlen(t), &r);
	assert_int_equal(r.cls, CLASSIFY_CONNECTION_ERROR);
	t = "delivery temporarily suspended: connect to x[1.2.3.4]:25: refused";
	classify_reply(db, MAILLOG_ST_DEFERRED, "4.4.1", 5, t, strlen(t), &r);
	assert_int_equal(r.cls, CLASSIFY_CONNECTION_ERROR);
	t = "unable to connect to x";
	classify_reply(db, MAILLOG_ST_DEFERRED, "4.4.1", 5, t, strlen(t), &r);
	assert_int_equal(r.cls, CLASSIFY_OTHER_TEMPORARY);
	t = "conn";
	classify_reply(db, MAILLOG_ST_DEFERRED, "4.4.1", 5, t, strlen(t), &r);
	assert_int_equal(r.cls, CLASSIFY_OTHER_TEMPORARY);
	/* a regex is matched case-insensitively, escapes kept */
	t = "Relay 5.7";
	classify_reply(db, MAILLOG_ST_DEFERRED, "4.0.0", 5, t, strlen(t), &r);
	assert_int_equal(r.cls, CLASSIFY_RELAY_DENIED);
	t = "Relay 5x7";
	classify_reply(db, MAILLOG_ST_DEFERRED, "4.0.0", 5, t, strlen(t), &r);
	assert_int_equal(r.cls, CLASSIFY_OTHER_TEMPORARY);
	classify_db_free(db);
}

/* A site file first: its rules win, and it may use the stock lists. */
static void test_sources(void **state)
{
	size_t len;
	char *stock = read_file("NDR_PATTERNS", "data/ndr-patterns.conf",
	                        "../../data/ndr-patterns.conf", &len);
	struct classify_source src[2] = {
	    {"site.conf",
	     "blocklist_ip list=spamhaus \"acme says no\"\n"
	     "reputation list=mylist \"zen.spamhaus.org\"\n"
	     "list mylist\n",
	     0},
	    {"stock.conf", stock, len},
	};
	struct classify_diag d;
	struct classify_db *db;
	struct classify_result r;
	const char *t;

	(void)state;
	assert_non_null(stock);
	src[0].len = strlen(src[0].text);
	db = classify_db_load(src, 2, &d);
	assert_non_null(db);
	t = "550 ACME says no to [198.51.100.23]";
	classify_reply(db, MAILLOG_ST_BOUNCED, "5.7.1", 5, t, strlen(t), &r);
	assert_int_equal(r.cls, CLASSIFY_BLOCKLIST_IP);
	assert_string_equal(r.list, "spamhaus");
	assert_string_equal(r.source, "site.conf");
	assert_int_equal(r.line, 1);
	assert_int_equal(r.ip.len, strlen("198.51.100.23"));
	t = "554 blocked using zen.spamhaus.org";
	classify_reply(db, MAILLOG_ST_BOUNCED, "5.7.1", 5, t, strlen(t), &r);
	assert_int_equal(r.cls, CLASSIFY_REPUTATION);
	assert_string_equal(r.list, "mylist");
	t = "554 blocked using bl.spamcop.net";
	classify_reply(db, MAILLOG_ST_BOUNCED, "5.7.1", 5, t, strlen(t), &r);
	assert_int_equal(r.cls, CLASSIFY_BLOCKLIST_IP);
	assert_string_equal(r.source, "stock.conf");
	classify_db_free(db);
	/* an error in the second source names it */
	src[1].text = "\nnope\n";
	src[1].len = 6;
	assert_null(classify_db_load(src, 2, &d));
	assert_string_equal(d.source, "stock.conf");
	assert_int_equal(d.line, 2);
	free(stock);
}

/* Many literals sharing prefixes and suffixes (the automaton's output chains). */
static void test_automaton(void **state)
{
	struct classify_diag d;
	struct classify_db *db;
	struct classify_result r;
	const char *t;

	(void)state;
	db = load1("user_unknown \"abcd\" \"bcd\" \"cd\" \"d\"\n"
	           "mailbox_full \"aab\"\n"
	           "rate_limited \"he\" \"she\" \"his\" \"hers\"\n",
	           &d);
	assert_non_null(db);
	t = "xxabcdxx";
	classify_reply(db, MAILLOG_ST_BOUNCED, "5.0.0", 5, t, strlen(t), &r);
	assert_int_equal(r.cls, CLASSIFY_USER_UNKNOWN);
	t = "xxbcdxx";
	classify_reply(db, MAILLOG_ST_BOUNCED, "5.0.0", 5, t, strlen(t), &r);
	assert_int_equal(r.cls, CLASSIFY_OTHER_PERMANENT);
	t = "aaab";
	classify_reply(db, MAILLOG_ST_BOUNCED, "5.0.0", 5, t, strlen(t), &r);
	assert_int_equal(r.cls, CLASSIFY_MAILBOX_FULL);
	t = "ushers his";
	classify_reply(db, MAILLOG_ST_BOUNCED, "5.0.0", 5, t, strlen(t), &r);
	assert_int_equal(r.cls, CLASSIFY_RATE_LIMITED);
	classify_db_free(db);
}

/* More than 32767 states: the 32-bit automaton. */
static void test_big_automaton(void **state)
{
	size_t nlits = 170, litlen = 200, cap = nlits * (litlen + 40) + 1, n = 0;
	char *text = malloc(cap), probe[256];
	struct classify_source src = {"big.conf", text, 0};
	struct classify_diag d;
	struct classify_db *db;
	struct classify_result r;

	(void)state;
	assert_non_null(text);
	for (size_t i = 0; i < nlits; i++) {
		n += (size_t)snprintf(text + n, cap - n, "%s \"%03zu",
		                      i == 7 ? "mailbox_full" : "other", i);
		for (size_t k = 3; k < litlen; k++)
			text[n++] = (char)('a' + (i * 7 + k * 3) % 26);
		text[n++] = '"';
		text[n++] = '\n';
	}
	src.len = n;
	db = classify_db_load(&src, 1, &d);
	assert_non_null(db);
	/* the 8th literal inside some text */
	memcpy(probe, "xx ", 3);
	{
		const char *l7 = strstr(text, "\"007") + 1;

		memcpy(probe + 3, l7, litlen);
		memcpy(probe + 3 + litlen, " yy", 3);
	}
	classify_reply(db, MAILLOG_ST_BOUNCED, "5.0.0", 5, probe, litlen + 6, &r);
	assert_int_equal(r.cls, CLASSIFY_MAILBOX_FULL);
	probe[100] ^= 1;
	classify_reply(db, MAILLOG_ST_BOUNCED, "5.0.0", 5, probe, litlen + 6, &r);
	assert_int_equal(r.cls, CLASSIFY_OTHER_PERMANENT);
	assert_null(r.source);
	classify_db_free(db);
	free(text);
}

/* ---- the IP finder ---- */

static void expect_ip(const char *t, const char *want)
{
	struct maillog_str ip;
	bool found = classify_find_ip(t, strlen(t), &ip);

	if (!want) {
		if (found)
			print_error("`%s`: found %.*s\n", t, (int)ip.len, ip.p);
		assert_false(found);
		return;
	}
	if (!found || ip.len != strlen(want) || memcmp(ip.p, want, ip.len) != 0)
		print_error("`%s`: want %s, got %.*s\n", t, want, found ? (int)ip.len : 1,
		            found ? ip.p : "-");
	assert_true(found);
	assert_int_equal(ip.len, strlen(want));
	assert_memory_equal(ip.p, want, ip.len);
}

static void test_find_ip(void **state)
{
	(void)state;
	expect_ip("Client host [198.51.100.23] blocked", "198.51.100.23");
	expect_ip("550-5.7.1 [198.51.100.23      12] Our system", "198.51.100.23");
	expect_ip("Messages from 198.51.100.23 temporarily deferred - 4.16.55.1", "198.51.100.23");
	expect_ip("deferred - 4.16.55.1; from 198.51.100.23", "198.51.100.23");
	expect_ip("comcast 198.51.100.23 found on one or more DNSBLs", "198.51.100.23");
	expect_ip("521< 198.51.100.23 >_is_blocked", "198.51.100.23");
	expect_ip("q.cgi?ip=198.51.100.23", "198.51.100.23");
	expect_ip("IP: 198.51.100.23.", "198.51.100.23");
	expect_ip("23.100.51.198.zen.spamhaus.org listed", NULL);
	expect_ip("version 1.2.3.4.5", NULL);
	expect_ip("256.1.1.1", NULL);
	expect_ip("1.2.3", NULL);
	expect_ip("x1.2.3.4", NULL);
	expect_ip("dsn 5.7.1 and 4.16.55", NULL);
	expect_ip("client [2001:db8:10::23] blocked", "2001:db8:10::23");
	expect_ip("[IPv6:2001:db8:10::23]", "2001:db8:10::23");
	expect_ip("from 2001:db8::1.", "2001:db8::1");
	expect_ip("at 07:05:09 from nowhere", NULL);
	expect_ip("bare 2001:db8::1 no context", NULL);
	expect_ip("[::ffff:198.51.100.23]", "::ffff:198.51.100.23");
	expect_ip("[fe80::1]:25", "fe80::1");
	expect_ip("", NULL);
	{
		struct maillog_str ip;

		assert_false(classify_find_ip(NULL, 5, &ip));
	}
}

static void test_names(void **state)
{
	(void)state;
	for (int i = 1; i < CLASSIFY__COUNT; i++) {
		const char *n = classify_class_name((enum classify_class)i);

		assert_int_equal(classify_class_lookup(n, strlen(n)), i);
	}
	assert_int_equal(classify_class_lookup("none", 4), CLASSIFY__COUNT);
	assert_int_equal(classify_class_lookup("other", 5), CLASSIFY__COUNT);
	assert_string_equal(classify_class_name((enum classify_class)99), "?");
	assert_string_equal(classify_class_name(CLASSIFY_BLOCKLIST_IP), "blocklist_ip");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_corpus, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_order, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_long_text, setup, teardown),
	    cmocka_unit_test(test_load_errors),
	    cmocka_unit_test(test_load_ok),
	    cmocka_unit_test(test_options),
	    cmocka_unit_test(test_sources),
	    cmocka_unit_test(test_automaton),
	    cmocka_unit_test(test_big_automaton),
	    cmocka_unit_test(test_find_ip),
	    cmocka_unit_test(test_names),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
