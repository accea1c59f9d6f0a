/*
 * tests/bench/bench_store.c - memory and speed of the embedded store.
 *
 * Inserts N subjects x R rules (W windows each) with one R-op batch per
 * subject, then reports RSS (/proc/self/status), bytes per (rule,
 * subject) key, the longest batch (the table's rehash pause), the
 * throughput of R-op batches on random existing subjects, and tick() cost.
 * With -d DIR it also persists: journal writes, a forked snapshot (fork
 * time, child time, file size) and the time to load it all back.
 *
 * Usage: bench_store [-n subjects] [-r rules] [-w windows] [-b batches]
 *                    [-d state_dir]
 * Limits: a measurement tool, not a test; single run, no statistics.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cache/store.h"

static int64_t bench_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static double bench_mono(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CPU time of this thread: what a pause costs us, without other load */
static double bench_cpu(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* a /proc/self/status field in kB */
static long bench_status_kb(const char *field)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long kb = -1;
	size_t n = strlen(field);
	if (f == NULL)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (strncmp(line, field, n) == 0 && line[n] == ':')
			kb = strtol(line + n + 1, NULL, 10);
	fclose(f);
	return kb;
}

struct bench_cb {
	uint64_t ok, refused, calls;
};

static void bench_done(void *arg, enum store_status st, const struct store_result *res, size_t n)
{
	struct bench_cb *c = arg;
	c->calls++;
	if (st != STORE_OK) {
		fprintf(stderr, "batch failed: status %d\n", (int)st);
		exit(1);
	}
	for (size_t i = 0; i < n; i++) {
		if (res[i].committed)
			c->ok++;
		else
			c->refused++;
	}
}

static uint64_t bench_rng = 88172645463325252ULL;

static uint64_t bench_rand(void)
{
	bench_rng ^= bench_rng << 13;
	bench_rng ^= bench_rng >> 7;
	bench_rng ^= bench_rng << 17;
	return bench_rng;
}

static void bench_subject(char *buf, size_t sz, uint64_t i)
{
	/* ~35 bytes, like firstname.lastname@customer-domain.example */
	snprintf(buf, sz, "user%07llu.name@customer%03llu.example", (unsigned long long)i,
	         (unsigned long long)(i % 997));
}

static void bench_usage(void)
{
	fprintf(stderr, "usage: bench_store [-n subjects] [-r rules] [-w windows] [-b batches] "
	                "[-d state_dir]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	uint64_t nsubj = 1000000, nbatch = 2000000;
	unsigned nrules = 3, nwin = 2;
	const char *dir = NULL;
	int opt;
	while ((opt = getopt(argc, argv, "n:r:w:b:d:")) != -1) {
		switch (opt) {
		case 'n':
			nsubj = strtoull(optarg, NULL, 10);
			break;
		case 'r':
			nrules = (unsigned)strtoul(optarg, NULL, 10);
			break;
		case 'w':
			nwin = (unsigned)strtoul(optarg, NULL, 10);
			break;
		case 'b':
			nbatch = strtoull(optarg, NULL, 10);
			break;
		case 'd':
			dir = optarg;
			break;
		default:
			bench_usage();
		}
	}
	if (nsubj == 0 || nrules == 0 || nrules > 16 || nwin == 0 || nwin > STORE_MAX_WINDOWS)
		bench_usage();

	static const struct gcra_window wins[STORE_MAX_WINDOWS] = {
	    {100, 3600ULL * 1000000},       /* 100 per hour */
	    {1000, 86400ULL * 1000000},     /* 1000 per day */
	    {60, 60ULL * 1000000},          /* 60 per minute */
	    {5000, 7 * 86400ULL * 1000000}, /* 5000 per week */
	};
	static const char *rule_names[16] = {
	    "rcpt_per_sender",
	    "msg_per_sender",
	    "bytes_per_sender",
	    "r4",
	    "r5",
	    "r6",
	    "r7",
	    "r8",
	    "r9",
	    "r10",
	    "r11",
	    "r12",
	    "r13",
	    "r14",
	    "r15",
	    "r16",
	};
	char subj[16][96];
	struct store_op ops[16];
	memset(ops, 0, sizeof(ops));
	for (unsigned r = 0; r < nrules; r++) {
		ops[r].kind = STORE_TAKE;
		ops[r].refuse = true;
		ops[r].rule = rule_names[r];
		ops[r].subject = subj[r];
		ops[r].cost = 1;
		ops[r].nwin = (uint8_t)nwin;
		memcpy(ops[r].win, wins, sizeof(wins));
	}

	long rss0 = bench_status_kb("VmRSS");
	struct store_memory_opts o = {.state_dir = dir};
	char err[256];
	int64_t now = bench_now();
	struct store *s = store_memory_open(&o, now, err, sizeof(err));
	if (s == NULL) {
		fprintf(stderr, "open: %s\n", err);
		return 1;
	}
	struct bench_cb cb = {0, 0, 0};

	/* 1. insert */
	double t0 = bench_mono(), worst = 0, last_tick = t0;
	uint64_t worst_at = 0;
	for (uint64_t i = 0; i < nsubj; i++) {
		for (unsigned r = 0; r < nrules; r++)
			bench_subject(subj[r], sizeof(subj[r]), i);
		double c0 = bench_cpu();
		store_batch(s, ops, nrules, now, bench_done, &cb);
		double b1 = bench_mono(), c1 = bench_cpu();
		if (c1 - c0 > worst) {
			worst = c1 - c0;
			worst_at = i;
		}
		if (c1 - c0 > 0.005)
			printf("  batch of subject %llu took %.1f ms CPU\n", (unsigned long long)i,
			       (c1 - c0) * 1e3);
		if (b1 - last_tick >= 0.1) {
			now = bench_now();
			s->be->tick(s, now);
			last_tick = b1;
		}
	}
	double t1 = bench_mono();
	struct store_stats st;
	s->be->stats(s, &st);
	long rss1 = bench_status_kb("VmRSS");
	printf("insert: %llu subjects x %u rules x %u windows = %llu keys in %.2f s "
	       "(%.0f batches/s), longest batch %.1f ms CPU (subject %llu: table growth)\n",
	       (unsigned long long)nsubj, nrules, nwin, (unsigned long long)st.keys, t1 - t0,
	       (double)nsubj / (t1 - t0), worst * 1e3, (unsigned long long)worst_at);
	printf("memory: RSS %.1f MB (start %.1f MB), %.1f bytes/key by RSS, "
	       "%.1f bytes/key by stats.bytes\n",
	       rss1 / 1024.0, rss0 / 1024.0, (double)(rss1 - rss0) * 1024.0 / (double)st.keys,
	       (double)st.bytes / (double)st.keys);

	/* 2. throughput on random existing subjects */
	uint64_t ticks = 0;
	double tick_worst = 0, tick_sum = 0;
	worst = 0;
	t0 = bench_mono();
	last_tick = t0;
	for (uint64_t i = 0; i < nbatch; i++) {
		uint64_t k = bench_rand() % nsubj;
		for (unsigned r = 0; r < nrules; r++)
			bench_subject(subj[r], sizeof(subj[r]), k);
		double b0 = bench_mono();
		store_batch(s, ops, nrules, now, bench_done, &cb);
		double b1 = bench_mono();
		if (b1 - b0 > worst)
			worst = b1 - b0;
		if ((i & 255) == 0 && b1 - last_tick >= 0.1) {
			now = bench_now();
			double k0 = bench_mono();
			s->be->tick(s, now);
			double k1 = bench_mono();
			tick_sum += k1 - k0;
			if (k1 - k0 > tick_worst)
				tick_worst = k1 - k0;
			ticks++;
			last_tick = k1;
		}
	}
	t1 = bench_mono();
	printf("batches: %llu %u-op batches in %.2f s = %.0f batches/s (%.2f us each incl. "
	       "key formatting), longest %.2f ms\n",
	       (unsigned long long)nbatch, nrules, t1 - t0, (double)nbatch / (t1 - t0),
	       (t1 - t0) * 1e6 / (double)nbatch, worst * 1e3);
	printf("tick: %llu ticks, mean %.2f ms, longest %.2f ms (sweep of 1/50 of the table%s)\n",
	       (unsigned long long)ticks, ticks ? tick_sum * 1e3 / (double)ticks : 0.0,
	       tick_worst * 1e3, dir ? " + journal write" : "");
	printf("ops: %llu committed, %llu refused\n", (unsigned long long)cb.ok,
	       (unsigned long long)cb.refused);
	s->be->stats(s, &st);
	printf("rss now %.1f MB, peak %.1f MB, keys %llu\n", bench_status_kb("VmRSS") / 1024.0,
	       bench_status_kb("VmHWM") / 1024.0, (unsigned long long)st.keys);

	if (dir) {
		/* 3. snapshot and reload */
		t0 = bench_mono();
		if (s->be->flush(s) < 0)
			fprintf(stderr, "flush: %s\n", s->err);
		t1 = bench_mono();
		printf("flush (write + fdatasync): %.1f ms\n", (t1 - t0) * 1e3);
		t0 = bench_mono();
		if (store_memory_snapshot(s) < 0) {
			fprintf(stderr, "snapshot: %s\n", s->err);
		} else {
			t1 = bench_mono();
			printf("snapshot: fork + new journal in the parent %.1f ms\n",
			       (t1 - t0) * 1e3);
			while (store_memory_snapshot_running(s))
				usleep(10000);
			printf("snapshot: child done after %.2f s\n", bench_mono() - t0);
		}
		char path[4096];
		snprintf(path, sizeof(path), "%s/snapshot", dir);
		FILE *f = fopen(path, "rb");
		if (f) {
			fseek(f, 0, SEEK_END);
			printf("snapshot: %.1f MB\n", (double)ftell(f) / 1048576.0);
			fclose(f);
		}
		s->be->close(s);
		t0 = bench_mono();
		s = store_memory_open(&o, bench_now(), err, sizeof(err));
		t1 = bench_mono();
		if (s == NULL) {
			fprintf(stderr, "reopen: %s\n", err);
			return 1;
		}
		s->be->stats(s, &st);
		printf("reopen: %llu keys loaded in %.2f s\n", (unsigned long long)st.keys,
		       t1 - t0);
	}
	s->be->close(s);
	return 0;
}
