/*
 * tests/unit/test_config.c - unit tests of policyd/config.c (and of
 * server_parse_endpoint() from policyd/server.c, which checks the listen
 * endpoints config.c stores as given).
 *
 * Covers: the issue's contract config and contrib/postfix/policyd.conf load
 * as written; defaults of [server] and of a [limit]; every parameter with a
 * good and a bad value, each error naming FILE:LINE and the reason; unknown
 * sections and parameters, missing rate, missing [server], duplicate
 * [limit] names, scalars given twice, lines longer than inih's buffer;
 * config_parse_duration, config_parse_rate (suffixes, "100/h"), override
 * map files (exempt and rates, subject normalisation per key type, bad
 * lines, duplicates); listen endpoints; chroot = DIR (the value, and the
 * paths used after the chroot that must lie under it).
 *
 * Config files are temp files written by the test (mkstemp under /tmp) and
 * removed again.  contrib/postfix/policyd.conf is found through
 * POLICYD_SOURCE_ROOT when set, else from __FILE__ (meson compiles this file
 * as ../tests/unit/test_config.c relative to the build dir, where tests run).
 *
 * Tests of behaviour the code gets wrong today run only with
 * POLICYD_TEST_KNOWN_BUGS=1 and are skipped (with a message) otherwise.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "policyd/anomaly.h"
#include "policyd/chroot.h"
#include "policyd/config.h"
#include "policyd/config_section.h"
#include "policyd/dns.h"
#include "policyd/ndr.h"
#include "policyd/selfcheck.h"
#include "policyd/key.h"
#include "policyd/server.h"
#include "proto/request.h"

#define KNOWN_BUG(what)                                                                            \
	do {                                                                                       \
		if (getenv("POLICYD_TEST_KNOWN_BUGS") == NULL) {                                   \
			print_message("KNOWN BUG (skipped): %s\n", what);                          \
			skip();                                                                    \
		}                                                                                  \
	} while (0)

#define S  1000000ULL
#define MN (60 * S)
#define HR (3600 * S)
#define DY (86400 * S)

#define PATHSZ 64
#define ERRSZ  512

/* ------------------------------------------------------------ helpers */

/* Write text to a new temp file; its name goes to path. */
static void write_tmp(const char *text, char path[PATHSZ])
{
	snprintf(path, PATHSZ, "/tmp/policyd-test-XXXXXX");
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	size_t len = strlen(text);
	assert_int_equal(write(fd, text, len), (ssize_t)len);
	assert_int_equal(close(fd), 0);
}

/* Load text as a config; fails the test when it does not load. */
static struct config *load_ok(const char *text)
{
	char path[PATHSZ], err[ERRSZ] = "";
	write_tmp(text, path);
	struct config *c = config_load(path, err, sizeof(err));
	unlink(path);
	if (c == NULL)
		fail_msg("config did not load: %s\n--- config:\n%s---", err, text);
	return c;
}

/*
 * Load text as a config and expect an error that starts with "FILE:LINE: "
 * (line 0: "FILE: ") and contains reason.
 */
static void expect_error(const char *text, unsigned line, const char *reason)
{
	char path[PATHSZ], err[ERRSZ] = "", want[PATHSZ + 16];
	write_tmp(text, path);
	struct config *c = config_load(path, err, sizeof(err));
	unlink(path);
	if (c != NULL) {
		config_free(c);
		fail_msg(
		    "config loaded, want an error at line %u containing '%s'\n--- config:\n%s---",
		    line, reason, text);
	}
	if (line)
		snprintf(want, sizeof(want), "%s:%u: ", path, line);
	else
		snprintf(want, sizeof(want), "%s: ", path);
	if (strncmp(err, want, strlen(want)) != 0 || strstr(err, reason) == NULL)
		fail_msg("error '%s'\nwant '%s...%s...'\n--- config:\n%s---", err, want, reason,
		         text);
}

/* Like expect_error, without checking the line number. */
static void expect_error_reason(const char *text, const char *reason)
{
	char path[PATHSZ], err[ERRSZ] = "";
	write_tmp(text, path);
	struct config *c = config_load(path, err, sizeof(err));
	unlink(path);
	if (c != NULL) {
		config_free(c);
		fail_msg("config loaded, want an error containing '%s'\n--- config:\n%s---", reason,
		         text);
	}
	if (strncmp(err, path, strlen(path)) != 0 || err[strlen(path)] != ':' ||
	    strstr(err, reason) == NULL)
		fail_msg("error '%s'\nwant '%s:...%s...'\n--- config:\n%s---", err, path, reason,
		         text);
}

static void expect_win(const struct gcra_window *w, uint64_t limit, uint64_t period_us)
{
	assert_int_equal(w->limit, limit);
	assert_int_equal(w->period_us, period_us);
}

/* ------------------------------------------------ the files as written */

static const char contract_conf[] =
    "[server]\n"
    "listen = inet:127.0.0.1:10031, unix:/var/spool/postfix/private/policyd\n"
    "store = memory\n"
    "state_dir = /var/lib/policyd\n"
    "\n"
    "[limit per-account-recipients]\n"
    "key = sasl_username\n"
    "count = recipients\n"
    "rate = 100/1h, 1000/1d\n"
    "action = defer\n";

static void test_contract_config(void **state)
{
	(void)state;
	struct config *c = load_ok(contract_conf);
	assert_int_equal(c->nlisten, 2);
	assert_string_equal(c->listen[0], "inet:127.0.0.1:10031");
	assert_string_equal(c->listen[1], "unix:/var/spool/postfix/private/policyd");
	assert_string_equal(c->store, "memory");
	assert_string_equal(c->state_dir, "/var/lib/policyd");
	assert_int_equal(c->nrules, 1);
	const struct rule *r = &c->rules[0];
	assert_string_equal(r->name, "per-account-recipients");
	assert_int_equal(r->key, KEY_SASL_USERNAME);
	assert_int_equal(r->count, COUNT_RECIPIENTS);
	assert_int_equal(r->nwin, 2);
	expect_win(&r->win[0], 100, 3600000000ULL);
	expect_win(&r->win[1], 1000, 86400000000ULL);
	assert_int_equal(r->action, ACT_DEFER);
	assert_false(r->dry_run);
	assert_int_equal(r->novr, 0);
	/* every endpoint is one server_parse_endpoint takes */
	for (size_t i = 0; i < c->nlisten; i++) {
		char host[256], port[16], err[256];
		int fam;
		assert_int_equal(server_parse_endpoint(c->listen[i], &fam, host, sizeof(host), port,
		                                       sizeof(port), err, sizeof(err)),
		                 0);
	}
	config_free(c);
}

/* contrib/postfix/policyd.conf in the source tree. */
static void contrib_path(char *out, size_t outsz)
{
	static const char self[] = "tests/unit/test_config.c";
	const char *root = getenv("POLICYD_SOURCE_ROOT");

	if (root && *root) {
		snprintf(out, outsz, "%s/contrib/postfix/policyd.conf", root);
		return;
	}
	const char *file = __FILE__;
	size_t flen = strlen(file), slen = strlen(self);
	assert_true(flen >= slen);
	assert_string_equal(&file[flen - slen], self);
	snprintf(out, outsz, "%.*scontrib/postfix/policyd.conf", (int)(flen - slen), file);
}

static void test_contrib_config(void **state)
{
	char path[4096], err[ERRSZ] = "";

	(void)state;
	contrib_path(path, sizeof(path));
	if (access(path, R_OK) != 0)
		fail_msg("%s not found: run from the build dir or set POLICYD_SOURCE_ROOT", path);
	struct config *c = config_load(path, err, sizeof(err));
	if (c == NULL)
		fail_msg("%s", err);
	assert_int_equal(c->nlisten, 1);
	assert_string_equal(c->listen[0], "inet:127.0.0.1:10031");
	assert_string_equal(c->log_target, "syslog");
	assert_int_equal(c->log_decisions, 2);
	assert_int_equal(c->hooks, HOOK_RCPT | HOOK_EOM);
	assert_int_equal(c->ntrusted, 2);
	assert_true(key_addr_in("127.0.0.5", c->trusted, c->ntrusted));
	assert_true(key_addr_in("::1", c->trusted, c->ntrusted));
	assert_false(key_addr_in("192.0.2.1", c->trusted, c->ntrusted));
	assert_string_equal(c->fallback_action, "DUNNO");
	assert_int_equal(c->idle_timeout_s, 3600);
	assert_int_equal(c->nrules, 4);
	assert_string_equal(c->rules[0].name, "per-account-recipients");
	assert_non_null(c->rules[0].reply);
	assert_string_equal(c->rules[2].name, "per-account-bytes");
	assert_int_equal(c->rules[2].count, COUNT_BYTES);
	assert_int_equal(c->rules[2].nwin, 1);
	expect_win(&c->rules[2].win[0], 200ULL * 1024 * 1024, DY);
	assert_int_equal(c->rules[2].action, ACT_HOLD);
	assert_true(c->rules[2].dry_run);
	assert_int_equal(c->rules[3].key, KEY_SENDER);
	config_free(c);
}

/* ------------------------------------------------------------ defaults */

static void test_defaults(void **state)
{
	(void)state;
	struct config *c = load_ok("[server]\nstore = memory\n\n[limit r]\nrate = 10/1m\n");
	assert_int_equal(c->nlisten, 1);
	assert_string_equal(c->listen[0], "inet:127.0.0.1:10031");
	assert_string_equal(c->store, "memory");
	assert_string_equal(c->state_dir, "/var/lib/policyd");
	assert_null(c->pid_file);
	assert_string_equal(c->log_target, "syslog");
	assert_string_equal(c->log_facility, "mail");
	assert_int_equal(c->log_decisions, 2);
	assert_false(c->debug);
	assert_int_equal(c->hooks, HOOK_RCPT | HOOK_EOM);
	assert_string_equal(c->fallback_action, "DUNNO");
	assert_int_equal(c->idle_timeout_s, 3600);
	assert_int_equal(c->max_connections, 4096);
	assert_int_equal(c->max_request, PROTO_DEFAULT_MAX_REQUEST);
	assert_int_equal(c->max_line, PROTO_DEFAULT_MAX_LINE);
	assert_int_equal(c->max_attrs, PROTO_DEFAULT_MAX_ATTRS);
	assert_int_equal(c->ntrusted, 0);
	assert_string_equal(c->keyopts.delimiters, "+");
	assert_true(c->keyopts.fold_localpart);
	assert_int_equal(c->max_keys, 0);
	assert_int_equal(c->socket_mode, 0660);

	assert_int_equal(c->nrules, 1);
	const struct rule *r = &c->rules[0];
	assert_string_equal(r->name, "r");
	assert_int_equal(r->key, KEY_SASL_USERNAME);
	assert_int_equal(r->count, COUNT_RECIPIENTS);
	assert_int_equal(r->nwin, 1);
	expect_win(&r->win[0], 10, MN);
	assert_int_equal(r->action, ACT_DEFER);
	assert_false(r->dry_run);
	assert_int_equal(r->scope, SCOPE_OUTBOUND);
	assert_int_equal(r->prefix4, 24);
	assert_int_equal(r->prefix6, 64);
	assert_null(r->reply);
	assert_string_equal(r->dsn, "");
	assert_null(r->overrides_path);
	assert_int_equal(r->novr, 0);
	assert_null(config_override(r, "alice"));
	config_free(c);
	config_free(NULL);
}

static void test_every_parameter(void **state)
{
	(void)state;
	struct config *c = load_ok("; a comment\n"
	                           "# another\n"
	                           "[server]\n"
	                           "listen = inet:[::1]:10031\n"
	                           "listen = unix:/run/policyd/a,unix:/run/policyd/b\n"
	                           "   inet:127.0.0.1:10032\n"
	                           "store = memory\n"
	                           "state_dir =\n"
	                           "pid_file = /run/policyd.pid\n"
	                           "log = stderr\n"
	                           "log_facility = local3\n"
	                           "log_decisions = actions\n"
	                           "debug = yes\n"
	                           "max_connections = 100\n"
	                           "idle_timeout = 5m\n"
	                           "max_request = 4096\n"
	                           "max_line = 1000\n"
	                           "max_attrs = 32\n"
	                           "fallback_action = 451 4.3.5 Try later\n"
	                           "hooks = rcpt data end-of-message\n"
	                           "trusted_networks = 10.0.0.0/8 [2001:db8::]/32,192.0.2.1\n"
	                           "recipient_delimiter = +-\n"
	                           "fold_localpart = no\n"
	                           "max_keys = 1000000\n"
	                           "socket_mode = 0600\n"
	                           "\n"
	                           "[limit a.b_c-1]\n"
	                           "key = client_network\n"
	                           "count = messages\n"
	                           "rate = 5/30s, 10k/1h, 2M/1d, 1G/1w\n"
	                           "action = reject\n"
	                           "reply = Slow down, héllo\n"
	                           "dsn = 5.7.28\n"
	                           "dry_run = true\n"
	                           "scope = all\n"
	                           "prefix4 = 16\n"
	                           "prefix6 = 48\n"
	                           "[limit w]\n"
	                           "key = principal\n"
	                           "count = bytes\n"
	                           "rate = 100/h\n"
	                           "action = warn\n"
	                           "dry_run = off\n");
	assert_int_equal(c->nlisten, 4);
	assert_string_equal(c->listen[0], "inet:[::1]:10031");
	assert_string_equal(c->listen[1], "unix:/run/policyd/a");
	assert_string_equal(c->listen[2], "unix:/run/policyd/b");
	assert_string_equal(c->listen[3], "inet:127.0.0.1:10032");
	assert_string_equal(c->state_dir, "");
	assert_string_equal(c->pid_file, "/run/policyd.pid");
	assert_string_equal(c->log_target, "stderr");
	assert_string_equal(c->log_facility, "local3");
	assert_int_equal(c->log_decisions, 1);
	assert_true(c->debug);
	assert_int_equal(c->max_connections, 100);
	assert_int_equal(c->idle_timeout_s, 300);
	assert_int_equal(c->max_request, 4096);
	assert_int_equal(c->max_line, 1000);
	assert_int_equal(c->max_attrs, 32);
	assert_string_equal(c->fallback_action, "451 4.3.5 Try later");
	assert_int_equal(c->hooks, HOOK_RCPT | HOOK_DATA | HOOK_EOM);
	assert_int_equal(c->ntrusted, 3);
	assert_true(key_addr_in("10.20.30.40", c->trusted, c->ntrusted));
	assert_true(key_addr_in("2001:db8:5::1", c->trusted, c->ntrusted));
	assert_true(key_addr_in("192.0.2.1", c->trusted, c->ntrusted));
	assert_false(key_addr_in("192.0.2.2", c->trusted, c->ntrusted));
	assert_string_equal(c->keyopts.delimiters, "+-");
	assert_false(c->keyopts.fold_localpart);
	assert_int_equal(c->max_keys, 1000000);
	assert_int_equal(c->socket_mode, 0600);
	assert_int_equal(c->nrules, 2);
	const struct rule *r = &c->rules[0];
	assert_string_equal(r->name, "a.b_c-1");
	assert_int_equal(r->key, KEY_CLIENT_NETWORK);
	assert_int_equal(r->count, COUNT_MESSAGES);
	assert_int_equal(r->nwin, 4);
	expect_win(&r->win[0], 5, 30 * S);
	expect_win(&r->win[1], 10 * 1024, HR);
	expect_win(&r->win[2], 2 * 1024 * 1024, DY);
	expect_win(&r->win[3], 1024ULL * 1024 * 1024, 7 * DY);
	assert_int_equal(r->action, ACT_REJECT);
	assert_string_equal(r->reply, "Slow down, héllo");
	assert_string_equal(r->dsn, "5.7.28");
	assert_true(r->dry_run);
	assert_int_equal(r->scope, SCOPE_ALL);
	assert_int_equal(r->prefix4, 16);
	assert_int_equal(r->prefix6, 48);
	r = &c->rules[1];
	assert_string_equal(r->name, "w");
	assert_int_equal(r->key, KEY_PRINCIPAL);
	assert_int_equal(r->count, COUNT_BYTES);
	expect_win(&r->win[0], 100, HR);
	assert_int_equal(r->action, ACT_WARN);
	assert_false(r->dry_run);
	assert_string_equal(config_action_name(r->action), "warn");
	assert_string_equal(config_count_name(r->count), "bytes");
	config_free(c);

	/* actions and counts by name */
	assert_string_equal(config_action_name(ACT_DUNNO), "dunno");
	assert_string_equal(config_action_name(ACT_DEFER), "defer");
	assert_string_equal(config_action_name(ACT_REJECT), "reject");
	assert_string_equal(config_action_name(ACT_HOLD), "hold");
	assert_string_equal(config_count_name(COUNT_RECIPIENTS), "recipients");
	assert_string_equal(config_count_name(COUNT_MESSAGES), "messages");
}

static void test_crlf_and_blanks(void **state)
{
	(void)state;
	struct config *c = load_ok("[server]\r\n"
	                           "  store   =   memory  \r\n"
	                           "\r\n"
	                           "[limit r]\r\n"
	                           "rate=1/1s\r\n"
	                           "action=hold\r\n");
	assert_string_equal(c->store, "memory");
	assert_int_equal(c->nrules, 1);
	expect_win(&c->rules[0].win[0], 1, S);
	assert_int_equal(c->rules[0].action, ACT_HOLD);
	config_free(c);
}

/* ------------------------------------------------------------ errors */

struct bad_value {
	bool limit;       /* in a [limit] section (else [server]) */
	const char *line; /* the bad line */
	const char *reason;
};

/* The bad line is line 3 in [server], line 6 in [limit r]. */
static void expect_bad_value(const struct bad_value *b)
{
	char text[1024];
	if (b->limit)
		snprintf(
		    text, sizeof(text),
		    "[server]\nstore = memory\n\n[limit r]\nrate = 10/1h\n%s\naction = defer\n",
		    b->line);
	else
		snprintf(text, sizeof(text), "[server]\nsocket_mode = 0660\n%s\nstate_dir = /x\n",
		         b->line);
	expect_error(text, b->limit ? 6 : 3, b->reason);
}

static void test_bad_values(void **state)
{
	static const struct bad_value bad[] = {
	    {false, "bogus = 1", "unknown parameter 'bogus' in [server]"},
	    {false, "rate = 1/1h", "unknown parameter 'rate' in [server]"},
	    {false, "store = redis", "store: 'redis'"},
	    {false, "log = file", "log: 'file'"},
	    {false, "log_decisions = some", "log_decisions: 'some'"},
	    {false, "debug = maybe", "debug: 'maybe'"},
	    {false, "max_connections = 0", "max_connections: '0'"},
	    {false, "max_connections = 1000001", "max_connections"},
	    {false, "max_connections = 10abc", "max_connections: '10abc'"},
	    {false, "max_connections = -1", "max_connections"},
	    {false, "max_connections =", "max_connections"},
	    {false, "idle_timeout = 0", "idle_timeout: bad duration '0'"},
	    {false, "idle_timeout = soon", "idle_timeout: bad duration 'soon'"},
	    {false, "max_request = 1023", "max_request"},
	    {false, "max_line = 255", "max_line"},
	    {false, "max_attrs = 7", "max_attrs"},
	    {false, "max_attrs = 1025", "max_attrs"},
	    {false, "fallback_action = BLAH", "fallback_action: 'BLAH'"},
	    {false, "fallback_action =", "fallback_action"},
	    {false, "hooks = data", "hooks: must include rcpt"},
	    {false, "hooks = eom, data", "hooks: must include rcpt"},
	    {false, "hooks = rcpt, connect", "hooks: unknown hook 'connect'"},
	    {false, "hooks =", "hooks: must include rcpt"},
	    {false, "trusted_networks = 10.0.0.0/33", "trusted_networks: '10.0.0.0/33'"},
	    {false, "trusted_networks = 127.0.0.1, localhost", "trusted_networks: 'localhost'"},
	    {false, "recipient_delimiter = +-=_.~!@", "recipient_delimiter"},
	    {false, "fold_localpart = sometimes", "fold_localpart"},
	    {false, "max_keys = lots", "max_keys"},
	    {false, "socket_mode = 0999", "socket_mode"},
	    {false, "socket_mode = 1777", "socket_mode"},
	    {false, "redis_wait_replicas = 17", "redis_wait_replicas: '17' (0 .. 16)"},
	    {false, "redis_wait_replicas = -1", "redis_wait_replicas: '-1'"},
	    {false, "redis_wait_replicas = one", "redis_wait_replicas: 'one'"},
	    {false, "redis_wait_timeout = 11s", "redis_wait_timeout: '11s' (1ms .. 10s)"},
	    {false, "redis_wait_timeout = 0", "redis_wait_timeout: '0'"},
	    {false, "garbage", "syntax error"},
	    {false, "[limit r", "syntax error"},
	    {true, "frobnicate = yes", "unknown parameter 'frobnicate' in [limit r]"},
	    {true, "listen = inet:127.0.0.1:1", "unknown parameter 'listen' in [limit r]"},
	    {true, "key = recipient", "key: 'recipient'"},
	    {true, "key = SASL_USERNAME", "key: 'SASL_USERNAME'"},
	    {true, "count = mails", "count: 'mails'"},
	    {true, "action = drop", "action: 'drop'"},
	    {true, "action = dunno", "action: 'dunno'"},
	    {true, "action = DEFER", "action: 'DEFER'"},
	    {true, "reply = \xff\xfe", "reply: must be UTF-8"},
	    {true, "dsn = 4.7", "dsn: '4.7'"},
	    {true, "dsn = 4.7.1 text", "dsn"},
	    {true, "dry_run = perhaps", "dry_run: 'perhaps'"},
	    {true, "scope = inbound", "scope: 'inbound'"},
	    {true, "prefix4 = 0", "prefix4: '0'"},
	    {true, "prefix4 = 33", "prefix4: '33'"},
	    {true, "prefix6 = 129", "prefix6: '129'"},
	    {true, "prefix6 = /64", "prefix6"},
	    {true, "garbage line", "syntax error"},
	};

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		expect_bad_value(&bad[i]);
}

/* redis_wait_replicas: 1 on a cluster, 0 on a lone server, unless set. */
static void test_redis_wait(void **state)
{
	(void)state;
	struct config *c = load_ok("[server]\nstore = redis-cluster://127.0.0.1:7000\n");
	assert_int_equal(c->redis_wait_replicas, 1);
	assert_int_equal(c->redis_wait_timeout_ms, 100);
	config_free(c);
	c = load_ok("[server]\nstore = redis://127.0.0.1:6379\n");
	assert_int_equal(c->redis_wait_replicas, 0);
	config_free(c);
	c = load_ok("[server]\nstore = memory\n");
	assert_int_equal(c->redis_wait_replicas, 0);
	config_free(c);
	c = load_ok("[server]\nstore = redis://127.0.0.1:6379\nredis_wait_replicas = 2\n"
	            "redis_wait_timeout = 250ms\n");
	assert_int_equal(c->redis_wait_replicas, 2);
	assert_int_equal(c->redis_wait_timeout_ms, 250);
	config_free(c);
	c = load_ok("[server]\nstore = redis-cluster://127.0.0.1:7000\nredis_wait_replicas = 0\n");
	assert_int_equal(c->redis_wait_replicas, 0);
	config_free(c);
}

static void test_bad_rates(void **state)
{
	static const struct {
		const char *rate, *reason;
	} bad[] = {
	    {"3/1x", "rate: bad rate period '1x'"},
	    {"0/1h", "rate: bad rate count '0'"},
	    {"abc", "rate: bad rate 'abc'"},
	    {"10/0s", "rate: bad rate period '0s'"},
	    {"10/0", "rate: bad rate period"},
	    {"1/1s, 2/1m, 3/1h, 4/1d, 5/1w", "rate: too many windows"},
	    {"10/1h, 20/60m", "rate: two windows with the same period"},
	    {"10/1d, 20/24h", "rate: two windows with the same period"},
	    {"10/1h, 20/1h", "rate: two windows with the same period"},
	    {"", "rate: empty rate"},
	    {" , ", "rate: empty rate"},
	    {"10/367d", "rate: bad rate period"},
	    {"-1/1h", "rate: bad rate count"},
	    {"1.5/1h", "rate: bad rate count"},
	    {"10kb/1h", "rate: bad rate count"},
	    {"/1h", "rate: bad rate count"},
	    {"10/", "rate: bad rate period"},
	    {"10/1h/2", "rate: bad rate period"},
	    {"10 per hour", "rate: bad rate"},
	};
	char line[128];

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		/* rate is line 7: after key and count */
		char text[512];
		snprintf(line, sizeof(line), "rate = %s", bad[i].rate);
		snprintf(
		    text, sizeof(text),
		    "[server]\nstore = memory\n\n[limit r]\nkey = sender\ncount = messages\n%s\n",
		    line);
		expect_error(text, 7, bad[i].reason);
	}
}

static void test_structure_errors(void **state)
{
	(void)state;
	/* missing [server]: no line to name */
	expect_error("[limit r]\nrate = 1/1h\n", 0, "missing [server] section");
	expect_error("", 0, "missing [server] section");
	expect_error("# only a comment\n", 0, "missing [server] section");
	/* a key before any section */
	expect_error("store = memory\n[server]\n", 1, "'store' outside of any section");
	/* [server] twice */
	expect_error_reason("[server]\nstore = memory\n[limit r]\nrate = 1/1h\n[server]\n"
	                    "debug = no\n",
	                    "[server] given twice");
	/* scalars of [limit] given twice name the second line */
	expect_error("[server]\nstore = memory\n[limit r]\nkey = sender\nrate = 1/1h\n"
	             "key = sender\n",
	             6, "'key' given twice in [limit r]");
	expect_error("[server]\nstore = memory\n[limit r]\nrate = 1/1h\ncount = messages\n"
	             "action = defer\naction = hold\n",
	             7, "'action' given twice in [limit r]");
	expect_error("[server]\nstore = memory\n[limit r]\nrate = 1/1h\nrate = 2/1h\n", 5,
	             "'rate' given twice in [limit r]");
	expect_error("[server]\nstore = memory\n[limit r]\ncount = bytes\nrate = 1/1h\n"
	             "count = bytes\n",
	             6, "'count' given twice");
	/* twice in two different rules is fine */
	struct config *c = load_ok("[server]\nstore = memory\n[limit a]\nrate = 1/1h\n"
	                           "[limit b]\nrate = 1/1h\n");
	assert_int_equal(c->nrules, 2);
	config_free(c);
	/* max_line must leave room in max_request */
	expect_error_reason("[server]\nmax_request = 2048\nmax_line = 4096\n",
	                    "max_line (4096) must be smaller than max_request (2048)");
	/* unopenable file */
	char err[ERRSZ];
	assert_null(config_load("/nonexistent/policyd.conf", err, sizeof(err)));
	assert_non_null(strstr(err, "/nonexistent/policyd.conf: "));
	/* a tiny error buffer: cut, terminated */
	char tiny[8];
	assert_null(config_load("/nonexistent/policyd.conf", tiny, sizeof(tiny)));
	assert_int_equal(strlen(tiny), 7);
}

/* Section errors: the reason (the line is checked in test_section_header_lines). */
static void test_section_errors(void **state)
{
	(void)state;
	expect_error_reason("[server]\nstore = memory\n[bogus]\nx = 1\n",
	                    "unknown section [bogus]");
	expect_error_reason("[server]\nstore = memory\n[limit]\nrate = 1/1h\n",
	                    "[limit NAME]: a name of 1 to 63 characters");
	expect_error_reason("[server]\nstore = memory\n[limit a b]\nrate = 1/1h\n",
	                    "[limit a b]: names use letters");
	expect_error_reason("[server]\nstore = memory\n[limit ]\nrate = 1/1h\n",
	                    "a name of 1 to 63 characters");
	/* 43 characters: the longest name inih keeps whole (see test_long_rule_names) */
	struct config *c = load_ok("[server]\nstore = memory\n"
	                           "[limit a234567890123456789012345678901234567890123]\n"
	                           "rate = 1/1h\n");
	assert_string_equal(c->rules[0].name, "a234567890123456789012345678901234567890123");
	config_free(c);
	/* duplicate rule names, not next to each other */
	expect_error_reason("[server]\nstore = memory\n[limit a]\nrate = 1/1h\n[limit b]\n"
	                    "rate = 1/1h\n[limit a]\nrate = 1/1d\n",
	                    "[limit a] given twice");
	/* missing rate: in the middle and at the end of the file */
	expect_error_reason("[server]\nstore = memory\n[limit a]\nkey = sender\n[limit b]\n"
	                    "rate = 1/1h\n",
	                    "[limit a] has no 'rate'");
	expect_error_reason("[server]\nstore = memory\n[limit a]\nrate = 1/1h\n[limit b]\n"
	                    "key = sender\n",
	                    "[limit b] has no 'rate'");
	/* a 64th rule is fine, a 65th is not */
	char text[8192];
	size_t n = (size_t)snprintf(text, sizeof(text), "[server]\nstore = memory\n");
	for (int i = 0; i < CONFIG_MAX_RULES; i++)
		n += (size_t)snprintf(text + n, sizeof(text) - n, "[limit r%d]\nrate = 1/1h\n", i);
	c = load_ok(text);
	assert_int_equal(c->nrules, CONFIG_MAX_RULES);
	config_free(c);
	snprintf(text + n, sizeof(text) - n, "[limit one-too-many]\nrate = 1/1h\n");
	expect_error_reason(text, "too many [limit] sections");
}

static void test_long_rule_names(void **state)
{
	(void)state;
	expect_error_reason("[server]\nstore = memory\n[limit "
	                    "a234567890123456789012345678901234567890123456789012345678901234]\n"
	                    "rate = 1/1h\n",
	                    "[limit");
	struct config *c = load_ok("[server]\nstore = memory\n"
	                           "[limit a2345678901234567890123456789012345678901234567890]\n"
	                           "rate = 1/1h\n");
	assert_string_equal(c->rules[0].name, "a2345678901234567890123456789012345678901234567890");
	config_free(c);
}

/* Errors of a section must name its header line, wherever its first key is. */
static void test_section_header_lines(void **state)
{
	(void)state;
	/* missing rate: header on line 4, first key on line 6 */
	expect_error("[server]\nstore = memory\n\n[limit a]\n# a comment\nkey = sender\n", 4,
	             "[limit a] has no 'rate'");
	expect_error("[server]\nstore = memory\n[bogus]\n\nx = 1\n", 3, "unknown section [bogus]");
	expect_error("[server]\nstore = memory\n[limit a]\nrate = 1/1h\n[limit a]\n\nrate = 1/1d\n",
	             5, "[limit a] given twice");
	expect_error("[server]\nstore = memory\n[limit a b]\n# c\nrate = 1/1h\n", 3,
	             "names use letters");
	expect_error("[server]\nstore = memory\n[limit r]\nrate = 1/1h\n[server]\ndebug = no\n", 5,
	             "[server] given twice");
	/* rule->line is the header's, for the messages of later checks */
	struct config *c = load_ok("[server]\nstore = memory\n[limit a]\n\n# c\nrate = 1/1h\n");
	assert_int_equal(c->rules[0].line, 3);
	config_free(c);
	c = load_ok(contract_conf);
	assert_int_equal(c->rules[0].line, 6);
	config_free(c);
}

static void test_empty_sections(void **state)
{
	(void)state;
	expect_error_reason("[server]\nstore = memory\n[limit a]\n", "[limit a] has no 'rate'");
	expect_error_reason("[server]\nstore = memory\n[bogus]\n", "unknown section [bogus]");
	struct config *c = load_ok("[server]\n[limit a]\nrate = 1/1h\n");
	config_free(c);
}

static void test_adjacent_duplicate_sections(void **state)
{
	(void)state;
	expect_error_reason("[server]\nstore = memory\n[limit a]\nrate = 1/1h\n[limit a]\n"
	                    "key = sender\n",
	                    "[limit a] given twice");
	expect_error_reason("[server]\nstore = memory\n[server]\nstate_dir = /x\n",
	                    "[server] given twice");
}

static void test_scalars_twice(void **state)
{
	(void)state;
	expect_error("[server]\nstate_dir = /a\nstate_dir = /b\n", 3, "given twice");
	expect_error("[server]\nstore = memory\n[limit r]\nrate = 1/1h\ndry_run = yes\n"
	             "dry_run = no\n",
	             6, "given twice");
}

static void test_continued_lists(void **state)
{
	(void)state;
	/* listen and trusted_networks continue on indented lines */
	struct config *c = load_ok("[server]\n"
	                           "listen = inet:127.0.0.1:10031,\n"
	                           "    unix:/run/policyd.sock\n"
	                           "trusted_networks = 10.0.0.0/8,\n"
	                           "\t192.0.2.0/24\n");
	assert_int_equal(c->nlisten, 2);
	assert_string_equal(c->listen[1], "unix:/run/policyd.sock");
	assert_int_equal(c->ntrusted, 2);
	config_free(c);
}

static void test_continued_lists_all(void **state)
{
	(void)state;
	struct config *c = load_ok("[server]\nhooks = rcpt,\n    eom\n[limit r]\n"
	                           "rate = 100/1h,\n    1000/1d\n");
	assert_int_equal(c->hooks, HOOK_RCPT | HOOK_EOM);
	assert_int_equal(c->rules[0].nwin, 2);
	config_free(c);
}

static void test_first_error_wins(void **state)
{
	(void)state;
	expect_error("[server]\ngarbage\nbogus = 1\n", 2, "syntax error");
}

/* A line of n characters plus newline: "state_dir = /aaa...". */
static void long_line(char *out, size_t outsz, size_t n)
{
	assert_true(n + 2 < outsz && n > 14);
	memcpy(out, "state_dir = /", 13);
	memset(out + 13, 'a', n - 13);
	out[n] = '\n';
	out[n + 1] = '\0';
}

static void test_long_lines(void **state)
{
	char line[1024], text[2048];

	(void)state;
	/* 198 characters fit in inih's 200-byte buffer with "\n" (and "\r") */
	long_line(line, sizeof(line), 198);
	snprintf(text, sizeof(text), "[server]\nstore = memory\n%s", line);
	struct config *c = load_ok(text);
	assert_int_equal(strlen(c->state_dir), 198 - 12);
	config_free(c);
	/* 199 and more: an error naming the line, never a value cut short */
	for (size_t n = 199; n < 1000; n += (n < 210 ? 1 : 97)) {
		long_line(line, sizeof(line), n);
		snprintf(text, sizeof(text), "[server]\nstore = memory\n%sdebug = yes\n", line);
		expect_error(text, 3, "line longer than 198 characters");
	}
	/* the rest of the long line is not parsed as a line of its own */
	memset(line, ' ', 300);
	memcpy(line + 199, "bogus = 1\n", 11);
	memcpy(line, "# comment", 9);
	snprintf(text, sizeof(text), "[server]\n%s", line);
	expect_error(text, 2, "line longer than 198 characters");
	/* long as the last line, without a newline */
	long_line(line, sizeof(line), 250);
	line[250] = '\0';
	snprintf(text, sizeof(text), "[server]\nstore = memory\n%s", line);
	expect_error(text, 3, "line longer than 198 characters");
	/* in a [limit] */
	memset(line, 'x', 300);
	line[300] = '\0';
	snprintf(text, sizeof(text), "[server]\n[limit r]\nrate = 1/1h\nreply = %s\n", line);
	expect_error(text, 4, "line longer than 198 characters");
}

static void test_long_last_line(void **state)
{
	char line[256], text[512];

	(void)state;
	long_line(line, sizeof(line), 199);
	line[199] = '\0';
	snprintf(text, sizeof(text), "[server]\nstore = memory\n%s", line);
	struct config *c = load_ok(text);
	config_free(c);
}

static void test_socket_mode_empty(void **state)
{
	(void)state;
	expect_error("[server]\nsocket_mode =\n", 2, "socket_mode");
}

static void test_fallback_action(void **state)
{
	static const char *const good[] = {"DUNNO",      "451 4.3.5 Try later",
	                                   "DEFER text", "DEFER_IF_PERMIT Service unavailable",
	                                   "OK",         "defer Try later"};
	char text[256];

	(void)state;
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		snprintf(text, sizeof(text), "[server]\nfallback_action = %s\n", good[i]);
		struct config *c = load_ok(text);
		assert_string_equal(c->fallback_action, good[i]);
		config_free(c);
	}
	expect_error("[server]\nfallback_action = BLAH\n", 2, "fallback_action: 'BLAH'");
	expect_error("[server]\nfallback_action = 4xx later\n", 2, "fallback_action");
	expect_error("[server]\nfallback_action = 250 ok\n", 2, "fallback_action");
}

/* ------------------------------------------------------------ parsers */

static void expect_duration(const char *s, uint64_t want)
{
	uint64_t us = 0;
	char err[200] = "";
	if (config_parse_duration(s, &us, err, sizeof(err)) != 0)
		fail_msg("'%s': %s", s, err);
	if (us != want)
		fail_msg("'%s': %llu us, want %llu", s, (unsigned long long)us,
		         (unsigned long long)want);
}

static void test_duration(void **state)
{
	static const char *const bad[] = {"0",    "0s",    "0d",      "367d",
	                                  "53w",  "8785h", "527041m", "31622401",
	                                  "1x",   "s",     "",        " ",
	                                  "-1s",  "1.5h",  "1hh",     "1 h",
	                                  "1H",   "h1",    "1s ",     "99999999999999999999s",
	                                  "1msx", "0ms"};
	char err[200];

	(void)state;
	expect_duration("30s", 30 * S);
	expect_duration("1ms", 1000);
	expect_duration("250ms", 250000);
	expect_duration("5m", 5 * MN);
	expect_duration("1h", HR);
	expect_duration("1d", DY);
	expect_duration("1w", 7 * DY);
	expect_duration("90", 90 * S);
	expect_duration("1", S);
	expect_duration(" 45s", 45 * S);
	expect_duration("366d", 366 * DY);
	expect_duration("52w", 52 * 7 * DY);
	expect_duration("8784h", 8784 * HR);
	expect_duration("31622400", 366 * DY);
	expect_duration("007s", 7 * S);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		uint64_t us = 12345;
		err[0] = '\0';
		if (config_parse_duration(bad[i], &us, err, sizeof(err)) != -1)
			fail_msg("'%s' should be refused (got %llu us)", bad[i],
			         (unsigned long long)us);
		assert_int_equal(us, 12345); /* untouched */
		assert_non_null(strstr(err, "bad duration"));
	}
	/* a tiny error buffer */
	char tiny[5];
	uint64_t us;
	assert_int_equal(config_parse_duration("x", &us, tiny, sizeof(tiny)), -1);
	assert_int_equal(strlen(tiny), 4);
}

static void test_rate(void **state)
{
	struct gcra_window w[STORE_MAX_WINDOWS];
	uint8_t n = 0;
	char err[200];

	(void)state;
	assert_int_equal(config_parse_rate("100/1h", w, &n, err, sizeof(err)), 0);
	assert_int_equal(n, 1);
	expect_win(&w[0], 100, HR);
	assert_int_equal(config_parse_rate("100/1h, 1000/1d", w, &n, err, sizeof(err)), 0);
	assert_int_equal(n, 2);
	expect_win(&w[0], 100, HR);
	expect_win(&w[1], 1000, DY);
	/* "100/h" is 100 per 1h */
	assert_int_equal(config_parse_rate("100/h,5/s,1000/d,20/m,9/w", w, &n, err, sizeof(err)),
	                 -1); /* five windows */
	assert_int_equal(config_parse_rate("100/h, 5/s, 1000/d, 20/m", w, &n, err, sizeof(err)), 0);
	assert_int_equal(n, 4);
	expect_win(&w[0], 100, HR);
	expect_win(&w[1], 5, S);
	expect_win(&w[2], 1000, DY);
	expect_win(&w[3], 20, MN);
	assert_int_equal(config_parse_rate("3/w", w, &n, err, sizeof(err)), 0);
	expect_win(&w[0], 3, 7 * DY);
	/* k, M, G suffixes are powers of 1024 */
	assert_int_equal(config_parse_rate("10k/1d, 5K/1h, 2M/1w, 1G/30d", w, &n, err, sizeof(err)),
	                 0);
	assert_int_equal(n, 4);
	expect_win(&w[0], 10 * 1024, DY);
	expect_win(&w[1], 5 * 1024, HR);
	expect_win(&w[2], 2 * 1024 * 1024, 7 * DY);
	expect_win(&w[3], 1024ULL * 1024 * 1024, 30 * DY);
	/* blanks and empty items */
	assert_int_equal(config_parse_rate("  7 / 30s ,, 8/1m ,", w, &n, err, sizeof(err)), 0);
	assert_int_equal(n, 2);
	expect_win(&w[0], 7, 30 * S);
	expect_win(&w[1], 8, MN);
	/* a bare period number is seconds */
	assert_int_equal(config_parse_rate("10/60", w, &n, err, sizeof(err)), 0);
	expect_win(&w[0], 10, MN);
	/* the largest count */
	assert_int_equal(config_parse_rate("4611686018427387903/1h", w, &n, err, sizeof(err)), 0);
	expect_win(&w[0], 4611686018427387903ULL, HR);
	assert_int_equal(config_parse_rate("4611686018427387904/1h", w, &n, err, sizeof(err)), -1);
	assert_int_equal(config_parse_rate("4503599627370496k/1h", w, &n, err, sizeof(err)), -1);
	assert_int_equal(config_parse_rate("99999999999999999999/1h", w, &n, err, sizeof(err)), -1);
	/* bad */
	static const char *const bad[] = {
	    "3/1x",          "0/1h",   "abc",    "10/0s", "1/1s, 2/1m, 3/1h, 4/1d, 5/1w",
	    "10/1h, 20/60m", "",       ",",      "10",    "10/",
	    "/1h",           "10m/1h", "10/1hh", "10/x",  "1e3/1h",
	    "10/-1h"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		n = 99;
		err[0] = '\0';
		if (config_parse_rate(bad[i], w, &n, err, sizeof(err)) != -1)
			fail_msg("'%s' should be refused", bad[i]);
		assert_int_equal(n, 99);
		assert_true(err[0] != '\0');
	}
	/* too long for the parser's buffer */
	char big[300];
	memset(big, '1', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	assert_int_equal(config_parse_rate(big, w, &n, err, sizeof(err)), -1);
}

/* ------------------------------------------------------------ overrides */

/* Load a config of one rule (extra lines given) using an override file. */
static struct config *load_with_overrides(const char *server_extra, const char *rule_extra,
                                          const char *ovr_text, char *err, size_t errsz,
                                          char ovr_path[PATHSZ])
{
	char text[1024], path[PATHSZ];
	write_tmp(ovr_text, ovr_path);
	snprintf(text, sizeof(text),
	         "[server]\nstore = memory\n%s\n[limit r]\nrate = 100/1h\n%s\noverrides = %s\n",
	         server_extra, rule_extra, ovr_path);
	write_tmp(text, path);
	err[0] = '\0';
	struct config *c = config_load(path, err, errsz);
	unlink(path);
	unlink(ovr_path);
	return c;
}

static struct config *ovr_ok(const char *server_extra, const char *rule_extra, const char *ovr_text)
{
	char err[ERRSZ], ovr[PATHSZ];
	struct config *c =
	    load_with_overrides(server_extra, rule_extra, ovr_text, err, sizeof(err), ovr);
	if (c == NULL)
		fail_msg("did not load: %s\n--- overrides:\n%s---", err, ovr_text);
	assert_int_equal(c->nrules, 1);
	return c;
}

/* Expect an error "OVRFILE:LINE: ..." (line 0: "OVRFILE: ...") containing reason. */
static void ovr_error(const char *rule_extra, const char *ovr_text, unsigned line,
                      const char *reason)
{
	char err[ERRSZ], ovr[PATHSZ], want[PATHSZ + 16];
	struct config *c = load_with_overrides("", rule_extra, ovr_text, err, sizeof(err), ovr);
	if (c != NULL) {
		config_free(c);
		fail_msg("loaded, want an error containing '%s'\n--- overrides:\n%s---", reason,
		         ovr_text);
	}
	if (line)
		snprintf(want, sizeof(want), "%s:%u: ", ovr, line);
	else
		snprintf(want, sizeof(want), "%s", ovr);
	if (strncmp(err, want, strlen(want)) != 0 || strstr(err, reason) == NULL)
		fail_msg("error '%s'\nwant '%s...%s...'\n--- overrides:\n%s---", err, want, reason,
		         ovr_text);
}

static void test_overrides_sender(void **state)
{
	(void)state;
	struct config *c = ovr_ok("", "key = sender",
	                          "# per-sender overrides\n"
	                          "Alice@Example.ORG 10/1h, 100/1d\n"
	                          "\n"
	                          "bob+newsletter@example.org exempt\n"
	                          "   carol@EXAMPLE.org \t 5/m   \n"
	                          "# a comment\n");
	const struct rule *r = &c->rules[0];
	assert_int_equal(r->novr, 3);
	const struct override *o = config_override(r, "alice@example.org");
	assert_non_null(o);
	assert_false(o->exempt);
	assert_int_equal(o->nwin, 2);
	expect_win(&o->win[0], 10, HR);
	expect_win(&o->win[1], 100, DY);
	o = config_override(r, "bob@example.org");
	assert_non_null(o);
	assert_true(o->exempt);
	o = config_override(r, "carol@example.org");
	assert_non_null(o);
	expect_win(&o->win[0], 5, MN);
	/* lookups are by normalised key */
	assert_null(config_override(r, "Alice@Example.ORG"));
	assert_null(config_override(r, "bob+newsletter@example.org"));
	assert_null(config_override(r, "dave@example.org"));
	assert_null(config_override(r, ""));
	/* the subjects are what key_norm_address makes of a request's sender */
	char key[KEY_MAX];
	key_norm_address(key, sizeof(key), "ALICE+x@example.ORG", &c->keyopts);
	assert_non_null(config_override(r, key));
	config_free(c);

	/* fold_localpart = no keeps the local part's case, the domain is folded */
	c = ovr_ok("fold_localpart = no\nrecipient_delimiter = -", "key = sender",
	           "Alice-x@Example.ORG exempt\n");
	r = &c->rules[0];
	assert_non_null(config_override(r, "Alice@example.org"));
	assert_null(config_override(r, "alice@example.org"));
	config_free(c);
}

static void test_overrides_many(void **state)
{
	char *text = malloc(64 * 1000);
	size_t n = 0;

	(void)state;
	assert_non_null(text);
	for (int i = 999; i >= 0; i--)
		n += (size_t)snprintf(text + n, 64 * 1000 - n, "user%d@example.org %d/1h\n", i,
		                      i + 1);
	struct config *c = ovr_ok("", "key = sender", text);
	free(text);
	const struct rule *r = &c->rules[0];
	assert_int_equal(r->novr, 1000);
	for (int i = 0; i < 1000; i++) {
		char subj[64];
		snprintf(subj, sizeof(subj), "user%d@example.org", i);
		const struct override *o = config_override(r, subj);
		assert_non_null(o);
		assert_int_equal(o->win[0].limit, (uint64_t)i + 1);
	}
	assert_null(config_override(r, "user1000@example.org"));
	assert_null(config_override(r, "a"));
	assert_null(config_override(r, "zzz"));
	config_free(c);
}

static void test_overrides_sasl(void **state)
{
	(void)state;
	/* a login, and an address-looking login: folded like pipeline.c folds sasl_username */
	struct config *c = ovr_ok("", "key = sasl_username",
	                          "Alice 5/1h\n"
	                          "Bob@Example.ORG exempt\n");
	const struct rule *r = &c->rules[0];
	char key[KEY_MAX];
	key_norm_login(key, sizeof(key), " Alice ", c->keyopts.fold_localpart);
	assert_non_null(config_override(r, key));
	key_norm_login(key, sizeof(key), "BOB@example.org", c->keyopts.fold_localpart);
	const struct override *o = config_override(r, key);
	assert_non_null(o);
	assert_true(o->exempt);
	config_free(c);
}

static void test_overrides_sasl_as_login(void **state)
{
	(void)state;
	struct config *c = ovr_ok("", "key = sasl_username", "carol+x@example.org exempt\n");
	char key[KEY_MAX];
	key_norm_login(key, sizeof(key), "carol+x@example.org", true);
	assert_non_null(config_override(&c->rules[0], key));
	config_free(c);
	c = ovr_ok("fold_localpart = no", "key = sasl_username", "Alice@Example.ORG exempt\n");
	key_norm_login(key, sizeof(key), "Alice@Example.ORG", false);
	assert_non_null(config_override(&c->rules[0], key));
	config_free(c);
}

static void test_overrides_addresses(void **state)
{
	(void)state;
	struct config *c = ovr_ok("", "key = client_address",
	                          "::ffff:192.0.2.7 exempt\n"
	                          "2001:DB8:0::1 10/1h\n"
	                          "198.51.100.1 20/1h\n");
	const struct rule *r = &c->rules[0];
	assert_non_null(config_override(r, "192.0.2.7"));
	assert_non_null(config_override(r, "2001:db8::1"));
	assert_non_null(config_override(r, "198.51.100.1"));
	assert_null(config_override(r, "::ffff:192.0.2.7"));
	config_free(c);

	c = ovr_ok("", "key = client_network\nprefix6 = 48",
	           "198.51.100.0/24 exempt\n"
	           "203.0.113.77 5/1h\n"
	           "2001:db8:1:2::5 10/1h\n");
	r = &c->rules[0];
	assert_non_null(config_override(r, "198.51.100.0/24"));
	assert_non_null(config_override(r, "203.0.113.0/24"));
	assert_non_null(config_override(r, "2001:db8:1::/48"));
	/* the same key the limit computes for a client */
	char key[KEY_MAX];
	key_norm_net(key, sizeof(key), "::ffff:198.51.100.200", r->prefix4, r->prefix6);
	assert_non_null(config_override(r, key));
	config_free(c);

	c = ovr_ok("", "key = sender_domain",
	           "user@Example.ORG exempt\n"
	           "Example.NET 1/1h\n");
	r = &c->rules[0];
	assert_non_null(config_override(r, "example.org"));
	assert_non_null(config_override(r, "example.net"));
	config_free(c);

	c = ovr_ok("", "key = recipient_domain", "Example.COM exempt\n");
	assert_non_null(config_override(&c->rules[0], "example.com"));
	config_free(c);
}

static void test_overrides_domain_dot(void **state)
{
	(void)state;
	struct config *c = ovr_ok("", "key = sender_domain", "Example.COM. exempt\n");
	assert_non_null(config_override(&c->rules[0], "example.com"));
	config_free(c);
}

static void test_overrides_bad_subject(void **state)
{
	(void)state;
	ovr_error("key = client_address", "mail.example.org exempt\n", 1, "mail.example.org");
	ovr_error("key = client_network", "10.0.0.0/8x exempt\n", 1, "10.0.0.0/8x");
}

static void test_overrides_errors(void **state)
{
	(void)state;
	ovr_error("key = sender", "alice@example.org\n", 1, "expected 'SUBJECT exempt'");
	ovr_error("key = sender", "# c\nok@example.org exempt\nbad@example.org 0/1h\n", 3,
	          "bad rate count '0'");
	ovr_error("key = sender", "x@example.org 1/1x\n", 1, "bad rate period");
	ovr_error("key = sender", "x@example.org exempt now\n", 1, "bad rate");
	ovr_error("key = sender", "x@example.org 1/1h, 2/1h\n", 1, "same period");
	ovr_error("key = sender", "x@example.org 1/1s,2/1m,3/1h,4/1d,5/1w\n", 1,
	          "too many windows");
	char *big = malloc(2100);
	assert_non_null(big);
	memcpy(big, "a@b.c ", 6);
	memset(big + 6, '1', 2090);
	memcpy(big + 2096, "\n", 2);
	ovr_error("key = sender", big, 1, "line too long");
	free(big);
	/* the same subject twice, after normalisation */
	ovr_error("key = sender", "Alice@example.org 1/1h\nalice+x@EXAMPLE.org exempt\n", 0,
	          "'alice@example.org' is listed twice");
	/* a missing file */
	char text[256], path[PATHSZ], err[ERRSZ];
	snprintf(text, sizeof(text),
	         "[server]\nstore = memory\n[limit r]\nrate = 1/1h\n"
	         "overrides = /nonexistent/ovr.map\n");
	write_tmp(text, path);
	assert_null(config_load(path, err, sizeof(err)));
	unlink(path);
	assert_non_null(strstr(err, "/nonexistent/ovr.map: "));
	assert_non_null(strstr(err, "[limit r]"));
}

static void test_overrides_duplicate_line(void **state)
{
	(void)state;
	ovr_error("key = sender", "Alice@example.org 1/1h\nalice+x@EXAMPLE.org exempt\n", 2,
	          "listed twice");
}

/* ------------------------------------------------------------ endpoints */

static void expect_ep(const char *ep, int fam, const char *host, const char *port)
{
	char h[128], p[16], err[256];
	int f = -1;
	if (server_parse_endpoint(ep, &f, h, sizeof(h), p, sizeof(p), err, sizeof(err)) != 0)
		fail_msg("'%s': %s", ep, err);
	if (fam == AF_UNIX)
		assert_int_equal(f, AF_UNIX);
	else /* inet: getaddrinfo decides the family */
		assert_int_not_equal(f, AF_UNIX);
	assert_string_equal(h, host);
	assert_string_equal(p, port);
}

static void test_endpoints(void **state)
{
	static const char *const bad[] = {
	    "",
	    "127.0.0.1:10031",
	    "tcp:127.0.0.1:10031",
	    "unix:relative/path",
	    "unix:policyd",
	    "unix:",
	    "inet:127.0.0.1",
	    "inet:localhost",
	    "inet:[::1]",
	    "inet:[::1]:",
	    "inet:[::1]10031",
	    "inet:[::1:10031",
	    "inet:127.0.0.1:",
	    "inet::10031",
	    "inet:[]:10031",
	    "inet:127.0.0.1:0",
	    "inet:127.0.0.1:65536",
	    "inet:127.0.0.1:-1",
	    "inet:127.0.0.1:80x",
	    "inet:127.0.0.1:port",
	    "inet:127.0.0.1:99999999999999999999",
	    "inet:127.0.0.1:4294977327",
	    "inet:",
	};
	char h[128], p[16], err[256];
	int f;

	(void)state;
	expect_ep("inet:127.0.0.1:10031", AF_INET, "127.0.0.1", "10031");
	expect_ep("inet:[::1]:10031", AF_INET6, "::1", "10031");
	expect_ep("inet:localhost:1", AF_INET, "localhost", "1");
	expect_ep("inet:127.0.0.1:65535", AF_INET, "127.0.0.1", "65535");
	expect_ep("unix:/abs/path", AF_UNIX, "/abs/path", "");
	expect_ep("unix:/var/spool/postfix/private/policyd", AF_UNIX,
	          "/var/spool/postfix/private/policyd", "");
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err[0] = '\0';
		if (server_parse_endpoint(bad[i], &f, h, sizeof(h), p, sizeof(p), err,
		                          sizeof(err)) != -1)
			fail_msg("'%s' should be refused (host '%s' port '%s')", bad[i], h, p);
		assert_true(err[0] != '\0');
	}
	/* a unix path longer than sun_path */
	char ep[256];
	memcpy(ep, "unix:/", 6);
	memset(ep + 6, 'p', 200);
	ep[206] = '\0';
	assert_int_equal(
	    server_parse_endpoint(ep, &f, h, sizeof(h), p, sizeof(p), err, sizeof(err)), -1);
	/* a host longer than the caller's buffer */
	assert_int_equal(
	    server_parse_endpoint("inet:127.0.0.1:10031", &f, h, 9, p, sizeof(p), err, sizeof(err)),
	    -1);
	assert_int_equal(server_parse_endpoint("inet:127.0.0.1:10031", &f, h, 10, p, sizeof(p), err,
	                                       sizeof(err)),
	                 0);
	assert_string_equal(h, "127.0.0.1");
}

static void test_endpoint_port_strict(void **state)
{
	char h[128], p[16], err[256];
	int f;

	(void)state;
	assert_int_equal(server_parse_endpoint("inet:127.0.0.1:+80", &f, h, sizeof(h), p, sizeof(p),
	                                       err, sizeof(err)),
	                 -1);
	assert_int_equal(server_parse_endpoint("inet:127.0.0.1: 80", &f, h, sizeof(h), p, sizeof(p),
	                                       err, sizeof(err)),
	                 -1);
}

/* ------------------------------------------------------------- chroot */

static void test_chroot(void **state)
{
	(void)state;
	/* the value: a plain absolute directory, trailing '/' dropped */
	struct config *c = load_ok("[server]\nuser = policyd\nchroot = /var/spool/postfix/\n"
	                           "state_dir = /var/spool/postfix/policyd\n");
	assert_string_equal(c->chroot, "/var/spool/postfix");
	assert_false(c->chroot_reload); /* the file is in /tmp, outside */
	config_free(c);
	c = load_ok("[server]\n");
	assert_null(c->chroot);
	config_free(c);
	expect_error("[server]\nuser = policyd\nchroot = var/spool\n", 3,
	             "not a plain absolute directory");
	expect_error("[server]\nuser = policyd\nchroot = /var/../etc\n", 3,
	             "not a plain absolute directory");
	expect_error("[server]\nuser = policyd\nchroot = /var/spool/..\n", 3,
	             "not a plain absolute directory");
	expect_error("[server]\nuser = policyd\nchroot = /\n", 3, "'/' is no chroot");
	expect_error_reason("[server]\nchroot = /var/spool/postfix\nstate_dir =\n",
	                    "chroot = /var/spool/postfix needs user =");
	/* paths used after the chroot must lie under it */
	expect_error_reason("[server]\nuser = policyd\nchroot = /var/spool/postfix\n",
	                    "state_dir = /var/lib/policyd lies outside chroot /var/spool/postfix");
	expect_error_reason("[server]\nuser = policyd\nchroot = /var/spool/postfix\n"
	                    "state_dir = /var/spool/postfixx/policyd\n",
	                    "state_dir = /var/spool/postfixx/policyd lies outside");
	expect_error_reason("[server]\nuser = policyd\nchroot = /var/spool/postfix\n"
	                    "state_dir = /var/spool/postfix/p\n"
	                    "store = redis+unix:///run/redis/redis.sock\n",
	                    "store (its socket) = /run/redis/redis.sock lies outside");
	expect_error_reason("[server]\nuser = policyd\nchroot = /var/spool/postfix\n"
	                    "state_dir = /var/spool/postfix/p\n"
	                    "[flags]\nlockout_command = /usr/local/bin/lock\n",
	                    "[flags] lockout_command = /usr/local/bin/lock lies outside");
	expect_error_reason("[server]\nuser = policyd\nchroot = /var/spool/postfix\n"
	                    "state_dir = /var/spool/postfix/p\n"
	                    "[ndr]\nlog_file = /var/log/mail.log\n",
	                    "[ndr] log_file = /var/log/mail.log lies outside");
	expect_error_reason("[server]\nuser = policyd\nchroot = /var/spool/postfix\n"
	                    "state_dir = /var/spool/postfix/p\n"
	                    "[selfcheck]\nalert_command = /bin/true\n",
	                    "[selfcheck] alert_command = /bin/true lies outside");
	/* state_dir "" (no persistence) is fine */
	c = load_ok("[server]\nuser = policyd\nchroot = /var/spool/postfix\nstate_dir =\n");
	config_free(c);
	/* files read again by a reload: checked only when the file itself
	 * lies under the chroot (here /tmp, where the test writes it) */
	c = load_ok("[server]\nuser = policyd\nchroot = /tmp\nstate_dir = /tmp/p\n");
	assert_true(c->chroot_reload);
	config_free(c);
	expect_error_reason("[server]\nuser = policyd\nchroot = /tmp\nstate_dir = /tmp/p\n"
	                    "[limit r]\nrate = 1/1h\noverrides = /etc/policyd/r.map\n",
	                    "[limit r] overrides = /etc/policyd/r.map lies outside chroot /tmp: "
	                    "a reload reads it again");
	char path[PATHSZ], err[ERRSZ];
	write_tmp("[server]\nuser = policyd\nchroot = /var/spool/postfix\nstate_dir = "
	          "/var/spool/postfix/p\n"
	          "[limit r]\nrate = 1/1h\noverrides = /nonexistent/r.map\n",
	          path);
	assert_null(config_load(path, err, sizeof(err)));
	unlink(path);
	assert_non_null(strstr(err, "/nonexistent/r.map: No such file")); /* read at start only */
}

static void test_chroot_paths(void **state)
{
	(void)state;
	assert_true(chroot_under("/var/spool/postfix", "/var/spool/postfix"));
	assert_true(chroot_under("/var/spool/postfix", "/var/spool/postfix/private/policyd"));
	assert_false(chroot_under("/var/spool/postfix", "/var/spool/postfixx"));
	assert_false(chroot_under("/var/spool/postfix", "/var/spool"));
	assert_false(chroot_under("/var/spool/postfix", "var/spool/postfix/x"));
	assert_false(chroot_under("/var/spool/postfix", NULL));
	/* not chrooted: paths are used as written */
	assert_null(chroot_root());
	assert_string_equal(chroot_path("/var/spool/postfix/policyd"),
	                    "/var/spool/postfix/policyd");
	assert_true(chroot_reachable("/run/policyd/control.sock"));
}

/* Module sections' lists continue on indented lines, as [server] ones do. */
static void test_module_lists_continue(void **state)
{
	(void)state;
	struct config *c = load_ok("[server]\n"
	                           "[selfcheck]\n"
	                           "ips = 192.0.2.1, 192.0.2.2\n"
	                           "      192.0.2.3\n"
	                           "ip_lists = zen.example, bl.example\n"
	                           "domains = example.com\n"
	                           "          example.net, example.org\n"
	                           "[ndr]\n"
	                           "our_ips = 192.0.2.0/24\n"
	                           "  2001:db8::/32\n"
	                           "[dns]\n"
	                           "servers = 127.0.0.1:53\n"
	                           "  127.0.0.2:53\n"
	                           "[anomaly]\n"
	                           "dnsbl = a.example\n"
	                           "  b.example\n");
	const struct selfcheck_conf *sc = config_section_get(c, &selfcheck_section);
	assert_int_equal(sc->nips, 3);
	assert_string_equal(sc->ips[2], "192.0.2.3");
	assert_int_equal(sc->ndomains, 3);
	assert_string_equal(sc->domains[2], "example.org");
	const struct ndr_conf *nc = config_section_get(c, &ndr_config_section);
	assert_int_equal(nc->nour_ips, 2);
	const struct dns_conf *dc = config_section_get(c, &dns_section);
	assert_non_null(strstr(dc->servers, "127.0.0.2"));
	const struct anomaly_conf *ac = config_section_get(c, &anomaly_section);
	assert_int_equal(ac->ndnsbl, 2);
	config_free(c);
	/* a name that takes no list still may not continue */
	expect_error("[server]\n[selfcheck]\ninterval = 1h\n  2h\n", 4,
	             "'interval' does not take a list");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_module_lists_continue),
	    cmocka_unit_test(test_contract_config),
	    cmocka_unit_test(test_contrib_config),
	    cmocka_unit_test(test_defaults),
	    cmocka_unit_test(test_every_parameter),
	    cmocka_unit_test(test_crlf_and_blanks),
	    cmocka_unit_test(test_redis_wait),
	    cmocka_unit_test(test_bad_values),
	    cmocka_unit_test(test_bad_rates),
	    cmocka_unit_test(test_structure_errors),
	    cmocka_unit_test(test_section_errors),
	    cmocka_unit_test(test_long_rule_names),
	    cmocka_unit_test(test_section_header_lines),
	    cmocka_unit_test(test_empty_sections),
	    cmocka_unit_test(test_adjacent_duplicate_sections),
	    cmocka_unit_test(test_scalars_twice),
	    cmocka_unit_test(test_continued_lists),
	    cmocka_unit_test(test_continued_lists_all),
	    cmocka_unit_test(test_first_error_wins),
	    cmocka_unit_test(test_long_lines),
	    cmocka_unit_test(test_long_last_line),
	    cmocka_unit_test(test_socket_mode_empty),
	    cmocka_unit_test(test_fallback_action),
	    cmocka_unit_test(test_duration),
	    cmocka_unit_test(test_rate),
	    cmocka_unit_test(test_overrides_sender),
	    cmocka_unit_test(test_overrides_many),
	    cmocka_unit_test(test_overrides_sasl),
	    cmocka_unit_test(test_overrides_sasl_as_login),
	    cmocka_unit_test(test_overrides_addresses),
	    cmocka_unit_test(test_overrides_domain_dot),
	    cmocka_unit_test(test_overrides_bad_subject),
	    cmocka_unit_test(test_overrides_errors),
	    cmocka_unit_test(test_overrides_duplicate_line),
	    cmocka_unit_test(test_endpoints),
	    cmocka_unit_test(test_endpoint_port_strict),
	    cmocka_unit_test(test_chroot),
	    cmocka_unit_test(test_chroot_paths),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
