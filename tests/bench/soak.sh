#!/bin/bash
# tests/bench/soak.sh - soak and fault test of policyd under open-loop load.
#
# Usage: soak.sh [--duration SECONDS] [--short] [--policyd PATH] [--rate R]
#                [--loadgen PATH] [--build DIR]
#   --duration  phase 1 length (default 1800 s)
#   --short     every phase a few seconds (total < 90 s): the CI version
#   --policyd   the daemon (default: BUILD/policyd/policyd); policyctl is taken
#               from beside it (or env POLICYCTL)
#   --rate      open-loop req/s (default: half of a closed-loop peak measured here)
#   --loadgen   (or env LOADGEN) the load generator (default: BUILD/tests/bench/loadgen)
#   --build     build dir made (release) when a binary is missing (default build-soak)
#
# Phase 1, store = memory: loadgen at RATE for the duration, every action
# must be DUNNO or the configured DEFER text; meanwhile VmRSS sampled every
# 10 s, SIGHUP every 30 s (the reply text alternates soak-a/soak-b, so every
# reload is real), the [ndr] log file rotated by rename and then by
# copytruncate while lines are appended (the follower must keep counting),
# 10,000 idle connections at once (one in ten with half a request), and slow
# clients sending a request one byte per 100 ms.
# Phase 2, store = redis://, redis_failure = local: loadgen at RATE while
# redis-server is killed (by PID) and restarted; a probe account must get the
# configured answers (5 DUNNO, then DEFER soak-a) during the gap.
# Everything on 127.0.0.1; every process is stopped by PID in a trap.  Exit
# status 1 when any check failed.  Results: "soak ..." lines, and a summary.
# Limits: needs python3, redis-server (phase 2 is reported SKIP without it),
# a `ulimit -n` hard limit of 10200 or more (else --short exits 77: SKIP).
set -u
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
here=$top/tests/bench
duration=1800
short=0
policyd=""
rate=""
loadgen=${LOADGEN:-}
build=$top/build-soak
while (($#)); do
	case $1 in
	--duration) duration=$2; shift 2 ;;
	--short) short=1; shift ;;
	--policyd) policyd=$2; shift 2 ;;
	--rate) rate=$2; shift 2 ;;
	--loadgen) loadgen=$2; shift 2 ;;
	--build) build=$2; shift 2 ;;
	-h | --help) sed -n '2,27p' "$0"; exit 0 ;;
	*) echo "soak.sh: unknown option $1" >&2; exit 2 ;;
	esac
done
((short)) && duration=30
if [[ -z $policyd || -z $loadgen ]]; then
	if [[ ! -f $build/build.ninja ]]; then
		meson setup "$build" --buildtype=release >/dev/null || exit 2
	fi
	ninja -C "$build" policyd/policyd policyd/policyctl tests/bench/loadgen >/dev/null || exit 2
	[[ -n $policyd ]] || policyd=$build/policyd/policyd
	[[ -n $loadgen ]] || loadgen=$build/tests/bench/loadgen
fi
[[ $policyd == /* ]] || policyd=$PWD/$policyd
[[ $loadgen == /* ]] || loadgen=$PWD/$loadgen
policyctl=${POLICYCTL:-$(dirname "$policyd")/policyctl}
clients="python3 $here/soak_clients.py"

# --short (the meson test) reports SKIP (77) where the machine cannot run it
cannot() {
	echo "soak: $*" >&2
	exit $((short ? 77 : 1))
}
command -v python3 >/dev/null || cannot "python3 is not installed"
# the counters come from policyctl: without it every check would read 0
[[ -x $policyctl ]] || cannot "no policyctl at $policyctl (set POLICYCTL)"
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null
(($(ulimit -n) >= 10200)) || cannot "ulimit -n is $(ulimit -n), 10,000 connections need 10200"

tmp=$(mktemp -d /tmp/policyd-soak.XXXXXX)
pids=()
failures=()
fail() { failures+=("$*"); echo "soak FAIL $*"; }
cleanup() {
	local p
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
	if ((${#failures[@]} == 0)); then rm -rf "$tmp"; else echo "soak: kept $tmp"; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM

free_port() { # a free 127.0.0.1 port in 22000-22999
	python3 - <<'EOF'
import random, socket
for _ in range(200):
    p = random.randint(22000, 22999)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); s.close(); print(p); break
    except OSError:
        s.close()
EOF
}
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
ctl_json() { # SOCK COMMAND EXPR(python, j = reply)
	"$policyctl" -s "$1" --json "$2" 2>/dev/null |
		python3 -c 'import json,sys
j=json.load(sys.stdin); print(eval(sys.argv[1]))' "$3" 2>/dev/null
}
wait_port() { # PORT PID
	local i
	for ((i = 0; i < 100; i++)); do
		kill -0 "$2" 2>/dev/null || return 1
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
		sleep 0.1
	done
	return 1
}
json_get() { python3 -c 'import json,sys; print(json.loads(sys.argv[2]).get(sys.argv[1], ""))' "$1" "$2"; }

write_conf() { # FILE PORT STORE REPLY [EXTRA-SERVER-LINE]
	cat >"$1" <<EOF
[server]
listen = inet:127.0.0.1:$2
store = $3
state_dir = $tmp/state
log = stderr
log_decisions = none
control = unix:$tmp/control.sock
max_connections = 12000
${5:-}

[limit soak]
key = sasl_username
rate = 5/1h
reply = $4

[ndr]
log_file = $tmp/mail.log
patterns = $top/data/ndr-patterns.conf
local_domains = example.org
queue_check_interval = 0
save_interval = 5s
EOF
}

expect='DUNNO|DEFER 4\.7\.1 soak-[ab]'
mkdir -p "$tmp/state"
: >"$tmp/mail.log"
port=$(free_port)
conf=$tmp/policyd.conf
write_conf "$conf" "$port" memory soak-a
"$policyd" -c "$conf" 2>"$tmp/policyd.log" &
ppid_=$!
pids+=("$ppid_")
wait_port "$port" "$ppid_" || { fail "policyd did not start: $(tail -3 "$tmp/policyd.log")"; exit 1; }
sock=$tmp/control.sock

# peak: closed loop, 64 connections
if [[ -z $rate ]]; then
	out=$("$loadgen" -s "inet:127.0.0.1:$port" -c 64 -t $((short ? 2 : 10)) -S 99 -e "$expect" --json)
	peak=$(json_get rps "$out")
	rate=$(python3 -c "print(int(float('$peak') / 2))")
	echo "soak peak closed_loop_rps=$peak rate=$rate"
fi

# ---------------------------------------------------------------- phase 1
echo "soak phase1 store=memory rate=$rate duration_s=$duration"
"$loadgen" -s "inet:127.0.0.1:$port" -c 64 -r "$rate" -t "$duration" -e "$expect" --json \
	>"$tmp/loadgen1.json" 2>"$tmp/loadgen1.err" &
lg=$!
pids+=("$lg")
if ((short)); then
	t_rename=6 t_copy=12 t_hold=14 hold_s=8 t_slow=14 slow_n=4 slow_bytes_iv=0.1
else
	# the 10,000 connections early: the RSS slope is taken after them
	t_rename=$((duration * 3 / 10)) t_copy=$((duration * 6 / 10)) t_hold=60
	hold_s=60 t_slow=$((duration / 2)) slow_n=20 slow_bytes_iv=0.1
fi
hup_every=$((short ? 5 : 30))
rss=()
reloads=0 rotations_done=0 hold_pid="" slow_pid="" hold_req0=0 hold_t0=0 hold_end=0
lines_before_rot=0
t0=$SECONDS
n=0
while kill -0 "$lg" 2>/dev/null; do
	t=$((SECONDS - t0))
	# mail log: 20 lines a second, Postfix smtp delivery records
	for ((i = 0; i < 20; i++)); do
		n=$((n + 1))
		printf '%s soak postfix/smtp[4242]: 4Q%07dZ: to=<r%d@example.net>, relay=mx.example.net[192.0.2.1]:25, delay=0.1, delays=0/0/0/0.1, dsn=2.0.0, status=sent (250 2.0.0 ok)\n' \
			"$(date '+%b %e %T')" "$n" "$n" >>"$tmp/mail.log"
	done
	if ((t % 10 == 0)) && ((${#rss[@]} <= t / 10)); then
		rss+=("$t:$(rss_kb "$ppid_")")
	fi
	if ((t > 0 && t % hup_every == 0 && reloads < t / hup_every)); then
		reloads=$((reloads + 1))
		write_conf "$conf" "$port" memory "soak-$( ((reloads % 2)) && echo b || echo a)"
		kill -HUP "$ppid_"
	fi
	if ((rotations_done == 0 && t >= t_rename)); then
		lines_before_rot=$(ctl_json "$sock" ndr 'j["ndr"]["follower"]["file"]["lines"]')
		mv "$tmp/mail.log" "$tmp/mail.log.1" && : >"$tmp/mail.log"
		rotations_done=1
		echo "soak rotate rename t=$t follower_lines=$lines_before_rot"
	fi
	if ((rotations_done == 1 && t >= t_copy)); then
		lines_before_rot=$(ctl_json "$sock" ndr 'j["ndr"]["follower"]["file"]["lines"]')
		cp "$tmp/mail.log" "$tmp/mail.log.2" && : >"$tmp/mail.log"
		rotations_done=2
		echo "soak rotate copytruncate t=$t follower_lines=$lines_before_rot"
	fi
	if [[ -z $hold_pid ]] && ((t >= t_hold)); then
		hold_req0=$(ctl_json "$sock" status 'j["requests"]')
		hold_t0=$SECONDS
		$clients hold 127.0.0.1 "$port" 10000 "$hold_s" >"$tmp/hold.out" 2>&1 &
		hold_pid=$!
		pids+=("$hold_pid")
	fi
	if [[ -n $hold_pid && $hold_pid != "done" ]] && ! kill -0 "$hold_pid" 2>/dev/null; then
		wait "$hold_pid"
		hrc=$?
		req1=$(ctl_json "$sock" status 'j["requests"]')
		dt=$((SECONDS - hold_t0))
		flow=$(((req1 - hold_req0) / (dt > 0 ? dt : 1)))
		cat "$tmp/hold.out"
		echo "soak hold answers_per_s_meanwhile=$flow over_s=$dt"
		((hrc == 0)) || fail "10,000 connections: $(tail -1 "$tmp/hold.out")"
		# loadgen's answers must keep flowing: at least half the rate
		((flow * 2 >= rate)) || fail "answers slowed to $flow/s while 10,000 connections were held"
		hold_pid="done"
		hold_end=$((SECONDS - t0))
	fi
	if [[ -z $slow_pid ]] && ((t >= t_slow)); then
		$clients slow 127.0.0.1 "$port" "$slow_n" "$slow_bytes_iv" >"$tmp/slow.out" 2>&1 &
		slow_pid=$!
		pids+=("$slow_pid")
	fi
	if [[ -n $slow_pid && $slow_pid != "done" ]] && ! kill -0 "$slow_pid" 2>/dev/null; then
		wait "$slow_pid" || fail "slow clients: $(tail -1 "$tmp/slow.out")"
		cat "$tmp/slow.out"
		slow_pid="done"
	fi
	sleep 1
done
wait "$lg"
lrc=$?
rss+=("$((SECONDS - t0)):$(rss_kb "$ppid_")")
for p in "$hold_pid" "$slow_pid"; do
	[[ $p == "done" || -z $p ]] && continue
	wait "$p" || fail "helper $p failed"
done
[[ $hold_pid == "done" ]] || { cat "$tmp/hold.out"; [[ -n $hold_pid ]] || fail "10,000 connections never ran"; }
[[ $slow_pid == "done" ]] || { cat "$tmp/slow.out"; [[ -n $slow_pid ]] || fail "slow clients never ran"; }
sleep 2 # the follower reads the last lines
res=$(cat "$tmp/loadgen1.json")
errors=$(json_get errors "$res")
echo "soak phase1 loadgen $(python3 -c 'import json,sys; j=json.loads(sys.argv[1]); print("requests=%d rps=%.0f errors=%d dunno=%d defer=%d p99_us=%.0f p999_us=%.0f max_us=%.0f unsent=%d" % (j["requests"], j["rps"], j["errors"], j["dunno"], j["defer"], j["p99_us"], j["p999_us"], j["max_us"], j["unsent"]))' "$res" 2>/dev/null)"
((lrc == 0 && ${errors:-1} == 0)) || fail "phase 1 loadgen exit $lrc errors=${errors:-?}: $(head -5 "$tmp/loadgen1.err")"
# reloads: one event=reload log line per SIGHUP, and no failed one
got_reloads=$(grep -c 'event=reload ' "$tmp/policyd.log")
echo "soak reloads sent=$reloads logged=$got_reloads"
((got_reloads == reloads && reloads > 0)) || fail "reloads: $reloads SIGHUP, $got_reloads logged"
grep -q 'reload failed\|reload refused' "$tmp/policyd.log" && fail "a reload failed: $(grep 'reload f\|reload r' "$tmp/policyd.log" | head -1)"
# log rotation: the follower saw both, and kept reading after them
fol=$(ctl_json "$sock" ndr 'j["ndr"]["follower"]["file"]')
echo "soak follower $fol appended=$n"
python3 - "$fol" "$n" "$lines_before_rot" <<'EOF' || fail "log rotation: follower $fol, $n lines appended"
import ast, sys
f = ast.literal_eval(sys.argv[1]); n = int(sys.argv[2]); before = int(sys.argv[3] or 0)
ok = f["rotations"] >= 1 and f["truncations"] >= 1 and f["lines"] > before and f["lines"] >= n - 40
sys.exit(0 if ok else 1)
EOF
# RSS: first, last, max, slope (least squares, from 10 s after the 10,000
# connections were closed: their buffers stay in malloc's arenas)
rss_summary=$(python3 - "$hold_end" "${rss[@]}" <<'EOF'
import sys
after = int(sys.argv[1]) + 10
pts = [tuple(map(int, a.split(":"))) for a in sys.argv[2:] if not a.endswith(":0")]
rs = [r for _, r in pts]
tail = [p for p in pts if p[0] >= after]
tail = tail if len(tail) >= 2 else pts
n = len(tail); mt = sum(t for t, _ in tail) / n; mr = sum(r for _, r in tail) / n
den = sum((t - mt) ** 2 for t, _ in tail) or 1
slope = sum((t - mt) * (r - mr) for t, r in tail) / den * 3600
print("samples=%d first_kb=%d last_kb=%d max_kb=%d slope_kb_per_h=%.0f slope_from_s=%d slope_from_kb=%d"
      % (len(rs), rs[0], rs[-1], max(rs), slope, tail[0][0], tail[0][1]))
EOF
)
echo "soak rss $rss_summary"
# flat RSS (not judged by --short: too few samples): under 1 MB/h after the 10,000
slope=$(sed -n 's/.*slope_kb_per_h=\(-\?[0-9]*\).*/\1/p' <<<"$rss_summary")
((short || ${slope:-0} <= 1024)) || fail "RSS grows: $rss_summary"
echo "soak rss_samples ${rss[*]}"
refused=$(ctl_json "$sock" status 'j["connections_refused"]')
((${refused:-1} == 0)) || fail "policyd refused $refused connections"
kill "$ppid_"
wait "$ppid_" 2>/dev/null
grep -E ' (error|crit):' "$tmp/policyd.log" | head -3

# ---------------------------------------------------------------- phase 2
redis=$(command -v redis-server || true)
if [[ -z $redis ]]; then
	echo "soak phase2 SKIP no redis-server"
else
	rport=$(free_port)
	start_redis() {
		"$redis" --port "$rport" --bind 127.0.0.1 --save '' --appendonly no \
			--dir "$tmp" >>"$tmp/redis.log" 2>&1 &
		rpid=$!
		pids+=("$rpid")
		wait_port "$rport" "$rpid"
	}
	start_redis || fail "redis-server did not start"
	port=$(free_port)
	rm -rf "$tmp/state" && mkdir -p "$tmp/state"
	write_conf "$conf" "$port" "redis://127.0.0.1:$rport/0" soak-a 'redis_failure = local'
	"$policyd" -c "$conf" 2>"$tmp/policyd2.log" &
	ppid_=$!
	pids+=("$ppid_")
	wait_port "$port" "$ppid_" || fail "policyd (redis) did not start: $(tail -3 "$tmp/policyd2.log")"
	d2=$((short ? 15 : 120))
	rate2=$rate
	out=$("$loadgen" -s "inet:127.0.0.1:$port" -c 64 -t 2 -S 98 -e "$expect" --json)
	peak2=$(json_get rps "$out")
	rate2=$(python3 -c "print(min($rate, int(float('${peak2:-0}') / 2)))")
	echo "soak phase2 store=redis redis_failure=local peak=$peak2 rate=$rate2 duration_s=$d2"
	"$loadgen" -s "inet:127.0.0.1:$port" -c 64 -r "$rate2" -t "$d2" -e "$expect" --json \
		>"$tmp/loadgen2.json" 2>"$tmp/loadgen2.err" &
	lg=$!
	pids+=("$lg")
	sleep $((d2 / 4))
	kill "$rpid"
	wait "$rpid" 2>/dev/null
	echo "soak redis killed pid=$rpid t=$((d2 / 4))"
	sleep 1
	$clients probe 127.0.0.1 "$port" gapprobe 6 'DUNNO(,DUNNO){4},DEFER 4\.7\.1 soak-a.*' ||
		fail "answers during the Redis gap"
	sleep $((d2 / 4))
	start_redis || fail "redis-server did not restart"
	echo "soak redis restarted pid=$rpid t=$((d2 / 2 + 1))"
	sleep 3
	$clients probe 127.0.0.1 "$port" afterprobe 6 'DUNNO(,DUNNO){4},DEFER 4\.7\.1 soak-a.*' ||
		fail "answers after the Redis restart"
	wait "$lg"
	lrc=$?
	res=$(cat "$tmp/loadgen2.json")
	errors=$(json_get errors "$res")
	echo "soak phase2 loadgen $(python3 -c 'import json,sys; j=json.loads(sys.argv[1]); print("requests=%d rps=%.0f errors=%d dunno=%d defer=%d p99_us=%.0f max_us=%.0f" % (j["requests"], j["rps"], j["errors"], j["dunno"], j["defer"], j["p99_us"], j["max_us"]))' "$res" 2>/dev/null)"
	((lrc == 0 && ${errors:-1} == 0)) || fail "phase 2 loadgen exit $lrc errors=${errors:-?}: $(head -5 "$tmp/loadgen2.err")"
	serr=$(ctl_json "$sock" status 'j["store_errors"]')
	echo "soak phase2 store_errors=$serr (requests answered from the local store while Redis was down)"
	grep -iE 'redis' "$tmp/policyd2.log" | grep -v 'event=start' | head -4 | sed 's/^/soak policyd: /'
	((${serr:-0} > 0)) || grep -qi 'redis.*\(down\|unreach\|fail\|error\)' "$tmp/policyd2.log" ||
		fail "the Redis outage left no trace (store_errors=0, nothing logged)"
	kill "$ppid_"
	wait "$ppid_" 2>/dev/null
fi

if ((${#failures[@]})); then
	echo "soak: ${#failures[@]} check(s) failed"
	exit 1
fi
echo "soak: all checks passed"
exit 0
