/*
 * policyd/log.h - the daemon's log: syslog (facility mail by default) or
 * stderr, one line per event.  Decision lines are greppable key=value
 * lists built with the log_kv_* helpers into a bounded buffer.
 */
#ifndef POLICYD_LOG_H
#define POLICYD_LOG_H

#include <stdarg.h>
#include <stddef.h>

enum log_level { LOG_L_ERR = 0, LOG_L_WARN, LOG_L_INFO, LOG_L_DEBUG };

/* target: "stderr" or "syslog"; facility: syslog facility name. */
int log_open(const char *ident, const char *target, const char *facility, char *err, size_t errsz);
void log_set_level(enum log_level lvl);
void log_close(void);

void log_msg(enum log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define log_err(...)   log_msg(LOG_L_ERR, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_L_WARN, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_L_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_L_DEBUG, __VA_ARGS__)

/* A bounded key=value line under construction. */
struct log_kv {
	char buf[2048];
	size_t len;
	int truncated;
};

void log_kv_init(struct log_kv *kv, const char *event);
/* key=value; the value is quoted ("...") when it has spaces, quotes or '='. */
void log_kv_str(struct log_kv *kv, const char *key, const char *val);
void log_kv_u64(struct log_kv *kv, const char *key, unsigned long long val);
void log_kv_emit(struct log_kv *kv, enum log_level lvl);

/* Write `val` as a safe log token into out (quoted if needed, controls escaped). */
size_t log_quote(char *out, size_t outsz, const char *val);

#endif
