/*
 * tests/unit/test_key.c - unit tests of policyd/key.c.
 *
 * Covers: key type names; key_norm_address (domain always folded, local
 * part when fold_localpart, +ext stripped at the first of the configured
 * delimiters, "+list@x" kept, no '@', empty); key_norm_domain (case,
 * trailing dots); key_norm_ip (IPv4, canonical IPv6, IPv4-mapped folded,
 * "IPv6:" prefix, garbage); key_norm_net (prefixes, /32 and /128, mapped);
 * key_net_parse + key_addr_in (v4, v6, bracketed, hosts, mixed families,
 * bad prefixes); key_norm_login.  Every function is also run with every
 * small output size on an exactly sized heap buffer (ASan sees an overflow)
 * and checked for NUL termination and a return value equal to strlen.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "policyd/key.h"

static const struct key_opts opts_plus = {"+", true};
static const struct key_opts opts_plus_nofold = {"+", false};
static const struct key_opts opts_multi = {"+-", true};
static const struct key_opts opts_none = {"", true};

/* key_norm_address into a large buffer; returns the output for comparison. */
static const char *addr(const char *in, const struct key_opts *o)
{
	static char out[KEY_MAX];
	size_t n = key_norm_address(out, sizeof(out), in, o);
	assert_int_equal(n, strlen(out));
	return out;
}

static void test_type_names(void **state)
{
	enum key_type t;

	(void)state;
	for (int i = 0; i < KEY__COUNT; i++) {
		assert_int_equal(key_type_parse(key_type_name((enum key_type)i), &t), 0);
		assert_int_equal(t, i);
	}
	assert_int_equal(key_type_parse("sender", &t), 0);
	assert_int_equal(t, KEY_SENDER);
	assert_int_equal(key_type_parse("client_network", &t), 0);
	assert_int_equal(t, KEY_CLIENT_NETWORK);
	assert_int_equal(key_type_parse("Sender", &t), -1);
	assert_int_equal(key_type_parse("recipient", &t), -1);
	assert_int_equal(key_type_parse("", &t), -1);
	assert_string_equal(key_type_name(KEY__COUNT), "?");
}

static void test_address_fold(void **state)
{
	(void)state;
	assert_string_equal(addr("Alice@Example.ORG", &opts_plus), "alice@example.org");
	/* the domain is always folded, the local part only when told */
	assert_string_equal(addr("Alice@Example.ORG", &opts_plus_nofold), "Alice@example.org");
	assert_string_equal(addr("alice@example.org", &opts_plus), "alice@example.org");
	/* no options: fold, strip nothing */
	assert_string_equal(addr("Al+x@EX.org", NULL), "al+x@ex.org");
	/* the last '@' separates the domain */
	assert_string_equal(addr("\"A@B\"@Example.ORG", &opts_plus), "\"a@b\"@example.org");
}

static void test_address_extension(void **state)
{
	(void)state;
	assert_string_equal(addr("alice+tag@example.org", &opts_plus), "alice@example.org");
	assert_string_equal(addr("Alice+Tag@Example.ORG", &opts_plus_nofold), "Alice@example.org");
	/* cut at the first delimiter */
	assert_string_equal(addr("alice+a+b@example.org", &opts_plus), "alice@example.org");
	/* several delimiter characters: the first of any of them */
	assert_string_equal(addr("bob-list+x@example.org", &opts_multi), "bob@example.org");
	assert_string_equal(addr("bob+x-y@example.org", &opts_multi), "bob@example.org");
	assert_string_equal(addr("bob-x@example.org", &opts_plus), "bob-x@example.org");
	/* no delimiters configured */
	assert_string_equal(addr("alice+tag@example.org", &opts_none), "alice+tag@example.org");
	/* an empty local part would be left: kept as is */
	assert_string_equal(addr("+list@example.org", &opts_plus), "+list@example.org");
	assert_string_equal(addr("-list@example.org", &opts_multi), "-list@example.org");
	/* a delimiter in the domain is not an extension */
	assert_string_equal(addr("alice@ex+ample.org", &opts_plus), "alice@ex+ample.org");
	assert_string_equal(addr("alice@my-example.org", &opts_multi), "alice@my-example.org");
	/* a delimiter at the end of the local part */
	assert_string_equal(addr("alice+@example.org", &opts_plus), "alice@example.org");
}

static void test_address_odd(void **state)
{
	char out[KEY_MAX];

	(void)state;
	/* no '@': a bare local part */
	assert_string_equal(addr("Postmaster", &opts_plus), "postmaster");
	assert_string_equal(addr("user+ext", &opts_plus), "user");
	/* empty (the null sender) */
	memset(out, 'x', sizeof(out));
	assert_int_equal(key_norm_address(out, sizeof(out), "", &opts_plus), 0);
	assert_string_equal(out, "");
	assert_string_equal(addr("@Example.ORG", &opts_plus), "@example.org");
	assert_string_equal(addr("alice@", &opts_plus), "alice@");
}

/*
 * Run fn with every output size 0..max on a heap buffer of exactly that size
 * (ASan catches a byte written past it); the output must be NUL-terminated,
 * its length the return value, and a prefix of the full result.
 */
enum norm_fn { NORM_ADDRESS, NORM_DOMAIN, NORM_IP, NORM_NET, NORM_LOGIN };

static size_t run_norm(enum norm_fn fn, char *out, size_t outsz, const char *in)
{
	switch (fn) {
	case NORM_ADDRESS:
		return key_norm_address(out, outsz, in, &opts_plus);
	case NORM_DOMAIN:
		return key_norm_domain(out, outsz, in);
	case NORM_IP:
		return key_norm_ip(out, outsz, in);
	case NORM_NET:
		return key_norm_net(out, outsz, in, 24, 64);
	case NORM_LOGIN:
	default:
		return key_norm_login(out, outsz, in, true);
	}
}

static void check_small_buffers(enum norm_fn fn, const char *in, bool prefix_cut)
{
	char full[KEY_MAX];
	size_t flen = run_norm(fn, full, sizeof(full), in);

	assert_int_equal(flen, strlen(full));
	for (size_t sz = 0; sz <= flen + 2; sz++) {
		char *out = malloc(sz ? sz : 1);
		assert_non_null(out);
		memset(out, 'Z', sz ? sz : 1);
		size_t n = run_norm(fn, out, sz, in);
		if (sz == 0) {
			assert_int_equal(n, 0);
			assert_int_equal(out[0], 'Z'); /* nothing written */
		} else if (prefix_cut) {
			assert_non_null(memchr(out, '\0', sz));
			assert_int_equal(n, strlen(out));
			assert_true(n < sz);
			assert_memory_equal(out, full, n);
			if (sz > flen)
				assert_string_equal(out, full);
		} else if (n > 0) {
			/* all or nothing: 0 leaves out unspecified (but within sz) */
			assert_int_equal(n, flen);
			assert_string_equal(out, full);
		}
		free(out);
	}
}

static void test_small_buffers(void **state)
{
	(void)state;
	/* addresses, domains and logins are cut to a prefix (documented) */
	check_small_buffers(NORM_ADDRESS, "Alice+Tag@Example.ORG", true);
	check_small_buffers(NORM_ADDRESS, "a@b", true);
	check_small_buffers(NORM_ADDRESS, "nobody", true);
	check_small_buffers(NORM_DOMAIN, "alice@Example.ORG.", true);
	check_small_buffers(NORM_LOGIN, "  Alice  ", true);
	/* addresses and networks are whole or nothing */
	check_small_buffers(NORM_IP, "2001:DB8::1", false);
	check_small_buffers(NORM_IP, "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255", false);
	check_small_buffers(NORM_IP, "192.0.2.1", false);
	check_small_buffers(NORM_NET, "198.51.100.77", false);
	check_small_buffers(NORM_NET, "2001:db8:1:2:3:4:5:6", false);
}

/* A cut address must never gain characters that are not in the full key. */
static void test_address_cut(void **state)
{
	char out[8];

	(void)state;
	/* the local part alone fills the buffer: no dangling '@' */
	assert_int_equal(key_norm_address(out, 8, "abcdefgh@example.org", &opts_plus), 7);
	assert_string_equal(out, "abcdefg");
	assert_int_equal(key_norm_address(out, 8, "abcdefg@example.org", &opts_plus), 7);
	assert_string_equal(out, "abcdefg");
	assert_int_equal(key_norm_address(out, 8, "abcdef@example.org", &opts_plus), 7);
	assert_string_equal(out, "abcdef@");
	assert_int_equal(key_norm_address(out, 8, "abc@example.org", &opts_plus), 7);
	assert_string_equal(out, "abc@exa");
	assert_int_equal(key_norm_address(out, 1, "abc@example.org", &opts_plus), 0);
	assert_string_equal(out, "");
}

static void test_domain(void **state)
{
	char out[KEY_MAX];

	(void)state;
	assert_int_equal(key_norm_domain(out, sizeof(out), "alice@Example.ORG"), 11);
	assert_string_equal(out, "example.org");
	assert_int_equal(key_norm_domain(out, sizeof(out), "alice@example.org."), 11);
	assert_string_equal(out, "example.org");
	assert_int_equal(key_norm_domain(out, sizeof(out), "alice@EXAMPLE.org.."), 11);
	assert_string_equal(out, "example.org");
	/* the last '@' */
	assert_int_equal(key_norm_domain(out, sizeof(out), "\"a@b\"@Sub.Example.ORG"), 15);
	assert_string_equal(out, "sub.example.org");
	/* the extension of the local part does not matter */
	assert_int_equal(key_norm_domain(out, sizeof(out), "a+b@X.y"), 3);
	assert_string_equal(out, "x.y");
	/* no domain */
	memset(out, 'x', sizeof(out));
	assert_int_equal(key_norm_domain(out, sizeof(out), "postmaster"), 0);
	assert_string_equal(out, "");
	assert_int_equal(key_norm_domain(out, sizeof(out), ""), 0);
	assert_string_equal(out, "");
	assert_int_equal(key_norm_domain(out, sizeof(out), "alice@"), 0);
	assert_string_equal(out, "");
	assert_int_equal(key_norm_domain(out, sizeof(out), "alice@."), 0);
	assert_string_equal(out, "");
}

static void expect_ip(const char *in, const char *want)
{
	char out[KEY_MAX];
	size_t n = key_norm_ip(out, sizeof(out), in);
	if (want == NULL) {
		assert_int_equal(n, 0);
		return;
	}
	assert_int_equal(n, strlen(want));
	assert_string_equal(out, want);
}

static void test_ip(void **state)
{
	char out[INET6_ADDRSTRLEN];

	(void)state;
	/* INET6_ADDRSTRLEN always suffices */
	assert_int_equal(
	    key_norm_ip(out, sizeof(out), "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"),
	    INET6_ADDRSTRLEN - 7);
	assert_string_equal(out, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
	expect_ip("192.0.2.1", "192.0.2.1");
	expect_ip("127.0.0.1", "127.0.0.1");
	expect_ip("0.0.0.0", "0.0.0.0");
	expect_ip("255.255.255.255", "255.255.255.255");
	/* IPv6 in canonical text form (RFC 5952) */
	expect_ip("2001:DB8::1", "2001:db8::1");
	expect_ip("2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1");
	expect_ip("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1");
	expect_ip("::1", "::1");
	expect_ip("::", "::");
	expect_ip("fe80::1", "fe80::1");
	expect_ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
	          "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
	/* IPv4-mapped folded to IPv4 */
	expect_ip("::ffff:192.0.2.1", "192.0.2.1");
	expect_ip("::FFFF:c000:0201", "192.0.2.1");
	/* Postfix's IPv6: prefix, any case */
	expect_ip("IPv6:2001:db8::1", "2001:db8::1");
	expect_ip("ipv6:2001:DB8::1", "2001:db8::1");
	expect_ip("IPv6:::ffff:192.0.2.1", "192.0.2.1");
	/* garbage */
	expect_ip("", NULL);
	expect_ip("unknown", NULL);
	expect_ip("192.0.2", NULL);
	expect_ip("192.0.2.256", NULL);
	expect_ip("192.0.2.1 ", NULL);
	expect_ip("2001:db8::1::2", NULL);
	expect_ip("2001:db8::g", NULL);
	expect_ip("IPv6:", NULL);
	expect_ip("IPv6:192.0.2.1", NULL);
	expect_ip("fe80::1%eth0", NULL);
	expect_ip("example.org", NULL);
}

static void expect_net(const char *in, unsigned p4, unsigned p6, const char *want)
{
	char out[KEY_MAX];
	size_t n = key_norm_net(out, sizeof(out), in, p4, p6);
	if (want == NULL) {
		assert_int_equal(n, 0);
		return;
	}
	assert_int_equal(n, strlen(want));
	assert_string_equal(out, want);
}

static void test_net(void **state)
{
	(void)state;
	expect_net("198.51.100.77", 24, 64, "198.51.100.0/24");
	expect_net("198.51.100.77", 16, 64, "198.51.0.0/16");
	expect_net("198.51.100.77", 20, 64, "198.51.96.0/20");
	expect_net("198.51.100.77", 31, 64, "198.51.100.76/31");
	expect_net("198.51.100.77", 32, 64, "198.51.100.77/32");
	expect_net("198.51.100.77", 1, 64, "128.0.0.0/1");
	expect_net("198.51.100.77", 0, 64, "0.0.0.0/0");
	expect_net("2001:db8:1:2:3:4:5:6", 24, 64, "2001:db8:1:2::/64");
	expect_net("2001:db8:1:2:3:4:5:6", 24, 48, "2001:db8:1::/48");
	expect_net("2001:db8:1:2:3:4:5:6", 24, 52, "2001:db8:1::/52");
	expect_net("2001:db8:1:2fff:3:4:5:6", 24, 52, "2001:db8:1:2000::/52");
	expect_net("2001:db8:1:2:3:4:5:6", 24, 127, "2001:db8:1:2:3:4:5:6/127");
	expect_net("2001:db8:1:2:3:4:5:7", 24, 127, "2001:db8:1:2:3:4:5:6/127");
	expect_net("2001:db8:1:2:3:4:5:7", 24, 128, "2001:db8:1:2:3:4:5:7/128");
	expect_net("2001:db8::1", 24, 0, "::/0");
	/* IPv4-mapped: an IPv4 network with the IPv4 prefix */
	expect_net("::ffff:198.51.100.77", 24, 64, "198.51.100.0/24");
	expect_net("IPv6:2001:DB8::77", 24, 64, "2001:db8::/64");
	expect_net("garbage", 24, 64, NULL);
	expect_net("", 24, 64, NULL);
	expect_net("198.51.100.0/24", 24, 64, NULL); /* an address, not a network */
}

static void test_net_parse(void **state)
{
	struct key_net n;
	static const uint8_t v4[4] = {10, 0, 0, 0};

	(void)state;
	assert_int_equal(key_net_parse("10.1.2.3/8", &n), 0);
	assert_int_equal(n.family, AF_INET);
	assert_int_equal(n.prefix, 8);
	assert_memory_equal(n.addr, v4, 4); /* host bits cleared */

	assert_int_equal(key_net_parse("192.0.2.1", &n), 0);
	assert_int_equal(n.family, AF_INET);
	assert_int_equal(n.prefix, 32);
	assert_int_equal(key_net_parse("2001:db8::/32", &n), 0);
	assert_int_equal(n.family, AF_INET6);
	assert_int_equal(n.prefix, 32);
	assert_int_equal(key_net_parse("::1", &n), 0);
	assert_int_equal(n.family, AF_INET6);
	assert_int_equal(n.prefix, 128);
	assert_int_equal(key_net_parse("[::1]", &n), 0);
	assert_int_equal(n.prefix, 128);
	assert_int_equal(key_net_parse("[2001:db8::]/48", &n), 0);
	assert_int_equal(n.family, AF_INET6);
	assert_int_equal(n.prefix, 48);
	assert_int_equal(key_net_parse("0.0.0.0/0", &n), 0);
	assert_int_equal(n.prefix, 0);
	assert_int_equal(key_net_parse("::/0", &n), 0);
	assert_int_equal(n.prefix, 0);
	assert_int_equal(key_net_parse("10.0.0.0/32", &n), 0);
	assert_int_equal(key_net_parse("2001:db8::/128", &n), 0);
	/* a mapped host is an IPv4 host */
	assert_int_equal(key_net_parse("::ffff:192.0.2.1", &n), 0);
	assert_int_equal(n.family, AF_INET);
	assert_int_equal(n.prefix, 32);

	/* bad */
	assert_int_equal(key_net_parse("", &n), -1);
	assert_int_equal(key_net_parse("/8", &n), -1);
	assert_int_equal(key_net_parse("10.0.0.0/", &n), -1);
	assert_int_equal(key_net_parse("10.0.0.0/33", &n), -1);
	assert_int_equal(key_net_parse("2001:db8::/129", &n), -1);
	assert_int_equal(key_net_parse("10.0.0.0/-1", &n), -1);
	assert_int_equal(key_net_parse("10.0.0.0/8x", &n), -1);
	assert_int_equal(key_net_parse("10.0.0.0/8/8", &n), -1);
	assert_int_equal(key_net_parse("10.0.0.0/99999999999999999999", &n), -1);
	assert_int_equal(key_net_parse("10.0.0/8", &n), -1);
	assert_int_equal(key_net_parse("example.org", &n), -1);
	assert_int_equal(key_net_parse("[::1", &n), -1);
	assert_int_equal(key_net_parse("::1]", &n), -1);
	assert_int_equal(key_net_parse("[]", &n), -1);
	assert_int_equal(key_net_parse("[10.0.0.0/8", &n), -1);
	/* longer than any address */
	assert_int_equal(
	    key_net_parse("0000:0000:0000:0000:0000:0000:0000:0000:0000:0000:0000/8", &n), -1);
}

static void test_net_parse_prefix_strict(void **state)
{
	struct key_net n;

	(void)state;
	assert_int_equal(key_net_parse("10.0.0.0/+8", &n), -1);
	assert_int_equal(key_net_parse("10.0.0.0/ 8", &n), -1);
}

static void test_addr_in(void **state)
{
	struct key_net nets[8] = {{0}};
	size_t n = 0;

	(void)state;
	assert_false(key_addr_in("10.1.2.3", nets, 0));
	assert_int_equal(key_net_parse("10.0.0.0/8", &nets[n++]), 0);
	assert_int_equal(key_net_parse("192.0.2.0/31", &nets[n++]), 0);
	assert_int_equal(key_net_parse("254.0.0.0/7", &nets[n++]), 0);
	assert_int_equal(key_net_parse("2001:db8::/32", &nets[n++]), 0);
	assert_int_equal(key_net_parse("[::1]", &nets[n++]), 0);
	assert_int_equal(key_net_parse("203.0.113.5", &nets[n++]), 0);

	assert_true(key_addr_in("10.1.2.3", nets, n));
	assert_true(key_addr_in("10.255.255.255", nets, n));
	assert_false(key_addr_in("11.0.0.1", nets, n));
	assert_false(key_addr_in("9.255.255.255", nets, n));
	/* /31 */
	assert_true(key_addr_in("192.0.2.0", nets, n));
	assert_true(key_addr_in("192.0.2.1", nets, n));
	assert_false(key_addr_in("192.0.2.2", nets, n));
	/* /7: the prefix ends inside a byte */
	assert_true(key_addr_in("254.1.2.3", nets, n));
	assert_true(key_addr_in("255.255.255.255", nets, n));
	assert_false(key_addr_in("253.255.255.255", nets, n));
	/* host entries */
	assert_true(key_addr_in("203.0.113.5", nets, n));
	assert_false(key_addr_in("203.0.113.6", nets, n));
	assert_true(key_addr_in("::1", nets, n));
	assert_false(key_addr_in("::2", nets, n));
	/* v6 */
	assert_true(key_addr_in("2001:db8:ffff::1", nets, n));
	assert_true(key_addr_in("2001:DB8::", nets, n));
	assert_true(key_addr_in("IPv6:2001:db8::5", nets, n));
	assert_false(key_addr_in("2001:db9::1", nets, n));
	/* families never mix, but a mapped address is IPv4 */
	assert_true(key_addr_in("::ffff:10.9.8.7", nets, n));
	assert_false(key_addr_in("::ffff:11.9.8.7", nets, n));
	assert_false(key_addr_in("::a01:203", nets, n)); /* IPv4-compatible, not mapped */
	/* garbage */
	assert_false(key_addr_in("", nets, n));
	assert_false(key_addr_in("unknown", nets, n));
	assert_false(key_addr_in("10.1.2.3/8", nets, n));

	/* everything of one family */
	struct key_net all4, all6;
	assert_int_equal(key_net_parse("0.0.0.0/0", &all4), 0);
	assert_int_equal(key_net_parse("::/0", &all6), 0);
	assert_true(key_addr_in("198.51.100.1", &all4, 1));
	assert_false(key_addr_in("2001:db8::1", &all4, 1));
	assert_true(key_addr_in("2001:db8::1", &all6, 1));
	assert_false(key_addr_in("198.51.100.1", &all6, 1));
	assert_true(key_addr_in("::ffff:198.51.100.1", &all4, 1));
}

static void test_login(void **state)
{
	char out[KEY_MAX];

	(void)state;
	assert_int_equal(key_norm_login(out, sizeof(out), "  Alice\t ", true), 5);
	assert_string_equal(out, "alice");
	assert_int_equal(key_norm_login(out, sizeof(out), "\tAlice ", false), 5);
	assert_string_equal(out, "Alice");
	/* a login may be an address: nothing stripped but blanks */
	assert_int_equal(key_norm_login(out, sizeof(out), "Bob+x@Example.ORG", true), 17);
	assert_string_equal(out, "bob+x@example.org");
	assert_int_equal(key_norm_login(out, sizeof(out), "a b", true), 3);
	assert_string_equal(out, "a b");
	memset(out, 'x', sizeof(out));
	assert_int_equal(key_norm_login(out, sizeof(out), "", true), 0);
	assert_string_equal(out, "");
	assert_int_equal(key_norm_login(out, sizeof(out), " \t ", true), 0);
	assert_string_equal(out, "");
}

/* key_fmt_ipv6 writes what inet_ntop writes (RFC 5952), for addresses with
 * runs of zero groups of every length and place (IPv4-compatible ::/96 and
 * mapped ::ffff:0:0/96, which inet_ntop writes dotted, are left out). */
static void test_fmt_ipv6_like_inet_ntop(void **state)
{
	(void)state;
	unsigned seed = 12345;
	for (int iter = 0; iter < 200000; iter++) {
		uint8_t a[16];
		for (int i = 0; i < 8; i++) {
			seed = seed * 1103515245u + 12345u;
			unsigned r = seed >> 16;
			unsigned v = (r & 3) == 0 ? 0
			             : (r & 4)    ? (r >> 3) & 0xff
			                          : (r >> 3) & 0xffff;
			a[2 * i] = (uint8_t)(v >> 8);
			a[2 * i + 1] = (uint8_t)v;
		}
		static const uint8_t zero10[10] = {0};
		if (memcmp(a, zero10, 10) == 0 &&
		    ((a[10] == 0 && a[11] == 0) || (a[10] == 0xff && a[11] == 0xff)))
			continue;
		char want[64], got[64];
		assert_non_null(inet_ntop(AF_INET6, a, want, sizeof(want)));
		size_t n = key_fmt_ipv6(got, a);
		assert_string_equal(got, want);
		assert_int_equal(n, strlen(want));
	}
}

/* What key_ip_parse must give, by inet_pton: -1, or the family and bytes. */
static int ip_expect(const char *s, struct key_ip *ip)
{
	struct in6_addr a6;
	memset(ip, 0, sizeof(*ip));
	if (inet_pton(AF_INET, s, ip->addr) == 1) {
		ip->family = AF_INET;
		return 0;
	}
	if (inet_pton(AF_INET6, s, &a6) != 1)
		return -1;
	if (IN6_IS_ADDR_V4MAPPED(&a6)) {
		memcpy(ip->addr, &a6.s6_addr[12], 4);
		ip->family = AF_INET;
		return 0;
	}
	memcpy(ip->addr, a6.s6_addr, 16);
	ip->family = AF_INET6;
	return 0;
}

/* key_ip_parse (its own IPv6 parser first) against inet_pton on valid
 * addresses in every text form and on mutations of them. */
static void test_ip_parse_like_inet_pton(void **state)
{
	(void)state;
	static const char alpha[] = "0123456789abcdefABCDEF:.:::x";
	unsigned seed = 4242;
	int accepted = 0;
	for (int iter = 0; iter < 300000; iter++) {
		uint8_t a[16];
		char txt[128];
		for (int i = 0; i < 16; i += 2) {
			seed = seed * 1103515245u + 12345u;
			unsigned r = seed >> 16;
			unsigned v = (r & 3) == 0 ? 0
			             : (r & 4)    ? (r >> 3) & 0xff
			                          : (r >> 3) & 0xffff;
			a[i] = (uint8_t)(v >> 8);
			a[i + 1] = (uint8_t)v;
		}
		seed = seed * 1103515245u + 12345u;
		unsigned form = (seed >> 16) % 4;
		if (form == 0) {
			assert_non_null(inet_ntop(AF_INET6, a, txt, sizeof(txt)));
		} else if (form == 1) { /* every group, leading zeros, upper case */
			int o = 0;
			for (int i = 0; i < 16; i += 2)
				o += snprintf(txt + o, sizeof(txt) - (size_t)o, "%s%04X",
				              i ? ":" : "", (unsigned)a[i] << 8 | a[i + 1]);
		} else if (form == 2) { /* a dotted quad at the end */
			int o = 0;
			for (int i = 0; i < 12; i += 2)
				o += snprintf(txt + o, sizeof(txt) - (size_t)o,
				              "%x:", (unsigned)a[i] << 8 | a[i + 1]);
			snprintf(txt + o, sizeof(txt) - (size_t)o, "%u.%u.%u.%u", a[12], a[13],
			         a[14], a[15]);
		} else {
			assert_non_null(inet_ntop(AF_INET6, a, txt, sizeof(txt)));
		}
		/* mutate half of them: replace, insert or delete a character */
		seed = seed * 1103515245u + 12345u;
		unsigned r = seed >> 16;
		size_t len = strlen(txt);
		if ((r & 1) && len > 0) {
			size_t at = (r >> 1) % len;
			char c = alpha[(r >> 9) % (sizeof(alpha) - 1)];
			switch ((r >> 14) % 3) {
			case 0:
				txt[at] = c;
				break;
			case 1:
				memmove(txt + at + 1, txt + at, len - at + 1);
				txt[at] = c;
				break;
			default:
				memmove(txt + at, txt + at + 1, len - at);
				break;
			}
		}
		struct key_ip want, got;
		int w = ip_expect(txt, &want);
		memset(&got, 0, sizeof(got));
		int g = key_ip_parse(txt, &got);
		if (w != g ||
		    (w == 0 && (want.family != got.family || memcmp(want.addr, got.addr, 16) != 0)))
			fail_msg("'%s': inet_pton %d, key_ip_parse %d", txt, w, g);
		accepted += w == 0;
	}
	assert_true(accepted > 100000); /* the valid forms were really tested */
	static const char *const odd[] = {"::",
	                                  "::1",
	                                  "1::",
	                                  "1:2:3:4:5:6:7::",
	                                  "::2:3:4:5:6:7:8",
	                                  "1:2:3:4:5:6:7:8::",
	                                  ":::",
	                                  "1:::2",
	                                  ":1::2",
	                                  "1::2::3",
	                                  "12345::",
	                                  "::ffff:1.2.3.4",
	                                  "::1.2.3.4",
	                                  "1:2:3:4:5:6:7:1.2.3.4",
	                                  "::01.2.3.4",
	                                  "1:2:3:4:5:6:1.2.3.4",
	                                  "",
	                                  ":",
	                                  "1:",
	                                  "g::"};
	for (size_t i = 0; i < sizeof(odd) / sizeof(odd[0]); i++) {
		struct key_ip want, got;
		int w = ip_expect(odd[i], &want);
		memset(&got, 0, sizeof(got));
		int g = key_ip_parse(odd[i], &got);
		if (w != g ||
		    (w == 0 && (want.family != got.family || memcmp(want.addr, got.addr, 16) != 0)))
			fail_msg("'%s': inet_pton %d, key_ip_parse %d", odd[i], w, g);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_fmt_ipv6_like_inet_ntop),
	    cmocka_unit_test(test_ip_parse_like_inet_pton),
	    cmocka_unit_test(test_type_names),
	    cmocka_unit_test(test_address_fold),
	    cmocka_unit_test(test_address_extension),
	    cmocka_unit_test(test_address_odd),
	    cmocka_unit_test(test_small_buffers),
	    cmocka_unit_test(test_address_cut),
	    cmocka_unit_test(test_domain),
	    cmocka_unit_test(test_ip),
	    cmocka_unit_test(test_net),
	    cmocka_unit_test(test_net_parse),
	    cmocka_unit_test(test_net_parse_prefix_strict),
	    cmocka_unit_test(test_addr_in),
	    cmocka_unit_test(test_login),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
