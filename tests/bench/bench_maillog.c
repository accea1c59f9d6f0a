/*
 * tests/bench/bench_maillog.c - throughput of maillog_parse() alone and of
 * maillog_parse() + classify_line() (what `policyctl classify` and the log
 * follower do per line), in lines per second.
 *
 * Not built by meson; build and run by hand from the source tree:
 *   gcc -std=c17 -O2 -I. tests/bench/bench_maillog.c proto/maillog.c \
 *       proto/classify.c -o /tmp/bench_maillog && /tmp/bench_maillog
 *   /tmp/bench_maillog [-p PATTERNS] [-n LINES] [CORPUS]
 *
 * Three inputs of LINES lines each (default 1,000,000):
 * - mix: a generated log of an outbound relay, seven lines a message
 *   (smtpd connect, client=, cleanup message-id, qmgr from=, one delivery
 *   record, qmgr removed, smtpd disconnect) with 85% of deliveries sent,
 *   10% deferred and 5% bounced with real reply texts, plus warnings and
 *   other programs' lines;
 * - failures: delivery records only, all deferred or bounced;
 * - corpus: the lines of CORPUS (default tests/unit/data/maillog-corpus.txt)
 *   replayed in a loop.
 * PATTERNS defaults to data/ndr-patterns.conf.  Each input is run 3 times
 * and the best run is reported.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 /* clock_gettime() under -std=c17 */
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "proto/classify.h"
#include "proto/maillog.h"

struct bench_lines {
	char *buf;
	size_t len, cap;
	size_t *off; /* start of line i; off[n] = end */
	size_t n, ncap;
};

static double bench_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void bench_add(struct bench_lines *l, const char *s, size_t n)
{
	if (l->len + n > l->cap) {
		l->cap = (l->len + n) * 2;
		l->buf = realloc(l->buf, l->cap);
	}
	if (l->n + 2 > l->ncap) {
		l->ncap = (l->n + 2) * 2;
		l->off = realloc(l->off, l->ncap * sizeof(*l->off));
	}
	if (!l->buf || !l->off) {
		fprintf(stderr, "out of memory\n");
		exit(1);
	}
	l->off[l->n++] = l->len;
	memcpy(l->buf + l->len, s, n);
	l->len += n;
	l->off[l->n] = l->len;
}

static char *bench_read(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *b;
	long n;

	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	b = malloc((size_t)n + 1);
	if (!b || fread(b, 1, (size_t)n, f) != (size_t)n) {
		free(b);
		fclose(f);
		return NULL;
	}
	fclose(f);
	b[n] = '\0';
	*len = (size_t)n;
	return b;
}

static uint32_t bench_rand(uint32_t *s)
{
	*s = *s * 1103515245u + 12345u;
	return *s >> 8;
}

/* Reply texts of failures, as in the corpus. */
static const char *const bench_deferred[] = {
    ("host mx-eu.mail.am0.yahoodns.net[203.0.113.62] said: 421 4.7.0 [TSS04] Messages from "
     "198.51.100.23 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; "
     "see https://postmaster.yahooinc.com/error-codes (in reply to MAIL FROM command)"),
    ("host gmail-smtp-in.l.google.com[203.0.113.27] said: 421-4.7.28 [198.51.100.23      15] "
     "Gmail has detected an unusual rate of unsolicited 421-4.7.28 mail originating from your IP "
     "address. To protect our users from 421-4.7.28 spam, mail sent from your IP address has been "
     "temporarily rate 421-4.7.28 limited. For more information, go to 421-4.7.28  "
     "https://support.google.com/mail/?p=UnsolicitedRateLimitError to 421 4.7.28 review our Bulk "
     "Email Senders Guidelines. 5b1f17b1804b1-42c9f1c7b5esi12345 - gsmtp (in reply to end of DATA "
     "command)"),
    ("host mx.example.de[192.0.2.92] said: 450 4.2.0 <ha@example.de>: Recipient address rejected: "
     "Greylisted, see http://postgrey.schweikert.ch/help/example.de.html (in reply to RCPT TO "
     "command)"),
    "connect to mx.example.org[203.0.113.26]:25: Connection timed out",
    ("host mx.example.com[203.0.113.40] refused to talk to me: 554 5.7.1 Service unavailable; "
     "Client host [198.51.100.23] blocked using zen.spamhaus.org; "
     "https://www.spamhaus.org/query/ip/198.51.100.23"),
    ("host gmail-smtp-in.l.google.com[203.0.113.27] said: 452-4.2.2 The recipient's inbox is out "
     "of storage space. Please direct the 452-4.2.2 recipient to 452 4.2.2  "
     "https://support.google.com/mail/?p=OverQuotaTemp g6si42 - gsmtp (in reply to RCPT TO "
     "command)"),
    "lost connection with mx.example.org[203.0.113.26] while receiving the initial server greeting",
    ("host mx.example.org[203.0.113.26] refused to talk to me: 421 mx.example.org Error: too many "
     "connections from 198.51.100.23"),
};

static const char *const bench_bounced[] = {
    ("host gmail-smtp-in.l.google.com[203.0.113.27] said: 550-5.1.1 The email account that you "
     "tried to reach does not exist. Please try 550-5.1.1 double-checking the recipient's email "
     "address for typos or 550-5.1.1 unnecessary spaces. For more information, go to 550 5.1.1  "
     "https://support.google.com/mail/?p=NoSuchUser d2si123 - gsmtp (in reply to RCPT TO command)"),
    ("host hotmail-example.olc.protection.outlook.com[203.0.113.111] said: 550 5.7.1 "
     "Unfortunately, messages from [198.51.100.23] weren't sent. Please contact your Internet "
     "service provider since part of their network is on our block list (S3150). You can also "
     "refer your provider to http://mail.live.com/mail/troubleshooting.aspx#errors. "
     "[DB3EUR04FT007.eop-eur04.prod.protection.outlook.com] (in reply to MAIL FROM command)"),
    ("host contoso-example.mail.protection.outlook.com[203.0.113.110] said: 550 5.4.1 Recipient "
     "address rejected: Access denied. For more information see https://aka.ms/EXOSmtpErrors "
     "[SN1PEPF000252A1.namprd05.prod.outlook.com] (in reply to RCPT TO command)"),
    ("host mx.example.edu[192.0.2.90] said: 554 Service unavailable; Client host [198.51.100.23] "
     "blocked using Barracuda Reputation; http://www.barracudanetworks.com/reputation/"
     "?pr=1&ip=198.51.100.23 (in reply to end of DATA command)"),
    ("host mx.example.org[203.0.113.26] said: 552 5.2.2 <fb@example.org>: Mailbox full (in reply "
     "to RCPT TO command)"),
    ("host gmail-smtp-in.l.google.com[203.0.113.27] said: 550-5.7.26 This mail has been blocked "
     "because the sender is unauthenticated. 550-5.7.26 Gmail requires all senders to "
     "authenticate with either SPF or DKIM. 550 5.7.26 a1si123 - gsmtp (in reply to end of DATA "
     "command)"),
    ("host mx.example.org[203.0.113.26] said: 552 5.3.4 Message size exceeds fixed limit (in "
     "reply to end of DATA command)"),
};

static void bench_qid(uint32_t *seed, char out[11])
{
	static const char hex[] = "0123456789ABCDEF";

	for (int i = 0; i < 10; i++)
		out[i] = hex[bench_rand(seed) & 15];
	out[10] = '\0';
}

static void bench_gen_delivery(struct bench_lines *l, uint32_t *seed, const char *qid,
                               int kind /* 0 sent, 1 deferred, 2 bounced */)
{
	char line[4096];
	int n;
	const char *text, *status, *dsn;

	if (kind == 0) {
		text = "250 2.0.0 Ok: queued as 4F1A2B3C4D";
		status = "sent";
		dsn = "2.0.0";
	} else if (kind == 1) {
		text = bench_deferred[bench_rand(seed) % (sizeof(bench_deferred) / sizeof(char *))];
		status = "deferred";
		dsn = "4.7.0";
	} else {
		text = bench_bounced[bench_rand(seed) % (sizeof(bench_bounced) / sizeof(char *))];
		status = "bounced";
		dsn = "5.1.1";
	}
	n = snprintf(line, sizeof(line),
	             "Nov  3 07:05:09 out1 postfix/smtp[%u]: %s: to=<user%u@example.net>, "
	             "relay=mx.example.net[203.0.113.25]:25, delay=0.38, "
	             "delays=0.04/0/0.21/0.13, dsn=%s, status=%s (%s)",
	             bench_rand(seed) % 30000, qid, bench_rand(seed) % 100000, dsn, status, text);
	bench_add(l, line, (size_t)n);
}

static void bench_gen_mix(struct bench_lines *l, size_t want)
{
	uint32_t seed = 42;
	char line[1024], qid[11];
	int n;

	while (l->n < want) {
		uint32_t r = bench_rand(&seed) % 100, pid = bench_rand(&seed) % 30000;

		bench_qid(&seed, qid);
		n = snprintf(line, sizeof(line),
		             "Nov  3 07:05:09 out1 postfix/submission/smtpd[%u]: connect from "
		             "unknown[192.0.2.%u]",
		             pid, r);
		bench_add(l, line, (size_t)n);
		n = snprintf(line, sizeof(line),
		             "Nov  3 07:05:09 out1 postfix/submission/smtpd[%u]: %s: "
		             "client=unknown[192.0.2.%u], sasl_method=PLAIN, "
		             "sasl_username=user%u@example.com",
		             pid, qid, r, bench_rand(&seed) % 5000);
		bench_add(l, line, (size_t)n);
		n = snprintf(line, sizeof(line),
		             "Nov  3 07:05:09 out1 postfix/cleanup[4420]: %s: "
		             "message-id=<20261103070509.%s@out1.example.com>",
		             qid, qid);
		bench_add(l, line, (size_t)n);
		n = snprintf(line, sizeof(line),
		             "Nov  3 07:05:09 out1 postfix/qmgr[988]: %s: from=<user@example.com>, "
		             "size=%u, nrcpt=1 (queue active)",
		             qid, bench_rand(&seed) % 100000);
		bench_add(l, line, (size_t)n);
		bench_gen_delivery(l, &seed, qid, r < 85 ? 0 : r < 95 ? 1 : 2);
		n = snprintf(line, sizeof(line),
		             "Nov  3 07:05:10 out1 postfix/qmgr[988]: %s: removed", qid);
		bench_add(l, line, (size_t)n);
		n = snprintf(
		    line, sizeof(line),
		    "Nov  3 07:05:10 out1 postfix/submission/smtpd[%u]: disconnect from "
		    "unknown[192.0.2.%u] ehlo=1 auth=1 mail=1 rcpt=1 data=1 quit=1 commands=6",
		    pid, r);
		bench_add(l, line, (size_t)n);
		if (r % 10 == 0) {
			static const char w[] = "Nov  3 07:05:10 out1 postfix/smtpd[77]: warning: "
			                        "hostname x.example does not resolve to address "
			                        "192.0.2.7";
			static const char o[] =
			    "Nov  3 07:05:10 out1 dovecot[99]: imap-login: Login: "
			    "user=<a@example.com>, method=PLAIN, rip=192.0.2.8";

			bench_add(l, w, sizeof(w) - 1);
			bench_add(l, o, sizeof(o) - 1);
		}
	}
	l->n = want;
}

static void bench_gen_failures(struct bench_lines *l, size_t want)
{
	uint32_t seed = 7;
	char qid[11];

	while (l->n < want) {
		bench_qid(&seed, qid);
		bench_gen_delivery(l, &seed, qid, 1 + (int)(bench_rand(&seed) % 2));
	}
}

static void bench_gen_corpus(struct bench_lines *l, const char *text, size_t len, size_t want)
{
	size_t start = l->n;

	while (l->n < want) {
		const char *p = text, *e = text + len;

		while (p < e && l->n < want) {
			const char *nl = memchr(p, '\n', (size_t)(e - p));
			const char *le = nl ? nl : e;

			if (le > p && *p != '#')
				bench_add(l, p, (size_t)(le - p));
			p = nl ? nl + 1 : e;
		}
		if (l->n == start)
			break; /* no lines at all */
	}
}

/* Lines per second over all lines; best of 3. */
static double bench_run(const struct bench_lines *l, const struct classify_db *db, size_t *ndeliv)
{
	static struct maillog_line ln;
	struct maillog_opts o;
	double best = 0;
	size_t sink = 0;

	maillog_opts_default(&o);
	o.ref_time = 1795478400;
	for (int run = 0; run < 3; run++) {
		double t0 = bench_now(), dt;
		size_t nd = 0;

		for (size_t i = 0; i < l->n; i++) {
			enum maillog_event ev =
			    maillog_parse(&o, l->buf + l->off[i], l->off[i + 1] - l->off[i], &ln);

			if (ev == MAILLOG_DELIVERY || ev == MAILLOG_EXPIRED) {
				nd++;
				if (db) {
					struct classify_result r;

					sink += classify_line(db, &ln, &r);
				}
			}
			sink += (size_t)ev;
		}
		dt = bench_now() - t0;
		if (l->n / dt > best)
			best = (double)l->n / dt;
		*ndeliv = nd;
	}
	if (sink == 42)
		printf(" ");
	return best;
}

static void bench_report(const char *name, const struct bench_lines *l,
                         const struct classify_db *db)
{
	size_t nd = 0;
	double parse = bench_run(l, NULL, &nd);
	double both = bench_run(l, db, &nd);

	printf("%-9s %8zu lines (%3.0f%% delivery records, %5.1f MB): parse %6.2f M lines/s, "
	       "parse+classify %6.2f M lines/s\n",
	       name, l->n, 100.0 * (double)nd / (double)l->n, (double)l->len / 1e6, parse / 1e6,
	       both / 1e6);
}

int main(int argc, char **argv)
{
	const char *patterns = "data/ndr-patterns.conf";
	const char *corpus = "tests/unit/data/maillog-corpus.txt";
	size_t want = 1000000, plen, clen;
	char *ptext, *ctext;
	struct classify_source src;
	struct classify_diag diag;
	struct classify_db *db;
	struct bench_lines mix = {0}, fail = {0}, cor = {0};
	int i;

	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "-p") == 0 && i + 1 < argc)
			patterns = argv[++i];
		else if (strcmp(argv[i], "-n") == 0 && i + 1 < argc)
			want = strtoul(argv[++i], NULL, 10);
		else if (argv[i][0] != '-')
			corpus = argv[i];
		else {
			fprintf(stderr, "usage: %s [-p PATTERNS] [-n LINES] [CORPUS]\n", argv[0]);
			return 2;
		}
	}
	if (want == 0)
		want = 1;
	ptext = bench_read(patterns, &plen);
	if (!ptext) {
		fprintf(stderr, "cannot read %s (run from the source tree or give -p)\n", patterns);
		return 1;
	}
	src.name = patterns;
	src.text = ptext;
	src.len = plen;
	db = classify_db_load(&src, 1, &diag);
	if (!db) {
		fprintf(stderr, "%s: line %zu: %s\n", patterns, diag.line, diag.msg);
		return 1;
	}
	printf("patterns: %s (%zu rules, %zu lists)\n", patterns, classify_db_rules(db),
	       classify_db_lists(db));
	bench_gen_mix(&mix, want);
	bench_report("mix", &mix, db);
	bench_gen_failures(&fail, want);
	bench_report("failures", &fail, db);
	ctext = bench_read(corpus, &clen);
	if (ctext) {
		bench_gen_corpus(&cor, ctext, clen, want);
		if (cor.n)
			bench_report("corpus", &cor, db);
	} else {
		fprintf(stderr, "(no corpus at %s: skipped)\n", corpus);
	}
	free(ctext);
	free(mix.buf);
	free(mix.off);
	free(fail.buf);
	free(fail.off);
	free(cor.buf);
	free(cor.off);
	classify_db_free(db);
	free(ptext);
	return 0;
}
