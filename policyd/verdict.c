/*
 * policyd/verdict.c - owns combining the checks' contributions into one
 * answer and writing the action line for Postfix.  Severity order:
 * REJECT > DEFER > HOLD > WARN > DUNNO; a dry-run part never wins, it is
 * only logged.  Between parts of equal severity the first one wins (rules
 * run in file order).
 */
#include "verdict.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "proto/reply.h"

void verdict_init(struct verdict *v)
{
	v->action = ACT_DUNNO;
	v->winner = -1;
	v->nparts = 0;
	v->dropped = 0;
}

struct verdict_part *verdict_add(struct verdict *v, const char *check, const char *rule,
                                 enum verdict_action a, bool dry_run)
{
	if (v->nparts == VERDICT_MAX_FIRED) {
		v->dropped++;
		/* keep the most severe: overwrite the last part when this one is worse */
		struct verdict_part *last = &v->part[VERDICT_MAX_FIRED - 1];
		if (dry_run || (!last->dry_run && last->action >= a))
			return NULL;
		v->nparts--;
	}
	struct verdict_part *p = &v->part[v->nparts++];
	p->action = a;
	p->dry_run = dry_run;
	p->rule = rule;
	p->check = check;
	p->reason[0] = '\0';
	p->text[0] = '\0';
	p->dsn[0] = '\0';
	return p;
}

void verdict_decide(struct verdict *v)
{
	v->action = ACT_DUNNO;
	v->winner = -1;
	for (size_t i = 0; i < v->nparts; i++) {
		const struct verdict_part *p = &v->part[i];
		if (p->dry_run || p->action == ACT_DUNNO)
			continue;
		if (v->winner < 0 || p->action > v->action) {
			v->action = p->action;
			v->winner = (int)i;
		}
	}
}

const char *verdict_action_word(enum verdict_action a)
{
	static const char *const words[] = {"DUNNO", "WARN", "HOLD", "DEFER", "REJECT"};
	return a <= ACT_REJECT ? words[a] : "DUNNO";
}

size_t verdict_reply(const struct verdict *v, char *out, size_t outsz)
{
	char text[VERDICT_TEXT_MAX + 24];

	if (v->winner < 0 || v->action == ACT_DUNNO)
		return proto_reply_format(out, outsz, "DUNNO", NULL);
	const struct verdict_part *p = &v->part[v->winner];
	switch (v->action) {
	case ACT_DEFER:
	case ACT_REJECT:
		snprintf(text, sizeof(text), "%s%s%s",
		         p->dsn[0] ? p->dsn : (v->action == ACT_DEFER ? "4.7.1" : "5.7.1"),
		         p->text[0] ? " " : "", p->text);
		break;
	default:
		snprintf(text, sizeof(text), "%s", p->text);
		break;
	}
	return proto_reply_format(out, outsz, verdict_action_word(v->action), text);
}

bool verdict_dsn_valid(const char *d)
{
	/* class.subject.detail: [245].\d{1,3}.\d{1,3} */
	if ((d[0] != '2' && d[0] != '4' && d[0] != '5') || d[1] != '.')
		return false;
	d += 2;
	for (int part = 0; part < 2; part++) {
		int n = 0;
		while (isdigit((unsigned char)*d) && n < 4) {
			d++;
			n++;
		}
		if (n == 0 || n > 3)
			return false;
		if (part == 0 && *d++ != '.')
			return false;
	}
	return *d == '\0';
}

int verdict_check_action_text(const char *s, char *err, size_t errsz)
{
	static const char *const words[] = {"DUNNO", "OK",   "DEFER", "DEFER_IF_PERMIT", "REJECT",
	                                    "HOLD",  "WARN", "INFO",  "DEFER_IF_REJECT"};
	size_t wl = strcspn(s, " \t");

	if (!proto_utf8_valid(s, strlen(s)) || strlen(s) > PROTO_REPLY_MAX_TEXT) {
		snprintf(err, errsz, "must be UTF-8 text of at most %d bytes",
		         PROTO_REPLY_MAX_TEXT);
		return -1;
	}
	if (wl == 3 && (s[0] == '4' || s[0] == '5') && isdigit((unsigned char)s[1]) &&
	    isdigit((unsigned char)s[2]))
		return 0;
	for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++)
		if (strlen(words[i]) == wl && strncasecmp(s, words[i], wl) == 0)
			return 0;
	snprintf(err, errsz,
	         "'%.*s' is not an access(5) action (DUNNO, DEFER, REJECT, 4NN, 5NN, ...)",
	         (int)(wl > 40 ? 40 : wl), s);
	return -1;
}

void verdict_fmt_duration(char *out, size_t outsz, uint64_t us)
{
	uint64_t s = us / 1000000 + (us % 1000000 != 0); /* rounded up, no wrap */
	if (s < 120)
		snprintf(out, outsz, "%llus", (unsigned long long)s);
	else if (s < 7200)
		snprintf(out, outsz, "%llum", (unsigned long long)((s + 59) / 60));
	else if (s < 2 * 86400)
		snprintf(out, outsz, "%lluh", (unsigned long long)((s + 3599) / 3600));
	else
		snprintf(out, outsz, "%llud", (unsigned long long)((s + 86399) / 86400));
}
