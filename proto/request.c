/*
 * proto/request.c - the Postfix SMTPD policy request parser (see request.h).
 *
 * Owns: the incremental search for the end of a request (an empty line),
 * the line splitter (`name=value`, split on the first '='), the attribute
 * name lookup (switch on length, then first byte, then one memcmp), and the
 * conversions of protocol_state, size and recipient_count.
 *
 * Entry points: proto_limits_default(), proto_parser_init(), proto_parse(),
 * proto_attr_lookup(), proto_error_str(), proto_state_name(),
 * proto_attr_name().
 *
 * Limits: a request is judged only once its end has been found within
 * max_request bytes; bytes already searched are never searched again
 * (p->scanned), so a request that arrives one byte at a time costs O(n).
 * When a read ends with an empty line (the usual case: Postfix writes a
 * request at once) the end is searched for and the lines are judged in the
 * same pass; otherwise the end is searched for first.  Judging is one
 * memchr for NUL plus one pass per line; the first malformed line (in line
 * order) decides the error.  NULs are written over the '=' and the line end
 * of each good line as it is judged (the end of the request is known to be
 * in the buffer by then).
 * No I/O, no globals, no allocation.
 */
#include "proto/request.h"

#include <string.h>

void proto_limits_default(struct proto_limits *lim)
{
	lim->max_request = PROTO_DEFAULT_MAX_REQUEST;
	lim->max_line = PROTO_DEFAULT_MAX_LINE;
	lim->max_attrs = PROTO_DEFAULT_MAX_ATTRS;
}

void proto_parser_init(struct proto_parser *p, const struct proto_limits *lim)
{
	if (lim)
		p->lim = *lim;
	else
		proto_limits_default(&p->lim);
	if (p->lim.max_attrs > PROTO_MAX_ATTRS_LIMIT)
		p->lim.max_attrs = PROTO_MAX_ATTRS_LIMIT;
	p->scanned = 0;
}

static const char *const proto_attr_names[PROTO_A__COUNT] = {
    [PROTO_A_REQUEST] = "request",
    [PROTO_A_PROTOCOL_STATE] = "protocol_state",
    [PROTO_A_PROTOCOL_NAME] = "protocol_name",
    [PROTO_A_HELO_NAME] = "helo_name",
    [PROTO_A_QUEUE_ID] = "queue_id",
    [PROTO_A_SENDER] = "sender",
    [PROTO_A_RECIPIENT] = "recipient",
    [PROTO_A_RECIPIENT_COUNT] = "recipient_count",
    [PROTO_A_CLIENT_ADDRESS] = "client_address",
    [PROTO_A_CLIENT_NAME] = "client_name",
    [PROTO_A_REVERSE_CLIENT_NAME] = "reverse_client_name",
    [PROTO_A_INSTANCE] = "instance",
    [PROTO_A_SASL_METHOD] = "sasl_method",
    [PROTO_A_SASL_USERNAME] = "sasl_username",
    [PROTO_A_SASL_SENDER] = "sasl_sender",
    [PROTO_A_SIZE] = "size",
    [PROTO_A_CCERT_SUBJECT] = "ccert_subject",
    [PROTO_A_CCERT_ISSUER] = "ccert_issuer",
    [PROTO_A_CCERT_FINGERPRINT] = "ccert_fingerprint",
    [PROTO_A_CCERT_PUBKEY_FINGERPRINT] = "ccert_pubkey_fingerprint",
    [PROTO_A_ENCRYPTION_PROTOCOL] = "encryption_protocol",
    [PROTO_A_ENCRYPTION_CIPHER] = "encryption_cipher",
    [PROTO_A_ENCRYPTION_KEYSIZE] = "encryption_keysize",
    [PROTO_A_ETRN_DOMAIN] = "etrn_domain",
    [PROTO_A_STRESS] = "stress",
    [PROTO_A_CLIENT_PORT] = "client_port",
    [PROTO_A_POLICY_CONTEXT] = "policy_context",
    [PROTO_A_SERVER_ADDRESS] = "server_address",
    [PROTO_A_SERVER_PORT] = "server_port",
    [PROTO_A_COMPATIBILITY_LEVEL] = "compatibility_level",
    [PROTO_A_MAIL_VERSION] = "mail_version",
    [PROTO_A_TLS_SNI] = "tls_sni",
};

const char *proto_attr_name(enum proto_attr a)
{
	if ((unsigned)a >= PROTO_A__COUNT)
		return "";
	return proto_attr_names[a];
}

/* True when n (of the length of lit) is lit; first byte first, it is cheap. */
#define PROTO_IS(n, lit) ((n)[0] == (lit)[0] && memcmp((n), (lit), sizeof(lit) - 1) == 0)

enum proto_attr proto_attr_lookup(const char *n, size_t len)
{
	switch (len) {
	case 4:
		if (PROTO_IS(n, "size"))
			return PROTO_A_SIZE;
		break;
	case 6:
		if (PROTO_IS(n, "sender"))
			return PROTO_A_SENDER;
		if (PROTO_IS(n, "stress"))
			return PROTO_A_STRESS;
		break;
	case 7:
		if (PROTO_IS(n, "request"))
			return PROTO_A_REQUEST;
		if (PROTO_IS(n, "tls_sni"))
			return PROTO_A_TLS_SNI;
		break;
	case 8:
		if (PROTO_IS(n, "queue_id"))
			return PROTO_A_QUEUE_ID;
		if (PROTO_IS(n, "instance"))
			return PROTO_A_INSTANCE;
		break;
	case 9:
		if (PROTO_IS(n, "recipient"))
			return PROTO_A_RECIPIENT;
		if (PROTO_IS(n, "helo_name"))
			return PROTO_A_HELO_NAME;
		break;
	case 11:
		switch (n[0]) {
		case 'c':
			if (PROTO_IS(n, "client_name"))
				return PROTO_A_CLIENT_NAME;
			if (PROTO_IS(n, "client_port"))
				return PROTO_A_CLIENT_PORT;
			break;
		case 's':
			if (PROTO_IS(n, "sasl_method"))
				return PROTO_A_SASL_METHOD;
			if (PROTO_IS(n, "sasl_sender"))
				return PROTO_A_SASL_SENDER;
			if (PROTO_IS(n, "server_port"))
				return PROTO_A_SERVER_PORT;
			break;
		case 'e':
			if (PROTO_IS(n, "etrn_domain"))
				return PROTO_A_ETRN_DOMAIN;
			break;
		}
		break;
	case 12:
		if (PROTO_IS(n, "ccert_issuer"))
			return PROTO_A_CCERT_ISSUER;
		if (PROTO_IS(n, "mail_version"))
			return PROTO_A_MAIL_VERSION;
		break;
	case 13:
		if (PROTO_IS(n, "protocol_name"))
			return PROTO_A_PROTOCOL_NAME;
		if (PROTO_IS(n, "sasl_username"))
			return PROTO_A_SASL_USERNAME;
		if (PROTO_IS(n, "ccert_subject"))
			return PROTO_A_CCERT_SUBJECT;
		break;
	case 14:
		switch (n[0]) {
		case 'p':
			if (PROTO_IS(n, "protocol_state"))
				return PROTO_A_PROTOCOL_STATE;
			if (PROTO_IS(n, "policy_context"))
				return PROTO_A_POLICY_CONTEXT;
			break;
		case 'c':
			if (PROTO_IS(n, "client_address"))
				return PROTO_A_CLIENT_ADDRESS;
			break;
		case 's':
			if (PROTO_IS(n, "server_address"))
				return PROTO_A_SERVER_ADDRESS;
			break;
		}
		break;
	case 15:
		if (PROTO_IS(n, "recipient_count"))
			return PROTO_A_RECIPIENT_COUNT;
		break;
	case 17:
		if (PROTO_IS(n, "ccert_fingerprint"))
			return PROTO_A_CCERT_FINGERPRINT;
		if (PROTO_IS(n, "encryption_cipher"))
			return PROTO_A_ENCRYPTION_CIPHER;
		break;
	case 18:
		if (PROTO_IS(n, "encryption_keysize"))
			return PROTO_A_ENCRYPTION_KEYSIZE;
		break;
	case 19:
		if (PROTO_IS(n, "reverse_client_name"))
			return PROTO_A_REVERSE_CLIENT_NAME;
		if (PROTO_IS(n, "encryption_protocol"))
			return PROTO_A_ENCRYPTION_PROTOCOL;
		if (PROTO_IS(n, "compatibility_level"))
			return PROTO_A_COMPATIBILITY_LEVEL;
		break;
	case 24:
		if (PROTO_IS(n, "ccert_pubkey_fingerprint"))
			return PROTO_A_CCERT_PUBKEY_FINGERPRINT;
		break;
	}
	return PROTO_A__COUNT;
}

static enum proto_state proto_state_lookup(const char *v, size_t len)
{
	switch (len) {
	case 4:
		if (PROTO_IS(v, "RCPT"))
			return PROTO_STATE_RCPT;
		if (PROTO_IS(v, "MAIL"))
			return PROTO_STATE_MAIL;
		if (PROTO_IS(v, "DATA"))
			return PROTO_STATE_DATA;
		if (PROTO_IS(v, "EHLO"))
			return PROTO_STATE_EHLO;
		if (PROTO_IS(v, "HELO"))
			return PROTO_STATE_HELO;
		if (PROTO_IS(v, "VRFY"))
			return PROTO_STATE_VRFY;
		if (PROTO_IS(v, "ETRN"))
			return PROTO_STATE_ETRN;
		break;
	case 7:
		if (PROTO_IS(v, "CONNECT"))
			return PROTO_STATE_CONNECT;
		if (PROTO_IS(v, "XCLIENT"))
			return PROTO_STATE_XCLIENT;
		break;
	case 14:
		if (PROTO_IS(v, "END-OF-MESSAGE"))
			return PROTO_STATE_EOM;
		break;
	}
	return PROTO_STATE_OTHER;
}

#undef PROTO_IS

const char *proto_state_name(enum proto_state s)
{
	switch (s) {
	case PROTO_STATE_NONE:
		return "(none)";
	case PROTO_STATE_CONNECT:
		return "CONNECT";
	case PROTO_STATE_EHLO:
		return "EHLO";
	case PROTO_STATE_HELO:
		return "HELO";
	case PROTO_STATE_MAIL:
		return "MAIL";
	case PROTO_STATE_RCPT:
		return "RCPT";
	case PROTO_STATE_DATA:
		return "DATA";
	case PROTO_STATE_EOM:
		return "END-OF-MESSAGE";
	case PROTO_STATE_VRFY:
		return "VRFY";
	case PROTO_STATE_ETRN:
		return "ETRN";
	case PROTO_STATE_XCLIENT:
		return "XCLIENT";
	case PROTO_STATE_OTHER:
		break;
	}
	return "(other)";
}

const char *proto_error_str(enum proto_error e)
{
	switch (e) {
	case PROTO_E_NONE:
		return "no error";
	case PROTO_E_TOO_LARGE:
		return "request too large";
	case PROTO_E_LINE_TOO_LONG:
		return "line too long";
	case PROTO_E_TOO_MANY:
		return "too many attributes";
	case PROTO_E_NUL:
		return "NUL byte in request";
	case PROTO_E_NO_EQUALS:
		return "line without '='";
	case PROTO_E_EMPTY_NAME:
		return "empty attribute name";
	case PROTO_E_BAD_REQUEST:
		return "request is not smtpd_access_policy";
	case PROTO_E_BAD_NUMBER:
		return "bad number in size or recipient_count";
	}
	return "unknown error";
}

/* Unsigned decimal, empty is 0; -1 on a non-digit or a value above max. */
static int proto_parse_uint(const char *s, size_t len, uint64_t max, uint64_t *out)
{
	uint64_t v = 0;

	for (size_t i = 0; i < len; i++) {
		unsigned d = (unsigned)(unsigned char)s[i] - '0';
		if (d > 9)
			return -1;
		if (v > (max - d) / 10)
			return -1;
		v = v * 10 + d;
	}
	*out = v;
	return 0;
}

/*
 * Search buf[p->scanned .. min(len, max_request)) for the LF that ends an
 * empty line ("\n" or "\r\n" at the start of the buffer or after a LF).
 * On success *body is where that empty line starts (the attribute lines are
 * buf[0 .. *body)) and *end is the index of its LF.
 */
static int proto_find_end(struct proto_parser *p, const char *buf, size_t len, size_t *body,
                          size_t *end)
{
	size_t lim = len < p->lim.max_request ? len : p->lim.max_request;
	size_t i = p->scanned <= lim ? p->scanned : 0;

	while (i < lim) {
		const char *lf = memchr(buf + i, '\n', lim - i);
		if (!lf)
			break;
		i = (size_t)(lf - buf);
		if (i == 0 || buf[i - 1] == '\n') {
			*body = i;
			*end = i;
			return 1;
		}
		if (buf[i - 1] == '\r' && (i == 1 || buf[i - 2] == '\n')) {
			*body = i - 1;
			*end = i;
			return 1;
		}
		i++;
	}
	p->scanned = lim;
	return 0;
}

static void proto_request_reset(struct proto_request *req)
{
	memset(req->attr, 0, sizeof(req->attr));
	req->state = PROTO_STATE_NONE;
	req->size = 0;
	req->recipient_count = 0;
	req->nextra = 0;
	req->nattrs = 0;
}

static enum proto_status proto_bad(struct proto_diag *diag, enum proto_error code, size_t line)
{
	diag->code = code;
	diag->line = line;
	return PROTO_BAD;
}

/*
 * Split and judge the attribute lines of buf[0 .. len), which holds an
 * empty line: the lines before the first empty line are the request, *body
 * is where the empty line starts and *end its LF.  One pass: one memchr
 * for the line end and one for the '=' per line; NULs are written over
 * each '=' and line end of the lines judged good.  On PROTO_BAD, *body is
 * where the bad line starts (untouched from there on) and *end is not set.
 */
static enum proto_status proto_parse_lines(const struct proto_limits *lim, char *buf, size_t len,
                                           struct proto_request *req, struct proto_diag *diag,
                                           size_t *body, size_t *end)
{
	static const char want[] = "smtpd_access_policy";
	const char *nul = memchr(buf, '\0', len);
	size_t line_req = 0, line_size = 0, line_rcnt = 0;
	size_t s = 0, n = 0;
	uint64_t v;

	for (;;) {
		char *lf = memchr(buf + s, '\n', len - s);
		size_t eol = (size_t)(lf - buf); /* the caller guarantees an LF */
		size_t e = eol;
		char *name = buf + s;
		char *eq;

		if (e > s && buf[e - 1] == '\r')
			e--;
		if (e == s) { /* the empty line */
			*body = s;
			*end = eol;
			break;
		}
		n++;
		if (n > lim->max_attrs)
			return *body = s, proto_bad(diag, PROTO_E_TOO_MANY, n);
		if (nul && nul < lf)
			return *body = s, proto_bad(diag, PROTO_E_NUL, n);
		if (e - s > lim->max_line)
			return *body = s, proto_bad(diag, PROTO_E_LINE_TOO_LONG, n);
		eq = memchr(name, '=', e - s);
		if (!eq)
			return *body = s, proto_bad(diag, PROTO_E_NO_EQUALS, n);
		if (eq == name)
			return *body = s, proto_bad(diag, PROTO_E_EMPTY_NAME, n);
		*eq = '\0';
		buf[e] = '\0';

		size_t nlen = (size_t)(eq - name);
		struct proto_str val = {eq + 1, e - (s + nlen + 1)};
		enum proto_attr a = proto_attr_lookup(name, nlen);

		req->nattrs++;
		if (a < PROTO_A__COUNT) {
			if (!req->attr[a].p) {
				req->attr[a] = val;
				if (a == PROTO_A_REQUEST)
					line_req = n;
				else if (a == PROTO_A_SIZE)
					line_size = n;
				else if (a == PROTO_A_RECIPIENT_COUNT)
					line_rcnt = n;
			}
		} else if (req->nextra < req->extra_cap) {
			req->extra[req->nextra].name.p = name;
			req->extra[req->nextra].name.len = nlen;
			req->extra[req->nextra].value = val;
			req->nextra++;
		}
		s = eol + 1;
	}

	if (req->attr[PROTO_A_PROTOCOL_STATE].p)
		req->state = proto_state_lookup(req->attr[PROTO_A_PROTOCOL_STATE].p,
		                                req->attr[PROTO_A_PROTOCOL_STATE].len);
	if (!req->attr[PROTO_A_REQUEST].p)
		return proto_bad(diag, PROTO_E_BAD_REQUEST, 0);
	if (req->attr[PROTO_A_REQUEST].len != sizeof(want) - 1 ||
	    memcmp(req->attr[PROTO_A_REQUEST].p, want, sizeof(want) - 1) != 0)
		return proto_bad(diag, PROTO_E_BAD_REQUEST, line_req);
	if (req->attr[PROTO_A_SIZE].p) {
		if (proto_parse_uint(req->attr[PROTO_A_SIZE].p, req->attr[PROTO_A_SIZE].len,
		                     UINT64_MAX, &v) < 0)
			return proto_bad(diag, PROTO_E_BAD_NUMBER, line_size);
		req->size = v;
	}
	if (req->attr[PROTO_A_RECIPIENT_COUNT].p) {
		if (proto_parse_uint(req->attr[PROTO_A_RECIPIENT_COUNT].p,
		                     req->attr[PROTO_A_RECIPIENT_COUNT].len, UINT32_MAX, &v) < 0)
			return proto_bad(diag, PROTO_E_BAD_NUMBER, line_rcnt);
		req->recipient_count = (uint32_t)v;
	}
	return PROTO_OK;
}

/* The LF of the first empty line at or after from (a line start), or len - 1. */
static size_t proto_skip_to_end(const char *buf, size_t from, size_t len)
{
	size_t s = from;
	while (s < len) {
		const char *lf = memchr(buf + s, '\n', len - s);
		if (!lf)
			break;
		size_t eol = (size_t)(lf - buf), e = eol;
		if (e > s && buf[e - 1] == '\r')
			e--;
		if (e == s)
			return eol;
		s = eol + 1;
	}
	return len - 1; /* cannot happen: the caller's buf ends with an empty line */
}

/* Does buf[0 .. len) end with an empty line ("\n\n" or "\n\r\n")? */
static int proto_ends_empty(const char *buf, size_t len)
{
	if (len < 2 || buf[len - 1] != '\n')
		return 0;
	return buf[len - 2] == '\n' || (len >= 3 && buf[len - 2] == '\r' && buf[len - 3] == '\n');
}

enum proto_status proto_parse(struct proto_parser *p, char *buf, size_t len,
                              struct proto_request *req, size_t *used, struct proto_diag *diag)
{
	struct proto_diag scratch;
	size_t body = 0, end = 0;
	enum proto_status st;

	if (!diag)
		diag = &scratch;
	diag->code = PROTO_E_NONE;
	diag->line = 0;
	*used = 0;

	/*
	 * The common case: the read ended with a request's empty line, within
	 * max_request.  Then the first empty line is within reach and the
	 * lines can be judged while it is searched for, in one pass.
	 */
	if (p->scanned == 0 && len <= p->lim.max_request && proto_ends_empty(buf, len)) {
		proto_request_reset(req);
		st = proto_parse_lines(&p->lim, buf, len, req, diag, &body, &end);
		if (st == PROTO_BAD) /* body: the bad line or the empty line, intact from there */
			end = proto_skip_to_end(buf, body, len);
		*used = end + 1;
		return st;
	}

	if (!proto_find_end(p, buf, len, &body, &end)) {
		if (len == 0 || len < p->lim.max_request)
			return PROTO_MORE;
		p->scanned = 0;
		proto_request_reset(req);
		diag->code = PROTO_E_TOO_LARGE;
		return PROTO_FATAL;
	}
	p->scanned = 0;
	*used = end + 1;
	proto_request_reset(req);
	return proto_parse_lines(&p->lim, buf, end + 1, req, diag, &body, &end);
}
