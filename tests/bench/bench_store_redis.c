/*
 * tests/bench/bench_store_redis.c - throughput of the Redis store backend
 * (cache/store_redis.c) driven directly through the store API from a libev
 * loop, with N batches kept in flight.
 *
 * Usage: bench_store_redis URL [SECONDS [INFLIGHT ...]]
 *        (defaults: 5 s, in flight 1 and 64)
 * Each batch is a typical policy check: TAKE on the sender (2 windows),
 * TAKE on the client address (1 window), TAKE of 1-5 recipients on the
 * sender (1 window), over 10000 senders and 1000 addresses.  Prints
 * batches/s, mean and p99 latency, and - for a redis:// or redis+unix://
 * URL - the Redis commands per batch from INFO commandstats before/after
 * (1 EVALSHA with one batch in flight; less with more in flight, since
 * batches waiting together ride in one script), the calls made inside
 * the scripts and Redis's time per script.  Not a test: no assertions,
 * exit status 1 only when batches fail.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <ev.h>
#include <hiredis/hiredis.h>

#include "cache/store.h"
#include "cache/store_redis.h"

#define BENCH_SEC       ((int64_t)1000000)
#define BENCH_MAX_LAT   (1u << 22)
#define BENCH_SENDERS   10000u
#define BENCH_ADDRESSES 1000u

struct bench {
	struct ev_loop *loop;
	struct store *s;
	unsigned inflight, target;
	bool stop;
	uint64_t done, failed;
	uint64_t rng;
	double *lat;
	size_t nlat;
	char senders[BENCH_SENDERS][32];
	char addrs[BENCH_ADDRESSES][20];
};

static int64_t bench_wall_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * BENCH_SEC + ts.tv_nsec / 1000;
}

static uint64_t bench_rand(struct bench *b)
{
	b->rng ^= b->rng >> 12;
	b->rng ^= b->rng << 25;
	b->rng ^= b->rng >> 27;
	return b->rng * 0x2545f4914f6cdd1dULL;
}

struct bench_req {
	struct bench *b;
	double t0;
};

static void bench_issue(struct bench *b);

static void bench_cb(void *arg, enum store_status st, const struct store_result *res, size_t n)
{
	struct bench_req *q = arg;
	struct bench *b = q->b;
	(void)res;
	(void)n;
	if (b->nlat < BENCH_MAX_LAT)
		b->lat[b->nlat++] = ev_time() - q->t0;
	free(q);
	b->inflight--;
	if (st != STORE_OK) {
		b->failed++;
		b->stop = true; /* the server is gone: stop rather than spin */
		return;
	}
	b->done++;
	if (!b->stop)
		bench_issue(b);
}

static void bench_issue(struct bench *b)
{
	struct bench_req *q = malloc(sizeof(*q));
	if (q == NULL) {
		b->stop = true;
		return;
	}
	q->b = b;
	q->t0 = ev_time();
	const char *sender = b->senders[bench_rand(b) % BENCH_SENDERS];
	const char *addr = b->addrs[bench_rand(b) % BENCH_ADDRESSES];
	struct store_op ops[3] = {
	    {.kind = STORE_TAKE,
	     .refuse = true,
	     .rule = "sender_rate",
	     .subject = sender,
	     .cost = 1,
	     .nwin = 2,
	     .win = {{100, 60 * BENCH_SEC}, {1000, 3600 * BENCH_SEC}}},
	    {.kind = STORE_TAKE,
	     .refuse = true,
	     .rule = "client_rate",
	     .subject = addr,
	     .cost = 1,
	     .nwin = 1,
	     .win = {{300, 60 * BENCH_SEC}}},
	    {.kind = STORE_TAKE,
	     .refuse = false,
	     .rule = "rcpt_rate",
	     .subject = sender,
	     .cost = 1 + bench_rand(b) % 5,
	     .nwin = 1,
	     .win = {{1000, 3600 * BENCH_SEC}}},
	};
	b->inflight++;
	store_batch(b->s, ops, 3, bench_wall_us(), bench_cb, q);
}

static void bench_stop_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	struct bench *b = w->data;
	b->stop = true;
}

static int bench_cmp(const void *x, const void *y)
{
	double a = *(const double *)x, c = *(const double *)y;
	return a < c ? -1 : a > c;
}

/* INFO commandstats, split into client commands and calls made by scripts */
struct bench_cmds {
	uint64_t client;  /* commands sent by clients (INFO, AUTH excluded) */
	uint64_t evalsha; /* of which EVALSHA */
	uint64_t inner;   /* commands run inside scripts (MGET, SET, SETRANGE, GET, DEL) */
	double usec;      /* microseconds Redis spent in EVALSHA (whole scripts) */
};

static int bench_cmdstats(const struct store_redis_url *u, struct bench_cmds *out)
{
	struct timeval tv = {2, 0};
	redisContext *c = u->kind == STORE_REDIS_UNIX
	                      ? redisConnectUnixWithTimeout(u->path, tv)
	                      : redisConnectWithTimeout(u->host[0].host, (int)u->host[0].port, tv);
	if (c == NULL || c->err) {
		if (c)
			redisFree(c);
		return -1;
	}
	if (u->password[0]) {
		redisReply *a = u->user[0] ? redisCommand(c, "AUTH %s %s", u->user, u->password)
		                           : redisCommand(c, "AUTH %s", u->password);
		if (a)
			freeReplyObject(a);
	}
	redisReply *r = redisCommand(c, "INFO commandstats");
	int rc = -1;
	if (r && r->type == REDIS_REPLY_STRING) {
		memset(out, 0, sizeof(*out));
		for (char *p = r->str; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
			char name[64];
			unsigned long long calls, usec;
			if (sscanf(p, "cmdstat_%63[^:]:calls=%llu,usec=%llu", name, &calls,
			           &usec) != 3)
				continue;
			if (strcmp(name, "info") == 0 || strcmp(name, "auth") == 0)
				continue;
			if (strcmp(name, "get") == 0 || strcmp(name, "mget") == 0 ||
			    strcmp(name, "set") == 0 || strcmp(name, "setrange") == 0 ||
			    strcmp(name, "del") == 0) {
				out->inner += calls;
				continue;
			}
			out->client += calls;
			if (strcmp(name, "evalsha") == 0) {
				out->evalsha = calls;
				out->usec = (double)usec;
			}
		}
		rc = 0;
	}
	if (r)
		freeReplyObject(r);
	redisFree(c);
	return rc;
}

static void bench_log(int level, const char *msg)
{
	if (level <= STORE_REDIS_LOG_WARN)
		fprintf(stderr, "store: %s\n", msg);
}

static int bench_run(struct bench *b, const struct store_redis_url *u, unsigned target, double secs)
{
	struct bench_cmds c0, c1;
	bool stats = u->kind != STORE_REDIS_CLUSTER && bench_cmdstats(u, &c0) == 0;
	b->target = target;
	b->stop = false;
	b->done = b->failed = 0;
	b->nlat = 0;
	ev_timer stop;
	ev_timer_init(&stop, bench_stop_cb, secs, 0.);
	stop.data = b;
	ev_timer_start(b->loop, &stop);
	double start = ev_time();
	for (unsigned i = 0; i < target; i++)
		bench_issue(b);
	while (!b->stop || b->inflight > 0)
		ev_run(b->loop, EVRUN_ONCE);
	double took = ev_time() - start;
	ev_timer_stop(b->loop, &stop);
	if (stats && bench_cmdstats(u, &c1) < 0)
		stats = false;
	qsort(b->lat, b->nlat, sizeof(*b->lat), bench_cmp);
	double sum = 0;
	for (size_t i = 0; i < b->nlat; i++)
		sum += b->lat[i];
	double p99 = b->nlat ? b->lat[b->nlat * 99 / 100] : 0;
	printf("in flight %3u: %8.0f batches/s  (%" PRIu64 " batches in %.1f s, mean %.3f ms, "
	       "p99 %.3f ms)",
	       target, (double)b->done / took, b->done, took,
	       b->nlat ? 1000 * sum / (double)b->nlat : 0, 1000 * p99);
	if (stats && b->done) {
		double d = (double)b->done;
		uint64_t ns = c1.evalsha - c0.evalsha;
		printf(
		    "\n               client commands/batch %.4f (EVALSHA %.4f), calls inside the "
		    "script/batch %.2f, Redis time per script %.1f us",
		    (double)(c1.client - c0.client) / d, (double)ns / d,
		    (double)(c1.inner - c0.inner) / d, ns ? (c1.usec - c0.usec) / (double)ns : 0);
	}
	printf("\n");
	return b->failed ? -1 : 0;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s URL [SECONDS [INFLIGHT ...]]\n", argv[0]);
		return 2;
	}
	double secs = argc > 2 ? atof(argv[2]) : 5;
	struct store_redis_url u;
	char err[256];
	if (store_redis_url_parse(argv[1], &u, err, sizeof(err)) < 0) {
		fprintf(stderr, "%s\n", err);
		return 2;
	}
	struct bench *b = calloc(1, sizeof(*b));
	if (b == NULL)
		return 1;
	b->lat = malloc(BENCH_MAX_LAT * sizeof(*b->lat));
	b->rng = 0x9e3779b97f4a7c15ULL ^ (uint64_t)bench_wall_us();
	for (unsigned i = 0; i < BENCH_SENDERS; i++)
		snprintf(b->senders[i], sizeof(b->senders[i]), "user%u@example.com", i);
	for (unsigned i = 0; i < BENCH_ADDRESSES; i++)
		snprintf(b->addrs[i], sizeof(b->addrs[i]), "10.%u.%u.%u", i / 65536, i / 256 % 256,
		         i % 256);
	b->loop = ev_loop_new(EVFLAG_AUTO);
	struct store_redis_opts o = {.url = argv[1], .command_timeout_ms = 2000, .log = bench_log};
	b->s = store_redis_open(b->loop, &o, err, sizeof(err));
	if (b->s == NULL || b->lat == NULL) {
		fprintf(stderr, "%s\n", b->s ? "out of memory" : err);
		return 1;
	}
	/* warm up: connect, load the script */
	int rc = bench_run(b, &u, 1, 0.3);
	printf("(warm-up above)\n");
	if (argc > 3) {
		for (int i = 3; i < argc && rc == 0; i++)
			rc = bench_run(b, &u, (unsigned)atoi(argv[i]), secs);
	} else {
		rc = bench_run(b, &u, 1, secs);
		if (rc == 0)
			rc = bench_run(b, &u, 64, secs);
	}
	struct store_redis_stats rs;
	store_redis_stats(b->s, &rs);
	printf("store: scripts %" PRIu64 " (EVAL %" PRIu64 ") carrying %" PRIu64 " sub-batches, "
	       "batches %" PRIu64 ", split %" PRIu64 ", noscript %" PRIu64 ", timeouts %" PRIu64
	       ", mismatches %" PRIu64 "\n",
	       rs.scripts, rs.evals, rs.groups, rs.batches, rs.split, rs.noscript, rs.timeouts,
	       rs.mismatches);
	b->s->be->close(b->s);
	ev_loop_destroy(b->loop);
	free(b->lat);
	free(b);
	return rc ? 1 : 0;
}
