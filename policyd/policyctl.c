/*
 * policyd/policyctl.c - the ops command-line tool: `policyctl COMMAND ...`.
 *
 * Owns: the command table (policyctl_cmds[]: one row and one function per
 * command; add a command by adding both), the top-level usage, and the
 * `classify` command.
 *
 * classify [-p PATTERNS]... [FILE]: reads Postfix log lines from FILE (or
 * standard input), and prints one JSON object a line for every delivery
 * record and every qmgr expiry record: queue_id, recipient, status, dsn,
 * class, blocklist, listed_ip (null when absent).  Patterns come from the
 * -p files in the order given (a site file before the stock file), else
 * from $POLICYD_PATTERNS (files separated by ':'), else from the installed
 * POLICYCTL_PATTERNS.  Nothing is looked for next to the binary: from a
 * build directory, give `-p ../data/ndr-patterns.conf`.  Lines that are no
 * log lines, malformed records and lines longer than the parser's limit are
 * skipped and counted; the count goes to standard error.
 *
 * Limits: a pattern file is read up to POLICYCTL_MAX_PATTERN_FILE bytes, at
 * most POLICYCTL_MAX_SOURCES of them; log lines are read in a fixed buffer
 * of MAILLOG_DEFAULT_MAX_LINE bytes.  Strings that are not valid UTF-8 are
 * printed with U+FFFD for each bad byte.
 *
 * Exit status: 0 done (even with bad lines), 1 a file could not be read or
 * written, or the patterns did not load, 2 usage.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "policyd/config.h"
#include "policyd/control.h"
#include "policyd/selfcheck.h"
#include "policyd/verdict.h"
#include "proto/classify.h"
#include "proto/maillog.h"
#include "proto/postqueue.h"

#ifndef POLICYCTL_PATTERNS
#ifndef POLICYD_PATTERNS_PATH /* set by meson from datadir */
#define POLICYD_PATTERNS_PATH "/usr/share/policyd/ndr-patterns.conf"
#endif
#define POLICYCTL_PATTERNS POLICYD_PATTERNS_PATH
#endif
#define POLICYCTL_MAX_PATTERN_FILE (16u << 20)
#define POLICYCTL_MAX_SOURCES      16

struct policyctl_cmd {
	const char *name;
	const char *args;
	const char *summary;
	int (*run)(int argc, char **argv);
};

static int policyctl_classify(int argc, char **argv);
static int pctl_cmd_status(int argc, char **argv);
static int pctl_cmd_flagged(int argc, char **argv);
static int pctl_cmd_flag(int argc, char **argv);
static int pctl_cmd_unflag(int argc, char **argv);
static int pctl_cmd_history(int argc, char **argv);
static int pctl_cmd_pause(int argc, char **argv);
static int pctl_cmd_resume(int argc, char **argv);
static int pctl_cmd_top(int argc, char **argv);
static int pctl_cmd_usage(int argc, char **argv);
static int pctl_cmd_reset(int argc, char **argv);
static int pctl_cmd_report(int argc, char **argv);
static int pctl_cmd_release(int argc, char **argv);
static int pctl_cmd_delete(int argc, char **argv);
static int pctl_cmd_ndr(int argc, char **argv);
static int pctl_global_options(int *argc, char ***argv);

static const struct policyctl_cmd policyctl_cmds[] = {
    {"classify", "[-p PATTERNS]... [FILE]",
     "classify the delivery records of a Postfix log (JSON lines)", policyctl_classify},
    {"status", "", "the daemon: version, uptime, rules, requests, verdicts, store, pause",
     pctl_cmd_status},
    {"flagged", "", "accounts flagged now", pctl_cmd_flagged},
    {"flag", "ACCOUNT [--reason TEXT] [--duration D|forever]", "flag an account by hand",
     pctl_cmd_flag},
    {"unflag", "ACCOUNT", "clear an account's flag", pctl_cmd_unflag},
    {"history", "ACCOUNT", "an account's flags, past and present", pctl_cmd_history},
    {"pause", "[--hold|--defer]", "hold (default) or defer ALL outbound mail until resume",
     pctl_cmd_pause},
    {"resume", "", "let outbound mail flow again after pause", pctl_cmd_resume},
    {"top", "[-n N] [--rule R]", "the heaviest senders now, by how full their limits are",
     pctl_cmd_top},
    {"usage", "ACCOUNT", "each rule's level for an account and when it frees up", pctl_cmd_usage},
    {"reset", "ACCOUNT", "clear an account's counters in every rule", pctl_cmd_reset},
    {"report", "held [--json|--html FILE]",
     "the hold queue joined with why policyd held each message", pctl_cmd_report},
    {"release", "QUEUEID...|--account A", "release held mail (postsuper -H, postqueue -i)",
     pctl_cmd_release},
    {"delete", "QUEUEID...|--account A", "delete held mail (postsuper -d ... hold)",
     pctl_cmd_delete},
    {"ndr", "[-n N] [--account A] | clear ACCOUNT",
     "bounces per account: sent, bounced, deferred, expired, ratio, spike, top classes",
     pctl_cmd_ndr},
    {"doctor", "[-c CONFIG] [-C POSTFIX_DIR] [--json] [--no-dns]",
     "self-check: our IPs and domains on blocklists, SPF/DMARC/DKIM, Postfix wiring",
     selfcheck_doctor_main},
};

#define POLICYCTL_NCMDS (sizeof(policyctl_cmds) / sizeof(policyctl_cmds[0]))

#ifndef POLICYCTL_CONFIG
#ifndef POLICYD_CONFIG_PATH /* set by meson from sysconfdir */
#define POLICYD_CONFIG_PATH "/etc/policyd/policyd.conf"
#endif
#define POLICYCTL_CONFIG POLICYD_CONFIG_PATH
#endif

static void policyctl_usage(FILE *f)
{
	fprintf(f,
	        "usage: policyctl [-h] [-c CONFIG | -s SOCKET] [-C POSTFIX_DIR] [--json] COMMAND "
	        "[ARGS]\n\n"
	        "  -c CONFIG       policyd.conf: the control socket is its [server] control\n"
	        "                  (default " POLICYCTL_CONFIG ")\n"
	        "  -s SOCKET       the control socket itself\n"
	        "  -C POSTFIX_DIR  Postfix's config directory (postqueue/postsuper -c)\n"
	        "  --json          JSON output for scripts\n\ncommands:\n");
	for (size_t i = 0; i < POLICYCTL_NCMDS; i++)
		fprintf(f, "  %s %s\n      %s\n", policyctl_cmds[i].name, policyctl_cmds[i].args,
		        policyctl_cmds[i].summary);
	fprintf(f, "\n`policyctl COMMAND -h` tells more about a command.\n");
}

/* ---- classify ---- */

static void policyctl_classify_usage(FILE *f)
{
	fprintf(f,
	        "usage: policyctl classify [-h] [-p PATTERNS]... [FILE]\n"
	        "\n"
	        "Reads Postfix log lines from FILE (default: standard input) and prints\n"
	        "one JSON object per delivery record and per qmgr expiry record:\n"
	        "  queue_id, recipient, status, dsn, class, blocklist, listed_ip\n"
	        "\n"
	        "  -p PATTERNS  a pattern file; repeat to add more, the rules of the\n"
	        "               first file first (a site file before the stock file).\n"
	        "               Default: $POLICYD_PATTERNS (FILE[:FILE...]), else\n"
	        "               %s.\n"
	        "               From a build directory: -p ../data/ndr-patterns.conf\n"
	        "  -h           this help\n"
	        "\n"
	        "Bad lines are skipped; their count is printed on standard error.\n",
	        POLICYCTL_PATTERNS);
}

/* Read a whole file into a malloc'ed buffer (the caller frees *buf). */
static int policyctl_read_file(const char *path, char **buf, size_t *len)
{
	FILE *f = fopen(path, "rb");
	size_t cap = 0, n = 0;
	char *b = NULL;

	*buf = NULL;
	*len = 0;
	if (!f) {
		fprintf(stderr, "policyctl: cannot read %s: %s\n", path, strerror(errno));
		return -1;
	}
	for (;;) {
		size_t got;

		if (n == cap) {
			char *nb;

			if (cap >= POLICYCTL_MAX_PATTERN_FILE) {
				fprintf(stderr, "policyctl: %s: larger than %u bytes\n", path,
				        POLICYCTL_MAX_PATTERN_FILE);
				free(b);
				fclose(f);
				return -1;
			}
			cap = cap ? cap * 2 : 65536;
			nb = realloc(b, cap);
			if (!nb) {
				fprintf(stderr, "policyctl: %s: out of memory\n", path);
				free(b);
				fclose(f);
				return -1;
			}
			b = nb;
		}
		got = fread(b + n, 1, cap - n, f);
		n += got;
		if (got == 0)
			break;
	}
	if (ferror(f)) {
		fprintf(stderr, "policyctl: cannot read %s: %s\n", path, strerror(errno));
		free(b);
		fclose(f);
		return -1;
	}
	fclose(f);
	*buf = b;
	*len = n;
	return 0;
}

/* A copy of s that is valid UTF-8: each byte of a bad sequence becomes U+FFFD. */
static json_t *policyctl_json_str(const char *s, size_t len)
{
	char stackbuf[1024] = "", *out = stackbuf;
	size_t o = 0, cap = sizeof(stackbuf);
	json_t *j;

	if (!s)
		return json_null();
	j = json_stringn(s, len); /* NULL when not valid UTF-8 */
	if (j)
		return j;
	if (len * 3 + 1 > cap) {
		cap = len * 3 + 1;
		out = malloc(cap);
		if (!out)
			return json_null();
	}
	for (size_t i = 0; i < len;) {
		unsigned char c = (unsigned char)s[i];
		size_t n = c < 0x80         ? 1
		           : (c >> 5) == 6  ? 2
		           : (c >> 4) == 14 ? 3
		           : (c >> 3) == 30 ? 4
		                            : 0;
		bool ok = n > 0 && c != 0 && i + n <= len;

		for (size_t k = 1; ok && k < n; k++)
			ok = ((unsigned char)s[i + k] >> 6) == 2;
		if (ok && n == 2)
			ok = c >= 0xc2;
		if (ok && n == 3) {
			unsigned char c1 = (unsigned char)s[i + 1];

			ok = !(c == 0xe0 && c1 < 0xa0) && !(c == 0xed && c1 >= 0xa0);
		}
		if (ok && n == 4) {
			unsigned char c1 = (unsigned char)s[i + 1];

			ok = c <= 0xf4 && !(c == 0xf0 && c1 < 0x90) && !(c == 0xf4 && c1 >= 0x90);
		}
		if (ok) {
			memcpy(out + o, s + i, n);
			o += n;
			i += n;
		} else {
			memcpy(out + o, "\xef\xbf\xbd", 3);
			o += 3;
			i++;
		}
	}
	j = json_stringn(out, o);
	if (out != stackbuf)
		free(out);
	return j ? j : json_null();
}

static json_t *policyctl_json_view(const struct maillog_str *v)
{
	return v->p ? policyctl_json_str(v->p, v->len) : json_null();
}

static int policyctl_print(const struct maillog_line *ln, const struct classify_result *r)
{
	json_t *o = json_object();
	int rc;

	if (!o)
		return -1;
	json_object_set_new(o, "queue_id", policyctl_json_view(&ln->queue_id));
	json_object_set_new(o, "recipient",
	                    ln->event == MAILLOG_DELIVERY ? policyctl_json_view(&ln->to)
	                                                  : json_null());
	json_object_set_new(o, "status", policyctl_json_view(&ln->status_str));
	json_object_set_new(o, "dsn", policyctl_json_view(&ln->dsn));
	json_object_set_new(o, "class", json_string(classify_class_name(r->cls)));
	json_object_set_new(o, "blocklist", r->list ? json_string(r->list) : json_null());
	json_object_set_new(o, "listed_ip", policyctl_json_view(&r->ip));
	rc = json_dumpf(o, stdout, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(o);
	if (rc != 0 || putchar('\n') == EOF)
		return -1;
	return 0;
}

/*
 * Load the pattern sources named by -p, $POLICYD_PATTERNS or the default.
 * The db keeps the source names: *names_buf (maybe NULL) holds them and is
 * freed by the caller after the db.
 */
static struct classify_db *policyctl_load_patterns(char **paths, size_t npaths, char **names_buf)
{
	struct classify_source src[POLICYCTL_MAX_SOURCES];
	char *bufs[POLICYCTL_MAX_SOURCES] = {NULL};
	char *envcopy = NULL;
	const char *names[POLICYCTL_MAX_SOURCES];
	struct classify_diag diag;
	struct classify_db *db = NULL;
	size_t n = 0;
	const char *env = getenv("POLICYD_PATTERNS");

	if (npaths > 0) {
		for (size_t i = 0; i < npaths; i++)
			names[n++] = paths[i];
	} else if (env && *env) {
		char *save = NULL, *tok;

		envcopy = strdup(env);
		if (!envcopy) {
			fprintf(stderr, "policyctl: out of memory\n");
			return NULL;
		}
		for (tok = strtok_r(envcopy, ":", &save); tok; tok = strtok_r(NULL, ":", &save)) {
			if (n == POLICYCTL_MAX_SOURCES) {
				fprintf(stderr, "policyctl: POLICYD_PATTERNS: more than %d files\n",
				        POLICYCTL_MAX_SOURCES);
				free(envcopy);
				return NULL;
			}
			names[n++] = tok;
		}
	} else {
		if (access(POLICYCTL_PATTERNS, R_OK) != 0) {
			fprintf(stderr,
			        "policyctl: cannot read %s: %s\n"
			        "policyctl: give -p FILE or set POLICYD_PATTERNS (from a build "
			        "directory: -p ../data/ndr-patterns.conf)\n",
			        POLICYCTL_PATTERNS, strerror(errno));
			return NULL;
		}
		names[n++] = POLICYCTL_PATTERNS;
	}
	for (size_t i = 0; i < n; i++) {
		if (policyctl_read_file(names[i], &bufs[i], &src[i].len) != 0)
			goto out;
		src[i].name = names[i];
		src[i].text = bufs[i];
	}
	db = classify_db_load(src, n, &diag);
	if (!db) {
		if (diag.line)
			fprintf(stderr, "policyctl: %s: line %zu: %s\n",
			        diag.source ? diag.source : "patterns", diag.line, diag.msg);
		else
			fprintf(stderr, "policyctl: %s: %s\n",
			        diag.source ? diag.source : "patterns", diag.msg);
	}
out:
	for (size_t i = 0; i < n; i++)
		free(bufs[i]);
	if (db)
		*names_buf = envcopy;
	else
		free(envcopy);
	return db;
}

/*
 * One line of in into buf[0..cap) without its '\n'.  Returns its length, or
 * -1 at the end of input.  A longer line is read to its end, dropped, and
 * reported by *toolong.
 */
static long policyctl_getline(FILE *in, char *buf, size_t cap, bool *toolong)
{
	size_t n = 0;
	int ch;

	*toolong = false;
	while ((ch = getc_unlocked(in)) != EOF && ch != '\n') {
		if (n < cap)
			buf[n++] = (char)ch;
		else
			*toolong = true;
	}
	if (ch == EOF && n == 0 && !*toolong)
		return -1;
	return (long)n;
}

static int policyctl_classify(int argc, char **argv)
{
	char *paths[POLICYCTL_MAX_SOURCES];
	size_t npaths = 0;
	static char line[MAILLOG_DEFAULT_MAX_LINE + 1]; /* + a '\r' */
	char *names_buf = NULL;
	long len;
	bool toolong;
	struct maillog_opts opts;
	static struct maillog_line ln;
	struct classify_db *db;
	FILE *in = stdin;
	const char *inname = "standard input";
	unsigned long long bad = 0;
	int c, status = 0;
	struct tm tm;
	time_t now = time(NULL);

	opterr = 0;
	optind = 1;
	while ((c = getopt(argc, argv, "+hp:")) != -1) {
		switch (c) {
		case 'h':
			policyctl_classify_usage(stdout);
			return 0;
		case 'p':
			if (npaths == POLICYCTL_MAX_SOURCES) {
				fprintf(stderr, "policyctl: classify: more than %d -p files\n",
				        POLICYCTL_MAX_SOURCES);
				return 2;
			}
			paths[npaths++] = optarg;
			break;
		default:
			fprintf(stderr, "policyctl: classify: bad option -%c\n", optopt);
			policyctl_classify_usage(stderr);
			return 2;
		}
	}
	if (argc - optind > 1) {
		policyctl_classify_usage(stderr);
		return 2;
	}
	db = policyctl_load_patterns(paths, npaths, &names_buf);
	if (!db)
		return 1;
	if (optind < argc && strcmp(argv[optind], "-") != 0) {
		inname = argv[optind];
		in = fopen(inname, "r");
		if (!in) {
			fprintf(stderr, "policyctl: cannot read %s: %s\n", inname, strerror(errno));
			classify_db_free(db);
			free(names_buf);
			return 1;
		}
	}
	maillog_opts_default(&opts);
	opts.ref_time = (int64_t)now;
	if (localtime_r(&now, &tm))
		opts.utc_offset = (int32_t)tm.tm_gmtoff;

	while ((len = policyctl_getline(in, line, sizeof(line), &toolong)) >= 0) {
		struct classify_result r;

		if (toolong) {
			bad++;
			continue;
		}
		switch (maillog_parse(&opts, line, (size_t)len, &ln)) {
		case MAILLOG_GARBAGE:
		case MAILLOG_TOO_LONG:
			bad++;
			break;
		case MAILLOG_DELIVERY:
		case MAILLOG_EXPIRED:
			classify_line(db, &ln, &r);
			if (policyctl_print(&ln, &r) != 0) {
				fprintf(stderr, "policyctl: cannot write: %s\n", strerror(errno));
				status = 1;
				goto done;
			}
			break;
		default:
			break;
		}
	}
	if (ferror(in)) {
		fprintf(stderr, "policyctl: cannot read %s: %s\n", inname, strerror(errno));
		status = 1;
	}
done:
	if (fflush(stdout) != 0 && status == 0) {
		fprintf(stderr, "policyctl: cannot write: %s\n", strerror(errno));
		status = 1;
	}
	if (bad)
		fprintf(stderr, "policyctl: classify: %llu bad line%s skipped\n", bad,
		        bad == 1 ? "" : "s");
	if (in != stdin)
		fclose(in);
	classify_db_free(db);
	free(names_buf);
	return status;
}

/* ==== the daemon's commands: status, flagged, flag, unflag, history, pause,
 * resume, top, usage, reset (over the control socket) and report held,
 * release, delete (postqueue -j / postsuper joined with policyd's ledger).
 *
 * Where the socket is: -s PATH; else [server] control = unix:PATH of the
 * config named by -c (default POLICYCTL_CONFIG when it is readable); else
 * POLICYCTL_SOCKET.  Postfix's config directory for postqueue/postsuper: -C
 * DIR, else [server] postfix_config_dir, else Postfix's default.  Global
 * options go before or after the command name.
 *
 * Limits: replies of at most POLICYCTL_MAX_REPLY bytes, POLICYCTL_TIMEOUT_S
 * seconds per reply; postqueue/postsuper run at most POLICYCTL_CMD_TIMEOUT_S
 * seconds (then killed), their lines at most POSTQUEUE_MAX_LINE bytes
 * (longer lines counted and skipped), standard error kept to 64 KB.
 * Exit status of these commands: 0 done, 1 failed (message on standard
 * error), 2 usage. ==== */

#ifndef POLICYCTL_SOCKET
#define POLICYCTL_SOCKET "/run/policyd/control.sock"
#endif
#define POLICYCTL_MAX_REPLY     (64u << 20)
#define POLICYCTL_TIMEOUT_S     120
#define POLICYCTL_CMD_TIMEOUT_S 120
#define POLICYCTL_MAX_POS       4096
#define POLICYCTL_MAX_ERRTEXT   65536

struct pctl_opts {
	const char *config, *socket, *postfix_dir;
	bool json;
	const char *reason, *duration, *rule, *account, *html;
	unsigned n;
	bool hold, defer, help;
	char *pos[POLICYCTL_MAX_POS];
	size_t npos;
};

static struct pctl_opts pctl_o;
static char pctl_sock[108];
static char pctl_pfdir[4096];

/* Options that may come before the command: -c, -s, -C, --json. */
static int pctl_global_options(int *argc, char ***argv)
{
	while (*argc > 1 && (*argv)[1][0] == '-') {
		const char *a = (*argv)[1];
		if (!strcmp(a, "--json") || !strcmp(a, "-j")) {
			pctl_o.json = true;
			(*argc)--;
			(*argv)++;
			continue;
		}
		if ((!strcmp(a, "-c") || !strcmp(a, "-s") || !strcmp(a, "-C")) && *argc > 2) {
			const char *v = (*argv)[2];
			if (a[1] == 'c')
				pctl_o.config = v;
			else if (a[1] == 's')
				pctl_o.socket = v;
			else
				pctl_o.postfix_dir = v;
			*argc -= 2;
			*argv += 2;
			continue;
		}
		break;
	}
	/* argv[1] is now the command (argv[0] whatever came before it) */
	return 0;
}

/* Is `name` one of the comma-separated words of `list`? */
static bool pctl_allowed(const char *list, const char *name)
{
	size_t n = strlen(name);
	for (const char *p = list; (p = strstr(p, name)) != NULL; p += n)
		if ((p == list || p[-1] == ',') && (p[n] == ',' || p[n] == '\0'))
			return true;
	return false;
}

/* The command's options; `allowed` lists the long ones it takes. */
static int pctl_parse(int argc, char **argv, const char *allowed)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		bool takes = true;
		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			pctl_o.help = true;
			takes = false;
		} else if (!strcmp(a, "--json") || !strcmp(a, "-j")) {
			pctl_o.json = true;
			takes = false;
		} else if (!strcmp(a, "--hold") && pctl_allowed(allowed, "hold")) {
			pctl_o.hold = true;
			takes = false;
		} else if (!strcmp(a, "--defer") && pctl_allowed(allowed, "defer")) {
			pctl_o.defer = true;
			takes = false;
		} else if (!strcmp(a, "--")) {
			for (i++; i < argc; i++) {
				if (pctl_o.npos == POLICYCTL_MAX_POS) {
					fprintf(stderr, "policyctl: more than %d arguments\n",
					        POLICYCTL_MAX_POS);
					return -1;
				}
				pctl_o.pos[pctl_o.npos++] = argv[i];
			}
			break;
		} else if (a[0] != '-' || a[1] == '\0') {
			if (pctl_o.npos == POLICYCTL_MAX_POS) {
				fprintf(stderr, "policyctl: more than %d arguments\n",
				        POLICYCTL_MAX_POS);
				return -1;
			}
			pctl_o.pos[pctl_o.npos++] = argv[i];
			continue;
		}
		if (!takes)
			continue;
		const char **dst = NULL;
		if (!strcmp(a, "-c"))
			dst = &pctl_o.config;
		else if (!strcmp(a, "-s"))
			dst = &pctl_o.socket;
		else if (!strcmp(a, "-C"))
			dst = &pctl_o.postfix_dir;
		else if (!strcmp(a, "--reason") && pctl_allowed(allowed, "reason"))
			dst = &pctl_o.reason;
		else if (!strcmp(a, "--duration") && pctl_allowed(allowed, "duration"))
			dst = &pctl_o.duration;
		else if (!strcmp(a, "--rule") && pctl_allowed(allowed, "rule"))
			dst = &pctl_o.rule;
		else if (!strcmp(a, "--account") && pctl_allowed(allowed, "account"))
			dst = &pctl_o.account;
		else if (!strcmp(a, "--html") && pctl_allowed(allowed, "html"))
			dst = &pctl_o.html;
		else if (!strcmp(a, "-n") && pctl_allowed(allowed, "n")) {
			char *end;
			unsigned long n = v ? strtoul(v, &end, 10) : 0;
			if (v == NULL || *end || n < 1 || n > 1000) {
				fprintf(stderr, "policyctl: -n takes a number from 1 to 1000\n");
				return -1;
			}
			pctl_o.n = (unsigned)n;
			i++;
			continue;
		} else {
			fprintf(stderr, "policyctl: %s: unknown option %s\n", argv[0], a);
			return -1;
		}
		if (v == NULL) {
			fprintf(stderr, "policyctl: %s needs a value\n", a);
			return -1;
		}
		*dst = v;
		i++;
	}
	return 0;
}

/* Find the socket (and Postfix's config dir) from -s / -c / the defaults. */
static int pctl_locate(void)
{
	const char *cfgpath = pctl_o.config;
	if (pctl_o.postfix_dir)
		snprintf(pctl_pfdir, sizeof(pctl_pfdir), "%s", pctl_o.postfix_dir);
	if (cfgpath == NULL && pctl_o.socket == NULL && access(POLICYCTL_CONFIG, R_OK) == 0)
		cfgpath = POLICYCTL_CONFIG;
	if (cfgpath) {
		char err[512];
		struct config *c = config_load(cfgpath, err, sizeof(err));
		if (c == NULL) {
			fprintf(stderr, "policyctl: %s\n", err);
			return -1;
		}
		if (pctl_o.socket == NULL) {
			if (c->control == NULL) {
				fprintf(stderr,
				        "policyctl: %s has no control = unix:PATH under [server]: "
				        "policyd has no control socket (or give -s PATH)\n",
				        cfgpath);
				config_free(c);
				return -1;
			}
			snprintf(pctl_sock, sizeof(pctl_sock), "%s", c->control + 5);
		}
		if (!pctl_pfdir[0] && c->postfix_config_dir)
			snprintf(pctl_pfdir, sizeof(pctl_pfdir), "%s", c->postfix_config_dir);
		config_free(c);
	}
	if (pctl_o.socket) {
		if (strlen(pctl_o.socket) >= sizeof(pctl_sock)) {
			fprintf(stderr, "policyctl: -s %s: path too long\n", pctl_o.socket);
			return -1;
		}
		snprintf(pctl_sock, sizeof(pctl_sock), "%s", pctl_o.socket);
	}
	if (!pctl_sock[0])
		snprintf(pctl_sock, sizeof(pctl_sock), "%s", POLICYCTL_SOCKET);
	return 0;
}

/* ---- the control socket client ---- */

static int pctl_fd = -1;
static bool pctl_quiet; /* a refused request is expected: say nothing */
static char *pctl_rbuf;
static size_t pctl_rlen, pctl_rcap;

static int pctl_connect(void)
{
	struct sockaddr_un sun;
	if (pctl_fd >= 0)
		return 0;
	if (pctl_locate() < 0)
		return -1;
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	memcpy(sun.sun_path, pctl_sock, strlen(pctl_sock) + 1);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		fprintf(stderr, "policyctl: socket: %s\n", strerror(errno));
		return -1;
	}
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
		int e = errno;
		struct stat sb;
		if (e == EACCES || e == EPERM) {
			char grp[64] = "its group";
			if (stat(pctl_sock, &sb) == 0) {
				struct group *g = getgrgid(sb.st_gid);
				if (g)
					snprintf(grp, sizeof(grp), "group %s", g->gr_name);
				else
					snprintf(grp, sizeof(grp), "gid %lu",
					         (unsigned long)sb.st_gid);
			}
			fprintf(stderr,
			        "policyctl: permission denied on %s: uid %lu may not use policyd's "
			        "control socket; run policyctl as root or as a member of %s\n",
			        pctl_sock, (unsigned long)getuid(), grp);
		} else if (e == ENOENT || e == ECONNREFUSED) {
			fprintf(stderr,
			        "policyctl: cannot connect to %s: %s (is policyd running with "
			        "control = unix:%s?)\n",
			        pctl_sock, strerror(e), pctl_sock);
		} else {
			fprintf(stderr, "policyctl: cannot connect to %s: %s\n", pctl_sock,
			        strerror(e));
		}
		close(fd);
		return -1;
	}
	pctl_fd = fd;
	return 0;
}

/* Send req (stolen) and read one reply line; the reply object when ok, else NULL. */
static json_t *pctl_request(json_t *req)
{
	if (req == NULL) {
		fprintf(stderr, "policyctl: out of memory\n");
		return NULL;
	}
	if (pctl_connect() < 0) {
		json_decref(req);
		return NULL;
	}
	char *line = json_dumps(req, JSON_COMPACT);
	json_decref(req);
	if (line == NULL) {
		fprintf(stderr, "policyctl: out of memory\n");
		return NULL;
	}
	size_t len = strlen(line), off = 0;
	line[len] = '\n'; /* replaces the NUL; written with its length */
	while (off < len + 1) {
		ssize_t n = send(pctl_fd, line + off, len + 1 - off, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			break; /* the daemon may have refused us: read its reason */
		off += (size_t)n;
	}
	free(line);
	time_t deadline = time(NULL) + POLICYCTL_TIMEOUT_S;
	char *nl;
	while ((nl = pctl_rlen ? memchr(pctl_rbuf, '\n', pctl_rlen) : NULL) == NULL) {
		if (pctl_rlen == pctl_rcap) {
			if (pctl_rcap >= POLICYCTL_MAX_REPLY) {
				fprintf(stderr, "policyctl: reply longer than %u bytes\n",
				        POLICYCTL_MAX_REPLY);
				return NULL;
			}
			size_t ncap = pctl_rcap ? pctl_rcap * 2 : 65536;
			char *nb = realloc(pctl_rbuf, ncap);
			if (nb == NULL) {
				fprintf(stderr, "policyctl: out of memory\n");
				return NULL;
			}
			pctl_rbuf = nb;
			pctl_rcap = ncap;
		}
		struct pollfd pfd = {.fd = pctl_fd, .events = POLLIN};
		int left = (int)(deadline - time(NULL));
		if (left <= 0 || poll(&pfd, 1, left * 1000) == 0) {
			fprintf(stderr, "policyctl: no answer from policyd within %d s\n",
			        POLICYCTL_TIMEOUT_S);
			return NULL;
		}
		ssize_t n = read(pctl_fd, pctl_rbuf + pctl_rlen, pctl_rcap - pctl_rlen);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			fprintf(stderr, "policyctl: policyd closed the connection%s%s\n",
			        n < 0 ? ": " : " without an answer", n < 0 ? strerror(errno) : "");
			return NULL;
		}
		pctl_rlen += (size_t)n;
	}
	size_t llen = (size_t)(nl - pctl_rbuf);
	json_error_t je;
	json_t *r = json_loadb(pctl_rbuf, llen, 0, &je);
	memmove(pctl_rbuf, nl + 1, pctl_rlen - llen - 1);
	pctl_rlen -= llen + 1;
	if (!json_is_object(r)) {
		fprintf(stderr,
		        "policyctl: policyd answered something that is not a JSON object\n");
		json_decref(r);
		return NULL;
	}
	if (!json_is_true(json_object_get(r, "ok"))) {
		const char *e = json_string_value(json_object_get(r, "error"));
		if (!pctl_quiet)
			fprintf(stderr, "policyctl: %s\n", e ? e : "policyd refused the request");
		json_decref(r);
		return NULL;
	}
	return r;
}

static void pctl_print_json(json_t *v)
{
	json_dumpf(v, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	putchar('\n');
}

/* Strings for tables: "-" for none. */
static const char *pctl_s(json_t *o, const char *k)
{
	const char *s = json_string_value(json_object_get(o, k));
	return s && s[0] ? s : "-";
}

static void pctl_fmt_time(char *out, size_t outsz, json_int_t t)
{
	time_t tt = (time_t)t;
	struct tm tm;
	if (t <= 0 || localtime_r(&tt, &tm) == NULL)
		snprintf(out, outsz, "-");
	else
		strftime(out, outsz, "%Y-%m-%d %H:%M:%S", &tm);
}

/* A time member that may be epoch seconds, microseconds or text. */
static void pctl_fmt_when(char *out, size_t outsz, json_t *v)
{
	if (json_is_integer(v)) {
		json_int_t t = json_integer_value(v);
		if (t > 100000000000LL) /* microseconds */
			t /= 1000000;
		if (t == 0)
			snprintf(out, outsz, "never");
		else
			pctl_fmt_time(out, outsz, t);
	} else if (json_is_string(v)) {
		snprintf(out, outsz, "%s", json_string_value(v));
	} else {
		snprintf(out, outsz, "-");
	}
}

/* A plain-text table: rows of up to 10 columns, widths capped at 48. */
struct pctl_table {
	size_t ncol, nrows, cap;
	char **cells; /* nrows * ncol, row 0 is the header */
};

static void pctl_table_row(struct pctl_table *t, const char *const *vals)
{
	if (t->nrows == t->cap) {
		size_t ncap = t->cap ? t->cap * 2 : 64;
		char **nc = realloc(t->cells, ncap * t->ncol * sizeof(*nc));
		if (nc == NULL)
			return;
		t->cells = nc;
		t->cap = ncap;
	}
	for (size_t i = 0; i < t->ncol; i++)
		t->cells[t->nrows * t->ncol + i] = strdup(vals[i] ? vals[i] : "-");
	t->nrows++;
}

static void pctl_table_print(struct pctl_table *t)
{
	size_t w[10] = {0};
	for (size_t r = 0; r < t->nrows; r++)
		for (size_t c = 0; c < t->ncol; c++) {
			const char *s = t->cells[r * t->ncol + c];
			size_t l = s ? strlen(s) : 1;
			if (l > 48)
				l = 48;
			if (l > w[c])
				w[c] = l;
		}
	for (size_t r = 0; r < t->nrows; r++) {
		for (size_t c = 0; c < t->ncol; c++) {
			const char *s = t->cells[r * t->ncol + c];
			if (s == NULL)
				s = "-";
			if (c + 1 == t->ncol)
				printf("%s", s);
			else if (strlen(s) > 48)
				printf("%.45s... ", s);
			else
				printf("%-*s  ", (int)w[c], s);
		}
		putchar('\n');
	}
	for (size_t i = 0; i < t->nrows * t->ncol; i++)
		free(t->cells[i]);
	free(t->cells);
	t->cells = NULL;
	t->nrows = t->cap = 0;
}

/* One request, JSON printed as is with --json, else by show(). */
static int pctl_simple(json_t *req, void (*show)(json_t *r))
{
	json_t *r = pctl_request(req);
	if (r == NULL)
		return 1;
	json_object_del(r, "ok");
	if (pctl_o.json || show == NULL)
		pctl_print_json(r);
	else
		show(r);
	json_decref(r);
	return fflush(stdout) == 0 ? 0 : 1;
}

static int pctl_usage_of(const char *cmd, int rc);

/* ---- status ---- */

static void pctl_show_status(json_t *r)
{
	char up[32];
	verdict_fmt_duration(
	    up, sizeof(up), (uint64_t)json_integer_value(json_object_get(r, "uptime_s")) * 1000000);
	printf("policyd %s, pid %lld, up %s, config %s\n", pctl_s(r, "version"),
	       (long long)json_integer_value(json_object_get(r, "pid")), up, pctl_s(r, "config"));
	json_t *p = json_object_get(r, "paused");
	printf("outbound: %s\n",
	       json_is_true(p) ? (strcmp(pctl_s(r, "pause_action"), "defer") ? "PAUSED (hold)"
	                                                                     : "PAUSED (defer)")
	                       : "flowing");
	printf("requests: %lld (bad %lld), connections accepted %lld, refused %lld, store "
	       "errors %lld\n",
	       (long long)json_integer_value(json_object_get(r, "requests")),
	       (long long)json_integer_value(json_object_get(r, "bad_requests")),
	       (long long)json_integer_value(json_object_get(r, "connections_accepted")),
	       (long long)json_integer_value(json_object_get(r, "connections_refused")),
	       (long long)json_integer_value(json_object_get(r, "store_errors")));
	json_t *v = json_object_get(r, "verdicts");
	const char *k;
	json_t *x;
	printf("verdicts:");
	json_object_foreach(v, k, x) printf(" %s %lld", k, (long long)json_integer_value(x));
	putchar('\n');
	json_t *s = json_object_get(r, "store");
	if (s)
		printf("store: %s, %lld keys, %lld bytes, %lld batches, %lld errors\n",
		       pctl_s(s, "backend"),
		       (long long)json_integer_value(json_object_get(s, "keys")),
		       (long long)json_integer_value(json_object_get(s, "bytes")),
		       (long long)json_integer_value(json_object_get(s, "batches")),
		       (long long)json_integer_value(json_object_get(s, "errors")));
	json_t *rules = json_object_get(r, "rules");
	struct pctl_table t = {.ncol = 5};
	const char *hdr[] = {"RULE", "KEY", "COUNT", "RATE", "ACTION"};
	pctl_table_row(&t, hdr);
	size_t i;
	json_array_foreach(rules, i, x)
	{
		char act[32];
		snprintf(act, sizeof(act), "%s%s", pctl_s(x, "action"),
		         json_is_true(json_object_get(x, "dry_run")) ? " (dry run)" : "");
		const char *row[] = {pctl_s(x, "name"), pctl_s(x, "key"), pctl_s(x, "count"),
		                     pctl_s(x, "rate"), act};
		pctl_table_row(&t, row);
	}
	printf("rules: %zu\n", json_array_size(rules));
	pctl_table_print(&t); /* the header alone when there is no rule */
}

static int pctl_cmd_status(int argc, char **argv)
{
	if (pctl_parse(argc, argv, "") < 0 || pctl_o.npos)
		return pctl_usage_of("status", 2);
	if (pctl_o.help)
		return pctl_usage_of("status", 0);
	return pctl_simple(json_pack("{s:s}", "cmd", "status"), pctl_show_status);
}

/* ---- flags ---- */

static void pctl_show_flagged(json_t *r)
{
	json_t *flags = json_object_get(r, "flags");
	if (json_array_size(flags) == 0) {
		printf("no account is flagged\n");
		return;
	}
	struct pctl_table t = {.ncol = 7};
	const char *hdr[] = {"ACCOUNT", "ID", "SOURCE", "RAISED", "EXPIRES", "ACTION", "REASON"};
	pctl_table_row(&t, hdr);
	size_t i;
	json_t *f;
	json_array_foreach(flags, i, f)
	{
		char raised[40], exp[40];
		pctl_fmt_when(raised, sizeof(raised), json_object_get(f, "raised"));
		pctl_fmt_when(exp, sizeof(exp), json_object_get(f, "expires"));
		const char *row[] = {
		    pctl_s(f, "account"), pctl_s(f, "id"),    pctl_s(f, "source"), raised, exp,
		    pctl_s(f, "action"),  pctl_s(f, "reason")};
		pctl_table_row(&t, row);
	}
	pctl_table_print(&t);
}

static int pctl_cmd_flagged(int argc, char **argv)
{
	if (pctl_parse(argc, argv, "") < 0 || pctl_o.npos)
		return pctl_usage_of("flagged", 2);
	if (pctl_o.help)
		return pctl_usage_of("flagged", 0);
	return pctl_simple(json_pack("{s:s}", "cmd", "flagged"), pctl_show_flagged);
}

static void pctl_show_flag(json_t *r)
{
	printf("%s: flag %s\n", pctl_s(r, "account"), pctl_s(r, "id"));
}

static int pctl_cmd_flag(int argc, char **argv)
{
	if (pctl_parse(argc, argv, "reason,duration") < 0 || pctl_o.npos != 1)
		return pctl_usage_of("flag", pctl_o.help ? 0 : 2);
	json_t *req = json_pack("{s:s,s:s}", "cmd", "flag", "account", pctl_o.pos[0]);
	if (req && pctl_o.reason)
		json_object_set_new(req, "reason", json_string(pctl_o.reason));
	if (req && pctl_o.duration)
		json_object_set_new(req, "duration", json_string(pctl_o.duration));
	return pctl_simple(req, pctl_show_flag);
}

static void pctl_show_unflag(json_t *r)
{
	printf("%s: flag %s cleared\n", pctl_s(r, "account"), pctl_s(r, "id"));
}

static int pctl_cmd_unflag(int argc, char **argv)
{
	if (pctl_parse(argc, argv, "") < 0 || pctl_o.npos != 1)
		return pctl_usage_of("unflag", pctl_o.help ? 0 : 2);
	return pctl_simple(json_pack("{s:s,s:s}", "cmd", "unflag", "account", pctl_o.pos[0]),
	                   pctl_show_unflag);
}

static void pctl_show_history(json_t *r)
{
	json_t *a = json_object_get(r, "active");
	printf("%s: %s", pctl_s(r, "account"), json_is_object(a) ? "FLAGGED" : "not flagged");
	if (json_is_object(a))
		printf(" (%s: %s)", pctl_s(a, "id"), pctl_s(a, "reason"));
	json_t *tf = json_object_get(r, "times_flagged");
	if (json_is_integer(tf))
		printf(", flagged %lld time%s in the history window",
		       (long long)json_integer_value(tf), json_integer_value(tf) == 1 ? "" : "s");
	putchar('\n');
	json_t *h = json_object_get(r, "history");
	if (json_array_size(h) == 0)
		return;
	struct pctl_table t = {.ncol = 6};
	const char *hdr[] = {"ID", "SOURCE", "RAISED", "CLEARED", "BY", "REASON"};
	pctl_table_row(&t, hdr);
	size_t i;
	json_t *e;
	json_array_foreach(h, i, e)
	{
		char raised[40], cleared[40];
		pctl_fmt_when(raised, sizeof(raised), json_object_get(e, "raised"));
		pctl_fmt_when(cleared, sizeof(cleared), json_object_get(e, "cleared"));
		const char *row[] = {pctl_s(e, "id"), pctl_s(e, "source"),     raised,
		                     cleared,         pctl_s(e, "cleared_by"), pctl_s(e, "reason")};
		pctl_table_row(&t, row);
	}
	pctl_table_print(&t);
}

static int pctl_cmd_history(int argc, char **argv)
{
	if (pctl_parse(argc, argv, "") < 0 || pctl_o.npos != 1)
		return pctl_usage_of("history", pctl_o.help ? 0 : 2);
	return pctl_simple(json_pack("{s:s,s:s}", "cmd", "history", "account", pctl_o.pos[0]),
	                   pctl_show_history);
}

static void pctl_show_pause(json_t *r)
{
	if (json_is_true(json_object_get(r, "paused")))
		printf("outbound mail PAUSED: every outbound message gets %s until `policyctl "
		       "resume`\n",
		       pctl_s(r, "action"));
	else
		printf("outbound mail flows again\n");
}

static int pctl_cmd_pause(int argc, char **argv)
{
	if (pctl_parse(argc, argv, "hold,defer") < 0 || pctl_o.npos ||
	    (pctl_o.hold && pctl_o.defer))
		return pctl_usage_of("pause", pctl_o.help ? 0 : 2);
	return pctl_simple(
	    json_pack("{s:s,s:s}", "cmd", "pause", "action", pctl_o.defer ? "defer" : "hold"),
	    pctl_show_pause);
}

static int pctl_cmd_resume(int argc, char **argv)
{
	if (pctl_parse(argc, argv, "") < 0 || pctl_o.npos)
		return pctl_usage_of("resume", pctl_o.help ? 0 : 2);
	return pctl_simple(json_pack("{s:s}", "cmd", "resume"), pctl_show_pause);
}

/* ---- top, usage, reset ---- */

static void pctl_show_top(json_t *r)
{
	json_t *top = json_object_get(r, "top");
	if (json_array_size(top) == 0) {
		printf("no account is using any rule now (%lld keys seen)\n",
		       (long long)json_integer_value(json_object_get(r, "keys_seen")));
		return;
	}
	struct pctl_table t = {.ncol = 4};
	const char *hdr[] = {"RULE", "SUBJECT", "FULL", "USED"};
	pctl_table_row(&t, hdr);
	size_t i;
	json_t *e;
	json_array_foreach(top, i, e)
	{
		char pct[16];
		snprintf(pct, sizeof(pct), "%.0f%%",
		         json_number_value(json_object_get(e, "ratio")) * 100);
		const char *row[] = {pctl_s(e, "rule"), pctl_s(e, "subject"), pct,
		                     pctl_s(e, "text")};
		pctl_table_row(&t, row);
	}
	pctl_table_print(&t);
}

static int pctl_cmd_top(int argc, char **argv)
{
	if (pctl_parse(argc, argv, "n,rule") < 0 || pctl_o.npos)
		return pctl_usage_of("top", pctl_o.help ? 0 : 2);
	json_t *req = json_pack("{s:s,s:i}", "cmd", "top", "n", pctl_o.n ? (int)pctl_o.n : 20);
	if (req && pctl_o.rule)
		json_object_set_new(req, "rule", json_string(pctl_o.rule));
	return pctl_simple(req, pctl_show_top);
}

static void pctl_show_usage(json_t *r)
{
	json_t *rules = json_object_get(r, "rules");
	printf("%s:\n", pctl_s(r, "account"));
	size_t i;
	json_t *e;
	json_array_foreach(rules, i, e)
	{
		printf("  %s%s", pctl_s(e, "text"),
		       json_is_true(json_object_get(e, "full")) ? "  [FULL]" : "");
		if (strcmp(pctl_s(e, "key"), "sasl_username") &&
		    strcmp(pctl_s(e, "key"), "principal"))
			printf("  (%s %s)", pctl_s(e, "key"), pctl_s(e, "subject"));
		putchar('\n');
	}
}

static int pctl_cmd_usage(int argc, char **argv)
{
	if (pctl_parse(argc, argv, "") < 0 || pctl_o.npos != 1)
		return pctl_usage_of("usage", pctl_o.help ? 0 : 2);
	return pctl_simple(json_pack("{s:s,s:s}", "cmd", "usage", "account", pctl_o.pos[0]),
	                   pctl_show_usage);
}

static void pctl_show_reset(json_t *r)
{
	size_t i;
	json_t *e;
	json_array_foreach(json_object_get(r, "cleared"), i, e)
	    printf("%s: cleared %s (%s %s)\n", pctl_s(r, "account"), pctl_s(e, "rule"),
	           pctl_s(e, "key"), pctl_s(e, "subject"));
}

static int pctl_cmd_reset(int argc, char **argv)
{
	if (pctl_parse(argc, argv, "") < 0 || pctl_o.npos != 1)
		return pctl_usage_of("reset", pctl_o.help ? 0 : 2);
	return pctl_simple(json_pack("{s:s,s:s}", "cmd", "reset", "account", pctl_o.pos[0]),
	                   pctl_show_reset);
}

/* ---- running postqueue / postsuper ---- */

typedef void pctl_line_fn(void *arg, const char *line, size_t len, bool toolong);

/*
 * Run argv (no shell), feed it `input`, hand each line of its standard
 * output to fn, keep its standard error in *errtext (caller frees).  Killed
 * after POLICYCTL_CMD_TIMEOUT_S.  Returns the exit status, or -1 with a
 * message printed.
 */
static int pctl_run(char *const argv[], const char *input, pctl_line_fn *fn, void *arg,
                    char **errtext)
{
	int in[2], out[2], err[2];
	*errtext = NULL;
	if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0) {
		fprintf(stderr, "policyctl: pipe: %s\n", strerror(errno));
		return -1;
	}
	pid_t pid = fork();
	if (pid < 0) {
		fprintf(stderr, "policyctl: fork: %s\n", strerror(errno));
		return -1;
	}
	if (pid == 0) {
		dup2(in[0], 0);
		dup2(out[1], 1);
		dup2(err[1], 2);
		execvp(argv[0], argv);
		fprintf(stderr, "cannot run %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	close(in[0]);
	close(out[1]);
	close(err[1]);
	size_t inlen = input ? strlen(input) : 0, inoff = 0;
	if (inlen == 0) {
		close(in[1]);
		in[1] = -1;
	} else {
		fcntl(in[1], F_SETFL, O_NONBLOCK);
	}
	char *lb = malloc(POSTQUEUE_MAX_LINE + 1);
	char *eb = malloc(POLICYCTL_MAX_ERRTEXT + 1);
	size_t ll = 0, el = 0;
	bool toolong = false, timeout = false;
	time_t deadline = time(NULL) + POLICYCTL_CMD_TIMEOUT_S;
	char chunk[65536];
	if (lb == NULL || eb == NULL) {
		fprintf(stderr, "policyctl: out of memory\n");
		kill(pid, SIGKILL);
	}
	while (lb && eb && (out[0] >= 0 || err[0] >= 0)) {
		struct pollfd p[3] = {{.fd = out[0], .events = POLLIN},
		                      {.fd = err[0], .events = POLLIN},
		                      {.fd = in[1], .events = POLLOUT}};
		int left = (int)(deadline - time(NULL));
		if (left <= 0) {
			timeout = true;
			kill(pid, SIGKILL);
			break;
		}
		if (poll(p, 3, left * 1000) < 0 && errno != EINTR)
			break;
		if (in[1] >= 0 && (p[2].revents & (POLLOUT | POLLERR | POLLHUP))) {
			ssize_t n = write(in[1], input + inoff, inlen - inoff);
			if (n > 0)
				inoff += (size_t)n;
			if (n < 0 && errno != EAGAIN && errno != EINTR)
				inoff = inlen;
			if (inoff == inlen) {
				close(in[1]);
				in[1] = -1;
			}
		}
		if (err[0] >= 0 && (p[1].revents & (POLLIN | POLLHUP | POLLERR))) {
			ssize_t n = read(err[0], chunk, sizeof(chunk));
			if (n <= 0) {
				close(err[0]);
				err[0] = -1;
			} else {
				size_t k = (size_t)n;
				if (k > POLICYCTL_MAX_ERRTEXT - el)
					k = POLICYCTL_MAX_ERRTEXT - el;
				memcpy(eb + el, chunk, k);
				el += k;
			}
		}
		if (out[0] >= 0 && (p[0].revents & (POLLIN | POLLHUP | POLLERR))) {
			ssize_t n = read(out[0], chunk, sizeof(chunk));
			if (n <= 0) {
				close(out[0]);
				out[0] = -1;
				if ((ll || toolong) && fn)
					fn(arg, lb, ll, toolong);
				ll = 0;
				continue;
			}
			for (ssize_t i = 0; i < n; i++) {
				if (chunk[i] == '\n') {
					if (fn)
						fn(arg, lb, ll, toolong);
					ll = 0;
					toolong = false;
				} else if (ll < POSTQUEUE_MAX_LINE) {
					lb[ll++] = chunk[i];
				} else {
					toolong = true;
				}
			}
		}
	}
	if (in[1] >= 0)
		close(in[1]);
	if (out[0] >= 0)
		close(out[0]);
	if (err[0] >= 0)
		close(err[0]);
	int st = 0;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	free(lb);
	if (eb) {
		eb[el] = '\0';
		*errtext = eb;
	}
	if (timeout) {
		fprintf(stderr, "policyctl: %s did not finish within %d s: killed\n", argv[0],
		        POLICYCTL_CMD_TIMEOUT_S);
		return -1;
	}
	if (WIFEXITED(st))
		return WEXITSTATUS(st);
	fprintf(stderr, "policyctl: %s died of signal %d\n", argv[0],
	        WIFSIGNALED(st) ? WTERMSIG(st) : 0);
	return -1;
}

/* argv for a Postfix tool with -c DIR when one is set; the caller adds the rest. */
static size_t pctl_pf_argv(char **av, const char *tool)
{
	size_t n = 0;
	av[n++] = (char *)tool;
	if (pctl_pfdir[0]) {
		av[n++] = (char *)"-c";
		av[n++] = pctl_pfdir;
	}
	return n;
}

/* ---- the hold queue ---- */

struct pctl_held {
	char id[POSTQUEUE_QID_MAX];
	int64_t arrival, size;
	char *sender, *rcpt1;
	size_t nrcpt;
	json_t *rec;  /* policyd's record, or NULL */
	json_t *flag; /* the account's active flag, or NULL */
};

struct pctl_queue {
	struct pctl_held *m;
	size_t n, cap;
	unsigned long long lines, bad, other;
	char firstbad[160];
};

static void pctl_queue_line(void *arg, const char *line, size_t len, bool toolong)
{
	struct pctl_queue *q = arg;
	struct postqueue_msg *pm = malloc(sizeof(*pm));
	char err[160];
	q->lines++;
	if (pm == NULL)
		return;
	if (toolong || postqueue_parse(line, len, pm, err, sizeof(err)) != POSTQUEUE_OK) {
		if (q->bad++ == 0)
			snprintf(q->firstbad, sizeof(q->firstbad), "%s",
			         toolong ? "line too long" : err);
		free(pm);
		return;
	}
	if (strcmp(pm->queue_name, "hold")) {
		q->other++;
		free(pm);
		return;
	}
	/* the queue may change under postqueue: an id seen twice is kept once */
	for (size_t i = q->n; i-- > 0 && i + 64 > q->n;)
		if (!strcmp(q->m[i].id, pm->queue_id)) {
			free(pm);
			return;
		}
	if (q->n == q->cap) {
		size_t ncap = q->cap ? q->cap * 2 : 256;
		struct pctl_held *nm = realloc(q->m, ncap * sizeof(*nm));
		if (nm == NULL) {
			free(pm);
			return;
		}
		q->m = nm;
		q->cap = ncap;
	}
	struct pctl_held *h = &q->m[q->n++];
	memset(h, 0, sizeof(*h));
	snprintf(h->id, sizeof(h->id), "%s", pm->queue_id);
	h->arrival = pm->arrival_time;
	h->size = pm->message_size;
	h->sender = strdup(pm->sender);
	h->rcpt1 = strdup(pm->first_rcpt);
	h->nrcpt = pm->nrcpt;
	free(pm);
}

static void pctl_queue_free(struct pctl_queue *q)
{
	for (size_t i = 0; i < q->n; i++) {
		free(q->m[i].sender);
		free(q->m[i].rcpt1);
		json_decref(q->m[i].rec);
		json_decref(q->m[i].flag);
	}
	free(q->m);
	memset(q, 0, sizeof(*q));
}

/* The hold queue from `postqueue -j`: 0, or -1 with a message. */
static int pctl_read_hold(struct pctl_queue *q)
{
	char *av[8], *errtext = NULL;
	size_t n = pctl_pf_argv(av, "postqueue");
	av[n++] = (char *)"-j";
	av[n] = NULL;
	int rc = pctl_run(av, NULL, pctl_queue_line, q, &errtext);
	if (rc != 0) {
		if (rc > 0)
			fprintf(stderr, "policyctl: postqueue -j failed (exit %d): %s\n", rc,
			        errtext && errtext[0] ? errtext : "no message");
		free(errtext);
		return -1;
	}
	free(errtext);
	if (q->bad)
		fprintf(stderr, "policyctl: %llu line%s of postqueue -j skipped (first: %s)\n",
		        q->bad, q->bad == 1 ? "" : "s", q->firstbad);
	return 0;
}

/* Join policyd's records and flag states; -1 when policyd could not be asked. */
static int pctl_join(struct pctl_queue *q)
{
	for (size_t off = 0; off < q->n; off += CONTROL_MAX_IDS) {
		size_t cnt = q->n - off < CONTROL_MAX_IDS ? q->n - off : CONTROL_MAX_IDS;
		json_t *ids = json_array();
		for (size_t i = 0; i < cnt; i++)
			json_array_append_new(ids, json_string(q->m[off + i].id));
		json_t *r = pctl_request(json_pack("{s:s,s:o}", "cmd", "held", "ids", ids));
		if (r == NULL)
			return -1;
		json_t *held = json_object_get(r, "held");
		json_t *accts = json_object_get(r, "accounts");
		for (size_t i = 0; i < cnt; i++) {
			struct pctl_held *h = &q->m[off + i];
			json_t *rec = json_object_get(held, h->id);
			if (!json_is_object(rec))
				continue;
			h->rec = json_incref(rec);
			const char *a = json_string_value(json_object_get(rec, "account"));
			json_t *ai = a ? json_object_get(accts, a) : NULL;
			json_t *f = ai ? json_object_get(ai, "flag") : NULL;
			if (json_is_object(f))
				h->flag = json_incref(f);
		}
		json_decref(r);
	}
	return 0;
}

static const char *pctl_held_account(const struct pctl_held *h)
{
	const char *a = h->rec ? json_string_value(json_object_get(h->rec, "account")) : NULL;
	return a && a[0] ? a : NULL;
}

static int pctl_held_cmp(const void *a, const void *b)
{
	const struct pctl_held *x = a, *y = b;
	if (x->arrival != y->arrival)
		return x->arrival < y->arrival ? -1 : 1;
	return strcmp(x->id, y->id);
}

/* The "why" of a held message: rule (+ other components). */
static void pctl_held_why(const struct pctl_held *h, char *out, size_t outsz)
{
	if (h->rec == NULL) {
		snprintf(out, outsz, "(not held by policyd, or no record)");
		return;
	}
	json_t *comp = json_object_get(h->rec, "components");
	size_t n = json_array_size(comp);
	const char *rule = json_string_value(json_object_get(h->rec, "rule"));
	const char *check = json_string_value(json_object_get(h->rec, "check"));
	int k = snprintf(
	    out, outsz, "%s%s%s", check && check[0] && strcmp(check, "limit") ? check : "",
	    check && check[0] && strcmp(check, "limit") ? ":" : "", rule && rule[0] ? rule : "?");
	if (n > 1 && k > 0 && (size_t)k < outsz)
		snprintf(out + k, outsz - (size_t)k, " (+%zu)", n - 1);
}

static json_t *pctl_held_json(const struct pctl_held *h)
{
	char when[40];
	time_t t = (time_t)h->arrival;
	struct tm tm;
	when[0] = '\0';
	if (h->arrival >= 0 && gmtime_r(&t, &tm))
		strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
	json_t *o = json_object();
	json_object_set_new(o, "queue_id", json_string(h->id));
	json_object_set_new(o, "arrival_time",
	                    h->arrival >= 0 ? json_integer(h->arrival) : json_null());
	json_object_set_new(o, "arrival", when[0] ? json_string(when) : json_null());
	json_object_set_new(o, "sender", policyctl_json_str(h->sender, strlen(h->sender)));
	json_object_set_new(o, "account",
	                    pctl_held_account(h) ? json_string(pctl_held_account(h)) : json_null());
	json_object_set_new(o, "recipients", json_integer((json_int_t)h->nrcpt));
	json_object_set_new(o, "first_recipient", policyctl_json_str(h->rcpt1, strlen(h->rcpt1)));
	json_object_set_new(o, "size", h->size >= 0 ? json_integer(h->size) : json_null());
	json_object_set_new(o, "held_by_policyd", json_boolean(h->rec != NULL));
	if (h->rec) {
		json_object_set_new(o, "rule", json_incref(json_object_get(h->rec, "rule")));
		json_object_set_new(o, "check", json_incref(json_object_get(h->rec, "check")));
		json_object_set_new(o, "reason", json_incref(json_object_get(h->rec, "reason")));
		json_object_set_new(o, "components",
		                    json_incref(json_object_get(h->rec, "components")));
		json_object_set_new(o, "held_at", json_incref(json_object_get(h->rec, "time")));
		json_object_set_new(o, "state", json_incref(json_object_get(h->rec, "state")));
	} else {
		json_object_set_new(o, "rule", json_null());
		json_object_set_new(o, "components", json_array());
	}
	json_object_set_new(o, "flag", h->flag ? json_incref(h->flag) : json_null());
	json_object_set_new(o, "flagged", json_boolean(h->flag != NULL));
	return o;
}

/* ---- report held: HTML ---- */

static void pctl_html_esc(FILE *f, const char *s)
{
	for (; s && *s; s++) {
		switch (*s) {
		case '<':
			fputs("&lt;", f);
			break;
		case '>':
			fputs("&gt;", f);
			break;
		case '&':
			fputs("&amp;", f);
			break;
		case '"':
			fputs("&quot;", f);
			break;
		case '\'':
			fputs("&#39;", f);
			break;
		default:
			if ((unsigned char)*s < 0x20)
				fputc(' ', f);
			else
				fputc(*s, f);
		}
	}
}

struct pctl_acct {
	const char *name;
	size_t msgs;
	uint64_t bytes;
	bool flagged;
	double bounce; /* < 0: unknown */
};

static int pctl_acct_cmp(const void *a, const void *b)
{
	const struct pctl_acct *x = a, *y = b;
	if (x->msgs != y->msgs)
		return x->msgs < y->msgs ? 1 : -1;
	return strcmp(x->name, y->name);
}

/* One horizontal bar chart as inline SVG. */
static void pctl_html_bars(FILE *f, const char *title, const struct pctl_acct *a, size_t n,
                           int what)
{
	double max = 0;
	for (size_t i = 0; i < n; i++) {
		double v = what == 0   ? (double)a[i].msgs
		           : what == 1 ? (double)a[i].bytes
		                       : a[i].bounce;
		if (v > max)
			max = v;
	}
	if (what == 2)
		max = max > 0 ? (max < 1 ? 1 : max) : 1;
	if (max <= 0)
		max = 1;
	unsigned h = 24 * (unsigned)n + 30;
	fprintf(f, "<figure><figcaption>");
	pctl_html_esc(f, title);
	fprintf(f,
	        "</figcaption>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"560\" "
	        "height=\"%u\" role=\"img\">\n",
	        h);
	for (size_t i = 0; i < n; i++) {
		double v = what == 0   ? (double)a[i].msgs
		           : what == 1 ? (double)a[i].bytes
		                       : a[i].bounce;
		double w = v / max * 300.0;
		unsigned y = 24 * (unsigned)i + 6;
		fprintf(f, "<text x=\"176\" y=\"%u\" text-anchor=\"end\" class=\"lbl\">", y + 13);
		pctl_html_esc(f, a[i].name);
		fprintf(f,
		        "</text><rect x=\"184\" y=\"%u\" width=\"%.1f\" height=\"16\" "
		        "class=\"%s\"/>",
		        y, w < 1 && v > 0 ? 1.0 : w, a[i].flagged ? "bar flag" : "bar");
		if (what == 0)
			fprintf(f, "<text x=\"%.1f\" y=\"%u\" class=\"val\">%zu</text>\n", 190 + w,
			        y + 13, a[i].msgs);
		else if (what == 1)
			fprintf(f, "<text x=\"%.1f\" y=\"%u\" class=\"val\">%llu B</text>\n",
			        190 + w, y + 13, (unsigned long long)a[i].bytes);
		else
			fprintf(f, "<text x=\"%.1f\" y=\"%u\" class=\"val\">%.1f%%</text>\n",
			        190 + w, y + 13, v * 100);
	}
	fprintf(f, "</svg></figure>\n");
}

static int pctl_html(const char *path, struct pctl_queue *q, json_t *accts_info)
{
	FILE *f = fopen(path, "w");
	if (f == NULL) {
		fprintf(stderr, "policyctl: cannot write %s: %s\n", path, strerror(errno));
		return -1;
	}
	/* per account: messages, bytes, flag state, bounce ratio when known */
	struct pctl_acct *a = calloc(q->n + 1, sizeof(*a));
	size_t na = 0;
	for (size_t i = 0; a && i < q->n; i++) {
		const char *name = pctl_held_account(&q->m[i]);
		if (name == NULL)
			name = "(not held by policyd)";
		size_t k = 0;
		while (k < na && strcmp(a[k].name, name))
			k++;
		if (k == na) {
			a[na].name = name;
			a[na].bounce = -1;
			json_t *ai = json_object_get(accts_info, name);
			json_t *br = ai ? json_object_get(ai, "bounce_ratio") : NULL;
			if (json_is_number(br))
				a[na].bounce = json_number_value(br);
			na++;
		}
		a[k].msgs++;
		a[k].bytes += q->m[i].size > 0 ? (uint64_t)q->m[i].size : 0;
		if (q->m[i].flag)
			a[k].flagged = true;
	}
	if (a)
		qsort(a, na, sizeof(*a), pctl_acct_cmp);
	size_t nchart = na > 40 ? 40 : na;
	char now[40];
	pctl_fmt_time(now, sizeof(now), (json_int_t)time(NULL));
	fprintf(f,
	        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
	        "<title>policyd: held messages</title>\n<style>\n"
	        "body{font-family:sans-serif;margin:1.5em;color:#222;background:#fff}\n"
	        "h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.5em}\n"
	        "table{border-collapse:collapse;font-size:.9em}\n"
	        "th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;"
	        "vertical-align:top}\n"
	        "th{background:#eee}td.num{text-align:right}\n"
	        "tr.flag td{background:#fdecea}\n"
	        ".charts{display:flex;flex-wrap:wrap;gap:2em}\n"
	        "figure{margin:0}figcaption{font-weight:bold;margin-bottom:.3em}\n"
	        ".bar{fill:#4a78b5}.bar.flag{fill:#c0392b}\n"
	        ".lbl,.val{font-size:12px;fill:#222}\n"
	        ".note{color:#666;font-size:.85em}\n"
	        "</style></head><body>\n<h1>Held messages</h1>\n"
	        "<p class=\"note\">%zu message%s in Postfix's hold queue%s%s, %zu account%s; "
	        "made by policyctl on %s. Red: the account is flagged.</p>\n",
	        q->n, q->n == 1 ? "" : "s", pctl_pfdir[0] ? " of " : "", pctl_pfdir, na,
	        na == 1 ? "" : "s", now);
	bool any_bounce = false;
	for (size_t i = 0; i < nchart; i++)
		if (a[i].bounce >= 0)
			any_bounce = true;
	if (nchart) {
		fprintf(f, "<h2>Per account</h2>\n<div class=\"charts\" id=\"charts\">\n");
		pctl_html_bars(f, "Held messages", a, nchart, 0);
		pctl_html_bars(f, "Held bytes", a, nchart, 1);
		if (any_bounce)
			pctl_html_bars(f, "Bounce ratio", a, nchart, 2);
		fprintf(f, "</div>\n");
	}
	fprintf(f, "<h2>Messages</h2>\n<table id=\"held\">\n<thead><tr><th>Queue ID</th>"
	           "<th>Arrival</th><th>Sender</th><th>Account</th><th>Recipients</th>"
	           "<th>Size</th><th>Why (rule / components)</th><th>Flag</th></tr></thead>\n"
	           "<tbody>\n");
	for (size_t i = 0; i < q->n; i++) {
		const struct pctl_held *h = &q->m[i];
		char when[40];
		pctl_fmt_time(when, sizeof(when), h->arrival);
		fprintf(f, "<tr%s><td><code>", h->flag ? " class=\"flag\"" : "");
		pctl_html_esc(f, h->id);
		fprintf(f, "</code></td><td>%s</td><td>", when);
		pctl_html_esc(f, h->sender[0] ? h->sender : "<>");
		fprintf(f, "</td><td>");
		pctl_html_esc(f, pctl_held_account(h) ? pctl_held_account(h) : "-");
		fprintf(f, "</td><td class=\"num\">%zu</td><td class=\"num\">%lld</td><td>",
		        h->nrcpt, (long long)h->size);
		if (h->rec) {
			json_t *comp = json_object_get(h->rec, "components");
			size_t k;
			json_t *c;
			fprintf(f, "<b>");
			pctl_html_esc(f, json_string_value(json_object_get(h->rec, "rule")));
			fprintf(f, "</b>: ");
			pctl_html_esc(f, json_string_value(json_object_get(h->rec, "reason")));
			json_array_foreach(comp, k, c)
			{
				if (k == 0)
					continue;
				fprintf(f, "<br>+ ");
				pctl_html_esc(f, json_string_value(json_object_get(c, "rule")));
				fprintf(f, " (");
				pctl_html_esc(f, json_string_value(json_object_get(c, "action")));
				fprintf(f, "): ");
				pctl_html_esc(f, json_string_value(json_object_get(c, "reason")));
			}
		} else {
			fprintf(f, "<i>no policyd record</i>");
		}
		fprintf(f, "</td><td>");
		if (h->flag) {
			fprintf(f, "flagged: ");
			pctl_html_esc(f, json_string_value(json_object_get(h->flag, "reason")));
		} else {
			fprintf(f, "-");
		}
		fprintf(f, "</td></tr>\n");
	}
	fprintf(f, "</tbody></table>\n</body></html>\n");
	free(a);
	if (ferror(f) | (fclose(f) != 0)) {
		fprintf(stderr, "policyctl: cannot write %s: %s\n", path, strerror(errno));
		return -1;
	}
	return 0;
}

/* ---- report held ---- */

/* Bounce ratios of the accounts from the NDR tracker, when it runs. */
static void pctl_ndr_ratios(json_t *accts)
{
	if (json_object_size(accts) == 0)
		return;
	pctl_quiet = true;
	json_t *r = pctl_request(json_pack("{s:s,s:i}", "cmd", "ndr", "limit", 0));
	pctl_quiet = false;
	json_t *pr = json_object_get(json_object_get(r, "ndr"), "principals");
	size_t i;
	json_t *p;
	json_array_foreach(pr, i, p)
	{
		const char *name = json_string_value(json_object_get(p, "principal"));
		json_t *ai = name ? json_object_get(accts, name) : NULL;
		json_t *n = json_object_get(p, "n");
		if (ai && json_is_integer(n) && json_integer_value(n) > 0) {
			json_object_set(ai, "bounce_ratio", json_object_get(p, "ratio"));
			json_object_set(ai, "delivery_outcomes", n);
		}
	}
	json_decref(r);
}

static int pctl_cmd_report(int argc, char **argv)
{
	if (pctl_parse(argc, argv, "html") < 0 || pctl_o.npos != 1 || strcmp(pctl_o.pos[0], "held"))
		return pctl_usage_of("report", pctl_o.help ? 0 : 2);
	struct pctl_queue q;
	memset(&q, 0, sizeof(q));
	if (pctl_locate() < 0 || pctl_read_hold(&q) < 0) {
		pctl_queue_free(&q);
		return 1;
	}
	qsort(q.m, q.n, sizeof(q.m[0]), pctl_held_cmp);
	int rc = 0;
	bool joined = true;
	if (q.n && pctl_join(&q) < 0) {
		fprintf(stderr, "policyctl: the report lacks policyd's reasons and flag states\n");
		joined = false;
		rc = 1;
	}
	json_t *accts = json_object(); /* account -> {messages, bytes, flagged} */
	for (size_t i = 0; i < q.n; i++) {
		const char *a = pctl_held_account(&q.m[i]);
		if (a == NULL)
			continue;
		json_t *ai = json_object_get(accts, a);
		if (ai == NULL) {
			ai = json_pack("{s:i,s:I,s:b}", "messages", 0, "bytes", (json_int_t)0,
			               "flagged", q.m[i].flag != NULL);
			json_object_set_new(accts, a, ai);
		}
		json_object_set_new(
		    ai, "messages",
		    json_integer(json_integer_value(json_object_get(ai, "messages")) + 1));
		json_object_set_new(ai, "bytes",
		                    json_integer(json_integer_value(json_object_get(ai, "bytes")) +
		                                 (q.m[i].size > 0 ? q.m[i].size : 0)));
	}
	if (joined)
		pctl_ndr_ratios(accts);
	if (pctl_o.html) {
		if (pctl_html(pctl_o.html, &q, accts) < 0)
			rc = 1;
		else if (!pctl_o.json)
			printf("wrote %s: %zu held message%s\n", pctl_o.html, q.n,
			       q.n == 1 ? "" : "s");
	}
	if (pctl_o.json) {
		json_t *o = json_object();
		json_t *arr = json_array();
		for (size_t i = 0; i < q.n; i++)
			json_array_append_new(arr, pctl_held_json(&q.m[i]));
		json_object_set_new(o, "held", arr);
		json_object_set_new(o, "count", json_integer((json_int_t)q.n));
		json_object_set_new(o, "accounts", json_incref(accts));
		json_object_set_new(o, "policyd", json_boolean(joined));
		json_object_set_new(o, "queue_lines", json_integer((json_int_t)q.lines));
		json_object_set_new(o, "bad_lines", json_integer((json_int_t)q.bad));
		pctl_print_json(o);
		json_decref(o);
	} else if (!pctl_o.html) {
		if (q.n == 0) {
			printf("the hold queue is empty\n");
		} else {
			struct pctl_table t = {.ncol = 8};
			const char *hdr[] = {"QUEUE ID", "ARRIVAL", "SENDER", "ACCOUNT",
			                     "RCPTS",    "SIZE",    "RULE",   "FLAG"};
			pctl_table_row(&t, hdr);
			for (size_t i = 0; i < q.n; i++) {
				const struct pctl_held *h = &q.m[i];
				char when[40], rc_[24], sz[24], why[160];
				pctl_fmt_time(when, sizeof(when), h->arrival);
				snprintf(rc_, sizeof(rc_), "%zu", h->nrcpt);
				snprintf(sz, sizeof(sz), "%lld", (long long)h->size);
				pctl_held_why(h, why, sizeof(why));
				const char *row[] = {h->id,
				                     when,
				                     h->sender[0] ? h->sender : "<>",
				                     pctl_held_account(h) ? pctl_held_account(h)
				                                          : "-",
				                     rc_,
				                     sz,
				                     h->rec ? why : "-",
				                     h->flag ? "FLAGGED" : "-"};
				pctl_table_row(&t, row);
			}
			pctl_table_print(&t);
			printf("\n%zu held message%s; why:\n", q.n, q.n == 1 ? "" : "s");
			for (size_t i = 0; i < q.n; i++)
				if (q.m[i].rec)
					printf("  %s  %s\n", q.m[i].id,
					       pctl_s(q.m[i].rec, "reason"));
		}
	}
	json_decref(accts);
	pctl_queue_free(&q);
	if (fflush(stdout) != 0)
		rc = 1;
	return rc;
}

/* ---- release / delete ---- */

static int pctl_act(const char *cmd, bool release, int argc, char **argv)
{
	if (pctl_parse(argc, argv, "account") < 0 || (pctl_o.npos == 0) == (pctl_o.account == NULL))
		return pctl_usage_of(cmd, pctl_o.help ? 0 : 2);
	for (size_t i = 0; i < pctl_o.npos; i++)
		if (!postqueue_valid_id(pctl_o.pos[i])) {
			fprintf(stderr,
			        "policyctl: %s: '%s' is not a queue id (letters and digits)\n", cmd,
			        pctl_o.pos[i]);
			return 2;
		}
	struct pctl_queue q;
	memset(&q, 0, sizeof(q));
	if (pctl_locate() < 0 || pctl_read_hold(&q) < 0) {
		pctl_queue_free(&q);
		return 1;
	}
	int rc = 0;
	/* the ledger tells whose a message is (and, for --account, which ones) */
	if (q.n && pctl_join(&q) < 0) {
		if (pctl_o.account) {
			pctl_queue_free(&q);
			return 1;
		}
		fprintf(stderr, "policyctl: going on without policyd's records\n");
	}
	size_t nsel = 0;
	bool *sel = calloc(q.n + 1, sizeof(*sel));
	if (sel == NULL) {
		pctl_queue_free(&q);
		return 1;
	}
	if (pctl_o.account) {
		for (size_t i = 0; i < q.n; i++) {
			const char *a = pctl_held_account(&q.m[i]);
			if (a && !strcasecmp(a, pctl_o.account)) {
				sel[i] = true;
				nsel++;
			}
		}
		if (nsel == 0) {
			fprintf(stderr,
			        "policyctl: %s: no held message of account '%s' (%zu held)\n", cmd,
			        pctl_o.account, q.n);
			free(sel);
			pctl_queue_free(&q);
			return 1;
		}
	}
	for (size_t k = 0; k < pctl_o.npos; k++) {
		size_t i = 0;
		while (i < q.n && strcmp(q.m[i].id, pctl_o.pos[k]))
			i++;
		if (i == q.n) {
			fprintf(stderr, "policyctl: %s: %s is not in the hold queue\n", cmd,
			        pctl_o.pos[k]);
			rc = 1;
			continue;
		}
		if (!sel[i])
			nsel++;
		sel[i] = true;
	}
	if (nsel == 0) {
		free(sel);
		pctl_queue_free(&q);
		return 1;
	}
	/* postsuper -H - / -d - hold, the ids on standard input */
	size_t inlen = nsel * POSTQUEUE_QID_MAX + 1, o = 0;
	char *input = malloc(inlen);
	if (input == NULL) {
		free(sel);
		pctl_queue_free(&q);
		return 1;
	}
	for (size_t i = 0; i < q.n; i++)
		if (sel[i])
			o += (size_t)snprintf(input + o, inlen - o, "%s\n", q.m[i].id);
	char *av[12], *errtext = NULL;
	size_t n = pctl_pf_argv(av, "postsuper");
	av[n++] = (char *)(release ? "-H" : "-d");
	av[n++] = (char *)"-";
	av[n++] = (char *)"hold";
	av[n] = NULL;
	int st = pctl_run(av, input, NULL, NULL, &errtext);
	free(input);
	if (st != 0) {
		if (st > 0)
			fprintf(stderr, "policyctl: postsuper %s failed (exit %d): %s\n",
			        release ? "-H" : "-d", st, errtext ? errtext : "");
		free(errtext);
		free(sel);
		pctl_queue_free(&q);
		return 1;
	}
	/* postsuper's summary and warnings; its per-message lines are said below */
	for (char *save = NULL, *l = errtext ? strtok_r(errtext, "\n", &save) : NULL; l;
	     l = strtok_r(NULL, "\n", &save)) {
		const char *p = strncmp(l, "postsuper: ", 11) ? NULL : l + 11;
		size_t k =
		    p ? strspn(p, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
		      : 0;
		if (!(p && k > 0 && p[k] == ':') && !pctl_o.json)
			fprintf(stderr, "%s\n", l);
	}
	free(errtext);
	json_t *done = json_array();
	for (size_t i = 0; i < q.n; i++) {
		if (!sel[i])
			continue;
		const struct pctl_held *h = &q.m[i];
		bool queued = true;
		if (release) {
			/* deliver now rather than at the next deferred-queue scan */
			n = pctl_pf_argv(av, "postqueue");
			av[n++] = (char *)"-i";
			av[n++] = (char *)h->id;
			av[n] = NULL;
			errtext = NULL;
			st = pctl_run(av, NULL, NULL, NULL, &errtext);
			if (st != 0) {
				queued = false;
				if (st > 0)
					fprintf(stderr,
					        "policyctl: %s released, but postqueue -i failed "
					        "(exit %d): "
					        "%s",
					        h->id, st, errtext ? errtext : "\n");
			}
			free(errtext);
		}
		char why[160];
		pctl_held_why(h, why, sizeof(why));
		json_t *e = json_pack("{s:s,s:s,s:o,s:s}", "queue_id", h->id, "action",
		                      release ? "released" : "deleted", "account",
		                      pctl_held_account(h) ? json_string(pctl_held_account(h))
		                                           : json_null(),
		                      "sender", h->sender);
		if (e && release)
			json_object_set_new(e, "delivery_requested", json_boolean(queued));
		json_array_append_new(done, e);
		if (!pctl_o.json)
			printf("%s %s (sender <%s>, account %s, held by %s)%s\n",
			       release ? "released" : "deleted", h->id, h->sender,
			       pctl_held_account(h) ? pctl_held_account(h) : "-",
			       h->rec ? why : "-",
			       release ? (queued ? ": delivery requested" : ": moved to deferred")
			               : "");
	}
	if (pctl_o.json) {
		json_t *out = json_pack("{s:o}", release ? "released" : "deleted", done);
		pctl_print_json(out);
		json_decref(out);
	} else {
		json_decref(done);
	}
	free(sel);
	pctl_queue_free(&q);
	if (fflush(stdout) != 0)
		rc = 1;
	return rc;
}

static int pctl_cmd_release(int argc, char **argv)
{
	return pctl_act("release", true, argc, argv);
}

static int pctl_cmd_delete(int argc, char **argv)
{
	return pctl_act("delete", false, argc, argv);
}

static int pctl_usage_of(const char *cmd, int rc)
{
	FILE *f = rc ? stderr : stdout;
	for (size_t i = 0; i < POLICYCTL_NCMDS; i++)
		if (!strcmp(policyctl_cmds[i].name, cmd))
			fprintf(f,
			        "usage: policyctl [-c CONFIG | -s SOCKET] [-C POSTFIX_DIR] "
			        "[--json] %s %s\n  %s\n",
			        cmd, policyctl_cmds[i].args, policyctl_cmds[i].summary);
	fprintf(f,
	        "\n  -c CONFIG  policyd's config: the socket is its [server] control =\n"
	        "             (default %s)\n"
	        "  -s SOCKET  the control socket itself (default %s)\n"
	        "  -C DIR     Postfix's config directory for postqueue/postsuper\n"
	        "             (default: [server] postfix_config_dir, else Postfix's own)\n"
	        "  --json     JSON for scripts instead of a table\n",
	        POLICYCTL_CONFIG, POLICYCTL_SOCKET);
	return rc;
}

/* ---- ndr (policyd/ndr_module.c answers) ---- */

static void pctl_ndr_ratio(char *out, size_t outsz, json_t *o, const char *k)
{
	snprintf(out, outsz, "%.1f%%", 100 * json_number_value(json_object_get(o, k)));
}

static void pctl_ndr_num(char *out, size_t outsz, json_t *o, const char *k)
{
	snprintf(out, outsz, "%lld", (long long)json_integer_value(json_object_get(o, k)));
}

static void pctl_ndr_top(char *out, size_t outsz, json_t *o)
{
	size_t i, n = 0;
	json_t *c;
	out[0] = '\0';
	json_array_foreach(json_object_get(o, "top_classes"), i, c)
	{
		int w = snprintf(out + n, outsz - n, "%s%s:%lld", n ? "," : "", pctl_s(c, "class"),
		                 (long long)json_integer_value(json_object_get(c, "count")));
		if (w < 0 || (size_t)w >= outsz - n)
			break;
		n += (size_t)w;
	}
	if (n == 0)
		snprintf(out, outsz, "-");
}

static void pctl_show_ndr(json_t *r)
{
	json_t *nd = json_object_get(r, "ndr"), *g = json_object_get(nd, "global"), *x;
	json_t *w = json_object_get(nd, "windows");
	char sw[32], lw[32], c[10][64];
	size_t i;

	verdict_fmt_duration(sw, sizeof(sw),
	                     (uint64_t)json_integer_value(json_object_get(w, "short_s")) * 1000000);
	verdict_fmt_duration(lw, sizeof(lw),
	                     (uint64_t)json_integer_value(json_object_get(w, "long_s")) * 1000000);
	pctl_ndr_ratio(c[0], sizeof(c[0]), g, "ratio");
	pctl_ndr_ratio(c[1], sizeof(c[1]), g, "bound");
	printf("windows: short %s, long %s; spike action: %s\n", sw, lw,
	       pctl_s(nd, "spike_action"));
	printf("global (%s): %lld recipients, sent %lld, bounced %lld, deferred %lld, expired "
	       "%lld, ratio %s, bound %s%s\n",
	       lw, (long long)json_integer_value(json_object_get(g, "n")),
	       (long long)json_integer_value(json_object_get(g, "sent")),
	       (long long)json_integer_value(json_object_get(g, "bounced")),
	       (long long)json_integer_value(json_object_get(g, "deferred")),
	       (long long)json_integer_value(json_object_get(g, "expired")), c[0], c[1],
	       json_is_true(json_object_get(g, "spike")) ? ", SPIKE" : "");
	x = json_object_get(nd, "backscatter");
	printf("backscatter (our bounces to remote senders, %s): %lld%s\n", lw,
	       (long long)json_integer_value(json_object_get(x, "n")),
	       json_is_true(json_object_get(x, "spike")) ? ", SPIKE" : "");
	x = json_object_get(nd, "queue");
	if (x)
		printf("postfix queues: active %lld, deferred %lld, hold %lld, incoming %lld%s%s\n",
		       (long long)json_integer_value(json_object_get(x, "active")),
		       (long long)json_integer_value(json_object_get(x, "deferred")),
		       (long long)json_integer_value(json_object_get(x, "hold")),
		       (long long)json_integer_value(json_object_get(x, "incoming")),
		       json_is_true(json_object_get(x, "size_alert")) ? ", SIZE ALERT" : "",
		       json_is_true(json_object_get(x, "growth_alert")) ? ", GROWTH ALERT" : "");
	json_t *ps = json_object_get(nd, "principals");
	printf(
	    "\nprincipals (%s window; ratio = bounced+expired / recipients, bound = Wilson lower "
	    "bound of indicting failures):\n",
	    lw);
	struct pctl_table t = {.ncol = 10};
	const char *hdr[] = {"PRINCIPAL", "KIND",  "SENT",  "BOUNCED", "DEFERRED",
	                     "EXPIRED",   "RATIO", "BOUND", "SPIKE",   "TOP CLASSES"};
	pctl_table_row(&t, hdr);
	json_array_foreach(ps, i, x)
	{
		pctl_ndr_num(c[0], sizeof(c[0]), x, "sent");
		pctl_ndr_num(c[1], sizeof(c[1]), x, "bounced");
		pctl_ndr_num(c[2], sizeof(c[2]), x, "deferred");
		pctl_ndr_num(c[3], sizeof(c[3]), x, "expired");
		pctl_ndr_ratio(c[4], sizeof(c[4]), x, "ratio");
		pctl_ndr_ratio(c[5], sizeof(c[5]), x, "bound");
		pctl_ndr_top(c[6], sizeof(c[6]), x);
		const char *row[] = {pctl_s(x, "principal"),
		                     pctl_s(x, "kind"),
		                     c[0],
		                     c[1],
		                     c[2],
		                     c[3],
		                     c[4],
		                     c[5],
		                     json_is_true(json_object_get(x, "spike")) ? "SPIKE" : "-",
		                     c[6]};
		pctl_table_row(&t, row);
	}
	pctl_table_print(&t);
	json_array_foreach(ps, i, x)
	{
		if (json_is_true(json_object_get(x, "spike")))
			printf("  %s: %s\n", pctl_s(x, "principal"), pctl_s(x, "reason"));
	}
	json_array_foreach(json_object_get(nd, "domains"), i, x)
	{
		if (json_is_true(json_object_get(x, "spike")))
			printf("receiving domain %s: %s\n", pctl_s(x, "domain"),
			       pctl_s(x, "reason"));
	}
	json_array_foreach(json_object_get(nd, "inbound"), i, x)
	{
		if (json_is_true(json_object_get(x, "spike")))
			printf(
			    "inbound NDRs to %s: %lld in the %s window (forged sender address?)\n",
			    pctl_s(x, "user"),
			    (long long)json_integer_value(json_object_get(x, "short")), sw);
	}
}

static void pctl_show_ndr_clear(json_t *r)
{
	printf("%s: NDR windows cleared%s\n", pctl_s(r, "cleared"),
	       json_is_true(json_object_get(r, "known")) ? "" : " (no NDR history)");
}

static int pctl_cmd_ndr(int argc, char **argv)
{
	if (pctl_parse(argc, argv, "n,account") < 0)
		return pctl_usage_of("ndr", 2);
	if (pctl_o.help)
		return pctl_usage_of("ndr", 0);
	if (pctl_o.npos == 2 && !strcmp(pctl_o.pos[0], "clear"))
		return pctl_simple(
		    json_pack("{s:s,s:s,s:b}", "cmd", "ndr", "account", pctl_o.pos[1], "clear", 1),
		    pctl_show_ndr_clear);
	if (pctl_o.npos)
		return pctl_usage_of("ndr", 2);
	json_t *req = json_pack("{s:s,s:i}", "cmd", "ndr", "limit", (int)pctl_o.n);
	if (req && pctl_o.account)
		json_object_set_new(req, "account", json_string(pctl_o.account));
	return pctl_simple(req, pctl_show_ndr);
}

int main(int argc, char **argv)
{
	pctl_global_options(&argc, &argv);
	if (argc < 2) {
		policyctl_usage(stderr);
		return 2;
	}
	if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 ||
	    strcmp(argv[1], "help") == 0) {
		policyctl_usage(stdout);
		return 0;
	}
	for (size_t i = 0; i < POLICYCTL_NCMDS; i++) {
		const struct policyctl_cmd *c = &policyctl_cmds[i];
		if (strcmp(argv[1], c->name) != 0)
			continue;
		/* `COMMAND -h` explains and never runs the command (classify and
		 * doctor print their own, longer help) */
		for (int a = 2; a < argc && strcmp(argv[a], "--") != 0; a++)
			if ((!strcmp(argv[a], "-h") || !strcmp(argv[a], "--help")) &&
			    strcmp(c->name, "classify") != 0 && strcmp(c->name, "doctor") != 0) {
				printf("usage: policyctl [-c CONFIG | -s SOCKET] [-C POSTFIX_DIR] "
				       "[--json] "
				       "%s %s\n  %s\n",
				       c->name, c->args, c->summary);
				return 0;
			}
		return c->run(argc - 1, argv + 1);
	}
	fprintf(stderr, "policyctl: unknown command `%s`\n", argv[1]);
	policyctl_usage(stderr);
	return 2;
}
