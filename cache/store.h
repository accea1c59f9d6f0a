/*
 * cache/store.h - the state store interface: rate windows per (rule,
 * subject), behind one table of function pointers per backend (embedded
 * memory store now, Redis later).
 *
 * Every request's counting is one batch: a list of ops evaluated and
 * committed atomically, so that a networked backend can run the whole batch
 * in one round trip (one Lua script) and several daemons sharing it never
 * admit more than the limit.
 *
 * Batch semantics (every backend must implement exactly this):
 *   1. Each TAKE and PEEK op is checked against all its windows with
 *      gcra_take() at time `now`.  An op conforms when every window does.
 *   2. If any op with `refuse` set does not conform, the batch is refused:
 *      no TAKE of the batch is committed.
 *   3. Otherwise every conforming TAKE is committed; a TAKE that does not
 *      conform (a non-refusing rule over its limit) is not committed.
 *   4. REFUND and CLEAR ops always apply, refused batch or not.
 *   5. PEEK never changes state.
 * Ops are evaluated in order, each on the state the ops before it left
 * (two TAKEs of one key in a batch see each other).  In a refused batch
 * the TAKE verdicts (conform, window, retry_us) stand, nothing is taken,
 * and used[] / empty_in_us[] describe the state really left.  REFUND and
 * CLEAR results say conform = committed = true.
 * The callback gets one result per op, in order.  It may run before
 * store_batch() returns (embedded store) or later from the event loop.
 * When st != STORE_OK it gets res = NULL, n = 0 (STORE_EINVAL: nothing
 * was applied).
 *
 * Keys: (rule, subject) names one set of windows.  The windows passed with
 * an op describe how to interpret the state; a subject's windows are
 * matched by position.  Backends may drop a key whose windows are all empty
 * (gcra_is_empty) at any time: that loses nothing.
 */
#ifndef CACHE_STORE_H
#define CACHE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gcra.h"

#define STORE_MAX_WINDOWS 4
#define STORE_MAX_KEY     512 /* bytes of rule + subject */
#define STORE_MAX_BATCH   64  /* ops in one batch */

/* how often the caller runs tick(): its work (the embedded store's sweep
 * and journal writes) comes in small slices, so that no request waits
 * behind a long one; an idle caller may tick every STORE_IDLE_TICK_MS */
#define STORE_TICK_MS      10
#define STORE_IDLE_TICK_MS 100

enum store_op_kind {
	STORE_TAKE = 0, /* take cost units if it conforms (see semantics) */
	STORE_PEEK,     /* would cost units conform? never changes state */
	STORE_REFUND,   /* give back cost units */
	STORE_CLEAR,    /* forget the key (all windows empty) */
	/* Key-value blobs (flags, profiles, outbox): `rule` is a namespace that
	 * starts with '@' ("@flag", "@profile", ...) so it never meets a rule
	 * name; `subject` is the key inside it.  They never refuse a batch and
	 * apply whether the batch is refused or not, in order with the others. */
	STORE_GET, /* result.val/vlen: the blob, or vlen 0 + found false */
	STORE_PUT, /* set val/vlen (<= STORE_MAX_VALUE), expiring after ttl_us (0: never) */
	STORE_DEL, /* remove it */
};

#define STORE_MAX_VALUE 8192 /* bytes of one blob */

struct store_op {
	enum store_op_kind kind;
	bool refuse;         /* TAKE/PEEK: a non-conforming op refuses the batch */
	const char *rule;    /* rule name, NUL-terminated */
	const char *subject; /* normalised key value, NUL-terminated */
	uint64_t cost;
	uint8_t nwin;
	struct gcra_window win[STORE_MAX_WINDOWS];
	/* STORE_PUT */
	const void *val;
	size_t vlen;
	uint64_t ttl_us;
	/* PUT/DEL: the batch is acknowledged only once its writes are on the
	 * replicas the backend was told to wait for (Redis: WAIT after the
	 * script, on the same connection); else STORE_EREPLICA.  The embedded
	 * store ignores it (flush() makes its writes durable). */
	bool durable;
};

struct store_result {
	bool conform;                            /* TAKE/PEEK: every window conforms */
	bool committed;                          /* TAKE: the units were taken */
	int8_t window;                           /* first window that did not conform, -1 if none */
	uint64_t retry_us;                       /* when non-conforming: until it would conform */
	uint64_t used[STORE_MAX_WINDOWS];        /* units in use after the op */
	uint64_t empty_in_us[STORE_MAX_WINDOWS]; /* until that window is empty */
	/* STORE_GET: the blob, valid only during the callback */
	bool found;
	const void *val;
	size_t vlen;
};

enum store_status {
	STORE_OK = 0,
	STORE_EUNAVAIL, /* backend unreachable / timed out */
	STORE_EINVAL,   /* bad op (too many windows, key too long, ...) */
	STORE_EINTERNAL,
	/* A batch with a durable op was applied on the server, but not every
	 * replica asked for acknowledged it in time: a failover may still lose
	 * it.  Writing the same values again is the caller's remedy. */
	STORE_EREPLICA,
};

typedef void store_cb(void *arg, enum store_status st, const struct store_result *res, size_t n);

struct store;

struct store_stats {
	uint64_t keys;  /* keys held (embedded) */
	uint64_t bytes; /* approximate bytes of state (embedded) */
	uint64_t batches;
	uint64_t evicted;      /* keys dropped because empty */
	uint64_t evicted_full; /* keys dropped by the size cap (state lost) */
	uint64_t errors;
};

struct store_backend {
	const char *name;
	/* Run a batch; returns 0 when the callback has been or will be called. */
	int (*batch)(struct store *s, const struct store_op *ops, size_t n, int64_t now_us,
	             store_cb *cb, void *arg);
	/* Make everything acknowledged so far durable (clean shutdown). */
	int (*flush)(struct store *s);
	/* Housekeeping from a periodic timer: eviction, journal writes. */
	void (*tick)(struct store *s, int64_t now_us);
	void (*stats)(struct store *s, struct store_stats *out);
	/*
	 * Enumerate the keys of one namespace or rule (admin commands: flagged
	 * accounts, top senders): cb once per key with the subject and, for
	 * a rule, the op results of a PEEK of cost 0 with the given windows;
	 * for a namespace, the blob.  cb returns false to stop.  Then done(arg)
	 * (may be called before list() returns).  May be NULL: not supported.
	 */
	int (*list)(struct store *s, const char *rule_or_ns, const struct gcra_window *win,
	            uint8_t nwin, int64_t now_us,
	            bool (*cb)(void *arg, const char *subject, const struct store_result *res),
	            void (*done)(void *arg, enum store_status st), void *arg);
	void (*close)(struct store *s);
};

struct store {
	const struct store_backend *be;
	char err[256]; /* last error text, for logs */
};

static inline int store_batch(struct store *s, const struct store_op *ops, size_t n, int64_t now_us,
                              store_cb *cb, void *arg)
{
	return s->be->batch(s, ops, n, now_us, cb, arg);
}

/* Embedded store (cache/store_memory.c). */
struct store_memory_opts {
	const char *state_dir;   /* NULL or "": no persistence */
	uint64_t max_keys;       /* 0: no cap */
	unsigned flush_ms;       /* journal written at least this often (default 1000) */
	uint64_t snapshot_bytes; /* journal bytes that trigger a snapshot
	                          * (0: max(64 MB, 4 x the last snapshot)) */
};

/*
 * Open the embedded store: load snapshot + journal from state_dir (creating
 * the directory's files as needed).  Returns NULL with a message in err.
 * The caller calls tick() every STORE_TICK_MS from its loop (every
 * STORE_IDLE_TICK_MS at most while no request comes).
 */
struct store *store_memory_open(const struct store_memory_opts *o, int64_t now_us, char *err,
                                size_t errsz);

/*
 * Embedded store only: start a snapshot now (normally tick() decides);
 * 0, or -1 with s->err (one is running, no state_dir, fork failed).
 */
int store_memory_snapshot(struct store *s);
/* Embedded store only: is a snapshot child still running?  (Reaps it.) */
bool store_memory_snapshot_running(struct store *s);

#endif
