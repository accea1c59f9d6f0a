/*
 * policyd/limit.c - owns the rate-limit check: which rules apply to a
 * request, what each one counts and when, and the verdict when a rule is
 * over its limit.
 *
 * Counting (DESIGN.md): a recipient is taken at RCPT (a repeated recipient
 * of the same `instance` counts once) and settled at END-OF-MESSAGE against
 * recipient_count, giving back what a later restriction rejected; messages
 * and bytes are taken at END-OF-MESSAGE, or at DATA when that is the last
 * hook Postfix calls, or at the first RCPT when it calls neither.  At RCPT a
 * message/bytes rule only peeks, so an exhausted account is stopped before
 * it sends DATA.  A refused request counts nothing (the store batch is
 * atomic), so retries do not extend a block.  A transaction abandoned before
 * END-OF-MESSAGE keeps its counts (never under-count).
 */
#include "limit.h"

#include <stdio.h>
#include <string.h>

#include "log.h"

struct limit_stats limit_stats;

enum {
	LP_TAKE_RCPT = 1, /* a recipient, reserved until settled */
	LP_TAKE_MSG,      /* a message or its bytes */
	LP_PEEK,          /* would a message still fit? (at RCPT) */
	LP_REFUND,        /* settlement */
};

static bool limit_refusing(const struct rule *r)
{
	return !r->dry_run && (r->action == ACT_DEFER || r->action == ACT_REJECT);
}

static size_t limit_copy(char *out, size_t outsz, const char *s)
{
	size_t n = strlen(s);
	if (n >= outsz)
		n = outsz - 1;
	memcpy(out, s, n);
	out[n] = '\0';
	return n;
}

size_t limit_subject(const struct pipeline_ctx *x, const struct rule *r, char *out, size_t outsz)
{
	const struct proto_request *q = x->req;
	size_t n = 0;

	out[0] = '\0';
	switch (r->key) {
	case KEY_SASL_USERNAME:
		if (x->pkind == PRINCIPAL_SASL)
			n = limit_copy(out, outsz, x->principal);
		break;
	case KEY_PRINCIPAL:
		n = limit_copy(out, outsz, x->principal);
		break;
	case KEY_SENDER:
		n = limit_copy(out, outsz, x->sender);
		break;
	case KEY_SENDER_DOMAIN:
		n = key_norm_domain(out, outsz, proto_get(q, PROTO_A_SENDER));
		break;
	case KEY_CLIENT_ADDRESS:
		n = limit_copy(out, outsz, x->client);
		break;
	case KEY_CLIENT_NETWORK:
		if (x->client[0])
			n = key_ip_net(out, outsz, &x->client_ip, r->prefix4, r->prefix6);
		break;
	case KEY_RECIPIENT_DOMAIN:
		n = key_norm_domain(out, outsz, proto_get(q, PROTO_A_RECIPIENT));
		break;
	default:
		break;
	}
	if (n >= outsz) { /* cut: still a stable key */
		n = outsz - 1;
		out[n] = '\0';
	}
	return n;
}

/* Apply a per-subject override: windows replaced, or exempt (returns false). */
static bool limit_override(const struct rule *r, const char *subject, struct store_op *op)
{
	if (r->novr == 0)
		return true;
	const struct override *o = config_override(r, subject);
	if (o == NULL)
		return true;
	if (o->exempt)
		return false;
	op->nwin = o->nwin;
	memcpy(op->win, o->win, sizeof(op->win));
	return true;
}

static void limit_add(struct pipeline_ctx *x, const struct rule *r, const char *subject,
                      enum store_op_kind kind, uint8_t purpose, uint64_t cost)
{
	struct pipeline_opmeta *m;
	struct store_op *op = pipeline_add_op(x, kind, r, subject, &m);
	if (op == NULL)
		return;
	if (!limit_override(r, subject, op)) {
		x->nops--; /* exempt: take it back */
		return;
	}
	op->cost = cost;
	op->refuse = (kind == STORE_TAKE || kind == STORE_PEEK) && limit_refusing(r);
	m->purpose = purpose;
	m->units = (uint32_t)cost;
}

/* When are messages and bytes taken, given the hooks Postfix calls? */
static enum proto_state limit_msg_state(const struct config *c)
{
	if (c->hooks & HOOK_EOM)
		return PROTO_STATE_EOM;
	if (c->hooks & HOOK_DATA)
		return PROTO_STATE_DATA;
	return PROTO_STATE_RCPT;
}

/* Give back the recipients that were reserved but not accepted. */
static void limit_settle(struct pipeline_ctx *x, const struct rule *r)
{
	struct txn *t = x->txn;
	uint64_t reserved = 0;
	uint32_t accepted = x->req->recipient_count;
	char keep_domain[KEY_MAX] = "";

	for (size_t i = 0; i < t->nresv; i++)
		if (strcmp(t->resv[i].rule, r->name) == 0)
			reserved += t->resv[i].count;
	if (reserved <= accepted)
		return;
	uint64_t excess = reserved - accepted;
	if (r->key == KEY_RECIPIENT_DOMAIN && accepted == 1 && x->recipient[0])
		key_norm_domain(keep_domain, sizeof(keep_domain), x->recipient);
	/* the one accepted domain is known: refund everything else first */
	if (keep_domain[0])
		for (size_t i = 0; i < t->nresv && excess; i++) {
			struct txn_resv *v = &t->resv[i];
			if (strcmp(v->rule, r->name) || !strcmp(v->subject, keep_domain))
				continue;
			uint32_t n = v->count < excess ? v->count : (uint32_t)excess;
			limit_add(x, r, v->subject, STORE_REFUND, LP_REFUND, n);
			v->count -= n;
			excess -= n;
		}
	/* otherwise the latest reservations go first */
	for (size_t i = t->nresv; i-- > 0 && excess;) {
		struct txn_resv *v = &t->resv[i];
		if (strcmp(v->rule, r->name) || v->count == 0)
			continue;
		uint32_t n = v->count < excess ? v->count : (uint32_t)excess;
		limit_add(x, r, v->subject, STORE_REFUND, LP_REFUND, n);
		v->count -= n;
		excess -= n;
	}
	limit_stats.refunded += reserved - accepted - excess;
}

static void limit_take_message(struct pipeline_ctx *x, const struct rule *r, const char *subject,
                               uint64_t size)
{
	if (r->count == COUNT_MESSAGES)
		limit_add(x, r, subject, STORE_TAKE, LP_TAKE_MSG, 1);
	else if (size > 0)
		limit_add(x, r, subject, STORE_TAKE, LP_TAKE_MSG, size);
}

void limit_prepare(struct pipeline_ctx *x)
{
	const struct config *c = x->cfg;
	const struct proto_request *q = x->req;
	enum proto_state st = q->state;
	enum proto_state msg_state = limit_msg_state(c);
	bool settle = (st == PROTO_STATE_EOM && (c->hooks & HOOK_EOM)) ||
	              (st == PROTO_STATE_DATA && !(c->hooks & HOOK_EOM) && (c->hooks & HOOK_DATA));
	char subject[KEY_MAX];

	if (st != PROTO_STATE_RCPT && st != PROTO_STATE_DATA && st != PROTO_STATE_EOM)
		return;
	const char *inst = proto_get(q, PROTO_A_INSTANCE);
	if (inst[0] && txn_begin(x->txn, inst)) {
		limit_stats.abandoned++;
		if ((c->hooks & HOOK_EOM) && limit_stats.abandoned == 100 &&
		    limit_stats.settled == 0)
			log_warn("hooks include eom, but 100 transactions ended without an "
			         "END-OF-MESSAGE request: is check_policy_service in "
			         "smtpd_end_of_data_restrictions?");
	}
	bool rcpt_seen = st == PROTO_STATE_RCPT && x->recipient[0] &&
	                 txn_has_rcpt(x->txn, txn_hash(x->recipient));

	for (size_t i = 0; i < c->nrules; i++) {
		const struct rule *r = &c->rules[i];
		if (r->scope == SCOPE_OUTBOUND && !x->outbound)
			continue;
		if (settle && r->count == COUNT_RECIPIENTS)
			limit_settle(x, r);
		if (limit_subject(x, r, subject, sizeof(subject)) == 0) {
			/* recipient_domain at EOM with several recipients: one message
			 * per reserved domain */
			if (st == msg_state && r->key == KEY_RECIPIENT_DOMAIN &&
			    r->count != COUNT_RECIPIENTS)
				for (size_t j = 0; j < x->txn->nresv; j++)
					if (x->txn->resv[j].is_domain && x->txn->resv[j].count)
						limit_take_message(x, r, x->txn->resv[j].subject,
						                   q->size);
			continue;
		}
		switch (st) {
		case PROTO_STATE_RCPT:
			if (r->count == COUNT_RECIPIENTS) {
				if (!rcpt_seen)
					limit_add(x, r, subject, STORE_TAKE, LP_TAKE_RCPT, 1);
			} else if (msg_state == PROTO_STATE_RCPT) {
				if (!x->txn->message_counted)
					limit_take_message(x, r, subject, q->size);
			} else {
				uint64_t cost = r->count == COUNT_BYTES && q->size ? q->size : 1;
				limit_add(x, r, subject, STORE_PEEK, LP_PEEK, cost);
			}
			break;
		case PROTO_STATE_DATA:
		case PROTO_STATE_EOM:
			if (r->count != COUNT_RECIPIENTS && st == msg_state)
				limit_take_message(x, r, subject, q->size);
			break;
		default:
			break;
		}
	}
}

/* A window's period as configured: "h", "5m", "1d", "90s". */
static void limit_fmt_period(char *out, size_t outsz, uint64_t us)
{
	static const struct {
		uint64_t us;
		const char *unit;
	} units[] = {
	    {86400000000ULL, "d"}, {3600000000ULL, "h"}, {60000000ULL, "m"}, {1000000ULL, "s"}};
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
		if (us % units[i].us == 0) {
			uint64_t n = us / units[i].us;
			if (n == 1)
				snprintf(out, outsz, "%s", units[i].unit);
			else
				snprintf(out, outsz, "%llu%s", (unsigned long long)n,
				         units[i].unit);
			return;
		}
	snprintf(out, outsz, "%lluus", (unsigned long long)us);
}

static void limit_text(struct pipeline_ctx *x, struct verdict_part *p, const struct rule *r,
                       const struct store_op *op, const struct store_result *res)
{
	const struct gcra_window *w = &op->win[res->window >= 0 ? res->window : 0];
	char per[32], retry[32];
	const char *who = op->subject;

	limit_fmt_period(per, sizeof(per), w->period_us);
	if (res->retry_us == UINT64_MAX)
		snprintf(retry, sizeof(retry), "never (larger than the limit)");
	else
		verdict_fmt_duration(retry, sizeof(retry), res->retry_us);
	snprintf(p->reason, sizeof(p->reason), "%s %llu/%s exceeded for %s, retry in %s",
	         config_count_name(r->count), (unsigned long long)w->limit, per, who, retry);
	const char *base = r->reply;
	char dflt[200];
	if (base == NULL) {
		snprintf(dflt, sizeof(dflt), "Rate limit exceeded for %s: at most %llu %s per %s",
		         who, (unsigned long long)w->limit, config_count_name(r->count), per);
		base = dflt;
	}
	if (r->action == ACT_DEFER && res->retry_us != UINT64_MAX)
		snprintf(p->text, sizeof(p->text), "%s; try again in %s", base, retry);
	else if (r->action == ACT_DEFER || r->action == ACT_REJECT)
		snprintf(p->text, sizeof(p->text), "%s; this message is larger than the limit",
		         base);
	else
		snprintf(p->text, sizeof(p->text), "%s", base);
	if (r->dsn[0])
		snprintf(p->dsn, sizeof(p->dsn), "%s", r->dsn);
}

void limit_finish(struct pipeline_ctx *x)
{
	const struct proto_request *q = x->req;
	bool any_take_rcpt = false;

	if (x->st != STORE_OK)
		return;
	for (size_t i = 0; i < x->nops; i++) {
		const struct pipeline_opmeta *m = &x->meta[i];
		const struct store_op *op = &x->ops[i];
		const struct store_result *res = &x->res[i];
		if (m->check != PIPELINE_CHECK_LIMIT)
			continue;
		if (m->purpose == LP_REFUND)
			continue;
		if (m->purpose == LP_TAKE_RCPT && res->committed) {
			txn_reserve(x->txn, op->rule, op->subject, 1,
			            m->rule->key == KEY_RECIPIENT_DOMAIN);
			any_take_rcpt = true;
		}
		if (!res->conform) {
			limit_stats.fired++;
			struct verdict_part *p = verdict_add(&x->v, "limit", m->rule->name,
			                                     m->rule->action, m->rule->dry_run);
			if (p)
				limit_text(x, p, m->rule, op, res);
		}
	}
	(void)any_take_rcpt;
	if (q->state == PROTO_STATE_RCPT) {
		if (!x->refused && x->recipient[0])
			txn_add_rcpt(x->txn, txn_hash(x->recipient));
		if (!x->refused && limit_msg_state(x->cfg) == PROTO_STATE_RCPT)
			x->txn->message_counted = true;
		return;
	}
	bool settle_state = (q->state == PROTO_STATE_EOM && (x->cfg->hooks & HOOK_EOM)) ||
	                    (q->state == PROTO_STATE_DATA && !(x->cfg->hooks & HOOK_EOM) &&
	                     (x->cfg->hooks & HOOK_DATA));
	if (!settle_state)
		return;
	limit_stats.settled++;
	/* The message is refused: none of its recipients were sent; give back
	 * what the settlement kept. */
	if (x->refused)
		for (size_t i = 0; i < x->txn->nresv; i++) {
			struct txn_resv *v = &x->txn->resv[i];
			if (v->count == 0)
				continue;
			const struct rule *r = NULL;
			for (size_t j = 0; j < x->cfg->nrules; j++)
				if (!strcmp(x->cfg->rules[j].name, v->rule))
					r = &x->cfg->rules[j];
			if (r == NULL)
				continue;
			size_t slen = strlen(v->subject) + 1;
			if (x->nfollow == STORE_MAX_BATCH ||
			    x->arena_used + slen > sizeof(x->arena))
				break;
			struct store_op *op = &x->follow[x->nfollow++];
			memset(op, 0, sizeof(*op));
			op->kind = STORE_REFUND;
			op->rule = r->name;
			op->subject = memcpy(x->arena + x->arena_used, v->subject, slen);
			x->arena_used += slen;
			op->cost = v->count;
			op->nwin = r->nwin;
			memcpy(op->win, r->win, sizeof(op->win));
			limit_override(r, v->subject, op);
			limit_stats.refunded += v->count;
		}
	txn_reset(x->txn);
}
