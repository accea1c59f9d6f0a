/*
 * proto/classify.c - the NDR reply classifier (see classify.h).
 *
 * Owns: the pattern-file parser (statements, options, "literals",
 * w"words", ^"anchors", /regexes/), the rule set it builds (rules, terms,
 * list names, literals deduplicated), the Aho-Corasick automaton over all
 * literals, the rule index, the rule walk, and the search for the listed
 * IP address.
 *
 * How a reply is classified, and why it is fast (>= 1 M failure records a
 * second with the stock rules, tests/bench/bench_maillog.c):
 * - the automaton is a dense transition table over a folded alphabet (the
 *   bytes that occur in some literal, upper case folded to lower, all
 *   other bytes one class), 16-bit entries whose top bit says "a literal
 *   ends here", states numbered breadth first so that the hot shallow
 *   states share cache lines; a long text is walked in 2 or 4 lanes side
 *   by side, so that the table lookups of the lanes overlap;
 * - each rule is tried only when its first positive literal (its trigger)
 *   occurred; rules without one are always tried; in file order, first
 *   match wins;
 * - in a rule, positive literals are tested first, then anchors, negated
 *   terms, and last the regexes, which run on a lower-cased NUL-terminated
 *   copy made once (regexec() stops at a NUL byte inside the text).
 *
 * Entry points: classify_db_load(), classify_db_free(), classify_db_rules(),
 * classify_db_lists(), classify_reply(), classify_line(),
 * classify_find_ip(), classify_class_name(), classify_class_lookup().
 *
 * Limits: CLASSIFY_MAX_LITERALS literals, CLASSIFY_MAX_LISTS lists,
 * CLASSIFY_MAX_RULES rules, CLASSIFY_MAX_LINE bytes a pattern line, 255
 * bytes a literal; the reply text is cut at CLASSIFY_MAX_TEXT bytes.
 * Classifying uses about 7 KB of stack and no allocation.  No I/O, no
 * globals (the tables are const).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include "proto/classify.h"

#include <arpa/inet.h>
#include <regex.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CL_NONE       UINT32_MAX
#define CL_OTHER      CLASSIFY__COUNT /* rule class `other` */
#define CL_LIST_NONE  (-1)
#define CL_LIST_AUTO  (-2)
#define CL_LIST_ANY   (-3)
#define CL_MAX_LIT    255
#define CL_FLAG16     UINT16_C(0x8000) /* in delta16: the target state has output */
#define CL_FLAG32     UINT32_C(0x80000000)
#define CL_LANES      4 /* automaton walks side by side */
#define CL_WORDS      (CLASSIFY_MAX_LITERALS / 64)
#define CL_LIST_WORDS (CLASSIFY_MAX_LISTS / 64)

enum cl_status_req { CL_ANY = 0, CL_PERM, CL_TEMP };

struct cl_lit {
	uint32_t off, len; /* in db->arena */
	int32_t list;      /* first list that names it, or CL_LIST_NONE */
	bool word;         /* some rule wants it as a whole word (w"...") */
};

struct cl_list {
	char *name;
	bool declared;
	uint32_t ref_src; /* first use by a rule, for the error message */
	size_t ref_line;
};

enum cl_term_kind { CL_T_LIT = 0, CL_T_WORD, CL_T_ANCHOR, CL_T_RE };

struct cl_term {
	uint8_t kind;
	bool neg;
	uint32_t id; /* literal id, anchor index or regex index */
};

struct cl_anchor {
	uint32_t off, len; /* lower-cased, in db->arena */
};

struct cl_rule {
	uint8_t cls; /* enum classify_class, or CL_OTHER */
	uint8_t status;
	uint8_t dsn_len;
	char dsn[16];
	int32_t list;
	uint32_t term0, nterms;
	uint32_t src;
	size_t line;
};

struct classify_db {
	struct cl_lit *lits;
	size_t nlits, lits_cap;
	char *arena;
	size_t arena_len, arena_cap;
	struct cl_list *lists;
	size_t nlists, lists_cap;
	struct cl_rule *rules;
	size_t nrules, rules_cap;
	struct cl_term *terms;
	size_t nterms, terms_cap;
	regex_t *res;
	size_t nres, res_cap;
	struct cl_anchor *anchors;
	size_t nanchors, anchors_cap;
	const char **srcnames;
	size_t nsrc;
	/* the automaton; states numbered breadth first, so the shallow (hot) ones are close */
	uint8_t cmap[256];
	uint32_t nclass;
	uint32_t maxlit; /* the longest literal */
	uint32_t nstates;
	uint16_t *delta16; /* nstates * nclass, when nstates < CL_FLAG16 */
	uint32_t *delta32; /* otherwise; both: target | CL_FLAGxx if it has output */
	uint32_t *out_lit; /* literal ending at the state, or CL_NONE */
	uint32_t *outs;    /* first state with output on the suffix chain, or 0 */
	uint32_t *dict;    /* next such state after this one, or 0 */
	/* the rule index: a rule is tried only if its trigger literal was seen */
	uint64_t *always;     /* rules without a trigger (a bit each) */
	uint32_t *trig_first; /* nlits + 1: the rules literal l triggers are */
	uint32_t *trig_rules; /* trig_rules[trig_first[l] .. trig_first[l + 1]) */
};

/* ---- small helpers ---- */

static bool cl_grow(void **arr, size_t *cap, size_t need, size_t elsz)
{
	size_t ncap;
	void *n;

	if (need <= *cap)
		return true;
	ncap = *cap ? *cap * 2 : 16;
	while (ncap < need)
		ncap *= 2;
	if (ncap > SIZE_MAX / elsz)
		return false;
	n = realloc(*arr, ncap * elsz);
	if (!n)
		return false;
	*arr = n;
	*cap = ncap;
	return true;
}

static char cl_lower(char c)
{
	return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

static bool cl_isalnum(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool cl_isspace(char c)
{
	return c == ' ' || c == '\t';
}

/* ---- classes ---- */

static const char *const cl_class_names[CLASSIFY__COUNT] = {
    "none",         "blocklist_ip", "blocklist_domain", "reputation",
    "rate_limited", "user_unknown", "mailbox_full",     "greylisted",
    "auth_policy",  "content_spam", "relay_denied",     "connection_error",
    "tls_error",    "timeout",      "other_permanent",  "other_temporary",
    "delivered",
};

const char *classify_class_name(enum classify_class c)
{
	return (unsigned)c < CLASSIFY__COUNT ? cl_class_names[c] : "?";
}

enum classify_class classify_class_lookup(const char *name, size_t len)
{
	for (int i = 1; i < CLASSIFY__COUNT; i++)
		if (strlen(cl_class_names[i]) == len && memcmp(cl_class_names[i], name, len) == 0)
			return (enum classify_class)i;
	return CLASSIFY__COUNT;
}

/* ---- building ---- */

struct cl_build {
	struct classify_db *db;
	struct classify_diag *diag;
	uint32_t src;
	size_t line;
	bool failed;
};

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static bool
cl_err(struct cl_build *b, const char *fmt, ...)
{
	va_list ap;

	if (b->failed)
		return false;
	b->failed = true;
	if (!b->diag)
		return false;
	b->diag->source = b->src < b->db->nsrc ? b->db->srcnames[b->src] : NULL;
	b->diag->line = b->line;
	va_start(ap, fmt);
	vsnprintf(b->diag->msg, sizeof(b->diag->msg), fmt, ap);
	va_end(ap);
	return false;
}

static int32_t cl_list_find(const struct classify_db *db, const char *name, size_t len)
{
	for (size_t i = 0; i < db->nlists; i++)
		if (strlen(db->lists[i].name) == len && memcmp(db->lists[i].name, name, len) == 0)
			return (int32_t)i;
	return CL_LIST_NONE;
}

static int32_t cl_list_get(struct cl_build *b, const char *name, size_t len)
{
	struct classify_db *db = b->db;
	int32_t i = cl_list_find(db, name, len);
	struct cl_list *l;

	if (i >= 0)
		return i;
	if (db->nlists >= CLASSIFY_MAX_LISTS) {
		cl_err(b, "more than %d list names", CLASSIFY_MAX_LISTS);
		return CL_LIST_NONE;
	}
	if (!cl_grow((void **)&db->lists, &db->lists_cap, db->nlists + 1, sizeof(*db->lists))) {
		cl_err(b, "out of memory");
		return CL_LIST_NONE;
	}
	l = &db->lists[db->nlists];
	memset(l, 0, sizeof(*l));
	l->name = malloc(len + 1);
	if (!l->name) {
		cl_err(b, "out of memory");
		return CL_LIST_NONE;
	}
	memcpy(l->name, name, len);
	l->name[len] = '\0';
	l->ref_src = b->src;
	l->ref_line = b->line;
	return (int32_t)db->nlists++;
}

/* The id of a (lower-cased) literal, added when new. */
static uint32_t cl_lit_get(struct cl_build *b, const char *s, size_t len)
{
	struct classify_db *db = b->db;

	for (size_t i = 0; i < db->nlits; i++)
		if (db->lits[i].len == len && memcmp(db->arena + db->lits[i].off, s, len) == 0)
			return (uint32_t)i;
	if (db->nlits >= CLASSIFY_MAX_LITERALS) {
		cl_err(b, "more than %d distinct literals", CLASSIFY_MAX_LITERALS);
		return CL_NONE;
	}
	if (!cl_grow((void **)&db->lits, &db->lits_cap, db->nlits + 1, sizeof(*db->lits)) ||
	    !cl_grow((void **)&db->arena, &db->arena_cap, db->arena_len + len, 1)) {
		cl_err(b, "out of memory");
		return CL_NONE;
	}
	memcpy(db->arena + db->arena_len, s, len);
	db->lits[db->nlits].off = (uint32_t)db->arena_len;
	db->lits[db->nlits].len = (uint32_t)len;
	db->lits[db->nlits].list = CL_LIST_NONE;
	db->lits[db->nlits].word = false;
	db->arena_len += len;
	return (uint32_t)db->nlits++;
}

static bool cl_term_add(struct cl_build *b, enum cl_term_kind kind, uint32_t id, bool neg)
{
	struct classify_db *db = b->db;

	if (!cl_grow((void **)&db->terms, &db->terms_cap, db->nterms + 1, sizeof(*db->terms)))
		return cl_err(b, "out of memory");
	db->terms[db->nterms].kind = (uint8_t)kind;
	db->terms[db->nterms].id = id;
	db->terms[db->nterms].neg = neg;
	db->nterms++;
	return true;
}

/* An anchored literal: kept out of the automaton, compared at the text's start. */
static uint32_t cl_anchor_add(struct cl_build *b, const char *s, size_t len)
{
	struct classify_db *db = b->db;

	if (!cl_grow((void **)&db->anchors, &db->anchors_cap, db->nanchors + 1,
	             sizeof(*db->anchors)) ||
	    !cl_grow((void **)&db->arena, &db->arena_cap, db->arena_len + len, 1)) {
		cl_err(b, "out of memory");
		return CL_NONE;
	}
	memcpy(db->arena + db->arena_len, s, len);
	db->anchors[db->nanchors].off = (uint32_t)db->arena_len;
	db->anchors[db->nanchors].len = (uint32_t)len;
	db->arena_len += len;
	return (uint32_t)db->nanchors++;
}

/*
 * A quoted literal at *p (after the quote), lower-cased into buf.  Returns
 * its length, or (size_t)-1 after reporting the error.
 */
static size_t cl_scan_literal(struct cl_build *b, const char **p, const char *e, char *buf)
{
	size_t n = 0;
	const char *q = *p;

	for (; q < e && *q != '"'; q++) {
		char c = *q;

		if (c == '\\' && q + 1 < e && (q[1] == '"' || q[1] == '\\'))
			c = *++q;
		if (n >= CL_MAX_LIT) {
			cl_err(b, "literal longer than %d bytes", CL_MAX_LIT);
			return (size_t)-1;
		}
		buf[n++] = cl_lower(c);
	}
	if (q >= e) {
		cl_err(b, "unterminated \"literal\"");
		return (size_t)-1;
	}
	if (n == 0) {
		cl_err(b, "empty literal");
		return (size_t)-1;
	}
	*p = q + 1;
	return n;
}

/* A /regex/ at *p (after the slash), compiled.  Returns its index or CL_NONE. */
static uint32_t cl_scan_regex(struct cl_build *b, const char **p, const char *e)
{
	struct classify_db *db = b->db;
	char buf[CLASSIFY_MAX_LINE + 1];
	size_t n = 0;
	const char *q = *p;
	int rc;

	for (; q < e && *q != '/'; q++) {
		char c = *q;

		if (c == '\\' && q + 1 < e && q[1] == '/') {
			c = *++q;
		} else if (c == '\\' && q + 1 < e) {
			buf[n++] = c; /* an escape: the next byte is kept as is */
			c = *++q;
			buf[n++] = c;
			continue;
		}
		/* matched against the lower-cased text: [A-Z] becomes [a-z] */
		buf[n++] = cl_lower(c); /* n < line length <= CLASSIFY_MAX_LINE */
	}
	if (q >= e) {
		cl_err(b, "unterminated /regex/");
		return CL_NONE;
	}
	if (n == 0) {
		cl_err(b, "empty regex");
		return CL_NONE;
	}
	buf[n] = '\0';
	if (!cl_grow((void **)&db->res, &db->res_cap, db->nres + 1, sizeof(*db->res))) {
		cl_err(b, "out of memory");
		return CL_NONE;
	}
	rc = regcomp(&db->res[db->nres], buf, REG_EXTENDED | REG_NOSUB);
	if (rc != 0) {
		char msg[120];

		regerror(rc, &db->res[db->nres], msg, sizeof(msg));
		regfree(&db->res[db->nres]);
		cl_err(b, "bad regex /%s/: %s", buf, msg);
		return CL_NONE;
	}
	*p = q + 1;
	return (uint32_t)db->nres++;
}

static bool cl_word(const char **p, const char *e, const char **w, size_t *n)
{
	const char *q = *p;

	while (q < e && !cl_isspace(*q) && *q != '#' && *q != '"' && *q != '/')
		q++;
	*w = *p;
	*n = (size_t)(q - *p);
	*p = q;
	return *n > 0;
}

static bool cl_name_ok(const char *s, size_t n)
{
	if (n == 0 || n > 64)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!cl_isalnum(s[i]) && s[i] != '_' && s[i] != '-' && s[i] != '.')
			return false;
	return true;
}

/* One statement (a line without its end). */
static bool cl_statement(struct cl_build *b, const char *p, const char *e)
{
	struct classify_db *db = b->db;
	struct cl_rule rule;
	const char *w;
	size_t wn;
	bool is_list;
	int32_t list_id = CL_LIST_NONE;
	char lit[CL_MAX_LIT];
	size_t term_first = db->nterms;

	while (p < e && cl_isspace(*p))
		p++;
	if (p >= e || *p == '#')
		return true;
	if (!cl_word(&p, e, &w, &wn))
		return cl_err(b, "a statement starts with `list` or a class name");
	memset(&rule, 0, sizeof(rule));
	is_list = wn == 4 && memcmp(w, "list", 4) == 0;
	if (is_list) {
		while (p < e && cl_isspace(*p))
			p++;
		if (!cl_word(&p, e, &w, &wn) || !cl_name_ok(w, wn))
			return cl_err(b, "list: a name ([A-Za-z0-9_.-], at most 64) expected");
		list_id = cl_list_get(b, w, wn);
		if (list_id < 0)
			return false;
		db->lists[list_id].declared = true;
	} else {
		enum classify_class c = classify_class_lookup(w, wn);

		if (wn == 5 && memcmp(w, "other", 5) == 0)
			rule.cls = CL_OTHER;
		else if (c == CLASSIFY__COUNT)
			return cl_err(b, "unknown class `%.*s`", (int)(wn > 64 ? 64 : wn), w);
		else
			rule.cls = (uint8_t)c;
		rule.list = CL_LIST_NONE;
		rule.term0 = (uint32_t)db->nterms;
		rule.src = b->src;
		rule.line = b->line;
	}
	for (;;) {
		bool neg = false, anchored = false, word = false;

		while (p < e && cl_isspace(*p))
			p++;
		if (p >= e || *p == '#')
			break;
		if (*p == '!') {
			neg = true;
			p++;
			if (p >= e || (*p != '"' && *p != '/' && *p != '^' && *p != 'w'))
				return cl_err(b, "`!` must stand before a term");
		}
		if (*p == '^' || (*p == 'w' && p + 1 < e && p[1] == '"')) {
			anchored = *p == '^';
			word = *p == 'w';
			p++;
			if (p >= e || *p != '"')
				return cl_err(b, "`^` must stand before \"literal\"");
		}
		if (*p == '"') {
			size_t n;
			uint32_t id;

			p++;
			n = cl_scan_literal(b, &p, e, lit);
			if (n == (size_t)-1)
				return false;
			if (is_list && (neg || anchored || word))
				return cl_err(b, "list: plain \"literals\" only");
			if (anchored) {
				id = cl_anchor_add(b, lit, n);
				if (id == CL_NONE || !cl_term_add(b, CL_T_ANCHOR, id, neg))
					return false;
				continue;
			}
			id = cl_lit_get(b, lit, n);
			if (id == CL_NONE)
				return false;
			if (is_list) {
				if (db->lits[id].list == CL_LIST_NONE)
					db->lits[id].list = list_id;
				continue;
			}
			if (word)
				db->lits[id].word = true;
			if (!cl_term_add(b, word ? CL_T_WORD : CL_T_LIT, id, neg))
				return false;
			continue;
		}
		if (*p == '/') {
			uint32_t re;

			if (is_list)
				return cl_err(b, "list: only \"literals\" here");
			p++;
			re = cl_scan_regex(b, &p, e);
			if (re == CL_NONE || !cl_term_add(b, CL_T_RE, re, neg))
				return false;
			continue;
		}
		if (is_list)
			return cl_err(b, "list: only \"literals\" here");
		cl_word(&p, e, &w, &wn);
		if (wn > 5 && memcmp(w, "list=", 5) == 0) {
			if (rule.list != CL_LIST_NONE)
				return cl_err(b, "list= given twice");
			if (wn == 9 && memcmp(w + 5, "auto", 4) == 0) {
				rule.list = CL_LIST_AUTO;
			} else if (wn == 8 && memcmp(w + 5, "any", 3) == 0) {
				rule.list = CL_LIST_ANY;
			} else {
				if (!cl_name_ok(w + 5, wn - 5))
					return cl_err(b, "list=: a name expected");
				rule.list = cl_list_get(b, w + 5, wn - 5);
				if (rule.list < 0)
					return false;
			}
		} else if (wn == 11 && memcmp(w, "status=perm", 11) == 0) {
			rule.status = CL_PERM;
		} else if (wn == 11 && memcmp(w, "status=temp", 11) == 0) {
			rule.status = CL_TEMP;
		} else if (wn > 4 && memcmp(w, "dsn=", 4) == 0) {
			if (wn - 4 >= sizeof(rule.dsn) || !(w[4] >= '2' && w[4] <= '5'))
				return cl_err(b, "dsn=: a prefix such as 5.1.1 or 5.7. expected");
			for (size_t i = 4; i < wn; i++)
				if (!(w[i] >= '0' && w[i] <= '9') && w[i] != '.')
					return cl_err(b, "dsn=: digits and dots only");
			memcpy(rule.dsn, w + 4, wn - 4);
			rule.dsn_len = (uint8_t)(wn - 4);
		} else {
			return cl_err(b, "unknown option `%.*s` (list=, status=perm|temp, dsn=)",
			              (int)(wn > 64 ? 64 : wn), w);
		}
	}
	if (is_list)
		return true;
	rule.nterms = (uint32_t)(db->nterms - term_first);
	if (rule.nterms == 0 && rule.dsn_len == 0 && rule.status == CL_ANY)
		return cl_err(b, "a rule needs a term, dsn= or status=");
	/*
	 * Positive literals first (the first is the rule's trigger), then
	 * anchors, then the negated ones, then regexes: a regex runs only when
	 * the cheaper terms hold.  Stable: the file order stays among equals.
	 */
	for (uint32_t i = 1; i < rule.nterms; i++)
		for (uint32_t j = i; j > 0; j--) {
			struct cl_term *ta = &db->terms[rule.term0 + j - 1];
			struct cl_term *tb = &db->terms[rule.term0 + j];
			int ka = (ta->kind == CL_T_RE) * 20 + ta->neg * 10 + ta->kind;
			int kb = (tb->kind == CL_T_RE) * 20 + tb->neg * 10 + tb->kind;
			struct cl_term t;

			if (ka <= kb)
				break;
			t = *ta;
			*ta = *tb;
			*tb = t;
		}
	if (db->nrules >= CLASSIFY_MAX_RULES)
		return cl_err(b, "more than %d rules", CLASSIFY_MAX_RULES);
	if (!cl_grow((void **)&db->rules, &db->rules_cap, db->nrules + 1, sizeof(*db->rules)))
		return cl_err(b, "out of memory");
	db->rules[db->nrules++] = rule;
	return true;
}

static bool cl_source(struct cl_build *b, const struct classify_source *s)
{
	const char *p = s->text, *e;

	b->line = 0;
	if (!p) {
		if (s->len)
			return cl_err(b, "no text");
		return true;
	}
	e = p + s->len;
	while (p < e) {
		const char *nl = memchr(p, '\n', (size_t)(e - p));
		const char *le = nl ? nl : e;

		b->line++;
		if (le > p && le[-1] == '\r')
			le--;
		if ((size_t)(le - p) > CLASSIFY_MAX_LINE)
			return cl_err(b, "line longer than %d bytes", CLASSIFY_MAX_LINE);
		if (memchr(p, '\0', (size_t)(le - p)))
			return cl_err(b, "NUL byte");
		if (!cl_statement(b, p, le))
			return false;
		p = nl ? nl + 1 : e;
	}
	return true;
}

/* The rule index: each rule's trigger (its first positive literal) or `always`. */
static bool cl_index(struct cl_build *b)
{
	struct classify_db *db = b->db;
	size_t nrw = (db->nrules + 63) / 64, ntrig = 0;
	uint32_t *fill;

	db->always = calloc(nrw ? nrw : 1, sizeof(*db->always));
	db->trig_first = calloc(db->nlits + 1, sizeof(*db->trig_first));
	fill = calloc(db->nlits + 1, sizeof(*fill));
	if (!db->always || !db->trig_first || !fill) {
		free(fill);
		return cl_err(b, "out of memory");
	}
	for (size_t k = 0; k < db->nrules; k++) {
		const struct cl_rule *ru = &db->rules[k];
		const struct cl_term *t0 = &db->terms[ru->term0];

		if (ru->nterms > 0 && (t0->kind == CL_T_LIT || t0->kind == CL_T_WORD) && !t0->neg) {
			db->trig_first[t0->id + 1]++;
			ntrig++;
		} else {
			db->always[k / 64] |= UINT64_C(1) << (k % 64);
		}
	}
	for (size_t l = 0; l < db->nlits; l++)
		db->trig_first[l + 1] += db->trig_first[l];
	db->trig_rules = malloc((ntrig ? ntrig : 1) * sizeof(*db->trig_rules));
	if (!db->trig_rules) {
		free(fill);
		return cl_err(b, "out of memory");
	}
	for (size_t k = 0; k < db->nrules; k++) {
		const struct cl_rule *ru = &db->rules[k];
		const struct cl_term *t0 = &db->terms[ru->term0];

		if (ru->nterms > 0 && (t0->kind == CL_T_LIT || t0->kind == CL_T_WORD) && !t0->neg)
			db->trig_rules[db->trig_first[t0->id] + fill[t0->id]++] = (uint32_t)k;
	}
	free(fill);
	return true;
}

/* The automaton over all literals. */
static bool cl_compile(struct cl_build *b)
{
	struct classify_db *db = b->db;
	size_t total = 1, nc;
	uint32_t *delta = NULL, *fail = NULL, *outs = NULL, *queue = NULL, *newid = NULL;
	size_t qh = 0, qt = 0;
	uint32_t nst = 1;
	bool ok = false;

	memset(db->cmap, 0, sizeof(db->cmap));
	nc = 1;
	db->maxlit = 0;
	for (size_t l = 0; l < db->nlits; l++)
		if (db->lits[l].len > db->maxlit)
			db->maxlit = db->lits[l].len;
	for (size_t l = 0; l < db->nlits; l++)
		for (size_t i = 0; i < db->lits[l].len; i++) {
			unsigned char c = (unsigned char)db->arena[db->lits[l].off + i];

			if (!db->cmap[c])
				db->cmap[c] = (uint8_t)nc++;
			total++;
		}
	for (int c = 'A'; c <= 'Z'; c++)
		db->cmap[c] = db->cmap[c - 'A' + 'a'];
	db->nclass = (uint32_t)nc;
	if (total > UINT32_MAX / nc)
		return cl_err(b, "too many literal bytes");
	delta = calloc(total * nc, sizeof(*delta));
	fail = calloc(total, sizeof(*fail));
	outs = calloc(total, sizeof(*outs));
	queue = malloc(total * sizeof(*queue));
	newid = malloc(total * sizeof(*newid));
	db->out_lit = malloc(total * sizeof(*db->out_lit));
	db->outs = calloc(total, sizeof(*db->outs));
	db->dict = calloc(total, sizeof(*db->dict));
	if (!delta || !fail || !outs || !queue || !newid || !db->out_lit || !db->outs ||
	    !db->dict) {
		cl_err(b, "out of memory");
		goto out;
	}
	/* the trie; out_lit in the trie's own numbering for now */
	for (size_t i = 0; i < total; i++)
		db->out_lit[i] = CL_NONE;
	for (size_t l = 0; l < db->nlits; l++) {
		uint32_t st = 0;
		const char *t = db->arena + db->lits[l].off;

		for (size_t i = 0; i < db->lits[l].len; i++) {
			uint32_t *d = &delta[(size_t)st * nc + db->cmap[(unsigned char)t[i]]];

			if (!*d)
				*d = nst++;
			st = *d;
		}
		db->out_lit[st] = (uint32_t)l;
	}
	/*
	 * Breadth first: the failure transitions are folded into delta (a row is
	 * complete when its state is dequeued, and fail(s) is shallower than s).
	 */
	queue[qt++] = 0;
	while (qh < qt) {
		uint32_t st = queue[qh++];
		uint32_t *row = &delta[(size_t)st * nc];

		for (size_t c = 0; c < nc; c++) {
			uint32_t u = row[c];

			if (u) {
				fail[u] = st == 0 ? 0 : delta[(size_t)fail[st] * nc + c];
				queue[qt++] = u;
			} else if (st != 0) {
				row[c] = delta[(size_t)fail[st] * nc + c];
			}
		}
	}
	/* the output chains: outs(s) = s if a literal ends at s, else outs(fail(s)) */
	for (size_t i = 0; i < qt; i++) {
		uint32_t st = queue[i];

		outs[st] = db->out_lit[st] != CL_NONE ? st : (st == 0 ? 0 : outs[fail[st]]);
		newid[st] = (uint32_t)i;
	}
	/* renumber breadth first */
	db->nstates = (uint32_t)qt;
	if (qt >= CL_FLAG32) {
		cl_err(b, "too many automaton states"); /* cannot happen: <= literal bytes + 1 */
		goto out;
	}
	if (qt < CL_FLAG16)
		db->delta16 = malloc(qt * nc * sizeof(*db->delta16));
	else
		db->delta32 = malloc(qt * nc * sizeof(*db->delta32));
	if (!db->delta16 && !db->delta32) {
		cl_err(b, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < qt; i++) {
		uint32_t st = queue[i];

		for (size_t c = 0; c < nc; c++) {
			uint32_t old = delta[(size_t)st * nc + c], to = newid[old];

			if (db->delta16)
				db->delta16[i * nc + c] =
				    (uint16_t)(to | (outs[old] ? CL_FLAG16 : 0));
			else
				db->delta32[i * nc + c] = to | (outs[old] ? CL_FLAG32 : 0);
		}
		db->outs[i] = outs[st] ? newid[outs[st]] : 0;
		db->dict[i] = st != 0 && outs[fail[st]] ? newid[outs[fail[st]]] : 0;
	}
	/* out_lit in the new numbering (queue[] is no longer needed: reuse it) */
	for (size_t i = 0; i < qt; i++)
		queue[i] = db->out_lit[queue[i]];
	memcpy(db->out_lit, queue, qt * sizeof(*queue));
	ok = cl_index(b);
out:
	free(delta);
	free(fail);
	free(outs);
	free(queue);
	free(newid);
	return ok;
}

static bool cl_resolve(struct cl_build *b)
{
	struct classify_db *db = b->db;

	for (size_t i = 0; i < db->nlists; i++)
		if (!db->lists[i].declared) {
			b->src = db->lists[i].ref_src;
			b->line = db->lists[i].ref_line;
			return cl_err(b, "list `%s` is not declared (list %s ...)",
			              db->lists[i].name, db->lists[i].name);
		}
	return true;
}

struct classify_db *classify_db_load(const struct classify_source *sources, size_t n,
                                     struct classify_diag *diag)
{
	struct cl_build b;
	struct classify_db *db;

	if (diag)
		memset(diag, 0, sizeof(*diag));
	db = calloc(1, sizeof(*db));
	if (!db) {
		if (diag)
			snprintf(diag->msg, sizeof(diag->msg), "out of memory");
		return NULL;
	}
	memset(&b, 0, sizeof(b));
	b.db = db;
	b.diag = diag;
	db->srcnames = calloc(n ? n : 1, sizeof(*db->srcnames));
	if (!db->srcnames) {
		cl_err(&b, "out of memory");
		classify_db_free(db);
		return NULL;
	}
	db->nsrc = n;
	for (size_t i = 0; i < n; i++)
		db->srcnames[i] = sources[i].name;
	for (size_t i = 0; i < n; i++) {
		b.src = (uint32_t)i;
		if (!cl_source(&b, &sources[i])) {
			classify_db_free(db);
			return NULL;
		}
	}
	b.line = 0;
	b.src = (uint32_t)n;
	if (!cl_resolve(&b) || !cl_compile(&b)) {
		classify_db_free(db);
		return NULL;
	}
	return db;
}

void classify_db_free(struct classify_db *db)
{
	if (!db)
		return;
	for (size_t i = 0; i < db->nres; i++)
		regfree(&db->res[i]);
	for (size_t i = 0; i < db->nlists; i++)
		free(db->lists[i].name);
	free(db->res);
	free(db->lists);
	free(db->lits);
	free(db->arena);
	free(db->rules);
	free(db->terms);
	free(db->srcnames);
	free(db->anchors);
	free(db->delta16);
	free(db->delta32);
	free(db->always);
	free(db->trig_first);
	free(db->trig_rules);
	free(db->out_lit);
	free(db->outs);
	free(db->dict);
	free(db);
}

size_t classify_db_rules(const struct classify_db *db)
{
	return db ? db->nrules : 0;
}

size_t classify_db_lists(const struct classify_db *db)
{
	return db ? db->nlists : 0;
}

/* ---- the IP address ---- */

static bool cl_ip_sepchar(char c)
{
	return cl_isalnum(c) || c == '.' || c == ':' || c == '_' || c == '-';
}

/* Is the candidate at text[i] introduced by a bracket or a keyword? */
static bool cl_ip_context(const char *t, size_t i)
{
	static const char *const kw[] = {"ip",     "ipr",    "ipv4",    "ipv6", "client",
	                                 "from",   "host",   "address", "addr", "sender",
	                                 "source", "server", NULL};
	size_t j = i;

	if (j > 0 && t[j - 1] == ' ')
		j--;
	if (j == 0)
		return false;
	if (t[j - 1] == '[' || t[j - 1] == '(' || t[j - 1] == '<')
		return true;
	if (t[j - 1] == '=' || t[j - 1] == ':')
		j--;
	else if (j == i)
		return false; /* a keyword needs a space, '=' or ':' before the address */
	for (size_t k = 0; kw[k]; k++) {
		size_t n = strlen(kw[k]), x;

		if (n > j)
			continue;
		for (x = 0; x < n && cl_lower(t[j - n + x]) == kw[k][x]; x++)
			;
		if (x == n && (j == n || !cl_isalnum(t[j - n - 1])))
			return true;
	}
	return false;
}

/* Is t[i] inside `name[` (a host name right before the bracket)? */
static bool cl_ip_bracket_peer(const char *t, size_t i)
{
	return i >= 2 && t[i - 1] == '[' &&
	       (cl_isalnum(t[i - 2]) || t[i - 2] == '.' || t[i - 2] == '-');
}

/* A dotted quad at t[i]; its length, or 0. */
static size_t cl_ipv4(const char *t, size_t i, size_t len)
{
	size_t p = i;

	for (int part = 0; part < 4; part++) {
		unsigned v = 0;
		size_t d = 0;

		if (part > 0) {
			if (p >= len || t[p] != '.')
				return 0;
			p++;
		}
		while (p < len && t[p] >= '0' && t[p] <= '9' && d < 4) {
			v = v * 10 + (unsigned)(t[p] - '0');
			p++;
			d++;
		}
		if (d == 0 || d > 3 || v > 255)
			return 0;
	}
	if (p < len && (cl_isalnum(t[p]) || t[p] == '_' || t[p] == '-' || t[p] == ':'))
		return 0;
	if (p + 1 < len && t[p] == '.' && (cl_isalnum(t[p + 1]) || t[p + 1] == '-'))
		return 0; /* part of a host name: 23.100.51.198.zen.spamhaus.org */
	return p - i;
}

/* An IPv6 address at t[i] (hex digits, ':' and '.'); its length, or 0. */
static size_t cl_ipv6(const char *t, size_t i, size_t len)
{
	char buf[INET6_ADDRSTRLEN + 1];
	unsigned char bin[16];
	size_t p = i, colons = 0;

	while (p < len && p - i < INET6_ADDRSTRLEN &&
	       ((t[p] >= '0' && t[p] <= '9') || (t[p] >= 'a' && t[p] <= 'f') ||
	        (t[p] >= 'A' && t[p] <= 'F') || t[p] == ':' || t[p] == '.')) {
		colons += t[p] == ':';
		p++;
	}
	while (p > i && (t[p - 1] == '.' || (t[p - 1] == ':' && !(p - i >= 2 && t[p - 2] == ':'))))
		p--; /* a sentence's '.' or a ':' that ends the token */
	if (colons < 2 || p - i > INET6_ADDRSTRLEN)
		return 0;
	if (p < len && cl_isalnum(t[p]))
		return 0;
	memcpy(buf, t + i, p - i);
	buf[p - i] = '\0';
	return inet_pton(AF_INET6, buf, bin) == 1 ? p - i : 0;
}

/* Could an IPv6 address start at t[i]: hex digits, ':' and '.', two ':' at least? */
static bool cl_ipv6_shape(const char *t, size_t i, size_t len)
{
	size_t colons = 0;

	for (; i < len && colons < 2; i++) {
		char c = t[i];

		if (c == ':')
			colons++;
		else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
		           (c >= 'A' && c <= 'F') || c == '.'))
			break;
	}
	return colons >= 2;
}

bool classify_find_ip(const char *t, size_t len, struct maillog_str *ip)
{
	struct maillog_str bare = {NULL, 0};

	memset(ip, 0, sizeof(*ip));
	if (!t)
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = t[i], prev = i > 0 ? t[i - 1] : ' ';
		bool digit = c >= '0' && c <= '9', ctx;
		size_t n = 0;

		/* cheap rejections first: most bytes start no address */
		if (!(digit || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') || c == ':'))
			continue;
		if (cl_ip_sepchar(prev) && prev != ':')
			continue; /* inside a token */
		if (!digit && !cl_ipv6_shape(t, i, len))
			continue;
		ctx = cl_ip_context(t, i);
		/* after ':' only as in `IPv6:` / `IP:` */
		if (prev == ':' && !ctx)
			continue;
		/* NAME[ADDR] is Postfix's (or a quoted MTA's) peer, not the listed IP */
		if (cl_ip_bracket_peer(t, i))
			continue;
		if (ctx)
			n = cl_ipv6(t, i, len);
		if (n == 0 && digit)
			n = cl_ipv4(t, i, len);
		if (n == 0)
			continue;
		if (ctx) {
			ip->p = t + i;
			ip->len = n;
			return true;
		}
		if (!bare.p) {
			bare.p = t + i;
			bare.len = n;
		}
		i += n - 1;
	}
	*ip = bare;
	return bare.p != NULL;
}

/* ---- classifying ---- */

static bool cl_status_perm(enum maillog_status st, const char *dsn, size_t dsn_len)
{
	switch (st) {
	case MAILLOG_ST_BOUNCED:
	case MAILLOG_ST_UNDELIVERABLE:
	case MAILLOG_ST_EXPIRED:
	case MAILLOG_ST_FORCE_EXPIRED:
		return true;
	case MAILLOG_ST_DEFERRED:
	case MAILLOG_ST_SOFTBOUNCE:
		return false;
	default:
		return dsn && dsn_len > 0 && dsn[0] == '5';
	}
}

static bool cl_delivered(enum maillog_status st)
{
	return st == MAILLOG_ST_SENT || st == MAILLOG_ST_DELIVERABLE ||
	       st == MAILLOG_ST_DELIVERED || st == MAILLOG_ST_EXPANDED;
}

/* What one classification needs besides the db; on the stack. */
struct cl_scratch {
	uint64_t hit[CL_WORDS];                 /* literals seen */
	uint64_t whit[CL_WORDS];                /* literals seen as whole words */
	uint64_t cand[CLASSIFY_MAX_RULES / 64]; /* rules to try */
	uint64_t lhit[CL_LIST_WORDS];           /* lists named */
	uint32_t lpos[CLASSIFY_MAX_LISTS];      /* where each was first named */
	bool any_list;
	bool copied;
	char copy[CLASSIFY_MAX_TEXT + 1]; /* NUL-terminated, for regexec() */
};

static bool cl_isalpha(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static inline void cl_seen(const struct classify_db *db, struct cl_scratch *x, uint32_t st,
                           const char *body, size_t blen, size_t pos)
{
	for (uint32_t t = db->outs[st]; t; t = db->dict[t]) {
		uint32_t l = db->out_lit[t];
		uint64_t bit = UINT64_C(1) << (l % 64);
		int32_t li;

		if (db->lits[l].word && !(x->whit[l / 64] & bit)) {
			size_t start = pos + 1 - db->lits[l].len;

			if ((start == 0 || !cl_isalpha(body[start - 1])) &&
			    (pos + 1 == blen || !cl_isalpha(body[pos + 1])))
				x->whit[l / 64] |= bit;
		}
		/* lanes run side by side: a list's earliest position may come late */
		li = db->lits[l].list;
		if (li >= 0) {
			if (!(x->lhit[li / 64] & (UINT64_C(1) << (li % 64)))) {
				x->lhit[li / 64] |= UINT64_C(1) << (li % 64);
				x->lpos[li] = (uint32_t)pos;
				x->any_list = true;
			} else if (pos < x->lpos[li]) {
				x->lpos[li] = (uint32_t)pos;
			}
		}
		if (x->hit[l / 64] & bit)
			continue;
		x->hit[l / 64] |= bit;
		for (uint32_t k = db->trig_first[l]; k < db->trig_first[l + 1]; k++)
			x->cand[db->trig_rules[k] / 64] |= UINT64_C(1) << (db->trig_rules[k] % 64);
	}
}

/* One step of the 16-bit automaton on byte i, in state variable sv. */
#define CL_STEP16(sv, i)                                                                           \
	do {                                                                                       \
		size_t i_ = (i);                                                                   \
		uint16_t to_ = d16[(size_t)(sv)*nc + cmap[b[i_]]];                                 \
                                                                                                   \
		(sv) = to_ & (CL_FLAG16 - 1);                                                      \
		if (to_ & CL_FLAG16)                                                               \
			cl_seen(db, x, (sv), body, blen, i_);                                      \
	} while (0)

/*
 * One pass of the automaton over body.  A long text is cut into 2 or 4
 * lanes walked side by side (the table lookups of one lane do not wait for
 * another's), each lane starting maxlit - 1 bytes before its part so that
 * no occurrence is missed; an occurrence seen twice is harmless.
 */
static void cl_scan(const struct classify_db *db, struct cl_scratch *x, const char *body,
                    size_t blen)
{
	size_t ov = db->maxlit > 0 ? db->maxlit - 1 : 0;
	size_t nl, p[CL_LANES], e[CL_LANES], step, nc = db->nclass;
	const uint8_t *cmap = db->cmap;
	const uint16_t *d16 = db->delta16;
	const unsigned char *b = (const unsigned char *)body;

	if (db->delta32) {
		uint32_t st = 0;

		for (size_t i = 0; i < blen; i++) {
			uint32_t to = db->delta32[(size_t)st * nc + cmap[b[i]]];

			st = to & (CL_FLAG32 - 1);
			if (to & CL_FLAG32)
				cl_seen(db, x, st, body, blen, i);
		}
		return;
	}
	nl = blen >= 8 * ov + 128 ? 4 : blen >= 3 * ov + 64 ? 2 : 1;
	for (size_t k = 0; k < nl; k++) {
		size_t a = blen * k / nl;

		p[k] = a > ov ? a - ov : 0;
		e[k] = blen * (k + 1) / nl;
	}
	step = e[0] - p[0];
	for (size_t k = 1; k < nl; k++)
		if (e[k] - p[k] < step)
			step = e[k] - p[k];
	if (nl == 4) {
		uint32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;

		for (size_t j = 0; j < step; j++) {
			CL_STEP16(s0, p[0] + j);
			CL_STEP16(s1, p[1] + j);
			CL_STEP16(s2, p[2] + j);
			CL_STEP16(s3, p[3] + j);
		}
		for (size_t i = p[0] + step; i < e[0]; i++)
			CL_STEP16(s0, i);
		for (size_t i = p[1] + step; i < e[1]; i++)
			CL_STEP16(s1, i);
		for (size_t i = p[2] + step; i < e[2]; i++)
			CL_STEP16(s2, i);
		for (size_t i = p[3] + step; i < e[3]; i++)
			CL_STEP16(s3, i);
	} else if (nl == 2) {
		uint32_t s0 = 0, s1 = 0;

		for (size_t j = 0; j < step; j++) {
			CL_STEP16(s0, p[0] + j);
			CL_STEP16(s1, p[1] + j);
		}
		for (size_t i = p[0] + step; i < e[0]; i++)
			CL_STEP16(s0, i);
		for (size_t i = p[1] + step; i < e[1]; i++)
			CL_STEP16(s1, i);
	} else {
		uint32_t s0 = 0;

		for (size_t i = 0; i < blen; i++)
			CL_STEP16(s0, i);
	}
}

#undef CL_STEP16

static bool cl_anchor_match(const struct classify_db *db, uint32_t a, const char *body, size_t blen)
{
	static const char susp[] = "delivery temporarily suspended: ";
	const struct cl_anchor *an = &db->anchors[a];
	const char *lit = db->arena + an->off;

	if (blen >= sizeof(susp) - 1 && memcmp(body, susp, sizeof(susp) - 1) == 0) {
		body += sizeof(susp) - 1;
		blen -= sizeof(susp) - 1;
	}
	if (blen < an->len)
		return false;
	for (size_t i = 0; i < an->len; i++)
		if (cl_lower(body[i]) != lit[i])
			return false;
	return true;
}

static bool cl_rule_holds(const struct classify_db *db, const struct cl_rule *ru, bool perm,
                          const char *dsn, size_t dsn_len, const char *body, size_t blen,
                          struct cl_scratch *x)
{
	if (ru->status && ru->status != (perm ? CL_PERM : CL_TEMP))
		return false;
	if (ru->dsn_len && (dsn_len < ru->dsn_len || memcmp(dsn, ru->dsn, ru->dsn_len) != 0))
		return false;
	if (ru->list == CL_LIST_ANY && !x->any_list)
		return false;
	for (uint32_t j = 0; j < ru->nterms; j++) {
		const struct cl_term *te = &db->terms[ru->term0 + j];
		bool m;

		switch (te->kind) {
		case CL_T_LIT:
			m = (x->hit[te->id / 64] >> (te->id % 64)) & 1;
			break;
		case CL_T_WORD:
			m = (x->whit[te->id / 64] >> (te->id % 64)) & 1;
			break;
		case CL_T_ANCHOR:
			m = cl_anchor_match(db, te->id, body, blen);
			break;
		default:
			if (!x->copied) {
				/* lower-cased: the regexes were compiled lower-cased, without
				 * REG_ICASE */
				for (size_t i = 0; i < blen; i++)
					x->copy[i] = cl_lower(body[i]);
				x->copy[blen] = '\0';
				x->copied = true;
			}
			m = regexec(&db->res[te->id], x->copy, 0, NULL, 0) == 0;
			break;
		}
		if (m == te->neg)
			return false;
	}
	return true;
}

/* The rules on the text the remote (or Postfix) wrote. */
static void cl_classify(const struct classify_db *db, bool perm, const char *dsn, size_t dsn_len,
                        const char *body, size_t blen, struct classify_result *r)
{
	struct cl_scratch x;
	size_t nwords, nlwords, nrw;
	const struct cl_rule *match = NULL;

	r->cls = perm ? CLASSIFY_OTHER_PERMANENT : CLASSIFY_OTHER_TEMPORARY;
	if (!db)
		return;
	if (!body)
		blen = 0;
	if (blen > CLASSIFY_MAX_TEXT)
		blen = CLASSIFY_MAX_TEXT;
	if (!dsn)
		dsn_len = 0;
	nwords = (db->nlits + 63) / 64;
	nlwords = (db->nlists + 63) / 64;
	nrw = (db->nrules + 63) / 64;
	memset(x.hit, 0, nwords * sizeof(x.hit[0]));
	memset(x.whit, 0, nwords * sizeof(x.whit[0]));
	memset(x.lhit, 0, nlwords * sizeof(x.lhit[0]));
	memcpy(x.cand, db->always, nrw * sizeof(x.cand[0]));
	x.any_list = false;
	x.copied = false;

	cl_scan(db, &x, body, blen);
	/* the candidate rules, in file order */
	for (size_t w = 0; w < nrw && !match; w++) {
		uint64_t bits = x.cand[w];

		while (bits && !match) {
			size_t k = w * 64 + (size_t)__builtin_ctzll(bits);

			bits &= bits - 1;
			if (cl_rule_holds(db, &db->rules[k], perm, dsn, dsn_len, body, blen, &x))
				match = &db->rules[k];
		}
	}
	if (!match)
		return;
	r->cls = match->cls == CL_OTHER
	             ? (perm ? CLASSIFY_OTHER_PERMANENT : CLASSIFY_OTHER_TEMPORARY)
	             : (enum classify_class)match->cls;
	r->source = db->srcnames[match->src];
	r->line = match->line;
	if (match->list >= 0) {
		r->list = db->lists[match->list].name;
	} else if (match->list == CL_LIST_AUTO || match->list == CL_LIST_ANY) {
		uint32_t best = UINT32_MAX;

		for (size_t li = 0; li < db->nlists; li++)
			if ((x.lhit[li / 64] >> (li % 64)) & 1 && x.lpos[li] < best) {
				best = x.lpos[li];
				r->list = db->lists[li].name;
			}
	}
	if (r->cls == CLASSIFY_BLOCKLIST_IP || r->cls == CLASSIFY_BLOCKLIST_DOMAIN ||
	    r->cls == CLASSIFY_REPUTATION)
		classify_find_ip(body, blen, &r->ip);
}

/* The text the rules see: the remote reply, or Postfix's own text whole. */
static void cl_body(const char *text, size_t len, const struct maillog_reason *rs,
                    const char **body, size_t *blen)
{
	if (rs->kind == MAILLOG_R_SAID || rs->kind == MAILLOG_R_REFUSED) {
		*body = rs->text.p;
		*blen = rs->text.len;
	} else {
		*body = text;
		*blen = text ? len : 0;
	}
}

void classify_reply(const struct classify_db *db, enum maillog_status status, const char *dsn,
                    size_t dsn_len, const char *text, size_t len, struct classify_result *r)
{
	struct maillog_reason rs;
	const char *body;
	size_t blen;

	memset(r, 0, sizeof(*r));
	if (cl_delivered(status)) {
		r->cls = CLASSIFY_DELIVERED;
		return;
	}
	if (!dsn)
		dsn_len = 0;
	if (!text)
		len = 0;
	maillog_reason_parse(text, len, &rs);
	cl_body(text, len, &rs, &body, &blen);
	cl_classify(db, cl_status_perm(status, dsn, dsn_len), dsn, dsn_len, body, blen, r);
}

enum classify_class classify_line(const struct classify_db *db, const struct maillog_line *ln,
                                  struct classify_result *r)
{
	const char *body;
	size_t blen;

	memset(r, 0, sizeof(*r));
	if (ln->event == MAILLOG_EXPIRED) {
		r->cls = CLASSIFY_OTHER_PERMANENT;
	} else if (ln->event == MAILLOG_DELIVERY) {
		if (cl_delivered(ln->status)) {
			r->cls = CLASSIFY_DELIVERED;
			return r->cls;
		}
		cl_body(ln->reply.p, ln->reply.len, &ln->reason, &body, &blen);
		cl_classify(db, cl_status_perm(ln->status, ln->dsn.p, ln->dsn.len), ln->dsn.p,
		            ln->dsn.len, body, blen, r);
	}
	return r->cls;
}
