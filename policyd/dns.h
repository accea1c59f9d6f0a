/*
 * policyd/dns.h - DNS through c-ares on the libev loop: DNSBL and ASN
 * (origin.asn.cymru.com-style TXT) look-ups behind a bounded cache with
 * positive and negative TTLs, for checks that must never wait; and plain
 * asynchronous queries for the self-check.
 *
 * The cached look-ups never block and never wait: they answer from the
 * cache, or start a query and answer DNS_PENDING; the answer serves the
 * next request that asks.  A slow or dead server therefore costs no
 * latency, only fresh information.
 *
 * One channel per process (the daemon's [dns] module, or dns_open() in
 * policyctl and the tests); without one, every look-up answers
 * DNS_UNKNOWN.  Replay uses a fixture file instead of the network.
 */
#ifndef POLICYD_DNS_H
#define POLICYD_DNS_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config_section.h"
#include "module.h"

#define DNS_TXT_MAX     2048 /* bytes kept of one TXT record (longer: cut, counted) */
#define DNS_MAX_RECORDS 8

/* The [dns] section. */
struct dns_conf {
	char servers[256];   /* "127.0.0.1:5353,..."; "" = /etc/resolv.conf */
	unsigned timeout_ms; /* per try */
	unsigned tries;
	unsigned max_inflight;     /* queries in flight; more are skipped (counted) */
	size_t cache_size;         /* entries */
	uint32_t min_ttl, max_ttl; /* clamp of positive TTLs, seconds */
	uint32_t neg_ttl;          /* NXDOMAIN/NODATA without SOA */
	uint32_t neg_max_ttl;      /* clamp of negative TTLs */
	uint32_t error_ttl;        /* timeouts, SERVFAIL, bad answers */
	uint32_t probe_interval;   /* DNSBL sanity probe (127.0.0.1 must not be listed) */
};

extern const struct config_section dns_section;
extern const struct module dns_module;

void dns_conf_default(struct dns_conf *c);

enum dns_result {
	DNS_UNKNOWN = 0, /* no channel, not an address, or too many in flight */
	DNS_PENDING,     /* a query is on its way: ask again later */
	DNS_YES,         /* listed / found */
	DNS_NO,          /* not listed / nothing there (cached NXDOMAIN or NODATA) */
	DNS_ERROR,       /* timeout, SERVFAIL, refused, or a malformed answer (cached briefly) */
};

struct dns_asn_info {
	uint32_t asn;
	char cc[3];      /* "NL", "" when none */
	char prefix[48]; /* "203.0.113.0/24" as announced */
};

/* ASN and country of ip (zone4 for IPv4, zone6 for IPv6; "" = none). */
enum dns_result dns_asn(const char *ip, const char *zone4, const char *zone6, int64_t now_us,
                        struct dns_asn_info *out);
/*
 * Is ip listed in zone?  *code = the 127.x.y.z answer (host order) when
 * DNS_YES.  Only codes in 127.0.0.0/8 count; 127.0.0.1 and 127.255.255.x
 * (error and "query refused" answers) and anything else are ignored and
 * counted; a zone that lists 127.0.0.1 (RFC 5782 test address) is taken
 * for broken and its listings ignored until it answers sanely.
 */
enum dns_result dns_dnsbl(const char *ip, const char *zone, int64_t now_us, uint32_t *code);
/* A domain on a domain blocklist (name.zone). */
enum dns_result dns_dnsbl_name(const char *name, const char *zone, int64_t now_us, uint32_t *code);

/* A plain answer for the self-check. */
struct dns_answer {
	enum dns_result result;
	int rcode;                   /* ns_r_* when an answer came, -1 otherwise */
	const char *error;           /* static text when result is DNS_ERROR */
	unsigned n;                  /* records */
	uint32_t a[DNS_MAX_RECORDS]; /* A, host order */
	char *txt[DNS_MAX_RECORDS];  /* TXT, strings joined, NUL-terminated */
	bool txt_cut;                /* a record was longer than DNS_TXT_MAX */
	uint32_t ttl;
};
typedef void dns_cb(void *arg, const struct dns_answer *a);
/* type: 1 (A) or 16 (TXT).  The callback may run before this returns. */
int dns_query(const char *name, int type, dns_cb *cb, void *arg);

/* "2.0.0.127.zone" / nibbles for IPv6; host = keep the host part (else
 * the /24 or /64).  0 when ip is not an address or out is too small. */
size_t dns_reverse_name(char *out, size_t outsz, const char *ip, const char *zone, bool host);

/* Own channel on loop (policyctl doctor, tests); 0 or -1 + err. */
int dns_open(struct ev_loop *loop, const struct dns_conf *c, char *err, size_t errsz);
void dns_close(void);
bool dns_active(void);
/* Queries in flight. */
unsigned dns_inflight(void);
/* Forget every cached answer (tests). */
void dns_cache_clear(void);

/*
 * Replay: answer from a fixture file instead of the network.  Lines:
 *   NAME A 127.0.0.2 [TTL]
 *   NAME TXT "text" [TTL]
 *   NAME NXDOMAIN
 * Names not in the file are NXDOMAIN.  0 or -1 + err (FILE:LINE).
 */
int dns_fixture_load(const char *path, char *err, size_t errsz);
void dns_fixture_free(void);

struct dns_stats {
	unsigned long long hits, misses, queries, answers, nxdomain, nodata, timeouts, errors;
	unsigned long long bad_answers, refused_codes, broken_zone, txt_cut, evicted;
	unsigned long long skipped, bad_addresses;
	unsigned long long cache_entries;
};
extern struct dns_stats dns_stats;

#endif
