#!/bin/bash
# test_postfix_limits.sh - end-to-end rate limits: swaks -> Postfix -> policyd.
#
# Owns: the first end-to-end tests of policyd's limit rules against a real
# throw-away Postfix (tests/integration/lab.sh): defer per recipients, hold
# per messages, state across a restart, unaffected and unauthenticated
# senders, and `policyd -t` line numbers.  TAP on stdout.
#
# Needs: root, POLICYD=/path/to/policyd (meson sets it; POLICYD=fake runs the
# lab's DUNNO server instead, to exercise the harness alone).
#
# One rule set applies to every account, so the users are chosen to stay
# apart: alice and dave meet the recipient limit (3/1h, defer); bob meets the
# message limit (2/1h, hold) with his third message, because dave legitimately
# sends two messages; carol and an unauthenticated client stay under both.

set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lab.sh
. "$HERE/lab.sh"

if [[ -z ${POLICYD:-} ]]; then
	echo "1..0 # SKIP POLICYD is not set (path of the policyd binary, or 'fake')"
	exit 0
fi
[[ $POLICYD == fake || $POLICYD == /* ]] || POLICYD=$PWD/$POLICYD
export POLICYD

lab_skip_unless_possible
lab_install_traps
echo "1..19"
T0=$(_lab_ms)

LAB_POLICY_ENDPOINT=inet
LAB_POLICY_HOOKS="rcpt eom"
if ! lab_start; then
	echo "Bail out! the Postfix lab did not start"
	exit 1
fi
tap_diag "lab $LAB: smtpd 127.0.0.1:$LAB_SMTP_PORT, policyd 127.0.0.1:$LAB_POLICY_PORT, start ${LAB_START_MS} ms"

CONF=$LAB/policyd.conf
cat >"$CONF" <<EOF
[server]
listen = inet:127.0.0.1:$LAB_POLICY_PORT
store = memory
state_dir = $LAB/state
log = stderr
hooks = rcpt, eom

[limit per-account-recipients]
key = sasl_username
count = recipients
rate = 3/1h
action = defer
reply = Too many recipients, please contact support

[limit per-account-messages]
key = sasl_username
count = messages
rate = 2/1h
action = hold
reply = Held for review: too many messages
EOF

MUA=198.51.100.7     # XCLIENT ADDR of the authenticated users
STRANGER=203.0.113.50 # XCLIENT ADDR of the unauthenticated client

# send LOGIN FROM TO: swaks transcript in $OUT, queue ID (or "") in $QID.
send() {
	OUT=$(lab_send "$1" "${4:-$MUA}" "$2" "$3")
	QID=$(lab_queue_id "$OUT")
}

# The SMTP dialogue of $OUT without EHLO capabilities and message content.
dialogue() {
	awk '/^ -> (XCLIENT|MAIL|RCPT|DATA|QUIT)/ || (/^<[-*]/ && !/^<[-*]+ *250-/)' <<<"$OUT"
}

# rcpt_reply ADDR: the server's reply to RCPT TO:<ADDR> in $OUT.
rcpt_reply() {
	awk -v a="RCPT TO:<$1>" '
		index($0, a) { want = 1; next }
		want && /^<[-*]/ { sub(/^<[-*]+ */, ""); print; exit }' <<<"$OUT"
}

# 1. the config passes policyd -t.
out=$(policyd_check "$CONF")
rc=$?
if ((rc == 0)); then
	tap_ok "policyd -t accepts the test config"
else
	tap_not_ok "policyd -t accepts the test config" "exit $rc: $out"
fi

# 2. the daemon starts.
if policyd_start "$CONF"; then
	tap_ok "policyd starts and listens on 127.0.0.1:$LAB_POLICY_PORT"
else
	tap_not_ok "policyd starts and listens on 127.0.0.1:$LAB_POLICY_PORT" \
		"$(tail -n 5 "$LAB/policyd.log" 2>/dev/null)"
fi

# 3-4. alice: 3 recipients, the whole limit, are accepted and delivered.
send alice alice@example.org a1@ok.test,a2@ok.test,a3@ok.test
if [[ -n $QID ]] && [[ $(rcpt_reply a1@ok.test)$(rcpt_reply a2@ok.test)$(rcpt_reply a3@ok.test) == 250*250*250* ]]; then
	tap_ok "alice: a message to 3 recipients is accepted ($QID)"
else
	tap_not_ok "alice: a message to 3 recipients is accepted" "$(dialogue)"
fi
if [[ -n $QID ]] && lab_wait_sent "$QID" 3 >/dev/null &&
	[[ $(lab_log_grep "]: $QID: to=<a[123]@ok.test>, relay=127.0.0.1\[127.0.0.1\]:$LAB_SINK_OK_PORT,.* status=sent " | wc -l) == 3 ]]; then
	tap_ok "alice: all 3 recipients reach the accepting smtp-sink"
else
	tap_not_ok "alice: all 3 recipients reach the accepting smtp-sink" \
		"$(grep -F "${QID:-NOQID}" "$LAB_MAILLOG")"
fi

# 5-7. alice's next recipient is deferred with the rule's text.
send alice alice@example.org a4@ok.test
r=$(rcpt_reply a4@ok.test)
if [[ $r =~ ^450\ 4\.7\.1\ \<a4@ok\.test\>:\ Recipient\ address\ rejected:\ .*Too\ many\ recipients,\ please\ contact\ support.*try\ again\ in\ [0-9]+ ]]; then
	tap_ok "alice: the 4th recipient gets 450 4.7.1 with the rule's text and 'try again in'"
else
	tap_not_ok "alice: the 4th recipient gets 450 4.7.1 with the rule's text and 'try again in'" \
		"reply: $r" "$(dialogue)"
fi
if lab_wait_log "reject: RCPT from [^ ]*\[$MUA\]: 450 4\.7\.1 <a4@ok\.test>: Recipient address rejected: .*Too many recipients.*from=<alice@example\.org> to=<a4@ok\.test>" 5 >/dev/null; then
	tap_ok "alice: the maillog shows the 450 reject"
else
	tap_not_ok "alice: the maillog shows the 450 reject" "$(grep 'a4@ok.test' "$LAB_MAILLOG")"
fi
if grep -iE 'verdict=defer' "$LAB/policyd.log" 2>/dev/null | grep -q 'rule=per-account-recipients'; then
	tap_ok "policyd logs the decision with verdict=defer and rule=per-account-recipients"
else
	tap_not_ok "policyd logs the decision with verdict=defer and rule=per-account-recipients" \
		"$(grep -E 'verdict=|rule=' "$LAB/policyd.log" 2>/dev/null | tail -n 5)"
fi

# 8-9. dave uses 2 of 3, then sends 2 recipients: 1 accepted, 1 deferred.
send dave dave@example.org d1@ok.test,d2@ok.test
prep=$QID
send dave dave@example.org d3@ok.test,d4@ok.test
r3=$(rcpt_reply d3@ok.test)
r4=$(rcpt_reply d4@ok.test)
if [[ -n $prep && -n $QID && $r3 == 250* && $r4 == "450 4.7.1 "* ]]; then
	tap_ok "dave with 1 recipient left: of 2 recipients the first is accepted, the second deferred"
else
	tap_not_ok "dave with 1 recipient left: of 2 recipients the first is accepted, the second deferred" \
		"first message: ${prep:-not queued}; d3: $r3; d4: $r4" "$(dialogue)"
fi
if [[ -n $QID ]] && lab_wait_sent "$QID" 1 >/dev/null &&
	lab_wait_log "]: $QID: from=<dave@example\.org>, size=[0-9]+, nrcpt=1 " 5 >/dev/null &&
	[[ $(lab_log_grep "]: $QID: to=<" | wc -l) == 1 ]]; then
	tap_ok "dave: exactly 1 recipient of that message is sent"
else
	tap_not_ok "dave: exactly 1 recipient of that message is sent" \
		"$(grep -F "${QID:-NOQID}" "$LAB_MAILLOG")"
fi

# 10-11. bob: two messages go out, the third is held.
b_ok=0
for i in 1 2; do
	send bob bob@example.org "b$i@ok.test"
	[[ -n $QID ]] && lab_wait_sent "$QID" 1 >/dev/null && b_ok=$((b_ok + 1))
done
if ((b_ok == 2)); then
	tap_ok "bob: two messages are delivered"
else
	tap_not_ok "bob: two messages are delivered" "$(dialogue)"
fi
send bob bob@example.org b3@ok.test
qn=""
if [[ -n $QID ]]; then
	for _ in $(seq 50); do
		qn=$(lab_queue_name "$QID")
		[[ -n $qn ]] && break
		sleep 0.1
	done
fi
if [[ $qn == hold ]]; then
	tap_ok "bob: the third message goes to the hold queue (postqueue -j queue_name hold)"
else
	tap_not_ok "bob: the third message goes to the hold queue (postqueue -j queue_name hold)" \
		"queue: '${qn}'" "$(dialogue)" "$(lab_queue_json)"
fi

# 12-14. restart with the same state_dir: alice is still limited.
if [[ -n ${POLICYD_PID:-} ]] && policyd_stop; then
	tap_ok "policyd exits 0 on SIGTERM"
else
	tap_not_ok "policyd exits 0 on SIGTERM" "$(tail -n 5 "$LAB/policyd.log" 2>/dev/null)"
fi
if policyd_start "$CONF"; then
	tap_ok "policyd starts again with the same state_dir"
else
	tap_not_ok "policyd starts again with the same state_dir"
fi
send alice alice@example.org a5@ok.test
r=$(rcpt_reply a5@ok.test)
if [[ $r == "450 4.7.1 <a5@ok.test>: Recipient address rejected: "*"try again in"* ]]; then
	tap_ok "after the restart alice is still limited (450)"
else
	tap_not_ok "after the restart alice is still limited (450)" "reply: $r" "$(dialogue)"
fi

# 15. carol, under the limit, is unaffected.
send carol carol@example.org c1@ok.test,c2@ok.test
if [[ -n $QID ]] && lab_wait_sent "$QID" 2 >/dev/null; then
	tap_ok "carol (another account, under the limit) is unaffected: 2 recipients delivered"
else
	tap_not_ok "carol (another account, under the limit) is unaffected: 2 recipients delivered" "$(dialogue)"
fi

# 16-17. policyd -t names the line of a bad rate.
BAD=$LAB/bad.conf
sed 's|^rate = 3/1h$|rate = 3/1x|' "$CONF" >"$BAD"
badline=$(grep -n '^rate = 3/1x$' "$BAD" | cut -d: -f1)
out=$(policyd_check "$BAD")
rc=$?
if ((rc != 0 && rc != 127)); then
	tap_ok "policyd -t exits non-zero on 'rate = 3/1x' (exit $rc)"
else
	tap_not_ok "policyd -t exits non-zero on 'rate = 3/1x'" "exit $rc: $out"
fi
if ((rc != 127)) && grep -qE "(line[ :]*$badline([^0-9]|$)|:$badline([^0-9]|$))" <<<"$out"; then
	tap_ok "policyd -t names line $badline of the bad rate"
else
	tap_not_ok "policyd -t names line $badline of the bad rate" "$out"
fi

# 18. unauthenticated mail from an untrusted address is not limited.
send "" stranger@example.net u1@ok.test,u2@ok.test,u3@ok.test,u4@ok.test,u5@ok.test "$STRANGER"
if [[ -n $QID ]] && lab_wait_sent "$QID" 5 >/dev/null; then
	tap_ok "unauthenticated client $STRANGER: 5 recipients (over the sasl_username limit) delivered"
else
	tap_not_ok "unauthenticated client $STRANGER: 5 recipients (over the sasl_username limit) delivered" "$(dialogue)"
fi

# 19. clean shutdown.
if [[ -n ${POLICYD_PID:-} ]] && policyd_stop; then
	tap_ok "policyd exits 0 at the end"
else
	tap_not_ok "policyd exits 0 at the end"
fi

tap_diag "total $(($(_lab_ms) - T0)) ms; policyd log: $(grep -c '' "$LAB/policyd.log" 2>/dev/null || echo 0) lines"
if ((TAP_FAILED > 0)) && [[ ${KEEP_LAB:-0} != 1 ]]; then
	tap_diag "policyd log tail:" "$(tail -n 15 "$LAB/policyd.log" 2>/dev/null)"
	tap_diag "rerun with KEEP_LAB=1 to keep $LAB"
fi
lab_stop
((TAP_FAILED == 0))
