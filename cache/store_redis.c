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
 * cluster).  Each group is one EVALSHA of RD_SCRIPT on the group's server,
 * appended to that server's single pipelined connection.  The script
 * reads the keys' windows (HMGET), applies the batch semantics with the
 * increments that C computed exactly (cost * period / limit as quotient +
 * remainder, so Lua only adds and compares integers below 2^53), writes
 * the keys it changed (HSET + PEXPIRE, or DEL when all empty) and returns
 * its refusal flag and the windows it read.  C then replays the batch on
 * those windows with gcra.c (rd_apply() is store_memory.c's sm_apply()):
 * the results are the embedded store's by construction, and the replay's
 * refusal must equal the script's.  Blob ops (GET/PUT/DEL) run in the
 * same script, in order; their outcome (found, the value) comes from it.
 * Several groups: see the header on
 * compensation.  A batch has one ev_timer (the command timeout); its
 * callback comes exactly once: b->answered guards it, and the batch is
 * freed when answered and no reply is outstanding (b->refs).
 *
 * Servers (struct rd_node): DOWN (reconnect timer, backoff 100 ms .. 5 s),
 * CONNECTING (connect timer; AUTH, SELECT and SCRIPT LOAD pipelined, and
 * batches may queue behind them), READY; RETIRED when a cluster node left
 * the map (its connection drains gracefully, so that no reply is cut off).
 * A watchdog drops a connection that leaves commands unanswered for
 * max(4 x command timeout, connect timeout).  Cluster: the slot map comes
 * from CLUSTER SLOTS (asked at most every 100 ms, from any ready node);
 * groups that cannot be sent now (no map, server down, TRYAGAIN,
 * CLUSTERDOWN, READONLY, ...) are parked and retried until their batch's
 * deadline.
 *
 * Limits: see store_redis.h (numbers below 2^53, clocks within the key
 * expiry margin, getaddrinfo() blocks for host names, retried scripts
 * after a broken connection may count twice).  No TLS.
 */
#include <inttypes.h>
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

#define RD_STR_(x) #x
#define RD_STR(x)  RD_STR_(x)

/*
 * KEYS: the group's rate keys (hashes), then its blob keys (strings).
 * ARGV: now, nops, number of rate keys, then per op: kind (0 TAKE, 1 PEEK,
 * 2 REFUND, 3 CLEAR, 4 GET, 5 PUT, 6 DEL), refuse (0/1), key index, nwin,
 * zero cost (0/1); per window of a rate op: limit, period, q, r (the
 * increment cost * period / limit = q + r / limit; q = -1: never conforms
 * (TAKE/PEEK, cost > limit) or empties the window (REFUND)); a TAKE of
 * cost 0 only normalizes (rem < limit), as gcra_take() does; a PUT adds
 * its absolute expiry (us, 0: never), the key's PX (ms, 0: none) and the
 * value.  A window is "us:rem" in field 0..3 of its key; empty is 0:0 (any
 * tat <= now is empty).  A blob is "expiry:value"; it is live while
 * expiry is 0 or > now (Redis's own expiry only collects it later).
 * Blob ops apply in pass 1, in order, refused batch or not.  Returns
 * {refused, us, rem of each rate key's 4 windows as read (empty: 0, 0),
 * then per blob op: found (a live blob was there), the value (GET) or ""}.
 */
static const char RD_SCRIPT[] =
    "local now, nops, nr, nk = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), #KEYS\n"
    "local ou, orm, cu, cr, out, kv = {}, {}, {}, {}, {0}, {}\n"
    "for k = 1, nr do\n"
    "  local v = redis.call('HMGET', KEYS[k], '0', '1', '2', '3')\n"
    "  for w = 1, 4 do\n"
    "    local i, u, r = k * 4 - 4 + w, 0, 0\n"
    "    if v[w] then\n"
    "      local a, b = string.match(v[w], '^(%d+):(%d+)$')\n"
    "      if a then u, r = tonumber(a), tonumber(b) end\n"
    "    end\n"
    "    if u < now or (u == now and r == 0) then u, r = 0, 0 end\n"
    "    ou[i], orm[i], cu[i], cr[i] = u, r, u, r\n"
    "    out[2 * i], out[2 * i + 1] = u, r\n"
    "  end\n"
    "end\n"
    "local function norm(u, r, l)\n"
    "  if r >= l then\n"
    "    local m = math.fmod(r, l)\n"
    "    return u + (r - m) / l, m\n"
    "  end\n"
    "  return u, r\n"
    "end\n"
    "local refused = false\n"
    "local function run(eval)\n"
    "  local a = 4\n"
    "  for o = 1, nops do\n"
    "    local kind, k, nw = tonumber(ARGV[a]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])\n"
    "    local refuse, zero, b = ARGV[a + 1] == '1', ARGV[a + 4] == '1', k * 4 - 4\n"
    "    a = a + 5\n"
    "    if kind >= 4 then\n"
    "      if eval then\n"
    "        local cur, found, val = redis.call('GET', KEYS[k]), 0, ''\n"
    "        if cur then\n"
    "          local c = string.find(cur, ':', 1, true)\n"
    "          local x = c and tonumber(string.sub(cur, 1, c - 1))\n"
    "          if x and (x == 0 or x > now) then\n"
    "            found = 1\n"
    "            if kind == 4 then val = string.sub(cur, c + 1) end\n"
    "          end\n"
    "        end\n"
    "        if kind == 5 then\n"
    "          if ARGV[a + 1] == '0' then\n"
    "            redis.call('SET', KEYS[k], ARGV[a] .. ':' .. ARGV[a + 2])\n"
    "          else\n"
    "            redis.call('SET', KEYS[k], ARGV[a] .. ':' .. ARGV[a + 2], 'PX', ARGV[a + 1])\n"
    "          end\n"
    "        elseif kind == 6 and cur then\n"
    "          redis.call('DEL', KEYS[k])\n"
    "        end\n"
    "        kv[#kv + 1], kv[#kv + 2] = found, val\n"
    "      end\n"
    "      if kind == 5 then a = a + 3 end\n"
    "    elseif kind == 3 then\n"
    "      for w = 1, 4 do cu[b + w], cr[b + w] = 0, 0 end\n"
    "    elseif kind == 2 then\n"
    "      for w = 1, nw do\n"
    "        local l, q, ir = tonumber(ARGV[a]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])\n"
    "        local u, r = norm(cu[b + w], cr[b + w], l)\n"
    "        if q < 0 or u < now or (u == now and r == 0) then\n"
    "          u, r = 0, 0\n"
    "        else\n"
    "          u = u - q\n"
    "          if r >= ir then r = r - ir else r, u = r + (l - ir), u - 1 end\n"
    "          if u < now then u, r = 0, 0 end\n"
    "        end\n"
    "        cu[b + w], cr[b + w], a = u, r, a + 4\n"
    "      end\n"
    "    elseif eval and not zero then\n"
    "      local ok, nu, nr = true, {}, {}\n"
    "      for w = 1, nw do\n"
    "        local l, p = tonumber(ARGV[a]), tonumber(ARGV[a + 1])\n"
    "        local q, ir = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])\n"
    "        a = a + 4\n"
    "        if q < 0 then\n"
    "          ok = false\n"
    "        else\n"
    "          local u, r = norm(cu[b + w], cr[b + w], l)\n"
    "          if u < now or (u == now and r == 0) then u, r = now, 0 end\n"
    "          u = u + q\n"
    "          if ir > 0 and r >= l - ir then r, u = r - (l - ir), u + 1 else r = r + ir end\n"
    "          if u - now < p or (u - now == p and r == 0) then nu[w], nr[w] = u, r else ok = "
    "false end\n"
    "        end\n"
    "      end\n"
    "      if not ok then\n"
    "        if refuse then refused = true end\n"
    "      elseif kind == 0 then\n"
    "        for w = 1, nw do cu[b + w], cr[b + w] = nu[w], nr[w] end\n"
    "      end\n"
    "    elseif eval and kind == 0 then\n"
    "      for w = 1, nw do\n"
    "        cu[b + w], cr[b + w] = norm(cu[b + w], cr[b + w], tonumber(ARGV[a]))\n"
    "        a = a + 4\n"
    "      end\n"
    "    else\n"
    "      a = a + 4 * nw\n"
    "    end\n"
    "  end\n"
    "end\n"
    "run(true)\n"
    "if refused then\n"
    "  for i = 1, 4 * nr do cu[i], cr[i] = ou[i], orm[i] end\n"
    "  run(false)\n"
    "  out[1] = 1\n"
    "end\n"
    "for k = 1, nr do\n"
    "  local set, top = {}, 0\n"
    "  for w = 1, 4 do\n"
    "    local i = k * 4 - 4 + w\n"
    "    local u, r = cu[i], cr[i]\n"
    "    if u ~= ou[i] or r ~= orm[i] then\n"
    "      set[#set + 1] = w - 1\n"
    "      set[#set + 1] = string.format('%d:%d', u, r)\n"
    "    end\n"
    "    if r > 0 then u = u + 1 end\n"
    "    if u > top then top = u end\n"
    "  end\n"
    "  if #set > 0 then\n"
    "    if top <= now then\n"
    "      redis.call('DEL', KEYS[k])\n"
    "    else\n"
    "      redis.call('HSET', KEYS[k], unpack(set))\n"
    "      redis.call('PEXPIRE', KEYS[k], string.format('%d', math.ceil((top - now) / 1000) "
    "+ " RD_STR(RD_EXPIRE_MARGIN_MS) "))\n"
                                     "    end\n"
                                     "  end\n"
                                     "end\n"
                                     "for i = 1, #kv do out[#out + 1] = kv[i] end\n"
                                     "return out\n";

enum rd_nstate { RD_DOWN = 0, RD_CONNECTING, RD_READY, RD_RETIRED };
enum rd_gstate { RD_G_NEW = 0, RD_G_SENT, RD_G_PARKED, RD_G_OK, RD_G_FAIL };

struct rd_store;

struct rd_episode {
	bool on;
	double since, last_fail;
	uint64_t failures;
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
	bool loading;         /* SCRIPT LOAD after NOSCRIPT in flight */
	unsigned outstanding; /* scripts sent on ac, not answered */
	double last_io;
	struct rd_episode ep;
	char why[RD_WHY]; /* why it is down */
};

struct rd_batch;

struct rd_group {
	struct rd_batch *b;
	struct rd_group *next, *prev; /* the parked list */
	struct rd_node *node;         /* where the last script went */
	struct rd_node *ask;          /* ASK target for the next send */
	double retry_at;
	uint16_t slot;
	uint8_t state;
	uint8_t moved, noscript; /* MOVED followed, NOSCRIPT seen */
	uint8_t nkeys, nrate;    /* KEYS, of which rate keys (first) */
	uint8_t nkv;             /* blob ops */
	bool refused;            /* the script refused */
	bool asked;              /* the last send was preceded by ASKING */
};

struct rd_key {
	const char *str;
	size_t len;
	uint16_t slot;
	uint8_t group;
	uint8_t gidx; /* 1-based index in its group's KEYS */
	bool blob;    /* a namespace's blob, not windows */
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
	struct gcra_tat *orig; /* nkeys * RD_W windows as the scripts read them */
	uint8_t *opkey;        /* op -> key */
	struct rd_kv *kv;      /* per op */
	ev_timer deadline;
	unsigned refs; /* replies outstanding + running code holding it */
	bool answered; /* the callback was called (or is being called) */
	bool failed;   /* answered with a failure */
	char why[RD_WHY];
};

struct rd_buf {
	char *p;
	size_t len, cap;
	bool oom;
};

struct rd_store {
	struct store pub; /* first: the public handle */
	struct ev_loop *loop;
	struct store_redis_url url; /* holds the password for AUTH */
	char display[512];          /* the URL without the password */
	double conn_to, cmd_to, hung_after;
	enum store_redis_failure failure;
	struct store *fallback;
	void (*log)(int level, const char *msg);
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

	char sha[41];
	bool have_sha;
	struct rd_buf cmd; /* the command being formatted */

	struct rd_episode ep; /* the cluster as a whole: map, coverage */
	struct store_stats st;
	struct store_redis_stats rs;
};

static const struct store_backend rd_backend;

static void rd_group_send(struct rd_group *g);
static void rd_group_reply_fn(redisAsyncContext *ac, void *r, void *priv);
static void rd_batch_check_done(struct rd_batch *b);
static void rd_batch_maybe_free(struct rd_batch *b);
static void rd_refresh_want(struct rd_store *s);
static void rd_node_connect(struct rd_node *n);
static void rd_park_kick(struct rd_store *s);

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

static void rd_buf_head(struct rd_buf *c, char type, size_t n)
{
	char h[32];
	int k = snprintf(h, sizeof(h), "%c%zu\r\n", type, n);
	rd_buf_raw(c, h, (size_t)k);
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
	char t[32];
	int k = snprintf(t, sizeof(t), "%" PRId64, v);
	rd_buf_arg(c, t, (size_t)k);
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
	    n->is_unix ? redisAsyncConnectUnix(n->host) : redisAsyncConnect(n->host, (int)n->port);
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
	size_t o_str = o_kv + rd_align(n * sizeof(struct rd_kv));
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
	/* KEYS of a group: its rate keys, then its blob keys, each in order */
	for (size_t g = 0; g < b->ngroups; g++) {
		uint8_t r = 0, kb = b->groups[g].nrate;
		for (size_t k = 0; k < b->nkeys; k++)
			if (b->keys[k].group == g)
				b->keys[k].gidx = b->keys[k].blob ? ++kb : ++r;
	}
	ev_timer_init(&b->deadline, rd_deadline_cb, s->cmd_to, 0.);
	b->deadline.data = b;
	return b;
}

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

/* The script of group g into s->cmd. */
static int rd_format_group(struct rd_store *s, const struct rd_group *g)
{
	const struct rd_batch *b = g->b;
	size_t gi = (size_t)(g - b->groups), argc = 3 + g->nkeys + 3, nops = 0;
	for (size_t i = 0; i < b->n; i++) {
		enum store_op_kind kind = b->ops[i].kind;
		if (b->keys[b->opkey[i]].group != gi)
			continue;
		nops++;
		if (kind == STORE_PUT)
			argc += 5 + 3;
		else if (kind == STORE_CLEAR || rd_is_kv(kind))
			argc += 5;
		else
			argc += 5 + 4 * (size_t)b->ops[i].nwin;
	}
	struct rd_buf *c = &s->cmd;
	rd_buf_reset(c);
	rd_buf_head(c, '*', argc);
	if (s->have_sha) {
		rd_buf_str(c, "EVALSHA");
		rd_buf_arg(c, s->sha, 40);
	} else {
		rd_buf_str(c, "EVAL");
		rd_buf_arg(c, RD_SCRIPT, sizeof(RD_SCRIPT) - 1);
	}
	rd_buf_int(c, g->nkeys);
	for (int blob = 0; blob < 2; blob++) /* gidx order: rate keys, then blob keys */
		for (size_t k = 0; k < b->nkeys; k++)
			if (b->keys[k].group == gi && b->keys[k].blob == blob)
				rd_buf_arg(c, b->keys[k].str, b->keys[k].len);
	rd_buf_int(c, b->now);
	rd_buf_int(c, (int64_t)nops);
	rd_buf_int(c, g->nrate);
	for (size_t i = 0; i < b->n; i++) {
		const struct store_op *op = &b->ops[i];
		const struct rd_key *key = &b->keys[b->opkey[i]];
		if (key->group != gi)
			continue;
		unsigned nw = op->kind == STORE_CLEAR || rd_is_kv(op->kind) ? 0 : op->nwin;
		rd_buf_int(c, op->kind);
		rd_buf_int(c, op->refuse);
		rd_buf_int(c, key->gidx);
		rd_buf_int(c, nw);
		rd_buf_int(c, op->cost == 0);
		if (op->kind == STORE_PUT) {
			/* the embedded store's absolute expiry; Redis's PX only collects */
			uint64_t ttl = op->ttl_us;
			int64_t exp = 0;
			if (ttl)
				exp = ttl > (uint64_t)(INT64_MAX - b->now) ? INT64_MAX
				                                           : b->now + (int64_t)ttl;
			rd_buf_int(c, exp);
			rd_buf_int(c, ttl == 0 || ttl > RD_MAX_PERIOD
			                  ? 0
			                  : (int64_t)((ttl + 999) / 1000) + RD_EXPIRE_MARGIN_MS);
			rd_buf_arg(c, op->vlen ? op->val : "", op->vlen);
		}
		for (unsigned k = 0; k < nw; k++) {
			int64_t q, r;
			rd_inc(&op->win[k], op->cost, op->kind != STORE_REFUND, &q, &r);
			rd_buf_int(c, (int64_t)op->win[k].limit);
			rd_buf_int(c, (int64_t)op->win[k].period_us);
			rd_buf_int(c, q);
			rd_buf_int(c, r);
		}
	}
	return c->oom ? -1 : 0;
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

/* The batch on the windows the scripts read; returns the refusal. */
static bool rd_replay(const struct rd_batch *b, struct store_result *res)
{
	struct gcra_tat cur[STORE_MAX_BATCH * RD_W];
	size_t nt = b->nkeys * RD_W;
	for (size_t i = 0; i < nt; i++)
		cur[i] = rd_canon(b->orig[i], b->now);
	memset(res, 0, b->n * sizeof(*res));
	bool refused = false;
	for (size_t i = 0; i < b->n; i++) {
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
		for (size_t i = 0; i < b->n; i++)
			if (!rd_is_kv(b->ops[i].kind))
				(void)rd_apply(&b->ops[i], &cur[(size_t)b->opkey[i] * RD_W], b->now,
				               &res[i], false);
	}
	return refused;
}

static const char rd_empty[1];

/* The script's reply for group g: refusal, the windows it read, blob results. */
static int rd_parse_reply(struct rd_group *g, const redisReply *reply)
{
	struct rd_batch *b = g->b;
	size_t gi = (size_t)(g - b->groups), nw = 1 + 2 * RD_W * (size_t)g->nrate;
	if (reply->type != REDIS_REPLY_ARRAY || reply->elements != nw + 2 * (size_t)g->nkv)
		return -1;
	for (size_t i = 0; i < reply->elements; i++) {
		const redisReply *e = reply->element[i];
		bool value = i >= nw && (i - nw) % 2 == 1;
		if (value ? e->type != REDIS_REPLY_STRING || e->len > STORE_MAX_VALUE
		          : e->type != REDIS_REPLY_INTEGER || e->integer < 0)
			return -1;
	}
	g->refused = reply->element[0]->integer != 0;
	for (size_t k = 0; k < b->nkeys; k++) {
		if (b->keys[k].group != gi || b->keys[k].blob)
			continue;
		size_t base = 1 + 2 * RD_W * (size_t)(b->keys[k].gidx - 1);
		for (size_t w = 0; w < RD_W; w++) {
			b->orig[k * RD_W + w].us = (int64_t)reply->element[base + 2 * w]->integer;
			b->orig[k * RD_W + w].rem =
			    (uint64_t)reply->element[base + 2 * w + 1]->integer;
		}
	}
	size_t e = nw;
	for (size_t i = 0; i < b->n; i++) {
		if (!rd_is_kv(b->ops[i].kind) || b->keys[b->opkey[i]].group != gi)
			continue;
		struct rd_kv *kv = &b->kv[i];
		const redisReply *v = reply->element[e + 1];
		kv->found = reply->element[e]->integer != 0;
		e += 2;
		if (kv->val && kv->val != rd_empty) /* a late reply after an earlier one */
			free((void *)kv->val);
		kv->val = NULL;
		kv->vlen = 0;
		if (!kv->found || b->ops[i].kind != STORE_GET)
			continue;
		kv->val = rd_empty;
		if (v->len > 0) {
			void *copy = malloc(v->len);
			if (copy == NULL)
				return -1;
			memcpy(copy, v->str, v->len);
			kv->val = copy;
			kv->vlen = v->len;
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
	size_t m = 0;
	if (b->cb == NULL) /* a compensation is not compensated */
		return;
	(void)rd_replay(b, res); /* res[].conform: the verdicts the scripts reached */
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
	if (s->failure == STORE_REDIS_FAIL_LOCAL && s->fallback && !s->closing) {
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
	struct store_result res[STORE_MAX_BATCH];
	bool refused = rd_replay(b, res);
	if (refused != grefused) {
		/* cannot happen unless the script and gcra.c disagree */
		s->rs.errors++;
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

/* ---- batches: sending and replies ---- */

static struct rd_node *rd_route(struct rd_store *s, const struct rd_group *g)
{
	if (!s->cluster)
		return s->nodes[0];
	unsigned i = s->slots[g->slot];
	return i ? s->nodes[i - 1] : NULL;
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
	if (rd_format_group(s, g) < 0) {
		rd_group_fail(g, NULL, "out of memory");
		return;
	}
	if (asking && redisAsyncCommand(n->ac, NULL, NULL, "ASKING") != REDIS_OK) {
		rd_group_fail(g, n, "cannot send");
		return;
	}
	if (redisAsyncFormattedCommand(n->ac, rd_group_reply_fn, g, s->cmd.p, s->cmd.len) !=
	    REDIS_OK) {
		rd_group_fail(g, n, "cannot send");
		return;
	}
	g->state = RD_G_SENT;
	g->node = n;
	g->asked = asking;
	b->refs++;
	rd_node_busy(n);
	s->rs.scripts++;
	if (!s->have_sha)
		s->rs.evals++;
}

/* "SLOT host:port" of a MOVED or ASK error: the node, created if new */
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

/* A reply for a batch already answered; the batch failed: give back its TAKEs. */
static void rd_late_reply(struct rd_group *g, const redisReply *reply)
{
	struct rd_batch *b = g->b;
	struct rd_store *s = b->s;
	if (reply == NULL || reply->type != REDIS_REPLY_ARRAY || !b->failed || b->cb == NULL ||
	    s->failure == STORE_REDIS_FAIL_OPEN)
		return;
	if (rd_parse_reply(g, reply) < 0)
		return;
	rd_compensate(b, g);
}

static void rd_group_reply_fn(redisAsyncContext *ac, void *r, void *priv)
{
	struct rd_group *g = priv;
	struct rd_batch *b = g->b;
	struct rd_store *s = b->s;
	struct rd_node *n = g->node;
	redisReply *reply = r;

	rd_node_replied(n, ac);
	if (reply == NULL)
		rd_node_lost(n, ac, "connection lost");
	if (b->answered) {
		s->rs.late++;
		rd_late_reply(g, reply);
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
	} else if (rd_parse_reply(g, reply) < 0) {
		rd_group_fail(g, n, "unexpected reply to the script");
	} else {
		g->state = RD_G_OK;
		rd_ep_ok(s, &n->ep, n->name, "available again", false);
		rd_batch_check_done(b);
	}
	b->refs--;
	rd_batch_maybe_free(b);
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
	explicit_bzero(&s->url, sizeof(s->url));
	free(s);
}

static const struct store_backend rd_backend = {
    .name = "redis",
    .batch = rd_batch_fn,
    .flush = rd_flush,
    .tick = rd_tick,
    .stats = rd_stats,
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
	store_redis_url_format(&s->url, s->display, sizeof(s->display));
	s->conn_to = (o->connect_timeout_ms ? o->connect_timeout_ms : 1000) / 1000.0;
	s->cmd_to = (o->command_timeout_ms ? o->command_timeout_ms : 200) / 1000.0;
	s->hung_after = 4 * s->cmd_to > s->conn_to ? 4 * s->cmd_to : s->conn_to;
	s->cluster = s->url.kind == STORE_REDIS_CLUSTER;
	s->parked.next = s->parked.prev = &s->parked;
	ev_timer_init(&s->park_timer, rd_park_cb, RD_PARK_TICK, RD_PARK_TICK);
	s->park_timer.data = s;
	ev_timer_init(&s->refresh_timer, rd_refresh_timer_cb, 0., 0.);
	s->refresh_timer.data = s;
	ev_timer_init(&s->watchdog, rd_watchdog_cb, 0.1, 0.1);
	s->watchdog.data = s;
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
	       "command %.0f ms)",
	       s->display, store_redis_failure_name(s->failure), s->conn_to * 1000,
	       s->cmd_to * 1000);
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
