/*
 * proto/reply.c - writes the policy reply `action=<ACTION>[ <text>]\n\n`
 * (see reply.h) and checks text for Postfix's UTF-8 rule.
 *
 * Owns: the UTF-8 decoder used for both, the text sanitiser and the cut.
 * Entry points: proto_reply_format(), proto_utf8_valid().
 *
 * Limits: the action is a trusted word and is copied as is (an empty or
 * NULL action, or one longer than PROTO_REPLY_MAX_TEXT, gives 0).  In the
 * text each control byte (< 0x20, 0x7f) and each byte that is not part of a
 * valid UTF-8 sequence (overlong, surrogate, above U+10FFFF, truncated)
 * becomes one '?'; the text is cut on a character boundary so that the line
 * after "action=" stays within PROTO_REPLY_MAX_TEXT bytes and the whole reply
 * fits in outsz.  At most PROTO_REPLY_MAX_TEXT + 4 bytes of text are read.
 */
#include "proto/reply.h"

#include <string.h>

static int proto_utf8_cont(unsigned char c)
{
	return (c & 0xc0) == 0x80;
}

/*
 * Length (1..4) of the valid UTF-8 character without control characters
 * that starts s[0..avail), or 0 when s[0] does not start one.
 */
static size_t proto_utf8_seq(const unsigned char *s, size_t avail)
{
	unsigned char c = s[0];

	if (c < 0x80)
		return (c >= 0x20 && c != 0x7f) ? 1 : 0;
	if (c >= 0xc2 && c <= 0xdf)
		return (avail >= 2 && proto_utf8_cont(s[1])) ? 2 : 0;
	if (c >= 0xe0 && c <= 0xef) {
		if (avail < 3 || !proto_utf8_cont(s[1]) || !proto_utf8_cont(s[2]))
			return 0;
		if (c == 0xe0 && s[1] < 0xa0) /* overlong */
			return 0;
		if (c == 0xed && s[1] > 0x9f) /* UTF-16 surrogate */
			return 0;
		return 3;
	}
	if (c >= 0xf0 && c <= 0xf4) {
		if (avail < 4 || !proto_utf8_cont(s[1]) || !proto_utf8_cont(s[2]) ||
		    !proto_utf8_cont(s[3]))
			return 0;
		if (c == 0xf0 && s[1] < 0x90) /* overlong */
			return 0;
		if (c == 0xf4 && s[1] > 0x8f) /* above U+10FFFF */
			return 0;
		return 4;
	}
	return 0; /* continuation byte, 0xc0, 0xc1, 0xf5..0xff */
}

int proto_utf8_valid(const char *s, size_t len)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t i = 0;

	while (i < len) {
		size_t k = proto_utf8_seq(u + i, len - i);
		if (k == 0)
			return 0;
		i += k;
	}
	return 1;
}

/* Copy text[0..tlen) sanitised into out, at most cap bytes, whole characters. */
static size_t proto_text_copy(char *out, size_t cap, const char *text, size_t tlen)
{
	const unsigned char *t = (const unsigned char *)text;
	size_t i = 0, w = 0;

	while (i < tlen) {
		size_t k = proto_utf8_seq(t + i, tlen - i);
		if (k == 0) {
			if (w + 1 > cap)
				break;
			out[w++] = '?';
			i++;
			continue;
		}
		if (w + k > cap)
			break;
		memcpy(out + w, t + i, k);
		w += k;
		i += k;
	}
	return w;
}

size_t proto_reply_format(char *out, size_t outsz, const char *action, const char *text)
{
	static const char pre[] = "action=";
	const size_t plen = sizeof(pre) - 1;
	size_t alen, n, budget, room;

	if (!out || outsz == 0)
		return 0;
	out[0] = '\0';
	if (!action)
		return 0;
	alen = strlen(action);
	if (alen == 0 || alen > PROTO_REPLY_MAX_TEXT)
		return 0;
	if (outsz < plen + alen + 3) /* "\n\n" and NUL */
		return 0;
	memcpy(out, pre, plen);
	memcpy(out + plen, action, alen);
	n = plen + alen;

	if (text && text[0]) {
		/* bytes for " <text>": the line limit, then the buffer */
		budget = PROTO_REPLY_MAX_TEXT - alen;
		room = outsz - n - 3;
		if (room < budget)
			budget = room;
		if (budget >= 2) {
			size_t tlen = strnlen(text, budget + 4);
			size_t w = proto_text_copy(out + n + 1, budget - 1, text, tlen);
			if (w > 0) {
				out[n] = ' ';
				n += 1 + w;
			}
		}
	}
	out[n++] = '\n';
	out[n++] = '\n';
	out[n] = '\0';
	return n;
}
