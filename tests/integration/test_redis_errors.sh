#!/bin/bash
# tests/integration/test_redis_errors.sh - what policyd does when a real
# Redis answers with errors instead of results.  TAP on stdout.
#
# Owns: a temp dir, free ports in 127.0.0.1:25000-25999 and the processes
# it starts there (redis-server instances, a 3-master cluster, policyd);
# the EXIT trap (redis_lib.sh) stops exactly those, by PID.
#
# Each case: policyd with store = redis://..., redis_failure = closed and a
# metrics port; a probe first gets DUNNO (Redis works), then the fault:
#   - OOM: maxmemory set below the memory in use, with noeviction;
#   - READONLY: the URL names a replica;
#   - NOPERM: an ACL user allowed everything but EVALSHA/EVAL; its
#     password must never appear in the log;
#   - CLUSTERDOWN: a 3-master cluster without replicas loses a master, so
#     slots are uncovered.
# Checked: the answer is the failure policy's (DEFER 4.3.0), a log line
# names the server and Redis's error, policyd_store_errors_total moves, and
# (OOM, cluster restarted) service comes back.  About 30 s.
#
# Needs: POLICYD (meson sets it), redis-server, redis-cli, curl (SKIP
# without them).
set -u

if [[ -z ${POLICYD:-} ]]; then
	echo "1..0 # SKIP POLICYD must be set"
	exit 0
fi
for tool in "${REDIS_SERVER:-redis-server}" "${REDIS_CLI:-redis-cli}" curl; do
	if ! command -v "$tool" >/dev/null; then
		echo "1..0 # SKIP $tool not installed"
		exit 0
	fi
done
[[ $POLICYD == /* ]] || POLICYD=$PWD/$POLICYD
PORT_LO=25000
PORT_HI=25999
TMP_PREFIX=pd-redis-err
# shellcheck source=tests/integration/redis_lib.sh
. "$(dirname "$0")/redis_lib.sh"

write_conf() { # NAME PORT METRICS_PORT STORE
	mkdir -p "$T/$1.state"
	cat >"$T/$1.conf" <<CONF
[server]
listen = inet:127.0.0.1:$2
store = $4
redis_failure = closed
redis_timeout = 300ms
redis_connect_timeout = 1s
state_dir = $T/$1.state
metrics = inet:127.0.0.1:$3
log = stderr
log_decisions = none
hooks = rcpt

[limit errors]
key = sasl_username
count = recipients
rate = 1000/1h
action = defer
CONF
}

store_errors() { # METRICS_PORT: policyd_store_errors_total, all backends
	local v
	v=$(curl -sf --max-time 5 "http://127.0.0.1:$1/metrics" |
		awk '$1 ~ /^policyd_store_errors_total[{]/ { n += $2 } END { print n + 0 }')
	echo "${v:-0}"
}

# one case: a policyd on STORE, answering DUNNO first; then FAULT (a shell
# command) and the checks.  LOGRE: the log line wanted after the fault.
run_case() { # NAME STORE FAULT LOGRE
	local name=$1 store=$2 fault=$3 logre=$4 pp mp e0 e1
	pp=$(free_port) && mp=$(free_port) || return 1
	write_conf "$name" "$pp" "$mp" "$store"
	start_policyd_conf "$name" "$pp"
	ok $? "$name: policyd on $store"
	CASE_PORT=$pp
	if [[ $name != readonly && $name != noperm ]]; then
		wait_answer "$pp" '^DUNNO' 10
		ok $? "$name: DUNNO while Redis answers"
	fi
	e0=$(store_errors "$mp")
	eval "$fault"
	wait_answer "$pp" '^DEFER 4\.3\.0' 10
	ok $? "$name: the failure policy's answer (closed: DEFER 4.3.0) once Redis errs"
	grep -Eq "$logre" "$T/$name.log"
	ok $? "$name: a log line names the server and the error (/$logre/)"
	[[ $? == 0 ]] || tail -n 5 "$T/$name.log" | sed 's/^/# /'
	e1=$(store_errors "$mp")
	((e1 > e0))
	ok $? "$name: policyd_store_errors_total moved ($e0 -> $e1)"
	kill -0 "${PPID_[$name]}" 2>/dev/null
	ok $? "$name: policyd still running"
}

echo "1..25"

# ---------------------------------------------------------------- OOM
RP=$(free_port) || exit 1
start_redis "$RP" --maxmemory-policy noeviction
head -c 100000 /dev/zero | tr '\0' x >"$T/big"
# 1 MB of values, then maxmemory below what is used: every write is refused
fill() {
	for i in $(seq 1 10); do rcli "$RP" -x set "big$i" <"$T/big" >/dev/null; done
	rcli "$RP" config set maxmemory 1mb >/dev/null
}
run_case oom "redis://127.0.0.1:$RP/0" fill \
	"redis 127\.0\.0\.1:$RP: unavailable: .*OOM"
rcli "$RP" config set maxmemory 0 >/dev/null
wait_answer "$CASE_PORT" '^DUNNO' 15
ok $? "oom: DUNNO again once memory is freed"

# ------------------------------------------------------------ READONLY
RR=$(free_port) || exit 1
start_redis "$RR" --replicaof 127.0.0.1 "$RP"
run_case readonly "redis://127.0.0.1:$RR/0" ':' \
	"redis 127\.0\.0\.1:$RR: unavailable: .*READONLY"

# --------------------------------------------------------------- NOPERM
RA=$(free_port) || exit 1
start_redis "$RA"
rcli "$RA" acl setuser limited on '>s3cret-Pw' '~*' '+@all' '-evalsha' '-eval' >/dev/null
run_case noperm "redis://limited:s3cret-Pw@127.0.0.1:$RA/0" ':' \
	"redis 127\.0\.0\.1:$RA: unavailable: .*NOPERM"
! grep -q 's3cret-Pw' "$T/noperm.log"
ok $? "noperm: the password is not in the log"

# ---------------------------------------------------------- CLUSTERDOWN
C1=$(free_port) && C2=$(free_port) && C3=$(free_port) || exit 1
declare -A BUS # cluster bus ports from our range, not port+10000 (ephemeral)
for p in "$C1" "$C2" "$C3"; do
	BUS[$p]=$(free_port) || exit 1
	start_redis "$p" --cluster-enabled yes --cluster-config-file "$T/r$p/nodes.conf" \
		--cluster-node-timeout 1000 --cluster-port "${BUS[$p]}" ||
		diag "redis-server $p did not start: $(tail -n 1 "$T/r$p/redis.log")"
done
"${REDIS_CLI:-redis-cli}" --cluster create "127.0.0.1:$C1" "127.0.0.1:$C2" "127.0.0.1:$C3" \
	--cluster-replicas 0 --cluster-yes >"$T/cluster-create.log" 2>&1
for i in $(seq 1 100); do
	rcli "$C1" cluster info 2>/dev/null | grep -q 'cluster_state:ok' && break
	sleep 0.1
done
# the master holding the probes' accounts dies: its slots are uncovered
run_case clusterdown "redis-cluster://127.0.0.1:$C1,127.0.0.1:$C2" \
	'stop "${RPID[$C3]}" KILL' \
	"redis 127\.0\.0\.1:[0-9]+: .*(CLUSTERDOWN|connection lost|[Cc]onnection refused)"
# the master comes back with its nodes.conf: the cluster is whole again
start_redis "$C3" --cluster-enabled yes --cluster-config-file "$T/r$C3/nodes.conf" \
	--cluster-node-timeout 1000 --cluster-port "${BUS[$C3]}"
wait_answer "$CASE_PORT" '^DUNNO' 20
ok $? "clusterdown: DUNNO again once the master is back"

echo "# $N checks, $FAILED failed"
((FAILED == 0))
