#!/bin/bash
# test_dns.sh - DNS through c-ares against a real DNS server on loopback:
# dnsmasq (Debian dnsmasq-base) serves test DNSBL and ASN zones on
# 127.0.0.1:<free port>; tests/integration/test_dns.c checks listed and
# unlisted clients, TTL expiry, NXDOMAIN caching, bad answers (a list that
# lists everything, 127.0.0.1 and 127.255.255.x codes, answers outside
# 127/8, malformed and huge TXT records, clients that are not addresses);
# then the server is stopped (killed by its PID) and replaced by a UDP socket
# that drops every packet: look-ups still never wait.  End to end, policyd
# with [anomaly] and [dns] answers every request within the budget (20 ms)
# whether DNS works, is dead or drops packets, and logs the exploit-list
# component once the look-up is in; `policyctl doctor` reports our IP
# listed, SPF and DMARC state, and a miswired Postfix (postconf -c DIR); the
# scheduled self-check logs the listing and runs alert_command.
#
# Needs: dnsmasq (package dnsmasq-base), python3, postconf (for doctor;
# skipped without), TEST_DNS, POLICYD and POLICYCTL (meson sets them).
# TAP on stdout.  Everything it starts is stopped by PID.

set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DNSMASQ=$(command -v dnsmasq || echo /usr/sbin/dnsmasq)
BUDGET_MS=20

n=0
fails=0
tap() { # tap OK|NOTOK text
	n=$((n + 1))
	if [[ $1 == ok ]]; then echo "ok $n - $2"; else echo "not ok $n - $2"; fails=$((fails + 1)); fi
}
# number the driver's "ok - x" / "not ok - x" lines
tap_lines() {
	while IFS= read -r l; do
		case $l in
		"ok - "*) tap ok "${l#ok - }" ;;
		"not ok - "*) tap notok "${l#not ok - }" ;;
		*) echo "# $l" ;;
		esac
	done
}

if [[ ! -x $DNSMASQ ]]; then echo "1..0 # SKIP dnsmasq is not installed (apt-get install dnsmasq-base)"; exit 0; fi
for v in TEST_DNS POLICYD POLICYCTL; do
	if [[ -z ${!v:-} ]]; then echo "1..0 # SKIP $v is not set"; exit 0; fi
done

WORK=$(mktemp -d /tmp/policyd-test-dns.XXXXXX)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

free_port() {
	python3 -c '
import socket
while True:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0))
    p = u.getsockname()[1]
    t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        t.bind(("127.0.0.1", p)); print(p); break
    except OSError:
        pass'
}

DNS_PORT=$(free_port)
HUGE=$(python3 -c 'print(",".join(["\"64501 | 192.0.2.0/24 | DE | ripencc | 2010-01-01 |\""] + ["\"" + "x" * 200 + "\""] * 15))')
start_dnsmasq() {
	"$DNSMASQ" --keep-in-foreground --no-resolv --no-hosts --port="$DNS_PORT" \
		--listen-address=127.0.0.1 --bind-interfaces --local-ttl=2 --pid-file= \
		--log-facility="$WORK/dnsmasq.log" \
		--local=/xbl.test/ --host-record=9.113.0.203.xbl.test,127.0.0.4 \
		--address=/all.test/127.0.0.2 --address=/refused.test/127.0.0.1 \
		--address=/err.test/127.255.255.254 --address=/bad.test/192.0.2.1 \
		--local=/origin.asn.test/ --local=/origin6.asn.test/ \
		--txt-record=0.113.0.203.origin.asn.test,"64500 | 203.0.113.0/24 | NL | ripencc | 2010-01-01" \
		--txt-record=0.100.51.198.origin.asn.test,"garbage" \
		--txt-record="0.2.0.192.origin.asn.test,$HUGE" \
		--local=/example.test/ \
		--txt-record=example.test,"v=spf1 ip4:203.0.113.0/24 include:_spf.example.net -all" \
		--txt-record=_dmarc.example.test,"v=DMARC1; p=none; rua=mailto:dmarc@example.test" \
		--txt-record=s1._domainkey.example.test,"v=DKIM1; k=rsa; p=" \
		--local=/dbl.test/ --host-record=example.test.dbl.test,127.0.1.2 \
		2>"$WORK/dnsmasq.err" &
	DNSMASQ_PID=$!
	PIDS+=("$DNSMASQ_PID")
	for _ in $(seq 50); do
		python3 - "$DNS_PORT" <<'EOF' && return 0
import socket, struct, sys
q = struct.pack(">HHHHHH", 1, 0x100, 1, 0, 0, 0) + b"\x03xbl\x04test\x00\x00\x01\x00\x01"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.1)
s.sendto(q, ("127.0.0.1", int(sys.argv[1])))
s.recv(512)
EOF
		sleep 0.1
	done
	return 1
}

if ! start_dnsmasq; then
	echo "1..0 # SKIP dnsmasq did not start: $(head -c 300 "$WORK/dnsmasq.err")"
	exit 0
fi
echo "# dnsmasq pid $DNSMASQ_PID on 127.0.0.1:$DNS_PORT"

# ---- the DNS module against the live server
tap_lines < <("$TEST_DNS" live "127.0.0.1:$DNS_PORT" 2>"$WORK/live.err")

# ---- policyd end to end: answers within the budget, the component logged
POL_PORT=$(free_port)
cat >"$WORK/policyd.conf" <<EOF
[server]
listen = inet:127.0.0.1:$POL_PORT
state_dir =
log = stderr
log_decisions = all
hooks = rcpt

[anomaly]
warn = 30
hold = 101
defer = never
flag = never
dnsbl = xbl.test=127.0.0.2-127.0.0.11
asn_zone = origin.asn.test

[dns]
dns_servers = 127.0.0.1:$DNS_PORT
timeout = 300ms
tries = 2
min_ttl = 1s

[selfcheck]
ips = 203.0.113.9, 198.51.100.25
domains = example.test
ip_lists = xbl.test, refused.test
domain_lists = dbl.test
dkim_selectors = s1
interval = 1h
alert_command = $WORK/alert.sh
EOF
printf '#!/bin/sh\necho "$@" >> %s/alerts\n' "$WORK" >"$WORK/alert.sh"
chmod +x "$WORK/alert.sh"
STARTED=$(date +%s)
"$POLICYD" -c "$WORK/policyd.conf" 2>"$WORK/policyd.log" &
POLICYD_PID=$!
PIDS+=("$POLICYD_PID")

# send COUNT requests from CLIENT; print "max_ms actions"
policy_client() { # client count
	python3 - "$POL_PORT" "$1" "$2" <<'EOF'
import socket, sys, time
port, client, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for _ in range(50):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2); break
    except OSError:
        time.sleep(0.1)
worst, actions = 0.0, []
for i in range(count):
    req = ("request=smtpd_access_policy\nprotocol_state=RCPT\nsasl_method=PLAIN\n"
           "sasl_username=alice@example.test\nsender=alice@example.test\n"
           "recipient=r%d@example.net\nclient_address=%s\ninstance=t%s.%d\n\n" % (i, client, client, i))
    t = time.monotonic()
    s.sendall(req.encode())
    buf = b""
    while not buf.endswith(b"\n\n"):
        d = s.recv(4096)
        if not d:
            raise SystemExit("closed")
        buf += d
    worst = max(worst, time.monotonic() - t)
    actions.append(buf.decode().split("\n")[0].split("=", 1)[1].split(" ")[0])
    time.sleep(0.05)
print("%.1f %s" % (worst * 1000, ",".join(sorted(set(actions)))))
EOF
}
within() { awk -v a="$1" -v b="$BUDGET_MS" 'BEGIN { exit !(a + 0 < b) }'; }

out=$(policy_client 203.0.113.9 6)
ms=${out%% *}
within "$ms" && tap ok "live DNS: 6 answers, slowest ${ms} ms" || tap notok "live DNS: slowest answer ${ms} ms > ${BUDGET_MS} ms"
sleep 0.3
if grep -q 'event=anomaly.*exploit list xbl.test (127.0.0.4)' "$WORK/policyd.log"; then
	tap ok "the exploit-list component is logged once the look-up is in"
else
	tap notok "no exploit-list component in the log"; sed 's/^/# /' "$WORK/policyd.log" | tail -5
fi

# ---- policyctl doctor: our IP listed, SPF/DMARC, Postfix wiring
if POSTCONF=$(command -v postconf || ls /usr/sbin/postconf 2>/dev/null); then
	mkdir -p "$WORK/pf"
	cat >"$WORK/pf/main.cf" <<EOF
compatibility_level = 3.6
smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, defer_unauth_destination
smtpd_recipient_restrictions = permit_sasl_authenticated, reject_unauth_destination, check_policy_service { inet:127.0.0.1:$POL_PORT, default_action=DUNNO }
EOF
	printf 'smtp inet n - y - - smtpd\nsubmission inet n - y - - smtpd\n  -o smtpd_recipient_restrictions=reject_unauth_destination,check_policy_service,inet:127.0.0.1:%s\n' "$POL_PORT" >"$WORK/pf/master.cf"
	"$POLICYCTL" doctor -c "$WORK/policyd.conf" -C "$WORK/pf" >"$WORK/doctor.txt" 2>&1
	rc=$?
	sed 's/^/# /' "$WORK/doctor.txt"
	[[ $rc == 1 ]] && tap ok "doctor exits 1 when something needs action" || tap notok "doctor exit status $rc"
	grep -q 'xbl.test *LISTED (127.0.0.4)' "$WORK/doctor.txt" && tap ok "doctor: our IP listed on xbl.test" || tap notok "doctor: listing not reported"
	grep -q 'refused.test *unusable' "$WORK/doctor.txt" && tap ok "doctor: a refusing list is unusable, not a listing" || tap notok "doctor: refused list"
	grep -q 'dbl.test *LISTED (127.0.1.2)' "$WORK/doctor.txt" && tap ok "doctor: our domain on a domain list" || tap notok "doctor: domain list"
	grep -q 'SPF    ok: v=spf1' "$WORK/doctor.txt" && grep -q '203.0.113.9 authorised: yes' "$WORK/doctor.txt" &&
		grep -q '198.51.100.25 authorised: not by ip4' "$WORK/doctor.txt" && tap ok "doctor: SPF parsed, coverage of our IPs" || tap notok "doctor: SPF"
	grep -q 'p=none: monitoring only' "$WORK/doctor.txt" && tap ok "doctor: DMARC p=none warned" || tap notok "doctor: DMARC"
	grep -q 'p= is empty: the key is revoked' "$WORK/doctor.txt" && tap ok "doctor: revoked DKIM key" || tap notok "doctor: DKIM"
	grep -q 'FAIL smtpd_recipient_restrictions: permit_sasl_authenticated comes before' "$WORK/doctor.txt" &&
		tap ok "doctor: permit_sasl_authenticated before the policy check" || tap notok "doctor: wiring (permit_sasl_authenticated)"
	grep -q 'ok   master.cf submission/inet -o smtpd_recipient_restrictions calls policyd' "$WORK/doctor.txt" &&
		tap ok "doctor: the submission override calls policyd" || tap notok "doctor: submission override"
	"$POLICYCTL" doctor -c "$WORK/policyd.conf" -C "$WORK/pf" --json >"$WORK/doctor.json" 2>/dev/null
	python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); assert j["postfix"]["status"]=="problems"; assert j["ips"][0]["lists"][0]["status"]=="listed"' "$WORK/doctor.json" &&
		tap ok "doctor --json is JSON with the same findings" || tap notok "doctor --json"
else
	tap ok "# SKIP doctor: no postconf"
fi

# ---- the scheduled self-check (first run 5 s after the start): alert and log
while (($(date +%s) < STARTED + 8)); do sleep 0.5; done
grep -q 'event=selfcheck_listed item=203.0.113.9 list=xbl.test code=127.0.0.4' "$WORK/policyd.log" &&
	tap ok "scheduled self-check: the listing is logged, naming the list" ||
	tap notok "scheduled self-check: no event=selfcheck_listed in the log"
grep -q '^listed 203.0.113.9 xbl.test 127.0.0.4$' "$WORK/alerts" 2>/dev/null &&
	tap ok "scheduled self-check: alert_command ran (listed ITEM LIST CODE)" ||
	tap notok "scheduled self-check: alert_command did not run"

# ---- the server dies: stopped by its PID
kill "$DNSMASQ_PID"
wait "$DNSMASQ_PID" 2>/dev/null
tap_lines < <("$TEST_DNS" dead "127.0.0.1:$DNS_PORT" 2>"$WORK/dead.err" |
	sed 's/^ok - /ok - stopped server: /; s/^not ok - /not ok - stopped server: /')
out=$(policy_client 203.0.113.50 6)
ms=${out%% *}
within "$ms" && tap ok "DNS stopped: 6 answers, slowest ${ms} ms" || tap notok "DNS stopped: slowest answer ${ms} ms > ${BUDGET_MS} ms"

# ---- a server that drops every packet (a UDP socket that never answers)
python3 -c '
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", int(sys.argv[1])))
while True:
    s.recv(4096)' "$DNS_PORT" &
HOLE=$!
PIDS+=("$HOLE")
sleep 0.2
tap_lines < <("$TEST_DNS" dead "127.0.0.1:$DNS_PORT" 2>"$WORK/hole.err" |
	sed 's/^ok - /ok - dropping server: /; s/^not ok - /not ok - dropping server: /')
out=$(policy_client 203.0.113.60 6)
ms=${out%% *}
within "$ms" && tap ok "DNS dropping packets: 6 answers, slowest ${ms} ms" || tap notok "DNS dropping packets: slowest answer ${ms} ms > ${BUDGET_MS} ms"
kill -0 "$POLICYD_PID" 2>/dev/null && tap ok "policyd still running" || tap notok "policyd died"

echo "1..$n"
[[ $fails == 0 ]]
