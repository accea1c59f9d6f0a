/*
 * proto/maillog.c - the Postfix log line parser (see maillog.h).
 *
 * Owns: the prefix parser (three timestamp forms, host, tag, pid), the
 * queue id check, the dispatch on the first bytes after `QID: ` and one
 * small parser per record kind (delivery, qmgr, client, pickup, bounce
 * notification, smtpd/postscreen/cleanup actions), the split of a delivery
 * reason (`host H[A] said: ... (in reply to ...)` and Postfix's own texts),
 * and the unquoting of external-form addresses.
 *
 * Entry points: maillog_opts_default(), maillog_parse(),
 * maillog_reason_parse(), maillog_queue_id_valid(), maillog_addr_unquote(),
 * maillog_status_permanent(), maillog_event_name(), maillog_status_name(),
 * maillog_error_str().
 *
 * Limits: every scan is bounded by the end of the line (which is itself
 * bounded by max_line); one pass per field, no backtracking beyond the
 * search for the last `(in reply to ` and the action attributes.  Numbers
 * that overflow make the record malformed.  No I/O, no globals, no
 * allocation.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 /* memmem */
#endif
#include "proto/maillog.h"

#include <string.h>

#define ML_LEN(s) (sizeof(s) - 1)

static bool ml_starts(const char *p, const char *e, const char *lit, size_t n)
{
	return (size_t)(e - p) >= n && memcmp(p, lit, n) == 0;
}

/* Match lit at *p and advance past it. */
static bool ml_eat(const char **p, const char *e, const char *lit, size_t n)
{
	if (!ml_starts(*p, e, lit, n))
		return false;
	*p += n;
	return true;
}

#define ML_STARTS(p, e, s) ml_starts(p, e, s, ML_LEN(s))
#define ML_EAT(pp, e, s)   ml_eat(pp, e, s, ML_LEN(s))

static const char *ml_find(const char *p, const char *e, const char *needle, size_t n)
{
	if (p >= e)
		return NULL;
	return memmem(p, (size_t)(e - p), needle, n);
}

#define ML_FIND(p, e, s) ml_find(p, e, s, ML_LEN(s))

/* The next ", " in [p, e) (cheaper than memmem for the field separator). */
static const char *ml_find_sep(const char *p, const char *e)
{
	while (p < e) {
		const char *c = memchr(p, ',', (size_t)(e - p));

		if (!c || c + 1 >= e)
			return NULL;
		if (c[1] == ' ')
			return c;
		p = c + 1;
	}
	return NULL;
}

/* The last occurrence of needle (n >= 1) in [p, e), searched from the end. */
static const char *ml_rfind(const char *p, const char *e, const char *needle, size_t n)
{
	const char *q;

	if ((size_t)(e - p) < n)
		return NULL;
	for (q = e - n;; q--) {
		if (*q == needle[0] && memcmp(q, needle, n) == 0)
			return q;
		if (q == p)
			return NULL;
	}
}

static void ml_set(struct maillog_str *s, const char *p, const char *e)
{
	s->p = p;
	s->len = (size_t)(e - p);
}

static bool ml_isdigit(char c)
{
	return c >= '0' && c <= '9';
}

/* Exactly n digits at p. */
static bool ml_num(const char *p, const char *e, size_t n, int *v)
{
	int x = 0;

	if ((size_t)(e - p) < n)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (!ml_isdigit(p[i]))
			return false;
		x = x * 10 + (p[i] - '0');
	}
	*v = x;
	return true;
}

/* 1..max digits as an unsigned number without overflow; advances *p. */
static bool ml_u64(const char **p, const char *e, uint64_t max, uint64_t *v)
{
	const char *q = *p;
	uint64_t x = 0;

	if (q >= e || !ml_isdigit(*q))
		return false;
	for (; q < e && ml_isdigit(*q); q++) {
		uint64_t d = (uint64_t)(*q - '0');

		if (x > (max - d) / 10)
			return false;
		x = x * 10 + d;
	}
	*p = q;
	*v = x;
	return true;
}

/* ---- time ---- */

static int64_t ml_days_from_civil(int64_t y, int m, int d)
{
	int64_t era, yoe, doy, doe;

	y -= m <= 2;
	era = (y >= 0 ? y : y - 399) / 400;
	yoe = y - era * 400;
	doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
	doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

static int64_t ml_year_of_days(int64_t z)
{
	int64_t era, doe, yoe, doy, mp;

	z += 719468;
	era = (z >= 0 ? z : z - 146096) / 146097;
	doe = z - era * 146097;
	yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	mp = (5 * doy + 2) / 153;
	return yoe + era * 400 + (mp >= 10);
}

static int64_t ml_floor_div(int64_t a, int64_t b)
{
	int64_t q = a / b;

	return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

static int ml_month(const char *p)
{
	static const char names[] = "JanFebMarAprMayJunJulAugSepOctNovDec";

	for (int i = 0; i < 12; i++)
		if (p[0] == names[3 * i] && p[1] == names[3 * i + 1] && p[2] == names[3 * i + 2])
			return i + 1;
	return 0;
}

/* HH:MM:SS */
static bool ml_hms(const char *p, const char *e, int *h, int *mi, int *s)
{
	return (size_t)(e - p) >= 8 && ml_num(p, e, 2, h) && p[2] == ':' &&
	       ml_num(p + 3, e, 2, mi) && p[5] == ':' && ml_num(p + 6, e, 2, s) && *h < 24 &&
	       *mi < 60 && *s <= 60;
}

/* Optional `.digits`: microseconds (more digits are read and dropped). */
static const char *ml_frac(const char *p, const char *e, uint32_t *usec)
{
	uint32_t u = 0, scale = 100000;

	if (p >= e || *p != '.' || p + 1 >= e || !ml_isdigit(p[1]))
		return p;
	for (p++; p < e && ml_isdigit(*p); p++) {
		u += (uint32_t)(*p - '0') * scale;
		scale /= 10;
	}
	*usec = u;
	return p;
}

/* RFC 3339: YYYY-MM-DDTHH:MM:SS[.f](Z|+hh:mm|+hhmm).  Returns the end or NULL. */
static const char *ml_time_rfc3339(const char *p, const char *e, struct maillog_line *out)
{
	int y, mo, d, h, mi, s, oh = 0, om = 0, sign = 0;
	uint32_t usec = 0;

	if (!ml_num(p, e, 4, &y) || (size_t)(e - p) < 19 || p[4] != '-' ||
	    !ml_num(p + 5, e, 2, &mo) || p[7] != '-' || !ml_num(p + 8, e, 2, &d) ||
	    (p[10] != 'T' && p[10] != 't') || !ml_hms(p + 11, e, &h, &mi, &s))
		return NULL;
	if (mo < 1 || mo > 12 || d < 1 || d > 31)
		return NULL;
	p = ml_frac(p + 19, e, &usec);
	if (p < e && (*p == 'Z' || *p == 'z')) {
		p++;
	} else if (p < e && (*p == '+' || *p == '-')) {
		sign = *p == '-' ? -1 : 1;
		if (!ml_num(p + 1, e, 2, &oh))
			return NULL;
		p += 3;
		if (p < e && *p == ':')
			p++;
		if (!ml_num(p, e, 2, &om) || oh > 23 || om > 59)
			return NULL;
		p += 2;
	} else {
		return NULL;
	}
	out->time = ml_days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s -
	            sign * (oh * 3600 + om * 60);
	out->usec = usec;
	out->has_time = true;
	return p;
}

/* `Mmm dd HH:MM:SS` with the day space- or zero-padded (or one digit). */
static const char *ml_time_syslog(const char *p, const char *e, const struct maillog_opts *o,
                                  struct maillog_line *out)
{
	int mo, d, h, mi, s;
	uint32_t usec = 0;

	if (e - p < 14 || (mo = ml_month(p)) == 0 || p[3] != ' ')
		return NULL;
	p += 4;
	if (*p == ' ')
		p++;
	if (p + 1 < e && ml_isdigit(p[0]) && ml_isdigit(p[1])) {
		d = (p[0] - '0') * 10 + (p[1] - '0');
		p += 2;
	} else if (p < e && ml_isdigit(p[0])) {
		d = p[0] - '0';
		p++;
	} else {
		return NULL;
	}
	if (d < 1 || d > 31 || p >= e || *p++ != ' ' || !ml_hms(p, e, &h, &mi, &s))
		return NULL;
	p = ml_frac(p + 8, e, &usec);
	if (o->ref_time != 0) {
		int64_t ref_local = o->ref_time + o->utc_offset;
		int64_t y = ml_year_of_days(ml_floor_div(ref_local, 86400));
		int64_t sod = h * 3600 + mi * 60 + s;
		int64_t t = ml_days_from_civil(y, mo, d) * 86400 + sod - o->utc_offset;

		if (t > o->ref_time + 7 * 86400)
			t = ml_days_from_civil(y - 1, mo, d) * 86400 + sod - o->utc_offset;
		out->time = t;
		out->usec = usec;
		out->has_time = true;
	}
	return p;
}

/* ---- queue ids ---- */

/* Digits and the consonants of both cases: the base-52 alphabet. */
static bool ml_b52(char c)
{
	if (ml_isdigit(c))
		return true;
	if (c >= 'a' && c <= 'z')
		c = (char)(c - 'a' + 'A');
	else if (c < 'A' || c > 'Z')
		return false;
	return c != 'A' && c != 'E' && c != 'I' && c != 'O' && c != 'U';
}

bool maillog_queue_id_valid(const char *s, size_t len)
{
	size_t i, lastz = (size_t)-1;
	bool hex = true, b52 = true;

	if (len == 7 && memcmp(s, "NOQUEUE", 7) == 0)
		return true;
	if (len < 6 || len > MAILLOG_MAX_QUEUE_ID)
		return false;
	/* the common case: a short (hex) id */
	for (i = 0; i < len && (ml_isdigit(s[i]) || (s[i] >= 'A' && s[i] <= 'F')); i++)
		;
	if (i == len)
		return true;
	for (i = 0; i < len; i++) {
		char c = s[i];

		if (!(ml_isdigit(c) || (c >= 'A' && c <= 'F')))
			hex = false;
		if (!ml_b52(c))
			b52 = false;
		if (!hex && !b52)
			return false;
		if (c == 'z')
			lastz = i;
	}
	if (hex)
		return true;
	/* long: >= 10 base-52 chars, the last 'z', then >= 1 base-51 chars */
	return lastz != (size_t)-1 && lastz >= 10 && lastz + 1 < len;
}

/* ---- addresses ---- */

size_t maillog_addr_unquote(const char *ext, size_t len, char *out, size_t outsz)
{
	size_t n = 0, at_src = (size_t)-1, at_dst = 0, i = 0;
	bool q = false;

	if (outsz < len + 1)
		return (size_t)-1;
	/* A source route `@a,@b:` is kept as is. */
	if (len > 0 && ext[0] == '@') {
		const char *colon = memchr(ext, ':', len);

		if (colon) {
			i = (size_t)(colon - ext) + 1;
			memcpy(out, ext, i);
			n = i;
		}
	}
	for (; i < len; i++) {
		char c = ext[i];

		if (!q && c == '@') {
			at_src = i;
			at_dst = n;
		}
		if (c == '"') {
			q = !q;
			continue;
		}
		if (c == '\\' && i + 1 < len)
			c = ext[++i];
		out[n++] = c;
	}
	/* The domain (after the last unquoted '@') is copied verbatim. */
	if (at_src != (size_t)-1) {
		n = at_dst;
		memcpy(out + n, ext + at_src, len - at_src);
		n += len - at_src;
	}
	out[n] = '\0';
	return n;
}

/* Set the internal form of an address from its external form. */
static void ml_addr(struct maillog_line *out, const struct maillog_str *ext,
                    struct maillog_str *internal)
{
	size_t room = sizeof(out->scratch) - out->scratch_used, n;

	*internal = *ext;
	if (!ext->p || (!memchr(ext->p, '"', ext->len) && !memchr(ext->p, '\\', ext->len)))
		return;
	n = maillog_addr_unquote(ext->p, ext->len, out->scratch + out->scratch_used, room);
	if (n == (size_t)-1)
		return; /* does not fit: keep the logged form */
	internal->p = out->scratch + out->scratch_used;
	internal->len = n;
	out->scratch_used += n + 1;
}

/*
 * p at '<': the address up to the matching '>' (a '>' inside a quoted local
 * part does not count; without a match outside quotes, the first '>').
 * Returns the byte after '>' or NULL.
 */
static const char *ml_angle(const char *p, const char *e, struct maillog_str *v)
{
	const char *s, *q;
	bool quoted = false;

	if (p >= e || *p != '<')
		return NULL;
	s = ++p;
	for (q = s; q < e; q++) {
		if (quoted) {
			if (*q == '\\' && q + 1 < e)
				q++;
			else if (*q == '"')
				quoted = false;
		} else if (*q == '"') {
			quoted = true;
		} else if (*q == '>') {
			ml_set(v, s, q);
			return q + 1;
		}
	}
	q = memchr(s, '>', (size_t)(e - s));
	if (!q)
		return NULL;
	ml_set(v, s, q);
	return q + 1;
}

/* NAME[ADDR] at p (NAME may be empty); returns the byte after ']' or NULL. */
static const char *ml_name_addr(const char *p, const char *e, struct maillog_str *name,
                                struct maillog_str *addr)
{
	const char *lb, *rb;

	for (lb = p; lb < e && *lb != '[' && *lb != ' '; lb++)
		;
	if (lb >= e || *lb != '[')
		return NULL;
	rb = memchr(lb + 1, ']', (size_t)(e - lb - 1));
	if (!rb)
		return NULL;
	ml_set(name, p, lb);
	ml_set(addr, lb + 1, rb);
	return rb + 1;
}

/* `:digits` at p: the port. */
static const char *ml_port(const char *p, const char *e, struct maillog_str *port)
{
	const char *q = p + 1;

	if (p >= e || *p != ':' || q >= e || !ml_isdigit(*q))
		return p;
	while (q < e && ml_isdigit(*q))
		q++;
	ml_set(port, p + 1, q);
	return q;
}

/* ---- delivery reason ---- */

void maillog_reason_parse(const char *text, size_t len, struct maillog_reason *r)
{
	const char *p = text, *e, *q;

	memset(r, 0, sizeof(*r));
	if (!text || len == 0)
		return;
	e = text + len;
	if (ML_EAT(&p, e, "delivery temporarily suspended: "))
		r->suspended = true;
	r->kind = MAILLOG_R_LOCAL;
	ml_set(&r->text, p, e);
	if (ML_STARTS(p, e, "host ")) {
		q = ml_name_addr(p + 5, e, &r->host, &r->addr);
		if (!q)
			goto local;
		if (ML_EAT(&q, e, " said: ")) {
			const char *irt =
			    ml_rfind(q, e, " (in reply to ", ML_LEN(" (in reply to "));

			r->kind = MAILLOG_R_SAID;
			ml_set(&r->text, q, e);
			if (irt && e[-1] == ')' && irt + ML_LEN(" (in reply to ") < e - 1) {
				ml_set(&r->text, q, irt);
				ml_set(&r->cmd, irt + ML_LEN(" (in reply to "), e - 1);
			}
			return;
		}
		if (ML_EAT(&q, e, " refused to talk to me: ")) {
			r->kind = MAILLOG_R_REFUSED;
			ml_set(&r->text, q, e);
			return;
		}
		goto local;
	}
	if (ML_STARTS(p, e, "connect to ")) {
		q = ml_name_addr(p + ML_LEN("connect to "), e, &r->host, &r->addr);
		if (!q)
			goto local;
		q = ml_port(q, e, &r->port);
		if (!ML_EAT(&q, e, ": "))
			goto local;
		r->kind = MAILLOG_R_CONNECT;
		ml_set(&r->text, q, e);
		return;
	}
	if (ML_STARTS(p, e, "lost connection with ")) {
		q = ml_name_addr(p + ML_LEN("lost connection with "), e, &r->host, &r->addr);
		if (!q || !ML_EAT(&q, e, " while "))
			goto local;
		r->kind = MAILLOG_R_LOST;
		ml_set(&r->text, q, e);
		return;
	}
	if (ML_STARTS(p, e, "conversation with ")) {
		q = ml_name_addr(p + ML_LEN("conversation with "), e, &r->host, &r->addr);
		if (!q || !ML_EAT(&q, e, " timed out while "))
			goto local;
		r->kind = MAILLOG_R_TIMEOUT;
		ml_set(&r->text, q, e);
		return;
	}
	return;
local:
	memset(&r->host, 0, sizeof(r->host));
	memset(&r->addr, 0, sizeof(r->addr));
	memset(&r->port, 0, sizeof(r->port));
	r->kind = MAILLOG_R_LOCAL;
	ml_set(&r->text, p, e);
}

/* ---- records ---- */

static enum maillog_status ml_status(const char *p, size_t n)
{
	static const struct {
		const char *w;
		size_t n;
		enum maillog_status st;
	} tab[] = {
	    {"sent", 4, MAILLOG_ST_SENT},
	    {"deferred", 8, MAILLOG_ST_DEFERRED},
	    {"bounced", 7, MAILLOG_ST_BOUNCED},
	    {"SOFTBOUNCE", 10, MAILLOG_ST_SOFTBOUNCE},
	    {"undeliverable", 13, MAILLOG_ST_UNDELIVERABLE},
	    {"deliverable", 11, MAILLOG_ST_DELIVERABLE},
	    {"expanded", 8, MAILLOG_ST_EXPANDED},
	    {"delivered", 9, MAILLOG_ST_DELIVERED},
	    {"expired", 7, MAILLOG_ST_EXPIRED},
	    {"force-expired", 13, MAILLOG_ST_FORCE_EXPIRED},
	};

	for (size_t i = 0; i < sizeof(tab) / sizeof(tab[0]); i++)
		if (tab[i].n == n && tab[i].w[0] == p[0] && memcmp(tab[i].w, p, n) == 0)
			return tab[i].st;
	return MAILLOG_ST_OTHER;
}

static void ml_relay(struct maillog_line *out)
{
	const char *p = out->relay.p, *e = p + out->relay.len, *q;

	if (out->relay.len == 4 && memcmp(p, "none", 4) == 0) {
		out->relay_none = true;
		out->relay_host = out->relay;
		return;
	}
	q = ml_name_addr(p, e, &out->relay_host, &out->relay_addr);
	if (!q) {
		out->relay_host = out->relay;
		return;
	}
	ml_port(q, e, &out->relay_port);
}

/* `to=<R>, [orig_to=<O>, ]relay=R, ..., status=S (reason)` */
static enum maillog_event ml_delivery(const char *p, const char *e, struct maillog_line *out)
{
	const char *q;

	out->err = MAILLOG_E_DELIVERY;
	p = ml_angle(p + 3, e, &out->to_ext);
	if (!p)
		return MAILLOG_GARBAGE;
	ml_addr(out, &out->to_ext, &out->to);
	for (;;) {
		const char *name, *eq, *vend;

		if (!ML_EAT(&p, e, ", "))
			return MAILLOG_GARBAGE; /* ended without status= */
		name = p;
		for (eq = p; eq < e && ((*eq >= 'a' && *eq <= 'z') || *eq == '_'); eq++)
			;
		if (eq >= e || *eq != '=' || eq == name)
			return MAILLOG_GARBAGE;
		p = eq + 1;
		if (eq - name == 6 && memcmp(name, "status", 6) == 0)
			break;
		if (eq - name == 7 && memcmp(name, "orig_to", 7) == 0 && p < e && *p == '<') {
			p = ml_angle(p, e, &out->orig_to_ext);
			if (!p)
				return MAILLOG_GARBAGE;
			ml_addr(out, &out->orig_to_ext, &out->orig_to);
			continue;
		}
		vend = ml_find_sep(p, e);
		if (!vend)
			vend = e;
		switch (eq - name) {
		case 3:
			if (memcmp(name, "dsn", 3) == 0)
				ml_set(&out->dsn, p, vend);
			else if (memcmp(name, "tls", 3) == 0)
				ml_set(&out->tls, p, vend);
			break;
		case 5:
			if (memcmp(name, "relay", 5) == 0) {
				ml_set(&out->relay, p, vend);
				ml_relay(out);
			} else if (memcmp(name, "delay", 5) == 0) {
				ml_set(&out->delay, p, vend);
			}
			break;
		case 6:
			if (memcmp(name, "delays", 6) == 0)
				ml_set(&out->delays, p, vend);
			break;
		case 8:
			if (memcmp(name, "conn_use", 8) == 0) {
				uint64_t v;
				const char *np = p;

				if (!ml_u64(&np, vend, UINT32_MAX, &v) || np != vend)
					return MAILLOG_GARBAGE;
				out->conn_use = (uint32_t)v;
			}
			break;
		default:
			break; /* unknown name=value: tolerated */
		}
		p = vend;
	}
	/* status=WORD (reason) */
	for (q = p; q < e && *q != ' '; q++)
		;
	if (q == p)
		return MAILLOG_GARBAGE;
	ml_set(&out->status_str, p, q);
	out->status = ml_status(p, (size_t)(q - p));
	if (q < e) {
		if (!ML_EAT(&q, e, " ("))
			return MAILLOG_GARBAGE;
		if (e > q && e[-1] == ')') {
			ml_set(&out->reply, q, e - 1);
		} else {
			ml_set(&out->reply, q, e);
			out->reason.truncated = true;
		}
	}
	{
		bool trunc = out->reason.truncated;

		maillog_reason_parse(out->reply.p, out->reply.len, &out->reason);
		out->reason.truncated = trunc;
	}
	out->err = MAILLOG_E_NONE;
	return MAILLOG_DELIVERY;
}

/* qmgr: `from=<S>, size=N, nrcpt=K (queue Q)` or `from=<S>, status=expired, returned to sender` */
static enum maillog_event ml_qmgr(const char *p, const char *e, struct maillog_line *out)
{
	uint64_t v;

	out->err = MAILLOG_E_QMGR;
	p = ml_angle(p + 5, e, &out->from_ext);
	if (!p)
		return MAILLOG_GARBAGE;
	ml_addr(out, &out->from_ext, &out->from);
	if (ML_EAT(&p, e, ", size=")) {
		if (!ml_u64(&p, e, UINT64_MAX, &v))
			return MAILLOG_GARBAGE;
		out->size = v;
		if (!ML_EAT(&p, e, ", nrcpt=") || !ml_u64(&p, e, UINT32_MAX, &v))
			return MAILLOG_GARBAGE;
		out->nrcpt = (uint32_t)v;
		if (ML_EAT(&p, e, " (queue ")) {
			const char *rp = memchr(p, ')', (size_t)(e - p));

			if (!rp)
				return MAILLOG_GARBAGE;
			ml_set(&out->queue_name, p, rp);
		}
		out->err = MAILLOG_E_NONE;
		return MAILLOG_QUEUED;
	}
	if (ML_EAT(&p, e, ", status=")) {
		const char *c = ML_FIND(p, e, ", returned to sender");

		if (!c)
			return MAILLOG_GARBAGE;
		ml_set(&out->status_str, p, c);
		out->status = ml_status(p, (size_t)(c - p));
		if (out->status != MAILLOG_ST_EXPIRED && out->status != MAILLOG_ST_FORCE_EXPIRED)
			return MAILLOG_GARBAGE;
		out->err = MAILLOG_E_NONE;
		return MAILLOG_EXPIRED;
	}
	return MAILLOG_GARBAGE;
}

/* Where the value that starts at p ends: at the next `, KEY=` of keys, or e. */
static const char *ml_value_end(const char *p, const char *e, const char *const *keys)
{
	const char *c = p;

	while ((c = ml_find_sep(c, e)) != NULL) {
		for (size_t i = 0; keys[i]; i++) {
			size_t n = strlen(keys[i]);

			if (ml_starts(c + 2, e, keys[i], n) && c + 2 + n < e && c[2 + n] == '=')
				return c;
		}
		c += 2;
	}
	return e;
}

/* smtpd: `client=NAME[ADDR][:PORT][, sasl_method=M][, sasl_username=U]...` */
static enum maillog_event ml_client(const char *p, const char *e, struct maillog_line *out)
{
	static const char *const keys[] = {"sasl_method",   "sasl_username", "sasl_sender",
	                                   "orig_queue_id", "orig_client",   NULL};
	struct maillog_str *dst[] = {&out->sasl_method, &out->sasl_username, &out->sasl_sender,
	                             &out->orig_queue_id, &out->orig_client};

	out->err = MAILLOG_E_CLIENT;
	p = ml_name_addr(p + ML_LEN("client="), e, &out->client_name, &out->client_addr);
	if (!p)
		return MAILLOG_GARBAGE;
	p = ml_port(p, e, &out->client_port);
	while (p < e) {
		const char *vend;
		size_t i;

		if (!ML_EAT(&p, e, ", "))
			return MAILLOG_GARBAGE;
		for (i = 0; keys[i]; i++) {
			size_t n = strlen(keys[i]);

			if (ml_starts(p, e, keys[i], n) && p + n < e && p[n] == '=') {
				p += n + 1;
				break;
			}
		}
		vend = ml_value_end(p, e, keys);
		if (keys[i])
			ml_set(dst[i], p, vend);
		p = vend;
	}
	out->err = MAILLOG_E_NONE;
	return MAILLOG_CLIENT;
}

/* pickup: `uid=N from=<S>[ orig_id=Q]` */
static enum maillog_event ml_pickup(const char *p, const char *e, struct maillog_line *out)
{
	const char *q;

	out->err = MAILLOG_E_PICKUP;
	p += ML_LEN("uid=");
	for (q = p; q < e && ml_isdigit(*q); q++)
		;
	if (q == p)
		return MAILLOG_GARBAGE;
	ml_set(&out->uid, p, q);
	p = q;
	if (!ML_EAT(&p, e, " from=") || !(p = ml_angle(p, e, &out->from_ext)))
		return MAILLOG_GARBAGE;
	ml_addr(out, &out->from_ext, &out->from);
	if (ML_EAT(&p, e, " orig_id=")) {
		for (q = p; q < e && *q != ' ' && *q != ','; q++)
			;
		if (!maillog_queue_id_valid(p, (size_t)(q - p)))
			return MAILLOG_GARBAGE;
		ml_set(&out->orig_id, p, q);
	}
	out->err = MAILLOG_E_NONE;
	return MAILLOG_PICKUP;
}

/* bounce/defer/trace: `sender non-delivery notification: NQID` and kin */
static enum maillog_event ml_notification(const char *p, const char *e, const char *c,
                                          struct maillog_line *out)
{
	const char *q = c + ML_LEN(" notification: ");

	ml_set(&out->notice, p, c + ML_LEN(" notification"));
	if (!maillog_queue_id_valid(q, (size_t)(e - q))) {
		out->err = MAILLOG_E_NOTIFICATION;
		return MAILLOG_GARBAGE;
	}
	ml_set(&out->new_queue_id, q, e);
	return MAILLOG_NOTIFICATION;
}

static bool ml_action_word(const char *p, size_t n)
{
	static const char *const words[] = {
	    "reject",      "reject_warning", "hold",           "discard", "filter",
	    "redirect",    "warning",        "warn",           "info",    "bcc",
	    "prepend",     "replace",        "strip",          "defer",   "milter-reject",
	    "milter-hold", "milter-discard", "milter-replace", NULL};

	for (size_t i = 0; words[i]; i++)
		if (strlen(words[i]) == n && memcmp(words[i], p, n) == 0)
			return true;
	return false;
}

/* The `; from=<..> to=<..> proto=.. helo=<..>[ sasl_...]` attributes at p. */
static const char *ml_action_attrs(const char *p, const char *e, struct maillog_line *out)
{
	static const struct {
		const char *key;
		size_t off;
		bool angle;
	} keys[] = {
	    {"from=", offsetof(struct maillog_line, from_ext), true},
	    {"to=", offsetof(struct maillog_line, to_ext), true},
	    {"proto=", offsetof(struct maillog_line, proto), false},
	    {"helo=", offsetof(struct maillog_line, helo), true},
	    {"sasl_method=", offsetof(struct maillog_line, sasl_method), false},
	    {"sasl_username=", offsetof(struct maillog_line, sasl_username), false},
	    {"sasl_sender=", offsetof(struct maillog_line, sasl_sender), false},
	};

	p++; /* ';' */
	for (;;) {
		const char *s = p;
		size_t i, n = 0;

		while (p < e && (*p == ' ' || *p == ','))
			p++;
		for (i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
			n = strlen(keys[i].key);
			if (ml_starts(p, e, keys[i].key, n))
				break;
		}
		if (i == sizeof(keys) / sizeof(keys[0]))
			return s;
		{
			struct maillog_str *dst =
			    (struct maillog_str *)(void *)((char *)out + keys[i].off);
			const char *v = p + n, *q;

			if (keys[i].angle) {
				q = ml_angle(v, e, dst);
				if (!q)
					return s;
			} else {
				for (q = v; q < e && *q != ' ' && *q != ','; q++)
					;
				ml_set(dst, v, q);
			}
			p = q;
		}
	}
}

/*
 * `ACTION: STAGE from NAME[ADDR][:PORT]: TEXT; from=<..> ...` (smtpd, postscreen, milter)
 * `ACTION: header|body TEXT from NAME[ADDR]; from=<..> ...: TEXT` (cleanup)
 */
static enum maillog_event ml_action(const char *p, const char *e, const char *colon,
                                    struct maillog_line *out)
{
	static const char *const tails[] = {"; from=<", "; to=<", "; proto=", "; helo=<"};
	const char *tail = NULL, *head_end, *q;

	ml_set(&out->action, p, colon);
	p = colon + 2;
	for (size_t i = 0; i < sizeof(tails) / sizeof(tails[0]) && !tail; i++)
		tail = ml_rfind(p, e, tails[i], strlen(tails[i]));
	head_end = tail ? tail : e;
	out->err = MAILLOG_E_ACTION;
	if (ML_STARTS(p, e, "header ") || ML_STARTS(p, e, "body ")) {
		const char *fr = ml_rfind(p, head_end, " from ", ML_LEN(" from "));

		ml_set(&out->stage, p, memchr(p, ' ', (size_t)(e - p)));
		if (fr) {
			q = ml_name_addr(fr + ML_LEN(" from "), head_end, &out->client_name,
			                 &out->client_addr);
			if (q)
				ml_port(q, head_end, &out->client_port);
		}
	} else {
		const char *fr = ml_find(p, head_end, " from ", ML_LEN(" from "));

		if (!fr)
			return MAILLOG_GARBAGE;
		ml_set(&out->stage, p, fr);
		q = ml_name_addr(fr + ML_LEN(" from "), head_end, &out->client_name,
		                 &out->client_addr);
		if (!q)
			return MAILLOG_GARBAGE;
		q = ml_port(q, head_end, &out->client_port);
		if (ML_EAT(&q, head_end, ": "))
			ml_set(&out->action_text, q, head_end);
		else if (q != head_end)
			return MAILLOG_GARBAGE;
	}
	if (tail) {
		q = ml_action_attrs(tail, e, out);
		if (ML_EAT(&q, e, ": "))
			ml_set(&out->action_text, q, e);
		ml_addr(out, &out->from_ext, &out->from);
		ml_addr(out, &out->to_ext, &out->to);
	}
	out->err = MAILLOG_E_NONE;
	return MAILLOG_ACTION;
}

/* The message after `QID: ` */
static enum maillog_event ml_queue_record(const char *p, const char *e, struct maillog_line *out)
{
	const char *c;

	ml_set(&out->msg, p, e);
	if (p >= e)
		return MAILLOG_QUEUE_OTHER;
	switch (*p) {
	case 't':
		if (ML_STARTS(p, e, "to=<"))
			return ml_delivery(p, e, out);
		break;
	case 'f':
		if (ML_STARTS(p, e, "from=<"))
			return ml_qmgr(p, e, out);
		break;
	case 'c':
		if (ML_STARTS(p, e, "client="))
			return ml_client(p, e, out);
		if (e - p == 8 && memcmp(p, "canceled", 8) == 0)
			return MAILLOG_CANCELED;
		break;
	case 'u':
		if (ML_STARTS(p, e, "uid="))
			return ml_pickup(p, e, out);
		break;
	case 'm':
		if (ML_STARTS(p, e, "message-id=")) {
			ml_set(&out->message_id, p + ML_LEN("message-id="), e);
			return MAILLOG_MESSAGE_ID;
		}
		break;
	case 'r':
		if (ML_STARTS(p, e, "resent-message-id=")) {
			ml_set(&out->message_id, p + ML_LEN("resent-message-id="), e);
			out->resent = true;
			return MAILLOG_MESSAGE_ID;
		}
		if (e - p == 7 && memcmp(p, "removed", 7) == 0)
			return MAILLOG_REMOVED;
		if (e - p == 18 && memcmp(p, "released from hold", 18) == 0)
			return MAILLOG_RELEASED;
		if (e - p == 8 && memcmp(p, "requeued", 8) == 0)
			return MAILLOG_REQUEUED;
		break;
	case 'p':
		if (e - p == 14 && memcmp(p, "placed on hold", 14) == 0)
			return MAILLOG_HOLD;
		if (ML_STARTS(p, e, "postmaster ") &&
		    (c = ML_FIND(p, e, " notification: ")) != NULL)
			return ml_notification(p, e, c, out);
		break;
	case 's':
		if (ML_STARTS(p, e, "sender ") && (c = ML_FIND(p, e, " notification: ")) != NULL)
			return ml_notification(p, e, c, out);
		break;
	default:
		break;
	}
	/* `word: ` of an action? */
	for (c = p; c < e && ((*c >= 'a' && *c <= 'z') || *c == '_' || *c == '-'); c++)
		;
	if (c + 1 < e && c[0] == ':' && c[1] == ' ' && ml_action_word(p, (size_t)(c - p)))
		return ml_action(p, e, c, out);
	return MAILLOG_QUEUE_OTHER;
}

/* ---- the line ---- */

void maillog_opts_default(struct maillog_opts *o)
{
	o->max_line = MAILLOG_DEFAULT_MAX_LINE;
	o->ref_time = 0;
	o->utc_offset = 0;
}

static enum maillog_event ml_parse(const struct maillog_opts *o, const char *p, const char *e,
                                   struct maillog_line *out)
{
	const char *ts = p, *q, *slash = NULL;

	/* timestamp */
	if (e - p >= 4 && ml_isdigit(p[0]) && ml_isdigit(p[1]) && ml_isdigit(p[2]))
		q = ml_time_rfc3339(p, e, out);
	else
		q = ml_time_syslog(p, e, o, out);
	if (!q || q >= e || *q != ' ') {
		out->err = MAILLOG_E_TIMESTAMP;
		return MAILLOG_GARBAGE;
	}
	ml_set(&out->timestamp, ts, q);
	p = q + 1;
	/* host */
	out->err = MAILLOG_E_PREFIX;
	for (q = p; q < e && *q != ' '; q++)
		;
	if (q == p || q >= e)
		return MAILLOG_GARBAGE;
	ml_set(&out->host, p, q);
	p = q + 1;
	/* tag[pid]: */
	for (q = p; q < e && *q != '[' && *q != ':' && *q != ' '; q++)
		if (*q == '/')
			slash = q;
	if (q == p || q >= e || *q == ' ')
		return MAILLOG_GARBAGE;
	ml_set(&out->tag, p, q);
	if (slash) {
		ml_set(&out->syslog_name, p, slash);
		ml_set(&out->program, slash + 1, q);
	} else {
		out->program = out->tag;
	}
	p = q;
	if (*p == '[') {
		uint64_t pid;

		p++;
		if (!ml_u64(&p, e, UINT32_MAX, &pid) || p >= e || *p != ']')
			return MAILLOG_GARBAGE;
		out->has_pid = true;
		out->pid = (uint32_t)pid;
		p++;
	}
	if (p >= e || *p != ':')
		return MAILLOG_GARBAGE;
	p++;
	if (p < e && *p == ' ')
		p++;
	out->err = MAILLOG_E_NONE;
	ml_set(&out->msg, p, e);
	/* Only Postfix's tags have a '/' (syslog_name/program). */
	if (!slash || out->program.len == 0)
		return MAILLOG_OTHER;

	if (ML_EAT(&p, e, "warning: "))
		out->severity = MAILLOG_SEV_WARNING;
	else if (ML_EAT(&p, e, "error: "))
		out->severity = MAILLOG_SEV_ERROR;
	else if (ML_EAT(&p, e, "fatal: "))
		out->severity = MAILLOG_SEV_FATAL;
	else if (ML_EAT(&p, e, "panic: "))
		out->severity = MAILLOG_SEV_PANIC;
	if (out->severity != MAILLOG_SEV_INFO) {
		ml_set(&out->msg, p, e);
		return MAILLOG_DIAG;
	}
	/* QID: */
	for (q = p; q < e && q - p <= MAILLOG_MAX_QUEUE_ID &&
	            (ml_isdigit(*q) || (*q >= 'A' && *q <= 'Z') || (*q >= 'a' && *q <= 'z'));
	     q++)
		;
	if (q + 1 < e && q[0] == ':' && q[1] == ' ' && maillog_queue_id_valid(p, (size_t)(q - p))) {
		ml_set(&out->queue_id, p, q);
		out->noqueue = q - p == 7 && memcmp(p, "NOQUEUE", 7) == 0;
		return ml_queue_record(q + 2, e, out);
	}
	if (ML_STARTS(p, e, "connect from ") &&
	    ml_name_addr(p + ML_LEN("connect from "), e, &out->client_name, &out->client_addr))
		return MAILLOG_CONNECT;
	if (ML_STARTS(p, e, "disconnect from ") &&
	    ml_name_addr(p + ML_LEN("disconnect from "), e, &out->client_name, &out->client_addr))
		return MAILLOG_DISCONNECT;
	return MAILLOG_OTHER;
}

enum maillog_event maillog_parse(const struct maillog_opts *o, const char *line, size_t len,
                                 struct maillog_line *out)
{
	struct maillog_opts def;
	size_t max;

	if (!o) {
		maillog_opts_default(&def);
		o = &def;
	}
	memset(out, 0, offsetof(struct maillog_line, scratch));
	if (!line) {
		out->err = MAILLOG_E_TIMESTAMP;
		return out->event = MAILLOG_GARBAGE;
	}
	max = o->max_line ? o->max_line : MAILLOG_DEFAULT_MAX_LINE;
	if (len > 0 && line[len - 1] == '\n')
		len--;
	if (len > 0 && line[len - 1] == '\r')
		len--;
	if (len > max) {
		out->err = MAILLOG_E_TOO_LONG;
		out->event = MAILLOG_TOO_LONG;
		return out->event;
	}
	out->event = ml_parse(o, line, line + len, out);
	return out->event;
}

bool maillog_status_permanent(enum maillog_status st)
{
	return st == MAILLOG_ST_BOUNCED || st == MAILLOG_ST_UNDELIVERABLE ||
	       st == MAILLOG_ST_EXPIRED || st == MAILLOG_ST_FORCE_EXPIRED;
}

const char *maillog_event_name(enum maillog_event ev)
{
	static const char *const names[] = {
	    "garbage", "too_long",   "other",    "diag",     "connect",  "disconnect",   "client",
	    "pickup",  "message_id", "queued",   "expired",  "delivery", "notification", "action",
	    "removed", "hold",       "released", "requeued", "canceled", "queue_other"};

	_Static_assert(sizeof(names) / sizeof(names[0]) == MAILLOG_EVENT__COUNT,
	               "maillog_event_name table");
	return (unsigned)ev < MAILLOG_EVENT__COUNT ? names[ev] : "?";
}

const char *maillog_status_name(enum maillog_status st)
{
	static const char *const names[] = {
	    "",           "sent",          "bounced",       "deferred",
	    "softbounce", "undeliverable", "deliverable",   "expanded",
	    "delivered",  "expired",       "force-expired", "other"};

	return (unsigned)st < sizeof(names) / sizeof(names[0]) ? names[st] : "?";
}

const char *maillog_error_str(enum maillog_error err)
{
	switch (err) {
	case MAILLOG_E_NONE:
		return "no error";
	case MAILLOG_E_TOO_LONG:
		return "line too long";
	case MAILLOG_E_TIMESTAMP:
		return "no timestamp of a known form";
	case MAILLOG_E_PREFIX:
		return "no `host tag[pid]: ` after the timestamp";
	case MAILLOG_E_DELIVERY:
		return "malformed delivery record";
	case MAILLOG_E_QMGR:
		return "malformed qmgr from= record";
	case MAILLOG_E_CLIENT:
		return "malformed client= record";
	case MAILLOG_E_PICKUP:
		return "malformed pickup record";
	case MAILLOG_E_NOTIFICATION:
		return "malformed notification record";
	case MAILLOG_E_ACTION:
		return "malformed reject/hold record";
	}
	return "?";
}
