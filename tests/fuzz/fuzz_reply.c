/*
 * tests/fuzz/fuzz_reply.c - libFuzzer target for proto_reply_format() and
 * proto_utf8_valid(), checked against a slow reference written differently
 * (decode the code point, then judge it).
 *
 * Input: byte 0 picks the action, bytes 1-2 the output size (0..1023, the
 * buffer is allocated to exactly that size so ASan sees any overrun); the
 * rest is the text.  Checked: proto_utf8_valid() agrees with the reference
 * on the raw text; the reply has the right shape, fits outsz, is
 * NUL-terminated, and its text is the reference sanitisation of the input
 * cut to the largest whole-character prefix that fits.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/reply.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Bytes of the valid, non-control character at s[0..n), or 0. */
static size_t ref_char(const uint8_t *s, size_t n)
{
	static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
	size_t k;
	uint32_t cp;

	if (s[0] < 0x80)
		k = 1, cp = s[0];
	else if ((s[0] & 0xe0) == 0xc0)
		k = 2, cp = s[0] & 0x1f;
	else if ((s[0] & 0xf0) == 0xe0)
		k = 3, cp = s[0] & 0x0f;
	else if ((s[0] & 0xf8) == 0xf0)
		k = 4, cp = s[0] & 0x07;
	else
		return 0;
	if (k > n)
		return 0;
	for (size_t i = 1; i < k; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (s[i] & 0x3f);
	}
	if (cp < min[k] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	if (cp < 0x20 || cp == 0x7f)
		return 0;
	return k;
}

static int ref_valid(const uint8_t *s, size_t n)
{
	for (size_t i = 0; i < n;) {
		size_t k = ref_char(s + i, n - i);
		if (!k)
			return 0;
		i += k;
	}
	return 1;
}

/* The text part of out[0..n) must be text sanitised by the reference and cut. */
static void check_text(const char *out, size_t n, size_t alen, size_t outsz, const char *text)
{
	size_t tlen = strlen(text), w = 0;
	size_t cap = PROTO_REPLY_MAX_TEXT - alen;
	char *want = malloc(tlen + 1);

	if (!want)
		abort();
	if (outsz - 10 - alen < cap)
		cap = outsz - 10 - alen;
	cap = cap > 0 ? cap - 1 : 0; /* the space */
	for (size_t i = 0; i < tlen;) {
		size_t k = ref_char((const uint8_t *)text + i, tlen - i);
		if (k == 0) {
			if (w + 1 > cap)
				break;
			want[w++] = '?';
			i++;
		} else {
			if (w + k > cap)
				break;
			memcpy(want + w, text + i, k);
			w += k;
			i += k;
		}
	}
	if (w == 0) {
		if (n != 9 + alen)
			abort();
	} else if (n != 10 + alen + w || out[7 + alen] != ' ' ||
	           memcmp(out + 8 + alen, want, w) != 0) {
		abort();
	}
	free(want);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const actions[] = {
	    "DUNNO", "DEFER_IF_PERMIT", "HOLD", "REJECT", "WARN", "450", "OK", "X"};
	const char *action;
	size_t outsz, alen, n;
	char *text, *out;
	int use_text;

	if (size < 3)
		return 0;
	action = actions[data[0] % (sizeof(actions) / sizeof(actions[0]))];
	use_text = !(data[0] & 0x80);
	alen = strlen(action);
	outsz = ((size_t)data[1] << 8 | data[2]) & 1023;
	data += 3;
	size -= 3;

	if (proto_utf8_valid((const char *)data, size) != ref_valid(data, size))
		abort();

	/* the text ends at its first NUL, as a C string does */
	text = malloc(size + 1);
	out = malloc(outsz ? outsz : 1);
	if (!text || !out)
		abort();
	memcpy(text, data, size);
	text[size] = '\0';

	n = proto_reply_format(out, outsz, action, use_text ? text : NULL);
	if (n == 0) {
		if (outsz >= 7 + alen + 3)
			abort();
	} else {
		if (n >= outsz || strlen(out) != n || memcmp(out, "action=", 7) != 0 ||
		    memcmp(out + 7, action, alen) != 0 || memcmp(out + n - 2, "\n\n", 2) != 0 ||
		    n - 9 > PROTO_REPLY_MAX_TEXT || !proto_utf8_valid(out + 7, n - 9))
			abort();
		check_text(out, n, alen, outsz, use_text ? text : "");
	}
	free(out);
	free(text);
	return 0;
}
