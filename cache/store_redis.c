/*
 * cache/store_redis.c - the Redis and Redis Cluster backends of the state
 * store (store.h, store_redis.h), on hiredis's async API and its libev
 * adapter.
 *
 * Entry points: store_redis_open() (the backend table below),
 * store_redis_stats(), store_redis_failure_parse()/_name(), and for tests
 * store_redis_url_parse()/_format() and store_redis_keyslot().
 *
 * How a batch runs.  store_batch() copies the ops, names their keys
 * ("pd:{subject}:rule") and groups them by hash slot (one group without a
 * cluster).  Each group is queued on its server; an ev_prepare watcher
 * (it runs when the loop has handled everything ready, before it polls)
 * sends the queue as few EVALSHAs of RD_SCRIPT as it can: every group of
 * the queue that goes to the same slot (all of them without a cluster)
 * rides in one script as a sub-batch, up to RD_CALL_MAX_GROUPS groups and
 * RD_CALL_MAX_KEYS keys, with at most RD_MAX_INFLIGHT scripts unanswered
 * per connection (RD_MAX_INFLIGHT_CL in a cluster, where groups of other
 * slots cannot merge).  While Redis works, the next requests gather: under
 * load one round trip and one script serve many requests, and an idle
 * server answers a lone request at once.  The script reads every distinct
 * key once (one MGET), runs the sub-batches in order, each with store.h's
 * batch semantics and its own refusal, on the increments that C computed
 * exactly (cost * period / limit as quotient + remainder, so Lua only adds
 * and compares integers below 2^53), writes each changed key once
 * (SETRANGE, SET when new, DEL when all empty), and returns the
 * sub-batches' refusal flags, the keys as it read them and as it left
 * them, and the blob ops' raw values.  C then replays the sub-batches in
 * the same order on those windows with gcra.c (rd_apply() is
 * store_memory.c's sm_apply()): the results are the embedded store's by
 * construction, each sub-batch's refusal must equal the script's, and the
 * state C derives must equal the one the script wrote (else
 * rs.mismatches, logged).  Several groups of one batch (cluster): see the
 * header on compensation.  A batch has one ev_timer (the command
 * timeout); its callback comes exactly once: b->answered guards it, and
 * the batch is freed when answered and no reply is outstanding (b->refs).
 *
 * The script's arguments and the stored windows are binary (Lua's struct
 * library): ARGV[1] is the program (rd_call_format(); the layout is in
 * the comment of RD_SCRIPT), a rate key holds 9
 * little-endian doubles (us, rem of 4 windows, then the expiry deadline
 * its TTL covers), a blob holds a double (absolute expiry, 0: never) and
 * the value.  A key's TTL is set (SET ... PX) only when its windows
 * outgrow that deadline, with RD_EXPIRE_SLACK_US to spare, else SETRANGE
 * overwrites the value and keeps the TTL: in a Lua script, formatting a
 * number and each redis.call() are what costs (measured: tests/bench/
 * RESULTS.md).
 *
 * Servers (struct rd_node): DOWN (reconnect timer, backoff 100 ms .. 5 s),
 * CONNECTING (connect timer; AUTH, SELECT and SCRIPT LOAD pipelined, and
 * scripts may queue behind them), READY; RETIRED when a cluster node left
 * the map (its connection drains gracefully, so that no reply is cut off).
 * A watchdog drops a connection that leaves commands unanswered for
 * max(4 x command timeout, connect timeout).  Cluster: the slot map comes
 * from CLUSTER SLOTS (asked at most every 100 ms, from any ready node);
 * groups that cannot be sent now (no map, server down, TRYAGAIN,
 * CLUSTERDOWN, READONLY, ...) are parked and retried until their batch's
 * deadline.
 *
 * Durable ops (store.h): a group whose batch has one is not done when its
 * script's reply comes: WAIT wait_replicas wait_ms goes out on the same
 * connection (RD_G_WAIT), and a short count makes the batch's answer
 * STORE_EREPLICA (rd_wait_reply_fn()).  The batch's deadline is the command
 * timeout + wait_ms; such a batch never runs on the fallback store.
 *
 * list(): SCAN MATCH "pd:{*}:RULE" in pages of RD_LIST_COUNT on the
 * server (every master of the cluster map, one after the other), then a
 * GET of each key of the page, then the callbacks for the page (copies).
 *
 * Limits: see store_redis.h (numbers below 2^53, clocks within the key
 * expiry margin, getaddrinfo() blocks for host names, retried scripts
 * after a broken connection may count twice).  No TLS.
 */
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ev.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libev.h>

#include "store_redis.h"

#define RD_SLOTS            16384u
#define RD_MAX_NODES        256u
#define RD_MAX_MOVED        16u /* MOVED followed for one group (ASK, TRYAGAIN: the deadline) */
#define RD_MAX_NOSCRIPT     3u
#define RD_EXPIRE_MARGIN_MS 10000
#define RD_BACKOFF_MIN      0.1
#define RD_BACKOFF_MAX      5.0
#define RD_PARK_TICK        0.02 /* parked groups are looked at this often */
#define RD_PARK_DOWN        0.05 /* wait for a server that is down / a map */
#define RD_PARK_BUSY        0.1  /* CLUSTERDOWN, READONLY, LOADING, ... */
#define RD_PARK_TRYAGAIN    0.02
#define RD_REFRESH_MIN      0.1 /* seconds between CLUSTER SLOTS */
#define RD_EP_QUIET         1.0 /* an episode ends after a success this long after a failure */
#define RD_MAX_NOW          ((int64_t)1 << 52)
#define RD_MAX_PERIOD       ((uint64_t)1 << 52)
#define RD_MAX_LIMIT        (((uint64_t)1 << 53) - 1)
#define RD_EXACT            ((uint64_t)1 << 53)
#define RD_W                ((size_t)STORE_MAX_WINDOWS)
#define RD_WHY              256
#define RD_MAX_INFLIGHT     2u   /* scripts unanswered per connection before groups wait */
#define RD_MAX_INFLIGHT_CL  32u  /* the same, cluster: only groups of one slot merge */
#define RD_CALL_MAX_GROUPS  128u /* sub-batches in one script */
#define RD_CALL_MAX_KEYS    1024u
#define RD_STATE_LEN        72   /* a rate key: 4 x (us, rem) + expiry deadline, doubles */
#define RD_BLOB_HEAD        8    /* a blob: its expiry (double), then the value */
#define RD_LIST_COUNT       500u /* SCAN ... COUNT */

#define RD_STR_(x) #x
#define RD_STR(x)  RD_STR_(x)
/* the script's constants, in microseconds */
#define RD_EXPIRE_MARGIN_US 10000000 /* = RD_EXPIRE_MARGIN_MS */
#define RD_EXPIRE_SLACK_US  60000000

/*
 * KEYS: the call's distinct rate keys (strings of RD_STATE_LEN bytes), then
 * its blob keys.  ARGV[1]: the program, little-endian:
 *   u16 number of rate keys, u16 number of sub-batches; per sub-batch:
 *   double now, u16 ops; per op: u8 kind (0 TAKE, 1 PEEK, 2 REFUND, 3
 *   CLEAR, 4 GET, 5 PUT, 6 DEL), u8 refuse, u16 key (index in KEYS), u8
 *   windows, u8 zero cost; per window of a rate op: doubles limit, period,
 *   q, r (the increment cost * period / limit = q + r / limit; q = -1:
 *   never conforms (TAKE/PEEK, cost > limit) or empties the window
 *   (REFUND)); a PUT adds u16 the ARGV index of the stored value (its
 *   expiry as a double, then the value) and u16 that of its PX (0: none).
 * A TAKE of cost 0 only normalizes (rem < limit), as gcra_take() does.
 * Windows are used in place, empty when us < now or (us = now, rem = 0),
 * with `now` the sub-batch's; C sends the sub-batches of a script with
 * non-decreasing `now`, so what one leaves empty stays empty for the
 * next.  A refused sub-batch is undone from the log L (key, index, us,
 * rem) and its REFUNDs and CLEARs applied again.  Blob ops apply in pass
 * 1, in order, refused sub-batch or not; one MGET reads every key first.
 * Returns {refusal flags ('0'/'1' per sub-batch), each rate key as read,
 * each as left ('' when absent: all empty), then per blob op its raw
 * value before the op ('' when absent; PUT and DEL: its expiry only)}: the
 * values are returned one by one, as Redis's Lua hashes every byte of a
 * string it makes (a concatenation would cost that again).
 */
/* one line of Lua per line of C */
/* clang-format off */
static const char RD_SCRIPT[] =
    "local P, up, fmod = ARGV[1], struct.unpack, math.fmod\n"
    "local U, R, X, I, D, F, B, T, L = {}, {}, {}, {}, {}, {}, {}, {}, {}\n"
    "local nr, ng, pos = up('<HH', P)\n"
    "local V = redis.call('MGET', unpack(KEYS))\n"
    "for k = 1, nr do\n"
    "  local v, b = V[k], k * 4\n"
    "  if v and #v == " RD_STR(RD_STATE_LEN) " then\n"
    "    I[k] = v\n"
    "    U[b - 3], R[b - 3], U[b - 2], R[b - 2], U[b - 1], R[b - 1], U[b], R[b], X[k] =\n"
    "      up('<ddddddddd', v)\n"
    "  else\n"
    "    I[k] = false\n"
    "    U[b - 3], R[b - 3], U[b - 2], R[b - 2], U[b - 1], R[b - 1], U[b], R[b], X[k] =\n"
    "      0, 0, 0, 0, 0, 0, 0, 0, -1\n"
    "  end\n"
    "end\n"
    "local now = 0\n"
    "for g = 1, ng do\n"
    "  local nops, start, refused, nl\n"
    "  now, nops, pos = up('<dH', P, pos)\n"
    "  start, refused, nl = pos, false, 0\n"
    "  for pass = 1, 2 do\n"
    "    local ev = pass == 1\n"
    "    if not ev then\n"
    "      if not refused then break end\n"
    "      for j = nl - 3, 1, -4 do U[L[j + 1]], R[L[j + 1]] = L[j + 2], L[j + 3] end\n"
    "      pos = start\n"
    "    end\n"
    "    for o = 1, nops do\n"
    "      local kind, refuse, k, nw, zero\n"
    "      kind, refuse, k, nw, zero, pos = up('<BBHBB', P, pos)\n"
    "      local b = k * 4 - 4\n"
    "      if kind >= 4 then\n"
    "        if ev then\n"
    "          local cur = V[k]\n"
    "          if not cur then B[#B + 1] = ''\n"
    "          elseif kind == 4 then B[#B + 1] = cur\n"
    "          else B[#B + 1] = string.sub(cur, 1, " RD_STR(RD_BLOB_HEAD) ") end\n"
    "          if kind == 5 then\n"
    "            local vi, pi\n"
    "            vi, pi, pos = up('<HH', P, pos)\n"
    "            if pi == 0 then redis.call('SET', KEYS[k], ARGV[vi])\n"
    "            else redis.call('SET', KEYS[k], ARGV[vi], 'PX', ARGV[pi]) end\n"
    "            V[k] = ARGV[vi]\n"
    "          elseif kind == 6 and cur then\n"
    "            redis.call('DEL', KEYS[k])\n"
    "            V[k] = false\n"
    "          end\n"
    "        elseif kind == 5 then\n"
    "          pos = pos + 4\n"
    "        end\n"
    "      elseif kind == 3 then\n"
    "        for i = b + 1, b + 4 do\n"
    "          if ev then L[nl + 1], L[nl + 2], L[nl + 3], L[nl + 4], nl = k, i, U[i], R[i], nl + 4\n"
    "          else D[k] = true end\n"
    "          U[i], R[i] = 0, 0\n"
    "        end\n"
    "      elseif kind == 2 then\n"
    "        for i = b + 1, b + nw do\n"
    "          local l, p, q, ir\n"
    "          l, p, q, ir, pos = up('<dddd', P, pos)\n"
    "          local u, r = U[i], R[i]\n"
    "          if q < 0 or u < now or (u == now and r == 0) then\n"
    "            u, r = 0, 0\n"
    "          else\n"
    "            if r >= l then local m = fmod(r, l) u, r = u + (r - m) / l, m end\n"
    "            u = u - q\n"
    "            if r >= ir then r = r - ir else r, u = r + (l - ir), u - 1 end\n"
    "            if u < now or (u == now and r == 0) then u, r = 0, 0 end\n"
    "          end\n"
    "          if ev then L[nl + 1], L[nl + 2], L[nl + 3], L[nl + 4], nl = k, i, U[i], R[i], nl + 4\n"
    "          else D[k] = true end\n"
    "          U[i], R[i] = u, r\n"
    "        end\n"
    "      elseif ev and zero == 0 then\n"
    "        local ok = true\n"
    "        for w = 1, nw do\n"
    "          local l, p, q, ir\n"
    "          l, p, q, ir, pos = up('<dddd', P, pos)\n"
    "          if q < 0 then\n"
    "            ok = false\n"
    "          else\n"
    "            local u, r = U[b + w], R[b + w]\n"
    "            if u < now or (u == now and r == 0) then u, r = now, 0\n"
    "            elseif r >= l then local m = fmod(r, l) u, r = u + (r - m) / l, m end\n"
    "            u = u + q\n"
    "            if ir > 0 and r >= l - ir then r, u = r - (l - ir), u + 1 else r = r + ir end\n"
    "            if u - now < p or (u - now == p and r == 0) then T[w], T[w + 4] = u, r\n"
    "            else ok = false end\n"
    "          end\n"
    "        end\n"
    "        if not ok then\n"
    "          if refuse == 1 then refused = true end\n"
    "        elseif kind == 0 then\n"
    "          for w = 1, nw do\n"
    "            local i = b + w\n"
    "            L[nl + 1], L[nl + 2], L[nl + 3], L[nl + 4], nl = k, i, U[i], R[i], nl + 4\n"
    "            U[i], R[i] = T[w], T[w + 4]\n"
    "          end\n"
    "        end\n"
    "      elseif ev and kind == 0 then\n"
    "        for i = b + 1, b + nw do\n"
    "          local l\n"
    "          l, pos = up('<d', P, pos)\n"
    "          pos = pos + 24\n"
    "          local u, r = U[i], R[i]\n"
    "          if u < now or (u == now and r == 0) then u, r = 0, 0\n"
    "          elseif r >= l then local m = fmod(r, l) u, r = u + (r - m) / l, m end\n"
    "          if u ~= U[i] or r ~= R[i] then\n"
    "            L[nl + 1], L[nl + 2], L[nl + 3], L[nl + 4], nl = k, i, U[i], R[i], nl + 4\n"
    "            U[i], R[i] = u, r\n"
    "          end\n"
    "        end\n"
    "      else\n"
    "        pos = pos + 32 * nw\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "  if refused then F[g] = '1' else\n"
    "    F[g] = '0'\n"
    "    for j = 1, nl, 4 do D[L[j]] = true end\n"
    "  end\n"
    "end\n"
    "local out = {table.concat(F)}\n"
    "for k = 1, nr do\n"
    "  local v = I[k] or ''\n"
    "  out[k + 1] = v\n"
    "  if D[k] then\n"
    "    local b, top = k * 4, 0\n"
    "    for i = b - 3, b do\n"
    "      local t = U[i]\n"
    "      if R[i] > 0 then t = t + 1 end\n"
    "      if t > top then top = t end\n"
    "    end\n"
    "    if top <= now then\n"
    "      if I[k] then redis.call('DEL', KEYS[k]) end\n"
    "      v = ''\n"
    "    else\n"
    "      local x, px = X[k], nil\n"
    "      if x < top + " RD_STR(RD_EXPIRE_MARGIN_US) " then\n"
    "        x = top + " RD_STR(RD_EXPIRE_MARGIN_US) " + " RD_STR(RD_EXPIRE_SLACK_US) "\n"
    "        px = string.format('%d', math.ceil((x - now) / 1000))\n"
    "      end\n"
    "      v = struct.pack('<ddddddddd', U[b - 3], R[b - 3], U[b - 2], R[b - 2], U[b - 1],\n"
    "        R[b - 1], U[b], R[b], x)\n"
    "      if px then redis.call('SET', KEYS[k], v, 'PX', px)\n"
    "      else redis.call('SETRANGE', KEYS[k], '0', v) end\n"
    "    end\n"
    "  end\n"
    "  out[nr + k + 1] = v\n"
    "end\n"
    "for i = 1, #B do out[2 * nr + 1 + i] = B[i] end\n"
    "return out\n";
/* clang-format on */

enum rd_nstate { RD_DOWN = 0, RD_CONNECTING, RD_READY, RD_RETIRED };
/* RD_G_WAIT: the script ran, WAIT for the replicas is in flight (durable batches) */
enum rd_gstate { RD_G_NEW = 0, RD_G_QUEUED, RD_G_SENT, RD_G_PARKED, RD_G_WAIT, RD_G_OK, RD_G_FAIL };

struct rd_store;
struct rd_node;
struct rd_batch;
struct rd_list;

struct rd_episode {
	bool on;
	double since, last_fail;
	uint64_t failures;
};

struct rd_group {
	struct rd_batch *b;
	struct rd_group *next, *prev; /* the parked list, or its server's queue */
	struct rd_node *node;         /* where the last script went (or is queued) */
	struct rd_node *ask;          /* ASK target for the next send */
	double retry_at;
	uint16_t slot;
	uint8_t state;
	uint8_t moved, noscript; /* MOVED followed, NOSCRIPT seen */
	uint8_t nkeys, nrate;    /* keys, of which rate keys */
	uint8_t nkv;             /* blob ops */
	bool refused;            /* the script refused */
	bool asked;              /* the last send was preceded by ASKING */
};

struct rd_node {
	struct rd_store *s;
	unsigned idx;
	char host[256]; /* or the unix socket path */
	unsigned port;
	bool is_unix;
	char name[272]; /* for logs: host:port or the path, never a password */
	enum rd_nstate state;
	redisAsyncContext *ac;       /* the connection in use */
	redisAsyncContext *draining; /* a retired connection waiting for its replies */
	ev_timer timer;              /* CONNECTING: connect timeout; DOWN: reconnect */
	double backoff;
	bool in_map, in_new_map;
	bool loading;          /* SCRIPT LOAD after NOSCRIPT in flight */
	unsigned outstanding;  /* scripts sent on ac, not answered */
	struct rd_group queue; /* sentinel: groups waiting for a script to this server */
	double last_io;
	struct rd_episode ep;
	char why[RD_WHY]; /* why it is down */
};

struct rd_key {
	const char *str;
	size_t len;
	uint16_t slot;
	uint16_t ckey; /* 1-based index in the KEYS of the script it rides in */
	uint8_t group;
	bool blob; /* a namespace's blob, not windows */
};

/* the outcome of a GET, PUT or DEL, from the script */
struct rd_kv {
	bool found;
	const void *val; /* GET: owned by the batch (or rd_empty) */
	size_t vlen;
};

struct rd_batch {
	struct rd_store *s;
	store_cb *cb; /* NULL: an internal (compensating) batch */
	void *arg;
	int64_t now;
	size_t n, nkeys, ngroups;
	struct store_op *ops; /* copies, strings in the same block */
	struct rd_key *keys;
	struct rd_group *groups;
	struct gcra_tat *orig;    /* nkeys * RD_W windows as each group's script saw them */
	uint8_t *opkey;           /* op -> key */
	struct rd_kv *kv;         /* per op */
	struct store_result *res; /* one group: the results its reply gave (have_res) */
	bool have_res, res_refused;
	ev_timer deadline;
	unsigned refs;     /* replies outstanding + running code holding it */
	bool answered;     /* the callback was called (or is being called) */
	bool failed;       /* answered with a failure */
	bool durable;      /* an op asked for replication (and wait_replicas > 0) */
	bool unreplicated; /* a WAIT came back short: answer STORE_EREPLICA */
	char why[RD_WHY];
};

/* One script: the groups (sub-batches) it carries, in order. */
struct rd_call {
	struct rd_node *n;
	unsigned ng;
	size_t nrate; /* distinct rate keys (the first KEYS) */
	int64_t last_now;
	struct rd_group *g[];
};

struct rd_buf {
	char *p;
	size_t len, cap;
	bool oom;
};

/* a distinct key of the script being formatted */
struct rd_ukey {
	const char *str;
	size_t len;
	uint32_t hash;
	uint16_t ord; /* 1-based among the rate keys, or among the blob keys */
	bool blob;
};

struct rd_store {
	struct store pub; /* first: the public handle */
	struct ev_loop *loop;
	struct store_redis_url url; /* holds the password for AUTH */
	char display[512];          /* the URL without the password */
	double conn_to, cmd_to, hung_after;
	unsigned wait_replicas; /* durable batches: WAIT for this many (0: no WAIT) */
	unsigned wait_ms;
	enum store_redis_failure failure;
	struct store *fallback;
	void (*log)(int level, const char *msg);
	const char *(*map_path)(const char *path); /* NULL: none (see the opts) */
	bool cluster;
	bool closing;

	struct rd_node **nodes;
	unsigned nnodes;
	uint16_t *slots; /* cluster: node index + 1 per slot, 0 none */
	uint16_t *new_slots;

	bool have_map; /* a CLUSTER SLOTS reply was applied */
	bool refresh_wanted;
	struct rd_node *refresh_node; /* CLUSTER SLOTS in flight there */
	double last_refresh;
	unsigned refresh_rr;
	ev_timer refresh_timer;

	struct rd_group parked; /* sentinel of the parked groups */
	ev_timer park_timer;
	ev_timer watchdog;
	ev_prepare flusher; /* sends the queued groups before the loop polls */

	char sha[41];
	bool have_sha;
	struct rd_buf cmd;  /* the command being formatted */
	struct rd_buf prog; /* its program (ARGV[1]) */
	/* formatting scratch: distinct keys and their hash table */
	struct rd_ukey *uk;
	uint16_t *uh;
	size_t uk_cap, uh_cap;
	struct gcra_tat *run; /* a reply's windows, as the sub-batches leave them */
	size_t run_cap;
	unsigned disagree_logged;

	struct rd_list *lists; /* list() runs not finished */

	struct rd_episode ep; /* the cluster as a whole: map, coverage */
	struct store_stats st;
	struct store_redis_stats rs;
};

static const struct store_backend rd_backend;

static void rd_group_send(struct rd_group *g);
static void rd_call_reply_fn(redisAsyncContext *ac, void *r, void *priv);
static void rd_batch_check_done(struct rd_batch *b);
static void rd_batch_maybe_free(struct rd_batch *b);
static void rd_refresh_want(struct rd_store *s);
static void rd_node_connect(struct rd_node *n);
static void rd_park_kick(struct rd_store *s);
static void rd_park(struct rd_group *g, double delay);
static void rd_unpark(struct rd_group *g);
static void rd_group_fail(struct rd_group *g, struct rd_node *n, const char *why);
static void rd_node_drain(struct rd_node *n, const char *why);
static void rd_node_requeue(struct rd_node *n);

/* ---- small helpers ---- */

static void rd_log(struct rd_store *s, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void rd_log(struct rd_store *s, int level, const char *fmt, ...)
{
	if (s->log == NULL)
		return;
	char buf[768];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	s->log(level, buf);
}

static bool rd_prefix(const char *s, const char *p)
{
	return strncmp(s, p, strlen(p)) == 0;
}

/* an error reply's text, bounded and on one line */
static void rd_errtext(char *out, size_t outsz, const char *e, size_t len)
{
	size_t o = 0;
	for (size_t i = 0; i < len && o + 1 < outsz; i++)
		out[o++] = (e[i] == '\r' || e[i] == '\n') ? ' ' : e[i];
	out[o] = '\0';
}

const char *store_redis_failure_name(enum store_redis_failure f)
{
	switch (f) {
	case STORE_REDIS_FAIL_OPEN:
		return "open";
	case STORE_REDIS_FAIL_CLOSED:
		return "closed";
	case STORE_REDIS_FAIL_LOCAL:
		return "local";
	}
	return "?";
}

int store_redis_failure_parse(const char *name, enum store_redis_failure *out)
{
	static const enum store_redis_failure all[] = {
	    STORE_REDIS_FAIL_OPEN, STORE_REDIS_FAIL_CLOSED, STORE_REDIS_FAIL_LOCAL};
	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
		if (name && strcmp(name, store_redis_failure_name(all[i])) == 0) {
			*out = all[i];
			return 0;
		}
	}
	return -1;
}

/* ---- URLs ---- */

static int rd_err(char *err, size_t errsz, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int rd_err(char *err, size_t errsz, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	if (err && errsz)
		vsnprintf(err, errsz, fmt, ap);
	va_end(ap);
	return -1;
}

static int rd_hex(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* %-decode p[0..len) into out; the text is never quoted in errors */
static int rd_decode(const char *p, size_t len, char *out, size_t outsz, const char *what,
                     char *err, size_t errsz)
{
	size_t o = 0;
	for (size_t i = 0; i < len; i++) {
		char c = p[i];
		if (c == '%') {
			if (i + 2 >= len)
				return rd_err(err, errsz,
				              "redis URL: truncated %%-escape in the %s", what);
			int hi = rd_hex(p[i + 1]);
			int lo = rd_hex(p[i + 2]);
			if (hi < 0 || lo < 0)
				return rd_err(err, errsz, "redis URL: bad %%-escape in the %s",
				              what);
			c = (char)(hi * 16 + lo);
			if (c == '\0')
				return rd_err(err, errsz, "redis URL: %%00 in the %s", what);
			i += 2;
		}
		if (o + 1 >= outsz)
			return rd_err(err, errsz, "redis URL: the %s is too long (max %zu bytes)",
			              what, outsz - 1);
		out[o++] = c;
	}
	out[o] = '\0';
	return 0;
}

static int rd_number(const char *p, size_t len, unsigned long max, unsigned long *out)
{
	unsigned long v = 0;
	if (len == 0 || len > 10)
		return -1;
	for (size_t i = 0; i < len; i++) {
		if (p[i] < '0' || p[i] > '9')
			return -1;
		v = v * 10 + (unsigned long)(p[i] - '0');
	}
	if (v > max)
		return -1;
	*out = v;
	return 0;
}

static int rd_hostport(const char *p, size_t len, char *host, size_t hostsz, unsigned *port,
                       char *err, size_t errsz)
{
	const char *h = p, *ps = NULL;
	size_t hl;
	if (len == 0)
		return rd_err(err, errsz, "redis URL: no host");
	if (p[0] == '[') {
		const char *e = memchr(p, ']', len);
		if (e == NULL)
			return rd_err(err, errsz, "redis URL: '[' without ']' in \"%.*s\"",
			              (int)len, p);
		h = p + 1;
		hl = (size_t)(e - h);
		size_t rest = len - (size_t)(e + 1 - p);
		if (rest > 0) {
			if (e[1] != ':')
				return rd_err(err, errsz, "redis URL: junk after ']' in \"%.*s\"",
				              (int)len, p);
			ps = e + 2;
		}
	} else {
		const char *c = memchr(p, ':', len);
		if (c && memchr(c + 1, ':', len - (size_t)(c + 1 - p)))
			return rd_err(err, errsz,
			              "redis URL: put an IPv6 address in brackets: \"[%.*s]\"",
			              (int)len, p);
		hl = c ? (size_t)(c - p) : len;
		ps = c ? c + 1 : NULL;
	}
	if (hl == 0)
		return rd_err(err, errsz, "redis URL: no host in \"%.*s\"", (int)len, p);
	if (hl >= hostsz)
		return rd_err(err, errsz, "redis URL: host name too long (max %zu bytes)",
		              hostsz - 1);
	for (size_t i = 0; i < hl; i++) {
		unsigned char c = (unsigned char)h[i];
		if (c <= ' ' || c == '/' || c == '@' || c == '%' || c >= 0x7f)
			return rd_err(err, errsz, "redis URL: bad character in host \"%.*s\"",
			              (int)len, p);
	}
	memcpy(host, h, hl);
	host[hl] = '\0';
	*port = 6379;
	if (ps) {
		unsigned long v;
		size_t pl = len - (size_t)(ps - p);
		if (rd_number(ps, pl, 65535, &v) < 0 || v == 0)
			return rd_err(err, errsz, "redis URL: bad port \"%.*s\" (1..65535)",
			              (int)pl, ps);
		*port = (unsigned)v;
	}
	return 0;
}

int store_redis_url_parse(const char *url, struct store_redis_url *u, char *err, size_t errsz)
{
	memset(u, 0, sizeof(*u));
	if (url == NULL || url[0] == '\0')
		return rd_err(err, errsz, "redis URL: empty");
	const char *p;
	if (rd_prefix(url, "redis://")) {
		u->kind = STORE_REDIS_TCP;
		p = url + 8;
	} else if (rd_prefix(url, "redis+unix://")) {
		u->kind = STORE_REDIS_UNIX;
		p = url + 13;
	} else if (rd_prefix(url, "redis-cluster://")) {
		u->kind = STORE_REDIS_CLUSTER;
		p = url + 16;
	} else if (rd_prefix(url, "rediss://")) {
		return rd_err(err, errsz, "redis URL: TLS (rediss://) is not supported");
	} else {
		return rd_err(err, errsz,
		              "redis URL: must start with redis://, redis+unix:// or "
		              "redis-cluster://");
	}

	/* authority: [userinfo@]hosts, up to the first '/' or '?' */
	size_t alen = strcspn(p, "/?");
	const char *at = NULL;
	for (size_t i = 0; i < alen; i++)
		if (p[i] == '@')
			at = p + i;
	if (at == NULL && strchr(p + alen, '@'))
		return rd_err(err, errsz,
		              "redis URL: '@' after a '/' or '?': %%-encode '/', '?' "
		              "and '@' in the user name and password");
	if (at) {
		const char *colon = memchr(p, ':', (size_t)(at - p));
		if (colon == NULL)
			return rd_err(err, errsz,
			              "redis URL: user name without a password (write "
			              "user:password@ or :password@)");
		if (rd_decode(p, (size_t)(colon - p), u->user, sizeof(u->user), "user name", err,
		              errsz) < 0 ||
		    rd_decode(colon + 1, (size_t)(at - colon - 1), u->password, sizeof(u->password),
		              "password", err, errsz) < 0)
			return -1;
		if (u->password[0] == '\0')
			return rd_err(err, errsz, "redis URL: empty password");
		alen -= (size_t)(at + 1 - p);
		p = at + 1;
	}
	const char *rest = p + alen;

	if (u->kind == STORE_REDIS_UNIX) {
		if (alen > 0)
			return rd_err(err, errsz,
			              "redis URL: redis+unix:// takes no host: write "
			              "redis+unix:///path/to/socket");
		size_t plen = strcspn(rest, "?");
		if (plen == 0 || rest[0] != '/')
			return rd_err(err, errsz, "redis URL: no socket path (redis+unix:///path)");
		if (rd_decode(rest, plen, u->path, sizeof(u->path), "socket path", err, errsz) < 0)
			return -1;
		const char *q = rest + plen;
		if (*q == '?') {
			unsigned long v;
			q++;
			if (!rd_prefix(q, "db=") || rd_number(q + 3, strlen(q + 3), 999999, &v) < 0)
				return rd_err(err, errsz, "redis URL: bad query \"%s\" (only db=N)",
				              q);
			u->db = (unsigned)v;
		}
		return 0;
	}

	/* hosts */
	const char *h = p, *end = p + alen;
	while (h <= end) {
		const char *comma = memchr(h, ',', (size_t)(end - h));
		const char *he = comma ? comma : end;
		if (u->nhosts == STORE_REDIS_MAX_HOSTS)
			return rd_err(err, errsz, "redis URL: more than %d hosts",
			              STORE_REDIS_MAX_HOSTS);
		if (comma && u->kind != STORE_REDIS_CLUSTER)
			return rd_err(err, errsz, "redis URL: several hosts need redis-cluster://");
		if (rd_hostport(h, (size_t)(he - h), u->host[u->nhosts].host,
		                sizeof(u->host[0].host), &u->host[u->nhosts].port, err, errsz) < 0)
			return -1;
		u->nhosts++;
		if (comma == NULL)
			break;
		h = comma + 1;
	}

	/* path: /db */
	if (*rest == '?')
		return rd_err(err, errsz, "redis URL: no query allowed here (write the db as /N)");
	if (*rest == '/' && rest[1] != '\0') {
		unsigned long v;
		if (rd_number(rest + 1, strlen(rest + 1), 999999, &v) < 0)
			return rd_err(err, errsz, "redis URL: bad database \"%s\" (a number)",
			              rest + 1);
		if (u->kind == STORE_REDIS_CLUSTER && v != 0)
			return rd_err(err, errsz, "redis URL: a cluster has only database 0");
		u->db = (unsigned)v;
	}
	return 0;
}

static void rd_cat(char *out, size_t outsz, size_t *o, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void rd_cat(char *out, size_t outsz, size_t *o, const char *fmt, ...)
{
	if (*o >= outsz)
		return;
	va_list ap;
	va_start(ap, fmt);
	int k = vsnprintf(out + *o, outsz - *o, fmt, ap);
	va_end(ap);
	if (k > 0)
		*o += (size_t)k < outsz - *o ? (size_t)k : outsz - *o - 1;
}

void store_redis_url_format(const struct store_redis_url *u, char *out, size_t outsz)
{
	size_t o = 0;
	if (outsz == 0)
		return;
	out[0] = '\0';
	static const char *const scheme[] = {"redis://", "redis+unix://", "redis-cluster://"};
	rd_cat(out, outsz, &o, "%s", scheme[u->kind]);
	if (u->password[0])
		rd_cat(out, outsz, &o, "%s:***@", u->user);
	if (u->kind == STORE_REDIS_UNIX) {
		rd_cat(out, outsz, &o, "%s", u->path);
		if (u->db)
			rd_cat(out, outsz, &o, "?db=%u", u->db);
		return;
	}
	for (unsigned i = 0; i < u->nhosts; i++) {
		const char *hh = u->host[i].host;
		rd_cat(out, outsz, &o, strchr(hh, ':') ? "%s[%s]:%u" : "%s%s:%u", i ? "," : "", hh,
		       u->host[i].port);
	}
	if (u->kind == STORE_REDIS_TCP)
		rd_cat(out, outsz, &o, "/%u", u->db);
}

/* ---- hash slots ---- */

static uint16_t rd_crc16(const char *p, size_t len)
{
	uint16_t crc = 0; /* CRC-16/XMODEM, as Redis Cluster */
	for (size_t i = 0; i < len; i++) {
		crc ^= (uint16_t)((unsigned char)p[i] << 8);
		for (int k = 0; k < 8; k++)
			crc =
			    (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
	}
	return crc;
}

unsigned store_redis_keyslot(const char *key, size_t len)
{
	const char *open = memchr(key, '{', len);
	if (open) {
		size_t rest = len - (size_t)(open + 1 - key);
		const char *close = memchr(open + 1, '}', rest);
		if (close && close > open + 1)
			return rd_crc16(open + 1, (size_t)(close - open - 1)) & (RD_SLOTS - 1);
	}
	return rd_crc16(key, len) & (RD_SLOTS - 1);
}

/* ---- episodes ---- */

static void rd_ep_fail(struct rd_store *s, struct rd_episode *ep, const char *who, const char *why)
{
	s->rs.errors++;
	if (s->closing)
		return;
	ep->last_fail = ev_now(s->loop);
	if (ep->on) {
		ep->failures++;
		return;
	}
	ep->on = true;
	ep->since = ep->last_fail;
	ep->failures = 1;
	s->rs.episodes++;
	snprintf(s->pub.err, sizeof(s->pub.err), "redis %s: %s", who, why);
	rd_log(s, STORE_REDIS_LOG_WARN, "redis %s: unavailable: %s (failure policy %s%s)", who, why,
	       store_redis_failure_name(s->failure),
	       s->failure == STORE_REDIS_FAIL_LOCAL ? ": batches run on the embedded store" : "");
}

/*
 * A success: the episode ends, if no failure came in the last RD_EP_QUIET
 * (so that a server answering some batches and failing others does not
 * flap); `now` ends it anyway (a connection became ready, a node left).
 */
static void rd_ep_ok(struct rd_store *s, struct rd_episode *ep, const char *who, const char *how,
                     bool now)
{
	double t = ev_now(s->loop);
	if (!ep->on || (!now && t - ep->last_fail < RD_EP_QUIET))
		return;
	ep->on = false;
	rd_log(s, STORE_REDIS_LOG_INFO, "redis %s: %s after %.1f s (%" PRIu64 " failures)", who,
	       how, t - ep->since, ep->failures);
}

/* ---- command formatting (RESP) ---- */

static void rd_buf_raw(struct rd_buf *c, const char *p, size_t len)
{
	if (c->oom)
		return;
	if (c->cap - c->len < len) {
		size_t ncap = c->cap ? c->cap : 4096;
		while (ncap - c->len < len)
			ncap *= 2;
		char *np = realloc(c->p, ncap);
		if (np == NULL) {
			c->oom = true;
			return;
		}
		c->p = np;
		c->cap = ncap;
	}
	memcpy(c->p + c->len, p, len);
	c->len += len;
}

/* v in decimal, right-aligned to end (no NUL); returns its first char */
static char *rd_u64_dec(char *end, uint64_t v)
{
	do {
		*--end = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	return end;
}

static void rd_buf_head(struct rd_buf *c, char type, size_t n)
{
	char h[32], *p = rd_u64_dec(h + sizeof(h) - 2, n);
	h[sizeof(h) - 2] = '\r';
	h[sizeof(h) - 1] = '\n';
	*--p = type;
	rd_buf_raw(c, p, (size_t)(h + sizeof(h) - p));
}

static void rd_buf_arg(struct rd_buf *c, const char *p, size_t len)
{
	rd_buf_head(c, '$', len);
	rd_buf_raw(c, p, len);
	rd_buf_raw(c, "\r\n", 2);
}

static void rd_buf_str(struct rd_buf *c, const char *p)
{
	rd_buf_arg(c, p, strlen(p));
}

static void rd_buf_int(struct rd_buf *c, int64_t v)
{
	char t[24], *p = rd_u64_dec(t + sizeof(t), v < 0 ? 0 - (uint64_t)v : (uint64_t)v);
	if (v < 0)
		*--p = '-';
	rd_buf_arg(c, p, (size_t)(t + sizeof(t) - p));
}

static void rd_buf_reset(struct rd_buf *c)
{
	c->len = 0;
	c->oom = false;
}

/* ---- servers ---- */

static void rd_node_busy(struct rd_node *n)
{
	if (n->outstanding++ == 0)
		n->last_io = ev_now(n->s->loop);
}

static void rd_node_replied(struct rd_node *n, const redisAsyncContext *ac)
{
	if (n->ac != ac)
		return;
	if (n->outstanding)
		n->outstanding--;
	n->last_io = ev_now(n->s->loop);
}

/* The connection failed or broke (n->ac is already detached): wait, retry. */
static void rd_node_down(struct rd_node *n, const char *why)
{
	struct rd_store *s = n->s;
	n->state = RD_DOWN;
	n->outstanding = 0;
	n->loading = false;
	snprintf(n->why, sizeof(n->why), "%s", why);
	s->rs.conn_errors++;
	ev_timer_stop(s->loop, &n->timer);
	if (s->closing)
		return;
	if (n->ep.on)
		rd_log(s, STORE_REDIS_LOG_DEBUG, "redis %s: %s", n->name, why);
	rd_ep_fail(s, &n->ep, n->name, why);
	ev_timer_set(&n->timer, n->backoff, 0.);
	ev_timer_start(s->loop, &n->timer);
	n->backoff *= 2;
	if (n->backoff > RD_BACKOFF_MAX)
		n->backoff = RD_BACKOFF_MAX;
	if (s->refresh_node == n)
		s->refresh_node = NULL;
	rd_refresh_want(s);
	rd_node_drain(n, why);
}

/* hiredis is freeing ac (error, or our redisAsyncFree()): forget it */
static void rd_node_lost(struct rd_node *n, const redisAsyncContext *ac, const char *what)
{
	if (n == NULL || n->ac != ac)
		return;
	char why[RD_WHY];
	/* in the connect callback hiredis 0.14 has not copied c.errstr yet */
	const char *es = ac->err && ac->errstr ? ac->errstr : ac->c.err ? ac->c.errstr : NULL;
	if (es && es[0])
		snprintf(why, sizeof(why), "%s: %.120s", what, es);
	else
		snprintf(why, sizeof(why), "%s", what);
	((redisAsyncContext *)ac)->data = NULL;
	n->ac = NULL;
	rd_node_down(n, why);
}

/* Close n's connection now (its pending replies come back NULL), then down. */
static void rd_node_drop(struct rd_node *n, const char *why)
{
	redisAsyncContext *ac = n->ac;
	n->ac = NULL;
	rd_node_down(n, why); /* state first: the NULL replies may send again */
	if (ac) {
		ac->data = NULL;
		redisAsyncFree(ac);
	}
}

/* The cluster map no longer lists n: let its connection drain, forget it. */
static void rd_node_retire(struct rd_node *n)
{
	struct rd_store *s = n->s;
	redisAsyncContext *ac = n->ac;
	ev_timer_stop(s->loop, &n->timer);
	n->ac = NULL;
	n->state = RD_RETIRED;
	n->outstanding = 0;
	rd_ep_ok(s, &n->ep, n->name, "left the cluster map", true);
	if (s->refresh_node == n)
		s->refresh_node = NULL;
	rd_node_requeue(n);
	if (ac == NULL)
		return;
	if (n->draining) {
		redisAsyncContext *old = n->draining;
		n->draining = NULL;
		redisAsyncFree(old);
	}
	n->draining = ac;
	redisAsyncDisconnect(ac);
}

static void rd_on_connect(const redisAsyncContext *ac, int status)
{
	struct rd_node *n = ac->data;
	if (status != REDIS_OK)
		rd_node_lost(n, ac, "connect"); /* hiredis frees ac after this */
}

static void rd_on_disconnect(const redisAsyncContext *ac, int status)
{
	struct rd_node *n = ac->data;
	if (n == NULL)
		return;
	if (n->draining == ac) {
		n->draining = NULL;
		return;
	}
	rd_node_lost(n, ac, status == REDIS_OK ? "connection closed" : "connection lost");
}

/* An error reply during the handshake: close and retry later. */
static bool rd_handshake_failed(struct rd_node *n, redisAsyncContext *ac, redisReply *reply,
                                const char *what)
{
	if (n == NULL || n->ac != ac)
		return true;
	if (reply == NULL) {
		rd_node_lost(n, ac, "connection lost");
		return true;
	}
	if (reply->type != REDIS_REPLY_ERROR)
		return false;
	char e[RD_WHY], why[RD_WHY];
	rd_errtext(e, sizeof(e), reply->str, reply->len);
	snprintf(why, sizeof(why), "%s: %.200s", what, e);
	rd_node_drop(n, why);
	return true;
}

static void rd_on_auth(redisAsyncContext *ac, void *r, void *priv)
{
	(void)rd_handshake_failed(priv, ac, r, "authentication failed");
}

static void rd_on_select(redisAsyncContext *ac, void *r, void *priv)
{
	(void)rd_handshake_failed(priv, ac, r, "SELECT failed");
}

static void rd_take_sha(struct rd_store *s, redisReply *reply)
{
	if (reply->type == REDIS_REPLY_STRING && reply->len == 40) {
		memcpy(s->sha, reply->str, 40);
		s->sha[40] = '\0';
		s->have_sha = true;
	}
}

static void rd_on_load(redisAsyncContext *ac, void *r, void *priv)
{
	struct rd_node *n = priv;
	redisReply *reply = r;
	if (rd_handshake_failed(n, ac, reply, "SCRIPT LOAD failed"))
		return;
	struct rd_store *s = n->s;
	rd_take_sha(s, reply);
	ev_timer_stop(s->loop, &n->timer);
	n->state = RD_READY;
	n->backoff = RD_BACKOFF_MIN;
	n->why[0] = '\0';
	s->rs.connects++;
	rd_ep_ok(s, &n->ep, n->name, "available again", true);
	rd_log(s, STORE_REDIS_LOG_DEBUG, "redis %s: ready", n->name);
	rd_park_kick(s);
	if (s->cluster)
		rd_refresh_want(s);
}

/* SCRIPT LOAD after a NOSCRIPT */
static void rd_on_reload(redisAsyncContext *ac, void *r, void *priv)
{
	struct rd_node *n = priv;
	redisReply *reply = r;
	if (n->ac == ac)
		n->loading = false;
	if (reply && reply->type == REDIS_REPLY_STRING)
		rd_take_sha(n->s, reply);
}

static void rd_node_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct rd_node *n = w->data;
	(void)loop;
	(void)revents;
	if (n->state == RD_CONNECTING) {
		char why[RD_WHY];
		snprintf(why, sizeof(why), "not ready after %.0f ms (connect timeout)",
		         n->s->conn_to * 1000);
		rd_node_drop(n, why);
	} else if (n->state == RD_DOWN) {
		rd_node_connect(n);
	}
}

static void rd_node_connect(struct rd_node *n)
{
	struct rd_store *s = n->s;
	if (s->closing || n->ac)
		return;
	redisAsyncContext *ac =
	    n->is_unix ? redisAsyncConnectUnix(s->map_path ? s->map_path(n->host) : n->host)
	               : redisAsyncConnect(n->host, (int)n->port);
	if (ac == NULL) {
		rd_node_down(n, "connect: out of memory");
		return;
	}
	if (ac->err) {
		char why[RD_WHY];
		snprintf(why, sizeof(why), "connect: %s", ac->errstr);
		redisAsyncFree(ac);
		rd_node_down(n, why);
		return;
	}
	if (redisLibevAttach(s->loop, ac) != REDIS_OK) {
		redisAsyncFree(ac);
		rd_node_down(n, "connect: cannot attach to the event loop");
		return;
	}
	ac->data = n;
	redisAsyncSetConnectCallback(ac, rd_on_connect);
	redisAsyncSetDisconnectCallback(ac, rd_on_disconnect);
	n->ac = ac;
	n->state = RD_CONNECTING;
	n->outstanding = 0;
	n->loading = false;
	ev_timer_stop(s->loop, &n->timer);
	ev_timer_set(&n->timer, s->conn_to, 0.);
	ev_timer_start(s->loop, &n->timer);

	struct rd_buf *c = &s->cmd;
	int rc = REDIS_OK;
	if (s->url.password[0]) {
		rd_buf_reset(c);
		rd_buf_head(c, '*', s->url.user[0] ? 3 : 2);
		rd_buf_str(c, "AUTH");
		if (s->url.user[0])
			rd_buf_str(c, s->url.user);
		rd_buf_str(c, s->url.password);
		rc |= c->oom ? REDIS_ERR
		             : redisAsyncFormattedCommand(ac, rd_on_auth, n, c->p, c->len);
		if (c->p)
			explicit_bzero(c->p, c->len); /* no password left in the scratch buffer */
	}
	if (s->url.db && !s->cluster)
		rc |= redisAsyncCommand(ac, rd_on_select, n, "SELECT %u", s->url.db);
	rd_buf_reset(c);
	rd_buf_head(c, '*', 3);
	rd_buf_str(c, "SCRIPT");
	rd_buf_str(c, "LOAD");
	rd_buf_arg(c, RD_SCRIPT, sizeof(RD_SCRIPT) - 1);
	rc |= c->oom ? REDIS_ERR : redisAsyncFormattedCommand(ac, rd_on_load, n, c->p, c->len);
	if (rc != REDIS_OK)
		rd_node_drop(n, "connect: cannot queue the handshake");
}

static struct rd_node *rd_node_find(struct rd_store *s, const char *host, unsigned port)
{
	for (unsigned i = 0; i < s->nnodes; i++)
		if (s->nodes[i]->port == port && strcmp(s->nodes[i]->host, host) == 0)
			return s->nodes[i];
	return NULL;
}

static struct rd_node *rd_node_add(struct rd_store *s, const char *host, unsigned port,
                                   bool is_unix)
{
	if (s->nnodes >= RD_MAX_NODES || strlen(host) >= sizeof(s->nodes[0]->host))
		return NULL;
	if (s->nnodes % 8 == 0) {
		struct rd_node **nn = realloc(s->nodes, (s->nnodes + 8) * sizeof(struct rd_node *));
		if (nn == NULL)
			return NULL;
		s->nodes = nn;
	}
	struct rd_node *n = calloc(1, sizeof(*n));
	if (n == NULL)
		return NULL;
	n->s = s;
	n->idx = s->nnodes;
	snprintf(n->host, sizeof(n->host), "%s", host);
	n->port = port;
	n->is_unix = is_unix;
	if (is_unix)
		snprintf(n->name, sizeof(n->name), "%s", host);
	else
		snprintf(n->name, sizeof(n->name), strchr(host, ':') ? "[%s]:%u" : "%s:%u", host,
		         port);
	n->backoff = RD_BACKOFF_MIN;
	n->queue.next = n->queue.prev = &n->queue;
	ev_timer_init(&n->timer, rd_node_timer_cb, 0., 0.);
	n->timer.data = n;
	s->nodes[s->nnodes++] = n;
	return n;
}

/* The node at host:port, created or revived and connecting if need be. */
static struct rd_node *rd_node_get(struct rd_store *s, const char *host, unsigned port)
{
	struct rd_node *n = rd_node_find(s, host, port);
	if (n == NULL) {
		n = rd_node_add(s, host, port, false);
		if (n == NULL)
			return NULL;
		rd_log(s, STORE_REDIS_LOG_DEBUG, "redis %s: new cluster node", n->name);
	}
	if (n->state == RD_RETIRED) {
		n->state = RD_DOWN;
		n->backoff = RD_BACKOFF_MIN;
	}
	if (n->state == RD_DOWN && n->ac == NULL && !ev_is_active(&n->timer))
		rd_node_connect(n);
	return n;
}

/* ---- the cluster map ---- */

static void rd_refresh_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	struct rd_store *s = w->data;
	if (s->refresh_wanted)
		rd_refresh_want(s);
}

static void rd_on_slots(redisAsyncContext *ac, void *r, void *priv);

static void rd_refresh_want(struct rd_store *s)
{
	if (!s->cluster || s->closing)
		return;
	s->refresh_wanted = true;
	if (s->refresh_node)
		return;
	double now = ev_now(s->loop);
	if (s->last_refresh > 0 && now - s->last_refresh < RD_REFRESH_MIN) {
		if (!ev_is_active(&s->refresh_timer)) {
			ev_timer_set(&s->refresh_timer, s->last_refresh + RD_REFRESH_MIN - now, 0.);
			ev_timer_start(s->loop, &s->refresh_timer);
		}
		return;
	}
	struct rd_node *n = NULL;
	for (unsigned i = 0; i < s->nnodes && n == NULL; i++) {
		struct rd_node *m = s->nodes[(s->refresh_rr + i) % s->nnodes];
		if (m->state == RD_READY && m->ac)
			n = m;
	}
	if (n == NULL)
		return; /* asked again when a node is ready */
	s->refresh_rr = n->idx + 1;
	if (redisAsyncCommand(n->ac, rd_on_slots, n, "CLUSTER SLOTS") != REDIS_OK)
		return;
	s->refresh_node = n;
	s->refresh_wanted = false;
	s->last_refresh = now;
	s->rs.refreshes++;
}

static bool rd_slots_node(struct rd_store *s, struct rd_node *from, const redisReply *e,
                          struct rd_node **out)
{
	if (e->type != REDIS_REPLY_ARRAY || e->elements < 2 ||
	    e->element[0]->type != REDIS_REPLY_STRING || e->element[1]->type != REDIS_REPLY_INTEGER)
		return false;
	long long port = e->element[1]->integer;
	if (port < 1 || port > 65535)
		return false;
	char host[256];
	const char *h = e->element[0]->str;
	size_t hl = e->element[0]->len;
	if (hl == 0 || (hl == 1 && h[0] == '?')) { /* the node we asked */
		h = from->host;
		hl = strlen(h);
	}
	if (hl >= sizeof(host))
		return false;
	memcpy(host, h, hl);
	host[hl] = '\0';
	*out = rd_node_get(s, host, (unsigned)port);
	if (*out)
		(*out)->in_new_map = true;
	return *out != NULL;
}

static void rd_slots_apply(struct rd_store *s, struct rd_node *from, const redisReply *reply)
{
	char why[RD_WHY];
	if (reply->type != REDIS_REPLY_ARRAY || reply->elements == 0) {
		rd_ep_fail(s, &s->ep, "cluster", "CLUSTER SLOTS: no slot is assigned");
		return;
	}
	memset(s->new_slots, 0, RD_SLOTS * sizeof(*s->new_slots));
	for (unsigned i = 0; i < s->nnodes; i++)
		s->nodes[i]->in_new_map = false;
	for (size_t i = 0; i < reply->elements; i++) {
		const redisReply *e = reply->element[i];
		struct rd_node *m;
		if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
		    e->element[0]->type != REDIS_REPLY_INTEGER ||
		    e->element[1]->type != REDIS_REPLY_INTEGER || e->element[0]->integer < 0 ||
		    e->element[1]->integer >= (long long)RD_SLOTS ||
		    e->element[0]->integer > e->element[1]->integer ||
		    !rd_slots_node(s, from, e->element[2], &m)) {
			rd_ep_fail(s, &s->ep, "cluster", "CLUSTER SLOTS: unexpected reply");
			return;
		}
		for (long long k = e->element[0]->integer; k <= e->element[1]->integer; k++)
			s->new_slots[k] = (uint16_t)(m->idx + 1);
		for (size_t j = 3; j < e->elements; j++) {
			struct rd_node *rep;
			(void)rd_slots_node(s, from, e->element[j], &rep);
		}
	}
	uint16_t *t = s->slots;
	s->have_map = true;
	s->slots = s->new_slots;
	s->new_slots = t;
	unsigned covered = 0;
	for (unsigned k = 0; k < RD_SLOTS; k++)
		covered += s->slots[k] != 0;
	for (unsigned i = 0; i < s->nnodes; i++) {
		struct rd_node *n = s->nodes[i];
		n->in_map = n->in_new_map;
		if (!n->in_map && n->state != RD_RETIRED)
			rd_node_retire(n);
	}
	if (covered == RD_SLOTS) {
		rd_ep_ok(s, &s->ep, "cluster", "all slots served again", true);
	} else {
		snprintf(why, sizeof(why), "%u of %u slots have no server", RD_SLOTS - covered,
		         RD_SLOTS);
		rd_ep_fail(s, &s->ep, "cluster", why);
	}
	rd_park_kick(s);
}

static void rd_on_slots(redisAsyncContext *ac, void *r, void *priv)
{
	struct rd_node *n = priv;
	struct rd_store *s = n->s;
	redisReply *reply = r;
	if (s->refresh_node == n)
		s->refresh_node = NULL;
	if (reply == NULL) {
		rd_node_lost(n, ac, "connection lost");
		rd_refresh_want(s);
		return;
	}
	if (reply->type == REDIS_REPLY_ERROR) {
		char e[RD_WHY], why[RD_WHY + 32];
		rd_errtext(e, sizeof(e), reply->str, reply->len);
		snprintf(why, sizeof(why), "CLUSTER SLOTS from %.60s: %.100s", n->name, e);
		rd_ep_fail(s, &s->ep, "cluster", why);
		rd_refresh_want(s);
		return;
	}
	rd_slots_apply(s, n, reply);
}

/* ---- parked groups ---- */

static void rd_unpark(struct rd_group *g)
{
	if (g->next) {
		g->next->prev = g->prev;
		g->prev->next = g->next;
		g->next = g->prev = NULL;
	}
}

static void rd_park(struct rd_group *g, double delay)
{
	struct rd_store *s = g->b->s;
	struct rd_group *h = &s->parked;
	g->state = RD_G_PARKED;
	g->retry_at = ev_now(s->loop) + delay;
	g->prev = h->prev;
	g->next = h;
	h->prev->next = g;
	h->prev = g;
	if (!ev_is_active(&s->park_timer)) {
		ev_timer_set(&s->park_timer, RD_PARK_TICK, RD_PARK_TICK);
		ev_timer_start(s->loop, &s->park_timer);
	}
}

static void rd_park_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)revents;
	struct rd_store *s = w->data;
	struct rd_group due = {0}, *h = &s->parked;
	double now = ev_now(loop);
	due.next = due.prev = &due;
	for (struct rd_group *g = h->next, *nx; g != h; g = nx) {
		nx = g->next;
		if (g->retry_at > now)
			continue;
		rd_unpark(g);
		g->prev = due.prev;
		g->next = &due;
		due.prev->next = g;
		due.prev = g;
	}
	/* a send may answer a batch, which unparks its other groups from `due` */
	while (due.next != &due) {
		struct rd_group *g = due.next;
		struct rd_batch *b = g->b;
		rd_unpark(g);
		g->state = RD_G_NEW;
		b->refs++;
		rd_group_send(g);
		b->refs--;
		rd_batch_maybe_free(b);
	}
	if (h->next == h)
		ev_timer_stop(loop, w);
}

/* something changed (map, a server ready): retry every parked group soon */
static void rd_park_kick(struct rd_store *s)
{
	struct rd_group *h = &s->parked;
	if (h->next == h)
		return;
	for (struct rd_group *g = h->next; g != h; g = g->next)
		g->retry_at = 0;
	ev_timer_stop(s->loop, &s->park_timer);
	ev_timer_set(&s->park_timer, 0., RD_PARK_TICK);
	ev_timer_start(s->loop, &s->park_timer);
}

/* ---- batches: checking, naming keys, grouping ---- */

static bool rd_is_kv(enum store_op_kind k)
{
	return k == STORE_GET || k == STORE_PUT || k == STORE_DEL;
}

static int rd_check(struct rd_store *s, const struct store_op *ops, size_t n, int64_t now)
{
	char *err = s->pub.err;
	size_t errsz = sizeof(s->pub.err);
	if (n > STORE_MAX_BATCH)
		return rd_err(err, errsz, "batch of %zu ops (max %d)", n, STORE_MAX_BATCH);
	if (now <= 0 || now >= RD_MAX_NOW)
		return rd_err(err, errsz, "time %" PRId64 " out of the Redis store's range", now);
	for (size_t i = 0; i < n; i++) {
		const struct store_op *op = &ops[i];
		if ((unsigned)op->kind > STORE_DEL)
			return rd_err(err, errsz, "op %zu: bad kind %d", i, (int)op->kind);
		if (op->rule == NULL || op->subject == NULL)
			return rd_err(err, errsz, "op %zu: no rule or subject", i);
		size_t rlen = strnlen(op->rule, STORE_MAX_KEY + 1);
		size_t slen = strnlen(op->subject, STORE_MAX_KEY + 1);
		if (rlen == 0 || rlen + slen > STORE_MAX_KEY)
			return rd_err(err, errsz, "op %zu: rule + subject of %zu bytes (1..%d)", i,
			              rlen + slen, STORE_MAX_KEY);
		bool kv = rd_is_kv(op->kind);
		if (kv != (op->rule[0] == '@'))
			return rd_err(
			    err, errsz, "op %zu: '%s' %s", i, op->rule,
			    kv ? "is not a namespace (key-value ops need '@name')"
			       : "is a namespace (rate ops need a rule name without '@')");
		if (kv) {
			if (op->kind == STORE_PUT &&
			    (op->vlen > STORE_MAX_VALUE || (op->vlen > 0 && op->val == NULL)))
				return rd_err(err, errsz,
				              "op %zu: value of %zu bytes for %s %s (max %d)", i,
				              op->vlen, op->rule, op->subject, STORE_MAX_VALUE);
			continue;
		}
		if (op->nwin > STORE_MAX_WINDOWS)
			return rd_err(err, errsz, "op %zu: %u windows (max %d)", i, op->nwin,
			              STORE_MAX_WINDOWS);
		if (op->kind == STORE_CLEAR)
			continue;
		for (unsigned k = 0; k < op->nwin; k++) {
			const struct gcra_window *w = &op->win[k];
			if (w->limit == 0 || w->period_us == 0)
				return rd_err(err, errsz,
				              "op %zu: window %u has a zero limit or period", i, k);
			if (w->limit > RD_MAX_LIMIT || w->period_us > RD_MAX_PERIOD)
				return rd_err(
				    err, errsz,
				    "op %zu: window %u: limit or period too large for the "
				    "Redis store (limit < 2^53, period <= 2^52 us)",
				    i, k);
		}
	}
	return 0;
}

/* "pd:{subject}:rule", '%', '{', '}' of the rule %-encoded; returns the length */
static size_t rd_keyname(char *out, const char *rule, const char *subj)
{
	size_t o = 0, sl = strlen(subj);
	memcpy(out, "pd:{", 4);
	o = 4;
	memcpy(out + o, subj, sl);
	o += sl;
	out[o++] = '}';
	out[o++] = ':';
	for (const char *p = rule; *p; p++) {
		if (*p == '%' || *p == '{' || *p == '}') {
			static const char hx[] = "0123456789ABCDEF";
			out[o++] = '%';
			out[o++] = hx[(unsigned char)*p >> 4];
			out[o++] = hx[*p & 15];
		} else {
			out[o++] = *p;
		}
	}
	out[o] = '\0';
	return o;
}

static size_t rd_align(size_t x)
{
	return (x + 15) & ~(size_t)15;
}

static void rd_deadline_cb(struct ev_loop *loop, ev_timer *w, int revents);

/* One block: the batch, its op copies, keys, groups, windows, strings. */
static struct rd_batch *rd_batch_new(struct rd_store *s, const struct store_op *ops, size_t n,
                                     int64_t now)
{
	size_t strsz = 0;
	for (size_t i = 0; i < n; i++) {
		size_t rl = strlen(ops[i].rule), sl = strlen(ops[i].subject);
		strsz += (rl + 1) + (sl + 1) + (4 + sl + 2 + 3 * rl + 1);
		if (ops[i].kind == STORE_PUT)
			strsz += ops[i].vlen;
	}
	size_t o_ops = rd_align(sizeof(struct rd_batch));
	size_t o_keys = o_ops + rd_align(n * sizeof(struct store_op));
	size_t o_groups = o_keys + rd_align(n * sizeof(struct rd_key));
	size_t o_orig = o_groups + rd_align(n * sizeof(struct rd_group));
	size_t o_opkey = o_orig + rd_align(n * RD_W * sizeof(struct gcra_tat));
	size_t o_kv = o_opkey + rd_align(n);
	size_t o_res = o_kv + rd_align(n * sizeof(struct rd_kv));
	size_t o_str = o_res + rd_align(n * sizeof(struct store_result));
	char *mem = calloc(1, o_str + strsz);
	if (mem == NULL)
		return NULL;
	struct rd_batch *b = (struct rd_batch *)(void *)mem;
	b->s = s;
	b->now = now;
	b->n = n;
	b->ops = (struct store_op *)(void *)(mem + o_ops);
	b->keys = (struct rd_key *)(void *)(mem + o_keys);
	b->groups = (struct rd_group *)(void *)(mem + o_groups);
	b->orig = (struct gcra_tat *)(void *)(mem + o_orig);
	b->opkey = (uint8_t *)(mem + o_opkey);
	b->kv = (struct rd_kv *)(void *)(mem + o_kv);
	b->res = (struct store_result *)(void *)(mem + o_res);
	char *str = mem + o_str;

	for (size_t i = 0; i < n; i++) {
		struct store_op *op = &b->ops[i];
		*op = ops[i];
		size_t rl = strlen(ops[i].rule), sl = strlen(ops[i].subject);
		memcpy(str, ops[i].rule, rl + 1);
		op->rule = str;
		str += rl + 1;
		memcpy(str, ops[i].subject, sl + 1);
		op->subject = str;
		str += sl + 1;
		if (op->kind == STORE_PUT && op->vlen > 0) {
			memcpy(str, ops[i].val, op->vlen);
			op->val = str;
			str += op->vlen;
		}
		size_t kl = rd_keyname(str, op->rule, op->subject);
		size_t k;
		for (k = 0; k < b->nkeys; k++)
			if (b->keys[k].len == kl && memcmp(b->keys[k].str, str, kl) == 0)
				break;
		if (k == b->nkeys) {
			struct rd_key *key = &b->keys[b->nkeys++];
			key->str = str;
			key->len = kl;
			key->slot = s->cluster ? (uint16_t)store_redis_keyslot(str, kl) : 0;
			str += kl + 1;
			size_t g;
			for (g = 0; g < b->ngroups; g++)
				if (b->groups[g].slot == key->slot)
					break;
			if (g == b->ngroups) {
				b->groups[g].b = b;
				b->groups[g].slot = key->slot;
				b->ngroups++;
			}
			key->group = (uint8_t)g;
			key->blob = rd_is_kv(op->kind);
			b->groups[g].nkeys++;
			if (!key->blob)
				b->groups[g].nrate++;
		}
		b->opkey[i] = (uint8_t)k;
		if (rd_is_kv(op->kind))
			b->groups[b->keys[k].group].nkv++;
	}
	for (size_t i = 0; i < n && s->wait_replicas > 0; i++)
		if (ops[i].durable && (ops[i].kind == STORE_PUT || ops[i].kind == STORE_DEL))
			b->durable = true;
	/* a durable batch's WAIT has its own timeout after the script */
	ev_timer_init(&b->deadline, rd_deadline_cb,
	              s->cmd_to + (b->durable ? s->wait_ms / 1000.0 : 0.), 0.);
	b->deadline.data = b;
	return b;
}

/* ---- batches: results ---- */

static struct gcra_tat rd_canon(struct gcra_tat t, int64_t now)
{
	return gcra_is_empty(t, now) ? (struct gcra_tat){0, 0} : t;
}

/* store_memory.c's sm_apply(): the batch semantics of one op on its key's windows */
static bool rd_apply(const struct store_op *op, struct gcra_tat *cur, int64_t now,
                     struct store_result *r, bool eval)
{
	switch (op->kind) {
	case STORE_TAKE:
	case STORE_PEEK:
		if (eval) {
			struct gcra_tat next[STORE_MAX_WINDOWS];
			r->conform = true;
			r->window = -1;
			r->retry_us = 0;
			for (unsigned k = 0; k < op->nwin; k++) {
				uint64_t retry = 0;
				if (gcra_take(&op->win[k], cur[k], now, op->cost, &next[k], &retry))
					continue;
				if (r->conform)
					r->window = (int8_t)k;
				r->conform = false;
				if (retry > r->retry_us)
					r->retry_us = retry;
			}
			if (op->kind == STORE_TAKE && r->conform) {
				for (unsigned k = 0; k < op->nwin; k++)
					cur[k] = rd_canon(next[k], now);
				r->committed = true;
			}
		} else {
			r->committed = false;
		}
		break;
	case STORE_REFUND:
		for (unsigned k = 0; k < op->nwin; k++)
			cur[k] = rd_canon(gcra_refund(&op->win[k], cur[k], now, op->cost), now);
		r->conform = r->committed = true;
		r->window = -1;
		r->retry_us = 0;
		break;
	case STORE_CLEAR:
		for (unsigned k = 0; k < STORE_MAX_WINDOWS; k++)
			cur[k] = (struct gcra_tat){0, 0};
		r->conform = r->committed = true;
		r->window = -1;
		r->retry_us = 0;
		break;
	case STORE_GET:
	case STORE_PUT:
	case STORE_DEL:
		return false; /* rd_replay() */
	}
	for (unsigned k = 0; k < STORE_MAX_WINDOWS; k++) {
		bool have = k < op->nwin && op->kind != STORE_CLEAR;
		r->used[k] = have ? gcra_used(&op->win[k], cur[k], now) : 0;
		r->empty_in_us[k] = have ? gcra_empty_in(cur[k], now) : 0;
	}
	return op->refuse && (op->kind == STORE_TAKE || op->kind == STORE_PEEK) && !r->conform;
}

/* The ops of group gi (every group: gi < 0) on the windows in b->orig;
 * returns the refusal.  res: one result per op (only gi's are set when
 * gi >= 0); cur: the windows they leave, b->nkeys * RD_W. */
static bool rd_replay(const struct rd_batch *b, int gi, struct store_result *res,
                      struct gcra_tat *cur)
{
	size_t nt = b->nkeys * RD_W;
	for (size_t i = 0; i < nt; i++)
		cur[i] = rd_canon(b->orig[i], b->now);
	memset(res, 0, b->n * sizeof(*res));
	bool refused = false;
	for (size_t i = 0; i < b->n; i++) {
		if (gi >= 0 && b->keys[b->opkey[i]].group != gi)
			continue;
		if (rd_is_kv(b->ops[i].kind)) { /* what the script saw and did */
			res[i].conform = true;
			res[i].window = -1;
			res[i].committed = b->ops[i].kind != STORE_GET;
			res[i].found = b->kv[i].found;
			res[i].val = b->kv[i].val;
			res[i].vlen = b->kv[i].vlen;
			continue;
		}
		refused |=
		    rd_apply(&b->ops[i], &cur[(size_t)b->opkey[i] * RD_W], b->now, &res[i], true);
	}
	if (refused) {
		for (size_t i = 0; i < nt; i++)
			cur[i] = rd_canon(b->orig[i], b->now);
		for (size_t i = 0; i < b->n; i++) {
			if (rd_is_kv(b->ops[i].kind) ||
			    (gi >= 0 && b->keys[b->opkey[i]].group != gi))
				continue;
			(void)rd_apply(&b->ops[i], &cur[(size_t)b->opkey[i] * RD_W], b->now,
			               &res[i], false);
		}
	}
	return refused;
}

/* ---- scripts: formatting ---- */

/* cost * period / limit = q + r / limit; q = -1: never (take) / to the floor (refund) */
static void rd_inc(const struct gcra_window *w, uint64_t cost, bool take, int64_t *q, int64_t *r)
{
	unsigned __int128 prod = (unsigned __int128)cost * w->period_us;
	unsigned __int128 qq = prod / w->limit;
	if ((take && cost > w->limit) || qq >= RD_EXACT) {
		*q = -1;
		*r = 0;
		return;
	}
	*q = (int64_t)qq;
	*r = (int64_t)(prod % w->limit);
}

static uint32_t rd_hash(const char *p, size_t len)
{
	uint32_t h = 2166136261u; /* FNV-1a */
	for (size_t i = 0; i < len; i++)
		h = (h ^ (unsigned char)p[i]) * 16777619u;
	return h;
}

static int rd_scratch(struct rd_store *s, size_t nkeys)
{
	if (s->uk_cap < nkeys) {
		struct rd_ukey *u = realloc(s->uk, nkeys * sizeof(*u));
		if (u == NULL)
			return -1;
		s->uk = u;
		s->uk_cap = nkeys;
	}
	size_t hc = 64;
	while (hc < 2 * nkeys)
		hc *= 2;
	if (s->uh_cap < hc) {
		uint16_t *h = realloc(s->uh, hc * sizeof(*h));
		if (h == NULL)
			return -1;
		s->uh = h;
		s->uh_cap = hc;
	}
	return 0;
}

/*
 * Number the call's distinct keys (rate keys first, in order of first
 * use, then blob keys): key->ckey of every key of every group.  Returns the
 * number of distinct keys, -1 without memory.
 */
static long rd_call_keys(struct rd_store *s, struct rd_call *c)
{
	size_t upper = 0, nu = 0, nrate = 0, nblob = 0;
	for (unsigned i = 0; i < c->ng; i++)
		upper += c->g[i]->nkeys;
	if (rd_scratch(s, upper) < 0)
		return -1;
	size_t hc = 64;
	while (hc < 2 * upper)
		hc *= 2;
	memset(s->uh, 0, hc * sizeof(*s->uh));
	for (unsigned i = 0; i < c->ng; i++) {
		struct rd_batch *b = c->g[i]->b;
		size_t gi = (size_t)(c->g[i] - b->groups);
		for (size_t k = 0; k < b->nkeys; k++) {
			struct rd_key *key = &b->keys[k];
			if (key->group != gi)
				continue;
			uint32_t h = rd_hash(key->str, key->len);
			size_t slot = h & (hc - 1);
			while (s->uh[slot]) {
				const struct rd_ukey *u = &s->uk[s->uh[slot] - 1];
				if (u->hash == h && u->len == key->len &&
				    memcmp(u->str, key->str, key->len) == 0)
					break;
				slot = (slot + 1) & (hc - 1);
			}
			if (s->uh[slot] == 0) {
				struct rd_ukey *u = &s->uk[nu];
				u->str = key->str;
				u->len = key->len;
				u->hash = h;
				u->blob = key->blob;
				u->ord = (uint16_t)(key->blob ? ++nblob : ++nrate);
				s->uh[slot] = (uint16_t)++nu;
			}
			key->ckey = s->uh[slot];
		}
	}
	for (unsigned i = 0; i < c->ng; i++) {
		struct rd_batch *b = c->g[i]->b;
		size_t gi = (size_t)(c->g[i] - b->groups);
		for (size_t k = 0; k < b->nkeys; k++) {
			struct rd_key *key = &b->keys[k];
			if (key->group != gi)
				continue;
			const struct rd_ukey *u = &s->uk[key->ckey - 1];
			key->ckey = (uint16_t)(u->blob ? nrate + u->ord : u->ord);
		}
	}
	c->nrate = nrate;
	return (long)nu;
}

static void rd_buf_u8(struct rd_buf *c, unsigned v)
{
	char x = (char)(v & 0xff);
	rd_buf_raw(c, &x, 1);
}

static void rd_buf_u16(struct rd_buf *c, unsigned v)
{
	char x[2] = {(char)(v & 0xff), (char)((v >> 8) & 0xff)};
	rd_buf_raw(c, x, 2);
}

static void rd_put_dbl(char out[8], double d)
{
	uint64_t bits;
	memcpy(&bits, &d, sizeof(bits));
	for (int i = 0; i < 8; i++)
		out[i] = (char)((bits >> (8 * i)) & 0xff);
}

static double rd_get_dbl(const char *p)
{
	uint64_t bits = 0;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	memcpy(&bits, p, sizeof(bits));
#else
	for (int i = 7; i >= 0; i--)
		bits = (bits << 8) | (unsigned char)p[i];
#endif
	double d;
	memcpy(&d, &bits, sizeof(d));
	return d;
}

static void rd_buf_dbl(struct rd_buf *c, double d)
{
	char x[8];
	rd_put_dbl(x, d);
	rd_buf_raw(c, x, 8);
}

/* a PUT's absolute expiry (0: never) and the PX of its key (0: none) */
static void rd_put_expiry(const struct store_op *op, int64_t now, int64_t *exp, int64_t *px)
{
	uint64_t ttl = op->ttl_us;
	*exp = 0;
	if (ttl)
		*exp = ttl > (uint64_t)(INT64_MAX - now) ? INT64_MAX : now + (int64_t)ttl;
	*px = ttl == 0 || ttl > RD_MAX_PERIOD ? 0
	                                      : (int64_t)((ttl + 999) / 1000) + RD_EXPIRE_MARGIN_MS;
}

/* The script of call c into s->cmd (its program through s->prog). */
static int rd_call_format(struct rd_store *s, struct rd_call *c)
{
	long nu = rd_call_keys(s, c);
	if (nu < 0)
		return -1;
	struct rd_buf *p = &s->prog, *cmd = &s->cmd;
	rd_buf_reset(p);
	rd_buf_u16(p, (unsigned)c->nrate);
	rd_buf_u16(p, c->ng);
	unsigned argi = 1; /* ARGV[1] is the program */
	for (unsigned i = 0; i < c->ng; i++) {
		const struct rd_batch *b = c->g[i]->b;
		size_t gi = (size_t)(c->g[i] - b->groups), nops = 0;
		for (size_t k = 0; k < b->n; k++)
			nops += b->keys[b->opkey[k]].group == gi;
		rd_buf_dbl(p, (double)b->now);
		rd_buf_u16(p, (unsigned)nops);
		for (size_t k = 0; k < b->n; k++) {
			const struct store_op *op = &b->ops[k];
			const struct rd_key *key = &b->keys[b->opkey[k]];
			if (key->group != gi)
				continue;
			unsigned nw = op->kind == STORE_CLEAR || rd_is_kv(op->kind) ? 0 : op->nwin;
			rd_buf_u8(p, op->kind);
			rd_buf_u8(p, op->refuse);
			rd_buf_u16(p, key->ckey);
			rd_buf_u8(p, nw);
			rd_buf_u8(p, op->cost == 0);
			if (op->kind == STORE_PUT) {
				int64_t exp, px;
				rd_put_expiry(op, b->now, &exp, &px);
				unsigned vi = ++argi;
				rd_buf_u16(p, vi);
				rd_buf_u16(p, px ? ++argi : 0);
			}
			for (unsigned w = 0; w < nw; w++) {
				int64_t q, r;
				rd_inc(&op->win[w], op->cost, op->kind != STORE_REFUND, &q, &r);
				rd_buf_dbl(p, (double)op->win[w].limit);
				rd_buf_dbl(p, (double)op->win[w].period_us);
				rd_buf_dbl(p, (double)q);
				rd_buf_dbl(p, (double)r);
			}
		}
	}
	if (p->oom)
		return -1;

	rd_buf_reset(cmd);
	rd_buf_head(cmd, '*', 3 + (size_t)nu + argi);
	if (s->have_sha) {
		rd_buf_str(cmd, "EVALSHA");
		rd_buf_arg(cmd, s->sha, 40);
	} else {
		rd_buf_str(cmd, "EVAL");
		rd_buf_arg(cmd, RD_SCRIPT, sizeof(RD_SCRIPT) - 1);
	}
	rd_buf_int(cmd, nu);
	for (int blob = 0; blob < 2; blob++)
		for (long k = 0; k < nu; k++)
			if (s->uk[k].blob == blob)
				rd_buf_arg(cmd, s->uk[k].str, s->uk[k].len);
	rd_buf_arg(cmd, p->p, p->len);
	for (unsigned i = 0; i < c->ng; i++) {
		const struct rd_batch *b = c->g[i]->b;
		size_t gi = (size_t)(c->g[i] - b->groups);
		for (size_t k = 0; k < b->n; k++) {
			const struct store_op *op = &b->ops[k];
			if (op->kind != STORE_PUT || b->keys[b->opkey[k]].group != gi)
				continue;
			int64_t exp, px;
			char head[RD_BLOB_HEAD];
			rd_put_expiry(op, b->now, &exp, &px);
			rd_put_dbl(head, (double)exp);
			rd_buf_head(cmd, '$', RD_BLOB_HEAD + op->vlen);
			rd_buf_raw(cmd, head, RD_BLOB_HEAD);
			rd_buf_raw(cmd, op->vlen ? op->val : "", op->vlen);
			rd_buf_raw(cmd, "\r\n", 2);
			if (px)
				rd_buf_int(cmd, px);
		}
	}
	return cmd->oom ? -1 : 0;
}

/* ---- scripts: replies ---- */

static const char rd_empty[1];

/* RD_STATE_LEN bytes -> RD_W windows; -1 unless whole numbers in range */
static int rd_state_decode(const char *p, struct gcra_tat *t)
{
	for (size_t w = 0; w < RD_W; w++) {
		double u = rd_get_dbl(p + 16 * w), r = rd_get_dbl(p + 16 * w + 8);
		if (!(u >= 0 && u <= (double)RD_EXACT && r >= 0 && r < (double)RD_EXACT) ||
		    u != floor(u) || r != floor(r))
			return -1;
		t[w].us = (int64_t)u;
		t[w].rem = (uint64_t)r;
	}
	return 0;
}

/* a rate key's value in a reply: RD_STATE_LEN bytes, or "" (no key: all empty) */
static int rd_state_get(const redisReply *v, struct gcra_tat *t)
{
	if (v->len == 0) {
		memset(t, 0, RD_W * sizeof(*t));
		return 0;
	}
	return v->len == RD_STATE_LEN ? rd_state_decode(v->str, t) : -1;
}

/* a blob op's outcome from the raw value the script saw before it */
static int rd_kv_set(struct rd_batch *b, size_t i, const redisReply *v)
{
	struct rd_kv *kv = &b->kv[i];
	if (kv->val && kv->val != rd_empty)
		free((void *)kv->val);
	kv->val = NULL;
	kv->vlen = 0;
	kv->found = false;
	if (v->len < RD_BLOB_HEAD)
		return 0;
	double x = rd_get_dbl(v->str);
	kv->found = x == 0 || x > (double)b->now;
	if (!kv->found || b->ops[i].kind != STORE_GET)
		return 0;
	kv->val = rd_empty;
	if (v->len > RD_BLOB_HEAD) {
		void *copy = malloc(v->len - RD_BLOB_HEAD);
		if (copy == NULL)
			return -1;
		memcpy(copy, v->str + RD_BLOB_HEAD, v->len - RD_BLOB_HEAD);
		kv->val = copy;
		kv->vlen = v->len - RD_BLOB_HEAD;
	}
	return 0;
}

static bool rd_same_window(struct gcra_tat a, struct gcra_tat b, int64_t now)
{
	a = rd_canon(a, now);
	b = rd_canon(b, now);
	return a.us == b.us && a.rem == b.rem;
}

/*
 * The reply of call c: for each group in order, the windows of its keys
 * before it (into b->orig, from the keys as read and the groups before it,
 * replayed by gcra.c), its blob results and the script's refusal; then the
 * state derived for every key is checked against the one the script left.
 */
static int rd_call_parse(struct rd_store *s, struct rd_call *c, const redisReply *reply)
{
	size_t nkv = 0, nr = c->nrate;
	for (unsigned i = 0; i < c->ng; i++)
		nkv += c->g[i]->nkv;
	if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 1 + 2 * nr + nkv)
		return -1;
	for (size_t i = 0; i < reply->elements; i++)
		if (reply->element[i]->type != REDIS_REPLY_STRING)
			return -1;
	const redisReply *flags = reply->element[0];
	redisReply *const *in = reply->element + 1, *const *left = reply->element + 1 + nr;
	if (flags->len != c->ng)
		return -1;
	if (s->run_cap < nr * RD_W) {
		struct gcra_tat *t = realloc(s->run, nr * RD_W * sizeof(*t));
		if (t == NULL)
			return -1;
		s->run = t;
		s->run_cap = nr * RD_W;
	}
	for (size_t k = 0; k < nr; k++)
		if (rd_state_get(in[k], &s->run[k * RD_W]) < 0)
			return -1;
	size_t e = 1 + 2 * nr;
	struct store_result res[STORE_MAX_BATCH];
	struct gcra_tat cur[STORE_MAX_BATCH * RD_W];
	for (unsigned i = 0; i < c->ng; i++) {
		struct rd_group *g = c->g[i];
		struct rd_batch *b = g->b;
		size_t gi = (size_t)(g - b->groups);
		for (size_t k = 0; k < b->nkeys; k++) {
			if (b->keys[k].group != gi || b->keys[k].blob)
				continue;
			memcpy(&b->orig[k * RD_W], &s->run[(size_t)(b->keys[k].ckey - 1) * RD_W],
			       RD_W * sizeof(*cur));
		}
		for (size_t k = 0; k < b->n; k++) {
			if (!rd_is_kv(b->ops[k].kind) || b->keys[b->opkey[k]].group != gi)
				continue;
			if (rd_kv_set(b, k, reply->element[e++]) < 0)
				return -1;
		}
		g->refused = flags->str[i] == '1';
		if (b->ngroups == 1) { /* the batch's results: rd_batch_finish() uses them */
			b->res_refused = rd_replay(b, 0, b->res, cur);
			b->have_res = true;
		} else {
			(void)rd_replay(b, (int)gi, res, cur);
		}
		for (size_t k = 0; k < b->nkeys; k++) {
			if (b->keys[k].group != gi || b->keys[k].blob)
				continue;
			memcpy(&s->run[(size_t)(b->keys[k].ckey - 1) * RD_W], &cur[k * RD_W],
			       RD_W * sizeof(*cur));
		}
	}
	for (size_t k = 0; k < nr; k++) {
		struct gcra_tat t[RD_W];
		bool same = rd_state_get(left[k], t) == 0;
		for (size_t w = 0; w < RD_W && same; w++)
			same = rd_same_window(t[w], s->run[k * RD_W + w], c->last_now);
		if (same)
			continue;
		s->rs.errors++;
		s->rs.mismatches++;
		s->st.errors++;
		if (s->disagree_logged < 10) {
			s->disagree_logged++;
			rd_log(s, STORE_REDIS_LOG_ERR,
			       "redis: the script left a key in another state than gcra.c "
			       "computed (%zu sub-batches)",
			       (size_t)c->ng);
		}
	}
	return 0;
}
/* ---- batches: answers ---- */

static void rd_batch_start(struct rd_store *s, const struct store_op *ops, size_t n, int64_t now,
                           store_cb *cb, void *arg);

/*
 * Give back the TAKEs that the scripts of group `only` (NULL: every group
 * that succeeded without refusing) committed: one REFUND batch, same now.
 */
static void rd_compensate(struct rd_batch *b, struct rd_group *only)
{
	struct rd_store *s = b->s;
	struct store_result res[STORE_MAX_BATCH];
	struct store_op ops[STORE_MAX_BATCH];
	struct gcra_tat cur[STORE_MAX_BATCH * RD_W];
	size_t m = 0;
	if (b->cb == NULL) /* a compensation is not compensated */
		return;
	(void)rd_replay(b, -1, res, cur); /* res[].conform: the verdicts the scripts reached */
	for (size_t i = 0; i < b->n; i++) {
		const struct store_op *op = &b->ops[i];
		struct rd_group *g = &b->groups[b->keys[b->opkey[i]].group];
		if (only ? g != only : g->state != RD_G_OK)
			continue;
		if (g->refused || op->kind != STORE_TAKE || op->cost == 0 || !res[i].conform)
			continue;
		ops[m] = *op;
		ops[m].kind = STORE_REFUND;
		ops[m].refuse = false;
		m++;
	}
	if (m == 0)
		return;
	if (s->closing) {
		s->rs.comp_lost++;
		return;
	}
	s->rs.compensations++;
	rd_batch_start(s, ops, m, b->now, NULL, NULL);
}

static void rd_answer_begin(struct rd_batch *b)
{
	b->answered = true;
	ev_timer_stop(b->s->loop, &b->deadline);
	for (size_t g = 0; g < b->ngroups; g++)
		rd_unpark(&b->groups[g]);
}

static void rd_answer_fail(struct rd_batch *b)
{
	struct rd_store *s = b->s;
	rd_answer_begin(b);
	b->failed = true;
	if (b->cb == NULL) {
		s->rs.comp_lost++;
		rd_log(s, STORE_REDIS_LOG_WARN,
		       "redis: a compensating refund of %zu ops was lost (%s): those units stay "
		       "counted",
		       b->n, b->why);
		return;
	}
	s->st.errors++;
	/* a durable write means "on the Redis replicas": never the local fallback */
	if (s->failure == STORE_REDIS_FAIL_LOCAL && s->fallback && !s->closing && !b->durable) {
		s->rs.fallback++;
		if (store_batch(s->fallback, b->ops, b->n, b->now, b->cb, b->arg) == 0)
			return;
	}
	s->rs.unavail++;
	b->cb(b->arg, STORE_EUNAVAIL, NULL, 0);
}

/* Every group has succeeded or failed: compensate and answer. */
static void rd_batch_finish(struct rd_batch *b)
{
	struct rd_store *s = b->s;
	bool failed = false, grefused = false;
	for (size_t g = 0; g < b->ngroups; g++) {
		failed |= b->groups[g].state == RD_G_FAIL;
		grefused |= b->groups[g].refused;
	}
	if (failed) {
		if (s->failure != STORE_REDIS_FAIL_OPEN)
			rd_compensate(b, NULL);
		rd_answer_fail(b);
		return;
	}
	struct store_result resbuf[STORE_MAX_BATCH], *res = resbuf;
	struct gcra_tat cur[STORE_MAX_BATCH * RD_W];
	bool refused;
	if (b->have_res) {
		res = b->res;
		refused = b->res_refused;
	} else {
		refused = rd_replay(b, -1, res, cur);
	}
	if (refused != grefused) {
		/* cannot happen unless the script and gcra.c disagree */
		s->rs.errors++;
		s->rs.mismatches++;
		s->st.errors++;
		snprintf(s->pub.err, sizeof(s->pub.err), "redis: the script and gcra.c disagree");
		rd_log(s, STORE_REDIS_LOG_ERR, "redis: the script %s a batch that gcra.c %s",
		       grefused ? "refused" : "admitted", refused ? "refuses" : "admits");
		rd_answer_begin(b);
		b->failed = true;
		if (b->cb)
			b->cb(b->arg, STORE_EINTERNAL, NULL, 0);
		return;
	}
	if (refused && b->ngroups > 1)
		rd_compensate(b, NULL);
	rd_answer_begin(b);
	if (b->unreplicated) {
		s->st.errors++;
		snprintf(s->pub.err, sizeof(s->pub.err), "redis: %.200s", b->why);
		if (b->cb)
			b->cb(b->arg, STORE_EREPLICA, NULL, 0);
		return;
	}
	s->rs.ok++;
	if (b->cb)
		b->cb(b->arg, STORE_OK, res, b->n);
}

static void rd_batch_check_done(struct rd_batch *b)
{
	if (b->answered)
		return;
	for (size_t g = 0; g < b->ngroups; g++)
		if (b->groups[g].state != RD_G_OK && b->groups[g].state != RD_G_FAIL)
			return;
	rd_batch_finish(b);
}

static void rd_batch_maybe_free(struct rd_batch *b)
{
	if (!b->answered || b->refs > 0)
		return;
	ev_timer_stop(b->s->loop, &b->deadline);
	for (size_t i = 0; i < b->n; i++)
		if (b->kv[i].val && b->kv[i].val != rd_empty)
			free((void *)b->kv[i].val);
	free(b);
}

static void rd_group_fail(struct rd_group *g, struct rd_node *n, const char *why)
{
	struct rd_batch *b = g->b;
	struct rd_store *s = b->s;
	rd_unpark(g);
	g->state = RD_G_FAIL;
	if (b->why[0] == '\0')
		snprintf(b->why, sizeof(b->why), "%s", why);
	if (n)
		rd_ep_fail(s, &n->ep, n->name, why);
	else
		rd_ep_fail(s, &s->ep, "cluster", why);
	rd_batch_check_done(b);
}

static void rd_deadline_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	struct rd_batch *b = w->data;
	struct rd_store *s = b->s;
	if (b->answered)
		return;
	char why[RD_WHY];
	snprintf(why, sizeof(why), "no answer within %.0f ms (command timeout)", s->cmd_to * 1000);
	s->rs.timeouts++;
	b->refs++;
	for (size_t i = 0; i < b->ngroups; i++) {
		struct rd_group *g = &b->groups[i];
		if (g->state == RD_G_OK || g->state == RD_G_FAIL)
			continue;
		rd_unpark(g);
		const char *reason = g->state == RD_G_PARKED && b->why[0] ? b->why : why;
		if (g->node)
			rd_ep_fail(s, &g->node->ep, g->node->name, reason);
		else
			rd_ep_fail(s, &s->ep, "cluster", reason);
		if (b->why[0] == '\0')
			snprintf(b->why, sizeof(b->why), "%s", why);
		g->state = RD_G_FAIL;
	}
	rd_batch_check_done(b);
	b->refs--;
	rd_batch_maybe_free(b);
}

/* ---- scripts: sending ---- */

static struct rd_node *rd_route(struct rd_store *s, const struct rd_group *g)
{
	if (!s->cluster)
		return s->nodes[0];
	unsigned i = s->slots[g->slot];
	return i ? s->nodes[i - 1] : NULL;
}

static void rd_flush_start(struct rd_store *s)
{
	if (!s->closing && !ev_is_active(&s->flusher))
		ev_prepare_start(s->loop, &s->flusher);
}

/* fail every group of an unsent call, and free it */
static void rd_call_fail(struct rd_call *c, struct rd_node *n, const char *why)
{
	for (unsigned i = 0; i < c->ng; i++) {
		struct rd_batch *b = c->g[i]->b;
		b->refs++;
		rd_group_fail(c->g[i], n, why);
		b->refs--;
		rd_batch_maybe_free(b);
	}
	free(c);
}

static void rd_call_send(struct rd_node *n, struct rd_call *c, bool asking)
{
	struct rd_store *s = n->s;
	c->n = n;
	c->last_now = 0;
	for (unsigned i = 0; i < c->ng; i++)
		if (c->g[i]->b->now > c->last_now)
			c->last_now = c->g[i]->b->now;
	if (rd_call_format(s, c) < 0) {
		rd_call_fail(c, NULL, "out of memory");
		return;
	}
	if (asking && redisAsyncCommand(n->ac, NULL, NULL, "ASKING") != REDIS_OK) {
		rd_call_fail(c, n, "cannot send");
		return;
	}
	if (redisAsyncFormattedCommand(n->ac, rd_call_reply_fn, c, s->cmd.p, s->cmd.len) !=
	    REDIS_OK) {
		rd_call_fail(c, n, "cannot send");
		return;
	}
	for (unsigned i = 0; i < c->ng; i++) {
		struct rd_group *g = c->g[i];
		g->state = RD_G_SENT;
		g->node = n;
		g->asked = asking;
		g->b->refs++;
	}
	rd_node_busy(n);
	s->rs.scripts++;
	s->rs.groups += c->ng;
	if (!s->have_sha)
		s->rs.evals++;
}

/*
 * The next script from n's queue: the first group and the groups after it
 * for the same slot, in order, with non-decreasing `now`, within the
 * limits of one script.  NULL without memory.
 */
static struct rd_call *rd_call_take(struct rd_node *n)
{
	struct rd_group *h = &n->queue, *first = h->next;
	unsigned ng = 0;
	size_t keys = 0;
	int64_t last = INT64_MIN;
	for (struct rd_group *g = first; g != h; g = g->next) {
		if (g->slot != first->slot)
			continue;
		if (ng == RD_CALL_MAX_GROUPS || keys + g->nkeys > RD_CALL_MAX_KEYS ||
		    g->b->now < last)
			break;
		ng++;
		keys += g->nkeys;
		last = g->b->now;
	}
	struct rd_call *c = malloc(sizeof(*c) + ng * sizeof(c->g[0]));
	if (c == NULL)
		return NULL;
	c->ng = 0;
	for (struct rd_group *g = first, *nx; g != h && c->ng < ng; g = nx) {
		nx = g->next;
		if (g->slot != first->slot)
			continue;
		rd_unpark(g);
		c->g[c->ng++] = g;
	}
	return c;
}

/* Send n's queued groups, as few scripts as the in-flight limit allows. */
static void rd_node_flush(struct rd_node *n)
{
	unsigned cap = n->s->cluster ? RD_MAX_INFLIGHT_CL : RD_MAX_INFLIGHT;
	while (n->queue.next != &n->queue && n->outstanding < cap) {
		if (n->ac == NULL || (n->state != RD_CONNECTING && n->state != RD_READY))
			return; /* cannot happen: rd_node_down() empties the queue */
		struct rd_call *c = rd_call_take(n);
		if (c == NULL) {
			struct rd_group *g = n->queue.next;
			struct rd_batch *b = g->b;
			rd_unpark(g);
			b->refs++;
			rd_group_fail(g, NULL, "out of memory");
			b->refs--;
			rd_batch_maybe_free(b);
			continue;
		}
		rd_call_send(n, c, false);
	}
}

static void rd_flush_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
	(void)revents;
	struct rd_store *s = w->data;
	ev_prepare_stop(loop, w);
	for (unsigned i = 0; i < s->nnodes; i++)
		rd_node_flush(s->nodes[i]);
}

static void rd_group_send(struct rd_group *g)
{
	struct rd_batch *b = g->b;
	struct rd_store *s = b->s;
	struct rd_node *n = g->ask;
	bool asking = n != NULL;
	g->ask = NULL;
	if (n == NULL)
		n = rd_route(s, g);
	if (s->closing) {
		rd_group_fail(g, NULL, "the store is closing");
		return;
	}
	if (n == NULL) {
		char why[64];
		snprintf(why, sizeof(why), "no server for slot %u", g->slot);
		if (s->have_map) /* else: waiting for the first map is not a failure */
			rd_ep_fail(s, &s->ep, "cluster", why);
		snprintf(b->why, sizeof(b->why), "%s", why);
		rd_refresh_want(s);
		g->node = NULL;
		rd_park(g, RD_PARK_DOWN);
		return;
	}
	if (n->ac == NULL || (n->state != RD_CONNECTING && n->state != RD_READY)) {
		if (!s->cluster) {
			rd_group_fail(g, n, n->why[0] ? n->why : "not connected");
			return;
		}
		rd_refresh_want(s);
		g->node = n;
		rd_park(g, RD_PARK_DOWN);
		return;
	}
	if (asking) { /* ASKING covers the next command only: a script of its own */
		struct rd_call *c = malloc(sizeof(*c) + sizeof(c->g[0]));
		if (c == NULL) {
			rd_group_fail(g, NULL, "out of memory");
			return;
		}
		c->ng = 1;
		c->g[0] = g;
		rd_call_send(n, c, true);
		return;
	}
	struct rd_group *h = &n->queue;
	g->state = RD_G_QUEUED;
	g->node = n;
	g->prev = h->prev;
	g->next = h;
	h->prev->next = g;
	h->prev = g;
	rd_flush_start(s);
}

/*
 * n went down (or is closing): its queued groups wait for the cluster map
 * (parked) or fail now.
 */
static void rd_node_drain(struct rd_node *n, const char *why)
{
	struct rd_store *s = n->s;
	while (n->queue.next != &n->queue) {
		struct rd_group *g = n->queue.next;
		struct rd_batch *b = g->b;
		rd_unpark(g);
		g->state = RD_G_NEW;
		b->refs++;
		if (s->cluster && !s->closing) {
			snprintf(b->why, sizeof(b->why), "%s", why);
			rd_park(g, RD_PARK_DOWN);
		} else {
			rd_group_fail(g, n, why);
		}
		b->refs--;
		rd_batch_maybe_free(b);
	}
}

/* n left the cluster map: its queued groups go where the map says now */
static void rd_node_requeue(struct rd_node *n)
{
	while (n->queue.next != &n->queue) {
		struct rd_group *g = n->queue.next;
		struct rd_batch *b = g->b;
		rd_unpark(g);
		g->state = RD_G_NEW;
		b->refs++;
		rd_group_send(g);
		b->refs--;
		rd_batch_maybe_free(b);
	}
}

static struct rd_node *rd_redirect(struct rd_store *s, const struct rd_node *from, const char *e,
                                   unsigned *slot)
{
	char *end;
	unsigned long sl = strtoul(e, &end, 10);
	if (end == e || *end != ' ' || sl >= RD_SLOTS)
		return NULL;
	const char *hp = end + 1, *colon = strrchr(hp, ':');
	if (colon == NULL)
		return NULL;
	unsigned long port = strtoul(colon + 1, &end, 10);
	if (end == colon + 1 || *end != '\0' || port == 0 || port > 65535)
		return NULL;
	char host[256];
	size_t hl = (size_t)(colon - hp);
	if (hl == 0) { /* unknown endpoint: the node that answered */
		hp = from->host;
		hl = strlen(hp);
	}
	if (hl >= sizeof(host))
		return NULL;
	memcpy(host, hp, hl);
	host[hl] = '\0';
	*slot = (unsigned)sl;
	return rd_node_get(s, host, (unsigned)port);
}

static void rd_group_error(struct rd_group *g, struct rd_node *n, const redisReply *reply)
{
	struct rd_batch *b = g->b;
	struct rd_store *s = b->s;
	const char *e = reply->str;
	char txt[RD_WHY];
	rd_errtext(txt, sizeof(txt), reply->str, reply->len);
	rd_log(s, STORE_REDIS_LOG_DEBUG, "redis %s: %s", n->name, txt);
	if (s->cluster && (rd_prefix(e, "MOVED ") || rd_prefix(e, "ASK "))) {
		bool moved = e[0] == 'M';
		unsigned slot = 0;
		struct rd_node *to = rd_redirect(s, n, e + (moved ? 6 : 4), &slot);
		if (to == NULL) {
			rd_group_fail(g, n, txt);
			return;
		}
		if (moved && ++g->moved > RD_MAX_MOVED) {
			rd_group_fail(g, n, "too many MOVED redirections");
			return;
		}
		if (moved) {
			s->rs.moved++;
			s->slots[slot] = (uint16_t)(to->idx + 1);
			rd_refresh_want(s);
		} else {
			s->rs.ask++;
			g->ask = to;
		}
		rd_group_send(g);
		return;
	}
	if (rd_prefix(e, "NOSCRIPT")) {
		s->rs.noscript++;
		if (++g->noscript > RD_MAX_NOSCRIPT) {
			rd_group_fail(g, n, "NOSCRIPT again after SCRIPT LOAD");
			return;
		}
		if (n->ac && !n->loading) {
			struct rd_buf *c = &s->cmd;
			rd_buf_reset(c);
			rd_buf_head(c, '*', 3);
			rd_buf_str(c, "SCRIPT");
			rd_buf_str(c, "LOAD");
			rd_buf_arg(c, RD_SCRIPT, sizeof(RD_SCRIPT) - 1);
			if (!c->oom && redisAsyncFormattedCommand(n->ac, rd_on_reload, n, c->p,
			                                          c->len) == REDIS_OK)
				n->loading = true;
		}
		if (g->asked)
			g->ask = n;
		rd_group_send(g); /* behind the SCRIPT LOAD on the same connection */
		return;
	}
	if (s->cluster && rd_prefix(e, "TRYAGAIN")) {
		s->rs.tryagain++;
		rd_park(g, RD_PARK_TRYAGAIN);
		return;
	}
	if (s->cluster && (rd_prefix(e, "CLUSTERDOWN") || rd_prefix(e, "READONLY") ||
	                   rd_prefix(e, "MASTERDOWN") || rd_prefix(e, "LOADING"))) {
		if (e[0] == 'C')
			s->rs.clusterdown++;
		snprintf(b->why, sizeof(b->why), "%s", txt);
		rd_refresh_want(s);
		rd_park(g, RD_PARK_BUSY);
		return;
	}
	rd_group_fail(g, n, txt);
}

/* A group of a script whose batch was answered meanwhile; if it failed: give back its TAKEs. */
static void rd_late_group(struct rd_group *g)
{
	struct rd_batch *b = g->b;
	struct rd_store *s = b->s;
	if (!b->failed || b->cb == NULL || s->failure == STORE_REDIS_FAIL_OPEN)
		return;
	rd_compensate(b, g);
}

/*
 * Durable batches.  The script of group g ran on n; WAIT on the SAME
 * connection (ac) covers its writes, since Redis counts a client's own
 * replication offset: later commands of the connection only raise it, a
 * new connection would prove nothing.  WAIT blocks the connection (the
 * scripts behind it wait too) for at most wait_ms.  Fewer replicas than
 * asked: the batch is answered STORE_EREPLICA, and the caller writes again.
 */
static void rd_wait_reply_fn(redisAsyncContext *ac, void *r, void *priv)
{
	struct rd_group *g = priv;
	struct rd_batch *b = g->b;
	struct rd_node *n = g->node;
	struct rd_store *s = b->s;
	redisReply *reply = r;
	rd_node_replied(n, ac);
	if (reply == NULL)
		rd_node_lost(n, ac, "connection lost");
	if (!b->answered && g->state == RD_G_WAIT) {
		long long got = reply && reply->type == REDIS_REPLY_INTEGER ? reply->integer : -1;
		if (got < (long long)s->wait_replicas) {
			s->rs.wait_short++;
			b->unreplicated = true;
			if (reply && reply->type == REDIS_REPLY_ERROR) {
				char txt[RD_WHY];
				rd_errtext(txt, sizeof(txt), reply->str, reply->len);
				snprintf(b->why, sizeof(b->why), "WAIT on %.100s: %.120s", n->name,
				         txt);
			} else {
				snprintf(
				    b->why, sizeof(b->why),
				    "WAIT on %.100s: %lld of %u replicas acknowledged within %u ms",
				    n->name, got < 0 ? 0LL : got, s->wait_replicas, s->wait_ms);
			}
			rd_log(s, STORE_REDIS_LOG_WARN, "redis: %s", b->why);
		} else {
			s->rs.wait_ok++;
		}
		g->state = RD_G_OK;
		rd_batch_check_done(b);
	}
	b->refs--;
	rd_batch_maybe_free(b);
}

static void rd_wait_send(struct rd_group *g, struct rd_node *n, redisAsyncContext *ac)
{
	struct rd_batch *b = g->b;
	struct rd_store *s = b->s;
	g->state = RD_G_WAIT;
	s->rs.waits++;
	if (ac == NULL || redisAsyncCommand(ac, rd_wait_reply_fn, g, "WAIT %u %u", s->wait_replicas,
	                                    s->wait_ms) != REDIS_OK) {
		s->rs.wait_short++;
		b->unreplicated = true;
		snprintf(b->why, sizeof(b->why), "WAIT on %.100s: cannot send", n->name);
		g->state = RD_G_OK;
		rd_batch_check_done(b);
		return;
	}
	b->refs++;
	if (ac == n->ac)
		rd_node_busy(n);
}

static void rd_call_reply_fn(redisAsyncContext *ac, void *r, void *priv)
{
	struct rd_call *c = priv;
	struct rd_node *n = c->n;
	struct rd_store *s = n->s;
	redisReply *reply = r;

	rd_node_replied(n, ac);
	if (reply == NULL)
		rd_node_lost(n, ac, "connection lost");
	bool parsed = reply && reply->type != REDIS_REPLY_ERROR && rd_call_parse(s, c, reply) == 0;
	for (unsigned i = 0; i < c->ng; i++) {
		struct rd_group *g = c->g[i];
		struct rd_batch *b = g->b;
		if (b->answered) {
			s->rs.late++;
			if (parsed)
				rd_late_group(g);
		} else if (g->state != RD_G_SENT) {
			/* not expected: one script per group in flight */
		} else if (reply == NULL) {
			if (s->cluster && !s->closing) {
				snprintf(b->why, sizeof(b->why), "%s",
				         n->why[0] ? n->why : "connection lost");
				rd_park(g, RD_PARK_DOWN);
			} else {
				rd_group_fail(g, n, n->why[0] ? n->why : "connection lost");
			}
		} else if (reply->type == REDIS_REPLY_ERROR) {
			rd_group_error(g, n, reply);
		} else if (!parsed) {
			rd_group_fail(g, n, "unexpected reply to the script");
		} else if (b->durable) {
			rd_ep_ok(s, &n->ep, n->name, "available again", false);
			rd_wait_send(g, n, ac);
		} else {
			g->state = RD_G_OK;
			rd_ep_ok(s, &n->ep, n->name, "available again", false);
			rd_batch_check_done(b);
		}
		b->refs--;
		rd_batch_maybe_free(b);
	}
	free(c);
	if (n->queue.next != &n->queue)
		rd_flush_start(s);
}

static void rd_batch_start(struct rd_store *s, const struct store_op *ops, size_t n, int64_t now,
                           store_cb *cb, void *arg)
{
	struct rd_batch *b = rd_batch_new(s, ops, n, now);
	if (b == NULL) {
		snprintf(s->pub.err, sizeof(s->pub.err), "redis: out of memory");
		s->st.errors++;
		if (cb)
			cb(arg, STORE_EINTERNAL, NULL, 0);
		else
			s->rs.comp_lost++;
		return;
	}
	b->cb = cb;
	b->arg = arg;
	if (b->ngroups > 1)
		s->rs.split++;
	ev_timer_start(s->loop, &b->deadline);
	b->refs++;
	for (size_t g = 0; g < b->ngroups && !b->answered; g++)
		rd_group_send(&b->groups[g]);
	b->refs--;
	rd_batch_maybe_free(b);
}

static void rd_watchdog_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)revents;
	struct rd_store *s = w->data;
	double now = ev_now(loop);
	for (unsigned i = 0; i < s->nnodes; i++) {
		struct rd_node *n = s->nodes[i];
		if (n->ac && n->outstanding && now - n->last_io > s->hung_after) {
			char why[RD_WHY];
			snprintf(why, sizeof(why), "no reply for %.1f s", now - n->last_io);
			rd_node_drop(n, why);
		}
	}
}

/* ---- list() ---- */

enum rd_lphase { RD_L_WAIT = 0, RD_L_BUSY };

/* a key of the page: offsets into the page buffer */
struct rd_lkey {
	size_t subj, slen, val, vlen;
	bool have;
};

struct rd_list {
	struct rd_store *s;
	struct rd_list *next;
	bool ns;
	uint8_t nwin;
	struct gcra_window win[STORE_MAX_WINDOWS];
	int64_t now;
	bool (*cb)(void *arg, const char *subject, const struct store_result *res);
	void (*done)(void *arg, enum store_status st);
	void *arg;
	char *pattern; /* SCAN ... MATCH */
	char *suffix;  /* "}:" and the rule as in key names */
	size_t suffix_len;
	struct rd_node **masters;
	unsigned nmasters, mi;
	char cursor[24];
	ev_timer timer;
	enum rd_lphase phase;
	double wait_until;
	unsigned pending; /* replies outstanding */
	bool finished;    /* done() called */
	char *buf;        /* the page: subjects and values */
	size_t blen, bcap;
	struct rd_lkey *keys;
	size_t nkeys, kcap, got;
};

static void rd_list_step(struct rd_list *L);

static void rd_list_free(struct rd_list *L)
{
	free(L->pattern);
	free(L->suffix);
	free(L->masters);
	free(L->buf);
	free(L->keys);
	free(L);
}

static void rd_list_maybe_free(struct rd_list *L)
{
	if (L->finished && L->pending == 0)
		rd_list_free(L);
}

static void rd_list_finish(struct rd_list *L, enum store_status st, const char *why)
{
	struct rd_store *s = L->s;
	if (L->finished)
		return;
	L->finished = true;
	ev_timer_stop(s->loop, &L->timer);
	for (struct rd_list **p = &s->lists; *p; p = &(*p)->next)
		if (*p == L) {
			*p = L->next;
			break;
		}
	if (st != STORE_OK) {
		s->st.errors++;
		snprintf(s->pub.err, sizeof(s->pub.err), "redis list: %s", why);
		rd_log(s, STORE_REDIS_LOG_WARN, "redis: listing keys failed: %s", why);
	}
	L->done(L->arg, st);
	rd_list_maybe_free(L);
}

static void rd_list_timer(struct rd_list *L, double after)
{
	ev_timer_stop(L->s->loop, &L->timer);
	ev_timer_set(&L->timer, after, 0.);
	ev_timer_start(L->s->loop, &L->timer);
}

static void rd_list_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	struct rd_list *L = w->data;
	if (L->phase == RD_L_BUSY) {
		char why[RD_WHY + 300];
		snprintf(why, sizeof(why), "no answer from %s in time",
		         L->mi < L->nmasters ? L->masters[L->mi]->name : "the server");
		rd_list_finish(L, STORE_EUNAVAIL, why);
		return;
	}
	rd_list_step(L);
}

static double rd_list_step_to(const struct rd_store *s)
{
	return 10 * s->cmd_to > 2.0 ? 10 * s->cmd_to : 2.0;
}

/* how long a listing waits for a server (or the cluster map) to be ready */
static double rd_list_wait_to(const struct rd_store *s)
{
	return 2 * s->conn_to > 5.0 ? 2 * s->conn_to : 5.0;
}

/* The masters to scan: the server, or every node serving slots (all slots served). */
static int rd_list_masters(struct rd_list *L)
{
	struct rd_store *s = L->s;
	L->masters = calloc(s->nnodes ? s->nnodes : 1, sizeof(*L->masters));
	if (L->masters == NULL)
		return -1;
	if (!s->cluster) {
		L->masters[L->nmasters++] = s->nodes[0];
		return 0;
	}
	if (!s->have_map)
		return 1;
	for (unsigned k = 0; k < RD_SLOTS; k++)
		if (s->slots[k] == 0)
			return 1;
	bool *seen = calloc(s->nnodes, sizeof(*seen));
	if (seen == NULL)
		return -1;
	for (unsigned k = 0; k < RD_SLOTS; k++) {
		unsigned i = s->slots[k] - 1u;
		if (!seen[i]) {
			seen[i] = true;
			L->masters[L->nmasters++] = s->nodes[i];
		}
	}
	free(seen);
	return 0;
}

/* The results of the page, then the next page (or server, or the end). */
static void rd_list_page_done(struct rd_list *L)
{
	for (size_t i = 0; i < L->nkeys; i++) {
		const struct rd_lkey *k = &L->keys[i];
		if (!k->have)
			continue;
		const char *subj = L->buf + k->subj, *v = L->buf + k->val;
		struct store_result r;
		memset(&r, 0, sizeof(r));
		if (L->ns) {
			if (k->vlen < RD_BLOB_HEAD)
				continue;
			double x = rd_get_dbl(v);
			if (!(x == 0 || x > (double)L->now))
				continue;
			r.conform = true;
			r.window = -1;
			r.found = true;
			r.vlen = k->vlen - RD_BLOB_HEAD;
			r.val = r.vlen ? v + RD_BLOB_HEAD : NULL;
		} else {
			struct gcra_tat cur[RD_W];
			if (k->vlen != RD_STATE_LEN || rd_state_decode(v, cur) < 0)
				continue;
			bool empty = true;
			for (size_t w = 0; w < RD_W; w++) {
				cur[w] = rd_canon(cur[w], L->now);
				empty = empty && cur[w].us == 0 && cur[w].rem == 0;
			}
			if (empty)
				continue;
			struct store_op op;
			memset(&op, 0, sizeof(op));
			op.kind = STORE_PEEK;
			op.subject = subj;
			op.nwin = L->nwin;
			memcpy(op.win, L->win, sizeof(op.win));
			(void)rd_apply(&op, cur, L->now, &r, true);
		}
		if (!L->cb(L->arg, subj, &r)) {
			rd_list_finish(L, STORE_OK, NULL);
			return;
		}
	}
	L->nkeys = L->blen = L->got = 0;
	if (strcmp(L->cursor, "0") == 0)
		L->mi++;
	L->phase = RD_L_WAIT;
	rd_list_step(L);
}

static int rd_list_grow(struct rd_list *L, size_t more)
{
	if (L->bcap - L->blen >= more)
		return 0;
	size_t cap = L->bcap ? L->bcap : 4096;
	while (cap - L->blen < more)
		cap *= 2;
	char *p = realloc(L->buf, cap);
	if (p == NULL)
		return -1;
	L->buf = p;
	L->bcap = cap;
	return 0;
}

static void rd_list_get_cb(redisAsyncContext *ac, void *r, void *priv)
{
	(void)ac;
	struct rd_list *L = priv;
	redisReply *reply = r;
	L->pending--;
	if (L->finished) {
		rd_list_maybe_free(L);
		return;
	}
	if (reply == NULL ||
	    (reply->type != REDIS_REPLY_STRING && reply->type != REDIS_REPLY_NIL) ||
	    L->got >= L->nkeys) {
		rd_list_finish(L, STORE_EUNAVAIL,
		               reply == NULL ? "connection lost" : "unexpected reply to GET");
		return;
	}
	struct rd_lkey *k = &L->keys[L->got++];
	if (reply->type == REDIS_REPLY_STRING) {
		if (rd_list_grow(L, reply->len + 1) < 0) {
			rd_list_finish(L, STORE_EINTERNAL, "out of memory");
			return;
		}
		memcpy(L->buf + L->blen, reply->str, reply->len);
		k->val = L->blen;
		k->vlen = reply->len;
		k->have = true;
		L->blen += reply->len + 1;
	}
	if (L->got == L->nkeys)
		rd_list_page_done(L);
}

static void rd_list_scan_cb(redisAsyncContext *ac, void *r, void *priv)
{
	struct rd_list *L = priv;
	redisReply *reply = r;
	L->pending--;
	if (L->finished) {
		rd_list_maybe_free(L);
		return;
	}
	if (reply == NULL || reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
	    reply->element[0]->type != REDIS_REPLY_STRING ||
	    reply->element[0]->len >= sizeof(L->cursor) ||
	    reply->element[1]->type != REDIS_REPLY_ARRAY) {
		char why[RD_WHY];
		if (reply && reply->type == REDIS_REPLY_ERROR) {
			char e[160];
			rd_errtext(e, sizeof(e), reply->str, reply->len);
			snprintf(why, sizeof(why), "SCAN: %s", e);
		} else {
			snprintf(why, sizeof(why), "%s",
			         reply ? "unexpected reply to SCAN" : "connection lost");
		}
		rd_list_finish(L, STORE_EUNAVAIL, why);
		return;
	}
	memcpy(L->cursor, reply->element[0]->str, reply->element[0]->len);
	L->cursor[reply->element[0]->len] = '\0';
	const redisReply *keys = reply->element[1];
	L->nkeys = L->blen = L->got = 0;
	if (L->kcap < keys->elements) {
		struct rd_lkey *nk = realloc(L->keys, keys->elements * sizeof(*nk));
		if (nk == NULL) {
			rd_list_finish(L, STORE_EINTERNAL, "out of memory");
			return;
		}
		L->keys = nk;
		L->kcap = keys->elements;
	}
	for (size_t i = 0; i < keys->elements; i++) {
		const redisReply *e = keys->element[i];
		if (e->type != REDIS_REPLY_STRING || e->len < 4 + L->suffix_len ||
		    memcmp(e->str, "pd:{", 4) != 0 ||
		    memcmp(e->str + e->len - L->suffix_len, L->suffix, L->suffix_len) != 0)
			continue;
		size_t slen = e->len - 4 - L->suffix_len;
		if (rd_list_grow(L, slen + 1) < 0) {
			rd_list_finish(L, STORE_EINTERNAL, "out of memory");
			return;
		}
		struct rd_lkey *k = &L->keys[L->nkeys];
		memcpy(L->buf + L->blen, e->str + 4, slen);
		L->buf[L->blen + slen] = '\0';
		k->subj = L->blen;
		k->slen = slen;
		k->have = false;
		L->blen += slen + 1;
		if (redisAsyncCommand(ac, rd_list_get_cb, L, "GET %b", e->str, e->len) !=
		    REDIS_OK) {
			rd_list_finish(L, STORE_EUNAVAIL, "cannot send");
			return;
		}
		L->pending++;
		L->nkeys++;
	}
	if (L->nkeys == 0) {
		if (strcmp(L->cursor, "0") == 0)
			L->mi++;
		L->phase = RD_L_WAIT;
		rd_list_step(L);
		return;
	}
	rd_list_timer(L, rd_list_step_to(L->s));
}

static void rd_list_step(struct rd_list *L)
{
	struct rd_store *s = L->s;
	double now = ev_now(s->loop);
	if (L->finished)
		return;
	if (s->closing) {
		rd_list_finish(L, STORE_EUNAVAIL, "the store is closing");
		return;
	}
	if (L->masters == NULL || L->nmasters == 0) {
		free(L->masters);
		L->masters = NULL;
		L->nmasters = 0;
		int rc = rd_list_masters(L);
		if (rc < 0) {
			rd_list_finish(L, STORE_EINTERNAL, "out of memory");
			return;
		}
		if (rc > 0) {
			if (now > L->wait_until) {
				rd_list_finish(L, STORE_EUNAVAIL, "the cluster map is incomplete");
				return;
			}
			rd_refresh_want(s);
			rd_list_timer(L, 0.05);
			return;
		}
	}
	if (L->mi >= L->nmasters) {
		rd_list_finish(L, STORE_OK, NULL);
		return;
	}
	struct rd_node *n = L->masters[L->mi];
	if (n->state != RD_READY || n->ac == NULL) {
		if (now > L->wait_until) {
			char why[RD_WHY + 300];
			snprintf(why, sizeof(why), "%s: %s", n->name,
			         n->why[0] ? n->why : "not connected");
			rd_list_finish(L, STORE_EUNAVAIL, why);
			return;
		}
		rd_list_timer(L, 0.05);
		return;
	}
	if (redisAsyncCommand(n->ac, rd_list_scan_cb, L, "SCAN %s MATCH %s COUNT %u", L->cursor,
	                      L->pattern, RD_LIST_COUNT) != REDIS_OK) {
		rd_list_finish(L, STORE_EUNAVAIL, "cannot send");
		return;
	}
	L->pending++;
	L->phase = RD_L_BUSY;
	L->wait_until = now + rd_list_wait_to(s);
	rd_list_timer(L, rd_list_step_to(s));
}

static int rd_list_fn(struct store *pub, const char *name, const struct gcra_window *win,
                      uint8_t nwin, int64_t now,
                      bool (*cb)(void *arg, const char *subject, const struct store_result *res),
                      void (*done)(void *arg, enum store_status st), void *arg)
{
	struct rd_store *s = (struct rd_store *)pub;
	if (cb == NULL || done == NULL) {
		snprintf(pub->err, sizeof(pub->err), "list without a callback");
		return -1;
	}
	s->rs.lists++;
	size_t nlen = name ? strnlen(name, STORE_MAX_KEY + 1) : 0;
	bool ns = nlen > 0 && name[0] == '@';
	bool bad = nlen == 0 || nlen > STORE_MAX_KEY || (!ns && nwin > STORE_MAX_WINDOWS) ||
	           now <= 0 || now >= RD_MAX_NOW;
	for (unsigned k = 0; !bad && !ns && k < nwin; k++)
		bad = win[k].limit == 0 || win[k].period_us == 0 || win[k].limit > RD_MAX_LIMIT ||
		      win[k].period_us > RD_MAX_PERIOD;
	if (bad) {
		snprintf(pub->err, sizeof(pub->err), "list: bad rule, namespace or windows");
		s->st.errors++;
		done(arg, STORE_EINVAL);
		return 0;
	}
	struct rd_list *L = calloc(1, sizeof(*L));
	char *enc = malloc(3 * nlen + 8);
	if (L)
		L->pattern = malloc(6 * nlen + 16);
	if (L == NULL || enc == NULL || L->pattern == NULL) {
		free(enc);
		if (L)
			rd_list_free(L);
		snprintf(pub->err, sizeof(pub->err), "list: out of memory");
		return -1;
	}
	/* "pd:{x}:" + the rule as rd_keyname() writes it; then glob-escaped */
	size_t kl = rd_keyname(enc, name, "x");
	L->suffix_len = kl - 5; /* after "pd:{x" */
	L->suffix = malloc(L->suffix_len + 1);
	if (L->suffix == NULL) {
		free(enc);
		rd_list_free(L);
		snprintf(pub->err, sizeof(pub->err), "list: out of memory");
		return -1;
	}
	memcpy(L->suffix, enc + 5, L->suffix_len + 1);
	size_t o = 0;
	memcpy(L->pattern, "pd:{*", 5);
	o = 5;
	for (size_t i = 0; i < L->suffix_len; i++) {
		char ch = L->suffix[i];
		if (ch == '*' || ch == '?' || ch == '[' || ch == ']' || ch == '\\')
			L->pattern[o++] = '\\';
		L->pattern[o++] = ch;
	}
	L->pattern[o] = '\0';
	free(enc);
	L->s = s;
	L->ns = ns;
	L->nwin = ns ? 0 : nwin;
	if (!ns && nwin)
		memcpy(L->win, win, nwin * sizeof(*win));
	L->now = now;
	L->cb = cb;
	L->done = done;
	L->arg = arg;
	snprintf(L->cursor, sizeof(L->cursor), "0");
	L->phase = RD_L_WAIT;
	L->wait_until = ev_now(s->loop) + rd_list_wait_to(s);
	ev_timer_init(&L->timer, rd_list_timer_cb, 0., 0.);
	L->timer.data = L;
	L->next = s->lists;
	s->lists = L;
	rd_list_timer(L, 0.); /* the first step from the loop */
	return 0;
}

/* ---- the backend ---- */

static int rd_batch_fn(struct store *pub, const struct store_op *ops, size_t n, int64_t now,
                       store_cb *cb, void *arg)
{
	struct rd_store *s = (struct rd_store *)pub;
	if (cb == NULL) {
		snprintf(pub->err, sizeof(pub->err), "batch without a callback");
		return -1;
	}
	s->st.batches++;
	s->rs.batches++;
	if (rd_check(s, ops, n, now) < 0) {
		s->st.errors++;
		cb(arg, STORE_EINVAL, NULL, 0);
		return 0;
	}
	if (n == 0) {
		struct store_result none[1];
		s->rs.ok++;
		cb(arg, STORE_OK, none, 0);
		return 0;
	}
	rd_batch_start(s, ops, n, now, cb, arg);
	return 0;
}

static int rd_flush(struct store *pub)
{
	(void)pub; /* durability is the server's (appendonly) */
	return 0;
}

static void rd_tick(struct store *pub, int64_t now_us)
{
	(void)pub; /* the backend has its own timers */
	(void)now_us;
}

static void rd_stats(struct store *pub, struct store_stats *out)
{
	struct rd_store *s = (struct rd_store *)pub;
	*out = s->st;
}

void store_redis_stats(struct store *pub, struct store_redis_stats *out)
{
	memset(out, 0, sizeof(*out));
	if (pub == NULL || pub->be != &rd_backend)
		return;
	struct rd_store *s = (struct rd_store *)pub;
	*out = s->rs;
	out->nodes = 0;
	out->nodes_ready = 0;
	for (unsigned i = 0; i < s->nnodes; i++) {
		if (s->nodes[i]->state == RD_RETIRED)
			continue;
		out->nodes++;
		out->nodes_ready += s->nodes[i]->state == RD_READY;
	}
}

static void rd_close(struct store *pub)
{
	struct rd_store *s = (struct rd_store *)pub;
	s->closing = true;
	ev_timer_stop(s->loop, &s->watchdog);
	ev_timer_stop(s->loop, &s->refresh_timer);
	ev_prepare_stop(s->loop, &s->flusher);
	while (s->lists)
		rd_list_finish(s->lists, STORE_EUNAVAIL, "the store is closing");
	/* queued groups were never sent: they fail now */
	for (unsigned i = 0; i < s->nnodes; i++)
		rd_node_drain(s->nodes[i], "the store is closing");
	/* replies still due come back NULL: their batches get STORE_EUNAVAIL */
	for (unsigned i = 0; i < s->nnodes; i++) {
		struct rd_node *n = s->nodes[i];
		redisAsyncContext *ac = n->ac, *d = n->draining;
		ev_timer_stop(s->loop, &n->timer);
		n->state = RD_RETIRED;
		n->ac = NULL;
		n->draining = NULL;
		if (ac) {
			ac->data = NULL;
			redisAsyncFree(ac);
		}
		if (d) {
			d->data = NULL;
			redisAsyncFree(d);
		}
	}
	/*
	 * Parked groups: failing the last one of a batch answers the batch,
	 * which unparks all its groups before it can be freed (an answered
	 * batch is never parked).
	 */
	while (s->parked.next != &s->parked) {
		struct rd_batch *b = s->parked.next->b;
		b->refs++;
		for (size_t i = 0; i < b->ngroups; i++)
			if (b->groups[i].state == RD_G_PARKED)
				rd_group_fail(&b->groups[i], NULL, "the store is closing");
		b->refs--;
		rd_batch_maybe_free(b);
	}
	ev_timer_stop(s->loop, &s->park_timer);
	ev_prepare_stop(s->loop, &s->flusher);
	rd_log(s, STORE_REDIS_LOG_INFO, "redis store %s: closed", s->display);
	for (unsigned i = 0; i < s->nnodes; i++)
		free(s->nodes[i]);
	free(s->nodes);
	free(s->slots);
	free(s->new_slots);
	if (s->cmd.p) {
		explicit_bzero(s->cmd.p, s->cmd.cap);
		free(s->cmd.p);
	}
	free(s->prog.p);
	free(s->uk);
	free(s->uh);
	free(s->run);
	explicit_bzero(&s->url, sizeof(s->url));
	free(s);
}

static const struct store_backend rd_backend = {
    .name = "redis",
    .batch = rd_batch_fn,
    .flush = rd_flush,
    .tick = rd_tick,
    .stats = rd_stats,
    .list = rd_list_fn,
    .close = rd_close,
};

struct store *store_redis_open(struct ev_loop *loop, const struct store_redis_opts *o, char *err,
                               size_t errsz)
{
	if (loop == NULL || o == NULL) {
		rd_err(err, errsz, "redis: no event loop or options");
		return NULL;
	}
	struct rd_store *s = calloc(1, sizeof(*s));
	if (s == NULL) {
		rd_err(err, errsz, "redis: out of memory");
		return NULL;
	}
	if (store_redis_url_parse(o->url, &s->url, err, errsz) < 0)
		goto fail;
	if ((unsigned)o->failure > STORE_REDIS_FAIL_LOCAL) {
		rd_err(err, errsz, "redis: bad failure policy %d", (int)o->failure);
		goto fail;
	}
	if (o->failure == STORE_REDIS_FAIL_LOCAL && o->fallback == NULL) {
		rd_err(err, errsz, "redis: failure policy local needs the embedded store");
		goto fail;
	}
	s->pub.be = &rd_backend;
	s->loop = loop;
	s->failure = o->failure;
	s->fallback = o->fallback;
	s->log = o->log;
	s->map_path = o->map_path;
	store_redis_url_format(&s->url, s->display, sizeof(s->display));
	s->conn_to = (o->connect_timeout_ms ? o->connect_timeout_ms : 1000) / 1000.0;
	s->cmd_to = (o->command_timeout_ms ? o->command_timeout_ms : 200) / 1000.0;
	s->hung_after = 4 * s->cmd_to > s->conn_to ? 4 * s->cmd_to : s->conn_to;
	s->wait_replicas = o->wait_replicas;
	s->wait_ms = o->wait_timeout_ms ? o->wait_timeout_ms : 100;
	if (s->wait_replicas > 0 && s->hung_after < 2 * (s->cmd_to + s->wait_ms / 1000.0))
		s->hung_after = 2 * (s->cmd_to + s->wait_ms / 1000.0); /* a WAIT is no hang */
	s->cluster = s->url.kind == STORE_REDIS_CLUSTER;
	s->parked.next = s->parked.prev = &s->parked;
	ev_timer_init(&s->park_timer, rd_park_cb, RD_PARK_TICK, RD_PARK_TICK);
	s->park_timer.data = s;
	ev_timer_init(&s->refresh_timer, rd_refresh_timer_cb, 0., 0.);
	s->refresh_timer.data = s;
	ev_timer_init(&s->watchdog, rd_watchdog_cb, 0.1, 0.1);
	s->watchdog.data = s;
	ev_prepare_init(&s->flusher, rd_flush_cb);
	s->flusher.data = s;
	if (s->cluster) {
		s->slots = calloc(RD_SLOTS, sizeof(*s->slots));
		s->new_slots = calloc(RD_SLOTS, sizeof(*s->new_slots));
		if (s->slots == NULL || s->new_slots == NULL) {
			rd_err(err, errsz, "redis: out of memory");
			goto fail;
		}
		s->refresh_wanted = true;
	}
	if (s->url.kind == STORE_REDIS_UNIX) {
		if (rd_node_add(s, s->url.path, 0, true) == NULL) {
			rd_err(err, errsz, "redis: out of memory");
			goto fail;
		}
	} else {
		for (unsigned i = 0; i < s->url.nhosts; i++) {
			if (rd_node_find(s, s->url.host[i].host, s->url.host[i].port))
				continue;
			if (rd_node_add(s, s->url.host[i].host, s->url.host[i].port, false) ==
			    NULL) {
				rd_err(err, errsz, "redis: out of memory");
				goto fail;
			}
		}
	}
	rd_log(s, STORE_REDIS_LOG_INFO,
	       "redis store %s: connecting (failure policy %s, timeouts: connect %.0f ms, "
	       "command %.0f ms; durable writes wait for %u replicas, %u ms)",
	       s->display, store_redis_failure_name(s->failure), s->conn_to * 1000,
	       s->cmd_to * 1000, s->wait_replicas, s->wait_ms);
	ev_timer_start(loop, &s->watchdog);
	for (unsigned i = 0; i < s->nnodes; i++)
		rd_node_connect(s->nodes[i]);
	return &s->pub;
fail:
	for (unsigned i = 0; i < s->nnodes; i++)
		free(s->nodes[i]);
	free(s->nodes);
	free(s->slots);
	free(s->new_slots);
	explicit_bzero(&s->url, sizeof(s->url));
	free(s);
	return NULL;
}
