/*
 * proto/postqueue.c - owns parsing one line of `postqueue -j` into a
 * struct postqueue_msg (see postqueue.h), with jansson.
 *
 * Entry points: postqueue_parse(), postqueue_valid_id().  Limits: lines
 * above POSTQUEUE_MAX_LINE bytes are refused; strings are cut to their
 * buffers (m->cut); JSON nesting is bounded by jansson's own depth limit.
 */
#include "postqueue.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>

bool postqueue_valid_id(const char *s)
{
	size_t n = 0;
	for (; s[n]; n++) {
		char c = s[n];
		bool alnum =
		    (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
		if (!alnum || n + 1 >= POSTQUEUE_QID_MAX)
			return false;
	}
	return n > 0;
}

/* Copy a JSON string into out; true when it was a string. */
static bool postqueue_copy(json_t *v, char *out, size_t outsz, bool *cut)
{
	if (!json_is_string(v))
		return false;
	size_t len = json_string_length(v);
	const char *s = json_string_value(v);
	if (len >= outsz) {
		len = outsz - 1;
		/* do not leave half a UTF-8 sequence at the end */
		while (len > 0 && ((unsigned char)s[len] & 0xC0) == 0x80)
			len--;
		*cut = true;
	}
	memcpy(out, s, len);
	out[len] = '\0';
	/* an embedded NUL (\u0000) ends the string here: that is fine for display */
	return true;
}

enum postqueue_status postqueue_parse(const char *line, size_t len, struct postqueue_msg *m,
                                      char *err, size_t errsz)
{
	json_error_t je;

	memset(m, 0, sizeof(*m));
	m->arrival_time = -1;
	m->message_size = -1;
	while (len > 0 && (line[len - 1] == '\r' || line[len - 1] == ' ' || line[len - 1] == '\t'))
		len--;
	if (len == 0) {
		snprintf(err, errsz, "empty line");
		return POSTQUEUE_BAD;
	}
	if (len > POSTQUEUE_MAX_LINE) {
		snprintf(err, errsz, "line longer than %u bytes", POSTQUEUE_MAX_LINE);
		return POSTQUEUE_BAD;
	}
	json_t *o = json_loadb(line, len, JSON_ALLOW_NUL, &je);
	if (o == NULL) {
		snprintf(err, errsz, "not JSON: %.80s (byte %d)", je.text, je.position);
		return POSTQUEUE_BAD;
	}
	if (!json_is_object(o)) {
		snprintf(err, errsz, "not a JSON object");
		json_decref(o);
		return POSTQUEUE_BAD;
	}
	bool cut = false;
	json_t *qn = json_object_get(o, "queue_name");
	if (!postqueue_copy(qn, m->queue_name, sizeof(m->queue_name), &cut) || cut ||
	    m->queue_name[0] == '\0') {
		snprintf(err, errsz, "no queue_name (a short string)");
		json_decref(o);
		return POSTQUEUE_BAD;
	}
	for (const char *p = m->queue_name; *p; p++)
		if (*p < 'a' || *p > 'z') {
			snprintf(err, errsz, "queue_name is not a queue name");
			json_decref(o);
			return POSTQUEUE_BAD;
		}
	json_t *qi = json_object_get(o, "queue_id");
	if (!postqueue_copy(qi, m->queue_id, sizeof(m->queue_id), &cut) || cut ||
	    !postqueue_valid_id(m->queue_id)) {
		snprintf(err, errsz, "no valid queue_id (1-31 letters and digits)");
		json_decref(o);
		return POSTQUEUE_BAD;
	}
	json_t *v = json_object_get(o, "arrival_time");
	if (json_is_integer(v) && json_integer_value(v) >= 0)
		m->arrival_time = (int64_t)json_integer_value(v);
	else if (v)
		m->odd++;
	v = json_object_get(o, "message_size");
	if (json_is_integer(v) && json_integer_value(v) >= 0)
		m->message_size = (int64_t)json_integer_value(v);
	else if (v)
		m->odd++;
	v = json_object_get(o, "forced_expire");
	if (json_is_boolean(v))
		m->forced_expire = json_is_true(v);
	else if (v)
		m->odd++;
	v = json_object_get(o, "sender");
	if (postqueue_copy(v, m->sender, sizeof(m->sender), &m->cut))
		m->has_sender = true;
	else if (v)
		m->odd++;
	v = json_object_get(o, "recipients");
	if (json_is_array(v)) {
		size_t i;
		json_t *r;
		json_array_foreach(v, i, r)
		{
			if (!json_is_object(r)) {
				m->odd++;
				continue;
			}
			json_t *a = json_object_get(r, "address");
			if (!json_is_string(a)) {
				m->odd++;
				continue;
			}
			if (m->nrcpt == 0)
				postqueue_copy(a, m->first_rcpt, sizeof(m->first_rcpt), &m->cut);
			m->nrcpt++;
			json_t *dr = json_object_get(r, "delay_reason");
			if (json_is_string(dr)) {
				if (m->ndelayed == 0)
					postqueue_copy(dr, m->first_reason, sizeof(m->first_reason),
					               &cut);
				m->ndelayed++;
			}
			if (json_is_string(json_object_get(r, "bounce_reason")))
				m->nbounced++;
		}
	} else if (v) {
		m->odd++;
	}
	json_decref(o);
	return POSTQUEUE_OK;
}
