# tests/integration/redis_lib.sh - shell helpers of the Redis integration
# tests, sourced (bash).  The sourcing test sets PORT_LO and PORT_HI (its
# own loopback port range) and TMP_PREFIX first.  Owns: $T (a temp dir),
# PIDS (every process started; the EXIT trap stops exactly those, never
# anything by name), the TAP counters.
# shellcheck shell=bash

T=$(mktemp -d "/tmp/${TMP_PREFIX:-pd-redis}.XXXXXX")
PIDS=()
N=0
FAILED=0

cleanup() {
	local pid i alive
	for pid in "${PIDS[@]}"; do
		kill -CONT "$pid" 2>/dev/null
		kill -TERM "$pid" 2>/dev/null
	done
	for i in $(seq 1 50); do
		alive=0
		for pid in "${PIDS[@]}"; do
			kill -0 "$pid" 2>/dev/null && alive=1
		done
		[[ $alive == 0 ]] && break
		sleep 0.1
	done
	for pid in "${PIDS[@]}"; do
		kill -KILL "$pid" 2>/dev/null
	done
	if [[ -n ${KEEP_DIR:-} || $FAILED != 0 ]]; then
		echo "# logs kept in $T"
	else
		rm -rf "$T"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ok() { # STATUS DESCRIPTION
	N=$((N + 1))
	if [[ $1 == 0 ]]; then
		echo "ok $N - $2"
	else
		echo "not ok $N - $2"
		FAILED=$((FAILED + 1))
	fi
}
diag() { echo "# $*"; }

USED=" "
# a free 127.0.0.1 port in PORT_LO..PORT_HI not handed out before; with
# BUS_OFFSET set (10000: Redis's default cluster bus), that port + BUS_OFFSET
# free too
free_port() {
	local p tries=0 span=$((PORT_HI - PORT_LO + 1)) bus
	while ((tries < 500)); do
		p=$((PORT_LO + RANDOM % span))
		tries=$((tries + 1))
		case "$USED" in *" $p "*) continue ;; esac
		bus=$p
		[[ -n ${BUS_OFFSET:-} ]] && bus=$((p + BUS_OFFSET))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null &&
			! ss -Htan "( sport = :$p or sport = :$bus )" 2>/dev/null | grep -q .; then
			USED="$USED$p "
			echo "$p"
			return 0
		fi
	done
	echo "no free port in $PORT_LO-$PORT_HI" >&2
	return 1
}

forget() { # PID: reaped, never signal that number again
	local p keep=()
	for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
	PIDS=("${keep[@]}")
}

stop() { # PID [SIGNAL]: also a SIGSTOPped one
	local pid=$1 i
	kill -CONT "$pid" 2>/dev/null
	kill "-${2:-TERM}" "$pid" 2>/dev/null
	for i in $(seq 1 100); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.05
	done
	kill -KILL "$pid" 2>/dev/null
	wait "$pid" 2>/dev/null
	forget "$pid"
}

rcli() { "${REDIS_CLI:-redis-cli}" -h 127.0.0.1 -p "$@"; }

wait_ping() { # PORT
	local i
	for i in $(seq 1 100); do
		rcli "$1" ping 2>/dev/null | grep -q PONG && return 0
		sleep 0.05
	done
	return 1
}

declare -A RPID # port -> pid
start_redis() { # PORT [ARGS...]
	local port=$1
	shift
	mkdir -p "$T/r$port"
	"${REDIS_SERVER:-redis-server}" --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
		--daemonize no --dir "$T/r$port" --logfile "$T/r$port/redis.log" "$@" &
	RPID[$port]=$!
	PIDS+=($!)
	wait_ping "$port"
}

declare -A PPID_ # name -> pid
start_policyd_conf() { # NAME PORT: runs $T/NAME.conf, waits for PORT to listen
	local name=$1 port=$2 i
	"$POLICYD" -c "$T/$name.conf" >>"$T/$name.log" 2>&1 </dev/null &
	PPID_[$name]=$!
	PIDS+=($!)
	for i in $(seq 1 100); do
		if ! kill -0 "${PPID_[$name]}" 2>/dev/null; then
			diag "policyd $name exited at start:"
			tail -n 5 "$T/$name.log" | sed 's/^/# /'
			return 1
		fi
		ss -Htln "( sport = :$port )" 2>/dev/null | grep -q . && return 0
		sleep 0.05
	done
	return 1
}

# one RCPT request on a fresh connection: prints the action (without action=)
probe() { # PORT [ACCOUNT]
	local reply=""
	exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
	printf 'request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\nclient_address=127.0.0.1\nclient_name=localhost\nhelo_name=localhost\nsender=%s@example.org\nrecipient=x%s@example.net\nsasl_method=PLAIN\nsasl_username=%s\ninstance=%s.1\n\n' \
		"${2:-probe}" "$RANDOM" "${2:-probe}" "$RANDOM" >&3
	IFS= read -r -t 5 reply <&3
	exec 3<&- 3>&-
	echo "${reply#action=}"
}

# wait until PORT answers an action matching the regex, for up to SECONDS
wait_answer() { # PORT REGEX SECONDS
	local end a
	end=$(($(date +%s) + $3))
	while (($(date +%s) < end)); do
		a=$(probe "$1" "w$RANDOM")
		[[ $a =~ $2 ]] && return 0
		sleep 0.1
	done
	diag "last answer: $a"
	return 1
}
