#!/bin/bash
# tests/bench/callgrind.sh - instructions per policy request, counted by
# callgrind: a figure the machine's load does not move (unlike req/s).
#
# Usage: callgrind.sh POLICYD LOADGEN [REQUESTS]   (default 30,000)
# Runs POLICYD under valgrind --tool=callgrind with run.sh's config (3 rules,
# store = memory with state_dir), counting only inside the read callback
# (parse, pipeline, store, answer: the work per request), sends REQUESTS
# with LOADGEN (64 connections, 100,000 accounts, txn mix), and prints the
# instructions per request and the 25 costliest functions.  Port: a free one
# in 127.0.0.1:21000-21999; policyd is stopped by PID; the temp dir removed.
set -u
policyd=${1:?usage: callgrind.sh POLICYD LOADGEN [REQUESTS]}
loadgen=${2:?usage: callgrind.sh POLICYD LOADGEN [REQUESTS]}
n=${3:-30000}
command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind is not installed" >&2; exit 2; }
tmp=$(mktemp -d /tmp/policyd-cg.XXXXXX)
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$tmp"' EXIT
port=$(python3 -c 'import random,socket
for _ in range(200):
    p = random.randint(21000, 21999); s = socket.socket()
    try: s.bind(("127.0.0.1", p)); s.close(); print(p); break
    except OSError: pass')
mkdir -p "$tmp/state"
# shellcheck source=tests/bench/lib.sh
. "$(dirname "$0")/lib.sh" # for bench_conf only
bench_conf "$tmp/p.conf" "$port" memory "$tmp/state"
valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.out" --collect-atstart=no \
	--toggle-collect=conn_read_cb "$policyd" -c "$tmp/p.conf" 2>"$tmp/vg.err" &
pid=$!
for _ in $(seq 100); do
	ss -Htln "( sport = :$port )" 2>/dev/null | grep -q . && break
	sleep 0.2
done
"$loadgen" -s "inet:127.0.0.1:$port" -c 64 -n "$n" -a 100000 -e DUNNO >/dev/null || {
	echo "callgrind.sh: loadgen failed" >&2
	exit 1
}
kill "$pid"
wait "$pid" 2>/dev/null
pid=""
total=$(callgrind_annotate "$tmp/cg.out" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }')
echo "instructions: $total in $n requests = $((total / n)) per request"
callgrind_annotate "$tmp/cg.out" 2>/dev/null | sed -n '/file:function/,$p' | sed -n '3,27p' |
	sed -E 's# \[[^]]*\]$##; s#[^ ]*/([^/ ]+:)#\1#'
