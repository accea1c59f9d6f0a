/*
 * policyd/follow.c - owns the log follower (see follow.h): reading a mail
 * log file in bounded slices on the libev loop, noticing rotation,
 * truncation, deletion and replacement, resuming from a saved position,
 * replays, and the syslog datagram socket.
 *
 * Entry points: follow_file(), follow_replay(), follow_socket(),
 * follow_position(), follow_poll(), follow_free().
 *
 * How a file is watched: an ev_stat on the path (inotify where libev has
 * it) and a periodic ev_timer both run follow_check(), which compares the
 * open file with what the path names now (inode, size) and with the tail
 * of the last line handed out (hash), and starts the idle watcher when
 * there is something to read.  Reading is done by follow_slice() only.
 *
 * Limits: one buffer of slice_bytes + max_line bytes; the position hash
 * covers at most FOLLOW_TAIL bytes before the offset; a rotated file is
 * looked for, after a restart, only among the entries of the log's own
 * directory whose names start with the log's file name.
 */
#include "follow.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "chroot.h"

#define FOLLOW_TAIL         256 /* bytes before the offset that the position hash covers */
#define FOLLOW_DEF_MAX_LINE 8192
#define FOLLOW_DEF_SLICE    (16u << 10)
#define FOLLOW_DEF_LINES    128u

enum follow_kind { FK_FILE = 0, FK_REPLAY, FK_SOCKET };

struct follow {
	struct ev_loop *loop;
	enum follow_kind kind;
	char *path;
	size_t max_line, slice_bytes;
	unsigned slice_lines, starve_ms;
	double share; /* of one core, at most, while catching up */
	double poll_s;
	unsigned socket_mode;
	follow_line_cb *line;
	follow_note_cb *note;
	void *arg;

	int fd;
	uint64_t dev, ino;
	uint64_t offset; /* file offset of buf[start]: everything before was consumed */
	char *buf;       /* [start, have) unconsumed bytes read from fd */
	size_t cap, start, have;
	bool skipping;       /* inside an overlong line: drop up to its '\n' */
	bool eof;            /* the last read returned 0 */
	bool path_gone;      /* the path does not exist (noted once) */
	bool switch_pending; /* the path names another file: drain this one, then switch */
	bool done;           /* replay finished */

	/* the position checked at each poll (copytruncate + regrowth) */
	uint64_t chk_offset, chk_hash;
	uint32_t chk_len;

	ev_idle idle;
	ev_check check;
	ev_timer poll;
	ev_stat st;
	ev_io io;
	ev_timer pace; /* a pause: the share was used up */
	double tokens; /* seconds of slice time that may still be spent */
	ev_tstamp tok_at;
	bool watchers;
	ev_tstamp last_slice;
	char *dgram, *conv; /* socket: receive and conversion buffers */
	struct follow_stats stats;
};

uint64_t follow_hash(const char *p, size_t len)
{
	uint64_t h = 14695981039346656037ULL;
	for (size_t i = 0; i < len; i++) {
		h ^= (unsigned char)p[i];
		h *= 1099511628211ULL;
	}
	return h;
}

const char *follow_note_name(enum follow_note n)
{
	static const char *const names[] = {"rotated", "truncated",   "deleted", "reappeared",
	                                    "resumed", "resume_lost", "error",   "done"};
	return (size_t)n < sizeof(names) / sizeof(names[0]) ? names[n] : "?";
}

static void follow_notef(struct follow *f, enum follow_note n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void follow_notef(struct follow *f, enum follow_note n, const char *fmt, ...)
{
	char detail[512];
	va_list ap;

	if (n == FOLLOW_N_ERROR)
		f->stats.errors++;
	if (f->note == NULL)
		return;
	va_start(ap, fmt);
	vsnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);
	f->note(f->arg, n, detail);
}

/* Hash of the (up to FOLLOW_TAIL) bytes before off in fd; false if unreadable. */
static bool follow_tail_hash(int fd, uint64_t off, uint64_t *hash, uint32_t *len)
{
	char b[FOLLOW_TAIL];
	size_t n = off < FOLLOW_TAIL ? (size_t)off : FOLLOW_TAIL;
	ssize_t got;

	*hash = 0;
	*len = 0;
	if (n == 0)
		return true;
	do
		got = pread(fd, b, n, (off_t)(off - n));
	while (got < 0 && errno == EINTR);
	if (got != (ssize_t)n)
		return false;
	*hash = follow_hash(b, n);
	*len = (uint32_t)n;
	return true;
}

static bool follow_tail_matches(int fd, uint64_t off, uint32_t len, uint64_t hash)
{
	char b[FOLLOW_TAIL];
	ssize_t got;

	if (len == 0)
		return true; /* nothing to compare with (offset 0) */
	if (len > FOLLOW_TAIL || off < len)
		return false;
	do
		got = pread(fd, b, len, (off_t)(off - len));
	while (got < 0 && errno == EINTR);
	return got == (ssize_t)len && follow_hash(b, len) == hash;
}

/* ------------------------------------------------------------ lines */

static void follow_deliver(struct follow *f, const char *p, size_t len)
{
	if (len > 0 && p[len - 1] == '\r')
		len--;
	f->stats.lines++;
	f->line(f->arg, p, len);
}

/*
 * Hand out the complete lines in the buffer, at most `room` of them.
 * Returns the number handed out.
 */
static size_t follow_drain_buf(struct follow *f, size_t room)
{
	size_t n = 0;

	while (n < room && f->start < f->have) {
		char *p = f->buf + f->start;
		size_t avail = f->have - f->start;
		char *nl = memchr(p, '\n', avail);
		if (nl == NULL)
			break;
		size_t len = (size_t)(nl - p);
		f->start += len + 1;
		f->offset += len + 1;
		f->stats.bytes += len + 1;
		if (f->skipping) {
			f->skipping = false; /* the end of an overlong line */
			continue;
		}
		if (len > f->max_line) {
			f->stats.too_long++;
			continue;
		}
		follow_deliver(f, p, len);
		n++;
	}
	/* no '\n' in a full line's worth: an overlong line, dropped as it comes */
	if (f->start < f->have && f->have - f->start > f->max_line &&
	    memchr(f->buf + f->start, '\n', f->have - f->start) == NULL) {
		if (!f->skipping)
			f->stats.too_long++;
		f->skipping = true;
		f->offset += f->have - f->start;
		f->stats.bytes += f->have - f->start;
		f->start = f->have;
	}
	if (f->start == f->have)
		f->start = f->have = 0;
	return n;
}

/* The partial last line of a file that is being left: hand it out as it is. */
static void follow_flush_partial(struct follow *f)
{
	if (f->start < f->have) {
		size_t len = f->have - f->start;
		if (!f->skipping && len <= f->max_line)
			follow_deliver(f, f->buf + f->start, len);
		f->offset += len;
		f->stats.bytes += len;
	}
	f->start = f->have = 0;
	f->skipping = false;
}

static void follow_reset_buf(struct follow *f)
{
	f->start = f->have = 0;
	f->skipping = false;
}

/* ------------------------------------------------------------ files */

static void follow_close_fd(struct follow *f)
{
	if (f->fd >= 0)
		close(f->fd);
	f->fd = -1;
}

/* Open path; 0, or -1 with errno. */
static int follow_open_path(struct follow *f, const char *path)
{
	struct stat sb;
	int fd = open(chroot_path(path), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return -1;
	if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode)) {
		int e = errno;
		close(fd);
		errno = S_ISREG(sb.st_mode) ? e : EINVAL;
		return -1;
	}
	follow_close_fd(f);
	f->fd = fd;
	f->dev = (uint64_t)sb.st_dev;
	f->ino = (uint64_t)sb.st_ino;
	f->offset = 0;
	f->eof = false;
	f->chk_offset = 0;
	f->chk_hash = 0;
	f->chk_len = 0;
	follow_reset_buf(f);
	return 0;
}

static bool follow_seek(struct follow *f, uint64_t off)
{
	if (lseek(f->fd, (off_t)off, SEEK_SET) < 0)
		return false;
	f->offset = off;
	follow_reset_buf(f);
	return true;
}

/* The offset just after the last '\n' at or before size (0 if none). */
static uint64_t follow_last_line_end(int fd, uint64_t size)
{
	char b[4096];
	uint64_t end = size;

	while (end > 0) {
		size_t n = end < sizeof(b) ? (size_t)end : sizeof(b);
		ssize_t got = pread(fd, b, n, (off_t)(end - n));
		if (got != (ssize_t)n)
			return size;
		for (size_t i = n; i-- > 0;)
			if (b[i] == '\n')
				return end - n + i + 1;
		end -= n;
	}
	return 0;
}

/* After a restart: find the saved file among the rotated siblings of path. */
static int follow_find_rotated(const char *path, uint64_t dev, uint64_t ino, char *out,
                               size_t outsz)
{
	char d[4096], b[4096];
	snprintf(d, sizeof(d), "%s", path);
	snprintf(b, sizeof(b), "%s", path);
	const char *dir = dirname(d), *base = basename(b);
	size_t bl = strlen(base);
	DIR *dp = opendir(dir);
	struct dirent *de;
	int found = -1;

	if (dp == NULL)
		return -1;
	while ((de = readdir(dp)) != NULL) {
		struct stat sb;
		if (strncmp(de->d_name, base, bl) != 0 || de->d_name[bl] == '\0')
			continue;
		if (snprintf(out, outsz, "%s/%s", dir, de->d_name) >= (int)outsz)
			continue;
		if (stat(out, &sb) == 0 && S_ISREG(sb.st_mode) && (uint64_t)sb.st_dev == dev &&
		    (uint64_t)sb.st_ino == ino) {
			found = 0;
			break;
		}
	}
	closedir(dp);
	return found;
}

/* Open the file at start-up: resume, or the end (or start) of the file. */
static void follow_first_open(struct follow *f, const struct follow_opts *o)
{
	const struct follow_pos *r = o->resume;
	struct stat sb;

	if (r && r->ino) {
		if (stat(chroot_path(f->path), &sb) == 0 && (uint64_t)sb.st_dev == r->dev &&
		    (uint64_t)sb.st_ino == r->ino) {
			if (follow_open_path(f, f->path) < 0) {
				follow_notef(f, FOLLOW_N_ERROR, "%s: %s", f->path, strerror(errno));
				f->path_gone = true;
				return;
			}
			if ((uint64_t)sb.st_size >= r->offset &&
			    follow_tail_matches(f->fd, r->offset, r->line_len, r->line_hash) &&
			    follow_seek(f, r->offset)) {
				f->stats.resumed_bytes = r->offset;
				follow_notef(f, FOLLOW_N_RESUMED, "%s at offset %llu", f->path,
				             (unsigned long long)r->offset);
				return;
			}
			follow_notef(f, FOLLOW_N_RESUME_LOST,
			             "%s was truncated or rewritten since offset %llu was saved: "
			             "reading it from its start",
			             f->path, (unsigned long long)r->offset);
			return; /* from 0 */
		}
		char old[4096];
		if (follow_find_rotated(chroot_path(f->path), r->dev, r->ino, old, sizeof(old)) ==
		        0 &&
		    follow_open_path(f, old) == 0) {
			if (fstat(f->fd, &sb) == 0 && (uint64_t)sb.st_size >= r->offset &&
			    follow_tail_matches(f->fd, r->offset, r->line_len, r->line_hash) &&
			    follow_seek(f, r->offset)) {
				f->stats.resumed_bytes = r->offset;
				f->switch_pending = true; /* drain it, then the path from 0 */
				follow_notef(f, FOLLOW_N_RESUMED,
				             "%s at offset %llu (rotated away from %s while "
				             "stopped), then %s",
				             old, (unsigned long long)r->offset, f->path, f->path);
				return;
			}
			follow_close_fd(f);
		}
		follow_notef(f, FOLLOW_N_RESUME_LOST,
		             "the saved file (inode %llu) is no longer at %s nor beside it: lines "
		             "written to it after offset %llu are not counted; reading %s from its "
		             "start",
		             (unsigned long long)r->ino, f->path, (unsigned long long)r->offset,
		             f->path);
		if (follow_open_path(f, f->path) < 0) {
			f->path_gone = true;
			if (errno != ENOENT)
				follow_notef(f, FOLLOW_N_ERROR, "%s: %s", f->path, strerror(errno));
		}
		return;
	}
	if (follow_open_path(f, f->path) < 0) {
		f->path_gone = true;
		if (errno != ENOENT)
			follow_notef(f, FOLLOW_N_ERROR, "%s: %s", f->path, strerror(errno));
		return;
	}
	if (!o->from_start && fstat(f->fd, &sb) == 0)
		follow_seek(f, follow_last_line_end(f->fd, (uint64_t)sb.st_size));
}

/* Leave the drained file for the one the path names now. */
static void follow_switch(struct follow *f)
{
	follow_flush_partial(f);
	f->switch_pending = false;
	if (follow_open_path(f, f->path) < 0) {
		/* gone again: keep the old file until the next poll */
		f->path_gone = errno == ENOENT;
		if (errno != ENOENT)
			follow_notef(f, FOLLOW_N_ERROR, "%s: %s", f->path, strerror(errno));
		return;
	}
	f->stats.rotations++;
	follow_notef(f, FOLLOW_N_ROTATED, "%s: now reading inode %llu from its start", f->path,
	             (unsigned long long)f->ino);
}

static void follow_wake(struct follow *f)
{
	if (f->watchers && !ev_is_active(&f->idle) && !ev_is_active(&f->pace) && !f->done)
		ev_idle_start(f->loop, &f->idle);
}

/*
 * Compare the open file with what the path names, and with its remembered
 * tail.  Starts the idle watcher when there is something to do.
 */
static void follow_check(struct follow *f)
{
	struct stat ps, fs;

	if (f->kind != FK_FILE || f->done)
		return;
	/* chrooted since the start: watch the path as it is named inside */
	if (f->st.path != chroot_path(f->path)) {
		ev_stat_stop(f->loop, &f->st);
		ev_stat_set(&f->st, chroot_path(f->path), 0.);
		ev_stat_start(f->loop, &f->st);
	}
	if (f->fd < 0) {
		if (follow_open_path(f, f->path) == 0) {
			if (f->path_gone)
				follow_notef(f, FOLLOW_N_REAPPEARED, "%s exists again", f->path);
			f->path_gone = false;
			follow_wake(f);
		}
		return;
	}
	if (fstat(f->fd, &fs) < 0) {
		follow_notef(f, FOLLOW_N_ERROR, "fstat %s: %s", f->path, strerror(errno));
		return;
	}
	uint64_t size = (uint64_t)fs.st_size, read_end = f->offset + (f->have - f->start);
	bool truncated = size < read_end;
	/* truncated and regrown past our offset: the remembered tail differs */
	if (!truncated && f->chk_len && f->chk_offset <= size &&
	    !follow_tail_matches(f->fd, f->chk_offset, f->chk_len, f->chk_hash))
		truncated = true;
	if (truncated) {
		f->stats.truncations++;
		follow_notef(f, FOLLOW_N_TRUNCATED,
		             "%s: size %llu below the read offset %llu (copytruncate?): reading "
		             "from its start",
		             f->path, (unsigned long long)size, (unsigned long long)read_end);
		follow_seek(f, 0);
		f->eof = false;
		f->chk_len = 0;
		f->chk_offset = 0;
		follow_wake(f);
		return;
	}
	if (f->offset != f->chk_offset) {
		uint64_t h;
		uint32_t l;
		if (follow_tail_hash(f->fd, f->offset, &h, &l)) {
			f->chk_offset = f->offset;
			f->chk_hash = h;
			f->chk_len = l;
		}
	}
	if (stat(chroot_path(f->path), &ps) < 0) {
		if (errno == ENOENT && !f->path_gone) {
			f->path_gone = true;
			f->stats.deletions++;
			follow_notef(
			    f, FOLLOW_N_DELETED,
			    "%s was removed: reading the open file until a new one appears",
			    f->path);
		}
	} else {
		if (f->path_gone) {
			f->path_gone = false;
			follow_notef(f, FOLLOW_N_REAPPEARED, "%s exists again", f->path);
		}
		if ((uint64_t)ps.st_ino != f->ino || (uint64_t)ps.st_dev != f->dev)
			f->switch_pending = true;
	}
	if (size > read_end || f->switch_pending || f->start < f->have)
		follow_wake(f);
}

/* One slice of a file or replay source.  Returns lines handed out. */
static size_t follow_slice_file(struct follow *f)
{
	size_t lines = 0, bytes = 0;

	f->stats.slices++;
	if (f->fd < 0) {
		f->eof = true;
		return 0;
	}
	for (;;) {
		lines += follow_drain_buf(f, f->slice_lines - lines);
		if (lines >= f->slice_lines || bytes >= f->slice_bytes)
			return lines; /* more to do: the idle watcher stays on */
		if (f->start > 0) {
			memmove(f->buf, f->buf + f->start, f->have - f->start);
			f->have -= f->start;
			f->start = 0;
		}
		size_t want = f->cap - f->have;
		if (want > f->slice_bytes - bytes)
			want = f->slice_bytes - bytes;
		ssize_t n = read(f->fd, f->buf + f->have, want);
		if (n > 0) {
			f->have += (size_t)n;
			bytes += (size_t)n;
			f->eof = false;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno != EAGAIN) {
			follow_notef(f, FOLLOW_N_ERROR, "read %s: %s", f->path, strerror(errno));
			f->eof = true;
			return lines;
		}
		/* end of the file for now */
		f->eof = true;
		if (f->kind == FK_REPLAY) {
			follow_flush_partial(f);
			f->done = true;
			follow_notef(f, FOLLOW_N_DONE, "%s: %llu lines", f->path,
			             (unsigned long long)f->stats.lines);
			return lines;
		}
		if (f->switch_pending) {
			follow_switch(f);
			if (f->fd >= 0 && !f->switch_pending && f->eof == false)
				continue;
		}
		return lines;
	}
}

/* ------------------------------------------------------------ socket */

/*
 * A syslog datagram into the form the parser reads: `<PRI>` dropped; RFC
 * 5424 `1 TS HOST APP PROCID MSGID SD MSG` becomes `TS HOST APP[PROCID]: MSG`;
 * an RFC 3164 message without a host (local syslog(3) form) gets
 * `localhost`.  Returns the line (p/len, or the conversion buffer).
 */
static const char *follow_syslog_form(struct follow *f, const char *p, size_t *lenp)
{
	size_t len = *lenp, i = 0;

	if (len > 2 && p[0] == '<') {
		i = 1;
		while (i < len && i < 5 && p[i] >= '0' && p[i] <= '9')
			i++;
		if (i > 1 && i < len && p[i] == '>') {
			p += i + 1;
			len -= i + 1;
		}
	}
	if (len > 2 && p[0] == '1' && p[1] == ' ') {
		/* RFC 5424 */
		const char *fld[6];
		size_t fl[6], k = 0, j = 2;
		while (k < 5 && j < len) {
			size_t s = j;
			while (j < len && p[j] != ' ')
				j++;
			fld[k] = p + s;
			fl[k] = j - s;
			k++;
			j++;
		}
		if (k < 5 || j > len) {
			*lenp = len;
			return p;
		}
		/* structured data: "-" or [..][..] */
		if (j < len && p[j] == '-') {
			j++;
		} else {
			while (j < len && p[j] == '[') {
				j++;
				while (j < len && p[j] != ']')
					j += (p[j] == '\\' && j + 1 < len) ? 2 : 1;
				if (j < len)
					j++;
			}
		}
		if (j < len && p[j] == ' ')
			j++;
		if (j > len)
			j = len;
		if (len - j >= 3 && memcmp(p + j, "\xef\xbb\xbf", 3) == 0)
			j += 3;
		int n;
		if (fl[3] == 1 && fld[3][0] == '-')
			n = snprintf(f->conv, f->max_line + 1, "%.*s %.*s %.*s: %.*s", (int)fl[0],
			             fld[0], (int)fl[1], fld[1], (int)fl[2], fld[2], (int)(len - j),
			             p + j);
		else
			n = snprintf(f->conv, f->max_line + 1, "%.*s %.*s %.*s[%.*s]: %.*s",
			             (int)fl[0], fld[0], (int)fl[1], fld[1], (int)fl[2], fld[2],
			             (int)fl[3], fld[3], (int)(len - j), p + j);
		if (n < 0 || (size_t)n > f->max_line) {
			*lenp = f->max_line + 1; /* too long */
			return f->conv;
		}
		*lenp = (size_t)n;
		return f->conv;
	}
	/* RFC 3164: "Mmm dd hh:mm:ss " then HOST TAG or just TAG */
	if (len > 16 && p[3] == ' ' && p[6] == ' ' && p[9] == ':' && p[12] == ':' && p[15] == ' ') {
		const char *t = p + 16;
		size_t tl = 0;
		while (16 + tl < len && t[tl] != ' ')
			tl++;
		if (tl > 0 && (t[tl - 1] == ':' || memchr(t, '[', tl) != NULL)) {
			int n = snprintf(f->conv, f->max_line + 1, "%.15s localhost %.*s", p,
			                 (int)(len - 16), t);
			if (n < 0 || (size_t)n > f->max_line) {
				*lenp = f->max_line + 1;
				return f->conv;
			}
			*lenp = (size_t)n;
			return f->conv;
		}
	}
	*lenp = len;
	return p;
}

static size_t follow_slice_socket(struct follow *f)
{
	size_t lines = 0;

	f->stats.slices++;
	while (lines < f->slice_lines) {
		ssize_t n = recv(f->fd, f->dgram, f->max_line + 2, MSG_TRUNC | MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				follow_notef(f, FOLLOW_N_ERROR, "recv %s: %s", f->path,
				             strerror(errno));
			break;
		}
		f->stats.datagrams++;
		f->stats.bytes += (uint64_t)n;
		size_t len = (size_t)n;
		if (len > f->max_line + 2) {
			f->stats.too_long++;
			continue;
		}
		while (len > 0 && (f->dgram[len - 1] == '\n' || f->dgram[len - 1] == '\0'))
			len--;
		const char *p = follow_syslog_form(f, f->dgram, &len);
		if (len > f->max_line) {
			f->stats.too_long++;
			continue;
		}
		follow_deliver(f, p, len);
		lines++;
	}
	return lines;
}

/* ------------------------------------------------------------ watchers */

size_t follow_poll(struct follow *f)
{
	size_t n;

	if (f->done)
		return 0;
	f->last_slice = ev_now(f->loop);
	if (f->kind == FK_SOCKET)
		return follow_slice_socket(f);
	if (f->kind == FK_FILE)
		follow_check(f); /* two stat calls and at most one pread: cheap */
	n = follow_slice_file(f);
	if (f->watchers && ev_is_active(&f->idle) && !follow_backlog(f))
		ev_idle_stop(f->loop, &f->idle);
	return n;
}

bool follow_backlog(const struct follow *f)
{
	if (f->done || f->fd < 0)
		return false;
	if (f->kind == FK_SOCKET)
		return false;
	if (f->start < f->have && memchr(f->buf + f->start, '\n', f->have - f->start))
		return true;
	return !f->eof || f->switch_pending;
}

#define FOLLOW_BURST 0.005 /* seconds of slices that may run back to back */

/*
 * A slice from the watchers, paced: while catching up, slices take at most
 * `share` of the time (a token bucket of slice seconds), so a backlog of
 * millions of lines never takes a whole core from the policy answers.
 */
static void follow_paced(struct follow *f)
{
	ev_tstamp now = ev_time();
	f->tokens += (now - f->tok_at) * f->share;
	if (f->tokens > FOLLOW_BURST)
		f->tokens = FOLLOW_BURST;
	f->tok_at = now;
	if (f->tokens < 0) {
		ev_idle_stop(f->loop, &f->idle);
		ev_timer_set(&f->pace, -f->tokens / f->share, 0.);
		ev_timer_start(f->loop, &f->pace);
		f->stats.paused++;
		return;
	}
	follow_poll(f);
	ev_tstamp end = ev_time();
	f->tokens -= end - now;
	f->tok_at = end;
}

static void follow_on_pace(struct ev_loop *loop, ev_timer *w, int revents)
{
	follow_wake(w->data);
}

static void follow_on_idle(struct ev_loop *loop, ev_idle *w, int revents)
{
	follow_paced(w->data);
}

static void follow_on_check(struct ev_loop *loop, ev_check *w, int revents)
{
	struct follow *f = w->data;
	if (!ev_is_active(&f->idle) || f->done)
		return;
	if ((ev_now(loop) - f->last_slice) * 1000.0 >= f->starve_ms) {
		f->stats.starved++;
		follow_paced(f);
	}
}

static void follow_on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
	follow_check(w->data);
}

static void follow_on_stat(struct ev_loop *loop, ev_stat *w, int revents)
{
	follow_check(w->data);
}

static void follow_on_io(struct ev_loop *loop, ev_io *w, int revents)
{
	follow_poll(w->data);
}

/* ------------------------------------------------------------ life */

static struct follow *follow_new(struct ev_loop *loop, const struct follow_opts *o,
                                 enum follow_kind kind, const char *path, char *err, size_t errsz)
{
	if (path == NULL || path[0] == '\0' || o->line == NULL) {
		snprintf(err, errsz, "no path or no line callback");
		return NULL;
	}
	struct follow *f = calloc(1, sizeof(*f));
	if (f == NULL) {
		snprintf(err, errsz, "out of memory");
		return NULL;
	}
	f->loop = loop;
	f->kind = kind;
	f->fd = -1;
	f->max_line = o->max_line ? o->max_line : FOLLOW_DEF_MAX_LINE;
	f->slice_bytes = o->slice_bytes ? o->slice_bytes : FOLLOW_DEF_SLICE;
	f->slice_lines = o->slice_lines ? o->slice_lines : FOLLOW_DEF_LINES;
	f->poll_s = o->poll_s > 0 ? o->poll_s : 1.0;
	f->starve_ms = o->starve_ms ? o->starve_ms : 50;
	f->share = o->cpu_share > 0 && o->cpu_share <= 1 ? o->cpu_share : 0.25;
	f->socket_mode = o->socket_mode ? o->socket_mode : 0660;
	f->line = o->line;
	f->note = o->note;
	f->arg = o->arg;
	f->path = strdup(path);
	f->cap = f->slice_bytes + f->max_line + 2;
	if (kind == FK_SOCKET) {
		f->dgram = malloc(f->max_line + 3);
		f->conv = malloc(f->max_line + 1);
	} else
		f->buf = malloc(f->cap);
	if (f->path == NULL || (kind == FK_SOCKET ? (!f->dgram || !f->conv) : !f->buf)) {
		snprintf(err, errsz, "out of memory");
		follow_free(f);
		return NULL;
	}
	ev_idle_init(&f->idle, follow_on_idle);
	f->idle.data = f;
	ev_check_init(&f->check, follow_on_check);
	f->check.data = f;
	ev_timer_init(&f->poll, follow_on_timer, f->poll_s, f->poll_s);
	f->poll.data = f;
	ev_io_init(&f->io, follow_on_io, -1, EV_READ);
	f->io.data = f;
	ev_timer_init(&f->pace, follow_on_pace, 0., 0.);
	f->pace.data = f;
	f->tok_at = ev_time();
	f->tokens = FOLLOW_BURST;
	return f;
}

struct follow *follow_file(struct ev_loop *loop, const struct follow_opts *o, char *err,
                           size_t errsz)
{
	struct follow *f = follow_new(loop, o, FK_FILE, o->path, err, errsz);
	if (f == NULL)
		return NULL;
	follow_first_open(f, o);
	ev_stat_init(&f->st, follow_on_stat, f->path, 0.);
	f->st.data = f;
	ev_stat_start(loop, &f->st);
	ev_timer_start(loop, &f->poll);
	ev_check_start(loop, &f->check);
	f->watchers = true;
	f->last_slice = ev_now(loop);
	follow_wake(f);
	return f;
}

struct follow *follow_replay(struct ev_loop *loop, const struct follow_opts *o, char *err,
                             size_t errsz)
{
	struct follow *f = follow_new(loop, o, FK_REPLAY, o->path, err, errsz);
	if (f == NULL)
		return NULL;
	if (follow_open_path(f, f->path) < 0) {
		snprintf(err, errsz, "%s: %s", f->path, strerror(errno));
		follow_free(f);
		return NULL;
	}
	ev_check_start(loop, &f->check);
	f->watchers = true;
	f->last_slice = ev_now(loop);
	follow_wake(f);
	return f;
}

struct follow *follow_socket(struct ev_loop *loop, const struct follow_opts *o, char *err,
                             size_t errsz)
{
	struct sockaddr_un sa;
	struct stat sb;

	if (o->socket == NULL || strlen(o->socket) >= sizeof(sa.sun_path)) {
		snprintf(err, errsz, "socket path missing or longer than %zu bytes",
		         sizeof(sa.sun_path) - 1);
		return NULL;
	}
	struct follow *f = follow_new(loop, o, FK_SOCKET, o->socket, err, errsz);
	if (f == NULL)
		return NULL;
	/* a stale socket of an earlier run is replaced; any other file is not */
	if (lstat(f->path, &sb) == 0) {
		if (!S_ISSOCK(sb.st_mode)) {
			snprintf(err, errsz, "%s exists and is not a socket", f->path);
			follow_free(f);
			return NULL;
		}
		unlink(f->path);
	}
	f->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	memcpy(sa.sun_path, f->path, strlen(f->path) + 1);
	if (f->fd < 0 || bind(f->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		snprintf(err, errsz, "%s: %s", f->path, strerror(errno));
		follow_close_fd(f);
		follow_free(f);
		return NULL;
	}
	if (chmod(f->path, f->socket_mode) < 0) {
		snprintf(err, errsz, "chmod %s: %s", f->path, strerror(errno));
		follow_free(f);
		return NULL;
	}
	int rcv = 4 << 20;
	(void)setsockopt(f->fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv));
	ev_io_set(&f->io, f->fd, EV_READ);
	ev_io_start(loop, &f->io);
	f->watchers = true;
	return f;
}

bool follow_position(const struct follow *f, struct follow_pos *out)
{
	memset(out, 0, sizeof(*out));
	if (f == NULL || f->kind == FK_SOCKET || f->fd < 0)
		return false;
	out->dev = f->dev;
	out->ino = f->ino;
	out->offset = f->offset;
	return follow_tail_hash(f->fd, f->offset, &out->line_hash, &out->line_len);
}

const struct follow_stats *follow_stats(const struct follow *f)
{
	return &f->stats;
}

void follow_free(struct follow *f)
{
	if (f == NULL)
		return;
	if (f->watchers) {
		ev_idle_stop(f->loop, &f->idle);
		ev_check_stop(f->loop, &f->check);
		ev_timer_stop(f->loop, &f->poll);
		ev_timer_stop(f->loop, &f->pace);
		if (f->kind == FK_FILE)
			ev_stat_stop(f->loop, &f->st);
		ev_io_stop(f->loop, &f->io);
	}
	if (f->kind == FK_SOCKET && f->fd >= 0 && chroot_reachable(f->path))
		unlink(chroot_path(f->path));
	follow_close_fd(f);
	free(f->buf);
	free(f->dgram);
	free(f->conv);
	free(f->path);
	free(f);
}
