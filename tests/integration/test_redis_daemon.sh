#!/bin/bash
# tests/integration/test_redis_daemon.sh - two real policyd daemons sharing
# one Redis store, under the project's load generator.  TAP on stdout.
#
# Owns: a temp dir, free ports in 127.0.0.1:28000-28999, and the processes
# it starts there: redis-server (one, then a 3-master / 3-replica cluster,
# cluster-node-timeout 2000 ms), two policyd instances, loadgen runs and a
# `redis-cli --cluster reshard`.  Every PID is recorded and the EXIT trap
# stops exactly those - never anything by name.
#
# Checks: one account against two daemons at once: exactly `limit`
# admitted (DUNNO) in total; Redis killed in the middle of a load and
# restarted, with redis_failure = closed (the gap's answers are
# DEFER 4.3.0), open (DUNNO) and local (the embedded store counts); no
# loadgen error but the expected actions, the daemons alive and serving
# from Redis after; on the cluster: exact limits across the daemons, a
# master killed (its replica promoted, service back within seconds), and
# slots resharded during load with the totals exact.
#
# Needs: POLICYD and LOADGEN (paths; meson sets them), redis-server and
# redis-cli (SKIP without them); POLICYCTL (optional) for `policyctl top`
# and `flagged` through the daemons.  About 1-2 minutes.
set -u

REDIS_SERVER=${REDIS_SERVER:-redis-server}
REDIS_CLI=${REDIS_CLI:-redis-cli}
if [[ -z ${POLICYD:-} || -z ${LOADGEN:-} ]]; then
	echo "1..0 # SKIP POLICYD and LOADGEN must be set (paths of policyd and loadgen)"
	exit 0
fi
if ! command -v "$REDIS_SERVER" >/dev/null || ! command -v "$REDIS_CLI" >/dev/null; then
	echo "1..0 # SKIP redis-server / redis-cli not installed (apt-get install redis-server)"
	exit 0
fi
[[ $POLICYD == /* ]] || POLICYD=$PWD/$POLICYD
[[ $LOADGEN == /* ]] || LOADGEN=$PWD/$LOADGEN

PORT_LO=28000
PORT_HI=28999
TMP_PREFIX=pd-redis-e2e
# shellcheck source=tests/integration/redis_lib.sh
. "$(dirname "$0")/redis_lib.sh"
t0=$(date +%s.%N)
elapsed() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

RULE=shared # the rule's name: a new one for each phase, so that it starts from no state
write_conf() { # NAME PORT STORE FAILURE RATE
	mkdir -p "$T/$1.state"
	cat >"$T/$1.conf" <<EOF
[server]
listen = inet:127.0.0.1:$2
store = $3
redis_failure = $4
redis_timeout = 200ms
redis_connect_timeout = 1s
state_dir = $T/$1.state
control = unix:$T/$1.ctl
log = stderr
log_decisions = none
hooks = rcpt

[limit $RULE]
key = sasl_username
count = recipients
rate = $5
action = defer
EOF
}

start_policyd() { # NAME PORT STORE FAILURE RATE
	write_conf "$@"
	start_policyd_conf "$1" "$2"
}

stop_policyd() { # NAME
	[[ -n ${PPID_[$1]:-} ]] && stop "${PPID_[$1]}"
	PPID_[$1]=
}

alive() { # NAME...
	local n
	for n in "$@"; do
		kill -0 "${PPID_[$n]:-0}" 2>/dev/null || return 1
	done
}

# loadgen in the background: LG_PID; JSON in FILE
loadgen_bg() { # FILE PORT ARGS...
	local out=$1 port=$2
	shift 2
	"$LOADGEN" -s "inet:127.0.0.1:$port" --json "$@" >"$out" 2>"$out.err" &
	LG_PID=$!
	PIDS+=($!)
}

lg_wait() { # PID
	wait "$1"
	local rc=$?
	forget "$1"
	return $rc
}

jget() { # KEY FILE: a number of loadgen's JSON line (0 when absent)
	local v
	v=$(sed -n 's/.*"'"$1"'":\([0-9.]*\).*/\1/p' "$2" 2>/dev/null)
	echo "${v:-0}"
}

# wait until PORT answers DUNNO to a probe (serving from the store again)
wait_dunno() { # PORT SECONDS
	local end a
	end=$(($(date +%s) + $2))
	while (($(date +%s) < end)); do
		a=$(probe "$1" "w$RANDOM")
		[[ $a == DUNNO* ]] && return 0
		sleep 0.1
	done
	return 1
}

echo "1..39"

# ------------------------------------------------------------ one server
RP=$(free_port) || exit 1
PA=$(free_port) || exit 1
PB=$(free_port) || exit 1
start_redis "$RP"
ok $? "redis-server on 127.0.0.1:$RP"
URL="redis://127.0.0.1:$RP/0"
start_policyd a "$PA" "$URL" closed 500/1h && start_policyd b "$PB" "$URL" closed 500/1h
ok $? "two policyd sharing $URL (500/1h per account)"
wait_dunno "$PA" 5 && wait_dunno "$PB" 5
rcli "$RP" flushall >/dev/null

# 1. one account, two daemons at once: exactly 500 admitted
loadgen_bg "$T/shared-a.json" "$PA" -c 8 -n 3000 -a 1 -m rcpt -e 'DUNNO|DEFER'
la=$LG_PID
loadgen_bg "$T/shared-b.json" "$PB" -c 8 -n 3000 -a 1 -m rcpt -e 'DUNNO|DEFER'
lb=$LG_PID
lg_wait "$la"
ra=$?
lg_wait "$lb"
rb=$?
da=$(jget dunno "$T/shared-a.json")
db=$(jget dunno "$T/shared-b.json")
ea=$(jget errors "$T/shared-a.json")
eb=$(jget errors "$T/shared-b.json")
diag "one account: daemon a DUNNO $da DEFER $(jget defer "$T/shared-a.json"), daemon b DUNNO $db DEFER $(jget defer "$T/shared-b.json") ($(elapsed) s)"
[[ $((da + db)) == 500 ]]
ok $? "one account on two daemons at once: DUNNO total exactly 500 (got $((da + db)))"
[[ $ra == 0 && $rb == 0 && $ea == 0 && $eb == 0 ]]
ok $? "no loadgen error (status $ra/$rb, errors $ea/$eb)"
[[ $da -gt 0 && $db -gt 0 ]]
ok $? "both daemons admitted some ($da + $db)"

# list() through the daemons: policyctl top, and a flag set on a, listed on b
if [[ -n ${POLICYCTL:-} ]]; then
	[[ $POLICYCTL == /* ]] || POLICYCTL=$PWD/$POLICYCTL
	top=$("$POLICYCTL" -c "$T/a.conf" top --json -n 3 2>&1)
	grep -Eq '"subject": *"user0"' <<<"$top" && grep -Eq '"rule": *"shared"' <<<"$top"
	ok $? "policyctl top on Redis lists the account (list() of a rule)"
	"$POLICYCTL" -c "$T/a.conf" flag e2e-victim --reason "e2e test" >"$T/flag.out" 2>&1
	flagged=$("$POLICYCTL" -c "$T/b.conf" flagged 2>&1)
	[[ $flagged == *e2e-victim* ]]
	ok $? "a flag set on daemon a is listed by daemon b (list() of @flag)"
else
	ok 0 "policyctl top # SKIP POLICYCTL is not set"
	ok 0 "policyctl flagged # SKIP POLICYCTL is not set"
fi

# 2. Redis killed in the middle of a load, restarted; per failure policy
kill_restart() { # POLICY: runs a load across a Redis kill and restart
	local pol=$1 gap
	stop_policyd a
	stop_policyd b
	RULE=kill-$pol
	start_policyd a "$PA" "$URL" "$pol" 60/1d && start_policyd b "$PB" "$URL" "$pol" 60/1d
	ok $? "[$pol] daemons restarted with redis_failure = $pol"
	wait_dunno "$PA" 5 && wait_dunno "$PB" 5
	loadgen_bg "$T/kill-$pol-a.json" "$PA" -c 8 -t 5 -a 5000 -m rcpt -e 'DUNNO|DEFER'
	la=$LG_PID
	loadgen_bg "$T/kill-$pol-b.json" "$PB" -c 8 -t 5 -a 5000 -m rcpt -e 'DUNNO|DEFER'
	lb=$LG_PID
	sleep 1
	stop "${RPID[$RP]}" KILL
	sleep 0.4
	gap=$(probe "$PA" "gap$RANDOM")
	sleep 0.6
	start_redis "$RP"
	lg_wait "$la"
	ra=$?
	lg_wait "$lb"
	rb=$?
	local dunno=$(($(jget dunno "$T/kill-$pol-a.json") + $(jget dunno "$T/kill-$pol-b.json")))
	local defer=$(($(jget defer "$T/kill-$pol-a.json") + $(jget defer "$T/kill-$pol-b.json")))
	local errs=$(($(jget errors "$T/kill-$pol-a.json") + $(jget errors "$T/kill-$pol-b.json")))
	diag "[$pol] across the kill: DUNNO $dunno, DEFER $defer, errors $errs; answer in the gap: '$gap' ($(elapsed) s)"
	[[ $ra == 0 && $rb == 0 && $errs == 0 && $dunno -gt 0 ]]
	ok $? "[$pol] load across the kill: no loadgen error, only the expected actions"
	case $pol in
	closed)
		[[ $gap == "DEFER 4.3.0"* && $defer -gt 0 ]]
		ok $? "[closed] the gap's answers are DEFER 4.3.0 ($defer deferred)"
		;;
	open)
		[[ $gap == DUNNO* && $defer == 0 ]]
		ok $? "[open] the gap's answers are DUNNO (no DEFER)"
		;;
	local)
		[[ $gap == DUNNO* && $defer == 0 ]]
		ok $? "[local] the gap's answers come from the embedded store (DUNNO)"
		;;
	esac
	wait_dunno "$PA" 10 && wait_dunno "$PB" 10
	ok $? "[$pol] both daemons serve from Redis again"
	alive a b
	ok $? "[$pol] no daemon died"
}
kill_restart closed
kill_restart open
kill_restart local

# local: while Redis is away the embedded store counts (60 per account and day);
# daemon a restarted on an empty state_dir, Redis down at its start
stop "${RPID[$RP]}" KILL
stop_policyd a
rm -rf "$T/a.state"
RULE=local-count
start_policyd a "$PA" "$URL" local 60/1d
ok $? "[local] daemon a starts while Redis is down"
loadgen_bg "$T/local-count.json" "$PA" -c 4 -n 150 -a 1 -m rcpt -e 'DUNNO|DEFER'
lg_wait "$LG_PID"
rc=$?
d=$(jget dunno "$T/local-count.json")
diag "[local] Redis down, one account, 150 requests: DUNNO $d, DEFER $(jget defer "$T/local-count.json")"
[[ $rc == 0 && $d == 60 ]]
ok $? "[local] Redis down: the embedded store counts (exactly 60 of 150 admitted, got $d)"
start_redis "$RP"
# user0 spent its 60 in the embedded store: only Redis answers DUNNO for it
# (a fresh account would get DUNNO from either, and batches still run
# locally until the episode's quiet period has passed)
redis_again() {
	local end=$(($(date +%s) + 10)) a
	while (($(date +%s) < end)); do
		a=$(probe "$PA" user0)
		[[ $a == DUNNO* ]] && return 0
		sleep 0.2
	done
	return 1
}
redis_again
ok $? "[local] Redis back: daemon a serves from Redis again (user0, spent locally, gets DUNNO)"
loadgen_bg "$T/after.json" "$PA" -c 8 -n 2000 -a 1000 -m rcpt -e DUNNO
lg_wait "$LG_PID"
ok $? "normal service after the failures: 2000 requests, all DUNNO, no error"
stop_policyd a
stop_policyd b
stop "${RPID[$RP]}"

# ------------------------------------------------------------ the cluster
CP=()
declare -A BUS
for i in 1 2 3 4 5 6; do
	p=$(free_port) || exit 1
	bus=$(free_port) || exit 1
	start_redis "$p" --cluster-enabled yes --cluster-config-file nodes.conf \
		--cluster-node-timeout 2000 --cluster-port "$bus" \
		--cluster-replica-validity-factor 0 || exit 1
	BUS[$p]=$bus
	CP+=("$p")
done
addrs=()
for p in "${CP[@]}"; do addrs+=("127.0.0.1:$p"); done
"$REDIS_CLI" --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
	>"$T/cluster-create.log" 2>&1
rc=$?
for i in $(seq 1 100); do
	okn=0
	for p in "${CP[@]}"; do
		rcli "$p" cluster info 2>/dev/null | grep -q 'cluster_state:ok' && okn=$((okn + 1))
	done
	[[ $okn == 6 ]] && break
	sleep 0.1
done
[[ $rc == 0 && $okn == 6 ]]
ok $? "a 3-master / 3-replica cluster on ${CP[*]}"
replicas_synced() {
	local p n=0
	for p in "${CP[@]}"; do
		rcli "$p" info replication 2>/dev/null | tr -d '\r' |
			grep -q '^master_link_status:up' && n=$((n + 1))
	done
	[[ $n == 3 ]]
}
for i in $(seq 1 200); do
	replicas_synced && break
	sleep 0.1
done
replicas_synced
ok $? "the 3 replicas are in sync with their masters"
CURL="redis-cluster://127.0.0.1:${CP[0]},127.0.0.1:${CP[1]}"

RULE=c-shared
start_policyd a "$PA" "$CURL" closed 50/1d && start_policyd b "$PB" "$CURL" closed 50/1d
ok $? "two policyd sharing $CURL"
wait_dunno "$PA" 10 && wait_dunno "$PB" 10

# exact limits across the daemons: 20 accounts x 50
loadgen_bg "$T/c-shared-a.json" "$PA" -c 8 -n 4000 -a 20 -m rcpt -e 'DUNNO|DEFER'
la=$LG_PID
loadgen_bg "$T/c-shared-b.json" "$PB" -c 8 -n 4000 -a 20 -m rcpt -e 'DUNNO|DEFER'
lb=$LG_PID
lg_wait "$la"
ra=$?
lg_wait "$lb"
rb=$?
d=$(($(jget dunno "$T/c-shared-a.json") + $(jget dunno "$T/c-shared-b.json")))
diag "cluster, 20 accounts x 50 on two daemons: DUNNO $d ($(elapsed) s)"
[[ $ra == 0 && $rb == 0 && $d == 1000 ]]
ok $? "cluster: 20 accounts on two daemons at once: DUNNO total exactly 1000 (got $d), no error"

# the master with most slots killed under load: its replica takes over
master_of_most() {
	rcli "${CP[0]}" cluster nodes | awk '$3 ~ /master/ && $3 !~ /fail/ {
		n = 0
		for (i = 9; i <= NF; i++) {
			if ($i ~ /^\[/) continue
			split($i, r, "-"); n += (r[2] == "" ? 1 : r[2] - r[1] + 1)
		}
		split($2, hp, "[:@]")
		if (n > best) { best = n; port = hp[2]; id = $1 }
	} END { print port, id }'
}
read -r victim _ <<<"$(master_of_most)"
stop_policyd a
stop_policyd b
RULE=c-failover
start_policyd a "$PA" "$CURL" closed 1000000/1d && start_policyd b "$PB" "$CURL" closed 1000000/1d
wait_dunno "$PA" 10 && wait_dunno "$PB" 10
loadgen_bg "$T/c-fail-a.json" "$PA" -c 8 -t 12 -a 200 -m rcpt -e 'DUNNO|DEFER'
la=$LG_PID
loadgen_bg "$T/c-fail-b.json" "$PB" -c 8 -t 12 -a 200 -m rcpt -e 'DUNNO|DEFER'
lb=$LG_PID
sleep 1.5
kill -KILL "${RPID[$victim]}"
tk=$(date +%s.%N)
back=""
while [[ -z $back ]] && awk -v a="$tk" -v b="$(date +%s.%N)" 'BEGIN { exit !(b - a < 20) }'; do
	sleep 0.25
	all=1
	for i in $(seq 1 40); do # 40 accounts: every master's slots
		[[ $(probe "$PA" "fo$i") == DUNNO* ]] || { all=0; break; }
	done
	[[ $all == 1 ]] && back=$(awk -v a="$tk" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
done
wait "${RPID[$victim]}" 2>/dev/null
forget "${RPID[$victim]}"
lg_wait "$la"
ra=$?
lg_wait "$lb"
rb=$?
errs=$(($(jget errors "$T/c-fail-a.json") + $(jget errors "$T/c-fail-b.json")))
defer=$(($(jget defer "$T/c-fail-a.json") + $(jget defer "$T/c-fail-b.json")))
dunno=$(($(jget dunno "$T/c-fail-a.json") + $(jget dunno "$T/c-fail-b.json")))
diag "master $victim killed: served again after ${back:-never} s; during the load DUNNO $dunno, DEFER $defer (the failover gap), errors $errs ($(elapsed) s)"
[[ -n $back ]] && awk -v b="$back" 'BEGIN { exit !(b < 15) }'
ok $? "master killed: its replica promoted, the daemons serve every slot again within seconds (${back:-never} s)"
[[ $ra == 0 && $rb == 0 && $errs == 0 ]]
ok $? "failover under load: no loadgen error (only DUNNO and the gap's DEFER)"
alive a b
ok $? "failover: no daemon died"

# the killed node back, as a replica of its successor
start_redis "$victim" --cluster-enabled yes --cluster-config-file nodes.conf \
	--cluster-node-timeout 2000 --cluster-port "${BUS[$victim]}" \
	--cluster-replica-validity-factor 0
for i in $(seq 1 100); do
	rcli "${CP[0]}" cluster nodes | grep -q fail || break
	sleep 0.1
done
! rcli "${CP[0]}" cluster nodes | grep -q fail
ok $? "the killed node restarted and rejoined the cluster as a replica"

# slots resharded during load: totals exact (50 accounts x 300)
stop_policyd a
stop_policyd b
RULE=c-reshard
start_policyd a "$PA" "$CURL" closed 300/1d && start_policyd b "$PB" "$CURL" closed 300/1d
wait_dunno "$PA" 10 && wait_dunno "$PB" 10
read -r _ from <<<"$(master_of_most)"
to=$(rcli "${CP[0]}" cluster nodes | awk -v f="$from" '$3 ~ /master/ && $3 !~ /fail/ && $1 != f && NF >= 9 { print $1; exit }')
fromport=$(rcli "${CP[0]}" cluster nodes | awk -v f="$from" '$1 == f { split($2, hp, "[:@]"); print hp[2] }')
loadgen_bg "$T/c-re-a.json" "$PA" -c 8 -t 8 -a 50 -m rcpt -e 'DUNNO|DEFER'
la=$LG_PID
loadgen_bg "$T/c-re-b.json" "$PB" -c 8 -t 8 -a 50 -m rcpt -e 'DUNNO|DEFER'
lb=$LG_PID
sleep 1
"$REDIS_CLI" --cluster reshard "127.0.0.1:$fromport" --cluster-from "$from" --cluster-to "$to" \
	--cluster-slots 1500 --cluster-yes --cluster-pipeline 10 >"$T/reshard.log" 2>&1 &
rs=$!
PIDS+=($rs)
lg_wait "$rs"
rrc=$?
tr=$(elapsed)
lg_wait "$la"
ra=$?
lg_wait "$lb"
rb=$?
ok $rrc "1500 slots resharded ($from -> $to) during the load (done at $tr s)"
d=$(($(jget dunno "$T/c-re-a.json") + $(jget dunno "$T/c-re-b.json")))
defer=$(($(jget defer "$T/c-re-a.json") + $(jget defer "$T/c-re-b.json")))
errs=$(($(jget errors "$T/c-re-a.json") + $(jget errors "$T/c-re-b.json")))
diag "reshard under load: DUNNO $d, DEFER $defer, errors $errs ($(elapsed) s)"
[[ $d == 15000 ]]
ok $? "reshard under load: DUNNO total exactly 50 x 300 = 15000 (got $d): nothing lost or counted twice"
[[ $ra == 0 && $rb == 0 && $errs == 0 ]]
ok $? "reshard under load: no loadgen error"
alive a b
ok $? "cluster: no daemon died"
stop_policyd a
stop_policyd b
! grep -q "AddressSanitizer\|LeakSanitizer\|runtime error" "$T"/a.log "$T"/b.log
ok $? "no sanitizer report in the daemons' logs"
diag "total $(elapsed) s"
[[ $N == 39 ]] || echo "# planned 39 tests, ran $N"
exit $((FAILED > 0))
