#!/bin/bash
# tests/bench/callgrind_redis.sh - redis-server's instructions per policy
# request with policyd on `store = redis://`, counted by callgrind: a figure
# the machine's load does not move (unlike req/s or Redis CPU %).
#
# Usage: callgrind_redis.sh POLICYD LOADGEN [WARM [REQUESTS [RULES]]]
#        (defaults: 100,000 warm-up requests, 20,000 counted, 3 rules)
# Starts redis-server under valgrind --tool=callgrind with instrumentation
# off, and policyd (native) with bench_conf's rules (RULES=1: peers.sh's
# one rule); sends WARM requests with LOADGEN (64 connections, 100,000
# accounts) so that most keys exist, switches instrumentation on, sends
# REQUESTS more, and prints Redis's instructions per policy request, the
# commands Redis ran (INFO commandstats of the counted part) and the
# costliest functions, inclusive.  policyd's command timeout is 10 s:
# Redis under callgrind is ~50 times slower.  Ports: free ones in
# 127.0.0.1:21000-21999; every process is stopped by PID; the temp dir is
# removed.
set -u
usage="usage: callgrind_redis.sh POLICYD LOADGEN [WARM [REQUESTS [RULES]]]"
policyd=${1:?$usage}
loadgen=${2:?$usage}
warm=${3:-100000}
n=${4:-20000}
export BENCH_RULES=${5:-3}
for tool in valgrind callgrind_annotate callgrind_control redis-server redis-cli ss; do
	command -v "$tool" >/dev/null || { echo "callgrind_redis.sh: '$tool' is needed" >&2; exit 2; }
done
prog=callgrind_redis.sh # read by lib.sh (messages)
port_lo=21000
port_hi=21999
tmp=$(mktemp -d /tmp/policyd-cgr.XXXXXX)
# shellcheck source=tests/bench/lib.sh
. "$(dirname "$0")/lib.sh"
bench_traps
mkdir -p "$tmp/state"

rport=$(pick_port)
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$tmp/cg.out" \
	redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no \
	>"$tmp/redis.log" 2>&1 &
rpid=$!
pids+=("$rpid")
for _ in $(seq 150); do
	redis-cli -p "$rport" ping >/dev/null 2>&1 && break
	sleep 0.2
done
redis-cli -p "$rport" ping >/dev/null 2>&1 || { failed=1; echo "$prog: redis-server did not start" >&2; exit 1; }

pport=$(pick_port)
bench_conf "$tmp/p.conf" "$pport" "redis://127.0.0.1:$rport/0" "$tmp/state" \
	"redis_failure = closed" "redis_timeout = 10s"
start_server policyd "$pport" "$policyd" -c "$tmp/p.conf" || { failed=1; exit 1; }
ppid=$server_pid

"$loadgen" -s "inet:127.0.0.1:$pport" -c 64 -n "$warm" -a 100000 -e DUNNO >/dev/null || {
	failed=1
	echo "$prog: loadgen (warm-up) failed" >&2
	exit 1
}
redis-cli -p "$rport" config resetstat >/dev/null
callgrind_control -i on "$rpid" >/dev/null 2>&1
"$loadgen" -s "inet:127.0.0.1:$pport" -c 64 -n "$n" -a 100000 -S 2 -e DUNNO >/dev/null || {
	failed=1
	echo "$prog: loadgen failed" >&2
	exit 1
}
callgrind_control -i off "$rpid" >/dev/null 2>&1
stats=$(redis-cli -p "$rport" info commandstats | tr -d '\r' | grep '^cmdstat_' | grep -v resetstat)
stop_pid "$ppid"
redis-cli -p "$rport" shutdown nosave >/dev/null 2>&1
wait "$rpid" 2>/dev/null
forget_pid "$rpid"

total=$(callgrind_annotate "$tmp/cg.out" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }')
echo "redis-server instructions: $total in $n requests = $((total / n)) per request ($BENCH_RULES rule(s))"
echo "$stats" | awk -F'[:,=]' -v n="$n" '{ printf "  %-10s %8d calls, %.3f per request\n", substr($1, 9), $3, $3 / n }'
callgrind_annotate --inclusive=yes "$tmp/cg.out" 2>/dev/null | sed -n '/file:function/,$p' |
	sed -n '3,30p' | sed -E 's# \[[^]]*\]$##; s#[^ ]*/([^/ ]+:)#\1#'
