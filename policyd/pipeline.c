/*
 * policyd/pipeline.c - owns the order of the checks and the request
 * context they share: principal detection, normalised values, the one
 * store batch of the request, and the final decision.
 *
 * Principal: sasl_username when set (outbound); else, for a client in
 * trusted_networks, the sender (outbound); else the client address
 * (not outbound: only rules with scope = all apply).
 */
#include "pipeline.h"

#include <string.h>

#include "anomaly.h"
#include "flag.h"
#include "limit.h"
#include "log.h"
#include "ndr.h"

static const struct pipeline_check pipeline_checks[] = {
    {"pause", flag_pause_prepare, flag_pause_finish},
    {"flag", flag_check_prepare, flag_check_finish},
    {"limit", limit_prepare, limit_finish},
    {"anomaly", anomaly_prepare, anomaly_finish},
    {"ndr", ndr_prepare, ndr_finish},
};
#define PIPELINE_NCHECKS (sizeof(pipeline_checks) / sizeof(pipeline_checks[0]))

void pipeline_begin(struct pipeline_ctx *x, const struct config *cfg,
                    const struct proto_request *req, struct txn *txn, int64_t now_us)
{
	x->cfg = cfg;
	x->req = req;
	x->txn = txn;
	x->now_us = now_us;
	x->nops = 0;
	x->skipped = 0;
	x->arena_used = 0;
	x->st = STORE_OK;
	x->refused = false;
	x->nfollow = 0;
	verdict_init(&x->v);

	const char *sasl = proto_get(req, PROTO_A_SASL_USERNAME);
	const char *sender = proto_get(req, PROTO_A_SENDER);
	const char *client = proto_get(req, PROTO_A_CLIENT_ADDRESS);

	key_norm_address(x->sender, sizeof(x->sender), sender, &cfg->keyopts);
	key_norm_address(x->recipient, sizeof(x->recipient), proto_get(req, PROTO_A_RECIPIENT),
	                 &cfg->keyopts);
	if (key_ip_parse(client, &x->client_ip) < 0 ||
	    key_ip_fmt(x->client, sizeof(x->client), &x->client_ip) == 0)
		x->client[0] = '\0';

	x->principal[0] = '\0';
	x->pkind = PRINCIPAL_NONE;
	x->outbound = false;
	if (sasl[0] && key_norm_login(x->principal, sizeof(x->principal), sasl,
	                              cfg->keyopts.fold_localpart) > 0) {
		x->pkind = PRINCIPAL_SASL;
		x->outbound = true;
	} else if (x->client[0] && key_ip_in(&x->client_ip, cfg->trusted, cfg->ntrusted)) {
		x->outbound = true;
		if (x->sender[0]) {
			memcpy(x->principal, x->sender, sizeof(x->principal));
			x->pkind = PRINCIPAL_SENDER;
		} else {
			memcpy(x->principal, x->client, sizeof(x->client));
			x->pkind = PRINCIPAL_CLIENT;
		}
	} else if (x->client[0]) {
		memcpy(x->principal, x->client, sizeof(x->client));
		x->pkind = PRINCIPAL_CLIENT;
	}
}

struct store_op *pipeline_add_op(struct pipeline_ctx *x, enum store_op_kind kind,
                                 const struct rule *r, const char *subject,
                                 struct pipeline_opmeta **meta)
{
	size_t slen = strlen(subject) + 1;
	if (x->nops == STORE_MAX_BATCH || x->arena_used + slen > sizeof(x->arena)) {
		x->skipped++;
		return NULL;
	}
	char *s = x->arena + x->arena_used;
	memcpy(s, subject, slen);
	x->arena_used += slen;

	struct store_op *op = &x->ops[x->nops];
	memset(op, 0, sizeof(*op));
	op->kind = kind;
	op->rule = r->name;
	op->subject = s;
	op->nwin = r->nwin;
	memcpy(op->win, r->win, sizeof(op->win));
	struct pipeline_opmeta *m = &x->meta[x->nops];
	memset(m, 0, sizeof(*m));
	m->rule = r;
	x->nops++;
	if (meta)
		*meta = m;
	return op;
}

void pipeline_prepare(struct pipeline_ctx *x)
{
	for (size_t i = 0; i < PIPELINE_NCHECKS; i++) {
		size_t before = x->nops;
		pipeline_checks[i].prepare(x);
		for (size_t j = before; j < x->nops; j++)
			x->meta[j].check = (uint8_t)i;
	}
	if (x->skipped)
		log_warn(
		    "request needs more than %d store operations or %d bytes of keys: %zu skipped",
		    STORE_MAX_BATCH, PIPELINE_ARENA, x->skipped);
}

void pipeline_finish(struct pipeline_ctx *x)
{
	x->refused = false;
	if (x->st == STORE_OK)
		for (size_t i = 0; i < x->nops; i++)
			if (x->ops[i].refuse && !x->res[i].conform)
				x->refused = true;
	for (size_t i = 0; i < PIPELINE_NCHECKS; i++)
		pipeline_checks[i].finish(x);
	verdict_decide(&x->v);
}
