/*
 * cache/store_memory.c - the embedded (in-process) state store: rate
 * windows per (rule, subject) in one hash table, persisted to state_dir by
 * an append-only journal and fork-written snapshots.
 *
 * Entry points: store_memory_open() (the backend table below),
 * store_memory_snapshot(), store_memory_snapshot_running().
 *
 * Layout.  One table entry per subject (one malloc), holding a block per
 * rule that has state for it: a 4-byte header, a directory of 4-byte
 * (rule index, nwin) pairs, the TATs of all blocks, the subject inline.
 * Rule names are interned in a side table (at most 65535).  The table is
 * open addressing with linear probing, a 32-bit hash beside each slot (so
 * probes, growth and deletion do not touch entries), backward-shift
 * deletion (no tombstones), and
 * a keyed SipHash-1-3 of the subject (key from getrandom() per process),
 * so clients cannot choose colliding subjects.  Growth rehashes at once
 * (load 1/2 -> 1/4; at 3/4 the sweep's deletions left clusters of hundreds
 * of slots and a look-up took 5-30 probes); tick() (every STORE_TICK_MS)
 * sweeps 1/500 of the slots per call, dropping rule blocks whose windows
 * are all empty, and halves a table below 1/8.
 * A key is a (rule, subject) block; max_keys caps them, evicting by
 * sampling 5 slots and dropping the block that empties soonest.
 *
 * Blobs (STORE_GET/PUT/DEL: flags, profiles, the hook outbox) live in a
 * second table of the same kind, one malloc per (namespace, subject)
 * holding the subject and the value (at most STORE_MAX_VALUE bytes), with
 * an absolute expiry (0: never).  An expired blob is gone for GET and
 * list() at once and freed by the sweep; max_keys never evicts a blob.
 * A GET's value points into the blob: blobs that a batch replaces or
 * deletes are freed only after its callback returns.  list() copies what
 * it enumerates first, so its callback may run batches.
 *
 * Persistence (journal.h has the format).  Each committed change appends
 * an absolute record to a memory buffer; tick() writes it to
 * journal.<gen> so that no record waits more than flush_ms (it expects
 * the next tick as far away as the last one, or STORE_IDLE_TICK_MS if
 * that is more), flush() writes and fdatasync()s it; it also writes once
 * SM_JBUF_WRITE bytes wait.  When
 * the journals outgrow max(64 MB, 4 x the snapshot) (or snapshot_bytes), a
 * forked child writes the table to snapshot.tmp, fsyncs it and renames it
 * to snapshot, while the parent continues in journal.<gen + 1>; tick()
 * reaps the child and deletes the journals the snapshot covers.  Open
 * loads snapshot, then journal.<gen> for every gen >= the snapshot's, in
 * order, and starts a new journal.  A crash loses the unwritten buffer
 * (at most flush_ms of changes); power loss may also lose what the
 * kernel had not written back since the last flush().  state_dir is
 * flock()ed: one process at a time.
 */
#include <dirent.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include "journal.h"
#include "store.h"

#define SM_EMPTY_US      INT64_MIN
#define SM_NONE          SIZE_MAX
#define SM_MIN_CAP       64u
#define SM_RULE_CACHE    8u /* rule names remembered by address */
#define SM_MAX_CAP       ((size_t)1 << 31)
#define SM_MAX_RULES     65535u
#define SM_MAX_BLOCKS    255u
#define SM_SAMPLES       5
#define SM_SWEEP_DIV     500u /* slots per tick: cap / this; a full pass in 5 s (idle: 50 s) */
#define SM_PREFETCH      16u  /* slots ahead when scanning the table */
#define SM_JBUF_INIT     ((size_t)64 << 10)
#define SM_JBUF_KEEP     ((size_t)1 << 20)  /* shrink the buffer back to this */
#define SM_JBUF_WRITE    ((size_t)64 << 10) /* tick() writes once this much is buffered */
#define SM_JBUF_MAX      ((size_t)16 << 20) /* batch() writes past this; dropped if it fails */
#define SM_SNAP_MIN      ((uint64_t)64 << 20)
#define SM_MAX_JOURNALS  8u
#define SM_SNAP_RETRY_US (60 * (int64_t)1000000)
#define SM_SNAP_NAME     "snapshot"
#define SM_SNAP_TMP      "snapshot.tmp"
#define SM_LOCK_NAME     "lock"
#define SM_JOURNAL_PFX   "journal."
#define SM_BLOB_SALT     0x9e3779b97f4a7c15ULL

struct sm_entry {
	uint16_t slen;  /* subject length */
	uint8_t nrules; /* rule blocks */
	uint8_t spare;
	/* struct sm_dir dir[nrules], padded to 8 bytes from the start;
	 * struct gcra_tat tat[sum of nwin]; char subject[slen + 1] */
};

struct sm_dir {
	uint16_t rule;
	uint8_t nwin;
	uint8_t spare;
};

/* A blob: the subject then the value, inline. */
struct sm_blob {
	int64_t expires; /* µs since the epoch, 0: never */
	uint32_t vlen;
	uint16_t ns;   /* interned namespace ("@flag", ...) */
	uint16_t slen; /* subject length */
	               /* char subject[slen + 1]; uint8_t value[vlen] */
};

struct sm_rules {
	char **name;
	size_t *len;
	size_t n, cap;
	uint16_t *map; /* rule index + 1, 0 free */
	size_t mapcap; /* power of 2 */
	/* the last names seen, by address: the callers pass the same strings
	 * (the config's rule names) again and again; a hit is still checked
	 * by content, so a reused address cannot give a wrong index */
	const char *cptr[SM_RULE_CACHE];
	uint16_t cidx[SM_RULE_CACHE];
	unsigned cnext;
};

struct sm_store {
	struct store pub; /* first: the public handle */
	uint64_t key[2];  /* SipHash key */
	uint64_t rng;     /* eviction sampling */
	pid_t pid;

	struct sm_entry **ent;
	uint32_t *hv; /* 0 free, else sm_hv(): the slot's hash, top bit set */
	size_t cap, mask, nent;
	size_t sweep_pos;
	uint64_t nkeys; /* rule blocks */
	uint64_t bytes; /* entry allocations, approximate */
	uint64_t max_keys;
	struct sm_rules rules;
	/* blobs: open addressing like ent/hv */
	struct sm_blob **bent;
	uint32_t *bhv;
	size_t bcap, bmask, nblob;
	size_t bsweep_pos;
	uint64_t bbytes;
	struct store_stats st;
	int64_t now; /* latest time seen */

	/* persistence; all unused when !persist */
	bool persist;
	char *dir;
	int dirfd, lockfd, jfd;
	uint64_t jgen;      /* current journal generation */
	uint64_t jsize;     /* bytes in the current journal */
	uint64_t jtotal;    /* bytes of journals since the snapshot */
	unsigned njournals; /* journal files since the snapshot */
	uint64_t snap_size, snap_opt;
	int64_t flush_us, last_write, last_tick;
	uint8_t *jbuf;
	size_t jlen, jcap;
	bool jlost; /* records were dropped: only a snapshot restores them */
	pid_t child;
	uint64_t child_gen;
	bool child_lost;
	int64_t snap_retry_at;
};

/* One (rule, subject) touched by a batch: its state before and during. */
struct sm_work {
	const char *subj;
	size_t slen;
	uint64_t hash;
	uint16_t rule;
	struct gcra_tat orig[STORE_MAX_WINDOWS];
	struct gcra_tat cur[STORE_MAX_WINDOWS];
};

static const struct store_backend sm_backend;

/* ---- hashing and randomness ---- */

static uint64_t sm_rotl(uint64_t x, int b)
{
	return (x << b) | (x >> (64 - b));
}

static void sm_sipround(uint64_t v[4])
{
	v[0] += v[1];
	v[1] = sm_rotl(v[1], 13);
	v[1] ^= v[0];
	v[0] = sm_rotl(v[0], 32);
	v[2] += v[3];
	v[3] = sm_rotl(v[3], 16);
	v[3] ^= v[2];
	v[0] += v[3];
	v[3] = sm_rotl(v[3], 21);
	v[3] ^= v[0];
	v[2] += v[1];
	v[1] = sm_rotl(v[1], 17);
	v[1] ^= v[2];
	v[2] = sm_rotl(v[2], 32);
}

/* SipHash-1-3 */
static uint64_t sm_siphash(const uint64_t k[2], const void *data, size_t n)
{
	uint64_t v[4] = {
	    0x736f6d6570736575ULL ^ k[0],
	    0x646f72616e646f6dULL ^ k[1],
	    0x6c7967656e657261ULL ^ k[0],
	    0x7465646279746573ULL ^ k[1],
	};
	const uint8_t *p = data;
	size_t i = 0;
	for (; i + 8 <= n; i += 8) {
		uint64_t m;
		memcpy(&m, p + i, 8);
		m = le64toh(m);
		v[3] ^= m;
		sm_sipround(v);
		v[0] ^= m;
	}
	uint64_t b = (uint64_t)n << 56;
	for (size_t j = 0; i + j < n; j++)
		b |= (uint64_t)p[i + j] << (8 * j);
	v[3] ^= b;
	sm_sipround(v);
	v[0] ^= b;
	v[2] ^= 0xff;
	sm_sipround(v);
	sm_sipround(v);
	sm_sipround(v);
	return v[0] ^ v[1] ^ v[2] ^ v[3];
}

static uint64_t sm_rand(struct sm_store *s)
{
	/* xorshift64* */
	s->rng ^= s->rng >> 12;
	s->rng ^= s->rng << 25;
	s->rng ^= s->rng >> 27;
	return s->rng * 0x2545f4914f6cdd1dULL;
}

static void sm_seed(struct sm_store *s)
{
	uint64_t r[3] = {0, 0, 0};
	size_t got = 0;
	while (got < sizeof(r)) {
		ssize_t n = getrandom((char *)r + got, sizeof(r) - got, 0);
		if (n <= 0) {
			if (n < 0 && errno == EINTR)
				continue;
			break;
		}
		got += (size_t)n;
	}
	if (got < sizeof(r)) {
		/* no getrandom(): weaker, but still not fixed */
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		uint64_t x[3] = {(uint64_t)ts.tv_nsec, (uint64_t)ts.tv_sec, (uint64_t)getpid()};
		uint64_t k0[2] = {(uint64_t)(uintptr_t)s, (uint64_t)(uintptr_t)&ts};
		for (int i = 0; i < 3; i++)
			r[i] ^= sm_siphash(k0, x, sizeof(x)) + (uint64_t)i * 0x9e3779b97f4a7c15ULL;
	}
	s->key[0] = r[0];
	s->key[1] = r[1];
	s->rng = r[2] | 1;
}

/* Low 31 bits of the hash (the index bits: cap <= 2^31) with the top bit set. */
static uint32_t sm_hv(uint64_t h)
{
	return (uint32_t)h | 0x80000000u;
}

/* ---- TAT helpers ---- */

static const struct gcra_tat sm_empty = {SM_EMPTY_US, 0};

static struct gcra_tat sm_canon(struct gcra_tat t, int64_t now)
{
	return gcra_is_empty(t, now) ? sm_empty : t;
}

static bool sm_tat_eq(struct gcra_tat a, struct gcra_tat b)
{
	return a.us == b.us && a.rem == b.rem;
}

static bool sm_all_empty(const struct gcra_tat *t, unsigned n, int64_t now)
{
	for (unsigned i = 0; i < n; i++)
		if (!gcra_is_empty(t[i], now))
			return false;
	return true;
}

/* windows up to the last non-empty one */
static unsigned sm_trim(const struct gcra_tat *t, unsigned n, int64_t now)
{
	while (n > 0 && gcra_is_empty(t[n - 1], now))
		n--;
	return n;
}

/* time until every window is empty */
static uint64_t sm_empty_in(const struct gcra_tat *t, unsigned n, int64_t now)
{
	uint64_t m = 0;
	for (unsigned i = 0; i < n; i++) {
		uint64_t e = gcra_empty_in(t[i], now);
		if (e > m)
			m = e;
	}
	return m;
}

/* ---- entries ---- */

/* header + directory, rounded up so that the TATs are 8-byte aligned */
static size_t sm_headsz(unsigned nrules)
{
	return (sizeof(struct sm_entry) + (size_t)nrules * sizeof(struct sm_dir) + 7) & ~(size_t)7;
}

static size_t sm_entry_size(unsigned nrules, unsigned ntat, size_t slen)
{
	return sm_headsz(nrules) + (size_t)ntat * sizeof(struct gcra_tat) + slen + 1;
}

/* what malloc really uses for n bytes (glibc: 8-byte header, 16-byte steps) */
static uint64_t sm_chunk(size_t n)
{
	size_t c = (n + 8 + 15) & ~(size_t)15;
	return c < 32 ? 32 : c;
}

static struct sm_dir *sm_dirp(struct sm_entry *e)
{
	return (struct sm_dir *)(void *)(e + 1);
}

static unsigned sm_ntat(struct sm_entry *e)
{
	unsigned n = 0;
	struct sm_dir *d = sm_dirp(e);
	for (unsigned i = 0; i < e->nrules; i++)
		n += d[i].nwin;
	return n;
}

static struct gcra_tat *sm_tats(struct sm_entry *e)
{
	return (struct gcra_tat *)(void *)((char *)e + sm_headsz(e->nrules));
}

static char *sm_subj(struct sm_entry *e)
{
	return (char *)(sm_tats(e) + sm_ntat(e));
}

static size_t sm_entry_bytes(struct sm_entry *e)
{
	return sm_entry_size(e->nrules, sm_ntat(e), e->slen);
}

/* Block of `rule` in e: its directory index (-1: none) and first TAT. */
static int sm_block(struct sm_entry *e, uint16_t rule, unsigned *first)
{
	struct sm_dir *d = sm_dirp(e);
	unsigned t = 0;
	for (unsigned i = 0; i < e->nrules; i++) {
		if (d[i].rule == rule) {
			*first = t;
			return (int)i;
		}
		t += d[i].nwin;
	}
	return -1;
}

static void sm_entry_free(struct sm_store *s, struct sm_entry *e)
{
	s->bytes -= sm_chunk(sm_entry_bytes(e));
	free(e);
}

/*
 * Set rule's block of e (NULL: a new subject) to tat[0..nwin); nwin 0
 * removes it.  *out is the entry to keep (NULL when no block is left); e
 * is freed when replaced.  -1 when out of memory (e unchanged).
 */
static int sm_entry_put(struct sm_store *s, struct sm_entry *e, const char *subj, size_t slen,
                        uint16_t rule, const struct gcra_tat *tat, unsigned nwin,
                        struct sm_entry **out)
{
	unsigned nr = 0, nt = 0, first = 0;
	int b = -1;
	if (e) {
		nr = e->nrules;
		nt = sm_ntat(e);
		b = sm_block(e, rule, &first);
	}
	if (b < 0 && nwin == 0) {
		*out = e;
		return 0;
	}
	if (b >= 0 && sm_dirp(e)[b].nwin == nwin) {
		memcpy(sm_tats(e) + first, tat, nwin * sizeof(*tat));
		*out = e;
		return 0;
	}
	unsigned nr2 = nr, nt2 = nt + nwin;
	if (b >= 0)
		nt2 -= sm_dirp(e)[b].nwin;
	if (b < 0)
		nr2++;
	else if (nwin == 0)
		nr2--;
	if (nr2 > SM_MAX_BLOCKS)
		return -1;
	if (nr2 == 0) {
		sm_entry_free(s, e);
		*out = NULL;
		return 0;
	}
	size_t sz = sm_entry_size(nr2, nt2, slen);
	struct sm_entry *n = malloc(sz);
	if (n == NULL)
		return -1;
	n->slen = (uint16_t)slen;
	n->nrules = (uint8_t)nr2;
	n->spare = 0;
	struct sm_dir *nd = sm_dirp(n);
	struct gcra_tat *ntat = sm_tats(n);
	unsigned di = 0, ti = 0;
	if (e) {
		struct sm_dir *od = sm_dirp(e);
		struct gcra_tat *otat = sm_tats(e);
		unsigned oi = 0;
		for (unsigned i = 0; i < nr; i++) {
			if ((int)i == b) {
				if (nwin > 0) {
					nd[di++] = (struct sm_dir){rule, (uint8_t)nwin, 0};
					memcpy(ntat + ti, tat, nwin * sizeof(*tat));
					ti += nwin;
				}
			} else {
				nd[di++] = od[i];
				memcpy(ntat + ti, otat + oi, od[i].nwin * sizeof(*tat));
				ti += od[i].nwin;
			}
			oi += od[i].nwin;
		}
	}
	if (b < 0) {
		nd[di++] = (struct sm_dir){rule, (uint8_t)nwin, 0};
		memcpy(ntat + ti, tat, nwin * sizeof(*tat));
		ti += nwin;
	}
	char *ns = (char *)(ntat + ti);
	memcpy(ns, e ? sm_subj(e) : subj, slen);
	ns[slen] = '\0';
	s->bytes += sm_chunk(sz);
	if (e)
		sm_entry_free(s, e);
	*out = n;
	return 0;
}

/* ---- the table ---- */

static size_t sm_find(struct sm_store *s, uint64_t h, const char *subj, size_t slen)
{
	uint32_t hv = sm_hv(h);
	for (size_t i = hv & s->mask;; i = (i + 1) & s->mask) {
		if (s->hv[i] == 0)
			return SM_NONE;
		if (s->hv[i] != hv)
			continue;
		struct sm_entry *e = s->ent[i];
		if (e->slen == slen && memcmp(sm_subj(e), subj, slen) == 0)
			return i;
	}
}

static int sm_resize(struct sm_store *s, size_t ncap)
{
	struct sm_entry **ne = calloc(ncap, sizeof(*ne));
	uint32_t *nh = calloc(ncap, sizeof(*nh));
	if (ne == NULL || nh == NULL) {
		free(ne);
		free(nh);
		return -1;
	}
	size_t nmask = ncap - 1;
	for (size_t i = 0; i < s->cap; i++) {
		if (s->hv[i] == 0)
			continue;
		size_t j = s->hv[i] & nmask;
		while (nh[j])
			j = (j + 1) & nmask;
		ne[j] = s->ent[i];
		nh[j] = s->hv[i];
	}
	free(s->ent);
	free(s->hv);
	s->ent = ne;
	s->hv = nh;
	s->cap = ncap;
	s->mask = nmask;
	s->sweep_pos &= nmask;
	return 0;
}

/* Remove slot i from the table (the entry is the caller's) by backward shift. */
static void sm_del_slot(struct sm_store *s, size_t i)
{
	size_t j = i;
	for (;;) {
		j = (j + 1) & s->mask;
		if (s->hv[j] == 0)
			break;
		size_t k = s->hv[j] & s->mask; /* where j's entry wants to be */
		bool stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
		if (stays)
			continue;
		s->ent[i] = s->ent[j];
		s->hv[i] = s->hv[j];
		i = j;
	}
	s->ent[i] = NULL;
	s->hv[i] = 0;
	s->nent--;
}

/* A free slot for a subject known to be absent; grows the table first if needed. */
static size_t sm_slot_for(struct sm_store *s, uint64_t h)
{
	if ((s->nent + 1) * 2 > s->cap) {
		if (s->cap >= SM_MAX_CAP || sm_resize(s, s->cap * 2) < 0)
			if (s->nent + 1 >= s->cap)
				return SM_NONE;
	}
	size_t i = sm_hv(h) & s->mask;
	while (s->hv[i])
		i = (i + 1) & s->mask;
	return i;
}

/* ---- rule names ---- */

static int sm_rule_grow_map(struct sm_rules *R, const uint64_t key[2])
{
	size_t ncap = R->mapcap ? R->mapcap * 2 : 64;
	uint16_t *nm = calloc(ncap, sizeof(*nm));
	if (nm == NULL)
		return -1;
	for (size_t r = 0; r < R->n; r++) {
		size_t i = sm_siphash(key, R->name[r], R->len[r]) & (ncap - 1);
		while (nm[i])
			i = (i + 1) & (ncap - 1);
		nm[i] = (uint16_t)(r + 1);
	}
	free(R->map);
	R->map = nm;
	R->mapcap = ncap;
	return 0;
}

/* The index cached for this address if it still names the same rule, or -1. */
static int sm_rule_cached(const struct sm_rules *R, const char *name, size_t len)
{
	for (size_t c = 0; c < SM_RULE_CACHE; c++) {
		if (R->cptr[c] != name)
			continue;
		size_t r = R->cidx[c];
		if (r < R->n && R->len[r] == len && memcmp(R->name[r], name, len) == 0)
			return (int)r;
		return -1;
	}
	return -1;
}

static int sm_rule_remember(struct sm_rules *R, const char *name, size_t r)
{
	size_t c = R->cnext++ % SM_RULE_CACHE; /* round robin */
	R->cptr[c] = name;
	R->cidx[c] = (uint16_t)r;
	return (int)r;
}

/* Index of a known rule name, -1 if unknown. */
static int sm_rule_find(struct sm_store *s, const char *name, size_t len)
{
	struct sm_rules *R = &s->rules;
	int c = sm_rule_cached(R, name, len);
	if (c >= 0)
		return c;
	uint64_t h = sm_siphash(s->key, name, len);
	for (size_t i = h & (R->mapcap - 1); R->map[i]; i = (i + 1) & (R->mapcap - 1)) {
		size_t r = R->map[i] - 1u;
		if (R->len[r] == len && memcmp(R->name[r], name, len) == 0)
			return sm_rule_remember(R, name, r);
	}
	return -1;
}

/* Index of a rule name, added if new; -1 when full or out of memory. */
static int sm_rule_intern(struct sm_store *s, const char *name, size_t len)
{
	struct sm_rules *R = &s->rules;
	int c = sm_rule_cached(R, name, len);
	if (c >= 0)
		return c;
	uint64_t h = sm_siphash(s->key, name, len);
	size_t i;
	for (i = h & (R->mapcap - 1); R->map[i]; i = (i + 1) & (R->mapcap - 1)) {
		size_t r = R->map[i] - 1u;
		if (R->len[r] == len && memcmp(R->name[r], name, len) == 0)
			return sm_rule_remember(R, name, r);
	}
	if (R->n >= SM_MAX_RULES)
		return -1;
	if (R->n == R->cap) {
		size_t ncap = R->cap ? R->cap * 2 : 16;
		char **nn = realloc(R->name, ncap * sizeof(*nn));
		if (nn == NULL)
			return -1;
		R->name = nn;
		size_t *nl = realloc(R->len, ncap * sizeof(*nl));
		if (nl == NULL)
			return -1;
		R->len = nl;
		R->cap = ncap;
	}
	char *copy = malloc(len + 1);
	if (copy == NULL)
		return -1;
	memcpy(copy, name, len);
	copy[len] = '\0';
	R->name[R->n] = copy;
	R->len[R->n] = len;
	R->n++;
	if (R->n * 2 > R->mapcap) {
		if (sm_rule_grow_map(R, s->key) < 0) {
			R->n--;
			free(copy);
			return -1;
		}
		return (int)(R->n - 1);
	}
	R->map[i] = (uint16_t)R->n;
	return (int)(R->n - 1);
}

/* ---- journal buffer ---- */

/* Append one record to the journal buffer (a lost one forces a snapshot). */
static void sm_jappend(struct sm_store *s, const struct journal_rec *r)
{
	if (s->jcap - s->jlen < JOURNAL_REC_MAX) {
		size_t ncap = s->jcap ? s->jcap * 2 : SM_JBUF_INIT;
		uint8_t *nb = realloc(s->jbuf, ncap);
		if (nb == NULL) {
			s->jlost = true;
			s->st.errors++;
			return;
		}
		s->jbuf = nb;
		s->jcap = ncap;
	}
	s->jlen += journal_encode(s->jbuf + s->jlen, s->jcap - s->jlen, r);
}

static void sm_jrec(struct sm_store *s, uint16_t rule, const char *subj, size_t slen,
                    const struct gcra_tat *tat, unsigned nwin)
{
	if (!s->persist)
		return;
	struct journal_rec r = {
	    .rule = s->rules.name[rule],
	    .rlen = s->rules.len[rule],
	    .subj = subj,
	    .slen = slen,
	    .nwin = nwin,
	};
	if (nwin > 0)
		memcpy(r.tat, tat, nwin * sizeof(*tat));
	sm_jappend(s, &r);
}

static void sm_jblob(struct sm_store *s, uint16_t ns, const char *subj, size_t slen,
                     const void *val, size_t vlen, int64_t expires, bool deleted)
{
	if (!s->persist)
		return;
	struct journal_rec r = {
	    .rule = s->rules.name[ns],
	    .rlen = s->rules.len[ns],
	    .subj = subj,
	    .slen = slen,
	    .blob = true,
	    .deleted = deleted,
	    .val = deleted ? NULL : val,
	    .vlen = deleted ? 0 : vlen,
	    .expires_us = deleted ? 0 : expires,
	};
	sm_jappend(s, &r);
}

/* Write the buffer to the current journal; on failure keep it for the next try. */
static int sm_jwrite(struct sm_store *s)
{
	if (!s->persist || s->jlen == 0)
		return 0;
	if (journal_pwrite(s->jfd, s->jbuf, s->jlen, s->jsize) < 0) {
		snprintf(s->pub.err, sizeof(s->pub.err), "%s/" SM_JOURNAL_PFX "%016" PRIx64 ": %s",
		         s->dir, s->jgen, strerror(errno));
		s->st.errors++;
		/* no half record may stay in front of the next write */
		if (ftruncate(s->jfd, (off_t)s->jsize) < 0) {
			/* the next pwrite at jsize overwrites it anyway */
		}
		if (s->jlen > SM_JBUF_MAX) {
			s->jlen = 0;
			s->jlost = true;
		}
		return -1;
	}
	s->jsize += s->jlen;
	s->jtotal += s->jlen;
	s->jlen = 0;
	if (s->jcap > SM_JBUF_KEEP) {
		uint8_t *nb = realloc(s->jbuf, SM_JBUF_KEEP);
		if (nb) {
			s->jbuf = nb;
			s->jcap = SM_JBUF_KEEP;
		}
	}
	return 0;
}

/* ---- key operations ---- */

/*
 * Remove rule's block from the entry in slot i.  Returns 1 when the slot
 * was freed (another entry may have shifted into it), 0 when not, -1
 * when out of memory (the block is then left in place but empty).
 */
static int sm_drop_block(struct sm_store *s, size_t i, uint16_t rule)
{
	struct sm_entry *e = s->ent[i], *n;
	unsigned first;
	int b = sm_block(e, rule, &first);
	if (b < 0)
		return 0;
	if (e->nrules == 1) {
		sm_entry_free(s, e);
		sm_del_slot(s, i);
		s->nkeys--;
		return 1;
	}
	if (sm_entry_put(s, e, NULL, e->slen, rule, NULL, 0, &n) < 0) {
		struct gcra_tat *t = sm_tats(e) + first;
		for (unsigned k = 0; k < sm_dirp(e)[b].nwin; k++)
			t[k] = sm_empty;
		s->st.errors++;
		return -1;
	}
	s->ent[i] = n;
	s->nkeys--;
	return 0;
}

/* Make room under max_keys: drop the sampled block that empties soonest. */
static void sm_evict_one(struct sm_store *s, int64_t now, bool journal)
{
	if (s->nent == 0)
		return;
	size_t best = SM_NONE;
	uint16_t brule = 0;
	uint64_t bt = UINT64_MAX;
	for (int k = 0; k < SM_SAMPLES; k++) {
		size_t i = (size_t)sm_rand(s) & s->mask;
		while (s->hv[i] == 0)
			i = (i + 1) & s->mask;
		struct sm_entry *e = s->ent[i];
		struct sm_dir *d = sm_dirp(e);
		struct gcra_tat *t = sm_tats(e);
		for (unsigned b = 0; b < e->nrules; t += d[b].nwin, b++) {
			uint64_t et = sm_empty_in(t, d[b].nwin, now);
			if (best == SM_NONE || et < bt) {
				best = i;
				brule = d[b].rule;
				bt = et;
			}
		}
	}
	struct sm_entry *e = s->ent[best];
	char subj[STORE_MAX_KEY + 1];
	size_t slen = e->slen;
	memcpy(subj, sm_subj(e), slen);
	if (sm_drop_block(s, best, brule) < 0)
		return;
	if (bt == 0) {
		s->st.evicted++;
		return;
	}
	s->st.evicted_full++;
	if (journal)
		sm_jrec(s, brule, subj, slen, NULL, 0);
	else
		s->jlost = true; /* while loading: the journals still hold it */
}

/*
 * Store the final state tat[0..STORE_MAX_WINDOWS) (canonical: empty
 * windows are sm_empty) of (rule, subject), journaling it if asked.
 */
static int sm_set(struct sm_store *s, uint16_t rule, const char *subj, size_t slen, uint64_t h,
                  const struct gcra_tat *tat, int64_t now, bool journal)
{
	unsigned k = sm_trim(tat, STORE_MAX_WINDOWS, now);
	size_t i = sm_find(s, h, subj, slen);
	struct sm_entry *e = i == SM_NONE ? NULL : s->ent[i];
	unsigned first = 0;
	int b = e ? sm_block(e, rule, &first) : -1;

	if (k == 0) {
		if (b >= 0)
			(void)sm_drop_block(s, i, rule);
		if (journal)
			sm_jrec(s, rule, subj, slen, NULL, 0);
		return 0;
	}
	unsigned nwin = k;
	if (b >= 0) {
		if (sm_dirp(e)[b].nwin > nwin)
			nwin = sm_dirp(e)[b].nwin; /* keep the allocation; the rest is empty */
	} else if (s->max_keys && s->nkeys >= s->max_keys) {
		sm_evict_one(s, now, journal);
		i = sm_find(s, h, subj, slen);
		e = i == SM_NONE ? NULL : s->ent[i];
	}
	if (e == NULL) {
		i = sm_slot_for(s, h);
		if (i == SM_NONE)
			return -1;
	}
	struct sm_entry *n;
	if (sm_entry_put(s, e, subj, slen, rule, tat, nwin, &n) < 0)
		return -1;
	if (e == NULL) {
		s->hv[i] = sm_hv(h);
		s->nent++;
	}
	s->ent[i] = n;
	if (b < 0)
		s->nkeys++;
	if (journal)
		sm_jrec(s, rule, subj, slen, tat, k);
	return 0;
}

/* Read (rule, subject)'s windows into w (absent windows are empty). */
static void sm_load_work(struct sm_store *s, struct sm_work *w, int64_t now)
{
	for (unsigned k = 0; k < STORE_MAX_WINDOWS; k++)
		w->orig[k] = sm_empty;
	size_t i = sm_find(s, w->hash, w->subj, w->slen);
	if (i != SM_NONE) {
		struct sm_entry *e = s->ent[i];
		unsigned first;
		int b = sm_block(e, w->rule, &first);
		if (b >= 0) {
			struct gcra_tat *t = sm_tats(e) + first;
			for (unsigned k = 0; k < sm_dirp(e)[b].nwin; k++)
				w->orig[k] = sm_canon(t[k], now);
		}
	}
	memcpy(w->cur, w->orig, sizeof(w->cur));
}

/* ---- blobs ---- */

/* Blobs replaced or deleted by a batch: freed after its callback. */
struct sm_dead {
	struct sm_blob *b[STORE_MAX_BATCH];
	size_t n;
};

static bool sm_is_kv(enum store_op_kind k)
{
	return k == STORE_GET || k == STORE_PUT || k == STORE_DEL;
}

static char *sm_bsubj(struct sm_blob *b)
{
	return (char *)(b + 1);
}

static uint8_t *sm_bval(struct sm_blob *b)
{
	return (uint8_t *)(b + 1) + b->slen + 1;
}

static size_t sm_blob_size(size_t slen, size_t vlen)
{
	return sizeof(struct sm_blob) + slen + 1 + vlen;
}

static bool sm_blob_live(const struct sm_blob *b, int64_t now)
{
	return b->expires == 0 || b->expires > now;
}

static uint64_t sm_bhash(struct sm_store *s, uint16_t ns, const char *subj, size_t slen)
{
	return sm_siphash(s->key, subj, slen) ^ ((uint64_t)ns + 1u) * SM_BLOB_SALT;
}

static size_t sm_bfind(struct sm_store *s, uint16_t ns, uint64_t h, const char *subj, size_t slen)
{
	if (s->bcap == 0)
		return SM_NONE;
	uint32_t hv = sm_hv(h);
	for (size_t i = hv & s->bmask;; i = (i + 1) & s->bmask) {
		if (s->bhv[i] == 0)
			return SM_NONE;
		if (s->bhv[i] != hv)
			continue;
		struct sm_blob *b = s->bent[i];
		if (b->ns == ns && b->slen == slen && memcmp(sm_bsubj(b), subj, slen) == 0)
			return i;
	}
}

static int sm_bresize(struct sm_store *s, size_t ncap)
{
	struct sm_blob **ne = calloc(ncap, sizeof(*ne));
	uint32_t *nh = calloc(ncap, sizeof(*nh));
	if (ne == NULL || nh == NULL) {
		free(ne);
		free(nh);
		return -1;
	}
	size_t nmask = ncap - 1;
	for (size_t i = 0; i < s->bcap; i++) {
		if (s->bhv[i] == 0)
			continue;
		size_t j = s->bhv[i] & nmask;
		while (nh[j])
			j = (j + 1) & nmask;
		ne[j] = s->bent[i];
		nh[j] = s->bhv[i];
	}
	free(s->bent);
	free(s->bhv);
	s->bent = ne;
	s->bhv = nh;
	s->bcap = ncap;
	s->bmask = nmask;
	s->bsweep_pos &= nmask;
	return 0;
}

/* Remove slot i from the blob table (the blob is the caller's): backward shift. */
static void sm_bdel_slot(struct sm_store *s, size_t i)
{
	size_t j = i;
	for (;;) {
		j = (j + 1) & s->bmask;
		if (s->bhv[j] == 0)
			break;
		size_t k = s->bhv[j] & s->bmask;
		bool stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
		if (stays)
			continue;
		s->bent[i] = s->bent[j];
		s->bhv[i] = s->bhv[j];
		i = j;
	}
	s->bent[i] = NULL;
	s->bhv[i] = 0;
	s->nblob--;
}

/* Free a blob now, or after the batch's callback when dead is given. */
static void sm_blob_release(struct sm_store *s, struct sm_blob *b, struct sm_dead *dead)
{
	s->bbytes -= sm_chunk(sm_blob_size(b->slen, b->vlen));
	if (dead && dead->n < STORE_MAX_BATCH)
		dead->b[dead->n++] = b;
	else
		free(b);
}

static void sm_dead_free(struct sm_dead *dead)
{
	for (size_t i = 0; i < dead->n; i++)
		free(dead->b[i]);
	dead->n = 0;
}

static void sm_bdrop(struct sm_store *s, size_t i, struct sm_dead *dead)
{
	struct sm_blob *b = s->bent[i];
	sm_bdel_slot(s, i);
	sm_blob_release(s, b, dead);
}

/* Set (ns, subject) to val[0..vlen); -1 when out of memory (nothing changed). */
static int sm_bput(struct sm_store *s, uint16_t ns, const char *subj, size_t slen, uint64_t h,
                   const void *val, size_t vlen, int64_t expires, struct sm_dead *dead)
{
	size_t sz = sm_blob_size(slen, vlen);
	struct sm_blob *b = malloc(sz);
	if (b == NULL)
		return -1;
	b->expires = expires;
	b->vlen = (uint32_t)vlen;
	b->ns = ns;
	b->slen = (uint16_t)slen;
	memcpy(sm_bsubj(b), subj, slen);
	sm_bsubj(b)[slen] = '\0';
	if (vlen)
		memcpy(sm_bval(b), val, vlen);
	size_t i = sm_bfind(s, ns, h, subj, slen);
	if (i != SM_NONE) {
		sm_blob_release(s, s->bent[i], dead);
		s->bent[i] = b;
	} else {
		if (s->bcap == 0 || (s->nblob + 1) * 2 > s->bcap) {
			size_t ncap = s->bcap ? s->bcap * 2 : SM_MIN_CAP;
			if ((ncap > SM_MAX_CAP || sm_bresize(s, ncap) < 0) &&
			    (s->bcap == 0 || s->nblob + 1 >= s->bcap)) {
				free(b);
				return -1;
			}
		}
		i = sm_hv(h) & s->bmask;
		while (s->bhv[i])
			i = (i + 1) & s->bmask;
		s->bent[i] = b;
		s->bhv[i] = sm_hv(h);
		s->nblob++;
	}
	s->bbytes += sm_chunk(sz);
	return 0;
}

/* One GET, PUT or DEL of a batch, applied at once (they never refuse). */
static enum store_status sm_kv_apply(struct sm_store *s, const struct store_op *op, uint16_t ns,
                                     int64_t now, struct store_result *r, struct sm_dead *dead)
{
	const char *subj = op->subject;
	size_t slen = strlen(subj);
	uint64_t h = sm_bhash(s, ns, subj, slen);
	size_t i = sm_bfind(s, ns, h, subj, slen);

	r->conform = true;
	r->window = -1;
	if (i != SM_NONE && !sm_blob_live(s->bent[i], now)) {
		sm_bdrop(s, i, dead); /* its record expires on load as well */
		i = SM_NONE;
	}
	r->found = i != SM_NONE;
	switch (op->kind) {
	case STORE_GET:
		if (i != SM_NONE) {
			r->val = sm_bval(s->bent[i]);
			r->vlen = s->bent[i]->vlen;
		}
		break;
	case STORE_PUT: {
		int64_t exp = 0;
		if (op->ttl_us)
			exp = now > 0 && op->ttl_us > (uint64_t)(INT64_MAX - now)
			          ? INT64_MAX
			          : now + (int64_t)op->ttl_us;
		if (sm_bput(s, ns, subj, slen, h, op->val, op->vlen, exp, dead) < 0) {
			snprintf(s->pub.err, sizeof(s->pub.err), "out of memory storing %s %s",
			         op->rule, subj);
			return STORE_EINTERNAL;
		}
		sm_jblob(s, ns, subj, slen, op->val, op->vlen, exp, false);
		r->committed = true;
		break;
	}
	case STORE_DEL:
		if (i != SM_NONE) {
			sm_bdrop(s, i, dead);
			sm_jblob(s, ns, subj, slen, NULL, 0, 0, true);
		}
		r->committed = true;
		break;
	case STORE_TAKE:
	case STORE_PEEK:
	case STORE_REFUND:
	case STORE_CLEAR:
		break; /* sm_apply() */
	}
	return STORE_OK;
}

/* Drop expired blobs: 1/500 of the table per tick, like sm_sweep(). */
static void sm_bsweep(struct sm_store *s, int64_t now)
{
	if (s->bcap == 0)
		return;
	size_t budget = s->bcap / SM_SWEEP_DIV;
	if (budget < SM_MIN_CAP)
		budget = SM_MIN_CAP;
	if (budget > s->bcap)
		budget = s->bcap;
	size_t i = s->bsweep_pos & s->bmask;
	while (budget-- > 0) {
		if (s->bhv[i] && !sm_blob_live(s->bent[i], now)) {
			sm_bdrop(s, i, NULL);
			s->st.evicted++;
			continue; /* look at whatever shifted into slot i */
		}
		i = (i + 1) & s->bmask;
	}
	s->bsweep_pos = i;
	if (s->bcap > SM_MIN_CAP && s->nblob * 8 < s->bcap)
		(void)sm_bresize(s, s->bcap / 2);
}

/* ---- batches ---- */

static int sm_check(struct sm_store *s, const struct store_op *ops, size_t n)
{
	char *err = s->pub.err;
	size_t errsz = sizeof(s->pub.err);
	if (n > STORE_MAX_BATCH) {
		snprintf(err, errsz, "batch of %zu ops (max %d)", n, STORE_MAX_BATCH);
		return -1;
	}
	for (size_t i = 0; i < n; i++) {
		const struct store_op *op = &ops[i];
		if ((unsigned)op->kind > STORE_DEL) {
			snprintf(err, errsz, "op %zu: bad kind %d", i, (int)op->kind);
			return -1;
		}
		if (op->rule == NULL || op->subject == NULL) {
			snprintf(err, errsz, "op %zu: no rule or subject", i);
			return -1;
		}
		size_t rlen = strnlen(op->rule, STORE_MAX_KEY + 1);
		size_t slen = strnlen(op->subject, STORE_MAX_KEY + 1);
		if (rlen == 0 || rlen + slen > STORE_MAX_KEY) {
			snprintf(err, errsz, "op %zu: rule + subject of %zu bytes (1..%d)", i,
			         rlen + slen, STORE_MAX_KEY);
			return -1;
		}
		bool kv = sm_is_kv(op->kind);
		if (kv != (op->rule[0] == '@')) {
			snprintf(err, errsz, "op %zu: '%s' %s", i, op->rule,
			         kv ? "is not a namespace (key-value ops need '@name')"
			            : "is a namespace (rate ops need a rule name without '@')");
			return -1;
		}
		if (kv) {
			if (op->kind == STORE_PUT &&
			    (op->vlen > STORE_MAX_VALUE || (op->vlen > 0 && op->val == NULL))) {
				snprintf(err, errsz,
				         "op %zu: value of %zu bytes for %s %s (max %d)", i,
				         op->vlen, op->rule, op->subject, STORE_MAX_VALUE);
				return -1;
			}
			continue;
		}
		if (op->nwin > STORE_MAX_WINDOWS) {
			snprintf(err, errsz, "op %zu: %u windows (max %d)", i, op->nwin,
			         STORE_MAX_WINDOWS);
			return -1;
		}
		if (op->kind == STORE_CLEAR)
			continue;
		for (unsigned k = 0; k < op->nwin; k++) {
			if (op->win[k].limit == 0 || op->win[k].period_us == 0) {
				snprintf(err, errsz, "op %zu: window %u has a zero limit or period",
				         i, k);
				return -1;
			}
		}
	}
	return 0;
}

/*
 * Apply op to w.  Pass 1 (eval) decides TAKE/PEEK and applies conforming
 * TAKEs; pass 2 (after a refusal) keeps pass 1's verdicts and takes
 * nothing.  Returns true when a refusing op does not conform.
 */
static bool sm_apply(const struct store_op *op, struct sm_work *w, int64_t now,
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
				if (gcra_take(&op->win[k], w->cur[k], now, op->cost, &next[k],
				              &retry))
					continue;
				if (r->conform)
					r->window = (int8_t)k;
				r->conform = false;
				if (retry > r->retry_us)
					r->retry_us = retry;
			}
			if (op->kind == STORE_TAKE && r->conform) {
				for (unsigned k = 0; k < op->nwin; k++)
					w->cur[k] = sm_canon(next[k], now);
				r->committed = true;
			}
		} else {
			r->committed = false;
		}
		break;
	case STORE_REFUND:
		for (unsigned k = 0; k < op->nwin; k++)
			w->cur[k] =
			    sm_canon(gcra_refund(&op->win[k], w->cur[k], now, op->cost), now);
		r->conform = r->committed = true;
		r->window = -1;
		r->retry_us = 0;
		break;
	case STORE_CLEAR:
		for (unsigned k = 0; k < STORE_MAX_WINDOWS; k++)
			w->cur[k] = sm_empty;
		r->conform = r->committed = true;
		r->window = -1;
		r->retry_us = 0;
		break;
	case STORE_GET:
	case STORE_PUT:
	case STORE_DEL:
		return false; /* sm_kv_apply() */
	}
	for (unsigned k = 0; k < STORE_MAX_WINDOWS; k++) {
		bool have = k < op->nwin && op->kind != STORE_CLEAR;
		r->used[k] = have ? gcra_used(&op->win[k], w->cur[k], now) : 0;
		r->empty_in_us[k] = have ? gcra_empty_in(w->cur[k], now) : 0;
	}
	return op->refuse && (op->kind == STORE_TAKE || op->kind == STORE_PEEK) && !r->conform;
}

static int sm_batch(struct store *pub, const struct store_op *ops, size_t n, int64_t now,
                    store_cb *cb, void *arg)
{
	struct sm_store *s = (struct sm_store *)pub;
	struct store_result res[STORE_MAX_BATCH];
	struct sm_work w[STORE_MAX_BATCH];
	uint8_t wi[STORE_MAX_BATCH];
	uint16_t ns[STORE_MAX_BATCH];
	struct sm_dead dead;
	size_t nw = 0;

	if (cb == NULL) {
		snprintf(pub->err, sizeof(pub->err), "batch without a callback");
		return -1;
	}
	s->st.batches++;
	if (now > s->now)
		s->now = now;
	if (sm_check(s, ops, n) < 0) {
		s->st.errors++;
		cb(arg, STORE_EINVAL, NULL, 0);
		return 0;
	}
	memset(res, 0, (n ? n : 1) * sizeof(res[0])); /* res[0]: gcc sees it set when n == 0 */
	for (size_t i = 0; i < n; i++) {
		int rule = sm_rule_intern(s, ops[i].rule, strlen(ops[i].rule));
		if (rule < 0) {
			snprintf(pub->err, sizeof(pub->err), "op %zu: cannot add rule %s", i,
			         ops[i].rule);
			s->st.errors++;
			cb(arg, STORE_EINTERNAL, NULL, 0);
			return 0;
		}
		wi[i] = 0;
		ns[i] = (uint16_t)rule;
		if (sm_is_kv(ops[i].kind))
			continue;
		const char *subj = ops[i].subject;
		size_t slen = strlen(subj);
		uint64_t h = sm_siphash(s->key, subj, slen);
		size_t j;
		for (j = 0; j < nw; j++)
			if (w[j].rule == rule && w[j].hash == h && w[j].slen == slen &&
			    memcmp(w[j].subj, subj, slen) == 0)
				break;
		if (j == nw) {
			w[nw] = (struct sm_work){
			    .subj = subj, .slen = slen, .hash = h, .rule = (uint16_t)rule};
			sm_load_work(s, &w[nw], now);
			nw++;
		}
		wi[i] = (uint8_t)j;
	}

	dead.n = 0;
	enum store_status st = STORE_OK;
	bool refused = false;
	for (size_t i = 0; i < n; i++) {
		if (!sm_is_kv(ops[i].kind))
			refused |= sm_apply(&ops[i], &w[wi[i]], now, &res[i], true);
		else if (sm_kv_apply(s, &ops[i], ns[i], now, &res[i], &dead) != STORE_OK) {
			s->st.errors++;
			st = STORE_EINTERNAL;
		}
	}
	if (refused) {
		for (size_t j = 0; j < nw; j++)
			memcpy(w[j].cur, w[j].orig, sizeof(w[j].cur));
		for (size_t i = 0; i < n; i++)
			if (!sm_is_kv(ops[i].kind))
				(void)sm_apply(&ops[i], &w[wi[i]], now, &res[i], false);
	}

	for (size_t j = 0; j < nw; j++) {
		bool changed = false;
		for (unsigned k = 0; k < STORE_MAX_WINDOWS; k++)
			changed |= !sm_tat_eq(w[j].cur[k], w[j].orig[k]);
		if (!changed)
			continue;
		if (sm_set(s, w[j].rule, w[j].subj, w[j].slen, w[j].hash, w[j].cur, now, true) <
		    0) {
			snprintf(pub->err, sizeof(pub->err), "out of memory storing %s", w[j].subj);
			s->st.errors++;
			st = STORE_EINTERNAL;
		}
	}
	if (s->persist && s->jlen >= SM_JBUF_MAX)
		(void)sm_jwrite(s);
	if (st == STORE_OK)
		cb(arg, st, res, n);
	else
		cb(arg, st, NULL, 0);
	sm_dead_free(&dead);
	return 0;
}

/* ---- sweeping ---- */

/* Drop the empty blocks of slot i's entry; true when slot i was freed. */
static bool sm_sweep_slot(struct sm_store *s, size_t i, int64_t now)
{
	for (;;) {
		struct sm_entry *e = s->ent[i];
		struct sm_dir *d = sm_dirp(e);
		struct gcra_tat *t = sm_tats(e);
		int empty = -1;
		for (unsigned b = 0; b < e->nrules; t += d[b].nwin, b++) {
			if (sm_all_empty(t, d[b].nwin, now)) {
				empty = (int)b;
				break;
			}
		}
		if (empty < 0)
			return false;
		int rc = sm_drop_block(s, i, d[empty].rule);
		if (rc < 0)
			return false;
		s->st.evicted++;
		if (rc == 1)
			return true;
	}
}

static void sm_sweep(struct sm_store *s, int64_t now)
{
	size_t budget = s->cap / SM_SWEEP_DIV;
	if (budget < SM_MIN_CAP)
		budget = SM_MIN_CAP;
	if (budget > s->cap)
		budget = s->cap;
	size_t i = s->sweep_pos & s->mask;
	while (budget-- > 0) {
		size_t ahead = (i + SM_PREFETCH) & s->mask;
		if (s->hv[ahead])
			__builtin_prefetch(s->ent[ahead]);
		if (s->hv[i] && sm_sweep_slot(s, i, now))
			continue; /* look at whatever shifted into slot i */
		i = (i + 1) & s->mask;
	}
	s->sweep_pos = i;
	if (s->cap > SM_MIN_CAP && s->nent * 8 < s->cap)
		(void)sm_resize(s, s->cap / 2);
}

/* ---- files ---- */

static void sm_journal_name(char *buf, size_t sz, uint64_t gen)
{
	snprintf(buf, sz, SM_JOURNAL_PFX "%016" PRIx64, gen);
}

static int sm_journal_create(struct sm_store *s, uint64_t gen)
{
	char name[64];
	uint8_t hdr[JOURNAL_HDR_SIZE];
	sm_journal_name(name, sizeof(name), gen);
	int fd = openat(s->dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		snprintf(s->pub.err, sizeof(s->pub.err), "%s/%s: %s", s->dir, name,
		         strerror(errno));
		return -1;
	}
	journal_header(hdr, JOURNAL_LOG, gen);
	if (journal_pwrite(fd, hdr, sizeof(hdr), 0) < 0) {
		snprintf(s->pub.err, sizeof(s->pub.err), "%s/%s: %s", s->dir, name,
		         strerror(errno));
		close(fd);
		(void)unlinkat(s->dirfd, name, 0);
		return -1;
	}
	(void)fsync(s->dirfd);
	return fd;
}

static int sm_gen_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* Generations of the journal files in state_dir, sorted; -1 on error. */
static int sm_list_journals(struct sm_store *s, uint64_t **out, size_t *n)
{
	*out = NULL;
	*n = 0;
	int fd = dup(s->dirfd);
	DIR *d = fd < 0 ? NULL : fdopendir(fd);
	if (d == NULL) {
		if (fd >= 0)
			close(fd);
		snprintf(s->pub.err, sizeof(s->pub.err), "%s: %s", s->dir, strerror(errno));
		return -1;
	}
	rewinddir(d);
	size_t cap = 0;
	const size_t plen = sizeof(SM_JOURNAL_PFX) - 1;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		const char *nm = de->d_name;
		if (strncmp(nm, SM_JOURNAL_PFX, plen) != 0 || strlen(nm) != plen + 16)
			continue;
		uint64_t g = 0;
		bool ok = true;
		for (size_t i = plen; i < plen + 16 && ok; i++) {
			char c = nm[i];
			unsigned v = c >= '0' && c <= '9'   ? (unsigned)(c - '0')
			             : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
			                                    : 16;
			ok = v < 16;
			g = (g << 4) | (v & 15);
		}
		if (!ok)
			continue;
		if (*n == cap) {
			size_t ncap = cap ? cap * 2 : 16;
			uint64_t *ng = realloc(*out, ncap * sizeof(*ng));
			if (ng == NULL) {
				closedir(d);
				free(*out);
				*out = NULL;
				snprintf(s->pub.err, sizeof(s->pub.err), "out of memory");
				return -1;
			}
			*out = ng;
			cap = ncap;
		}
		(*out)[(*n)++] = g;
	}
	closedir(d);
	if (*n > 1)
		qsort(*out, *n, sizeof(**out), sm_gen_cmp);
	return 0;
}

/* Delete the journals that a snapshot of generation gen covers. */
static void sm_drop_journals(struct sm_store *s, uint64_t gen)
{
	uint64_t *g;
	size_t n;
	if (sm_list_journals(s, &g, &n) < 0)
		return;
	for (size_t i = 0; i < n; i++) {
		if (g[i] >= gen)
			continue;
		char name[64];
		sm_journal_name(name, sizeof(name), g[i]);
		(void)unlinkat(s->dirfd, name, 0);
	}
	free(g);
}

struct sm_loader {
	struct sm_store *s;
	int64_t now;
	char *err;
	size_t errsz;
};

static int sm_load_rec(void *arg, const struct journal_rec *r)
{
	struct sm_loader *L = arg;
	struct sm_store *s = L->s;
	int rule = sm_rule_intern(s, r->rule, r->rlen);
	if (rule < 0) {
		snprintf(L->err, L->errsz, "%s: too many rule names or out of memory", s->dir);
		return -1;
	}
	if (r->blob) {
		uint64_t bh = sm_bhash(s, (uint16_t)rule, r->subj, r->slen);
		if (r->deleted || (r->expires_us && r->expires_us <= L->now)) {
			size_t i = sm_bfind(s, (uint16_t)rule, bh, r->subj, r->slen);
			if (i != SM_NONE)
				sm_bdrop(s, i, NULL);
			return 0;
		}
		if (sm_bput(s, (uint16_t)rule, r->subj, r->slen, bh, r->val, r->vlen, r->expires_us,
		            NULL) < 0) {
			snprintf(L->err, L->errsz, "%s: out of memory loading state", s->dir);
			return -1;
		}
		return 0;
	}
	struct gcra_tat t[STORE_MAX_WINDOWS];
	for (unsigned k = 0; k < STORE_MAX_WINDOWS; k++)
		t[k] = k < r->nwin ? sm_canon(r->tat[k], L->now) : sm_empty;
	uint64_t h = sm_siphash(s->key, r->subj, r->slen);
	if (sm_set(s, (uint16_t)rule, r->subj, r->slen, h, t, L->now, false) < 0) {
		snprintf(L->err, L->errsz, "%s: out of memory loading state", s->dir);
		return -1;
	}
	return 0;
}

static int sm_persist_open(struct sm_store *s, const char *dir, int64_t now, char *err,
                           size_t errsz)
{
	s->dir = strdup(dir);
	if (s->dir == NULL) {
		snprintf(err, errsz, "out of memory");
		return -1;
	}
	if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
		snprintf(err, errsz, "%s: mkdir: %s", dir, strerror(errno));
		return -1;
	}
	s->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (s->dirfd < 0) {
		snprintf(err, errsz, "%s: %s", dir, strerror(errno));
		return -1;
	}
	s->lockfd = openat(s->dirfd, SM_LOCK_NAME, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (s->lockfd < 0) {
		snprintf(err, errsz, "%s/" SM_LOCK_NAME ": %s", dir, strerror(errno));
		return -1;
	}
	/* a snapshot child of a killed predecessor dies with it: wait up to 0.5 s */
	for (int tries = 0; flock(s->lockfd, LOCK_EX | LOCK_NB) < 0; tries++) {
		if ((errno != EWOULDBLOCK && errno != EINTR) || tries >= 50) {
			snprintf(err, errsz, "%s: in use by another process (%s)", dir,
			         strerror(errno));
			return -1;
		}
		struct timespec ts = {0, 10 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	(void)unlinkat(s->dirfd, SM_SNAP_TMP, 0);

	struct sm_loader L = {s, now, err, errsz};
	struct journal_info info;
	int rc = journal_load(s->dirfd, dir, SM_SNAP_NAME, JOURNAL_SNAPSHOT, sm_load_rec, &L, &info,
	                      err, errsz);
	if (rc < 0)
		return -1;
	uint64_t sgen = rc == 0 ? info.gen : 0;
	s->snap_size = rc == 0 ? info.size : 0;

	uint64_t *gens;
	size_t ngen;
	if (sm_list_journals(s, &gens, &ngen) < 0) {
		snprintf(err, errsz, "%s", s->pub.err);
		return -1;
	}
	uint64_t next = sgen;
	for (size_t i = 0; i < ngen; i++) {
		char name[64];
		sm_journal_name(name, sizeof(name), gens[i]);
		if (gens[i] < sgen) {
			(void)unlinkat(s->dirfd, name, 0); /* covered by the snapshot */
			continue;
		}
		rc = journal_load(s->dirfd, dir, name, JOURNAL_LOG, sm_load_rec, &L, &info, err,
		                  errsz);
		if (rc < 0) {
			free(gens);
			return -1;
		}
		if (rc == 0 && info.size >= JOURNAL_HDR_SIZE && info.gen != gens[i]) {
			snprintf(err, errsz, "%s/%s: header says generation %" PRIu64, dir, name,
			         info.gen);
			free(gens);
			return -1;
		}
		s->njournals++;
		s->jtotal += info.size;
		next = gens[i] + 1;
	}
	free(gens);

	s->jgen = next;
	s->jfd = sm_journal_create(s, next);
	if (s->jfd < 0) {
		snprintf(err, errsz, "%s", s->pub.err);
		return -1;
	}
	s->jsize = JOURNAL_HDR_SIZE;
	s->jtotal += JOURNAL_HDR_SIZE;
	s->njournals++;
	s->last_write = now;
	s->persist = true;
	return 0;
}

/* ---- snapshots ---- */

static void sm_snap_child(struct sm_store *s, uint64_t gen) __attribute__((noreturn));

static void sm_snap_child(struct sm_store *s, uint64_t gen)
{
#ifdef __linux__
	/* never outlive the daemon: a successor would take state_dir */
	(void)prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != s->pid)
		_exit(2);
#endif
	/* the daemon's handlers and mask are not ours: die as a plain process */
	static const int sigs[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		(void)signal(sigs[i], SIG_DFL);
	sigset_t all;
	sigfillset(&all);
	(void)sigprocmask(SIG_UNBLOCK, &all, NULL);
	int fd = openat(s->dirfd, SM_SNAP_TMP, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	size_t cap = (size_t)1 << 20;
	uint8_t *buf = malloc(cap);
	if (fd < 0 || buf == NULL)
		_exit(1);
	uint64_t off = 0, count = 0;
	journal_header(buf, JOURNAL_SNAPSHOT, gen);
	size_t len = JOURNAL_HDR_SIZE;
	for (size_t i = 0; i < s->cap; i++) {
		if (s->hv[i] == 0)
			continue;
		struct sm_entry *e = s->ent[i];
		struct sm_dir *d = sm_dirp(e);
		struct gcra_tat *t = sm_tats(e);
		const char *subj = sm_subj(e);
		for (unsigned b = 0; b < e->nrules; t += d[b].nwin, b++) {
			unsigned k = sm_trim(t, d[b].nwin, s->now);
			if (k == 0)
				continue;
			if (cap - len < JOURNAL_REC_MAX) {
				if (journal_pwrite(fd, buf, len, off) < 0)
					_exit(1);
				off += len;
				len = 0;
			}
			struct journal_rec r = {
			    .rule = s->rules.name[d[b].rule],
			    .rlen = s->rules.len[d[b].rule],
			    .subj = subj,
			    .slen = e->slen,
			    .nwin = k,
			};
			memcpy(r.tat, t, k * sizeof(*t));
			size_t rl = journal_encode(buf + len, cap - len, &r);
			if (rl == 0)
				_exit(1);
			len += rl;
			count++;
		}
	}
	for (size_t i = 0; i < s->bcap; i++) {
		if (s->bhv[i] == 0 || !sm_blob_live(s->bent[i], s->now))
			continue;
		struct sm_blob *b = s->bent[i];
		if (cap - len < JOURNAL_REC_MAX) {
			if (journal_pwrite(fd, buf, len, off) < 0)
				_exit(1);
			off += len;
			len = 0;
		}
		struct journal_rec r = {
		    .rule = s->rules.name[b->ns],
		    .rlen = s->rules.len[b->ns],
		    .subj = sm_bsubj(b),
		    .slen = b->slen,
		    .blob = true,
		    .val = sm_bval(b),
		    .vlen = b->vlen,
		    .expires_us = b->expires,
		};
		size_t rl = journal_encode(buf + len, cap - len, &r);
		if (rl == 0)
			_exit(1);
		len += rl;
		count++;
	}
	if (cap - len < 64) {
		if (journal_pwrite(fd, buf, len, off) < 0)
			_exit(1);
		off += len;
		len = 0;
	}
	len += journal_encode_end(buf + len, cap - len, count);
	if (journal_pwrite(fd, buf, len, off) < 0 || fsync(fd) < 0 || close(fd) < 0)
		_exit(1);
	if (renameat(s->dirfd, SM_SNAP_TMP, s->dirfd, SM_SNAP_NAME) < 0)
		_exit(1);
	(void)fsync(s->dirfd);
	_exit(0);
}

static int sm_snap_start(struct sm_store *s)
{
	if (!s->persist || s->child > 0) {
		snprintf(s->pub.err, sizeof(s->pub.err), "%s",
		         s->persist ? "a snapshot is running" : "no state_dir");
		return -1;
	}
	(void)sm_jwrite(s); /* what fails goes to the new journal */
	uint64_t gen = s->jgen + 1;
	int fd = sm_journal_create(s, gen);
	if (fd < 0) {
		s->st.errors++;
		s->snap_retry_at = s->now + SM_SNAP_RETRY_US;
		return -1;
	}
	s->pid = getpid();
	pid_t pid = fork();
	if (pid < 0) {
		char name[64];
		snprintf(s->pub.err, sizeof(s->pub.err), "snapshot: fork: %s", strerror(errno));
		close(fd);
		sm_journal_name(name, sizeof(name), gen);
		(void)unlinkat(s->dirfd, name, 0);
		s->st.errors++;
		s->snap_retry_at = s->now + SM_SNAP_RETRY_US;
		return -1;
	}
	if (pid == 0)
		sm_snap_child(s, gen);
	close(s->jfd);
	s->jfd = fd;
	s->jgen = gen;
	s->jsize = JOURNAL_HDR_SIZE;
	s->jtotal += JOURNAL_HDR_SIZE;
	s->njournals++;
	s->child = pid;
	s->child_gen = gen;
	s->child_lost = s->jlost;
	s->jlost = false;
	return 0;
}

/* Reap a finished snapshot child; block waits for it. */
static void sm_reap(struct sm_store *s, bool block)
{
	if (s->child <= 0)
		return;
	int status = 0;
	pid_t r;
	do
		r = waitpid(s->child, &status, block ? 0 : WNOHANG);
	while (r < 0 && errno == EINTR);
	if (r == 0)
		return;
	bool ok;
	if (r == s->child) {
		ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
	} else {
		/* reaped by someone else (e.g. libev's SIGCHLD handler): look at the file */
		uint64_t g;
		ok = journal_peek_gen(s->dirfd, SM_SNAP_NAME, JOURNAL_SNAPSHOT, &g) == 0 &&
		     g == s->child_gen;
	}
	s->child = 0;
	if (!ok) {
		snprintf(s->pub.err, sizeof(s->pub.err), "%s/" SM_SNAP_NAME ": snapshot failed",
		         s->dir);
		(void)unlinkat(s->dirfd, SM_SNAP_TMP, 0);
		s->st.errors++;
		s->jlost |= s->child_lost;
		s->snap_retry_at = s->now + SM_SNAP_RETRY_US;
		return;
	}
	sm_drop_journals(s, s->child_gen);
	struct stat st;
	s->snap_size = fstatat(s->dirfd, SM_SNAP_NAME, &st, 0) == 0 ? (uint64_t)st.st_size : 0;
	s->jtotal = s->jsize;
	s->njournals = 1;
}

static bool sm_want_snapshot(struct sm_store *s)
{
	uint64_t limit = s->snap_opt;
	if (limit == 0) {
		limit = 4 * s->snap_size;
		if (limit < SM_SNAP_MIN)
			limit = SM_SNAP_MIN;
	}
	return s->jlost || s->njournals > SM_MAX_JOURNALS || s->jtotal >= limit;
}

/* ---- listing ---- */

/* What list() copies before calling back: u32 slen, u32 vlen, subject, NUL, value. */
struct sm_lbuf {
	uint8_t *p;
	size_t len, cap;
	size_t n;
};

static int sm_lbuf_add(struct sm_lbuf *L, const char *subj, size_t slen, const void *val,
                       size_t vlen)
{
	size_t need = 8 + slen + 1 + vlen;
	if (L->cap - L->len < need) {
		size_t ncap = L->cap ? L->cap : 4096;
		while (ncap - L->len < need)
			ncap *= 2;
		uint8_t *np = realloc(L->p, ncap);
		if (np == NULL)
			return -1;
		L->p = np;
		L->cap = ncap;
	}
	uint32_t h[2] = {(uint32_t)slen, (uint32_t)vlen};
	memcpy(L->p + L->len, h, 8);
	memcpy(L->p + L->len + 8, subj, slen);
	L->p[L->len + 8 + slen] = '\0';
	if (vlen)
		memcpy(L->p + L->len + 9 + slen, val, vlen);
	L->len += need;
	L->n++;
	return 0;
}

static int sm_list_collect(struct sm_store *s, bool ns, uint16_t idx, int64_t now,
                           struct sm_lbuf *L)
{
	if (ns) {
		for (size_t i = 0; i < s->bcap; i++) {
			if (s->bhv[i] == 0)
				continue;
			struct sm_blob *b = s->bent[i];
			if (b->ns != idx || !sm_blob_live(b, now))
				continue;
			if (sm_lbuf_add(L, sm_bsubj(b), b->slen, sm_bval(b), b->vlen) < 0)
				return -1;
		}
		return 0;
	}
	for (size_t i = 0; i < s->cap; i++) {
		if (s->hv[i] == 0)
			continue;
		struct sm_entry *e = s->ent[i];
		unsigned first;
		int b = sm_block(e, idx, &first);
		if (b < 0 || sm_all_empty(sm_tats(e) + first, sm_dirp(e)[b].nwin, now))
			continue;
		if (sm_lbuf_add(L, sm_subj(e), e->slen, NULL, 0) < 0)
			return -1;
	}
	return 0;
}

static int sm_list(struct store *pub, const char *name, const struct gcra_window *win, uint8_t nwin,
                   int64_t now,
                   bool (*cb)(void *arg, const char *subject, const struct store_result *res),
                   void (*done)(void *arg, enum store_status st), void *arg)
{
	struct sm_store *s = (struct sm_store *)pub;
	if (cb == NULL || done == NULL) {
		snprintf(pub->err, sizeof(pub->err), "list without a callback");
		return -1;
	}
	if (now > s->now)
		s->now = now;
	size_t nlen = name ? strnlen(name, STORE_MAX_KEY + 1) : 0;
	bool ns = nlen > 0 && name[0] == '@';
	bool bad = nlen == 0 || nlen > STORE_MAX_KEY || (!ns && nwin > STORE_MAX_WINDOWS);
	for (unsigned k = 0; !bad && !ns && k < nwin; k++)
		bad = win[k].limit == 0 || win[k].period_us == 0;
	if (bad) {
		snprintf(pub->err, sizeof(pub->err), "list: bad rule, namespace or windows");
		s->st.errors++;
		done(arg, STORE_EINVAL);
		return 0;
	}
	struct sm_lbuf L = {NULL, 0, 0, 0};
	int idx = sm_rule_find(s, name, nlen);
	if (idx >= 0 && sm_list_collect(s, ns, (uint16_t)idx, now, &L) < 0) {
		free(L.p);
		snprintf(pub->err, sizeof(pub->err), "list %s: out of memory", name);
		s->st.errors++;
		done(arg, STORE_EINTERNAL);
		return 0;
	}
	size_t off = 0;
	for (size_t k = 0; k < L.n; k++) {
		uint32_t h[2];
		memcpy(h, L.p + off, 8);
		const char *subj = (const char *)L.p + off + 8;
		struct store_result r;
		memset(&r, 0, sizeof(r));
		if (ns) {
			r.conform = true;
			r.window = -1;
			r.found = true;
			r.val = h[1] ? L.p + off + 9 + h[0] : NULL;
			r.vlen = h[1];
		} else {
			/* a PEEK of cost 0, on the state as it is now */
			struct sm_work w = {.subj = subj,
			                    .slen = h[0],
			                    .hash = sm_siphash(s->key, subj, h[0]),
			                    .rule = (uint16_t)idx};
			struct store_op op;
			memset(&op, 0, sizeof(op));
			op.kind = STORE_PEEK;
			op.rule = name;
			op.subject = subj;
			op.nwin = nwin;
			if (nwin)
				memcpy(op.win, win, nwin * sizeof(*win));
			sm_load_work(s, &w, now);
			(void)sm_apply(&op, &w, now, &r, true);
		}
		off += 9 + (size_t)h[0] + h[1];
		if (!cb(arg, subj, &r))
			break;
	}
	free(L.p);
	done(arg, STORE_OK);
	return 0;
}

/* ---- the backend ---- */

static int sm_flush(struct store *pub)
{
	struct sm_store *s = (struct sm_store *)pub;
	if (!s->persist)
		return 0;
	if (sm_jwrite(s) < 0)
		return -1;
	if (fdatasync(s->jfd) < 0) {
		snprintf(pub->err, sizeof(pub->err), "%s/" SM_JOURNAL_PFX "%016" PRIx64 ": %s",
		         s->dir, s->jgen, strerror(errno));
		s->st.errors++;
		return -1;
	}
	return 0;
}

static void sm_tick(struct store *pub, int64_t now)
{
	struct sm_store *s = (struct sm_store *)pub;
	/* the next tick is probably as far away as the last one, and at most
	 * STORE_IDLE_TICK_MS (an idle caller slows down) */
	int64_t gap = now > s->last_tick ? now - s->last_tick : 0;
	if (gap < STORE_IDLE_TICK_MS * 1000)
		gap = STORE_IDLE_TICK_MS * 1000;
	s->last_tick = now;
	s->now = now;
	sm_reap(s, false);
	sm_sweep(s, now);
	sm_bsweep(s, now);
	if (!s->persist)
		return;
	if (s->jlen > 0 && (now + gap - s->last_write >= s->flush_us || now < s->last_write ||
	                    s->jlen >= SM_JBUF_WRITE)) {
		(void)sm_jwrite(s);
		s->last_write = now;
	}
	if (s->child <= 0 && now >= s->snap_retry_at && sm_want_snapshot(s))
		(void)sm_snap_start(s);
}

static void sm_stats(struct store *pub, struct store_stats *out)
{
	struct sm_store *s = (struct sm_store *)pub;
	*out = s->st;
	out->keys = s->nkeys + s->nblob;
	out->bytes = s->bytes + s->cap * (sizeof(*s->ent) + sizeof(*s->hv)) + s->jcap +
	             s->rules.mapcap * sizeof(uint16_t) + s->bbytes +
	             s->bcap * (sizeof(*s->bent) + sizeof(*s->bhv));
}

static void sm_free(struct sm_store *s)
{
	for (size_t i = 0; i < s->cap; i++)
		if (s->hv[i])
			free(s->ent[i]);
	free(s->ent);
	free(s->hv);
	for (size_t i = 0; i < s->bcap; i++)
		if (s->bhv[i])
			free(s->bent[i]);
	free(s->bent);
	free(s->bhv);
	for (size_t r = 0; r < s->rules.n; r++)
		free(s->rules.name[r]);
	free(s->rules.name);
	free(s->rules.len);
	free(s->rules.map);
	free(s->jbuf);
	if (s->jfd >= 0)
		close(s->jfd);
	if (s->lockfd >= 0)
		close(s->lockfd);
	if (s->dirfd >= 0)
		close(s->dirfd);
	free(s->dir);
	free(s);
}

static void sm_close(struct store *pub)
{
	struct sm_store *s = (struct sm_store *)pub;
	if (s->persist) {
		(void)sm_flush(pub);
		sm_reap(s, false);
		if (s->child > 0) {
			/* the journals are flushed: the snapshot is not needed */
			kill(s->child, SIGKILL);
			sm_reap(s, true);
		}
	}
	sm_free(s);
}

static const struct store_backend sm_backend = {
    .name = "memory",
    .batch = sm_batch,
    .flush = sm_flush,
    .tick = sm_tick,
    .stats = sm_stats,
    .list = sm_list,
    .close = sm_close,
};

struct store *store_memory_open(const struct store_memory_opts *o, int64_t now_us, char *err,
                                size_t errsz)
{
	struct sm_store *s = calloc(1, sizeof(*s));
	if (s == NULL) {
		snprintf(err, errsz, "out of memory");
		return NULL;
	}
	s->pub.be = &sm_backend;
	s->dirfd = s->lockfd = s->jfd = -1;
	s->now = s->last_tick = now_us;
	s->pid = getpid();
	sm_seed(s);
	s->max_keys = o->max_keys;
	s->flush_us = (int64_t)(o->flush_ms ? o->flush_ms : 1000) * 1000;
	s->snap_opt = o->snapshot_bytes;
	s->cap = SM_MIN_CAP;
	s->mask = s->cap - 1;
	s->ent = calloc(s->cap, sizeof(*s->ent));
	s->hv = calloc(s->cap, sizeof(*s->hv));
	if (s->ent == NULL || s->hv == NULL || sm_rule_grow_map(&s->rules, s->key) < 0) {
		snprintf(err, errsz, "out of memory");
		sm_free(s);
		return NULL;
	}
	if (o->state_dir && o->state_dir[0] &&
	    sm_persist_open(s, o->state_dir, now_us, err, errsz) < 0) {
		sm_free(s);
		return NULL;
	}
	return &s->pub;
}

int store_memory_snapshot(struct store *pub)
{
	if (pub->be != &sm_backend)
		return -1;
	return sm_snap_start((struct sm_store *)pub);
}

bool store_memory_snapshot_running(struct store *pub)
{
	if (pub->be != &sm_backend)
		return false;
	struct sm_store *s = (struct sm_store *)pub;
	sm_reap(s, false);
	return s->child > 0;
}
