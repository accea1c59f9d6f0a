# shellcheck shell=bash disable=SC2154
# tests/bench/lib.sh - shell helpers shared by the benchmark scripts (bash,
# sourced by run.sh and peers.sh).
#
# The caller sets, before using them:
#   prog      name in messages ("run.sh")
#   tmp       its temporary directory (removed on exit unless a run failed)
#   port_lo, port_hi   the loopback port range it may use
# and then calls bench_traps.  pids holds every process started here: each
# is stopped by PID on exit, whatever happens (cleanup).  A caller may define
# cleanup_extra, run by cleanup after the processes are stopped.

pids=()   # every process started here, stopped on exit
failed=0  # set when a run failed: exit status 1, logs kept
used_ports=" "

# alive PID: the process exists and is not a zombie.
alive() {
	local st
	kill -0 "$1" 2>/dev/null || return 1
	st=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
	[ "$st" != Z ]
}

# forget_pid PID: it has been reaped; never signal that number again (reuse).
forget_pid() {
	local p keep=()
	for p in "${pids[@]}"; do
		[ "$p" = "$1" ] || keep+=("$p")
	done
	pids=("${keep[@]}")
}

# stop_pid PID: SIGTERM, SIGKILL after 5 s.  Works for processes that are
# not children of this shell too (daemons that forked away).
stop_pid() {
	local pid=$1 i
	if ! alive "$pid"; then
		wait "$pid" 2>/dev/null || true
		forget_pid "$pid"
		return 0
	fi
	kill -TERM "$pid" 2>/dev/null || true
	for i in $(seq 1 50); do
		alive "$pid" || break
		sleep 0.1
	done
	if alive "$pid"; then
		echo "$prog: pid $pid ignored SIGTERM for 5 s, sending SIGKILL" >&2
		kill -KILL "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || true
	forget_pid "$pid"
}

cleanup() {
	local pid
	for pid in "${pids[@]}"; do
		stop_pid "$pid"
	done
	pids=()
	if declare -F cleanup_extra >/dev/null; then
		cleanup_extra
	fi
	if [ "$failed" = 0 ]; then
		rm -rf "$tmp"
	else
		echo "$prog: logs kept in $tmp" >&2
	fi
}

bench_traps() {
	trap cleanup EXIT
	trap 'failed=1; exit 130' INT TERM HUP
}

# ------------------------------------------------------------------ ports
port_in_use() {
	[ -n "$(ss -Htan "( sport = :$1 )" 2>/dev/null)" ]
}

# take_port VAR: sets VAR to a free port of the range.  The scan starts at a
# point that depends on our PID, so that two runs at once rarely try the
# same port (start_server fails, and the caller retries, if one is taken);
# a port handed out once is not handed out again by this shell.
take_port() {
	local _i _p _n=$((port_hi - port_lo + 1))
	local _base=$((($$ + RANDOM) % _n))
	for _i in $(seq 0 $((_n - 1))); do
		_p=$((port_lo + (_base + _i) % _n))
		case "$used_ports" in *" $_p "*) continue ;; esac
		if ! port_in_use "$_p"; then
			used_ports="$used_ports$_p "
			printf -v "$1" '%s' "$_p"
			return 0
		fi
	done
	echo "$prog: no free port in 127.0.0.1:$port_lo-$port_hi" >&2
	return 1
}

# pick_port: prints a free port (in $(...), so it cannot remember it).
pick_port() {
	local p
	take_port p || return 1
	echo "$p"
}

# listening PORT: something listens on 127.0.0.1:PORT.
listening() {
	[ -n "$(ss -Htln "( sport = :$1 )" 2>/dev/null)" ]
}

# start_server NAME PORT CMD...: starts CMD in the background, waits until
# it listens on PORT; sets server_pid.  Fails if it exits or never listens.
start_server() {
	local name=$1 port=$2 _
	shift 2
	"$@" </dev/null >"$tmp/$name.out" 2>"$tmp/$name.err" &
	server_pid=$!
	pids+=("$server_pid")
	for _ in $(seq 1 100); do
		if ! kill -0 "$server_pid" 2>/dev/null; then
			wait "$server_pid" 2>/dev/null || true
			forget_pid "$server_pid"
			echo "$prog: $name exited at start:" >&2
			tail -n 20 "$tmp/$name.err" >&2
			return 1
		fi
		if listening "$port"; then
			return 0
		fi
		sleep 0.1
	done
	echo "$prog: $name does not listen on 127.0.0.1:$port after 10 s" >&2
	tail -n 20 "$tmp/$name.err" >&2
	return 1
}

# cpu_ticks PID: user+system CPU time of PID in clock ticks.
cpu_ticks() {
	awk '{ print $14 + $15 }' "/proc/$1/stat"
}
hz=$(getconf CLK_TCK)

# json KEY FILE: a value of loadgen's flat JSON line.
json() {
	sed -n 's/.*"'"$1"'":\("[^"]*"\|[^,}]*\).*/\1/p' "$2" | tr -d '"'
}

# busy_check: % of the CPU time others used over one second.  Figures from
# a busy machine mean little.
busy_check() {
	local a b
	a=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $5 + $6 }' /proc/stat)
	sleep 1
	b=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $5 + $6 }' /proc/stat)
	awk -v a="$a" -v b="$b" 'BEGIN {
		split(a, x, " "); split(b, y, " ");
		busy = y[1] - x[1]; idle = y[2] - x[2];
		if (busy + idle > 0) printf "%.0f", 100 * busy / (busy + idle); else print 0 }'
}

# bench_conf FILE PORT STORE STATE_DIR [SERVER_LINE...]: the benchmarks'
# policyd config: three rules large enough that every answer is DUNNO
# (run.sh, run_redis.sh, callgrind.sh).  Extra [server] lines may follow.
# BENCH_RULES=1: only per-account-messages (the single rule of peers.sh).
bench_conf() {
	local file=$1 port=$2 store=$3 state=$4
	shift 4
	{
		printf '[server]\nlisten = inet:127.0.0.1:%s\nstore = %s\nstate_dir = %s\n' \
			"$port" "$store" "$state"
		printf 'log = stderr\nlog_decisions = actions\n'
		(($#)) && printf '%s\n' "$@"
		if [ "${BENCH_RULES:-3}" = 1 ]; then
			printf '\n[limit per-account-messages]\nkey = sasl_username\ncount = messages\n'
			printf 'rate = 1000000/1h\naction = defer\n'
			return 0
		fi
		cat <<'CONF'

[limit per-account-recipients]
key = sasl_username
count = recipients
rate = 1000000/1h, 10000000/1d
action = defer

[limit per-account-messages]
key = sasl_username
count = messages
rate = 1000000/1h
action = defer

[limit per-client-network]
key = client_network
count = recipients
rate = 1000000/1h
action = hold
CONF
	} >"$file"
}
