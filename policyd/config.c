/*
 * policyd/config.c - owns the configuration file: reading it through
 * libinih, validating every value, and the per-rule override map files.
 *
 * Entry points: config_load(), config_free(), config_override(), and the
 * duration/rate parsers.  Every error names FILE:LINE and the offending
 * value; nothing is half-applied: a config either loads whole or not at all.
 * Limits: lines of the main file are at most INI_MAX_LINE-1 characters
 * (longer lines are an error, never cut silently); lists may continue on
 * indented lines.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <ini.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proto/reply.h"
#include "proto/request.h"
#include "cache/store_redis.h"
#include "chroot.h"
#include "config_section.h"
#include "verdict.h"

#define CONFIG_MAX_NAMES 64
#define CONFIG_RAW_MAX   1024

struct config_ctx {
	struct config *c;
	FILE *fp;
	unsigned line;    /* line the reader returned last */
	unsigned errline; /* first error */
	char err[256];
	char section[160];
	struct rule *rule; /* current [limit] section */
	int mod;           /* current module section, -1 if none */
	unsigned seen;     /* bitmask of scalar keys seen in the section */
	bool have_server;
	bool in_section;
	bool cont;                        /* the reader's last line continues the previous value */
	bool last_was_value;              /* the previous non-comment line was name = value */
	char names[CONFIG_MAX_NAMES][48]; /* names given in this section */
	size_t nnames;
	char raw[CONFIG_RAW_MAX]; /* the value of the last name, continuations joined */
};

static char *config_strdup(const char *s)
{
	char *d = strdup(s);
	if (d == NULL) {
		fprintf(stderr, "policyd: out of memory\n");
		abort();
	}
	return d;
}

static void config_seterr(struct config_ctx *x, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void config_seterr(struct config_ctx *x, const char *fmt, ...)
{
	va_list ap;
	if (x->errline)
		return;
	x->errline = x->line ? x->line : 1;
	va_start(ap, fmt);
	vsnprintf(x->err, sizeof(x->err), fmt, ap);
	va_end(ap);
}

/* ------------------------------------------------------------------ values */

int config_parse_duration(const char *s, uint64_t *us, char *err, size_t errsz)
{
	char *end;
	errno = 0;
	while (isspace((unsigned char)*s))
		s++;
	if (!isdigit((unsigned char)*s)) {
		snprintf(err, errsz, "bad duration '%s' (e.g. 30s, 5m, 1h, 1d)", s);
		return -1;
	}
	unsigned long long n = strtoull(s, &end, 10);
	uint64_t mult;
	switch (*end) {
	case '\0':
	case 's':
		mult = 1000000ULL;
		break;
	case 'm':
		mult = 60000000ULL;
		if (end[1] == 's') { /* ms */
			mult = 1000ULL;
			end++;
		}
		break;
	case 'h':
		mult = 3600000000ULL;
		break;
	case 'd':
		mult = 86400000000ULL;
		break;
	case 'w':
		mult = 7 * 86400000000ULL;
		break;
	default:
		mult = 0;
	}
	if (mult == 0 || (*end && end[1] != '\0') || errno || n == 0 ||
	    n > (uint64_t)366 * 86400000000ULL / mult) {
		snprintf(err, errsz,
		         "bad duration '%s' (a positive number with s, m, h, d or w; at most 366d)",
		         s);
		return -1;
	}
	*us = n * mult;
	return 0;
}

/* "100", "100k", "2M", "1G" (powers of 1024 for the suffixed forms). */
static int config_parse_count(const char *s, uint64_t *out)
{
	char *end;
	errno = 0;
	if (!isdigit((unsigned char)*s))
		return -1;
	unsigned long long n = strtoull(s, &end, 10);
	uint64_t mult = 1;
	switch (*end) {
	case '\0':
		break;
	case 'k':
	case 'K':
		mult = 1024;
		end++;
		break;
	case 'M':
		mult = 1024 * 1024;
		end++;
		break;
	case 'G':
		mult = 1024 * 1024 * 1024;
		end++;
		break;
	default:
		return -1;
	}
	if (*end || errno || n == 0 || n > UINT64_MAX / 4 / mult)
		return -1;
	*out = n * mult;
	return 0;
}

static char *config_trim(char *s)
{
	while (isspace((unsigned char)*s))
		s++;
	size_t n = strlen(s);
	while (n > 0 && isspace((unsigned char)s[n - 1]))
		s[--n] = '\0';
	return s;
}

int config_parse_rate(const char *s, struct gcra_window *w, uint8_t *nwin, char *err, size_t errsz)
{
	char buf[256];
	size_t len = strlen(s);
	uint8_t n = 0;

	if (len >= sizeof(buf)) {
		snprintf(err, errsz, "rate list too long");
		return -1;
	}
	memcpy(buf, s, len + 1);
	for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok;
	     tok = strtok_r(NULL, ",", &save)) {
		tok = config_trim(tok);
		if (*tok == '\0')
			continue;
		char *slash = strchr(tok, '/');
		if (slash == NULL) {
			snprintf(err, errsz, "bad rate '%s': expected N/period, e.g. 100/1h", tok);
			return -1;
		}
		*slash = '\0';
		char *cnt = config_trim(tok), *per = config_trim(slash + 1);
		uint64_t limit, period;
		if (config_parse_count(cnt, &limit) < 0) {
			snprintf(err, errsz,
			         "bad rate count '%s': a positive number (k, M, G allowed)", cnt);
			return -1;
		}
		char pbuf[32];
		/* "100/h" means 100 per 1h */
		if (isalpha((unsigned char)per[0]) && strlen(per) < sizeof(pbuf) - 1) {
			snprintf(pbuf, sizeof(pbuf), "1%s", per);
			per = pbuf;
		}
		char perr[128];
		if (config_parse_duration(per, &period, perr, sizeof(perr)) < 0) {
			snprintf(err, errsz, "bad rate period '%s': %s", slash + 1, perr);
			return -1;
		}
		if (n == STORE_MAX_WINDOWS) {
			snprintf(err, errsz, "too many windows (at most %d)", STORE_MAX_WINDOWS);
			return -1;
		}
		for (uint8_t i = 0; i < n; i++)
			if (w[i].period_us == period) {
				snprintf(err, errsz, "two windows with the same period '%s'",
				         slash + 1);
				return -1;
			}
		w[n].limit = limit;
		w[n].period_us = period;
		n++;
	}
	if (n == 0) {
		snprintf(err, errsz, "empty rate");
		return -1;
	}
	*nwin = n;
	return 0;
}

static int config_parse_bool(const char *v, bool *b)
{
	if (!strcasecmp(v, "yes") || !strcasecmp(v, "true") || !strcmp(v, "1") ||
	    !strcasecmp(v, "on"))
		*b = true;
	else if (!strcasecmp(v, "no") || !strcasecmp(v, "false") || !strcmp(v, "0") ||
	         !strcasecmp(v, "off"))
		*b = false;
	else
		return -1;
	return 0;
}

static int config_parse_uint(const char *v, unsigned long long min, unsigned long long max,
                             unsigned long long *out)
{
	char *end;
	errno = 0;
	if (!isdigit((unsigned char)*v))
		return -1;
	unsigned long long n = strtoull(v, &end, 10);
	if (*end || errno || n < min || n > max)
		return -1;
	*out = n;
	return 0;
}

const char *config_action_name(enum verdict_action a)
{
	static const char *const names[] = {"dunno", "warn", "hold", "defer", "reject"};
	return a <= ACT_REJECT ? names[a] : "?";
}

const char *config_count_name(enum limit_count c)
{
	static const char *const names[] = {"recipients", "messages", "bytes"};
	return c <= COUNT_BYTES ? names[c] : "?";
}

/* ---------------------------------------------------------------- sections */

enum { SEEN_KEY = 1, SEEN_COUNT = 2, SEEN_RATE = 4, SEEN_ACTION = 8 };

/* Append the comma separated items of v to a list. */
static int config_list_add(struct config_ctx *x, const char *name, char **list, size_t *n,
                           size_t max, const char *v)
{
	char buf[512];
	snprintf(buf, sizeof(buf), "%s", v);
	for (char *save = NULL, *tok = strtok_r(buf, ", \t", &save); tok;
	     tok = strtok_r(NULL, ", \t", &save)) {
		if (*n == max) {
			config_seterr(x, "%s: too many entries (at most %zu)", name, max);
			return 0;
		}
		list[(*n)++] = config_strdup(tok);
	}
	return 1;
}

static int config_server(struct config_ctx *x, const char *name, const char *v)
{
	struct config *c = x->c;
	unsigned long long n;
	char err[200];

	if (!strcmp(name, "listen")) {
		return config_list_add(x, name, c->listen, &c->nlisten, CONFIG_MAX_LISTEN, v);
	} else if (!strcmp(name, "store")) {
		if (strcmp(v, "memory") != 0 && strncmp(v, "redis://", 8) != 0 &&
		    strncmp(v, "redis+unix://", 13) != 0 &&
		    strncmp(v, "redis-cluster://", 16) != 0) {
			config_seterr(x,
			              "store: '%.40s' is not supported (memory, redis://, "
			              "redis+unix://, redis-cluster://)",
			              v);
			return 0;
		}
		if (strcmp(v, "memory") != 0) {
			struct store_redis_url u;
			char uerr[200];
			if (store_redis_url_parse(v, &u, uerr, sizeof(uerr)) < 0) {
				config_seterr(x, "store: %s", uerr);
				return 0;
			}
		}
		free(c->store);
		c->store = config_strdup(v);
	} else if (!strcmp(name, "redis_failure")) {
		enum store_redis_failure f;
		if (store_redis_failure_parse(v, &f) < 0) {
			config_seterr(x, "redis_failure: '%s' (open, closed or local)", v);
			return 0;
		}
		c->redis_failure = (int)f;
	} else if (!strcmp(name, "redis_timeout") || !strcmp(name, "redis_connect_timeout")) {
		uint64_t us;
		if (config_parse_duration(v, &us, err, sizeof(err)) < 0 || us > 60000000ULL ||
		    us < 1000) {
			config_seterr(x, "%s: '%s' (1ms .. 60s)", name, v);
			return 0;
		}
		if (name[6] == 't')
			c->redis_timeout_ms = (unsigned)(us / 1000);
		else
			c->redis_connect_timeout_ms = (unsigned)(us / 1000);
	} else if (!strcmp(name, "redis_wait_replicas")) {
		char *end;
		errno = 0;
		long nr = strtol(v, &end, 10);
		if (errno || end == v || *end || nr < 0 || nr > 16) {
			config_seterr(x, "redis_wait_replicas: '%.40s' (0 .. 16)", v);
			return 0;
		}
		c->redis_wait_replicas = (int)nr;
	} else if (!strcmp(name, "redis_wait_timeout")) {
		uint64_t us;
		if (config_parse_duration(v, &us, err, sizeof(err)) < 0 || us > 10000000ULL ||
		    us < 1000) {
			config_seterr(x, "%s: '%.40s' (1ms .. 10s)", name, v);
			return 0;
		}
		c->redis_wait_timeout_ms = (unsigned)(us / 1000);
	} else if (!strcmp(name, "state_dir")) {
		free(c->state_dir);
		c->state_dir = config_strdup(v);
	} else if (!strcmp(name, "pid_file")) {
		free(c->pid_file);
		c->pid_file = config_strdup(v);
	} else if (!strcmp(name, "log")) {
		if (strcmp(v, "stderr") && strcmp(v, "syslog")) {
			config_seterr(x, "log: '%s' is neither syslog nor stderr", v);
			return 0;
		}
		free(c->log_target);
		c->log_target = config_strdup(v);
	} else if (!strcmp(name, "log_facility")) {
		static const char *const fac[] = {"mail",   "daemon", "user",   "local0",
		                                  "local1", "local2", "local3", "local4",
		                                  "local5", "local6", "local7"};
		bool ok = false;
		for (size_t i = 0; i < sizeof(fac) / sizeof(fac[0]); i++)
			ok = ok || !strcmp(v, fac[i]);
		if (!ok) {
			config_seterr(
			    x, "log_facility: '%s' (mail, daemon, user, local0 .. local7)", v);
			return 0;
		}
		free(c->log_facility);
		c->log_facility = config_strdup(v);
	} else if (!strcmp(name, "log_decisions")) {
		if (!strcmp(v, "none"))
			c->log_decisions = 0;
		else if (!strcmp(v, "actions"))
			c->log_decisions = 1;
		else if (!strcmp(v, "all"))
			c->log_decisions = 2;
		else {
			config_seterr(x, "log_decisions: '%s' (all, actions or none)", v);
			return 0;
		}
	} else if (!strcmp(name, "debug")) {
		if (config_parse_bool(v, &c->debug) < 0) {
			config_seterr(x, "debug: '%s' is not yes or no", v);
			return 0;
		}
	} else if (!strcmp(name, "max_connections")) {
		if (config_parse_uint(v, 1, 1000000, &n) < 0) {
			config_seterr(x, "max_connections: '%s' (1 .. 1000000)", v);
			return 0;
		}
		c->max_connections = (unsigned)n;
	} else if (!strcmp(name, "idle_timeout")) {
		uint64_t us;
		if (config_parse_duration(v, &us, err, sizeof(err)) < 0) {
			config_seterr(x, "idle_timeout: %s", err);
			return 0;
		}
		c->idle_timeout_s = (unsigned)(us / 1000000);
	} else if (!strcmp(name, "max_request")) {
		if (config_parse_uint(v, 1024, 16 * 1024 * 1024, &n) < 0) {
			config_seterr(x, "max_request: '%s' (1024 .. 16777216 bytes)", v);
			return 0;
		}
		c->max_request = (size_t)n;
	} else if (!strcmp(name, "max_line")) {
		if (config_parse_uint(v, 256, 1024 * 1024, &n) < 0) {
			config_seterr(x, "max_line: '%s' (256 .. 1048576 bytes)", v);
			return 0;
		}
		c->max_line = (size_t)n;
	} else if (!strcmp(name, "max_attrs")) {
		if (config_parse_uint(v, 8, PROTO_MAX_ATTRS_LIMIT, &n) < 0) {
			config_seterr(x, "max_attrs: '%s' (8 .. %d)", v, PROTO_MAX_ATTRS_LIMIT);
			return 0;
		}
		c->max_attrs = (size_t)n;
	} else if (!strcmp(name, "fallback_action")) {
		if (verdict_check_action_text(v, err, sizeof(err)) < 0) {
			config_seterr(x, "fallback_action: %s", err);
			return 0;
		}
		free(c->fallback_action);
		c->fallback_action = config_strdup(v);
		c->fallback_set = true;
	} else if (!strcmp(name, "hooks")) {
		char buf[128];
		unsigned h = 0;
		snprintf(buf, sizeof(buf), "%s", v);
		for (char *save = NULL, *t = strtok_r(buf, ", \t", &save); t;
		     t = strtok_r(NULL, ", \t", &save)) {
			if (!strcmp(t, "rcpt"))
				h |= HOOK_RCPT;
			else if (!strcmp(t, "data"))
				h |= HOOK_DATA;
			else if (!strcmp(t, "eom") || !strcmp(t, "end-of-message"))
				h |= HOOK_EOM;
			else {
				config_seterr(x, "hooks: unknown hook '%s' (rcpt, data, eom)", t);
				return 0;
			}
		}
		if (!(h & HOOK_RCPT)) {
			config_seterr(x, "hooks: must include rcpt (smtpd_recipient_restrictions)");
			return 0;
		}
		c->hooks = h;
	} else if (!strcmp(name, "trusted_networks")) {
		char buf[512];
		snprintf(buf, sizeof(buf), "%s", v);
		for (char *save = NULL, *t = strtok_r(buf, ", \t", &save); t;
		     t = strtok_r(NULL, ", \t", &save)) {
			if (c->ntrusted == CONFIG_MAX_NETS) {
				config_seterr(x, "trusted_networks: too many (at most %d)",
				              CONFIG_MAX_NETS);
				return 0;
			}
			if (key_net_parse(t, &c->trusted[c->ntrusted]) < 0) {
				config_seterr(
				    x, "trusted_networks: '%s' is not an address or network", t);
				return 0;
			}
			c->ntrusted++;
		}
	} else if (!strcmp(name, "recipient_delimiter")) {
		if (strlen(v) >= sizeof(c->keyopts.delimiters)) {
			config_seterr(x, "recipient_delimiter: too many characters");
			return 0;
		}
		snprintf(c->keyopts.delimiters, sizeof(c->keyopts.delimiters), "%s", v);
	} else if (!strcmp(name, "fold_localpart")) {
		if (config_parse_bool(v, &c->keyopts.fold_localpart) < 0) {
			config_seterr(x, "fold_localpart: '%s' is not yes or no", v);
			return 0;
		}
	} else if (!strcmp(name, "max_keys")) {
		if (config_parse_uint(v, 0, 1ULL << 40, &n) < 0) {
			config_seterr(x, "max_keys: '%s' is not a number", v);
			return 0;
		}
		c->max_keys = n;
	} else if (!strcmp(name, "socket_group")) {
		if (v[0] == '\0' || strlen(v) > 32) {
			config_seterr(x, "socket_group: '%s' is not a group name", v);
			return 0;
		}
		free(c->socket_group);
		c->socket_group = config_strdup(v);
	} else if (!strcmp(name, "user") || !strcmp(name, "group")) {
		char **dst = name[0] == 'u' ? &c->user : &c->group;
		if (v[0] == '\0' || strlen(v) > 32) {
			config_seterr(x, "%s: '%s' is not a user or group name", name, v);
			return 0;
		}
		free(*dst);
		*dst = config_strdup(v);
	} else if (!strcmp(name, "chroot")) {
		char d[CHROOT_DIR_MAX];
		size_t len = strlen(v);
		if (v[0] != '/' || len >= sizeof(d) || strstr(v, "/../") || strstr(v, "/./") ||
		    strstr(v, "//") || (len >= 3 && !strcmp(v + len - 3, "/..")) ||
		    (len >= 2 && !strcmp(v + len - 2, "/.")) || strpbrk(v, " \t")) {
			config_seterr(
			    x,
			    "chroot: '%s' is not a plain absolute directory path (no . or "
			    ".., at most %d bytes)",
			    v, CHROOT_DIR_MAX - 1);
			return 0;
		}
		memcpy(d, v, len + 1);
		while (len > 1 && d[len - 1] == '/')
			d[--len] = '\0';
		if (!strcmp(d, "/")) {
			config_seterr(x, "chroot: '/' is no chroot (leave chroot out)");
			return 0;
		}
		free(c->chroot);
		c->chroot = config_strdup(d);
	} else if (!strcmp(name, "socket_mode")) {
		char *end;
		unsigned long m = strtoul(v, &end, 8);
		if (!isdigit((unsigned char)*v) || *end || m > 0777) {
			config_seterr(x, "socket_mode: '%s' is not an octal mode", v);
			return 0;
		}
		c->socket_mode = (unsigned)m;
	} else if (!strcmp(name, "control")) {
		if (strncmp(v, "unix:/", 6) != 0 || strlen(v + 5) >= 108) {
			config_seterr(x, "control: '%s' (unix:/absolute/path, at most 107 bytes)",
			              v);
			return 0;
		}
		free(c->control);
		c->control = config_strdup(v);
	} else if (!strcmp(name, "control_group")) {
		if (v[0] == '\0' || strlen(v) > 32) {
			config_seterr(x, "control_group: '%s' is not a group name", v);
			return 0;
		}
		free(c->control_group);
		c->control_group = config_strdup(v);
	} else if (!strcmp(name, "metrics")) {
		const char *colon = strrchr(v, ':');
		if (strncmp(v, "inet:", 5) != 0 || colon == NULL || colon == v + 4 ||
		    config_parse_uint(colon + 1, 1, 65535, &n) < 0) {
			config_seterr(
			    x, "metrics: '%s' (inet:ADDRESS:PORT, e.g. inet:127.0.0.1:9187)", v);
			return 0;
		}
		free(c->metrics);
		c->metrics = config_strdup(v);
	} else if (!strcmp(name, "metrics_allow_remote")) {
		if (config_parse_bool(v, &c->metrics_allow_remote) < 0) {
			config_seterr(x, "metrics_allow_remote: '%s' is not yes or no", v);
			return 0;
		}
	} else if (!strcmp(name, "postfix_config_dir")) {
		if (v[0] != '/') {
			config_seterr(x, "postfix_config_dir: '%s' is not an absolute path", v);
			return 0;
		}
		free(c->postfix_config_dir);
		c->postfix_config_dir = config_strdup(v);
	} else {
		config_seterr(x, "unknown parameter '%s' in [server]", name);
		return 0;
	}
	return 1;
}

static int config_rule(struct config_ctx *x, const char *name, const char *v)
{
	struct rule *r = x->rule;
	char err[200];
	unsigned long long n;

#define ONCE(bit)                                                                                  \
	do {                                                                                       \
		if (x->seen & (bit)) {                                                             \
			config_seterr(x, "'%s' given twice in [limit %s]", name, r->name);         \
			return 0;                                                                  \
		}                                                                                  \
		x->seen |= (bit);                                                                  \
	} while (0)

	if (!strcmp(name, "key")) {
		ONCE(SEEN_KEY);
		if (key_type_parse(v, &r->key) < 0) {
			config_seterr(
			    x,
			    "key: '%s' (sasl_username, sender, sender_domain, client_address, "
			    "client_network, recipient_domain, principal)",
			    v);
			return 0;
		}
	} else if (!strcmp(name, "count")) {
		ONCE(SEEN_COUNT);
		if (!strcmp(v, "recipients"))
			r->count = COUNT_RECIPIENTS;
		else if (!strcmp(v, "messages"))
			r->count = COUNT_MESSAGES;
		else if (!strcmp(v, "bytes"))
			r->count = COUNT_BYTES;
		else {
			config_seterr(x, "count: '%s' (recipients, messages or bytes)", v);
			return 0;
		}
	} else if (!strcmp(name, "rate")) {
		ONCE(SEEN_RATE);
		if (config_parse_rate(v, r->win, &r->nwin, err, sizeof(err)) < 0) {
			config_seterr(x, "rate: %s", err);
			return 0;
		}
	} else if (!strcmp(name, "action")) {
		ONCE(SEEN_ACTION);
		if (!strcmp(v, "defer"))
			r->action = ACT_DEFER;
		else if (!strcmp(v, "hold"))
			r->action = ACT_HOLD;
		else if (!strcmp(v, "reject"))
			r->action = ACT_REJECT;
		else if (!strcmp(v, "warn"))
			r->action = ACT_WARN;
		else {
			config_seterr(x, "action: '%s' (defer, hold, reject or warn)", v);
			return 0;
		}
	} else if (!strcmp(name, "reply")) {
		if (!proto_utf8_valid(v, strlen(v)) || strlen(v) > 300) {
			config_seterr(x, "reply: must be UTF-8 text of at most 300 bytes");
			return 0;
		}
		free(r->reply);
		r->reply = config_strdup(v);
	} else if (!strcmp(name, "dsn")) {
		if (!verdict_dsn_valid(v)) {
			config_seterr(x, "dsn: '%s' is not an enhanced status code like 4.7.1", v);
			return 0;
		}
		snprintf(r->dsn, sizeof(r->dsn), "%s", v);
	} else if (!strcmp(name, "flag")) {
		if (config_parse_bool(v, &r->flag) < 0) {
			config_seterr(x, "flag: '%s' is not yes or no", v);
			return 0;
		}
	} else if (!strcmp(name, "dry_run")) {
		if (config_parse_bool(v, &r->dry_run) < 0) {
			config_seterr(x, "dry_run: '%s' is not yes or no", v);
			return 0;
		}
	} else if (!strcmp(name, "scope")) {
		if (!strcmp(v, "outbound"))
			r->scope = SCOPE_OUTBOUND;
		else if (!strcmp(v, "all"))
			r->scope = SCOPE_ALL;
		else {
			config_seterr(x, "scope: '%s' (outbound or all)", v);
			return 0;
		}
	} else if (!strcmp(name, "prefix4")) {
		if (config_parse_uint(v, 1, 32, &n) < 0) {
			config_seterr(x, "prefix4: '%s' (1 .. 32)", v);
			return 0;
		}
		r->prefix4 = (unsigned)n;
	} else if (!strcmp(name, "prefix6")) {
		if (config_parse_uint(v, 1, 128, &n) < 0) {
			config_seterr(x, "prefix6: '%s' (1 .. 128)", v);
			return 0;
		}
		r->prefix6 = (unsigned)n;
	} else if (!strcmp(name, "overrides")) {
		free(r->overrides_path);
		r->overrides_path = config_strdup(v);
	} else {
		config_seterr(x, "unknown parameter '%s' in [limit %s]", name, r->name);
		return 0;
	}
#undef ONCE
	return 1;
}

static void config_rule_defaults(struct rule *r)
{
	memset(r, 0, sizeof(*r));
	r->key = KEY_SASL_USERNAME;
	r->count = COUNT_RECIPIENTS;
	r->action = ACT_DEFER;
	r->scope = SCOPE_OUTBOUND;
	r->prefix4 = 24;
	r->prefix6 = 64;
}

static int config_end_section(struct config_ctx *x)
{
	struct rule *r = x->rule;
	if (r == NULL)
		return 1;
	x->rule = NULL;
	if (!(x->seen & SEEN_RATE)) {
		unsigned save = x->line;
		x->line = r->line;
		config_seterr(x, "[limit %s] has no 'rate'", r->name);
		x->line = save;
		return 0;
	}
	return 1;
}

/* A [section] header line starts here (called by the reader, so that the
 * header's own line is known and empty sections are seen too). */
static int config_begin_section(struct config_ctx *x, const char *section)
{
	struct config *c = x->c;

	if (!config_end_section(x))
		return 0;
	snprintf(x->section, sizeof(x->section), "%s", section);
	x->in_section = true;
	x->seen = 0;
	x->nnames = 0;
	x->mod = -1;
	x->rule = NULL;
	if (!strcmp(section, "server")) {
		if (x->have_server) {
			config_seterr(x, "[server] given twice");
			return 0;
		}
		x->have_server = true;
		return 1;
	}
	if (!strncmp(section, "limit ", 6) || !strcmp(section, "limit")) {
		const char *rn = section + 5;
		while (*rn == ' ')
			rn++;
		if (*rn == '\0' || strlen(rn) >= CONFIG_NAME_MAX) {
			config_seterr(x, "[limit NAME]: a name of 1 to %d characters is needed",
			              CONFIG_NAME_MAX - 1);
			return 0;
		}
		for (const char *p = rn; *p; p++)
			if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_' && *p != '.') {
				config_seterr(
				    x, "[limit %s]: names use letters, digits, '-', '_', '.'", rn);
				return 0;
			}
		for (size_t i = 0; i < c->nrules; i++)
			if (!strcmp(c->rules[i].name, rn)) {
				config_seterr(x, "[limit %s] given twice", rn);
				return 0;
			}
		if (c->nrules == CONFIG_MAX_RULES) {
			config_seterr(x, "too many [limit] sections (at most %d)",
			              CONFIG_MAX_RULES);
			return 0;
		}
		x->rule = &c->rules[c->nrules++];
		config_rule_defaults(x->rule);
		snprintf(x->rule->name, sizeof(x->rule->name), "%s", rn);
		x->rule->line = x->line;
		return 1;
	}
	for (int i = 0; config_sections[i]; i++)
		if (!strcmp(section, config_sections[i]->name))
			x->mod = i;
	if (x->mod < 0) {
		config_seterr(x, "unknown section [%s] ([server], [limit NAME]%s)", section,
		              config_sections[0] ? " or a module section" : "");
		return 0;
	}
	if (c->section_present[x->mod]) {
		config_seterr(x, "[%s] given twice", section);
		return 0;
	}
	c->section_present[x->mod] = true;
	return 1;
}

/* Names that take a list: continued lines append ([server] and [limit]
 * ones, and those a module section names in its `lists`). */
static bool config_is_list(const struct config_ctx *x, const char *name)
{
	if (x->mod >= 0) {
		const char *const *l = config_sections[x->mod]->lists;
		for (; l && *l; l++)
			if (!strcmp(*l, name))
				return true;
		return false;
	}
	return !strcmp(name, "listen") || !strcmp(name, "trusted_networks") ||
	       !strcmp(name, "rate") || !strcmp(name, "hooks");
}

static int config_handler(void *user, const char *section, const char *name, const char *value)
{
	struct config_ctx *x = user;
	struct config *c = x->c;
	char joined[CONFIG_RAW_MAX];

	(void)section; /* sections are tracked by the reader */
	if (x->errline)
		return 1; /* report only the first error */
	if (!x->in_section) {
		config_seterr(x, "'%s' outside of any section", name);
		return 0;
	}
	/* a name given twice; list names continue on indented lines */
	bool cont = x->cont && x->nnames > 0 && !strcmp(x->names[x->nnames - 1], name);
	if (cont && !config_is_list(x, name)) {
		config_seterr(x, "'%s' does not take a list: only lists continue on indented lines",
		              name);
		return 0;
	}
	if (!cont && !(!strcmp(name, "listen") || !strcmp(name, "trusted_networks"))) {
		for (size_t i = 0; i < x->nnames; i++)
			if (!strcmp(x->names[i], name)) {
				config_seterr(x, "'%s' given twice in [%s]", name, x->section);
				return 0;
			}
	}
	if (!cont) {
		if (x->nnames < CONFIG_MAX_NAMES)
			snprintf(x->names[x->nnames++], sizeof(x->names[0]), "%s", name);
		snprintf(x->raw, sizeof(x->raw), "%s", value);
	} else {
		/* the whole list so far, re-parsed as one value */
		if (strlen(x->raw) + strlen(value) + 3 > sizeof(x->raw)) {
			config_seterr(x, "'%s': list too long", name);
			return 0;
		}
		size_t rl = strlen(x->raw), vl = strlen(value);
		memcpy(joined, x->raw, rl);
		memcpy(joined + rl, ", ", 2);
		memcpy(joined + rl + 2, value, vl + 1);
		memcpy(x->raw, joined, rl + vl + 3);
		if (!strcmp(name, "listen") || !strcmp(name, "trusted_networks"))
			; /* these append item by item below */
		else
			value = x->raw;
		if (x->rule && !strcmp(name, "rate"))
			x->seen &= ~(unsigned)SEEN_RATE;
	}
	if (x->rule)
		return config_rule(x, name, value);
	if (x->mod >= 0) {
		char err[256];
		const struct config_section *m = config_sections[x->mod];
		if (m->set(c->section[x->mod], name, value, err, sizeof(err)) < 0) {
			config_seterr(x, "[%s] %s", m->name, err);
			return 0;
		}
		return 1;
	}
	return config_server(x, name, value);
}

/* inih reader: counts lines, refuses lines too long to be whole, and
 * tracks sections and continuation lines itself. */
static char *config_reader(char *str, int num, void *stream)
{
	struct config_ctx *x = stream;
	if (fgets(str, num, x->fp) == NULL)
		return NULL;
	x->line++;
	size_t len = strlen(str);
	if (len == (size_t)num - 1 && str[len - 1] != '\n') {
		int ch = fgetc(x->fp);
		if (ch != EOF) {
			config_seterr(x,
			              "line longer than %d characters; continue lists on indented "
			              "lines",
			              num - 2);
			while (ch != EOF && ch != '\n')
				ch = fgetc(x->fp);
			str[0] = '\0';
			return str;
		}
	}
	const char *p = str;
	while (*p == ' ' || *p == '\t')
		p++;
	bool blank = *p == '\0' || *p == '\n' || *p == '\r';
	bool comment = *p == '#' || *p == ';';
	x->cont = false;
	if (!blank && !comment && p != str && x->last_was_value)
		x->cont = true;
	if (*p == '[' && !x->errline) {
		const char *close = strchr(p, ']');
		char name[128];
		if (close == NULL) {
			config_seterr(x, "syntax error: section header without ']'");
		} else {
			const char *b = p + 1;
			size_t n = (size_t)(close - b);
			while (n > 0 && (*b == ' ' || *b == '\t')) {
				b++;
				n--;
			}
			while (n > 0 && (b[n - 1] == ' ' || b[n - 1] == '\t'))
				n--;
			if (n >= sizeof(name))
				config_seterr(x, "[%.20s...]: section name too long", b);
			else {
				memcpy(name, b, n);
				name[n] = '\0';
				config_begin_section(x, name);
			}
		}
	}
	if (!blank && !comment)
		x->last_was_value = *p != '[';
	else if (blank)
		x->last_was_value = false;
	return str;
}

static int config_override_cmp(const void *a, const void *b)
{
	return strcmp(((const struct override *)a)->subject, ((const struct override *)b)->subject);
}

/* Normalise a subject from a map file the way requests are normalised;
 * -1 when it cannot be a value of the rule's key. */
static int config_norm_subject(const struct config *c, const struct rule *r, const char *in,
                               char *out, size_t outsz)
{
	size_t n = 0;
	switch (r->key) {
	case KEY_SENDER:
		n = key_norm_address(out, outsz, in, &c->keyopts);
		break;
	case KEY_SENDER_DOMAIN:
	case KEY_RECIPIENT_DOMAIN:
		if (strchr(in, '@'))
			n = key_norm_domain(out, outsz, in);
		else {
			n = key_norm_login(out, outsz, in, true);
			while (n > 0 && out[n - 1] == '.')
				out[--n] = '\0';
		}
		break;
	case KEY_CLIENT_ADDRESS:
		n = key_norm_ip(out, outsz, in);
		if (n == 0)
			return -1;
		break;
	case KEY_CLIENT_NETWORK: {
		/* "198.51.100.0/24" or a bare address */
		char a[64];
		struct key_net net;
		snprintf(a, sizeof(a), "%s", in);
		if (key_net_parse(a, &net) < 0)
			return -1;
		char *slash = strchr(a, '/');
		if (slash)
			*slash = '\0';
		n = key_norm_net(out, outsz, a, r->prefix4, r->prefix6);
		if (n == 0)
			return -1;
		break;
	}
	case KEY_SASL_USERNAME:
		/* a login, even when it looks like an address (pipeline.c) */
		n = key_norm_login(out, outsz, in, c->keyopts.fold_localpart);
		break;
	case KEY_PRINCIPAL:
	default:
		/* a login, a sender address (trusted networks) or a client address */
		if (key_norm_ip(out, outsz, in) > 0)
			return 0;
		n = key_norm_login(out, outsz, in, c->keyopts.fold_localpart);
		break;
	}
	if (n == 0)
		snprintf(out, outsz, "%s", in);
	return 0;
}

static int config_load_overrides(struct config *c, struct rule *r, char *err, size_t errsz)
{
	FILE *fp = fopen(chroot_path(r->overrides_path), "r");
	char line[1024];
	unsigned lineno = 0;
	size_t cap = 0;

	if (fp == NULL) {
		snprintf(err, errsz, "%s: %s (overrides of [limit %s])", r->overrides_path,
		         strerror(errno), r->name);
		return -1;
	}
	while (fgets(line, sizeof(line), fp)) {
		lineno++;
		size_t len = strlen(line);
		if (len == sizeof(line) - 1 && line[len - 1] != '\n') {
			snprintf(err, errsz, "%s:%u: line too long", r->overrides_path, lineno);
			goto fail;
		}
		char *s = config_trim(line);
		if (*s == '\0' || *s == '#')
			continue;
		char *sp = s + strcspn(s, " \t");
		if (*sp == '\0') {
			snprintf(err, errsz,
			         "%s:%u: expected 'SUBJECT exempt' or 'SUBJECT N/period, ...'",
			         r->overrides_path, lineno);
			goto fail;
		}
		*sp++ = '\0';
		char *spec = config_trim(sp);
		struct override o;
		memset(&o, 0, sizeof(o));
		if (!strcmp(spec, "exempt")) {
			o.exempt = true;
		} else {
			char rerr[200];
			if (config_parse_rate(spec, o.win, &o.nwin, rerr, sizeof(rerr)) < 0) {
				snprintf(err, errsz, "%s:%u: %s", r->overrides_path, lineno, rerr);
				goto fail;
			}
		}
		char subj[KEY_MAX];
		if (config_norm_subject(c, r, s, subj, sizeof(subj)) < 0) {
			snprintf(err, errsz, "%s:%u: '%s' is not a %s", r->overrides_path, lineno,
			         s, r->key == KEY_CLIENT_NETWORK ? "network" : "client address");
			goto fail;
		}
		if (r->novr == cap) {
			cap = cap ? cap * 2 : 16;
			struct override *n = realloc(r->ovr, cap * sizeof(*n));
			if (n == NULL) {
				snprintf(err, errsz, "%s: out of memory", r->overrides_path);
				goto fail;
			}
			r->ovr = n;
		}
		o.subject = config_strdup(subj);
		o.line = lineno;
		r->ovr[r->novr++] = o;
	}
	fclose(fp);
	qsort(r->ovr, r->novr, sizeof(*r->ovr), config_override_cmp);
	for (size_t i = 1; i < r->novr; i++)
		if (!strcmp(r->ovr[i - 1].subject, r->ovr[i].subject)) {
			snprintf(err, errsz, "%s:%u: '%s' is listed twice (first on line %u)",
			         r->overrides_path,
			         r->ovr[i].line > r->ovr[i - 1].line ? r->ovr[i].line
			                                             : r->ovr[i - 1].line,
			         r->ovr[i].subject,
			         r->ovr[i].line < r->ovr[i - 1].line ? r->ovr[i].line
			                                             : r->ovr[i - 1].line);
			return -1;
		}
	return 0;
fail:
	fclose(fp);
	return -1;
}

const struct override *config_override(const struct rule *r, const char *subject)
{
	size_t lo = 0, hi = r->novr;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		int c = strcmp(subject, r->ovr[mid].subject);
		if (c == 0)
			return &r->ovr[mid];
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

/* Is "inet:HOST:PORT" on loopback (127.0.0.0/8, ::1, localhost)? */
static bool config_metrics_loopback(const char *ep)
{
	char host[64];
	const char *h = ep + 5, *colon = strrchr(ep, ':');
	size_t len = colon && colon > h ? (size_t)(colon - h) : 0;

	if (len == 0 || len >= sizeof(host))
		return false;
	memcpy(host, h, len);
	host[len] = '\0';
	if (!strcmp(host, "[::1]") || !strcmp(host, "localhost"))
		return true;
	if (strncmp(host, "127.", 4) != 0)
		return false;
	for (const char *p = host; *p; p++)
		if (!isdigit((unsigned char)*p) && *p != '.')
			return false;
	return true;
}

/* chroot = DIR: the [server] paths used after the chroot must lie under
 * DIR (chroot.h); the modules check theirs in their section's check. */
static int config_check_chroot(struct config *c, char *err, size_t errsz)
{
	char cerr[400];
	if (c->chroot == NULL)
		return 0;
	if (c->user == NULL) {
		snprintf(err, errsz,
		         "%s: chroot = %s needs user = (root can leave a chroot): name the "
		         "unprivileged user policyd drops to",
		         c->path, c->chroot);
		return -1;
	}
	if (chroot_root()) {
		c->chroot_reload = true; /* read again from inside: it is under the root */
	} else {
		char abs[PATH_MAX];
		c->chroot_reload = realpath(c->path, abs) && chroot_under(c->chroot, abs);
	}
	if (chroot_check_path(c, "state_dir", c->state_dir, cerr, sizeof(cerr)) < 0)
		goto fail;
	if (strncmp(c->store, "redis+unix://", 13) == 0) {
		struct store_redis_url u;
		char uerr[200];
		if (store_redis_url_parse(c->store, &u, uerr, sizeof(uerr)) == 0 &&
		    chroot_check_path(c, "store (its socket)", u.path, cerr, sizeof(cerr)) < 0)
			goto fail;
	}
	for (size_t i = 0; i < c->nrules; i++) {
		char name[CONFIG_NAME_MAX + 32];
		snprintf(name, sizeof(name), "[limit %s] overrides", c->rules[i].name);
		if (chroot_check_reread(c, name, c->rules[i].overrides_path, cerr, sizeof(cerr)) <
		    0)
			goto fail;
	}
	return 0;
fail:
	snprintf(err, errsz, "%s: %s", c->path, cerr);
	return -1;
}

struct config *config_load(const char *path, char *err, size_t errsz)
{
	struct config_ctx x;
	struct config *c = calloc(1, sizeof(*c));

	if (c == NULL) {
		snprintf(err, errsz, "out of memory");
		return NULL;
	}
	memset(&x, 0, sizeof(x));
	x.c = c;
	c->path = config_strdup(path);
	c->store = config_strdup("memory");
	c->state_dir = config_strdup("/var/lib/policyd");
	c->log_target = config_strdup("syslog");
	c->log_facility = config_strdup("mail");
	c->fallback_action = config_strdup("DUNNO");
	c->log_decisions = 2;
	c->max_connections = 4096;
	c->idle_timeout_s = 3600;
	c->max_request = PROTO_DEFAULT_MAX_REQUEST;
	c->max_line = PROTO_DEFAULT_MAX_LINE;
	c->max_attrs = PROTO_DEFAULT_MAX_ATTRS;
	c->hooks = HOOK_RCPT | HOOK_EOM;
	c->keyopts.fold_localpart = true;
	snprintf(c->keyopts.delimiters, sizeof(c->keyopts.delimiters), "+");
	c->socket_mode = 0660;
	c->redis_timeout_ms = 200;
	c->redis_connect_timeout_ms = 1000;
	c->redis_wait_replicas = -1;
	c->redis_wait_timeout_ms = 100;

	x.mod = -1;
	for (int i = 0; config_sections[i]; i++) {
		c->section[i] = calloc(1, config_sections[i]->size);
		if (c->section[i] == NULL) {
			snprintf(err, errsz, "out of memory");
			config_free(c);
			return NULL;
		}
		if (config_sections[i]->defaults)
			config_sections[i]->defaults(c->section[i]);
	}
	x.fp = fopen(chroot_path(path), "r"); /* inside the chroot on a reload */
	if (x.fp == NULL) {
		snprintf(err, errsz, "%s: %s", path, strerror(errno));
		config_free(c);
		return NULL;
	}
	int rc = ini_parse_stream(config_reader, &x, config_handler, &x);
	fclose(x.fp);
	if (rc > 0 && (x.errline == 0 || (unsigned)rc < x.errline)) {
		x.errline = 0;
		x.line = (unsigned)rc;
		config_seterr(&x, "syntax error (expected [section] or name = value)");
	}
	if (x.errline == 0)
		config_end_section(&x);
	if (x.errline) {
		snprintf(err, errsz, "%s:%u: %s", path, x.errline, x.err);
		config_free(c);
		return NULL;
	}
	if (!x.have_server) {
		snprintf(err, errsz, "%s: missing [server] section", path);
		config_free(c);
		return NULL;
	}
	if (c->nlisten == 0)
		c->listen[c->nlisten++] = config_strdup("inet:127.0.0.1:10031");
	/* a cluster has replicas (failover is its point); a lone server may not */
	if (c->redis_wait_replicas < 0)
		c->redis_wait_replicas = strncmp(c->store, "redis-cluster://", 16) == 0 ? 1 : 0;
	/* redis_failure = closed: while Redis is away, defer (unless told otherwise) */
	if (strcmp(c->store, "memory") != 0 && c->redis_failure == STORE_REDIS_FAIL_CLOSED &&
	    !c->fallback_set) {
		free(c->fallback_action);
		c->fallback_action = config_strdup(
		    "DEFER 4.3.0 Policy service temporarily unavailable, try again later");
	}
	if (c->metrics && !c->metrics_allow_remote && !config_metrics_loopback(c->metrics)) {
		snprintf(err, errsz,
		         "%s: metrics = %s is not a loopback address (127.0.0.0/8, ::1, "
		         "localhost); set metrics_allow_remote = yes to serve it elsewhere",
		         path, c->metrics);
		config_free(c);
		return NULL;
	}
	if (c->max_line + 2 > c->max_request) {
		snprintf(err, errsz, "%s: max_line (%zu) must be smaller than max_request (%zu)",
		         path, c->max_line, c->max_request);
		config_free(c);
		return NULL;
	}
	if (config_check_chroot(c, err, errsz) < 0) {
		config_free(c);
		return NULL;
	}
	for (int i = 0; config_sections[i]; i++) {
		char merr[256];
		if (config_sections[i]->check &&
		    config_sections[i]->check(c->section[i], c, merr, sizeof(merr)) < 0) {
			snprintf(err, errsz, "%s: [%s] %s", path, config_sections[i]->name, merr);
			config_free(c);
			return NULL;
		}
	}
	for (size_t i = 0; i < c->nrules; i++) {
		struct rule *r = &c->rules[i];
		if (r->overrides_path && config_load_overrides(c, r, err, errsz) < 0) {
			config_free(c);
			return NULL;
		}
	}
	return c;
}

void config_free(struct config *c)
{
	if (c == NULL)
		return;
	free(c->path);
	for (size_t i = 0; i < c->nlisten; i++)
		free(c->listen[i]);
	free(c->store);
	free(c->state_dir);
	free(c->pid_file);
	free(c->user);
	free(c->group);
	free(c->chroot);
	free(c->socket_group);
	free(c->log_target);
	free(c->log_facility);
	free(c->fallback_action);
	free(c->control);
	free(c->control_group);
	free(c->metrics);
	free(c->postfix_config_dir);
	for (int i = 0; config_sections[i]; i++) {
		if (c->section[i] && config_sections[i]->free)
			config_sections[i]->free(c->section[i]);
		free(c->section[i]);
	}
	for (size_t i = 0; i < c->nrules; i++) {
		struct rule *r = &c->rules[i];
		free(r->reply);
		free(r->overrides_path);
		for (size_t j = 0; j < r->novr; j++)
			free(r->ovr[j].subject);
		free(r->ovr);
	}
	free(c);
}

static int config_section_index(const struct config_section *s)
{
	for (int i = 0; config_sections[i]; i++)
		if (config_sections[i] == s)
			return i;
	return -1;
}

void *config_section_get(const struct config *c, const struct config_section *s)
{
	int i = config_section_index(s);
	return i < 0 ? NULL : c->section[i];
}

bool config_section_present(const struct config *c, const struct config_section *s)
{
	int i = config_section_index(s);
	return i >= 0 && c->section_present[i];
}
