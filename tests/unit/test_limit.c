/*
 * tests/unit/test_limit.c - the rate-limit check through the pipeline with
 * the embedded store: window edges, several windows, settlement at
 * END-OF-MESSAGE, duplicates, refusals not counted, messages and bytes,
 * overrides, actions and their precedence, scope, key normalisation.
 * Requests are written as Postfix sends them and parsed by proto/.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache/store.h"
#include "policyd/config.h"
#include "policyd/limit.h"
#include "policyd/pipeline.h"

#define T0   1795000000000000LL /* µs */
#define HOUR 3600000000LL

struct env {
	struct config *cfg;
	struct store *store;
	struct txn txn;
	struct pipeline_ctx x;
	int64_t now;
	char path[64];
	char ovr[64];
};

static struct env *env_new(const char *rules, const char *server_extra)
{
	struct env *e = calloc(1, sizeof(*e));
	char err[512];
	snprintf(e->path, sizeof(e->path), "/tmp/policyd-test-limit-XXXXXX");
	int fd = mkstemp(e->path);
	assert_true(fd >= 0);
	FILE *fp = fdopen(fd, "w");
	fprintf(fp, "[server]\nstate_dir =\nlog = stderr\n%s\n%s", server_extra ? server_extra : "",
	        rules);
	fclose(fp);
	e->cfg = config_load(e->path, err, sizeof(err));
	if (e->cfg == NULL)
		fail_msg("config: %s", err);
	struct store_memory_opts mo = {.state_dir = NULL, .flush_ms = 1000};
	e->store = store_memory_open(&mo, T0, err, sizeof(err));
	assert_non_null(e->store);
	txn_init(&e->txn);
	e->now = T0;
	return e;
}

static void env_free(struct env *e)
{
	txn_free(&e->txn);
	e->store->be->close(e->store);
	config_free(e->cfg);
	unlink(e->path);
	if (e->ovr[0])
		unlink(e->ovr);
	free(e);
}

static void batch_cb(void *arg, enum store_status st, const struct store_result *res, size_t n)
{
	struct pipeline_ctx *x = arg;
	x->st = st;
	if (n)
		memcpy(x->res, res, n * sizeof(*res));
}

static void follow_cb(void *arg, enum store_status st, const struct store_result *res, size_t n)
{
	(void)arg;
	(void)res;
	(void)n;
	assert_int_equal(st, STORE_OK);
}

/* Run one request given as "name=value" lines (without request= and the
 * final empty line); returns the verdict action. */
static enum verdict_action run(struct env *e, const char *fmt, ...)
{
	static char buf[8192];
	static struct proto_request req;
	static struct proto_kv extra[64];
	char body[4096];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(body, sizeof(body), fmt, ap);
	va_end(ap);
	int n = snprintf(buf, sizeof(buf), "request=smtpd_access_policy\n%s\n\n", body);
	struct proto_parser p;
	struct proto_limits lim;
	struct proto_diag d;
	size_t used;
	proto_limits_default(&lim);
	proto_parser_init(&p, &lim);
	memset(&req, 0, sizeof(req));
	req.extra = extra;
	req.extra_cap = 64;
	assert_int_equal(proto_parse(&p, buf, (size_t)n, &req, &used, &d), PROTO_OK);

	struct pipeline_ctx *x = &e->x;
	pipeline_begin(x, e->cfg, &req, &e->txn, e->now);
	pipeline_prepare(x);
	if (x->nops)
		assert_int_equal(store_batch(e->store, x->ops, x->nops, x->now_us, batch_cb, x), 0);
	pipeline_finish(x);
	if (x->nfollow)
		store_batch(e->store, x->follow, x->nfollow, x->now_us, follow_cb, NULL);
	return x->v.action;
}

static const char *reply_text(struct env *e)
{
	static char out[512];
	verdict_reply(&e->x.v, out, sizeof(out));
	return out;
}

#define RCPT(e, user, inst, rcpt)                                                                  \
	run(e,                                                                                     \
	    "protocol_state=RCPT\nsasl_username=%s\nsender=%s@example.org\n"                       \
	    "client_address=198.51.100.7\ninstance=%s\nrecipient=%s",                              \
	    user, user, inst, rcpt)
#define EOM(e, user, inst, count, size)                                                            \
	run(e,                                                                                     \
	    "protocol_state=END-OF-MESSAGE\nsasl_username=%s\nsender=%s@example.org\n"             \
	    "client_address=198.51.100.7\ninstance=%s\nrecipient_count=%u\nsize=%u",               \
	    user, user, inst, (unsigned)(count), (unsigned)(size))

/* 100/1h: the 100th recipient passes, the 101st is deferred with a retry. */
static void test_window_edge(void **state)
{
	struct env *e = env_new("[limit r]\nkey = sasl_username\ncount = recipients\n"
	                        "rate = 100/1h\naction = defer\n",
	                        "hooks = rcpt");
	char inst[32], rcpt[64];
	for (int i = 0; i < 100; i++) {
		snprintf(inst, sizeof(inst), "i.%d", i);
		snprintf(rcpt, sizeof(rcpt), "r%d@ok.test", i);
		assert_int_equal(RCPT(e, "alice", inst, rcpt), ACT_DUNNO);
	}
	assert_int_equal(RCPT(e, "alice", "i.x", "last@ok.test"), ACT_DEFER);
	const char *t = reply_text(e);
	assert_non_null(strstr(t, "action=DEFER 4.7.1 "));
	assert_non_null(strstr(t, "try again in 36s"));
	/* refused requests are not counted: after one emission interval
	 * (36 s) exactly one more passes */
	for (int i = 0; i < 5; i++)
		assert_int_equal(RCPT(e, "alice", "i.y", "again@ok.test"), ACT_DEFER);
	e->now += 36000000 - 1;
	assert_int_equal(RCPT(e, "alice", "i.z", "z1@ok.test"), ACT_DEFER);
	e->now += 1;
	assert_int_equal(RCPT(e, "alice", "i.z", "z1@ok.test"), ACT_DUNNO);
	assert_int_equal(RCPT(e, "alice", "i.z", "z2@ok.test"), ACT_DEFER);
	/* another account is unaffected */
	assert_int_equal(RCPT(e, "bob", "b.1", "x@ok.test"), ACT_DUNNO);
	env_free(e);
}

/* Several windows: the day window bites after the hour window refills. */
static void test_several_windows(void **state)
{
	struct env *e = env_new("[limit r]\nkey = sasl_username\ncount = recipients\n"
	                        "rate = 2/1h, 3/1d\naction = defer\n",
	                        "hooks = rcpt");
	assert_int_equal(RCPT(e, "alice", "a", "1@x.test"), ACT_DUNNO);
	assert_int_equal(RCPT(e, "alice", "a", "2@x.test"), ACT_DUNNO);
	assert_int_equal(RCPT(e, "alice", "a", "3@x.test"), ACT_DEFER);
	assert_non_null(strstr(reply_text(e), "per h"));
	e->now += HOUR;
	assert_int_equal(RCPT(e, "alice", "b", "3@x.test"), ACT_DUNNO);
	assert_int_equal(RCPT(e, "alice", "b", "4@x.test"), ACT_DEFER);
	assert_non_null(strstr(reply_text(e), "per d"));
	env_free(e);
}

/* A recipient repeated within one transaction counts once. */
static void test_duplicate_recipient(void **state)
{
	struct env *e = env_new("[limit r]\nkey = sasl_username\ncount = recipients\n"
	                        "rate = 2/1h\naction = defer\n",
	                        "hooks = rcpt");
	for (int i = 0; i < 5; i++)
		assert_int_equal(RCPT(e, "alice", "t1", "same@x.test"), ACT_DUNNO);
	assert_int_equal(RCPT(e, "alice", "t1", "other@x.test"), ACT_DUNNO);
	assert_int_equal(RCPT(e, "alice", "t2", "same@x.test"), ACT_DEFER); /* new txn */
	env_free(e);
}

/* Reserved at RCPT, settled at END-OF-MESSAGE against recipient_count. */
static void test_settlement(void **state)
{
	struct env *e = env_new("[limit r]\nkey = sasl_username\ncount = recipients\n"
	                        "rate = 5/1h\naction = defer\n",
	                        NULL);
	for (int i = 0; i < 5; i++) {
		char r[32];
		snprintf(r, sizeof(r), "r%d@x.test", i);
		assert_int_equal(RCPT(e, "alice", "m1", r), ACT_DUNNO);
	}
	/* Postfix accepted only 2 of the 5 (a later restriction rejected 3) */
	assert_int_equal(EOM(e, "alice", "m1", 2, 100), ACT_DUNNO);
	for (int i = 0; i < 3; i++) {
		char r[32];
		snprintf(r, sizeof(r), "s%d@x.test", i);
		assert_int_equal(RCPT(e, "alice", "m2", r), ACT_DUNNO);
	}
	assert_int_equal(RCPT(e, "alice", "m2", "s9@x.test"), ACT_DEFER);
	/* an abandoned transaction (no EOM) keeps its counts */
	env_free(e);
}

/* Messages count at END-OF-MESSAGE; at RCPT a full account is stopped. */
static void test_messages(void **state)
{
	struct env *e = env_new("[limit m]\nkey = sasl_username\ncount = messages\n"
	                        "rate = 2/1h\naction = defer\n",
	                        NULL);
	for (int i = 0; i < 2; i++) {
		char inst[16];
		snprintf(inst, sizeof(inst), "m%d", i);
		assert_int_equal(RCPT(e, "alice", inst, "a@x.test"), ACT_DUNNO);
		assert_int_equal(RCPT(e, "alice", inst, "b@x.test"), ACT_DUNNO);
		assert_int_equal(EOM(e, "alice", inst, 2, 500), ACT_DUNNO);
	}
	assert_int_equal(RCPT(e, "alice", "m3", "a@x.test"), ACT_DEFER);
	assert_non_null(strstr(reply_text(e), "messages"));
	env_free(e);
}

/* Bytes at END-OF-MESSAGE; a message bigger than the limit never passes;
 * a refused message gives its recipients back. */
static void test_bytes_and_refused_message(void **state)
{
	struct env *e = env_new("[limit b]\nkey = sasl_username\ncount = bytes\n"
	                        "rate = 1000/1h\naction = defer\n"
	                        "[limit r]\nkey = sasl_username\ncount = recipients\n"
	                        "rate = 3/1h\naction = defer\n",
	                        NULL);
	assert_int_equal(RCPT(e, "alice", "m1", "a@x.test"), ACT_DUNNO);
	assert_int_equal(EOM(e, "alice", "m1", 1, 600), ACT_DUNNO);
	assert_int_equal(RCPT(e, "alice", "m2", "b@x.test"), ACT_DUNNO);
	assert_int_equal(RCPT(e, "alice", "m2", "c@x.test"), ACT_DUNNO);
	assert_int_equal(EOM(e, "alice", "m2", 2, 600), ACT_DEFER); /* 1200 > 1000 */
	/* the refused message's 2 recipients were given back: 2 more fit */
	assert_int_equal(RCPT(e, "alice", "m3", "d@x.test"), ACT_DUNNO);
	assert_int_equal(RCPT(e, "alice", "m3", "e@x.test"), ACT_DUNNO);
	assert_int_equal(RCPT(e, "alice", "m3", "f@x.test"), ACT_DEFER);
	/* too large ever */
	assert_int_equal(EOM(e, "bob", "n1", 1, 5000), ACT_DEFER);
	assert_non_null(strstr(reply_text(e), "larger than the limit"));
	env_free(e);
}

/* Overrides: exempt and per-subject windows. */
static void test_overrides(void **state)
{
	char rules[512];
	struct env *tmp = calloc(1, sizeof(*tmp));
	snprintf(tmp->ovr, sizeof(tmp->ovr), "/tmp/policyd-test-ovr-XXXXXX");
	int fd = mkstemp(tmp->ovr);
	FILE *fp = fdopen(fd, "w");
	fprintf(fp, "# comment\nCEO exempt\nnewsletter  3/1h\n");
	fclose(fp);
	snprintf(rules, sizeof(rules),
	         "[limit r]\nkey = sasl_username\ncount = recipients\nrate = 1/1h\n"
	         "action = defer\noverrides = %s\n",
	         tmp->ovr);
	struct env *e = env_new(rules, "hooks = rcpt");
	snprintf(e->ovr, sizeof(e->ovr), "%s", tmp->ovr);
	free(tmp);
	for (int i = 0; i < 10; i++) {
		char r[32];
		snprintf(r, sizeof(r), "r%d@x.test", i);
		assert_int_equal(RCPT(e, "ceo", "c", r), ACT_DUNNO);
	}
	assert_int_equal(RCPT(e, "newsletter", "n", "1@x.test"), ACT_DUNNO);
	assert_int_equal(RCPT(e, "newsletter", "n", "2@x.test"), ACT_DUNNO);
	assert_int_equal(RCPT(e, "newsletter", "n", "3@x.test"), ACT_DUNNO);
	assert_int_equal(RCPT(e, "newsletter", "n", "4@x.test"), ACT_DEFER);
	assert_int_equal(RCPT(e, "alice", "a", "1@x.test"), ACT_DUNNO);
	assert_int_equal(RCPT(e, "alice", "a", "2@x.test"), ACT_DEFER);
	env_free(e);
}

/* Each action, dry run, and precedence when several rules fire. */
static void test_actions_precedence(void **state)
{
	struct env *e = env_new("[limit w]\nkey = sasl_username\nrate = 1/1h\naction = warn\n"
	                        "[limit h]\nkey = sasl_username\nrate = 2/1h\naction = hold\n"
	                        "[limit d]\nkey = sasl_username\nrate = 3/1h\naction = defer\n"
	                        "dry_run = yes\n"
	                        "[limit x]\nkey = sasl_username\nrate = 4/1h\naction = reject\n",
	                        "hooks = rcpt");
	assert_int_equal(RCPT(e, "alice", "t", "1@x.test"), ACT_DUNNO);
	assert_int_equal(RCPT(e, "alice", "t", "2@x.test"), ACT_WARN);
	assert_non_null(strstr(reply_text(e), "action=WARN "));
	assert_int_equal(RCPT(e, "alice", "t", "3@x.test"), ACT_HOLD);
	assert_non_null(strstr(reply_text(e), "action=HOLD "));
	/* the dry-run defer fires too but does not win */
	assert_int_equal(RCPT(e, "alice", "t", "4@x.test"), ACT_HOLD);
	assert_true(e->x.v.nparts >= 3);
	/* x took 1..4; the 5th is rejected */
	assert_int_equal(RCPT(e, "alice", "t", "5@x.test"), ACT_REJECT);
	assert_non_null(strstr(reply_text(e), "action=REJECT 5.7.1 "));
	env_free(e);
}

/* Outbound scope; unauthenticated mail only meets scope=all rules. */
static void test_scope(void **state)
{
	struct env *e = env_new("[limit out]\nkey = principal\nrate = 1/1h\naction = defer\n"
	                        "[limit all]\nkey = client_address\nrate = 2/1h\naction = defer\n"
	                        "scope = all\n",
	                        "hooks = rcpt\ntrusted_networks = 192.0.2.0/24");
	const char *unauth =
	    "protocol_state=RCPT\nsender=x@remote.test\nclient_address=203.0.113.9\n"
	    "instance=%s\nrecipient=%s";
	assert_int_equal(run(e, unauth, "u", "1@x.test"), ACT_DUNNO);
	assert_int_equal(run(e, unauth, "u", "2@x.test"), ACT_DUNNO);
	assert_int_equal(run(e, unauth, "u", "3@x.test"), ACT_DEFER);
	assert_string_equal(e->x.v.part[e->x.v.winner].rule, "all");
	/* trusted network: principal is the sender */
	const char *web =
	    "protocol_state=RCPT\nsender=Form+x@Example.ORG\nclient_address=192.0.2.5\n"
	    "instance=%s\nrecipient=%s";
	assert_int_equal(run(e, web, "w", "1@x.test"), ACT_DUNNO);
	assert_string_equal(e->x.principal, "form@example.org");
	assert_true(e->x.outbound);
	assert_int_equal(run(e, web, "w2", "2@x.test"), ACT_DEFER);
	env_free(e);
}

/* Keys are normalised: case and +ext. */
static void test_normalisation(void **state)
{
	struct env *e =
	    env_new("[limit s]\nkey = sender\nrate = 1/1h\naction = defer\n", "hooks = rcpt");
	assert_int_equal(run(e,
	                     "protocol_state=RCPT\nsasl_username=u\nsender=Bob+news@Example.org\n"
	                     "instance=a\nrecipient=1@x.test"),
	                 ACT_DUNNO);
	assert_int_equal(run(e, "protocol_state=RCPT\nsasl_username=u\nsender=bob@EXAMPLE.org\n"
	                        "instance=b\nrecipient=2@x.test"),
	                 ACT_DEFER);
	env_free(e);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_window_edge),
	    cmocka_unit_test(test_several_windows),
	    cmocka_unit_test(test_duplicate_recipient),
	    cmocka_unit_test(test_settlement),
	    cmocka_unit_test(test_messages),
	    cmocka_unit_test(test_bytes_and_refused_message),
	    cmocka_unit_test(test_overrides),
	    cmocka_unit_test(test_actions_precedence),
	    cmocka_unit_test(test_scope),
	    cmocka_unit_test(test_normalisation),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
