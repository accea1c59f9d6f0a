/*
 * tests/fuzz/fuzz_maillog.c - libFuzzer target for maillog_parse() and the
 * classifier (classify_db_load(), classify_line(), classify_reply(),
 * classify_find_ip()).
 *
 * Input: 2 header bytes, then the body.
 * - header[0] & 0x80 clear: the body is a log line.  header[0] picks the
 *   line limit (0: default, else 16 * header[0] bytes), header[1] the
 *   reference time and UTC offset of syslog stamps.  The line is parsed
 *   from an exact-size heap copy (ASan sees any read past it); checked:
 *   the event and its error code agree, every view lies inside the line or
 *   the result's scratch, an unquoted address is never longer than its
 *   external form, the reason's parts lie inside the reply.  Delivery and
 *   expiry records are classified with the rules (see below) and the body
 *   is classified as a bare reply text too: the class is a real class, the
 *   IP lies inside the text and is only given with a list-like class.
 * - header[0] & 0x80 set: the body is a pattern file (split in two sources
 *   at the first 0xff byte).  If it loads, a few fixed replies and the body
 *   itself are classified with it; a load error has a message.
 *
 * The rules: $FUZZ_NDR_PATTERNS (e.g. data/ndr-patterns.conf) if set, else
 * a built-in sample that uses every feature of the pattern language.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/classify.h"
#include "proto/maillog.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_HDR 2

static const char fuzz_patterns[] =
    "list spamhaus \"spamhaus\"\n"
    "list spamcop \"spamcop\"\n"
    "list gmail\n"
    "other \"open resolver\"\n"
    "blocklist_domain list=spamhaus \"dbl.spamhaus\"\n"
    "blocklist_ip list=auto \"blocked using\"\n"
    "blocklist_ip list=any \"listed\" !\"greylist\"\n"
    "blocklist_ip list=gmail \"ip address has been\" \"has been blocked\"\n"
    "reputation list=gmail \"unusual rate of\" \"unsolicited\"\n"
    "auth_policy w\"spf\"\n"
    "auth_policy \"dmarc\"\n"
    "mailbox_full \"over quota\"\n"
    "user_unknown \"user unknown\"\n"
    "user_unknown dsn=5.4.1 \"access denied\"\n"
    "user_unknown status=perm \"domain name not found\" !\"try again\"\n"
    "rate_limited \"too many\"\n"
    "greylisted \"greylist\"\n"
    "content_spam \"content\" /(message|mail) content .*(rejected|blocked)/\n"
    "relay_denied \"relay access denied\"\n"
    "tls_error \"starttls\" /starttls (is )?required|must issue a starttls/\n"
    "connection_error ^\"connect to \"\n"
    "connection_error \"lost connection with\"\n"
    "timeout \"timed out\"\n"
    "user_unknown dsn=5.1.1\n";

static struct classify_db *fuzz_db(void)
{
	static struct classify_db *db;
	static int tried;
	struct classify_source src = {"builtin", fuzz_patterns, sizeof(fuzz_patterns) - 1};
	struct classify_diag diag;
	const char *path = getenv("FUZZ_NDR_PATTERNS");
	char *text = NULL;

	if (tried)
		return db;
	tried = 1;
	if (path && *path) {
		FILE *f = fopen(path, "rb");
		long n;

		if (!f) {
			fprintf(stderr, "fuzz_maillog: cannot read %s\n", path);
			abort();
		}
		fseek(f, 0, SEEK_END);
		n = ftell(f);
		fseek(f, 0, SEEK_SET);
		text = malloc((size_t)n + 1);
		if (!text || fread(text, 1, (size_t)n, f) != (size_t)n)
			abort();
		fclose(f);
		src.name = path;
		src.text = text;
		src.len = (size_t)n;
	}
	db = classify_db_load(&src, 1, &diag);
	free(text);
	if (!db) {
		fprintf(stderr, "fuzz_maillog: %s: line %zu: %s\n", src.name, diag.line, diag.msg);
		abort();
	}
	return db;
}

static void fuzz_inside(const struct maillog_str *s, const char *base, size_t len,
                        const struct maillog_line *ln)
{
	if (!s->p)
		return;
	if (s->p >= base && s->p + s->len <= base + len)
		return;
	if (s->p >= ln->scratch && s->p + s->len <= ln->scratch + ln->scratch_used)
		return;
	abort();
}

static void fuzz_check_result(const struct classify_result *r, const char *text, size_t len)
{
	if (r->cls <= CLASSIFY_NONE || r->cls >= CLASSIFY__COUNT)
		abort();
	if (r->ip.p) {
		if (!text || r->ip.p < text || r->ip.p + r->ip.len > text + len || r->ip.len == 0)
			abort();
		if (r->cls != CLASSIFY_BLOCKLIST_IP && r->cls != CLASSIFY_BLOCKLIST_DOMAIN &&
		    r->cls != CLASSIFY_REPUTATION)
			abort();
	}
	if (r->list && strlen(r->list) == 0)
		abort();
	if ((r->line == 0) != (r->source == NULL))
		abort();
}

static void fuzz_line(const uint8_t *hdr, const char *line, size_t len)
{
	static struct maillog_line ln;
	struct maillog_opts o;
	struct classify_result r;
	enum maillog_event ev;
	const struct maillog_str *views[] = {
	    &ln.timestamp,   &ln.host,
	    &ln.tag,         &ln.syslog_name,
	    &ln.program,     &ln.queue_id,
	    &ln.msg,         &ln.from,
	    &ln.from_ext,    &ln.to,
	    &ln.to_ext,      &ln.orig_to,
	    &ln.orig_to_ext, &ln.relay,
	    &ln.relay_host,  &ln.relay_addr,
	    &ln.relay_port,  &ln.delay,
	    &ln.delays,      &ln.tls,
	    &ln.dsn,         &ln.status_str,
	    &ln.reply,       &ln.reason.host,
	    &ln.reason.addr, &ln.reason.port,
	    &ln.reason.text, &ln.reason.cmd,
	    &ln.queue_name,  &ln.client_name,
	    &ln.client_addr, &ln.client_port,
	    &ln.sasl_method, &ln.sasl_username,
	    &ln.sasl_sender, &ln.orig_queue_id,
	    &ln.orig_client, &ln.uid,
	    &ln.orig_id,     &ln.message_id,
	    &ln.notice,      &ln.new_queue_id,
	    &ln.action,      &ln.stage,
	    &ln.action_text, &ln.proto,
	    &ln.helo,
	};

	maillog_opts_default(&o);
	o.max_line = hdr[0] ? (size_t)hdr[0] * 16 : 0;
	o.ref_time = hdr[1] & 1 ? 0 : (int64_t)1795478400 + (int64_t)(hdr[1] >> 1) * 86400 * 3;
	o.utc_offset = ((int32_t)(hdr[1] & 0x0f) - 7) * 3600;
	ev = maillog_parse(&o, line, len, &ln);
	if (ev != ln.event || (unsigned)ev >= MAILLOG_EVENT__COUNT)
		abort();
	if ((ev == MAILLOG_TOO_LONG) != (ln.err == MAILLOG_E_TOO_LONG))
		abort();
	if (ev != MAILLOG_GARBAGE && ev != MAILLOG_TOO_LONG && ln.err != MAILLOG_E_NONE)
		abort();
	if (ev == MAILLOG_GARBAGE && ln.err == MAILLOG_E_NONE)
		abort();
	if (ln.scratch_used > sizeof(ln.scratch))
		abort();
	for (size_t i = 0; i < sizeof(views) / sizeof(views[0]); i++)
		fuzz_inside(views[i], line, len, &ln);
	if (ln.to.p && ln.to.len > ln.to_ext.len)
		abort();
	if (ln.from.p && ln.from.len > ln.from_ext.len)
		abort();
	if (ln.reason.text.p && ln.reply.p &&
	    (ln.reason.text.p < ln.reply.p ||
	     ln.reason.text.p + ln.reason.text.len > ln.reply.p + ln.reply.len))
		abort();
	if (ev == MAILLOG_DELIVERY || ev == MAILLOG_EXPIRED) {
		classify_line(fuzz_db(), &ln, &r);
		fuzz_check_result(&r, ln.reply.p, ln.reply.len);
		if (ln.status == MAILLOG_ST_SENT && r.cls != CLASSIFY_DELIVERED)
			abort();
	} else {
		if (classify_line(fuzz_db(), &ln, &r) != CLASSIFY_NONE)
			abort();
	}
	/* the bytes as a reply text, with a status and dsn taken from the header */
	classify_reply(fuzz_db(), (enum maillog_status)(hdr[1] % (MAILLOG_ST_OTHER + 1)),
	               hdr[0] & 1 ? "5.1.1" : "4.7.1", 5, line, len, &r);
	fuzz_check_result(&r, line, len);
	{
		struct maillog_str ip;

		if (classify_find_ip(line, len, &ip) &&
		    (ip.p < line || ip.p + ip.len > line + len || ip.len == 0))
			abort();
	}
	{
		char *out = malloc(len + 1);
		size_t n;

		if (!out)
			abort();
		n = maillog_addr_unquote(line, len, out, len + 1);
		if (n > len || out[n] != '\0')
			abort();
		if (len > 0 && maillog_addr_unquote(line, len, out, len) != (size_t)-1)
			abort();
		free(out);
	}
}

static void fuzz_patterns_text(const char *text, size_t len)
{
	static const char *const replies[] = {
	    ("host a[1.2.3.4] said: 554 5.7.1 Client host [198.51.100.23] blocked using "
	     "zen.spamhaus.org (in reply to RCPT TO command)"),
	    "host a[1.2.3.4] refused to talk to me: 421 too many connections",
	    "connect to a[1.2.3.4]:25: Connection refused",
	    "delivery temporarily suspended: lost connection with a[1.2.3.4] while x",
	    "550 5.1.1 user unknown",
	    "",
	};
	const char *cut = memchr(text, '\xff', len);
	struct classify_source src[2] = {
	    {"one", text, cut ? (size_t)(cut - text) : len},
	    {"two", cut ? cut + 1 : "", cut ? len - (size_t)(cut - text) - 1 : 0}};
	struct classify_diag diag;
	struct classify_db *db = classify_db_load(src, cut ? 2 : 1, &diag);
	struct classify_result r;

	if (!db) {
		if (diag.msg[0] == '\0' || strlen(diag.msg) >= sizeof(diag.msg))
			abort();
		return;
	}
	for (size_t i = 0; i < sizeof(replies) / sizeof(replies[0]); i++) {
		classify_reply(db, i & 1 ? MAILLOG_ST_DEFERRED : MAILLOG_ST_BOUNCED, "5.1.1", 5,
		               replies[i], strlen(replies[i]), &r);
		fuzz_check_result(&r, replies[i], strlen(replies[i]));
	}
	classify_reply(db, MAILLOG_ST_BOUNCED, "5.7.1", 5, text, len, &r);
	fuzz_check_result(&r, text, len);
	classify_db_free(db);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *body;
	size_t n;

	if (size < FUZZ_HDR)
		return 0;
	n = size - FUZZ_HDR;
	body = malloc(n ? n : 1); /* exactly n bytes: ASan sees a read past them */
	if (!body)
		abort();
	memcpy(body, data + FUZZ_HDR, n);
	if (data[0] & 0x80)
		fuzz_patterns_text(body, n);
	else
		fuzz_line(data, body, n);
	free(body);
	return 0;
}
