#!/usr/bin/env bash
# tests/bench/peers.sh - policyd against the other policy servers that can
# rate-limit outbound mail, in one run, on this machine, under the same load.
#
#   tests/bench/peers.sh [--secs N] [--quick] [--only NAME,...] [--build DIR]
#                        [--policyd PATH] [--ports LO-HI] [--no-install]
#
# NAMEs (default: all, in this order): ceiling (the answer-only server),
# policyd (embedded store), policyd-redis (store = redis://, a redis-server
# started here), postfwd (postfwd2, rate()), policyd-rate-limit (in-memory
# sqlite), mtpolicyd (Accounting + Quota on SQLite).  The rule is the same
# for all: each sasl_username may send N messages per hour; N = 1,000,000 in
# the measured runs, so every answer is DUNNO (loadgen -e 'DUNNO|dunno').
# For each server: a sanity run first (N = 3 on a fresh instance: a fourth
# message of one account must be refused, and is shown), then loadgen
# -a 100000 at 64 connections (throughput; memory is read right after it:
# RSS and PSS summed over the server's process tree) and at 1 connection
# (p50/p99).  --secs N: seconds per run (default 20; --quick: 3).  Installs
# the peers first (sh scripts/deps.sh --bench, no service started) unless
# --no-install.  Ports: 127.0.0.1, default 23000-23499.  Prints a Markdown
# table, the commands and every config.  Every process it starts is stopped
# by PID on exit, whatever happens.
set -euo pipefail

usage() {
	sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
	exit "${1:-0}"
}

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
all="ceiling policyd policyd-redis postfwd policyd-rate-limit mtpolicyd"
secs=""
quick=0
only=""
build="$top/build-bench-release"
policyd=""
ports="23000-23499"
install=1
while [ $# -gt 0 ]; do
	case "$1" in
	--secs)
		[ $# -ge 2 ] || usage 2
		secs=$2
		shift
		;;
	--quick) quick=1 ;;
	--only)
		[ $# -ge 2 ] || usage 2
		only=$2
		shift
		;;
	--build)
		[ $# -ge 2 ] || usage 2
		build=$2
		shift
		;;
	--policyd)
		[ $# -ge 2 ] || usage 2
		policyd=$2
		shift
		;;
	--ports)
		[ $# -ge 2 ] || usage 2
		ports=$2
		shift
		;;
	--no-install) install=0 ;;
	-h | --help) usage 0 ;;
	*)
		echo "peers.sh: unknown argument '$1'" >&2
		usage 2
		;;
	esac
	shift
done
if [ -n "$secs" ]; then
	case "$secs" in
	*[!0-9]* | 0 | "")
		echo "peers.sh: --secs '$secs': a whole number of seconds, 1 or more" >&2
		exit 2
		;;
	esac
	[ "$secs" -le 3600 ] || {
		echo "peers.sh: --secs $secs: at most 3600" >&2
		exit 2
	}
elif [ "$quick" = 1 ]; then
	secs=3
else
	secs=20
fi
if [ "$secs" -lt 5 ]; then warm=1; else warm=2; fi
if [[ ! "$ports" =~ ^([0-9]{4,5})-([0-9]{4,5})$ ]] || [ "${BASH_REMATCH[1]}" -lt 1024 ] ||
	[ "${BASH_REMATCH[2]}" -gt 65535 ] || [ "${BASH_REMATCH[1]}" -gt $((BASH_REMATCH[2] - 8)) ]; then
	echo "peers.sh: --ports '$ports': LO-HI, 1024 <= LO, LO + 8 <= HI <= 65535" >&2
	exit 2
fi
port_lo=${BASH_REMATCH[1]}
port_hi=${BASH_REMATCH[2]}
selected=""
if [ -n "$only" ]; then
	for n in ${only//,/ }; do
		case " $all " in
		*" $n "*) ;;
		*)
			echo "peers.sh: --only: unknown server '$n' (one of: $all)" >&2
			exit 2
			;;
		esac
	done
	for n in $all; do
		case ",$only," in *",$n,"*) selected="$selected $n" ;; esac
	done
else
	selected=" $all"
fi
want() { case "$selected " in *" $1 "*) return 0 ;; esac; return 1; }
case "$build" in /*) ;; *) build="$PWD/$build" ;; esac
if [ -n "$policyd" ]; then
	case "$policyd" in /*) ;; *) policyd="$PWD/$policyd" ;; esac
	[ -x "$policyd" ] || {
		echo "peers.sh: --policyd $policyd: not an executable file" >&2
		exit 2
	}
fi

# --------------------------------------------------------------- install
if [ "$install" = 1 ]; then
	sh "$top/scripts/deps.sh" --bench || {
		echo "peers.sh: scripts/deps.sh --bench failed (run it as root, or use --no-install)" >&2
		exit 2
	}
fi
need="meson ninja ss awk ps setpriv"
want policyd-redis && need="$need redis-server redis-cli"
want postfwd && need="$need perl postfwd2"
want policyd-rate-limit && need="$need policyd-rate-limit"
want mtpolicyd && need="$need mtpolicyd sqlite3"
for tool in $need; do
	command -v "$tool" >/dev/null || {
		echo "peers.sh: '$tool' is needed (sh scripts/deps.sh --bench)" >&2
		exit 2
	}
done

# --------------------------------------------------------------- clean-up
prog=peers.sh
tmp=$(mktemp -d "${TMPDIR:-/tmp}/policyd-peers.XXXXXX")
# mtpolicyd's SQLite database lives in memory (tmpfs), as fast as it gets
shm=""
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
	shm=$(mktemp -d /dev/shm/policyd-peers.XXXXXX)
fi
# shellcheck source=tests/bench/lib.sh
. "$here/lib.sh"
cleanup_extra() {
	[ -n "$shm" ] && rm -rf "$shm"
	return 0
}
bench_traps
# set -e stops the script on an unexpected failure: say where.
set -E
trap 'echo "$prog: unexpected failure (status $?) at line $LINENO; logs kept in $tmp" >&2; failed=1' ERR
# The peers run as their own Debian users when we are root: the directories
# they use must be reachable.
chmod 711 "$tmp"
[ -n "$shm" ] && chmod 711 "$shm"
root=0
[ "$(id -u)" = 0 ] && root=1

# as_user USER GROUP CMD...: execs CMD as USER:GROUP when we are root, as
# ourselves otherwise; for a background job or a subshell only (it execs, so
# the job's PID is the server's).
as_user() {
	local u=$1 g=$2
	shift 2
	if [ "$root" = 1 ]; then
		exec setpriv --reuid="$u" --regid="$g" --clear-groups -- "$@"
	fi
	exec "$@"
}

# own_dir DIR USER GROUP: creates DIR, owned by USER:GROUP when we are root.
own_dir() {
	mkdir -p "$1"
	chmod 755 "$1"
	[ "$root" = 1 ] && chown "$2:$3" "$1"
	return 0
}

# ------------------------------------------------------------------ build
if [ ! -f "$build/build.ninja" ]; then
	echo "peers.sh: configuring $build (buildtype=release)" >&2
	meson setup "$build" "$top" --buildtype=release >"$tmp/meson-setup.log" 2>&1 || {
		failed=1
		cat "$tmp/meson-setup.log" >&2
		exit 2
	}
fi
targets="tests/bench/loadgen tests/bench/ceiling"
[ -z "$policyd" ] && targets="$targets policyd/policyd"
# shellcheck disable=SC2086
ninja -C "$build" $targets >"$tmp/ninja.log" 2>&1 || {
	failed=1
	cat "$tmp/ninja.log" >&2
	exit 2
}
loadgen="$build/tests/bench/loadgen"
ceiling="$build/tests/bench/ceiling"
[ -n "$policyd" ] || policyd="$build/policyd/policyd"

# ------------------------------------------------------ process trees
# tree_pids ROOT: ROOT and all its descendants, one per line.
tree_pids() {
	ps -e -o pid=,ppid= | awk -v root="$1" '
		{ kids[$2] = kids[$2] " " $1 }
		END {
			n = 1; q[1] = root; seen[root] = 1
			for (i = 1; i <= n; i++) {
				print q[i]
				m = split(kids[q[i]], k, " ")
				for (j = 1; j <= m; j++)
					if (!(k[j] in seen)) { seen[k[j]] = 1; q[++n] = k[j] }
			}
		}'
}

# mem_tree ROOT: "RSS_kB PSS_kB PROCESSES" summed over ROOT's tree.
mem_tree() {
	local p rss pss tr=0 tp=0 n=0
	for p in $(tree_pids "$1"); do
		rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null) || continue
		[ -n "$rss" ] || continue
		pss=$(awk '/^Pss:/ { print $2 }' "/proc/$p/smaps_rollup" 2>/dev/null) || pss=0
		tr=$((tr + rss))
		tp=$((tp + ${pss:-0}))
		n=$((n + 1))
	done
	echo "$tr $tp $n"
}

# cpu_tree ROOT: CPU ticks of ROOT's tree, reaped children included.
cpu_tree() {
	local p t=0 c
	for p in $(tree_pids "$1"); do
		c=$(awk '{ print $14 + $15 + $16 + $17 }' "/proc/$p/stat" 2>/dev/null) || continue
		t=$((t + ${c:-0}))
	done
	echo "$t"
}

# stop_tree ROOT: stops ROOT by PID, then any descendant it left behind.
stop_tree() {
	local p kids
	kids=$(tree_pids "$1" | tail -n +2)
	stop_pid "$1"
	# (each may exit between the check and the signal)
	for p in $kids; do
		if alive "$p"; then kill -TERM "$p" 2>/dev/null || true; fi
	done
	sleep 0.2
	for p in $kids; do
		if alive "$p"; then kill -KILL "$p" 2>/dev/null || true; fi
	done
	return 0
}

# wait_procs ROOT N: wait (10 s at most) until ROOT's tree has N processes.
wait_procs() {
	local i
	for i in $(seq 1 100); do
		[ "$(tree_pids "$1" | wc -l)" -ge "$2" ] && return 0
		sleep 0.1
	done
	return 0
}

# start_daemon NAME PORT PIDFILE CMD...: CMD forks into the background and
# writes PIDFILE; wait until it listens on PORT; sets server_pid.
start_daemon() {
	local name=$1 port=$2 pidfile=$3 i rc=0
	shift 3
	("$@") </dev/null >"$tmp/$name.out" 2>"$tmp/$name.err" || rc=$?
	if [ "$rc" != 0 ]; then
		echo "$prog: $name exited with status $rc at start:" >&2
		tail -n 20 "$tmp/$name.err" >&2
		return 1
	fi
	server_pid=""
	for i in $(seq 1 100); do
		if [ -z "$server_pid" ] && [ -s "$pidfile" ]; then
			server_pid=$(tr -dc 0-9 <"$pidfile")
			pids+=("$server_pid")
		fi
		if [ -n "$server_pid" ] && ! alive "$server_pid"; then
			forget_pid "$server_pid"
			echo "$prog: $name exited at start" >&2
			return 1
		fi
		[ -n "$server_pid" ] && listening "$port" && return 0
		sleep 0.1
	done
	echo "$prog: $name does not listen on 127.0.0.1:$port after 10 s" >&2
	return 1
}

# ------------------------------------------------------------ the peers
n_big=1000000 # messages per hour per account in the measured runs
n_small=3     # in the sanity runs
prefork=68    # children of the pre-forking servers: 64 connections + 4 spare
declare -A conf_file cmd_line

# Perl shim for postfwd2: see the comment inside.
write_syslog_shim() {
	mkdir -p "$tmp/perl"
	cat >"$tmp/perl/PeersSyslog.pm" <<'EOF'
package PeersSyslog;
# Loaded by tests/bench/peers.sh before postfwd2 (perl -T -I... -MPeersSyslog):
# this machine has no syslog daemon (no /dev/log), and postfwd2's Net::Server
# daemons exit when they cannot open syslog.  Sys::Syslog's functions are
# replaced before postfwd2 imports them: every message is appended to
# $ENV{PEERS_SYSLOG_FILE} instead (postfwd2 runs with --perfmon, so these
# are start-up and error messages only, never one per request).
use strict;
use warnings;
use Sys::Syslog ();
no warnings 'redefine';
my $ident = 'postfwd2';
*Sys::Syslog::setlogsock = sub { 1 };
*Sys::Syslog::openlog = sub { $ident = $_[0] if defined $_[0]; 1 };
*Sys::Syslog::closelog = sub { 1 };
*Sys::Syslog::syslog = sub {
	my ($prio, $fmt, @args) = @_;
	my $f = $ENV{PEERS_SYSLOG_FILE};
	return 1 unless defined $f && $f =~ m{^(/[^\0]+)$};
	$f = $1;
	my $msg = @args ? sprintf($fmt, @args) : $fmt;
	if (open(my $fh, '>>', $f)) {
		print $fh "$ident\[$$]: $prio: $msg\n";
		close $fh;
	}
	return 1;
};
1;
EOF
	chmod -R a+rX "$tmp/perl"
}

write_policyd_conf() { # FILE PORT STORE N STATE_DIR
	local redis=""
	case "$3" in redis*) redis=$'redis_failure = closed\nredis_timeout = 200ms\n' ;; esac
	cat >"$1" <<EOF
[server]
listen = inet:127.0.0.1:$2
store = $3
state_dir = $5
${redis}log = stderr
log_decisions = actions

[limit per-account-messages]
key = sasl_username
count = messages
rate = $4/1h
action = defer
EOF
}

# start_peer NAME N PHASE: starts server NAME with a limit of N messages per
# hour per account on a fresh port; sets peer_port and peer_pid.
start_peer() {
	local name=$1 n=$2 phase=$3 tries=0 d port
	while :; do
		take_port port || return 1
		d="$tmp/$name-$phase"
		rm -rf "$d"
		case "$name" in
		ceiling)
			cmd_line[$name]="$ceiling -l inet:127.0.0.1:PORT"
			start_server "$name-$phase" "$port" "$ceiling" -l "inet:127.0.0.1:$port" && break
			;;
		policyd | policyd-redis)
			mkdir -p "$d/state"
			local store=memory
			[ "$name" = policyd-redis ] && store="redis://127.0.0.1:$redis_port/0"
			write_policyd_conf "$d/policyd.conf" "$port" "$store" "$n" "$d/state"
			conf_file[$name]="$d/policyd.conf"
			cmd_line[$name]="$policyd -c policyd.conf"
			start_server "$name-$phase" "$port" "$policyd" -c "$d/policyd.conf" && break
			;;
		postfwd)
			own_dir "$d" nobody nogroup
			cat >"$d/postfwd.cf" <<EOF
# every sasl_username: at most $n messages (END-OF-MESSAGE requests) in 3600 s
id=MSGRATE; protocol_state==END-OF-MESSAGE; action=rate(sasl_username/$n/3600/450 4.7.1 message rate exceeded)
EOF
			chmod 644 "$d/postfwd.cf"
			conf_file[$name]="$d/postfwd.cf"
			local args=(--file "$d/postfwd.cf" --interface 127.0.0.1 --port "$port"
				--user nobody --group nogroup --pidfile "$d/postfwd.pid"
				--cache_proto unix --cache_port "$d/cache.sock"
				--min_servers "$prefork" --max_spare_servers 80 --max_servers 100 --perfmon)
			local shown="${args[*]}"
			shown=${shown//$tmp/TMP}
			cmd_line[$name]="setpriv --reuid=nobody --regid=nogroup --clear-groups -- env PEERS_SYSLOG_FILE=syslog.log perl -T -w -ITMP/perl -MPeersSyslog /usr/sbin/postfwd2 ${shown/--port $port/--port PORT}"
			if start_daemon "$name-$phase" "$port" "$d/postfwd.pid" \
				as_user nobody nogroup env PEERS_SYSLOG_FILE="$d/syslog.log" \
				perl -T -w -I"$tmp/perl" -MPeersSyslog "$(command -v postfwd2)" "${args[@]}"; then
				wait_procs "$server_pid" $((prefork + 3))
				break
			fi
			[ -s "$d/syslog.log" ] && tail -n 5 "$d/syslog.log" >&2
			;;
		policyd-rate-limit)
			own_dir "$d" policyd-rate-limit policyd-rate-limit
			cat >"$d/policyd-rate-limit.yaml" <<EOF
debug: False
user: "policyd-rate-limit"
group: "policyd-rate-limit"
pidfile: "$d/policyd-rate-limit.pid"
# sqlite3 in memory: the fastest of its backends (one process, no disk)
backend: 0
sqlite_config:
    database: ":memory:"
SOCKET: ["127.0.0.1", $port]
# at most $n mails (RCPT requests) per 3600 s per sasl_username
limits:
    - [$n, 3600]
limits_by_id: {}
limit_by_sasl: True
limit_by_sender: False
limit_by_ip: False
limited_networks: []
success_action: "dunno"
fail_action: "defer_if_permit Rate limit reach, retry later"
db_error_action: "dunno"
report: False
delay_to_close: 300
EOF
			chmod 644 "$d/policyd-rate-limit.yaml"
			conf_file[$name]="$d/policyd-rate-limit.yaml"
			cmd_line[$name]="setpriv --reuid=policyd-rate-limit --regid=policyd-rate-limit --clear-groups -- policyd-rate-limit -f policyd-rate-limit.yaml"
			start_server "$name-$phase" "$port" as_user policyd-rate-limit policyd-rate-limit \
				policyd-rate-limit -f "$d/policyd-rate-limit.yaml" && break
			;;
		mtpolicyd)
			local dbdir="$shm/$name-$phase"
			[ -n "$shm" ] || dbdir="$d/db"
			own_dir "$d" mtpolicyd mtpolicyd
			own_dir "$dbdir" mtpolicyd mtpolicyd
			# the table, its index and WAL mode: see mtpolicyd.sql
			sqlite3 "$dbdir/acct.sqlite" >/dev/null <"$tmp/mtpolicyd.sql"
			[ "$root" = 1 ] && chown mtpolicyd:mtpolicyd "$dbdir/acct.sqlite"
			cat >"$d/mtpolicyd.conf" <<EOF
# mtpolicyd: per-hour message quota per sasl_username (Accounting + Quota)
log_level=0
port="127.0.0.1:$port"
min_servers=$prefork
min_spare_servers=4
max_spare_servers=80
max_servers=100
max_requests=1000
keepalive_timeout=60
max_keepalive=0
request_timeout=20

<Connection db>
  module = "Sql"
  dsn = "dbi:SQLite:dbname=$dbdir/acct.sqlite"
</Connection>

<VirtualHost $port>
  name = "ratelimit"
  # refuse once the account's count for this calendar hour reached $n
  <Plugin quota>
    module = "Quota"
    field = "sasl_username"
    metric = "count"
    time_pattern = "%Y-%m-%d %H"
    threshold = $n
    action = "defer 4.7.1 message quota exceeded"
  </Plugin>
  # count messages: +1 per END-OF-MESSAGE request
  <Plugin count-messages>
    module = "Condition"
    key = "protocol_state"
    match = "END-OF-MESSAGE"
    <Plugin acct>
      module = "Accounting"
      fields = "sasl_username"
      time_pattern = "%Y-%m-%d %H"
    </Plugin>
  </Plugin>
</VirtualHost>
EOF
			chmod 644 "$d/mtpolicyd.conf"
			conf_file[$name]="$d/mtpolicyd.conf"
			cmd_line[$name]="setpriv --reuid=mtpolicyd --regid=mtpolicyd --clear-groups -- mtpolicyd -f -c mtpolicyd.conf"
			if start_server "$name-$phase" "$port" as_user mtpolicyd mtpolicyd \
				mtpolicyd -f -c "$d/mtpolicyd.conf"; then
				wait_procs "$server_pid" $((prefork + 1))
				break
			fi
			;;
		esac
		tries=$((tries + 1))
		if [ "$tries" -ge 3 ]; then
			echo "$prog: $name would not start" >&2
			return 1
		fi
	done
	peer_port=$port
	peer_pid=$server_pid
}

# --------------------------------------------------------------- sanity
# policy_sanity PORT USER COUNT: COUNT messages of sasl_username USER (a RCPT
# then an END-OF-MESSAGE request each) on one connection; prints
# "MESSAGE STATE REPLY" per request.
policy_sanity() {
	local port=$1 user=$2 count=$3 i st fd line reply rc qid
	exec {fd}<>"/dev/tcp/127.0.0.1/$port" || return 1
	for i in $(seq 1 "$count"); do
		for st in RCPT END-OF-MESSAGE; do
			if [ "$st" = RCPT ]; then rc=0 qid=""; else rc=1 qid="4F3A2B1C$i"; fi
			printf '%s\n' "request=smtpd_access_policy" "protocol_state=$st" \
				"protocol_name=ESMTP" "client_address=198.51.100.7" "client_name=unknown" \
				"client_port=40000" "reverse_client_name=unknown" "server_address=192.0.2.25" \
				"server_port=587" "helo_name=sanity.example.net" "sender=$user@example.org" \
				"recipient=r$i@example.com" "recipient_count=$rc" "queue_id=$qid" \
				"instance=1a2b.$(printf %x "$(date +%s)").1.$i" "size=1000" "etrn_domain=" \
				"stress=" "sasl_method=PLAIN" "sasl_username=$user" "sasl_sender=" \
				"ccert_subject=" "ccert_issuer=" "ccert_fingerprint=" "ccert_pubkey_fingerprint=" \
				"encryption_protocol=TLSv1.3" "encryption_cipher=TLS_AES_256_GCM_SHA384" \
				"encryption_keysize=256" "policy_context=" "compatibility_level=3.6" \
				"mail_version=3.7.11" "" >&"$fd"
			reply=""
			while IFS= read -r -t 10 line <&"$fd"; do
				[ -z "$line" ] && break
				reply="$reply${reply:+ }$line"
			done
			echo "$i $st ${reply:-(no reply)}"
		done
	done
	exec {fd}>&-
}

declare -A sanity_cell
sanity_lines=()

# sanity NAME PORT: N = n_small; messages 1..N must be DUNNO, N+1 refused.
sanity() {
	local name=$1 port=$2 out="$tmp/$1.sanity" ok=1 refused="" i st reply
	policy_sanity "$port" "sanity-$name" $((n_small + 1)) >"$out" 2>"$out.err" || true
	while read -r i st reply; do
		if [[ ! "$i" =~ ^[0-9]+$ ]]; then
			ok=0
		elif [ "$i" -le "$n_small" ]; then
			[[ "$reply" =~ ^action=(DUNNO|dunno)$ ]] || ok=0
		elif [ -z "$refused" ] && [[ ! "$reply" =~ ^action=(DUNNO|dunno)$ ]]; then
			refused="$st: $reply"
		fi
	done <"$out"
	if [ "$(wc -l <"$out")" -ne $((2 * n_small + 2)) ]; then ok=0; fi
	if [ "$ok" = 1 ] && [ -n "$refused" ]; then
		sanity_cell[$name]="msg $((n_small + 1)) refused at ${refused%%:*}"
		sanity_lines+=("$name: messages 1-$n_small of sasl_username=sanity-$name answered DUNNO; message $((n_small + 1)) refused at $refused")
	else
		failed=1
		sanity_cell[$name]="**FAILED**"
		sanity_lines+=("$name: limit NOT enforced as expected (N=$n_small), replies: $(tr '\n' ';' <"$out")")
	fi
}

# ----------------------------------------------------------------- runs
commands=()
declare -A r_rps r_p50 r_p99 r_err r_cpu r_req r_mem r_redis r_keys

# run_load NAME ROOT CONNS: one loadgen run against 127.0.0.1:peer_port.
run_load() {
	local name=$1 root=$2 conns=$3 out="$tmp/$1-c$3.json" rc=0 c0 c1 lg
	local cmd=("$loadgen" -s "inet:127.0.0.1:$peer_port" -c "$conns" -t "$secs" -w "$warm"
		-m txn -a 100000 -e 'DUNNO|dunno' --json)
	local shown="${cmd[*]}"
	shown=${shown/127.0.0.1:$peer_port/127.0.0.1:PORT}
	commands+=("${shown/DUNNO|dunno/\'DUNNO|dunno\'}")
	echo "$prog: $name, $conns connection(s), ${secs} s" >&2
	c0=$(cpu_tree "$root")
	"${cmd[@]}" >"$out" 2>"$out.err" &
	lg=$!
	pids+=("$lg")
	wait "$lg" || rc=$?
	forget_pid "$lg"
	c1=$(cpu_tree "$root")
	if [ "$rc" != 0 ] || [ ! -s "$out" ]; then
		failed=1
		echo "$prog: loadgen exited with status $rc:" >&2
		head -n 20 "$out.err" >&2
	fi
	[ -s "$out" ] || return 0
	r_rps[$name,$conns]=$(json rps "$out")
	r_p50[$name,$conns]=$(json p50_us "$out")
	r_p99[$name,$conns]=$(json p99_us "$out")
	r_err[$name,$conns]=$(json errors "$out")
	r_req[$name,$conns]=$(json requests "$out")
	# over the warm-up and the measured time, not the connection set-up
	# (policyd-rate-limit's listen backlog of 5 makes that take seconds)
	r_cpu[$name,$conns]=$(awk -v a="$c0" -v b="$c1" -v hz="$hz" -v w="$(json wall_s "$out")" \
		-v warm="$warm" 'BEGIN { printf "%.0f", 100 * (b - a) / hz / (w + warm) }')
}

uptime_before=$(uptime)
busy=$(busy_check)
if [ "$busy" -gt 10 ]; then
	echo "$prog: warning: the machine was ${busy}% busy before the runs; figures will be low and noisy" >&2
fi

redis_pid=""
redis_port=""
redis_cmd=""
if want policyd-redis; then
	mkdir -p "$tmp/redis"
	tries=0
	while :; do
		take_port redis_port
		rargs=(--port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no
			--dir "$tmp/redis" --logfile "$tmp/redis/redis.log")
		start_server redis "$redis_port" redis-server "${rargs[@]}" && break
		tries=$((tries + 1))
		[ "$tries" -lt 3 ] || {
			failed=1
			exit 1
		}
	done
	redis_pid=$server_pid
	redis_cmd="redis-server ${rargs[*]}"
	redis_cmd=${redis_cmd/--save  --appendonly/--save \'\' --appendonly}
	redis_cmd=${redis_cmd//$tmp/TMP}
fi
rcli() { redis-cli -h 127.0.0.1 -p "$redis_port" "$@"; }

want postfwd && write_syslog_shim
# mtpolicyd: the table its Accounting plugin would create (SQLite flavour),
# plus the (key, time) index its MySQL flavour has, and WAL mode: without
# them every request scans the table and readers wait for the writer.
cat >"$tmp/mtpolicyd.sql" <<'EOF'
PRAGMA journal_mode = WAL;
CREATE TABLE acct_sasl_username (
	`id` INTEGER PRIMARY KEY AUTOINCREMENT,
	`key` VARCHAR(255) NOT NULL,
	`time` VARCHAR(255) NOT NULL,
	`count` INT UNSIGNED NOT NULL,
	`count_rcpt` INT UNSIGNED NOT NULL,
	`size` INT UNSIGNED NOT NULL,
	`size_rcpt` INT UNSIGNED NOT NULL
);
CREATE INDEX acct_sasl_username_key_time ON acct_sasl_username (`key`, `time`);
EOF

for name in $selected; do
	# sanity: small limit, fresh instance
	if [ "$name" != ceiling ]; then
		[ "$name" = policyd-redis ] && rcli flushall >/dev/null
		start_peer "$name" "$n_small" sanity || {
			failed=1
			sanity_cell[$name]="**did not start**"
			continue
		}
		sanity "$name" "$peer_port"
		stop_tree "$peer_pid"
	else
		sanity_cell[$name]="n/a (no limit)"
	fi
	# measured: every answer DUNNO
	[ "$name" = policyd-redis ] && rcli flushall >/dev/null
	start_peer "$name" "$n_big" bench || {
		failed=1
		continue
	}
	run_load "$name" "$peer_pid" 64
	r_mem[$name]=$(mem_tree "$peer_pid")
	if [ "$name" = policyd-redis ]; then
		r_redis[$name]=$(mem_tree "$redis_pid")
		r_keys[$name]=$(rcli dbsize)
	fi
	run_load "$name" "$peer_pid" 1
	stop_tree "$peer_pid"
done
[ -n "$redis_pid" ] && stop_pid "$redis_pid"

# ---------------------------------------------------------------- report
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
echo
echo "### Speed against the peers ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) CPUs, ${secs} s per run after ${warm} s warm-up)"
echo
echo "Load before the runs:${uptime_before#*load}"
[ "$busy" -gt 10 ] && echo "Warning: the machine was ${busy}% busy (others) just before the runs."
echo
echo "Rule: each sasl_username at most $n_big messages per hour (every answer DUNNO);"
echo "loadgen -a 100000 (uniform), realistic transactions (RCPT x 1-5, END-OF-MESSAGE)."
echo
echo "| server | req/s, 64 conns | % of ceiling | p99 µs, 64 conns | p50 µs, 1 conn | p99 µs, 1 conn | errors | server CPU, 64 conns | RSS MB (tree) | PSS MB (tree) | processes | redis-server RSS MB | accounts seen ≈ | limit check (N=$n_small) |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
ceil=${r_rps[ceiling,64]:-}
for name in $selected; do
	rps=${r_rps[$name,64]:-}
	if [ -z "$rps" ]; then
		echo "| $name | failed | | | | | | | | | | | | ${sanity_cell[$name]:-} |"
		continue
	fi
	pct=$(awk -v a="$rps" -v b="${ceil:-0}" 'BEGIN { if (b > 0) printf "%.1f%%", 100 * a / b; else print "-" }')
	errs=$((${r_err[$name,64]:-0} + ${r_err[$name,1]:-0}))
	read -r rss pss np <<<"${r_mem[$name]:-0 0 0}"
	rr="-"
	if [ -n "${r_redis[$name]:-}" ]; then
		read -r rrss _ _ <<<"${r_redis[$name]}"
		rr=$(mb "$rrss")
	fi
	# messages = requests / 4 (RCPT x 1-5, mean 3, + END-OF-MESSAGE), warm-up
	# included; distinct accounts among 100,000 drawn uniformly
	seen=$(awk -v q="${r_req[$name,64]:-0}" -v r="$rps" -v w="$warm" \
		'BEGIN { m = (q + r * w) / 4; printf "%.0f", 100000 * (1 - exp(-m / 100000)) }')
	[ -n "${r_keys[$name]:-}" ] && seen="$seen (Redis keys: ${r_keys[$name]})"
	[ "$name" = ceiling ] && seen="- (keeps no state)"
	echo "| $name | $(printf '%.0f' "$rps") | $pct | ${r_p99[$name,64]} | ${r_p50[$name,1]:-} | ${r_p99[$name,1]:-} | $errs | ${r_cpu[$name,64]}% | $(mb "$rss") | $(mb "$pss") | $np | $rr | $seen | ${sanity_cell[$name]:-} |"
done
echo
echo "Memory: read right after the 64-connection run, summed over the server's"
echo "process tree (RSS counts pages shared between forked children once per"
echo "process; PSS shares them out). CPU: % of one core, the whole tree. Errors:"
echo "loadgen's, both runs. accounts seen: estimated from the requests sent."
echo
echo "Limit check (a fresh instance with N=$n_small, one connection, message = RCPT + END-OF-MESSAGE):"
echo
for l in "${sanity_lines[@]}"; do
	echo "- $l"
done
echo
echo "Commands (PORT: a free port of 127.0.0.1:$port_lo-$port_hi; files below):"
echo '```'
sh_cmd="sh scripts/deps.sh --bench"
[ "$install" = 1 ] && echo "$sh_cmd"
[ -n "$redis_cmd" ] && echo "$redis_cmd"
for name in $selected; do
	[ -n "${cmd_line[$name]:-}" ] && echo "${cmd_line[$name]}"
done | awk '!seen[$0]++'
printf '%s\n' "${commands[@]}" | sort -u
echo '```'
for name in $selected; do
	f=${conf_file[$name]:-}
	if [ -z "$f" ] || [ ! -f "$f" ]; then continue; fi
	echo
	echo "$name: $(basename "$f") (measured run; the limit check used N=$n_small)"
	echo '```'
	sed "s|$tmp|TMP|g; s|${shm:-/nonexistent}|SHM|g" "$f"
	echo '```'
done
if want mtpolicyd; then
	echo
	echo "mtpolicyd: its SQLite database (SHM: a directory in /dev/shm), made before each start with"
	echo "\`sqlite3 SHM/mtpolicyd-PHASE/acct.sqlite < mtpolicyd.sql\`:"
	echo '```sql'
	cat "$tmp/mtpolicyd.sql"
	echo '```'
fi
if want postfwd; then
	echo
	echo "postfwd2 runs under perl -MPeersSyslog: this machine has no syslog daemon, and"
	echo "postfwd2's daemons exit without one; the shim appends syslog messages to a file"
	echo "instead (with --perfmon postfwd2 logs nothing per request). TMP/perl/PeersSyslog.pm:"
	echo '```perl'
	cat "$tmp/perl/PeersSyslog.pm"
	echo '```'
fi
if [ "$failed" != 0 ]; then
	echo "peers.sh: some runs failed (see above)" >&2
	exit 1
fi
