/*
 * policyd/key.h - who is sending, and the normalised keys rules count by.
 *
 * Principal: sasl_username when set; else the sender for clients in
 * trusted networks; else the client address.  Keys: lower-cased domains
 * (and local parts unless told otherwise), recipient delimiter extensions
 * stripped, IPv4-mapped IPv6 folded to IPv4, networks cut to a prefix.
 */
#ifndef POLICYD_KEY_H
#define POLICYD_KEY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KEY_MAX 384 /* bytes of one normalised key, NUL included */

enum key_type {
	KEY_SASL_USERNAME = 0,
	KEY_SENDER,
	KEY_SENDER_DOMAIN,
	KEY_CLIENT_ADDRESS,
	KEY_CLIENT_NETWORK,
	KEY_RECIPIENT_DOMAIN,
	KEY_PRINCIPAL, /* whoever the principal is (see above) */
	KEY__COUNT
};

struct key_opts {
	char delimiters[8];  /* recipient_delimiter characters, "" = none */
	bool fold_localpart; /* lower-case local parts too (default yes) */
};

/* An address prefix, for trusted networks. */
struct key_net {
	int family; /* AF_INET or AF_INET6 */
	uint8_t addr[16];
	unsigned prefix;
};

enum principal_kind { PRINCIPAL_NONE = 0, PRINCIPAL_SASL, PRINCIPAL_SENDER, PRINCIPAL_CLIENT };

int key_type_parse(const char *s, enum key_type *t);
const char *key_type_name(enum key_type t);

/* A parsed client address: IPv4 in addr[0..4), IPv4-mapped IPv6 folded. */
struct key_ip {
	int family; /* AF_INET or AF_INET6 */
	uint8_t addr[16];
};

/* Parse a client address ("192.0.2.1", "2001:db8::1", "ipv6:..."); 0 or -1. */
int key_ip_parse(const char *s, struct key_ip *ip);
/* Its canonical text (out >= 46 bytes): dotted quad or RFC 5952. */
size_t key_ip_fmt(char *out, size_t outsz, const struct key_ip *ip);
/* Its network as text, "198.51.100.0/24", "2001:db8::/64"; 0 if it does not fit. */
size_t key_ip_net(char *out, size_t outsz, const struct key_ip *ip, unsigned prefix4,
                  unsigned prefix6);
/* Does it lie in one of nets? */
bool key_ip_in(const struct key_ip *ip, const struct key_net *nets, size_t n);

/* Parse "10.0.0.0/8", "2001:db8::/32", "192.0.2.1" (host). 0 or -1. */
int key_net_parse(const char *s, struct key_net *n);
/* Does the textual address lie in one of nets? (IPv4-mapped folded.) */
bool key_addr_in(const char *addr, const struct key_net *nets, size_t n);

/* Normalise an address (user@Domain → user@domain, +ext stripped). */
size_t key_norm_address(char *out, size_t outsz, const char *addr, const struct key_opts *o);
/* The domain part, lower-cased ("" when none). */
size_t key_norm_domain(char *out, size_t outsz, const char *addr);
/* A client address in canonical text form (IPv4-mapped folded); 0 if not an address. */
size_t key_norm_ip(char *out, size_t outsz, const char *addr);
/* The network of addr: "198.51.100.0/24", "2001:db8::/64"; 0 if not an address. */
size_t key_norm_net(char *out, size_t outsz, const char *addr, unsigned prefix4, unsigned prefix6);
/* RFC 5952 text of a 16-byte IPv6 address into out (>= 40 bytes). */
size_t key_fmt_ipv6(char *out, const uint8_t a[16]);
/* A login name: trimmed, lower-cased when fold is set. */
size_t key_norm_login(char *out, size_t outsz, const char *login, bool fold);

#endif
