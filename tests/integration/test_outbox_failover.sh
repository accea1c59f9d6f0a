#!/bin/bash
# tests/integration/test_outbox_failover.sh - the lockout hook runs exactly
# once per flag across a Redis Cluster failover (issue 6).  TAP on stdout.
#
# Owns: a temp dir, loopback ports in OUTBOX_PORTS (default 24500-24999,
# each Redis node's cluster bus on port + 10000), and the processes it
# starts: a real 3-master / 3-replica redis-server cluster (redis-cli
# --cluster create), policyd "a" (and "b", a second daemon sharing the
# cluster).  Every PID is recorded; the EXIT trap resumes (SIGCONT) and
# stops exactly those - never anything by name.
#
# The dangerous window, made real: the replicas are SIGSTOPped (stalled),
# and their masters drop them after repl-timeout (2 s here; 60 s by
# default): writes from then on reach no replica, not even a socket buffer
# (a stalled replica would still read those once resumed), and WAIT cannot
# be acknowledged.
#  1. A flag is raised: flag + outbox entry land on the masters, WAIT comes
#     back short, policyd writes them again (same flag id).  The master of
#     the account is SIGKILLed; its replica, shown NOT to hold the flag, is
#     resumed and promoted (CLUSTER FAILOVER TAKEOVER); the old master
#     restarts as its replica.  The flag is re-written on the new master,
#     the hook runs exactly once, the account has exactly one flag.
#  2. The hook has run, its "done" mark is not acknowledged (replicas
#     stopped while the command runs) and policyd is SIGKILLed; the master
#     of the outbox entry is killed, its replica (holding "running")
#     promoted.  A second daemon sharing the cluster leaves the entry
#     (another daemon's); policyd "a" restarts, finds its own record of
#     the result in state_dir/hooks/ and writes "done" back: the command
#     is NOT run again.
# The lockout command appends one line per run to a file: the counts are
# the assertions.  About a minute.
#
# Needs: POLICYD, POLICYCTL (paths; meson sets them), redis-server >= 7
# and redis-cli (SKIP without them).
set -u

REDIS_SERVER=${REDIS_SERVER:-redis-server}
REDIS_CLI=${REDIS_CLI:-redis-cli}
PORTS=${OUTBOX_PORTS:-24500-24999}
if [[ -z ${POLICYD:-} || -z ${POLICYCTL:-} ]]; then
	echo "1..0 # SKIP POLICYD and POLICYCTL must be set"
	exit 0
fi
if ! command -v "$REDIS_SERVER" >/dev/null || ! command -v "$REDIS_CLI" >/dev/null; then
	echo "1..0 # SKIP redis-server / redis-cli not installed"
	exit 0
fi
[[ $POLICYD == /* ]] || POLICYD=$PWD/$POLICYD
[[ $POLICYCTL == /* ]] || POLICYCTL=$PWD/$POLICYCTL
PLO=${PORTS%-*}
PHI=${PORTS#*-}

PORT_LO=$PLO
PORT_HI=$PHI
BUS_OFFSET=10000
TMP_PREFIX=pd-outbox
# shellcheck source=tests/integration/redis_lib.sh
. "$(dirname "$0")/redis_lib.sh"
STOPPED=() # SIGSTOPped redis PIDs
t0=$(date +%s.%N)
elapsed() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
# wait_for SECONDS COMMAND...: poll every 0.1 s
wait_for() {
	local end
	end=$(($(date +%s%N) / 1000000 + $1 * 1000))
	shift
	until "$@"; do
		(($(date +%s%N) / 1000000 > end)) && return 1
		sleep 0.1
	done
}

declare -A RPID BUSP
start_redis() { # PORT
	local port=$1
	mkdir -p "$T/r$port"
	"$REDIS_SERVER" --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
		--daemonize no --dir "$T/r$port" --logfile "$T/r$port/redis.log" \
		--cluster-enabled yes --cluster-config-file nodes.conf \
		--cluster-node-timeout 2000 --cluster-port "$((port + 10000))" \
		--cluster-replica-validity-factor 0 --repl-timeout 2 --repl-ping-replica-period 1 &
	RPID[$port]=$!
	PIDS+=($!)
	wait_for 5 pong "$port"
}
pong() { rcli "$1" ping 2>/dev/null | grep -q PONG; }

# ---------------------------------------------------------------- cluster
CP=()
for i in 1 2 3 4 5 6; do
	p=$(free_port) || exit 1
	start_redis "$p" || {
		echo "Bail out! redis-server on $p did not start"
		exit 1
	}
	CP+=("$p")
done
addrs=()
for p in "${CP[@]}"; do addrs+=("127.0.0.1:$p"); done
"$REDIS_CLI" --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
	>"$T/cluster-create.log" 2>&1
rc=$?
all_ok() {
	local p
	for p in "${CP[@]}"; do
		kill -0 "${RPID[$p]}" 2>/dev/null || continue
		rcli "$p" cluster info 2>/dev/null | grep -q 'cluster_state:ok' || return 1
	done
}
synced() { # every live replica's link up
	local p n=0
	for p in "${CP[@]}"; do
		rcli "$p" info replication 2>/dev/null | tr -d '\r' |
			grep -q '^master_link_status:up' && n=$((n + 1))
	done
	[[ $n == 3 ]]
}
wait_for 20 all_ok && wait_for 20 synced
r=$?
[[ $rc == 0 && $r == 0 ]]
ok $? "a 3-master / 3-replica cluster on ${CP[*]} (buses +10000), replicas in sync"

# port of the master serving KEY / of the replica of master PORT
master_of() {
	local slot
	slot=$(rcli "${CP[0]}" cluster keyslot "$1" | tr -d '\r')
	rcli "${CP[0]}" cluster nodes | awk -v s="$slot" '$3 ~ /master/ && $3 !~ /fail/ {
		for (i = 9; i <= NF; i++) {
			if ($i ~ /^\[/) continue
			n = split($i, r, "-"); lo = r[1]; hi = (n == 2 ? r[2] : r[1])
			if (s >= lo && s <= hi) { split($2, hp, "[:@]"); print hp[2]; exit }
		}
	}'
}
replica_of() {
	local id
	id=$(rcli "${CP[0]}" cluster nodes | awk -v p="127.0.0.1:$1@" 'index($2, p) == 1 { print $1 }')
	rcli "${CP[0]}" cluster nodes | awk -v m="$id" '$4 == m { split($2, hp, "[:@]"); print hp[2]; exit }'
}
replicas() { # ports of the replicas now
	rcli "${CP[0]}" cluster nodes | awk '$3 ~ /slave/ && $3 !~ /fail/ { split($2, hp, "[:@]"); print hp[2] }'
}
stall_replicas() {
	local p
	STOPPED=()
	for p in $(replicas); do
		kill -STOP "${RPID[$p]}" && STOPPED+=("$p")
	done
}
dropped() { # MASTER: it has let its stalled replica go
	rcli "$1" info replication 2>/dev/null | tr -d '\r' | grep -q '^connected_slaves:0'
}
resume() { # PORT...
	local p
	for p in "$@"; do kill -CONT "${RPID[$p]}" 2>/dev/null; done
}
# a key as a replica sees it (READONLY on the same connection)
replica_get() { # PORT KEY
	printf 'READONLY\r\nGET %s\r\n' "$2" | rcli "$1" 2>/dev/null | tail -n 1 | LC_ALL=C tr -d '\000'
}
# "running", "done"... of the outbox entry ID as its master has it
outbox_state() {
	local k="pd:{$1}:@outbox"
	rcli "$(master_of "$k")" get "$k" 2>/dev/null | LC_ALL=C sed -n 's/.*"state":"\([a-z]*\)".*/\1/p'
}

# ---------------------------------------------------------------- policyd
cat >"$T/lockout.sh" <<EOF
#!/bin/sh
echo "\$POLICYD_FLAG_ID \$POLICYD_ATTEMPT \$POLICYD_INTERRUPTED \$*" >>"$T/\$POLICYD_ACCOUNT.runs"
if [ "\$POLICYD_ACCOUNT" = bob ]; then
	# holds until the test says go (at most 60 s)
	i=0
	while [ ! -e "$T/go" ] && [ \$i -lt 600 ]; do sleep 0.1; i=\$((i + 1)); done
fi
echo "locked \$POLICYD_ACCOUNT"
EOF
chmod 755 "$T/lockout.sh"
CURL="redis-cluster://127.0.0.1:${CP[0]},127.0.0.1:${CP[1]},127.0.0.1:${CP[2]}"
declare -A PD PPORT
write_conf() { # NAME
	mkdir -p "$T/$1.state"
	cat >"$T/$1.conf" <<EOF
[server]
listen = inet:127.0.0.1:${PPORT[$1]}
store = $CURL
redis_failure = closed
redis_timeout = 300ms
redis_wait_replicas = ${OUTBOX_WAIT_REPLICAS:-1}
redis_wait_timeout = 100ms
state_dir = $T/$1.state
control = unix:$T/$1.ctl
log = stderr
log_decisions = none
hooks = rcpt

[flags]
action = defer
lockout_command = $T/lockout.sh
lockout_args = %{id} %{account}
lockout_delay = 0s
lockout_timeout = 90s
lockout_retries = 0
EOF
}
start_pd() { # NAME
	write_conf "$1"
	"$POLICYD" -c "$T/$1.conf" >>"$T/$1.log" 2>&1 </dev/null &
	PD[$1]=$!
	PIDS+=($!)
	wait_for 10 ctl_up "$1"
}
ctl_up() { "$POLICYCTL" -c "$T/$1.conf" status >/dev/null 2>&1; }
pctl() { # NAME ARGS...
	local n=$1
	shift
	"$POLICYCTL" -c "$T/$n.conf" "$@"
}
# the line "event=flag account=ACC" (logged once durable) comes before the hook's exec
flag_before_hook() { # NAME ACCOUNT ID
	awk -v a="event=flag account=$2 id=$3 " -v h="event=hook_exec id=$3 " '
		index($0, a) && !f { f = NR } index($0, h) && !x { x = NR }
		END { exit !(f && x && f < x) }' "$T/$1.log"
}
runs() { grep -c '' "$T/$1.runs" 2>/dev/null || echo 0; }
logc() { grep -cE -- "$2" "$T/$1.log" 2>/dev/null; }
log_has() { grep -qE -- "$2" "$T/$1.log" 2>/dev/null; }
flag_id() { sed -n "s/.*event=flag account=$2 id=\([^ ]*\).*/\1/p" "$T/$1.log" | tail -n 1; }
p=$(free_port) && PPORT[a]=$p && p=$(free_port) && PPORT[b]=$p || exit 1

start_pd a
ok $? "policyd a on the cluster (redis_wait_replicas = 1, redis_wait_timeout = 100ms)"

# 0. the healthy path: WAIT acknowledged at once, one run
pctl a flag carol --reason "healthy" >/dev/null 2>&1
carol_done() { [[ $(runs carol) == 1 && $(outbox_state "$(flag_id a carol)") == done ]]; }
wait_for 20 carol_done
ok $? "healthy cluster: carol's flag raised, the lockout command ran once, its entry is done"
CID=$(flag_id a carol)
[[ -n $CID ]] && flag_before_hook a carol "$CID"
ok $? "carol's flag was acknowledged (on a replica) before its hook ran"

# ---------------------------------------------------- 1. the flag itself lost
M=$(master_of "pd:{alice}:@flag")
R=$(replica_of "$M")
diag "alice's flag record: master $M, replica $R ($(elapsed) s)"
stall_replicas
diag "replicas stopped: ${STOPPED[*]}"
[[ ${#STOPPED[@]} == 3 ]]
ok $? "the 3 replicas SIGSTOPped (stalled)"
wait_for 15 dropped "$M"
ok $? "master $M dropped its stalled replica $R (repl-timeout)"
pctl a flag alice --reason "failover test" >"$T/alice.flag.out" 2>&1 &
PF=$!
PIDS+=($PF)
wait_for 10 log_has a "event=flag_write_again account=alice"
ok $? "WAIT not acknowledged: policyd writes alice's flag again (same id), hook not started"
AID=$(sed -n 's/.*event=flag_write_again account=alice id=\([^ ]*\).*/\1/p' "$T/a.log" | head -n 1)
[[ $(runs alice) == 0 ]]
ok $? "the lockout command has not run for a flag that is not on a replica"
stop "${RPID[$M]}" KILL
ok 0 "alice's master $M SIGKILLed"
resume "$R"
sleep 0.2
v=$(replica_get "$R" "pd:{alice}:@flag")
diag "replica $R has pd:{alice}:@flag: '${v:0:40}'"
[[ -z $v ]]
ok $? "the replica $R to be promoted does NOT hold alice's flag (the write was lost with $M)"
rcli "$R" cluster failover takeover >/dev/null
is_master() { rcli "$1" role 2>/dev/null | head -n 1 | grep -q master; }
wait_for 10 is_master "$R"
ok $? "replica $R promoted (CLUSTER FAILOVER TAKEOVER) ($(elapsed) s)"
resume "${STOPPED[@]}"
start_redis "$M"
ok $? "the old master $M restarted (it rejoins as $R's replica)"
alice_done() { [[ $(runs alice) -ge 1 && $(outbox_state "$AID") == done ]]; }
wait_for 40 alice_done
ok $? "alice's flag re-written on the new master, the hook ran and its entry is done ($(elapsed) s)"
[[ $(outbox_state "$AID") == done ]] || diag "outbox $AID: '$(outbox_state "$AID")' on $(master_of "pd:{$AID}:@outbox")"
flag_before_hook a alice "$AID"
ok $? "alice's flag was acknowledged on a replica before the hook ran"
wait "$PF" 2>/dev/null
forget "$PF"
[[ $(runs alice) == 1 ]] && grep -q "^$AID 1 0 $AID alice\$" "$T/alice.runs"
ok $? "the lockout command ran exactly once for alice, with the flag id $AID (runs: $(runs alice))"
n=$(pctl a --json history alice 2>/dev/null | grep -o '"id": *"[^"]*"' | sort -u | wc -l)
[[ $n == 1 ]] && pctl a --json history alice | grep -q "$AID"
ok $? "alice has exactly one flag, $AID (flags: $n): never a second one"
diag "alice: $(logc a "event=flag_write_again account=alice") writes repeated ($(elapsed) s)"
wait_for 20 all_ok && wait_for 20 synced
ok $? "cluster healthy again, replicas in sync"

# ---------------------------------------------------- 2. the "done" mark lost
rm -f "$T/go"
pctl a flag bob --reason "done lost" >/dev/null 2>&1
bob_running() { [[ $(runs bob) == 1 ]]; }
wait_for 20 bob_running
BID=$(flag_id a bob)
K="pd:{$BID}:@outbox"
M=$(master_of "$K")
R=$(replica_of "$M")
rep_running() { replica_get "$R" "$K" | grep -q '"state":"running"'; }
wait_for 10 rep_running
ok $? "bob's hook runs; its entry is \"running\" on the replica $R of $M"
stall_replicas
wait_for 15 dropped "$M"
ok $? "replicas stalled; $M dropped $R"
touch "$T/go"
wait_for 20 log_has a "event=hook_write_again id=$BID step=save"
ok $? "bob's command finished; its \"done\" is not acknowledged (replicas stopped): written again"
stop "${PD[a]}" KILL
ok 0 "policyd a SIGKILLed before the \"done\" reached a replica"
[[ -s $T/a.state/hooks/$BID.state ]] && grep -q '"state":"done"' "$T/a.state/hooks/$BID.state"
ok $? "this host's record hooks/$BID.state says done"
stop "${RPID[$M]}" KILL
resume "$R"
rcli "$R" cluster failover takeover >/dev/null
wait_for 10 is_master "$R"
resume "${STOPPED[@]}"
start_redis "$M"
wait_for 20 all_ok
st=$(outbox_state "$BID")
[[ $st == running ]]
ok $? "master $M killed, $R promoted: the store has lost \"done\", the entry says '$st'"
start_pd b
wait_for 10 log_has b "event=hook_resume_foreign entries=1"
ok $? "a second daemon b sharing the cluster leaves bob's entry to its owner"
start_pd a
ok $? "policyd a restarted"
bob_done() { [[ $(outbox_state "$BID") == done ]]; }
wait_for 20 bob_done
ok $? "a restores \"done\" from hooks/ into the store"
log_has a "event=hook_store_behind id=$BID store_state=running store_attempts=1 local_state=done"
ok $? "a logs that the store was behind its own record"
[[ $(runs bob) == 1 ]]
ok $? "the lockout command ran exactly once for bob (runs: $(runs bob)), not again after the lost \"done\""
kill -0 "${PD[a]}" && kill -0 "${PD[b]}"
ok $? "both daemons alive"
stop "${PD[a]}"
stop "${PD[b]}"
! grep -q "AddressSanitizer\|LeakSanitizer\|runtime error" "$T"/a.log "$T"/b.log
ok $? "no sanitizer report in the daemons' logs"
diag "total $(elapsed) s"
echo "1..$N"
exit $((FAILED > 0))
