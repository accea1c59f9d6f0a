/*
 * policyd/module.h - long-lived parts of the daemon beside the policy
 * server (flags and hooks, the control socket, metrics, the log follower,
 * DNS, ...).  Each describes itself with one struct module and is listed in
 * modules.c; main.c starts them in table order after the listeners are
 * bound, hands them each reloaded config, and stops them in reverse order
 * before the store is saved.  Adding a module touches one new file and
 * one line of the table.
 */
#ifndef POLICYD_MODULE_H
#define POLICYD_MODULE_H

#include <ev.h>
#include <stddef.h>

#include "cache/store.h"
#include "config.h"

struct server;

struct module_ctx {
	struct ev_loop *loop;
	struct store *store;
	struct server *srv;
	const struct config *cfg; /* the running config (changes on reload) */
};

struct module {
	const char *name;
	/* 0, or -1 with a message: policyd does not start */
	int (*start)(struct module_ctx *m, char *err, size_t errsz);
	/* a new config was loaded and validated (may be NULL) */
	void (*reload)(struct module_ctx *m, const struct config *cfg);
	/* stop watchers, finish or abandon work, free (may be NULL) */
	void (*stop)(struct module_ctx *m);
};

extern const struct module *const modules[]; /* NULL-terminated, modules.c */

#endif
