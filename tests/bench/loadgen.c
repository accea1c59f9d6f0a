/*
 * tests/bench/loadgen.c - load generator for the Postfix SMTPD policy protocol.
 *
 * Owns: the benchmark client.  It opens -c persistent connections to a policy
 * server and plays what Postfix's smtpd would send: realistic requests (the 31
 * attributes of Postfix 3.8+, per-account sender/SASL login/client address,
 * an `instance` per transaction, `queue_id` after the first RCPT), one request
 * in flight per connection, never pipelined.  Closed loop by default (each
 * reply triggers the next request); open loop with -r (sends are scheduled on
 * the clock and latency is measured from the scheduled time, so coordinated
 * omission is counted).  It checks every reply (`action=...\n\n`, optionally
 * matching -e), and prints throughput, latency percentiles, action counts and
 * its own CPU cost.
 *
 * Entry point: main(); see usage() or tests/bench/README.md.
 *
 * Limits: Linux only (epoll, epoll_pwait2); one thread; connections are never
 * re-opened (a server close is an error); replies longer than
 * BENCH_RBUF_SIZE bytes are errors; latency is kept in a log-linear histogram
 * with under 1% relative error, so memory stays bounded for any run length.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <regex.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define BENCH_REQ_SIZE       4096 /* a built request always fits (checked) */
#define BENCH_RBUF_SIZE      4096 /* longest reply accepted */
#define BENCH_MAX_ERR_SHOWN  5
#define BENCH_STALL_NS       (10ull * 1000000000ull) /* no reply for this long: give up */
#define BENCH_TICK_NS        (100ull * 1000000ull)   /* longest sleep in the loop */
#define BENCH_NS             1000000000ull
#define BENCH_ACTION_CACHE   128 /* bytes of action text remembered for the fast path */
#define BENCH_DEFAULT_SERVER "inet:127.0.0.1:10031"

/* ---------------------------------------------------------------- options */

enum bench_mix { BENCH_MIX_RCPT, BENCH_MIX_TXN };

struct bench_opts {
	const char *server;
	unsigned conns;
	uint64_t total; /* -n, 0 = unset */
	double seconds; /* -t, 0 = unset */
	uint32_t accounts;
	double rate; /* -r, 0 = closed loop */
	enum bench_mix mix;
	const char *expect; /* -e, NULL = any action */
	double warmup;
	uint64_t seed;
	double zipf; /* -z, 0 = uniform */
	bool json;
	bool spin;           /* --spin: poll without sleeping */
	uint64_t build_only; /* -B N: time the builder only */
};

/* ------------------------------------------------------------ random numbers */

/* splitmix64: tiny, fast, good enough for picking accounts and sizes. */
static uint64_t bench_rand(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Uniform in [0, n) for n < 2^32 (multiply-shift, no division). */
static uint32_t bench_rand_below(uint64_t *s, uint32_t n)
{
	return (uint32_t)(((bench_rand(s) >> 32) * (uint64_t)n) >> 32);
}

static double bench_rand_unit(uint64_t *s)
{
	return (double)(bench_rand(s) >> 11) * (1.0 / 9007199254740992.0);
}

/* --------------------------------------------------------------- histogram */

/*
 * Log-linear latency histogram in nanoseconds, HdrHistogram-like: values below
 * 256 have their own bucket; above, each power of two is split into 128
 * buckets (relative error < 0.8%).  Fixed size, no allocation.
 */
#define BENCH_HIST_SUB_BITS 8
#define BENCH_HIST_SUB      (1u << BENCH_HIST_SUB_BITS)
#define BENCH_HIST_HALF     (BENCH_HIST_SUB / 2)
#define BENCH_HIST_GROUPS   (64 - BENCH_HIST_SUB_BITS)
#define BENCH_HIST_SIZE     (BENCH_HIST_SUB + BENCH_HIST_GROUPS * BENCH_HIST_HALF)

struct bench_hist {
	uint64_t count;
	uint64_t max;
	double sum;
	uint64_t bucket[BENCH_HIST_SIZE];
};

static size_t bench_hist_index(uint64_t v)
{
	unsigned msb, g;

	if (v < BENCH_HIST_SUB)
		return (size_t)v;
	msb = 63u - (unsigned)__builtin_clzll(v);
	g = msb - (BENCH_HIST_SUB_BITS - 1);
	return BENCH_HIST_SUB + (size_t)(g - 1) * BENCH_HIST_HALF +
	       (size_t)((v >> g) - BENCH_HIST_HALF);
}

/* Middle of the range of values that land in bucket idx. */
static uint64_t bench_hist_value(size_t idx)
{
	size_t g, sub;

	if (idx < BENCH_HIST_SUB)
		return idx;
	g = (idx - BENCH_HIST_SUB) / BENCH_HIST_HALF + 1;
	sub = (idx - BENCH_HIST_SUB) % BENCH_HIST_HALF + BENCH_HIST_HALF;
	return ((uint64_t)sub << g) + (((uint64_t)1 << g) >> 1);
}

static void bench_hist_record(struct bench_hist *h, uint64_t v)
{
	h->bucket[bench_hist_index(v)]++;
	h->count++;
	h->sum += (double)v;
	if (v > h->max)
		h->max = v;
}

/* Smallest recorded value v such that a fraction q of the records are <= v. */
static uint64_t bench_hist_quantile(const struct bench_hist *h, double q)
{
	uint64_t target, seen = 0;
	size_t i;

	if (h->count == 0)
		return 0;
	target = (uint64_t)ceil(q * (double)h->count);
	if (target < 1)
		target = 1;
	for (i = 0; i < BENCH_HIST_SIZE; i++) {
		seen += h->bucket[i];
		if (seen >= target) {
			uint64_t v = bench_hist_value(i);
			return v > h->max ? h->max : v;
		}
	}
	return h->max;
}

/* ------------------------------------------------------- request building */

/* A bounded appender: writes never pass end; overflow is sticky and checked. */
struct bench_buf {
	char *p;
	char *end;
	bool overflow;
};

static void bench_put(struct bench_buf *b, const char *s, size_t n)
{
	if ((size_t)(b->end - b->p) < n) {
		b->overflow = true;
		return;
	}
	memcpy(b->p, s, n);
	b->p += n;
}

#define BENCH_PUTS(b, lit) bench_put((b), (lit), sizeof(lit) - 1)

static void bench_put_u64(struct bench_buf *b, uint64_t v)
{
	char tmp[24];
	size_t i = sizeof(tmp);

	do {
		tmp[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v != 0);
	bench_put(b, tmp + i, sizeof(tmp) - i);
}

static void bench_put_hex(struct bench_buf *b, uint64_t v)
{
	static const char digits[] = "0123456789abcdef";
	char tmp[16];
	size_t i = sizeof(tmp);

	do {
		tmp[--i] = digits[v & 15];
		v >>= 4;
	} while (v != 0);
	bench_put(b, tmp + i, sizeof(tmp) - i);
}

/*
 * The client address of an account.  One account in ten comes from each of
 * the IPv4 documentation networks (so a /24 carries a tenth of the traffic),
 * the rest from its own /64 in 2001:db8::/32.  These are strings inside
 * requests only; nothing ever connects to them.
 */
static void bench_put_client_address(struct bench_buf *b, uint32_t account)
{
	switch (account % 10) {
	case 0:
		BENCH_PUTS(b, "198.51.100.");
		bench_put_u64(b, (account / 10) % 254 + 1);
		break;
	case 1:
		BENCH_PUTS(b, "203.0.113.");
		bench_put_u64(b, (account / 10) % 254 + 1);
		break;
	default:
		BENCH_PUTS(b, "2001:db8:");
		bench_put_hex(b, account >> 16);
		BENCH_PUTS(b, ":");
		bench_put_hex(b, account & 0xffff);
		BENCH_PUTS(b, "::");
		bench_put_hex(b, 1 + account % 0xffe);
		break;
	}
}

/* client_name / reverse_client_name: a third of the clients have no PTR. */
static void bench_put_client_name(struct bench_buf *b, uint32_t account)
{
	if (account % 3 == 0) {
		BENCH_PUTS(b, "unknown");
		return;
	}
	BENCH_PUTS(b, "host-");
	bench_put_u64(b, account);
	BENCH_PUTS(b, ".dsl.example.net");
}

/* State of the transaction a connection is playing. */
struct bench_txn {
	uint32_t account;
	uint32_t rcpt_total; /* k; 0 = no transaction open */
	uint32_t rcpt_sent;
	uint32_t client_port;
	uint32_t smtpd_pid;
	uint32_t counter; /* per-"process" transaction counter in `instance` */
	uint64_t inst_sec, inst_usec;
	uint64_t size;
	char queue_id[12];
	char first_rcpt[64];
	size_t first_rcpt_len;
};

/* What the builder needs besides the transaction. */
struct bench_gen {
	enum bench_mix mix;
	uint32_t accounts;
	double *zipf_cdf; /* accounts entries, NULL when uniform */
	uint64_t rng;
	uint64_t realtime_base_ns; /* CLOCK_REALTIME - CLOCK_MONOTONIC at start */
};

static uint32_t bench_pick_account(struct bench_gen *g)
{
	double u;
	uint32_t lo = 0, hi;

	if (g->zipf_cdf == NULL)
		return bench_rand_below(&g->rng, g->accounts);
	u = bench_rand_unit(&g->rng);
	hi = g->accounts - 1;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (g->zipf_cdf[mid] < u)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* Message sizes: mostly small mails, a tail of attachments up to ~10 MB. */
static uint64_t bench_pick_size(struct bench_gen *g)
{
	uint32_t r = bench_rand_below(&g->rng, 100);

	if (r < 80)
		return 600 + bench_rand_below(&g->rng, 20000);
	if (r < 98)
		return 20000 + bench_rand_below(&g->rng, 500000);
	return 500000 + bench_rand_below(&g->rng, 10000000);
}

static void bench_txn_start(struct bench_gen *g, struct bench_txn *t, uint64_t now_ns)
{
	static const char hex[] = "0123456789ABCDEF";
	uint64_t real = g->realtime_base_ns + now_ns;
	size_t i;

	t->account = bench_pick_account(g);
	t->rcpt_total = 1 + bench_rand_below(&g->rng, 5);
	t->rcpt_sent = 0;
	t->client_port = 1024 + bench_rand_below(&g->rng, 64512);
	t->counter++;
	t->inst_sec = real / BENCH_NS;
	t->inst_usec = (real % BENCH_NS) / 1000;
	t->size = bench_pick_size(g);
	for (i = 0; i < 11; i++)
		t->queue_id[i] = hex[bench_rand_below(&g->rng, 16)];
	t->queue_id[11] = '\0';
	t->first_rcpt_len = 0;
}

/*
 * Build the next request of the connection's transaction into out (cap bytes).
 * txn mix: RCPT x k (k in 1..5), then END-OF-MESSAGE with recipient_count=k.
 * rcpt mix: the same transactions without END-OF-MESSAGE.  Returns the length,
 * or 0 if the request did not fit (cannot happen with BENCH_REQ_SIZE).
 */
static size_t bench_build(struct bench_gen *g, struct bench_txn *t, uint64_t now_ns, char *out,
                          size_t cap)
{
	struct bench_buf b = {out, out + cap, false};
	char rcpt[64];
	struct bench_buf rb = {rcpt, rcpt + sizeof(rcpt), false};
	bool eom;

	if (t->rcpt_total == 0)
		bench_txn_start(g, t, now_ns);
	eom = t->rcpt_sent == t->rcpt_total;

	if (!eom) {
		BENCH_PUTS(&rb, "r");
		bench_put_u64(&rb, bench_rand_below(&g->rng, 1000000));
		BENCH_PUTS(&rb, "@d");
		bench_put_u64(&rb, bench_rand_below(&g->rng, 5000));
		BENCH_PUTS(&rb, ".example.com");
		if (t->rcpt_sent == 0) {
			t->first_rcpt_len = (size_t)(rb.p - rcpt);
			memcpy(t->first_rcpt, rcpt, t->first_rcpt_len);
		}
	} else if (t->rcpt_total == 1) {
		bench_put(&rb, t->first_rcpt, t->first_rcpt_len);
	}

	BENCH_PUTS(&b, "request=smtpd_access_policy\nprotocol_state=");
	if (eom)
		BENCH_PUTS(&b, "END-OF-MESSAGE");
	else
		BENCH_PUTS(&b, "RCPT");
	BENCH_PUTS(&b, "\nprotocol_name=ESMTP\nclient_address=");
	bench_put_client_address(&b, t->account);
	BENCH_PUTS(&b, "\nclient_name=");
	bench_put_client_name(&b, t->account);
	BENCH_PUTS(&b, "\nclient_port=");
	bench_put_u64(&b, t->client_port);
	BENCH_PUTS(&b, "\nreverse_client_name=");
	bench_put_client_name(&b, t->account);
	BENCH_PUTS(&b, "\nserver_address=192.0.2.25\nserver_port=587\nhelo_name=mua-");
	bench_put_u64(&b, t->account);
	BENCH_PUTS(&b, ".example.net\nsender=user");
	bench_put_u64(&b, t->account);
	BENCH_PUTS(&b, "@example.org\nrecipient=");
	bench_put(&b, rcpt, (size_t)(rb.p - rcpt));
	BENCH_PUTS(&b, "\nrecipient_count=");
	bench_put_u64(&b, eom ? t->rcpt_total : 0);
	BENCH_PUTS(&b, "\nqueue_id=");
	if (t->rcpt_sent > 0)
		bench_put(&b, t->queue_id, 11);
	BENCH_PUTS(&b, "\ninstance=");
	bench_put_hex(&b, t->smtpd_pid);
	BENCH_PUTS(&b, ".");
	bench_put_hex(&b, t->inst_sec);
	BENCH_PUTS(&b, ".");
	bench_put_hex(&b, t->inst_usec);
	BENCH_PUTS(&b, ".");
	bench_put_hex(&b, t->counter);
	BENCH_PUTS(&b, "\nsize=");
	bench_put_u64(&b, t->size);
	BENCH_PUTS(&b, "\netrn_domain=\nstress=\nsasl_method=");
	if (t->account % 4 == 3)
		BENCH_PUTS(&b, "LOGIN");
	else
		BENCH_PUTS(&b, "PLAIN");
	BENCH_PUTS(&b, "\nsasl_username=user");
	bench_put_u64(&b, t->account);
	BENCH_PUTS(&b,
	           "\nsasl_sender=\nccert_subject=\nccert_issuer=\nccert_fingerprint=\n"
	           "ccert_pubkey_fingerprint=\nencryption_protocol=TLSv1.3\n"
	           "encryption_cipher=TLS_AES_256_GCM_SHA384\nencryption_keysize=256\n"
	           "policy_context=submission\ncompatibility_level=3.6\nmail_version=3.8.6\n\n");

	if (eom) {
		t->rcpt_total = 0; /* transaction done */
	} else {
		t->rcpt_sent++;
		if (g->mix == BENCH_MIX_RCPT && t->rcpt_sent == t->rcpt_total)
			t->rcpt_total = 0;
	}
	if (b.overflow || rb.overflow)
		return 0;
	return (size_t)(b.p - out);
}

/* ------------------------------------------------------------- connections */

enum bench_state { BENCH_IDLE, BENCH_WRITING, BENCH_WAITING, BENCH_DEAD };

struct bench_conn {
	int fd;
	unsigned id;
	enum bench_state state;
	bool busy;        /* a request is in flight (being written or awaiting its reply) */
	bool measured;    /* the request in flight counts */
	uint64_t t_sched; /* ns: when the request in flight was (to be) sent */
	struct bench_txn txn;
	size_t req_len, req_off;
	size_t rlen;
	char req[BENCH_REQ_SIZE];
	char rbuf[BENCH_RBUF_SIZE];
};

enum bench_action {
	BENCH_A_DUNNO,
	BENCH_A_DEFER,
	BENCH_A_HOLD,
	BENCH_A_REJECT,
	BENCH_A_WARN,
	BENCH_A_OTHER,
	BENCH_A_COUNT
};

static const char *const bench_action_name[BENCH_A_COUNT] = {"DUNNO",  "DEFER", "HOLD",
                                                             "REJECT", "WARN",  "other"};

struct bench_run {
	const struct bench_opts *o;
	struct bench_gen gen;
	struct bench_conn *conns;
	struct bench_conn **idle; /* open loop: stack of idle connections */
	size_t nidle;
	int ep;
	bool use_pwait2;
	regex_t expect_re;
	bool have_expect;

	uint64_t t_start, t_measure, t_end_issue, t_last_reply;
	bool issuing;
	uint64_t issued;   /* measured requests sent */
	uint64_t inflight; /* all requests in flight */
	uint64_t sched_i;  /* open loop: next scheduled send index */
	uint64_t last_progress;
	unsigned opened; /* connections set up, in order */
	unsigned alive;

	struct bench_hist hist;
	uint64_t completed; /* measured replies */
	uint64_t replies;   /* all replies, warm-up included */
	uint64_t actions[BENCH_A_COUNT];
	uint64_t err_malformed, err_mismatch, err_closed, err_io, err_timeout;
	unsigned errors_shown;
	uint64_t unsent; /* open loop: scheduled but never sent */

	/* fast path: the last action text seen and what it was */
	char last_action[BENCH_ACTION_CACHE];
	size_t last_action_len;
	enum bench_action last_kind;
	bool last_match;
};

static uint64_t bench_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * BENCH_NS + (uint64_t)ts.tv_nsec;
}

/* Copy s[0..n) into out for display, escaping control bytes, truncating. */
static void bench_escape(char *out, size_t outsz, const char *s, size_t n)
{
	size_t o = 0, i;

	for (i = 0; i < n && o + 5 < outsz; i++) {
		unsigned char ch = (unsigned char)s[i];
		if (ch == '\n') {
			out[o++] = '\\';
			out[o++] = 'n';
		} else if (ch < 0x20 || ch == 0x7f || ch == '\\') {
			o += (size_t)snprintf(out + o, outsz - o, "\\x%02x", ch);
		} else {
			out[o++] = (char)ch;
		}
	}
	if (i < n && o + 4 < outsz) {
		memcpy(out + o, "...", 3);
		o += 3;
	}
	out[o] = '\0';
}

static void bench_report_error(struct bench_run *r, const struct bench_conn *c, const char *what,
                               const char *data, size_t n)
{
	char shown[256];

	if (r->errors_shown >= BENCH_MAX_ERR_SHOWN)
		return;
	r->errors_shown++;
	if (data != NULL) {
		bench_escape(shown, sizeof(shown), data, n);
		fprintf(stderr, "loadgen: error: connection %u: %s: \"%s\"\n", c->id, what, shown);
	} else {
		fprintf(stderr, "loadgen: error: connection %u: %s\n", c->id, what);
	}
	if (r->errors_shown == BENCH_MAX_ERR_SHOWN)
		fprintf(stderr, "loadgen: (further errors are counted, not shown)\n");
}

static void bench_kill(struct bench_run *r, struct bench_conn *c)
{
	if (c->state == BENCH_DEAD)
		return;
	if (c->busy)
		r->inflight--;
	c->busy = false;
	epoll_ctl(r->ep, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	c->fd = -1;
	c->state = BENCH_DEAD;
	r->alive--;
}

static void bench_set_events(struct bench_run *r, struct bench_conn *c, uint32_t events)
{
	struct epoll_event ev = {.events = events, .data.ptr = c};

	epoll_ctl(r->ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Write what is left of the request; returns false if the connection died. */
static bool bench_flush(struct bench_run *r, struct bench_conn *c)
{
	while (c->req_off < c->req_len) {
		ssize_t w = send(c->fd, c->req + c->req_off, c->req_len - c->req_off,
		                 MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				if (c->state != BENCH_WRITING)
					bench_set_events(r, c, EPOLLIN | EPOLLOUT);
				c->state = BENCH_WRITING;
				return true;
			}
			if (errno == EPIPE || errno == ECONNRESET) {
				r->err_closed++;
				bench_report_error(r, c, "connection closed by the server (write)",
				                   NULL, 0);
			} else {
				r->err_io++;
				bench_report_error(r, c, strerror(errno), NULL, 0);
			}
			bench_kill(r, c);
			return false;
		}
		c->req_off += (size_t)w;
	}
	if (c->state == BENCH_WRITING)
		bench_set_events(r, c, EPOLLIN);
	c->state = BENCH_WAITING;
	return true;
}

/* Build and send the connection's next request, scheduled at t_sched. */
static void bench_send(struct bench_run *r, struct bench_conn *c, uint64_t t_sched, bool measured)
{
	c->req_len = bench_build(&r->gen, &c->txn, t_sched, c->req, sizeof(c->req));
	if (c->req_len == 0) {
		fprintf(stderr, "loadgen: internal error: request does not fit %zu bytes\n",
		        sizeof(c->req));
		exit(2);
	}
	c->req_off = 0;
	c->measured = measured;
	c->t_sched = r->o->rate > 0 ? t_sched : bench_now();
	c->busy = true;
	r->inflight++;
	if (measured)
		r->issued++;
	(void)bench_flush(r, c); /* IDLE -> WAITING, or WRITING until EPOLLOUT */
}

static enum bench_action bench_classify(const char *s, size_t n)
{
	size_t w = 0;

	while (w < n && s[w] != ' ' && s[w] != '\t')
		w++;
	if (w == 5 && strncasecmp(s, "DUNNO", 5) == 0)
		return BENCH_A_DUNNO;
	if ((w == 5 && strncasecmp(s, "DEFER", 5) == 0) ||
	    (w > 9 && strncasecmp(s, "DEFER_IF_", 9) == 0))
		return BENCH_A_DEFER;
	if (w == 4 && strncasecmp(s, "HOLD", 4) == 0)
		return BENCH_A_HOLD;
	if (w == 6 && strncasecmp(s, "REJECT", 6) == 0)
		return BENCH_A_REJECT;
	if (w == 4 && strncasecmp(s, "WARN", 4) == 0)
		return BENCH_A_WARN;
	return BENCH_A_OTHER;
}

/* Classify an action text and check it against -e, with a one-entry cache. */
static bool bench_check_action(struct bench_run *r, const char *s, size_t n,
                               enum bench_action *kind)
{
	char tmp[BENCH_RBUF_SIZE + 1];
	bool match = true;

	if (n == r->last_action_len && n <= sizeof(r->last_action) &&
	    memcmp(s, r->last_action, n) == 0) {
		*kind = r->last_kind;
		return r->last_match;
	}
	*kind = bench_classify(s, n);
	if (r->have_expect) {
		memcpy(tmp, s, n);
		tmp[n] = '\0';
		match = regexec(&r->expect_re, tmp, 0, NULL, 0) == 0;
	}
	if (n <= sizeof(r->last_action)) {
		memcpy(r->last_action, s, n);
		r->last_action_len = n;
		r->last_kind = *kind;
		r->last_match = match;
	}
	return match;
}

static void bench_next(struct bench_run *r, struct bench_conn *c, uint64_t now);

/* Read from a connection; on a complete reply, record it and go on. */
static void bench_on_readable(struct bench_run *r, struct bench_conn *c)
{
	size_t old = c->rlen, scan, end;
	ssize_t n;
	const char *p, *q;
	uint64_t now;
	enum bench_action kind;

	n = read(c->fd, c->rbuf + c->rlen, sizeof(c->rbuf) - c->rlen);
	if (n < 0) {
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
			return;
		if (errno == ECONNRESET) {
			r->err_closed++;
			bench_report_error(r, c, "connection reset by the server", NULL, 0);
		} else {
			r->err_io++;
			bench_report_error(r, c, strerror(errno), NULL, 0);
		}
		bench_kill(r, c);
		return;
	}
	if (n == 0) {
		r->err_closed++;
		bench_report_error(r, c, "connection closed by the server", NULL, 0);
		bench_kill(r, c);
		return;
	}
	now = bench_now();
	c->rlen += (size_t)n;
	if (c->state != BENCH_WAITING) {
		r->err_malformed++;
		bench_report_error(r, c, "data received while no request was pending", c->rbuf,
		                   c->rlen);
		c->rlen = 0;
		return;
	}
	/* find the empty line that ends the reply */
	scan = old > 0 ? old - 1 : 0;
	p = c->rbuf + scan;
	q = NULL;
	while ((p = memchr(p, '\n', c->rlen - (size_t)(p - c->rbuf))) != NULL) {
		if ((size_t)(p - c->rbuf) + 1 < c->rlen && p[1] == '\n') {
			q = p;
			break;
		}
		p++;
	}
	if (q == NULL) {
		if (c->rlen == sizeof(c->rbuf)) {
			r->err_malformed++;
			bench_report_error(r, c, "reply longer than the buffer", c->rbuf, 64);
			bench_kill(r, c);
		}
		return;
	}
	end = (size_t)(q - c->rbuf) + 2;
	r->inflight--;
	r->replies++;
	r->last_progress = now;
	c->busy = false;
	c->state = BENCH_IDLE;
	if (c->measured) {
		/* every answered request counts, good or bad: errors are counted apart */
		bench_hist_record(&r->hist, now - c->t_sched);
		r->completed++;
		r->t_last_reply = now;
	}
	if (end != c->rlen) {
		r->err_malformed++;
		bench_report_error(r, c, "data after the reply", c->rbuf, c->rlen);
	} else if (end < 10 || memcmp(c->rbuf, "action=", 7) != 0 ||
	           memchr(c->rbuf, '\n', end - 2) != NULL) {
		r->err_malformed++;
		bench_report_error(r, c, "reply is not \"action=<text>\\n\\n\"", c->rbuf, end);
	} else {
		bool ok = bench_check_action(r, c->rbuf + 7, end - 9, &kind);
		if (c->measured)
			r->actions[kind]++;
		if (!ok) {
			r->err_mismatch++;
			bench_report_error(r, c, "action does not match -e", c->rbuf, end);
		}
	}
	c->rlen = 0;
	bench_next(r, c, now);
}

/* Decide whether measured requests may still be issued. */
static void bench_update_issuing(struct bench_run *r, uint64_t now)
{
	const struct bench_opts *o = r->o;

	if (!r->issuing)
		return;
	if (o->total > 0 && r->issued >= o->total)
		r->issuing = false;
	/* closed loop: the clock ends the run; open loop: the schedule does (see
	 * bench_next), and the backlog is drained for at most BENCH_STALL_NS */
	if (o->seconds > 0 && o->rate <= 0 && now >= r->t_end_issue)
		r->issuing = false;
	if (o->seconds > 0 && o->rate > 0 && now >= r->t_end_issue + BENCH_STALL_NS)
		r->issuing = false;
}

/* Open loop: the scheduled time of send number i. */
static uint64_t bench_sched(const struct bench_run *r, uint64_t i)
{
	return r->t_start + (uint64_t)((double)i * (double)BENCH_NS / r->o->rate);
}

/* A connection became idle at time now: give it work or park it. */
static void bench_next(struct bench_run *r, struct bench_conn *c, uint64_t now)
{
	if (r->o->rate <= 0) {
		bench_update_issuing(r, now);
		if (now < r->t_measure)
			bench_send(r, c, now, false);
		else if (r->issuing)
			bench_send(r, c, now, true);
		return;
	}
	if (r->issuing) {
		uint64_t t = bench_sched(r, r->sched_i);
		if (t <= now) {
			bool measured = t >= r->t_measure;
			if (measured && r->o->seconds > 0 && t >= r->t_end_issue) {
				r->issuing = false;
			} else {
				r->sched_i++;
				bench_send(r, c, t, measured);
				bench_update_issuing(r, now);
				return;
			}
		}
	}
	r->idle[r->nidle++] = c;
}

/* Open loop: send everything that is due on idle connections. */
static void bench_dispatch_due(struct bench_run *r, uint64_t now)
{
	while (r->issuing && r->nidle > 0) {
		struct bench_conn *c;
		uint64_t t = bench_sched(r, r->sched_i);
		bool measured = t >= r->t_measure;

		if (t > now)
			break;
		if (measured && r->o->seconds > 0 && t >= r->t_end_issue) {
			r->issuing = false;
			break;
		}
		c = r->idle[--r->nidle];
		if (c->state == BENCH_DEAD)
			continue;
		r->sched_i++;
		bench_send(r, c, t, measured);
		bench_update_issuing(r, now);
	}
}

/* ------------------------------------------------------------ connecting */

struct bench_addr {
	int family;
	socklen_t len;
	struct sockaddr_storage ss;
};

/* Parse inet:host:port, inet:[v6]:port or unix:/path (a bare /path is unix too). */
static int bench_parse_addr(const char *spec, struct bench_addr *a, char *err, size_t errsz)
{
	memset(a, 0, sizeof(*a));
	if (strncmp(spec, "unix:", 5) == 0 || spec[0] == '/') {
		const char *path = spec[0] == '/' ? spec : spec + 5;
		struct sockaddr_un *un = (struct sockaddr_un *)&a->ss;
		size_t n = strlen(path);
		if (n == 0 || n >= sizeof(un->sun_path)) {
			snprintf(err, errsz, "bad unix socket path in \"%s\"", spec);
			return -1;
		}
		un->sun_family = AF_UNIX;
		memcpy(un->sun_path, path, n + 1);
		a->family = AF_UNIX;
		a->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
		return 0;
	}
	if (strncmp(spec, "inet:", 5) == 0) {
		char host[256];
		const char *hp = spec + 5, *colon, *port;
		size_t hl;
		struct addrinfo hints = {0}, *res = NULL;
		int rc;

		if (hp[0] == '[') {
			const char *close = strchr(hp, ']');
			if (close == NULL || close[1] != ':') {
				snprintf(err, errsz, "bad address \"%s\"", spec);
				return -1;
			}
			hl = (size_t)(close - hp - 1);
			hp++;
			port = close + 2;
		} else {
			colon = strrchr(hp, ':');
			if (colon == NULL) {
				snprintf(err, errsz, "no port in \"%s\"", spec);
				return -1;
			}
			hl = (size_t)(colon - hp);
			port = colon + 1;
		}
		if (hl == 0 || hl >= sizeof(host) || *port == '\0') {
			snprintf(err, errsz, "bad address \"%s\"", spec);
			return -1;
		}
		memcpy(host, hp, hl);
		host[hl] = '\0';
		hints.ai_socktype = SOCK_STREAM;
		hints.ai_family = AF_UNSPEC;
		rc = getaddrinfo(host, port, &hints, &res);
		if (rc != 0) {
			snprintf(err, errsz, "cannot resolve \"%s\": %s", spec, gai_strerror(rc));
			return -1;
		}
		memcpy(&a->ss, res->ai_addr, res->ai_addrlen);
		a->len = res->ai_addrlen;
		a->family = res->ai_family;
		freeaddrinfo(res);
		return 0;
	}
	snprintf(err, errsz, "address \"%s\" is neither inet:host:port nor unix:/path", spec);
	return -1;
}

static int bench_connect(const struct bench_addr *a, char *err, size_t errsz)
{
	int fd = socket(a->family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;

	if (fd < 0) {
		snprintf(err, errsz, "socket: %s", strerror(errno));
		return -1;
	}
	if (connect(fd, (const struct sockaddr *)&a->ss, a->len) != 0) {
		snprintf(err, errsz, "%s", strerror(errno));
		close(fd);
		return -1;
	}
	if (a->family != AF_UNIX)
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0) {
		snprintf(err, errsz, "fcntl: %s", strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

/* Make room for the descriptors we need; returns false with a message if impossible. */
static bool bench_fd_limit(unsigned conns)
{
	struct rlimit rl;
	rlim_t need = (rlim_t)conns + 16;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= need)
		return true;
	if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need) {
		fprintf(stderr, "loadgen: %u connections need %lu descriptors, the limit is %lu\n",
		        conns, (unsigned long)need, (unsigned long)rl.rlim_max);
		return false;
	}
	rl.rlim_cur = need;
	return setrlimit(RLIMIT_NOFILE, &rl) == 0;
}

/* ------------------------------------------------------------- main loop */

static int bench_wait(struct bench_run *r, struct epoll_event *evs, int maxev, uint64_t wait_ns)
{
	if (r->o->spin) {
		/* never sleep: removes the client's own wake-up from the latency */
		uint64_t until = bench_now() + wait_ns;
		int n;
		do {
			n = epoll_wait(r->ep, evs, maxev, 0);
		} while (n == 0 && bench_now() < until);
		return n;
	}
	if (r->use_pwait2) {
		struct timespec ts = {.tv_sec = (time_t)(wait_ns / BENCH_NS),
		                      .tv_nsec = (long)(wait_ns % BENCH_NS)};
		int n = epoll_pwait2(r->ep, evs, maxev, &ts, NULL);
		if (n >= 0 || errno != ENOSYS)
			return n;
		r->use_pwait2 = false;
	}
	return epoll_wait(r->ep, evs, maxev, (int)((wait_ns + 999999) / 1000000));
}

static int bench_loop(struct bench_run *r)
{
	const struct bench_opts *o = r->o;
	struct epoll_event *evs = calloc(o->conns, sizeof(*evs));
	uint64_t now;
	unsigned i;

	if (evs == NULL) {
		fprintf(stderr, "loadgen: out of memory\n");
		return -1;
	}
	now = bench_now();
	r->t_start = now;
	r->t_measure = now + (uint64_t)(o->warmup * (double)BENCH_NS);
	r->t_end_issue =
	    o->seconds > 0 ? r->t_measure + (uint64_t)(o->seconds * (double)BENCH_NS) : UINT64_MAX;
	r->t_last_reply = r->t_measure;
	r->last_progress = now;
	r->issuing = true;
	for (i = 0; i < o->conns; i++) {
		if (o->rate > 0)
			r->idle[r->nidle++] = &r->conns[i];
		else
			bench_next(r, &r->conns[i], now);
	}

	for (;;) {
		uint64_t wait_ns = BENCH_TICK_NS;
		int n, k;

		now = bench_now();
		if (o->rate > 0) {
			bench_dispatch_due(r, now);
			if (r->issuing && r->nidle > 0) {
				uint64_t t = bench_sched(r, r->sched_i);
				wait_ns = t > now ? t - now : 0;
				if (wait_ns > BENCH_TICK_NS)
					wait_ns = BENCH_TICK_NS;
			}
		} else {
			bench_update_issuing(r, now);
		}
		if (r->alive == 0)
			break;
		if (!r->issuing && r->inflight == 0)
			break;
		if (r->inflight > 0 && now - r->last_progress > BENCH_STALL_NS) {
			r->err_timeout += r->inflight;
			fprintf(stderr, "loadgen: error: %llu request(s) got no reply for %llu s\n",
			        (unsigned long long)r->inflight,
			        (unsigned long long)(BENCH_STALL_NS / BENCH_NS));
			break;
		}
		if (r->inflight == 0)
			r->last_progress = now;

		n = bench_wait(r, evs, (int)o->conns, wait_ns);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			fprintf(stderr, "loadgen: epoll: %s\n", strerror(errno));
			free(evs);
			return -1;
		}
		for (k = 0; k < n; k++) {
			struct bench_conn *c = evs[k].data.ptr;
			if (c->state == BENCH_DEAD)
				continue;
			if ((evs[k].events & EPOLLOUT) && c->state == BENCH_WRITING) {
				if (!bench_flush(r, c))
					continue;
			}
			if (evs[k].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
				bench_on_readable(r, c);
		}
	}
	if (o->rate > 0 && o->seconds > 0) {
		/* scheduled inside the measured window but never sent */
		uint64_t i_end = (uint64_t)ceil((double)(r->t_end_issue - r->t_start) * o->rate /
		                                (double)BENCH_NS);
		r->unsent = i_end > r->sched_i ? i_end - r->sched_i : 0;
	}
	free(evs);
	return 0;
}

/* ----------------------------------------------------------------- output */

static void bench_json_string(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\')
			fprintf(f, "\\%c", ch);
		else if (ch < 0x20)
			fprintf(f, "\\u%04x", ch);
		else
			fputc(ch, f);
	}
	fputc('"', f);
}

static double bench_tv(struct timeval tv)
{
	return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

static void bench_print(const struct bench_run *r, double cpu_user, double cpu_sys)
{
	const struct bench_opts *o = r->o;
	uint64_t errors =
	    r->err_malformed + r->err_mismatch + r->err_closed + r->err_io + r->err_timeout;
	uint64_t end = r->t_last_reply > r->t_measure ? r->t_last_reply : r->t_measure;
	double wall = (double)(end - r->t_measure) / 1e9;
	double rps = wall > 0 ? (double)r->completed / wall : 0;
	double total_wall = (double)(bench_now() - r->t_start) / 1e9;
	double cpu_pct = total_wall > 0 ? 100.0 * (cpu_user + cpu_sys) / total_wall : 0;
	double cpu_us_req = 1e6 * (cpu_user + cpu_sys) / (double)(r->replies > 0 ? r->replies : 1);
	double us[6];
	int a;

	us[0] = (double)bench_hist_quantile(&r->hist, 0.50) / 1e3;
	us[1] = (double)bench_hist_quantile(&r->hist, 0.90) / 1e3;
	us[2] = (double)bench_hist_quantile(&r->hist, 0.99) / 1e3;
	us[3] = (double)bench_hist_quantile(&r->hist, 0.999) / 1e3;
	us[4] = (double)r->hist.max / 1e3;
	us[5] = r->hist.count ? r->hist.sum / (double)r->hist.count / 1e3 : 0;

	if (o->json) {
		printf("{\"server\":");
		bench_json_string(stdout, o->server);
		printf(",\"conns\":%u,\"mode\":\"%s\",\"rate\":%.0f,\"mix\":\"%s\","
		       "\"accounts\":%u,\"zipf\":%g,\"seed\":%llu,\"warmup_s\":%g,",
		       o->conns, o->rate > 0 ? "open" : "closed", o->rate,
		       o->mix == BENCH_MIX_TXN ? "txn" : "rcpt", o->accounts, o->zipf,
		       (unsigned long long)o->seed, o->warmup);
		printf("\"requests\":%llu,\"errors\":%llu,\"err_malformed\":%llu,"
		       "\"err_mismatch\":%llu,\"err_closed\":%llu,\"err_io\":%llu,"
		       "\"err_timeout\":%llu,\"unsent\":%llu,",
		       (unsigned long long)r->completed, (unsigned long long)errors,
		       (unsigned long long)r->err_malformed, (unsigned long long)r->err_mismatch,
		       (unsigned long long)r->err_closed, (unsigned long long)r->err_io,
		       (unsigned long long)r->err_timeout, (unsigned long long)r->unsent);
		printf("\"wall_s\":%.3f,\"rps\":%.1f,\"p50_us\":%.1f,\"p90_us\":%.1f,"
		       "\"p99_us\":%.1f,\"p999_us\":%.1f,\"max_us\":%.1f,\"mean_us\":%.1f,",
		       wall, rps, us[0], us[1], us[2], us[3], us[4], us[5]);
		for (a = 0; a < BENCH_A_COUNT; a++) {
			char key[16];
			size_t i;
			for (i = 0; bench_action_name[a][i] && i + 1 < sizeof(key); i++)
				key[i] = (char)tolower((unsigned char)bench_action_name[a][i]);
			key[i] = '\0';
			printf("\"%s\":%llu,", key, (unsigned long long)r->actions[a]);
		}
		printf("\"cpu_user_s\":%.3f,\"cpu_sys_s\":%.3f,\"cpu_pct\":%.1f,"
		       "\"cpu_us_per_req\":%.2f}\n",
		       cpu_user, cpu_sys, cpu_pct, cpu_us_req);
		return;
	}
	printf("loadgen: %s, %u connection%s, %s", o->server, o->conns, o->conns == 1 ? "" : "s",
	       o->rate > 0 ? "open loop at " : "closed loop");
	if (o->rate > 0)
		printf("%.0f req/s", o->rate);
	printf(", mix %s, %u accounts (%s), seed %llu\n", o->mix == BENCH_MIX_TXN ? "txn" : "rcpt",
	       o->accounts, o->zipf > 0 ? "zipf" : "uniform", (unsigned long long)o->seed);
	printf("  requests    %llu\n", (unsigned long long)r->completed);
	printf("  errors      %llu (malformed %llu, mismatch %llu, closed %llu, io %llu, "
	       "timeout %llu)\n",
	       (unsigned long long)errors, (unsigned long long)r->err_malformed,
	       (unsigned long long)r->err_mismatch, (unsigned long long)r->err_closed,
	       (unsigned long long)r->err_io, (unsigned long long)r->err_timeout);
	if (r->unsent > 0)
		printf("  unsent      %llu scheduled requests never sent: the target rate was "
		       "not sustained\n",
		       (unsigned long long)r->unsent);
	printf("  wall time   %.3f s", wall);
	if (o->warmup > 0)
		printf(" (after %.1f s warm-up)", o->warmup);
	printf("\n  throughput  %.1f req/s\n", rps);
	if (o->rate > 0 && rps < 0.95 * o->rate)
		printf("  note        only %.0f%% of the target rate was reached\n",
		       100.0 * rps / o->rate);
	printf("  latency us  p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f  (mean %.1f)\n",
	       us[0], us[1], us[2], us[3], us[4], us[5]);
	printf("  actions    ");
	for (a = 0; a < BENCH_A_COUNT; a++)
		printf(" %s %llu", bench_action_name[a], (unsigned long long)r->actions[a]);
	printf("\n  generator   cpu %.1f%% of one core (user %.2f s, sys %.2f s), %.2f us "
	       "cpu/request\n",
	       cpu_pct, cpu_user, cpu_sys, cpu_us_req);
}

/* ---------------------------------------------------------------- set-up */

static void usage(FILE *f)
{
	fprintf(f, "usage: loadgen [options]\n"
	           "Load generator for the Postfix SMTPD policy protocol.\n"
	           "  -s ADDR     server: inet:host:port, inet:[v6]:port or unix:/path\n"
	           "              (default " BENCH_DEFAULT_SERVER ")\n"
	           "  -c N        connections, one request in flight on each (default 64)\n"
	           "  -n N        stop after N measured requests\n"
	           "  -t SECONDS  stop after SECONDS of measurement (default 10 when no -n)\n"
	           "  -a N        distinct accounts (sasl_username userN) (default 100000)\n"
	           "  -r RATE     open loop: send RATE requests/s in total on a schedule,\n"
	           "              latency counted from the scheduled time (default: closed loop)\n"
	           "  -m MIX      rcpt: RCPT requests only; txn: RCPT x k (k = 1..5) then\n"
	           "              END-OF-MESSAGE with recipient_count=k and a size (default txn)\n"
	           "  -e REGEX    every action must match ^(REGEX) (POSIX extended), e.g.\n"
	           "              DUNNO or 'DUNNO|DEFER|HOLD'; others are errors\n"
	           "  -w SECONDS  warm-up before measuring (default 0)\n"
	           "  -z S        pick accounts with a Zipf distribution of exponent S\n"
	           "              (default: uniform)\n"
	           "  -S SEED     random seed (default 1)\n"
	           "  -B N        build N requests without any network and report the\n"
	           "              builder's cost per request, then exit\n"
	           "  --json      print one JSON line instead of the human summary\n"
	           "  --spin      busy-poll instead of sleeping in epoll: takes a whole core,\n"
	           "              but the client's own wake-up no longer adds to the latency\n"
	           "  -h, --help  this text\n"
	           "Exit status: 0 ok; 1 a reply was malformed or did not match -e, the server\n"
	           "closed a connection or did not answer; 2 usage or connection error.\n");
}

static bool bench_parse_u64(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || s[0] == '-')
		return false;
	*out = v;
	return true;
}

static bool bench_parse_double(const char *s, double *out)
{
	char *end;

	errno = 0;
	*out = strtod(s, &end);
	return errno == 0 && end != s && *end == '\0' && *out >= 0 && isfinite(*out);
}

static int bench_parse_opts(int argc, char **argv, struct bench_opts *o)
{
	static const struct option longopts[] = {{"json", no_argument, NULL, 'J'},
	                                         {"spin", no_argument, NULL, 'P'},
	                                         {"help", no_argument, NULL, 'h'},
	                                         {NULL, 0, NULL, 0}};
	uint64_t u;
	int ch;

	*o = (struct bench_opts){.server = BENCH_DEFAULT_SERVER,
	                         .conns = 64,
	                         .accounts = 100000,
	                         .mix = BENCH_MIX_TXN,
	                         .seed = 1};
	while ((ch = getopt_long(argc, argv, "s:c:n:t:a:r:m:e:w:z:S:B:h", longopts, NULL)) != -1) {
		switch (ch) {
		case 's':
			o->server = optarg;
			break;
		case 'c':
			if (!bench_parse_u64(optarg, &u) || u == 0 || u > 20000)
				goto bad;
			o->conns = (unsigned)u;
			break;
		case 'n':
			if (!bench_parse_u64(optarg, &o->total) || o->total == 0)
				goto bad;
			break;
		case 't':
			if (!bench_parse_double(optarg, &o->seconds) || o->seconds == 0)
				goto bad;
			break;
		case 'a':
			if (!bench_parse_u64(optarg, &u) || u == 0 || u > UINT32_MAX)
				goto bad;
			o->accounts = (uint32_t)u;
			break;
		case 'r':
			if (!bench_parse_double(optarg, &o->rate) || o->rate == 0)
				goto bad;
			break;
		case 'm':
			if (strcmp(optarg, "txn") == 0)
				o->mix = BENCH_MIX_TXN;
			else if (strcmp(optarg, "rcpt") == 0)
				o->mix = BENCH_MIX_RCPT;
			else
				goto bad;
			break;
		case 'e':
			o->expect = optarg;
			break;
		case 'w':
			if (!bench_parse_double(optarg, &o->warmup))
				goto bad;
			break;
		case 'z':
			if (!bench_parse_double(optarg, &o->zipf))
				goto bad;
			break;
		case 'S':
			if (!bench_parse_u64(optarg, &o->seed))
				goto bad;
			break;
		case 'B':
			if (!bench_parse_u64(optarg, &o->build_only) || o->build_only == 0)
				goto bad;
			break;
		case 'J':
			o->json = true;
			break;
		case 'P':
			o->spin = true;
			break;
		case 'h':
			usage(stdout);
			exit(0);
		default:
			usage(stderr);
			return -1;
		}
	}
	if (optind != argc) {
		fprintf(stderr, "loadgen: unexpected argument \"%s\"\n", argv[optind]);
		return -1;
	}
	if (o->total == 0 && o->seconds == 0)
		o->seconds = 10;
	return 0;
bad:
	fprintf(stderr, "loadgen: bad value \"%s\" for -%c\n", optarg, ch);
	usage(stderr);
	return -1;
}

static int bench_gen_init(struct bench_gen *g, const struct bench_opts *o)
{
	struct timespec rt;
	uint64_t mono = bench_now();

	memset(g, 0, sizeof(*g));
	g->mix = o->mix;
	g->accounts = o->accounts;
	g->rng = o->seed;
	clock_gettime(CLOCK_REALTIME, &rt);
	g->realtime_base_ns = (uint64_t)rt.tv_sec * BENCH_NS + (uint64_t)rt.tv_nsec - mono;
	if (o->zipf > 0) {
		double sum = 0;
		uint32_t i;
		g->zipf_cdf = malloc((size_t)o->accounts * sizeof(double));
		if (g->zipf_cdf == NULL) {
			fprintf(stderr, "loadgen: out of memory for the Zipf table\n");
			return -1;
		}
		for (i = 0; i < o->accounts; i++) {
			sum += 1.0 / pow((double)i + 1.0, o->zipf);
			g->zipf_cdf[i] = sum;
		}
		for (i = 0; i < o->accounts; i++)
			g->zipf_cdf[i] /= sum;
	}
	return 0;
}

/* -B: time the builder alone, so its share of a run can be judged. */
static int bench_build_only(struct bench_gen *g, uint64_t n)
{
	struct bench_txn t = {.smtpd_pid = 0x1000};
	char buf[BENCH_REQ_SIZE] = "";
	uint64_t i, bytes = 0, t0, t1, sink = 0;
	size_t len = 0;

	t0 = bench_now();
	for (i = 0; i < n; i++) {
		len = bench_build(g, &t, t0, buf, sizeof(buf));
		bytes += len;
		sink += (unsigned char)buf[len / 2];
	}
	t1 = bench_now();
	printf("loadgen: built %llu requests in %.3f s: %.1f ns/request, %.0f bytes/request "
	       "(checksum %llu)\n",
	       (unsigned long long)n, (double)(t1 - t0) / 1e9, (double)(t1 - t0) / (double)n,
	       (double)bytes / (double)n, (unsigned long long)(sink % 1000));
	printf("last request:\n");
	fwrite(buf, 1, len, stdout);
	return 0;
}

/* Connect every connection; false (with a message) if one fails. */
static bool bench_open_all(struct bench_run *r, const struct bench_addr *addr)
{
	const struct bench_opts *o = r->o;
	char err[512];

	for (r->opened = 0; r->opened < o->conns; r->opened++) {
		struct bench_conn *c = &r->conns[r->opened];
		struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};

		c->id = r->opened;
		c->txn.smtpd_pid = 0x1000 + r->opened * 7; /* a plausible smtpd pid */
		c->fd = bench_connect(addr, err, sizeof(err));
		if (c->fd < 0) {
			fprintf(stderr, "loadgen: connect to %s (connection %u of %u): %s\n",
			        o->server, r->opened + 1, o->conns, err);
			return false;
		}
		c->state = BENCH_IDLE;
		r->alive++;
		if (epoll_ctl(r->ep, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
			fprintf(stderr, "loadgen: epoll_ctl: %s\n", strerror(errno));
			r->opened++; /* so that it is closed */
			return false;
		}
	}
	return true;
}

static bool bench_compile_expect(struct bench_run *r, const char *expect)
{
	size_t n = strlen(expect) + 4;
	char *pat = malloc(n), err[256];
	int e;

	if (pat == NULL) {
		fprintf(stderr, "loadgen: out of memory\n");
		return false;
	}
	snprintf(pat, n, "^(%s)", expect);
	e = regcomp(&r->expect_re, pat, REG_EXTENDED | REG_NOSUB);
	free(pat);
	if (e != 0) {
		regerror(e, &r->expect_re, err, sizeof(err));
		regfree(&r->expect_re);
		fprintf(stderr, "loadgen: bad -e regex \"%s\": %s\n", expect, err);
		return false;
	}
	r->have_expect = true;
	return true;
}

int main(int argc, char **argv)
{
	struct bench_opts o;
	struct bench_run *r;
	struct bench_addr addr;
	struct rusage ru;
	char err[512];
	uint64_t errors;
	unsigned i;
	int rc = 2;

	if (bench_parse_opts(argc, argv, &o) != 0)
		return 2;
	r = calloc(1, sizeof(*r));
	if (r == NULL) {
		fprintf(stderr, "loadgen: out of memory\n");
		return 2;
	}
	r->o = &o;
	r->ep = -1;
	if (bench_gen_init(&r->gen, &o) != 0)
		goto done;
	if (o.build_only > 0) {
		rc = bench_build_only(&r->gen, o.build_only);
		goto done;
	}
	if (o.expect != NULL && !bench_compile_expect(r, o.expect))
		goto done;
	if (bench_parse_addr(o.server, &addr, err, sizeof(err)) != 0) {
		fprintf(stderr, "loadgen: %s\n", err);
		goto done;
	}
	if (!bench_fd_limit(o.conns))
		goto done;
	r->conns = calloc(o.conns, sizeof(*r->conns));
	r->idle = calloc(o.conns, sizeof(r->idle[0])); /* NOLINT(bugprone-sizeof-expression) */
	r->ep = epoll_create1(EPOLL_CLOEXEC);
	if (r->conns == NULL || r->idle == NULL || r->ep < 0) {
		fprintf(stderr, "loadgen: cannot set up: %s\n", strerror(errno));
		goto done;
	}
	r->use_pwait2 = true;
	if (!bench_open_all(r, &addr))
		goto done;

	if (bench_loop(r) != 0)
		goto done;
	getrusage(RUSAGE_SELF, &ru);
	bench_print(r, bench_tv(ru.ru_utime), bench_tv(ru.ru_stime));
	fflush(stdout);
	if (r->err_closed > 0)
		fprintf(stderr, "loadgen: the server closed %llu connection(s)\n",
		        (unsigned long long)r->err_closed);
	errors = r->err_malformed + r->err_mismatch + r->err_closed + r->err_io + r->err_timeout;
	rc = errors > 0 ? 1 : 0;

done:
	for (i = 0; r->conns != NULL && i < r->opened; i++)
		if (r->conns[i].state != BENCH_DEAD)
			close(r->conns[i].fd);
	if (r->ep >= 0)
		close(r->ep);
	if (r->have_expect)
		regfree(&r->expect_re);
	free(r->gen.zipf_cdf);
	free(r->idle);
	free(r->conns);
	free(r);
	return rc;
}
