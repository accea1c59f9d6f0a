/*
 * policyd/control.c - owns the control socket (see control.h): the unix
 * listener, the SO_PEERCRED permission check, the line protocol (one JSON
 * object per line each way), the command table control_cmds[] and the
 * daemon side of policyctl's commands: status, flagged, flag, unflag,
 * history, pause, resume, top, usage, reset, held.
 *
 * Entry points: control_module (modules.c), control_parse() and
 * control_req_free() (also used by the unit test and the fuzz target),
 * control_reply() / control_error() for commands.
 *
 * Limits: CONTROL_MAX_LINE bytes a request (an error and a close beyond),
 * CONTROL_MAX_CONNS connections (more are told so and closed), idle
 * connections closed after CONTROL_IDLE_S, replies capped at
 * CONTROL_MAX_REPLY bytes (an error reply instead), CONTROL_MAX_IDS queue
 * ids per "held" request, CONTROL_TOP_MAX entries for "top".  A request is
 * answered before the next one on the same connection is read.  A peer
 * that goes away while its command runs is forgotten; the command ends
 * normally and its reply is dropped.
 */
#include "control.h"

#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "chroot.h"
#include "config.h"
#include "flag.h"
#include "held.h"
#include "log.h"
#include "ndr.h"
#include "selfcheck.h"
#include "server.h"
#include "verdict.h"

#ifndef POLICYD_VERSION
#define POLICYD_VERSION "0.1.0"
#endif

#define CONTROL_NGROUPS_MAX 256

struct control_conn {
	ev_io rw, ww;
	ev_timer idle;
	ev_tstamp last;
	struct control *ctl;
	struct control_conn *prev, *next;
	char *in;
	size_t inlen;
	char *out;
	size_t outlen, outoff, outcap;
	struct control_call *call; /* the command in flight, or NULL */
	bool eof;                  /* the peer shut down its side */
	bool close_after_flush;
	bool dead;
	bool kicking, rekick;
	uid_t uid;
	pid_t pid;
};

struct control {
	struct module_ctx *m;
	ev_io lw;
	int lfd;
	char path[108];
	gid_t gid; /* control_group */
	bool have_gid;
	char group[40];
	struct control_conn *conns;
	unsigned nconns;
	int64_t started_us;
	unsigned long long requests, errors, refused;
};

static struct control control_st = {.lfd = -1};

static int64_t control_now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ================================================================ parsing */

static void control_run_status(struct control_call *call);
static void control_run_flagged(struct control_call *call);
static void control_run_flag(struct control_call *call);
static void control_run_unflag(struct control_call *call);
static void control_run_history(struct control_call *call);
static void control_run_pause(struct control_call *call);
static void control_run_resume(struct control_call *call);
static void control_run_top(struct control_call *call);
static void control_run_usage(struct control_call *call);
static void control_run_reset(struct control_call *call);
static void control_run_held(struct control_call *call);

/* The commands.  Add a row (and its function) to add a command. */
static const struct control_cmd control_cmds[] = {
    {"status", false, control_run_status},  {"flagged", false, control_run_flagged},
    {"flag", true, control_run_flag},       {"unflag", true, control_run_unflag},
    {"history", true, control_run_history}, {"pause", false, control_run_pause},
    {"resume", false, control_run_resume},  {"top", false, control_run_top},
    {"usage", true, control_run_usage},     {"reset", true, control_run_reset},
    {"held", false, control_run_held},      {"ndr", false, ndr_control},
    {"doctor", false, selfcheck_control},
};
#define CONTROL_NCMDS (sizeof(control_cmds) / sizeof(control_cmds[0]))

static const struct control_cmd *control_find(const char *name)
{
	for (size_t i = 0; i < CONTROL_NCMDS; i++)
		if (!strcmp(control_cmds[i].name, name))
			return &control_cmds[i];
	return NULL;
}

bool control_valid_qid(const char *s)
{
	size_t n = 0;
	for (; s[n]; n++)
		if (!isalnum((unsigned char)s[n]) || n + 1 >= CONTROL_QID_MAX)
			return false;
	return n > 0;
}

/* A printable one-line string of at most max-1 bytes (UTF-8 allowed). */
static int control_text(json_t *root, const char *name, char *out, size_t max, bool word, char *err,
                        size_t errsz)
{
	json_t *v = json_object_get(root, name);
	out[0] = '\0';
	if (v == NULL || json_is_null(v))
		return 0;
	if (!json_is_string(v)) {
		snprintf(err, errsz, "'%s' must be a string", name);
		return -1;
	}
	const char *s = json_string_value(v);
	size_t len = json_string_length(v);
	if (len == 0 || len >= max) {
		snprintf(err, errsz, "'%s' must be 1 to %zu bytes long", name, max - 1);
		return -1;
	}
	for (size_t i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)s[i];
		if (ch < 0x20 || ch == 0x7f || (word && ch == ' ')) {
			snprintf(err, errsz, "'%s' contains a control character%s", name,
			         word ? " or a space" : "");
			return -1;
		}
	}
	memcpy(out, s, len + 1);
	return 0;
}

int control_parse(const char *line, size_t len, struct control_req *req, char *err, size_t errsz)
{
	json_error_t jerr;

	memset(req, 0, sizeof(*req));
	if (len > CONTROL_MAX_LINE) {
		snprintf(err, errsz, "request longer than %u bytes", CONTROL_MAX_LINE);
		return -1;
	}
	if (len && line[len - 1] == '\r')
		len--;
	if (len == 0) {
		snprintf(err, errsz,
		         "empty request: send one JSON object per line, e.g. "
		         "{\"cmd\":\"status\"}");
		return -1;
	}
	json_t *root = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
	if (root == NULL) {
		snprintf(err, errsz, "not JSON (%.100s at byte %d): send one JSON object per line",
		         jerr.text, jerr.position);
		return -1;
	}
	if (!json_is_object(root)) {
		snprintf(err, errsz, "a request is a JSON object, e.g. {\"cmd\":\"status\"}");
		json_decref(root);
		return -1;
	}
	req->json = root;
	json_t *cmd = json_object_get(root, "cmd");
	if (!json_is_string(cmd)) {
		snprintf(err, errsz, "missing \"cmd\" (a string)");
		goto fail;
	}
	const struct control_cmd *c = control_find(json_string_value(cmd));
	if (c == NULL) {
		char known[256] = "";
		size_t k = 0;
		for (size_t i = 0; i < CONTROL_NCMDS && k < sizeof(known); i++) {
			int w = snprintf(known + k, sizeof(known) - k, "%s%s", i ? ", " : "",
			                 control_cmds[i].name);
			if (w < 0)
				break;
			k += (size_t)w;
		}
		/* echo at most 32 printable bytes of what was sent */
		char shown[33];
		const char *s = json_string_value(cmd);
		size_t i = 0;
		for (; s[i] && i < sizeof(shown) - 1; i++)
			shown[i] = isprint((unsigned char)s[i]) ? s[i] : '?';
		shown[i] = '\0';
		snprintf(err, errsz, "unknown command '%s' (known: %s)", shown, known);
		goto fail;
	}
	snprintf(req->cmd, sizeof(req->cmd), "%s", c->name);
	if (control_text(root, "account", req->account, sizeof(req->account), true, err, errsz) <
	        0 ||
	    control_text(root, "reason", req->reason, sizeof(req->reason), false, err, errsz) < 0 ||
	    control_text(root, "rule", req->rule, sizeof(req->rule), true, err, errsz) < 0 ||
	    control_text(root, "action", req->action, sizeof(req->action), true, err, errsz) < 0)
		goto fail;
	if (c->needs_account && req->account[0] == '\0') {
		snprintf(err, errsz, "'%s' needs an \"account\"", c->name);
		goto fail;
	}
	if (req->action[0] && strcmp(req->action, "hold") && strcmp(req->action, "defer")) {
		snprintf(err, errsz, "'action' must be \"hold\" or \"defer\"");
		goto fail;
	}
	json_t *d = json_object_get(root, "duration");
	if (json_is_integer(d)) {
		json_int_t s = json_integer_value(d);
		if (s < -1 || s > 10LL * 366 * 86400) {
			snprintf(err, errsz,
			         "'duration' in seconds: -1 (until cleared) or 0 .. 10 years");
			goto fail;
		}
		req->duration_us = s < 0 ? -1 : (int64_t)s * 1000000;
	} else if (json_is_string(d)) {
		const char *s = json_string_value(d);
		uint64_t us;
		char derr[160];
		if (!strcmp(s, "forever") || !strcmp(s, "until-cleared"))
			req->duration_us = -1;
		else if (config_parse_duration(s, &us, derr, sizeof(derr)) < 0) {
			snprintf(err, errsz, "'duration': %s", derr);
			goto fail;
		} else if (us > 10ULL * 366 * 86400 * 1000000) {
			snprintf(err, errsz, "'duration' longer than 10 years");
			goto fail;
		} else
			req->duration_us = (int64_t)us;
	} else if (d && !json_is_null(d)) {
		snprintf(err, errsz, "'duration' must be like \"1h\", \"forever\" or seconds");
		goto fail;
	}
	json_t *n = json_object_get(root, "n");
	req->n = 20;
	if (n && !json_is_null(n)) {
		if (!json_is_integer(n) || json_integer_value(n) < 1 ||
		    json_integer_value(n) > CONTROL_TOP_MAX) {
			snprintf(err, errsz, "'n' must be an integer from 1 to %d",
			         CONTROL_TOP_MAX);
			goto fail;
		}
		req->n = (unsigned)json_integer_value(n);
	}
	json_t *ids = json_object_get(root, "ids");
	if (ids && !json_is_null(ids)) {
		if (!json_is_array(ids) || json_array_size(ids) > CONTROL_MAX_IDS) {
			snprintf(err, errsz, "'ids' must be an array of at most %d queue ids",
			         CONTROL_MAX_IDS);
			goto fail;
		}
		size_t cnt = json_array_size(ids);
		req->ids = cnt ? calloc(cnt, sizeof(*req->ids)) : NULL;
		if (cnt && req->ids == NULL) {
			snprintf(err, errsz, "out of memory");
			goto fail;
		}
		for (size_t i = 0; i < cnt; i++) {
			json_t *e = json_array_get(ids, i);
			if (!json_is_string(e) || !control_valid_qid(json_string_value(e))) {
				snprintf(err, errsz,
				         "'ids'[%zu] is not a queue id (1-31 letters/digits)", i);
				goto fail;
			}
			snprintf(req->ids[i], CONTROL_QID_MAX, "%s", json_string_value(e));
		}
		req->nids = cnt;
	}
	return 0;
fail:
	control_req_free(req);
	return -1;
}

void control_req_free(struct control_req *req)
{
	free(req->ids);
	req->ids = NULL;
	req->nids = 0;
	if (req->json)
		json_decref(req->json);
	req->json = NULL;
}

/* ========================================================== connections */

static void control_kick(struct control_conn *c);

static int control_out_append(struct control_conn *c, const char *s, size_t len)
{
	if (c->outlen + len > c->outcap) {
		size_t ncap = c->outcap ? c->outcap : 4096;
		while (ncap < c->outlen + len)
			ncap *= 2;
		char *nb = realloc(c->out, ncap);
		if (nb == NULL)
			return -1;
		c->out = nb;
		c->outcap = ncap;
	}
	memcpy(c->out + c->outlen, s, len);
	c->outlen += len;
	return 0;
}

/* Queue one reply line (obj is not consumed). */
static void control_send(struct control_conn *c, json_t *obj)
{
	char *text = json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER);
	if (text && strlen(text) > CONTROL_MAX_REPLY) {
		free(text);
		text = strdup("{\"ok\":false,\"error\":\"reply too large\"}");
	}
	if (text == NULL || control_out_append(c, text, strlen(text)) < 0 ||
	    control_out_append(c, "\n", 1) < 0) {
		log_err("control: out of memory for a reply: closing the connection");
		c->close_after_flush = true;
		c->dead = true;
	}
	free(text);
}

static void control_send_error(struct control_conn *c, const char *msg)
{
	json_t *o = json_object();
	if (o == NULL) {
		c->dead = true;
		return;
	}
	json_object_set_new(o, "ok", json_false());
	json_object_set_new(o, "error", json_string(msg));
	control_send(c, o);
	json_decref(o);
}

static void control_call_end(struct control_call *call, json_t *reply)
{
	struct control_conn *c = call->conn;
	if (c) {
		control_send(c, reply);
		c->call = NULL;
	}
	json_decref(reply);
	control_req_free(&call->req);
	free(call);
	if (c)
		control_kick(c);
}

void control_reply(struct control_call *call, json_t *obj)
{
	json_t *r = json_object();
	if (r == NULL) {
		json_decref(obj);
		control_call_end(call, json_pack("{s:b,s:s}", "ok", 0, "error", "out of memory"));
		return;
	}
	json_object_set_new(r, "ok", json_true());
	if (obj) {
		json_object_update(r, obj);
		json_decref(obj);
	}
	control_call_end(call, r);
}

void control_error(struct control_call *call, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	control_st.errors++;
	json_t *r = json_object();
	if (r) {
		json_object_set_new(r, "ok", json_false());
		json_object_set_new(r, "error", json_string(msg));
	}
	control_call_end(call, r);
}

static void control_free_conn(struct control_conn *c)
{
	struct control *ctl = c->ctl;
	struct ev_loop *loop = ctl->m->loop;
	ev_io_stop(loop, &c->rw);
	ev_io_stop(loop, &c->ww);
	ev_timer_stop(loop, &c->idle);
	close(c->rw.fd);
	if (c->prev)
		c->prev->next = c->next;
	else
		ctl->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	ctl->nconns--;
	if (c->call) /* the command goes on; its reply is dropped */
		c->call->conn = NULL;
	free(c->in);
	free(c->out);
	free(c);
}

/* Write what is pending; -1 on a dead peer. */
static int control_write(struct control_conn *c)
{
	while (c->outoff < c->outlen) {
		ssize_t n = send(c->rw.fd, c->out + c->outoff, c->outlen - c->outoff, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			return -1;
		}
		c->outoff += (size_t)n;
	}
	c->outoff = c->outlen = 0;
	if (c->outcap > 65536) { /* a big reply is gone: give the memory back */
		free(c->out);
		c->out = NULL;
		c->outcap = 0;
	}
	return 0;
}

static void control_dispatch(struct control_conn *c, const char *line, size_t len)
{
	struct control *ctl = c->ctl;
	char err[512];
	struct control_call *call = calloc(1, sizeof(*call));

	ctl->requests++;
	if (call == NULL) {
		control_send_error(c, "out of memory");
		return;
	}
	if (control_parse(line, len, &call->req, err, sizeof(err)) < 0) {
		ctl->errors++;
		free(call);
		control_send_error(c, err);
		return;
	}
	call->m = ctl->m;
	call->uid = c->uid;
	call->conn = c;
	snprintf(call->actor, sizeof(call->actor), "admin:%lu", (unsigned long)c->uid);
	c->call = call;
	log_info("event=control cmd=%s uid=%lu%s%s", call->req.cmd, (unsigned long)c->uid,
	         call->req.account[0] ? " account=" : "", call->req.account);
	control_find(call->req.cmd)->run(call);
}

/* Move the connection on: write, then read the next request; free when done. */
static void control_kick(struct control_conn *c)
{
	if (c->kicking) {
		c->rekick = true;
		return;
	}
	c->kicking = true;
	do {
		c->rekick = false;
		if (control_write(c) < 0) {
			c->dead = true;
			break;
		}
		if (c->outlen || c->call)
			break;
		if (c->close_after_flush) {
			c->dead = true;
			break;
		}
		char *nl = c->inlen ? memchr(c->in, '\n', c->inlen) : NULL;
		size_t llen;
		if (nl)
			llen = (size_t)(nl - c->in);
		else if (c->inlen > CONTROL_MAX_LINE) {
			char e[80];
			snprintf(e, sizeof(e), "request longer than %u bytes: closing",
			         CONTROL_MAX_LINE);
			c->ctl->errors++;
			control_send_error(c, e);
			c->close_after_flush = true;
			c->inlen = 0;
			c->rekick = true;
			continue;
		} else if (c->eof && c->inlen) {
			llen = c->inlen; /* a last request without its newline */
		} else {
			if (c->eof)
				c->dead = true;
			break;
		}
		control_dispatch(c, c->in, llen);
		size_t used = nl ? llen + 1 : llen;
		memmove(c->in, c->in + used, c->inlen - used);
		c->inlen -= used;
		c->rekick = true;
	} while (c->rekick);
	c->kicking = false;
	if (c->dead) {
		control_free_conn(c);
		return;
	}
	struct ev_loop *loop = c->ctl->m->loop;
	if (c->outlen)
		ev_io_start(loop, &c->ww);
	else
		ev_io_stop(loop, &c->ww);
	if (!c->outlen && !c->call && !c->eof && !c->close_after_flush)
		ev_io_start(loop, &c->rw);
	else
		ev_io_stop(loop, &c->rw);
}

static void control_read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct control_conn *c = w->data;
	if (c->in == NULL) {
		c->in = malloc(CONTROL_MAX_LINE + 2);
		if (c->in == NULL) {
			control_free_conn(c);
			return;
		}
	}
	size_t room = CONTROL_MAX_LINE + 2 - c->inlen;
	ssize_t n = read(w->fd, c->in + c->inlen, room);
	if (n < 0) {
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
			return;
		control_free_conn(c);
		return;
	}
	if (n == 0)
		c->eof = true;
	c->inlen += (size_t)n;
	c->last = ev_now(loop);
	control_kick(c);
}

static void control_write_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct control_conn *c = w->data;
	c->last = ev_now(loop);
	control_kick(c);
}

static void control_idle_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct control_conn *c = w->data;
	ev_tstamp after = c->last + CONTROL_IDLE_S - ev_now(loop);
	if (c->call || after > 0.5) {
		w->repeat = after > 0.5 ? after : CONTROL_IDLE_S;
		ev_timer_again(loop, w);
		return;
	}
	log_info("event=control_close uid=%lu reason=\"idle timeout\"", (unsigned long)c->uid);
	control_free_conn(c);
}

/* Is gid among the supplementary groups of pid (from /proc) or of uid? */
static bool control_in_group(pid_t pid, uid_t uid, gid_t gid)
{
	char path[64], line[4096];
	snprintf(path, sizeof(path), "/proc/%ld/status", (long)pid);
	FILE *f = fopen(path, "re");
	if (f) {
		bool found = false, seen = false;
		while (fgets(line, sizeof(line), f)) {
			if (strncmp(line, "Groups:", 7))
				continue;
			seen = true;
			for (char *save = NULL, *t = strtok_r(line + 7, " \t\n", &save); t;
			     t = strtok_r(NULL, " \t\n", &save))
				if (strtoul(t, NULL, 10) == (unsigned long)gid)
					found = true;
			break;
		}
		fclose(f);
		if (seen)
			return found;
	}
	/* the process is gone or /proc is hidden: the user's groups from the database */
	struct passwd pw, *pwp = NULL;
	char buf[4096];
	if (getpwuid_r(uid, &pw, buf, sizeof(buf), &pwp) != 0 || pwp == NULL)
		return false;
	gid_t groups[CONTROL_NGROUPS_MAX];
	int ng = CONTROL_NGROUPS_MAX;
	if (getgrouplist(pw.pw_name, pw.pw_gid, groups, &ng) < 0)
		ng = CONTROL_NGROUPS_MAX;
	for (int i = 0; i < ng; i++)
		if (groups[i] == gid)
			return true;
	return false;
}

static void control_refuse(int fd, const char *msg)
{
	json_t *o = json_pack("{s:b,s:s}", "ok", 0, "error", msg);
	char *t = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
	if (t) {
		size_t len = strlen(t);
		t[len] = '\n'; /* replaces the NUL: written with its length */
		ssize_t w = send(fd, t, len + 1, MSG_NOSIGNAL | MSG_DONTWAIT);
		(void)w;
	}
	free(t);
	json_decref(o);
	close(fd);
}

static void control_accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct control *ctl = w->data;
	for (int i = 0; i < 16; i++) {
		int fd = accept4(w->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		if (fd < 0) {
			if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
			    errno != ECONNABORTED)
				log_warn("control: accept: %s", strerror(errno));
			return;
		}
		struct ucred cr;
		socklen_t sl = sizeof(cr);
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &sl) < 0) {
			log_warn("control: SO_PEERCRED: %s", strerror(errno));
			control_refuse(fd, "permission denied: cannot identify the peer");
			continue;
		}
		bool ok = cr.uid == 0 || cr.uid == geteuid() ||
		          (ctl->have_gid &&
		           (cr.gid == ctl->gid || control_in_group(cr.pid, cr.uid, ctl->gid)));
		if (!ok) {
			char msg[200];
			ctl->refused++;
			if (ctl->have_gid)
				snprintf(msg, sizeof(msg),
				         "permission denied: uid %lu is not root or in group %s",
				         (unsigned long)cr.uid, ctl->group);
			else
				snprintf(
				    msg, sizeof(msg),
				    "permission denied: uid %lu is not root or policyd's own uid "
				    "(uid %lu); set control_group to admit a group",
				    (unsigned long)cr.uid, (unsigned long)geteuid());
			log_warn("event=control_refused uid=%lu pid=%ld", (unsigned long)cr.uid,
			         (long)cr.pid);
			control_refuse(fd, msg);
			continue;
		}
		if (ctl->nconns >= CONTROL_MAX_CONNS) {
			ctl->refused++;
			control_refuse(fd, "too many control connections: try again");
			continue;
		}
		struct control_conn *c = calloc(1, sizeof(*c));
		if (c == NULL) {
			control_refuse(fd, "out of memory");
			continue;
		}
		c->ctl = ctl;
		c->uid = cr.uid;
		c->pid = cr.pid;
		ev_io_init(&c->rw, control_read_cb, fd, EV_READ);
		ev_io_init(&c->ww, control_write_cb, fd, EV_WRITE);
		c->rw.data = c->ww.data = c;
		ev_init(&c->idle, control_idle_cb);
		c->idle.data = c;
		c->idle.repeat = CONTROL_IDLE_S;
		c->last = ev_now(loop);
		ev_timer_again(loop, &c->idle);
		ev_io_start(loop, &c->rw);
		c->next = ctl->conns;
		if (ctl->conns)
			ctl->conns->prev = c;
		ctl->conns = c;
		ctl->nconns++;
	}
}

/* ============================================================= commands */

static const char *control_key_name(enum key_type t)
{
	return key_type_name(t);
}

/* "h", "5m", "1d" */
static void control_fmt_period(char *out, size_t outsz, uint64_t us)
{
	static const struct {
		uint64_t us;
		const char *unit;
	} units[] = {
	    {86400000000ULL, "d"}, {3600000000ULL, "h"}, {60000000ULL, "m"}, {1000000ULL, "s"}};
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
		if (us % units[i].us == 0) {
			uint64_t n = us / units[i].us;
			if (n == 1)
				snprintf(out, outsz, "%s", units[i].unit);
			else
				snprintf(out, outsz, "%llu%s", (unsigned long long)n,
				         units[i].unit);
			return;
		}
	snprintf(out, outsz, "%lluus", (unsigned long long)us);
}

static json_t *control_windows_text(const struct rule *r)
{
	char buf[256] = "";
	size_t n = 0;
	for (uint8_t w = 0; w < r->nwin && n < sizeof(buf); w++) {
		char per[32];
		control_fmt_period(per, sizeof(per), r->win[w].period_us);
		int k = snprintf(buf + n, sizeof(buf) - n, "%s%llu/%s", w ? "," : "",
		                 (unsigned long long)r->win[w].limit, per);
		if (k < 0)
			break;
		n += (size_t)k;
	}
	return json_string(buf);
}

/* ---- status ---- */

static void control_run_status(struct control_call *call)
{
	struct module_ctx *m = call->m;
	const struct config *cfg = m->cfg;
	json_t *o = json_object();
	if (o == NULL) {
		control_error(call, "out of memory");
		return;
	}
	int64_t now = control_now_us();
	json_object_set_new(o, "version", json_string(POLICYD_VERSION));
	json_object_set_new(o, "pid", json_integer((json_int_t)getpid()));
	json_object_set_new(o, "uptime_s",
	                    json_integer((json_int_t)((now - control_st.started_us) / 1000000)));
	json_object_set_new(o, "config", json_string(cfg->path));
	json_t *rules = json_array();
	for (size_t i = 0; i < cfg->nrules; i++) {
		const struct rule *r = &cfg->rules[i];
		json_t *jr = json_object();
		json_object_set_new(jr, "name", json_string(r->name));
		json_object_set_new(jr, "key", json_string(control_key_name(r->key)));
		json_object_set_new(jr, "count", json_string(config_count_name(r->count)));
		json_object_set_new(jr, "rate", control_windows_text(r));
		json_object_set_new(jr, "action", json_string(config_action_name(r->action)));
		json_object_set_new(jr, "dry_run", json_boolean(r->dry_run));
		json_array_append_new(rules, jr);
	}
	json_object_set_new(o, "rules", rules);
	if (m->srv) {
		const struct server_stats *st = server_stats(m->srv);
		json_object_set_new(o, "requests", json_integer((json_int_t)st->requests));
		json_object_set_new(o, "bad_requests", json_integer((json_int_t)st->bad_requests));
		json_object_set_new(o, "connections_accepted",
		                    json_integer((json_int_t)st->accepted));
		json_object_set_new(o, "connections_refused",
		                    json_integer((json_int_t)st->refused_conns));
		json_object_set_new(o, "store_errors", json_integer((json_int_t)st->store_errors));
		json_t *v = json_object();
		for (int a = 0; a <= ACT_REJECT; a++)
			json_object_set_new(v, config_action_name(a),
			                    json_integer((json_int_t)st->verdicts[a]));
		json_object_set_new(o, "verdicts", v);
	}
	if (m->store) {
		struct store_stats ss;
		memset(&ss, 0, sizeof(ss));
		if (m->store->be->stats)
			m->store->be->stats(m->store, &ss);
		json_t *s = json_object();
		json_object_set_new(s, "backend", json_string(m->store->be->name));
		json_object_set_new(s, "keys", json_integer((json_int_t)ss.keys));
		json_object_set_new(s, "bytes", json_integer((json_int_t)ss.bytes));
		json_object_set_new(s, "batches", json_integer((json_int_t)ss.batches));
		json_object_set_new(s, "errors", json_integer((json_int_t)ss.errors));
		json_object_set_new(s, "evicted", json_integer((json_int_t)ss.evicted));
		json_object_set_new(s, "evicted_full", json_integer((json_int_t)ss.evicted_full));
		json_object_set_new(o, "store", s);
	}
	enum verdict_action pa = ACT_HOLD;
	bool paused = flag_paused(&pa);
	json_object_set_new(o, "paused", json_boolean(paused));
	if (paused)
		json_object_set_new(o, "pause_action", json_string(config_action_name(pa)));
	json_object_set_new(o, "control_connections", json_integer(control_st.nconns));
	json_object_set_new(o, "control_requests", json_integer((json_int_t)control_st.requests));
	control_reply(call, o);
}

/* ---- flags (flag.h) ---- */

/* An account as flags, histories and usage name it. */
static void control_norm_account(const struct config *cfg, const char *in, char *out, size_t outsz)
{
	if (key_norm_ip(out, outsz, in) > 0)
		return;
	if (key_norm_login(out, outsz, in, cfg->keyopts.fold_localpart) == 0)
		snprintf(out, outsz, "%s", in);
}

/* flag_json_cb: reply {name: parsed json} or the error. */
static void control_json_done(struct control_call *call, int rc, char *text, const char *name)
{
	if (rc != 0) {
		control_error(call, "%s", text ? text : "failed");
		free(text);
		return;
	}
	json_error_t je;
	json_t *v = text ? json_loads(text, JSON_DECODE_ANY, &je) : json_null();
	free(text);
	if (v == NULL) {
		control_error(call, "internal error: flags module returned bad JSON");
		return;
	}
	if (name == NULL && json_is_object(v)) {
		control_reply(call, v);
		return;
	}
	json_t *o = json_object();
	json_object_set_new(o, name ? name : "result", v);
	control_reply(call, o);
}

static void control_flagged_cb(void *arg, int rc, char *json_or_error)
{
	control_json_done(arg, rc, json_or_error, "flags");
}

static void control_run_flagged(struct control_call *call)
{
	flag_list_active(control_flagged_cb, call);
}

static void control_history_cb(void *arg, int rc, char *json_or_error)
{
	control_json_done(arg, rc, json_or_error, NULL);
}

static void control_run_history(struct control_call *call)
{
	char acct[KEY_MAX];
	control_norm_account(call->m->cfg, call->req.account, acct, sizeof(acct));
	flag_history(acct, control_history_cb, call);
}

static void control_flag_cb(void *arg, int rc, const char *id_or_error)
{
	struct control_call *call = arg;
	if (rc != 0) {
		control_error(call, "%s", id_or_error ? id_or_error : "failed");
		return;
	}
	char acct[KEY_MAX];
	control_norm_account(call->m->cfg, call->req.account, acct, sizeof(acct));
	json_t *o = json_object();
	json_object_set_new(o, "account", json_string(acct));
	json_object_set_new(o, "id", id_or_error ? json_string(id_or_error) : json_null());
	control_reply(call, o);
}

static void control_run_flag(struct control_call *call)
{
	char acct[KEY_MAX], reason[300], evidence[200];
	struct flag_request r;

	control_norm_account(call->m->cfg, call->req.account, acct, sizeof(acct));
	if (call->req.reason[0])
		snprintf(reason, sizeof(reason), "%s", call->req.reason);
	else
		snprintf(reason, sizeof(reason), "flagged by %s with policyctl", call->actor);
	snprintf(evidence, sizeof(evidence), "policyctl flag by uid %lu", (unsigned long)call->uid);
	memset(&r, 0, sizeof(r));
	r.account = acct;
	r.source = FLAG_SRC_MANUAL;
	r.reason = reason;
	r.evidence = evidence;
	r.duration_us = call->req.duration_us;
	r.actor = call->actor;
	flag_raise(&r, control_flag_cb, call);
}

static void control_run_unflag(struct control_call *call)
{
	char acct[KEY_MAX];
	control_norm_account(call->m->cfg, call->req.account, acct, sizeof(acct));
	flag_clear(acct, call->actor, control_flag_cb, call);
}

static void control_pause_cb(void *arg, int rc, const char *id_or_error)
{
	struct control_call *call = arg;
	if (rc != 0) {
		control_error(call, "%s", id_or_error ? id_or_error : "failed");
		return;
	}
	enum verdict_action a = ACT_HOLD;
	bool p = flag_paused(&a);
	json_t *o = json_object();
	json_object_set_new(o, "paused", json_boolean(p));
	if (p)
		json_object_set_new(o, "action", json_string(config_action_name(a)));
	control_reply(call, o);
}

static void control_run_pause(struct control_call *call)
{
	enum verdict_action a = strcmp(call->req.action, "defer") ? ACT_HOLD : ACT_DEFER;
	flag_pause(true, a, call->actor, control_pause_cb, call);
}

static void control_run_resume(struct control_call *call)
{
	flag_pause(false, ACT_HOLD, call->actor, control_pause_cb, call);
}

/* ---- usage / reset: the account's keys ---- */

struct control_key {
	const struct rule *r;
	char subject[KEY_MAX];
	bool exempt;
	uint8_t nwin;
	struct gcra_window win[STORE_MAX_WINDOWS];
};

struct control_keys_job {
	struct control_call *call;
	const struct config *cfg; /* the config the keys were made from */
	struct control_key keys[STORE_MAX_BATCH];
	size_t nkeys;
	struct store_op ops[STORE_MAX_BATCH];
	size_t opkey[STORE_MAX_BATCH];
	size_t nops;
	bool reset;
};

static void control_add_key(struct control_keys_job *j, const struct rule *r, const char *subj)
{
	if (subj[0] == '\0' || j->nkeys == STORE_MAX_BATCH)
		return;
	for (size_t i = 0; i < j->nkeys; i++)
		if (j->keys[i].r == r && !strcmp(j->keys[i].subject, subj))
			return;
	struct control_key *k = &j->keys[j->nkeys++];
	k->r = r;
	snprintf(k->subject, sizeof(k->subject), "%s", subj);
	k->nwin = r->nwin;
	memcpy(k->win, r->win, sizeof(k->win));
	const struct override *o = config_override(r, k->subject);
	if (o && o->exempt)
		k->exempt = true;
	else if (o) {
		k->nwin = o->nwin;
		memcpy(k->win, o->win, sizeof(k->win));
	}
}

/* The (rule, subject) pairs an account names (see control.h: usage). */
static void control_account_keys(struct control_keys_job *j, const char *account)
{
	const struct config *cfg = j->cfg;
	char login[KEY_MAX], addr[KEY_MAX] = "", dom[KEY_MAX] = "", ip[64] = "";
	bool has_at = strchr(account, '@') != NULL;

	if (key_norm_login(login, sizeof(login), account, cfg->keyopts.fold_localpart) == 0)
		login[0] = '\0';
	if (has_at) {
		key_norm_address(addr, sizeof(addr), account, &cfg->keyopts);
		key_norm_domain(dom, sizeof(dom), account);
	}
	if (key_norm_ip(ip, sizeof(ip), account) == 0)
		ip[0] = '\0';
	for (size_t i = 0; i < cfg->nrules; i++) {
		const struct rule *r = &cfg->rules[i];
		switch (r->key) {
		case KEY_SASL_USERNAME:
			if (!ip[0])
				control_add_key(j, r, login);
			break;
		case KEY_PRINCIPAL:
			if (ip[0]) {
				control_add_key(j, r, ip);
			} else {
				control_add_key(j, r, login);
				control_add_key(j, r, addr);
			}
			break;
		case KEY_SENDER:
			control_add_key(j, r, addr);
			break;
		case KEY_SENDER_DOMAIN:
			control_add_key(j, r, dom);
			break;
		case KEY_CLIENT_ADDRESS:
			control_add_key(j, r, ip);
			break;
		default:
			break;
		}
	}
}

static void control_keys_done(void *arg, enum store_status st, const struct store_result *res,
                              size_t n)
{
	struct control_keys_job *j = arg;
	struct control_call *call = j->call;

	if (st != STORE_OK || n != j->nops) {
		control_error(call, "store error (%s): %s",
		              st == STORE_EUNAVAIL ? "unavailable" : "failed",
		              call->m->store->err[0] ? call->m->store->err : "no detail");
		free(j);
		return;
	}
	json_t *o = json_object();
	json_t *arr = json_array();
	char acct[KEY_MAX];
	control_norm_account(j->cfg, call->req.account, acct, sizeof(acct));
	json_object_set_new(o, "account", json_string(acct));
	for (size_t i = 0; i < j->nkeys; i++) {
		const struct control_key *k = &j->keys[i];
		const struct store_result *r = NULL;
		for (size_t q = 0; q < j->nops; q++)
			if (j->opkey[q] == i)
				r = &res[q];
		json_t *e = json_object();
		json_object_set_new(e, "rule", json_string(k->r->name));
		json_object_set_new(e, "key", json_string(control_key_name(k->r->key)));
		json_object_set_new(e, "subject", json_string(k->subject));
		if (j->reset) {
			json_object_set_new(e, "cleared", json_boolean(r != NULL));
			json_array_append_new(arr, e);
			continue;
		}
		json_object_set_new(e, "count", json_string(config_count_name(k->r->count)));
		json_object_set_new(e, "action", json_string(config_action_name(k->r->action)));
		json_object_set_new(e, "exempt", json_boolean(k->exempt));
		char text[512];
		size_t tl = (size_t)snprintf(text, sizeof(text), "%s: ", k->r->name);
		if (k->exempt || r == NULL) {
			snprintf(text + tl, sizeof(text) - tl, "exempt (override)");
			json_object_set_new(e, "text", json_string(text));
			json_array_append_new(arr, e);
			continue;
		}
		json_t *wins = json_array();
		bool full = false;
		for (uint8_t w = 0; w < k->nwin; w++) {
			const struct gcra_window *gw = &k->win[w];
			uint64_t used = r->used[w], empty = r->empty_in_us[w];
			/* one unit frees when used drops by one: at empty - (used-1)*T */
			uint64_t frees = 0;
			if (used > 0) {
				unsigned __int128 t =
				    (unsigned __int128)(used - 1) * gw->period_us / gw->limit;
				frees = empty > t ? empty - (uint64_t)t : 0;
			}
			char per[32], fr[32], em[32];
			control_fmt_period(per, sizeof(per), gw->period_us);
			verdict_fmt_duration(fr, sizeof(fr), frees);
			verdict_fmt_duration(em, sizeof(em), empty);
			json_t *jw = json_object();
			json_object_set_new(jw, "limit", json_integer((json_int_t)gw->limit));
			json_object_set_new(jw, "period_s",
			                    json_integer((json_int_t)(gw->period_us / 1000000)));
			json_object_set_new(jw, "used", json_integer((json_int_t)used));
			json_object_set_new(
			    jw, "free",
			    json_integer((json_int_t)(used < gw->limit ? gw->limit - used : 0)));
			json_object_set_new(jw, "frees_one_in_s", json_real((double)frees / 1e6));
			json_object_set_new(jw, "empty_in_s", json_real((double)empty / 1e6));
			json_array_append_new(wins, jw);
			if (used >= gw->limit)
				full = true;
			int kk;
			if (used == 0)
				kk =
				    snprintf(text + tl, sizeof(text) - tl, "%s0/%llu per %s, empty",
				             w ? "; " : "", (unsigned long long)gw->limit, per);
			else
				kk = snprintf(text + tl, sizeof(text) - tl,
				              "%s%llu/%llu per %s, frees 1 in %s, empty in %s",
				              w ? "; " : "", (unsigned long long)used,
				              (unsigned long long)gw->limit, per, fr, em);
			if (kk > 0 && (size_t)kk < sizeof(text) - tl)
				tl += (size_t)kk;
		}
		json_object_set_new(e, "windows", wins);
		json_object_set_new(e, "full", json_boolean(full));
		json_object_set_new(e, "text", json_string(text));
		json_array_append_new(arr, e);
	}
	json_object_set_new(o, j->reset ? "cleared" : "rules", arr);
	free(j);
	control_reply(call, o);
}

static void control_run_keys(struct control_call *call, bool reset)
{
	struct control_keys_job *j = calloc(1, sizeof(*j));
	if (j == NULL) {
		control_error(call, "out of memory");
		return;
	}
	j->call = call;
	j->cfg = call->m->cfg;
	j->reset = reset;
	control_account_keys(j, call->req.account);
	if (j->nkeys == 0) {
		free(j);
		control_error(call,
		              "no rule counts by '%s' (rules keyed by sasl_username, principal, "
		              "sender, sender_domain or client_address apply to an account)",
		              call->req.account);
		return;
	}
	for (size_t i = 0; i < j->nkeys; i++) {
		const struct control_key *k = &j->keys[i];
		if (k->exempt && !reset)
			continue;
		struct store_op *op = &j->ops[j->nops];
		memset(op, 0, sizeof(*op));
		op->kind = reset ? STORE_CLEAR : STORE_PEEK;
		op->rule = k->r->name;
		op->subject = k->subject;
		op->cost = 0;
		op->nwin = k->nwin;
		memcpy(op->win, k->win, sizeof(op->win));
		j->opkey[j->nops++] = i;
	}
	if (j->nops == 0) {
		control_keys_done(j, STORE_OK, NULL, 0);
		return;
	}
	struct store *s = call->m->store;
	if (store_batch(s, j->ops, j->nops, control_now_us(), control_keys_done, j) != 0) {
		/* not accepted: the callback will not run */
		free(j);
		control_error(call, "store error: batch not accepted: %s", s->err);
	}
}

static void control_run_usage(struct control_call *call)
{
	control_run_keys(call, false);
}

static void control_run_reset(struct control_call *call)
{
	control_run_keys(call, true);
}

/* ---- top ---- */

struct control_top_ent {
	double ratio;
	size_t rule; /* index in cfg->rules */
	char *subject;
	uint8_t nwin;
	uint64_t used[STORE_MAX_WINDOWS], empty[STORE_MAX_WINDOWS];
};

struct control_top_job {
	struct control_call *call;
	const struct config *cfg;
	size_t next_rule;             /* the rule being listed */
	struct control_top_ent *heap; /* min-heap on ratio, n entries at most */
	size_t nheap, cap;
	unsigned long long keys;
	bool listing;
};

static void control_top_swap(struct control_top_ent *a, struct control_top_ent *b)
{
	struct control_top_ent t = *a;
	*a = *b;
	*b = t;
}

static void control_top_sift_down(struct control_top_job *j, size_t i)
{
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;
		if (l < j->nheap && j->heap[l].ratio < j->heap[m].ratio)
			m = l;
		if (r < j->nheap && j->heap[r].ratio < j->heap[m].ratio)
			m = r;
		if (m == i)
			return;
		control_top_swap(&j->heap[i], &j->heap[m]);
		i = m;
	}
}

static bool control_top_key(void *arg, const char *subject, const struct store_result *res)
{
	struct control_top_job *j = arg;
	const struct rule *r = &j->cfg->rules[j->next_rule];
	double ratio = 0;
	bool any = false;
	j->keys++;
	for (uint8_t w = 0; w < r->nwin; w++) {
		if (res->used[w])
			any = true;
		double q = (double)res->used[w] / (double)r->win[w].limit;
		if (q > ratio)
			ratio = q;
	}
	if (!any)
		return true;
	if (j->nheap == j->cap && ratio <= j->heap[0].ratio)
		return true;
	char *s = strdup(subject);
	if (s == NULL)
		return true;
	struct control_top_ent e = {
	    .ratio = ratio, .rule = j->next_rule, .subject = s, .nwin = r->nwin};
	memcpy(e.used, res->used, sizeof(e.used));
	memcpy(e.empty, res->empty_in_us, sizeof(e.empty));
	if (j->nheap == j->cap) { /* replace the smallest */
		free(j->heap[0].subject);
		j->heap[0] = e;
		control_top_sift_down(j, 0);
		return true;
	}
	size_t i = j->nheap++;
	j->heap[i] = e;
	while (i > 0 && j->heap[(i - 1) / 2].ratio > j->heap[i].ratio) {
		control_top_swap(&j->heap[i], &j->heap[(i - 1) / 2]);
		i = (i - 1) / 2;
	}
	return true;
}

static int control_top_cmp(const void *a, const void *b)
{
	const struct control_top_ent *x = a, *y = b;
	if (x->ratio != y->ratio)
		return x->ratio < y->ratio ? 1 : -1;
	return strcmp(x->subject, y->subject);
}

static void control_top_next(struct control_top_job *j);

static void control_top_done(void *arg, enum store_status st)
{
	struct control_top_job *j = arg;
	j->next_rule++;
	if (st != STORE_OK)
		log_warn("control: top: listing a rule failed (%d)", (int)st);
	if (!j->listing) /* called from inside list(): the loop in control_top_next goes on */
		control_top_next(j);
}

static void control_top_finish(struct control_top_job *j)
{
	struct control_call *call = j->call;
	qsort(j->heap, j->nheap, sizeof(j->heap[0]), control_top_cmp);
	json_t *o = json_object();
	json_t *arr = json_array();
	for (size_t i = 0; i < j->nheap; i++) {
		const struct control_top_ent *e = &j->heap[i];
		const struct rule *r = &j->cfg->rules[e->rule];
		json_t *je = json_object();
		json_object_set_new(je, "rule", json_string(r->name));
		json_object_set_new(je, "key", json_string(control_key_name(r->key)));
		json_object_set_new(je, "subject", json_string(e->subject));
		json_object_set_new(je, "ratio", json_real(e->ratio));
		json_t *wins = json_array();
		char text[256] = "";
		size_t tl = 0;
		for (uint8_t w = 0; w < e->nwin; w++) {
			char per[32];
			control_fmt_period(per, sizeof(per), r->win[w].period_us);
			json_t *jw = json_object();
			json_object_set_new(jw, "limit", json_integer((json_int_t)r->win[w].limit));
			json_object_set_new(
			    jw, "period_s",
			    json_integer((json_int_t)(r->win[w].period_us / 1000000)));
			json_object_set_new(jw, "used", json_integer((json_int_t)e->used[w]));
			json_object_set_new(jw, "empty_in_s", json_real((double)e->empty[w] / 1e6));
			json_array_append_new(wins, jw);
			int k = snprintf(text + tl, sizeof(text) - tl, "%s%llu/%llu per %s",
			                 w ? ", " : "", (unsigned long long)e->used[w],
			                 (unsigned long long)r->win[w].limit, per);
			if (k > 0 && (size_t)k < sizeof(text) - tl)
				tl += (size_t)k;
		}
		json_object_set_new(je, "windows", wins);
		json_object_set_new(je, "text", json_string(text));
		json_array_append_new(arr, je);
	}
	json_object_set_new(o, "top", arr);
	json_object_set_new(o, "keys_seen", json_integer((json_int_t)j->keys));
	for (size_t i = 0; i < j->nheap; i++)
		free(j->heap[i].subject);
	free(j->heap);
	free(j);
	control_reply(call, o);
}

static void control_top_next(struct control_top_job *j)
{
	struct store *s = j->call->m->store;
	for (;;) {
		while (j->next_rule < j->cfg->nrules && j->call->req.rule[0] &&
		       strcmp(j->cfg->rules[j->next_rule].name, j->call->req.rule))
			j->next_rule++;
		if (j->next_rule >= j->cfg->nrules) {
			control_top_finish(j);
			return;
		}
		const struct rule *r = &j->cfg->rules[j->next_rule];
		size_t before = j->next_rule;
		j->listing = true;
		int rc = s->be->list(s, r->name, r->win, r->nwin, control_now_us(), control_top_key,
		                     control_top_done, j);
		j->listing = false;
		if (rc != 0) {
			struct control_call *call = j->call;
			for (size_t i = 0; i < j->nheap; i++)
				free(j->heap[i].subject);
			free(j->heap);
			free(j);
			control_error(call, "store error listing %s: %s", r->name, s->err);
			return;
		}
		if (j->next_rule == before)
			return; /* done() comes later, from the loop */
	}
}

static void control_run_top(struct control_call *call)
{
	struct store *s = call->m->store;
	const struct config *cfg = call->m->cfg;
	if (s->be->list == NULL) {
		control_error(call, "top: not supported by this store (%s)", s->be->name);
		return;
	}
	if (call->req.rule[0]) {
		bool found = false;
		for (size_t i = 0; i < cfg->nrules; i++)
			found |= !strcmp(cfg->rules[i].name, call->req.rule);
		if (!found) {
			control_error(call, "top: no rule named '%s'", call->req.rule);
			return;
		}
	}
	struct control_top_job *j = calloc(1, sizeof(*j));
	if (j)
		j->heap = calloc(call->req.n, sizeof(*j->heap));
	if (j == NULL || j->heap == NULL) {
		free(j);
		control_error(call, "out of memory");
		return;
	}
	j->call = call;
	j->cfg = cfg;
	j->cap = call->req.n;
	control_top_next(j);
}

/* ---- held: "@held" records and flag states for queue ids ---- */

struct control_held_job {
	struct control_call *call;
	size_t next;      /* first id of the next batch */
	json_t *held;     /* id -> record or null */
	json_t *accounts; /* account -> {} */
	struct store_op ops[STORE_MAX_BATCH];
};

static void control_held_batch(struct control_held_job *j);

static void control_held_flags_cb(void *arg, int rc, char *json_or_error)
{
	struct control_held_job *j = arg;
	struct control_call *call = j->call;
	json_t *flags = NULL;
	if (rc == 0 && json_or_error) {
		json_error_t je;
		flags = json_loads(json_or_error, 0, &je);
	}
	free(json_or_error);
	/* accounts -> their active flag (or null) */
	const char *acct;
	json_t *v;
	json_object_foreach(j->accounts, acct, v)
	{
		json_t *active = json_null();
		size_t i;
		json_t *f;
		if (json_is_array(flags))
			json_array_foreach(flags, i, f)
			{
				const char *a = json_string_value(json_object_get(f, "account"));
				if (a && !strcmp(a, acct)) {
					active = json_incref(f);
					break;
				}
			}
		json_object_set_new(v, "flag", active);
	}
	if (rc != 0)
		log_warn("control: held: flag states unavailable");
	json_decref(flags);
	json_t *o = json_object();
	json_object_set_new(o, "held", j->held);
	json_object_set_new(o, "accounts", j->accounts);
	json_object_set_new(o, "flags_known", json_boolean(rc == 0));
	free(j);
	control_reply(call, o);
}

static void control_held_got(void *arg, enum store_status st, const struct store_result *res,
                             size_t n)
{
	struct control_held_job *j = arg;
	struct control_call *call = j->call;
	size_t first = j->next - n;

	if (st != STORE_OK) {
		json_decref(j->held);
		json_decref(j->accounts);
		free(j);
		control_error(call, "store error reading held records: %s", call->m->store->err);
		return;
	}
	for (size_t i = 0; i < n; i++) {
		const char *id = call->req.ids[first + i];
		json_t *rec = json_null();
		if (res[i].found && res[i].vlen) {
			json_error_t je;
			json_t *r = json_loadb(res[i].val, res[i].vlen, 0, &je);
			if (json_is_object(r)) {
				rec = r;
				const char *a = json_string_value(json_object_get(r, "account"));
				if (a && !json_object_get(j->accounts, a))
					json_object_set_new(j->accounts, a, json_object());
			} else {
				json_decref(r);
			}
		}
		json_object_set_new(j->held, id, rec);
	}
	control_held_batch(j);
}

static void control_held_batch(struct control_held_job *j)
{
	struct control_call *call = j->call;
	size_t nids = call->req.nids;
	if (j->next >= nids) {
		if (json_object_size(j->accounts) == 0) {
			control_held_flags_cb(j, 0, NULL);
			return;
		}
		flag_list_active(control_held_flags_cb, j);
		return;
	}
	size_t n = nids - j->next;
	if (n > STORE_MAX_BATCH)
		n = STORE_MAX_BATCH;
	for (size_t i = 0; i < n; i++) {
		struct store_op *op = &j->ops[i];
		memset(op, 0, sizeof(*op));
		op->kind = STORE_GET;
		op->rule = HELD_NS;
		op->subject = call->req.ids[j->next + i];
	}
	j->next += n;
	struct store *s = call->m->store;
	if (store_batch(s, j->ops, n, control_now_us(), control_held_got, j) != 0) {
		json_decref(j->held);
		json_decref(j->accounts);
		free(j);
		control_error(call, "store error: batch not accepted: %s", s->err);
	}
}

static void control_run_held(struct control_call *call)
{
	struct control_held_job *j = calloc(1, sizeof(*j));
	if (j) {
		j->held = json_object();
		j->accounts = json_object();
	}
	if (j == NULL || j->held == NULL || j->accounts == NULL) {
		if (j) {
			json_decref(j->held);
			json_decref(j->accounts);
		}
		free(j);
		control_error(call, "out of memory");
		return;
	}
	j->call = call;
	control_held_batch(j);
}

/* =============================================================== module */

static int control_resolve_group(struct control *ctl, const struct config *cfg, char *err,
                                 size_t errsz)
{
	ctl->have_gid = false;
	ctl->group[0] = '\0';
	if (cfg->control_group == NULL)
		return 0;
	struct group gr, *grp = NULL;
	char buf[8192];
	if (getgrnam_r(cfg->control_group, &gr, buf, sizeof(buf), &grp) != 0 || grp == NULL) {
		snprintf(err, errsz, "control_group '%s' does not exist", cfg->control_group);
		return -1;
	}
	ctl->gid = grp->gr_gid;
	ctl->have_gid = true;
	snprintf(ctl->group, sizeof(ctl->group), "%s", cfg->control_group);
	return 0;
}

static int control_listen(struct control *ctl, const char *path, char *err, size_t errsz)
{
	struct sockaddr_un sun;
	struct stat sb;

	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sun.sun_path)) {
		snprintf(err, errsz, "control = unix:%s: path too long", path);
		return -1;
	}
	memcpy(sun.sun_path, path, strlen(path) + 1);
	/* the directory (e.g. /run/policyd, a tmpfs) may not exist after a reboot */
	char dir[sizeof(sun.sun_path)];
	snprintf(dir, sizeof(dir), "%s", path);
	char *slash = strrchr(dir, '/');
	if (slash && slash != dir) {
		*slash = '\0';
		if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
			snprintf(err, errsz, "control: cannot create %s: %s", dir, strerror(errno));
			return -1;
		}
	}
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		snprintf(err, errsz, "control: socket: %s", strerror(errno));
		return -1;
	}
	if (lstat(path, &sb) == 0) {
		if (!S_ISSOCK(sb.st_mode)) {
			snprintf(err, errsz, "control = unix:%s exists and is not a socket", path);
			close(fd);
			return -1;
		}
		int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (probe >= 0 && connect(probe, (struct sockaddr *)&sun, sizeof(sun)) == 0) {
			snprintf(err, errsz,
			         "control = unix:%s: another policyd is listening there", path);
			close(probe);
			close(fd);
			return -1;
		}
		if (probe >= 0)
			close(probe);
		unlink(path);
	}
	mode_t old = umask(0117); /* 0660 from the start: no window with more */
	int rc = bind(fd, (struct sockaddr *)&sun, sizeof(sun));
	umask(old);
	if (rc < 0 || listen(fd, 64) < 0) {
		snprintf(err, errsz, "control = unix:%s: %s", path, strerror(errno));
		close(fd);
		return -1;
	}
	if ((ctl->have_gid && chown(path, (uid_t)-1, ctl->gid) < 0) || chmod(path, 0660) < 0) {
		snprintf(err, errsz, "control = unix:%s: %s", path, strerror(errno));
		close(fd);
		unlink(path);
		return -1;
	}
	return fd;
}

static int control_start(struct module_ctx *m, char *err, size_t errsz)
{
	struct control *ctl = &control_st;
	ctl->m = m;
	ctl->started_us = control_now_us();
	if (m->cfg->control == NULL)
		return 0;
	if (control_resolve_group(ctl, m->cfg, err, errsz) < 0)
		return -1;
	snprintf(ctl->path, sizeof(ctl->path), "%s", m->cfg->control + 5);
	ctl->lfd = control_listen(ctl, ctl->path, err, errsz);
	if (ctl->lfd < 0) {
		ctl->path[0] = '\0';
		return -1;
	}
	ev_io_init(&ctl->lw, control_accept_cb, ctl->lfd, EV_READ);
	ctl->lw.data = ctl;
	ev_io_start(m->loop, &ctl->lw);
	log_info("event=listen endpoint=unix:%s what=control group=%s", ctl->path,
	         ctl->have_gid ? ctl->group : "(none)");
	return 0;
}

static void control_reload(struct module_ctx *m, const struct config *cfg)
{
	struct control *ctl = &control_st;
	const char *want = cfg->control ? cfg->control + 5 : "";
	if (strcmp(want, ctl->path))
		log_warn("control changed in %s: restart policyd to apply it (still on %s)",
		         cfg->path, ctl->path[0] ? ctl->path : "nothing");
	char err[200];
	/* chrooted: no group database inside; the group resolved at start stays */
	if (ctl->lfd >= 0 && chroot_root()) {
		bool same = cfg->control_group
		                ? ctl->have_gid && !strcmp(cfg->control_group, ctl->group)
		                : !ctl->have_gid;
		if (!same)
			log_warn(
			    "control_group changed in %s: restart policyd to apply it (the group "
			    "database is not inside chroot %s; still %s)",
			    cfg->path, chroot_root(), ctl->have_gid ? ctl->group : "none");
		return;
	}
	if (ctl->lfd >= 0 && control_resolve_group(ctl, cfg, err, sizeof(err)) < 0)
		log_warn("control: %s: only root and policyd's uid are admitted now", err);
	else if (ctl->lfd >= 0 && ctl->have_gid && chown(ctl->path, (uid_t)-1, ctl->gid) < 0)
		log_warn("control: chown %s: %s", ctl->path, strerror(errno));
}

static void control_stop(struct module_ctx *m)
{
	struct control *ctl = &control_st;
	while (ctl->conns)
		control_free_conn(ctl->conns);
	if (ctl->lfd >= 0) {
		ev_io_stop(m->loop, &ctl->lw);
		close(ctl->lfd);
		ctl->lfd = -1;
		/* a socket outside the chroot stays (replaced at the next start) */
		if (chroot_reachable(ctl->path) && unlink(chroot_path(ctl->path)) < 0 &&
		    errno != ENOENT)
			log_warn("control: cannot remove %s: %s", ctl->path, strerror(errno));
	}
	ctl->path[0] = '\0';
}

const struct module control_module = {"control", control_start, control_reload, control_stop};
