/*
 * policyd/ndr_module.c - owns the daemon side of NDR tracking (see
 * ndr.h): the [ndr] config section, the module "ndr" (log followers, the
 * state file, the housekeeping timers, the queue-size watcher, postsuper
 * holds and the blocklist command as child processes), the pipeline check
 * "ndr", the control command "ndr" and the NDR metrics.
 *
 * Entry points: ndr_config_section, ndr_module, ndr_prepare/ndr_finish,
 * ndr_control.
 *
 * Nothing here blocks the loop while policyd serves: the log is read in
 * slices (follow.c), the state file is written by a forked child, the
 * queue directories are counted by a forked child, and postsuper and the
 * blocklist command run as children reaped with ev_child.  Only start-up
 * (before the listeners accept) runs `postconf` and reads files inline.
 *
 * Limits: NDR_HOLD_BATCH queue ids per postsuper run; NDR_MAX_CHILDREN
 * commands at once (more alerts are logged, not run); a command runs at
 * most NDR_CMD_TIMEOUT_S seconds (then SIGKILL, by its pid).
 */
#include "ndr.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "anomaly.h"
#include "chroot.h"
#include "config_section.h"
#include "control.h"
#include "flag.h"
#include "follow.h"
#include "log.h"
#include "metrics.h"
#include "module.h"
#include "pipeline.h"
#include "proto/maillog.h"

#ifndef POLICYD_PATTERNS_PATH /* set by meson from datadir */
#define POLICYD_PATTERNS_PATH "/usr/share/policyd/ndr-patterns.conf"
#endif
#ifndef NDR_DEFAULT_PATTERNS
#define NDR_DEFAULT_PATTERNS POLICYD_PATTERNS_PATH
#endif
#define NDR_STATE_NAME       "ndr.state"
#define NDR_MAX_PATTERN_FILE (16u << 20)
#define NDR_HOLD_BATCH       1000 /* x 65 bytes: fits a pipe buffer */
#define NDR_MAX_CHILDREN     8
#define NDR_CMD_TIMEOUT_S    30
#define NDR_QHIST            128

/* ================================================================ config */

/*
 * [ndr] - present: NDR tracking is on.  Names, defaults, meaning:
 *   log_file = PATH            Postfix's maillog_file or syslog's mail log ("": none)
 *   log_socket = PATH          a unix datagram socket syslog forwards to ("": none)
 *   log_socket_mode = 0660     its permissions
 *   log_format = auto          auto | file | rfc5424 (auto reads every form)
 *   log_start = end            end | start: where a log without a saved position starts
 *   log_cpu_share = 25%        catching up on a backlog: at most this share of a core
 *   patterns = /usr/share/policyd/ndr-patterns.conf   FILE[, FILE..] (site file first)
 *   local_domains = postconf   DOMAIN[, ..], and/or `postconf` (mydestination,
 *                              virtual_mailbox_domains, virtual_alias_domains)
 *   postfix_config_dir =       for postconf/postsuper ("": [server]'s, else Postfix's)
 *   queue_dir =                the queue-size watcher's spool ("": postconf's)
 *   queue_check_interval = 60s 0: no queue-size watcher
 *   deferred_max = 5000        alert above this many deferred messages (0: never)
 *   deferred_growth = 1000/1h  alert when the deferred queue grows this much (none)
 *   windows = 1h, 1d           the short and the long sliding window
 *   baseline_half_life = 7d    of each account's own failure ratio
 *   min_count = 10             recipients in a window before an account is judged
 *   domain_min_count = 20, global_min_count = 50   the same per domain, globally
 *   wilson_z = 1.96            confidence of the Wilson lower bound (95%)
 *   bounce_threshold = 10%     spike: bound > max(threshold, relative x baseline)
 *   bounce_relative = 3, defer_threshold = 25%, defer_relative = 3
 *   domain_min_principals = 3  a receiver failing this many accounts is its own problem
 *   spike_action = flag        flag (flag.h) | defer | hold | warn
 *   spike_reply =, spike_dsn = the text and code of defer/hold (defaults: built in, 4.7.1)
 *   blocklist_command =        run (/bin/sh -c) when a reply names our IP on a list;
 *                              POLICYD_LIST/_IP/_PRINCIPAL/_EVIDENCE/_SUPPRESSED, evidence
 *                              on standard input
 *   blocklist_alert_interval = 1h   one alert per (list, IP) per interval
 *   global_pause = no          yes: a global spike pauses outbound mail (policyctl resume)
 *   global_pause_action = hold hold | defer
 *   pickup_limit = none        N/period[, ..] per uid and sender of sendmail mail
 *   pickup_action = hold       hold (postsuper -h) | warn
 *   hold_command =             instead of `postsuper [-c DIR] -h -` (which needs root):
 *                              run by /bin/sh -c, queue ids on standard input, e.g.
 *                              /usr/bin/sudo -n /usr/sbin/postsuper -h -
 *   our_ips =                  ADDR|NET[, ..]: our sending IPs ("": any IP a list names)
 *   filter_relays = 127.0.0.0/8, ::1   content filters whose "queued as" is a hand-off
 *   max_principals = 20000, max_domains = 20000, max_queue_ids = 200000,
 *   max_inbound = 20000        bounds of the tables (least recently active dropped)
 *   queue_id_ttl = 6d          a queue id not seen again is forgotten
 *   inbound_max = 50           inbound NDRs per local user in the short window (0: off)
 *   backscatter_max = 200      our bounces to remote senders in the short window (0: off)
 *   save_interval = 5s         the state file (state_dir/ndr.state)
 *   dry_run = no               yes: spikes logged, nothing flagged, deferred or held
 */

static char *ndr_dup(const char *s)
{
	char *d = strdup(s ? s : "");
	if (d == NULL) {
		fprintf(stderr, "policyd: out of memory\n");
		abort();
	}
	return d;
}

void ndr_conf_defaults(struct ndr_conf *c)
{
	memset(c, 0, sizeof(*c));
	c->log_file = ndr_dup("");
	c->log_socket = ndr_dup("");
	c->log_socket_mode = 0660;
	c->log_cpu_share = 0.25;
	c->patterns[0] = ndr_dup(NDR_DEFAULT_PATTERNS);
	c->npatterns = 1;
	c->local_domains_postconf = true;
	c->postfix_config_dir = ndr_dup("");
	c->queue_dir = ndr_dup("");
	c->queue_check_us = 60ULL * 1000000;
	c->deferred_max = 5000;
	c->deferred_growth = 1000;
	c->deferred_growth_us = 3600ULL * 1000000;
	c->short_us = 3600ULL * 1000000;
	c->long_us = 86400ULL * 1000000;
	c->baseline_us = 7 * 86400ULL * 1000000;
	c->min_count = 10;
	c->domain_min_count = 20;
	c->global_min_count = 50;
	c->z = 1.96;
	c->bounce_threshold = 0.10;
	c->bounce_relative = 3;
	c->defer_threshold = 0.25;
	c->defer_relative = 3;
	c->domain_min_principals = 3;
	c->spike_action = NDR_ACT_FLAG;
	c->spike_reply = ndr_dup("");
	c->blocklist_command = ndr_dup("");
	c->hold_command = ndr_dup("");
	c->blocklist_interval_us = 3600ULL * 1000000;
	c->global_pause_action = ACT_HOLD;
	c->pickup_hold = true;
	key_net_parse("127.0.0.0/8", &c->filter_relays[0]);
	key_net_parse("::1", &c->filter_relays[1]);
	c->nfilter_relays = 2;
	c->max_principals = 20000;
	c->max_domains = 20000;
	c->max_queue_ids = 200000;
	c->max_inbound = 20000;
	c->queue_id_ttl_us = 6 * 86400ULL * 1000000;
	c->inbound_max = 50;
	c->backscatter_max = 200;
	c->save_us = 5ULL * 1000000;
}

static void ndr_cfg_defaults(void *blk)
{
	ndr_conf_defaults(blk);
}

static void ndr_cfg_free(void *blk)
{
	struct ndr_conf *c = blk;
	free(c->log_file);
	free(c->log_socket);
	for (size_t i = 0; i < c->npatterns; i++)
		free(c->patterns[i]);
	for (size_t i = 0; i < c->nlocal_domains; i++)
		free(c->local_domains[i]);
	free(c->postfix_config_dir);
	free(c->queue_dir);
	free(c->spike_reply);
	free(c->blocklist_command);
	free(c->hold_command);
}

static void ndr_set_str(char **dst, const char *v)
{
	char *d = ndr_dup(v);
	free(*dst);
	*dst = d;
}

static int ndr_parse_bool(const char *v, bool *b)
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

static int ndr_parse_uint(const char *v, unsigned long long max, unsigned long long *out)
{
	char *end;
	if (!isdigit((unsigned char)v[0]))
		return -1;
	errno = 0;
	unsigned long long n = strtoull(v, &end, 10);
	if (errno || *end || n > max)
		return -1;
	*out = n;
	return 0;
}

/* "5%", "0.05", "12.5%" -> a fraction in [0, 1]. */
static int ndr_parse_fraction(const char *v, double *out)
{
	char *end;
	errno = 0;
	double d = strtod(v, &end);
	if (end == v || errno)
		return -1;
	if (*end == '%') {
		d /= 100;
		end++;
	}
	if (*end || !(d >= 0) || d > 1)
		return -1;
	*out = d;
	return 0;
}

static int ndr_parse_double(const char *v, double lo, double hi, double *out)
{
	char *end;
	errno = 0;
	double d = strtod(v, &end);
	if (end == v || *end || errno || !(d >= lo) || d > hi)
		return -1;
	*out = d;
	return 0;
}

/* Split a list on commas and blanks into words (callback per word). */
static int ndr_words(const char *v, int (*fn)(void *arg, const char *w, char *err, size_t errsz),
                     void *arg, char *err, size_t errsz)
{
	char buf[4096];
	if (strlen(v) >= sizeof(buf)) {
		snprintf(err, errsz, "list too long");
		return -1;
	}
	memcpy(buf, v, strlen(v) + 1);
	for (char *save = NULL, *w = strtok_r(buf, ", \t", &save); w;
	     w = strtok_r(NULL, ", \t", &save))
		if (fn(arg, w, err, errsz) < 0)
			return -1;
	return 0;
}

struct ndr_strlist {
	char **v;
	size_t *n;
	bool lower;
};

static int ndr_add_word(void *arg, const char *w, char *err, size_t errsz)
{
	struct ndr_strlist *l = arg;
	if (*l->n == NDR_MAX_LIST) {
		snprintf(err, errsz, "more than %d entries", NDR_MAX_LIST);
		return -1;
	}
	char *d = ndr_dup(w);
	if (l->lower)
		for (char *p = d; *p; p++)
			*p = (char)tolower((unsigned char)*p);
	l->v[(*l->n)++] = d;
	return 0;
}

struct ndr_netlist {
	struct key_net *v;
	size_t *n;
	const char *what;
};

static int ndr_add_net(void *arg, const char *w, char *err, size_t errsz)
{
	struct ndr_netlist *l = arg;
	if (*l->n == NDR_MAX_LIST) {
		snprintf(err, errsz, "%s: more than %d entries", l->what, NDR_MAX_LIST);
		return -1;
	}
	if (key_net_parse(w, &l->v[*l->n]) < 0) {
		snprintf(err, errsz, "%s: '%s' is not an address or network", l->what, w);
		return -1;
	}
	(*l->n)++;
	return 0;
}

static int ndr_duration(const char *name, const char *v, uint64_t *us, uint64_t min, bool zero_ok,
                        char *err, size_t errsz)
{
	char e[200];
	if (zero_ok && (!strcmp(v, "0") || !strcmp(v, "off") || !strcmp(v, "none"))) {
		*us = 0;
		return 0;
	}
	if (config_parse_duration(v, us, e, sizeof(e)) < 0) {
		snprintf(err, errsz, "%s: %s", name, e);
		return -1;
	}
	if ((*us == 0 && !zero_ok) || (*us != 0 && *us < min)) {
		snprintf(err, errsz, "%s: at least %llus", name,
		         (unsigned long long)(min / 1000000));
		return -1;
	}
	return 0;
}

static int ndr_uint_in(const char *name, const char *v, unsigned long long lo,
                       unsigned long long hi, unsigned long long *u, char *err, size_t errsz)
{
	if (ndr_parse_uint(v, hi, u) < 0 || *u < lo) {
		snprintf(err, errsz, "%s: a whole number from %llu to %llu", name, lo, hi);
		return -1;
	}
	return 0;
}

static int ndr_cfg_set(void *blk, const char *name, const char *v, char *err, size_t errsz)
{
	struct ndr_conf *c = blk;
	unsigned long long u;

#define NDR_UINT(key, field, lo, hi)                                                               \
	if (!strcmp(name, key)) {                                                                  \
		if (ndr_uint_in(name, v, lo, hi, &u, err, errsz) < 0)                              \
			return -1;                                                                 \
		c->field = u;                                                                      \
		return 0;                                                                          \
	}
	if (!strcmp(name, "log_file") || !strcmp(name, "log_socket")) {
		if (v[0] && v[0] != '/') {
			snprintf(err, errsz, "%s: '%s' is not an absolute path", name, v);
			return -1;
		}
		ndr_set_str(name[4] == 'f' ? &c->log_file : &c->log_socket, v);
		return 0;
	}
	if (!strcmp(name, "log_socket_mode")) {
		char *end;
		unsigned long m = strtoul(v, &end, 8);
		if (*end || end == v || m > 0777) {
			snprintf(err, errsz, "log_socket_mode: an octal mode such as 0660");
			return -1;
		}
		c->log_socket_mode = (unsigned)m;
		return 0;
	}
	if (!strcmp(name, "log_format")) {
		static const char *const f[] = {"auto", "file", "rfc5424"};
		for (int i = 0; i < 3; i++)
			if (!strcmp(v, f[i])) {
				c->log_format = i;
				return 0;
			}
		snprintf(err, errsz, "log_format: auto, file or rfc5424");
		return -1;
	}
	if (!strcmp(name, "log_cpu_share")) {
		if (ndr_parse_fraction(v, &c->log_cpu_share) < 0 || c->log_cpu_share < 0.01) {
			snprintf(err, errsz,
			         "log_cpu_share: a share of one core from 1%% to 100%%");
			return -1;
		}
		return 0;
	}
	if (!strcmp(name, "log_start")) {
		if (strcmp(v, "end") && strcmp(v, "start")) {
			snprintf(err, errsz, "log_start: end or start");
			return -1;
		}
		c->log_from_start = !strcmp(v, "start");
		return 0;
	}
	if (!strcmp(name, "patterns")) {
		for (size_t i = 0; i < c->npatterns; i++)
			free(c->patterns[i]);
		c->npatterns = 0;
		struct ndr_strlist l = {c->patterns, &c->npatterns, false};
		if (ndr_words(v, ndr_add_word, &l, err, errsz) < 0)
			return -1;
		if (c->npatterns == 0) {
			snprintf(err, errsz, "patterns: at least one file");
			return -1;
		}
		return 0;
	}
	if (!strcmp(name, "local_domains")) {
		for (size_t i = 0; i < c->nlocal_domains; i++)
			free(c->local_domains[i]);
		c->nlocal_domains = 0;
		c->local_domains_postconf = false;
		struct ndr_strlist l = {c->local_domains, &c->nlocal_domains, true};
		if (ndr_words(v, ndr_add_word, &l, err, errsz) < 0)
			return -1;
		for (size_t i = 0; i < c->nlocal_domains; i++)
			if (!strcmp(c->local_domains[i], "postconf")) {
				free(c->local_domains[i]);
				c->local_domains[i] = c->local_domains[--c->nlocal_domains];
				c->local_domains_postconf = true;
				i--;
			}
		return 0;
	}
	if (!strcmp(name, "postfix_config_dir") || !strcmp(name, "queue_dir")) {
		if (v[0] && v[0] != '/') {
			snprintf(err, errsz, "%s: '%s' is not an absolute path", name, v);
			return -1;
		}
		ndr_set_str(name[0] == 'p' ? &c->postfix_config_dir : &c->queue_dir, v);
		return 0;
	}
	if (!strcmp(name, "queue_check_interval"))
		return ndr_duration(name, v, &c->queue_check_us, 1000000, true, err, errsz);
	NDR_UINT("deferred_max", deferred_max, 0, 1000000000ULL)
	if (!strcmp(name, "deferred_growth")) {
		struct gcra_window w[STORE_MAX_WINDOWS];
		uint8_t nw = 0;
		char e[200];
		if (!strcmp(v, "0") || !strcmp(v, "none")) {
			c->deferred_growth = 0;
			return 0;
		}
		if (config_parse_rate(v, w, &nw, e, sizeof(e)) < 0 || nw != 1) {
			snprintf(err, errsz, "deferred_growth: N/period, e.g. 1000/1h%s%s",
			         nw > 1 ? " (one)" : "", "");
			return -1;
		}
		c->deferred_growth = w[0].limit;
		c->deferred_growth_us = w[0].period_us;
		return 0;
	}
	if (!strcmp(name, "windows")) {
		char a[64], b[64];
		if (sscanf(v, " %63[^, ] %*[, ] %63s", a, b) != 2) {
			snprintf(err, errsz, "windows: SHORT, LONG (e.g. 1h, 1d)");
			return -1;
		}
		uint64_t s, l;
		if (ndr_duration("windows", a, &s, 10 * 60 * 1000000ULL, false, err, errsz) < 0 ||
		    ndr_duration("windows", b, &l, 3600 * 1000000ULL, false, err, errsz) < 0)
			return -1;
		if (l <= s || l > 30 * 86400ULL * 1000000) {
			snprintf(err, errsz,
			         "windows: the long window must be longer than the short one, at "
			         "most 30d");
			return -1;
		}
		c->short_us = s;
		c->long_us = l;
		return 0;
	}
	if (!strcmp(name, "baseline_half_life"))
		return ndr_duration(name, v, &c->baseline_us, 3600 * 1000000ULL, false, err, errsz);
	NDR_UINT("min_count", min_count, 1, 1000000)
	NDR_UINT("domain_min_count", domain_min_count, 1, 1000000)
	NDR_UINT("global_min_count", global_min_count, 1, 100000000)
	NDR_UINT("domain_min_principals", domain_min_principals, 1, 8)
	if (!strcmp(name, "wilson_z")) {
		if (ndr_parse_double(v, 0, 10, &c->z) < 0) {
			snprintf(err, errsz, "wilson_z: a number from 0 to 10 (1.96 = 95%%)");
			return -1;
		}
		return 0;
	}
	if (!strcmp(name, "bounce_threshold") || !strcmp(name, "defer_threshold")) {
		double *d = name[0] == 'b' ? &c->bounce_threshold : &c->defer_threshold;
		if (ndr_parse_fraction(v, d) < 0) {
			snprintf(err, errsz, "%s: a share such as 10%% or 0.1 (100%%: never)",
			         name);
			return -1;
		}
		return 0;
	}
	if (!strcmp(name, "bounce_relative") || !strcmp(name, "defer_relative")) {
		double *d = name[0] == 'b' ? &c->bounce_relative : &c->defer_relative;
		if (ndr_parse_double(v, 0, 1000, d) < 0) {
			snprintf(err, errsz, "%s: a factor from 0 to 1000 (x the baseline)", name);
			return -1;
		}
		return 0;
	}
	if (!strcmp(name, "spike_action")) {
		static const char *const a[] = {"flag", "defer", "hold", "warn"};
		for (int i = 0; i < 4; i++)
			if (!strcmp(v, a[i])) {
				c->spike_action = (enum ndr_spike_action)i;
				return 0;
			}
		snprintf(err, errsz, "spike_action: flag, defer, hold or warn");
		return -1;
	}
	if (!strcmp(name, "spike_reply")) {
		if (strlen(v) > 200 || strpbrk(v, "\r\n")) {
			snprintf(err, errsz, "spike_reply: one line of at most 200 bytes");
			return -1;
		}
		ndr_set_str(&c->spike_reply, v);
		return 0;
	}
	if (!strcmp(name, "spike_dsn")) {
		if (!verdict_dsn_valid(v) || v[0] == '2' || strlen(v) >= sizeof(c->spike_dsn)) {
			snprintf(err, errsz, "spike_dsn: an enhanced status code such as 4.7.1");
			return -1;
		}
		snprintf(c->spike_dsn, sizeof(c->spike_dsn), "%s", v);
		return 0;
	}
	if (!strcmp(name, "blocklist_command") || !strcmp(name, "hold_command")) {
		if (v[0] && v[0] != '/') {
			snprintf(err, errsz, "%s: an absolute path (run by /bin/sh -c)", name);
			return -1;
		}
		ndr_set_str(name[0] == 'b' ? &c->blocklist_command : &c->hold_command, v);
		return 0;
	}
	if (!strcmp(name, "blocklist_alert_interval"))
		return ndr_duration(name, v, &c->blocklist_interval_us, 1000000, true, err, errsz);
	if (!strcmp(name, "global_pause") || !strcmp(name, "dry_run")) {
		if (ndr_parse_bool(v, name[0] == 'g' ? &c->global_pause : &c->dry_run) < 0) {
			snprintf(err, errsz, "%s: yes or no", name);
			return -1;
		}
		return 0;
	}
	if (!strcmp(name, "global_pause_action")) {
		if (strcmp(v, "hold") && strcmp(v, "defer")) {
			snprintf(err, errsz, "global_pause_action: hold or defer");
			return -1;
		}
		c->global_pause_action = v[0] == 'h' ? ACT_HOLD : ACT_DEFER;
		return 0;
	}
	if (!strcmp(name, "pickup_limit")) {
		char e[200];
		if (!strcmp(v, "0") || !strcmp(v, "none") || !v[0]) {
			c->pickup_nwin = 0;
			return 0;
		}
		if (config_parse_rate(v, c->pickup_win, &c->pickup_nwin, e, sizeof(e)) < 0) {
			snprintf(err, errsz, "pickup_limit: %s", e);
			return -1;
		}
		return 0;
	}
	if (!strcmp(name, "pickup_action")) {
		if (strcmp(v, "hold") && strcmp(v, "warn")) {
			snprintf(err, errsz, "pickup_action: hold or warn");
			return -1;
		}
		c->pickup_hold = v[0] == 'h';
		return 0;
	}
	if (!strcmp(name, "our_ips") || !strcmp(name, "filter_relays")) {
		bool our = name[0] == 'o';
		struct ndr_netlist l = {our ? c->our_ips : c->filter_relays,
		                        our ? &c->nour_ips : &c->nfilter_relays, name};
		*l.n = 0;
		if (!strcmp(v, "none"))
			return 0;
		return ndr_words(v, ndr_add_net, &l, err, errsz);
	}
	NDR_UINT("max_principals", max_principals, 1, 10000000)
	NDR_UINT("max_domains", max_domains, 1, 10000000)
	NDR_UINT("max_queue_ids", max_queue_ids, 1, 100000000)
	NDR_UINT("max_inbound", max_inbound, 1, 10000000)
	if (!strcmp(name, "queue_id_ttl"))
		return ndr_duration(name, v, &c->queue_id_ttl_us, 60 * 1000000ULL, false, err,
		                    errsz);
	NDR_UINT("inbound_max", inbound_max, 0, 100000000)
	NDR_UINT("backscatter_max", backscatter_max, 0, 100000000)
	if (!strcmp(name, "save_interval"))
		return ndr_duration(name, v, &c->save_us, 1000000, false, err, errsz);
#undef NDR_UINT
	snprintf(err, errsz, "unknown name '%s'", name);
	return -1;
}

static int ndr_cfg_check(void *blk, const struct config *cfg, char *err, size_t errsz)
{
	struct ndr_conf *c = blk;
	if (c->log_file[0] && c->log_socket[0] && !strcmp(c->log_file, c->log_socket)) {
		snprintf(err, errsz, "log_file and log_socket name the same path");
		return -1;
	}
	/* chroot: the followed log is reopened after a rotation, the queue
	 * counted and hold_command run, all inside it (chroot.h) */
	if (!config_section_present(cfg, &ndr_config_section))
		return 0;
	if (chroot_check_path(cfg, "log_file", c->log_file, err, errsz) < 0 ||
	    chroot_check_path(cfg, "queue_dir", c->queue_dir, err, errsz) < 0 ||
	    chroot_check_path(cfg, "hold_command", c->hold_command, err, errsz) < 0)
		return -1;
	for (size_t i = 0; i < c->npatterns; i++)
		if (chroot_check_reread(cfg, "patterns", c->patterns[i], err, errsz) < 0)
			return -1;
	return 0;
}

const struct config_section ndr_config_section = {
    .name = "ndr",
    .lists = (const char *const[]){"local_domains", "our_ips", "filter_relays", "patterns", NULL},
    .size = sizeof(struct ndr_conf),
    .defaults = ndr_cfg_defaults,
    .set = ndr_cfg_set,
    .check = ndr_cfg_check,
    .free = ndr_cfg_free,
};

/* ================================================================ module */

struct ndr_child {
	pid_t pid;
	ev_child cw;
	ev_timer kill;
	char what[32];
	bool used;
};

struct ndr_mod {
	struct module_ctx *m;
	struct ev_loop *loop;
	const struct config *cfg;
	const struct ndr_conf *conf;
	struct classify_db *db;
	char *pattern_names[NDR_MAX_LIST]; /* the db keeps them */
	size_t npattern_names;
	struct ndr *nd;
	struct follow *file, *sock;
	char state_path[4096];
	char pfdir[4096]; /* postfix config dir for postconf/postsuper, "" = default */
	char qdir[4096];  /* queue directory, "" = no watch */
	ev_timer tick, save, queue, hold;
	pid_t save_pid;
	ev_child save_cw;
	/* queue watcher */
	pid_t q_pid;
	int q_fd;
	ev_io q_io;
	ev_child q_cw;
	char q_buf[256];
	size_t q_len;
	struct {
		int64_t t;
		uint64_t deferred;
	} q_hist[NDR_QHIST];
	size_t q_nhist;
	uint64_t q_active, q_deferred, q_hold, q_incoming;
	int64_t q_when;
	bool q_alert_size, q_alert_growth, q_err_logged;
	/* postsuper -h batch */
	char (*holdq)[MAILLOG_MAX_QUEUE_ID + 1];
	size_t nhold;
	struct ndr_child child[NDR_MAX_CHILDREN];
	bool paused_by_us;
	uint64_t follow_notes;
	/* what reload compares with: copies, since the old config is freed first */
	struct {
		char *log_file, *log_socket, *pf_server, *pf_ndr, *queue_dir;
		bool queue_check;
	} applied;
};

static struct ndr_mod *ndr_mod;

static struct metrics_counter ndr_m_spikes = METRICS_COUNTER(
    "policyd_ndr_spikes_total", "NDR spikes started, by scope.", "scope=\"principal\"");
static struct metrics_counter ndr_m_spikes_dom = METRICS_COUNTER(
    "policyd_ndr_spikes_total", "NDR spikes started, by scope.", "scope=\"domain\"");
static struct metrics_counter ndr_m_spikes_glob = METRICS_COUNTER(
    "policyd_ndr_spikes_total", "NDR spikes started, by scope.", "scope=\"global\"");
static struct metrics_counter ndr_m_spikes_in = METRICS_COUNTER(
    "policyd_ndr_spikes_total", "NDR spikes started, by scope.", "scope=\"inbound\"");
static struct metrics_counter ndr_m_spikes_bs = METRICS_COUNTER(
    "policyd_ndr_spikes_total", "NDR spikes started, by scope.", "scope=\"backscatter\"");
static struct metrics_counter ndr_m_blocklist =
    METRICS_COUNTER("policyd_ndr_blocklist_alerts_total",
                    "Replies that named our IP on a blocklist (alerts).", NULL);
static struct metrics_counter ndr_m_holds = METRICS_COUNTER(
    "policyd_ndr_postsuper_holds_total", "Queue ids put on hold with postsuper -h.", NULL);
static struct metrics_counter ndr_m_queue_alerts =
    METRICS_COUNTER("policyd_queue_alerts_total", "Deferred-queue size or growth alerts.", NULL);

static int64_t ndr_wall_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ---------------------------------------------------------------- children */

static void ndr_child_done(struct ev_loop *loop, ev_child *w, int revents)
{
	struct ndr_child *c = w->data;
	ev_child_stop(loop, w);
	ev_timer_stop(loop, &c->kill);
	int st = w->rstatus;
	if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
		log_debug("event=ndr_command what=%s pid=%ld exit=0", c->what, (long)c->pid);
	else if (WIFEXITED(st))
		log_warn("event=ndr_command what=%s pid=%ld exit=%d", c->what, (long)c->pid,
		         WEXITSTATUS(st));
	else
		log_warn("event=ndr_command what=%s pid=%ld signal=%d", c->what, (long)c->pid,
		         WIFSIGNALED(st) ? WTERMSIG(st) : 0);
	c->used = false;
	c->pid = 0;
}

static void ndr_child_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct ndr_child *c = w->data;
	if (c->pid > 0) {
		log_warn("event=ndr_command what=%s pid=%ld timeout=%ds: killed", c->what,
		         (long)c->pid, NDR_CMD_TIMEOUT_S);
		kill(c->pid, SIGKILL);
	}
}

/*
 * Run argv (argv[0] a path) with env additions and `input` on its standard
 * input (at most a pipe's buffer; the rest is cut), as a watched child.
 */
static int ndr_spawn(struct ndr_mod *md, const char *what, char *const argv[],
                     char *const extra_env[], const char *input, size_t inlen)
{
	struct ndr_child *c = NULL;
	int pfd[2];

	for (size_t i = 0; i < NDR_MAX_CHILDREN; i++)
		if (!md->child[i].used) {
			c = &md->child[i];
			break;
		}
	if (c == NULL) {
		log_warn("event=ndr_command what=%s: %d commands still running, not run", what,
		         NDR_MAX_CHILDREN);
		return -1;
	}
	if (pipe2(pfd, O_CLOEXEC) < 0) {
		log_warn("event=ndr_command what=%s: pipe: %s", what, strerror(errno));
		return -1;
	}
	/* the environment of the child, built before fork */
	extern char **environ;
	size_t ne = 0, nx = 0;
	while (environ[ne])
		ne++;
	while (extra_env && extra_env[nx])
		nx++;
	char **envp = calloc(ne + nx + 2, sizeof(*envp));
	if (envp == NULL) {
		close(pfd[0]);
		close(pfd[1]);
		return -1;
	}
	size_t k = 0;
	bool have_path = false;
	for (size_t i = 0; i < ne; i++) {
		envp[k++] = environ[i];
		if (!strncmp(environ[i], "PATH=", 5))
			have_path = true;
	}
	for (size_t i = 0; i < nx; i++)
		envp[k++] = extra_env[i];
	if (!have_path)
		envp[k++] = (char *)"PATH=/usr/sbin:/usr/bin:/sbin:/bin";
	envp[k] = NULL;
	pid_t pid = fork();
	if (pid < 0) {
		log_warn("event=ndr_command what=%s: fork: %s", what, strerror(errno));
		free(envp);
		close(pfd[0]);
		close(pfd[1]);
		return -1;
	}
	if (pid == 0) {
		dup2(pfd[0], 0);
		int nul = chroot_devnull(); /* opened before the chroot */
		if (nul >= 0)
			dup2(nul, 1);
		signal(SIGPIPE, SIG_DFL);
		execve(chroot_path(argv[0]), argv, envp);
		_exit(127);
	}
	free(envp);
	close(pfd[0]);
	if (inlen) {
		fcntl(pfd[1], F_SETFL, O_NONBLOCK);
		ssize_t w = write(pfd[1], input, inlen);
		if (w < (ssize_t)inlen)
			log_warn(
			    "event=ndr_command what=%s: standard input cut at %zd of %zu bytes",
			    what, w < 0 ? (ssize_t)0 : w, inlen);
	}
	close(pfd[1]);
	c->used = true;
	c->pid = pid;
	snprintf(c->what, sizeof(c->what), "%s", what);
	ev_child_init(&c->cw, ndr_child_done, pid, 0);
	c->cw.data = c;
	ev_child_start(md->loop, &c->cw);
	ev_timer_init(&c->kill, ndr_child_timeout, NDR_CMD_TIMEOUT_S, 0);
	c->kill.data = c;
	ev_timer_start(md->loop, &c->kill);
	return 0;
}

static const char *ndr_postfix_tool(const char *tool, char *buf, size_t bufsz)
{
	static const char *const dirs[] = {"/usr/sbin", "/usr/bin", "/sbin", "/usr/local/sbin"};
	for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
		snprintf(buf, bufsz, "%s/%s", dirs[i], tool);
		if (access(buf, X_OK) == 0)
			return buf;
	}
	snprintf(buf, bufsz, "/usr/sbin/%s", tool);
	return buf;
}

/* ---------------------------------------------------------------- holds */

static void ndr_hold_flush(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct ndr_mod *md = w->data;
	char tool[256];
	if (md->nhold == 0)
		return;
	size_t cap = md->nhold * (MAILLOG_MAX_QUEUE_ID + 2) + 1, o = 0;
	char *in = malloc(cap);
	if (in == NULL)
		return;
	for (size_t i = 0; i < md->nhold; i++)
		o += (size_t)snprintf(in + o, cap - o, "%s\n", md->holdq[i]);
	char *argv[8];
	size_t a = 0;
	bool own = md->conf->hold_command[0] != '\0';
	if (own) {
		argv[a++] = (char *)"/bin/sh";
		argv[a++] = (char *)"-c";
		argv[a++] = md->conf->hold_command;
	} else {
		argv[a++] = (char *)ndr_postfix_tool("postsuper", tool, sizeof(tool));
		if (md->pfdir[0]) {
			argv[a++] = (char *)"-c";
			argv[a++] = md->pfdir;
		}
		argv[a++] = (char *)"-h";
		argv[a++] = (char *)"-";
	}
	argv[a] = NULL;
	if (ndr_spawn(md, own ? "hold_command" : "postsuper", argv, NULL, in, o) == 0) {
		log_info("event=ndr_hold queue_ids=%zu command=%s", md->nhold,
		         own ? "hold_command" : "postsuper");
		metrics_inc(&ndr_m_holds, md->nhold);
	}
	free(in);
	md->nhold = 0;
}

static void ndr_act_hold(void *arg, const char *qid, const char *principal, const char *why)
{
	struct ndr_mod *md = arg;
	if (md->conf->dry_run) {
		log_info("event=ndr_hold queue_id=%s principal=%s why=%s dry_run=yes", qid,
		         principal, why);
		return;
	}
	if (!maillog_queue_id_valid(qid, strlen(qid)) || !strcmp(qid, "NOQUEUE"))
		return;
	log_info("event=ndr_hold queue_id=%s principal=%s why=%s", qid, principal, why);
	if (md->nhold == NDR_HOLD_BATCH)
		ndr_hold_flush(md->loop, &md->hold, 0);
	snprintf(md->holdq[md->nhold++], sizeof(md->holdq[0]), "%s", qid);
	if (!ev_is_active(&md->hold))
		ev_timer_start(md->loop, &md->hold);
}

struct ndr_hold_ctx {
	struct ndr_mod *md;
	const char *principal;
};

static void ndr_hold_each(void *arg, const char *qid)
{
	struct ndr_hold_ctx *h = arg;
	ndr_act_hold(h->md, qid, h->principal, "ndr_spike_queued");
}

/* ---------------------------------------------------------------- actions */

static void ndr_flag_done(void *arg, int rc, const char *id_or_error)
{
	char *who = arg;
	if (rc == 0)
		log_info("event=ndr_flag principal=%s flag=%s", who, id_or_error);
	else
		log_warn("event=ndr_flag principal=%s error=\"%s\"", who, id_or_error);
	free(who);
}

static void ndr_pause_done(void *arg, int rc, const char *id_or_error)
{
	if (rc != 0)
		log_warn("event=ndr_global_pause error=\"%s\"", id_or_error);
}

static const char *ndr_action_name(enum ndr_spike_action a)
{
	static const char *const n[] = {"flag", "defer", "hold", "warn"};
	return n[a];
}

/* A recipient's final outcome into the principal's anomaly profile (only
 * principals the policy check scores: SASL logins, trusted senders and
 * clients; not pickup uids or forwarding addresses). */
static void ndr_act_outcome(void *arg, const char *principal, enum ndr_kind kind, bool bounced,
                            int64_t t_us)
{
	(void)arg;
	if (kind == NDR_K_SASL || kind == NDR_K_SENDER || kind == NDR_K_CLIENT)
		anomaly_note_outcome(principal, bounced, t_us);
}

static void ndr_act_spike(void *arg, const struct ndr_spike *s)
{
	struct ndr_mod *md = arg;
	const struct ndr_conf *c = md->conf;
	struct log_kv kv;
	static const char *const scopes[] = {"principal", "domain", "global", "inbound",
	                                     "backscatter"};
	char num[64];

	log_kv_init(&kv, s->start ? "ndr_spike" : "ndr_spike_end");
	log_kv_str(&kv, "scope", scopes[s->scope]);
	log_kv_str(&kv, "name", s->name);
	if (s->scope == NDR_S_PRINCIPAL)
		log_kv_str(&kv, "kind", ndr_kind_name(s->kind));
	if (s->start) {
		log_kv_str(&kv, "what", s->what);
		log_kv_str(&kv, "window", s->window);
		log_kv_u64(&kv, "n", s->n);
		log_kv_u64(&kv, "failures", s->failures);
		snprintf(num, sizeof(num), "%.4f", s->bound);
		log_kv_str(&kv, "bound", num);
		snprintf(num, sizeof(num), "%.4f", s->threshold);
		log_kv_str(&kv, "threshold", num);
		snprintf(num, sizeof(num), "%.4f", s->baseline);
		log_kv_str(&kv, "baseline", num);
		if (s->scope == NDR_S_PRINCIPAL)
			log_kv_str(&kv, "action", ndr_action_name(c->spike_action));
		if (c->dry_run)
			log_kv_str(&kv, "dry_run", "yes");
		log_kv_str(&kv, "reason", s->reason);
	}
	log_kv_emit(&kv, s->start ? LOG_L_WARN : LOG_L_INFO);
	if (!s->start) {
		if (s->scope == NDR_S_GLOBAL && md->paused_by_us)
			log_warn("event=ndr_global_spike_end: outbound mail stays paused until "
			         "`policyctl resume`");
		return;
	}
	switch (s->scope) {
	case NDR_S_PRINCIPAL:
		metrics_inc(&ndr_m_spikes, 1);
		break;
	case NDR_S_DOMAIN:
		metrics_inc(&ndr_m_spikes_dom, 1);
		return;
	case NDR_S_GLOBAL:
		metrics_inc(&ndr_m_spikes_glob, 1);
		if (c->global_pause && !c->dry_run && !flag_paused(NULL)) {
			md->paused_by_us = true;
			log_warn("event=ndr_global_pause action=%s reason=\"%s\"",
			         c->global_pause_action == ACT_DEFER ? "defer" : "hold", s->reason);
			flag_pause(true, c->global_pause_action, "policyd:ndr", ndr_pause_done, md);
		}
		return;
	case NDR_S_INBOUND:
		metrics_inc(&ndr_m_spikes_in, 1);
		return;
	case NDR_S_BACKSCATTER:
		metrics_inc(&ndr_m_spikes_bs, 1);
		return;
	}
	if (c->dry_run)
		return;
	if (c->spike_action == NDR_ACT_FLAG) {
		char ev[FLAG_EVIDENCE_MAX];
		snprintf(ev, sizeof(ev), "%s\n%s", s->reason, s->evidence ? s->evidence : "");
		struct flag_request fr = {.account = s->name,
		                          .source = FLAG_SRC_NDR,
		                          .reason = s->reason,
		                          .evidence = ev,
		                          .score = 0,
		                          .duration_us = 0,
		                          .actor = "policyd:ndr"};
		char *who = strdup(s->name);
		flag_raise(&fr, ndr_flag_done, who);
	} else if (c->spike_action == NDR_ACT_HOLD) {
		struct ndr_hold_ctx h = {md, s->name};
		ndr_queued_of(md->nd, s->name, ndr_hold_each, &h);
	}
}

static void ndr_act_blocklist(void *arg, const char *list, const char *ip, const char *principal,
                              uint64_t suppressed, const char *evidence)
{
	struct ndr_mod *md = arg;
	struct log_kv kv;

	metrics_inc(&ndr_m_blocklist, 1);
	log_kv_init(&kv, "ndr_blocklist");
	log_kv_str(&kv, "list", list);
	log_kv_str(&kv, "ip", ip);
	log_kv_str(&kv, "principal", principal);
	log_kv_u64(&kv, "suppressed", suppressed);
	log_kv_str(&kv, "evidence", evidence);
	log_kv_emit(&kv, LOG_L_WARN);
	if (!md->conf->blocklist_command[0])
		return;
	char e_list[128], e_ip[96], e_pr[KEY_MAX + 24], e_sup[48], e_ev[1024];
	snprintf(e_list, sizeof(e_list), "POLICYD_LIST=%s", list);
	snprintf(e_ip, sizeof(e_ip), "POLICYD_IP=%s", ip);
	snprintf(e_pr, sizeof(e_pr), "POLICYD_PRINCIPAL=%s", principal);
	snprintf(e_sup, sizeof(e_sup), "POLICYD_SUPPRESSED=%llu", (unsigned long long)suppressed);
	snprintf(e_ev, sizeof(e_ev), "POLICYD_EVIDENCE=%s", evidence);
	char *env[] = {e_list, e_ip, e_pr, e_sup, e_ev, NULL};
	char *argv[] = {(char *)"/bin/sh", (char *)"-c", md->conf->blocklist_command, NULL};
	ndr_spawn(md, "blocklist_command", argv, env, evidence, strlen(evidence));
}

static void ndr_act_pickup_over(void *arg, const char *key, const char *qid)
{
	struct ndr_mod *md = arg;
	log_warn("event=ndr_pickup_limit key=\"%s\" queue_id=%s action=%s%s", key, qid,
	         md->conf->pickup_hold ? "hold" : "warn", md->conf->dry_run ? " dry_run=yes" : "");
}

/* ---------------------------------------------------------------- follower */

static void ndr_on_line(void *arg, const char *line, size_t len)
{
	struct ndr_mod *md = arg;
	ndr_feed_line(md->nd, line, len, ndr_wall_us());
}

static void ndr_on_note(void *arg, enum follow_note n, const char *detail)
{
	struct ndr_mod *md = arg;
	md->follow_notes++;
	if (n == FOLLOW_N_ERROR || n == FOLLOW_N_RESUME_LOST || n == FOLLOW_N_DELETED)
		log_warn("event=ndr_follow note=%s detail=\"%s\"", follow_note_name(n), detail);
	else
		log_info("event=ndr_follow note=%s detail=\"%s\"", follow_note_name(n), detail);
}

static int ndr_followers_start(struct ndr_mod *md, const struct follow_pos *resume, char *err,
                               size_t errsz)
{
	const struct ndr_conf *c = md->conf;
	struct follow_opts o;

	memset(&o, 0, sizeof(o));
	o.line = ndr_on_line;
	o.note = ndr_on_note;
	o.arg = md;
	o.cpu_share = c->log_cpu_share;
	o.max_line = md->cfg->max_line > MAILLOG_DEFAULT_MAX_LINE ? md->cfg->max_line
	                                                          : MAILLOG_DEFAULT_MAX_LINE;
	if (c->log_file[0]) {
		o.path = c->log_file;
		o.from_start = c->log_from_start;
		o.resume = resume;
		md->file = follow_file(md->loop, &o, err, errsz);
		if (md->file == NULL)
			return -1;
	}
	if (c->log_socket[0]) {
		o.path = NULL;
		o.socket = c->log_socket;
		o.socket_mode = c->log_socket_mode;
		o.resume = NULL;
		md->sock = follow_socket(md->loop, &o, err, errsz);
		if (md->sock == NULL)
			return -1;
	}
	return 0;
}

/* ---------------------------------------------------------------- state */

/* The follower's position as the state file keeps it: with the log's path. */
struct ndr_saved_pos {
	struct follow_pos pos;
	uint64_t path_hash; /* follow_hash() of log_file */
};

static void ndr_save_done(struct ev_loop *loop, ev_child *w, int revents)
{
	struct ndr_mod *md = w->data;
	ev_child_stop(loop, w);
	if (!WIFEXITED(w->rstatus) || WEXITSTATUS(w->rstatus) != 0)
		log_warn("event=ndr_save file=%s: the writer failed (status %d)", md->state_path,
		         w->rstatus);
	md->save_pid = 0;
}

static void ndr_save_now(struct ndr_mod *md, bool sync)
{
	struct ndr_saved_pos pos;
	char err[512];
	if (!md->state_path[0])
		return;
	memset(&pos, 0, sizeof(pos));
	if (!follow_position(md->file, &pos.pos))
		memset(&pos.pos, 0, sizeof(pos.pos));
	pos.path_hash = follow_hash(md->conf->log_file, strlen(md->conf->log_file));
	if (sync) {
		if (md->save_pid > 0) {
			int st;
			while (waitpid(md->save_pid, &st, 0) < 0 && errno == EINTR)
				;
			ev_child_stop(md->loop, &md->save_cw);
			md->save_pid = 0;
		}
		if (ndr_save(md->nd, chroot_path(md->state_path), &pos, sizeof(pos), err,
		             sizeof(err)) < 0)
			log_err("event=ndr_save error=\"%s\"", err);
		return;
	}
	if (md->save_pid > 0)
		return; /* the last one is still writing */
	pid_t pid = fork();
	if (pid < 0) {
		log_warn("event=ndr_save fork: %s: writing inline", strerror(errno));
		if (ndr_save(md->nd, chroot_path(md->state_path), &pos, sizeof(pos), err,
		             sizeof(err)) < 0)
			log_err("event=ndr_save error=\"%s\"", err);
		return;
	}
	if (pid == 0) {
		int rc = ndr_save(md->nd, chroot_path(md->state_path), &pos, sizeof(pos), err,
		                  sizeof(err));
		if (rc < 0)
			fprintf(stderr, "policyd: ndr state: %s\n", err);
		_exit(rc < 0 ? 1 : 0);
	}
	md->save_pid = pid;
	ev_child_init(&md->save_cw, ndr_save_done, pid, 0);
	md->save_cw.data = md;
	ev_child_start(md->loop, &md->save_cw);
}

static void ndr_on_save(struct ev_loop *loop, ev_timer *w, int revents)
{
	ndr_save_now(w->data, false);
}

static void ndr_on_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct ndr_mod *md = w->data;
	ndr_tick(md->nd, ndr_wall_us());
}

/* ---------------------------------------------------------------- queue watch */

static uint64_t ndr_count_files(const char *dir, int depth)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	uint64_t n = 0;
	char sub[4096];
	if (d == NULL)
		return 0;
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		bool isdir = e->d_type == DT_DIR;
		if (e->d_type == DT_UNKNOWN) {
			struct stat sb;
			snprintf(sub, sizeof(sub), "%s/%s", dir, e->d_name);
			isdir = lstat(sub, &sb) == 0 && S_ISDIR(sb.st_mode);
		}
		if (isdir) {
			if (depth < 4 &&
			    snprintf(sub, sizeof(sub), "%s/%s", dir, e->d_name) < (int)sizeof(sub))
				n += ndr_count_files(sub, depth + 1);
		} else
			n++;
	}
	closedir(d);
	return n;
}

static void ndr_queue_alert(struct ndr_mod *md, int64_t now)
{
	const struct ndr_conf *c = md->conf;
	bool size = c->deferred_max && md->q_deferred > c->deferred_max;
	if (size && !md->q_alert_size) {
		metrics_inc(&ndr_m_queue_alerts, 1);
		log_warn(
		    "event=ndr_queue_alert what=size deferred=%llu deferred_max=%llu active=%llu",
		    (unsigned long long)md->q_deferred, (unsigned long long)c->deferred_max,
		    (unsigned long long)md->q_active);
	} else if (!size && md->q_alert_size)
		log_info("event=ndr_queue_alert_end what=size deferred=%llu",
		         (unsigned long long)md->q_deferred);
	md->q_alert_size = size;
	/* growth: against the oldest sample inside the growth period */
	bool growth = false;
	uint64_t base = md->q_deferred;
	int64_t since = now;
	for (size_t i = 0; i < md->q_nhist; i++)
		if (md->q_hist[i].t >= now - (int64_t)c->deferred_growth_us &&
		    md->q_hist[i].t < since) {
			since = md->q_hist[i].t;
			base = md->q_hist[i].deferred;
		}
	if (c->deferred_growth && md->q_deferred > base &&
	    md->q_deferred - base > c->deferred_growth)
		growth = true;
	if (growth && !md->q_alert_growth) {
		metrics_inc(&ndr_m_queue_alerts, 1);
		log_warn("event=ndr_queue_alert what=growth deferred=%llu was=%llu seconds=%lld "
		         "deferred_growth=%llu",
		         (unsigned long long)md->q_deferred, (unsigned long long)base,
		         (long long)((now - since) / 1000000),
		         (unsigned long long)c->deferred_growth);
	} else if (!growth && md->q_alert_growth)
		log_info("event=ndr_queue_alert_end what=growth deferred=%llu",
		         (unsigned long long)md->q_deferred);
	md->q_alert_growth = growth;
	if (md->q_nhist == NDR_QHIST) {
		memmove(md->q_hist, md->q_hist + 1, sizeof(md->q_hist[0]) * (NDR_QHIST - 1));
		md->q_nhist--;
	}
	md->q_hist[md->q_nhist].t = now;
	md->q_hist[md->q_nhist].deferred = md->q_deferred;
	md->q_nhist++;
}

static void ndr_queue_read(struct ev_loop *loop, ev_io *w, int revents)
{
	struct ndr_mod *md = w->data;
	ssize_t n = read(md->q_fd, md->q_buf + md->q_len, sizeof(md->q_buf) - 1 - md->q_len);
	if (n > 0) {
		md->q_len += (size_t)n;
		if (md->q_len < sizeof(md->q_buf) - 1)
			return;
	} else if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return;
	ev_io_stop(loop, w);
	close(md->q_fd);
	md->q_fd = -1;
	md->q_buf[md->q_len] = '\0';
	unsigned long long a, d, h, i;
	int ok;
	if (sscanf(md->q_buf, "%d %llu %llu %llu %llu", &ok, &a, &d, &h, &i) == 5 && ok) {
		md->q_active = a;
		md->q_deferred = d;
		md->q_hold = h;
		md->q_incoming = i;
		md->q_when = ndr_wall_us();
		md->q_err_logged = false;
		ndr_queue_alert(md, md->q_when);
	} else if (!md->q_err_logged) {
		md->q_err_logged = true;
		log_warn("event=ndr_queue_watch dir=%s: cannot read the queue directories (run "
		         "policyd as root or a user that may read them)",
		         md->qdir);
	}
	md->q_len = 0;
}

static void ndr_queue_reaped(struct ev_loop *loop, ev_child *w, int revents)
{
	struct ndr_mod *md = w->data;
	ev_child_stop(loop, w);
	md->q_pid = 0;
}

static void ndr_on_queue(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct ndr_mod *md = w->data;
	int pfd[2];
	if (md->q_pid > 0 || md->q_fd >= 0 || !md->qdir[0])
		return;
	if (pipe2(pfd, O_CLOEXEC) < 0)
		return;
	pid_t pid = fork();
	if (pid < 0) {
		close(pfd[0]);
		close(pfd[1]);
		return;
	}
	if (pid == 0) {
		char p[4200], out[200];
		static const char *const qs[] = {"active", "deferred", "hold", "incoming"};
		unsigned long long v[4];
		int ok = 1;
		close(pfd[0]);
		for (int i = 0; i < 4; i++) {
			snprintf(p, sizeof(p), "%s/%s", chroot_path(md->qdir), qs[i]);
			if (access(p, R_OK | X_OK) != 0)
				ok = 0;
			v[i] = ndr_count_files(p, 0);
		}
		int l = snprintf(out, sizeof(out), "%d %llu %llu %llu %llu\n", ok, v[0], v[1], v[2],
		                 v[3]);
		if (write(pfd[1], out, (size_t)l) < 0)
			_exit(1);
		_exit(0);
	}
	close(pfd[1]);
	md->q_pid = pid;
	md->q_fd = pfd[0];
	md->q_len = 0;
	ev_io_init(&md->q_io, ndr_queue_read, md->q_fd, EV_READ);
	md->q_io.data = md;
	ev_io_start(loop, &md->q_io);
	ev_child_init(&md->q_cw, ndr_queue_reaped, pid, 0);
	md->q_cw.data = md;
	ev_child_start(loop, &md->q_cw);
}

/* ---------------------------------------------------------------- postconf */

/* `postconf -xh NAME...`: each output line into lines[] (malloc'ed); the count. */
static int ndr_postconf(const char *pfdir, const char *names, char *out, size_t outsz)
{
	char cmd[4608], tool[256];
	const char *pc = ndr_postfix_tool("postconf", tool, sizeof(tool));
	if (pfdir[0])
		snprintf(cmd, sizeof(cmd), "%s -c '%s' -xh %s 2>/dev/null", pc, pfdir, names);
	else
		snprintf(cmd, sizeof(cmd), "%s -xh %s 2>/dev/null", pc, names);
	FILE *p = popen(cmd, "r");
	if (p == NULL)
		return -1;
	size_t n = fread(out, 1, outsz - 1, p);
	out[n] = '\0';
	int st = pclose(p);
	return (WIFEXITED(st) && WEXITSTATUS(st) == 0) ? 0 : -1;
}

static void ndr_local_domains(struct ndr_mod *md)
{
	char out[16384];
	char *doms[1024];
	size_t nd = 0;
	if (ndr_postconf(md->pfdir, "mydestination virtual_mailbox_domains virtual_alias_domains",
	                 out, sizeof(out)) < 0) {
		log_warn("event=ndr_start: postconf%s%s failed: local domains unknown (set [ndr] "
		         "local_domains)",
		         md->pfdir[0] ? " -c " : "", md->pfdir);
		return;
	}
	for (char *save = NULL, *w = strtok_r(out, ", \t\n", &save); w && nd < 1024;
	     w = strtok_r(NULL, ", \t\n", &save))
		if (!strchr(w, ':') && !strchr(w, '/') && !strchr(w, '$'))
			doms[nd++] = w;
	ndr_set_local_domains(md->nd, doms, nd);
	log_info("event=ndr_start local_domains_from_postconf=%zu", nd);
}

/* ---------------------------------------------------------------- patterns */

static int ndr_read_file(const char *path, char **buf, size_t *len, char *err, size_t errsz)
{
	FILE *f = fopen(chroot_path(path), "rb"); /* a reload reads it inside the chroot */
	*buf = NULL;
	*len = 0;
	if (f == NULL) {
		snprintf(err, errsz, "patterns %s: %s", path, strerror(errno));
		return -1;
	}
	struct stat sb;
	if (fstat(fileno(f), &sb) < 0 || sb.st_size > NDR_MAX_PATTERN_FILE) {
		snprintf(err, errsz, "patterns %s: unreadable or larger than %u bytes", path,
		         NDR_MAX_PATTERN_FILE);
		fclose(f);
		return -1;
	}
	char *b = malloc((size_t)sb.st_size + 1);
	if (b == NULL) {
		fclose(f);
		snprintf(err, errsz, "out of memory");
		return -1;
	}
	size_t n = fread(b, 1, (size_t)sb.st_size, f);
	fclose(f);
	b[n] = '\0';
	*buf = b;
	*len = n;
	return 0;
}

struct classify_db *ndr_load_patterns(const struct ndr_conf *c, char **names, size_t *nnames,
                                      char *err, size_t errsz)
{
	struct classify_source src[NDR_MAX_LIST];
	memset(src, 0, sizeof(src));
	char *bufs[NDR_MAX_LIST] = {NULL};
	struct classify_diag diag;
	struct classify_db *db = NULL;
	size_t n = 0;

	*nnames = 0;
	for (; n < c->npatterns; n++) {
		if (ndr_read_file(c->patterns[n], &bufs[n], &src[n].len, err, errsz) < 0)
			goto out;
		names[n] = ndr_dup(c->patterns[n]);
		src[n].name = names[n];
		src[n].text = bufs[n];
	}
	*nnames = n;
	db = classify_db_load(src, n, &diag);
	if (db == NULL) {
		if (diag.line)
			snprintf(err, errsz, "patterns %s: line %zu: %s",
			         diag.source ? diag.source : "?", diag.line, diag.msg);
		else
			snprintf(err, errsz, "patterns %s: %s", diag.source ? diag.source : "?",
			         diag.msg);
	}
out:
	for (size_t i = 0; i < n; i++)
		free(bufs[i]);
	if (db == NULL) {
		for (size_t i = 0; i < *nnames; i++)
			free(names[i]);
		for (size_t i = *nnames; i < n; i++)
			free(names[i]);
		*nnames = 0;
	}
	return db;
}

/* ---------------------------------------------------------------- metrics */

static void ndr_collect_lines(struct metrics_out *o, void *arg)
{
	struct ndr_mod *md = arg;
	const struct ndr_counters *c = ndr_counters(md->nd);
	metrics_out_u64(o, "result=\"parsed\"", c->parsed);
	metrics_out_u64(o, "result=\"garbage\"", c->garbage);
	metrics_out_u64(o, "result=\"too_long\"", c->too_long);
	metrics_out_u64(o, "result=\"other\"", c->other);
}

static void ndr_collect_outcomes(struct metrics_out *o, void *arg)
{
	struct ndr_mod *md = arg;
	const struct ndr_counters *c = ndr_counters(md->nd);
	char l[96];
	for (size_t i = 1; i < CLASSIFY__COUNT; i++) {
		l[0] = '\0';
		metrics_label(l, sizeof(l), "class", classify_class_name((enum classify_class)i));
		metrics_out_u64(o, l, c->by_class[i]);
	}
}

static void ndr_collect_gauges(struct metrics_out *o, void *arg)
{
	struct ndr_mod *md = arg;
	metrics_out_u64(o, "table=\"queue_ids\"", ndr_queue_ids(md->nd));
	metrics_out_u64(o, "table=\"principals\"", ndr_principals(md->nd));
}

static void ndr_collect_queue(struct metrics_out *o, void *arg)
{
	struct ndr_mod *md = arg;
	if (md->q_when == 0)
		return;
	metrics_out_u64(o, "queue=\"active\"", md->q_active);
	metrics_out_u64(o, "queue=\"deferred\"", md->q_deferred);
	metrics_out_u64(o, "queue=\"hold\"", md->q_hold);
	metrics_out_u64(o, "queue=\"incoming\"", md->q_incoming);
}

static void ndr_collect_follow(struct metrics_out *o, void *arg)
{
	struct ndr_mod *md = arg;
	const struct follow *fs[] = {md->file, md->sock};
	const char *src[] = {"source=\"file\"", "source=\"socket\""};
	for (int i = 0; i < 2; i++)
		if (fs[i])
			metrics_out_u64(o, src[i], follow_stats(fs[i])->lines);
}

static void ndr_metrics_start(struct ndr_mod *md)
{
	metrics_counter_register(&ndr_m_spikes);
	metrics_counter_register(&ndr_m_spikes_dom);
	metrics_counter_register(&ndr_m_spikes_glob);
	metrics_counter_register(&ndr_m_spikes_in);
	metrics_counter_register(&ndr_m_spikes_bs);
	metrics_counter_register(&ndr_m_blocklist);
	metrics_counter_register(&ndr_m_holds);
	metrics_counter_register(&ndr_m_queue_alerts);
	metrics_register("policyd_ndr_log_lines_total", "Mail log lines read, by parse result.",
	                 METRICS_COUNTER_T, ndr_collect_lines, md);
	metrics_register("policyd_ndr_outcomes_total",
	                 "Delivery outcomes read from the mail log, by class.", METRICS_COUNTER_T,
	                 ndr_collect_outcomes, md);
	metrics_register("policyd_ndr_tracked", "Entries in the NDR tracker's tables.",
	                 METRICS_GAUGE_T, ndr_collect_gauges, md);
	metrics_register("policyd_postfix_queue_messages",
	                 "Messages in Postfix's queues (queue-size watcher).", METRICS_GAUGE_T,
	                 ndr_collect_queue, md);
	metrics_register("policyd_ndr_follow_lines_total", "Lines handed out by the log follower.",
	                 METRICS_COUNTER_T, ndr_collect_follow, md);
}

/* ---------------------------------------------------------------- life */

static void ndr_applied_free(struct ndr_mod *md)
{
	free(md->applied.log_file);
	free(md->applied.log_socket);
	free(md->applied.pf_server);
	free(md->applied.pf_ndr);
	free(md->applied.queue_dir);
	memset(&md->applied, 0, sizeof(md->applied));
}

static void ndr_applied_set(struct ndr_mod *md)
{
	ndr_applied_free(md);
	md->applied.log_file = ndr_dup(md->conf->log_file);
	md->applied.log_socket = ndr_dup(md->conf->log_socket);
	md->applied.pf_server = ndr_dup(md->cfg->postfix_config_dir);
	md->applied.pf_ndr = ndr_dup(md->conf->postfix_config_dir);
	md->applied.queue_dir = ndr_dup(md->conf->queue_dir);
	md->applied.queue_check = md->conf->queue_check_us != 0;
}

static void ndr_mod_free(struct ndr_mod *md)
{
	if (md == NULL)
		return;
	ndr_applied_free(md);
	follow_free(md->file);
	follow_free(md->sock);
	if (md->loop) {
		ev_timer_stop(md->loop, &md->tick);
		ev_timer_stop(md->loop, &md->save);
		ev_timer_stop(md->loop, &md->queue);
		ev_timer_stop(md->loop, &md->hold);
		if (md->q_fd >= 0) {
			ev_io_stop(md->loop, &md->q_io);
			close(md->q_fd);
		}
	}
	ndr_free(md->nd);
	classify_db_free(md->db);
	for (size_t i = 0; i < md->npattern_names; i++)
		free(md->pattern_names[i]);
	free(md->holdq);
	free(md);
}

static void ndr_resolve_dirs(struct ndr_mod *md)
{
	const struct ndr_conf *c = md->conf;
	const char *pf = c->postfix_config_dir[0]      ? c->postfix_config_dir
	                 : md->cfg->postfix_config_dir ? md->cfg->postfix_config_dir
	                                               : "";
	snprintf(md->pfdir, sizeof(md->pfdir), "%s", pf);
	md->qdir[0] = '\0';
	if (c->queue_check_us == 0)
		return;
	if (c->queue_dir[0]) {
		snprintf(md->qdir, sizeof(md->qdir), "%s", c->queue_dir);
		return;
	}
	char out[4096];
	if (ndr_postconf(md->pfdir, "queue_directory", out, sizeof(out)) == 0) {
		out[strcspn(out, "\n")] = '\0';
		if (out[0] == '/')
			snprintf(md->qdir, sizeof(md->qdir), "%s", out);
	}
	if (!md->qdir[0])
		log_warn("event=ndr_start: no queue_dir and postconf did not give "
		         "queue_directory: the queue-size watcher is off");
}

static int ndr_mod_start(struct module_ctx *m, char *err, size_t errsz)
{
	if (!config_section_present(m->cfg, &ndr_config_section))
		return 0;
	struct ndr_mod *md = calloc(1, sizeof(*md));
	if (md == NULL) {
		snprintf(err, errsz, "out of memory");
		return -1;
	}
	md->m = m;
	md->loop = m->loop;
	md->cfg = m->cfg;
	md->conf = config_section_get(m->cfg, &ndr_config_section);
	md->q_fd = -1;
	md->holdq = calloc(NDR_HOLD_BATCH, sizeof(*md->holdq));
	md->db = ndr_load_patterns(md->conf, md->pattern_names, &md->npattern_names, err, errsz);
	if (md->holdq == NULL || md->db == NULL) {
		ndr_mod_free(md);
		return -1;
	}
	struct ndr_actions act = {.spike = ndr_act_spike,
	                          .blocklist = ndr_act_blocklist,
	                          .hold = ndr_act_hold,
	                          .pickup_over = ndr_act_pickup_over,
	                          .outcome = ndr_act_outcome,
	                          .arg = md};
	md->nd = ndr_new(md->conf, md->cfg, md->db, &act);
	if (md->nd == NULL) {
		snprintf(err, errsz, "out of memory");
		ndr_mod_free(md);
		return -1;
	}
	ndr_resolve_dirs(md);
	if (md->conf->local_domains_postconf)
		ndr_local_domains(md);

	struct ndr_saved_pos pos;
	size_t poslen = 0;
	memset(&pos, 0, sizeof(pos));
	if (md->cfg->state_dir[0]) {
		char lerr[512];
		snprintf(md->state_path, sizeof(md->state_path), "%s/%s", md->cfg->state_dir,
		         NDR_STATE_NAME);
		if (ndr_load(md->nd, md->state_path, &pos, sizeof(pos), &poslen, lerr,
		             sizeof(lerr)) < 0) {
			/* a damaged state file: start empty rather than not at all */
			log_err(
			    "event=ndr_start state=%s error=\"%s\": starting with no NDR history",
			    md->state_path, lerr);
			ndr_free(md->nd);
			md->nd = ndr_new(md->conf, md->cfg, md->db, &act);
			if (md->nd == NULL) {
				snprintf(err, errsz, "out of memory");
				ndr_mod_free(md);
				return -1;
			}
			if (md->conf->local_domains_postconf)
				ndr_local_domains(md);
			poslen = 0;
		}
	}
	bool resume = poslen == sizeof(pos) && pos.pos.ino != 0;
	if (resume &&
	    pos.path_hash != follow_hash(md->conf->log_file, strlen(md->conf->log_file))) {
		log_info("event=ndr_start: the saved log position is for another log_file: "
		         "not used");
		resume = false;
	}
	if (ndr_followers_start(md, resume ? &pos.pos : NULL, err, errsz) < 0) {
		ndr_mod_free(md);
		return -1;
	}
	ev_timer_init(&md->tick, ndr_on_tick, 1.0, 1.0);
	md->tick.data = md;
	ev_timer_start(md->loop, &md->tick);
	double sv = (double)md->conf->save_us / 1e6;
	ev_timer_init(&md->save, ndr_on_save, sv, sv);
	md->save.data = md;
	if (md->state_path[0])
		ev_timer_start(md->loop, &md->save);
	ev_timer_init(&md->hold, ndr_hold_flush, 0.2, 0);
	md->hold.data = md;
	double qv = (double)md->conf->queue_check_us / 1e6;
	ev_timer_init(&md->queue, ndr_on_queue, 0.5, qv > 0 ? qv : 60);
	md->queue.data = md;
	if (md->qdir[0])
		ev_timer_start(md->loop, &md->queue);
	ndr_metrics_start(md);
	ndr_applied_set(md);
	ndr_mod = md;
	log_info("event=ndr_start log_file=%s log_socket=%s patterns=%zu rules=%zu state=%s "
	         "queue_dir=%s spike_action=%s",
	         md->conf->log_file[0] ? md->conf->log_file : "-",
	         md->conf->log_socket[0] ? md->conf->log_socket : "-", md->npattern_names,
	         classify_db_rules(md->db), md->state_path[0] ? md->state_path : "-",
	         md->qdir[0] ? md->qdir : "-", ndr_action_name(md->conf->spike_action));
	return 0;
}

static void ndr_mod_stop(struct module_ctx *m)
{
	struct ndr_mod *md = ndr_mod;
	if (md == NULL)
		return;
	ndr_hold_flush(md->loop, &md->hold, 0);
	/* some of the log that is already there is read before saving (at most
	 * ~100k lines: the rest is read after the restart, from the saved position) */
	if (md->file)
		for (int i = 0; i < 200 && follow_backlog(md->file); i++)
			follow_poll(md->file);
	ndr_save_now(md, true);
	for (size_t i = 0; i < NDR_MAX_CHILDREN; i++)
		if (md->child[i].used) {
			ev_child_stop(md->loop, &md->child[i].cw);
			ev_timer_stop(md->loop, &md->child[i].kill);
		}
	if (md->q_pid > 0)
		ev_child_stop(md->loop, &md->q_cw);
	metrics_unregister(md);
	ndr_mod = NULL;
	ndr_mod_free(md);
}

static bool ndr_str_list_eq(char *const *a, size_t na, char *const *b, size_t nb)
{
	if (na != nb)
		return false;
	for (size_t i = 0; i < na; i++)
		if (strcmp(a[i], b[i]))
			return false;
	return true;
}

static void ndr_mod_reload(struct module_ctx *m, const struct config *cfg)
{
	struct ndr_mod *md = ndr_mod;
	char err[512];
	if (md == NULL) {
		if (config_section_present(cfg, &ndr_config_section) &&
		    ndr_mod_start(m, err, sizeof(err)) < 0)
			log_err("event=ndr_reload error=\"%s\"", err);
		return;
	}
	if (!config_section_present(cfg, &ndr_config_section)) {
		log_info("event=ndr_reload: no [ndr] section any more: NDR tracking stops");
		md->cfg = cfg; /* the old one is freed; the stop reads the (default) new one */
		md->conf = config_section_get(cfg, &ndr_config_section);
		ndr_mod_stop(m);
		return;
	}
	/* md->cfg and md->conf are the old config, already freed: only md->applied */
	const struct ndr_conf *nc = config_section_get(cfg, &ndr_config_section);
	bool refollow = strcmp(nc->log_file, md->applied.log_file) ||
	                strcmp(nc->log_socket, md->applied.log_socket);
	if (!ndr_str_list_eq(nc->patterns, nc->npatterns, md->pattern_names, md->npattern_names)) {
		char *names[NDR_MAX_LIST];
		size_t nn;
		struct classify_db *db = ndr_load_patterns(nc, names, &nn, err, sizeof(err));
		if (db == NULL)
			log_err("event=ndr_reload error=\"%s\": keeping the running patterns", err);
		else {
			classify_db_free(md->db);
			for (size_t i = 0; i < md->npattern_names; i++)
				free(md->pattern_names[i]);
			md->db = db;
			memcpy(md->pattern_names, names, sizeof(names[0]) * nn);
			md->npattern_names = nn;
		}
	}
	struct follow_pos pos;
	/* the same file: resume exactly; another one: from its end (log_start) */
	bool havepos = refollow && !strcmp(nc->log_file, md->applied.log_file) &&
	               follow_position(md->file, &pos);
	const char *npf = cfg->postfix_config_dir ? cfg->postfix_config_dir : "";
	/* postconf runs again only when what it answers may have changed */
	bool dirs = strcmp(md->applied.pf_server, npf) ||
	            strcmp(md->applied.pf_ndr, nc->postfix_config_dir) ||
	            strcmp(md->applied.queue_dir, nc->queue_dir) ||
	            md->applied.queue_check != (nc->queue_check_us != 0);
	md->cfg = cfg;
	md->conf = nc;
	ndr_set_conf(md->nd, nc, cfg, md->db);
	if (dirs)
		ndr_resolve_dirs(md);
	if (refollow) {
		follow_free(md->file);
		follow_free(md->sock);
		md->file = md->sock = NULL;
		if (ndr_followers_start(md, havepos ? &pos : NULL, err, sizeof(err)) < 0)
			log_err("event=ndr_reload error=\"%s\"", err);
	}
	double sv = (double)nc->save_us / 1e6;
	ev_timer_stop(md->loop, &md->save);
	ev_timer_set(&md->save, sv, sv);
	if (md->state_path[0])
		ev_timer_start(md->loop, &md->save);
	double qv = (double)nc->queue_check_us / 1e6;
	ev_timer_stop(md->loop, &md->queue);
	ev_timer_set(&md->queue, 0.5, qv > 0 ? qv : 60);
	if (md->qdir[0])
		ev_timer_start(md->loop, &md->queue);
	ndr_applied_set(md);
	log_info("event=ndr_reload log_file=%s log_socket=%s refollow=%s",
	         nc->log_file[0] ? nc->log_file : "-", nc->log_socket[0] ? nc->log_socket : "-",
	         refollow ? "yes" : "no");
}

const struct module ndr_module = {
    .name = "ndr",
    .start = ndr_mod_start,
    .reload = ndr_mod_reload,
    .stop = ndr_mod_stop,
};

/* ================================================================ check */

void ndr_prepare(struct pipeline_ctx *x)
{
	(void)x; /* the NDR state is in memory: no store op */
}

static bool ndr_refused_so_far(const struct pipeline_ctx *x)
{
	for (size_t i = 0; i < x->v.nparts; i++)
		if (!x->v.part[i].dry_run &&
		    (x->v.part[i].action == ACT_DEFER || x->v.part[i].action == ACT_REJECT))
			return true;
	return x->refused;
}

void ndr_finish(struct pipeline_ctx *x)
{
	struct ndr_mod *md = ndr_mod;
	if (md == NULL)
		return;
	const struct proto_request *q = x->req;
	enum proto_state st = q->state;

	/* inbound NDR: a null sender to a local user */
	if (st == PROTO_STATE_RCPT && proto_get(q, PROTO_A_SENDER)[0] == '\0' && x->recipient[0] &&
	    !ndr_refused_so_far(x)) {
		char dom[KEY_MAX];
		key_norm_domain(dom, sizeof(dom), x->recipient);
		if (dom[0] && ndr_is_local_domain(md->nd, dom))
			ndr_note_inbound(md->nd, x->recipient, x->now_us);
	}
	if (!x->outbound || x->principal[0] == '\0')
		return;
	const char *qid = proto_get(q, PROTO_A_QUEUE_ID);
	if (qid[0] && (st == PROTO_STATE_RCPT || st == PROTO_STATE_DATA || st == PROTO_STATE_EOM)) {
		enum ndr_kind k = x->pkind == PRINCIPAL_SASL     ? NDR_K_SASL
		                  : x->pkind == PRINCIPAL_SENDER ? NDR_K_SENDER
		                                                 : NDR_K_CLIENT;
		ndr_note_queue_id(md->nd, qid, x->principal, k, x->now_us);
	}
	const char *why = NULL;
	enum ndr_spike_action a = md->conf->spike_action;
	if (a == NDR_ACT_FLAG || !ndr_spiking(md->nd, x->principal, &why))
		return;
	if (st != PROTO_STATE_RCPT && st != PROTO_STATE_DATA && st != PROTO_STATE_EOM)
		return;
	enum verdict_action va = a == NDR_ACT_DEFER  ? ACT_DEFER
	                         : a == NDR_ACT_HOLD ? ACT_HOLD
	                                             : ACT_WARN;
	struct verdict_part *p = verdict_add(&x->v, "ndr", "ndr-spike", va, md->conf->dry_run);
	if (p == NULL)
		return;
	snprintf(p->reason, sizeof(p->reason), "%s", why ? why : "NDR spike");
	if (md->conf->spike_reply[0])
		snprintf(p->text, sizeof(p->text), "%s", md->conf->spike_reply);
	else if (va == ACT_HOLD)
		snprintf(p->text, sizeof(p->text), "held: too many bounces from %.200s",
		         x->principal);
	else
		snprintf(p->text, sizeof(p->text),
		         "Outbound mail of %.200s is paused: too many bounces; contact support",
		         x->principal);
	if (md->conf->spike_dsn[0])
		snprintf(p->dsn, sizeof(p->dsn), "%s", md->conf->spike_dsn);
}

/* ================================================================ control */

void ndr_control(struct control_call *call)
{
	struct ndr_mod *md = ndr_mod;
	if (md == NULL) {
		control_error(call, "NDR tracking is off: the configuration has no [ndr] section");
		return;
	}
	json_t *rq = call->req.json;
	int64_t now = ndr_wall_us();
	if (json_is_true(json_object_get(rq, "clear"))) {
		if (!call->req.account[0]) {
			control_error(call, "ndr clear: which account?");
			return;
		}
		char acct[KEY_MAX];
		key_norm_login(acct, sizeof(acct), call->req.account,
		               md->cfg->keyopts.fold_localpart);
		bool known = ndr_clear(md->nd, acct, now);
		log_info("event=ndr_clear principal=%s by=%s known=%s", acct, call->actor,
		         known ? "yes" : "no");
		control_reply(call, json_pack("{ss sb}", "cleared", acct, "known", known));
		return;
	}
	/* "limit" (0: every principal), else "n" when given, else all */
	json_int_t lim = 0;
	if (json_is_integer(json_object_get(rq, "limit")))
		lim = json_integer_value(json_object_get(rq, "limit"));
	else if (json_object_get(rq, "n"))
		lim = (json_int_t)call->req.n;
	if (lim < 0)
		lim = 0;
	json_t *j = ndr_json(md->nd, now, (size_t)lim);
	if (j == NULL) {
		control_error(call, "out of memory");
		return;
	}
	if (call->req.account[0]) {
		/* one account only */
		char acct[KEY_MAX];
		key_norm_login(acct, sizeof(acct), call->req.account,
		               md->cfg->keyopts.fold_localpart);
		json_t *all = json_object_get(j, "principals"), *keep = json_array(), *v;
		size_t i;
		json_array_foreach(all, i, v)
		{
			const char *pn = json_string_value(json_object_get(v, "principal"));
			if (pn && !strcmp(pn, acct))
				json_array_append(keep, v);
		}
		json_object_set_new(j, "principals", keep);
	}
	json_t *fo = json_object();
	const struct follow *fs[] = {md->file, md->sock};
	const char *names[] = {"file", "socket"};
	for (int i = 0; i < 2; i++) {
		if (fs[i] == NULL)
			continue;
		const struct follow_stats *s = follow_stats(fs[i]);
		struct follow_pos pos;
		json_t *f = json_pack(
		    "{ss sI sI sI sI sI sI sI}", "path",
		    i ? md->conf->log_socket : md->conf->log_file, "lines", (json_int_t)s->lines,
		    "bytes", (json_int_t)s->bytes, "too_long", (json_int_t)s->too_long, "rotations",
		    (json_int_t)s->rotations, "truncations", (json_int_t)s->truncations,
		    "deletions", (json_int_t)s->deletions, "errors", (json_int_t)s->errors);
		if (f && follow_position(fs[i], &pos)) {
			json_object_set_new(f, "inode", json_integer((json_int_t)pos.ino));
			json_object_set_new(f, "offset", json_integer((json_int_t)pos.offset));
		}
		json_object_set_new(fo, names[i], f);
	}
	json_object_set_new(j, "follower", fo);
	if (md->q_when)
		json_object_set_new(
		    j, "queue",
		    json_pack("{sI sI sI sI sI sb sb}", "active", (json_int_t)md->q_active,
		              "deferred", (json_int_t)md->q_deferred, "hold",
		              (json_int_t)md->q_hold, "incoming", (json_int_t)md->q_incoming,
		              "checked", (json_int_t)(md->q_when / 1000000), "size_alert",
		              md->q_alert_size, "growth_alert", md->q_alert_growth));
	json_object_set_new(j, "spike_action",
	                    json_string(ndr_action_name(md->conf->spike_action)));
	control_reply(call, json_pack("{so}", "ndr", j));
}
