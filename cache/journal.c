/*
 * cache/journal.c - encode and read the embedded store's journal and
 * snapshot files (format in journal.h).
 *
 * Entry points: journal_encode(), journal_encode_end(), journal_header(),
 * journal_load(), journal_peek_gen(), journal_pwrite(), journal_crc32c().
 *
 * Files are read through one read-only mmap, so a file must fit in the
 * address space (64-bit hosts: no practical limit).  The writer is the
 * store: it appends whole records with pwrite(2) at known offsets.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "journal.h"

#define JOURNAL_REC_KEY  1
#define JOURNAL_REC_END  2
#define JOURNAL_REC_BLOB 3

#define JOURNAL_BLOB_DELETED 1

static const char journal_magic[2][8] = {
    {'P', 'D', 'J', 'O', 'U', 'R', 'N', 'L'},
    {'P', 'D', 'S', 'N', 'A', 'P', 'S', 'H'},
};

/* CRC-32C (Castagnoli), reflected polynomial 0x82f63b78 */
static const uint32_t journal_crc_table[256] = {
    0x00000000, 0xf26b8303, 0xe13b70f7, 0x1350f3f4, 0xc79a971f, 0x35f1141c, 0x26a1e7e8, 0xd4ca64eb,
    0x8ad958cf, 0x78b2dbcc, 0x6be22838, 0x9989ab3b, 0x4d43cfd0, 0xbf284cd3, 0xac78bf27, 0x5e133c24,
    0x105ec76f, 0xe235446c, 0xf165b798, 0x030e349b, 0xd7c45070, 0x25afd373, 0x36ff2087, 0xc494a384,
    0x9a879fa0, 0x68ec1ca3, 0x7bbcef57, 0x89d76c54, 0x5d1d08bf, 0xaf768bbc, 0xbc267848, 0x4e4dfb4b,
    0x20bd8ede, 0xd2d60ddd, 0xc186fe29, 0x33ed7d2a, 0xe72719c1, 0x154c9ac2, 0x061c6936, 0xf477ea35,
    0xaa64d611, 0x580f5512, 0x4b5fa6e6, 0xb93425e5, 0x6dfe410e, 0x9f95c20d, 0x8cc531f9, 0x7eaeb2fa,
    0x30e349b1, 0xc288cab2, 0xd1d83946, 0x23b3ba45, 0xf779deae, 0x05125dad, 0x1642ae59, 0xe4292d5a,
    0xba3a117e, 0x4851927d, 0x5b016189, 0xa96ae28a, 0x7da08661, 0x8fcb0562, 0x9c9bf696, 0x6ef07595,
    0x417b1dbc, 0xb3109ebf, 0xa0406d4b, 0x522bee48, 0x86e18aa3, 0x748a09a0, 0x67dafa54, 0x95b17957,
    0xcba24573, 0x39c9c670, 0x2a993584, 0xd8f2b687, 0x0c38d26c, 0xfe53516f, 0xed03a29b, 0x1f682198,
    0x5125dad3, 0xa34e59d0, 0xb01eaa24, 0x42752927, 0x96bf4dcc, 0x64d4cecf, 0x77843d3b, 0x85efbe38,
    0xdbfc821c, 0x2997011f, 0x3ac7f2eb, 0xc8ac71e8, 0x1c661503, 0xee0d9600, 0xfd5d65f4, 0x0f36e6f7,
    0x61c69362, 0x93ad1061, 0x80fde395, 0x72966096, 0xa65c047d, 0x5437877e, 0x4767748a, 0xb50cf789,
    0xeb1fcbad, 0x197448ae, 0x0a24bb5a, 0xf84f3859, 0x2c855cb2, 0xdeeedfb1, 0xcdbe2c45, 0x3fd5af46,
    0x7198540d, 0x83f3d70e, 0x90a324fa, 0x62c8a7f9, 0xb602c312, 0x44694011, 0x5739b3e5, 0xa55230e6,
    0xfb410cc2, 0x092a8fc1, 0x1a7a7c35, 0xe811ff36, 0x3cdb9bdd, 0xceb018de, 0xdde0eb2a, 0x2f8b6829,
    0x82f63b78, 0x709db87b, 0x63cd4b8f, 0x91a6c88c, 0x456cac67, 0xb7072f64, 0xa457dc90, 0x563c5f93,
    0x082f63b7, 0xfa44e0b4, 0xe9141340, 0x1b7f9043, 0xcfb5f4a8, 0x3dde77ab, 0x2e8e845f, 0xdce5075c,
    0x92a8fc17, 0x60c37f14, 0x73938ce0, 0x81f80fe3, 0x55326b08, 0xa759e80b, 0xb4091bff, 0x466298fc,
    0x1871a4d8, 0xea1a27db, 0xf94ad42f, 0x0b21572c, 0xdfeb33c7, 0x2d80b0c4, 0x3ed04330, 0xccbbc033,
    0xa24bb5a6, 0x502036a5, 0x4370c551, 0xb11b4652, 0x65d122b9, 0x97baa1ba, 0x84ea524e, 0x7681d14d,
    0x2892ed69, 0xdaf96e6a, 0xc9a99d9e, 0x3bc21e9d, 0xef087a76, 0x1d63f975, 0x0e330a81, 0xfc588982,
    0xb21572c9, 0x407ef1ca, 0x532e023e, 0xa145813d, 0x758fe5d6, 0x87e466d5, 0x94b49521, 0x66df1622,
    0x38cc2a06, 0xcaa7a905, 0xd9f75af1, 0x2b9cd9f2, 0xff56bd19, 0x0d3d3e1a, 0x1e6dcdee, 0xec064eed,
    0xc38d26c4, 0x31e6a5c7, 0x22b65633, 0xd0ddd530, 0x0417b1db, 0xf67c32d8, 0xe52cc12c, 0x1747422f,
    0x49547e0b, 0xbb3ffd08, 0xa86f0efc, 0x5a048dff, 0x8ecee914, 0x7ca56a17, 0x6ff599e3, 0x9d9e1ae0,
    0xd3d3e1ab, 0x21b862a8, 0x32e8915c, 0xc083125f, 0x144976b4, 0xe622f5b7, 0xf5720643, 0x07198540,
    0x590ab964, 0xab613a67, 0xb831c993, 0x4a5a4a90, 0x9e902e7b, 0x6cfbad78, 0x7fab5e8c, 0x8dc0dd8f,
    0xe330a81a, 0x115b2b19, 0x020bd8ed, 0xf0605bee, 0x24aa3f05, 0xd6c1bc06, 0xc5914ff2, 0x37faccf1,
    0x69e9f0d5, 0x9b8273d6, 0x88d28022, 0x7ab90321, 0xae7367ca, 0x5c18e4c9, 0x4f48173d, 0xbd23943e,
    0xf36e6f75, 0x0105ec76, 0x12551f82, 0xe03e9c81, 0x34f4f86a, 0xc69f7b69, 0xd5cf889d, 0x27a40b9e,
    0x79b737ba, 0x8bdcb4b9, 0x988c474d, 0x6ae7c44e, 0xbe2da0a5, 0x4c4623a6, 0x5f16d052, 0xad7d5351,
};

static uint32_t journal_crc32c_sw(uint32_t crc, const uint8_t *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		crc = journal_crc_table[(crc ^ b[i]) & 0xff] ^ (crc >> 8);
	return crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
/* SSE4.2 has a CRC32C instruction: 8 bytes a cycle instead of 1 a table
 * look-up.  Chosen at run time, so the binary still runs without it. */
__attribute__((target("sse4.2"))) static uint32_t journal_crc32c_hw(uint32_t crc, const uint8_t *b,
                                                                    size_t n)
{
	uint64_t c = crc;
	while (n >= 8) {
		uint64_t v;
		memcpy(&v, b, 8);
		c = __builtin_ia32_crc32di(c, v);
		b += 8;
		n -= 8;
	}
	crc = (uint32_t)c;
	while (n--)
		crc = __builtin_ia32_crc32qi(crc, *b++);
	return crc;
}
#endif

uint32_t journal_crc32c(uint32_t crc, const void *p, size_t n)
{
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
	static int hw = -1;
	if (hw < 0)
		hw = __builtin_cpu_supports("sse4.2") ? 1 : 0;
	if (hw)
		return ~journal_crc32c_hw(~crc, p, n);
#endif
	return ~journal_crc32c_sw(~crc, p, n);
}

static void journal_put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static void journal_put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void journal_put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint16_t journal_get16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t journal_get32(const uint8_t *p)
{
	uint32_t v = 0;
	for (int i = 3; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

static uint64_t journal_get64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

void journal_header(uint8_t out[JOURNAL_HDR_SIZE], enum journal_kind kind, uint64_t gen)
{
	memcpy(out, journal_magic[kind], 8);
	journal_put32(out + 8, JOURNAL_VERSION);
	journal_put32(out + 12, 0);
	journal_put64(out + 16, gen);
}

/* Frame a payload already placed at out + 8. */
static size_t journal_frame(uint8_t *out, size_t plen)
{
	journal_put32(out, (uint32_t)plen);
	uint32_t crc = journal_crc32c(0, out, 4);
	crc = journal_crc32c(crc, out + 8, plen);
	journal_put32(out + 4, crc);
	return 8 + plen;
}

static size_t journal_encode_blob(uint8_t *out, size_t cap, const struct journal_rec *r)
{
	size_t vlen = r->deleted ? 0 : r->vlen;
	if (r->rlen == 0 || r->rlen + r->slen > STORE_MAX_KEY || vlen > STORE_MAX_VALUE ||
	    (vlen > 0 && r->val == NULL))
		return 0;
	size_t plen = 24 + r->rlen + r->slen + vlen;
	if (cap < 8 + plen)
		return 0;
	uint8_t *p = out + 8;
	p[0] = JOURNAL_REC_BLOB;
	p[1] = r->deleted ? JOURNAL_BLOB_DELETED : 0;
	journal_put16(p + 2, (uint16_t)r->rlen);
	journal_put16(p + 4, (uint16_t)r->slen);
	journal_put16(p + 6, 0);
	journal_put32(p + 8, (uint32_t)vlen);
	journal_put32(p + 12, 0);
	journal_put64(p + 16, r->deleted ? 0 : (uint64_t)r->expires_us);
	p += 24;
	memcpy(p, r->rule, r->rlen);
	memcpy(p + r->rlen, r->subj, r->slen);
	if (vlen)
		memcpy(p + r->rlen + r->slen, r->val, vlen);
	return journal_frame(out, plen);
}

size_t journal_encode(uint8_t *out, size_t cap, const struct journal_rec *r)
{
	if (r->blob)
		return journal_encode_blob(out, cap, r);
	if (r->nwin > STORE_MAX_WINDOWS || r->rlen == 0 || r->rlen + r->slen > STORE_MAX_KEY)
		return 0;
	size_t plen = 8 + 16 * (size_t)r->nwin + r->rlen + r->slen;
	if (cap < 8 + plen)
		return 0;
	uint8_t *p = out + 8;
	p[0] = JOURNAL_REC_KEY;
	p[1] = (uint8_t)r->nwin;
	journal_put16(p + 2, (uint16_t)r->rlen);
	journal_put16(p + 4, (uint16_t)r->slen);
	journal_put16(p + 6, 0);
	p += 8;
	for (unsigned i = 0; i < r->nwin; i++, p += 16) {
		journal_put64(p, (uint64_t)r->tat[i].us);
		journal_put64(p + 8, r->tat[i].rem);
	}
	memcpy(p, r->rule, r->rlen);
	memcpy(p + r->rlen, r->subj, r->slen);
	return journal_frame(out, plen);
}

size_t journal_encode_end(uint8_t *out, size_t cap, uint64_t count)
{
	if (cap < 8 + 16)
		return 0;
	memset(out + 8, 0, 8);
	out[8] = JOURNAL_REC_END;
	journal_put64(out + 16, count);
	return journal_frame(out, 16);
}

/* Decode a key record's payload; false if it is malformed. */
static bool journal_decode(const uint8_t *p, size_t plen, struct journal_rec *r)
{
	if (plen < 8 || p[0] != JOURNAL_REC_KEY || p[1] > STORE_MAX_WINDOWS ||
	    journal_get16(p + 6) != 0)
		return false;
	r->nwin = p[1];
	r->rlen = journal_get16(p + 2);
	r->slen = journal_get16(p + 4);
	if (r->rlen == 0 || r->rlen + r->slen > STORE_MAX_KEY ||
	    plen != 8 + 16 * (size_t)r->nwin + r->rlen + r->slen)
		return false;
	const uint8_t *q = p + 8;
	for (unsigned i = 0; i < r->nwin; i++, q += 16) {
		r->tat[i].us = (int64_t)journal_get64(q);
		r->tat[i].rem = journal_get64(q + 8);
	}
	r->rule = (const char *)q;
	r->subj = (const char *)q + r->rlen;
	if (memchr(r->rule, 0, r->rlen) || memchr(r->subj, 0, r->slen))
		return false;
	r->blob = r->deleted = false;
	r->val = NULL;
	r->vlen = 0;
	r->expires_us = 0;
	return true;
}

/* Decode a blob record's payload; false if it is malformed. */
static bool journal_decode_blob(const uint8_t *p, size_t plen, struct journal_rec *r)
{
	if (plen < 24 || p[0] != JOURNAL_REC_BLOB || (p[1] & ~JOURNAL_BLOB_DELETED) ||
	    journal_get16(p + 6) != 0 || journal_get32(p + 12) != 0)
		return false;
	memset(r, 0, sizeof(*r));
	r->blob = true;
	r->deleted = p[1] & JOURNAL_BLOB_DELETED;
	r->rlen = journal_get16(p + 2);
	r->slen = journal_get16(p + 4);
	r->vlen = journal_get32(p + 8);
	r->expires_us = (int64_t)journal_get64(p + 16);
	if (r->rlen == 0 || r->rlen + r->slen > STORE_MAX_KEY || r->vlen > STORE_MAX_VALUE ||
	    (r->deleted && (r->vlen || r->expires_us)) || r->expires_us < 0 ||
	    plen != 24 + r->rlen + r->slen + r->vlen)
		return false;
	r->rule = (const char *)p + 24;
	r->subj = r->rule + r->rlen;
	r->val = r->vlen ? (const void *)(r->subj + r->slen) : NULL;
	if (memchr(r->rule, 0, r->rlen) || memchr(r->subj, 0, r->slen))
		return false;
	return true;
}

static bool journal_all_zero(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

/*
 * Check the frame at off: 1 good (payload in *pl, *plen), 0 bad, -1 runs
 * past the end of the file.
 */
static int journal_frame_at(const uint8_t *m, size_t size, size_t off, const uint8_t **pl,
                            size_t *plen)
{
	if (size - off < 8)
		return -1;
	uint32_t len = journal_get32(m + off);
	if (len > JOURNAL_REC_MAX)
		return 0;
	if (size - off - 8 < len)
		return -1;
	uint32_t crc = journal_crc32c(0, m + off, 4);
	crc = journal_crc32c(crc, m + off + 8, len);
	if (crc != journal_get32(m + off + 4))
		return 0;
	*pl = m + off + 8;
	*plen = len;
	return 1;
}

static int journal_parse(const uint8_t *m, size_t size, const char *dir, const char *name,
                         enum journal_kind kind, journal_rec_cb *cb, void *arg,
                         struct journal_info *info, char *err, size_t errsz)
{
	if (size < JOURNAL_HDR_SIZE) {
		/* a journal created just before a crash; a snapshot is always whole */
		if (kind == JOURNAL_LOG &&
		    memcmp(m, journal_magic[kind], size < 8 ? size : 8) == 0) {
			info->torn = size > 0;
			info->torn_off = 0;
			return 0;
		}
		snprintf(err, errsz, "%s/%s: truncated header (%zu bytes)", dir, name, size);
		return -1;
	}
	if (memcmp(m, journal_magic[kind], 8) != 0) {
		snprintf(err, errsz, "%s/%s: bad magic at offset 0", dir, name);
		return -1;
	}
	uint32_t version = journal_get32(m + 8);
	if (version < JOURNAL_VERSION_MIN || version > JOURNAL_VERSION) {
		snprintf(err, errsz, "%s/%s: unsupported version %" PRIu32 " at offset 8", dir,
		         name, version);
		return -1;
	}
	info->version = version;
	info->gen = journal_get64(m + 16);

	size_t off = JOURNAL_HDR_SIZE;
	bool ended = false;
	while (off < size) {
		const uint8_t *pl = NULL;
		size_t plen = 0;
		int fr = journal_frame_at(m, size, off, &pl, &plen);
		struct journal_rec r;
		if (fr == 1 && !ended &&
		    ((pl[0] == JOURNAL_REC_KEY && journal_decode(pl, plen, &r)) ||
		     (pl[0] == JOURNAL_REC_BLOB && version >= 2 &&
		      journal_decode_blob(pl, plen, &r)))) {
			info->records++;
			if (cb(arg, &r) != 0)
				return -1;
			off += 8 + plen;
			continue;
		}
		if (fr == 1 && !ended && kind == JOURNAL_SNAPSHOT && pl[0] == JOURNAL_REC_END &&
		    plen == 16 && journal_all_zero(pl + 1, 7)) {
			uint64_t count = journal_get64(pl + 8);
			if (count != info->records) {
				snprintf(err, errsz,
				         "%s/%s: end record at offset %zu counts %" PRIu64
				         " records, file has %" PRIu64,
				         dir, name, off, count, info->records);
				return -1;
			}
			ended = true;
			off += 8 + plen;
			continue;
		}
		/* a bad record: a torn tail of a journal, or corruption */
		if (kind == JOURNAL_LOG &&
		    (fr == -1 || (fr == 0 && off + 8 + (size_t)journal_get32(m + off) == size) ||
		     journal_all_zero(m + off, size - off))) {
			info->torn = true;
			info->torn_off = off;
			return 0;
		}
		snprintf(err, errsz, "%s/%s: %s at offset %zu", dir, name,
		         ended      ? "data after the end record"
		         : fr == -1 ? "truncated record"
		         : fr == 0  ? "bad record (checksum or length)"
		                    : "malformed record",
		         off);
		return -1;
	}
	if (kind == JOURNAL_SNAPSHOT && !ended) {
		snprintf(err, errsz, "%s/%s: no end record (truncated at offset %zu)", dir, name,
		         size);
		return -1;
	}
	return 0;
}

int journal_load(int dirfd, const char *dir, const char *name, enum journal_kind kind,
                 journal_rec_cb *cb, void *arg, struct journal_info *info, char *err, size_t errsz)
{
	memset(info, 0, sizeof(*info));
	int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOENT)
			return 1;
		snprintf(err, errsz, "%s/%s: %s", dir, name, strerror(errno));
		return -1;
	}
	struct stat st;
	if (fstat(fd, &st) < 0) {
		snprintf(err, errsz, "%s/%s: %s", dir, name, strerror(errno));
		close(fd);
		return -1;
	}
	size_t size = (size_t)st.st_size;
	info->size = size;
	const uint8_t *m = (const uint8_t *)"";
	void *map = NULL;
	if (size > 0) {
		map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
		if (map == MAP_FAILED) {
			snprintf(err, errsz, "%s/%s: mmap: %s", dir, name, strerror(errno));
			close(fd);
			return -1;
		}
		(void)madvise(map, size, MADV_SEQUENTIAL);
		m = map;
	}
	close(fd);
	int rc = journal_parse(m, size, dir, name, kind, cb, arg, info, err, errsz);
	if (map)
		munmap(map, size);
	return rc;
}

int journal_peek_gen(int dirfd, const char *name, enum journal_kind kind, uint64_t *gen)
{
	uint8_t h[JOURNAL_HDR_SIZE];
	*gen = 0;
	int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = pread(fd, h, sizeof(h), 0);
	close(fd);
	if (n != (ssize_t)sizeof(h) || memcmp(h, journal_magic[kind], 8) != 0)
		return -1;
	*gen = journal_get64(h + 16);
	return 0;
}

int journal_pwrite(int fd, const void *p, size_t n, uint64_t off)
{
	const uint8_t *b = p;
	while (n > 0) {
		ssize_t w = pwrite(fd, b, n, (off_t)off);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (w == 0) {
			errno = EIO;
			return -1;
		}
		b += w;
		n -= (size_t)w;
		off += (uint64_t)w;
	}
	return 0;
}
