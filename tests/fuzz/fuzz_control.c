/*
 * tests/fuzz/fuzz_control.c - libFuzzer target for control_parse(), the
 * control socket's request parser (policyd/control.c, compiled into this
 * target with the fuzzer's instrumentation).
 *
 * Input: the bytes a control client sends; they are cut at each '\n' into
 * request lines as the daemon does, and each line is parsed.  Checked on
 * every line: a result of 0 or -1 only; on -1 an error message and nothing
 * left allocated; on 0 a known command name, the account, reason, rule and
 * action NUL-terminated within their buffers and free of control
 * characters, n within 1..CONTROL_TOP_MAX, at most CONTROL_MAX_IDS queue
 * ids that all pass control_valid_qid().  Leaks are found by ASan.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "policyd/control.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fuzz_check_text(const char *s, size_t cap)
{
	size_t n = strnlen(s, cap);
	if (n == cap)
		abort();
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			abort();
}

static void fuzz_line(const char *p, size_t len)
{
	struct control_req r;
	char err[512];
	err[0] = '\0';
	int rc = control_parse(p, len, &r, err, sizeof(err));
	if (rc == -1) {
		if (err[0] == '\0' || strnlen(err, sizeof(err)) == sizeof(err))
			abort();
		return;
	}
	if (rc != 0 || r.cmd[0] == '\0' || r.json == NULL)
		abort();
	fuzz_check_text(r.cmd, sizeof(r.cmd));
	fuzz_check_text(r.account, sizeof(r.account));
	fuzz_check_text(r.reason, sizeof(r.reason));
	fuzz_check_text(r.rule, sizeof(r.rule));
	fuzz_check_text(r.action, sizeof(r.action));
	if (r.n < 1 || r.n > CONTROL_TOP_MAX || r.nids > CONTROL_MAX_IDS)
		abort();
	if (r.duration_us < -1)
		abort();
	for (size_t i = 0; i < r.nids; i++)
		if (!control_valid_qid(r.ids[i]))
			abort();
	control_req_free(&r);
	if (r.json || r.ids)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *p = (const char *)data;
	size_t off = 0;
	while (off <= size) {
		const char *nl = memchr(p + off, '\n', size - off);
		size_t len = nl ? (size_t)(nl - (p + off)) : size - off;
		if (len || nl)
			fuzz_line(p + off, len);
		if (!nl)
			break;
		off += len + 1;
	}
	return 0;
}
