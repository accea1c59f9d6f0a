/*
 * policyd/server.h - the policy server on the event loop: listeners
 * (inet IPv4/IPv6, unix), persistent connections as Postfix uses them,
 * one request in flight per connection, the pipeline, replies, decision
 * logs, reload and graceful stop.
 */
#ifndef POLICYD_SERVER_H
#define POLICYD_SERVER_H

#include <ev.h>
#include <stdbool.h>
#include <stdint.h>

#include "cache/store.h"
#include "config.h"

struct server_stats {
	unsigned long long requests, bad_requests, fatal_streams;
	unsigned long long accepted, refused_conns, closed_idle;
	unsigned long long verdicts[ACT_REJECT + 1];
	unsigned long long store_errors;
};

struct server;

/* Bind every listener of cfg (before dropping privileges). NULL + err. */
struct server *server_new(struct ev_loop *loop, struct config *cfg, struct store *store, char *err,
                          size_t errsz);
/* Start accepting. */
void server_start(struct server *s);
/* Replace the config (SIGHUP). Listener changes are reported, not applied.
 * -1 (cfg not taken) while too many old configs wait for requests in flight. */
int server_reload(struct server *s, struct config *cfg);
/* Stop accepting, finish requests in flight, then break the loop. */
void server_stop(struct server *s);
void server_free(struct server *s);
const struct server_stats *server_stats(const struct server *s);
struct config *server_config(struct server *s);

/* Parse "inet:host:port", "inet:[v6]:port", "unix:/path". 0 or -1 + err. */
int server_parse_endpoint(const char *ep, int *family, char *host, size_t hostsz, char *port,
                          size_t portsz, char *err, size_t errsz);

#endif
