/*
 * policyd/held.c - owns the held ledger (see held.h): notes of HOLD
 * verdicts by transaction `instance`, their records in the store under
 * "@held"/QUEUEID, and the "held" module that gives the ledger its store,
 * sweeps stale notes and publishes the ledger's counters.
 *
 * Entry points: held_note() (server.c, once per answered request),
 * held_module.  Hot path: when the verdict is not HOLD and no note is
 * pending, held_note() returns after one compare; with notes pending it
 * scans at most HELD_MAX_PENDING 64-bit hashes.  Records are written with
 * one-op store batches whose buffers live until the store's callback.
 */
#include "held.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "proto/request.h"
#include "txn.h"

#define HELD_QID_MAX 32

struct held_note {
	bool used;
	bool written;
	uint64_t hash; /* of instance */
	char instance[TXN_INSTANCE_MAX];
	char qid[HELD_QID_MAX];
	int64_t t_us;
	json_t *rec;
};

struct held_put {
	struct store_op op;
	char subject[HELD_QID_MAX];
	char *val;
};

struct held_stats held_stats;

static struct held_note held_tab[HELD_MAX_PENDING];
static size_t held_npending;
static struct store *held_store;
static ev_timer held_sweep;
static struct module_ctx *held_m;

static const char *held_kind(enum principal_kind k)
{
	switch (k) {
	case PRINCIPAL_SASL:
		return "sasl_username";
	case PRINCIPAL_SENDER:
		return "sender";
	case PRINCIPAL_CLIENT:
		return "client_address";
	default:
		return "none";
	}
}

static bool held_valid_qid(const char *s)
{
	size_t n = 0;
	for (; s[n]; n++) {
		char c = s[n];
		bool alnum =
		    (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
		if (!alnum || n + 1 >= HELD_QID_MAX)
			return false;
	}
	return n > 0;
}

static json_t *held_part(const struct verdict_part *p)
{
	json_t *c = json_object();
	if (c == NULL)
		return NULL;
	json_object_set_new(c, "check", json_string(p->check ? p->check : ""));
	json_object_set_new(c, "rule", json_string(p->rule ? p->rule : ""));
	json_object_set_new(c, "action", json_string(config_action_name(p->action)));
	json_object_set_new(c, "dry_run", json_boolean(p->dry_run));
	json_object_set_new(c, "reason", json_string(p->reason));
	return c;
}

/* Strings from the request may not be UTF-8: json_string() refuses them. */
static json_t *held_str(const char *s)
{
	json_t *j = json_string(s);
	return j ? j : json_string("(not UTF-8)");
}

static json_t *held_record(const struct pipeline_ctx *x)
{
	const struct proto_request *q = x->req;
	json_t *r = json_object();
	if (r == NULL)
		return NULL;
	json_object_set_new(r, "v", json_integer(1));
	json_object_set_new(r, "queue_id", json_string(""));
	json_object_set_new(r, "instance", held_str(proto_get(q, PROTO_A_INSTANCE)));
	json_object_set_new(r, "account", held_str(x->principal));
	json_object_set_new(r, "principal_kind", json_string(held_kind(x->pkind)));
	json_object_set_new(r, "sender", held_str(x->sender));
	json_object_set_new(r, "client", held_str(x->client));
	json_object_set_new(r, "time", json_integer((json_int_t)(x->now_us / 1000000)));
	json_object_set_new(r, "state", json_string(proto_state_name(q->state)));
	json_object_set_new(r, "action", json_string(config_action_name(x->v.action)));
	const struct verdict_part *w = x->v.winner >= 0 ? &x->v.part[x->v.winner] : NULL;
	json_object_set_new(r, "rule", json_string(w && w->rule ? w->rule : ""));
	json_object_set_new(r, "check", json_string(w && w->check ? w->check : ""));
	json_object_set_new(r, "reason", held_str(w ? w->reason : ""));
	json_t *comp = json_array();
	for (size_t i = 0; i < x->v.nparts; i++)
		json_array_append_new(comp, held_part(&x->v.part[i]));
	json_object_set_new(r, "components", comp);
	return r;
}

/* Add the parts of a later HOLD that the note does not have yet. */
static void held_merge(json_t *rec, const struct pipeline_ctx *x)
{
	json_t *comp = json_object_get(rec, "components");
	if (!json_is_array(comp))
		return;
	for (size_t i = 0; i < x->v.nparts; i++) {
		const struct verdict_part *p = &x->v.part[i];
		bool have = false;
		size_t k;
		json_t *c;
		json_array_foreach(comp, k, c)
		{
			const char *ck = json_string_value(json_object_get(c, "check"));
			const char *rl = json_string_value(json_object_get(c, "rule"));
			if (ck && rl && !strcmp(ck, p->check ? p->check : "") &&
			    !strcmp(rl, p->rule ? p->rule : ""))
				have = true;
		}
		if (!have && json_array_size(comp) < 32)
			json_array_append_new(comp, held_part(p));
	}
}

static void held_put_done(void *arg, enum store_status st, const struct store_result *res, size_t n)
{
	struct held_put *p = arg;
	if (st != STORE_OK) {
		held_stats.errors++;
		log_warn("event=held_record_error queue_id=%s error=\"%s\"", p->subject,
		         held_store ? held_store->err : "store gone");
	}
	free(p->val);
	free(p);
}

static void held_write(struct held_note *e, int64_t now_us)
{
	char *text = json_dumps(e->rec, JSON_COMPACT | JSON_PRESERVE_ORDER);
	if (text && strlen(text) > STORE_MAX_VALUE) {
		/* too many components: keep the winner's rule and reason only */
		free(text);
		json_object_set_new(e->rec, "components", json_array());
		json_object_set_new(e->rec, "components_dropped", json_true());
		text = json_dumps(e->rec, JSON_COMPACT | JSON_PRESERVE_ORDER);
		if (text && strlen(text) > STORE_MAX_VALUE) {
			free(text);
			json_object_set_new(e->rec, "reason", json_string("(cut)"));
			text = json_dumps(e->rec, JSON_COMPACT | JSON_PRESERVE_ORDER);
		}
	}
	struct held_put *p = text ? calloc(1, sizeof(*p)) : NULL;
	if (p == NULL || strlen(text) > STORE_MAX_VALUE) {
		held_stats.errors++;
		free(text);
		free(p);
		return;
	}
	p->val = text;
	snprintf(p->subject, sizeof(p->subject), "%s", e->qid);
	p->op.kind = STORE_PUT;
	p->op.rule = HELD_NS;
	p->op.subject = p->subject;
	p->op.val = p->val;
	p->op.vlen = strlen(p->val);
	p->op.ttl_us = HELD_TTL_US;
	if (store_batch(held_store, &p->op, 1, now_us, held_put_done, p) != 0) {
		held_stats.errors++;
		free(p->val);
		free(p);
	}
}

static void held_forget(struct held_note *e)
{
	if (!e->used)
		return;
	if (!e->written)
		held_stats.dropped++;
	json_decref(e->rec);
	memset(e, 0, sizeof(*e));
	held_npending--;
}

static struct held_note *held_find(const char *instance, uint64_t h)
{
	if (held_npending == 0 || instance[0] == '\0')
		return NULL;
	for (size_t i = 0; i < HELD_MAX_PENDING; i++)
		if (held_tab[i].used && held_tab[i].hash == h &&
		    !strcmp(held_tab[i].instance, instance))
			return &held_tab[i];
	return NULL;
}

static struct held_note *held_alloc(void)
{
	struct held_note *oldest = NULL;
	for (size_t i = 0; i < HELD_MAX_PENDING; i++) {
		if (!held_tab[i].used)
			return &held_tab[i];
		if (oldest == NULL || held_tab[i].t_us < oldest->t_us)
			oldest = &held_tab[i];
	}
	log_warn("held: %d transactions wait for a queue id: forgetting the oldest (%s)",
	         HELD_MAX_PENDING, oldest->instance);
	held_forget(oldest);
	return oldest;
}

void held_note(const struct pipeline_ctx *x)
{
	bool hold = x->v.action == ACT_HOLD;
	if (held_store == NULL || (!hold && held_npending == 0))
		return;
	const struct proto_request *q = x->req;
	const char *inst = proto_get(q, PROTO_A_INSTANCE);
	const char *qid = proto_get(q, PROTO_A_QUEUE_ID);
	uint64_t h = inst[0] ? txn_hash(inst) : 0;
	struct held_note *e = held_find(inst, h);

	if (hold) {
		held_stats.noted++;
		if (e == NULL) {
			e = held_alloc();
			e->rec = held_record(x);
			if (e->rec == NULL)
				return;
			e->used = true;
			e->hash = h;
			snprintf(e->instance, sizeof(e->instance), "%s", inst);
			e->t_us = x->now_us;
			held_npending++;
		} else {
			held_merge(e->rec, x);
		}
	}
	if (e == NULL)
		return;
	bool final = q->state == PROTO_STATE_EOM ||
	             (q->state == PROTO_STATE_DATA && !(x->cfg->hooks & HOOK_EOM));
	if (qid[0] && held_valid_qid(qid)) {
		snprintf(e->qid, sizeof(e->qid), "%s", qid);
		json_object_set_new(e->rec, "queue_id", json_string(qid));
		if (q->state == PROTO_STATE_EOM || q->state == PROTO_STATE_DATA) {
			json_object_set_new(e->rec, "recipient_count",
			                    json_integer((json_int_t)q->recipient_count));
			if (q->state == PROTO_STATE_EOM)
				json_object_set_new(e->rec, "size",
				                    json_integer((json_int_t)q->size));
		}
		if (!e->written) {
			held_stats.written++;
			e->written = true;
			const char *acct = json_string_value(json_object_get(e->rec, "account"));
			const char *rule = json_string_value(json_object_get(e->rec, "rule"));
			log_info("event=held queue_id=%s account=%s rule=%s", qid, acct ? acct : "",
			         rule ? rule : "");
			held_write(e, x->now_us);
		} else if (final || hold) {
			held_stats.updated++;
			held_write(e, x->now_us);
		}
	}
	if (final || inst[0] == '\0')
		held_forget(e);
}

/* ---------------------------------------------------------------- module */

static void held_sweep_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	if (held_npending == 0)
		return;
	int64_t now = (int64_t)(ev_now(loop) * 1e6);
	for (size_t i = 0; i < HELD_MAX_PENDING; i++)
		if (held_tab[i].used &&
		    now - held_tab[i].t_us > (int64_t)HELD_PENDING_MAX_AGE_S * 1000000)
			held_forget(&held_tab[i]);
}

static void held_collect(struct metrics_out *o, void *arg)
{
	metrics_out_u64(o, "event=\"noted\"", held_stats.noted);
	metrics_out_u64(o, "event=\"written\"", held_stats.written);
	metrics_out_u64(o, "event=\"updated\"", held_stats.updated);
	metrics_out_u64(o, "event=\"dropped\"", held_stats.dropped);
	metrics_out_u64(o, "event=\"error\"", held_stats.errors);
}

static void held_collect_pending(struct metrics_out *o, void *arg)
{
	metrics_out_u64(o, NULL, held_npending);
}

static int held_start(struct module_ctx *m, char *err, size_t errsz)
{
	held_m = m;
	held_store = m->store;
	ev_timer_init(&held_sweep, held_sweep_cb, 60.0, 60.0);
	ev_timer_start(m->loop, &held_sweep);
	metrics_register("policyd_held_records_total",
	                 "Held-ledger events: HOLD verdicts noted, records written/updated, "
	                 "notes dropped without a queue id, store errors.",
	                 METRICS_COUNTER_T, held_collect, &held_stats);
	metrics_register("policyd_held_pending", "HOLD notes waiting for their queue id.",
	                 METRICS_GAUGE_T, held_collect_pending, &held_stats);
	return 0;
}

static void held_stop(struct module_ctx *m)
{
	ev_timer_stop(m->loop, &held_sweep);
	for (size_t i = 0; i < HELD_MAX_PENDING; i++)
		if (held_tab[i].used)
			held_forget(&held_tab[i]);
	metrics_unregister(&held_stats);
	held_store = NULL;
	held_m = NULL;
}

const struct module held_module = {"held", held_start, NULL, held_stop};
