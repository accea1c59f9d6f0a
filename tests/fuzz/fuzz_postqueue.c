/*
 * tests/fuzz/fuzz_postqueue.c - libFuzzer target for postqueue_parse()
 * (proto/postqueue.c): the output of `postqueue -j`, cut into lines.
 *
 * Checked on every line: POSTQUEUE_OK or POSTQUEUE_BAD only; on BAD an
 * error message; on OK a queue name of [a-z], a valid queue id, every
 * string NUL-terminated within its buffer, counts consistent (ndelayed and
 * nbounced <= nrcpt, first_rcpt empty when nrcpt is 0).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/postqueue.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fuzz_line(const char *p, size_t len)
{
	static struct postqueue_msg m;
	char err[160];
	err[0] = '\0';
	enum postqueue_status st = postqueue_parse(p, len, &m, err, sizeof(err));
	if (st == POSTQUEUE_BAD) {
		if (err[0] == '\0')
			abort();
		return;
	}
	if (st != POSTQUEUE_OK || !postqueue_valid_id(m.queue_id) || m.queue_name[0] == '\0')
		abort();
	for (const char *q = m.queue_name; *q; q++)
		if (*q < 'a' || *q > 'z')
			abort();
	if (strnlen(m.sender, sizeof(m.sender)) == sizeof(m.sender) ||
	    strnlen(m.first_rcpt, sizeof(m.first_rcpt)) == sizeof(m.first_rcpt) ||
	    strnlen(m.first_reason, sizeof(m.first_reason)) == sizeof(m.first_reason))
		abort();
	if (m.ndelayed > m.nrcpt || m.nbounced > m.nrcpt || (m.nrcpt == 0 && m.first_rcpt[0]))
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *p = (const char *)data;
	size_t off = 0;
	while (off <= size) {
		const char *nl = memchr(p + off, '\n', size - off);
		size_t len = nl ? (size_t)(nl - (p + off)) : size - off;
		fuzz_line(p + off, len);
		if (!nl)
			break;
		off += len + 1;
	}
	return 0;
}
