/*
 * policyd/selfcheck.h - self-monitoring: are our own sending IPs and
 * domains on blocklists, are the SPF, DMARC (and named DKIM) records of our
 * domains there and well-formed, and is Postfix wired to policyd
 * (postconf).  Run on a schedule by the "selfcheck" module (a listing
 * raises an alert: log, metric, optional command) and on demand by
 * `policyctl doctor` and the control command "doctor".
 */
#ifndef POLICYD_SELFCHECK_H
#define POLICYD_SELFCHECK_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "config_section.h"
#include "module.h"

#define SELFCHECK_MAX_ITEMS 32

/* The [selfcheck] section. */
struct selfcheck_conf {
	char *ips[SELFCHECK_MAX_ITEMS]; /* our sending addresses */
	size_t nips;
	char *domains[SELFCHECK_MAX_ITEMS]; /* our sending domains */
	size_t ndomains;
	char *ip_lists[SELFCHECK_MAX_ITEMS]; /* DNSBL zones for the IPs */
	size_t nip_lists;
	char *domain_lists[SELFCHECK_MAX_ITEMS]; /* domain blocklist zones */
	size_t ndomain_lists;
	char *dkim_selectors[SELFCHECK_MAX_ITEMS];
	size_t ndkim;
	uint64_t interval_us;     /* 0: no scheduled checks */
	char *alert_command;      /* absolute path, or NULL */
	char *postconf;           /* postconf binary */
	char *postfix_config_dir; /* postconf -c DIR, or NULL */
	unsigned timeout_s;       /* a whole run gives up after this */
};

extern const struct config_section selfcheck_section;
extern const struct module selfcheck_module;

/*
 * One run of the DNS checks on the current DNS channel (dns.h); done(arg,
 * report) gets the JSON report (the callee owns it: json_decref) when
 * every answer came or the timeout passed.  0, or -1 (no DNS channel).
 */
typedef void selfcheck_done(void *arg, json_t *report);
int selfcheck_run(struct ev_loop *loop, const struct selfcheck_conf *sc, selfcheck_done *done,
                  void *arg);

/* Postfix's wiring read through postconf: {"status":..., "checks":[...]}. */
json_t *selfcheck_postfix(const struct config *cfg, const struct selfcheck_conf *sc);

/* The report as text for people. */
void selfcheck_print(json_t *report, FILE *out);

/* ---- pure checks (tests) ---- */
/* One TXT record set of a domain: {"status":"ok|missing|multiple|invalid", ...}. */
json_t *selfcheck_spf(const char *const *txt, size_t n, const char *const *ips, size_t nips);
json_t *selfcheck_dmarc(const char *const *txt, size_t n);
json_t *selfcheck_dkim(const char *const *txt, size_t n);
/*
 * One restriction list: where check_policy_service stands and what comes
 * before it.  Appends {"level":"ok|warn|error","text":...} objects to
 * checks; returns true when the list calls a policy service of ours.
 */
bool selfcheck_restrictions(const char *name, const char *value, const struct config *cfg,
                            json_t *checks);

/* `policyctl doctor [-c CONFIG] [-C POSTFIX_DIR] [--json]` */
int selfcheck_doctor_main(int argc, char **argv);

/* The daemon's last scheduled report (control command "doctor"). */
json_t *selfcheck_last(void);
struct control_call;
void selfcheck_control(struct control_call *call);

#endif
