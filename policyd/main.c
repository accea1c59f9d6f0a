/*
 * policyd/main.c - the daemon's entry point: options, config check (-t),
 * the event loop, signals (SIGHUP reload, SIGTERM/SIGINT graceful stop),
 * detaching (-d), the pid file, and the store's housekeeping timer.
 */
#include <dirent.h>
#include <errno.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <ev.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cache/store.h"
#include "cache/store_redis.h"
#include "chroot.h"
#include "config.h"
#include "limit.h"
#include "log.h"
#include "module.h"
#include "replay.h"
#include "server.h"

#ifndef POLICYD_VERSION
#define POLICYD_VERSION "0.1.0"
#endif
#ifndef POLICYD_CONFIG_PATH /* set by meson from sysconfdir */
#define POLICYD_CONFIG_PATH "/etc/policyd/policyd.conf"
#endif
#define DEFAULT_CONFIG POLICYD_CONFIG_PATH

struct app {
	const char *config_path;
	struct server *srv;
	struct store *store;
	ev_signal sighup, sigterm, sigint;
	ev_timer tick;
	unsigned long long tick_requests; /* requests answered at the last tick */
	struct store *fallback; /* the embedded store under a Redis store (redis_failure = local) */
	struct module_ctx mctx;
	size_t nstarted; /* modules started */
};

static void usage(FILE *fp)
{
	fprintf(fp,
	        "usage: policyd [-c FILE] [-t] [-d] [-h] [-V]\n"
	        "\n"
	        "policyd is an outbound-abuse policy server for Postfix: per-account rate\n"
	        "limits over exact sliding windows, answered through check_policy_service.\n"
	        "\n"
	        "  -c FILE  configuration file (default " DEFAULT_CONFIG ")\n"
	        "  -t       check the configuration, print a summary and exit: 0 when it is\n"
	        "           valid, 1 with FILE:LINE: reason when it is not\n"
	        "  -d       detach from the terminal (daemon); default: run in the foreground,\n"
	        "           as systemd expects (Type=simple)\n"
	        "  -h       this help\n"
	        "  -V       print the version\n"
	        "  --replay FILE [--dns-fixture FILE] [--maillog FILE]\n"
	        "           run the requests of FILE (Postfix policy requests, blank-line\n"
	        "           separated, each with timestamp=<unix seconds>) through the whole\n"
	        "           pipeline with a virtual clock and an in-memory store, and print one\n"
	        "           JSON line per request (see policyd/replay.c); no sockets; with\n"
	        "           --maillog, Postfix log lines (UTC stamps) go through [ndr] on the\n"
	        "           same clock (bounces into the anomaly profiles)\n"
	        "\n"
	        "signals: SIGHUP reloads the configuration (a bad one is reported and the\n"
	        "running one kept; counters are kept); SIGTERM or SIGINT finish requests in\n"
	        "flight, save the state and exit 0.\n"
	        "\n"
	        "chroot = DIR in [server] (needs root): policyd chroots into DIR once the\n"
	        "listeners, the log and the resolver are open, then drops to user.  Paths in\n"
	        "the file are outside paths; those used afterwards must lie under DIR (-t\n"
	        "names one that does not); SIGHUP works only when FILE itself lies under DIR.\n"
	        "\n"
	        "Postfix main.cf (see contrib/postfix/):\n"
	        "  smtpd_recipient_restrictions = ..., reject_unauth_destination,\n"
	        "      check_policy_service { inet:127.0.0.1:10031, default_action=DUNNO }\n"
	        "  smtpd_end_of_data_restrictions =\n"
	        "      check_policy_service { inet:127.0.0.1:10031, default_action=DUNNO }\n");
}

static void print_summary(const struct config *c)
{
	printf("%s: configuration OK\n", c->path);
	for (size_t i = 0; i < c->nlisten; i++)
		printf("  listen %s\n", c->listen[i]);
	printf("  store %s, state_dir %s\n", c->store, c->state_dir[0] ? c->state_dir : "(none)");
	if (c->chroot && c->chroot_reload)
		printf("  chroot %s (SIGHUP re-reads %s inside it)\n", c->chroot, c->path);
	else if (c->chroot)
		printf("  chroot %s (SIGHUP is refused: %s lies outside it; restart to apply a "
		       "change)\n",
		       c->chroot, c->path);
	printf("  hooks%s%s%s\n", c->hooks & HOOK_RCPT ? " rcpt" : "",
	       c->hooks & HOOK_DATA ? " data" : "", c->hooks & HOOK_EOM ? " eom" : "");
	for (size_t i = 0; i < c->nrules; i++) {
		const struct rule *r = &c->rules[i];
		printf("  [limit %s] key=%s count=%s action=%s%s scope=%s windows=", r->name,
		       key_type_name(r->key), config_count_name(r->count),
		       config_action_name(r->action), r->dry_run ? " (dry run)" : "",
		       r->scope == SCOPE_ALL ? "all" : "outbound");
		for (uint8_t w = 0; w < r->nwin; w++)
			printf("%s%llu/%llus", w ? "," : "", (unsigned long long)r->win[w].limit,
			       (unsigned long long)(r->win[w].period_us / 1000000));
		if (r->novr)
			printf(" overrides=%zu", r->novr);
		printf("\n");
	}
}

static int64_t wall_now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void on_hup(struct ev_loop *loop, ev_signal *w, int revents)
{
	struct app *a = w->data;
	char err[512];
	struct config *old = server_config(a->srv);
	const char *root = chroot_root();
	if (root && !chroot_under(root, a->config_path)) {
		log_err("reload refused: %s lies outside chroot %s and cannot be read again; "
		        "restart policyd to apply a new configuration (or keep the file under %s)",
		        a->config_path, root, root);
		return;
	}
	struct config *c = config_load(a->config_path, err, sizeof(err));
	if (c == NULL) {
		log_err("reload failed, keeping the running configuration: %s", err);
		return;
	}
	if (strcmp(c->store, old->store) || strcmp(c->state_dir, old->state_dir))
		log_warn("store or state_dir changed in %s: restart policyd to apply it", c->path);
	if ((c->chroot == NULL) != (old->chroot == NULL) ||
	    (c->chroot && strcmp(c->chroot, old->chroot)) ||
	    (c->user == NULL) != (old->user == NULL) || (c->user && strcmp(c->user, old->user)))
		log_warn("chroot or user changed in %s: restart policyd to apply it", c->path);
	if (server_reload(a->srv, c) < 0) {
		log_err("reload refused: too many reloads while requests wait for the store; "
		        "try again in a moment");
		config_free(c);
		return;
	}
	a->mctx.cfg = c;
	for (size_t i = 0; i < a->nstarted; i++)
		if (modules[i]->reload)
			modules[i]->reload(&a->mctx, c);
	log_info("event=reload config=%s rules=%zu", c->path, c->nrules);
}

static void on_term(struct ev_loop *loop, ev_signal *w, int revents)
{
	struct app *a = w->data;
	log_info("event=stop signal=%d", w->signum);
	server_stop(a->srv);
}

static void on_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct app *a = w->data;
	int64_t now = wall_now_us();
	if (a->store->be->tick)
		a->store->be->tick(a->store, now);
	if (a->fallback)
		a->fallback->be->tick(a->fallback, now);
	/* short slices while requests come, 10 wake-ups a second when idle */
	unsigned long long req = server_stats(a->srv)->requests;
	double next = (req != a->tick_requests ? STORE_TICK_MS : STORE_IDLE_TICK_MS) / 1000.0;
	a->tick_requests = req;
	if (w->repeat != next) {
		w->repeat = next;
		ev_timer_again(loop, w);
	}
}

static int detach(void)
{
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid > 0)
		_exit(0);
	if (setsid() < 0)
		return -1;
	pid = fork();
	if (pid < 0)
		return -1;
	if (pid > 0)
		_exit(0);
	if (chdir("/") < 0)
		return -1;
	int fd = open("/dev/null", O_RDWR);
	if (fd < 0)
		return -1;
	dup2(fd, 0);
	dup2(fd, 1);
	dup2(fd, 2);
	if (fd > 2)
		close(fd);
	return 0;
}

/* Who to become: looked up before the chroot (no /etc/passwd inside). */
struct privs {
	bool drop;
	uid_t uid;
	gid_t gid;
};

/* Prepare to drop root for cfg->user/group after the listeners are bound:
 * look the names up and hand the state_dir over to that user.  Before the
 * chroot.  0 or -1 with err. */
static int prepare_privileges(const struct config *cfg, struct privs *pv, char *err, size_t errsz)
{
	memset(pv, 0, sizeof(*pv));
	if (cfg->user == NULL)
		return 0;
	struct passwd *pw = getpwnam(cfg->user);
	if (pw == NULL) {
		snprintf(err, errsz, "user '%s' does not exist", cfg->user);
		return -1;
	}
	gid_t gid = pw->pw_gid;
	if (cfg->group) {
		struct group *gr = getgrnam(cfg->group);
		if (gr == NULL) {
			snprintf(err, errsz, "group '%s' does not exist", cfg->group);
			return -1;
		}
		gid = gr->gr_gid;
	}
	if (getuid() != 0) {
		if (getuid() == pw->pw_uid)
			return 0;
		snprintf(err, errsz, "user = %s needs policyd to start as root", cfg->user);
		return -1;
	}
	pv->drop = true;
	pv->uid = pw->pw_uid;
	pv->gid = gid;
	if (cfg->state_dir[0] && chown(cfg->state_dir, pw->pw_uid, gid) < 0) {
		snprintf(err, errsz, "chown %s: %s", cfg->state_dir, strerror(errno));
		return -1;
	}
	/* files the store already created (journal, lock) follow the directory */
	DIR *d = cfg->state_dir[0] ? opendir(cfg->state_dir) : NULL;
	if (d) {
		struct dirent *de;
		while ((de = readdir(d)) != NULL)
			if (de->d_name[0] != '.')
				(void)fchownat(dirfd(d), de->d_name, pw->pw_uid, gid,
				               AT_SYMLINK_NOFOLLOW);
		closedir(d);
	}
	return 0;
}

/* Become the user prepared above (after the chroot).  0 or -1 with err. */
static int drop_privileges(const struct config *cfg, const struct privs *pv, char *err,
                           size_t errsz)
{
	if (!pv->drop)
		return 0;
	if (setgroups(0, NULL) < 0 || setgid(pv->gid) < 0 || setuid(pv->uid) < 0) {
		snprintf(err, errsz, "dropping privileges to %s: %s", cfg->user, strerror(errno));
		return -1;
	}
	if (setuid(0) == 0) {
		snprintf(err, errsz, "could regain root after dropping privileges");
		return -1;
	}
	return 0;
}

static void store_log(int level, const char *msg)
{
	log_msg((enum log_level)level, "%s", msg);
}

/*
 * The configured store: the embedded one, or Redis (with the embedded one
 * under it as the fallback when redis_failure = local).
 */
static struct store *open_store(const struct config *cfg, struct ev_loop *loop,
                                struct store **fallback, char *err, size_t errsz)
{
	struct store_memory_opts mo = {
	    .state_dir = cfg->state_dir, .max_keys = cfg->max_keys, .flush_ms = 1000};
	*fallback = NULL;
	if (strcmp(cfg->store, "memory") == 0)
		return store_memory_open(&mo, wall_now_us(), err, errsz);
	if (cfg->redis_failure == STORE_REDIS_FAIL_LOCAL) {
		*fallback = store_memory_open(&mo, wall_now_us(), err, errsz);
		if (*fallback == NULL)
			return NULL;
	}
	struct store_redis_opts ro = {
	    .url = cfg->store,
	    .connect_timeout_ms = cfg->redis_connect_timeout_ms,
	    .command_timeout_ms = cfg->redis_timeout_ms,
	    .wait_replicas = (unsigned)cfg->redis_wait_replicas,
	    .wait_timeout_ms = cfg->redis_wait_timeout_ms,
	    .failure = (enum store_redis_failure)cfg->redis_failure,
	    .fallback = *fallback,
	    .log = store_log,
	    .map_path = chroot_path,
	};
	struct store *s = store_redis_open(loop, &ro, err, errsz);
	if (s == NULL && *fallback) {
		(*fallback)->be->close(*fallback);
		*fallback = NULL;
	}
	return s;
}

static void close_stores(struct app *a)
{
	a->store->be->close(a->store);
	if (a->fallback)
		a->fallback->be->close(a->fallback);
	a->fallback = NULL;
}

static void raise_nofile(unsigned want)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return;
	rlim_t need = (rlim_t)want + 64;
	if (rl.rlim_cur >= need)
		return;
	rl.rlim_cur = need < rl.rlim_max ? need : rl.rlim_max;
	if (setrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur < need)
		log_warn("open files limit is %llu, below max_connections=%u: raise LimitNOFILE",
		         (unsigned long long)rl.rlim_cur, want);
}

int main(int argc, char **argv)
{
	struct app a;
	const char *path = DEFAULT_CONFIG;
	int check = 0, daemonize = 0, opt;
	char err[512];

	memset(&a, 0, sizeof(a));
	static const struct option longopts[] = {
	    {"replay", required_argument, NULL, 'R'},
	    {"dns-fixture", required_argument, NULL, 'F'},
	    {"maillog", required_argument, NULL, 'M'},
	    {NULL, 0, NULL, 0},
	};
	const char *replay = NULL, *fixture = NULL, *maillog = NULL;
	while ((opt = getopt_long(argc, argv, "c:tdhV", longopts, NULL)) != -1) {
		switch (opt) {
		case 'R':
			replay = optarg;
			break;
		case 'F':
			fixture = optarg;
			break;
		case 'M':
			maillog = optarg;
			break;
		case 'c':
			path = optarg;
			break;
		case 't':
			check = 1;
			break;
		case 'd':
			daemonize = 1;
			break;
		case 'h':
			usage(stdout);
			return 0;
		case 'V':
			printf("policyd %s\n", POLICYD_VERSION);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc) {
		fprintf(stderr, "policyd: unexpected argument '%s'\n", argv[optind]);
		usage(stderr);
		return 2;
	}
	a.config_path = path;
	struct config *cfg = config_load(path, err, sizeof(err));
	if (cfg == NULL) {
		fprintf(stderr, "policyd: %s\n", err);
		return 1;
	}
	/* chrooted, SIGHUP reads the file again by its absolute path */
	char config_abs[PATH_MAX];
	if (cfg->chroot && !check && !replay && realpath(path, config_abs) != NULL)
		a.config_path = config_abs;
	if (check) {
		/* what only shows at start: names that must exist on this host */
		const char *missing = NULL;
		if (cfg->user && getpwnam(cfg->user) == NULL)
			missing = cfg->user;
		else if (cfg->group && getgrnam(cfg->group) == NULL)
			missing = cfg->group;
		else if (cfg->socket_group && getgrnam(cfg->socket_group) == NULL)
			missing = cfg->socket_group;
		if (missing) {
			fprintf(stderr,
			        "policyd: %s: user or group '%s' does not exist on this host\n",
			        path, missing);
			config_free(cfg);
			return 1;
		}
		print_summary(cfg);
		config_free(cfg);
		return 0;
	}
	if (replay || fixture || maillog) {
		int rrc = 1;
		if (replay == NULL)
			fprintf(stderr, "policyd: --dns-fixture and --maillog go with --replay\n");
		else if (log_open("policyd", "stderr", cfg->log_facility, err, sizeof(err)) < 0)
			fprintf(stderr, "policyd: %s\n", err);
		else {
			log_set_level(cfg->debug ? LOG_L_DEBUG : LOG_L_WARN);
			rrc = replay_run(replay, fixture, maillog, cfg, stdout);
			log_close();
		}
		config_free(cfg);
		return rrc;
	}
	if (cfg->chroot && geteuid() != 0) {
		fprintf(stderr,
		        "policyd: %s: chroot = %s needs policyd to start as root (it chroots, "
		        "then drops to user)\n",
		        path, cfg->chroot);
		config_free(cfg);
		return 1;
	}
	if (daemonize && strcmp(cfg->log_target, "stderr") == 0) {
		fprintf(stderr, "policyd: -d with log = stderr would lose every log line; "
		                "use log = syslog\n");
		config_free(cfg);
		return 1;
	}
	if (log_open("policyd", cfg->log_target, cfg->log_facility, err, sizeof(err)) < 0) {
		fprintf(stderr, "policyd: %s\n", err);
		config_free(cfg);
		return 1;
	}
	if (cfg->debug)
		log_set_level(LOG_L_DEBUG);
	signal(SIGPIPE, SIG_IGN);
	raise_nofile(cfg->max_connections);

	if (cfg->state_dir[0] && mkdir(cfg->state_dir, 0750) < 0 && errno != EEXIST) {
		log_err("state_dir %s: %s", cfg->state_dir, strerror(errno));
		fprintf(stderr, "policyd: state_dir %s: %s\n", cfg->state_dir, strerror(errno));
		config_free(cfg);
		return 1;
	}
	struct ev_loop *loop = ev_default_loop(EVFLAG_AUTO);
	a.store = open_store(cfg, loop, &a.fallback, err, sizeof(err));
	if (a.store == NULL) {
		log_err("store: %s", err);
		fprintf(stderr, "policyd: store: %s\n", err);
		config_free(cfg);
		return 1;
	}
	a.srv = server_new(loop, cfg, a.store, err, sizeof(err));
	if (a.srv == NULL) {
		log_err("listen: %s", err);
		fprintf(stderr, "policyd: %s\n", err);
		close_stores(&a);
		config_free(cfg);
		return 1;
	}
	if (daemonize && detach() < 0) {
		log_err("cannot detach: %s", strerror(errno));
		return 1;
	}
	if (daemonize)
		ev_loop_fork(loop);
	if (cfg->pid_file) {
		FILE *pf = fopen(cfg->pid_file, "w");
		if (pf == NULL)
			log_warn("pid_file %s: %s", cfg->pid_file, strerror(errno));
		else {
			fprintf(pf, "%ld\n", (long)getpid());
			fclose(pf);
		}
	}
	ev_signal_init(&a.sighup, on_hup, SIGHUP);
	ev_signal_init(&a.sigterm, on_term, SIGTERM);
	ev_signal_init(&a.sigint, on_term, SIGINT);
	a.sighup.data = a.sigterm.data = a.sigint.data = &a;
	ev_signal_start(loop, &a.sighup);
	ev_signal_start(loop, &a.sigterm);
	ev_signal_start(loop, &a.sigint);
	ev_timer_init(&a.tick, on_tick, STORE_TICK_MS / 1000.0, STORE_TICK_MS / 1000.0);
	a.tick.data = &a;
	ev_timer_start(loop, &a.tick);

	a.mctx.loop = loop;
	a.mctx.store = a.store;
	a.mctx.srv = a.srv;
	a.mctx.cfg = cfg;
	for (size_t i = 0; modules[i]; i++) {
		if (modules[i]->start(&a.mctx, err, sizeof(err)) < 0) {
			log_err("%s: %s", modules[i]->name, err);
			fprintf(stderr, "policyd: %s: %s\n", modules[i]->name, err);
			while (a.nstarted-- > 0)
				if (modules[a.nstarted]->stop)
					modules[a.nstarted]->stop(&a.mctx);
			server_free(a.srv);
			close_stores(&a);
			config_free(cfg);
			return 1;
		}
		a.nstarted++;
	}
	/* everything read from outside is open: look the user up, chroot, drop */
	struct privs pv;
	tzset(); /* /etc/localtime is not inside the chroot */
	int prc = prepare_privileges(cfg, &pv, err, sizeof(err));
	if (prc == 0 && cfg->chroot) {
		prc = chroot_enter(cfg->chroot, err, sizeof(err));
		if (prc == 0)
			log_info("event=chroot dir=%s", cfg->chroot);
	}
	if (prc < 0 || drop_privileges(cfg, &pv, err, sizeof(err)) < 0) {
		log_err("%s", err);
		fprintf(stderr, "policyd: %s\n", err);
		while (a.nstarted-- > 0)
			if (modules[a.nstarted]->stop)
				modules[a.nstarted]->stop(&a.mctx);
		server_free(a.srv);
		close_stores(&a);
		config_free(cfg);
		return 1;
	}
	server_start(a.srv);
	log_info("event=start version=%s config=%s rules=%zu store=%s pid=%ld", POLICYD_VERSION,
	         path, cfg->nrules, a.store->be->name, (long)getpid());
	ev_run(loop, 0);

	/* graceful stop: requests in flight are answered; save the state */
	const struct server_stats *st = server_stats(a.srv);
	log_info("event=exit requests=%llu bad_requests=%llu defer=%llu hold=%llu reject=%llu "
	         "warn=%llu",
	         st->requests, st->bad_requests, st->verdicts[ACT_DEFER], st->verdicts[ACT_HOLD],
	         st->verdicts[ACT_REJECT], st->verdicts[ACT_WARN]);
	while (a.nstarted-- > 0)
		if (modules[a.nstarted]->stop)
			modules[a.nstarted]->stop(&a.mctx);
	cfg = server_config(a.srv);
	char *pid_file = cfg->pid_file ? strdup(cfg->pid_file) : NULL;
	server_free(a.srv);
	int rc = 0;
	if (a.fallback && a.fallback->be->flush(a.fallback) < 0)
		log_err("saving the fallback store failed: %s", a.fallback->err);
	if (a.store->be->flush(a.store) < 0) {
		log_err("saving state failed: %s", a.store->err);
		rc = 1;
	}
	close_stores(&a);
	config_free(cfg);
	if (pid_file && chroot_reachable(pid_file))
		unlink(chroot_path(pid_file)); /* outside a chroot: left, like a stale one */
	free(pid_file);
	ev_loop_destroy(loop);
	log_close();
	return rc;
}
