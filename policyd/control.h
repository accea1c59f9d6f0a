/*
 * policyd/control.h - the control socket (policyctl's way in): a unix
 * socket named by [server] control = unix:/run/policyd/control.sock, mode
 * 0660, group [server] control_group.  Each connection is checked with
 * SO_PEERCRED: root, the daemon's own uid, or a member of control_group;
 * anyone else gets one error line and is closed.  Never on the network.
 *
 * Protocol: one JSON object per line each way.
 *   request   {"cmd":"usage","account":"alice"}
 *   response  {"ok":true, ...}   or   {"ok":false,"error":"text"}
 * Members a command does not use are ignored.  Requests on one connection
 * are answered in order, one at a time.  Limits: CONTROL_MAX_LINE bytes a
 * request line (longer: an error, then the connection is closed),
 * CONTROL_MAX_CONNS connections, CONTROL_IDLE_S idle seconds,
 * CONTROL_MAX_REPLY bytes a reply.
 *
 * Adding a command: one row in control_cmds[] (control.c) and a function
 *   static void my_cmd(struct control_call *call)
 * that reads call->req (and call->req.json for members of its own), then,
 * now or later from the loop, ends the call exactly once with
 * control_reply() or control_error().
 */
#ifndef POLICYD_CONTROL_H
#define POLICYD_CONTROL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "key.h"
#include "module.h"

#define CONTROL_MAX_LINE  (64u * 1024)
#define CONTROL_MAX_REPLY (16u << 20)
#define CONTROL_MAX_CONNS 32
#define CONTROL_IDLE_S    60
#define CONTROL_MAX_IDS   512 /* queue ids in one "held" request */
#define CONTROL_QID_MAX   32  /* bytes of a queue id, NUL included */
#define CONTROL_CMD_MAX   32
#define CONTROL_TOP_MAX   1000

/* A parsed request: the members every command shares, validated. */
struct control_req {
	char cmd[CONTROL_CMD_MAX];
	char account[KEY_MAX]; /* "" when absent */
	char reason[256];
	char rule[64];
	char action[16];     /* pause: "hold" or "defer" ("" = hold) */
	int64_t duration_us; /* flag: 0 = the configured default, -1 = until cleared */
	unsigned n;          /* top: how many (default 20) */
	size_t nids;
	char (*ids)[CONTROL_QID_MAX]; /* held: queue ids (malloc'ed, nids of them) */
	json_t *json;                 /* the whole request, for command-specific members */
};

/*
 * Parse one request line (without its '\n').  0, or -1 with a message
 * (for {"ok":false,"error":...}) in err.  On 0 the caller owns req and
 * frees it with control_req_free(); on -1 nothing is left to free.
 */
int control_parse(const char *line, size_t len, struct control_req *req, char *err, size_t errsz);
void control_req_free(struct control_req *req);

/* Is s a plausible Postfix queue id (1..31 of [0-9A-Za-z])? */
bool control_valid_qid(const char *s);

struct control_conn;

/* One request being answered. */
struct control_call {
	struct control_req req;
	struct module_ctx *m;
	uid_t uid;                 /* the peer */
	char actor[48];            /* "admin:UID" for flag histories */
	struct control_conn *conn; /* NULL once the peer is gone (reply dropped) */
};

/* End the call with {"ok":true, ...members of obj}; steals obj (may be NULL). */
void control_reply(struct control_call *call, json_t *obj);
/* End the call with {"ok":false,"error":...}. */
void control_error(struct control_call *call, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The command table row. */
struct control_cmd {
	const char *name;
	bool needs_account;
	void (*run)(struct control_call *call);
};

/* The module (modules.c). */
extern const struct module control_module;

#endif
