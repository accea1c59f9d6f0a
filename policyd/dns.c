/*
 * policyd/dns.c - owns DNS: the c-ares channel on the libev loop (its
 * sockets under ev_io, its timeouts under one ev_timer), the [dns] config
 * section and module, the bounded answer cache with positive and negative
 * TTLs, the DNSBL and ASN look-ups the checks use without waiting, plain
 * queries for the self-check, and the replay fixture.
 *
 * Entry points: dns_asn, dns_dnsbl, dns_dnsbl_name (cache or start, never
 * wait), dns_query (callback), dns_open/dns_close, dns_module,
 * dns_fixture_load.
 *
 * Limits: at most max_inflight queries in flight (more are skipped and
 * counted); cache_size entries, the least recently used forgotten first
 * (never one whose query is in flight); TXT records cut at DNS_TXT_MAX
 * bytes.  Bad answers (not 127/8, 127.0.0.1 "refused", 127.255.255.x
 * error codes, malformed TXT) never count as a listing: they are cached
 * briefly as errors, counted, and logged at most DNS_LOG_PER_MIN lines a
 * minute.
 */
#include "dns.h"

#include <arpa/inet.h>
#include <ares.h>
#include <ctype.h>
#include <stdarg.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "log.h"

#define DNS_MAX_SOCKS   32
#define DNS_MAX_ZONES   32
#define DNS_NAME_MAX    256
#define DNS_LOG_PER_MIN 20

struct dns_stats dns_stats;

/* ---------------------------------------------------------------- config */

void dns_conf_default(struct dns_conf *c)
{
	memset(c, 0, sizeof(*c));
	c->timeout_ms = 800;
	c->tries = 2;
	c->max_inflight = 256;
	c->cache_size = 65536;
	c->min_ttl = 60;
	c->max_ttl = 86400;
	c->neg_ttl = 900;
	c->neg_max_ttl = 3600;
	c->error_ttl = 30;
	c->probe_interval = 3600;
}

static void dns_defaults(void *blk)
{
	dns_conf_default(blk);
}

static int dns_uint(const char *v, unsigned long lo, unsigned long hi, unsigned long *out)
{
	char *end;
	errno = 0;
	unsigned long n = strtoul(v, &end, 10);
	if (errno || end == v || *end || v[0] == '-' || n < lo || n > hi)
		return -1;
	*out = n;
	return 0;
}

static int dns_secs(const char *v, uint32_t *out, char *err, size_t errsz, const char *name)
{
	uint64_t us;
	if (config_parse_duration(v, &us, err, errsz) < 0)
		return -1;
	if (us / 1000000 > UINT32_MAX) {
		snprintf(err, errsz, "%s: '%s' too long", name, v);
		return -1;
	}
	*out = (uint32_t)(us / 1000000);
	return 0;
}

/* "127.0.0.1:5353, [::1]:53, 10.0.0.1" → checked, kept as c-ares' csv */
static int dns_check_servers(const char *v, char *out, size_t outsz, char *err, size_t errsz)
{
	char buf[256];
	size_t n = 0;
	if (strlen(v) >= sizeof(buf)) {
		snprintf(err, errsz, "dns_servers: list too long");
		return -1;
	}
	snprintf(buf, sizeof(buf), "%s", v);
	out[0] = '\0';
	for (char *save = NULL, *t = strtok_r(buf, ", \t", &save); t;
	     t = strtok_r(NULL, ", \t", &save)) {
		char host[64];
		const char *port = NULL;
		unsigned char a[16];
		if (t[0] == '[') {
			char *e = strchr(t, ']');
			if (e == NULL || (size_t)(e - t - 1) >= sizeof(host))
				goto bad;
			memcpy(host, t + 1, (size_t)(e - t - 1));
			host[e - t - 1] = '\0';
			if (e[1] == ':')
				port = e + 2;
			else if (e[1])
				goto bad;
			if (inet_pton(AF_INET6, host, a) != 1)
				goto bad;
		} else {
			char *c = strchr(t, ':');
			if (c && strchr(c + 1, ':'))
				c = NULL; /* bare IPv6 */
			size_t hl = c ? (size_t)(c - t) : strlen(t);
			if (hl >= sizeof(host))
				goto bad;
			memcpy(host, t, hl);
			host[hl] = '\0';
			port = c ? c + 1 : NULL;
			if (inet_pton(AF_INET, host, a) != 1 && inet_pton(AF_INET6, host, a) != 1)
				goto bad;
		}
		unsigned long p;
		if (port && dns_uint(port, 1, 65535, &p) < 0)
			goto bad;
		int k = snprintf(out + n, outsz - n, "%s%s", n ? "," : "", t);
		if (k < 0 || (size_t)k >= outsz - n) {
			snprintf(err, errsz, "dns_servers: list too long");
			return -1;
		}
		n += (size_t)k;
		continue;
	bad:
		snprintf(err, errsz, "dns_servers: '%s' is not ADDRESS[:PORT] ([IPv6]:PORT)", t);
		return -1;
	}
	return 0;
}

static int dns_set(void *blk, const char *name, const char *v, char *err, size_t errsz)
{
	struct dns_conf *c = blk;
	unsigned long n;
	if (!strcmp(name, "dns_servers") || !strcmp(name, "servers"))
		return dns_check_servers(v, c->servers, sizeof(c->servers), err, errsz);
	if (!strcmp(name, "timeout")) {
		uint64_t us;
		size_t l = strlen(v);
		if (l > 2 && !strcmp(v + l - 2, "ms")) {
			char num[16] = "";
			if (l - 2 < sizeof(num)) {
				memcpy(num, v, l - 2);
				num[l - 2] = '\0';
			}
			if (num[0] == '\0' || dns_uint(num, 1, 30000, &n) < 0) {
				snprintf(err, errsz, "timeout: '%s' (10ms .. 30s)", v);
				return -1;
			}
			us = n * 1000;
		} else if (config_parse_duration(v, &us, err, errsz) < 0)
			return -1;
		if (us < 10000 || us > 30000000) {
			snprintf(err, errsz, "timeout: '%s' (10ms .. 30s)", v);
			return -1;
		}
		c->timeout_ms = (unsigned)(us / 1000);
		return 0;
	}
	if (!strcmp(name, "tries")) {
		if (dns_uint(v, 1, 10, &n) < 0) {
			snprintf(err, errsz, "tries: '%s' (1 .. 10)", v);
			return -1;
		}
		c->tries = (unsigned)n;
		return 0;
	}
	if (!strcmp(name, "max_inflight")) {
		if (dns_uint(v, 1, 65536, &n) < 0) {
			snprintf(err, errsz, "max_inflight: '%s' (1 .. 65536)", v);
			return -1;
		}
		c->max_inflight = (unsigned)n;
		return 0;
	}
	if (!strcmp(name, "cache_size")) {
		if (dns_uint(v, 16, 16777216, &n) < 0) {
			snprintf(err, errsz, "cache_size: '%s' (16 .. 16777216 entries)", v);
			return -1;
		}
		c->cache_size = n;
		return 0;
	}
	if (!strcmp(name, "min_ttl"))
		return dns_secs(v, &c->min_ttl, err, errsz, name);
	if (!strcmp(name, "max_ttl"))
		return dns_secs(v, &c->max_ttl, err, errsz, name);
	if (!strcmp(name, "negative_ttl"))
		return dns_secs(v, &c->neg_ttl, err, errsz, name);
	if (!strcmp(name, "negative_max_ttl"))
		return dns_secs(v, &c->neg_max_ttl, err, errsz, name);
	if (!strcmp(name, "error_ttl"))
		return dns_secs(v, &c->error_ttl, err, errsz, name);
	if (!strcmp(name, "probe_interval"))
		return dns_secs(v, &c->probe_interval, err, errsz, name);
	snprintf(err, errsz,
	         "unknown parameter '%s' in [dns] (dns_servers, timeout, tries, max_inflight, "
	         "cache_size, min_ttl, max_ttl, negative_ttl, negative_max_ttl, error_ttl, "
	         "probe_interval)",
	         name);
	return -1;
}

static int dns_check(void *blk, const struct config *cfg, char *err, size_t errsz)
{
	struct dns_conf *c = blk;
	(void)cfg;
	if (c->min_ttl > c->max_ttl) {
		snprintf(err, errsz, "min_ttl is larger than max_ttl");
		return -1;
	}
	if (c->neg_ttl > c->neg_max_ttl)
		c->neg_ttl = c->neg_max_ttl;
	return 0;
}

const struct config_section dns_section = {
    .name = "dns",
    .lists = (const char *const[]){"servers", "dns_servers", NULL},
    .size = sizeof(struct dns_conf),
    .defaults = dns_defaults,
    .set = dns_set,
    .check = dns_check,
};

/* ---------------------------------------------------------------- state */

enum dns_kind { DNS_K_DNSBL = 1, DNS_K_ASN };

struct dns_entry {
	struct dns_entry *hnext;         /* hash chain */
	struct dns_entry *lprev, *lnext; /* LRU list, most recent first */
	uint64_t h;
	uint8_t kind;
	bool pending;
	enum dns_result result;
	int64_t expires_us;
	uint32_t code;
	struct dns_asn_info asn;
	char name[]; /* the query name */
};

struct dns_q {
	dns_cb *cb;
	void *arg;
	int type;
	struct dns_entry *entry; /* cached look-up, or NULL */
};

struct dns_fix {
	struct dns_fix *next;
	uint64_t h;
	int type; /* 1, 16, or 0 = NXDOMAIN */
	uint32_t ttl;
	uint32_t a;
	char *txt;
	char name[];
};

static struct {
	struct ev_loop *loop;
	ares_channel ch;
	bool open;
	struct dns_conf conf;
	ev_timer tm;
	struct {
		int fd;
		ev_io w;
	} io[DNS_MAX_SOCKS];
	unsigned inflight;
	/* cache */
	struct dns_entry **tab;
	size_t nbuckets, n;
	struct dns_entry *lru_head, *lru_tail;
	/* fixture */
	struct dns_fix **fix;
	size_t nfix;
	bool fixture;
	int64_t now_us; /* the callers' clock (virtual in replay) */
	/* log rate limit */
	int64_t log_minute;
	unsigned log_lines, log_suppressed;
} D = {.conf = {.timeout_ms = 800,
                .tries = 2,
                .max_inflight = 256,
                .cache_size = 65536,
                .min_ttl = 60,
                .max_ttl = 86400,
                .neg_ttl = 900,
                .neg_max_ttl = 3600,
                .error_ttl = 30,
                .probe_interval = 3600}};

static int64_t dns_wall_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t dns_now(void)
{
	if (D.fixture || !D.open)
		return D.now_us;
	int64_t w = dns_wall_us();
	return w > D.now_us ? w : D.now_us;
}

/* A counted, rate-limited log line about bad input. */
static void dns_badlog(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void dns_badlog(const char *fmt, ...)
{
	char msg[512];
	int64_t minute = dns_wall_us() / 60000000;
	if (minute != D.log_minute) {
		if (D.log_suppressed)
			log_warn("event=dns_bad_input suppressed=%u (rate limit)",
			         D.log_suppressed);
		D.log_minute = minute;
		D.log_lines = 0;
		D.log_suppressed = 0;
	}
	if (D.log_lines >= DNS_LOG_PER_MIN) {
		D.log_suppressed++;
		return;
	}
	D.log_lines++;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	log_warn("event=dns_bad_input %s", msg);
}

static uint64_t dns_hash(const char *s, int kind)
{
	uint64_t h = 0xcbf29ce484222325ULL ^ (uint64_t)kind;
	for (; *s; s++) {
		h ^= (unsigned char)tolower((unsigned char)*s);
		h *= 0x100000001b3ULL;
	}
	return h ^ (h >> 29);
}

/* ---------------------------------------------------------------- cache */

static void dns_lru_unlink(struct dns_entry *e)
{
	if (e->lprev)
		e->lprev->lnext = e->lnext;
	else
		D.lru_head = e->lnext;
	if (e->lnext)
		e->lnext->lprev = e->lprev;
	else
		D.lru_tail = e->lprev;
	e->lprev = e->lnext = NULL;
}

static void dns_lru_front(struct dns_entry *e)
{
	e->lnext = D.lru_head;
	e->lprev = NULL;
	if (D.lru_head)
		D.lru_head->lprev = e;
	D.lru_head = e;
	if (D.lru_tail == NULL)
		D.lru_tail = e;
}

static void dns_cache_remove(struct dns_entry *e)
{
	struct dns_entry **pp = &D.tab[e->h & (D.nbuckets - 1)];
	while (*pp && *pp != e)
		pp = &(*pp)->hnext;
	if (*pp)
		*pp = e->hnext;
	dns_lru_unlink(e);
	D.n--;
	free(e);
}

static struct dns_entry *dns_cache_find(const char *name, int kind)
{
	if (D.tab == NULL)
		return NULL;
	uint64_t h = dns_hash(name, kind);
	for (struct dns_entry *e = D.tab[h & (D.nbuckets - 1)]; e; e = e->hnext)
		if (e->h == h && e->kind == kind && !strcasecmp(e->name, name))
			return e;
	return NULL;
}

static struct dns_entry *dns_cache_add(const char *name, int kind)
{
	if (D.tab == NULL) {
		size_t nb = 1024;
		while (nb < D.conf.cache_size && nb < ((size_t)1 << 24))
			nb <<= 1;
		D.tab = calloc(nb, sizeof(*D.tab));
		if (D.tab == NULL)
			return NULL;
		D.nbuckets = nb;
	}
	/* room: forget the least recently used answers (never a pending one) */
	for (struct dns_entry *v = D.lru_tail; D.n >= D.conf.cache_size && v;) {
		struct dns_entry *p = v->lprev;
		if (!v->pending) {
			dns_cache_remove(v);
			dns_stats.evicted++;
		}
		v = p;
	}
	size_t len = strlen(name);
	struct dns_entry *e = calloc(1, sizeof(*e) + len + 1);
	if (e == NULL)
		return NULL;
	memcpy(e->name, name, len + 1);
	e->h = dns_hash(name, kind);
	e->kind = (uint8_t)kind;
	size_t b = e->h & (D.nbuckets - 1);
	e->hnext = D.tab[b];
	D.tab[b] = e;
	dns_lru_front(e);
	D.n++;
	dns_stats.cache_entries = D.n;
	return e;
}

void dns_cache_clear(void)
{
	for (struct dns_entry *e = D.lru_head; e;) {
		struct dns_entry *nx = e->lnext;
		if (!e->pending)
			dns_cache_remove(e);
		e = nx;
	}
	dns_stats.cache_entries = D.n;
}

/* ---------------------------------------------------------------- c-ares on libev */

static void dns_timer_update(void)
{
	struct timeval tv, *tvp;
	if (!D.open)
		return;
	ev_timer_stop(D.loop, &D.tm);
	tvp = ares_timeout(D.ch, NULL, &tv);
	if (tvp == NULL)
		return;
	double after = (double)tvp->tv_sec + (double)tvp->tv_usec / 1e6;
	ev_timer_set(&D.tm, after > 0.001 ? after : 0.001, 0.);
	ev_timer_start(D.loop, &D.tm);
}

static void dns_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	(void)loop;
	ares_socket_t fd = w->fd;
	ares_process_fd(D.ch, (revents & EV_READ) ? fd : ARES_SOCKET_BAD,
	                (revents & EV_WRITE) ? fd : ARES_SOCKET_BAD);
	dns_timer_update();
}

static void dns_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)w;
	(void)revents;
	ares_process_fd(D.ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
	dns_timer_update();
}

static void dns_sock_state_cb(void *data, ares_socket_t fd, int readable, int writable)
{
	(void)data;
	int free_slot = -1;
	for (int i = 0; i < DNS_MAX_SOCKS; i++) {
		if (D.io[i].fd == fd) {
			ev_io_stop(D.loop, &D.io[i].w);
			if (!readable && !writable) {
				D.io[i].fd = -1;
				return;
			}
			ev_io_set(&D.io[i].w, fd,
			          (readable ? EV_READ : 0) | (writable ? EV_WRITE : 0));
			ev_io_start(D.loop, &D.io[i].w);
			return;
		}
		if (D.io[i].fd < 0 && free_slot < 0)
			free_slot = i;
	}
	if (!readable && !writable)
		return;
	if (free_slot < 0) {
		log_err("dns: more than %d c-ares sockets; socket %d not watched", DNS_MAX_SOCKS,
		        (int)fd);
		return;
	}
	D.io[free_slot].fd = fd;
	ev_io_init(&D.io[free_slot].w, dns_io_cb, fd,
	           (readable ? EV_READ : 0) | (writable ? EV_WRITE : 0));
	ev_io_start(D.loop, &D.io[free_slot].w);
}

int dns_open(struct ev_loop *loop, const struct dns_conf *c, char *err, size_t errsz)
{
	static bool lib_init;
	struct ares_options o;
	int rc;

	if (D.open)
		dns_close();
	if (!lib_init) {
		rc = ares_library_init(ARES_LIB_INIT_ALL);
		if (rc != ARES_SUCCESS) {
			snprintf(err, errsz, "c-ares: %s", ares_strerror(rc));
			return -1;
		}
		lib_init = true;
	}
	D.conf = *c;
	D.loop = loop;
	memset(&o, 0, sizeof(o));
	o.flags = ARES_FLAG_NOSEARCH | ARES_FLAG_NOALIASES;
	o.timeout = (int)c->timeout_ms;
	o.tries = (int)c->tries;
	o.sock_state_cb = dns_sock_state_cb;
	o.sock_state_cb_data = NULL;
	int mask = ARES_OPT_FLAGS | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_SOCK_STATE_CB;
	for (int i = 0; i < DNS_MAX_SOCKS; i++)
		D.io[i].fd = -1;
	rc = ares_init_options(&D.ch, &o, mask);
	if (rc != ARES_SUCCESS) {
		snprintf(err, errsz, "c-ares init: %s", ares_strerror(rc));
		return -1;
	}
	if (c->servers[0]) {
		rc = ares_set_servers_ports_csv(D.ch, c->servers);
		if (rc != ARES_SUCCESS) {
			snprintf(err, errsz, "dns_servers '%s': %s", c->servers, ares_strerror(rc));
			ares_destroy(D.ch);
			return -1;
		}
	}
	ev_timer_init(&D.tm, dns_timer_cb, 1., 0.);
	D.open = true;
	return 0;
}

void dns_close(void)
{
	if (!D.open)
		return;
	D.open = false; /* callbacks of the destruction see it */
	ares_destroy(D.ch);
	for (int i = 0; i < DNS_MAX_SOCKS; i++)
		if (D.io[i].fd >= 0) {
			ev_io_stop(D.loop, &D.io[i].w);
			D.io[i].fd = -1;
		}
	ev_timer_stop(D.loop, &D.tm);
	D.inflight = 0;
	dns_cache_clear();
	free(D.tab);
	D.tab = NULL;
	D.nbuckets = 0;
	D.n = 0;
	D.lru_head = D.lru_tail = NULL;
	dns_stats.cache_entries = 0;
}

bool dns_active(void)
{
	return D.open || D.fixture;
}

unsigned dns_inflight(void)
{
	return D.inflight;
}

/* ---------------------------------------------------------------- answers */

static int dns_skip_name(const unsigned char *buf, int len, int off)
{
	char *name = NULL;
	long enclen = 0;
	if (off >= len || ares_expand_name(buf + off, buf, len, &name, &enclen) != ARES_SUCCESS)
		return -1;
	ares_free_string(name);
	return off + (int)enclen;
}

static uint32_t dns_get32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/*
 * Walk the message: min TTL of the answers of `type`, or for a negative
 * answer min(SOA TTL, SOA MINIMUM) from the authority section.  0 when
 * none; -1 when the message is malformed.
 */
static int64_t dns_msg_ttl(const unsigned char *buf, int len, int type, bool negative)
{
	if (len < 12)
		return -1;
	unsigned qd = (unsigned)buf[4] << 8 | buf[5];
	unsigned an = (unsigned)buf[6] << 8 | buf[7];
	unsigned ns = (unsigned)buf[8] << 8 | buf[9];
	int off = 12;
	int64_t best = -2;
	for (unsigned i = 0; i < qd; i++) {
		off = dns_skip_name(buf, len, off);
		if (off < 0 || off + 4 > len)
			return -1;
		off += 4;
	}
	for (unsigned i = 0; i < an + ns; i++) {
		off = dns_skip_name(buf, len, off);
		if (off < 0 || off + 10 > len)
			return -1;
		int t = buf[off] << 8 | buf[off + 1];
		uint32_t ttl = dns_get32(buf + off + 4);
		int rdlen = buf[off + 8] << 8 | buf[off + 9];
		off += 10;
		if (off + rdlen > len)
			return -1;
		if (ttl > 0x7fffffffu)
			ttl = 0;
		if (!negative && i < an && t == type) {
			if (best < 0 || ttl < best)
				best = ttl;
		} else if (negative && i >= an && t == 6) {
			int r = dns_skip_name(buf, len, off);
			r = r < 0 ? -1 : dns_skip_name(buf, len, r);
			if (r < 0 || r + 20 > off + rdlen)
				return -1;
			uint32_t min = dns_get32(buf + r + 16);
			int64_t v = min < ttl ? min : ttl;
			if (best < 0 || v < best)
				best = v;
		}
		off += rdlen;
	}
	return best < 0 ? 0 : best;
}

static void dns_answer_free(struct dns_answer *a)
{
	for (unsigned i = 0; i < a->n; i++) {
		free(a->txt[i]);
		a->txt[i] = NULL;
	}
}

/* Fill a from a c-ares status and message. */
static void dns_parse(int status, const unsigned char *abuf, int alen, int type,
                      struct dns_answer *a)
{
	memset(a, 0, sizeof(*a));
	a->rcode = abuf && alen >= 4 ? (abuf[3] & 0x0f) : -1;
	switch (status) {
	case ARES_SUCCESS:
		break;
	case ARES_ENOTFOUND:
	case ARES_ENODATA: {
		dns_stats.nxdomain += status == ARES_ENOTFOUND;
		dns_stats.nodata += status == ARES_ENODATA;
		a->result = DNS_NO;
		int64_t t = abuf ? dns_msg_ttl(abuf, alen, type, true) : 0;
		a->ttl = t > 0 ? (uint32_t)t : 0;
		return;
	}
	case ARES_ETIMEOUT:
		dns_stats.timeouts++;
		a->result = DNS_ERROR;
		a->error = "timeout";
		return;
	default:
		dns_stats.errors++;
		a->result = DNS_ERROR;
		a->error = ares_strerror(status);
		return;
	}
	int64_t ttl = dns_msg_ttl(abuf, alen, type, false);
	if (ttl < 0) {
		dns_stats.bad_answers++;
		a->result = DNS_ERROR;
		a->error = "malformed answer";
		return;
	}
	a->ttl = (uint32_t)ttl;
	if (type == 1) {
		struct ares_addrttl at[DNS_MAX_RECORDS];
		int n = DNS_MAX_RECORDS;
		int rc = ares_parse_a_reply(abuf, alen, NULL, at, &n);
		if (rc == ARES_ENODATA) {
			a->result = DNS_NO;
			return;
		}
		if (rc != ARES_SUCCESS) {
			dns_stats.bad_answers++;
			a->result = DNS_ERROR;
			a->error = "malformed A answer";
			return;
		}
		for (int i = 0; i < n && i < DNS_MAX_RECORDS; i++)
			a->a[a->n++] = ntohl(at[i].ipaddr.s_addr);
		a->result = a->n ? DNS_YES : DNS_NO;
		return;
	}
	struct ares_txt_ext *txt = NULL;
	int rc = ares_parse_txt_reply_ext(abuf, alen, &txt);
	if (rc == ARES_ENODATA) {
		a->result = DNS_NO;
		return;
	}
	if (rc != ARES_SUCCESS) {
		dns_stats.bad_answers++;
		a->result = DNS_ERROR;
		a->error = "malformed TXT answer";
		return;
	}
	size_t used = 0;
	for (struct ares_txt_ext *t = txt; t; t = t->next) {
		if (t->record_start || a->n == 0) {
			if (a->n == DNS_MAX_RECORDS)
				break;
			a->txt[a->n] = malloc(DNS_TXT_MAX + 1);
			if (a->txt[a->n] == NULL)
				break;
			a->txt[a->n][0] = '\0';
			a->n++;
			used = 0;
		}
		size_t k = t->length;
		if (used + k > DNS_TXT_MAX) {
			k = DNS_TXT_MAX - used;
			if (!a->txt_cut)
				dns_stats.txt_cut++;
			a->txt_cut = true;
		}
		memcpy(a->txt[a->n - 1] + used, t->txt, k);
		used += k;
		a->txt[a->n - 1][used] = '\0';
	}
	ares_free_data(txt);
	a->result = a->n ? DNS_YES : DNS_NO;
}

/* ---------------------------------------------------------------- fixture */

static struct dns_fix *dns_fix_find(const char *name, int type)
{
	if (D.fix == NULL)
		return NULL;
	uint64_t h = dns_hash(name, 0);
	for (struct dns_fix *f = D.fix[h & (D.nfix - 1)]; f; f = f->next)
		if (f->h == h && (f->type == type || f->type == 0) && !strcasecmp(f->name, name))
			return f;
	return NULL;
}

static void dns_fixture_answer(const char *name, int type, struct dns_answer *a)
{
	memset(a, 0, sizeof(*a));
	a->rcode = 0;
	struct dns_fix *f = dns_fix_find(name, type);
	if (f == NULL || f->type == 0) {
		a->result = DNS_NO;
		a->rcode = 3;
		dns_stats.nxdomain++;
		return;
	}
	a->ttl = f->ttl;
	a->result = DNS_YES;
	if (type == 1) {
		/* every A record of the name */
		uint64_t h = dns_hash(name, 0);
		for (struct dns_fix *g = D.fix[h & (D.nfix - 1)]; g && a->n < DNS_MAX_RECORDS;
		     g = g->next)
			if (g->h == h && g->type == 1 && !strcasecmp(g->name, name))
				a->a[a->n++] = g->a;
		return;
	}
	a->txt[0] = strdup(f->txt);
	a->n = a->txt[0] ? 1 : 0;
	if (a->n == 0) {
		a->result = DNS_ERROR;
		a->error = "out of memory";
	}
}

void dns_fixture_free(void)
{
	for (size_t i = 0; D.fix && i < D.nfix; i++)
		for (struct dns_fix *f = D.fix[i]; f;) {
			struct dns_fix *nx = f->next;
			free(f->txt);
			free(f);
			f = nx;
		}
	free(D.fix);
	D.fix = NULL;
	D.nfix = 0;
	D.fixture = false;
}

int dns_fixture_load(const char *path, char *err, size_t errsz)
{
	FILE *fp = fopen(path, "r");
	char line[4096];
	unsigned lineno = 0;
	if (fp == NULL) {
		snprintf(err, errsz, "%s: %s", path, strerror(errno));
		return -1;
	}
	dns_fixture_free();
	D.nfix = 1 << 16;
	D.fix = calloc(D.nfix, sizeof(*D.fix));
	if (D.fix == NULL) {
		fclose(fp);
		snprintf(err, errsz, "out of memory");
		return -1;
	}
	while (fgets(line, sizeof(line), fp)) {
		lineno++;
		char *s = line;
		size_t l = strlen(s);
		if (l && s[l - 1] != '\n' && !feof(fp)) {
			snprintf(err, errsz, "%s:%u: line too long", path, lineno);
			goto fail;
		}
		while (l && (s[l - 1] == '\n' || s[l - 1] == '\r' || s[l - 1] == ' '))
			s[--l] = '\0';
		while (*s == ' ' || *s == '\t')
			s++;
		if (*s == '\0' || *s == '#')
			continue;
		char name[DNS_NAME_MAX], type[16];
		int used = 0;
		if (sscanf(s, "%255s %15s %n", name, type, &used) < 2) {
			snprintf(err, errsz, "%s:%u: expected NAME TYPE VALUE", path, lineno);
			goto fail;
		}
		char *rest = s + used;
		size_t nl = strlen(name);
		if (nl && name[nl - 1] == '.')
			name[--nl] = '\0';
		struct dns_fix *f = calloc(1, sizeof(*f) + nl + 1);
		if (f == NULL) {
			snprintf(err, errsz, "out of memory");
			goto fail;
		}
		memcpy(f->name, name, nl + 1);
		f->ttl = 3600;
		if (!strcasecmp(type, "A")) {
			char addr[64];
			struct in_addr ia;
			unsigned ttl;
			int k = sscanf(rest, "%63s %u", addr, &ttl);
			if (k < 1 || inet_pton(AF_INET, addr, &ia) != 1) {
				free(f);
				snprintf(err, errsz, "%s:%u: A needs an IPv4 address", path,
				         lineno);
				goto fail;
			}
			f->type = 1;
			f->a = ntohl(ia.s_addr);
			if (k == 2)
				f->ttl = ttl;
		} else if (!strcasecmp(type, "TXT")) {
			char *q = strchr(rest, '"'), *e = q ? strrchr(q + 1, '"') : NULL;
			if (q == NULL || e == NULL) {
				free(f);
				snprintf(err, errsz, "%s:%u: TXT needs a \"quoted\" value", path,
				         lineno);
				goto fail;
			}
			f->type = 16;
			f->txt = strndup(q + 1, (size_t)(e - q - 1));
			unsigned ttl;
			if (sscanf(e + 1, "%u", &ttl) == 1)
				f->ttl = ttl;
			if (f->txt == NULL) {
				free(f);
				snprintf(err, errsz, "out of memory");
				goto fail;
			}
		} else if (!strcasecmp(type, "NXDOMAIN")) {
			f->type = 0;
		} else {
			free(f);
			snprintf(err, errsz, "%s:%u: type '%s' (A, TXT or NXDOMAIN)", path, lineno,
			         type);
			goto fail;
		}
		f->h = dns_hash(f->name, 0);
		f->next = D.fix[f->h & (D.nfix - 1)];
		D.fix[f->h & (D.nfix - 1)] = f;
	}
	fclose(fp);
	D.fixture = true;
	return 0;
fail:
	fclose(fp);
	dns_fixture_free();
	return -1;
}

/* ---------------------------------------------------------------- queries */

static void dns_deliver(struct dns_q *q, struct dns_answer *a);

static void dns_ares_cb(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
	struct dns_q *q = arg;
	struct dns_answer a;
	(void)timeouts;
	if (D.inflight)
		D.inflight--;
	if (status == ARES_EDESTRUCTION || status == ARES_ECANCELLED) {
		memset(&a, 0, sizeof(a));
		a.result = DNS_ERROR;
		a.rcode = -1;
		a.error = "cancelled";
	} else {
		dns_stats.answers++;
		dns_parse(status, abuf, alen, q->type, &a);
	}
	dns_deliver(q, &a);
	dns_answer_free(&a);
}

/* Start a query; q is freed after its delivery.  -1 when it cannot start. */
static int dns_start(const char *name, struct dns_q *q)
{
	if (D.fixture) {
		struct dns_answer a;
		dns_stats.queries++;
		dns_fixture_answer(name, q->type, &a);
		dns_deliver(q, &a);
		dns_answer_free(&a);
		return 0;
	}
	if (!D.open)
		return -1;
	if (D.inflight >= D.conf.max_inflight) {
		dns_stats.skipped++;
		return -1;
	}
	dns_stats.queries++;
	D.inflight++;
	ares_query(D.ch, name, 1 /* C_IN */, q->type, dns_ares_cb, q);
	dns_timer_update();
	return 0;
}

int dns_query(const char *name, int type, dns_cb *cb, void *arg)
{
	if (type != 1 && type != 16)
		return -1;
	struct dns_q *q = calloc(1, sizeof(*q));
	if (q == NULL)
		return -1;
	q->cb = cb;
	q->arg = arg;
	q->type = type;
	if (dns_start(name, q) < 0) {
		free(q);
		return -1;
	}
	return 0;
}

/* ---------------------------------------------------------------- cached look-ups */

static uint32_t dns_clamp(uint32_t v, uint32_t lo, uint32_t hi)
{
	return v < lo ? lo : v > hi ? hi : v;
}

/* Is this A answer of a DNSBL a listing?  Bad codes are counted and logged. */
static enum dns_result dns_dnsbl_code(const char *name, const struct dns_answer *a, uint32_t *code)
{
	for (unsigned i = 0; i < a->n; i++) {
		uint32_t v = a->a[i];
		char t[INET_ADDRSTRLEN];
		struct in_addr ia = {.s_addr = htonl(v)};
		inet_ntop(AF_INET, &ia, t, sizeof(t));
		if ((v >> 24) != 127) {
			dns_stats.bad_answers++;
			dns_badlog("name=%s answer=%s reason=\"not in 127.0.0.0/8: not a DNSBL "
			           "answer (a resolver rewriting NXDOMAIN?)\"",
			           name, t);
			continue;
		}
		if (v == 0x7f000001u || (v & 0xffffff00u) == 0x7fffff00u) {
			dns_stats.refused_codes++;
			dns_badlog(
			    "name=%s answer=%s reason=\"error code of the list (query refused, "
			    "public resolver or over quota): not a listing\"",
			    name, t);
			continue;
		}
		*code = v;
		return DNS_YES;
	}
	return a->n ? DNS_ERROR : DNS_NO;
}

/* TXT "64500 | 203.0.113.0/24 | NL | ripencc | 2010-01-01" */
static int dns_parse_asn(const char *txt, struct dns_asn_info *out)
{
	char f[3][64];
	size_t nf = 0, k = 0;
	memset(out, 0, sizeof(*out));
	memset(f, 0, sizeof(f));
	for (const char *p = txt;; p++) {
		if (*p == '|' || *p == '\0') {
			if (nf < 3) {
				while (k && f[nf][k - 1] == ' ')
					k--;
				f[nf][k] = '\0';
			}
			nf++;
			k = 0;
			if (*p == '\0' || nf == 3)
				break;
			continue;
		}
		if (nf >= 3 || (k == 0 && *p == ' '))
			continue;
		if (k + 1 >= sizeof(f[0]))
			return -1;
		f[nf][k++] = *p;
	}
	/* the ASN: the first of possibly several */
	char *e;
	if (!isdigit((unsigned char)f[0][0]))
		return -1;
	errno = 0;
	unsigned long asn = strtoul(f[0], &e, 10);
	if (errno || asn == 0 || asn > UINT32_MAX || (*e && *e != ' '))
		return -1;
	out->asn = (uint32_t)asn;
	if (nf >= 2) {
		for (const char *p = f[1]; *p; p++)
			if (!isxdigit((unsigned char)*p) && *p != '.' && *p != ':' && *p != '/')
				return -1;
		size_t pl = strlen(f[1]);
		if (pl >= sizeof(out->prefix))
			return -1;
		memcpy(out->prefix, f[1], pl + 1);
	}
	if (nf >= 3 && f[2][0]) {
		if (strlen(f[2]) != 2 || !isalpha((unsigned char)f[2][0]) ||
		    !isalpha((unsigned char)f[2][1]))
			return -1;
		out->cc[0] = (char)toupper((unsigned char)f[2][0]);
		out->cc[1] = (char)toupper((unsigned char)f[2][1]);
	}
	return 0;
}

static void dns_deliver(struct dns_q *q, struct dns_answer *a)
{
	struct dns_entry *e = q->entry;
	if (q->cb)
		q->cb(q->arg, a);
	if (e) {
		int64_t now = dns_now();
		uint32_t ttl;
		e->pending = false;
		e->result = a->result;
		if (a->result == DNS_YES && e->kind == DNS_K_DNSBL)
			e->result = dns_dnsbl_code(e->name, a, &e->code);
		else if (a->result == DNS_YES && e->kind == DNS_K_ASN) {
			if (a->txt_cut || dns_parse_asn(a->txt[0], &e->asn) < 0) {
				dns_stats.bad_answers++;
				dns_badlog(
				    "name=%s reason=\"TXT is not 'ASN | prefix | CC | ...'\" "
				    "txt=\"%.80s%s\"",
				    e->name, a->txt[0], strlen(a->txt[0]) > 80 ? "..." : "");
				e->result = DNS_ERROR;
			}
		}
		switch (e->result) {
		case DNS_YES:
			ttl = dns_clamp(a->ttl, D.conf.min_ttl, D.conf.max_ttl);
			break;
		case DNS_NO:
			ttl = a->ttl ? dns_clamp(a->ttl,
			                         D.conf.min_ttl < D.conf.neg_max_ttl
			                             ? D.conf.min_ttl
			                             : D.conf.neg_max_ttl,
			                         D.conf.neg_max_ttl)
			             : D.conf.neg_ttl;
			break;
		default:
			ttl = D.conf.error_ttl;
			break;
		}
		e->expires_us = now + (int64_t)ttl * 1000000;
	}
	free(q);
}

static enum dns_result dns_cached(const char *name, int kind, int type, int64_t now_us,
                                  struct dns_entry **out)
{
	if (now_us > D.now_us)
		D.now_us = now_us;
	*out = NULL;
	struct dns_entry *e = dns_cache_find(name, kind);
	if (e) {
		if (e->pending)
			return DNS_PENDING;
		if (e->expires_us > now_us) {
			dns_stats.hits++;
			dns_lru_unlink(e);
			dns_lru_front(e);
			*out = e;
			return e->result;
		}
		dns_cache_remove(e);
	}
	dns_stats.misses++;
	if (!D.open && !D.fixture)
		return DNS_UNKNOWN;
	if (!D.fixture && D.inflight >= D.conf.max_inflight) {
		dns_stats.skipped++;
		return DNS_UNKNOWN;
	}
	e = dns_cache_add(name, kind);
	if (e == NULL)
		return DNS_UNKNOWN;
	struct dns_q *q = calloc(1, sizeof(*q));
	if (q == NULL) {
		dns_cache_remove(e);
		return DNS_UNKNOWN;
	}
	q->type = type;
	q->entry = e;
	e->pending = true;
	if (dns_start(name, q) < 0) {
		free(q);
		dns_cache_remove(e);
		return DNS_UNKNOWN;
	}
	if (e->pending)
		return DNS_PENDING;
	*out = e; /* answered at once (fixture) */
	return e->result;
}

size_t dns_reverse_name(char *out, size_t outsz, const char *ip, const char *zone, bool host)
{
	unsigned char a[16];
	int n;
	if (inet_pton(AF_INET, ip, a) == 1) {
		if (!host)
			a[3] = 0;
		n = snprintf(out, outsz, "%u.%u.%u.%u.%s", a[3], a[2], a[1], a[0], zone);
	} else if (inet_pton(AF_INET6, ip, a) == 1) {
		static const char hx[] = "0123456789abcdef";
		char nib[64];
		size_t k = 0;
		if (!host)
			memset(a + 8, 0, 8);
		for (int i = 15; i >= 0; i--) {
			nib[k++] = hx[a[i] & 15];
			nib[k++] = '.';
			nib[k++] = hx[a[i] >> 4];
			nib[k++] = '.';
		}
		nib[k - 1] = '\0';
		n = snprintf(out, outsz, "%s.%s", nib, zone);
	} else
		return 0;
	if (n < 0 || (size_t)n >= outsz)
		return 0;
	return (size_t)n;
}

enum dns_result dns_asn(const char *ip, const char *zone4, const char *zone6, int64_t now_us,
                        struct dns_asn_info *out)
{
	char name[DNS_NAME_MAX];
	const char *zone = strchr(ip, ':') ? zone6 : zone4;
	struct dns_entry *e;
	memset(out, 0, sizeof(*out));
	if (zone == NULL || zone[0] == '\0')
		return DNS_UNKNOWN;
	if (dns_reverse_name(name, sizeof(name), ip, zone, false) == 0) {
		dns_stats.bad_addresses++;
		return DNS_UNKNOWN;
	}
	enum dns_result r = dns_cached(name, DNS_K_ASN, 16, now_us, &e);
	if (r == DNS_YES && e)
		*out = e->asn;
	return r;
}

/* Does the zone answer sanely?  127.0.0.1 must not be listed (RFC 5782). */
static bool dns_zone_sane(const char *zone, int64_t now_us)
{
	char name[DNS_NAME_MAX];
	struct dns_entry *e;
	if (snprintf(name, sizeof(name), "1.0.0.127.%s", zone) >= (int)sizeof(name))
		return false;
	enum dns_result r = dns_cached(name, DNS_K_DNSBL, 1, now_us, &e);
	if (r == DNS_YES && e) {
		e->expires_us = now_us + (int64_t)D.conf.probe_interval * 1000000;
		dns_stats.broken_zone++;
		dns_badlog("zone=%s reason=\"lists the test address 127.0.0.1: the list answers "
		           "everything (or is misused); its listings are ignored\"",
		           zone);
		return false;
	}
	if (r == DNS_NO && e && e->expires_us < now_us + (int64_t)D.conf.probe_interval * 1000000)
		e->expires_us = now_us + (int64_t)D.conf.probe_interval * 1000000;
	return r == DNS_NO;
}

static enum dns_result dns_list(const char *name, const char *zone, int64_t now_us, uint32_t *code)
{
	struct dns_entry *e;
	*code = 0;
	enum dns_result r = dns_cached(name, DNS_K_DNSBL, 1, now_us, &e);
	if (r != DNS_YES || e == NULL)
		return r;
	if (!dns_zone_sane(zone, now_us))
		return DNS_UNKNOWN;
	*code = e->code;
	return DNS_YES;
}

enum dns_result dns_dnsbl(const char *ip, const char *zone, int64_t now_us, uint32_t *code)
{
	char name[DNS_NAME_MAX];
	*code = 0;
	if (zone == NULL || zone[0] == '\0')
		return DNS_UNKNOWN;
	if (dns_reverse_name(name, sizeof(name), ip, zone, true) == 0) {
		dns_stats.bad_addresses++;
		dns_badlog("client=\"%.64s\" reason=\"not an IP address: no DNSBL look-up\"", ip);
		return DNS_UNKNOWN;
	}
	return dns_list(name, zone, now_us, code);
}

enum dns_result dns_dnsbl_name(const char *domain, const char *zone, int64_t now_us, uint32_t *code)
{
	char name[DNS_NAME_MAX];
	*code = 0;
	int n = snprintf(name, sizeof(name), "%s.%s", domain, zone);
	if (n < 0 || (size_t)n >= sizeof(name) || domain[0] == '\0' || domain[0] == '.')
		return DNS_UNKNOWN;
	return dns_list(name, zone, now_us, code);
}

/* ---------------------------------------------------------------- module */

static int dns_mod_start(struct module_ctx *m, char *err, size_t errsz)
{
	const struct dns_conf *c = config_section_get(m->cfg, &dns_section);
	D.now_us = dns_wall_us();
	return dns_open(m->loop, c, err, errsz);
}

static void dns_mod_reload(struct module_ctx *m, const struct config *cfg)
{
	const struct dns_conf *c = config_section_get(cfg, &dns_section);
	char err[256];
	if (!memcmp(c, &D.conf, sizeof(*c)))
		return;
	if (dns_open(m->loop, c, err, sizeof(err)) < 0)
		log_err("dns: reload: %s (no DNS look-ups until the next reload)", err);
	else
		log_info("event=dns_reload servers=\"%s\"", c->servers[0] ? c->servers : "system");
}

static void dns_mod_stop(struct module_ctx *m)
{
	(void)m;
	dns_close();
}

const struct module dns_module = {
    .name = "dns",
    .start = dns_mod_start,
    .reload = dns_mod_reload,
    .stop = dns_mod_stop,
};
