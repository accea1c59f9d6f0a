/*
 * policyd/selfcheck.c - owns self-monitoring and `policyctl doctor`: the
 * [selfcheck] section, the "selfcheck" module (DNS checks of our own IPs
 * and domains every `interval`; a new listing raises an alert: a log
 * line, the policyd_selfcheck_listed metric and the optional
 * alert_command), the checks of SPF, DMARC and DKIM records, the reading
 * of Postfix's wiring through postconf, and the report (JSON, or text for
 * people).
 *
 * Entry points: selfcheck_module, selfcheck_section, selfcheck_run (DNS
 * part, asynchronous), selfcheck_postfix (postconf, blocking: only from
 * policyctl), selfcheck_doctor_main, selfcheck_last; the pure checks
 * selfcheck_spf/dmarc/dkim/restrictions.
 *
 * Limits: SELFCHECK_MAX_ITEMS of each list; SPF includes and redirects are
 * counted, not followed (so "covers our IP" is about ip4/ip6 terms only);
 * postconf output is read up to SELFCHECK_POSTCONF_MAX bytes; an alert
 * command gets `listed|delisted ITEM LIST CODE` and is reaped, not timed.
 */
#include "selfcheck.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "chroot.h"
#include "control.h"
#include "dns.h"
#include "log.h"
#include "metrics.h"

#define SELFCHECK_POSTCONF_MAX   (256u * 1024)
#define SELFCHECK_MAX_LISTED     256
#define SELFCHECK_DEFAULT_CONFIG "/etc/policyd/policyd.conf"

/* ---------------------------------------------------------------- config */

static void sc_defaults(void *blk)
{
	struct selfcheck_conf *c = blk;
	memset(c, 0, sizeof(*c));
	c->interval_us = 3600ULL * 1000000;
	c->timeout_s = 20;
}

static void sc_free_list(char **v, size_t *n)
{
	for (size_t i = 0; i < *n; i++)
		free(v[i]);
	*n = 0;
}

static void sc_free(void *blk)
{
	struct selfcheck_conf *c = blk;
	sc_free_list(c->ips, &c->nips);
	sc_free_list(c->domains, &c->ndomains);
	sc_free_list(c->ip_lists, &c->nip_lists);
	sc_free_list(c->domain_lists, &c->ndomain_lists);
	sc_free_list(c->dkim_selectors, &c->ndkim);
	free(c->alert_command);
	free(c->postconf);
	free(c->postfix_config_dir);
	c->alert_command = c->postconf = c->postfix_config_dir = NULL;
}

static bool sc_hostname(const char *s, bool label)
{
	size_t n = strlen(s);
	if (n == 0 || n > 253 || s[0] == '.' || s[0] == '-' || s[n - 1] == '.')
		return false;
	for (const char *p = s; *p; p++)
		if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_' && (label || *p != '.'))
			return false;
	return true;
}

enum sc_kind { SC_IP, SC_DOMAIN, SC_LABEL };

static int sc_set_list(char **v, size_t *n, const char *value, enum sc_kind kind, const char *name,
                       char *err, size_t errsz)
{
	char buf[4096];
	if (strlen(value) >= sizeof(buf)) {
		snprintf(err, errsz, "%s: list too long", name);
		return -1;
	}
	sc_free_list(v, n);
	snprintf(buf, sizeof(buf), "%s", value);
	for (char *save = NULL, *t = strtok_r(buf, ", \t", &save); t;
	     t = strtok_r(NULL, ", \t", &save)) {
		unsigned char a[16];
		bool ok = kind == SC_IP
		              ? inet_pton(AF_INET, t, a) == 1 || inet_pton(AF_INET6, t, a) == 1
		              : sc_hostname(t, kind == SC_LABEL);
		if (!ok) {
			snprintf(err, errsz, "%s: '%s' is not %s", name, t,
			         kind == SC_IP       ? "an IP address"
			         : kind == SC_DOMAIN ? "a domain"
			                             : "a DKIM selector");
			return -1;
		}
		if (*n == SELFCHECK_MAX_ITEMS) {
			snprintf(err, errsz, "%s: at most %d", name, SELFCHECK_MAX_ITEMS);
			return -1;
		}
		v[*n] = strdup(t);
		if (v[*n] == NULL) {
			snprintf(err, errsz, "out of memory");
			return -1;
		}
		(*n)++;
	}
	return 0;
}

static int sc_set_str(char **dst, const char *v, bool absolute, const char *name, char *err,
                      size_t errsz)
{
	if (absolute && v[0] != '/') {
		snprintf(err, errsz, "%s: '%s' is not an absolute path", name, v);
		return -1;
	}
	free(*dst);
	*dst = v[0] ? strdup(v) : NULL;
	return 0;
}

static int sc_set(void *blk, const char *name, const char *v, char *err, size_t errsz)
{
	struct selfcheck_conf *c = blk;
	if (!strcmp(name, "ips"))
		return sc_set_list(c->ips, &c->nips, v, SC_IP, name, err, errsz);
	if (!strcmp(name, "domains"))
		return sc_set_list(c->domains, &c->ndomains, v, SC_DOMAIN, name, err, errsz);
	if (!strcmp(name, "ip_lists"))
		return sc_set_list(c->ip_lists, &c->nip_lists, v, SC_DOMAIN, name, err, errsz);
	if (!strcmp(name, "domain_lists"))
		return sc_set_list(c->domain_lists, &c->ndomain_lists, v, SC_DOMAIN, name, err,
		                   errsz);
	if (!strcmp(name, "dkim_selectors"))
		return sc_set_list(c->dkim_selectors, &c->ndkim, v, SC_LABEL, name, err, errsz);
	if (!strcmp(name, "interval")) {
		if (!strcmp(v, "0") || !strcmp(v, "never")) {
			c->interval_us = 0;
			return 0;
		}
		if (config_parse_duration(v, &c->interval_us, err, errsz) < 0)
			return -1;
		if (c->interval_us < 60000000ULL) {
			snprintf(err, errsz, "interval: '%s' (at least 1m, or never)", v);
			return -1;
		}
		return 0;
	}
	if (!strcmp(name, "timeout")) {
		uint64_t us;
		if (config_parse_duration(v, &us, err, errsz) < 0)
			return -1;
		if (us < 1000000 || us > 600000000ULL) {
			snprintf(err, errsz, "timeout: '%s' (1s .. 10m)", v);
			return -1;
		}
		c->timeout_s = (unsigned)(us / 1000000);
		return 0;
	}
	if (!strcmp(name, "alert_command"))
		return sc_set_str(&c->alert_command, v, true, name, err, errsz);
	if (!strcmp(name, "postconf"))
		return sc_set_str(&c->postconf, v, true, name, err, errsz);
	if (!strcmp(name, "postfix_config_dir"))
		return sc_set_str(&c->postfix_config_dir, v, true, name, err, errsz);
	snprintf(err, errsz,
	         "unknown parameter '%s' in [selfcheck] (ips, domains, ip_lists, domain_lists, "
	         "dkim_selectors, interval, timeout, alert_command, postconf, postfix_config_dir)",
	         name);
	return -1;
}

static int sc_check(void *blk, const struct config *cfg, char *err, size_t errsz)
{
	struct selfcheck_conf *c = blk;
	if (c->nips && c->nip_lists == 0) {
		snprintf(err, errsz, "ips are given but no ip_lists to check them against");
		return -1;
	}
	/* chroot: the alert command runs inside it (chroot.h) */
	if (chroot_check_path(cfg, "alert_command", c->alert_command, err, errsz) < 0)
		return -1;
	return 0;
}

const struct config_section selfcheck_section = {
    .name = "selfcheck",
    .lists =
        (const char *const[]){"ips", "domains", "ip_lists", "domain_lists", "dkim_selectors", NULL},
    .size = sizeof(struct selfcheck_conf),
    .defaults = sc_defaults,
    .set = sc_set,
    .check = sc_check,
    .free = sc_free,
};

/* ---------------------------------------------------------------- record checks */

static void sc_note(json_t *arr, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sc_note(json_t *arr, const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	json_array_append_new(arr, json_string(buf));
}

/* Does record start with tag (case-insensitive) followed by a space / ; / end? */
static bool sc_starts(const char *rec, const char *tag, const char *seps)
{
	size_t n = strlen(tag);
	while (*rec == ' ')
		rec++;
	return !strncasecmp(rec, tag, n) && (rec[n] == '\0' || strchr(seps, rec[n]));
}

static bool sc_in_net(const char *ip, int fam, const unsigned char *net, unsigned plen)
{
	unsigned char a[16];
	if (inet_pton(fam, ip, a) != 1)
		return false;
	for (unsigned i = 0; i < plen; i++) {
		unsigned byte = i / 8, bit = 7 - i % 8;
		if (((a[byte] >> bit) & 1) != ((net[byte] >> bit) & 1))
			return false;
	}
	return true;
}

json_t *selfcheck_spf(const char *const *txt, size_t n, const char *const *ips, size_t nips)
{
	json_t *o = json_object(), *problems = json_array(), *warnings = json_array();
	const char *rec = NULL;
	size_t found = 0;
	for (size_t i = 0; i < n; i++)
		if (sc_starts(txt[i], "v=spf1", " ")) {
			found++;
			rec = txt[i];
		}
	if (found == 0) {
		json_object_set_new(o, "status", json_string("missing"));
		sc_note(problems, "no TXT record starting with v=spf1: receivers cannot tell our "
		                  "servers from forgers");
		goto out;
	}
	if (found > 1) {
		json_object_set_new(o, "status", json_string("invalid"));
		sc_note(problems, "%zu SPF records: a permerror for every receiver (RFC 7208 4.5)",
		        found);
		goto out;
	}
	json_object_set_new(o, "record", json_string(rec));
	unsigned lookups = 0;
	bool all = false, redirect = false, after_all = false;
	bool covered[SELFCHECK_MAX_ITEMS] = {false};
	char buf[2048];
	snprintf(buf, sizeof(buf), "%s", rec);
	char *save = NULL;
	strtok_r(buf, " ", &save); /* v=spf1 */
	for (char *t = strtok_r(NULL, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
		char q = '+';
		if (all)
			after_all = true;
		if (strchr("+-~?", *t))
			q = *t++;
		char *eq = strchr(t, '='), *colon = strchr(t, ':'), *slash = strchr(t, '/');
		if (eq && (!colon || eq < colon)) { /* modifier */
			*eq = '\0';
			if (!strcasecmp(t, "redirect")) {
				redirect = true;
				lookups++;
				if (!eq[1])
					sc_note(problems, "redirect= without a domain");
			} else if (!strcasecmp(t, "exp")) {
				if (!eq[1])
					sc_note(problems, "exp= without a domain");
			} else if (!*t)
				sc_note(problems, "'=%s': a modifier without a name", eq + 1);
			continue;
		}
		size_t ml = colon ? (size_t)(colon - t) : slash ? (size_t)(slash - t) : strlen(t);
		const char *arg = colon ? colon + 1 : NULL;
		if (ml == 3 && !strncasecmp(t, "all", 3) && !colon && !slash) {
			all = true;
			if (q == '+')
				sc_note(problems,
				        "+all: every host on the Internet may send as us");
			else if (q == '?')
				sc_note(warnings, "?all: unlisted senders are neutral, not failed");
			json_object_set_new(o, "all", json_sprintf("%call", q));
		} else if ((ml == 7 && !strncasecmp(t, "include", 7)) ||
		           (ml == 6 && !strncasecmp(t, "exists", 6))) {
			lookups++;
			if (!arg || !*arg)
				sc_note(problems, "%.*s without a domain", (int)ml, t);
		} else if ((ml == 1 && !strncasecmp(t, "a", 1)) ||
		           (ml == 2 && !strncasecmp(t, "mx", 2))) {
			lookups++;
		} else if (ml == 3 && !strncasecmp(t, "ptr", 3)) {
			lookups++;
			sc_note(warnings, "ptr: slow and deprecated (RFC 7208 5.5)");
		} else if ((ml == 3 && !strncasecmp(t, "ip4", 3)) ||
		           (ml == 3 && !strncasecmp(t, "ip6", 3))) {
			int fam = t[2] == '4' ? AF_INET : AF_INET6;
			unsigned max = fam == AF_INET ? 32 : 128, plen = max;
			char addr[64];
			unsigned char net[16];
			if (!arg) {
				sc_note(problems, "%.3s without an address", t);
				continue;
			}
			size_t al = strcspn(arg, "/");
			if (al >= sizeof(addr)) {
				sc_note(problems, "%s: not an address", t);
				continue;
			}
			memcpy(addr, arg, al);
			addr[al] = '\0';
			if (arg[al] == '/') {
				char *end;
				unsigned long l = strtoul(arg + al + 1, &end, 10);
				if (*end || l > max || arg[al + 1] == '\0') {
					sc_note(problems, "%s: bad prefix length", t);
					continue;
				}
				plen = (unsigned)l;
			}
			if (inet_pton(fam, addr, net) != 1) {
				sc_note(problems, "%s: not an IPv%c address", t, t[2]);
				continue;
			}
			for (size_t i = 0; i < nips && i < SELFCHECK_MAX_ITEMS; i++)
				if (q == '+' && sc_in_net(ips[i], fam, net, plen))
					covered[i] = true;
		} else
			sc_note(problems, "unknown mechanism '%s'", t);
	}
	json_object_set_new(o, "lookups", json_integer(lookups));
	if (lookups > 10)
		sc_note(problems,
		        "%u DNS-querying terms: more than 10 is a permerror (RFC 7208 4.6.4)",
		        lookups);
	if (!all && !redirect)
		sc_note(warnings, "neither 'all' nor 'redirect=': unlisted senders are neutral");
	if (after_all)
		sc_note(warnings, "terms after 'all' are never evaluated");
	json_t *cov = json_object();
	for (size_t i = 0; i < nips && i < SELFCHECK_MAX_ITEMS; i++)
		json_object_set_new(cov, ips[i],
		                    json_string(covered[i] ? "yes (ip4/ip6)"
		                                : lookups ? "not by ip4/ip6 (includes not followed)"
		                                          : "no"));
	json_object_set_new(o, "covers", cov);
	json_object_set_new(o, "status", json_string(json_array_size(problems) ? "invalid" : "ok"));
out:
	json_object_set_new(o, "problems", problems);
	json_object_set_new(o, "warnings", warnings);
	return o;
}

/* "k=v; k2=v2": calls fn for each tag; -1 on a tag without '=' */
static int sc_tags(const char *rec, int (*fn)(void *arg, const char *k, const char *v), void *arg)
{
	char buf[4096];
	snprintf(buf, sizeof(buf), "%s", rec);
	for (char *save = NULL, *t = strtok_r(buf, ";", &save); t; t = strtok_r(NULL, ";", &save)) {
		while (isspace((unsigned char)*t))
			t++;
		size_t l = strlen(t);
		while (l && isspace((unsigned char)t[l - 1]))
			t[--l] = '\0';
		if (!*t)
			continue;
		char *eq = strchr(t, '=');
		if (!eq)
			return -1;
		*eq = '\0';
		char *k = t, *v = eq + 1;
		l = strlen(k);
		while (l && isspace((unsigned char)k[l - 1]))
			k[--l] = '\0';
		while (isspace((unsigned char)*v))
			v++;
		if (fn(arg, k, v) < 0)
			return -1;
	}
	return 0;
}

struct sc_dmarc {
	json_t *o, *problems, *warnings;
	bool p;
	unsigned n;
};

static int sc_dmarc_tag(void *arg, const char *k, const char *v)
{
	struct sc_dmarc *d = arg;
	if (d->n++ == 0 && strcasecmp(k, "v"))
		sc_note(d->problems, "the first tag must be v=DMARC1");
	if (!strcasecmp(k, "p") || !strcasecmp(k, "sp")) {
		if (strcasecmp(v, "none") && strcasecmp(v, "quarantine") && strcasecmp(v, "reject"))
			sc_note(d->problems, "%s=%s (none, quarantine or reject)", k, v);
		else if (!strcasecmp(k, "p")) {
			d->p = true;
			json_object_set_new(d->o, "policy", json_string(v));
			if (!strcasecmp(v, "none"))
				sc_note(d->warnings,
				        "p=none: monitoring only, forgeries are delivered");
		}
	} else if (!strcasecmp(k, "pct") || !strcasecmp(k, "ri")) {
		char *end;
		unsigned long n = strtoul(v, &end, 10);
		if (!*v || *end || (k[0] == 'p' && n > 100))
			sc_note(d->problems, "%s=%s is not a %s", k, v,
			        k[0] == 'p' ? "percentage" : "number");
	} else if (!strcasecmp(k, "adkim") || !strcasecmp(k, "aspf")) {
		if (strcasecmp(v, "r") && strcasecmp(v, "s"))
			sc_note(d->problems, "%s=%s (r or s)", k, v);
	} else if (!strcasecmp(k, "rua") || !strcasecmp(k, "ruf")) {
		if (strncasecmp(v, "mailto:", 7))
			sc_note(d->warnings, "%s=%s: reports are sent to mailto: addresses", k, v);
	} else if (strcasecmp(k, "v") && strcasecmp(k, "fo") && strcasecmp(k, "rf"))
		sc_note(d->warnings, "unknown tag %s", k);
	return 0;
}

json_t *selfcheck_dmarc(const char *const *txt, size_t n)
{
	struct sc_dmarc d = {
	    .o = json_object(), .problems = json_array(), .warnings = json_array()};
	const char *rec = NULL;
	size_t found = 0;
	for (size_t i = 0; i < n; i++)
		if (sc_starts(txt[i], "v=DMARC1", " ;")) {
			found++;
			rec = txt[i];
		}
	if (found == 0) {
		json_object_set_new(d.o, "status", json_string("missing"));
		sc_note(d.problems, "no v=DMARC1 record at _dmarc: receivers apply no policy to "
		                    "forgeries of the domain");
	} else if (found > 1) {
		json_object_set_new(d.o, "status", json_string("invalid"));
		sc_note(d.problems, "%zu DMARC records: receivers ignore them all", found);
	} else {
		json_object_set_new(d.o, "record", json_string(rec));
		if (sc_tags(rec, sc_dmarc_tag, &d) < 0)
			sc_note(d.problems, "a tag without '='");
		if (!d.p)
			sc_note(d.problems, "no p= tag (required)");
		json_object_set_new(d.o, "status",
		                    json_string(json_array_size(d.problems) ? "invalid" : "ok"));
	}
	json_object_set_new(d.o, "problems", d.problems);
	json_object_set_new(d.o, "warnings", d.warnings);
	return d.o;
}

struct sc_dkim {
	json_t *problems, *warnings;
	bool p;
	unsigned n;
};

static int sc_dkim_tag(void *arg, const char *k, const char *v)
{
	struct sc_dkim *d = arg;
	if (!strcasecmp(k, "v")) {
		if (d->n != 0 || strcmp(v, "DKIM1"))
			sc_note(d->problems, "v=%s must be first and DKIM1", v);
	} else if (!strcasecmp(k, "k")) {
		if (strcasecmp(v, "rsa") && strcasecmp(v, "ed25519"))
			sc_note(d->problems, "k=%s (rsa or ed25519)", v);
	} else if (!strcasecmp(k, "p")) {
		d->p = true;
		size_t b64 = 0;
		for (const char *c = v; *c; c++) {
			if (isspace((unsigned char)*c))
				continue;
			if (!isalnum((unsigned char)*c) && *c != '+' && *c != '/' && *c != '=') {
				sc_note(d->problems, "p= is not base64");
				break;
			}
			b64++;
		}
		if (b64 == 0)
			sc_note(d->problems, "p= is empty: the key is revoked");
		else if (b64 < 200 && !strchr(v, '='))
			sc_note(d->warnings, "p= is short (%zu characters): RSA under 1024 bits?",
			        b64);
	}
	d->n++;
	return 0;
}

json_t *selfcheck_dkim(const char *const *txt, size_t n)
{
	json_t *o = json_object();
	struct sc_dkim d = {.problems = json_array(), .warnings = json_array()};
	if (n == 0) {
		json_object_set_new(o, "status", json_string("missing"));
		sc_note(d.problems, "no TXT record for this selector");
	} else {
		json_object_set_new(o, "record", json_string(txt[0]));
		if (n > 1)
			sc_note(d.warnings, "%zu TXT records for one selector", n);
		if (sc_tags(txt[0], sc_dkim_tag, &d) < 0)
			sc_note(d.problems, "a tag without '='");
		if (!d.p)
			sc_note(d.problems, "no p= tag (the public key)");
		json_object_set_new(o, "status",
		                    json_string(json_array_size(d.problems) ? "invalid" : "ok"));
	}
	json_object_set_new(o, "problems", d.problems);
	json_object_set_new(o, "warnings", d.warnings);
	return o;
}

/* ---------------------------------------------------------------- Postfix wiring */

static void sc_check_add(json_t *checks, const char *level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void sc_check_add(json_t *checks, const char *level, const char *fmt, ...)
{
	char buf[600];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	json_array_append_new(checks, json_pack("{s:s,s:s}", "level", level, "text", buf));
}

/* Is the Postfix endpoint one of our listeners? */
static bool sc_ours(const char *ep, const struct config *cfg)
{
	for (size_t i = 0; i < cfg->nlisten; i++) {
		const char *l = cfg->listen[i];
		if (!strcmp(ep, l))
			return true;
		if (!strncmp(ep, "inet:localhost:", 15) && !strncmp(l, "inet:127.0.0.1:", 15) &&
		    !strcmp(ep + 15, l + 15))
			return true;
		/* unix:private/policyd names a socket under Postfix's queue directory */
		if (!strncmp(ep, "unix:", 5) && !strncmp(l, "unix:", 5) && ep[5] != '/') {
			size_t el = strlen(ep + 5), ll = strlen(l + 5);
			if (ll > el && !strcmp(l + 5 + ll - el, ep + 5) &&
			    l[5 + ll - el - 1] == '/')
				return true;
		}
	}
	return false;
}

/* Split a restriction list into tokens; "{ ... }" stays one token. */
static size_t sc_tokens(const char *v, char tok[][256], size_t max)
{
	size_t n = 0;
	const char *p = v;
	while (*p && n < max) {
		while (*p == ',' || isspace((unsigned char)*p))
			p++;
		if (!*p)
			break;
		const char *s = p;
		if (*p == '{') {
			int depth = 0;
			do {
				depth += *p == '{';
				depth -= *p == '}';
				p++;
			} while (*p && depth > 0);
		} else
			while (*p && *p != ',' && !isspace((unsigned char)*p) && *p != '{')
				p++;
		size_t l = (size_t)(p - s);
		if (l >= sizeof(tok[0]))
			l = sizeof(tok[0]) - 1;
		memcpy(tok[n], s, l);
		tok[n][l] = '\0';
		n++;
	}
	return n;
}

bool selfcheck_restrictions(const char *name, const char *value, const struct config *cfg,
                            json_t *checks)
{
	static char tok[128][256];
	size_t n = sc_tokens(value, tok, 128);
	const char *skip = NULL; /* a permit before our check */
	for (size_t i = 0; i < n; i++) {
		const char *t = tok[i];
		if (!strcmp(t, "permit_sasl_authenticated") || !strcmp(t, "permit_mynetworks") ||
		    !strcmp(t, "permit")) {
			if (!skip)
				skip = t;
			continue;
		}
		if (strcmp(t, "check_policy_service") || i + 1 >= n)
			continue;
		/* its endpoint: the next token, or the first word inside { } */
		char ep[256];
		const char *e = tok[i + 1];
		if (e[0] == '{') {
			e++;
			while (isspace((unsigned char)*e))
				e++;
		}
		size_t el = strcspn(e, " ,\t}");
		snprintf(ep, sizeof(ep), "%.*s", (int)el, e);
		if (!sc_ours(ep, cfg)) {
			sc_check_add(checks, "info",
			             "%s: check_policy_service %s is not one of "
			             "policyd's listeners",
			             name, ep);
			continue;
		}
		if (skip && !strcmp(skip, "permit_sasl_authenticated"))
			sc_check_add(
			    checks, "error",
			    "%s: permit_sasl_authenticated comes before check_policy_service "
			    "%s: authenticated submissions, the mail policyd judges, never "
			    "reach it",
			    name, ep);
		else if (skip && !strcmp(skip, "permit_mynetworks"))
			sc_check_add(
			    checks, "warn",
			    "%s: permit_mynetworks comes before check_policy_service %s: mail "
			    "from trusted networks (web servers, scripts) is not counted",
			    name, ep);
		else if (skip)
			sc_check_add(
			    checks, "error",
			    "%s: '%s' comes before check_policy_service %s: nothing reaches it",
			    name, skip, ep);
		else
			sc_check_add(checks, "ok", "%s calls policyd (%s)", name, ep);
		return !skip || strcmp(skip, "permit_mynetworks") == 0;
	}
	return false;
}

/* Run argv, read its standard output into a malloc'ed string; NULL on failure. */
static char *sc_run(char *const argv[], int *status)
{
	int fd[2];
	if (pipe(fd) < 0)
		return NULL;
	pid_t pid = fork();
	if (pid < 0) {
		close(fd[0]);
		close(fd[1]);
		return NULL;
	}
	if (pid == 0) {
		dup2(fd[1], 1);
		close(fd[0]);
		close(fd[1]);
		int dn = open("/dev/null", O_WRONLY);
		if (dn >= 0)
			dup2(dn, 2);
		execv(argv[0], argv);
		_exit(127);
	}
	close(fd[1]);
	size_t len = 0, cap = 4096;
	char *buf = malloc(cap);
	for (;;) {
		if (buf == NULL)
			break;
		if (len + 1 >= cap) {
			if (cap >= SELFCHECK_POSTCONF_MAX)
				break;
			char *nb = realloc(buf, cap * 2);
			if (nb == NULL) {
				free(buf);
				buf = NULL;
				break;
			}
			buf = nb;
			cap *= 2;
		}
		ssize_t k = read(fd[0], buf + len, cap - 1 - len);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			break;
		len += (size_t)k;
	}
	close(fd[0]);
	int st = 0;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	*status = st;
	if (buf)
		buf[len] = '\0';
	return buf;
}

static char *sc_postconf(const struct selfcheck_conf *sc, const char *opt, const char *param,
                         int *status)
{
	char *argv[8];
	int n = 0;
	argv[n++] = sc->postconf ? sc->postconf : (char *)"/usr/sbin/postconf";
	if (sc->postfix_config_dir) {
		argv[n++] = (char *)"-c";
		argv[n++] = sc->postfix_config_dir;
	}
	argv[n++] = (char *)opt;
	if (param)
		argv[n++] = (char *)param;
	argv[n] = NULL;
	return sc_run(argv, status);
}

json_t *selfcheck_postfix(const struct config *cfg, const struct selfcheck_conf *sc)
{
	static const char *const lists[] = {"smtpd_relay_restrictions",
	                                    "smtpd_recipient_restrictions",
	                                    "smtpd_end_of_data_restrictions"};
	json_t *o = json_object(), *checks = json_array();
	bool rcpt_main = false, eom_main = false, any_rcpt = false, any_eom = false;
	int st;

	json_object_set_new(o, "checks", checks);
	for (size_t i = 0; i < 3; i++) {
		char *v = sc_postconf(sc, "-xh", lists[i], &st);
		if (v == NULL || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
			free(v);
			json_object_set_new(o, "status", json_string("unavailable"));
			sc_check_add(checks, "error",
			             "cannot run %s -xh %s (is Postfix installed? "
			             "[selfcheck] postconf = PATH)",
			             sc->postconf ? sc->postconf : "/usr/sbin/postconf", lists[i]);
			return o;
		}
		v[strcspn(v, "\n")] = '\0';
		bool ours = selfcheck_restrictions(lists[i], v, cfg, checks);
		if (i < 2)
			rcpt_main |= ours;
		else
			eom_main = ours;
		free(v);
	}
	any_rcpt = rcpt_main;
	any_eom = eom_main;
	/* master.cf overrides: submission and smtps are where logins arrive */
	char *m = sc_postconf(sc, "-Px", NULL, &st);
	for (char *save = NULL, *l = m ? strtok_r(m, "\n", &save) : NULL; l;
	     l = strtok_r(NULL, "\n", &save)) {
		char *eq = strstr(l, " = ");
		if (eq == NULL)
			continue;
		*eq = '\0';
		const char *param = strrchr(l, '/');
		if (param == NULL)
			continue;
		param++;
		for (size_t i = 0; i < 3; i++)
			if (!strcmp(param, lists[i])) {
				char what[320];
				snprintf(what, sizeof(what), "master.cf %.*s -o %s",
				         (int)(param - l - 1), l, param);
				bool ours = selfcheck_restrictions(what, eq + 3, cfg, checks);
				if (i < 2)
					any_rcpt |= ours;
				else
					any_eom |= ours;
				if (i < 2 && !ours)
					sc_check_add(
					    checks, "error",
					    "%s does not call policyd: mail submitted there is "
					    "never seen",
					    what);
			}
	}
	free(m);
	if (!any_rcpt)
		sc_check_add(checks, "error",
		             "no smtpd_relay_restrictions or smtpd_recipient_restrictions calls "
		             "check_policy_service for policyd (listen = %s)",
		             cfg->nlisten ? cfg->listen[0] : "?");
	if ((cfg->hooks & HOOK_EOM) && !any_eom)
		sc_check_add(checks, "error",
		             "hooks include eom but smtpd_end_of_data_restrictions does not call "
		             "policyd: recipients reserved at RCPT are never settled and messages "
		             "are never counted");
	else if (!(cfg->hooks & HOOK_EOM) && any_eom)
		sc_check_add(
		    checks, "warn",
		    "smtpd_end_of_data_restrictions calls policyd but [server] hooks lacks "
		    "eom: add it");
	else if (any_eom)
		sc_check_add(checks, "ok", "the END-OF-MESSAGE hook is in place");
	bool bad = false;
	for (size_t i = 0; i < json_array_size(checks); i++)
		bad |=
		    !strcmp(json_string_value(json_object_get(json_array_get(checks, i), "level")),
		            "error");
	json_object_set_new(o, "status", json_string(bad ? "problems" : "ok"));
	return o;
}

/* ---------------------------------------------------------------- DNS run */

enum sc_q { SCQ_IP = 0, SCQ_IP_TXT, SCQ_DOMAIN, SCQ_SPF, SCQ_DMARC, SCQ_DKIM };

struct sc_run {
	json_t *report;
	unsigned pending;
	bool finished;
	selfcheck_done *done;
	void *arg;
	struct ev_loop *loop;
	ev_timer timeout;
	const char *ips[SELFCHECK_MAX_ITEMS];
	size_t nips;
};

struct sc_query {
	struct sc_run *run;
	enum sc_q kind;
	json_t *slot; /* borrowed: lives in run->report */
	char name[256];
};

static void sc_finish(struct sc_run *r)
{
	if (r->finished)
		return;
	r->finished = true;
	ev_timer_stop(r->loop, &r->timeout);
	r->done(r->arg, r->report);
	r->report = NULL;
}

static void sc_release(struct sc_run *r)
{
	if (r->pending == 0 && r->finished)
		free(r);
}

static void sc_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	struct sc_run *r = w->data;
	json_object_set_new(r->report, "timeout", json_true());
	sc_finish(r);
	sc_release(r);
}

static void sc_answer(void *arg, const struct dns_answer *a);

static void sc_ask(struct sc_run *r, enum sc_q kind, json_t *slot, const char *name)
{
	struct sc_query *q = calloc(1, sizeof(*q));
	if (q == NULL)
		return;
	q->run = r;
	q->kind = kind;
	q->slot = slot;
	snprintf(q->name, sizeof(q->name), "%s", name);
	r->pending++;
	if (kind != SCQ_IP_TXT)
		json_object_set_new(slot, "status", json_string("pending"));
	if (dns_query(name, kind == SCQ_IP || kind == SCQ_DOMAIN ? 1 : 16, sc_answer, q) < 0) {
		r->pending--;
		if (kind != SCQ_IP_TXT) {
			json_object_set_new(slot, "status", json_string("error"));
			json_object_set_new(slot, "error", json_string("query not started"));
		}
		free(q);
	}
}

static void sc_listing(struct sc_query *q, const struct dns_answer *a)
{
	json_t *s = q->slot;
	if (a->result == DNS_NO) {
		json_object_set_new(s, "status", json_string("clean"));
		return;
	}
	if (a->result != DNS_YES) {
		json_object_set_new(s, "status", json_string("error"));
		json_object_set_new(s, "error", json_string(a->error ? a->error : "no answer"));
		return;
	}
	for (unsigned i = 0; i < a->n; i++) {
		uint32_t v = a->a[i];
		char t[20];
		snprintf(t, sizeof(t), "%u.%u.%u.%u", v >> 24, (v >> 16) & 255, (v >> 8) & 255,
		         v & 255);
		json_object_set_new(s, "code", json_string(t));
		if ((v >> 24) != 127) {
			json_object_set_new(s, "status", json_string("unusable"));
			json_object_set_new(s, "error",
			                    json_string("answer outside 127.0.0.0/8: a resolver "
			                                "rewriting NXDOMAIN?"));
			return;
		}
		if (v == 0x7f000001u || (v & 0xffffff00u) == 0x7fffff00u) {
			json_object_set_new(s, "status", json_string("unusable"));
			json_object_set_new(
			    s, "error",
			    json_string("the list refused the query (public resolver, "
			                "quota or a typo in the zone)"));
			return;
		}
	}
	json_object_set_new(s, "status", json_string("listed"));
	if (q->kind == SCQ_IP)
		sc_ask(q->run, SCQ_IP_TXT, s, q->name); /* the list's reason, a URL mostly */
}

static void sc_answer(void *arg, const struct dns_answer *a)
{
	struct sc_query *q = arg;
	struct sc_run *r = q->run;
	r->pending--;
	if (!r->finished) {
		const char *txt[DNS_MAX_RECORDS];
		size_t n = 0;
		for (unsigned i = 0;
		     a->result == DNS_YES && i < a->n && q->kind != SCQ_IP && q->kind != SCQ_DOMAIN;
		     i++)
			txt[n++] = a->txt[i];
		json_t *v = NULL;
		switch (q->kind) {
		case SCQ_IP:
		case SCQ_DOMAIN:
			sc_listing(q, a);
			break;
		case SCQ_IP_TXT:
			if (n)
				json_object_set_new(q->slot, "txt", json_string(txt[0]));
			break;
		case SCQ_SPF:
			v = selfcheck_spf(txt, n, r->ips, r->nips);
			break;
		case SCQ_DMARC:
			v = selfcheck_dmarc(txt, n);
			break;
		case SCQ_DKIM:
			v = selfcheck_dkim(txt, n);
			break;
		}
		if (v) {
			if (a->result == DNS_ERROR) {
				json_decref(v);
				v = json_pack("{s:s,s:s}", "status", "error", "error",
				              a->error ? a->error : "no answer");
			}
			json_object_update(q->slot, v);
			json_decref(v);
		}
		if (r->pending == 0)
			sc_finish(r);
	}
	free(q);
	sc_release(r);
}

int selfcheck_run(struct ev_loop *loop, const struct selfcheck_conf *sc, selfcheck_done *done,
                  void *arg)
{
	char name[256];
	if (!dns_active())
		return -1;
	struct sc_run *r = calloc(1, sizeof(*r));
	if (r == NULL)
		return -1;
	r->done = done;
	r->arg = arg;
	r->loop = loop;
	r->report = json_object();
	for (size_t i = 0; i < sc->nips; i++)
		r->ips[r->nips++] = sc->ips[i];
	time_t now = time(NULL);
	char when[32];
	strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
	json_object_set_new(r->report, "checked", json_string(when));
	ev_timer_init(&r->timeout, sc_timeout_cb, sc->timeout_s, 0.);
	r->timeout.data = r;
	ev_timer_start(loop, &r->timeout);
	r->pending++; /* held while the queries start (some answer at once) */

	json_t *ips = json_array();
	json_object_set_new(r->report, "ips", ips);
	for (size_t i = 0; i < sc->nips; i++) {
		json_t *ip = json_pack("{s:s,s:[]}", "ip", sc->ips[i], "lists");
		json_array_append_new(ips, ip);
		json_t *lists = json_object_get(ip, "lists");
		for (size_t j = 0; j < sc->nip_lists; j++) {
			json_t *slot = json_pack("{s:s}", "list", sc->ip_lists[j]);
			json_array_append_new(lists, slot);
			if (dns_reverse_name(name, sizeof(name), sc->ips[i], sc->ip_lists[j], true))
				sc_ask(r, SCQ_IP, slot, name);
		}
	}
	json_t *doms = json_array();
	json_object_set_new(r->report, "domains", doms);
	for (size_t i = 0; i < sc->ndomains; i++) {
		const char *d = sc->domains[i];
		json_t *dom = json_pack("{s:s,s:[],s:{},s:{},s:[]}", "domain", d, "lists", "spf",
		                        "dmarc", "dkim");
		json_array_append_new(doms, dom);
		json_t *lists = json_object_get(dom, "lists");
		for (size_t j = 0; j < sc->ndomain_lists; j++) {
			json_t *slot = json_pack("{s:s}", "list", sc->domain_lists[j]);
			json_array_append_new(lists, slot);
			if (snprintf(name, sizeof(name), "%s.%s", d, sc->domain_lists[j]) <
			    (int)sizeof(name))
				sc_ask(r, SCQ_DOMAIN, slot, name);
		}
		sc_ask(r, SCQ_SPF, json_object_get(dom, "spf"), d);
		if (snprintf(name, sizeof(name), "_dmarc.%s", d) < (int)sizeof(name))
			sc_ask(r, SCQ_DMARC, json_object_get(dom, "dmarc"), name);
		json_t *dk = json_object_get(dom, "dkim");
		for (size_t j = 0; j < sc->ndkim; j++) {
			json_t *slot = json_pack("{s:s}", "selector", sc->dkim_selectors[j]);
			json_array_append_new(dk, slot);
			if (snprintf(name, sizeof(name), "%s._domainkey.%s", sc->dkim_selectors[j],
			             d) < (int)sizeof(name))
				sc_ask(r, SCQ_DKIM, slot, name);
		}
	}
	r->pending--;
	if (r->pending == 0)
		sc_finish(r);
	sc_release(r);
	return 0;
}

/* ---------------------------------------------------------------- text report */

static const char *sc_str(json_t *o, const char *k)
{
	const char *s = json_string_value(json_object_get(o, k));
	return s ? s : "";
}

static void sc_print_notes(FILE *out, json_t *o, const char *indent)
{
	size_t i;
	json_t *v;
	json_array_foreach(json_object_get(o, "problems"), i, v)
	    fprintf(out, "%s! %s\n", indent, json_string_value(v));
	json_array_foreach(json_object_get(o, "warnings"), i, v)
	    fprintf(out, "%s~ %s\n", indent, json_string_value(v));
}

static void sc_print_lists(FILE *out, json_t *lists)
{
	size_t i;
	json_t *l;
	json_array_foreach(lists, i, l)
	{
		const char *st = sc_str(l, "status");
		fprintf(out, "    %-28s %s", sc_str(l, "list"),
		        !strcmp(st, "listed") ? "LISTED" : st);
		if (json_object_get(l, "code"))
			fprintf(out, " (%s)", sc_str(l, "code"));
		if (json_object_get(l, "error"))
			fprintf(out, ": %s", sc_str(l, "error"));
		if (json_object_get(l, "txt"))
			fprintf(out, " - %s", sc_str(l, "txt"));
		fputc('\n', out);
	}
}

void selfcheck_print(json_t *rep, FILE *out)
{
	size_t i, j;
	json_t *v, *w;
	fprintf(out, "policyd self-check, %s%s\n", sc_str(rep, "checked"),
	        json_is_true(json_object_get(rep, "timeout")) ? " (some answers timed out)" : "");
	json_array_foreach(json_object_get(rep, "ips"), i, v)
	{
		fprintf(out, "\nIP %s\n", sc_str(v, "ip"));
		sc_print_lists(out, json_object_get(v, "lists"));
	}
	json_array_foreach(json_object_get(rep, "domains"), i, v)
	{
		fprintf(out, "\ndomain %s\n", sc_str(v, "domain"));
		sc_print_lists(out, json_object_get(v, "lists"));
		json_t *spf = json_object_get(v, "spf");
		fprintf(out, "  SPF    %s", sc_str(spf, "status"));
		if (json_object_get(spf, "record"))
			fprintf(out, ": %s", sc_str(spf, "record"));
		fputc('\n', out);
		const char *ip;
		json_object_foreach(json_object_get(spf, "covers"), ip, w)
		    fprintf(out, "         %s authorised: %s\n", ip, json_string_value(w));
		sc_print_notes(out, spf, "         ");
		json_t *dm = json_object_get(v, "dmarc");
		fprintf(out, "  DMARC  %s", sc_str(dm, "status"));
		if (json_object_get(dm, "record"))
			fprintf(out, ": %s", sc_str(dm, "record"));
		fputc('\n', out);
		sc_print_notes(out, dm, "         ");
		json_array_foreach(json_object_get(v, "dkim"), j, w)
		{
			fprintf(out, "  DKIM   %s: %s\n", sc_str(w, "selector"),
			        sc_str(w, "status"));
			sc_print_notes(out, w, "         ");
		}
	}
	json_t *pf = json_object_get(rep, "postfix");
	if (pf) {
		fprintf(out, "\nPostfix wiring: %s\n", sc_str(pf, "status"));
		json_array_foreach(json_object_get(pf, "checks"), i, v)
		{
			const char *lv = sc_str(v, "level");
			fprintf(out, "  %s %s\n",
			        !strcmp(lv, "ok")      ? "ok  "
			        : !strcmp(lv, "error") ? "FAIL"
			        : !strcmp(lv, "warn")  ? "warn"
			                               : "info",
			        sc_str(v, "text"));
		}
	}
}

/* Anything an operator must act on? */
static bool sc_bad(json_t *rep)
{
	const char *sects[] = {"ips", "domains"};
	for (int s = 0; s < 2; s++) {
		json_t *arr = json_object_get(rep, sects[s]);
		for (size_t i = 0; i < json_array_size(arr); i++) {
			json_t *v = json_array_get(arr, i), *lists = json_object_get(v, "lists");
			for (size_t j = 0; j < json_array_size(lists); j++)
				if (!strcmp(sc_str(json_array_get(lists, j), "status"), "listed"))
					return true;
			if (s == 1 && (strcmp(sc_str(json_object_get(v, "spf"), "status"), "ok") ||
			               strcmp(sc_str(json_object_get(v, "dmarc"), "status"), "ok")))
				return true;
		}
	}
	return !strcmp(sc_str(json_object_get(rep, "postfix"), "status"), "problems") ||
	       !strcmp(sc_str(json_object_get(rep, "postfix"), "status"), "unavailable");
}

/* ---------------------------------------------------------------- the module */

static struct {
	struct module_ctx *m;
	ev_timer tick;
	bool running, started;
	json_t *last;
	char *listed[SELFCHECK_MAX_LISTED]; /* "item list" listed in the last run */
	size_t nlisted;
	unsigned long long runs, alerts;
	ev_child children[4];
} S;

static const struct selfcheck_conf *sc_conf(void)
{
	return config_section_get(S.m->cfg, &selfcheck_section);
}

static void sc_child_cb(struct ev_loop *loop, ev_child *w, int revents)
{
	(void)revents;
	ev_child_stop(loop, w);
	if (WIFEXITED(w->rstatus) && WEXITSTATUS(w->rstatus) == 0)
		return;
	log_warn("event=selfcheck_alert_command pid=%d status=%d: the alert command failed",
	         w->rpid, w->rstatus);
}

static void sc_alert(const char *what, const char *item, const char *list, const char *code,
                     const char *txt)
{
	const struct selfcheck_conf *c = sc_conf();
	S.alerts++;
	if (!strcmp(what, "listed"))
		log_warn("event=selfcheck_listed item=%s list=%s code=%s reason=\"%.200s\"", item,
		         list, code, txt);
	else
		log_info("event=selfcheck_delisted item=%s list=%s", item, list);
	if (c->alert_command == NULL)
		return;
	int slot = -1;
	for (int i = 0; i < 4; i++)
		if (!ev_is_active(&S.children[i]))
			slot = i;
	if (slot < 0) {
		log_warn("event=selfcheck_alert_command skipped: 4 still running");
		return;
	}
	pid_t pid = fork();
	if (pid < 0) {
		log_err("selfcheck: fork: %s", strerror(errno));
		return;
	}
	if (pid == 0) {
		int dn = chroot_devnull(); /* opened before the chroot */
		if (dn >= 0) {
			dup2(dn, 0);
			dup2(dn, 1);
			dup2(dn, 2);
		}
		execl(chroot_path(c->alert_command), c->alert_command, what, item, list, code,
		      (char *)NULL);
		_exit(127);
	}
	ev_child_init(&S.children[slot], sc_child_cb, pid, 0);
	ev_child_start(S.m->loop, &S.children[slot]);
}

static void sc_module_done(void *arg, json_t *rep)
{
	(void)arg;
	char *now[SELFCHECK_MAX_LISTED];
	size_t nnow = 0, i, j;
	json_t *v, *l;
	S.running = false;
	S.runs++;
	const char *sects[] = {"ips", "domains"}, *keys[] = {"ip", "domain"};
	for (int s = 0; s < 2; s++)
		json_array_foreach(json_object_get(rep, sects[s]), i, v)
		    json_array_foreach(json_object_get(v, "lists"), j, l)
		{
			if (strcmp(sc_str(l, "status"), "listed") || nnow == SELFCHECK_MAX_LISTED)
				continue;
			char key[600];
			snprintf(key, sizeof(key), "%s %s", sc_str(v, keys[s]), sc_str(l, "list"));
			now[nnow] = strdup(key);
			if (now[nnow] == NULL)
				continue;
			bool before = false;
			for (size_t k = 0; k < S.nlisted; k++)
				before |= !strcmp(S.listed[k], key);
			if (!before)
				sc_alert("listed", sc_str(v, keys[s]), sc_str(l, "list"),
				         sc_str(l, "code"), sc_str(l, "txt"));
			nnow++;
		}
	for (size_t k = 0; k < S.nlisted; k++) {
		bool still = false;
		for (size_t q = 0; q < nnow; q++)
			still |= !strcmp(S.listed[k], now[q]);
		if (!still) {
			char *sp = strchr(S.listed[k], ' ');
			if (sp) {
				*sp = '\0';
				sc_alert("delisted", S.listed[k], sp + 1, "", "");
			}
		}
		free(S.listed[k]);
	}
	memcpy(S.listed, now, nnow * sizeof(now[0]));
	S.nlisted = nnow;
	json_decref(S.last);
	S.last = rep;
}

static void sc_tick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)revents;
	const struct selfcheck_conf *c = sc_conf();
	if (c->interval_us == 0 || (c->nips == 0 && c->ndomains == 0))
		return;
	w->repeat = (double)c->interval_us / 1e6;
	ev_timer_again(loop, w);
	if (S.running)
		return;
	if (selfcheck_run(loop, c, sc_module_done, NULL) == 0)
		S.running = true;
	else
		log_warn("event=selfcheck_skipped reason=\"no DNS channel\"");
}

static void sc_collect(struct metrics_out *o, void *arg)
{
	(void)arg;
	for (size_t i = 0; i < S.nlisted; i++) {
		char l[700], item[300];
		const char *sp = strchr(S.listed[i], ' ');
		if (sp == NULL)
			continue;
		snprintf(item, sizeof(item), "%.*s", (int)(sp - S.listed[i]), S.listed[i]);
		l[0] = '\0';
		metrics_label(l, sizeof(l), "item", item);
		metrics_label(l, sizeof(l), "list", sp + 1);
		metrics_out_u64(o, l, 1);
	}
}

static void sc_collect_runs(struct metrics_out *o, void *arg)
{
	(void)arg;
	metrics_out_u64(o, NULL, S.runs);
}

static int sc_start(struct module_ctx *m, char *err, size_t errsz)
{
	(void)err;
	(void)errsz;
	S.m = m;
	ev_init(&S.tick, sc_tick_cb);
	S.tick.repeat = 5.; /* the first check soon after the start */
	ev_timer_again(m->loop, &S.tick);
	metrics_register("policyd_selfcheck_listed",
	                 "Our own IPs and domains listed on a blocklist (1 per item and list).",
	                 METRICS_GAUGE_T, sc_collect, &S);
	metrics_register("policyd_selfcheck_runs_total", "Scheduled self-checks completed.",
	                 METRICS_COUNTER_T, sc_collect_runs, &S);
	S.started = true;
	return 0;
}

static void sc_reload(struct module_ctx *m, const struct config *cfg)
{
	(void)cfg;
	S.tick.repeat = 5.;
	ev_timer_again(m->loop, &S.tick);
}

static void sc_stop(struct module_ctx *m)
{
	ev_timer_stop(m->loop, &S.tick);
	metrics_unregister(&S);
	for (int i = 0; i < 4; i++)
		if (ev_is_active(&S.children[i]))
			ev_child_stop(m->loop, &S.children[i]);
	for (size_t k = 0; k < S.nlisted; k++)
		free(S.listed[k]);
	S.nlisted = 0;
	json_decref(S.last);
	S.last = NULL;
	S.started = false;
	/* a run in flight ends with the DNS channel (cancelled answers) */
}

const struct module selfcheck_module = {
    .name = "selfcheck",
    .start = sc_start,
    .reload = sc_reload,
    .stop = sc_stop,
};

void selfcheck_control(struct control_call *call)
{
	control_reply(call, json_pack("{s:o}", "selfcheck", selfcheck_last()));
}

json_t *selfcheck_last(void)
{
	json_t *o = S.last ? json_deep_copy(S.last) : json_object();
	json_object_set_new(o, "runs", json_integer((json_int_t)S.runs));
	json_object_set_new(o, "alerts", json_integer((json_int_t)S.alerts));
	json_object_set_new(o, "running", json_boolean(S.running));
	return o;
}

/* ---------------------------------------------------------------- policyctl doctor */

static void sc_doctor_usage(FILE *f)
{
	fprintf(f,
	        "usage: policyctl doctor [-c CONFIG] [-C POSTFIX_CONFIG_DIR] [--json] [--no-dns]\n"
	        "\n"
	        "The whole self-check, now, from this machine: our IPs ([selfcheck] ips) on\n"
	        "the ip_lists, our domains on the domain_lists, their SPF and DMARC records\n"
	        "(and the DKIM selectors named in dkim_selectors), and Postfix's wiring read\n"
	        "through postconf: check_policy_service present, not after a\n"
	        "permit_sasl_authenticated or permit_mynetworks that would skip it, in the\n"
	        "master.cf overrides of submission/smtps too, and the END-OF-MESSAGE hook.\n"
	        "DNS goes through the [dns] servers of CONFIG (default %s).\n"
	        "\n"
	        "Exit status: 0 nothing to act on, 1 something listed, missing, invalid or\n"
	        "miswired, 2 usage or configuration error.\n",
	        SELFCHECK_DEFAULT_CONFIG);
}

struct sc_doctor {
	json_t *report;
	bool done;
};

static void sc_doctor_done(void *arg, json_t *rep)
{
	struct sc_doctor *d = arg;
	d->report = rep;
	d->done = true;
}

int selfcheck_doctor_main(int argc, char **argv)
{
	const char *cfgpath = SELFCHECK_DEFAULT_CONFIG, *pfdir = NULL;
	bool json = false, nodns = false;
	char err[512];
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
			sc_doctor_usage(stdout);
			return 0;
		} else if (!strcmp(argv[i], "--json") || !strcmp(argv[i], "-j"))
			json = true;
		else if (!strcmp(argv[i], "--no-dns"))
			nodns = true;
		else if ((!strcmp(argv[i], "-c") || !strcmp(argv[i], "-C")) && i + 1 < argc) {
			if (argv[i][1] == 'c')
				cfgpath = argv[++i];
			else
				pfdir = argv[++i];
		} else {
			sc_doctor_usage(stderr);
			return 2;
		}
	}
	struct config *cfg = config_load(cfgpath, err, sizeof(err));
	if (cfg == NULL) {
		fprintf(stderr, "policyctl: %s\n", err);
		return 2;
	}
	if (log_open("policyctl", "stderr", "mail", err, sizeof(err)) == 0)
		log_set_level(LOG_L_ERR);
	struct selfcheck_conf *sc = config_section_get(cfg, &selfcheck_section);
	if (pfdir) {
		free(sc->postfix_config_dir);
		sc->postfix_config_dir = strdup(pfdir);
	}
	struct sc_doctor d = {0};
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	if (!nodns && (sc->nips || sc->ndomains)) {
		const struct dns_conf *dc = config_section_get(cfg, &dns_section);
		if (loop == NULL || dns_open(loop, dc, err, sizeof(err)) < 0) {
			fprintf(stderr, "policyctl: dns: %s\n", loop ? err : "no event loop");
			nodns = true;
		} else if (selfcheck_run(loop, sc, sc_doctor_done, &d) < 0)
			nodns = true;
		else
			while (!d.done)
				ev_run(loop, EVRUN_ONCE);
		dns_close();
	}
	if (d.report == NULL) {
		d.report = json_object();
		time_t now = time(NULL);
		char when[32];
		strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
		json_object_set_new(d.report, "checked", json_string(when));
		if (!nodns)
			json_object_set_new(d.report, "note",
			                    json_string("no [selfcheck] ips or domains to check"));
	}
	json_object_set_new(d.report, "postfix", selfcheck_postfix(cfg, sc));
	bool bad = sc_bad(d.report);
	if (json) {
		char *s = json_dumps(d.report, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
		if (s)
			puts(s);
		free(s);
	} else {
		selfcheck_print(d.report, stdout);
		if (sc->nips == 0 && sc->ndomains == 0)
			printf("\n(no [selfcheck] ips or domains: only the Postfix wiring was "
			       "checked)\n");
	}
	json_decref(d.report);
	if (loop)
		ev_loop_destroy(loop);
	log_close();
	config_free(cfg);
	return bad ? 1 : 0;
}
