/*
 * policyd/pipeline.h - the ordered checks every request goes through
 * (global pause → account flag → rate limits → anomaly score → NDR state;
 * today: rate limits), all of one shape: prepare() adds store ops to the
 * request's single batch, finish() reads their results and adds verdict
 * parts.  One batch per request means one round trip for a networked store.
 * A check never knows which backend the store is.
 */
#ifndef POLICYD_PIPELINE_H
#define POLICYD_PIPELINE_H

#include <stdbool.h>
#include <stdint.h>

#include "cache/store.h"
#include "config.h"
#include "key.h"
#include "proto/request.h"
#include "txn.h"
#include "verdict.h"

#define PIPELINE_ARENA 8192 /* bytes for the subjects of one batch */

/* The checks, in pipeline order (index into the table in pipeline.c). */
enum pipeline_check_id {
	PIPELINE_CHECK_PAUSE = 0, /* flag.c: the global pause */
	PIPELINE_CHECK_FLAG,      /* flag.c: the account's flag */
	PIPELINE_CHECK_LIMIT,
	PIPELINE_CHECK_ANOMALY,
	PIPELINE_CHECK_NDR /* ndr_module.c: the NDR spike state */
};

/* What an op is for, so finish() can read its result. */
struct pipeline_opmeta {
	const struct rule *rule;
	uint8_t purpose; /* check-specific */
	uint8_t check;   /* index of the check that added it */
	uint32_t units;  /* what a reservation would record */
};

struct pipeline_ctx {
	const struct config *cfg;
	const struct proto_request *req;
	struct txn *txn;
	int64_t now_us;
	/* who is sending */
	char principal[KEY_MAX];
	enum principal_kind pkind;
	bool outbound;
	/* normalised request values, computed once */
	char sender[KEY_MAX];
	char recipient[KEY_MAX];
	char client[64];         /* canonical text; "" when not an address */
	struct key_ip client_ip; /* parsed, valid when client[0] */
	/* the batch */
	struct store_op ops[STORE_MAX_BATCH];
	struct pipeline_opmeta meta[STORE_MAX_BATCH];
	size_t nops;
	size_t skipped; /* ops that did not fit (logged) */
	char arena[PIPELINE_ARENA];
	size_t arena_used;
	struct store_result res[STORE_MAX_BATCH];
	enum store_status st;
	bool refused; /* the batch was refused (some refusing op did not conform) */
	/* ops to run after the answer (e.g. refunds of a refused message) */
	struct store_op follow[STORE_MAX_BATCH];
	size_t nfollow;
	struct verdict v;
};

struct pipeline_check {
	const char *name;
	void (*prepare)(struct pipeline_ctx *x);
	void (*finish)(struct pipeline_ctx *x);
};

/* Fill principal/outbound and normalised values; reset the batch. */
void pipeline_begin(struct pipeline_ctx *x, const struct config *cfg,
                    const struct proto_request *req, struct txn *txn, int64_t now_us);
/* Run every check's prepare(). */
void pipeline_prepare(struct pipeline_ctx *x);
/* After the store answered (res/st filled): every finish(), then decide. */
void pipeline_finish(struct pipeline_ctx *x);

/* Add an op; its subject is copied into the arena.  NULL when full. */
struct store_op *pipeline_add_op(struct pipeline_ctx *x, enum store_op_kind kind,
                                 const struct rule *r, const char *subject,
                                 struct pipeline_opmeta **meta);

#endif
