/*
 * policyd/key.c - owns key normalisation: addresses, domains, client
 * addresses and networks, login names; and network membership tests for
 * trusted_networks.  Every output is bounded by the caller's buffer; a
 * value that does not fit is cut, never overflowed (keys are bounded by
 * KEY_MAX anyway).
 */
#include "key.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static const char *const key_names[KEY__COUNT] = {
    "sasl_username",  "sender",           "sender_domain", "client_address",
    "client_network", "recipient_domain", "principal",
};

int key_type_parse(const char *s, enum key_type *t)
{
	for (int i = 0; i < KEY__COUNT; i++)
		if (strcmp(s, key_names[i]) == 0) {
			*t = (enum key_type)i;
			return 0;
		}
	return -1;
}

const char *key_type_name(enum key_type t)
{
	return t < KEY__COUNT ? key_names[t] : "?";
}

/* A dotted quad in canonical form (no leading zeros): the common case,
 * parsed without inet_pton. 1 when it is one. */
static int key_fast_ipv4(const char *s, uint8_t out[4])
{
	for (int i = 0; i < 4; i++) {
		unsigned v = 0, n = 0;
		while (*s >= '0' && *s <= '9' && n < 4) {
			v = v * 10 + (unsigned)(*s++ - '0');
			n++;
		}
		if (n == 0 || n > 3 || v > 255 || (n > 1 && s[-(int)n] == '0'))
			return 0;
		out[i] = (uint8_t)v;
		if (i < 3 && *s++ != '.')
			return 0;
	}
	return *s == '\0';
}

static int key_hex(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = (char)(c | 0x20);
	return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/*
 * IPv6 text (RFC 4291 2.2: groups of 1-4 hex digits, one "::", a dotted
 * quad at the end) into 16 bytes, without inet_pton (~470 instructions
 * there, ~250 here).  Accepts exactly what glibc's inet_pton accepts
 * (tests/unit/test_key.c compares the two on random strings), except a
 * dotted quad with leading zeros, which inet_pton decides.  1 when parsed.
 */
static int key_fast_ipv6(const char *s, uint8_t out[16])
{
	unsigned g[8];
	int n = 0, gap = -1;
	const char *p = s;

	if (p[0] == ':') {
		if (p[1] != ':')
			return 0;
		gap = 0;
		p += 2;
		if (*p == '\0')
			goto expand;
	}
	for (;;) {
		const char *q = p;
		unsigned v = 0;
		int d = 0, h;
		while (d < 5 && (h = key_hex(*q)) >= 0) {
			v = v << 4 | (unsigned)h;
			q++;
			d++;
		}
		if (d == 0 || d > 4)
			return 0;
		if (*q == '.') { /* the dotted quad ends the address */
			uint8_t v4[4];
			if (n > 6 || !key_fast_ipv4(p, v4))
				return 0;
			g[n++] = (unsigned)v4[0] << 8 | v4[1];
			g[n++] = (unsigned)v4[2] << 8 | v4[3];
			break;
		}
		if (n == 8)
			return 0;
		g[n++] = v;
		p = q;
		if (*p == '\0')
			break;
		if (*p++ != ':')
			return 0;
		if (*p == ':') {
			if (gap >= 0)
				return 0;
			gap = n;
			p++;
			if (*p == '\0')
				break;
		}
	}
expand:
	if (gap < 0 ? n != 8 : n > 7)
		return 0;
	int zeros = 8 - n, o = 0;
	for (int i = 0; i < n; i++) {
		if (i == gap)
			for (int z = 0; z < zeros; z++, o += 2)
				out[o] = out[o + 1] = 0;
		out[o++] = (uint8_t)(g[i] >> 8);
		out[o++] = (uint8_t)g[i];
	}
	if (gap == n)
		for (int z = 0; z < zeros; z++, o += 2)
			out[o] = out[o + 1] = 0;
	return 1;
}

/* Parse addr into family + 16 bytes; IPv4-mapped IPv6 becomes IPv4. */
static int key_parse_ip(const char *addr, int *family, uint8_t out[16])
{
	struct in6_addr a6;

	memset(out, 0, 16);
	if (key_fast_ipv4(addr, out)) {
		*family = AF_INET;
		return 0;
	}
	const char *v6 = addr;
	if ((addr[0] | 0x20) == 'i' && strncasecmp(addr, "ipv6:", 5) == 0)
		v6 += 5;
	if (key_fast_ipv6(v6, a6.s6_addr)) {
		/* parsed */
	} else if (inet_pton(AF_INET, addr, out) == 1) {
		*family = AF_INET;
		return 0;
	} else if (inet_pton(AF_INET6, v6, &a6) != 1) {
		return -1;
	}
	if (IN6_IS_ADDR_V4MAPPED(&a6)) {
		memcpy(out, &a6.s6_addr[12], 4);
		*family = AF_INET;
		return 0;
	}
	memcpy(out, a6.s6_addr, 16);
	*family = AF_INET6;
	return 0;
}

static void key_mask(uint8_t a[16], unsigned prefix, unsigned bytes)
{
	for (unsigned i = 0; i < bytes; i++) {
		unsigned bit = i * 8;
		if (bit >= prefix)
			a[i] = 0;
		else if (prefix - bit < 8)
			a[i] &= (uint8_t)(0xff << (8 - (prefix - bit)));
	}
}

int key_net_parse(const char *s, struct key_net *n)
{
	char buf[INET6_ADDRSTRLEN + 8];
	const char *slash = strchr(s, '/');
	size_t alen = slash ? (size_t)(slash - s) : strlen(s);

	if (alen == 0 || alen >= sizeof(buf))
		return -1;
	memcpy(buf, s, alen);
	buf[alen] = '\0';
	/* accept [::1] brackets as Postfix does */
	char *a = buf;
	if (a[0] == '[' && alen > 2 && a[alen - 1] == ']') {
		a[alen - 1] = '\0';
		a++;
	}
	if (key_parse_ip(a, &n->family, n->addr) < 0)
		return -1;
	unsigned max = n->family == AF_INET ? 32 : 128;
	if (slash) {
		char *end;
		unsigned long p = strtoul(slash + 1, &end, 10);
		if (!isdigit((unsigned char)slash[1]) || *end != '\0' || p > max)
			return -1;
		n->prefix = (unsigned)p;
	} else {
		n->prefix = max;
	}
	key_mask(n->addr, n->prefix, n->family == AF_INET ? 4 : 16);
	return 0;
}

bool key_ip_in(const struct key_ip *ip, const struct key_net *nets, size_t n)
{
	size_t bytes = ip->family == AF_INET ? 4 : 16;

	for (size_t i = 0; i < n; i++) {
		uint8_t m[16];
		if (nets[i].family != ip->family)
			continue;
		memcpy(m, ip->addr, 16);
		key_mask(m, nets[i].prefix, (unsigned)bytes);
		if (memcmp(m, nets[i].addr, bytes) == 0)
			return true;
	}
	return false;
}

bool key_addr_in(const char *addr, const struct key_net *nets, size_t n)
{
	struct key_ip ip;

	return n > 0 && key_ip_parse(addr, &ip) == 0 && key_ip_in(&ip, nets, n);
}

/* ASCII case folding: what tolower() does in the C locale policyd runs in,
 * without a call per byte. */
static size_t key_copy_lower(char *out, size_t outsz, const char *s, size_t len, bool fold)
{
	size_t n = len < outsz - 1 ? len : outsz - 1;
	if (fold) {
		for (size_t i = 0; i < n; i++) {
			char c = s[i];
			out[i] = c >= 'A' && c <= 'Z' ? (char)(c | 0x20) : c;
		}
	} else {
		memcpy(out, s, n);
	}
	out[n] = '\0';
	return n;
}

size_t key_norm_address(char *out, size_t outsz, const char *addr, const struct key_opts *o)
{
	const char *at = strrchr(addr, '@');
	size_t llen = at ? (size_t)(at - addr) : strlen(addr);
	size_t n;

	if (outsz == 0)
		return 0;
	/* strip +ext: cut the local part at the first delimiter, unless that
	 * would leave it empty (e.g. "+list@example.org" stays as is) */
	if (o && o->delimiters[0]) {
		size_t cut = strcspn(addr, o->delimiters);
		if (cut > 0 && cut < llen)
			llen = cut;
	}
	n = key_copy_lower(out, outsz, addr, llen, o ? o->fold_localpart : true);
	if (at && n + 1 < outsz) {
		out[n++] = '@';
		n += key_copy_lower(out + n, outsz - n, at + 1, strlen(at + 1), true);
	}
	return n;
}

size_t key_norm_domain(char *out, size_t outsz, const char *addr)
{
	const char *at = strrchr(addr, '@');
	if (outsz == 0)
		return 0;
	if (!at) {
		out[0] = '\0';
		return 0;
	}
	size_t n = key_copy_lower(out, outsz, at + 1, strlen(at + 1), true);
	/* a trailing dot names the same domain */
	while (n > 0 && out[n - 1] == '.')
		out[--n] = '\0';
	return n;
}

/* "a.b.c.d" written without snprintf */
static size_t key_fmt_ipv4(char *out, const uint8_t a[4])
{
	size_t n = 0;
	for (int i = 0; i < 4; i++) {
		unsigned v = a[i];
		if (v >= 100)
			out[n++] = (char)('0' + v / 100);
		if (v >= 10)
			out[n++] = (char)('0' + v / 10 % 10);
		out[n++] = (char)('0' + v % 10);
		if (i < 3)
			out[n++] = '.';
	}
	out[n] = '\0';
	return n;
}

/* RFC 5952 text of an IPv6 address (what inet_ntop writes, without its
 * sprintf): lower-case hex, no leading zeros, the longest run of two or
 * more zero groups (the first of equal runs) as "::".  out >= 40 bytes. */
size_t key_fmt_ipv6(char *out, const uint8_t a[16])
{
	static const char hex[] = "0123456789abcdef";
	unsigned g[8];
	int best = -1, bestlen = 0;
	for (int i = 0; i < 8; i++)
		g[i] = (unsigned)a[2 * i] << 8 | a[2 * i + 1];
	for (int i = 0; i < 8;) {
		int j = i;
		while (j < 8 && g[j] == 0)
			j++;
		if (j - i > bestlen && j - i >= 2) {
			best = i;
			bestlen = j - i;
		}
		i = j > i ? j : i + 1;
	}
	size_t n = 0;
	for (int i = 0; i < 8; i++) {
		if (i == best) {
			out[n++] = ':';
			if (i == 0)
				out[n++] = ':';
			i += bestlen - 1;
			continue;
		}
		int started = 0;
		for (int sh = 12; sh >= 0; sh -= 4) {
			unsigned d = (g[i] >> sh) & 15;
			if (d || started || sh == 0) {
				out[n++] = hex[d];
				started = 1;
			}
		}
		if (i < 7)
			out[n++] = ':';
	}
	out[n] = '\0';
	return n;
}

int key_ip_parse(const char *s, struct key_ip *ip)
{
	return key_parse_ip(s, &ip->family, ip->addr);
}

size_t key_ip_fmt(char *out, size_t outsz, const struct key_ip *ip)
{
	if (outsz < INET6_ADDRSTRLEN)
		return 0;
	if (ip->family == AF_INET)
		return key_fmt_ipv4(out, ip->addr);
	return key_fmt_ipv6(out, ip->addr);
}

size_t key_norm_ip(char *out, size_t outsz, const char *addr)
{
	struct key_ip ip;

	if (key_ip_parse(addr, &ip) < 0)
		return 0;
	return key_ip_fmt(out, outsz, &ip);
}

size_t key_ip_net(char *out, size_t outsz, const struct key_ip *ip, unsigned prefix4,
                  unsigned prefix6)
{
	uint8_t a[16];
	char txt[INET6_ADDRSTRLEN];
	bool v4 = ip->family == AF_INET;
	unsigned p = v4 ? prefix4 : prefix6;

	memcpy(a, ip->addr, 16);
	key_mask(a, p, v4 ? 4 : 16);
	size_t n = v4 ? key_fmt_ipv4(txt, a) : key_fmt_ipv6(txt, a);
	if (outsz < n + 5)
		return 0;
	memcpy(out, txt, n);
	out[n++] = '/';
	if (p >= 100)
		out[n++] = (char)('0' + p / 100);
	if (p >= 10)
		out[n++] = (char)('0' + p / 10 % 10);
	out[n++] = (char)('0' + p % 10);
	out[n] = '\0';
	return n;
}

size_t key_norm_net(char *out, size_t outsz, const char *addr, unsigned prefix4, unsigned prefix6)
{
	struct key_ip ip;

	if (key_ip_parse(addr, &ip) < 0)
		return 0;
	return key_ip_net(out, outsz, &ip, prefix4, prefix6);
}

size_t key_norm_login(char *out, size_t outsz, const char *login, bool fold)
{
	while (*login == ' ' || *login == '\t')
		login++;
	size_t len = strlen(login);
	while (len > 0 && (login[len - 1] == ' ' || login[len - 1] == '\t'))
		len--;
	if (outsz == 0)
		return 0;
	return key_copy_lower(out, outsz, login, len, fold);
}
