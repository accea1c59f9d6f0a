#!/bin/bash
# tests/integration/test_store_redis.sh - runs the Redis store tests
# (test_store_redis.c) against real redis-server processes on loopback.
#
# Usage: test_store_redis.sh DRIVER [single|cluster|all]   (default all)
#
# Owns: a temp dir, free ports in 127.0.0.1:26000-27999, and the servers it
# starts there: a plain server (TCP + unix socket), a server with
# requirepass, and a 3-master / 3-replica cluster (cluster-node-timeout
# 2000 ms, bus ports in the same range).  Every server's PID is written to
# $PD_DIR/<name>.pid (the driver adds its own there too) and the EXIT trap
# stops exactly those PIDs - never anything by name.  Exit status: the
# driver's; 77 (skip) without redis-server.
set -u

DRIVER=${1:?usage: $0 DRIVER [single|cluster|all]}
WHAT=${2:-all}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
REDIS_CLI=${REDIS_CLI:-redis-cli}

if ! command -v "$REDIS_SERVER" >/dev/null || ! command -v "$REDIS_CLI" >/dev/null; then
	echo "# SKIP: redis-server / redis-cli not installed (apt-get install redis-server)"
	exit 77
fi

PD_DIR=$(mktemp -d /tmp/pd-redis-test.XXXXXX)
export PD_DIR

cleanup() {
	local f pid
	for f in "$PD_DIR"/*.pid; do
		[ -f "$f" ] || continue
		pid=$(cat "$f")
		[ -n "$pid" ] && kill -CONT "$pid" 2>/dev/null && kill "$pid" 2>/dev/null
	done
	for _ in $(seq 1 50); do
		local alive=0
		for f in "$PD_DIR"/*.pid; do
			[ -f "$f" ] || continue
			pid=$(cat "$f")
			[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && alive=1
		done
		[ $alive = 0 ] && break
		sleep 0.1
	done
	for f in "$PD_DIR"/*.pid; do
		[ -f "$f" ] || continue
		pid=$(cat "$f")
		[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null
	done
	if [ -n "${KEEP_DIR:-}" ]; then
		echo "# kept $PD_DIR"
	else
		rm -rf "$PD_DIR"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

USED=" "
# a free TCP port in 26000-27999 that this run has not handed out yet
free_port() {
	local p tries=0
	while [ $tries -lt 500 ]; do
		p=$((26000 + RANDOM % 2000))
		tries=$((tries + 1))
		case "$USED" in *" $p "*) continue ;; esac
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null &&
			! ss -Htan "( sport = :$p )" 2>/dev/null | grep -q .; then
			USED="$USED$p "
			echo "$p"
			return 0
		fi
	done
	echo "no free port in 26000-27999" >&2
	return 1
}

wait_ping() { # port
	local i
	for i in $(seq 1 100); do
		"$REDIS_CLI" -h 127.0.0.1 -p "$1" --no-auth-warning ${AUTH:+-a "$AUTH"} ping 2>/dev/null |
			grep -q PONG && return 0
		sleep 0.05
	done
	echo "redis-server on port $1 did not start" >&2
	return 1
}

start_redis() { # name port [args...]
	local name=$1 port=$2
	shift 2
	mkdir -p "$PD_DIR/$name"
	"$REDIS_SERVER" --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
		--daemonize no --dir "$PD_DIR/$name" --logfile "$PD_DIR/$name/redis.log" "$@" &
	echo $! >"$PD_DIR/$name.pid"
}

if [ "$WHAT" = all ] || [ "$WHAT" = single ]; then
	PD_REDIS_PORT=$(free_port) || exit 1
	PD_REDIS_SOCK=$PD_DIR/plain/redis.sock
	start_redis plain "$PD_REDIS_PORT" --unixsocket "$PD_REDIS_SOCK" --unixsocketperm 700
	wait_ping "$PD_REDIS_PORT" || exit 1
	PD_AUTH_PORT=$(free_port) || exit 1
	PD_AUTH_PASS="pw-$RANDOM-$RANDOM"
	start_redis auth "$PD_AUTH_PORT" --requirepass "$PD_AUTH_PASS"
	AUTH=$PD_AUTH_PASS wait_ping "$PD_AUTH_PORT" || exit 1
	PD_KILL_PORT=$(free_port) || exit 1
	export PD_REDIS_PORT PD_REDIS_SOCK PD_AUTH_PORT PD_AUTH_PASS PD_KILL_PORT
fi

if [ "$WHAT" = all ] || [ "$WHAT" = cluster ]; then
	ports=()
	for i in 1 2 3 4 5 6; do
		p=$(free_port) || exit 1
		bus=$(free_port) || exit 1
		start_redis "c$p" "$p" --cluster-enabled yes --cluster-config-file nodes.conf \
			--cluster-node-timeout 2000 --cluster-port "$bus"
		ports+=("$p")
	done
	for p in "${ports[@]}"; do wait_ping "$p" || exit 1; done
	addrs=()
	for p in "${ports[@]}"; do addrs+=("127.0.0.1:$p"); done
	if ! "$REDIS_CLI" --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
		>"$PD_DIR/cluster-create.log" 2>&1; then
		cat "$PD_DIR/cluster-create.log" >&2
		exit 1
	fi
	for i in $(seq 1 200); do
		ok=0
		for p in "${ports[@]}"; do
			"$REDIS_CLI" -p "$p" cluster info 2>/dev/null | grep -q 'cluster_state:ok' &&
				ok=$((ok + 1))
		done
		[ $ok = 6 ] && break
		sleep 0.1
	done
	if [ $ok != 6 ]; then
		echo "the cluster did not become ok" >&2
		exit 1
	fi
	# replicas must be in sync before a failover test
	sleep 1
	PD_CLUSTER_PORTS=$(IFS=,; echo "${ports[*]}")
	export PD_CLUSTER_PORTS
fi

"$DRIVER"
