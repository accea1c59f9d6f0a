/*
 * policyd/follow.h - the log follower: hands the lines of Postfix's mail
 * log, one at a time, to a callback on the libev loop.
 *
 * Three sources:
 * - a file (Postfix's maillog_file or syslog's mail log), followed across
 *   rotation by rename-and-create and by copytruncate, across deletion and
 *   replacement, and resumed after a restart from a saved position
 *   (device, inode, offset, and a hash of the line that ends at the
 *   offset) without handing out a line twice;
 * - a unix datagram socket (syslog forwarding): one line per datagram,
 *   a `<PRI>` prefix removed, RFC 5424 headers turned into the RFC 3339
 *   form the parser reads;
 * - a replay: a file read once from its start, then done() is called.
 *
 * Never delays policy answers: reading happens in slices of at most
 * `slice_bytes` bytes and `slice_lines` lines, from an idle watcher (so a
 * backlog is read only while the loop has nothing else to do) and, so that
 * a saturated server still makes progress, one slice per loop iteration at
 * most every `starve_ms` from a check watcher.  While catching up on a
 * backlog the slices take at most `cpu_share` of the time (a token bucket;
 * then a pause on a timer), so the follower never takes a whole core from
 * the policy server.  Regular files never block;
 * the socket is non-blocking.
 *
 * Limits: a line longer than max_line bytes is skipped to its end and
 * counted; lines are handed out without their '\n'.  A partial last line
 * is held until its '\n' arrives (or the file is rotated away, then it is
 * handed out as it is).  Lines written to a file between a copy and its
 * truncation are lost (that is copytruncate); lines written to a rotated
 * file after the follower has drained it and moved on are lost too.
 */
#ifndef POLICYD_FOLLOW_H
#define POLICYD_FOLLOW_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Where the follower stands in a file: everything before offset was handed out. */
struct follow_pos {
	uint64_t dev, ino;
	uint64_t offset;
	uint64_t line_hash; /* hash of the line ending at offset (with its '\n'); 0 at 0 */
	uint32_t line_len;  /* its length with the '\n' (0 at 0) */
};

/* A line, without its '\n' (not NUL-terminated; valid during the call). */
typedef void follow_line_cb(void *arg, const char *line, size_t len);

enum follow_note {
	FOLLOW_N_ROTATED = 0, /* the path names a new file: the old one was drained */
	FOLLOW_N_TRUNCATED,   /* the file shrank or was rewritten (copytruncate) */
	FOLLOW_N_DELETED,     /* the path is gone; the open file is still read */
	FOLLOW_N_REAPPEARED,  /* a file exists at the path again */
	FOLLOW_N_RESUMED,     /* started from the saved position */
	FOLLOW_N_RESUME_LOST, /* the saved position could not be used (detail says why) */
	FOLLOW_N_ERROR,       /* an I/O error (detail), retried at the next poll */
	FOLLOW_N_DONE,        /* replay: end of file */
};

/* Something worth a log line happened (may be NULL). */
typedef void follow_note_cb(void *arg, enum follow_note n, const char *detail);

struct follow_opts {
	const char *path;     /* file: the path to follow or replay */
	const char *socket;   /* socket: the datagram socket to bind */
	unsigned socket_mode; /* permissions of the socket (0: 0660) */
	size_t max_line;      /* longer lines are skipped (0: 8192) */
	size_t slice_bytes;   /* bytes read per slice (0: 16 KiB) */
	unsigned slice_lines; /* lines handed out per slice (0: 128) */
	double poll_s;        /* stat() check of the path (0: 1 s) */
	unsigned starve_ms;   /* a slice at least this often under load (0: 50) */
	double cpu_share;     /* catching up: at most this share of a core (0: 0.25) */
	bool from_start;      /* file without a usable saved position: from 0, not the end */
	const struct follow_pos *resume; /* saved position (file), or NULL */
	follow_line_cb *line;
	follow_note_cb *note;
	void *arg;
};

struct follow_stats {
	uint64_t lines;     /* handed out */
	uint64_t bytes;     /* consumed */
	uint64_t too_long;  /* skipped: longer than max_line */
	uint64_t rotations; /* switched to a new file at the path */
	uint64_t truncations;
	uint64_t deletions;
	uint64_t errors;
	uint64_t datagrams;     /* socket: received */
	uint64_t slices;        /* read slices run */
	uint64_t starved;       /* slices forced by the check watcher */
	uint64_t paused;        /* pauses: the CPU share was used up */
	uint64_t resumed_bytes; /* bytes skipped by resuming from a saved position */
};

struct follow;

/* Follow a file (opts->path).  NULL with a message when it cannot start;
 * a missing file is not an error (it is waited for). */
struct follow *follow_file(struct ev_loop *loop, const struct follow_opts *o, char *err,
                           size_t errsz);
/* Read opts->path once from its start; FOLLOW_N_DONE at its end. */
struct follow *follow_replay(struct ev_loop *loop, const struct follow_opts *o, char *err,
                             size_t errsz);
/* Receive lines on a unix datagram socket bound at opts->socket. */
struct follow *follow_socket(struct ev_loop *loop, const struct follow_opts *o, char *err,
                             size_t errsz);

/* The position after the last line handed out (file and replay sources). */
bool follow_position(const struct follow *f, struct follow_pos *out);
/* Check the path (rotation, truncation) and run a slice now (tests, shutdown;
 * the watchers do it otherwise).  Lines handed out. */
size_t follow_poll(struct follow *f);
/* Is there data read or readable that was not handed out yet? */
bool follow_backlog(const struct follow *f);
const struct follow_stats *follow_stats(const struct follow *f);
/* Stop the watchers, close, free (the socket file is removed).  NULL is fine. */
void follow_free(struct follow *f);

/* The hash used for follow_pos.line_hash (64-bit FNV-1a). */
uint64_t follow_hash(const char *p, size_t len);

/* Text of a note, for logs. */
const char *follow_note_name(enum follow_note n);

#endif
