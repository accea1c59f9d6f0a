/*
 * policyd/server.c - owns listeners and connections on the libev loop.
 *
 * A connection carries one request at a time, as Postfix sends them; bytes
 * are read into a per-connection buffer (4 KB, grown up to max_request
 * while a large request arrives, shrunk again after), parsed by proto/,
 * run through the pipeline, and answered.  policyd never closes a
 * connection Postfix still holds, except after idle_timeout (keep it well
 * above smtpd_policy_service_max_idle), on a stream that cannot be
 * resynchronised, or at shutdown.  Above max_connections a new connection
 * is closed at once with a (rate-limited) log line.
 */
#include "server.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "chroot.h"
#include "held.h"
#include "log.h"
#include "metrics.h"
#include "pipeline.h"
#include "proto/reply.h"
#include "proto/request.h"

#define CONN_BUF_INIT      4096
#define SERVER_MAX_RETIRED 16

struct listener {
	ev_io w;
	struct server *srv;
	char *name;
	char *unix_path; /* to unlink at exit */
};

struct conn {
	ev_io rw, ww;
	ev_timer idle;
	ev_tstamp last;
	struct server *srv;
	struct conn *prev, *next;
	char *buf;
	size_t len, cap;
	struct proto_parser parser;
	struct proto_request req;
	struct proto_kv *extra;
	size_t extra_cap;
	struct txn txn;
	char out[PROTO_REPLY_BUFSZ * 4];
	size_t outlen, outoff;
	bool busy; /* a request is waiting for the store */
	char peer[80];
	struct pipeline_ctx *px;
	uint64_t t0_ns;
	size_t reqlen; /* bytes of the request in flight */
};

struct server {
	struct ev_loop *loop;
	struct config *cfg;
	/* configs replaced while requests were in flight: freed when none is */
	struct config *retired[SERVER_MAX_RETIRED];
	size_t nretired;
	struct store *store;
	struct listener ls[CONFIG_MAX_LISTEN];
	size_t nls;
	struct conn *conns;
	unsigned nconns, busy;
	bool stopping;
	ev_timer stop_timer;
	ev_tstamp last_refuse_log;
	ev_tstamp last_store_log;
	struct pipeline_ctx *spare; /* one cached context */
	struct server_stats st;
};

static void conn_read_cb(struct ev_loop *loop, ev_io *w, int revents);
static void conn_write_cb(struct ev_loop *loop, ev_io *w, int revents);
static void conn_process(struct conn *c);

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static int64_t wall_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ------------------------------------------------------------ endpoints */

int server_parse_endpoint(const char *ep, int *family, char *host, size_t hostsz, char *port,
                          size_t portsz, char *err, size_t errsz)
{
	if (strncmp(ep, "unix:", 5) == 0) {
		const char *path = ep + 5;
		if (path[0] != '/' || strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path) ||
		    strlen(path) >= hostsz) {
			snprintf(err, errsz,
			         "'%s': unix sockets need an absolute path of at most %zu bytes",
			         ep, sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
			return -1;
		}
		*family = AF_UNIX;
		snprintf(host, hostsz, "%s", path);
		port[0] = '\0';
		return 0;
	}
	if (strncmp(ep, "inet:", 5) != 0) {
		snprintf(err, errsz, "'%s': expected inet:host:port or unix:/path", ep);
		return -1;
	}
	const char *h = ep + 5, *colon;
	size_t hlen;
	if (h[0] == '[') {
		const char *close = strchr(h, ']');
		if (close == NULL || close[1] != ':') {
			snprintf(err, errsz, "'%s': expected inet:[v6addr]:port", ep);
			return -1;
		}
		hlen = (size_t)(close - h - 1);
		h++;
		colon = close + 1;
	} else {
		colon = strrchr(h, ':');
		if (colon == NULL) {
			snprintf(err, errsz, "'%s': no port (inet:host:port)", ep);
			return -1;
		}
		hlen = (size_t)(colon - h);
	}
	char *end;
	unsigned long p = strtoul(colon + 1, &end, 10);
	if (!isdigit((unsigned char)colon[1]) || *end || p == 0 || p > 65535) {
		snprintf(err, errsz, "'%s': bad port", ep);
		return -1;
	}
	if (hlen == 0 || hlen >= hostsz) {
		snprintf(err, errsz, "'%s': bad host", ep);
		return -1;
	}
	memcpy(host, h, hlen);
	host[hlen] = '\0';
	snprintf(port, portsz, "%lu", p);
	*family = AF_INET; /* or AF_INET6: decided by getaddrinfo */
	return 0;
}

static int listen_unix(const char *path, unsigned mode, char *err, size_t errsz)
{
	struct sockaddr_un sun;
	struct stat sb;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		snprintf(err, errsz, "socket: %s", strerror(errno));
		return -1;
	}
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sun.sun_path)) {
		snprintf(err, errsz, "unix:%s: path too long", path);
		close(fd);
		return -1;
	}
	memcpy(sun.sun_path, path, strlen(path) + 1);
	/* a stale socket of an earlier run: remove it, but never a regular file */
	if (lstat(path, &sb) == 0) {
		if (!S_ISSOCK(sb.st_mode)) {
			snprintf(err, errsz, "unix:%s exists and is not a socket", path);
			close(fd);
			return -1;
		}
		int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (probe >= 0 && connect(probe, (struct sockaddr *)&sun, sizeof(sun)) == 0) {
			snprintf(err, errsz, "unix:%s: another server is listening there", path);
			close(probe);
			close(fd);
			return -1;
		}
		if (probe >= 0)
			close(probe);
		unlink(path);
	}
	mode_t old = umask(0777 & ~mode);
	int rc = bind(fd, (struct sockaddr *)&sun, sizeof(sun));
	umask(old);
	if (rc < 0 || chmod(path, mode) < 0 || listen(fd, 1024) < 0) {
		snprintf(err, errsz, "unix:%s: %s", path, strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

static int listen_inet(const char *host, const char *port, char *err, size_t errsz)
{
	struct addrinfo hints, *res = NULL;
	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE;
	int gai = getaddrinfo(host, port, &hints, &res);
	if (gai != 0 || res == NULL) {
		snprintf(err, errsz, "inet:%s:%s: %s", host, port, gai_strerror(gai));
		return -1;
	}
	int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	int one = 1;
	if (fd < 0) {
		snprintf(err, errsz, "socket: %s", strerror(errno));
		freeaddrinfo(res);
		return -1;
	}
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (res->ai_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, 1024) < 0) {
		snprintf(err, errsz, "inet:%s:%s: %s", host, port, strerror(errno));
		close(fd);
		freeaddrinfo(res);
		return -1;
	}
	freeaddrinfo(res);
	return fd;
}

/* ------------------------------------------------------------ connections */

static void conn_close(struct conn *c, const char *why)
{
	struct server *s = c->srv;
	if (why)
		log_info("event=close peer=%s reason=\"%s\"", c->peer, why);
	ev_io_stop(s->loop, &c->rw);
	ev_io_stop(s->loop, &c->ww);
	ev_timer_stop(s->loop, &c->idle);
	close(c->rw.fd);
	if (c->prev)
		c->prev->next = c->next;
	else
		s->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	s->nconns--;
	txn_free(&c->txn);
	free(c->buf);
	free(c->extra);
	free(c->px);
	free(c);
}

static void conn_idle_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct conn *c = w->data;
	ev_tstamp after = c->last + c->srv->cfg->idle_timeout_s - ev_now(loop);
	if (c->busy || after > 0.5) {
		w->repeat = after > 0.5 ? after : c->srv->cfg->idle_timeout_s;
		ev_timer_again(loop, w);
		return;
	}
	c->srv->st.closed_idle++;
	conn_close(c, "idle timeout");
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct listener *l = (struct listener *)w;
	struct server *s = l->srv;

	for (int i = 0; i < 64; i++) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		int fd = accept4(w->fd, (struct sockaddr *)&ss, &sl, SOCK_CLOEXEC | SOCK_NONBLOCK);
		if (fd < 0) {
			if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
			    errno != ECONNABORTED)
				log_warn("accept on %s: %s", l->name, strerror(errno));
			return;
		}
		if (s->stopping || s->nconns >= s->cfg->max_connections) {
			s->st.refused_conns++;
			if (ev_now(loop) - s->last_refuse_log > 10) {
				log_warn("event=refuse_connection listener=%s connections=%u "
				         "max_connections=%u",
				         l->name, s->nconns, s->cfg->max_connections);
				s->last_refuse_log = ev_now(loop);
			}
			close(fd);
			continue;
		}
		struct conn *c = calloc(1, sizeof(*c));
		if (c)
			c->buf = malloc(CONN_BUF_INIT);
		if (c)
			c->extra = calloc(s->cfg->max_attrs, sizeof(*c->extra));
		if (c == NULL || c->buf == NULL || c->extra == NULL) {
			log_err("out of memory accepting a connection on %s", l->name);
			if (c) {
				free(c->buf);
				free(c->extra);
			}
			free(c);
			close(fd);
			continue;
		}
		c->cap = CONN_BUF_INIT;
		c->extra_cap = s->cfg->max_attrs;
		c->srv = s;
		if (ss.ss_family == AF_INET || ss.ss_family == AF_INET6) {
			char h[INET6_ADDRSTRLEN] = "?";
			int one = 1;
			setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
			if (ss.ss_family == AF_INET)
				inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, h,
				          sizeof(h));
			else
				inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, h,
				          sizeof(h));
			snprintf(c->peer, sizeof(c->peer), "%s", h);
		} else {
			snprintf(c->peer, sizeof(c->peer), "%s", l->name);
		}
		struct proto_limits lim = {s->cfg->max_request, s->cfg->max_line,
		                           s->cfg->max_attrs};
		proto_parser_init(&c->parser, &lim);
		txn_init(&c->txn);
		ev_io_init(&c->rw, conn_read_cb, fd, EV_READ);
		ev_io_init(&c->ww, conn_write_cb, fd, EV_WRITE);
		c->rw.data = c->ww.data = c;
		ev_init(&c->idle, conn_idle_cb);
		c->idle.data = c;
		c->idle.repeat = s->cfg->idle_timeout_s;
		c->last = ev_now(loop);
		ev_timer_again(loop, &c->idle);
		ev_io_start(loop, &c->rw);
		c->next = s->conns;
		if (s->conns)
			s->conns->prev = c;
		s->conns = c;
		s->nconns++;
		s->st.accepted++;
	}
}

/* Write what is pending; returns -1 when the connection was closed. */
static int conn_flush(struct conn *c)
{
	while (c->outoff < c->outlen) {
		ssize_t n = write(c->rw.fd, c->out + c->outoff, c->outlen - c->outoff);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				ev_io_stop(c->srv->loop, &c->rw);
				ev_io_start(c->srv->loop, &c->ww);
				return 0;
			}
			conn_close(c, strerror(errno));
			return -1;
		}
		c->outoff += (size_t)n;
	}
	c->outoff = c->outlen = 0;
	ev_io_stop(c->srv->loop, &c->ww);
	if (!c->busy)
		ev_io_start(c->srv->loop, &c->rw);
	return 0;
}

static void conn_write_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct conn *c = w->data;
	if (conn_flush(c) == 0 && c->outlen == 0 && !c->busy)
		conn_process(c); /* requests that arrived meanwhile */
}

static void conn_reply(struct conn *c, const char *reply, size_t len)
{
	if (c->outlen + len > sizeof(c->out)) {
		/* cannot happen: conn_process flushes before the buffer fills */
		log_err("reply buffer full on %s: reply dropped", c->peer);
		return;
	}
	memcpy(c->out + c->outlen, reply, len);
	c->outlen += len;
}

static void log_decision(struct conn *c, struct pipeline_ctx *x, uint64_t us)
{
	const struct config *cfg = c->srv->cfg;
	const struct proto_request *q = x->req;
	struct log_kv kv;

	if (cfg->log_decisions == 0 || (cfg->log_decisions == 1 && x->v.nparts == 0))
		return;
	log_kv_init(&kv, "decision");
	log_kv_str(&kv, "queue_id", proto_get(q, PROTO_A_QUEUE_ID));
	log_kv_str(&kv, "instance", proto_get(q, PROTO_A_INSTANCE));
	log_kv_str(&kv, "state", proto_state_name(q->state));
	log_kv_str(&kv, "principal", x->principal);
	log_kv_str(&kv, "outbound", x->outbound ? "yes" : "no");
	log_kv_str(&kv, "client", proto_get(q, PROTO_A_CLIENT_ADDRESS));
	log_kv_str(&kv, "sender", proto_get(q, PROTO_A_SENDER));
	if (q->state == PROTO_STATE_RCPT || q->attr[PROTO_A_RECIPIENT].len)
		log_kv_str(&kv, "recipient", proto_get(q, PROTO_A_RECIPIENT));
	if (q->state == PROTO_STATE_EOM || q->state == PROTO_STATE_DATA) {
		log_kv_u64(&kv, "recipient_count", q->recipient_count);
		log_kv_u64(&kv, "size", q->size);
	}
	log_kv_str(&kv, "verdict", verdict_action_word(x->v.action));
	const struct verdict_part *w = x->v.winner >= 0 ? &x->v.part[x->v.winner] : NULL;
	log_kv_str(&kv, "rule", w ? w->rule : "");
	log_kv_str(&kv, "reason", w ? w->reason : "");
	if (x->v.nparts > 1 || (x->v.nparts == 1 && x->v.winner < 0)) {
		char fired[512];
		size_t n = 0;
		fired[0] = '\0';
		for (size_t i = 0; i < x->v.nparts && n < sizeof(fired); i++) {
			const struct verdict_part *p = &x->v.part[i];
			int k = snprintf(fired + n, sizeof(fired) - n, "%s%s:%s%s", n ? "," : "",
			                 p->rule, config_action_name(p->action),
			                 p->dry_run ? "(dry-run)" : "");
			if (k < 0)
				break;
			n += (size_t)k;
		}
		log_kv_str(&kv, "fired", fired);
		if (x->v.winner < 0 && x->v.nparts == 1)
			log_kv_str(&kv, "dry_run_reason", x->v.part[0].reason);
	}
	log_kv_u64(&kv, "us", us);
	log_kv_emit(&kv, LOG_L_INFO);
}

static void follow_cb(void *arg, enum store_status st, const struct store_result *res, size_t n)
{
	struct server *s = arg;
	if (st != STORE_OK)
		s->st.store_errors++;
}

static void conn_answer(struct conn *c)
{
	struct server *s = c->srv;
	struct pipeline_ctx *x = c->px;
	char reply[PROTO_REPLY_BUFSZ];
	size_t len;

	if (x->st != STORE_OK) {
		s->st.store_errors++;
		/* the store logs each episode; here at most one line per 10 s */
		if (ev_now(s->loop) - s->last_store_log > 10) {
			log_warn(
			    "event=store_error store=%s error=\"%s\" answer=\"%s\" errors=%llu",
			    s->store->be->name, s->store->err, s->cfg->fallback_action,
			    s->st.store_errors);
			s->last_store_log = ev_now(s->loop);
		}
		len = proto_reply_format(reply, sizeof(reply), s->cfg->fallback_action, NULL);
		x->v.action = ACT_DUNNO;
	} else {
		pipeline_finish(x);
		len = verdict_reply(&x->v, reply, sizeof(reply));
		if (x->nfollow)
			store_batch(s->store, x->follow, x->nfollow, x->now_us, follow_cb, s);
	}
	s->st.verdicts[x->v.action]++;
	uint64_t us = (now_ns() - c->t0_ns) / 1000;
	metrics_request_done(x->req->state, &x->v, us);
	held_note(x);
	log_decision(c, x, us);
	/* the request's bytes are no longer referenced */
	c->len -= c->reqlen;
	memmove(c->buf, c->buf + c->reqlen, c->len);
	c->reqlen = 0;
	conn_reply(c, reply, len);
}

static void store_done(void *arg, enum store_status st, const struct store_result *res, size_t n)
{
	struct conn *c = arg;
	struct server *s = c->srv;
	struct pipeline_ctx *x = c->px;

	x->st = st;
	if (st == STORE_OK && n == x->nops) {
		if (n)
			memcpy(x->res, res, n * sizeof(*res));
	} else if (st == STORE_OK)
		x->st = STORE_EINTERNAL;
	bool async = c->busy;
	c->busy = false;
	s->busy--;
	conn_answer(c);
	if (async) {
		/* answered later from the loop: flush, then go on */
		if (conn_flush(c) == 0 && c->outlen == 0)
			conn_process(c);
	}
	if (s->busy == 0)
		while (s->nretired > 0)
			config_free(s->retired[--s->nretired]);
	if (s->stopping && s->busy == 0)
		ev_break(s->loop, EVBREAK_ALL);
}

/* Start one request; -1 when the connection had to be closed. */
static int conn_request(struct conn *c, size_t used)
{
	struct server *s = c->srv;
	if (c->px == NULL) {
		c->px = s->spare ? s->spare : malloc(sizeof(*c->px));
		s->spare = NULL;
		if (c->px == NULL) {
			log_err("out of memory for a request");
			conn_close(c, "out of memory");
			return -1;
		}
	}
	struct pipeline_ctx *x = c->px;
	s->st.requests++;
	c->reqlen = used;
	pipeline_begin(x, s->cfg, &c->req, &c->txn, wall_us());
	pipeline_prepare(x);
	c->busy = true;
	s->busy++;
	if (x->nops == 0) {
		store_done(c, STORE_OK, NULL, 0);
		return 0;
	}
	if (store_batch(s->store, x->ops, x->nops, x->now_us, store_done, c) != 0 && c->busy) {
		snprintf(s->store->err, sizeof(s->store->err), "batch not accepted");
		store_done(c, STORE_EUNAVAIL, NULL, 0);
	}
	return 0;
}

/* Parse and answer every complete request in the buffer. */
static void conn_process(struct conn *c)
{
	struct server *s = c->srv;
	uint64_t now = 0;

	while (!c->busy && c->len > 0) {
		size_t used = 0;
		struct proto_diag diag;
		c->req.extra = c->extra;
		c->req.extra_cap = c->extra_cap;
		if (now == 0)
			now = now_ns();
		c->t0_ns = now;
		enum proto_status ps =
		    proto_parse(&c->parser, c->buf, c->len, &c->req, &used, &diag);
		if (ps == PROTO_MORE)
			break;
		if (ps == PROTO_FATAL) {
			s->st.fatal_streams++;
			log_warn("event=bad_stream peer=%s error=\"%s\" bytes=%zu action=close",
			         c->peer, proto_error_str(diag.code), c->len);
			conn_close(c, NULL);
			return;
		}
		if (ps == PROTO_BAD) {
			char reply[PROTO_REPLY_BUFSZ];
			s->st.bad_requests++;
			log_warn("event=bad_request peer=%s error=\"%s\" line=%zu answer=\"%s\"",
			         c->peer, proto_error_str(diag.code), diag.line,
			         s->cfg->fallback_action);
			c->len -= used;
			memmove(c->buf, c->buf + used, c->len);
			conn_reply(c, reply,
			           proto_reply_format(reply, sizeof(reply), s->cfg->fallback_action,
			                              NULL));
			if (c->outlen > sizeof(c->out) - PROTO_REPLY_BUFSZ) {
				if (conn_flush(c) < 0)
					return;
				if (c->outlen)
					return;
			}
			continue;
		}
		if (conn_request(c, used) < 0)
			return;
		if (c->busy)
			ev_io_stop(s->loop, &c->rw); /* one request in flight */
		/* many requests in one read: write before the reply buffer fills */
		if (c->outlen > sizeof(c->out) - PROTO_REPLY_BUFSZ) {
			if (conn_flush(c) < 0)
				return;
			if (c->outlen)
				return; /* the write watcher resumes us */
		}
	}
	if (c->outlen && conn_flush(c) < 0)
		return;
	if (c->px && !c->busy) {
		if (s->spare == NULL)
			s->spare = c->px;
		else
			free(c->px);
		c->px = NULL;
	}
	/* a big request is gone: give the memory back */
	if (c->cap > CONN_BUF_INIT && c->len <= CONN_BUF_INIT / 2) {
		char *nb = malloc(CONN_BUF_INIT);
		if (nb) {
			memcpy(nb, c->buf, c->len);
			free(c->buf);
			c->buf = nb;
			c->cap = CONN_BUF_INIT;
		}
	}
}

static void conn_read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct conn *c = w->data;
	struct server *s = c->srv;

	if (c->len == c->cap) {
		size_t ncap = c->cap * 2;
		if (ncap > s->cfg->max_request + 1)
			ncap = s->cfg->max_request + 1;
		if (ncap <= c->cap) {
			/* the parser reports the oversized request before this */
			conn_close(c, "request too large");
			return;
		}
		char *nb = realloc(c->buf, ncap);
		if (nb == NULL) {
			conn_close(c, "out of memory");
			return;
		}
		c->buf = nb;
		c->cap = ncap;
	}
	ssize_t n = read(w->fd, c->buf + c->len, c->cap - c->len);
	if (n == 0) {
		conn_close(c, NULL); /* Postfix closed it: normal */
		return;
	}
	if (n < 0) {
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
			return;
		conn_close(c, strerror(errno));
		return;
	}
	c->len += (size_t)n;
	c->last = ev_now(loop);
	conn_process(c);
}

/* ------------------------------------------------------------ server */

struct server *server_new(struct ev_loop *loop, struct config *cfg, struct store *store, char *err,
                          size_t errsz)
{
	struct server *s = calloc(1, sizeof(*s));
	if (s == NULL) {
		snprintf(err, errsz, "out of memory");
		return NULL;
	}
	s->loop = loop;
	s->cfg = cfg;
	s->store = store;
	for (size_t i = 0; i < cfg->nlisten; i++) {
		char host[256], port[16];
		int fam, fd;
		if (server_parse_endpoint(cfg->listen[i], &fam, host, sizeof(host), port,
		                          sizeof(port), err, errsz) < 0)
			goto fail;
		if (fam == AF_UNIX)
			fd = listen_unix(host, cfg->socket_mode, err, errsz);
		else
			fd = listen_inet(host, port, err, errsz);
		if (fd >= 0 && fam == AF_UNIX && cfg->socket_group) {
			struct group *gr = getgrnam(cfg->socket_group);
			if (gr == NULL || chown(host, (uid_t)-1, gr->gr_gid) < 0) {
				snprintf(err, errsz, "unix:%s: socket_group %s: %s", host,
				         cfg->socket_group, gr ? strerror(errno) : "no such group");
				close(fd);
				fd = -1;
			}
		}
		if (fd < 0)
			goto fail;
		struct listener *l = &s->ls[s->nls++];
		ev_io_init(&l->w, accept_cb, fd, EV_READ);
		l->srv = s;
		l->name = strdup(cfg->listen[i]);
		l->unix_path = fam == AF_UNIX ? strdup(host) : NULL;
	}
	return s;
fail:
	server_free(s);
	return NULL;
}

void server_start(struct server *s)
{
	for (size_t i = 0; i < s->nls; i++) {
		ev_io_start(s->loop, &s->ls[i].w);
		log_info("event=listen endpoint=%s", s->ls[i].name);
	}
}

int server_reload(struct server *s, struct config *cfg)
{
	if (s->busy && s->nretired == SERVER_MAX_RETIRED)
		return -1; /* a reload storm while requests wait for the store */
	bool same = cfg->nlisten == s->cfg->nlisten;
	for (size_t i = 0; same && i < cfg->nlisten; i++)
		same = strcmp(cfg->listen[i], s->cfg->listen[i]) == 0;
	if (!same)
		log_warn(
		    "listen changed in %s: restart policyd to apply it (the old listeners stay)",
		    cfg->path);
	if (s->busy)
		s->retired[s->nretired++] = s->cfg;
	else
		config_free(s->cfg);
	s->cfg = cfg;
	return 0;
}

static void stop_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct server *s = w->data;
	log_warn("%u requests still in flight at shutdown: giving up on them", s->busy);
	ev_break(loop, EVBREAK_ALL);
}

void server_stop(struct server *s)
{
	s->stopping = true;
	for (size_t i = 0; i < s->nls; i++)
		ev_io_stop(s->loop, &s->ls[i].w);
	if (s->busy == 0) {
		ev_break(s->loop, EVBREAK_ALL);
		return;
	}
	ev_timer_init(&s->stop_timer, stop_timeout_cb, 5.0, 0);
	s->stop_timer.data = s;
	ev_timer_start(s->loop, &s->stop_timer);
}

void server_free(struct server *s)
{
	if (s == NULL)
		return;
	while (s->conns)
		conn_close(s->conns, NULL);
	for (size_t i = 0; i < s->nls; i++) {
		ev_io_stop(s->loop, &s->ls[i].w);
		close(s->ls[i].w.fd);
		if (s->ls[i].unix_path && chroot_reachable(s->ls[i].unix_path))
			unlink(chroot_path(s->ls[i].unix_path));
		free(s->ls[i].unix_path);
		free(s->ls[i].name);
	}
	ev_timer_stop(s->loop, &s->stop_timer);
	while (s->nretired > 0)
		config_free(s->retired[--s->nretired]);
	free(s->spare);
	free(s);
}

const struct server_stats *server_stats(const struct server *s)
{
	return &s->st;
}

struct config *server_config(struct server *s)
{
	return s->cfg;
}
