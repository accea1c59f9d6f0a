/*
 * tests/bench/bench_proto.c - throughput of proto_parse() on the real
 * 29-attribute request of docs/postfix-policy.md §1.1, and of
 * proto_reply_format().
 *
 * Not built by meson; build and run by hand:
 *   gcc -O2 -I. tests/bench/bench_proto.c proto/request.c proto/reply.c \
 *       -o /tmp/bench_proto && /tmp/bench_proto [ITERATIONS]
 *
 * Each parse iteration copies the request into the connection buffer first
 * (the parser writes NULs into it), as the daemon's read would.  Reported:
 * requests/s whole, requests/s when every request arrives in 16-byte reads,
 * and replies/s.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "proto/reply.h"
#include "proto/request.h"

static const char bench_req29[] = "request=smtpd_access_policy\n"
                                  "protocol_state=RCPT\n"
                                  "protocol_name=ESMTP\n"
                                  "client_address=198.51.100.7\n"
                                  "client_name=mua.example.net\n"
                                  "client_port=52808\n"
                                  "reverse_client_name=mua.example.net\n"
                                  "server_address=127.0.0.1\n"
                                  "server_port=10025\n"
                                  "helo_name=client.lab.test\n"
                                  "sender=alice@example.org\n"
                                  "recipient=carol@ok.test\n"
                                  "recipient_count=0\n"
                                  "queue_id=3DAEEA74137\n"
                                  "instance=1457.6b038c32.3d73e.0\n"
                                  "size=0\n"
                                  "etrn_domain=\n"
                                  "stress=\n"
                                  "sasl_method=XCLIENT\n"
                                  "sasl_username=alice\n"
                                  "sasl_sender=\n"
                                  "ccert_subject=\n"
                                  "ccert_issuer=\n"
                                  "ccert_fingerprint=\n"
                                  "ccert_pubkey_fingerprint=\n"
                                  "encryption_protocol=\n"
                                  "encryption_cipher=\n"
                                  "encryption_keysize=0\n"
                                  "policy_context=\n"
                                  "\n";

static double bench_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Parse n copies, delivering chunk bytes per call (0: all at once). */
static double bench_parse(long n, size_t chunk)
{
	const size_t len = sizeof(bench_req29) - 1;
	struct proto_parser p;
	struct proto_request req;
	struct proto_kv extra[8];
	size_t used, sink = 0;
	char buf[1024];
	double t0, t1;

	proto_parser_init(&p, NULL);
	req.extra = extra;
	req.extra_cap = 8;
	t0 = bench_now();
	for (long i = 0; i < n; i++) {
		enum proto_status st = PROTO_MORE;
		size_t have = 0;

		memcpy(buf, bench_req29, len);
		while (st == PROTO_MORE) {
			have = chunk && len - have > chunk ? have + chunk : len;
			st = proto_parse(&p, buf, have, &req, &used, NULL);
		}
		if (st != PROTO_OK || used != len || req.state != PROTO_STATE_RCPT) {
			fprintf(stderr, "bench_proto: parse failed\n");
			exit(1);
		}
		sink += req.attr[PROTO_A_SASL_USERNAME].len;
	}
	t1 = bench_now();
	if (sink != (size_t)n * 5)
		exit(1);
	return (double)n / (t1 - t0);
}

static double bench_reply(long n)
{
	char out[PROTO_REPLY_BUFSZ];
	size_t sink = 0;
	double t0, t1;

	t0 = bench_now();
	for (long i = 0; i < n; i++)
		sink += proto_reply_format(out, sizeof(out), "DEFER",
		                           "4.7.1 Rate limit exceeded for alice@example.org, "
		                           "try again in 42 s");
	t1 = bench_now();
	if (sink == 0)
		exit(1);
	return (double)n / (t1 - t0);
}

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 2000000;

	if (n <= 0)
		n = 2000000;
	printf("request size: %zu bytes, 29 attributes, %ld iterations\n", sizeof(bench_req29) - 1,
	       n);
	printf("parse, whole buffer:  %.0f requests/s\n", bench_parse(n, 0));
	printf("parse, 16-byte reads: %.0f requests/s\n", bench_parse(n / 4, 16));
	printf("reply format:         %.0f replies/s\n", bench_reply(n));
	return 0;
}
