/*
 * tests/unit/test_control.c - policyd/control.c: parsing of the control
 * protocol's request lines (control_parse): every command's members, the
 * defaults, and garbage of every kind getting a clear error.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policyd/control.h"

static int parse(const char *s, struct control_req *r, char *err, size_t errsz)
{
	err[0] = '\0';
	return control_parse(s, strlen(s), r, err, errsz);
}

static void expect_error(const char *line, const char *needle)
{
	struct control_req r;
	char err[512];
	if (parse(line, &r, err, sizeof(err)) != -1)
		fail_msg("accepted: %s", line);
	if (needle && strstr(err, needle) == NULL)
		fail_msg("error for %s is '%s', expected '%s'", line, err, needle);
	assert_null(r.json);
	assert_null(r.ids);
}

static void test_status(void **state)
{
	struct control_req r;
	char err[512];
	assert_int_equal(parse("{\"cmd\":\"status\"}", &r, err, sizeof(err)), 0);
	assert_string_equal(r.cmd, "status");
	assert_string_equal(r.account, "");
	assert_int_equal(r.n, 20);
	assert_int_equal(r.duration_us, 0);
	assert_non_null(r.json);
	control_req_free(&r);
	/* a CR before the newline, unknown members: fine */
	assert_int_equal(parse("{\"cmd\":\"status\",\"future\":[1,{}]}\r", &r, err, sizeof(err)),
	                 0);
	control_req_free(&r);
}

static void test_account_commands(void **state)
{
	struct control_req r;
	char err[512];
	assert_int_equal(parse("{\"cmd\":\"usage\",\"account\":\"alice\"}", &r, err, sizeof(err)),
	                 0);
	assert_string_equal(r.cmd, "usage");
	assert_string_equal(r.account, "alice");
	control_req_free(&r);
	static const char *const need[] = {"usage", "reset", "flag", "unflag", "history"};
	for (size_t i = 0; i < sizeof(need) / sizeof(need[0]); i++) {
		char line[128];
		snprintf(line, sizeof(line), "{\"cmd\":\"%s\"}", need[i]);
		expect_error(line, "needs an \"account\"");
	}
	expect_error("{\"cmd\":\"usage\",\"account\":\"\"}", "account");
	expect_error("{\"cmd\":\"usage\",\"account\":\"a b\"}", "space");
	expect_error("{\"cmd\":\"usage\",\"account\":\"a\\nb\"}", "control character");
	expect_error("{\"cmd\":\"usage\",\"account\":42}", "must be a string");
	/* an account longer than a key */
	char big[KEY_MAX + 64];
	int k = snprintf(big, sizeof(big), "{\"cmd\":\"usage\",\"account\":\"");
	memset(big + k, 'a', KEY_MAX);
	strcpy(big + k + KEY_MAX, "\"}");
	expect_error(big, "bytes long");
}

static void test_flag_members(void **state)
{
	struct control_req r;
	char err[512];
	assert_int_equal(
	    parse("{\"cmd\":\"flag\",\"account\":\"bob@example.org\",\"reason\":\"sent "
	          "spam to 500 people\",\"duration\":\"2h\"}",
	          &r, err, sizeof(err)),
	    0);
	assert_string_equal(r.reason, "sent spam to 500 people");
	assert_int_equal(r.duration_us, 2LL * 3600 * 1000000);
	control_req_free(&r);
	assert_int_equal(parse("{\"cmd\":\"flag\",\"account\":\"b\",\"duration\":\"forever\"}", &r,
	                       err, sizeof(err)),
	                 0);
	assert_int_equal(r.duration_us, -1);
	control_req_free(&r);
	assert_int_equal(
	    parse("{\"cmd\":\"flag\",\"account\":\"b\",\"duration\":90}", &r, err, sizeof(err)), 0);
	assert_int_equal(r.duration_us, 90LL * 1000000);
	control_req_free(&r);
	expect_error("{\"cmd\":\"flag\",\"account\":\"b\",\"duration\":\"2x\"}", "duration");
	expect_error("{\"cmd\":\"flag\",\"account\":\"b\",\"duration\":true}", "duration");
	expect_error("{\"cmd\":\"flag\",\"account\":\"b\",\"duration\":-7}", "duration");
	expect_error("{\"cmd\":\"flag\",\"account\":\"b\",\"duration\":99999999999}", "duration");
	expect_error("{\"cmd\":\"flag\",\"account\":\"b\",\"reason\":\"a\\u0007b\"}", "control");
}

static void test_pause_top(void **state)
{
	struct control_req r;
	char err[512];
	assert_int_equal(parse("{\"cmd\":\"pause\",\"action\":\"defer\"}", &r, err, sizeof(err)),
	                 0);
	assert_string_equal(r.action, "defer");
	control_req_free(&r);
	expect_error("{\"cmd\":\"pause\",\"action\":\"reject\"}", "hold");
	assert_int_equal(
	    parse("{\"cmd\":\"top\",\"n\":5,\"rule\":\"per-account\"}", &r, err, sizeof(err)), 0);
	assert_int_equal(r.n, 5);
	assert_string_equal(r.rule, "per-account");
	control_req_free(&r);
	expect_error("{\"cmd\":\"top\",\"n\":0}", "'n'");
	expect_error("{\"cmd\":\"top\",\"n\":1001}", "'n'");
	expect_error("{\"cmd\":\"top\",\"n\":\"5\"}", "'n'");
	expect_error("{\"cmd\":\"top\",\"n\":2.5}", "'n'");
}

static void test_held_ids(void **state)
{
	struct control_req r;
	char err[512];
	assert_int_equal(parse("{\"cmd\":\"held\",\"ids\":[\"D40BDA74263\",\"4Xk9Lm2sQzz1\"]}", &r,
	                       err, sizeof(err)),
	                 0);
	assert_int_equal(r.nids, 2);
	assert_string_equal(r.ids[1], "4Xk9Lm2sQzz1");
	control_req_free(&r);
	assert_int_equal(parse("{\"cmd\":\"held\",\"ids\":[]}", &r, err, sizeof(err)), 0);
	assert_int_equal(r.nids, 0);
	control_req_free(&r);
	expect_error("{\"cmd\":\"held\",\"ids\":\"ABC\"}", "ids");
	expect_error("{\"cmd\":\"held\",\"ids\":[\"ABC\",7]}", "'ids'[1]");
	expect_error("{\"cmd\":\"held\",\"ids\":[\"../x\"]}", "queue id");
	expect_error("{\"cmd\":\"held\",\"ids\":[\"\"]}", "queue id");
	/* too many ids */
	size_t cap = (CONTROL_MAX_IDS + 2) * 8 + 64, o = 0;
	char *line = malloc(cap);
	assert_non_null(line);
	o += (size_t)snprintf(line + o, cap - o, "{\"cmd\":\"held\",\"ids\":[");
	for (int i = 0; i < CONTROL_MAX_IDS + 1; i++)
		o += (size_t)snprintf(line + o, cap - o, "%s\"A%d\"", i ? "," : "", i);
	snprintf(line + o, cap - o, "]}");
	expect_error(line, "at most");
	free(line);
}

static void test_garbage(void **state)
{
	expect_error("", "empty request");
	expect_error("\r", "empty request");
	expect_error("status", "not JSON");
	expect_error("{\"cmd\":\"status\"", "not JSON");
	expect_error("{\"cmd\":\"status\"}{}", "not JSON");
	expect_error("[\"status\"]", "JSON object");
	expect_error("\"status\"", "not JSON");
	expect_error("42", "not JSON");
	expect_error("null", "not JSON");
	expect_error("{}", "missing \"cmd\"");
	expect_error("{\"cmd\":7}", "missing \"cmd\"");
	expect_error("{\"cmd\":\"status\",\"cmd\":\"top\"}", "not JSON"); /* duplicate key */
	expect_error("{\"cmd\":\"rm -rf\"}", "unknown command 'rm -rf'");
	expect_error("{\"cmd\":\"\\u0001\\u0002\"}", "unknown command '\?\?'");
	expect_error("\xff\xfe{}", "not JSON");
	expect_error("{\"cmd\":\"st\xc3\"}", "not JSON"); /* bad UTF-8 */
	/* a NUL inside the line */
	struct control_req r;
	char err[512];
	const char nul[] = "{\"cmd\":\0\"status\"}";
	assert_int_equal(control_parse(nul, sizeof(nul) - 1, &r, err, sizeof(err)), -1);
	/* longer than the line limit */
	size_t n = CONTROL_MAX_LINE + 10;
	char *big = malloc(n);
	assert_non_null(big);
	memset(big, ' ', n);
	memcpy(big, "{\"cmd\":\"status\"", 15);
	big[n - 1] = '}';
	assert_int_equal(control_parse(big, n, &r, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "longer than"));
	free(big);
	/* deep nesting: an error, not a crash */
	size_t d = 60000;
	char *deep = malloc(2 * d + 32);
	assert_non_null(deep);
	memset(deep, '[', d);
	memset(deep + d, ']', d);
	assert_int_equal(control_parse(deep, 2 * d, &r, err, sizeof(err)), -1);
	free(deep);
}

static void test_valid_qid(void **state)
{
	assert_true(control_valid_qid("D40BDA74263"));
	assert_false(control_valid_qid(""));
	assert_false(control_valid_qid("A-B"));
	assert_false(control_valid_qid("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_status),       cmocka_unit_test(test_account_commands),
	    cmocka_unit_test(test_flag_members), cmocka_unit_test(test_pause_top),
	    cmocka_unit_test(test_held_ids),     cmocka_unit_test(test_garbage),
	    cmocka_unit_test(test_valid_qid),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
