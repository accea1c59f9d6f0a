/*
 * cache/store_redis.h - the Redis and Redis Cluster backends of the state
 * store (store.h), on hiredis's async API driven by a libev loop.
 *
 * URLs:
 *   redis://[user:password@]host[:port][/db]        one server (port 6379)
 *   redis+unix://[user:password@]/path/to/socket[?db=N]
 *   redis-cluster://[user:password@]h1:p1,h2:p2,...  seeds of a cluster
 * user, password and path may be %-encoded (%40 for '@', %2F for '/').
 * An empty user (":password@") authenticates as the default user.  Host
 * names are resolved by hiredis with a blocking getaddrinfo(): give IP
 * addresses (or names in /etc/hosts).  The password never appears in an
 * error message or a log line.
 *
 * Each batch is run by a Lua script (EVALSHA) on one pipelined connection
 * per server, shared by all batches in flight: the batches waiting at the
 * same turn of the event loop (or while earlier scripts are unanswered:
 * at most 2 per connection, 32 on a cluster, where only batches of one
 * hash slot can share a script) ride in ONE script, each as a sub-batch with
 * its own refusal and result, so that a round trip and a script serve many
 * requests; a lone request is sent at once.  The script applies store.h's
 * batch semantics to each sub-batch in order, atomically, and the results
 * are computed in C (gcra.c) from the windows the script read, so they are
 * those of the embedded store for the same ops in the same order.  Keys
 * are "pd:{SUBJECT}:RULE" (the subject is the cluster hash tag, '%', '{'
 * and '}' in a rule are %-encoded), one string per key holding its 4
 * windows and the deadline its TTL covers as 9 little-endian doubles,
 * expiring 10 s to 70 s after all its windows are empty: the daemons
 * sharing a Redis must keep their clocks within 10 s (NTP).  Blobs
 * (STORE_GET/PUT/DEL) are strings "pd:{SUBJECT}:@NAMESPACE" holding their
 * absolute expiry (a double) and the value: the script compares it with
 * `now`, as the embedded store does; Redis's own expiry (TTL + 10 s) only
 * collects them.  list() SCANs every master in pages (keys added or
 * removed meanwhile, or slots moved during the scan, may be missed or seen
 * twice, as SCAN says) and waits up to max(5 s, 2 x connect timeout) for
 * a server or the cluster map; its callbacks come from the loop.
 *
 * Limits of the Redis backend (Lua numbers are doubles): now must be in
 * (0, 2^52) microseconds, every window's period_us <= 2^52 (142 years)
 * and limit < 2^53; other ops get STORE_EINVAL.
 *
 * Redis Cluster.  The ops of one subject share a slot and run as one
 * script.  A batch whose subjects hash to several slots runs one script
 * per slot, each atomic on its own: if one of them refuses the batch, the
 * TAKEs that the other scripts committed are given back by a compensating
 * REFUND (same `now`) and the batch is reported refused, so no more than a
 * limit is ever admitted; between the two, a concurrent batch may see
 * those units taken (and be refused for them), and a compensation that
 * cannot be delivered leaves them counted (logged).  The refund is exact
 * unless another batch advanced the same window and the taken units had
 * already drained meanwhile, or the window's limit changed (a TAKE folds
 * a remainder left by a larger limit; the refund cannot unfold it).  A
 * script with a new key in a slot being migrated gets TRYAGAIN until the
 * slot is handed over.  MOVED and ASK are followed (the slot map is
 * refreshed from CLUSTER SLOTS), TRYAGAIN, CLUSTERDOWN and a lost master
 * are retried within the command timeout.  A script whose connection
 * broke may have run: during a failover a retried batch can be counted
 * twice, or lost with the old master (Redis replication is asynchronous).
 *
 * Failures.  While a server is unreachable, times out or answers errors
 * (OOM, READONLY, CLUSTERDOWN, script errors, NOSCRIPT loops, ...), a
 * batch's callback gets STORE_EUNAVAIL (failure open / closed: the daemon
 * maps that to its answer), or the batch is run by the fallback store
 * (failure local).  Every callback comes exactly once, within the command
 * timeout (+ the loop's latency), also when a late reply arrives after
 * it.  TAKEs of a failed batch that Redis did commit are given back
 * unless the policy is open (the daemon then admitted the request).  Each
 * episode is logged when it starts and when it ends.  Connections are
 * retried with exponential backoff from 100 ms to 5 s; a server down at
 * start is not an error.
 *
 * Durable writes (store.h op.durable; flags and the lockout outbox).
 * Replication is asynchronous: a write acknowledged by a master that dies
 * before its replica has it is lost when the replica is promoted.  With
 * wait_replicas > 0, each script of a batch with a durable op is followed,
 * on the same connection, by WAIT wait_replicas wait_timeout_ms; the batch
 * is answered STORE_OK only when every such WAIT counted enough replicas,
 * else STORE_EREPLICA (the writes are on the master, maybe not on a
 * replica: write them again).  The batch's deadline grows by the WAIT
 * timeout, a durable batch never runs on the fallback store, and while a
 * WAIT waits the scripts behind it on that connection wait too (at most
 * wait_timeout_ms; only when a replica is slow, stalled or gone).  WAIT
 * is not a consensus: a replica that acknowledged may still not be the one
 * promoted when a master has several; see policyd.8.
 *
 * Callbacks run from the loop (or before store_batch() returns when the
 * server is known to be down).  close() answers the batches still in
 * flight with STORE_EUNAVAIL; do not call it from a store callback.
 */
#ifndef CACHE_STORE_REDIS_H
#define CACHE_STORE_REDIS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store.h"

struct ev_loop;

/* log levels: the numbers of policyd's enum log_level */
enum {
	STORE_REDIS_LOG_ERR = 0,
	STORE_REDIS_LOG_WARN = 1,
	STORE_REDIS_LOG_INFO = 2,
	STORE_REDIS_LOG_DEBUG = 3,
};

enum store_redis_failure {
	STORE_REDIS_FAIL_OPEN = 0, /* STORE_EUNAVAIL: the daemon lets mail pass */
	STORE_REDIS_FAIL_CLOSED,   /* STORE_EUNAVAIL: the daemon defers */
	STORE_REDIS_FAIL_LOCAL,    /* the batch runs on the fallback store */
};

struct store_redis_opts {
	const char *url;
	unsigned connect_timeout_ms; /* 0: 1000; connect + AUTH + SCRIPT LOAD */
	unsigned command_timeout_ms; /* 0: 200; the latency budget of a batch */
	/* durable ops (store.h): after the script, WAIT wait_replicas
	 * wait_timeout_ms on the same connection (0 replicas: no WAIT;
	 * timeout 0: 100) */
	unsigned wait_replicas;
	unsigned wait_timeout_ms;
	enum store_redis_failure failure;
	struct store *fallback;                  /* failure local: the embedded store (not owned) */
	void (*log)(int level, const char *msg); /* NULL: no log */
	/* redis+unix: the socket path to connect to now (policyd's chroot
	 * strips its root after the start); NULL: the URL's path */
	const char *(*map_path)(const char *path);
};

/*
 * Open the backend: parse the URL and start connecting (nothing blocks,
 * except getaddrinfo() for host names).  Returns NULL with a message in err
 * for a bad URL or options.
 */
struct store *store_redis_open(struct ev_loop *loop, const struct store_redis_opts *o, char *err,
                               size_t errsz);

/* "open", "closed", "local" -> *out; -1 when unknown. */
int store_redis_failure_parse(const char *name, enum store_redis_failure *out);
const char *store_redis_failure_name(enum store_redis_failure f);

/* Counters of the Redis backend (store_stats has the common ones). */
struct store_redis_stats {
	uint64_t batches;       /* batches asked for */
	uint64_t ok;            /* answered from Redis */
	uint64_t unavail;       /* answered STORE_EUNAVAIL */
	uint64_t fallback;      /* run on the fallback store */
	uint64_t timeouts;      /* batches that ran out of time */
	uint64_t late;          /* replies that came after their batch was answered */
	uint64_t scripts;       /* EVALSHA + EVAL sent */
	uint64_t groups;        /* sub-batches those scripts carried (groups / scripts: merging) */
	uint64_t evals;         /* of which EVAL (script body) */
	uint64_t split;         /* batches run as several scripts (cluster) */
	uint64_t compensations; /* compensating REFUND batches sent */
	uint64_t comp_lost;     /* compensations that failed (units stay counted) */
	uint64_t moved, ask, tryagain, noscript, clusterdown;
	uint64_t refreshes;   /* CLUSTER SLOTS asked */
	uint64_t connects;    /* connections made ready (AUTH, SELECT, SCRIPT LOAD done) */
	uint64_t conn_errors; /* connections that failed or broke */
	uint64_t errors;      /* error replies and failures, all kinds */
	uint64_t mismatches;  /* the script and gcra.c disagreed (a bug: logged) */
	uint64_t episodes;    /* unavailability episodes started */
	uint64_t lists;       /* list() calls */
	uint64_t waits;       /* WAITs sent after durable writes */
	uint64_t wait_ok;     /* of which acknowledged by enough replicas */
	uint64_t wait_short;  /* of which not (batch answered STORE_EREPLICA) */
	unsigned nodes;       /* servers known (cluster: masters and replicas) */
	unsigned nodes_ready; /* of which connected and ready */
};

/* NULL-safe: zeros for a store that is not a Redis store. */
void store_redis_stats(struct store *s, struct store_redis_stats *out);

/* ---- exposed for tests ---- */

#define STORE_REDIS_MAX_HOSTS 16

enum store_redis_kind {
	STORE_REDIS_TCP = 0,
	STORE_REDIS_UNIX,
	STORE_REDIS_CLUSTER,
};

struct store_redis_url {
	enum store_redis_kind kind;
	char user[128];
	char password[256];
	char path[108]; /* unix socket */
	unsigned db;
	unsigned nhosts;
	struct {
		char host[256];
		unsigned port;
	} host[STORE_REDIS_MAX_HOSTS];
};

/* Parse a URL; -1 with a message (never the password) in err. */
int store_redis_url_parse(const char *url, struct store_redis_url *out, char *err, size_t errsz);
/* The URL back, with the password shown as "***". */
void store_redis_url_format(const struct store_redis_url *u, char *out, size_t outsz);
/* Redis Cluster hash slot of a key (CRC16 of its {hash tag}, mod 16384). */
unsigned store_redis_keyslot(const char *key, size_t len);

#endif
