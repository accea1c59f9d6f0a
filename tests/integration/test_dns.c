/*
 * tests/integration/test_dns.c - policyd/dns.c against a real DNS server on
 * loopback (dnsmasq, started by test_dns.sh with the zones below), or
 * against a server that is dead or drops every packet.  Prints one TAP
 * line per check without a number ("ok - what" / "not ok - what"); the
 * script numbers them.
 *
 * usage: test_dns live 127.0.0.1:PORT
 *        test_dns dead 127.0.0.1:PORT     (nothing answers there)
 *
 * Zones expected in live mode (test_dns.sh):
 *   9.113.0.203.xbl.test A 127.0.0.4 (TTL 2), the rest of xbl.test NXDOMAIN
 *   all.test: every name 127.0.0.2 (a list that lists everything)
 *   refused.test: 127.0.0.1, err.test: 127.255.255.254, bad.test: 192.0.2.1
 *   0.113.0.203.origin.asn.test TXT "64500 | 203.0.113.0/24 | NL | ..."
 *   0.100.51.198.origin.asn.test TXT "garbage"
 *   0.2.0.192.origin.asn.test TXT of about 3 KB (TCP after truncation)
 */
#include <ev.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "policyd/dns.h"
#include "policyd/log.h"

static int failures;
static struct ev_loop *loop;

static void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(int ok, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	printf("%s - ", ok ? "ok" : "not ok");
	vprintf(fmt, ap);
	printf("\n");
	va_end(ap);
	fflush(stdout);
	failures += !ok;
}

static int64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static double mono(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CPU time of this thread: what a call costs, whatever else runs */
static double cpu(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void tick_cb(struct ev_loop *l, ev_timer *w, int revents)
{
	(void)l;
	(void)w;
	(void)revents;
}

/* Run the loop for up to secs, or until no query is in flight. */
static void settle(double secs)
{
	ev_timer t;
	double end = mono() + secs;
	ev_timer_init(&t, tick_cb, 0.01, 0.01);
	ev_timer_start(loop, &t);
	while (dns_inflight() && mono() < end)
		ev_run(loop, EVRUN_ONCE);
	ev_timer_stop(loop, &t);
}

static void sleep_loop(double secs)
{
	ev_timer t;
	double end = mono() + secs;
	ev_timer_init(&t, tick_cb, 0.05, 0.05);
	ev_timer_start(loop, &t);
	while (mono() < end)
		ev_run(loop, EVRUN_ONCE);
	ev_timer_stop(loop, &t);
}

/* Ask, let the answer come, ask again: the second answer, from the cache. */
static enum dns_result bl(const char *ip, const char *zone, uint32_t *code)
{
	enum dns_result r = dns_dnsbl(ip, zone, now_us(), code);
	if (r == DNS_PENDING || r == DNS_UNKNOWN) {
		settle(5);
		r = dns_dnsbl(ip, zone, now_us(), code);
	}
	if (r == DNS_PENDING || r == DNS_UNKNOWN) { /* the zone's sanity probe */
		settle(5);
		r = dns_dnsbl(ip, zone, now_us(), code);
	}
	return r;
}

static void live(void)
{
	uint32_t code = 0;
	unsigned long long q0;

	enum dns_result r = dns_dnsbl("203.0.113.9", "xbl.test", now_us(), &code);
	check(r == DNS_PENDING, "first look-up starts a query and does not wait (%d)", r);
	settle(5);
	r = dns_dnsbl("203.0.113.9", "xbl.test", now_us(), &code);
	if (r != DNS_YES) { /* the zone's probe of 127.0.0.1 answered meanwhile */
		settle(5);
		r = dns_dnsbl("203.0.113.9", "xbl.test", now_us(), &code);
	}
	check(r == DNS_YES && code == 0x7f000004u, "listed client: 127.0.0.4 (%d, %08x)", r, code);
	q0 = dns_stats.queries;
	r = dns_dnsbl("203.0.113.9", "xbl.test", now_us(), &code);
	check(r == DNS_YES && dns_stats.queries == q0, "listed answer served from the cache");

	r = bl("203.0.113.10", "xbl.test", &code);
	check(r == DNS_NO, "unlisted client: NXDOMAIN (%d)", r);
	q0 = dns_stats.queries;
	r = dns_dnsbl("203.0.113.10", "xbl.test", now_us(), &code);
	check(r == DNS_NO && dns_stats.queries == q0, "NXDOMAIN cached (no new query)");

	/* TTL 2 s from the server (min_ttl = 1s), negative TTL 2 s (config) */
	sleep_loop(2.6);
	q0 = dns_stats.queries;
	r = dns_dnsbl("203.0.113.9", "xbl.test", now_us(), &code);
	check(r == DNS_PENDING && dns_stats.queries > q0, "positive TTL expired: queried again");
	q0 = dns_stats.queries;
	r = dns_dnsbl("203.0.113.10", "xbl.test", now_us(), &code);
	check(r == DNS_PENDING && dns_stats.queries > q0, "negative TTL expired: queried again");
	settle(5);
	r = dns_dnsbl("203.0.113.9", "xbl.test", now_us(), &code);
	check(r == DNS_YES, "listed again after the refresh");

	unsigned long long broken = dns_stats.broken_zone;
	r = bl("203.0.113.9", "all.test", &code);
	check(r != DNS_YES && dns_stats.broken_zone > broken,
	      "a list that lists everything (127.0.0.1 too) is ignored (%d)", r);
	unsigned long long refused = dns_stats.refused_codes;
	r = bl("203.0.113.9", "refused.test", &code);
	check(r != DNS_YES && dns_stats.refused_codes > refused,
	      "127.0.0.1 'query refused' answer is no listing (%d)", r);
	refused = dns_stats.refused_codes;
	r = bl("203.0.113.9", "err.test", &code);
	check(r != DNS_YES && dns_stats.refused_codes > refused,
	      "127.255.255.254 error code is no listing (%d)", r);
	unsigned long long bad = dns_stats.bad_answers;
	r = bl("203.0.113.9", "bad.test", &code);
	check(r != DNS_YES && dns_stats.bad_answers > bad,
	      "an answer outside 127/8 is no listing, counted (%d)", r);
	unsigned long long nota = dns_stats.bad_addresses;
	r = dns_dnsbl("not-an-address", "xbl.test", now_us(), &code);
	check(r == DNS_UNKNOWN && dns_stats.bad_addresses > nota,
	      "a client that is not an address: no query, counted");

	struct dns_asn_info ai;
	r = dns_asn("203.0.113.9", "origin.asn.test", "", now_us(), &ai);
	settle(5);
	r = dns_asn("203.0.113.77", "origin.asn.test", "", now_us(), &ai); /* same /24 */
	check(r == DNS_YES && ai.asn == 64500 && !strcmp(ai.cc, "NL") &&
	          !strcmp(ai.prefix, "203.0.113.0/24"),
	      "ASN TXT: AS%u %s %s, one look-up per /24", ai.asn, ai.cc, ai.prefix);
	bad = dns_stats.bad_answers;
	r = dns_asn("198.51.100.1", "origin.asn.test", "", now_us(), &ai);
	settle(5);
	r = dns_asn("198.51.100.1", "origin.asn.test", "", now_us(), &ai);
	check(r == DNS_ERROR && ai.asn == 0 && dns_stats.bad_answers > bad,
	      "malformed ASN TXT ignored and counted (%d)", r);
	unsigned long long cut = dns_stats.txt_cut;
	r = dns_asn("192.0.2.1", "origin.asn.test", "", now_us(), &ai);
	settle(8);
	r = dns_asn("192.0.2.1", "origin.asn.test", "", now_us(), &ai);
	check(r == DNS_ERROR && dns_stats.txt_cut > cut,
	      "huge TXT (TCP after truncation) cut, counted, not used (%d)", r);
	r = dns_asn("2001:db8::1", "origin.asn.test", "origin6.asn.test", now_us(), &ai);
	settle(5);
	r = dns_asn("2001:db8::1", "origin.asn.test", "origin6.asn.test", now_us(), &ai);
	check(r == DNS_NO, "IPv6 look-up by nibbles of the /64: NXDOMAIN (%d)", r);
}

static void dead(void)
{
	uint32_t code;
	double worst = 0, worst_wall = 0, t0 = mono();
	enum dns_result r = DNS_UNKNOWN;
	/* 200 different clients: every call returns at once */
	for (int i = 0; i < 200; i++) {
		char ip[32];
		snprintf(ip, sizeof(ip), "198.18.%d.%d", i / 250, i % 250 + 1);
		double a = cpu(), aw = mono();
		r = dns_dnsbl(ip, "xbl.test", now_us(), &code);
		double d = cpu() - a, dw = mono() - aw;
		worst = d > worst ? d : worst;
		worst_wall = dw > worst_wall ? dw : worst_wall;
		ev_run(loop, EVRUN_NOWAIT);
	}
	check(
	    worst < 0.002 && worst_wall < 0.020,
	    "200 look-ups with a dead server: the slowest call took %.0f us of CPU (%.0f us wall)",
	    worst * 1e6, worst_wall * 1e6);
	check(r == DNS_PENDING || r == DNS_UNKNOWN, "no answer yet: pending (%d)", r);
	settle(10);
	double took = mono() - t0;
	r = dns_dnsbl("198.18.0.1", "xbl.test", now_us(), &code);
	check(r == DNS_ERROR, "after the timeouts: an error, cached (%d), after %.1fs", r, took);
	check(dns_stats.timeouts + dns_stats.errors > 0, "timeouts counted (%llu, errors %llu)",
	      dns_stats.timeouts, dns_stats.errors);
	check(took < 3.0, "all 200 queries given up within timeout x tries (%.1fs)", took);
}

int main(int argc, char **argv)
{
	char err[256];
	if (argc != 3 || (strcmp(argv[1], "live") && strcmp(argv[1], "dead"))) {
		fprintf(stderr, "usage: test_dns live|dead 127.0.0.1:PORT\n");
		return 2;
	}
	log_open("test_dns", "stderr", "mail", err, sizeof(err));
	loop = ev_default_loop(0);
	struct dns_conf c;
	dns_conf_default(&c);
	snprintf(c.servers, sizeof(c.servers), "%s", argv[2]);
	c.min_ttl = 1;
	c.neg_ttl = 2;
	c.neg_max_ttl = 2;
	c.error_ttl = 30;
	c.timeout_ms = 300;
	c.tries = 2;
	if (dns_open(loop, &c, err, sizeof(err)) < 0) {
		printf("not ok - dns_open: %s\n", err);
		return 1;
	}
	check(1, "c-ares channel on 127.0.0.1 (%s)", argv[2]);
	if (!strcmp(argv[1], "live"))
		live();
	else
		dead();
	dns_close();
	ev_loop_destroy(loop);
	return failures ? 1 : 0;
}
