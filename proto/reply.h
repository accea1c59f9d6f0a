/*
 * proto/reply.h - writes the one-attribute reply of the policy protocol:
 * `action=<ACTION>[ <text>]\n\n`.
 *
 * The text is made safe for Postfix: control characters and invalid UTF-8
 * become '?', and the whole reply is cut (on a character boundary) so that
 * the action line stays under PROTO_REPLY_MAX_TEXT bytes, well under the
 * 512-byte SMTP reply-line limit.  No I/O, no globals.
 */
#ifndef PROTO_REPLY_H
#define PROTO_REPLY_H

#include <stddef.h>

#define PROTO_REPLY_MAX_TEXT 400 /* bytes after "action=" on the line */
#define PROTO_REPLY_BUFSZ    512 /* a buffer this big always suffices */

/*
 * Write `action=<action>[ <text>]\n\n` to out (size outsz >= PROTO_REPLY_BUFSZ
 * recommended).  action is a word such as "DUNNO", "DEFER", "HOLD", "REJECT",
 * "WARN", or a numeric "450"; text may be NULL or empty.  Returns the length
 * written (NUL-terminated), or 0 if outsz is too small for even the action.
 */
size_t proto_reply_format(char *out, size_t outsz, const char *action, const char *text);

/* True when s[0..len) is valid UTF-8 without control characters. */
int proto_utf8_valid(const char *s, size_t len);

#endif
