/*
 * tests/integration/test_store_redis.c - cmocka tests of the Redis and
 * Redis Cluster store backends (cache/store_redis.c) against real
 * redis-server processes on loopback, driven from a libev loop.
 *
 * Run by tests/integration/test_store_redis.sh, which starts the servers
 * and passes them in the environment:
 *   PD_REDIS_PORT, PD_REDIS_SOCK  a plain server (TCP and unix socket)
 *   PD_AUTH_PORT, PD_AUTH_PASS    a server with requirepass
 *   PD_KILL_PORT                  a free port: this driver starts, kills and
 *                                 restarts its own server there
 *   PD_CLUSTER_PORTS              6 ports of a 3-master, 3-replica cluster
 *   PD_DIR                        the temp dir; every server's PID is in
 *                                 PD_DIR/<name>.pid (the wrapper's trap stops them)
 * Tests whose servers are not given are skipped.  PD_VERBOSE=1 prints the
 * store's log lines; PD_ONLY=PATTERN runs the matching tests only.
 *
 * Covers: the URL parser, CRC16 key slots, results identical to the
 * embedded store (store_memory.c) for a scripted random sequence (TCP, unix
 * socket + db, cluster with multi-slot batches), two stores sharing a limit
 * under concurrent batches, NOSCRIPT after SCRIPT FLUSH, wrong password,
 * Redis down at start / killed and restarted / stopped (SIGSTOP) under
 * load with each failure policy, durable writes (WAIT: STORE_EREPLICA
 * without a replica, never on the fallback), and on the cluster: exact
 * limits, a slot resharded during load (totals compared), a master
 * failover, and durable writes acknowledged by the replicas.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>
#include <hiredis/hiredis.h>

#include "cache/store.h"
#include "cache/store_redis.h"

#define SEC         ((int64_t)1000000)
#define MAX_LOG     8192
#define MAX_REQS    400000
#define CMD_TIMEOUT 200  /* ms, for the failure tests */
#define LAT_SLACK   0.15 /* s: loop latency allowed on top of the timeout */

/* ---- environment, time, logs ---- */

static const char *env(const char *name)
{
	const char *v = getenv(name);
	return v && v[0] ? v : NULL;
}

static int env_port(const char *name)
{
	const char *v = env(name);
	return v ? atoi(v) : 0;
}

static int64_t wall_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * SEC + ts.tv_nsec / 1000;
}

static double mono(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static char *logs[MAX_LOG];
static size_t nlogs;

static void log_cb(int level, const char *msg)
{
	if (env("PD_VERBOSE"))
		fprintf(stderr, "    [store log %d] %s\n", level, msg);
	if (nlogs < MAX_LOG)
		logs[nlogs++] = strdup(msg);
}

static void log_reset(void)
{
	for (size_t i = 0; i < nlogs; i++)
		free(logs[i]);
	nlogs = 0;
}

static size_t log_count(const char *needle)
{
	size_t c = 0;
	for (size_t i = 0; i < nlogs; i++)
		c += logs[i] && strstr(logs[i], needle) != NULL;
	return c;
}

/* ---- admin connections and servers ---- */

static redisContext *admin(int port)
{
	struct timeval tv = {2, 0};
	redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
	if (c == NULL || c->err) {
		if (c)
			redisFree(c);
		return NULL;
	}
	redisSetTimeout(c, tv);
	return c;
}

static redisReply *cmd(redisContext *c, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	redisReply *r = redisvCommand(c, fmt, ap);
	va_end(ap);
	return r;
}

static bool ping(int port)
{
	redisContext *c = admin(port);
	if (c == NULL)
		return false;
	redisReply *r = cmd(c, "PING");
	bool ok = r && r->type == REDIS_REPLY_STATUS;
	if (r)
		freeReplyObject(r);
	redisFree(c);
	return ok;
}

static unsigned long rnd_port(void)
{
	static unsigned long x;
	if (x == 0)
		x = (unsigned long)getpid() * 2654435761u + (unsigned long)time(NULL);
	x = x * 6364136223846793005ul + 1442695040888963407ul;
	return x >> 33;
}

static void sleep_s(double s)
{
	struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
	nanosleep(&ts, NULL);
}

static pid_t kill_pid;
static int kill_port_now;

/* something accepts connections on 127.0.0.1:port */
static bool port_busy(int port)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0)
		return true;
	bool busy = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 || errno != ECONNREFUSED;
	close(fd);
	return busy;
}

/*
 * The port of our own killable server: PD_KILL_PORT, or another free one
 * in 26000-27999 when something else (another test) took it meanwhile.
 */
static int kill_port(void)
{
	if (kill_port_now == 0)
		kill_port_now = env_port("PD_KILL_PORT");
	if (kill_pid == 0 && port_busy(kill_port_now)) {
		for (int i = 0; i < 200; i++) {
			int p = 26000 + (int)(rnd_port() % 2000);
			if (!port_busy(p) && !port_busy(p + 1)) {
				kill_port_now = p;
				break;
			}
		}
	}
	return kill_port_now;
}
static void pidfile_write(const char *name, pid_t pid)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/%s.pid", env("PD_DIR"), name);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fprintf(f, "%d\n", (int)pid);
	fclose(f);
}

static pid_t pidfile_read(const char *name)
{
	char path[512];
	int pid = 0;
	snprintf(path, sizeof(path), "%s/%s.pid", env("PD_DIR"), name);
	FILE *f = fopen(path, "r");
	if (f) {
		if (fscanf(f, "%d", &pid) != 1)
			pid = 0;
		fclose(f);
	}
	return (pid_t)pid;
}

/* start our own server on PD_KILL_PORT (recorded in PD_DIR/kill.pid) */
static void kill_srv_start(void)
{
	int port = kill_port();
	char ps[16], logf[512];
	snprintf(ps, sizeof(ps), "%d", port);
	snprintf(logf, sizeof(logf), "%s/kill.log", env("PD_DIR"));
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		int fd = open("/dev/null", O_RDWR);
		dup2(fd, 0);
		dup2(fd, 1);
		execlp("redis-server", "redis-server", "--port", ps, "--bind", "127.0.0.1",
		       "--save", "", "--appendonly", "no", "--daemonize", "no", "--dir",
		       env("PD_DIR"), "--logfile", logf, (char *)NULL);
		_exit(127);
	}
	kill_pid = pid;
	pidfile_write("kill", pid);
	for (int i = 0; i < 250 && !ping(port); i++)
		sleep_s(0.02);
	assert_true(ping(port));
}

static void kill_srv_signal(int sig)
{
	assert_true(kill_pid > 0);
	kill(kill_pid, sig);
	if (sig == SIGKILL || sig == SIGTERM) {
		waitpid(kill_pid, NULL, 0);
		kill_pid = 0;
	}
}

/* ---- running the loop ---- */

static bool run_until(struct ev_loop *loop, bool (*cond)(void *), void *arg, double timeout)
{
	double end = mono() + timeout;
	while (!cond(arg)) {
		if (mono() > end)
			return false;
		ev_run(loop, EVRUN_ONCE);
	}
	return true;
}

static bool never(void *arg)
{
	(void)arg;
	return false;
}

static void run_for(struct ev_loop *loop, double s)
{
	(void)run_until(loop, never, NULL, s);
}

struct cap {
	int calls;
	enum store_status st;
	size_t n;
	struct store_result res[STORE_MAX_BATCH];
	uint8_t (*vals)[STORE_MAX_VALUE]; /* NULL, or where GET values are copied */
};

static void cap_cb(void *arg, enum store_status st, const struct store_result *res, size_t n)
{
	struct cap *c = arg;
	c->calls++;
	c->st = st;
	c->n = n;
	if (res && n <= STORE_MAX_BATCH) {
		memcpy(c->res, res, n * sizeof(*res));
		for (size_t i = 0; i < n; i++) {
			if (res[i].val && c->vals && res[i].vlen <= STORE_MAX_VALUE) {
				memcpy(c->vals[i], res[i].val, res[i].vlen);
				c->res[i].val = c->vals[i];
			} else if (res[i].val) {
				c->res[i].val = ""; /* only valid during the callback */
			}
		}
	}
}

static bool cap_done(void *arg)
{
	return ((struct cap *)arg)->calls > 0;
}

static void run_batch(struct ev_loop *loop, struct store *s, const struct store_op *ops, size_t n,
                      int64_t now, struct cap *c)
{
	uint8_t(*vals)[STORE_MAX_VALUE] = c->vals;
	memset(c, 0, sizeof(*c));
	c->vals = vals;
	assert_int_equal(store_batch(s, ops, n, now, cap_cb, c), 0);
	assert_true(run_until(loop, cap_done, c, 10));
	assert_int_equal(c->calls, 1);
}

static struct store *open_redis(struct ev_loop *loop, const char *url, enum store_redis_failure f,
                                struct store *fallback, unsigned cmd_ms)
{
	char err[256];
	struct store_redis_opts o = {
	    .url = url,
	    .connect_timeout_ms = 500,
	    .command_timeout_ms = cmd_ms,
	    .failure = f,
	    .fallback = fallback,
	    .log = log_cb,
	};
	struct store *s = store_redis_open(loop, &o, err, sizeof(err));
	if (s == NULL)
		fail_msg("store_redis_open(%s): %s", url, err);
	return s;
}

static struct store *open_memory(int64_t now)
{
	char err[256];
	struct store_memory_opts mo = {0};
	struct store *m = store_memory_open(&mo, now, err, sizeof(err));
	if (m == NULL)
		fail_msg("store_memory_open: %s", err);
	return m;
}

/* Wait until the store answers from Redis (a PEEK on a throw-away key). */
static void wait_ready(struct ev_loop *loop, struct store *s, double timeout)
{
	struct store_op op = {.kind = STORE_PEEK,
	                      .rule = "ready",
	                      .subject = "probe",
	                      .cost = 1,
	                      .nwin = 1,
	                      .win = {{10, SEC}}};
	double end = mono() + timeout;
	struct cap c = {0};
	for (;;) {
		run_batch(loop, s, &op, 1, wall_us(), &c);
		if (c.st == STORE_OK)
			return;
		if (mono() > end)
			fail_msg("redis store not ready after %.1f s", timeout);
		run_for(loop, 0.05);
	}
}

static void url_of(char *buf, size_t sz, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void url_of(char *buf, size_t sz, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sz, fmt, ap);
	va_end(ap);
}

static void cluster_url(char *buf, size_t sz)
{
	/* two seeds: the driver finds the rest from CLUSTER SLOTS */
	int p1 = 0, p2 = 0;
	sscanf(env("PD_CLUSTER_PORTS"), "%d,%d", &p1, &p2);
	url_of(buf, sz, "redis-cluster://127.0.0.1:%d,127.0.0.1:%d", p1, p2);
}

static unsigned run_id(void)
{
	return (unsigned)(wall_us() % 1000000007);
}

/* ---- URL parser and key slots (no server) ---- */

static void test_url_parse(void **state)
{
	(void)state;
	struct store_redis_url u;
	char err[256], out[512];

	assert_int_equal(store_redis_url_parse("redis://127.0.0.1:6380/3", &u, err, sizeof(err)),
	                 0);
	assert_int_equal(u.kind, STORE_REDIS_TCP);
	assert_int_equal(u.nhosts, 1);
	assert_string_equal(u.host[0].host, "127.0.0.1");
	assert_int_equal(u.host[0].port, 6380);
	assert_int_equal(u.db, 3);

	assert_int_equal(store_redis_url_parse("redis://localhost", &u, err, sizeof(err)), 0);
	assert_int_equal(u.host[0].port, 6379);
	assert_int_equal(u.db, 0);

	assert_int_equal(
	    store_redis_url_parse("redis://bob:s%40cr%2Ft@[::1]:7000/0", &u, err, sizeof(err)), 0);
	assert_string_equal(u.user, "bob");
	assert_string_equal(u.password, "s@cr/t");
	assert_string_equal(u.host[0].host, "::1");
	assert_int_equal(u.host[0].port, 7000);
	store_redis_url_format(&u, out, sizeof(out));
	assert_string_equal(out, "redis://bob:***@[::1]:7000/0");

	assert_int_equal(store_redis_url_parse("redis://:pw@h:1", &u, err, sizeof(err)), 0);
	assert_string_equal(u.user, "");
	assert_string_equal(u.password, "pw");

	assert_int_equal(
	    store_redis_url_parse("redis+unix:///run/redis/r.sock?db=5", &u, err, sizeof(err)), 0);
	assert_int_equal(u.kind, STORE_REDIS_UNIX);
	assert_string_equal(u.path, "/run/redis/r.sock");
	assert_int_equal(u.db, 5);
	store_redis_url_format(&u, out, sizeof(out));
	assert_string_equal(out, "redis+unix:///run/redis/r.sock?db=5");

	assert_int_equal(
	    store_redis_url_parse("redis+unix://u:p@/tmp/x.sock", &u, err, sizeof(err)), 0);
	assert_string_equal(u.password, "p");
	assert_string_equal(u.path, "/tmp/x.sock");

	assert_int_equal(store_redis_url_parse("redis-cluster://u:p@10.0.0.1:7000,10.0.0.2:7001,"
	                                       "[::1]:7002",
	                                       &u, err, sizeof(err)),
	                 0);
	assert_int_equal(u.kind, STORE_REDIS_CLUSTER);
	assert_int_equal(u.nhosts, 3);
	assert_int_equal(u.host[2].port, 7002);
	store_redis_url_format(&u, out, sizeof(out));
	assert_string_equal(out, "redis-cluster://u:***@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002");

	static const struct {
		const char *url, *msg;
	} bad[] = {
	    {"", "empty"},
	    {"http://x", "must start with"},
	    {"rediss://h:1", "TLS"},
	    {"redis://h:0", "bad port"},
	    {"redis://h:65536", "bad port"},
	    {"redis://h:12x", "bad port"},
	    {"redis://h:1/x", "bad database"},
	    {"redis://h:1,h:2", "redis-cluster"},
	    {"redis://::1:6379", "brackets"},
	    {"redis://[::1", "without ']'"},
	    {"redis://user@h:1", "without a password"},
	    {"redis://u:@h:1", "empty password"},
	    {"redis://:pa%zzss@h", "bad %-escape"},
	    {"redis://:pass%4@h", "truncated"},
	    {"redis://:pa/ss@h", "'@' after"},
	    {"redis://", "no host"},
	    {"redis+unix://h/x.sock", "takes no host"},
	    {"redis+unix://", "no socket path"},
	    {"redis+unix:///x.sock?foo=1", "only db=N"},
	    {"redis-cluster://h:1,h:2/3", "only database 0"},
	    {"redis-cluster://h:1,,h:2", "no host"},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err[0] = '\0';
		if (store_redis_url_parse(bad[i].url, &u, err, sizeof(err)) == 0)
			fail_msg("accepted %s", bad[i].url);
		if (strstr(err, bad[i].msg) == NULL)
			fail_msg("%s: error \"%s\" lacks \"%s\"", bad[i].url, err, bad[i].msg);
	}
	/* the password never shows in an error */
	static const char *const secret[] = {
	    "redis://:TopSecret@h:99999", "redis://u:TopSecret@h:1/x", "redis://u:TopSecret%zz@h",
	    "redis://u:TopSecret@::1:5", "redis://u:Top/Secret@h"};
	for (size_t i = 0; i < sizeof(secret) / sizeof(secret[0]); i++) {
		assert_int_equal(store_redis_url_parse(secret[i], &u, err, sizeof(err)), -1);
		if (strstr(err, "Secret"))
			fail_msg("%s: error shows the password: %s", secret[i], err);
	}

	enum store_redis_failure f;
	assert_int_equal(store_redis_failure_parse("local", &f), 0);
	assert_int_equal(f, STORE_REDIS_FAIL_LOCAL);
	assert_int_equal(store_redis_failure_parse("closed", &f), 0);
	assert_int_equal(f, STORE_REDIS_FAIL_CLOSED);
	assert_int_equal(store_redis_failure_parse("maybe", &f), -1);

	/* open refuses bad options */
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct store_redis_opts o = {.url = "redis://127.0.0.1:1/0",
	                             .failure = STORE_REDIS_FAIL_LOCAL};
	assert_null(store_redis_open(loop, &o, err, sizeof(err)));
	assert_non_null(strstr(err, "local"));
	ev_loop_destroy(loop);
}

static void test_keyslot(void **state)
{
	(void)state;
	/* values from `redis-cli cluster keyslot KEY` (Redis 7.0) */
	static const struct {
		const char *key;
		unsigned slot;
	} known[] = {
	    {"foo", 12182},
	    {"bar", 5061},
	    {"hello", 866},
	    {"somekey", 11058},
	    {"{user1000}.following", 3443},
	    {"{user1000}.followers", 3443},
	    {"user1000", 3443},
	    {"foo{}{bar}", 8363},
	    {"foo{{bar}}zap", 4015},
	    {"foo{bar}{zap}", 5061},
	    {"pd:{alice@example.com}:per_sender", 0}, /* filled below: same as the subject */
	    {"", 0},
	    {"123456789", 12739}, /* CRC-16/XMODEM check value 0x31C3 */
	};
	for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
		unsigned want = known[i].slot;
		if (strncmp(known[i].key, "pd:", 3) == 0)
			want = store_redis_keyslot("alice@example.com", 17);
		assert_int_equal(store_redis_keyslot(known[i].key, strlen(known[i].key)), want);
	}
}

/* ---- results identical to the embedded store ---- */

struct rule_cfg {
	const char *name;
	uint8_t nwin;
	struct gcra_window win[STORE_MAX_WINDOWS];
};

static const struct rule_cfg rules_a[] = {
    {"per_second", 2, {{10, SEC}, {50, 60 * SEC}}},
    {"burst", 1, {{3, 10 * SEC}}},
    {"hourly", 3, {{7, 3600 * SEC}, {20, 86400 * SEC}, {1000, 7 * 86400 * SEC}}},
    {"odd", 2, {{1000, 1 * SEC}, {999983, 86400 * SEC}}},
};
/* "odd" with other limits: a remainder >= limit left by the larger limit */
static const struct rule_cfg rule_odd_b = {"odd", 2, {{3, 1 * SEC}, {7, 86400 * SEC}}};

static uint64_t rnd_state;

static uint64_t rnd(void)
{
	rnd_state ^= rnd_state >> 12;
	rnd_state ^= rnd_state << 25;
	rnd_state ^= rnd_state >> 27;
	return rnd_state * 0x2545f4914f6cdd1dULL;
}

static unsigned rnd_n(unsigned n)
{
	return (unsigned)(rnd() % n);
}

static void compare_results(unsigned bi, const struct store_op *ops, size_t n, const struct cap *m,
                            const struct cap *r)
{
	if (m->st != r->st || m->n != r->n)
		fail_msg("batch %u: status %d/%d, n %zu/%zu (memory/redis)", bi, m->st, r->st, m->n,
		         r->n);
	for (size_t i = 0; i < n && m->st == STORE_OK; i++) {
		const struct store_result *a = &m->res[i], *b = &r->res[i];
		bool same = a->conform == b->conform && a->committed == b->committed &&
		            a->window == b->window && a->retry_us == b->retry_us;
		for (unsigned k = 0; k < STORE_MAX_WINDOWS; k++)
			same = same && a->used[k] == b->used[k] &&
			       a->empty_in_us[k] == b->empty_in_us[k];
		same = same && a->found == b->found && a->vlen == b->vlen &&
		       (a->vlen == 0 || memcmp(a->val, b->val, a->vlen) == 0) &&
		       (a->val == NULL) == (b->val == NULL);
		if (!same)
			fail_msg("batch %u op %zu (kind %d %s/%s cost %" PRIu64 "): memory "
			         "conform %d committed %d window %d retry %" PRIu64 " used %" PRIu64
			         ",%" PRIu64 " empty %" PRIu64 ",%" PRIu64
			         " / redis conform %d committed "
			         "%d window %d retry %" PRIu64 " used %" PRIu64 ",%" PRIu64
			         " empty %" PRIu64 ",%" PRIu64,
			         bi, i, ops[i].kind, ops[i].rule, ops[i].subject, ops[i].cost,
			         a->conform, a->committed, a->window, a->retry_us, a->used[0],
			         a->used[1], a->empty_in_us[0], a->empty_in_us[1], b->conform,
			         b->committed, b->window, b->retry_us, b->used[0], b->used[1],
			         b->empty_in_us[0], b->empty_in_us[1]);
	}
}

static void mem_cb(void *arg, enum store_status st, const struct store_result *res, size_t n)
{
	cap_cb(arg, st, res, n);
}

static void make_op(struct store_op *op, enum store_op_kind kind, bool refuse, const char *rule,
                    const char *subj, uint64_t cost, const struct rule_cfg *rc)
{
	memset(op, 0, sizeof(*op));
	op->kind = kind;
	op->refuse = refuse;
	op->rule = rule;
	op->subject = subj;
	op->cost = cost;
	op->nwin = rc->nwin;
	memcpy(op->win, rc->win, sizeof(op->win));
}

/* a GET, PUT or DEL of a blob of one of two namespaces */
static void make_kv(struct store_op *op, uint8_t *buf, const char *subj)
{
	static const char *const ns[] = {"@flag", "@profile"};
	memset(op, 0, sizeof(*op));
	unsigned k = rnd_n(10);
	op->kind = k < 4 ? STORE_GET : k < 8 ? STORE_PUT : STORE_DEL;
	op->rule = ns[rnd_n(2)];
	op->subject = subj;
	if (op->kind == STORE_PUT) {
		unsigned l = rnd_n(20);
		op->vlen = l == 0 ? 0 : l == 1 ? STORE_MAX_VALUE : rnd_n(200);
		for (size_t i = 0; i < op->vlen; i++)
			buf[i] = (uint8_t)rnd(); /* binary, with NULs and ':' */
		op->val = buf;
		unsigned t = rnd_n(4);
		op->ttl_us = t == 0   ? 0
		             : t == 1 ? (uint64_t)rnd_n(400000)
		                      : (uint64_t)rnd_n(100) * SEC;
	}
}

static unsigned compare_run(const char *url, unsigned nbatches, unsigned seed, bool limit_changes)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	int64_t now = wall_us();
	struct store *m = open_memory(now);
	struct store *r = open_redis(loop, url, STORE_REDIS_FAIL_CLOSED, NULL, 3000);
	wait_ready(loop, r, 5);
	rnd_state = 0x9e3779b97f4a7c15ULL ^ seed;

	char subj[8][64];
	unsigned id = run_id();
	for (unsigned i = 0; i < 8; i++)
		snprintf(subj[i], sizeof(subj[i]), "user%u-%u@example.com", i, id);
	static struct cap cm, cr;
	struct store_op ops[STORE_MAX_BATCH];
	static uint8_t vbuf[STORE_MAX_BATCH][STORE_MAX_VALUE];
	static uint8_t mvals[STORE_MAX_BATCH][STORE_MAX_VALUE],
	    rvals[STORE_MAX_BATCH][STORE_MAX_VALUE];
	cr.vals = rvals;
	unsigned refused = 0, bi = 0, found = 0;

	/* hand-written cases first */
	const struct rule_cfg *ps = &rules_a[0], *burst = &rules_a[1];
	struct {
		size_t n;
		struct store_op ops[6];
	} hand[16];
	memset(hand, 0, sizeof(hand));
	size_t nh = 0;
	/* 1: three takes of the same key in one batch, the third over the limit */
	hand[nh].n = 4;
	for (int i = 0; i < 3; i++)
		make_op(&hand[nh].ops[i], STORE_TAKE, false, "burst", subj[0], 1, burst);
	make_op(&hand[nh].ops[3], STORE_TAKE, false, "burst", subj[0], 1, burst);
	nh++;
	/* 2: refused batch with a refund and a clear of other keys in it */
	hand[nh].n = 4;
	make_op(&hand[nh].ops[0], STORE_TAKE, true, "per_second", subj[1], 4, ps);
	make_op(&hand[nh].ops[1], STORE_REFUND, false, "per_second", subj[2], 1, ps);
	make_op(&hand[nh].ops[2], STORE_TAKE, true, "burst", subj[0], 1, burst);
	make_op(&hand[nh].ops[3], STORE_CLEAR, false, "per_second", subj[3], 0, ps);
	nh++;
	/* 3: cost above the limit, cost 0, PEEK that refuses */
	hand[nh].n = 4;
	make_op(&hand[nh].ops[0], STORE_TAKE, false, "burst", subj[4], 4, burst);
	make_op(&hand[nh].ops[1], STORE_TAKE, false, "burst", subj[4], 0, burst);
	make_op(&hand[nh].ops[2], STORE_PEEK, true, "burst", subj[0], 1, burst);
	make_op(&hand[nh].ops[3], STORE_TAKE, false, "per_second", subj[5], 2, ps);
	nh++;
	/* 4: clear then take in one batch; refund below empty */
	hand[nh].n = 3;
	make_op(&hand[nh].ops[0], STORE_CLEAR, false, "burst", subj[0], 0, burst);
	make_op(&hand[nh].ops[1], STORE_TAKE, true, "burst", subj[0], 2, burst);
	make_op(&hand[nh].ops[2], STORE_REFUND, false, "burst", subj[6], 5, burst);
	nh++;
	/* 5-6: "odd" with a big limit, then with a small one (remainder >= limit) */
	hand[nh].n = 2;
	make_op(&hand[nh].ops[0], STORE_TAKE, false, "odd", subj[7], 333, &rules_a[3]);
	make_op(&hand[nh].ops[1], STORE_TAKE, false, "odd", subj[7], 1, &rules_a[3]);
	nh++;
	hand[nh].n = 2;
	make_op(&hand[nh].ops[0], STORE_PEEK, false, "odd", subj[7], 1, &rule_odd_b);
	make_op(&hand[nh].ops[1], STORE_TAKE, false, "odd", subj[7], 1, &rule_odd_b);
	nh++; /* 7-8: a rate op on a namespace, a blob op on a rule: both EINVAL */
	hand[nh].n = 1;
	make_op(&hand[nh].ops[0], STORE_TAKE, false, "@flag", subj[0], 1, burst);
	nh++;
	hand[nh].n = 2;
	make_op(&hand[nh].ops[0], STORE_TAKE, false, "burst", subj[0], 1, burst);
	memset(&hand[nh].ops[1], 0, sizeof(hand[nh].ops[1]));
	hand[nh].ops[1].kind = STORE_GET;
	hand[nh].ops[1].rule = "burst";
	hand[nh].ops[1].subject = subj[0];
	nh++;
	/* 9: put, get in the same batch, a refused TAKE: the blob ops apply anyway */
	hand[nh].n = 4;
	memset(&hand[nh].ops[0], 0, 2 * sizeof(hand[nh].ops[0]));
	hand[nh].ops[0].kind = STORE_PUT;
	hand[nh].ops[0].rule = "@flag";
	hand[nh].ops[0].subject = subj[1];
	hand[nh].ops[0].val = "locked:by:admin";
	hand[nh].ops[0].vlen = 15;
	hand[nh].ops[1].kind = STORE_GET;
	hand[nh].ops[1].rule = "@flag";
	hand[nh].ops[1].subject = subj[1];
	make_op(&hand[nh].ops[2], STORE_TAKE, true, "burst", subj[0], 9, burst);
	hand[nh].ops[3] = hand[nh].ops[1];
	nh++;
	for (size_t h = 0; h < nh; h++, bi++) {
		memset(&cm, 0, sizeof(cm));
		cm.vals = mvals;
		store_batch(m, hand[h].ops, hand[h].n, now, mem_cb, &cm);
		run_batch(loop, r, hand[h].ops, hand[h].n, now, &cr);
		compare_results(bi, hand[h].ops, hand[h].n, &cm, &cr);
		now += 1000;
	}

	for (unsigned b = 0; b < nbatches; b++, bi++) {
		size_t n = 1 + rnd_n(6);
		for (size_t i = 0; i < n; i++) {
			if (rnd_n(100) < 12) {
				make_kv(&ops[i], vbuf[i], subj[rnd_n(8)]);
				continue;
			}
			unsigned ri = rnd_n(4);
			const struct rule_cfg *rc = &rules_a[ri];
			if (ri == 3 && limit_changes && rnd_n(2))
				rc = &rule_odd_b;
			unsigned k = rnd_n(100);
			enum store_op_kind kind = k < 55   ? STORE_TAKE
			                          : k < 70 ? STORE_PEEK
			                          : k < 88 ? STORE_REFUND
			                                   : STORE_CLEAR;
			unsigned c = rnd_n(100);
			uint64_t cost = c < 5    ? 0
			                : c < 70 ? 1
			                : c < 97 ? 2 + rnd_n(4)
			                         : rc->win[0].limit + 1;
			make_op(&ops[i], kind, rnd_n(2) == 0, rc->name, subj[rnd_n(8)], cost, rc);
		}
		memset(&cm, 0, sizeof(cm));
		cm.vals = mvals;
		store_batch(m, ops, n, now, mem_cb, &cm);
		run_batch(loop, r, ops, n, now, &cr);
		compare_results(bi, ops, n, &cm, &cr);
		for (size_t i = 0; i < n; i++)
			found += ops[i].kind == STORE_GET && cm.res[i].found;
		for (size_t i = 0; i < n; i++)
			if (ops[i].kind == STORE_TAKE && cm.res[i].conform &&
			    !cm.res[i].committed) {
				refused++;
				break;
			}
		unsigned t = rnd_n(100);
		now += t < 30   ? 0
		       : t < 95 ? (int64_t)rnd_n(300000)
		       : t < 99 ? 30 * SEC
		                : 2 * 3600 * SEC;
	}

	struct store_redis_stats rs;
	store_redis_stats(r, &rs);
	if (env("PD_VERBOSE"))
		fprintf(stderr,
		        "    %s: %u batches, %u refused with a committable TAKE, %u GETs found a "
		        "blob, scripts %" PRIu64 ", split %" PRIu64 ", compensations %" PRIu64 "\n",
		        url, bi, refused, found, rs.scripts, rs.split, rs.compensations);
	assert_int_equal(rs.unavail, 0);
	assert_int_equal(rs.timeouts, 0);
	assert_int_equal(rs.mismatches, 0);
	assert_true(found > 10);
	r->be->close(r);
	m->be->close(m);
	ev_loop_destroy(loop);
	return refused;
}

static void test_compare_tcp(void **state)
{
	(void)state;
	char url[256];
	url_of(url, sizeof(url), "redis://127.0.0.1:%d/1", env_port("PD_REDIS_PORT"));
	assert_true(compare_run(url, 3000, 1, true) > 10);
}

static void test_compare_unix(void **state)
{
	(void)state;
	char url[512];
	url_of(url, sizeof(url), "redis+unix://%s?db=2", env("PD_REDIS_SOCK"));
	unsigned before;
	redisContext *c = admin(env_port("PD_REDIS_PORT"));
	assert_non_null(c);
	redisReply *r = cmd(c, "SELECT 2");
	freeReplyObject(r);
	r = cmd(c, "DBSIZE");
	before = (unsigned)r->integer;
	freeReplyObject(r);
	compare_run(url, 500, 2, true);
	r = cmd(c, "DBSIZE");
	assert_true((unsigned)r->integer > before); /* the keys went to db 2 */
	freeReplyObject(r);
	redisFree(c);
}

static void test_compare_cluster(void **state)
{
	(void)state;
	char url[256];
	cluster_url(url, sizeof(url));
	/*
	 * No limit changes here: after one, a TAKE normalizes a remainder left
	 * by the larger limit, and the compensating REFUND of a refused
	 * multi-slot batch cannot restore the un-normalized form (store_redis.h).
	 */
	assert_true(compare_run(url, 3000, 3, false) > 10);
}

/* ---- many batches in flight: merged scripts, results still the embedded store's ---- */

struct rcap {
	int calls;
	enum store_status st;
	size_t n;
	struct store_result res[8];
	uint64_t vh[8]; /* FNV-1a of a GET's value (the value is gone after the callback) */
};

static uint64_t fnv64(const void *p, size_t n)
{
	uint64_t h = 14695981039346656037ull;
	for (size_t i = 0; i < n; i++)
		h = (h ^ ((const uint8_t *)p)[i]) * 1099511628211ull;
	return h;
}

static void rcap_cb(void *arg, enum store_status st, const struct store_result *res, size_t n)
{
	struct rcap *c = arg;
	c->calls++;
	c->st = st;
	c->n = n;
	for (size_t i = 0; res && i < n && i < 8; i++) {
		c->res[i] = res[i];
		c->vh[i] = res[i].val ? fnv64(res[i].val, res[i].vlen) : 0;
		c->res[i].val = res[i].val ? "" : NULL;
	}
}

static unsigned rcap_pending;

static void rcap_cb_count(void *arg, enum store_status st, const struct store_result *res, size_t n)
{
	rcap_cb(arg, st, res, n);
	rcap_pending--;
}

static bool rcap_all(void *arg)
{
	(void)arg;
	return rcap_pending == 0;
}

static void rcap_compare(unsigned bi, const struct store_op *ops, const struct rcap *m,
                         const struct rcap *r)
{
	if (r->calls != 1 || m->st != r->st || m->n != r->n)
		fail_msg("batch %u: calls %d, status %d/%d, n %zu/%zu (memory/redis)", bi, r->calls,
		         m->st, r->st, m->n, r->n);
	for (size_t i = 0; i < m->n && m->st == STORE_OK; i++) {
		const struct store_result *a = &m->res[i], *b = &r->res[i];
		bool same = a->conform == b->conform && a->committed == b->committed &&
		            a->window == b->window && a->retry_us == b->retry_us &&
		            a->found == b->found && a->vlen == b->vlen && m->vh[i] == r->vh[i] &&
		            (a->val == NULL) == (b->val == NULL);
		for (unsigned k = 0; k < STORE_MAX_WINDOWS; k++)
			same = same && a->used[k] == b->used[k] &&
			       a->empty_in_us[k] == b->empty_in_us[k];
		if (!same)
			fail_msg(
			    "batch %u op %zu (kind %d %s/%s cost %" PRIu64 "): memory conform %d "
			    "committed %d window %d retry %" PRIu64 " used %" PRIu64 ",%" PRIu64
			    " empty %" PRIu64 ",%" PRIu64 " found %d / redis conform %d committed "
			    "%d window %d retry %" PRIu64 " used %" PRIu64 ",%" PRIu64
			    " empty %" PRIu64 ",%" PRIu64 " found %d",
			    bi, i, ops[i].kind, ops[i].rule, ops[i].subject, ops[i].cost,
			    a->conform, a->committed, a->window, a->retry_us, a->used[0],
			    a->used[1], a->empty_in_us[0], a->empty_in_us[1], a->found, b->conform,
			    b->committed, b->window, b->retry_us, b->used[0], b->used[1],
			    b->empty_in_us[0], b->empty_in_us[1], b->found);
	}
}

#define MERGE_MAX 48

/*
 * Rounds of up to MERGE_MAX batches issued at once (so that they ride in
 * few scripts), `now` non-decreasing; the embedded store runs the same
 * batches in the same order.  one_subject: every op of a batch on one
 * subject (one slot: no compensation in a cluster).
 */
static void merged_run(const char *url, unsigned rounds, unsigned seed, bool one_subject,
                       bool limit_changes)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	int64_t now = wall_us();
	struct store *m = open_memory(now);
	struct store *r = open_redis(loop, url, STORE_REDIS_FAIL_CLOSED, NULL, 5000);
	wait_ready(loop, r, 5);
	rnd_state = 0x51ed270b27a0ull ^ seed;
	char subj[8][64];
	unsigned id = run_id();
	for (unsigned i = 0; i < 8; i++)
		snprintf(subj[i], sizeof(subj[i]), "merge%u-%u@example.com", i, id);
	static struct store_op ops[MERGE_MAX][6];
	static size_t nops[MERGE_MAX];
	static uint8_t vbuf[MERGE_MAX][6][STORE_MAX_VALUE];
	static struct rcap cm[MERGE_MAX], cr[MERGE_MAX];
	struct store_redis_stats rs0, rs;
	store_redis_stats(r, &rs0);
	unsigned bi = 0, refused = 0;
	for (unsigned round = 0; round < rounds; round++) {
		unsigned nb = 1 + rnd_n(MERGE_MAX);
		int64_t t[MERGE_MAX];
		for (unsigned b = 0; b < nb; b++) {
			size_t n = 1 + rnd_n(6);
			unsigned s0 = rnd_n(8);
			for (size_t i = 0; i < n; i++) {
				const char *sj = subj[one_subject ? s0 : rnd_n(8)];
				if (rnd_n(100) < 12) {
					make_kv(&ops[b][i], vbuf[b][i], sj);
					continue;
				}
				unsigned ri = rnd_n(4);
				const struct rule_cfg *rc = &rules_a[ri];
				if (ri == 3 && limit_changes && rnd_n(2))
					rc = &rule_odd_b;
				unsigned k = rnd_n(100);
				enum store_op_kind kind = k < 55   ? STORE_TAKE
				                          : k < 70 ? STORE_PEEK
				                          : k < 88 ? STORE_REFUND
				                                   : STORE_CLEAR;
				unsigned c = rnd_n(100);
				uint64_t cost = c < 5    ? 0
				                : c < 70 ? 1
				                : c < 97 ? 2 + rnd_n(4)
				                         : rc->win[0].limit + 1;
				make_op(&ops[b][i], kind, rnd_n(2) == 0, rc->name, sj, cost, rc);
			}
			nops[b] = n;
			t[b] = now;
			now += rnd_n(3) ? 0 : (int64_t)rnd_n(50000);
		}
		memset(cm, 0, sizeof(cm));
		memset(cr, 0, sizeof(cr));
		rcap_pending = nb;
		for (unsigned b = 0; b < nb; b++) {
			store_batch(m, ops[b], nops[b], t[b], rcap_cb, &cm[b]);
			assert_int_equal(
			    store_batch(r, ops[b], nops[b], t[b], rcap_cb_count, &cr[b]), 0);
		}
		assert_true(run_until(loop, rcap_all, NULL, 10));
		for (unsigned b = 0; b < nb; b++, bi++) {
			rcap_compare(bi, ops[b], &cm[b], &cr[b]);
			for (size_t i = 0; i < nops[b]; i++)
				if (ops[b][i].kind == STORE_TAKE && cm[b].res[i].conform &&
				    !cm[b].res[i].committed) {
					refused++;
					break;
				}
		}
		unsigned tt = rnd_n(100);
		now += tt < 50 ? (int64_t)rnd_n(300000) : tt < 97 ? 20 * SEC : 2 * 3600 * SEC;
	}
	run_for(loop, 0.05);
	store_redis_stats(r, &rs);
	uint64_t scripts = rs.scripts - rs0.scripts, groups = rs.groups - rs0.groups;
	if (env("PD_VERBOSE"))
		fprintf(stderr,
		        "    merged %s: %u batches (%u refused with a committable TAKE) in %" PRIu64
		        " scripts carrying %" PRIu64 " groups, split %" PRIu64
		        ", mismatches %" PRIu64 "\n",
		        url, bi, refused, scripts, groups, rs.split - rs0.split, rs.mismatches);
	assert_int_equal(rs.unavail, 0);
	assert_int_equal(rs.mismatches, 0); /* script / gcra.c disagreements */
	assert_true(groups > 2 * scripts);
	assert_true(refused > 5);
	r->be->close(r);
	m->be->close(m);
	ev_loop_destroy(loop);
}

static void test_merged_tcp(void **state)
{
	(void)state;
	char url[256];
	url_of(url, sizeof(url), "redis://127.0.0.1:%d/4", env_port("PD_REDIS_PORT"));
	merged_run(url, 150, 11, false, true);
}

static void test_merged_cluster(void **state)
{
	(void)state;
	char url[256];
	cluster_url(url, sizeof(url));
	merged_run(url, 150, 12, true, false);
}

/* a clock that goes back between batches in flight: scripts split there, results stand */
static void test_merged_clock_back(void **state)
{
	(void)state;
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	char url[256];
	url_of(url, sizeof(url), "redis://127.0.0.1:%d/4", env_port("PD_REDIS_PORT"));
	int64_t now = wall_us();
	struct store *m = open_memory(now);
	struct store *r = open_redis(loop, url, STORE_REDIS_FAIL_CLOSED, NULL, 5000);
	wait_ready(loop, r, 5);
	char subj[64];
	snprintf(subj, sizeof(subj), "back-%u", run_id());
	struct store_op op;
	make_op(&op, STORE_TAKE, true, "burst", subj, 1, &rules_a[1]);
	static struct rcap cm[10], cr[10];
	memset(cm, 0, sizeof(cm));
	memset(cr, 0, sizeof(cr));
	struct store_redis_stats rs0, rs;
	store_redis_stats(r, &rs0);
	rcap_pending = 10;
	for (int i = 0; i < 10; i++) {
		int64_t t = now + (i % 2 ? 0 : 2 * SEC); /* 2 s ahead, back, ahead, ... */
		store_batch(m, &op, 1, t, rcap_cb, &cm[i]);
		store_batch(r, &op, 1, t, rcap_cb_count, &cr[i]);
	}
	assert_true(run_until(loop, rcap_all, NULL, 10));
	for (unsigned i = 0; i < 10; i++)
		rcap_compare(i, &op, &cm[i], &cr[i]);
	store_redis_stats(r, &rs);
	assert_true(rs.scripts - rs0.scripts >= 5);
	assert_int_equal(rs.mismatches, 0);
	r->be->close(r);
	m->be->close(m);
	ev_loop_destroy(loop);
}

/* ---- list() ---- */

#define LIST_MAX 4096

struct lres {
	unsigned n, stop_after;
	bool done;
	enum store_status st;
	char subj[LIST_MAX][64];
	struct store_result res[LIST_MAX];
	uint64_t vh[LIST_MAX];
	const char *only; /* keep subjects containing this */
};

static bool lres_cb(void *arg, const char *subject, const struct store_result *res)
{
	struct lres *L = arg;
	assert_false(L->done);
	if (L->only && strstr(subject, L->only) == NULL)
		return true;
	if (L->n < LIST_MAX) {
		snprintf(L->subj[L->n], sizeof(L->subj[0]), "%s", subject);
		L->res[L->n] = *res;
		L->vh[L->n] = res->val ? fnv64(res->val, res->vlen) : 0;
		L->res[L->n].val = NULL;
	}
	L->n++;
	return L->stop_after == 0 || L->n < L->stop_after;
}

static void lres_done(void *arg, enum store_status st)
{
	struct lres *L = arg;
	assert_false(L->done);
	L->done = true;
	L->st = st;
}

static bool lres_finished(void *arg)
{
	return ((struct lres *)arg)->done;
}

static int lres_find(const struct lres *L, const char *subj)
{
	for (unsigned i = 0; i < L->n && i < LIST_MAX; i++)
		if (strcmp(L->subj[i], subj) == 0)
			return (int)i;
	return -1;
}

static void list_run(struct ev_loop *loop, struct store *s, const char *name,
                     const struct rule_cfg *rc, int64_t now, struct lres *L)
{
	const char *only = L->only;
	unsigned stop = L->stop_after;
	memset(L, 0, sizeof(*L));
	L->only = only;
	L->stop_after = stop;
	assert_int_equal(s->be->list(s, name, rc ? rc->win : NULL, rc ? rc->nwin : 0, now, lres_cb,
	                             lres_done, L),
	                 0);
	assert_true(run_until(loop, lres_finished, L, 15));
}

static unsigned list_total;

/* the same listing from both stores: same subjects, same results */
static void list_compare(struct ev_loop *loop, struct store *m, struct store *r, const char *name,
                         const struct rule_cfg *rc, int64_t now, const char *only)
{
	static struct lres lm, lr;
	lm.only = lr.only = only;
	lm.stop_after = lr.stop_after = 0;
	list_run(loop, m, name, rc, now, &lm);
	list_run(loop, r, name, rc, now, &lr);
	assert_int_equal(lm.st, STORE_OK);
	assert_int_equal(lr.st, STORE_OK);
	if (lm.n != lr.n)
		fail_msg("list %s: memory %u keys, redis %u", name, lm.n, lr.n);
	if (env("PD_VERBOSE"))
		fprintf(stderr, "    list %s: %u keys on both\n", name, lm.n);
	list_total += lm.n;
	for (unsigned i = 0; i < lm.n; i++) {
		int j = lres_find(&lr, lm.subj[i]);
		if (j < 0)
			fail_msg("list %s: %s missing from redis", name, lm.subj[i]);
		const struct store_result *a = &lm.res[i], *b = &lr.res[j];
		bool same = a->conform == b->conform && a->found == b->found &&
		            a->vlen == b->vlen && lm.vh[i] == lr.vh[j];
		for (unsigned k = 0; k < STORE_MAX_WINDOWS; k++)
			same = same && a->used[k] == b->used[k] &&
			       a->empty_in_us[k] == b->empty_in_us[k];
		if (!same)
			fail_msg("list %s: %s differs (used %" PRIu64 "/%" PRIu64 ", vlen %zu/%zu)",
			         name, lm.subj[i], a->used[0], b->used[0], a->vlen, b->vlen);
	}
}

/* a rule name with glob and hash-tag characters */
static const struct rule_cfg rule_glob = {"gl*b?[x]{%}\\", 1, {{5, 10 * SEC}}};

static void test_list(void **state)
{
	(void)state;
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	char url[256];
	int port = env_port("PD_REDIS_PORT");
	url_of(url, sizeof(url), "redis://127.0.0.1:%d/5", port);
	redisContext *a = admin(port);
	assert_non_null(a);
	freeReplyObject(cmd(a, "SELECT 5"));
	freeReplyObject(cmd(a, "FLUSHDB"));
	int64_t now = wall_us();
	struct store *m = open_memory(now);
	/* listed before the connection is up: it waits */
	struct store *r = open_redis(loop, url, STORE_REDIS_FAIL_CLOSED, NULL, 3000);
	static struct lres L;
	L.only = NULL;
	L.stop_after = 0;
	list_run(loop, r, "@flag", NULL, now, &L);
	assert_int_equal(L.st, STORE_OK);
	assert_int_equal(L.n, 0);

	/* random batches on both stores, then every rule and namespace listed */
	rnd_state = 0xfeed ^ run_id();
	char subj[40][64];
	unsigned id = run_id();
	for (unsigned i = 0; i < 40; i++)
		snprintf(subj[i], sizeof(subj[i]), "l%u-%u%s", i, id,
		         i % 7 == 0 ? "{x}*?[a]\\" : "@example.com");
	static uint8_t vbuf[6][STORE_MAX_VALUE];
	static struct cap cm, cr;
	for (unsigned b = 0; b < 400; b++) {
		struct store_op ops[6];
		size_t n = 1 + rnd_n(6);
		for (size_t i = 0; i < n; i++) {
			if (rnd_n(100) < 40) {
				make_kv(&ops[i], vbuf[i], subj[rnd_n(40)]);
				continue;
			}
			unsigned ri = rnd_n(5);
			const struct rule_cfg *rc = ri < 4 ? &rules_a[ri] : &rule_glob;
			unsigned k = rnd_n(100);
			make_op(&ops[i],
			        k < 80   ? STORE_TAKE
			        : k < 90 ? STORE_REFUND
			                 : STORE_CLEAR,
			        false, rc->name, subj[rnd_n(40)], 1 + rnd_n(2), rc);
		}
		memset(&cm, 0, sizeof(cm));
		store_batch(m, ops, n, now, mem_cb, &cm);
		run_batch(loop, r, ops, n, now, &cr);
		assert_int_equal(cr.st, STORE_OK);
		now += (int64_t)rnd_n(100000);
	}
	list_compare(loop, m, r, "@flag", NULL, now, NULL);
	list_compare(loop, m, r, "@profile", NULL, now, NULL);
	for (unsigned i = 0; i < 4; i++)
		list_compare(loop, m, r, rules_a[i].name, &rules_a[i], now, NULL);
	list_compare(loop, m, r, rule_glob.name, &rule_glob, now, NULL);
	list_compare(loop, m, r, "gl", &rule_glob, now, NULL);
	list_compare(loop, m, r, "nosuchrule", &rules_a[0], now, NULL);
	list_compare(loop, m, r, "@nosuchns", NULL, now, NULL);
	/* later: some blobs and windows have expired */
	now += 50 * SEC;
	list_compare(loop, m, r, "@flag", NULL, now, NULL);
	list_compare(loop, m, r, "burst", &rules_a[1], now, NULL);
	assert_true(list_total > 100);

	/* several pages; a callback that stops */
	struct store_op put = {.kind = STORE_PUT, .rule = "@many", .val = "v", .vlen = 1};
	char sj[64];
	for (unsigned i = 0; i < 1300; i += STORE_MAX_BATCH) {
		struct store_op ops[STORE_MAX_BATCH];
		static char names[STORE_MAX_BATCH][32];
		for (unsigned k = 0; k < STORE_MAX_BATCH; k++) {
			ops[k] = put;
			snprintf(names[k], sizeof(names[k]), "m%u", i + k);
			ops[k].subject = names[k];
		}
		run_batch(loop, r, ops, STORE_MAX_BATCH, now, &cr);
		assert_int_equal(cr.st, STORE_OK);
	}
	list_run(loop, r, "@many", NULL, now, &L);
	assert_int_equal(L.st, STORE_OK);
	assert_int_equal(L.n, 1344);
	snprintf(sj, sizeof(sj), "m%u", 1343);
	assert_true(lres_find(&L, sj) >= 0);
	L.stop_after = 10;
	list_run(loop, r, "@many", NULL, now, &L);
	assert_int_equal(L.st, STORE_OK);
	assert_int_equal(L.n, 10);
	L.stop_after = 0;
	/* bad arguments */
	struct gcra_window zero = {0, 0};
	memset(&L, 0, sizeof(L));
	assert_int_equal(r->be->list(r, "", NULL, 0, now, lres_cb, lres_done, &L), 0);
	assert_true(L.done && L.st == STORE_EINVAL);
	memset(&L, 0, sizeof(L));
	assert_int_equal(r->be->list(r, "burst", &zero, 1, now, lres_cb, lres_done, &L), 0);
	assert_true(L.done && L.st == STORE_EINVAL);
	/* closed while listing: done() once, with STORE_EUNAVAIL */
	memset(&L, 0, sizeof(L));
	assert_int_equal(r->be->list(r, "@many", NULL, 0, now, lres_cb, lres_done, &L), 0);
	r->be->close(r);
	assert_true(L.done);
	assert_int_equal(L.st, STORE_EUNAVAIL);

	/* a server that is not there: done(STORE_EUNAVAIL) in bounded time */
	url_of(url, sizeof(url), "redis://127.0.0.1:%d/0", kill_port());
	r = open_redis(loop, url, STORE_REDIS_FAIL_CLOSED, NULL, 200);
	double t0 = mono();
	list_run(loop, r, "@flag", NULL, now, &L);
	assert_int_equal(L.st, STORE_EUNAVAIL);
	assert_true(mono() - t0 < 7);
	r->be->close(r);
	m->be->close(m);
	redisFree(a);
	ev_loop_destroy(loop);
}

static void test_cluster_list(void **state)
{
	(void)state;
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	char url[256], tag[32];
	cluster_url(url, sizeof(url));
	struct store *r = open_redis(loop, url, STORE_REDIS_FAIL_CLOSED, NULL, 3000);
	int64_t now = wall_us();
	snprintf(tag, sizeof(tag), "-c%u", run_id());
	static char names[300][48];
	static struct cap cr;
	for (unsigned i = 0; i < 300; i += 50) {
		struct store_op ops[50];
		for (unsigned k = 0; k < 50; k++) {
			snprintf(names[i + k], sizeof(names[0]), "s%u%s", i + k, tag);
			make_op(&ops[k], STORE_TAKE, false, "clist", names[i + k], 1 + k % 3,
			        &rules_a[2]);
		}
		wait_ready(loop, r, 5);
		run_batch(loop, r, ops, 50, now, &cr);
		assert_int_equal(cr.st, STORE_OK);
	}
	static struct lres L;
	L.only = tag;
	L.stop_after = 0;
	list_run(loop, r, "clist", &rules_a[2], now, &L);
	assert_int_equal(L.st, STORE_OK);
	assert_int_equal(L.n, 300);
	for (unsigned i = 0; i < 300; i++) {
		int j = lres_find(&L, names[i]);
		assert_true(j >= 0);
		assert_int_equal(L.res[j].used[0], 1 + i % 50 % 3);
	}
	r->be->close(r);
	ev_loop_destroy(loop);
}

/* ---- two stores sharing limits ---- */

struct shared {
	unsigned pending;
	unsigned nsubj;
	unsigned admitted[64];
	unsigned failed;
};

struct shared_req {
	struct shared *sh;
	unsigned subj[2];
	unsigned nops;
	int calls;
};

static void shared_cb(void *arg, enum store_status st, const struct store_result *res, size_t n)
{
	struct shared_req *q = arg;
	q->calls++;
	q->sh->pending--;
	if (st != STORE_OK) {
		q->sh->failed++;
		return;
	}
	bool all = true;
	for (size_t i = 0; i < n; i++)
		all = all && res[i].committed;
	if (all)
		for (unsigned i = 0; i < q->nops; i++)
			q->sh->admitted[q->subj[i]]++;
}

static bool shared_done(void *arg)
{
	return ((struct shared *)arg)->pending == 0;
}

static void shared_run(const char *url, unsigned nsubj, unsigned limit, unsigned per_store,
                       bool two_subjects)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct store *s1 = open_redis(loop, url, STORE_REDIS_FAIL_CLOSED, NULL, 5000);
	struct store *s2 = open_redis(loop, url, STORE_REDIS_FAIL_CLOSED, NULL, 5000);
	wait_ready(loop, s1, 5);
	wait_ready(loop, s2, 5);
	int64_t now = wall_us();
	unsigned id = run_id();
	char subj[64][48];
	for (unsigned i = 0; i < nsubj; i++)
		snprintf(subj[i], sizeof(subj[i]), "shared%u-%u", i, id);
	struct gcra_window w = {limit, 3600 * SEC};
	struct shared sh = {0};
	sh.nsubj = nsubj;
	struct shared_req *reqs = calloc(2 * per_store, sizeof(*reqs));
	assert_non_null(reqs);
	rnd_state = 0x1234567 ^ id;
	for (unsigned i = 0; i < 2 * per_store; i++) {
		struct shared_req *q = &reqs[i];
		struct store_op ops[2];
		q->sh = &sh;
		q->nops = two_subjects ? 2 : 1;
		q->subj[0] = rnd_n(nsubj);
		q->subj[1] = two_subjects ? (q->subj[0] + 1 + rnd_n(nsubj - 1)) % nsubj : 0;
		for (unsigned k = 0; k < q->nops; k++) {
			memset(&ops[k], 0, sizeof(ops[k]));
			ops[k].kind = STORE_TAKE;
			ops[k].refuse = true;
			ops[k].rule = "shared";
			ops[k].subject = subj[q->subj[k]];
			ops[k].cost = 1;
			ops[k].nwin = 1;
			ops[k].win[0] = w;
		}
		sh.pending++;
		assert_int_equal(store_batch(i % 2 ? s2 : s1, ops, q->nops, now, shared_cb, q), 0);
	}
	assert_true(run_until(loop, shared_done, &sh, 30));
	assert_int_equal(sh.failed, 0);
	unsigned total = 0;
	for (unsigned i = 0; i < 2 * per_store; i++)
		assert_int_equal(reqs[i].calls, 1);
	/* what Redis holds is exactly what was admitted, and never above the limit */
	run_for(loop, 0.2); /* compensations in flight */
	for (unsigned i = 0; i < nsubj; i++) {
		struct store_op op = {.kind = STORE_PEEK,
		                      .rule = "shared",
		                      .subject = subj[i],
		                      .cost = 0,
		                      .nwin = 1,
		                      .win = {w}};
		struct cap c = {0};
		run_batch(loop, s1, &op, 1, now, &c);
		assert_int_equal(c.st, STORE_OK);
		if (c.res[0].used[0] != sh.admitted[i] || sh.admitted[i] > limit)
			fail_msg("subject %u: admitted %u, redis holds %" PRIu64 ", limit %u", i,
			         sh.admitted[i], c.res[0].used[0], limit);
		if (!two_subjects)
			assert_int_equal(sh.admitted[i], limit);
		total += sh.admitted[i];
	}
	struct store_redis_stats r1, r2;
	store_redis_stats(s1, &r1);
	store_redis_stats(s2, &r2);
	if (env("PD_VERBOSE"))
		fprintf(stderr,
		        "    shared %s: %u subjects x limit %u, %u batches: admitted %u, "
		        "compensations %" PRIu64 "\n",
		        two_subjects ? "pairs" : "single", nsubj, limit, 2 * per_store, total,
		        r1.compensations + r2.compensations);
	free(reqs);
	s1->be->close(s1);
	s2->be->close(s2);
	ev_loop_destroy(loop);
}

static void test_shared_limit(void **state)
{
	(void)state;
	char url[256];
	url_of(url, sizeof(url), "redis://127.0.0.1:%d/0", env_port("PD_REDIS_PORT"));
	shared_run(url, 1, 1000, 1500, false);
	shared_run(url, 8, 50, 400, true);
}

static void test_cluster_shared_limit(void **state)
{
	(void)state;
	char url[256];
	cluster_url(url, sizeof(url));
	shared_run(url, 16, 100, 1200, false);
	shared_run(url, 12, 40, 600, true);
}

/* ---- NOSCRIPT, password ---- */

static void test_noscript(void **state)
{
	(void)state;
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	char url[256];
	int port = env_port("PD_REDIS_PORT");
	url_of(url, sizeof(url), "redis://127.0.0.1:%d/0", port);
	struct store *s = open_redis(loop, url, STORE_REDIS_FAIL_CLOSED, NULL, 2000);
	wait_ready(loop, s, 5);
	struct store_op op = {.kind = STORE_TAKE,
	                      .rule = "ns",
	                      .subject = "flush",
	                      .cost = 1,
	                      .nwin = 1,
	                      .win = {{1000, SEC}}};
	struct cap c = {0};
	run_batch(loop, s, &op, 1, wall_us(), &c);
	assert_int_equal(c.st, STORE_OK);
	redisContext *a = admin(port);
	assert_non_null(a);
	freeReplyObject(cmd(a, "SCRIPT FLUSH"));
	for (int i = 0; i < 3; i++) {
		run_batch(loop, s, &op, 1, wall_us(), &c);
		assert_int_equal(c.st, STORE_OK);
		assert_true(c.res[0].committed);
	}
	struct store_redis_stats rs;
	store_redis_stats(s, &rs);
	assert_int_equal(rs.noscript, 1);
	/* flushed while several batches are in flight */
	freeReplyObject(cmd(a, "SCRIPT FLUSH"));
	struct cap cs[20];
	memset(cs, 0, sizeof(cs));
	int64_t now = wall_us();
	for (int i = 0; i < 20; i++)
		store_batch(s, &op, 1, now, cap_cb, &cs[i]);
	assert_true(run_until(loop, cap_done, &cs[19], 5));
	for (int i = 0; i < 20; i++) {
		assert_int_equal(cs[i].calls, 1);
		assert_int_equal(cs[i].st, STORE_OK);
	}
	redisFree(a);
	s->be->close(s);
	ev_loop_destroy(loop);
}

static void test_auth(void **state)
{
	(void)state;
	int port = env_port("PD_AUTH_PORT");
	const char *pass = env("PD_AUTH_PASS");
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	char url[256];
	log_reset();
	url_of(url, sizeof(url), "redis://:Wrong-Pass-42@127.0.0.1:%d/0", port);
	struct store *s = open_redis(loop, url, STORE_REDIS_FAIL_CLOSED, NULL, 500);
	struct store_op op = {.kind = STORE_TAKE,
	                      .rule = "auth",
	                      .subject = "x",
	                      .cost = 1,
	                      .nwin = 1,
	                      .win = {{10, SEC}}};
	struct cap c = {0};
	run_batch(loop, s, &op, 1, wall_us(), &c);
	assert_int_equal(c.st, STORE_EUNAVAIL);
	run_for(loop, 0.3);
	run_batch(loop, s, &op, 1, wall_us(), &c);
	assert_int_equal(c.st, STORE_EUNAVAIL);
	assert_int_equal(log_count("unavailable: authentication failed: WRONGPASS"), 1);
	assert_non_null(strstr(s->err, "authentication failed"));
	s->be->close(s);
	/* user:password (ACL) form, right password; nothing logged shows it */
	url_of(url, sizeof(url), "redis://default:%s@127.0.0.1:%d/0", pass, port);
	s = open_redis(loop, url, STORE_REDIS_FAIL_CLOSED, NULL, 500);
	wait_ready(loop, s, 5);
	run_batch(loop, s, &op, 1, wall_us(), &c);
	assert_int_equal(c.st, STORE_OK);
	s->be->close(s);
	assert_int_equal(log_count("Wrong-Pass-42"), 0);
	assert_int_equal(log_count(pass), 0);
	assert_true(log_count("default:***@") >= 1);
	ev_loop_destroy(loop);
}

/* close() with batches written, queued and parked: each gets exactly one answer */
static void test_close_inflight(void **state)
{
	(void)state;
	static struct cap cs[60];
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	char url[256];
	struct store_op op = {.kind = STORE_TAKE,
	                      .rule = "close",
	                      .subject = "x",
	                      .cost = 1,
	                      .nwin = 1,
	                      .win = {{1000000, SEC}}};
	url_of(url, sizeof(url), "redis://127.0.0.1:%d/0", env_port("PD_REDIS_PORT"));
	struct store *s = open_redis(loop, url, STORE_REDIS_FAIL_CLOSED, NULL, 2000);
	wait_ready(loop, s, 5);
	memset(cs, 0, sizeof(cs));
	for (int i = 0; i < 30; i++)
		store_batch(s, &op, 1, wall_us(), cap_cb, &cs[i]);
	ev_run(loop, EVRUN_NOWAIT); /* some written, some not */
	for (int i = 30; i < 60; i++)
		store_batch(s, &op, 1, wall_us(), cap_cb, &cs[i]);
	s->be->close(s);
	for (int i = 0; i < 60; i++) {
		assert_int_equal(cs[i].calls, 1);
		assert_true(cs[i].st == STORE_OK || cs[i].st == STORE_EUNAVAIL);
	}
	/* a cluster whose only seed is down: the batches wait for a map */
	url_of(url, sizeof(url), "redis-cluster://127.0.0.1:%d", kill_port());
	s = open_redis(loop, url, STORE_REDIS_FAIL_CLOSED, NULL, 2000);
	memset(cs, 0, sizeof(cs));
	for (int i = 0; i < 20; i++)
		store_batch(s, &op, 1, wall_us(), cap_cb, &cs[i]);
	run_for(loop, 0.2);
	for (int i = 0; i < 20; i++)
		assert_int_equal(cs[i].calls, 0);
	s->be->close(s);
	for (int i = 0; i < 20; i++) {
		assert_int_equal(cs[i].calls, 1);
		assert_int_equal(cs[i].st, STORE_EUNAVAIL);
	}
	ev_loop_destroy(loop);
}

/* ---- load with failures ---- */

struct load;

struct req {
	struct load *L;
	int calls;
	bool ok;
	uint8_t nops;
	uint16_t subj[3];
	double t0;
};

struct load {
	struct ev_loop *loop;
	struct store *s;
	struct req *reqs;
	size_t nreqs;
	unsigned inflight, target;
	bool stop;
	uint64_t ok, unavail, other, dup;
	double max_lat;
	unsigned nsubj, maxops;
	char (*subj)[48];
	int64_t fixed_now; /* 0: the wall clock */
	uint64_t limit, period;
	bool refuse, must_commit;
	ev_timer refill;
};

static void load_cb(void *arg, enum store_status st, const struct store_result *res, size_t n)
{
	struct req *q = arg;
	struct load *L = q->L;
	if (++q->calls > 1) {
		L->dup++;
		return;
	}
	L->inflight--;
	double lat = ev_time() - q->t0;
	if (lat > L->max_lat)
		L->max_lat = lat;
	if (st == STORE_OK) {
		L->ok++;
		q->ok = true;
		for (size_t k = 0; k < n && L->must_commit; k++)
			if (!res[k].committed)
				fail_msg("a TAKE under a huge limit was not committed");
	} else if (st == STORE_EUNAVAIL) {
		L->unavail++;
	} else {
		L->other++;
	}
}

static void load_issue(struct load *L)
{
	if (L->nreqs >= MAX_REQS)
		return;
	struct req *q = &L->reqs[L->nreqs++];
	struct store_op ops[3];
	unsigned first = rnd_n(L->nsubj);
	q->L = L;
	q->nops = (uint8_t)(1 + (L->maxops > 1 ? rnd_n(L->maxops) : 0));
	q->t0 = ev_time();
	for (unsigned k = 0; k < q->nops; k++) {
		q->subj[k] = (uint16_t)((first + k * 7919u) % L->nsubj);
		memset(&ops[k], 0, sizeof(ops[k]));
		ops[k].kind = STORE_TAKE;
		ops[k].refuse = L->refuse;
		ops[k].rule = "load";
		ops[k].subject = L->subj[q->subj[k]];
		ops[k].cost = 1;
		ops[k].nwin = 1;
		ops[k].win[0].limit = L->limit;
		ops[k].win[0].period_us = L->period;
	}
	L->inflight++;
	store_batch(L->s, ops, q->nops, L->fixed_now ? L->fixed_now : wall_us(), load_cb, q);
}

/* refill from a timer, never from a callback (a batch can fail before store_batch returns) */
static void load_refill(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	struct load *L = w->data;
	for (unsigned i = 0; i < L->target && !L->stop && L->inflight < L->target; i++)
		load_issue(L);
}

static void load_init(struct load *L, struct ev_loop *loop, struct store *s, unsigned nsubj,
                      unsigned target)
{
	memset(L, 0, sizeof(*L));
	L->loop = loop;
	L->s = s;
	L->target = target;
	L->nsubj = nsubj;
	L->maxops = 1;
	L->limit = 1000000;
	L->period = SEC;
	L->reqs = calloc(MAX_REQS, sizeof(*L->reqs));
	L->subj = calloc(nsubj, sizeof(*L->subj));
	assert_non_null(L->reqs);
	assert_non_null(L->subj);
	unsigned id = run_id();
	for (unsigned i = 0; i < nsubj; i++)
		snprintf(L->subj[i], sizeof(L->subj[i]), "load%u-%u", i, id);
	ev_timer_init(&L->refill, load_refill, 0.002, 0.002);
	L->refill.data = L;
}

static void load_start(struct load *L)
{
	ev_timer_start(L->loop, &L->refill);
}

static bool load_drained(void *arg)
{
	return ((struct load *)arg)->inflight == 0;
}

/* stop, wait for every callback, check each came exactly once and in time */
static void load_finish(struct load *L, double budget)
{
	L->stop = true;
	ev_timer_stop(L->loop, &L->refill);
	assert_true(run_until(L->loop, load_drained, L, budget + 2));
	run_for(L->loop, 0.3); /* late replies, if any, must not call back again */
	for (size_t i = 0; i < L->nreqs; i++)
		if (L->reqs[i].calls != 1)
			fail_msg("request %zu: %d callbacks", i, L->reqs[i].calls);
	assert_int_equal(L->dup, 0);
	if (L->max_lat > budget + LAT_SLACK)
		fail_msg("a callback took %.3f s (budget %.3f s)", L->max_lat, budget);
}

static void load_free(struct load *L)
{
	free(L->reqs);
	free(L->subj);
}

struct okwait {
	struct store *s;
	uint64_t from;
};

static bool redis_ok_since(void *arg)
{
	struct okwait *w = arg;
	struct store_redis_stats rs;
	store_redis_stats(w->s, &rs);
	return rs.ok > w->from + 20;
}

static void kill_run(enum store_redis_failure pol)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	int port = kill_port();
	char url[256];
	url_of(url, sizeof(url), "redis://127.0.0.1:%d/0", port);
	log_reset();
	struct store *mem = pol == STORE_REDIS_FAIL_LOCAL ? open_memory(wall_us()) : NULL;
	struct store *s = open_redis(loop, url, pol, mem, CMD_TIMEOUT);
	struct store_redis_stats rs;
	struct load L;
	load_init(&L, loop, s, 64, 32);
	load_start(&L);
	bool local = pol == STORE_REDIS_FAIL_LOCAL;

	/* 1. down at start: not fatal, every batch answered at once */
	run_for(loop, 0.3);
	store_redis_stats(s, &rs);
	assert_int_equal(rs.ok, 0);
	assert_true(L.nreqs > 50);
	assert_true(local ? L.ok > 50 && rs.fallback > 50 : L.unavail > 50);
	assert_int_equal(log_count("unavailable: connect: Connection refused"), 1);

	/* 2. the server comes up: service from Redis resumes */
	kill_srv_start();
	struct okwait w = {s, 0};
	assert_true(run_until(loop, redis_ok_since, &w, 8));
	assert_int_equal(log_count("available again"), 1);
	run_for(loop, 0.3);

	/* 3. killed under load */
	store_redis_stats(s, &rs);
	uint64_t unavail0 = L.unavail, fb0 = rs.fallback;
	kill_srv_signal(SIGKILL);
	run_for(loop, 1.0);
	store_redis_stats(s, &rs);
	if (local)
		assert_true(rs.fallback > fb0 + 50);
	else
		assert_true(L.unavail > unavail0 + 50);
	assert_int_equal(log_count("unavailable"), 2);

	/* 4. restarted: service resumes */
	kill_srv_start();
	w.from = rs.ok;
	assert_true(run_until(loop, redis_ok_since, &w, 10));
	run_for(loop, 0.3);
	load_finish(&L, CMD_TIMEOUT / 1000.0);
	assert_int_equal(log_count("available again"), 2);
	assert_int_equal(L.other, 0);
	if (local)
		assert_int_equal(L.unavail, 0);
	store_redis_stats(s, &rs);
	if (env("PD_VERBOSE"))
		fprintf(stderr,
		        "    policy %s: %zu batches, ok %" PRIu64 " (redis %" PRIu64
		        ", fallback %" PRIu64 "), unavail %" PRIu64 ", max latency %.3f s\n",
		        store_redis_failure_name(pol), L.nreqs, L.ok, rs.ok, rs.fallback, L.unavail,
		        L.max_lat);
	s->be->close(s);
	if (mem)
		mem->be->close(mem);
	kill_srv_signal(SIGTERM);
	load_free(&L);
	ev_loop_destroy(loop);
}

static void test_kill_closed(void **state)
{
	(void)state;
	kill_run(STORE_REDIS_FAIL_CLOSED);
}

static void test_kill_open(void **state)
{
	(void)state;
	kill_run(STORE_REDIS_FAIL_OPEN);
}

static void test_kill_local(void **state)
{
	(void)state;
	kill_run(STORE_REDIS_FAIL_LOCAL);
}

/* stopped (SIGSTOP): timeouts, late replies, the watchdog, and back */
static void test_stopped(void **state)
{
	(void)state;
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	char url[256];
	url_of(url, sizeof(url), "redis://127.0.0.1:%d/0", kill_port());
	log_reset();
	kill_srv_start();
	struct store *s = open_redis(loop, url, STORE_REDIS_FAIL_CLOSED, NULL, CMD_TIMEOUT);
	wait_ready(loop, s, 5);
	struct load L;
	load_init(&L, loop, s, 64, 32);
	load_start(&L);
	run_for(loop, 0.3);

	/* shorter than the watchdog: the replies come late */
	kill_srv_signal(SIGSTOP);
	run_for(loop, 0.45);
	kill_srv_signal(SIGCONT);
	run_for(loop, 0.5);
	struct store_redis_stats rs;
	store_redis_stats(s, &rs);
	assert_true(rs.timeouts > 0);
	assert_true(rs.late > 0);

	/* longer: the watchdog drops the connection, the reconnect waits */
	kill_srv_signal(SIGSTOP);
	run_for(loop, 2.0);
	kill_srv_signal(SIGCONT);
	store_redis_stats(s, &rs);
	struct okwait w = {s, rs.ok};
	assert_true(run_until(loop, redis_ok_since, &w, 10));
	load_finish(&L, CMD_TIMEOUT / 1000.0);
	store_redis_stats(s, &rs);
	assert_true(log_count("no reply for") >= 1);
	if (env("PD_VERBOSE"))
		fprintf(stderr,
		        "    stopped: %zu batches, ok %" PRIu64 ", unavail %" PRIu64
		        ", timeouts %" PRIu64 ", late %" PRIu64 ", max latency %.3f s\n",
		        L.nreqs, L.ok, L.unavail, rs.timeouts, rs.late, L.max_lat);
	s->be->close(s);
	kill_srv_signal(SIGTERM);
	load_free(&L);
	ev_loop_destroy(loop);
}

/* ---- cluster: key slots, reshard, failover ---- */

static int cluster_port(unsigned i)
{
	int p[6] = {0};
	sscanf(env("PD_CLUSTER_PORTS"), "%d,%d,%d,%d,%d,%d", &p[0], &p[1], &p[2], &p[3], &p[4],
	       &p[5]);
	return i < 6 ? p[i] : 0;
}

static void test_cluster_keyslot_live(void **state)
{
	(void)state;
	redisContext *c = admin(cluster_port(0));
	assert_non_null(c);
	rnd_state = 42;
	for (int i = 0; i < 300; i++) {
		char key[64];
		size_t len = 1 + rnd_n(40);
		for (size_t k = 0; k < len; k++)
			key[k] = "ab{}:@.xyz0123"[rnd_n(14)];
		key[len] = '\0';
		redisReply *r = redisCommand(c, "CLUSTER KEYSLOT %b", key, len);
		assert_non_null(r);
		if (r->type != REDIS_REPLY_INTEGER ||
		    (unsigned)r->integer != store_redis_keyslot(key, len))
			fail_msg("key \"%s\": redis %lld, ours %u", key, r->integer,
			         store_redis_keyslot(key, len));
		freeReplyObject(r);
	}
	redisFree(c);
}

/* a master of CLUSTER NODES: id, port, slots held */
struct cnode {
	char id[64];
	int port;
	bool master;
	unsigned nslots;
};

static size_t cluster_nodes(int port, struct cnode *out, size_t max)
{
	redisContext *c = admin(port);
	assert_non_null(c);
	redisReply *r = cmd(c, "CLUSTER NODES");
	assert_non_null(r);
	assert_int_equal(r->type, REDIS_REPLY_STRING);
	size_t n = 0;
	char *save = NULL;
	for (char *line = strtok_r(r->str, "\n", &save); line && n < max;
	     line = strtok_r(NULL, "\n", &save)) {
		/* id ip:port@bus flags master ping pong epoch state slot... */
		char *f[64];
		size_t nf = 0;
		char *s2 = NULL;
		for (char *t = strtok_r(line, " ", &s2); t && nf < 64; t = strtok_r(NULL, " ", &s2))
			f[nf++] = t;
		if (nf < 8)
			continue;
		struct cnode *cn = &out[n++];
		memset(cn, 0, sizeof(*cn));
		snprintf(cn->id, sizeof(cn->id), "%s", f[0]);
		char *colon = strchr(f[1], ':');
		cn->port = colon ? atoi(colon + 1) : 0;
		cn->master = strstr(f[2], "master") && !strstr(f[2], "fail");
		for (size_t k = 8; k < nf; k++) {
			int a, b;
			if (f[k][0] == '[')
				continue;
			if (sscanf(f[k], "%d-%d", &a, &b) == 2)
				cn->nslots += (unsigned)(b - a + 1);
			else if (sscanf(f[k], "%d", &a) == 1)
				cn->nslots++;
		}
	}
	freeReplyObject(r);
	redisFree(c);
	return n;
}

static const struct cnode *biggest_master(const struct cnode *nodes, size_t nn)
{
	const struct cnode *m = NULL;
	for (size_t i = 0; i < nn; i++)
		if (nodes[i].master && (m == NULL || nodes[i].nslots > m->nslots))
			m = &nodes[i];
	return m;
}

struct child {
	pid_t pid;
	int status;
	bool done;
};

static bool child_done(void *arg)
{
	struct child *c = arg;
	if (!c->done && waitpid(c->pid, &c->status, WNOHANG) == c->pid)
		c->done = true;
	return c->done;
}

/* PEEK (cost 0) every subject of L at L->fixed_now: used[0] per subject */
static void peek_all(struct load *L, uint64_t *used)
{
	for (unsigned first = 0; first < L->nsubj; first += STORE_MAX_BATCH) {
		struct store_op ops[STORE_MAX_BATCH];
		size_t n = 0;
		for (unsigned i = first; i < L->nsubj && n < STORE_MAX_BATCH; i++, n++) {
			memset(&ops[n], 0, sizeof(ops[n]));
			ops[n].kind = STORE_PEEK;
			ops[n].rule = "load";
			ops[n].subject = L->subj[i];
			ops[n].nwin = 1;
			ops[n].win[0].limit = L->limit;
			ops[n].win[0].period_us = L->period;
		}
		struct cap c = {0};
		run_batch(L->loop, L->s, ops, n, L->fixed_now, &c);
		assert_int_equal(c.st, STORE_OK);
		for (size_t i = 0; i < n; i++)
			used[first + i] = c.res[i].used[0];
	}
}

static void test_cluster_reshard(void **state)
{
	(void)state;
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	char url[256];
	cluster_url(url, sizeof(url));
	log_reset();
	struct store *s = open_redis(loop, url, STORE_REDIS_FAIL_CLOSED, NULL, 2000);
	wait_ready(loop, s, 5);
	struct load L;
	load_init(&L, loop, s, 3000, 48);
	L.fixed_now = wall_us();
	L.limit = 1000000;
	L.period = 10000000 * (uint64_t)SEC; /* 10 s per unit: the keys outlive the test */
	L.maxops = 3;
	L.refuse = true;
	L.must_commit = true;
	rnd_state = 777;
	load_start(&L);
	run_for(loop, 0.5);

	/* move 400 slots from the master with most slots to another one */
	struct cnode nodes[16];
	size_t nn = cluster_nodes(cluster_port(0), nodes, 16);
	const struct cnode *from = biggest_master(nodes, nn), *to = NULL;
	for (size_t i = 0; i < nn; i++)
		if (nodes[i].master && &nodes[i] != from)
			to = &nodes[i];
	assert_non_null(from);
	assert_non_null(to);
	char hp[64];
	snprintf(hp, sizeof(hp), "127.0.0.1:%d", from->port);
	struct child ch = {0};
	ch.pid = fork();
	assert_true(ch.pid >= 0);
	if (ch.pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		int fd = open("/dev/null", O_RDWR);
		dup2(fd, 0);
		dup2(fd, 1);
		execlp("redis-cli", "redis-cli", "--cluster", "reshard", hp, "--cluster-from",
		       from->id, "--cluster-to", to->id, "--cluster-slots", "400", "--cluster-yes",
		       "--cluster-pipeline", "5", (char *)NULL);
		_exit(127);
	}
	double t0 = mono();
	assert_true(run_until(loop, child_done, &ch, 120));
	double took = mono() - t0;
	assert_true(WIFEXITED(ch.status) && WEXITSTATUS(ch.status) == 0);
	run_for(loop, 0.3);
	load_finish(&L, 2.0);
	assert_int_equal(L.other, 0);

	/* totals: every subject holds exactly what the batches answered OK took */
	uint64_t *want = calloc(L.nsubj, sizeof(*want)), *got = calloc(L.nsubj, sizeof(*got));
	assert_non_null(want);
	assert_non_null(got);
	for (size_t i = 0; i < L.nreqs; i++)
		for (unsigned k = 0; L.reqs[i].ok && k < L.reqs[i].nops; k++)
			want[L.reqs[i].subj[k]]++;
	run_for(loop, 0.3); /* compensations of failed batches */
	peek_all(&L, got);
	uint64_t total = 0, bad = 0;
	for (unsigned i = 0; i < L.nsubj; i++) {
		total += want[i];
		if (got[i] != want[i]) {
			if (bad++ < 5)
				print_message("subject %u: OK batches took %" PRIu64
				              ", redis holds %" PRIu64 "\n",
				              i, want[i], got[i]);
		}
	}
	struct store_redis_stats rs;
	store_redis_stats(s, &rs);
	if (env("PD_VERBOSE"))
		fprintf(stderr,
		        "    reshard of 400 slots took %.1f s under load: %zu batches (%" PRIu64
		        " TAKEs), ok %" PRIu64 ", unavail %" PRIu64 ", moved %" PRIu64
		        ", ask %" PRIu64 ", tryagain %" PRIu64 ", compensations %" PRIu64
		        ", max latency %.3f s\n",
		        took, L.nreqs, total, L.ok, L.unavail, rs.moved, rs.ask, rs.tryagain,
		        rs.compensations, L.max_lat);
	assert_int_equal(bad, 0);
	assert_true(rs.moved + rs.ask > 0);
	free(want);
	free(got);
	s->be->close(s);
	load_free(&L);
	ev_loop_destroy(loop);
}

struct probe {
	struct load *L;
	bool all_ok;
};

/* one PEEK per subject (in batches): true when every batch is answered from Redis */
static bool probe_round(struct load *L)
{
	unsigned nb = (L->nsubj + STORE_MAX_BATCH - 1) / STORE_MAX_BATCH;
	struct cap *c = calloc(nb, sizeof(*c));
	assert_non_null(c);
	int64_t now = wall_us();
	for (unsigned b = 0; b < nb; b++) {
		struct store_op ops[STORE_MAX_BATCH];
		size_t n = 0;
		for (unsigned i = b * STORE_MAX_BATCH; i < L->nsubj && n < STORE_MAX_BATCH;
		     i++, n++) {
			memset(&ops[n], 0, sizeof(ops[n]));
			ops[n].kind = STORE_PEEK;
			ops[n].rule = "load";
			ops[n].subject = L->subj[i];
			ops[n].cost = 1;
			ops[n].nwin = 1;
			ops[n].win[0].limit = L->limit;
			ops[n].win[0].period_us = L->period;
		}
		store_batch(L->s, ops, n, now, cap_cb, &c[b]);
	}
	bool ok = true;
	for (unsigned b = 0; b < nb; b++) {
		assert_true(run_until(L->loop, cap_done, &c[b], 5));
		ok = ok && c[b].st == STORE_OK;
	}
	free(c);
	return ok;
}

/* the node (from CLUSTER NODES) that serves a slot, by asking CLUSTER SLOTS */
static int slot_owner_port(int port, unsigned slot)
{
	redisContext *c = admin(port);
	assert_non_null(c);
	redisReply *r = cmd(c, "CLUSTER SLOTS");
	assert_non_null(r);
	int owner = 0;
	for (size_t i = 0; i < r->elements; i++) {
		redisReply *e = r->element[i];
		if ((unsigned)e->element[0]->integer <= slot &&
		    slot <= (unsigned)e->element[1]->integer)
			owner = (int)e->element[2]->element[1]->integer;
	}
	freeReplyObject(r);
	redisFree(c);
	return owner;
}

static void admin_ok(int port, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void admin_ok(int port, const char *fmt, ...)
{
	redisContext *c = admin(port);
	assert_non_null(c);
	va_list ap;
	va_start(ap, fmt);
	redisReply *r = redisvCommand(c, fmt, ap);
	va_end(ap);
	if (r == NULL || r->type == REDIS_REPLY_ERROR)
		fail_msg("port %d: %s: %s", port, fmt, r ? r->str : c->errstr);
	freeReplyObject(r);
	redisFree(c);
}

/*
 * A slot migrated by hand under our feet: one of a subject's two keys moved
 * (TRYAGAIN), then both (ASK to the importing node), a new key (ASK), then
 * the slot handed over (MOVED).  Every TAKE counts exactly once.
 */
static void test_cluster_ask(void **state)
{
	(void)state;
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	char url[256], subj[64], k1[96], k2[96];
	cluster_url(url, sizeof(url));
	log_reset();
	struct store *s = open_redis(loop, url, STORE_REDIS_FAIL_CLOSED, NULL, 3000);
	wait_ready(loop, s, 5);
	snprintf(subj, sizeof(subj), "migrant-%u", run_id());
	snprintf(k1, sizeof(k1), "pd:{%s}:r1", subj);
	snprintf(k2, sizeof(k2), "pd:{%s}:r2", subj);
	unsigned slot = store_redis_keyslot(subj, strlen(subj));
	int src = slot_owner_port(cluster_port(0), slot), dst = 0;
	struct cnode nodes[16];
	size_t nn = cluster_nodes(cluster_port(0), nodes, 16);
	const char *src_id = NULL, *dst_id = NULL;
	for (size_t i = 0; i < nn; i++) {
		if (nodes[i].port == src)
			src_id = nodes[i].id;
		else if (nodes[i].master && nodes[i].nslots > 0 && dst == 0) {
			dst = nodes[i].port;
			dst_id = nodes[i].id;
		}
	}
	assert_non_null(src_id);
	assert_non_null(dst_id);

	int64_t now = wall_us();
	struct gcra_window w = {1000, 3600 * SEC};
	struct store_op ops[3];
	const char *rules[3] = {"r1", "r2", "r3"};
	for (int i = 0; i < 3; i++)
		make_op(&ops[i], STORE_TAKE, true, rules[i], subj, 1,
		        &(struct rule_cfg){"", 1, {w}});
	struct cap c = {0};
	run_batch(loop, s, ops, 2, now, &c); /* creates r1 and r2 on the source */
	assert_int_equal(c.st, STORE_OK);

	admin_ok(dst, "CLUSTER SETSLOT %u IMPORTING %s", slot, src_id);
	admin_ok(src, "CLUSTER SETSLOT %u MIGRATING %s", slot, dst_id);
	admin_ok(src, "MIGRATE 127.0.0.1 %d %s 0 5000 KEYS %s", dst, "", k1);

	/* r1 is on the target, r2 on the source: TRYAGAIN until r2 follows */
	struct cap c2 = {0};
	memset(&c2, 0, sizeof(c2));
	store_batch(s, ops, 2, now, cap_cb, &c2);
	run_for(loop, 0.15);
	assert_int_equal(c2.calls, 0);
	admin_ok(src, "MIGRATE 127.0.0.1 %d %s 0 5000 KEYS %s", dst, "", k2);
	assert_true(run_until(loop, cap_done, &c2, 3));
	assert_int_equal(c2.st, STORE_OK);
	assert_int_equal(c2.res[0].used[0], 2);
	assert_int_equal(c2.res[1].used[0], 2);

	/* both keys on the importing node: ASK */
	run_batch(loop, s, ops, 2, now, &c);
	assert_int_equal(c.st, STORE_OK);
	assert_int_equal(c.res[0].used[0], 3);
	/*
	 * r3 is new: alone it is served there after ASK; with r1 and r2 it would
	 * get TRYAGAIN until the slot is handed over (the importing node cannot
	 * know that a missing key is not still on the source)
	 */
	run_batch(loop, s, &ops[2], 1, now, &c);
	assert_int_equal(c.st, STORE_OK);
	assert_int_equal(c.res[0].used[0], 1);
	run_batch(loop, s, ops, 3, now, &c);
	assert_int_equal(c.st, STORE_OK);
	assert_int_equal(c.res[0].used[0], 4);
	assert_int_equal(c.res[2].used[0], 2);
	struct store_redis_stats rs;
	store_redis_stats(s, &rs);
	assert_true(rs.tryagain > 0);
	assert_true(rs.ask >= 4);

	/* hand the slot over: MOVED, then served by the new owner */
	for (unsigned i = 0; i < 6; i++) {
		redisContext *a = admin(cluster_port(i));
		if (a == NULL)
			continue;
		redisReply *r = cmd(a, "CLUSTER SETSLOT %u NODE %s", slot, dst_id);
		if (r)
			freeReplyObject(r);
		redisFree(a);
	}
	uint64_t moved0 = rs.moved;
	run_batch(loop, s, ops, 3, now, &c);
	assert_int_equal(c.st, STORE_OK);
	assert_int_equal(c.res[0].used[0], 5);
	assert_int_equal(c.res[1].used[0], 5);
	assert_int_equal(c.res[2].used[0], 3);
	store_redis_stats(s, &rs);
	if (env("PD_VERBOSE"))
		fprintf(stderr,
		        "    slot %u %d -> %d by hand: tryagain %" PRIu64 ", ask %" PRIu64
		        ", moved %" PRIu64 "\n",
		        slot, src, dst, rs.tryagain, rs.ask, rs.moved - moved0);
	assert_true(rs.moved > moved0 || slot_owner_port(cluster_port(0), slot) == dst);
	s->be->close(s);
	ev_loop_destroy(loop);
}

static void test_cluster_failover(void **state)
{
	(void)state;
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	char url[256];
	cluster_url(url, sizeof(url));
	log_reset();
	const double budget = 0.5;
	struct store *s = open_redis(loop, url, STORE_REDIS_FAIL_CLOSED, NULL, 500);
	wait_ready(loop, s, 5);
	struct load L;
	load_init(&L, loop, s, 300, 32);
	load_start(&L);
	run_for(loop, 0.5);
	assert_true(probe_round(&L));

	struct cnode nodes[16];
	size_t nn = cluster_nodes(cluster_port(0), nodes, 16);
	const struct cnode *victim = biggest_master(nodes, nn);
	assert_non_null(victim);
	char name[32];
	snprintf(name, sizeof(name), "c%d", victim->port);
	pid_t pid = pidfile_read(name);
	assert_true(pid > 0);
	uint64_t ok0 = L.ok;
	double t0 = mono();
	assert_int_equal(kill(pid, SIGTERM), 0);

	/* until one probe round of every subject is answered from Redis again */
	double resumed = 0;
	bool gap_seen = false;
	while (mono() - t0 < 40) {
		run_for(loop, 0.25);
		bool ok = probe_round(&L);
		if (!ok)
			gap_seen = true;
		if (ok && gap_seen) {
			resumed = mono() - t0;
			break;
		}
	}
	uint64_t ok_gap = L.ok - ok0;
	run_for(loop, 0.5);
	load_finish(&L, budget);
	assert_int_equal(L.other, 0);
	struct store_redis_stats rs;
	store_redis_stats(s, &rs);
	if (env("PD_VERBOSE"))
		fprintf(stderr,
		        "    failover of %s: all slots served again after %.1f s; during the gap "
		        "%" PRIu64 " batches OK; total %zu batches, unavail %" PRIu64
		        ", refreshes %" PRIu64 ", max latency %.3f s\n",
		        name, resumed, ok_gap, L.nreqs, L.unavail, rs.refreshes, L.max_lat);
	assert_true(gap_seen);
	assert_true(resumed > 0);
	assert_true(ok_gap > 0);
	assert_true(log_count("unavailable") >= 1);
	s->be->close(s);
	load_free(&L);
	ev_loop_destroy(loop);
}

/* ---- durable writes (WAIT) ---- */

static struct store *open_redis_wait(struct ev_loop *loop, const char *url, unsigned replicas,
                                     unsigned wait_ms, enum store_redis_failure f,
                                     struct store *fallback)
{
	char err[256];
	struct store_redis_opts o = {
	    .url = url,
	    .connect_timeout_ms = 500,
	    .command_timeout_ms = 500,
	    .wait_replicas = replicas,
	    .wait_timeout_ms = wait_ms,
	    .failure = f,
	    .fallback = fallback,
	    .log = log_cb,
	};
	struct store *st = store_redis_open(loop, &o, err, sizeof(err));
	if (st == NULL)
		fail_msg("store_redis_open(%s): %s", url, err);
	return st;
}

/* PUT subject (durable or not), then GET it back: the PUT's status. */
static enum store_status durable_put(struct ev_loop *loop, struct store *st, const char *subj,
                                     const char *val, bool durable, bool *found)
{
	static uint8_t vals[STORE_MAX_BATCH][STORE_MAX_VALUE];
	struct store_op put = {.kind = STORE_PUT,
	                       .rule = "@outbox",
	                       .subject = subj,
	                       .val = val,
	                       .vlen = strlen(val),
	                       .durable = durable};
	struct store_op get = {.kind = STORE_GET, .rule = "@outbox", .subject = subj};
	struct cap c = {.vals = vals};
	run_batch(loop, st, &put, 1, wall_us(), &c);
	enum store_status ps = c.st;
	c.vals = vals;
	run_batch(loop, st, &get, 1, wall_us(), &c);
	assert_int_equal(c.st, STORE_OK);
	*found = c.res[0].found && c.res[0].vlen == strlen(val) &&
	         memcmp(c.res[0].val, val, c.res[0].vlen) == 0;
	return ps;
}

/*
 * A lone server has no replica: a durable PUT is applied but answered
 * STORE_EREPLICA after the WAIT timeout; never run on the fallback store;
 * a plain PUT is not waited for; wait_replicas = 0 waits for nothing.
 */
static void test_durable_single(void **state)
{
	(void)state;
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	char url[256], subj[64];
	url_of(url, sizeof(url), "redis://127.0.0.1:%d/6", env_port("PD_REDIS_PORT"));
	log_reset();
	struct store *m = open_memory(wall_us());
	struct store *st = open_redis_wait(loop, url, 1, 50, STORE_REDIS_FAIL_LOCAL, m);
	wait_ready(loop, st, 5);
	bool found = false;
	snprintf(subj, sizeof(subj), "durable-%u", run_id());
	assert_int_equal(durable_put(loop, st, subj, "v1", true, &found), STORE_EREPLICA);
	assert_true(found); /* on the master all the same */
	assert_int_equal(durable_put(loop, st, subj, "v2", false, &found), STORE_OK);
	assert_true(found);
	struct store_redis_stats rs;
	store_redis_stats(st, &rs);
	assert_int_equal(rs.waits, 1);
	assert_int_equal(rs.wait_short, 1);
	assert_int_equal(rs.fallback, 0);
	assert_true(log_count("0 of 1 replicas acknowledged within 50 ms") >= 1);
	st->be->close(st);

	st = open_redis_wait(loop, url, 0, 50, STORE_REDIS_FAIL_CLOSED, NULL);
	wait_ready(loop, st, 5);
	assert_int_equal(durable_put(loop, st, subj, "v3", true, &found), STORE_OK);
	assert_true(found);
	store_redis_stats(st, &rs);
	assert_int_equal(rs.waits, 0);
	st->be->close(st);
	m->be->close(m);
	ev_loop_destroy(loop);
}

/*
 * The cluster (before test_cluster_failover: each master has one replica).  WAIT 1: STORE_OK (the
 * replica acknowledged); WAIT 2: STORE_EREPLICA.  A batch over several
 * slots waits on each of their masters.
 */
/* every replica of the cluster has its link up and no sync in progress */
static bool replicas_synced(void)
{
	struct cnode nodes[16];
	unsigned live = 0;
	while (live < 5 && !ping(cluster_port(live)))
		live++;
	size_t nn = cluster_nodes(cluster_port(live), nodes, 16), ok = 0, nr = 0;
	for (size_t i = 0; i < nn; i++) {
		if (nodes[i].master)
			continue;
		nr++;
		redisContext *c = admin(nodes[i].port);
		redisReply *r = c ? cmd(c, "INFO replication") : NULL;
		if (r && r->type == REDIS_REPLY_STRING && strstr(r->str, "master_link_status:up") &&
		    strstr(r->str, "master_sync_in_progress:0"))
			ok++;
		if (r)
			freeReplyObject(r);
		if (c)
			redisFree(c);
	}
	return nr == 3 && ok == nr;
}

static void test_cluster_durable(void **state)
{
	(void)state;
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	char url[256], subj[64];
	cluster_url(url, sizeof(url));
	log_reset();
	double end = mono() + 30;
	while (!replicas_synced() && mono() < end)
		sleep_s(0.1);
	assert_true(replicas_synced());
	struct store *st = open_redis_wait(loop, url, 1, 1000, STORE_REDIS_FAIL_CLOSED, NULL);
	wait_ready(loop, st, 10);
	bool found = false;
	unsigned id = run_id();
	for (unsigned i = 0; i < 20; i++) {
		snprintf(subj, sizeof(subj), "cdurable-%u-%u", id, i);
		assert_int_equal(durable_put(loop, st, subj, "x", true, &found), STORE_OK);
		assert_true(found);
	}
	/* one batch, three slots (almost surely three masters): three WAITs */
	char s1[64], s2[64], s3[64];
	snprintf(s1, sizeof(s1), "m1-%u", id);
	snprintf(s2, sizeof(s2), "m2-%u", id);
	snprintf(s3, sizeof(s3), "m3-%u", id);
	struct store_op ops[3] = {
	    {.kind = STORE_PUT,
	     .rule = "@flag",
	     .subject = s1,
	     .val = "a",
	     .vlen = 1,
	     .durable = true},
	    {.kind = STORE_PUT,
	     .rule = "@flag",
	     .subject = s2,
	     .val = "b",
	     .vlen = 1,
	     .durable = true},
	    {.kind = STORE_PUT,
	     .rule = "@flag",
	     .subject = s3,
	     .val = "c",
	     .vlen = 1,
	     .durable = true},
	};
	struct store_redis_stats rs0, rs;
	store_redis_stats(st, &rs0);
	struct cap c = {0};
	run_batch(loop, st, ops, 3, wall_us(), &c);
	assert_int_equal(c.st, STORE_OK);
	store_redis_stats(st, &rs);
	assert_int_equal(rs.waits - rs0.waits, 3);
	assert_int_equal(rs.wait_short, 0);
	st->be->close(st);

	st = open_redis_wait(loop, url, 2, 100, STORE_REDIS_FAIL_CLOSED, NULL);
	wait_ready(loop, st, 10);
	snprintf(subj, sizeof(subj), "cdurable2-%u", id);
	assert_int_equal(durable_put(loop, st, subj, "y", true, &found), STORE_EREPLICA);
	assert_true(found);
	st->be->close(st);
	ev_loop_destroy(loop);
}

/* ---- main ---- */

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	if (env("PD_ONLY"))
		cmocka_set_test_filter(env("PD_ONLY"));
	const struct CMUnitTest offline[] = {
	    cmocka_unit_test(test_url_parse),
	    cmocka_unit_test(test_keyslot),
	};
	const struct CMUnitTest single[] = {
	    cmocka_unit_test(test_compare_tcp),    cmocka_unit_test(test_compare_unix),
	    cmocka_unit_test(test_shared_limit),   cmocka_unit_test(test_noscript),
	    cmocka_unit_test(test_close_inflight), cmocka_unit_test(test_auth),
	    cmocka_unit_test(test_kill_closed),    cmocka_unit_test(test_kill_open),
	    cmocka_unit_test(test_kill_local),     cmocka_unit_test(test_stopped),
	    cmocka_unit_test(test_merged_tcp),     cmocka_unit_test(test_merged_clock_back),
	    cmocka_unit_test(test_list),           cmocka_unit_test(test_durable_single),
	};
	const struct CMUnitTest cluster[] = {
	    cmocka_unit_test(test_cluster_keyslot_live),
	    cmocka_unit_test(test_cluster_durable),
	    cmocka_unit_test(test_compare_cluster),
	    cmocka_unit_test(test_cluster_shared_limit),
	    cmocka_unit_test(test_cluster_reshard),
	    cmocka_unit_test(test_cluster_ask),
	    cmocka_unit_test(test_cluster_failover),
	    cmocka_unit_test(test_merged_cluster),
	    cmocka_unit_test(test_cluster_list),
	};
	int failed = cmocka_run_group_tests_name("store_redis_offline", offline, NULL, NULL);
	if (env("PD_REDIS_PORT") && env("PD_DIR"))
		failed += cmocka_run_group_tests_name("store_redis_single", single, NULL, NULL);
	else
		fprintf(stderr, "# skipped store_redis_single: PD_REDIS_PORT / PD_DIR not set\n");
	if (env("PD_CLUSTER_PORTS") && env("PD_DIR"))
		failed += cmocka_run_group_tests_name("store_redis_cluster", cluster, NULL, NULL);
	else
		fprintf(stderr, "# skipped store_redis_cluster: PD_CLUSTER_PORTS not set\n");
	log_reset();
	return failed ? 1 : 0;
}
