/*
 * policyd/config.h - the daemon's configuration: one INI file (libinih),
 * Postfix-like `name = value`, a [server] section and one [limit NAME]
 * section per rate rule.  config_load() validates everything and names the
 * file and line of the first error; a loaded config is immutable and
 * replaced whole on reload.
 */
#ifndef POLICYD_CONFIG_H
#define POLICYD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache/store.h"
#include "key.h"

#define CONFIG_MAX_LISTEN   16
#define CONFIG_MAX_RULES    64
#define CONFIG_MAX_NETS     256
#define CONFIG_NAME_MAX     64
#define CONFIG_MAX_SECTIONS 16
#define CHROOT_DIR_MAX      256 /* bytes of `chroot = DIR`, with the NUL */

enum verdict_action {
	ACT_DUNNO = 0,
	ACT_WARN,
	ACT_HOLD,
	ACT_DEFER,
	ACT_REJECT,
};

enum limit_count { COUNT_RECIPIENTS = 0, COUNT_MESSAGES, COUNT_BYTES };

enum rule_scope { SCOPE_OUTBOUND = 0, SCOPE_ALL };

/* hooks Postfix calls the policy from */
#define HOOK_RCPT 1u
#define HOOK_DATA 2u
#define HOOK_EOM  4u

/* A per-principal override from a rule's map file. */
struct override {
	char *subject; /* normalised key value */
	unsigned line; /* in the map file */
	bool exempt;
	uint8_t nwin;
	struct gcra_window win[STORE_MAX_WINDOWS];
};

struct rule {
	char name[CONFIG_NAME_MAX];
	enum key_type key;
	enum limit_count count;
	uint8_t nwin;
	struct gcra_window win[STORE_MAX_WINDOWS];
	enum verdict_action action;
	bool dry_run; /* log what would happen, answer DUNNO */
	bool flag;    /* when it fires (enforced), flag the principal (flag.c) */
	enum rule_scope scope;
	unsigned prefix4, prefix6; /* client_network */
	char *reply;               /* text, NULL for the default */
	char dsn[16];              /* enhanced status code, "" for the default */
	char *overrides_path;
	struct override *ovr; /* sorted by subject */
	size_t novr;
	unsigned line; /* line of the section header, for messages */
};

struct config {
	char *path;
	/* [server] */
	char *listen[CONFIG_MAX_LISTEN];
	size_t nlisten;
	char *store;       /* "memory" or a redis://, redis+unix://, redis-cluster:// URL */
	int redis_failure; /* enum store_redis_failure: open, closed, local */
	unsigned redis_timeout_ms, redis_connect_timeout_ms;
	int redis_wait_replicas; /* durable writes (flags, outbox): WAIT for this many; -1: default
	                          */
	unsigned redis_wait_timeout_ms;
	bool fallback_set; /* fallback_action given in the file */
	char *state_dir;   /* "" = no persistence */
	char *pid_file;
	char *user;         /* drop privileges to this user after binding (NULL: stay) */
	char *group;        /* and this group (default: the user's) */
	char *chroot;       /* chroot into this directory after start (chroot.h), NULL: none */
	bool chroot_reload; /* chroot: this file lies under it, so SIGHUP can read it again */
	char *log_target;   /* stderr | syslog */
	char *log_facility; /* mail */
	int log_decisions;  /* 0 none, 1 actions only, 2 all */
	bool debug;
	unsigned max_connections;
	unsigned idle_timeout_s;
	size_t max_request, max_line, max_attrs;
	char *fallback_action; /* answer when a request is malformed or the store fails */
	unsigned hooks;
	struct key_net trusted[CONFIG_MAX_NETS]; /* principal = sender for these */
	size_t ntrusted;
	struct key_opts keyopts;
	uint64_t max_keys;
	unsigned socket_mode; /* unix listeners, e.g. 0660 */
	char *socket_group;   /* chgrp of unix listeners (e.g. postfix), NULL: none */
	/* control socket and metrics (control.c, metrics.c) */
	char *control;             /* "unix:/run/policyd/control.sock" or NULL */
	char *control_group;       /* group allowed on it besides root and us, or NULL */
	char *metrics;             /* "inet:127.0.0.1:9187" or NULL */
	bool metrics_allow_remote; /* allow a non-loopback metrics address */
	char *postfix_config_dir;  /* policyctl's postqueue/postsuper -c, or NULL */
	/* module sections (config_section.h), indexed like config_sections[] */
	void *section[CONFIG_MAX_SECTIONS];
	bool section_present[CONFIG_MAX_SECTIONS];
	/* rules, in file order */
	struct rule rules[CONFIG_MAX_RULES];
	size_t nrules;
};

/*
 * Load and validate path.  On error returns NULL and writes
 * "FILE:LINE: message" into err.
 */
struct config *config_load(const char *path, char *err, size_t errsz);
void config_free(struct config *c);

/* Parsers shared with tests and policyctl. Return 0 or -1 with err set. */
int config_parse_duration(const char *s, uint64_t *us, char *err, size_t errsz);
int config_parse_rate(const char *s, struct gcra_window *w, uint8_t *nwin, char *err, size_t errsz);

/* The override for subject under rule r, or NULL. */
const struct override *config_override(const struct rule *r, const char *subject);

const char *config_action_name(enum verdict_action a); /* "defer", ... */
const char *config_count_name(enum limit_count c);

#endif
