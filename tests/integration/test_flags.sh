#!/bin/bash
# test_flags.sh - flags, the lockout hook and the global pause end to end:
# swaks -> Postfix -> policyd, with a test lockout command that appends its
# environment to files under $LAB/hook.
#
# Owns: a [limit] rule with flag = yes firing -> the account flagged -> its
# next mail deferred (450 with the support text) -> the lockout command run
# exactly once with the flag's id; a hanging command killed at the timeout
# and retried, a failing one retried with backoff then recorded failed;
# with lockout_delay = 3s, policyd SIGKILLed right after the flag is logged
# and restarted -> the command runs exactly once; then over the control
# socket (policyctl): a flag with `duration = 2s` ending by itself, the
# second flag of an account escalating to hold (postqueue -j: hold queue),
# pause --hold / --defer holding or deferring every outbound message while
# inbound mail flows, resume.  TAP on stdout.
#
# Needs: root, POLICYD (and POLICYCTL for the control-socket part, else
# those tests report SKIP); meson sets both.

set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lab.sh
. "$HERE/lab.sh"

if [[ -z ${POLICYD:-} || $POLICYD == fake ]]; then
	echo "1..0 # SKIP POLICYD is not set (path of the policyd binary)"
	exit 0
fi
[[ $POLICYD == /* ]] || POLICYD=$PWD/$POLICYD
[[ -z ${POLICYCTL:-} || $POLICYCTL == /* ]] || POLICYCTL=$PWD/$POLICYCTL
export POLICYD

lab_skip_unless_possible
lab_install_traps
echo "1..32"
T0=$(_lab_ms)

LAB_POLICY_ENDPOINT=inet
LAB_POLICY_HOOKS="rcpt eom"
if ! lab_start; then
	echo "Bail out! the Postfix lab did not start"
	exit 1
fi
tap_diag "lab $LAB: smtpd 127.0.0.1:$LAB_SMTP_PORT, policyd 127.0.0.1:$LAB_POLICY_PORT"

HOOKDIR=$LAB/hook
mkdir -p "$HOOKDIR"
SOCK=$LAB/run/control.sock
PLOG=$LAB/policyd.log
MUA=198.51.100.7
STRANGER=203.0.113.50

# The test lockout command: records every run, then acts by account.
cat >"$LAB/lockout.sh" <<EOF
#!/bin/sh
{ echo "=== \$(date +%s.%N)"; env | sort; } >>$HOOKDIR/\$POLICYD_ACCOUNT.env
echo "\$POLICYD_FLAG_ID \$POLICYD_ATTEMPT \$POLICYD_RETRY \$POLICYD_INTERRUPTED \$(date +%s.%N) \$*" >>$HOOKDIR/\$POLICYD_ACCOUNT.runs
case \$POLICYD_ACCOUNT in
dave) echo "hanging"; sleep 60 ;;
erin) echo "lockout failed: database down"; exit 3 ;;
esac
echo "locked \$POLICYD_ACCOUNT"
EOF
chmod 755 "$LAB/lockout.sh"

# conf FILE [EXTRA [flags] LINES]
conf() {
	cat >"$1" <<EOF
[server]
listen = inet:127.0.0.1:$LAB_POLICY_PORT
state_dir = $LAB/state
log = stderr
hooks = rcpt, eom
control = unix:$SOCK

[limit per-account-recipients]
key = sasl_username
count = recipients
rate = 3/1h
action = defer
reply = Too many recipients
flag = yes

[flags]
action = defer
reply = Your account was suspended for unusual sending; please contact support@lab.test
escalate_after = 2
escalate_window = 30d
escalate_action = hold
lockout_command = $LAB/lockout.sh
lockout_args = --flag %{id} --account %{account}
lockout_timeout = 1s
lockout_retries = 2
lockout_backoff = 1s
lockout_concurrency = 2
${2:-}
EOF
}
CONF_A=$LAB/a.conf
CONF_B=$LAB/b.conf
conf "$CONF_A" "lockout_delay = 0s"
conf "$CONF_B" "lockout_delay = 3s
duration = 2s"

send() { # LOGIN FROM TO [ADDR]: transcript in OUT, queue id in QID
	OUT=$(lab_send "$1" "${4:-$MUA}" "$2" "$3")
	QID=$(lab_queue_id "$OUT")
}
rcpt_reply() {
	awk -v a="RCPT TO:<$1>" '
		index($0, a) { want = 1; next }
		want && /^<[-*]/ { sub(/^<[-*]+ */, ""); print; exit }' <<<"$OUT"
}
runs() { grep -c '' "$HOOKDIR/$1.runs" 2>/dev/null || echo 0; }
flag_id() { sed -n "s/.*event=flag account=$1 id=\([^ ]*\).*/\1/p" "$PLOG" | tail -n 1; }
# wait_for SECONDS COMMAND...: poll every 0.1 s
wait_for() {
	local t=$1 deadline
	shift
	deadline=$(($(_lab_ms) + t * 1000))
	until "$@"; do
		(($(_lab_ms) > deadline)) && return 1
		sleep 0.1
	done
}
runs_at_least() { (($(runs "$1") >= $2)); }
log_has() { grep -qE -- "$1" "$PLOG"; }
queue_of() { # QID: wait for it in the queue, print its queue name
	local qn=
	for _ in $(seq 50); do
		qn=$(lab_queue_name "$1")
		[[ -n $qn ]] && break
		sleep 0.1
	done
	echo "$qn"
}
ctl() { "$POLICYCTL" -s "$SOCK" "$@" 2>&1; }

# 1-2
out=$(policyd_check "$CONF_A")
rc=$?
if ((rc == 0)); then tap_ok "policyd -t accepts [flags] and flag = yes"; else tap_not_ok "policyd -t accepts [flags] and flag = yes" "$out"; fi
if policyd_start "$CONF_A"; then tap_ok "policyd starts"; else tap_not_ok "policyd starts"; fi

# 3-4. alice uses her 3 recipients, the 4th fires the rule: deferred, flagged.
send alice alice@example.org a1@ok.test,a2@ok.test,a3@ok.test
first=$QID
send alice alice@example.org a4@ok.test
r=$(rcpt_reply a4@ok.test)
if [[ -n $first && $r == "450 4.7.1 "*"Too many recipients"* ]]; then
	tap_ok "alice: 3 recipients accepted, the 4th deferred by the rule"
else
	tap_not_ok "alice: 3 recipients accepted, the 4th deferred by the rule" "reply: $r"
fi
if wait_for 5 log_has "event=flag account=alice id=[0-9]{8}-[0-9]{6}-[0-9a-f]{8} source=limit action=defer"; then
	tap_ok "policyd logs the flag: account=alice source=limit action=defer"
else
	tap_not_ok "policyd logs the flag" "$(grep -E 'event=flag' "$PLOG")"
fi
ALICE_ID=$(flag_id alice)

# 5. her next mail gets the flag's action and text
send alice alice@example.org a5@ok.test
r=$(rcpt_reply a5@ok.test)
if [[ $r == "450 4.7.1 <a5@ok.test>: Recipient address rejected: "*"suspended for unusual sending; please contact support@lab.test"* ]]; then
	tap_ok "alice's next mail: 450 4.7.1 with the support text"
else
	tap_not_ok "alice's next mail: 450 4.7.1 with the support text" "reply: $r"
fi
if grep 'event=decision' "$PLOG" | grep 'recipient=a5@ok.test' | grep -q 'verdict=DEFER.*rule=flag'; then
	tap_ok "the decision log names rule=flag"
else
	tap_not_ok "the decision log names rule=flag" "$(grep 'a5@ok.test' "$PLOG" | tail -n 2)"
fi

# 6-9. the decision log; the lockout command ran once, with the flag's id, a clean environment and argv
wait_for 5 runs_at_least alice 1
sleep 1.5
n=$(runs alice)
if [[ $n == 1 && -n $ALICE_ID ]] && grep -q "^$ALICE_ID 1 0 0 .* --flag $ALICE_ID --account alice\$" "$HOOKDIR/alice.runs"; then
	tap_ok "the lockout command ran exactly once for alice's flag $ALICE_ID (attempt 1, argv expanded)"
else
	tap_not_ok "the lockout command ran exactly once for alice's flag" "runs: $n" "$(cat "$HOOKDIR/alice.runs" 2>/dev/null)"
fi
envf=$HOOKDIR/alice.env
if grep -qx "POLICYD_FLAG_ID=$ALICE_ID" "$envf" && grep -qx 'POLICYD_ACCOUNT=alice' "$envf" &&
	grep -qx 'POLICYD_SOURCE=limit' "$envf" && grep -q '^POLICYD_REASON=limit per-account-recipients' "$envf" &&
	grep -q '^POLICYD_EVIDENCE_FILE=/' "$envf" && ! grep -q '^HOME=\|^USER=\|^LAB=' "$envf"; then
	tap_ok "its environment: POLICYD_* and PATH only"
else
	tap_not_ok "its environment: POLICYD_* and PATH only" "$(cat "$envf" 2>/dev/null)"
fi
if log_has "event=hook id=$ALICE_ID account=alice attempt=1 exit=0 .*output=\"locked alice\" result=done"; then
	tap_ok "the run is logged: exit=0 output=\"locked alice\" result=done"
else
	tap_not_ok "the run is logged" "$(grep 'event=hook' "$PLOG")"
fi

# 10. bob is not affected
send bob bob@example.org b1@ok.test
if [[ -n $QID ]] && lab_wait_sent "$QID" 1 >/dev/null; then tap_ok "bob (not flagged) is delivered"; else tap_not_ok "bob (not flagged) is delivered" "$OUT"; fi

# 11-13. dave's lockout command hangs: killed at 1 s, retried twice, failed.
# erin's fails (exit 3): retried after 1 s and 2 s, then failed.
send dave dave@example.org d1@ok.test,d2@ok.test,d3@ok.test,d4@ok.test
send erin erin@example.org e1@ok.test,e2@ok.test,e3@ok.test,e4@ok.test
wait_for 5 log_has "event=flag account=erin"
DAVE_ID=$(flag_id dave)
ERIN_ID=$(flag_id erin)
wait_for 15 log_has "event=hook id=$DAVE_ID .*result=failed"
wait_for 10 log_has "event=hook id=$ERIN_ID .*result=failed"
if [[ $(runs dave) == 3 ]] && [[ $(grep -c "event=hook_timeout id=$DAVE_ID" "$PLOG") == 3 ]] &&
	log_has "event=hook id=$DAVE_ID account=dave attempt=3 exit=none signal=15 timeout=yes .*result=failed"; then
	tap_ok "a hanging command: SIGTERM at lockout_timeout, 3 attempts, recorded failed"
else
	tap_not_ok "a hanging command: SIGTERM at lockout_timeout, 3 attempts, recorded failed" \
		"runs: $(runs dave)" "$(grep "$DAVE_ID" "$PLOG")"
fi
if [[ $(runs erin) == 3 ]] && log_has "event=hook id=$ERIN_ID account=erin attempt=3 exit=3 .*output=\"lockout failed: database down\" result=failed"; then
	tap_ok "a failing command (exit 3): 3 attempts, recorded failed with its output"
else
	tap_not_ok "a failing command (exit 3): 3 attempts, recorded failed" "$(grep "$ERIN_ID" "$PLOG")"
fi
# the retries: attempt, retry flag, and the doubling gaps
gaps=$(awk '{ t[NR] = $5; a[NR] = $2; r[NR] = $3 }
	END { printf "%s%s%s %s%s%s %.1f %.1f", a[1], a[2], a[3], r[1], r[2], r[3], t[2] - t[1], t[3] - t[2] }' "$HOOKDIR/erin.runs")
read -r att ret g1 g2 <<<"$gaps"
if [[ $att == 123 && $ret == 011 ]] && awk -v a="$g1" -v b="$g2" 'BEGIN { exit !(a >= 0.9 && a < 2.5 && b >= 1.9 && b < 3.5) }'; then
	tap_ok "retries: POLICYD_ATTEMPT 1,2,3, POLICYD_RETRY 0,1,1, backoff ${g1}s then ${g2}s"
else
	tap_not_ok "retries with doubling backoff" "$gaps" "$(cat "$HOOKDIR/erin.runs")"
fi

# 14-19. lockout_delay = 3s: SIGKILL right after the flag is logged, restart: once.
policyd_stop >/dev/null
if policyd_start "$CONF_B"; then tap_ok "policyd restarts with lockout_delay = 3s"; else tap_not_ok "policyd restarts with lockout_delay = 3s"; fi
send carol carol@example.org c1@ok.test,c2@ok.test,c3@ok.test,c4@ok.test
if wait_for 5 log_has "event=flag account=carol"; then
	kill -KILL "$POLICYD_PID"
	wait "$POLICYD_PID" 2>/dev/null
	POLICYD_PID=
	printf '=== %s SIGKILL\n' "$(date '+%T.%N')" >>"$PLOG"
fi
CAROL_ID=$(flag_id carol)
if [[ -n $CAROL_ID && $(runs carol) == 0 ]]; then
	tap_ok "policyd SIGKILLed after the flag ($CAROL_ID), before its lockout ran"
else
	tap_not_ok "policyd SIGKILLed after the flag, before its lockout ran" "runs: $(runs carol)"
fi
policyd_start "$CONF_B"
wait_for 10 runs_at_least carol 1
sleep 1.5
if [[ $(runs carol) == 1 ]] && grep -q "^$CAROL_ID 1 0 0 " "$HOOKDIR/carol.runs"; then
	tap_ok "after the restart carol's lockout ran exactly once (attempt 1)"
else
	tap_not_ok "after the restart carol's lockout ran exactly once" "$(cat "$HOOKDIR/carol.runs" 2>/dev/null)"
fi
lat=$(sed -n "s/.*event=hook_exec id=$CAROL_ID .*latency_ms=\([0-9]*\).*/\1/p" "$PLOG")
if [[ -n $lat ]] && ((lat >= 3000)); then
	tap_ok "its due time survived the kill: run ${lat} ms after the flag (delay 3 s)"
else
	tap_not_ok "its due time survived the kill" "latency: '$lat'"
fi
if log_has "event=hook_resume pending=1"; then
	tap_ok "the restart logs the pending outbox entry it resumes"
else
	tap_not_ok "the restart logs the pending outbox entry it resumes" "$(grep hook_resume "$PLOG")"
fi
# alice and her flag survived the kill too (flags are durable when acknowledged)
send alice alice@example.org a6@ok.test
r=$(rcpt_reply a6@ok.test)
if [[ $r == "450 4.7.1 "*"please contact support@lab.test"* ]] && [[ $(runs alice) == 1 ]]; then
	tap_ok "after the kill alice is still flagged, and her lockout did not run again"
else
	tap_not_ok "after the kill alice is still flagged, and her lockout did not run again" "reply: $r" "runs: $(runs alice)"
fi

# 20-31: over the control socket
if [[ -z ${POLICYCTL:-} || ! -x $POLICYCTL ]] || ! ctl status >/dev/null; then
	for _ in $(seq 20 31); do tap_ok "# SKIP policyctl or the control socket is not available"; done
else
	# 20-22. duration = 2s (config): the flag ends by itself
	out=$(ctl flag frank --reason "manual test")
	if [[ $? == 0 ]]; then tap_ok "policyctl flag frank"; else tap_not_ok "policyctl flag frank" "$out"; fi
	wait_for 3 log_has "event=flag account=frank .*expires=2s"
	send frank frank@example.org f1@ok.test
	r1=$(rcpt_reply f1@ok.test)
	sleep 2.2
	send frank frank@example.org f2@ok.test
	r2=$(rcpt_reply f2@ok.test)
	if [[ $r1 == 450* && $r2 == 250* && -n $QID ]]; then
		tap_ok "duration = 2s: frank deferred, then delivered 2 s later"
	else
		tap_not_ok "duration = 2s: frank deferred, then delivered 2 s later" "before: $r1" "after: $r2"
	fi
	h=$(ctl --json history frank)
	if grep -q '"cleared_by": *"expired"' <<<"$h"; then
		tap_ok "policyctl history frank: cleared_by expired"
	else
		tap_not_ok "policyctl history frank: cleared_by expired" "$h"
	fi

	# 23-25. george: flagged, unflagged, flagged again -> the second escalates to hold
	ctl flag george --duration forever >/dev/null
	ctl unflag george >/dev/null
	out=$(ctl flag george --duration forever)
	if wait_for 3 log_has "event=flag account=george .*action=hold escalated=yes flags_in_window=2"; then
		tap_ok "george's second flag within 30 days escalates to hold"
	else
		tap_not_ok "george's second flag within 30 days escalates to hold" "$out" "$(grep 'account=george' "$PLOG")"
	fi
	send george george@example.org g1@ok.test
	qn=$([[ -n $QID ]] && queue_of "$QID")
	if [[ $qn == hold ]]; then
		tap_ok "george's message is in the hold queue (postqueue -j)"
	else
		tap_not_ok "george's message is in the hold queue (postqueue -j)" "queue: '$qn'" "$OUT"
	fi
	h=$(ctl --json history george)
	if grep -q '"cleared_by": *"' <<<"$h" && grep -q '"times_flagged": *2' <<<"$h"; then
		tap_ok "policyctl history george: 2 flags, one cleared by the admin"
	else
		tap_not_ok "policyctl history george: 2 flags" "$h"
	fi

	# 26-31. pause / resume
	out=$(ctl pause --hold)
	if [[ $? == 0 ]] && wait_for 2 log_has "event=pause action=hold"; then tap_ok "policyctl pause --hold"; else tap_not_ok "policyctl pause --hold" "$out"; fi
	send bob bob@example.org b2@ok.test
	qn=$([[ -n $QID ]] && queue_of "$QID")
	send "" stranger@example.net in1@local.test "$STRANGER"
	in_qid=$QID
	if [[ $qn == hold ]]; then
		tap_ok "paused: bob's outbound message is held"
	else
		tap_not_ok "paused: bob's outbound message is held" "queue: '$qn'"
	fi
	if [[ -n $in_qid ]] && lab_wait_log "]: $in_qid: to=<in1@local.test>.* status=sent" 10 >/dev/null; then
		tap_ok "paused: inbound mail is delivered"
	else
		tap_not_ok "paused: inbound mail is delivered" "$(grep -F "${in_qid:-NOQID}" "$LAB_MAILLOG")"
	fi
	ctl pause --defer >/dev/null
	send ivan ivan@example.org i1@ok.test
	r=$(rcpt_reply i1@ok.test)
	if [[ $r == "450 4.7.1 "*"Outbound mail is paused"* ]]; then
		tap_ok "pause --defer: 450 4.7.1 Outbound mail is paused ..."
	else
		tap_not_ok "pause --defer: 450 4.7.1 Outbound mail is paused ..." "reply: $r"
	fi
	# the pause survives a restart
	policyd_stop >/dev/null
	policyd_start "$CONF_B"
	send ivan ivan@example.org i2@ok.test
	r=$(rcpt_reply i2@ok.test)
	if [[ $r == 450* ]] && ctl status | grep -q 'PAUSED (defer)'; then
		tap_ok "the pause survives a restart"
	else
		tap_not_ok "the pause survives a restart" "reply: $r"
	fi
	out=$(ctl resume)
	send bob bob@example.org b3@ok.test
	if [[ -n $QID ]] && lab_wait_sent "$QID" 1 >/dev/null; then
		tap_ok "policyctl resume: bob's next message is delivered"
	else
		tap_not_ok "policyctl resume: bob's next message is delivered" "$out" "$OUT"
	fi
fi

if [[ -n ${POLICYD_PID:-} ]] && policyd_stop; then tap_ok "policyd exits 0"; else tap_not_ok "policyd exits 0"; fi

# figures for the report
tap_diag "hook latency flag->exec (ms): $(sed -n 's/.*event=hook_exec id=[^ ]* account=\([a-z]*\) attempt=1 .*latency_ms=\([0-9]*\).*/\1=\2/p' "$PLOG" | tr '\n' ' ')"
tap_diag "total $(($(_lab_ms) - T0)) ms"
if ((TAP_FAILED > 0)) && [[ ${KEEP_LAB:-0} != 1 ]]; then
	tap_diag "policyd log tail:" "$(tail -n 25 "$PLOG" 2>/dev/null)"
	tap_diag "rerun with KEEP_LAB=1 to keep $LAB"
fi
lab_stop
((TAP_FAILED == 0))
