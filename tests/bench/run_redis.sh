#!/usr/bin/env bash
# tests/bench/run_redis.sh - policyd on the Redis store under the project's
# load generator, beside the answer-only ceiling in the same run.
#
#   tests/bench/run_redis.sh --policyd PATH [--build DIR] [--secs N]
#                            [--repeat N] [--memory] [--unix] [--baseline PATH]
#                            [--rules 1|3]
#
# Starts redis-server (no persistence) on a free loopback port in
# 127.0.0.1:21000-21999, then per repeat: the ceiling, and policyd with
# `store = redis://...` (three limits, every answer DUNNO, failure closed
# so that a Redis failure shows as a loadgen error), each under
#   loadgen -c 64 -a 100000 -t SECS -e DUNNO --json     (closed loop)
#   loadgen -c 1  -a 100000 -t SECS -e DUNNO --json     (p99 at 1 conn)
# and prints a Markdown table: req/s, % of the ceiling of the same repeat,
# latency, loadgen errors, the CPU of policyd and redis-server (% of one
# core), Redis commands per policy request (INFO commandstats before/after
# divided by the requests loadgen completed; commands run inside scripts
# are counted apart) and the Redis time per EVALSHA.  --memory adds
# policyd on the embedded store; --unix talks to Redis over a unix socket;
# --baseline adds another policyd binary on the same Redis (before/after).
# --rules 1 keeps only per-account-messages (peers.sh's single rule: one
# Redis key per request instead of three).
# loadgen and ceiling come from DIR (default: the build dir of policyd).
# Every process it starts is stopped by PID on exit.
set -euo pipefail
# shellcheck source=tests/bench/lib.sh
. "$(dirname "$0")/lib.sh" # processes, ports, bench_conf

usage() {
	sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'
	exit "${1:-0}"
}

policyd=""
baseline=""
build=""
secs=20
repeat=1
memory=0
unix=0
while [ $# -gt 0 ]; do
	case "$1" in
	--policyd) [ $# -ge 2 ] || usage 2; policyd=$2; shift ;;
	--build) [ $# -ge 2 ] || usage 2; build=$2; shift ;;
	--secs) [ $# -ge 2 ] || usage 2; secs=$2; shift ;;
	--repeat) [ $# -ge 2 ] || usage 2; repeat=$2; shift ;;
	--baseline) [ $# -ge 2 ] || usage 2; baseline=$2; shift ;;
	--memory) memory=1 ;;
	--unix) unix=1 ;;
	--rules)
		[ $# -ge 2 ] || usage 2
		case "$2" in 1 | 3) BENCH_RULES=$2 ;; *) usage 2 ;; esac
		shift
		;;
	-h | --help) usage 0 ;;
	*) echo "run_redis.sh: unknown argument '$1'" >&2; usage 2 ;;
	esac
	shift
done
[ -n "$policyd" ] || usage 2
case "$policyd" in /*) ;; *) policyd="$PWD/$policyd" ;; esac
[ -x "$policyd" ] || { echo "run_redis.sh: $policyd: not an executable" >&2; exit 2; }
if [ -n "$baseline" ]; then
	case "$baseline" in /*) ;; *) baseline="$PWD/$baseline" ;; esac
	[ -x "$baseline" ] || { echo "run_redis.sh: $baseline: not an executable" >&2; exit 2; }
fi
[ -n "$build" ] || build=$(dirname "$(dirname "$policyd")")
case "$build" in /*) ;; *) build="$PWD/$build" ;; esac
loadgen=$build/tests/bench/loadgen
ceiling=$build/tests/bench/ceiling
for x in "$loadgen" "$ceiling"; do
	[ -x "$x" ] || { echo "run_redis.sh: $x missing (ninja -C $build tests/bench/loadgen tests/bench/ceiling)" >&2; exit 2; }
done
for tool in redis-server redis-cli ss awk; do
	command -v "$tool" >/dev/null || { echo "run_redis.sh: '$tool' is needed" >&2; exit 2; }
done

prog=run_redis.sh # read by lib.sh (messages)
port_lo=21000
port_hi=21999
tmp=$(mktemp -d "${TMPDIR:-/tmp}/policyd-bench-redis.XXXXXX")
bench_traps # lib.sh: every process in pids is stopped by PID on exit

# ------------------------------------------------------------------ redis
rport=$(pick_port)
rdir=$tmp/redis
mkdir -p "$rdir"
rargs=(--port "$rport" --bind 127.0.0.1 --save '' --appendonly no --daemonize no
	--dir "$rdir" --logfile "$rdir/redis.log")
if [ "$unix" = 1 ]; then
	rargs+=(--unixsocket "$rdir/redis.sock" --unixsocketperm 700)
	url="redis+unix://$rdir/redis.sock"
else
	url="redis://127.0.0.1:$rport/0"
fi
start_server redis "$rport" redis-server "${rargs[@]}" || { failed=1; exit 1; }
redis_pid=$server_pid
rcli() { redis-cli -h 127.0.0.1 -p "$rport" "$@"; }

# commandstats: "CLIENT_CALLS INNER_CALLS EVALSHA_CALLS EVALSHA_USEC"
cmdstats() {
	rcli info commandstats | tr -d '\r' | awk -F'[:,=]' '
		/^cmdstat_/ {
			name = substr($1, 9); calls = $3; usec = $5
			if (name ~ /^(info|config\|resetstat|auth|ping|select|script\|load|client.*)$/) next
			if (name ~ /^(get|mget|set|setrange|del|hmget|hset|pexpire)$/) { inner += calls; next }
			client += calls
			if (name == "evalsha") { es = calls; eu = usec }
		}
		END { printf "%d %d %d %d\n", client, inner, es, eu }'
}

# ------------------------------------------------------------------ runs
rows=()
commands=()

# run_load NAME PID ADDR CONNS [REDIS]: one loadgen run, one table row
run_load() {
	local name=$1 pid=$2 addr=$3 conns=$4 withredis=${5:-} rc=0 c0 c1 r0 r1 t0 t1 s0 s1
	local cmd=("$loadgen" -s "$addr" -c "$conns" -a 100000 -t "$secs" -e DUNNO --json)
	local out=$tmp/run$((${#rows[@]} + 1)).json
	commands+=("${cmd[*]}")
	echo "run_redis.sh: repeat $rep: $name, $conns connection(s), ${secs} s" >&2
	[ -n "$withredis" ] && s0=$(cmdstats) && r0=$(cpu_ticks "$redis_pid")
	c0=$(cpu_ticks "$pid")
	t0=$(date +%s.%N)
	"${cmd[@]}" >"$out" 2>"$out.err" &
	local lg=$!
	pids+=("$lg")
	wait "$lg" || rc=$?
	forget_pid "$lg"
	t1=$(date +%s.%N)
	c1=$(cpu_ticks "$pid")
	if [ "$rc" != 0 ] || [ ! -s "$out" ]; then
		failed=1
		echo "run_redis.sh: loadgen exited with status $rc:" >&2
		cat "$out.err" >&2
	fi
	if [ ! -s "$out" ]; then
		rows+=("| $rep | $name | $conns | failed | | | | | | | | |")
		return 0
	fi
	local rps p50 p99 p999 errs req scpu rcpu="" cpr="" inner="" usec="" ref pct
	rps=$(json rps "$out"); p50=$(json p50_us "$out"); p99=$(json p99_us "$out")
	p999=$(json p999_us "$out"); errs=$(json errors "$out"); req=$(json requests "$out")
	scpu=$(awk -v a="$c0" -v b="$c1" -v hz="$hz" -v t0="$t0" -v t1="$t1" \
		'BEGIN { printf "%.0f%%", 100 * (b - a) / hz / (t1 - t0) }')
	if [ -n "$withredis" ]; then
		r1=$(cpu_ticks "$redis_pid")
		s1=$(cmdstats)
		rcpu=$(awk -v a="$r0" -v b="$r1" -v hz="$hz" -v t0="$t0" -v t1="$t1" \
			'BEGIN { printf "%.0f%%", 100 * (b - a) / hz / (t1 - t0) }')
		read -r a0 i0 e0 u0 <<<"$s0"
		read -r a1 i1 e1 u1 <<<"$s1"
		cpr=$(awk -v d=$((a1 - a0)) -v n="$req" 'BEGIN { printf "%.3f", (n > 0 ? d / n : 0) }')
		inner=$(awk -v d=$((i1 - i0)) -v n="$req" 'BEGIN { printf "%.2f", (n > 0 ? d / n : 0) }')
		usec=$(awk -v c=$((e1 - e0)) -v u=$((u1 - u0)) -v n="$req" \
			'BEGIN { if (c > 0) printf "%.1f (%.1f/req)", u / c, u / n; else print "-" }')
	fi
	if [ "$name" = ceiling ]; then
		eval "ceil_c$conns=\$rps"
	fi
	ref=$(eval "echo \${ceil_c$conns:-0}")
	pct=$(awk -v a="$rps" -v b="$ref" 'BEGIN { if (b > 0) printf "%.1f%%", 100 * a / b; else print "-" }')
	rows+=("| $rep | $name | $conns | $(printf '%.0f' "$rps") | $pct | $p50 | $p99 | $p999 | $errs | $scpu | ${rcpu:--} | ${cpr:--} | ${inner:--} | ${usec:--} |")
}

write_conf() { # FILE PORT STORE
	bench_conf "$1" "$2" "$3" "$tmp/state" "redis_failure = closed" "redis_timeout = 200ms"
}

mkdir -p "$tmp/state"
uptime_before=$(uptime)
for rep in $(seq 1 "$repeat"); do
	cport=$(pick_port)
	start_server ceiling "$cport" "$ceiling" -l "inet:127.0.0.1:$cport" || { failed=1; exit 1; }
	cpid=$server_pid
	run_load ceiling "$cpid" "inet:127.0.0.1:$cport" 64
	run_load ceiling "$cpid" "inet:127.0.0.1:$cport" 1
	stop_pid "$cpid"

	pport=$(pick_port)
	rcli flushall >/dev/null
	write_conf "$tmp/policyd-redis.conf" "$pport" "$url"
	start_server policyd-redis "$pport" "$policyd" -c "$tmp/policyd-redis.conf" || { failed=1; exit 1; }
	ppid=$server_pid
	sleep 0.5 # connected to Redis
	run_load "policyd+redis" "$ppid" "inet:127.0.0.1:$pport" 64 redis
	keys=$(rcli dbsize)
	run_load "policyd+redis" "$ppid" "inet:127.0.0.1:$pport" 1 redis
	stop_pid "$ppid"

	if [ -n "$baseline" ]; then
		pport=$(pick_port)
		rcli flushall >/dev/null
		write_conf "$tmp/policyd-base.conf" "$pport" "$url"
		start_server policyd-base "$pport" "$baseline" -c "$tmp/policyd-base.conf" || { failed=1; exit 1; }
		ppid=$server_pid
		sleep 0.5
		run_load "baseline+redis" "$ppid" "inet:127.0.0.1:$pport" 64 redis
		run_load "baseline+redis" "$ppid" "inet:127.0.0.1:$pport" 1 redis
		stop_pid "$ppid"
	fi

	if [ "$memory" = 1 ]; then
		pport=$(pick_port)
		rm -rf "$tmp/state"/*
		write_conf "$tmp/policyd-memory.conf" "$pport" memory
		start_server policyd-memory "$pport" "$policyd" -c "$tmp/policyd-memory.conf" || { failed=1; exit 1; }
		ppid=$server_pid
		run_load "policyd+memory" "$ppid" "inet:127.0.0.1:$pport" 64
		run_load "policyd+memory" "$ppid" "inet:127.0.0.1:$pport" 1
		stop_pid "$ppid"
	fi
done

echo
echo "### policyd on the Redis store ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) CPUs, $secs s per run, $(redis-server --version | awk '{ print $3 }'), ${BENCH_RULES:-3} rule(s))"
echo
echo "Load before the runs: ${uptime_before#*load}"
echo
echo "| rep | server | conns | req/s | % of ceiling | p50 µs | p99 µs | p99.9 µs | errors | server CPU | redis CPU | Redis cmds/req | calls in scripts/req | µs per EVALSHA |"
echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
for r in "${rows[@]}"; do echo "$r"; done
echo
echo "Keys in Redis after the 64-connection run: ${keys:-?}. Store URL: $url"
echo
echo "Commands:"
echo '```'
echo "redis-server ${rargs[*]}" | sed "s/--save  /--save '' /"
echo "$ceiling -l inet:127.0.0.1:PORT"
echo "$policyd -c policyd-redis.conf"
[ -n "$baseline" ] && echo "$baseline -c policyd-base.conf   (baseline: the same config)"
printf '%s\n' "${commands[@]}" | sort -u
echo '```'
echo
echo "policyd config:"
echo '```'
cat "$tmp/policyd-redis.conf"
echo '```'
if [ "$failed" != 0 ]; then
	echo "run_redis.sh: some runs failed (see above)" >&2
	exit 1
fi
