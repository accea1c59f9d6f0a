/*
 * tests/bench/bench_anomaly.c - what the anomaly score costs: time per
 * request through the whole pipeline with and without [anomaly] (embedded
 * store, warm DNS cache from a fixture, warm profiles), the parts of it
 * (decode, observe, score, update, encode), and memory per profile in the
 * store (its own byte count and RSS).
 *
 * Usage: bench_anomaly [-a accounts] [-n requests]
 * Limits: a measurement tool, not a test; one thread, one run.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cache/profile.h"
#include "cache/store.h"
#include "policyd/anomaly.h"
#include "policyd/config.h"
#include "policyd/dns.h"
#include "policyd/log.h"
#include "policyd/pipeline.h"

#define T0 1790000000LL

static double bench_cpu(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long bench_rss_kb(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long kb = -1;
	if (f == NULL)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, "VmRSS:", 6))
			kb = strtol(line + 6, NULL, 10);
	fclose(f);
	return kb;
}

struct bench {
	struct config *cfg;
	struct store *store;
	struct txn txn;
	struct pipeline_ctx x;
	char buf[2048];
	struct proto_request req;
	struct proto_kv extra[8];
};

static void bench_done(void *arg, enum store_status st, const struct store_result *res, size_t n)
{
	struct pipeline_ctx *x = arg;
	x->st = st;
	if (n)
		memcpy(x->res, res, n * sizeof(*res));
	pipeline_finish(x);
}

static void bench_follow(void *arg, enum store_status st, const struct store_result *res, size_t n)
{
	(void)arg;
	(void)st;
	(void)res;
	(void)n;
}

static unsigned long bench_flags;

static void bench_flag(const struct flag_request *r)
{
	(void)r;
	bench_flags++;
}

static void bench_request(struct bench *b, unsigned acct, unsigned rcpt, int64_t t)
{
	int n =
	    snprintf(b->buf, sizeof(b->buf),
	             "request=smtpd_access_policy\nprotocol_state=RCPT\nsasl_method=PLAIN\n"
	             "sasl_username=user%u@example.org\nsender=user%u@example.org\n"
	             "recipient=contact%u@example.net\nclient_address=198.51.%u.%u\n"
	             "instance=%x.%x\n\n",
	             acct, acct, rcpt % 40, acct % 200, acct % 250 + 1, acct, (unsigned)(t / 60));
	struct proto_parser p;
	struct proto_limits lim;
	size_t used;
	proto_limits_default(&lim);
	proto_parser_init(&p, &lim);
	memset(&b->req, 0, sizeof(b->req));
	b->req.extra = b->extra;
	b->req.extra_cap = 8;
	if (proto_parse(&p, b->buf, (size_t)n, &b->req, &used, NULL) != PROTO_OK)
		abort();
	struct pipeline_ctx *x = &b->x;
	pipeline_begin(x, b->cfg, &b->req, &b->txn, t * 1000000);
	pipeline_prepare(x);
	if (x->nops)
		store_batch(b->store, x->ops, x->nops, x->now_us, bench_done, x);
	else
		bench_done(x, STORE_OK, NULL, 0);
	if (x->nfollow)
		store_batch(b->store, x->follow, x->nfollow, x->now_us, bench_follow, NULL);
}

static struct bench *bench_open(const char *anomaly, const char *fixture)
{
	struct bench *b = calloc(1, sizeof(*b));
	char path[64] = "/tmp/bench-anomaly-XXXXXX", err[512];
	int fd = mkstemp(path);
	FILE *fp = fdopen(fd, "w");
	fprintf(fp, "[server]\nstate_dir =\nlog = stderr\nhooks = rcpt\n%s", anomaly);
	fclose(fp);
	b->cfg = config_load(path, err, sizeof(err));
	unlink(path);
	if (b->cfg == NULL) {
		fprintf(stderr, "bench_anomaly: %s\n", err);
		exit(1);
	}
	struct store_memory_opts mo = {.state_dir = NULL, .flush_ms = 1000};
	b->store = store_memory_open(&mo, T0 * 1000000, err, sizeof(err));
	txn_init(&b->txn);
	(void)fixture;
	return b;
}

static void bench_close(struct bench *b)
{
	txn_free(&b->txn);
	b->store->be->close(b->store);
	config_free(b->cfg);
	free(b);
}

/* ns per request over n requests on random warm accounts */
static double bench_run(struct bench *b, unsigned accounts, unsigned n, int64_t *t)
{
	uint32_t x = 12345;
	double c0 = bench_cpu();
	for (unsigned i = 0; i < n; i++) {
		x = x * 1103515245u + 12345u;
		*t += 1;
		bench_request(b, (x >> 8) % accounts, x >> 20, *t);
	}
	return (bench_cpu() - c0) / n * 1e9;
}

int main(int argc, char **argv)
{
	unsigned accounts = 10000, n = 300000;
	int opt;
	char err[256];
	while ((opt = getopt(argc, argv, "a:n:")) != -1) {
		if (opt == 'a')
			accounts = (unsigned)strtoul(optarg, NULL, 10);
		else if (opt == 'n')
			n = (unsigned)strtoul(optarg, NULL, 10);
		else {
			fprintf(stderr, "usage: bench_anomaly [-a accounts] [-n requests]\n");
			return 2;
		}
	}
	log_open("bench_anomaly", "stderr", "mail", err, sizeof(err));
	log_set_level(LOG_L_ERR);

	/* DNS answers for every client network, from a fixture (warm cache) */
	char fix[64] = "/tmp/bench-anomaly-fix-XXXXXX";
	int fd = mkstemp(fix);
	FILE *fp = fdopen(fd, "w");
	for (unsigned i = 0; i < 200; i++)
		fprintf(fp,
		        "0.%u.51.198.origin.asn.test TXT \"%u | 198.51.%u.0/24 | DE | x | y\"\n", i,
		        64500 + i % 7, i);
	fclose(fp);
	if (dns_fixture_load(fix, err, sizeof(err)) < 0) {
		fprintf(stderr, "bench_anomaly: %s\n", err);
		return 1;
	}
	unlink(fix);

	printf("bench_anomaly: %u accounts, %u requests per run (RCPT, embedded store)\n", accounts,
	       n);
	/* without the anomaly check */
	struct bench *off = bench_open("", NULL);
	int64_t t = T0;
	for (unsigned a = 0; a < accounts; a++)
		bench_request(off, a, 0, t);
	double ns_off = bench_run(off, accounts, n, &t);
	bench_close(off);

	/* with it: warm every profile (30 recipients a day for 10 days) */
	struct bench *on = bench_open("\n[anomaly]\nasn_zone = origin.asn.test\n"
	                              "dnsbl = xbl.test\n",
	                              fix);
	anomaly_set_flag_fn(bench_flag);
	struct store_stats s0, s1;
	on->store->be->stats(on->store, &s0);
	long rss0 = bench_rss_kb();
	t = T0;
	for (unsigned d = 0; d < 10; d++)
		for (unsigned a = 0; a < accounts; a++)
			for (unsigned r = 0; r < 3; r++)
				bench_request(on, a, d * 3 + r,
				              T0 + d * 86400 + 8 * 3600 + a % 36000 + r);
	on->store->be->stats(on->store, &s1);
	long rss1 = bench_rss_kb();
	t = T0 + 11 * 86400;
	double ns_on = bench_run(on, accounts, n, &t);
	double ns_on2 = bench_run(on, accounts, n, &t);
	if (ns_on2 < ns_on)
		ns_on = ns_on2;

	/* the parts, on one warm profile */
	static struct profile p;
	uint8_t w[PROFILE_WIRE_SIZE];
	struct profile_prior pr;
	profile_prior_default(&pr);
	profile_init(&p, (uint32_t)T0);
	struct profile_obs o = {.now_s = (uint32_t)T0,
	                        .inst = 1,
	                        .sender = 5,
	                        .prefix = 7,
	                        .asn = 64500,
	                        .cc = {'D', 'E'}};
	struct profile_features f;
	for (unsigned i = 0; i < 2000; i++) {
		o.now_s += 600;
		o.rcpt = profile_hash(&i, sizeof(i)) % 50 + 1;
		o.inst = i / 2 + 1;
		profile_observe(&p, &o, &pr, &f);
		profile_update(&p, &o, &f, 1, 1);
	}
	const struct anomaly_conf *ac = config_section_get(on->cfg, &anomaly_section);
	struct anomaly_input in = {.f = &f,
	                           .client = "198.51.100.7",
	                           .network = "198.51.100.0/24",
	                           .asn = 64500,
	                           .cc = "DE",
	                           .login = "a@example.org",
	                           .sender = "a@example.org",
	                           .since_s = 60};
	struct anomaly_result res;
	const unsigned k = 1000000;
	double c0 = bench_cpu();
	for (unsigned i = 0; i < k; i++) {
		profile_encode(&p, w, sizeof(w));
		profile_decode(&p, w, sizeof(w));
	}
	double ns_codec = (bench_cpu() - c0) / k * 1e9;
	c0 = bench_cpu();
	for (unsigned i = 0; i < k; i++) {
		o.rcpt = (i % 60) + 1;
		profile_observe(&p, &o, &pr, &f);
	}
	double ns_observe = (bench_cpu() - c0) / k * 1e9;
	c0 = bench_cpu();
	for (unsigned i = 0; i < k; i++)
		anomaly_score(ac, &in, &res);
	double ns_score = (bench_cpu() - c0) / k * 1e9;
	c0 = bench_cpu();
	for (unsigned i = 0; i < k; i++) {
		o.rcpt = (i % 60) + 1;
		o.now_s += 1;
		profile_observe(&p, &o, &pr, &f);
		profile_update(&p, &o, &f, 1, 1);
	}
	double ns_update = (bench_cpu() - c0) / k * 1e9 - ns_observe;

	printf("\n| measure | value |\n|---|---|\n");
	printf("| pipeline without [anomaly] | %.2f us/request |\n", ns_off / 1e3);
	printf("| pipeline with [anomaly], warm profiles and DNS cache | %.2f us/request |\n",
	       ns_on / 1e3);
	printf("| **added by the anomaly score** | **%.2f us/request** |\n",
	       (ns_on - ns_off) / 1e3);
	printf("| of which profile encode + decode | %.2f us |\n", ns_codec / 1e3);
	printf("| of which observe (features) | %.2f us |\n", ns_observe / 1e3);
	printf("| of which score (components, no texts) | %.2f us |\n", ns_score / 1e3);
	printf("| of which update (learning) | %.2f us |\n", ns_update / 1e3);
	printf("| profile on the wire | %d bytes |\n", PROFILE_WIRE_SIZE);
	printf("| embedded store, per profile (its own count, key included) | %.0f bytes |\n",
	       (double)(s1.bytes - s0.bytes) / accounts);
	printf("| RSS per profile | %.0f bytes |\n", (double)(rss1 - rss0) * 1024 / accounts);
	if (bench_flags)
		printf("(%lu flags raised by the benchmark traffic)\n", bench_flags);
	bench_close(on);
	dns_fixture_free();
	return 0;
}
