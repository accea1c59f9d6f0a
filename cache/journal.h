/*
 * cache/journal.h - on-disk format of the embedded store's journal and
 * snapshot files (internal to cache/; used by store_memory.c).
 *
 * A file is a 24-byte header (8-byte magic, u32 version, u32 flags = 0,
 * u64 generation) followed by records.  A record is a u32 payload length,
 * a u32 CRC-32C of (length field + payload), then the payload.  All
 * integers are little-endian.
 *
 * Payload of a key record (type 1): u8 type, u8 nwin, u16 rule length,
 * u16 subject length, u16 0, nwin x (i64 tat.us, u64 tat.rem), the rule
 * name, the subject (no NULs).  Records are absolute: the last one for a
 * key wins, and nwin = 0 says the key is gone.  A snapshot ends with an
 * end record (type 2): u8 type, 7 zero bytes, u64 count of key and blob
 * records.
 *
 * Payload of a blob record (type 3, version 2 files): u8 type, u8 flags
 * (1: deleted), u16 namespace length, u16 subject length, u16 0, u32 value
 * length, u32 0, i64 expiry (µs since the epoch, 0: never), the namespace
 * ("@flag", ...), the subject, the value (any bytes).  Absolute as well:
 * the last record of a (namespace, subject) wins; a deleted one has no
 * value.  Version 1 files (key records only) still load.
 */
#ifndef CACHE_JOURNAL_H
#define CACHE_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gcra.h"
#include "store.h"

#define JOURNAL_VERSION     2 /* written */
#define JOURNAL_VERSION_MIN 1 /* still read */
#define JOURNAL_HDR_SIZE    24
/* frame + largest key record */
#define JOURNAL_KEY_REC_MAX (8 + 8 + 16 * STORE_MAX_WINDOWS + STORE_MAX_KEY)
/* frame + largest blob record */
#define JOURNAL_BLOB_REC_MAX (8 + 24 + STORE_MAX_KEY + STORE_MAX_VALUE)
#define JOURNAL_REC_MAX                                                                            \
	(JOURNAL_BLOB_REC_MAX > JOURNAL_KEY_REC_MAX ? JOURNAL_BLOB_REC_MAX : JOURNAL_KEY_REC_MAX)

enum journal_kind {
	JOURNAL_LOG = 0,  /* journal.<gen>: torn tail tolerated */
	JOURNAL_SNAPSHOT, /* snapshot: must be whole, end record last */
};

struct journal_rec {
	const char *rule; /* not NUL-terminated when read from a file; a namespace for a blob */
	size_t rlen;
	const char *subj;
	size_t slen;
	unsigned nwin;
	struct gcra_tat tat[STORE_MAX_WINDOWS];
	/* blob records (type 3) */
	bool blob;
	bool deleted;
	const void *val;
	size_t vlen;
	int64_t expires_us; /* 0: never */
};

/* Called per key or blob record; nonzero stops the load (err is then the caller's). */
typedef int journal_rec_cb(void *arg, const struct journal_rec *r);

struct journal_info {
	uint64_t gen;      /* from the header */
	uint64_t size;     /* file size in bytes */
	uint64_t records;  /* key and blob records read */
	uint32_t version;  /* from the header */
	bool torn;         /* a torn tail was ignored */
	uint64_t torn_off; /* where */
};

uint32_t journal_crc32c(uint32_t crc, const void *p, size_t n);

void journal_header(uint8_t out[JOURNAL_HDR_SIZE], enum journal_kind kind, uint64_t gen);

/* Encode one record into out; returns its size, 0 if it does not fit or r is invalid. */
size_t journal_encode(uint8_t *out, size_t cap, const struct journal_rec *r);
size_t journal_encode_end(uint8_t *out, size_t cap, uint64_t count);

/*
 * Read dir/name (opened with openat(dirfd)) and call cb for each record.
 * Returns 0, 1 if the file does not exist, -1 on error with "path: what at
 * offset N" in err.  A journal whose tail is torn (truncated, or a bad
 * last record, or zeros to the end) loads up to the tear; anything else
 * that does not parse is an error.
 */
int journal_load(int dirfd, const char *dir, const char *name, enum journal_kind kind,
                 journal_rec_cb *cb, void *arg, struct journal_info *info, char *err, size_t errsz);

/* Generation in a snapshot file's header (0 with -1 if unreadable). */
int journal_peek_gen(int dirfd, const char *name, enum journal_kind kind, uint64_t *gen);

/* pwrite all of p at off, retrying on EINTR and short writes; 0 or -1 (errno). */
int journal_pwrite(int fd, const void *p, size_t n, uint64_t off);

#endif
