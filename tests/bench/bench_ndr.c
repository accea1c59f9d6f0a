/*
 * tests/bench/bench_ndr.c - throughput of the NDR path of the daemon, in
 * log lines per second: the log follower reading a file (policyd/follow.c)
 * and, per line, maillog_parse + classify_line + attribution + windows +
 * spike test (ndr_feed_line, policyd/ndr.c), as the daemon runs it; plus
 * the longest single slice of the follower (how long a policy answer can
 * wait behind the log: the loop runs one slice between other events).
 *
 * Build and run (from the source tree):
 *   ninja -C BUILDDIR tests/bench/bench_ndr
 *   BUILDDIR/tests/bench/bench_ndr [-n LINES] [-p PATTERNS] [-a ACCOUNTS]
 *   BUILDDIR/tests/bench/bench_ndr -o FILE [-n LINES]   (only write the log)
 *
 * The input is a generated log of an outbound relay (RFC 3339 stamps, one
 * second per message): per message smtpd connect, client= with a SASL
 * login out of ACCOUNTS (default 5000), cleanup message-id, qmgr from=,
 * one to three delivery records (85% sent, 10% deferred, 5% bounced, with
 * real reply texts: unknown users, Spamhaus, Yahoo reputation, greylisting,
 * connection errors), qmgr removed, smtpd disconnect; and every 20th line
 * a line of another program.  Each pass is run 3 times, the best reported.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "policyd/config.h"
#include "policyd/follow.h"
#include "policyd/ndr.h"
#include "proto/classify.h"
#include "proto/maillog.h"

static double bn_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static const char *const bn_fail[] = {
    "host mx.example.net[203.0.113.9] said: 550 5.1.1 <x@example.net>: Recipient address "
    "rejected: User unknown in virtual mailbox table (in reply to RCPT TO command)",
    "host mx.example.net[203.0.113.9] said: 554 5.7.1 Service unavailable; Client host "
    "[198.51.100.23] blocked using zen.spamhaus.org; https://www.spamhaus.org/query/ip/"
    "198.51.100.23 (in reply to RCPT TO command)",
    "host mta7.am0.yahoodns.net[203.0.113.7] said: 421 4.7.0 [TSS04] Messages from "
    "198.51.100.23 temporarily deferred due to unexpected volume or user complaints - "
    "4.16.55.1; see https://postmaster.yahooinc.com/error-codes (in reply to MAIL FROM command)",
    "host mx.example.net[203.0.113.9] said: 450 4.7.1 <x@example.net>: Recipient address "
    "rejected: Greylisted, see http://postgrey.schweikert.ch/help/example.net.html (in reply to "
    "RCPT TO command)",
    "connect to mx.example.org[192.0.2.25]:25: Connection timed out",
};

/* Write the generated log to path; returns the number of lines. */
static size_t bn_generate(const char *path, size_t want, unsigned accounts)
{
	FILE *f = fopen(path, "w");
	size_t n = 0;
	unsigned long msg = 0, seed = 12345;
	time_t t0 = 1795000000;
	if (f == NULL) {
		perror(path);
		exit(1);
	}
	while (n < want) {
		char ts[64], qid[16];
		struct tm tm;
		time_t t = t0 + (time_t)msg;
		gmtime_r(&t, &tm);
		strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S.000000+00:00 out1", &tm);
		snprintf(qid, sizeof(qid), "%010lX", 0x10000000UL + msg);
		seed = seed * 6364136223846793005UL + 1442695040888963407UL;
		unsigned acct = (unsigned)(seed >> 33) % accounts;
		unsigned pid = 1000 + (unsigned)(msg % 50);
		fprintf(f, "%s postfix/submission/smtpd[%u]: connect from unknown[192.0.2.%lu]\n",
		        ts, pid, msg % 250);
		fprintf(f,
		        "%s postfix/submission/smtpd[%u]: %s: client=unknown[192.0.2.%lu], "
		        "sasl_method=PLAIN, sasl_username=user%u@example.com\n",
		        ts, pid, qid, msg % 250, acct);
		fprintf(f, "%s postfix/cleanup[%u]: %s: message-id=<%lu.%s@example.com>\n", ts,
		        pid + 1, qid, msg, qid);
		unsigned nr = 1 + (unsigned)(seed >> 20) % 3;
		fprintf(f,
		        "%s postfix/qmgr[900]: %s: from=<user%u@example.com>, size=%lu, nrcpt=%u "
		        "(queue active)\n",
		        ts, qid, acct, 1000 + msg % 50000, nr);
		n += 4;
		for (unsigned r = 0; r < nr; r++) {
			seed = seed * 6364136223846793005UL + 1442695040888963407UL;
			unsigned roll = (unsigned)(seed >> 33) % 100;
			const char *status = "sent", *dsn = "2.0.0",
			           *reply = "250 2.0.0 Ok: queued as 4F1A2B3C4D";
			if (roll >= 95) {
				status = "bounced";
				unsigned k = (unsigned)(seed >> 40) % 2;
				reply = bn_fail[k];
				dsn = k ? "5.7.1" : "5.1.1";
			} else if (roll >= 85) {
				status = "deferred";
				unsigned k = 2 + (unsigned)(seed >> 40) % 3;
				reply = bn_fail[k];
				dsn = k == 4 ? "4.4.1" : "4.7.0";
			}
			fprintf(f,
			        "%s postfix/smtp[%u]: %s: to=<rcpt%lu@example.net>, "
			        "relay=mx.example.net[203.0.113.9]:25, delay=0.38, "
			        "delays=0.04/0/0.21/0.13, dsn=%s, status=%s (%s)\n",
			        ts, 2000 + r, qid, (seed >> 24) % 100000, dsn, status, reply);
			n++;
		}
		fprintf(f, "%s postfix/qmgr[900]: %s: removed\n", ts, qid);
		fprintf(f,
		        "%s postfix/submission/smtpd[%u]: disconnect from unknown[192.0.2.%lu] "
		        "ehlo=1 auth=1 mail=1 rcpt=%u data=1 quit=1 commands=%u\n",
		        ts, pid, msg % 250, nr, 5 + nr);
		fprintf(f, "%s dovecot[777]: imap(user%u@example.com): Logged out in=10 out=200\n",
		        ts, acct);
		n += 3;
		msg++;
	}
	fclose(f);
	return n;
}

enum bn_mode { BN_READ = 0, BN_PARSE, BN_FULL };

struct bn_run {
	enum bn_mode mode;
	struct ndr *nd;
	struct maillog_opts mo;
	struct maillog_line *ln;
	size_t lines;
	bool done;
};

static void bn_line(void *arg, const char *line, size_t len)
{
	struct bn_run *r = arg;
	r->lines++;
	if (r->mode == BN_PARSE)
		maillog_parse(&r->mo, line, len, r->ln);
	else if (r->mode == BN_FULL)
		ndr_feed_line(r->nd, line, len, 0);
}

static void bn_note(void *arg, enum follow_note n, const char *detail)
{
	struct bn_run *r = arg;
	if (n == FOLLOW_N_DONE)
		r->done = true;
}

static int bn_cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* One pass; *p99_ms and *max_ms: the 99th percentile and the longest slice. */
static double bn_pass(const char *path, struct bn_run *r, double *p99_ms, double *max_slice_ms,
                      size_t *slices)
{
	static double sl[1 << 20];
	struct follow_opts o;
	char err[256];
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	memset(&o, 0, sizeof(o));
	o.path = path;
	o.line = bn_line;
	o.note = bn_note;
	o.arg = r;
	r->lines = 0;
	r->done = false;
	struct follow *f = follow_replay(loop, &o, err, sizeof(err));
	if (f == NULL) {
		fprintf(stderr, "%s\n", err);
		exit(1);
	}
	*max_slice_ms = 0;
	*slices = 0;
	double t0 = bn_now();
	while (!r->done) {
		double s0 = bn_now();
		follow_poll(f);
		double d = (bn_now() - s0) * 1000;
		if (d > *max_slice_ms)
			*max_slice_ms = d;
		if (*slices < sizeof(sl) / sizeof(sl[0]))
			sl[*slices] = d;
		(*slices)++;
	}
	double dt = bn_now() - t0;
	size_t ns = *slices < sizeof(sl) / sizeof(sl[0]) ? *slices : sizeof(sl) / sizeof(sl[0]);
	qsort(sl, ns, sizeof(sl[0]), bn_cmp);
	*p99_ms = ns ? sl[(ns * 99) / 100] : 0;
	follow_free(f);
	ev_loop_destroy(loop);
	return dt;
}

static struct classify_db *bn_patterns(const char *path)
{
	FILE *f = fopen(path, "rb");
	static char buf[4 << 20];
	if (f == NULL) {
		perror(path);
		exit(1);
	}
	size_t len = fread(buf, 1, sizeof(buf), f);
	fclose(f);
	struct classify_source src = {path, buf, len};
	struct classify_diag d;
	struct classify_db *db = classify_db_load(&src, 1, &d);
	if (db == NULL) {
		fprintf(stderr, "%s: line %zu: %s\n", path, d.line, d.msg);
		exit(1);
	}
	return db;
}

int main(int argc, char **argv)
{
	size_t want = 1000000;
	unsigned accounts = 5000;
	const char *patterns = "data/ndr-patterns.conf", *only = NULL;
	int c;
	while ((c = getopt(argc, argv, "n:p:a:o:")) != -1) {
		if (c == 'n')
			want = strtoul(optarg, NULL, 10);
		else if (c == 'p')
			patterns = optarg;
		else if (c == 'a')
			accounts = (unsigned)strtoul(optarg, NULL, 10);
		else if (c == 'o')
			only = optarg;
		else {
			fprintf(stderr,
			        "usage: bench_ndr [-n LINES] [-p PATTERNS] [-a ACCOUNTS]\n");
			return 2;
		}
	}
	if (only) {
		printf("%zu lines written to %s\n",
		       bn_generate(only, want, accounts ? accounts : 1), only);
		return 0;
	}
	if (access(patterns, R_OK) != 0 && access("../data/ndr-patterns.conf", R_OK) == 0)
		patterns = "../data/ndr-patterns.conf";
	char path[] = "/tmp/policyd-bench-ndr-XXXXXX";
	int fd = mkstemp(path);
	if (fd < 0) {
		perror("mkstemp");
		return 1;
	}
	close(fd);
	size_t n = bn_generate(path, want, accounts ? accounts : 1);
	FILE *fp = fopen(path, "r");
	fseek(fp, 0, SEEK_END);
	long bytes = ftell(fp);
	fclose(fp);

	char cpath[] = "/tmp/policyd-bench-ndr-conf-XXXXXX", err[512];
	fd = mkstemp(cpath);
	if (fd < 0 || write(fd, "[server]\nstate_dir =\nlog = stderr\n", 34) != 34) {
		perror("config");
		return 1;
	}
	close(fd);
	struct config *cfg = config_load(cpath, err, sizeof(err));
	unlink(cpath);
	if (cfg == NULL) {
		fprintf(stderr, "config: %s\n", err);
		return 1;
	}
	struct classify_db *db = bn_patterns(patterns);
	struct ndr_conf conf;
	ndr_conf_defaults(&conf);
	static struct maillog_line ln;

	printf("bench_ndr: %zu lines, %.1f MB, %u accounts, patterns %s (%zu rules)\n", n,
	       (double)bytes / 1e6, accounts, patterns, classify_db_rules(db));
	static const char *const names[] = {"follow (read, split lines)", "follow + maillog_parse",
	                                    "follow + parse + classify + attribute + windows"};
	for (int m = 0; m < 3; m++) {
		double best = 1e9, worst_slice = 0, p99 = 0;
		size_t slices = 0, lines = 0, qids = 0, principals = 0;
		uint64_t outcomes = 0, spikes = 0;
		for (int rep = 0; rep < 3; rep++) {
			struct bn_run r = {.mode = (enum bn_mode)m, .ln = &ln};
			maillog_opts_default(&r.mo);
			if (m == BN_FULL) {
				r.nd = ndr_new(&conf, cfg, db, NULL);
			}
			double ms, p;
			size_t sl;
			double dt = bn_pass(path, &r, &p, &ms, &sl);
			if (dt < best) {
				best = dt;
				p99 = p;
			}
			if (ms > worst_slice)
				worst_slice = ms;
			slices = sl;
			lines = r.lines;
			if (r.nd) {
				qids = ndr_queue_ids(r.nd);
				principals = ndr_principals(r.nd);
				outcomes = ndr_counters(r.nd)->outcomes;
				spikes = ndr_counters(r.nd)->spikes;
				ndr_free(r.nd);
			}
		}
		printf("  %-48s %9.0f lines/s  %7.1f MB/s  (%zu lines, %zu slices: p99 %.2f ms, "
		       "longest %.2f ms)\n",
		       names[m], (double)lines / best, (double)bytes / best / 1e6, lines, slices,
		       p99, worst_slice);
		if (m == BN_FULL)
			printf("  %-48s %zu principals, %llu outcomes, %zu queue ids left, %llu "
			       "spikes\n",
			       "", principals, (unsigned long long)outcomes, qids,
			       (unsigned long long)spikes);
	}
	unlink(path);
	classify_db_free(db);
	ndr_config_section.free(&conf);
	config_free(cfg);
	return 0;
}
