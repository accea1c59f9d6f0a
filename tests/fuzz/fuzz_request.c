/*
 * tests/fuzz/fuzz_request.c - libFuzzer target for proto_parse() and, on
 * what it parses, proto_reply_format().
 *
 * Input: 6 header bytes choose the limits (max_line, max_attrs,
 * max_request), extra_cap and the seed of the chunk sizes; the rest is the
 * byte stream of one connection.  The stream is parsed twice: handed to the
 * parser in pseudo-random chunks as a connection would read it, and whole.
 * Both runs must give the same results.  Checked on every result: used <=
 * len, every string inside the consumed bytes and NUL-terminated at its
 * length, nextra <= extra_cap, nattrs <= max_attrs, the error codes fit the
 * status.  Attribute values of good requests are written as reply text;
 * the reply must be well formed, valid UTF-8 within the limit, and parse
 * back (as one unknown attribute `action`) to exactly what was written.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/reply.h"
#include "proto/request.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_HDR       6
#define FUZZ_EXTRA_MAX 8

struct fuzz_result {
	enum proto_status st;
	size_t used;
	enum proto_error code;
	size_t line;
	size_t nattrs;
	size_t nextra;
};

static uint32_t fuzz_rand(uint32_t *s)
{
	*s = *s * 1103515245u + 12345u;
	return *s >> 8;
}

static void fuzz_check_str(const struct proto_str *s, const char *base, size_t used)
{
	if (!s->p)
		return;
	if (s->p < base || s->p + s->len >= base + used)
		abort();
	if (strlen(s->p) != s->len)
		abort();
	if (memchr(s->p, '\n', s->len))
		abort();
}

static void fuzz_check(const struct proto_parser *p, const struct proto_request *req,
                       const struct proto_diag *diag, enum proto_status st, const char *base,
                       size_t len, size_t used)
{
	switch (st) {
	case PROTO_MORE:
		if (used != 0 || diag->code != PROTO_E_NONE || len >= p->lim.max_request)
			abort();
		return;
	case PROTO_FATAL:
		if (used != 0 || diag->code != PROTO_E_TOO_LARGE || len < p->lim.max_request)
			abort();
		return;
	case PROTO_OK:
		if (diag->code != PROTO_E_NONE)
			abort();
		if (strcmp(proto_get(req, PROTO_A_REQUEST), "smtpd_access_policy") != 0)
			abort();
		if (req->state == PROTO_STATE_NONE) {
			if (req->attr[PROTO_A_PROTOCOL_STATE].p)
				abort();
		} else if (req->state != PROTO_STATE_OTHER) {
			if (strcmp(proto_state_name(req->state),
			           proto_get(req, PROTO_A_PROTOCOL_STATE)) != 0)
				abort();
		}
		break;
	case PROTO_BAD:
		if (diag->code < PROTO_E_LINE_TOO_LONG || diag->code > PROTO_E_BAD_NUMBER)
			abort();
		if (diag->line > req->nattrs + 1)
			abort();
		break;
	}
	if (used == 0 || used > len || used > p->lim.max_request)
		abort();
	if (base[used - 1] != '\n')
		abort(); /* the LF of the empty line is left alone */
	if (req->nextra > req->extra_cap || req->nextra > req->nattrs ||
	    req->nattrs > p->lim.max_attrs)
		abort();
	for (size_t a = 0; a < PROTO_A__COUNT; a++)
		fuzz_check_str(&req->attr[a], base, used);
	for (size_t i = 0; i < req->nextra; i++) {
		fuzz_check_str(&req->extra[i].name, base, used);
		fuzz_check_str(&req->extra[i].value, base, used);
		if (req->extra[i].name.len == 0)
			abort();
		if (proto_attr_lookup(req->extra[i].name.p, req->extra[i].name.len) !=
		    PROTO_A__COUNT)
			abort();
	}
}

/* Write text as a reply, check it, and parse it back. */
static void fuzz_reply(const char *text, size_t outsz, unsigned pick)
{
	static const char *const actions[] = {"DUNNO", "DEFER", "HOLD", "REJECT", "WARN", "450"};
	const char *action = actions[pick % (sizeof(actions) / sizeof(actions[0]))];
	size_t alen = strlen(action);
	char *out = malloc(outsz ? outsz : 1);
	size_t n;

	if (!out)
		abort();
	n = proto_reply_format(out, outsz, action, text);
	if (n == 0) {
		if (outsz >= 7 + alen + 3)
			abort();
		if (outsz > 0 && out[0] != '\0')
			abort();
		free(out);
		return;
	}
	if (n >= outsz || strlen(out) != n || n < 9 + alen || n - 9 > PROTO_REPLY_MAX_TEXT)
		abort();
	if (memcmp(out, "action=", 7) != 0 || memcmp(out + 7, action, alen) != 0 ||
	    memcmp(out + n - 2, "\n\n", 2) != 0)
		abort();
	if (!proto_utf8_valid(out + 7, n - 9))
		abort();
	if (outsz >= PROTO_REPLY_BUFSZ && text && text[0] && n == 9 + alen &&
	    alen < PROTO_REPLY_MAX_TEXT - 1)
		abort(); /* room for text but none written */

	/* the reply is name=value lines too: it must read back as written */
	char line[PROTO_REPLY_BUFSZ + 8];
	struct proto_parser p;
	struct proto_request req;
	struct proto_kv kv[1];
	struct proto_diag diag;
	size_t used;

	if (n > sizeof(line))
		abort(); /* outsz can exceed PROTO_REPLY_BUFSZ; the reply cannot */
	memcpy(line, out, n);
	proto_parser_init(&p, NULL);
	req.extra = kv;
	req.extra_cap = 1;
	if (proto_parse(&p, line, n, &req, &used, &diag) != PROTO_BAD || used != n ||
	    diag.code != PROTO_E_BAD_REQUEST || req.nattrs != 1 || req.nextra != 1 ||
	    strcmp(kv[0].name.p, "action") != 0 || kv[0].value.len != n - 9 ||
	    memcmp(kv[0].value.p, out + 7, n - 9) != 0)
		abort();
	free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct proto_limits lim;
	struct proto_parser p;
	struct proto_request req;
	struct proto_kv extra[FUZZ_EXTRA_MAX];
	struct proto_diag diag;
	struct fuzz_result *res;
	size_t nres = 0, ires = 0, n, off, avail, used;
	char *whole, *chunked;
	uint32_t seed;

	if (size < FUZZ_HDR)
		return 0;
	lim.max_line = data[0] < 200 ? data[0] : PROTO_DEFAULT_MAX_LINE;
	lim.max_attrs = data[1] < 250 ? data[1] : (data[1] == 255 ? 5000 : 64);
	lim.max_request = 1 + ((size_t)data[2] << 8 | data[3]);
	req.extra = data[4] % (FUZZ_EXTRA_MAX + 1) ? extra : NULL;
	req.extra_cap = data[4] % (FUZZ_EXTRA_MAX + 1);
	seed = data[5];
	data += FUZZ_HDR;
	n = size - FUZZ_HDR;

	whole = malloc(n ? n : 1);
	chunked = malloc(n ? n : 1);
	res = malloc((n + 2) * sizeof(*res));
	if (!whole || !chunked || !res)
		abort();
	memcpy(whole, data, n);
	memcpy(chunked, data, n);

	/* the whole stream at once */
	proto_parser_init(&p, &lim);
	if (p.lim.max_attrs > PROTO_MAX_ATTRS_LIMIT)
		abort();
	off = 0;
	for (;;) {
		enum proto_status st = proto_parse(&p, whole + off, n - off, &req, &used, &diag);
		fuzz_check(&p, &req, &diag, st, whole + off, n - off, used);
		if (st == PROTO_MORE)
			break;
		res[nres++] =
		    (struct fuzz_result){st, used, diag.code, diag.line, req.nattrs, req.nextra};
		if (st == PROTO_FATAL)
			break;
		if (st == PROTO_OK) {
			fuzz_reply(proto_get(&req, PROTO_A_SENDER), PROTO_REPLY_BUFSZ, seed);
			fuzz_reply(proto_get(&req, PROTO_A_HELO_NAME), 1 + seed * 3, seed + 1);
			if (req.nextra > 0)
				fuzz_reply(req.extra[0].value.p, PROTO_REPLY_BUFSZ, seed + 2);
		}
		off += used;
	}

	/* the same stream in chunks, as reads would deliver it */
	proto_parser_init(&p, &lim);
	off = 0;
	avail = 0;
	for (;;) {
		uint32_t r = fuzz_rand(&seed);
		size_t chunk = (r & 3) == 0 ? 1 + (r >> 2) % 1024 : 1 + (r >> 2) % 16;
		enum proto_status st;

		avail += chunk < n - avail ? chunk : n - avail;
		for (;;) {
			size_t before = p.scanned;
			st = proto_parse(&p, chunked + off, avail - off, &req, &used, &diag);
			fuzz_check(&p, &req, &diag, st, chunked + off, avail - off, used);
			if (st == PROTO_MORE) {
				if (p.scanned < before || p.scanned > avail - off)
					abort();
				break;
			}
			if (ires >= nres)
				abort();
			const struct fuzz_result *w = &res[ires++];
			if (w->st != st || w->used != used || w->code != diag.code ||
			    w->line != diag.line || w->nattrs != req.nattrs ||
			    w->nextra != req.nextra)
				abort();
			if (st == PROTO_FATAL)
				break;
			off += used;
		}
		if (st == PROTO_FATAL || avail == n)
			break;
	}
	if (ires != nres)
		abort();

	free(res);
	free(chunked);
	free(whole);
	return 0;
}
