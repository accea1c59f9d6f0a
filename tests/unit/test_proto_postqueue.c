/*
 * tests/unit/test_proto_postqueue.c - proto/postqueue.c: the lines of
 * `postqueue -j` observed on Postfix 3.7.11 (docs/postfix-policy.md §6.1),
 * members of later releases (3.11 orig_address, bounce_reason), unknown
 * members, odd types, and garbage.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/postqueue.h"

static enum postqueue_status parse(const char *s, struct postqueue_msg *m)
{
	char err[160];
	return postqueue_parse(s, strlen(s), m, err, sizeof(err));
}

static void test_observed_hold(void **state)
{
	struct postqueue_msg m;
	const char *l =
	    "{\"queue_name\": \"hold\", \"queue_id\": \"D40BDA74263\", \"arrival_time\": "
	    "1795393939, \"message_size\": 404, \"forced_expire\": false, \"sender\": "
	    "\"hold@example.org\", \"recipients\": [{\"address\": \"bob@ok.test\"}, "
	    "{\"address\": \"carol@ok.test\"}]}";
	assert_int_equal(parse(l, &m), POSTQUEUE_OK);
	assert_string_equal(m.queue_name, "hold");
	assert_string_equal(m.queue_id, "D40BDA74263");
	assert_int_equal(m.arrival_time, 1795393939);
	assert_int_equal(m.message_size, 404);
	assert_false(m.forced_expire);
	assert_true(m.has_sender);
	assert_string_equal(m.sender, "hold@example.org");
	assert_int_equal(m.nrcpt, 2);
	assert_string_equal(m.first_rcpt, "bob@ok.test");
	assert_int_equal(m.ndelayed, 0);
	assert_int_equal(m.odd, 0);
	assert_false(m.cut);
}

static void test_observed_deferred(void **state)
{
	struct postqueue_msg m;
	const char *l =
	    "{\"queue_name\": \"deferred\", \"queue_id\": \"96F40A7425B\", \"arrival_time\": "
	    "1795394524, \"message_size\": 407, \"forced_expire\": false, \"sender\": "
	    "\"carol@example.org\", \"recipients\": [{\"address\": \"g@greet5xx.test\", "
	    "\"delay_reason\": \"host 127.0.0.1[127.0.0.1] refused to talk to me: 554 5.7.1 "
	    "Service "
	    "unavailable; Client host [127.0.0.1] blocked using bl.spamcop.net\"}, {\"address\": "
	    "\"d@down.test\", \"delay_reason\": \"connect to 127.0.0.1[127.0.0.1]:10034: "
	    "Connection "
	    "refused\"}]}\r";
	assert_int_equal(parse(l, &m), POSTQUEUE_OK);
	assert_string_equal(m.queue_name, "deferred");
	assert_int_equal(m.nrcpt, 2);
	assert_int_equal(m.ndelayed, 2);
	assert_non_null(strstr(m.first_reason, "bl.spamcop.net"));
}

static void test_null_sender_and_new_members(void **state)
{
	struct postqueue_msg m;
	/* 3.11: orig_address, bounce_reason; a member nobody knows yet */
	const char *l = "{\"queue_name\":\"active\",\"queue_id\":\"4Xk9Lm2sQzz1\",\"sender\":\"\","
	                "\"future_member\":{\"a\":[1,2,3]},\"recipients\":[{\"address\":\"x@y.z\","
	                "\"orig_address\":\"X@Y.Z\",\"bounce_reason\":\"550 no\"}]}";
	assert_int_equal(parse(l, &m), POSTQUEUE_OK);
	assert_string_equal(m.queue_id, "4Xk9Lm2sQzz1"); /* long queue ids */
	assert_true(m.has_sender);
	assert_string_equal(m.sender, "");
	assert_int_equal(m.nbounced, 1);
	assert_int_equal(m.arrival_time, -1);
	assert_int_equal(m.message_size, -1);
	assert_int_equal(m.odd, 0);
}

static void test_odd_types_tolerated(void **state)
{
	struct postqueue_msg m;
	const char *l = "{\"queue_name\":\"hold\",\"queue_id\":\"ABC\",\"arrival_time\":\"soon\","
	                "\"message_size\":-5,\"forced_expire\":1,\"sender\":7,"
	                "\"recipients\":[\"bare\",{\"noaddress\":1},{\"address\":\"ok@t\"}]}";
	assert_int_equal(parse(l, &m), POSTQUEUE_OK);
	assert_int_equal(m.arrival_time, -1);
	assert_int_equal(m.message_size, -1);
	assert_false(m.has_sender);
	assert_int_equal(m.nrcpt, 1);
	assert_int_equal(m.odd, 6);
	assert_int_equal(
	    parse("{\"queue_name\":\"hold\",\"queue_id\":\"ABC\",\"recipients\":{}}", &m),
	    POSTQUEUE_OK);
	assert_int_equal(m.odd, 1);
}

static void test_garbage(void **state)
{
	struct postqueue_msg m;
	static const char *const bad[] = {
	    "",
	    "   ",
	    "postqueue: fatal: Queue report unavailable - mail system is down",
	    "Mail queue is empty",
	    "[1,2,3]",
	    "\"hold\"",
	    "{\"queue_name\": \"hold\", \"queue_id\": \"D40BDA74263\"",
	    "{}",
	    "{\"queue_id\":\"ABC\"}",
	    "{\"queue_name\":\"hold\"}",
	    "{\"queue_name\":\"hold\",\"queue_id\":\"\"}",
	    "{\"queue_name\":\"hold\",\"queue_id\":\"AB C\"}",
	    "{\"queue_name\":\"hold\",\"queue_id\":\"../../etc\"}",
	    "{\"queue_name\":\"hold\",\"queue_id\":\"-d\"}",
	    "{\"queue_name\":\"hold\",\"queue_id\":12345}",
	    "{\"queue_name\":\"HOLD!\",\"queue_id\":\"ABC\"}",
	    "{\"queue_name\":\"hold\",\"queue_id\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"}",
	    "{\"queue_name\":\"averyveryverylongqueuename\",\"queue_id\":\"ABC\"}",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char err[160] = "";
		assert_int_equal(postqueue_parse(bad[i], strlen(bad[i]), &m, err, sizeof(err)),
		                 POSTQUEUE_BAD);
		assert_true(err[0] != '\0');
	}
}

static void test_embedded_nul_and_long_strings(void **state)
{
	struct postqueue_msg m;
	/* a NUL byte inside the line: not JSON */
	const char l1[] = "{\"queue_name\":\"hold\",\0\"queue_id\":\"ABC\"}";
	char err[160];
	assert_int_equal(postqueue_parse(l1, sizeof(l1) - 1, &m, err, sizeof(err)), POSTQUEUE_BAD);
	/* \u0000 inside a string is allowed and ends the copy */
	assert_int_equal(
	    parse("{\"queue_name\":\"hold\",\"queue_id\":\"ABC\",\"sender\":\"a\\u0000b\"}", &m),
	    POSTQUEUE_OK);
	assert_string_equal(m.sender, "a");
	/* a 5000-byte sender is cut, flagged, and stays valid UTF-8 */
	size_t n = 5000;
	char *big = malloc(n + 100);
	assert_non_null(big);
	int k =
	    snprintf(big, n + 100, "{\"queue_name\":\"hold\",\"queue_id\":\"ABC\",\"sender\":\"");
	for (size_t i = 0; i < n / 2; i++)
		memcpy(big + k + 2 * i, "\xc3\xa9", 2); /* é */
	strcpy(big + k + n, "\"}");
	assert_int_equal(parse(big, &m), POSTQUEUE_OK);
	assert_true(m.cut);
	assert_true(strlen(m.sender) < POSTQUEUE_ADDR_MAX);
	assert_int_equal(strlen(m.sender) % 2, 0);
	free(big);
}

static void test_valid_id(void **state)
{
	assert_true(postqueue_valid_id("D40BDA74263"));
	assert_true(postqueue_valid_id("4Xk9Lm2sQzz1"));
	assert_false(postqueue_valid_id(""));
	assert_false(postqueue_valid_id("ALL"
	                                " "));
	assert_false(postqueue_valid_id("-"));
	assert_false(postqueue_valid_id("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")); /* 32 */
	assert_true(postqueue_valid_id("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"));   /* 31 */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_observed_hold),
	    cmocka_unit_test(test_observed_deferred),
	    cmocka_unit_test(test_null_sender_and_new_members),
	    cmocka_unit_test(test_odd_types_tolerated),
	    cmocka_unit_test(test_garbage),
	    cmocka_unit_test(test_embedded_nul_and_long_strings),
	    cmocka_unit_test(test_valid_id),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
