#!/bin/bash
# test_policyctl.sh - policyctl, the control socket, the held ledger and
# the metrics endpoint end to end: swaks -> Postfix -> policyd, then
# policyctl over the control socket and postqueue/postsuper on the lab.
#
# Owns: an account crossing a hold limit, its message in the hold queue,
# `policyctl report held --json` naming the rule, `--html` rendering in
# headless Chromium, `release` delivering it to smtp-sink, `usage`, `top`,
# `reset`, `delete --account`; refusals (a user outside control_group, a
# world-writable socket still checked with SO_PEERCRED), garbage on the
# socket; the metrics endpoint answering and its counters moving.  TAP.
#
# Needs: root, POLICYD and POLICYCTL (paths; meson sets them), python3 for
# the raw-socket checks, chromium for the HTML check (else those report
# SKIP).  Creates, if missing, the system user policyd-test-nopriv and the
# group policyd-test-ctl (never removed: they own nothing).

set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lab.sh
. "$HERE/lab.sh"

if [[ -z ${POLICYD:-} || -z ${POLICYCTL:-} ]]; then
	echo "1..0 # SKIP POLICYD and POLICYCTL must name the binaries"
	exit 0
fi
[[ $POLICYD == /* ]] || POLICYD=$PWD/$POLICYD
[[ $POLICYCTL == /* ]] || POLICYCTL=$PWD/$POLICYCTL
export POLICYD

lab_skip_unless_possible
for tool in python3 curl setpriv; do
	if ! command -v "$tool" >/dev/null; then
		echo "1..0 # SKIP $tool is not installed"
		exit 0
	fi
done
lab_install_traps
echo "1..32"
T0=$(_lab_ms)

NOPRIV=policyd-test-nopriv
CTLGROUP=policyd-test-ctl
getent group "$CTLGROUP" >/dev/null || groupadd -r "$CTLGROUP"
id "$NOPRIV" >/dev/null 2>&1 || useradd -M -r -s /usr/sbin/nologin "$NOPRIV"
CTLGID=$(getent group "$CTLGROUP" | cut -d: -f3)

LAB_POLICY_ENDPOINT=inet
LAB_POLICY_HOOKS="rcpt eom"
if ! lab_start; then
	echo "Bail out! the Postfix lab did not start"
	exit 1
fi
# the socket lives where an unprivileged user can reach it ($LAB is 0700)
CTLDIR=$(mktemp -d /tmp/policyd-ctl.XXXXXX)
chmod 0755 "$CTLDIR"
SOCK=$CTLDIR/control.sock
METRICS_PORT=$(lab_port 6)
METRICS_URL=http://127.0.0.1:$METRICS_PORT/metrics

CONF=$LAB/policyd.conf
cat >"$CONF" <<EOF
[server]
listen = inet:127.0.0.1:$LAB_POLICY_PORT
state_dir = $LAB/state
log = stderr
hooks = rcpt, eom
control = unix:$SOCK
control_group = $CTLGROUP
metrics = inet:127.0.0.1:$METRICS_PORT
postfix_config_dir = $LAB_ETC

[limit per-account-messages]
key = sasl_username
count = messages
rate = 2/1h
action = hold
reply = Held for review: too many messages

[limit per-account-recipients]
key = sasl_username
count = recipients
rate = 20/1h
action = defer
EOF

MUA=198.51.100.7
ctl() { "$POLICYCTL" -c "$CONF" "$@"; }
# send LOGIN TO: $QID is the queue id (or "")
send() {
	OUT=$(lab_send "$1" "$MUA" "$1@example.org" "$2")
	QID=$(lab_queue_id "$OUT")
}
wait_queue() { # QID NAME: wait until QID is in queue NAME
	local qn
	for _ in $(seq 50); do
		qn=$(lab_queue_name "$1")
		[[ $qn == "$2" ]] && return 0
		sleep 0.1
	done
	return 1
}
scrape() { curl -sf --max-time 5 "$METRICS_URL"; }
metric() { # NAME_WITH_LABELS in $1, text in $2: the value or 0
	awk -v k="$1" '$1 == k { print $2; f = 1 } END { if (!f) print 0 }' <<<"$2"
}
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

# 1-2. starts, control socket 0660 root:CTLGROUP
if policyd_start "$CONF"; then
	tap_ok "policyd starts with control and metrics configured"
else
	tap_not_ok "policyd starts with control and metrics configured" "$(tail -n 20 "$LAB/policyd.log")"
fi
perm=$(stat -c '%a %G %F' "$SOCK" 2>&1)
if [[ $perm == "660 $CTLGROUP socket" ]]; then
	tap_ok "the control socket is mode 0660, group $CTLGROUP"
else
	tap_not_ok "the control socket is mode 0660, group $CTLGROUP" "$perm"
fi

# 3-4. metrics answer; first scrape
t=$(_lab_ms)
M1=$(scrape)
SCRAPE_MS=$(($(_lab_ms) - t))
if [[ $M1 == *"# TYPE policyd_requests_total counter"* && $M1 == *policyd_request_duration_seconds_bucket* ]]; then
	tap_ok "GET /metrics answers Prometheus text (${SCRAPE_MS} ms with curl)"
else
	tap_not_ok "GET /metrics answers Prometheus text" "$(head -c 400 <<<"$M1")"
fi
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$METRICS_URL")
code404=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$METRICS_PORT/nope")
if [[ $code == 405 && $code404 == 404 ]]; then
	tap_ok "metrics: POST gets 405, an unknown path 404"
else
	tap_not_ok "metrics: POST gets 405, an unknown path 404" "POST $code, /nope $code404"
fi

# 5. status
st=$(ctl status --json 2>&1)
if [[ $(json 'len(d["rules"]), d["paused"] in (True, False)' <<<"$st" 2>/dev/null) == "2 True" ]]; then
	tap_ok "policyctl status --json: 2 rules, pause state"
else
	tap_not_ok "policyctl status --json: 2 rules, pause state" "$st"
fi

# 6-7. erin: two messages go out, the third is held
ok=0
for i in 1 2; do
	send erin "e$i@ok.test"
	[[ -n $QID ]] && lab_wait_sent "$QID" 1 >/dev/null && ok=$((ok + 1))
done
send erin e3@ok.test
HELD=$QID
if ((ok == 2)) && [[ -n $HELD ]] && wait_queue "$HELD" hold; then
	tap_ok "erin: 2 messages delivered, the third ($HELD) in the hold queue"
else
	tap_not_ok "erin: 2 messages delivered, the third in the hold queue" "delivered $ok, held '${HELD}'" "$(lab_queue_json)"
fi
if grep -q "event=held queue_id=$HELD account=erin rule=per-account-messages" "$LAB/policyd.log"; then
	tap_ok "policyd logs the held ledger record for $HELD"
else
	tap_not_ok "policyd logs the held ledger record for $HELD" "$(grep -E 'held|hold' "$LAB/policyd.log" | tail -n 5)"
fi

# 8-10. report held
t=$(_lab_ms)
rep=$(ctl report held --json 2>&1)
REPORT_MS=$(($(_lab_ms) - t))
line=$(json '[(h["queue_id"], h["account"], h["rule"], h["recipients"], h["flagged"]) for h in d["held"]]' <<<"$rep" 2>&1)
if [[ $line == "[('$HELD', 'erin', 'per-account-messages', 1, False)]" ]]; then
	tap_ok "report held --json lists $HELD: account erin, rule per-account-messages (${REPORT_MS} ms)"
else
	tap_not_ok "report held --json lists $HELD with account and rule" "$line" "$rep"
fi
tab=$(ctl report held 2>&1)
if grep -qE "^$HELD +[0-9-]+ [0-9:]+ +erin@example.org +erin +1 +[0-9]+ +per-account-messages +- *$" <<<"$tab" &&
	grep -q "messages 2/h exceeded for erin" <<<"$tab"; then
	tap_ok "report held prints a table with the rule and the reason"
else
	tap_not_ok "report held prints a table with the rule and the reason" "$tab"
fi
HTML=$CTLDIR/held.html
if ctl report held --html "$HTML" >/dev/null && grep -q "<table id=\"held\">" "$HTML" && grep -q "$HELD" "$HTML" &&
	! grep -qiE '<script|src=|href=' "$HTML"; then
	tap_ok "report held --html writes one self-contained page ($(stat -c %s "$HTML") bytes)"
else
	tap_not_ok "report held --html writes one self-contained page" "$(head -c 300 "$HTML" 2>&1)"
fi

# 11. headless chromium renders it
CHROMIUM=$(command -v chromium || command -v chromium-browser || true)
if [[ -z $CHROMIUM ]]; then
	echo "ok 11 # SKIP chromium is not installed (apt-get install chromium)"
else
	prof=$(mktemp -d "$CTLDIR/chromium.XXXXXX")
	png=$CTLDIR/held.png
	copts=(--headless --no-sandbox --disable-gpu --disable-background-networking
		--disable-component-update --disable-sync --no-first-run --user-data-dir="$prof"
		--window-size=1200,900)
	timeout 60 "$CHROMIUM" "${copts[@]}" --screenshot="$png" "file://$HTML" >/dev/null 2>&1
	dom=$(timeout 60 "$CHROMIUM" "${copts[@]}" --dump-dom "file://$HTML" 2>/dev/null)
	size=$(stat -c %s "$png" 2>/dev/null || echo 0)
	if ((size > 10000)) && [[ $dom == *'<table id="held">'* && $dom == *"$HELD"* && $dom == *"<svg"* ]]; then
		tap_ok "headless chromium renders the report (screenshot $size bytes, table and charts in the DOM)"
	else
		tap_not_ok "headless chromium renders the report" "png $size bytes" "$(head -c 300 <<<"$dom")"
	fi
fi

# 12-13. usage, top
us=$(ctl usage erin --json 2>&1)
got=$(json '[(r["rule"], r["windows"][0]["used"], r["windows"][0]["limit"], r["full"]) for r in d["rules"]]' <<<"$us" 2>&1)
ut=$(ctl usage erin 2>&1)
if [[ $got == "[('per-account-messages', 2, 2, True), ('per-account-recipients', 3, 20, False)]" &&
	$ut == *"per-account-messages: 2/2 per h, frees 1 in "*", empty in "*"[FULL]"* ]]; then
	tap_ok "usage erin: 2/2 messages (full, frees 1 in ...), 3/20 recipients"
else
	tap_not_ok "usage erin: 2/2 messages (full), 3/20 recipients" "$got" "$ut"
fi
top=$(ctl top --json -n 5 2>&1)
first=$(json '(d["top"][0]["rule"], d["top"][0]["subject"], d["top"][0]["ratio"])' <<<"$top" 2>&1)
if [[ $first == "('per-account-messages', 'erin', 1.0)" ]]; then
	tap_ok "top lists erin first (per-account-messages, full)"
else
	tap_not_ok "top lists erin first (per-account-messages, full)" "$first" "$top"
fi

# 14-15. release -> delivered to smtp-sink
rel=$(ctl release "$HELD" 2>&1)
if [[ $rel == *"released $HELD (sender <erin@example.org>, account erin, held by per-account-messages): delivery requested"* ]]; then
	tap_ok "policyctl release $HELD says what it did"
else
	tap_not_ok "policyctl release $HELD says what it did" "$rel"
fi
if lab_wait_sent "$HELD" 1 15 >/dev/null &&
	lab_log_grep "]: $HELD: to=<e3@ok.test>, relay=127.0.0.1\[127.0.0.1\]:$LAB_SINK_OK_PORT,.* status=sent " >/dev/null; then
	tap_ok "the released message is delivered to smtp-sink (status=sent)"
else
	tap_not_ok "the released message is delivered to smtp-sink (status=sent)" "$(grep -F "$HELD" "$LAB_MAILLOG")"
fi

# 16-17. unknown ids and accounts: clear errors
out=$(ctl release NOSUCHID123 2>&1)
rc=$?
if ((rc == 1)) && [[ $out == *"NOSUCHID123 is not in the hold queue"* ]]; then
	tap_ok "release of an unknown queue id: exit 1, 'not in the hold queue'"
else
	tap_not_ok "release of an unknown queue id: exit 1, 'not in the hold queue'" "exit $rc: $out"
fi
out=$(ctl release 'x;rm' 2>&1)
rc2=$?
out3=$(ctl usage 'a b' 2>&1)
rc3=$?
if ((rc2 == 2)) && [[ $out == *"is not a queue id"* ]] && ((rc3 == 1)) && [[ $out3 == *"contains a control character or a space"* ]]; then
	tap_ok "a malformed queue id (exit 2) and account (exit 1) are refused with a reason"
else
	tap_not_ok "a malformed queue id and account are refused with a reason" "exit $rc2: $out" "exit $rc3: $out3"
fi

# 18-19. delete --account: erin is still full, her next message is held
send erin e4@ok.test
H2=$QID
wait_queue "$H2" hold
out=$(ctl delete --account erin 2>&1)
sleep 0.2
if [[ $out == *"deleted $H2 "* ]] && [[ -z $(lab_queue_name "$H2") ]]; then
	tap_ok "delete --account erin removes her held message $H2"
else
	tap_not_ok "delete --account erin removes her held message" "$out" "$(lab_queue_json)"
fi
out=$(ctl delete --account nobody 2>&1)
if (($? == 1)) && [[ $out == *"no held message of account 'nobody'"* ]]; then
	tap_ok "delete --account of an account with nothing held: exit 1 and why"
else
	tap_not_ok "delete --account of an account with nothing held: exit 1 and why" "$out"
fi

# 20-21. reset frees the account
out=$(ctl reset erin 2>&1)
us=$(ctl usage erin --json 2>&1)
got=$(json '[r["windows"][0]["used"] for r in d["rules"]]' <<<"$us" 2>&1)
if [[ $out == *"erin: cleared per-account-messages"* && $got == "[0, 0]" ]]; then
	tap_ok "reset erin clears her counters (usage 0 and 0)"
else
	tap_not_ok "reset erin clears her counters" "$out" "$got"
fi
send erin e5@ok.test
if [[ -n $QID ]] && lab_wait_sent "$QID" 1 >/dev/null; then
	tap_ok "after reset erin's next message is delivered, not held"
else
	tap_not_ok "after reset erin's next message is delivered, not held" "$(lab_queue_json)"
fi

# 22-25. permissions
out=$(setpriv --reuid="$NOPRIV" --regid="$NOPRIV" --clear-groups "$POLICYCTL" -s "$SOCK" status 2>&1)
rc=$?
if ((rc == 1)) && [[ $out == *"permission denied on $SOCK"*"member of group $CTLGROUP"* ]]; then
	tap_ok "a user outside $CTLGROUP is refused by the socket's mode, with a clear message"
else
	tap_not_ok "a user outside $CTLGROUP is refused with a clear message" "exit $rc: $out"
fi
out=$(setpriv --reuid="$NOPRIV" --regid="$NOPRIV" --groups="$CTLGID" "$POLICYCTL" -s "$SOCK" status --json 2>&1)
if [[ $(json 'd["version"] != ""' <<<"$out" 2>/dev/null) == True ]]; then
	tap_ok "a member of $CTLGROUP (supplementary group) is admitted"
else
	tap_not_ok "a member of $CTLGROUP (supplementary group) is admitted" "$out"
fi
chmod 0666 "$SOCK"
out=$(setpriv --reuid="$NOPRIV" --regid="$NOPRIV" --clear-groups "$POLICYCTL" -s "$SOCK" status 2>&1)
rc=$?
chmod 0660 "$SOCK"
nuid=$(id -u "$NOPRIV")
if ((rc == 1)) && [[ $out == "policyctl: permission denied: uid $nuid is not root or in group $CTLGROUP" ]]; then
	tap_ok "with the socket opened up, SO_PEERCRED still refuses uid $nuid: '$out'"
else
	tap_not_ok "with the socket opened up, SO_PEERCRED still refuses the user" "exit $rc: $out"
fi
if grep -q "event=control_refused uid=$nuid" "$LAB/policyd.log"; then
	tap_ok "policyd logs the refused control connection"
else
	tap_not_ok "policyd logs the refused control connection" "$(grep control "$LAB/policyd.log" | tail -n 3)"
fi

# 26-28. garbage on the socket
RAW=$(
	python3 - "$SOCK" <<'PY' 2>&1
import socket, sys, time
def conv(lines, big=None):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(sys.argv[1])
    out = []
    if big is not None:
        try:
            s.sendall(big)
        except OSError:
            pass
    for l in lines:
        s.sendall(l)
        buf = b""
        while not buf.endswith(b"\n"):
            c = s.recv(65536)
            if not c:
                break
            buf += c
        out.append(buf.decode().strip())
    if big is not None:
        buf = b""
        try:
            while True:
                c = s.recv(65536)
                if not c:
                    break
                buf += c
        except OSError:
            pass
        out.append(buf.decode().strip() + " | closed")
    s.close()
    return out
for r in conv([b"garbage\n", b"\xff\xfe{}\n", b'{"cmd":"nope"}\n', b'{"cmd":"usage"}\n', b'{"cmd":"status"}\n']):
    print(r)
for r in conv([], big=b"{" + b" " * 70000 + b"\n"):
    print(r)
t = time.time()
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall(b'{"cmd":"stat')   # half a request, then silence: the daemon must not hang
s.close()
print("half request sent")
PY
)
if [[ $(sed -n 1p <<<"$RAW") == '{"ok":false,"error":"not JSON ('*'): send one JSON object per line"}' &&
	$(sed -n 2p <<<"$RAW") == '{"ok":false,"error":"not JSON'* &&
	$(sed -n 3p <<<"$RAW") == '{"ok":false,"error":"unknown command '\''nope'\'' (known: status, '* &&
	$(sed -n 4p <<<"$RAW") == '{"ok":false,"error":"'\''usage'\'' needs an \"account\""}' &&
	$(sed -n 5p <<<"$RAW") == '{"ok":true,'* ]]; then
	tap_ok "garbage gets error replies and the same connection still answers status"
else
	tap_not_ok "garbage gets error replies and the same connection still answers status" "$RAW"
fi
if [[ $(sed -n 6p <<<"$RAW") == '{"ok":false,"error":"request longer than 65536 bytes: closing"} | closed' ]]; then
	tap_ok "a 70 KB request line gets an error and the connection is closed"
else
	tap_not_ok "a 70 KB request line gets an error and the connection is closed" "$RAW"
fi
if ctl status >/dev/null 2>&1 && kill -0 "$POLICYD_PID" 2>/dev/null; then
	tap_ok "policyd still answers after the garbage"
else
	tap_not_ok "policyd still answers after the garbage" "$(tail -n 5 "$LAB/policyd.log")"
fi

# 29-30. counters moved between two scrapes
M2=$(scrape)
r1=$(metric policyd_requests_total "$M1")
r2=$(metric policyd_requests_total "$M2")
h2=$(metric 'policyd_verdicts_total{action="hold",rule="per-account-messages"}' "$M2")
w2=$(metric 'policyd_held_records_total{event="written"}' "$M2")
c2=$(metric 'policyd_request_duration_seconds_count' "$M2")
if ((r2 > r1 && h2 >= 2 && w2 >= 2 && c2 >= r2)); then
	tap_ok "metrics moved: requests $r1 -> $r2, hold verdicts by rule $h2, held records $w2"
else
	tap_not_ok "metrics moved between two scrapes" "requests $r1 -> $r2, hold $h2, written $w2, histogram count $c2" \
		"$(grep -E 'verdicts_total|held_records' <<<"$M2")"
fi
t=$(_lab_ms)
for _ in $(seq 20); do scrape >/dev/null; done
SCRAPE20_MS=$(($(_lab_ms) - t))
if grep -q '^policyd_metrics_render_seconds ' <<<"$M2"; then
	tap_ok "20 scrapes in ${SCRAPE20_MS} ms; render time $(metric policyd_metrics_render_seconds "$(scrape)") s"
else
	tap_not_ok "the metrics carry their own render time" "$(tail -n 5 <<<"$M2")"
fi

# 31-32. clean stop, socket gone
if policyd_stop; then
	tap_ok "policyd exits 0"
else
	tap_not_ok "policyd exits 0" "$(tail -n 5 "$LAB/policyd.log")"
fi
if [[ ! -e $SOCK ]]; then
	tap_ok "the control socket is removed at exit"
else
	tap_not_ok "the control socket is removed at exit" "$(ls -l "$SOCK")"
fi

tap_diag "figures: first scrape ${SCRAPE_MS} ms, 20 scrapes ${SCRAPE20_MS} ms, report held ${REPORT_MS} ms; total $(($(_lab_ms) - T0)) ms"
if ((TAP_FAILED > 0)) && [[ ${KEEP_LAB:-0} != 1 ]]; then
	tap_diag "policyd log tail:" "$(tail -n 25 "$LAB/policyd.log" 2>/dev/null)"
	tap_diag "rerun with KEEP_LAB=1 to keep $LAB"
fi
lab_stop
rm -rf "$CTLDIR"
((TAP_FAILED == 0))
