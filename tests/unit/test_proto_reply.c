/*
 * tests/unit/test_proto_reply.c - unit tests of proto/reply.c.
 *
 * Covers: the reply shape with and without text, NULL/empty/oversized
 * action, control characters and each kind of invalid UTF-8 replaced by
 * '?', the cut at PROTO_REPLY_MAX_TEXT on a character boundary, every small
 * outsz (nothing written past it, always NUL-terminated), proto_utf8_valid.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "proto/reply.h"

static void test_plain(void **state)
{
	char out[PROTO_REPLY_BUFSZ];

	(void)state;
	assert_int_equal(proto_reply_format(out, sizeof(out), "DUNNO", NULL), 14);
	assert_string_equal(out, "action=DUNNO\n\n");
	assert_int_equal(proto_reply_format(out, sizeof(out), "DUNNO", ""), 14);
	assert_string_equal(out, "action=DUNNO\n\n");
	assert_int_equal(
	    proto_reply_format(out, sizeof(out), "DEFER", "4.7.1 Rate limit exceeded for alice"),
	    strlen("action=DEFER 4.7.1 Rate limit exceeded for alice\n\n"));
	assert_string_equal(out, "action=DEFER 4.7.1 Rate limit exceeded for alice\n\n");
	/* the action is copied as is */
	proto_reply_format(out, sizeof(out), "450", "4.7.1 slow down");
	assert_string_equal(out, "action=450 4.7.1 slow down\n\n");
	proto_reply_format(out, sizeof(out), "HOLD", "héllo wörld €");
	assert_string_equal(out, "action=HOLD héllo wörld €\n\n");
}

static void test_bad_action(void **state)
{
	char out[PROTO_REPLY_BUFSZ];
	char big[PROTO_REPLY_MAX_TEXT + 2];

	(void)state;
	memset(out, 'x', sizeof(out));
	assert_int_equal(proto_reply_format(out, sizeof(out), NULL, "t"), 0);
	assert_string_equal(out, "");
	assert_int_equal(proto_reply_format(out, sizeof(out), "", "t"), 0);
	memset(big, 'A', sizeof(big));
	big[PROTO_REPLY_MAX_TEXT + 1] = '\0';
	assert_int_equal(proto_reply_format(out, sizeof(out), big, NULL), 0);
	/* exactly PROTO_REPLY_MAX_TEXT: the action fits, the text does not */
	big[PROTO_REPLY_MAX_TEXT] = '\0';
	assert_int_equal(proto_reply_format(out, sizeof(out), big, "text"),
	                 7 + PROTO_REPLY_MAX_TEXT + 2);
	assert_null(strchr(out, ' '));
	assert_int_equal(proto_reply_format(NULL, 10, "DUNNO", NULL), 0);
}

static void test_control_chars(void **state)
{
	char out[PROTO_REPLY_BUFSZ];

	(void)state;
	proto_reply_format(out, sizeof(out), "REJECT",
	                   "a\tb\nc\rd\x7f"
	                   "e\x01\x1f"
	                   "f");
	assert_string_equal(out, "action=REJECT a?b?c?d?e??f\n\n");
	/* an injected second attribute cannot escape the line */
	proto_reply_format(out, sizeof(out), "DUNNO", "x\n\naction=OK");
	assert_string_equal(out, "action=DUNNO x??action=OK\n\n");
}

static void test_invalid_utf8(void **state)
{
	static const struct {
		const char *in;
		const char *want;
	} cases[] = {
	    {"\xc0\x80", "??"},           /* overlong NUL */
	    {"\xc1\xbf", "??"},           /* overlong */
	    {"\xe0\x80\x80", "???"},      /* overlong 3-byte */
	    {"\xe0\x9f\xbf", "???"},      /* overlong 3-byte, top */
	    {"\xf0\x80\x80\x80", "????"}, /* overlong 4-byte */
	    {"\xf0\x8f\xbf\xbf", "????"}, /* overlong 4-byte, top */
	    {"\xed\xa0\x80", "???"},      /* surrogate D800 */
	    {"\xed\xbf\xbf", "???"},      /* surrogate DFFF */
	    {"\xf4\x90\x80\x80", "????"}, /* U+110000 */
	    {"\xf5\x80\x80\x80", "????"}, /* lead byte above F4 */
	    {"\xff\xfe", "??"},           /* never valid */
	    {"\x80", "?"},                /* lone continuation */
	    {"a\xbf"
	     "b",
	     "a?b"},            /* continuation in ASCII */
	    {"\xe2\x82", "??"}, /* truncated at the end */
	    {"\xe2\x82"
	     "A",
	     "??A"},                                  /* truncated before ASCII */
	    {"\xf0\x9f\x98", "???"},                  /* truncated 4-byte */
	    {"\xc3", "?"},                            /* truncated 2-byte */
	    {"\xc3\xa9", "\xc3\xa9"},                 /* é */
	    {"\xe2\x82\xac", "\xe2\x82\xac"},         /* € */
	    {"\xed\x9f\xbf", "\xed\x9f\xbf"},         /* U+D7FF */
	    {"\xee\x80\x80", "\xee\x80\x80"},         /* U+E000 */
	    {"\xef\xbf\xbf", "\xef\xbf\xbf"},         /* U+FFFF */
	    {"\xf0\x9f\x98\x80", "\xf0\x9f\x98\x80"}, /* emoji */
	    {"\xf4\x8f\xbf\xbf", "\xf4\x8f\xbf\xbf"}, /* U+10FFFF */
	    {"\xc2\x80", "\xc2\x80"},                 /* U+0080: valid, not < 0x20 */
	};
	char out[PROTO_REPLY_BUFSZ];
	char want[64];

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t n = proto_reply_format(out, sizeof(out), "WARN", cases[i].in);
		snprintf(want, sizeof(want), "action=WARN %s\n\n", cases[i].want);
		assert_string_equal(out, want);
		assert_int_equal(n, strlen(want));
		assert_true(proto_utf8_valid(out + 7, n - 9));
	}
}

/* The line after "action=": its length, checked for the shape. */
static size_t test_line_len(const char *out, size_t n)
{
	assert_true(n >= 9);
	assert_int_equal(strlen(out), n);
	assert_memory_equal(out, "action=", 7);
	assert_memory_equal(out + n - 2, "\n\n", 2);
	assert_null(memchr(out, '\n', n - 2));
	assert_true(proto_utf8_valid(out + 7, n - 9));
	return n - 9;
}

static void test_truncate(void **state)
{
	char out[PROTO_REPLY_BUFSZ];
	char text[1200];
	size_t n;

	(void)state;
	/* ASCII: the line is cut at exactly PROTO_REPLY_MAX_TEXT */
	memset(text, 'a', sizeof(text));
	text[sizeof(text) - 1] = '\0';
	n = proto_reply_format(out, sizeof(out), "DEFER", text);
	assert_int_equal(test_line_len(out, n), PROTO_REPLY_MAX_TEXT);

	/* "€" (3 bytes): 394 bytes of room for text, 131 whole characters */
	for (size_t i = 0; i + 3 < sizeof(text); i += 3)
		memcpy(text + i, "\xe2\x82\xac", 3);
	text[3 * 399] = '\0';
	n = proto_reply_format(out, sizeof(out), "DEFER", text);
	assert_int_equal(test_line_len(out, n), 6 + 131 * 3);

	/* every alignment of a 4-byte character against the cut */
	for (size_t lead = 0; lead < 4; lead++) {
		memset(text, 'b', lead);
		size_t k = lead;
		while (k + 4 < sizeof(text)) {
			memcpy(text + k, "\xf0\x9f\x98\x80", 4);
			k += 4;
		}
		text[k] = '\0';
		n = proto_reply_format(out, sizeof(out), "HOLD", text);
		size_t line = test_line_len(out, n);
		assert_true(line <= PROTO_REPLY_MAX_TEXT && line > PROTO_REPLY_MAX_TEXT - 4);
		assert_int_equal((line - 5 - lead) % 4, 0);
	}

	/* invalid bytes cost one '?' each, and the cut still holds */
	memset(text, '\xff', sizeof(text));
	text[sizeof(text) - 1] = '\0';
	n = proto_reply_format(out, sizeof(out), "REJECT", text);
	assert_int_equal(test_line_len(out, n), PROTO_REPLY_MAX_TEXT);
	assert_int_equal(out[n - 3], '?');
}

/* Every outsz from 0 up: nothing past outsz, NUL-terminated, whole chars. */
static void test_tiny_outsz(void **state)
{
	const char *text = "\xe2\x82\xac\xf0\x9f\x98\x80 rate \x01limit \xc3\xa9t\xc3\xa9";
	const size_t full = strlen("action=DEFER ") + strlen(text) + 2;
	char buf[128];

	(void)state;
	for (size_t sz = 0; sz < sizeof(buf) - 8; sz++) {
		memset(buf, 'Z', sizeof(buf));
		size_t n = proto_reply_format(buf, sz, "DEFER", text);
		for (size_t i = sz; i < sizeof(buf); i++)
			assert_int_equal(buf[i], 'Z');
		if (sz == 0) {
			assert_int_equal(n, 0);
			continue;
		}
		if (sz < strlen("action=DEFER\n\n") + 1) {
			assert_int_equal(n, 0);
			assert_int_equal(buf[0], '\0');
			continue;
		}
		assert_true(n < sz);
		test_line_len(buf, n);
		if (sz > full)
			assert_int_equal(n, full);
		else
			assert_true(n < full);
	}
	/* smallest buffer that holds the action: no text, no space */
	assert_int_equal(proto_reply_format(buf, 15, "DEFER", text), 14);
	assert_string_equal(buf, "action=DEFER\n\n");
	/* one more byte is not enough for " x": still no dangling space */
	assert_int_equal(proto_reply_format(buf, 16, "DEFER", text), 14);
	assert_string_equal(buf, "action=DEFER\n\n");
	/* the first character of the text is 3 bytes: needs 4 after the action */
	assert_int_equal(proto_reply_format(buf, 18, "DEFER", text), 14);
	assert_int_equal(proto_reply_format(buf, 19, "DEFER", text), 18);
	assert_string_equal(buf, "action=DEFER \xe2\x82\xac\n\n");
}

static void test_utf8_valid(void **state)
{
	(void)state;
	assert_true(proto_utf8_valid("", 0));
	assert_true(proto_utf8_valid(NULL, 0));
	assert_true(proto_utf8_valid("plain text 4.7.1", 16));
	assert_true(proto_utf8_valid("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 9));
	assert_false(proto_utf8_valid("a\0b", 3));
	assert_false(proto_utf8_valid("a\tb", 3));
	assert_false(proto_utf8_valid("\x7f", 1));
	assert_false(proto_utf8_valid("\xc3\xa9", 1)); /* cut by len */
	assert_false(proto_utf8_valid("\xe2\x82\xac", 2));
	assert_false(proto_utf8_valid("\xed\xa0\x80", 3));
	assert_false(proto_utf8_valid("\xc0\xaf", 2));
	assert_false(proto_utf8_valid("\xf4\x90\x80\x80", 4));
	assert_true(proto_utf8_valid("\xf4\x8f\xbf\xbf", 4));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_plain),         cmocka_unit_test(test_bad_action),
	    cmocka_unit_test(test_control_chars), cmocka_unit_test(test_invalid_utf8),
	    cmocka_unit_test(test_truncate),      cmocka_unit_test(test_tiny_outsz),
	    cmocka_unit_test(test_utf8_valid),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
