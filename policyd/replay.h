/*
 * policyd/replay.h - `policyd --replay FILE -c CONFIG`: the whole pipeline
 * on recorded requests with a virtual clock.
 */
#ifndef POLICYD_REPLAY_H
#define POLICYD_REPLAY_H

#include <stdio.h>

#include "config.h"

/*
 * Replay the requests of path ("-" = standard input) against cfg and print
 * one JSON line per request to out.  dns_fixture: answers for the DNS
 * look-ups (dns.h), or NULL: every look-up is unknown.  Returns the exit
 * status: 0, or 1 when the file or the fixture could not be read.
 */
/*
 * maillog (may be NULL): Postfix log lines (RFC 3339 stamps, in time order)
 * fed through the NDR tracker of the config's [ndr] section on the same
 * virtual clock, before each request, so that attributed bounces reach the
 * anomaly profiles as in the daemon.
 */
int replay_run(const char *path, const char *dns_fixture, const char *maillog,
               const struct config *cfg, FILE *out);

#endif
