/*
 * tests/bench/ceiling.c - the answer-only policy server: the throughput
 * ceiling that every policyd figure is compared to.
 *
 * Owns: a one-thread libev server that listens on inet:host:port or
 * unix:/path (-l), reads policy requests on any number of non-blocking
 * connections and answers each complete request (an empty line) with
 * `action=DUNNO\n\n`.  Several requests in one read and requests split over
 * reads are both handled; nothing is parsed, stored or logged.  It never
 * closes a connection unless the client does or an I/O error happens.
 *
 * Entry point: main(); `ceiling -h`.
 *
 * Limits: a read is at most CEILING_RBUF_SIZE bytes (shared buffer, nothing
 * is kept between reads except "the last byte ended a line"); when the client
 * does not read its answers, the connection stops being read until they are
 * written.  SIGINT/SIGTERM stop it cleanly (the unix socket is removed).
 */
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define CEILING_DEFAULT_LISTEN "inet:127.0.0.1:10031"
#define CEILING_RBUF_SIZE      65536
#define CEILING_REPLY          "action=DUNNO\n\n"
#define CEILING_REPLY_LEN      (sizeof(CEILING_REPLY) - 1)
#define CEILING_OUT_REPLIES    1024 /* the answer buffer holds this many replies */

struct ceiling_conn {
	ev_io rio;
	ev_io wio;
	bool at_line_start; /* the next byte starts a line (so "\n" ends a request) */
	size_t pending;     /* answer bytes still to write */
	size_t out_off;     /* position in the reply pattern of the next byte */
	struct ceiling_conn *prev, *next;
};

static char ceiling_rbuf[CEILING_RBUF_SIZE];
static char ceiling_out[CEILING_OUT_REPLIES * CEILING_REPLY_LEN];
static struct ceiling_conn *ceiling_conns; /* all open connections, to free at exit */
static unsigned long long ceiling_nconns;

static void ceiling_close(struct ev_loop *loop, struct ceiling_conn *c)
{
	ev_io_stop(loop, &c->rio);
	ev_io_stop(loop, &c->wio);
	close(c->rio.fd);
	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		ceiling_conns = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	free(c);
}

/*
 * Write pending answers.  The output stream is the reply repeated, so any
 * position in it is out_off bytes into one reply: write straight from the
 * prefilled buffer.  Returns false if the connection was closed.
 */
static bool ceiling_flush(struct ev_loop *loop, struct ceiling_conn *c)
{
	while (c->pending > 0) {
		size_t n = sizeof(ceiling_out) - c->out_off;
		ssize_t w;

		if (n > c->pending)
			n = c->pending;
		w = send(c->rio.fd, ceiling_out + c->out_off, n, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				/* stop reading until the client takes its answers */
				ev_io_stop(loop, &c->rio);
				ev_io_start(loop, &c->wio);
				return true;
			}
			ceiling_close(loop, c);
			return false;
		}
		c->pending -= (size_t)w;
		c->out_off = (c->out_off + (size_t)w) % CEILING_REPLY_LEN;
	}
	if (ev_is_active(&c->wio)) {
		ev_io_stop(loop, &c->wio);
		ev_io_start(loop, &c->rio);
	}
	return true;
}

static void ceiling_on_write(struct ev_loop *loop, ev_io *w, int revents)
{
	struct ceiling_conn *c =
	    (struct ceiling_conn *)((char *)w - offsetof(struct ceiling_conn, wio));

	(void)revents;
	(void)ceiling_flush(loop, c);
}

/* Count the requests completed by buf[0..n): an empty line ends one. */
static size_t ceiling_count(struct ceiling_conn *c, const char *buf, size_t n)
{
	const char *p = buf, *end = buf + n;
	size_t done = 0;

	while (p < end) {
		const char *nl;

		if (c->at_line_start) {
			if (*p == '\n') {
				done++;
				p++;
				continue;
			}
			c->at_line_start = false;
		}
		nl = memchr(p, '\n', (size_t)(end - p));
		if (nl == NULL)
			break;
		p = nl + 1;
		c->at_line_start = true;
	}
	return done;
}

static void ceiling_on_read(struct ev_loop *loop, ev_io *w, int revents)
{
	struct ceiling_conn *c =
	    (struct ceiling_conn *)((char *)w - offsetof(struct ceiling_conn, rio));
	ssize_t n = read(w->fd, ceiling_rbuf, sizeof(ceiling_rbuf));
	size_t done;

	(void)revents;
	if (n < 0) {
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
			return;
		ceiling_close(loop, c);
		return;
	}
	if (n == 0) {
		ceiling_close(loop, c);
		return;
	}
	done = ceiling_count(c, ceiling_rbuf, (size_t)n);
	if (done == 0)
		return;
	c->pending += done * CEILING_REPLY_LEN;
	(void)ceiling_flush(loop, c);
}

static void ceiling_on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
	(void)revents;
	for (;;) {
		int fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC), one = 1;
		struct ceiling_conn *c;

		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				fprintf(stderr, "ceiling: accept: %s\n", strerror(errno));
			return;
		}
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)); /* fails on unix */
		c = calloc(1, sizeof(*c));
		if (c == NULL) {
			fprintf(stderr, "ceiling: out of memory, connection refused\n");
			close(fd);
			continue;
		}
		c->at_line_start = true;
		ev_io_init(&c->rio, ceiling_on_read, fd, EV_READ);
		ev_io_init(&c->wio, ceiling_on_write, fd, EV_WRITE);
		ev_io_start(loop, &c->rio);
		c->next = ceiling_conns;
		if (ceiling_conns != NULL)
			ceiling_conns->prev = c;
		ceiling_conns = c;
		ceiling_nconns++;
	}
}

static void ceiling_on_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
	(void)w;
	(void)revents;
	ev_break(loop, EVBREAK_ALL);
}

/* Bind and listen on inet:host:port, inet:[v6]:port or unix:/path. */
static int ceiling_listen(const char *spec, const char **unix_path)
{
	int fd, one = 1;

	*unix_path = NULL;
	if (strncmp(spec, "unix:", 5) == 0) {
		const char *path = spec + 5;
		struct sockaddr_un un = {.sun_family = AF_UNIX};
		struct stat st;
		size_t n = strlen(path);

		if (n == 0 || n >= sizeof(un.sun_path)) {
			fprintf(stderr, "ceiling: bad unix socket path in \"%s\"\n", spec);
			return -1;
		}
		memcpy(un.sun_path, path, n + 1);
		/* remove a stale socket, never anything else */
		if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
			unlink(path);
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0 || bind(fd, (struct sockaddr *)&un, sizeof(un)) != 0 ||
		    listen(fd, SOMAXCONN) != 0) {
			fprintf(stderr, "ceiling: cannot listen on %s: %s\n", spec,
			        strerror(errno));
			if (fd >= 0)
				close(fd);
			return -1;
		}
		*unix_path = path;
		return fd;
	}
	if (strncmp(spec, "inet:", 5) == 0) {
		char host[256];
		const char *hp = spec + 5, *port, *colon;
		size_t hl;
		struct addrinfo hints = {0}, *res = NULL;
		int rc;

		if (hp[0] == '[') {
			const char *close_br = strchr(hp, ']');
			if (close_br == NULL || close_br[1] != ':')
				goto bad;
			hl = (size_t)(close_br - hp - 1);
			hp++;
			port = close_br + 2;
		} else {
			colon = strrchr(hp, ':');
			if (colon == NULL)
				goto bad;
			hl = (size_t)(colon - hp);
			port = colon + 1;
		}
		if (hl == 0 || hl >= sizeof(host) || *port == '\0')
			goto bad;
		memcpy(host, hp, hl);
		host[hl] = '\0';
		hints.ai_socktype = SOCK_STREAM;
		hints.ai_flags = AI_PASSIVE;
		rc = getaddrinfo(host, port, &hints, &res);
		if (rc != 0) {
			fprintf(stderr, "ceiling: cannot resolve \"%s\": %s\n", spec,
			        gai_strerror(rc));
			return -1;
		}
		fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd >= 0)
			setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (fd < 0 || bind(fd, res->ai_addr, res->ai_addrlen) != 0 ||
		    listen(fd, SOMAXCONN) != 0) {
			fprintf(stderr, "ceiling: cannot listen on %s: %s\n", spec,
			        strerror(errno));
			if (fd >= 0)
				close(fd);
			freeaddrinfo(res);
			return -1;
		}
		freeaddrinfo(res);
		return fd;
	}
bad:
	fprintf(stderr, "ceiling: address \"%s\" is neither inet:host:port nor unix:/path\n", spec);
	return -1;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: ceiling [-l ADDR]\n"
	           "Answer-only policy server: every request gets action=DUNNO.\n"
	           "  -l ADDR  listen on inet:host:port, inet:[v6]:port or unix:/path\n"
	           "           (default " CEILING_DEFAULT_LISTEN ")\n"
	           "  -h       this text\n"
	           "Runs in the foreground until SIGINT or SIGTERM.\n");
}

int main(int argc, char **argv)
{
	const char *listen_spec = CEILING_DEFAULT_LISTEN, *unix_path = NULL;
	struct ev_loop *loop;
	ev_io accept_w;
	ev_signal sigint_w, sigterm_w;
	size_t i;
	int ch, fd;

	while ((ch = getopt(argc, argv, "l:h")) != -1) {
		switch (ch) {
		case 'l':
			listen_spec = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}
	for (i = 0; i < CEILING_OUT_REPLIES; i++)
		memcpy(ceiling_out + i * CEILING_REPLY_LEN, CEILING_REPLY, CEILING_REPLY_LEN);
	signal(SIGPIPE, SIG_IGN);

	fd = ceiling_listen(listen_spec, &unix_path);
	if (fd < 0)
		return 1;
	loop = ev_default_loop(EVFLAG_AUTO);
	if (loop == NULL) {
		fprintf(stderr, "ceiling: cannot start the event loop\n");
		close(fd);
		return 1;
	}
	ev_io_init(&accept_w, ceiling_on_accept, fd, EV_READ);
	ev_io_start(loop, &accept_w);
	ev_signal_init(&sigint_w, ceiling_on_signal, SIGINT);
	ev_signal_start(loop, &sigint_w);
	ev_signal_init(&sigterm_w, ceiling_on_signal, SIGTERM);
	ev_signal_start(loop, &sigterm_w);
	fprintf(stderr, "ceiling: listening on %s (pid %ld)\n", listen_spec, (long)getpid());

	ev_run(loop, 0);

	while (ceiling_conns != NULL)
		ceiling_close(loop, ceiling_conns);
	ev_io_stop(loop, &accept_w);
	close(fd);
	if (unix_path != NULL)
		unlink(unix_path);
	ev_loop_destroy(loop);
	fprintf(stderr, "ceiling: stopped after %llu connection(s)\n", ceiling_nconns);
	return 0;
}
