#!/usr/bin/env bash
# tests/bench/run.sh - the policy-server benchmark: the answer-only ceiling
# server, and policyd when asked, under the same loads from loadgen.
#
#   tests/bench/run.sh [--quick] [--policyd PATH/TO/policyd] [--build DIR]
#
# Builds loadgen and ceiling (buildtype=release, own build dir, default
# build-bench-release at the top of the tree), starts each server on a free
# loopback port in 127.0.0.1:21000-21999, runs loadgen (closed loop at 64
# connections, at 1 connection, at 1 connection with a busy-polling client,
# then open loop on 64 connections at half the ceiling's throughput), and
# prints a Markdown table and the exact commands.  Every process it starts
# is stopped by PID on exit, whatever happens.
set -euo pipefail

usage() {
	sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
	exit "${1:-0}"
}

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
quick=0
policyd=""
build="$top/build-bench-release"
while [ $# -gt 0 ]; do
	case "$1" in
	--quick) quick=1 ;;
	--policyd)
		[ $# -ge 2 ] || usage 2
		policyd="$2"
		shift
		;;
	--build)
		[ $# -ge 2 ] || usage 2
		build="$2"
		shift
		;;
	-h | --help) usage 0 ;;
	*)
		echo "run.sh: unknown argument '$1'" >&2
		usage 2
		;;
	esac
	shift
done
case "$build" in /*) ;; *) build="$PWD/$build" ;; esac
if [ -n "$policyd" ]; then
	case "$policyd" in /*) ;; *) policyd="$PWD/$policyd" ;; esac
	if [ ! -x "$policyd" ]; then
		echo "run.sh: --policyd $policyd: not an executable file" >&2
		exit 2
	fi
fi
for tool in meson ninja ss awk; do
	command -v "$tool" >/dev/null || {
		echo "run.sh: '$tool' is needed" >&2
		exit 2
	}
done

if [ "$quick" = 1 ]; then
	secs=3
	warm=1
else
	secs=20
	warm=2
fi

# --------------------------------------------------------------- clean-up
prog=run.sh
port_lo=21000
port_hi=21999
tmp=$(mktemp -d "${TMPDIR:-/tmp}/policyd-bench.XXXXXX")
# shellcheck source=tests/bench/lib.sh
. "$here/lib.sh"
bench_traps

# ------------------------------------------------------------------ build
if [ ! -f "$build/build.ninja" ]; then
	echo "run.sh: configuring $build (buildtype=release)" >&2
	meson setup "$build" "$top" --buildtype=release >"$tmp/meson-setup.log" 2>&1 || {
		failed=1
		cat "$tmp/meson-setup.log" >&2
		exit 2
	}
fi
ninja -C "$build" tests/bench/loadgen tests/bench/ceiling >"$tmp/ninja.log" 2>&1 || {
	failed=1
	cat "$tmp/ninja.log" >&2
	exit 2
}
loadgen="$build/tests/bench/loadgen"
ceiling="$build/tests/bench/ceiling"

# ----------------------------------------------------------------- runs
commands=()
rows=()
n=0
ceiling64=""

# run_load NAME PID ADDR CONNS [RATE|spin]: one loadgen run, one table row.
run_load() {
	local name=$1 pid=$2 addr=$3 conns=$4 rate=${5:-} spin="" out err rc c0 c1 t0 t1
	local cmd=("$loadgen" -s "$addr" -c "$conns" -t "$secs" -w "$warm" -m txn -a 100000
		-e DUNNO --json)
	if [ "$rate" = spin ]; then
		spin=1
		rate=""
		cmd+=(--spin)
	fi
	[ -n "$rate" ] && cmd+=(-r "$rate")
	n=$((n + 1))
	out="$tmp/run$n.json"
	err="$tmp/run$n.err"
	commands+=("${cmd[*]}")
	echo "run.sh: $name, $conns connection(s)${rate:+, open loop at $rate req/s}${spin:+, spin}, ${secs} s" >&2
	c0=$(cpu_ticks "$pid")
	t0=$(date +%s.%N)
	rc=0
	"${cmd[@]}" >"$out" 2>"$err" &
	local lg=$!
	pids+=("$lg")
	wait "$lg" || rc=$?
	forget_pid "$lg"
	t1=$(date +%s.%N)
	c1=$(cpu_ticks "$pid")
	if [ "$rc" != 0 ] || [ ! -s "$out" ]; then
		failed=1
		echo "run.sh: loadgen exited with status $rc:" >&2
		cat "$err" >&2
	fi
	if [ ! -s "$out" ]; then
		rows+=("| $name | $conns | ${rate:+open }${rate:-closed} | failed | | | | | | | |")
		return 0
	fi
	local rps p50 p99 p999 errs gcpu scpu pct mode
	rps=$(json rps "$out")
	p50=$(json p50_us "$out")
	p99=$(json p99_us "$out")
	p999=$(json p999_us "$out")
	errs=$(json errors "$out")
	gcpu=$(json cpu_pct "$out")
	scpu=$(awk -v a="$c0" -v b="$c1" -v hz="$hz" -v t0="$t0" -v t1="$t1" \
		'BEGIN { printf "%.0f", 100 * (b - a) / hz / (t1 - t0) }')
	if [ -n "$rate" ]; then
		mode="open $rate/s"
	elif [ -n "$spin" ]; then
		mode="closed, spin"
	else
		mode="closed"
	fi
	local ref=""
	if [ "$name" = ceiling ] && [ -z "$rate" ]; then
		eval "ceiling_c$conns${spin:+s}=\$rps"
	fi
	if [ -z "$rate" ]; then
		ref=$(eval "echo \${ceiling_c$conns${spin:+s}:-}")
	else
		ref=$ceiling64
	fi
	pct=$(awk -v a="$rps" -v b="$ref" 'BEGIN { if (b > 0) printf "%.0f%%", 100 * a / b; else print "-" }')
	rows+=("| $name | $conns | $mode | $(printf '%.0f' "$rps") | $pct | $p50 | $p99 | $p999 | $errs | $scpu% | $gcpu% |")
	last_rps=$rps
}

busy=$(busy_check)
if [ "$busy" -gt 10 ]; then
	echo "run.sh: warning: the machine was ${busy}% busy before the runs; figures will be low and noisy" >&2
fi

# ceiling
cport=$(pick_port)
tries=0
until start_server ceiling "$cport" "$ceiling" -l "inet:127.0.0.1:$cport"; do
	tries=$((tries + 1))
	if [ "$tries" -ge 5 ]; then
		failed=1
		exit 1
	fi
	cport=$(pick_port)
done
ceiling_pid=$server_pid
servers=("$ceiling -l inet:127.0.0.1:$cport")
run_load ceiling "$ceiling_pid" "inet:127.0.0.1:$cport" 64
ceiling64=${last_rps:-0}
half=$(awk -v r="$ceiling64" 'BEGIN { printf "%.0f", r / 2 }')
run_load ceiling "$ceiling_pid" "inet:127.0.0.1:$cport" 1
run_load ceiling "$ceiling_pid" "inet:127.0.0.1:$cport" 1 spin
if [ "$half" -gt 0 ]; then
	run_load ceiling "$ceiling_pid" "inet:127.0.0.1:$cport" 64 "$half"
fi
stop_pid "$ceiling_pid"

# policyd
rss=""
if [ -n "$policyd" ]; then
	mkdir -p "$tmp/state"
	tries=0
	while :; do
		pport=$(pick_port)
		bench_conf "$tmp/policyd.conf" "$pport" memory "$tmp/state"
		if start_server policyd "$pport" "$policyd" -c "$tmp/policyd.conf"; then
			break
		fi
		tries=$((tries + 1))
		if [ "$tries" -ge 3 ]; then
			failed=1
			exit 1
		fi
	done
	policyd_pid=$server_pid
	servers+=("$policyd -c $tmp/policyd.conf   (config below; stderr to $tmp/policyd.err)")
	run_load policyd "$policyd_pid" "inet:127.0.0.1:$pport" 64
	run_load policyd "$policyd_pid" "inet:127.0.0.1:$pport" 1
	run_load policyd "$policyd_pid" "inet:127.0.0.1:$pport" 1 spin
	if [ "$half" -gt 0 ]; then
		run_load policyd "$policyd_pid" "inet:127.0.0.1:$pport" 64 "$half"
	fi
	rss=$(awk '/^VmRSS|^VmHWM/ { printf "%s%s %s %s", sep, $1, $2, $3; sep = ", " }' \
		"/proc/$policyd_pid/status")
	cp "$tmp/policyd.conf" "$tmp/policyd.conf.shown"
	stop_pid "$policyd_pid"
fi

# ---------------------------------------------------------------- report
echo
echo "### Policy server benchmark ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) CPUs, ${secs} s per run after ${warm} s warm-up)"
echo
echo "| server | conns | mode | req/s | % of ceiling | p50 µs | p99 µs | p99.9 µs | errors | server CPU | loadgen CPU |"
echo "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for r in "${rows[@]}"; do
	echo "$r"
done
echo
echo "% of ceiling: against the ceiling at the same connection count (closed loop) or"
echo "the ceiling's 64-connection closed-loop throughput (open loop). CPU: % of one core."
echo "spin: loadgen busy-polls (--spin), so the client's own wake-up is not in the latency."
[ "$busy" -gt 10 ] && echo "Warning: the machine was ${busy}% busy before the runs."
[ -n "$rss" ] && echo "policyd memory after the runs: $rss"
echo
echo "Commands:"
echo '```'
for s in "${servers[@]}"; do
	echo "$s"
done
for c in "${commands[@]}"; do
	echo "$c"
done
echo '```'
if [ -n "$policyd" ]; then
	echo
	echo "policyd config:"
	echo '```'
	cat "$tmp/policyd.conf.shown"
	echo '```'
fi
if [ "$failed" != 0 ]; then
	echo "run.sh: some runs failed (see above)" >&2
	exit 1
fi
