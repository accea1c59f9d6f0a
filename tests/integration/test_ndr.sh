#!/bin/bash
# test_ndr.sh - NDR spikes end to end: swaks -> Postfix -> smtp-sinks that
# reject -> Postfix's real maillog -> policyd's log follower, attribution,
# classifier and spike test -> a flag -> the account's next message deferred.
#
# Owns: the end-to-end tests of policyd/ndr_module.c, ndr.c and follow.c
# against a throw-away Postfix (tests/integration/lab.sh): attribution of
# real bounces to the sending account, classes (user_unknown; blocklist_ip
# on spamhaus from a sink that names 127.0.0.1), the blocklist alert, the
# spike and its flag, the next message deferred, other accounts untouched,
# inbound NDRs at the policy hook, mail submitted with sendmail (pickup)
# counted per uid/sender and held by postsuper over its limit, the
# queue-size watcher, `policyctl ndr --json`, the bounces of a real log
# reaching the account's anomaly profile (the bounce-ratio component of its
# next recipient), and a restart that resumes the log without counting a
# line twice.  TAP on stdout.
#
# Needs: root, POLICYD and POLICYCTL (meson sets them), POLICYD_SOURCE_ROOT
# (for data/ndr-patterns.conf).

set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lab.sh
. "$HERE/lab.sh"

if [[ -z ${POLICYD:-} || -z ${POLICYCTL:-} || $POLICYD == fake ]]; then
	echo "1..0 # SKIP POLICYD and POLICYCTL must name the built binaries"
	exit 0
fi
[[ $POLICYD == /* ]] || POLICYD=$PWD/$POLICYD
[[ $POLICYCTL == /* ]] || POLICYCTL=$PWD/$POLICYCTL
SRC=${POLICYD_SOURCE_ROOT:-$(cd "$HERE/../.." && pwd)}
export POLICYD

lab_skip_unless_possible
lab_install_traps
echo "1..18"

BLOCKED_TEXT="554 5.7.1 Service unavailable; Client host [127.0.0.1] blocked using zen.spamhaus.org; https://www.spamhaus.org/query/ip/127.0.0.1"
lab_configure_hook() {
	lab_add_sink blocked 6 blocked.test -f RCPT -B "$BLOCKED_TEXT"
}
LAB_POLICY_ENDPOINT=inet
LAB_POLICY_HOOKS="rcpt eom"
if ! lab_start; then
	echo "Bail out! the Postfix lab did not start"
	exit 1
fi
tap_diag "lab $LAB: smtpd $LAB_SMTP_PORT, policyd $LAB_POLICY_PORT, blocked.test sink $(lab_port 6)"

CONF=$LAB/policyd.conf
SOCK=$LAB/run/control.sock
cat >"$CONF" <<EOF
[server]
listen = inet:127.0.0.1:$LAB_POLICY_PORT
store = memory
state_dir = $LAB/state
log = stderr
hooks = rcpt, eom
control = unix:$SOCK
postfix_config_dir = $LAB_ETC

[flags]
action = defer

[ndr]
log_file = $LAB_MAILLOG
log_start = start
patterns = $SRC/data/ndr-patterns.conf
local_domains = local.test
queue_dir = $LAB_SPOOL
queue_check_interval = 1s
our_ips = 127.0.0.1
filter_relays = none
min_count = 10
spike_action = flag
pickup_limit = 2/1h
pickup_action = hold
save_interval = 1s

[anomaly]
# no DNS here; warn low enough that the bounce ratio alone is logged
warn = 30
EOF

MUA=198.51.100.7
ctl() { "$POLICYCTL" -s "$SOCK" "$@"; }

# jget PERL-EXPR [JSON]: EXPR with $j = the "ndr" member of the reply (JSON, or
# standard input), p(NAME) = a principal, classes(NAME) = its top classes.
jget() {
	local prog='
		my $in = join "", <STDIN>;
		my $j = eval { decode_json($in)->{ndr} } || {};
		sub p { for (@{$j->{principals}}) { return $_ if $_->{principal} eq $_[0] } return {} }
		sub classes { join ",", map { "$_->{class}:$_->{count}" } @{p($_[0])->{top_classes} || []} }
		my $v = eval $ARGV[0]; print defined $v ? "$v" : "";'
	if (($# > 1)); then
		perl -MJSON::PP -e "$prog" "$1" <<<"$2"
	else
		perl -MJSON::PP -e "$prog" "$1"
	fi
}

# 1-2. config and start
out=$(policyd_check "$CONF")
rc=$?
if ((rc == 0)); then tap_ok "policyd -t accepts [ndr]"; else tap_not_ok "policyd -t accepts [ndr]" "$out"; fi
if policyd_start "$CONF"; then
	tap_ok "policyd starts with the log follower on $LAB_MAILLOG"
else
	tap_not_ok "policyd starts" "$(tail -n 20 "$LAB/policyd.log")"
	exit 1
fi

# 3. alice, a normal account: two recipients delivered
OUT=$(lab_send alice $MUA alice@example.org a1@ok.test,a2@ok.test)
QA=$(lab_queue_id "$OUT")
if [[ -n $QA ]] && lab_wait_sent "$QA" 2 >/dev/null; then
	tap_ok "alice: 2 recipients delivered ($QA)"
else
	tap_not_ok "alice: 2 recipients delivered" "$OUT"
fi

# 4-8. mallory mails a bad list: 6 unknown users, 8 receivers that name our
# IP on Spamhaus, 6 good ones
RCPTS=""
for i in 1 2 3 4 5 6; do RCPTS+="u$i@bounce.test,"; done
for i in 1 2 3 4 5 6 7 8; do RCPTS+="b$i@blocked.test,"; done
for i in 1 2 3 4 5 6; do RCPTS+="g$i@ok.test,"; done
OUT=$(lab_send mallory $MUA mallory@example.org "${RCPTS%,}")
QM=$(lab_queue_id "$OUT")
if [[ -n $QM ]] && lab_wait_log_count "]: $QM: to=<[^>]*>,.* status=(sent|bounced) " 20 20 >/dev/null; then
	tap_ok "mallory: 20 recipients, Postfix logs 14 bounces and 6 deliveries ($QM)"
else
	tap_not_ok "mallory: 20 recipients delivered or bounced" "$OUT" "$(grep -F "${QM:-NOQID}" "$LAB_MAILLOG" | tail -n 5)"
fi
wait_policyd_log() { # REGEX [TIMEOUT_S]
	local deadline=$((EPOCHSECONDS + ${2:-10}))
	until grep -qE -- "$1" "$LAB/policyd.log"; do
		((EPOCHSECONDS > deadline)) && return 1
		sleep 0.1
	done
}
if wait_policyd_log 'event=ndr_spike scope=principal name=mallory kind=sasl what=bounce'; then
	tap_ok "policyd sees mallory's bounce spike in the real maillog"
else
	tap_not_ok "policyd sees mallory's bounce spike" "$(grep ndr "$LAB/policyd.log" | tail -n 5)"
fi
if wait_policyd_log 'event=ndr_blocklist list=spamhaus ip=127.0.0.1 principal=mallory'; then
	tap_ok "a reply naming 127.0.0.1 on Spamhaus raises the blocklist alert"
else
	tap_not_ok "blocklist alert" "$(grep ndr_blocklist "$LAB/policyd.log")"
fi
J=$(ctl ndr --json)
got=$(jget 'my $p = p("mallory"); "$p->{kind} $p->{sent} $p->{bounced} $p->{failures} " . ($p->{spike} ? "spike" : "calm")' "$J")
if [[ $got == "sasl 6 14 14 spike" ]]; then
	tap_ok "policyctl ndr --json: mallory sent 6, bounced 14, all indicting, spike"
else
	tap_not_ok "policyctl ndr --json: mallory's counts" "got: $got" "$J"
fi
cls=$(jget 'classes("mallory")' "$J")
if [[ $cls == *blocklist_ip:8* && $cls == *user_unknown:6* ]]; then
	tap_ok "top classes: $cls"
else
	tap_not_ok "top classes blocklist_ip:8 and user_unknown:6" "got: $cls"
fi

# 9-10. the flag, and mallory's next message is deferred
if wait_policyd_log 'event=ndr_flag principal=mallory flag=' 10 && ctl flagged | grep -q mallory; then
	tap_ok "mallory is flagged (source ndr)"
else
	tap_not_ok "mallory is flagged" "$(ctl flagged 2>&1)" "$(grep -E 'flag' "$LAB/policyd.log" | tail -n 5)"
fi
OUT=$(lab_send mallory $MUA mallory@example.org next@ok.test)
if grep -q '^<\*\* *450 4\.7\.[0-9]' <<<"$OUT"; then
	tap_ok "mallory's next message is deferred ($(grep -m1 '^<\*\* *450' <<<"$OUT" | cut -c1-80))"
else
	tap_not_ok "mallory's next message is deferred" "$OUT"
fi

# 11. alice is untouched
OUT=$(lab_send alice $MUA alice@example.org a3@ok.test)
QA2=$(lab_queue_id "$OUT")
got=$(ctl ndr --json | jget 'my $p = p("alice"); ($p->{spike} ? "spike" : "calm")')
if [[ -n $QA2 ]] && lab_wait_sent "$QA2" 1 >/dev/null && [[ $got == calm ]]; then
	tap_ok "alice still sends, no spike"
else
	tap_not_ok "alice still sends, no spike" "$OUT" "alice: $got"
fi

# 12. trudy mails a harvested list: 24 unknown users of 30; the outcomes
# reach her anomaly profile, and her next recipient is scored with it
RCPTS=""
for i in $(seq 1 24); do RCPTS+="t$i@bounce.test,"; done
for i in 1 2 3 4 5 6; do RCPTS+="h$i@ok.test,"; done
OUT=$(lab_send trudy $MUA trudy@example.org "${RCPTS%,}")
QT=$(lab_queue_id "$OUT")
lab_wait_log_count "]: ${QT:-NOQID}: to=<[^>]*>,.* status=(sent|bounced) " 30 20 >/dev/null
comp=""
for _ in 1 2 3 4 5; do # the profile learns outcomes within a second
	sleep 1
	lab_send trudy $MUA trudy@example.org next@ok.test >/dev/null
	comp=$(grep -E 'event=anomaly principal=trudy .*bounce ratio' "$LAB/policyd.log" | tail -n 1)
	[[ -n $comp ]] && break
done
re='bounce ratio ([0-9]+)% \(usual ([0-9]+)(\.[0-9])?%\) over ([0-9]+) recipients'
if [[ $comp =~ $re ]] && ((BASH_REMATCH[1] >= 50 && BASH_REMATCH[2] <= 10 && BASH_REMATCH[4] >= 20)); then
	tap_ok "trudy's bounces from the maillog reach her profile: ${BASH_REMATCH[0]}"
else
	tap_not_ok "trudy's bounces reach her anomaly profile" "got: $comp" "$(grep -E 'trudy' "$LAB/policyd.log" | tail -n 5)"
fi

# 13. an inbound NDR (null sender to a local user) is counted at the policy hook
OUT=$(lab_send "" 203.0.113.50 '<>' victim@local.test)
got=$(ctl ndr --json | jget 'join ",", map { "$_->{user}=$_->{total}" } @{$j->{inbound}}')
if [[ $got == *victim@local.test=1* ]]; then
	tap_ok "inbound NDR to victim@local.test counted"
else
	tap_not_ok "inbound NDR counted" "got: $got" "$OUT"
fi

# 14-15. sendmail (pickup): counted per uid/sender; the third over pickup_limit 2/1h is held
QIDS=()
lab_log_mark
for i in 1 2 3; do
	printf 'Subject: form %s\n\nweb form %s\n' "$i" "$i" |
		sendmail -C "$LAB_ETC" -f web@example.org "w$i@defer.test" 2>&1
	line=$(lab_wait_log_count 'pickup\[[0-9]+\]: [0-9A-Za-z]+: uid=[0-9]+ from=<web@example.org>' "$i" 15)
	QIDS+=("$(sed -n 's/.*: \([0-9A-Za-z]*\): uid=.*/\1/p' <<<"$line" | tail -n 1)")
done
held=""
for _ in $(seq 1 60); do
	held=$(lab_queue_name "${QIDS[2]:-none}")
	[[ $held == hold ]] && break
	sleep 0.25
done
if [[ $held == hold ]] && grep -q "event=ndr_pickup_limit key=\"uid:[0-9]* web@example.org\" queue_id=${QIDS[2]}" "$LAB/policyd.log"; then
	tap_ok "the third sendmail message (${QIDS[2]}) is over pickup_limit and on hold"
else
	tap_not_ok "the third sendmail message is held" "queue: $held (${QIDS[*]})" "$(grep -E 'pickup|ndr_hold|ndr_command' "$LAB/policyd.log" | tail -n 5)"
fi
lab_wait_log_count "]: (${QIDS[0]}|${QIDS[1]}): to=<w[12]@defer.test>,.* status=deferred " 2 20 >/dev/null
got=$(ctl ndr --json | jget 'my $p = p("web\@example.org"); "$p->{kind} $p->{deferred}"')
if [[ $got == "pickup 2" || $got == "pickup 3" ]]; then
	tap_ok "locally submitted mail is charged to web@example.org (kind pickup, $got deferred)"
else
	tap_not_ok "locally submitted mail is counted per sender" "got: $got"
fi

# 16. the queue-size watcher sees the deferred and held mail
got=""
for _ in $(seq 1 30); do # the watcher looks every second
	got=$(ctl ndr --json | jget '"$j->{queue}{deferred} $j->{queue}{hold}"')
	[[ -n $got && ${got% *} -ge 1 && ${got#* } -ge 1 ]] && break
	sleep 0.2
done
if [[ -n $got && ${got% *} -ge 1 && ${got#* } -ge 1 ]]; then
	tap_ok "queue watcher: deferred and hold counted ($got)"
else
	tap_not_ok "queue watcher counts the queues" "got: '$got'"
fi

# 17-18. a restart resumes the log from the saved position: nothing twice
before=$(ctl ndr --json | jget '$j->{global}{n} . " " . p("mallory")->{bounced}')
lines_before=$(wc -l <"$LAB_MAILLOG")
if policyd_stop && policyd_start "$CONF"; then
	tap_ok "policyd restarts"
else
	tap_not_ok "policyd restarts" "$(tail -n 20 "$LAB/policyd.log")"
fi
sleep 1
after_json=$(ctl ndr --json)
after=$(jget '$j->{global}{n} . " " . p("mallory")->{bounced}' "$after_json")
lines_read=$(jget '$j->{follower}{file}{lines}' "$after_json")
if [[ -n $before && $after == "$before" ]] &&
	grep -q 'event=ndr_follow note=resumed' "$LAB/policyd.log" &&
	((lines_read <= $(wc -l <"$LAB_MAILLOG") - lines_before + 5)); then
	tap_ok "after the restart: resumed; global n and mallory's bounces as before ($after), $lines_read new lines read"
else
	tap_not_ok "restart resumes without counting twice" "before: $before after: $after lines read: $lines_read" "$(grep ndr_follow "$LAB/policyd.log")"
fi

policyd_stop >/dev/null
lab_stop
((TAP_FAILED == 0))
