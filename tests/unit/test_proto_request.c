/*
 * tests/unit/test_proto_request.c - unit tests of proto/request.c.
 *
 * Covers: the real 29-attribute request of docs/postfix-policy.md §1.1
 * parsed whole, split at every byte offset (LF and CRLF) and dripped one
 * byte at a time; several requests in one buffer; CRLF and lone CR;
 * duplicate, unknown and empty attributes; every PROTO_BAD error with its
 * line and the resync after it; PROTO_FATAL; numbers; protocol states; the
 * limits and the name tables.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/request.h"

/* docs/postfix-policy.md §1.1, observed from Postfix 3.7.11: 29 attributes. */
static const char test_req29[] = "request=smtpd_access_policy\n"
                                 "protocol_state=RCPT\n"
                                 "protocol_name=ESMTP\n"
                                 "client_address=198.51.100.7\n"
                                 "client_name=mua.example.net\n"
                                 "client_port=52808\n"
                                 "reverse_client_name=mua.example.net\n"
                                 "server_address=127.0.0.1\n"
                                 "server_port=10025\n"
                                 "helo_name=client.lab.test\n"
                                 "sender=alice@example.org\n"
                                 "recipient=carol@ok.test\n"
                                 "recipient_count=0\n"
                                 "queue_id=3DAEEA74137\n"
                                 "instance=1457.6b038c32.3d73e.0\n"
                                 "size=0\n"
                                 "etrn_domain=\n"
                                 "stress=\n"
                                 "sasl_method=XCLIENT\n"
                                 "sasl_username=alice\n"
                                 "sasl_sender=\n"
                                 "ccert_subject=\n"
                                 "ccert_issuer=\n"
                                 "ccert_fingerprint=\n"
                                 "ccert_pubkey_fingerprint=\n"
                                 "encryption_protocol=\n"
                                 "encryption_cipher=\n"
                                 "encryption_keysize=0\n"
                                 "policy_context=\n"
                                 "\n";

#define TEST_EXTRA_CAP 8

struct test_ctx {
	struct proto_parser p;
	struct proto_request req;
	struct proto_kv extra[TEST_EXTRA_CAP];
	struct proto_diag diag;
	size_t used;
	char *buf; /* heap copy so ASan sees overruns */
	size_t len;
};

static void test_ctx_init(struct test_ctx *c, const struct proto_limits *lim)
{
	memset(c, 0, sizeof(*c));
	proto_parser_init(&c->p, lim);
	c->req.extra = c->extra;
	c->req.extra_cap = TEST_EXTRA_CAP;
}

static void test_ctx_load(struct test_ctx *c, const char *data, size_t len)
{
	free(c->buf);
	c->buf = malloc(len ? len : 1);
	assert_non_null(c->buf);
	memcpy(c->buf, data, len);
	c->len = len;
}

static void test_ctx_free(struct test_ctx *c)
{
	free(c->buf);
	c->buf = NULL;
}

static enum proto_status test_parse_at(struct test_ctx *c, size_t off, size_t len)
{
	return proto_parse(&c->p, c->buf + off, len, &c->req, &c->used, &c->diag);
}

/* Value of a known attribute, checked to be NUL-terminated at its length. */
static const char *test_val(const struct proto_request *r, enum proto_attr a)
{
	if (r->attr[a].p)
		assert_int_equal(strlen(r->attr[a].p), r->attr[a].len);
	return proto_get(r, a);
}

/* Transform LF line ends to CRLF. */
static char *test_crlf(const char *lf, size_t *outlen)
{
	size_t n = strlen(lf), k = 0;
	char *s = malloc(2 * n + 1);

	assert_non_null(s);
	for (size_t i = 0; i < n; i++) {
		if (lf[i] == '\n')
			s[k++] = '\r';
		s[k++] = lf[i];
	}
	s[k] = '\0';
	*outlen = k;
	return s;
}

static void test_check_req29(const struct proto_request *r, const char *buf, size_t len)
{
	assert_int_equal(r->nattrs, 29);
	assert_int_equal(r->nextra, 0);
	assert_int_equal(r->state, PROTO_STATE_RCPT);
	assert_int_equal(r->size, 0);
	assert_int_equal(r->recipient_count, 0);
	assert_string_equal(test_val(r, PROTO_A_REQUEST), "smtpd_access_policy");
	assert_string_equal(test_val(r, PROTO_A_PROTOCOL_STATE), "RCPT");
	assert_string_equal(test_val(r, PROTO_A_PROTOCOL_NAME), "ESMTP");
	assert_string_equal(test_val(r, PROTO_A_CLIENT_ADDRESS), "198.51.100.7");
	assert_string_equal(test_val(r, PROTO_A_CLIENT_NAME), "mua.example.net");
	assert_string_equal(test_val(r, PROTO_A_CLIENT_PORT), "52808");
	assert_string_equal(test_val(r, PROTO_A_REVERSE_CLIENT_NAME), "mua.example.net");
	assert_string_equal(test_val(r, PROTO_A_SERVER_ADDRESS), "127.0.0.1");
	assert_string_equal(test_val(r, PROTO_A_SERVER_PORT), "10025");
	assert_string_equal(test_val(r, PROTO_A_HELO_NAME), "client.lab.test");
	assert_string_equal(test_val(r, PROTO_A_SENDER), "alice@example.org");
	assert_string_equal(test_val(r, PROTO_A_RECIPIENT), "carol@ok.test");
	assert_string_equal(test_val(r, PROTO_A_QUEUE_ID), "3DAEEA74137");
	assert_string_equal(test_val(r, PROTO_A_INSTANCE), "1457.6b038c32.3d73e.0");
	assert_string_equal(test_val(r, PROTO_A_SASL_METHOD), "XCLIENT");
	assert_string_equal(test_val(r, PROTO_A_SASL_USERNAME), "alice");
	assert_string_equal(test_val(r, PROTO_A_ENCRYPTION_KEYSIZE), "0");
	/* present but empty: p set, len 0 */
	static const enum proto_attr empty[] = {
	    PROTO_A_ETRN_DOMAIN,
	    PROTO_A_STRESS,
	    PROTO_A_SASL_SENDER,
	    PROTO_A_CCERT_SUBJECT,
	    PROTO_A_CCERT_ISSUER,
	    PROTO_A_CCERT_FINGERPRINT,
	    PROTO_A_CCERT_PUBKEY_FINGERPRINT,
	    PROTO_A_ENCRYPTION_PROTOCOL,
	    PROTO_A_ENCRYPTION_CIPHER,
	    PROTO_A_POLICY_CONTEXT,
	};
	for (size_t i = 0; i < sizeof(empty) / sizeof(empty[0]); i++) {
		assert_non_null(r->attr[empty[i]].p);
		assert_int_equal(r->attr[empty[i]].len, 0);
		assert_string_equal(test_val(r, empty[i]), "");
	}
	/* absent in 3.7 */
	assert_null(r->attr[PROTO_A_COMPATIBILITY_LEVEL].p);
	assert_null(r->attr[PROTO_A_MAIL_VERSION].p);
	assert_null(r->attr[PROTO_A_TLS_SNI].p);
	assert_string_equal(proto_get(r, PROTO_A_TLS_SNI), "");
	/* every string points into the buffer */
	for (size_t a = 0; a < PROTO_A__COUNT; a++) {
		if (!r->attr[a].p)
			continue;
		assert_true(r->attr[a].p >= buf && r->attr[a].p + r->attr[a].len < buf + len);
	}
}

static void test_limits_default(void **state)
{
	struct proto_limits lim;
	struct proto_parser p;

	(void)state;
	proto_limits_default(&lim);
	assert_int_equal(lim.max_request, 65536);
	assert_int_equal(lim.max_line, 8192);
	assert_int_equal(lim.max_attrs, 64);
	lim.max_attrs = 5000;
	proto_parser_init(&p, &lim);
	assert_int_equal(p.lim.max_attrs, PROTO_MAX_ATTRS_LIMIT);
	assert_int_equal(p.scanned, 0);
	proto_parser_init(&p, NULL);
	assert_int_equal(p.lim.max_request, PROTO_DEFAULT_MAX_REQUEST);
}

static void test_whole_request(void **state)
{
	struct test_ctx c;

	(void)state;
	test_ctx_init(&c, NULL);
	test_ctx_load(&c, test_req29, sizeof(test_req29) - 1);
	assert_int_equal(test_parse_at(&c, 0, c.len), PROTO_OK);
	assert_int_equal(c.used, c.len);
	assert_int_equal(c.diag.code, PROTO_E_NONE);
	test_check_req29(&c.req, c.buf, c.len);
	test_ctx_free(&c);
}

static void test_zero_len(void **state)
{
	struct test_ctx c;

	(void)state;
	test_ctx_init(&c, NULL);
	test_ctx_load(&c, "", 0);
	assert_int_equal(test_parse_at(&c, 0, 0), PROTO_MORE);
	assert_int_equal(c.used, 0);
	test_ctx_free(&c);
}

/* Feed data[0..k) then the whole of it, for every k; then drip byte by byte. */
static void test_split_all(const char *data, size_t len)
{
	struct test_ctx c;

	for (size_t k = 0; k < len; k++) {
		test_ctx_init(&c, NULL);
		test_ctx_load(&c, data, len);
		assert_int_equal(test_parse_at(&c, 0, k), PROTO_MORE);
		assert_int_equal(c.p.scanned, k);
		assert_int_equal(test_parse_at(&c, 0, len), PROTO_OK);
		assert_int_equal(c.used, len);
		assert_int_equal(c.p.scanned, 0);
		test_check_req29(&c.req, c.buf, len);
		test_ctx_free(&c);
	}

	test_ctx_init(&c, NULL);
	test_ctx_load(&c, data, len);
	for (size_t k = 1; k < len; k++) {
		assert_int_equal(test_parse_at(&c, 0, k), PROTO_MORE);
		assert_int_equal(c.p.scanned, k); /* nothing is searched twice */
	}
	assert_int_equal(test_parse_at(&c, 0, len), PROTO_OK);
	assert_int_equal(c.used, len);
	test_check_req29(&c.req, c.buf, len);
	test_ctx_free(&c);
}

static void test_split_every_offset(void **state)
{
	(void)state;
	test_split_all(test_req29, sizeof(test_req29) - 1);
}

static void test_split_every_offset_crlf(void **state)
{
	size_t n;
	char *s = test_crlf(test_req29, &n);

	(void)state;
	test_split_all(s, n);
	free(s);
}

static void test_two_requests(void **state)
{
	struct test_ctx c;
	char data[2048];
	size_t l1 = sizeof(test_req29) - 1;
	const char *second = "request=smtpd_access_policy\nprotocol_state=END-OF-MESSAGE\n"
	                     "size=1234\nrecipient_count=3\nsender=bob@example.org\n\n";
	size_t l2 = strlen(second);

	(void)state;
	memcpy(data, test_req29, l1);
	memcpy(data + l1, second, l2);
	test_ctx_init(&c, NULL);
	test_ctx_load(&c, data, l1 + l2);
	assert_int_equal(test_parse_at(&c, 0, c.len), PROTO_OK);
	assert_int_equal(c.used, l1);
	test_check_req29(&c.req, c.buf, l1);
	assert_int_equal(test_parse_at(&c, l1, c.len - l1), PROTO_OK);
	assert_int_equal(c.used, l2);
	assert_int_equal(c.req.nattrs, 5);
	assert_int_equal(c.req.state, PROTO_STATE_EOM);
	assert_int_equal(c.req.size, 1234);
	assert_int_equal(c.req.recipient_count, 3);
	assert_string_equal(test_val(&c.req, PROTO_A_SENDER), "bob@example.org");
	assert_null(c.req.attr[PROTO_A_CLIENT_ADDRESS].p); /* reset between requests */
	assert_int_equal(test_parse_at(&c, l1 + l2, 0), PROTO_MORE);
	test_ctx_free(&c);
}

static void test_crlf_and_lone_cr(void **state)
{
	struct test_ctx c;
	/* mixed ends; a lone CR stays in the value; "\r\r\n" keeps one CR */
	static const char data[] = "request=smtpd_access_policy\r\n"
	                           "helo_name=a\rb\n"
	                           "sender=x@y\r\r\n"
	                           "recipient=\rz\r\n"
	                           "\r\n"
	                           "request=smtpd_access_policy\n"
	                           "\r\n";

	(void)state;
	test_ctx_init(&c, NULL);
	test_ctx_load(&c, data, sizeof(data) - 1);
	assert_int_equal(test_parse_at(&c, 0, c.len), PROTO_OK);
	assert_string_equal(test_val(&c.req, PROTO_A_REQUEST), "smtpd_access_policy");
	assert_string_equal(test_val(&c.req, PROTO_A_HELO_NAME), "a\rb");
	assert_string_equal(test_val(&c.req, PROTO_A_SENDER), "x@y\r");
	assert_string_equal(test_val(&c.req, PROTO_A_RECIPIENT), "\rz");
	assert_int_equal(c.req.nattrs, 4);
	size_t off = c.used;
	assert_int_equal(test_parse_at(&c, off, c.len - off), PROTO_OK);
	assert_int_equal(off + c.used, c.len);
	assert_int_equal(c.req.nattrs, 1);
	test_ctx_free(&c);
}

static void test_duplicates(void **state)
{
	struct test_ctx c;
	static const char data[] = "request=smtpd_access_policy\n"
	                           "sender=first@x\n"
	                           "size=10\n"
	                           "sender=second@x\n"
	                           "size=garbage\n"
	                           "\n";

	(void)state;
	test_ctx_init(&c, NULL);
	test_ctx_load(&c, data, sizeof(data) - 1);
	assert_int_equal(test_parse_at(&c, 0, c.len), PROTO_OK);
	assert_string_equal(test_val(&c.req, PROTO_A_SENDER), "first@x");
	assert_int_equal(c.req.size, 10); /* the ignored duplicate is not judged */
	assert_int_equal(c.req.nattrs, 5);
	assert_int_equal(c.req.nextra, 0);
	test_ctx_free(&c);
}

static void test_unknown_attrs(void **state)
{
	struct test_ctx c;
	static const char data[] = "request=smtpd_access_policy\n"
	                           "foo=bar\n"
	                           "x=1=2 3\n"
	                           "Sender=case matters\n"
	                           "client_addres=short\n"
	                           "\n";

	(void)state;
	test_ctx_init(&c, NULL);
	test_ctx_load(&c, data, sizeof(data) - 1);
	assert_int_equal(test_parse_at(&c, 0, c.len), PROTO_OK);
	assert_int_equal(c.req.nattrs, 5);
	assert_int_equal(c.req.nextra, 4);
	assert_string_equal(c.extra[0].name.p, "foo");
	assert_int_equal(c.extra[0].name.len, 3);
	assert_string_equal(c.extra[0].value.p, "bar");
	assert_string_equal(c.extra[1].name.p, "x");
	assert_string_equal(c.extra[1].value.p, "1=2 3");
	assert_int_equal(c.extra[1].value.len, 5);
	assert_string_equal(c.extra[2].name.p, "Sender");
	assert_string_equal(c.extra[3].name.p, "client_addres");
	assert_null(c.req.attr[PROTO_A_SENDER].p);
	test_ctx_free(&c);
}

static void test_unknown_over_cap(void **state)
{
	struct test_ctx c;
	char data[1024];
	size_t n = 0;

	(void)state;
	n += (size_t)snprintf(data + n, sizeof(data) - n, "request=smtpd_access_policy\n");
	for (int i = 0; i < TEST_EXTRA_CAP + 5; i++)
		n += (size_t)snprintf(data + n, sizeof(data) - n, "x%d=%d\n", i, i);
	n += (size_t)snprintf(data + n, sizeof(data) - n, "sender=s@x\n\n");
	test_ctx_init(&c, NULL);
	test_ctx_load(&c, data, n);
	assert_int_equal(test_parse_at(&c, 0, c.len), PROTO_OK);
	assert_int_equal(c.req.nattrs, 1 + TEST_EXTRA_CAP + 5 + 1);
	assert_int_equal(c.req.nextra, TEST_EXTRA_CAP);
	assert_string_equal(c.extra[TEST_EXTRA_CAP - 1].name.p, "x7");
	assert_string_equal(test_val(&c.req, PROTO_A_SENDER), "s@x");
	test_ctx_free(&c);
}

static void test_extra_cap_zero(void **state)
{
	struct test_ctx c;
	static const char data[] = "request=smtpd_access_policy\nfoo=bar\nbaz=\n\n";

	(void)state;
	test_ctx_init(&c, NULL);
	c.req.extra = NULL;
	c.req.extra_cap = 0;
	test_ctx_load(&c, data, sizeof(data) - 1);
	assert_int_equal(test_parse_at(&c, 0, c.len), PROTO_OK);
	assert_int_equal(c.req.nattrs, 3);
	assert_int_equal(c.req.nextra, 0);
	test_ctx_free(&c);
}

static void test_empty_values(void **state)
{
	struct test_ctx c;
	static const char data[] = "request=smtpd_access_policy\n"
	                           "sasl_username=\n"
	                           "size=\n"
	                           "recipient_count=\n"
	                           "protocol_state=\n"
	                           "ccert_subject=CN=foo bar, O=x \n"
	                           "\n";

	(void)state;
	test_ctx_init(&c, NULL);
	test_ctx_load(&c, data, sizeof(data) - 1);
	assert_int_equal(test_parse_at(&c, 0, c.len), PROTO_OK);
	assert_non_null(c.req.attr[PROTO_A_SASL_USERNAME].p);
	assert_string_equal(test_val(&c.req, PROTO_A_SASL_USERNAME), "");
	assert_int_equal(c.req.size, 0);
	assert_int_equal(c.req.recipient_count, 0);
	assert_int_equal(c.req.state, PROTO_STATE_OTHER); /* present but empty */
	assert_string_equal(test_val(&c.req, PROTO_A_CCERT_SUBJECT), "CN=foo bar, O=x ");
	test_ctx_free(&c);
}

static const char test_good[] = "request=smtpd_access_policy\nsender=ok@x\n\n";

/*
 * bad (a complete request) followed by test_good in one buffer: expect BAD
 * with (err, line) and used == strlen(bad), then the good one parses.
 */
static void test_bad_then_good(const struct proto_limits *lim, const char *bad, size_t badlen,
                               enum proto_error err, size_t line)
{
	struct test_ctx c;
	char *data = malloc(badlen + sizeof(test_good));

	assert_non_null(data);
	memcpy(data, bad, badlen);
	memcpy(data + badlen, test_good, sizeof(test_good) - 1);
	test_ctx_init(&c, lim);
	test_ctx_load(&c, data, badlen + sizeof(test_good) - 1);
	free(data);
	assert_int_equal(test_parse_at(&c, 0, c.len), PROTO_BAD);
	assert_int_equal(c.used, badlen);
	assert_int_equal(c.diag.code, err);
	assert_int_equal(c.diag.line, line);
	assert_int_equal(c.p.scanned, 0);
	assert_int_equal(test_parse_at(&c, badlen, c.len - badlen), PROTO_OK);
	assert_int_equal(c.used, sizeof(test_good) - 1);
	assert_string_equal(test_val(&c.req, PROTO_A_SENDER), "ok@x");
	test_ctx_free(&c);
}

#define TEST_BAD(lim, s, err, line) test_bad_then_good((lim), (s), sizeof(s) - 1, (err), (line))

static void test_bad_nul(void **state)
{
	(void)state;
	TEST_BAD(NULL, "request=smtpd_access_policy\nsender=a\nhelo_name=x\0y\nsize=1\n\n",
	         PROTO_E_NUL, 3);
	TEST_BAD(NULL, "request=smtpd_access_policy\n\0=a\n\n", PROTO_E_NUL, 2);
	/* a NUL in the name of the first line */
	TEST_BAD(NULL, "req\0uest=smtpd_access_policy\n\n", PROTO_E_NUL, 1);
}

static void test_bad_line_too_long(void **state)
{
	/* "request=smtpd_access_policy" itself is 27 bytes */
	struct proto_limits lim = {.max_request = 1024, .max_line = 27, .max_attrs = 8};
	struct test_ctx c;
	static const char ok27crlf[] =
	    "request=smtpd_access_policy\r\nhelo_name=0123456789abcdefg\r\n\n";

	(void)state;
	TEST_BAD(&lim, "request=smtpd_access_policy\nsender=a\nhelo_name=0123456789abcdefgh\n\n",
	         PROTO_E_LINE_TOO_LONG, 3);
	TEST_BAD(&lim, "request=smtpd_access_policyX\n\n", PROTO_E_LINE_TOO_LONG, 1);
	/* a lone CR counts */
	TEST_BAD(&lim, "request=smtpd_access_policy\nhelo_name=0123456789abcdefg\r\r\n\n",
	         PROTO_E_LINE_TOO_LONG, 2);

	/* exactly max_line is fine, and the CR of CRLF does not count */
	test_ctx_init(&c, &lim);
	test_ctx_load(&c, ok27crlf, sizeof(ok27crlf) - 1);
	assert_int_equal(test_parse_at(&c, 0, c.len), PROTO_OK);
	assert_string_equal(test_val(&c.req, PROTO_A_HELO_NAME), "0123456789abcdefg");
	test_ctx_free(&c);
}

static void test_bad_too_many(void **state)
{
	struct proto_limits lim = {.max_request = 1024, .max_line = 100, .max_attrs = 3};
	struct test_ctx c;
	static const char three[] = "request=smtpd_access_policy\na=1\nb=2\n\n";

	(void)state;
	TEST_BAD(&lim, "request=smtpd_access_policy\na=1\nb=2\nc=3\nd=4\n\n", PROTO_E_TOO_MANY, 4);
	/* a malformed line after the limit: the limit is hit first */
	TEST_BAD(&lim, "request=smtpd_access_policy\na=1\nb=2\nnoequals\n\n", PROTO_E_TOO_MANY, 4);
	test_ctx_init(&c, &lim);
	test_ctx_load(&c, three, sizeof(three) - 1);
	assert_int_equal(test_parse_at(&c, 0, c.len), PROTO_OK);
	assert_int_equal(c.req.nattrs, 3);
	test_ctx_free(&c);
}

static void test_bad_no_equals(void **state)
{
	(void)state;
	TEST_BAD(NULL, "request=smtpd_access_policy\ngarbage\nsender=a\n\n", PROTO_E_NO_EQUALS, 2);
	TEST_BAD(NULL, "request=smtpd_access_policy\n \n\n", PROTO_E_NO_EQUALS, 2);
	/* a lone CR line is not an empty line */
	TEST_BAD(NULL, "request=smtpd_access_policy\n\r\r\n\n", PROTO_E_NO_EQUALS, 2);
	/* no '=' before the CR that ends the line: the '=' search stops there */
	TEST_BAD(NULL, "request=smtpd_access_policy\nabc\r\n\n", PROTO_E_NO_EQUALS, 2);
}

static void test_bad_empty_name(void **state)
{
	(void)state;
	TEST_BAD(NULL, "request=smtpd_access_policy\nsender=a\n=value\n\n", PROTO_E_EMPTY_NAME, 3);
	TEST_BAD(NULL, "=\n\n", PROTO_E_EMPTY_NAME, 1);
}

static void test_bad_request(void **state)
{
	(void)state;
	TEST_BAD(NULL, "sender=a\nrecipient=b\n\n", PROTO_E_BAD_REQUEST, 0);
	TEST_BAD(NULL, "sender=a\nrequest=junk\n\n", PROTO_E_BAD_REQUEST, 2);
	TEST_BAD(NULL, "request=smtpd_access_policyX\n\n", PROTO_E_BAD_REQUEST, 1);
	TEST_BAD(NULL, "request=\n\n", PROTO_E_BAD_REQUEST, 1);
	/* the first of two request= lines counts */
	TEST_BAD(NULL, "request=x\nrequest=smtpd_access_policy\n\n", PROTO_E_BAD_REQUEST, 1);
	/* an empty request: one bare LF, or CRLF */
	TEST_BAD(NULL, "\n", PROTO_E_BAD_REQUEST, 0);
	TEST_BAD(NULL, "\r\n", PROTO_E_BAD_REQUEST, 0);
}

static void test_bad_keeps_attrs(void **state)
{
	struct test_ctx c;
	static const char data[] =
	    "request=nope\nclient_address=192.0.2.1\nprotocol_state=RCPT\n\n";

	(void)state;
	test_ctx_init(&c, NULL);
	test_ctx_load(&c, data, sizeof(data) - 1);
	assert_int_equal(test_parse_at(&c, 0, c.len), PROTO_BAD);
	assert_int_equal(c.diag.code, PROTO_E_BAD_REQUEST);
	assert_string_equal(test_val(&c.req, PROTO_A_CLIENT_ADDRESS), "192.0.2.1");
	assert_int_equal(c.req.state, PROTO_STATE_RCPT);
	/* diag may be NULL */
	test_ctx_load(&c, data, sizeof(data) - 1);
	assert_int_equal(proto_parse(&c.p, c.buf, c.len, &c.req, &c.used, NULL), PROTO_BAD);
	assert_int_equal(c.used, c.len);
	test_ctx_free(&c);
}

static void test_numbers(void **state)
{
	struct test_ctx c;
	static const struct {
		const char *text;
		enum proto_status st;
		uint64_t size;
		uint32_t rcnt;
	} cases[] = {
	    {"size=0\nrecipient_count=0\n", PROTO_OK, 0, 0},
	    {"size=250\nrecipient_count=2\n", PROTO_OK, 250, 2},
	    {"size=000123\n", PROTO_OK, 123, 0},
	    {"size=18446744073709551615\n", PROTO_OK, UINT64_MAX, 0},
	    {"recipient_count=4294967295\n", PROTO_OK, 0, UINT32_MAX},
	    {"size=18446744073709551616\n", PROTO_BAD, 0, 0},
	    {"size=99999999999999999999\n", PROTO_BAD, 0, 0},
	    {"recipient_count=4294967296\n", PROTO_BAD, 0, 0},
	    {"size=abc\n", PROTO_BAD, 0, 0},
	    {"size=12x\n", PROTO_BAD, 0, 0},
	    {"size=-1\n", PROTO_BAD, 0, 0},
	    {"size=+1\n", PROTO_BAD, 0, 0},
	    {"size= 1\n", PROTO_BAD, 0, 0},
	    {"size=1 \n", PROTO_BAD, 0, 0},
	    {"recipient_count=0x10\n", PROTO_BAD, 0, 0},
	    {"size=\nrecipient_count=\n", PROTO_OK, 0, 0},
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char data[256];
		int n = snprintf(data, sizeof(data), "request=smtpd_access_policy\n%s\n",
		                 cases[i].text);
		test_ctx_init(&c, NULL);
		test_ctx_load(&c, data, (size_t)n);
		assert_int_equal(test_parse_at(&c, 0, c.len), cases[i].st);
		if (cases[i].st == PROTO_OK) {
			assert_int_equal(c.req.size, cases[i].size);
			assert_int_equal(c.req.recipient_count, cases[i].rcnt);
		} else {
			assert_int_equal(c.diag.code, PROTO_E_BAD_NUMBER);
			assert_int_equal(c.diag.line, 2);
		}
		test_ctx_free(&c);
	}
	TEST_BAD(NULL, "request=smtpd_access_policy\nsize=1\nsender=a\nrecipient_count=z\n\n",
	         PROTO_E_BAD_NUMBER, 4);
}

static void test_states(void **state)
{
	static const struct {
		const char *v;
		enum proto_state s;
	} cases[] = {
	    {"CONNECT", PROTO_STATE_CONNECT},
	    {"EHLO", PROTO_STATE_EHLO},
	    {"HELO", PROTO_STATE_HELO},
	    {"MAIL", PROTO_STATE_MAIL},
	    {"RCPT", PROTO_STATE_RCPT},
	    {"DATA", PROTO_STATE_DATA},
	    {"END-OF-MESSAGE", PROTO_STATE_EOM},
	    {"VRFY", PROTO_STATE_VRFY},
	    {"ETRN", PROTO_STATE_ETRN},
	    {"XCLIENT", PROTO_STATE_XCLIENT},
	    {"rcpt", PROTO_STATE_OTHER},
	    {"BDAT", PROTO_STATE_OTHER},
	    {"RCPT ", PROTO_STATE_OTHER},
	    {"END-OF-MESSAGES", PROTO_STATE_OTHER},
	    {"", PROTO_STATE_OTHER},
	};
	struct test_ctx c;

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char data[256];
		int n = snprintf(data, sizeof(data),
		                 "request=smtpd_access_policy\nprotocol_state=%s\n\n", cases[i].v);
		test_ctx_init(&c, NULL);
		test_ctx_load(&c, data, (size_t)n);
		assert_int_equal(test_parse_at(&c, 0, c.len), PROTO_OK);
		assert_int_equal(c.req.state, cases[i].s);
		if (cases[i].s != PROTO_STATE_OTHER)
			assert_string_equal(proto_state_name(c.req.state), cases[i].v);
		test_ctx_free(&c);
	}
	test_ctx_init(&c, NULL);
	test_ctx_load(&c, test_good, sizeof(test_good) - 1);
	assert_int_equal(test_parse_at(&c, 0, c.len), PROTO_OK);
	assert_int_equal(c.req.state, PROTO_STATE_NONE);
	test_ctx_free(&c);
	assert_string_equal(proto_state_name(PROTO_STATE_NONE), "(none)");
	assert_string_equal(proto_state_name(PROTO_STATE_OTHER), "(other)");
}

static void test_fatal(void **state)
{
	struct proto_limits lim = {.max_request = 64, .max_line = 100, .max_attrs = 64};
	struct test_ctx c;
	char data[200];

	(void)state;
	/* a request of exactly max_request bytes is fine */
	memset(data, 'a', sizeof(data));
	memcpy(data, "request=smtpd_access_policy\nx=", 30);
	data[62] = '\n';
	data[63] = '\n';
	test_ctx_init(&c, &lim);
	test_ctx_load(&c, data, 64);
	assert_int_equal(test_parse_at(&c, 0, 63), PROTO_MORE);
	assert_int_equal(test_parse_at(&c, 0, 64), PROTO_OK);
	assert_int_equal(c.used, 64);

	/* one byte more and it is fatal, however much is buffered */
	data[62] = 'a';
	data[63] = '\n';
	data[64] = '\n';
	test_ctx_load(&c, data, 65);
	assert_int_equal(test_parse_at(&c, 0, 63), PROTO_MORE);
	assert_int_equal(test_parse_at(&c, 0, 64), PROTO_FATAL);
	assert_int_equal(c.diag.code, PROTO_E_TOO_LARGE);
	assert_int_equal(c.used, 0);
	proto_parser_init(&c.p, &lim);
	assert_int_equal(test_parse_at(&c, 0, 65), PROTO_FATAL);

	/* a NUL does not make an incomplete request BAD: it is judged when complete */
	memset(data, 'a', sizeof(data));
	data[5] = '\0';
	test_ctx_load(&c, data, 100);
	proto_parser_init(&c.p, &lim);
	assert_int_equal(test_parse_at(&c, 0, 10), PROTO_MORE);
	assert_int_equal(test_parse_at(&c, 0, 100), PROTO_FATAL);
	assert_int_equal(c.diag.code, PROTO_E_TOO_LARGE);
	test_ctx_free(&c);
}

static void test_names(void **state)
{
	char data[4096];
	size_t n = 0;
	struct test_ctx c;

	(void)state;
	/* every known attribute lands in its own slot */
	n += (size_t)snprintf(data, sizeof(data), "request=smtpd_access_policy\n");
	for (int a = 1; a < PROTO_A__COUNT; a++) {
		const char *name = proto_attr_name((enum proto_attr)a);
		assert_int_equal(proto_attr_lookup(name, strlen(name)), a);
		if (a == PROTO_A_SIZE || a == PROTO_A_RECIPIENT_COUNT)
			n += (size_t)snprintf(data + n, sizeof(data) - n, "%s=%d\n", name, a);
		else
			n += (size_t)snprintf(data + n, sizeof(data) - n, "%s=v%d\n", name, a);
	}
	n += (size_t)snprintf(data + n, sizeof(data) - n, "\n");
	assert_int_equal(proto_attr_lookup("request", 7), PROTO_A_REQUEST);
	assert_int_equal(proto_attr_lookup("requesT", 7), PROTO_A__COUNT);
	assert_int_equal(proto_attr_lookup("sender", 5), PROTO_A__COUNT);
	assert_int_equal(proto_attr_lookup("", 0), PROTO_A__COUNT);
	assert_string_equal(proto_attr_name(PROTO_A_CLIENT_ADDRESS), "client_address");
	assert_string_equal(proto_attr_name(PROTO_A__COUNT), "");

	test_ctx_init(&c, NULL);
	test_ctx_load(&c, data, n);
	assert_int_equal(test_parse_at(&c, 0, c.len), PROTO_OK);
	assert_int_equal(c.req.nattrs, PROTO_A__COUNT);
	assert_int_equal(c.req.nextra, 0);
	for (int a = 1; a < PROTO_A__COUNT; a++) {
		char want[16];
		if (a == PROTO_A_SIZE || a == PROTO_A_RECIPIENT_COUNT)
			snprintf(want, sizeof(want), "%d", a);
		else
			snprintf(want, sizeof(want), "v%d", a);
		assert_string_equal(test_val(&c.req, (enum proto_attr)a), want);
	}
	assert_int_equal(c.req.size, PROTO_A_SIZE);
	assert_int_equal(c.req.recipient_count, PROTO_A_RECIPIENT_COUNT);
	test_ctx_free(&c);
}

static void test_error_str(void **state)
{
	(void)state;
	assert_string_equal(proto_error_str(PROTO_E_LINE_TOO_LONG), "line too long");
	for (int e = PROTO_E_NONE; e <= PROTO_E_BAD_NUMBER; e++) {
		const char *s = proto_error_str((enum proto_error)e);
		assert_non_null(s);
		assert_true(strlen(s) > 0);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_limits_default),
	    cmocka_unit_test(test_whole_request),
	    cmocka_unit_test(test_zero_len),
	    cmocka_unit_test(test_split_every_offset),
	    cmocka_unit_test(test_split_every_offset_crlf),
	    cmocka_unit_test(test_two_requests),
	    cmocka_unit_test(test_crlf_and_lone_cr),
	    cmocka_unit_test(test_duplicates),
	    cmocka_unit_test(test_unknown_attrs),
	    cmocka_unit_test(test_unknown_over_cap),
	    cmocka_unit_test(test_extra_cap_zero),
	    cmocka_unit_test(test_empty_values),
	    cmocka_unit_test(test_bad_nul),
	    cmocka_unit_test(test_bad_line_too_long),
	    cmocka_unit_test(test_bad_too_many),
	    cmocka_unit_test(test_bad_no_equals),
	    cmocka_unit_test(test_bad_empty_name),
	    cmocka_unit_test(test_bad_request),
	    cmocka_unit_test(test_bad_keeps_attrs),
	    cmocka_unit_test(test_numbers),
	    cmocka_unit_test(test_states),
	    cmocka_unit_test(test_fatal),
	    cmocka_unit_test(test_names),
	    cmocka_unit_test(test_error_str),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
