/*
 * policyd/txn.c - owns per-connection transaction state (see txn.h).
 * Buffers grow geometrically up to their bounds and are kept across
 * transactions of the same connection, so a busy connection allocates
 * nothing per request once warm.
 */
#include "txn.h"

#include <stdlib.h>
#include <string.h>

void txn_init(struct txn *t)
{
	memset(t, 0, sizeof(*t));
}

void txn_reset(struct txn *t)
{
	for (size_t i = 0; i < t->nresv; i++) {
		free(t->resv[i].rule);
		free(t->resv[i].subject);
	}
	t->nresv = 0;
	t->nrcpt = 0;
	t->active = false;
	t->instance[0] = '\0';
	t->message_counted = false;
	t->overflow = false;
}

void txn_free(struct txn *t)
{
	txn_reset(t);
	free(t->rcpt);
	free(t->resv);
	memset(t, 0, sizeof(*t));
}

bool txn_begin(struct txn *t, const char *instance)
{
	if (t->active && strcmp(t->instance, instance) == 0)
		return false;
	bool abandoned = t->active && (t->nresv > 0 || t->nrcpt > 0);
	txn_reset(t);
	size_t n = strlen(instance);
	if (n >= sizeof(t->instance))
		n = sizeof(t->instance) - 1;
	memcpy(t->instance, instance, n);
	t->instance[n] = '\0';
	t->active = true;
	return abandoned;
}

uint64_t txn_hash(const char *s)
{
	uint64_t h = 1469598103934665603ULL;
	for (; *s; s++) {
		h ^= (unsigned char)*s;
		h *= 1099511628211ULL;
	}
	return h;
}

bool txn_has_rcpt(const struct txn *t, uint64_t h)
{
	for (size_t i = 0; i < t->nrcpt; i++)
		if (t->rcpt[i] == h)
			return true;
	return false;
}

void txn_add_rcpt(struct txn *t, uint64_t h)
{
	if (t->nrcpt == t->rcpt_cap) {
		size_t cap = t->rcpt_cap ? t->rcpt_cap * 2 : 8;
		if (cap > TXN_MAX_RCPT) {
			t->overflow = true;
			return;
		}
		uint64_t *n = realloc(t->rcpt, cap * sizeof(*n));
		if (n == NULL) {
			t->overflow = true;
			return;
		}
		t->rcpt = n;
		t->rcpt_cap = cap;
	}
	t->rcpt[t->nrcpt++] = h;
}

void txn_reserve(struct txn *t, const char *rule, const char *subject, uint32_t n, bool is_domain)
{
	for (size_t i = 0; i < t->nresv; i++)
		if (strcmp(t->resv[i].rule, rule) == 0 &&
		    strcmp(t->resv[i].subject, subject) == 0) {
			t->resv[i].count += n;
			return;
		}
	if (t->nresv == t->resv_cap) {
		size_t cap = t->resv_cap ? t->resv_cap * 2 : 4;
		if (cap > TXN_MAX_RESV) {
			t->overflow = true;
			return;
		}
		struct txn_resv *r = realloc(t->resv, cap * sizeof(*r));
		if (r == NULL) {
			t->overflow = true;
			return;
		}
		t->resv = r;
		t->resv_cap = cap;
	}
	struct txn_resv *r = &t->resv[t->nresv];
	r->rule = strdup(rule);
	r->subject = strdup(subject);
	if (r->rule == NULL || r->subject == NULL) {
		free(r->rule);
		free(r->subject);
		t->overflow = true;
		return;
	}
	r->count = n;
	r->is_domain = is_domain;
	t->nresv++;
}
