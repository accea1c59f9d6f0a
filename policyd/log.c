/*
 * policyd/log.c - owns the daemon's log output: syslog or stderr.
 *
 * stderr lines carry a timestamp and the level; syslog lines carry what
 * syslog adds.  Values in key=value lines are quoted and escaped here so
 * that a sender address with spaces or control characters can neither
 * break a line nor forge a field.  Every line is bounded (struct log_kv).
 */
#include "log.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <syslog.h>
#include <sys/time.h>
#include <time.h>

static int log_to_syslog;
static enum log_level log_level_max = LOG_L_INFO;

static const struct {
	const char *name;
	int fac;
} log_facilities[] = {
    {"mail", LOG_MAIL},     {"daemon", LOG_DAEMON}, {"user", LOG_USER},     {"local0", LOG_LOCAL0},
    {"local1", LOG_LOCAL1}, {"local2", LOG_LOCAL2}, {"local3", LOG_LOCAL3}, {"local4", LOG_LOCAL4},
    {"local5", LOG_LOCAL5}, {"local6", LOG_LOCAL6}, {"local7", LOG_LOCAL7},
};

int log_open(const char *ident, const char *target, const char *facility, char *err, size_t errsz)
{
	if (target == NULL || strcmp(target, "stderr") == 0) {
		log_to_syslog = 0;
		return 0;
	}
	if (strcmp(target, "syslog") != 0) {
		snprintf(err, errsz, "unknown log target '%s' (syslog or stderr)", target);
		return -1;
	}
	int fac = -1;
	for (size_t i = 0; i < sizeof(log_facilities) / sizeof(log_facilities[0]); i++)
		if (strcasecmp(facility ? facility : "mail", log_facilities[i].name) == 0)
			fac = log_facilities[i].fac;
	if (fac < 0) {
		snprintf(err, errsz, "unknown syslog facility '%s'", facility);
		return -1;
	}
	openlog(ident, LOG_PID | LOG_NDELAY, fac);
	log_to_syslog = 1;
	return 0;
}

void log_set_level(enum log_level lvl)
{
	log_level_max = lvl;
}

void log_close(void)
{
	if (log_to_syslog)
		closelog();
	log_to_syslog = 0;
}

static void log_write(enum log_level lvl, const char *line)
{
	static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
	static const char *const name[] = {"error", "warning", "info", "debug"};

	if (lvl > log_level_max)
		return;
	if (log_to_syslog) {
		syslog(prio[lvl], "%s%s%s", lvl <= LOG_L_WARN ? name[lvl] : "",
		       lvl <= LOG_L_WARN ? ": " : "", line);
		return;
	}
	struct timeval tv;
	struct tm tm;
	char ts[32];
	gettimeofday(&tv, NULL);
	localtime_r(&tv.tv_sec, &tm);
	strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
	fprintf(stderr, "%s.%06ld policyd: %s: %s\n", ts, (long)tv.tv_usec, name[lvl], line);
}

void log_msg(enum log_level lvl, const char *fmt, ...)
{
	char line[2048];
	va_list ap;

	if (lvl > log_level_max)
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	log_write(lvl, line);
}

size_t log_quote(char *out, size_t outsz, const char *val)
{
	size_t n = 0;
	int quote = val[0] == '\0';

	if (outsz < 3)
		return 0;
	for (const char *s = val; *s && !quote; s++)
		if (*s == ' ' || *s == '"' || *s == '=' || *s == '\\' || (unsigned char)*s < 0x20 ||
		    *s == 0x7f)
			quote = 1;
	if (quote)
		out[n++] = '"';
	for (const unsigned char *s = (const unsigned char *)val; *s; s++) {
		char esc[5];
		size_t elen;
		if (*s == '"' || *s == '\\') {
			esc[0] = '\\';
			esc[1] = (char)*s;
			elen = 2;
		} else if (*s < 0x20 || *s == 0x7f) {
			snprintf(esc, sizeof(esc), "\\x%02x", *s);
			elen = 4;
		} else {
			esc[0] = (char)*s;
			elen = 1;
		}
		if (n + elen + 2 > outsz) /* room for closing quote and NUL */
			break;
		memcpy(out + n, esc, elen);
		n += elen;
	}
	if (quote)
		out[n++] = '"';
	out[n] = '\0';
	return n;
}

void log_kv_init(struct log_kv *kv, const char *event)
{
	kv->len = 0;
	kv->truncated = 0;
	kv->buf[0] = '\0';
	if (event)
		log_kv_str(kv, "event", event);
}

void log_kv_str(struct log_kv *kv, const char *key, const char *val)
{
	size_t room = sizeof(kv->buf) - kv->len;
	size_t klen = strlen(key);

	if (kv->truncated || room < klen + 5) {
		kv->truncated = 1;
		return;
	}
	if (kv->len)
		kv->buf[kv->len++] = ' ';
	memcpy(kv->buf + kv->len, key, klen);
	kv->len += klen;
	kv->buf[kv->len++] = '=';
	kv->len += log_quote(kv->buf + kv->len, sizeof(kv->buf) - kv->len, val ? val : "");
}

void log_kv_u64(struct log_kv *kv, const char *key, unsigned long long val)
{
	char num[24];
	snprintf(num, sizeof(num), "%llu", val);
	log_kv_str(kv, key, num);
}

void log_kv_emit(struct log_kv *kv, enum log_level lvl)
{
	log_write(lvl, kv->buf);
}
