/*
 * proto/classify.h - the NDR classifier: which class of failure (or
 * delivery) a Postfix delivery record reports, which blocklist or
 * reputation system the remote reply names, and which IP address it says
 * is listed.
 *
 * The knowledge is data (data/ndr-patterns.conf): ordered rules and list
 * names, compiled at load time into one Aho-Corasick automaton over all
 * literal patterns plus POSIX extended regexes where a rule needs one.
 * Classifying a reply is then one pass of the automaton over the remote
 * reply text, a walk of the rules whose trigger literal occurred, in file
 * order (first match wins), and a regexec only for rules whose other terms
 * already hold.  Thread-compatible: a loaded db is only read.
 *
 * Pattern file format (one statement a line, `#` starts a comment outside
 * quotes and slashes):
 *
 *   list NAME ["literal" ...]
 *       declares a list/system name; its literals let `list=auto` and
 *       `list=any` rules find the list named in the reply (the one named
 *       earliest wins).
 *   CLASS [list=NAME|auto|any] [status=perm|temp] [dsn=PREFIX] TERM ...
 *       a rule: every term must hold (list=any: and some list is named).
 *       CLASS is one of the classes below or `other` (other_permanent or
 *       other_temporary by the status).
 *       TERM: "literal" (case-insensitive substring), w"literal" (a
 *       whole word: no ASCII letter on either side), ^"literal" (at the
 *       start of the text, after an optional "delivery temporarily
 *       suspended: "), /regex/ (POSIX ERE; matched against the lower-cased
 *       text, and its letters are lower-cased at load except right after
 *       a backslash; `\/` for a slash), each negated by a leading `!`.
 *       Literals take `\"` and `\\`.  A rule whose first term is a
 *       literal is only tried when that literal occurs (the rule index);
 *       regexes run last.
 *
 * Errors name the source and line (`NAME: line N: message`): an unknown
 * class or option, a bad literal or regex, a list used but declared
 * nowhere, a line over CLASSIFY_MAX_LINE bytes, a NUL byte, a limit.
 *
 * Several sources are loaded as one rule set, the rules of the first
 * source first: a site file goes before the stock file.  List names are
 * global; a rule may use a list declared in a later source.
 *
 * Built in, before any rule: status=sent (and the deliverable/delivered/
 * expanded probe statuses) is `delivered`, whatever the text.  After the
 * rules: other_permanent or other_temporary by the status.
 *
 * Rules match the remote reply only (`host H[A] said: TEXT (in reply to
 * ...)` gives TEXT, `refused to talk to me: TEXT` likewise), so the
 * receiver's own host name cannot name a list; Postfix's own texts are
 * matched whole.  At most CLASSIFY_MAX_TEXT bytes of it are looked at.
 *
 * The IP address (IPv4, or IPv6 in brackets or after a keyword) is looked
 * for in the same text for the classes blocklist_ip, blocklist_domain and
 * reputation: one in brackets or after "IP", "client", "from", "host",
 * "address", "ip=" and the like first, else the first bare IPv4 address.
 *
 * No I/O, no globals.  The loader allocates; the classifier does not.
 */
#ifndef PROTO_CLASSIFY_H
#define PROTO_CLASSIFY_H

#include <stdbool.h>
#include <stddef.h>

#include "proto/maillog.h"

#define CLASSIFY_MAX_TEXT     4096 /* bytes of a reply that are looked at */
#define CLASSIFY_MAX_LITERALS 4096
#define CLASSIFY_MAX_LISTS    256
#define CLASSIFY_MAX_RULES    8192
#define CLASSIFY_MAX_LINE     4096 /* bytes of one pattern-file line */

enum classify_class {
	CLASSIFY_NONE = 0, /* not classified (not a delivery record) */
	CLASSIFY_BLOCKLIST_IP,
	CLASSIFY_BLOCKLIST_DOMAIN,
	CLASSIFY_REPUTATION,
	CLASSIFY_RATE_LIMITED,
	CLASSIFY_USER_UNKNOWN,
	CLASSIFY_MAILBOX_FULL,
	CLASSIFY_GREYLISTED,
	CLASSIFY_AUTH_POLICY,
	CLASSIFY_CONTENT_SPAM,
	CLASSIFY_RELAY_DENIED,
	CLASSIFY_CONNECTION_ERROR,
	CLASSIFY_TLS_ERROR,
	CLASSIFY_TIMEOUT,
	CLASSIFY_OTHER_PERMANENT,
	CLASSIFY_OTHER_TEMPORARY,
	CLASSIFY_DELIVERED,
	CLASSIFY__COUNT
};

struct classify_db; /* opaque: the compiled rules */

/* One pattern file's text, as read by the caller. */
struct classify_source {
	const char *name; /* for messages, e.g. the path */
	const char *text;
	size_t len;
};

/* Why a load failed: `NAME: line N: message`. */
struct classify_diag {
	const char *source; /* the failing source's name (borrowed), or NULL */
	size_t line;        /* 1-based; 0 when not about one line */
	char msg[200];
};

struct classify_result {
	enum classify_class cls;
	const char *list;      /* list/system name (owned by the db), or NULL */
	struct maillog_str ip; /* the listed IP inside the reply text, or absent */
	const char *source;    /* the matching rule's source name (NULL: built in) */
	size_t line;           /* the matching rule's line (0: built in) */
};

/*
 * Compile sources[0..n) into a rule set.  Returns NULL with *diag filled on
 * the first error (diag may be NULL).  The sources' text is not kept; their
 * names are (result->source), so they must outlive the db.
 */
struct classify_db *classify_db_load(const struct classify_source *sources, size_t n,
                                     struct classify_diag *diag);
void classify_db_free(struct classify_db *db);

/* Rules and list names loaded. */
size_t classify_db_rules(const struct classify_db *db);
size_t classify_db_lists(const struct classify_db *db);

/*
 * Classify a reason text (the parenthesised text after status=) with the
 * record's status and dsn (dsn may be NULL).  r->ip points into text.
 */
void classify_reply(const struct classify_db *db, enum maillog_status status, const char *dsn,
                    size_t dsn_len, const char *text, size_t len, struct classify_result *r);

/*
 * Classify a parsed line: DELIVERY records by their reply, EXPIRED records
 * as other_permanent (the caller may carry the last deferral's class over
 * instead); any other event gives CLASSIFY_NONE.  Returns r->cls.
 */
enum classify_class classify_line(const struct classify_db *db, const struct maillog_line *ln,
                                  struct classify_result *r);

/* The listed IP address in text (see above); false when none. */
bool classify_find_ip(const char *text, size_t len, struct maillog_str *ip);

const char *classify_class_name(enum classify_class c);
/* CLASSIFY__COUNT when name is not a class name. */
enum classify_class classify_class_lookup(const char *name, size_t len);

#endif
