#!/bin/bash
# lab.sh - a throw-away Postfix instance on loopback for integration tests.
#
# Owns: starting and stopping one private Postfix instance per test (own
# config_directory, queue, data dir and maillog_file under a mktemp dir), the
# smtp-sink programs it relays to, a fake policy server, and the policyd
# daemon under test.  Everything it starts is recorded by PID and stopped by
# PID; it never touches the system instance (/etc/postfix) and never kills by
# name.  Facts behind the settings: /work/shared/docs/postfix-policy.md s.7.
#
# Use it as a library:  . lab.sh ; lab_install_traps ; lab_start ; ... ;
# or run it:            lab.sh selftest | check-contrib DIR | start (KEEP_LAB)
#
# Entry points (all return non-zero and print a reason on stderr on failure):
#   lab_start / lab_stop / lab_install_traps / lab_cleanup
#   lab_send LOGIN ADDR FROM TO[,TO..] [swaks args..]   transcript on stdout
#   lab_queue_id TRANSCRIPT, lab_smtp_codes TRANSCRIPT
#   lab_log_mark, lab_wait_log RE [T], lab_wait_log_count RE N [T], lab_log_grep RE
#   lab_wait_sent QID N [T], lab_queue_json, lab_queue_name QID,
#   lab_wait_queue_empty [T], lab_flush, lab_postconf, lab_reload,
#   lab_policy_endpoint EP, lab_port N, lab_fake_policy_start EP [RULES..],
#   lab_add_sink NAME N DOMAIN [ARGS..],
#   lab_fake_policy_stop, policyd_start CONFIG, policyd_stop, policyd_check CONFIG
#
# Limits: root only (Postfix needs it); IPv4 loopback only; Postfix >= 3.4
# (maillog_file).  Functions that start processes must run in the test's main
# shell, not inside $(...), or the PIDs they record are lost.
#
# Inputs read by lab_start (set them before calling it):
#   LAB_POLICY_ENDPOINT  ""   no policy check (default)
#                        inet this lab's policy port: inet:127.0.0.1:$LAB_POLICY_PORT
#                        unix unix:$LAB/run/policyd.sock
#                        anything else is used verbatim (e.g. unix:private/policyd)
#   LAB_POLICY_HOOKS     "rcpt eom" (any of rcpt, data, eom)
#   LAB_POLICY_OPTS      "timeout=10s" (per-client check_policy_service settings)
#   LAB_MAIN_CF_EXTRA    lines appended to main.cf
#   LAB_TMPDIR           parent of the lab dir (default /tmp)
#   KEEP_LAB=1           lab_stop keeps the directory (its path is printed)
#   LAB_VERBOSE=1        progress on stderr
#   a shell function lab_configure_hook, if defined, runs after the config
#   files are written and before `postfix check`, with every LAB_* set.
#
# Set by lab_start: LAB LAB_ETC LAB_SPOOL LAB_MAILLOG LAB_PORT_BASE
#   LAB_SMTP_PORT LAB_SINK_OK_PORT LAB_SINK_BOUNCE_PORT LAB_SINK_DEFER_PORT
#   LAB_DOWN_PORT LAB_POLICY_PORT; lab_port 6..9 are free for the test.
# Test domains: ok.test -> accepting sink, bounce.test -> 550 at RCPT,
#   defer.test -> 450 at RCPT, down.test -> closed port, local.test -> virtual
#   maildirs under $LAB/mail; anything else -> accepting sink (relayhost).

# ---------------------------------------------------------------- internals

LAB_PORTS_PER_LAB=10
LAB_PORT_LOCKDIR=${LAB_PORT_LOCKDIR:-/tmp/policyd-lab-ports}
LAB_POSTFIX_DAEMON_DIR=${LAB_POSTFIX_DAEMON_DIR:-$(postconf -dh daemon_directory 2>/dev/null || echo /usr/lib/postfix/sbin)}

_lab_err() { printf 'lab: %s\n' "$*" >&2; }
_lab_info() { [[ ${LAB_VERBOSE:-0} == 1 ]] && printf 'lab: %s\n' "$*" >&2; return 0; }

# Milliseconds since the epoch (EPOCHREALTIME uses the locale's decimal mark).
_lab_ms() {
	local t=${EPOCHREALTIME/[.,]/}
	printf '%s\n' $((t / 1000))
}

_lab_need() {
	local c missing=()
	for c in "$@"; do
		command -v "$c" >/dev/null 2>&1 || missing+=("$c")
	done
	((${#missing[@]} == 0)) && return 0
	_lab_err "missing programs: ${missing[*]}"
	return 1
}

# Run a postfix(1) command through script(1): Postfix <= 3.7 prints fatal
# errors only when stderr is a tty (docs s.7.4 gotcha 2).  Output -> stdout.
_lab_postfix() {
	local cmd="postfix -c $LAB_ETC $*" out rc
	out=$(script -qec "$cmd" /dev/null </dev/null 2>&1)
	rc=$?
	out=${out//$'\r'/}
	[[ -n $out ]] && printf '%s\n' "$out"
	return $rc
}

# Port numbers listed as local ports of any TCP socket (listening or not).
_lab_used_ports() {
	ss -Htan 2>/dev/null | awk '{ n = split($4, a, ":"); print a[n] }' | sort -un
}

# Reserve LAB_PORTS_PER_LAB consecutive free loopback ports.  The base is
# random; a mkdir lock under LAB_PORT_LOCKDIR keeps two labs apart; locks of
# dead owners are reclaimed.  The range avoids the kernel's ephemeral ports
# when that leaves room (ephemeral ports are taken by outgoing connections).
_lab_reserve_ports() {
	local lo=${LAB_PORT_MIN:-30000} hi=${LAB_PORT_MAX:-39999} eph_lo
	read -r eph_lo _ </proc/sys/net/ipv4/ip_local_port_range || eph_lo=65536
	if ((eph_lo > lo && eph_lo - lo >= 100 * LAB_PORTS_PER_LAB)) && ((eph_lo - 1 < hi)); then
		hi=$((eph_lo - 1))
	fi
	local slots=$(((hi - lo + 1) / LAB_PORTS_PER_LAB)) try base p used owner
	mkdir -p "$LAB_PORT_LOCKDIR" || return 1
	for ((try = 0; try < 200; try++)); do
		base=$((lo + (SRANDOM % slots) * LAB_PORTS_PER_LAB))
		if ! mkdir "$LAB_PORT_LOCKDIR/$base" 2>/dev/null; then
			owner=$(cat "$LAB_PORT_LOCKDIR/$base/pid" 2>/dev/null)
			if [[ -n $owner ]] && ! kill -0 "$owner" 2>/dev/null; then
				rm -rf "${LAB_PORT_LOCKDIR:?}/$base"
			fi
			continue
		fi
		echo "$$" >"$LAB_PORT_LOCKDIR/$base/pid"
		used=" $(_lab_used_ports | tr '\n' ' ') "
		for ((p = base; p < base + LAB_PORTS_PER_LAB; p++)); do
			[[ $used == *" $p "* ]] && break
		done
		if ((p == base + LAB_PORTS_PER_LAB)); then
			LAB_PORT_BASE=$base
			return 0
		fi
		rm -rf "${LAB_PORT_LOCKDIR:?}/$base"
	done
	_lab_err "no free block of $LAB_PORTS_PER_LAB ports in $lo-$hi"
	return 1
}

_lab_release_ports() {
	[[ -n ${LAB_PORT_BASE:-} ]] || return 0
	if [[ $(cat "$LAB_PORT_LOCKDIR/$LAB_PORT_BASE/pid" 2>/dev/null) == "$$" ]]; then
		rm -rf "${LAB_PORT_LOCKDIR:?}/$LAB_PORT_BASE"
	fi
	LAB_PORT_BASE=
}

# Is someone listening on 127.0.0.1:PORT?  Optional PID: that process.
_lab_listening() {
	local port=$1 pid=${2:-} out
	out=$(ss -Htlnp "sport = :$port" 2>/dev/null) || return 1
	[[ -n $out ]] || return 1
	[[ -z $pid || $out == *"pid=$pid,"* ]]
}

_lab_listening_unix() {
	local path=$1 pid=${2:-} out
	out=$(ss -Hxlp 2>/dev/null | awk -v p="$path" '$5 == p')
	[[ -n $out ]] || return 1
	[[ -z $pid || $out == *"pid=$pid,"* ]]
}

# Wait until PID listens on ENDPOINT (inet:HOST:PORT | unix:PATH) or dies.
_lab_wait_listen() {
	local ep=$1 pid=$2 timeout_ms=$((${3:-10} * 1000)) t0
	t0=$(_lab_ms)
	while :; do
		_lab_alive "$pid" || return 2
		case $ep in
		inet:*) _lab_listening "${ep##*:}" "$pid" && return 0 ;;
		unix:*) _lab_listening_unix "${ep#unix:}" "$pid" && return 0 ;;
		*)
			_lab_err "endpoint not understood: $ep"
			return 1
			;;
		esac
		(($(_lab_ms) - t0 > timeout_ms)) && return 1
		sleep 0.05
	done
}

# Read one SMTP greeting from 127.0.0.1:PORT; 0 if it starts with 220.
_lab_banner() {
	local port=$1 line
	# shellcheck disable=SC2016 # the script is for the inner bash
	line=$(timeout 3 bash -c '
		exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
		IFS= read -r -t 2 line <&3 || exit 1
		printf "QUIT\r\n" >&3
		IFS= read -r -t 1 _ <&3
		printf "%s\n" "$line"' _ "$port" 2>/dev/null)
	[[ $line == 220* ]]
}

# Alive = exists and is not a zombie (an exited master stays a zombie until
# its parent, init, reaps it; that can take a second).
_lab_alive() {
	local st
	kill -0 "$1" 2>/dev/null || return 1
	st=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)
	[[ -n $st && $st != Z ]]
}

_lab_kill_wait() { # PID [TIMEOUT_S]: SIGTERM, wait, SIGKILL if needed.
	local pid=$1 timeout_ms=$((${2:-5} * 1000)) t0
	[[ -n $pid ]] || return 0
	kill -TERM "$pid" 2>/dev/null || {
		wait "$pid" 2>/dev/null
		return 0
	}
	t0=$(_lab_ms)
	while _lab_alive "$pid"; do
		if (($(_lab_ms) - t0 > timeout_ms)); then
			_lab_err "pid $pid ignores SIGTERM, sending SIGKILL"
			kill -KILL "$pid" 2>/dev/null
			break
		fi
		sleep 0.05
	done
	wait "$pid" 2>/dev/null
	return 0
}

# PIDs of processes whose environment names this lab's config directory
# (master and its children carry MAIL_CONFIG=$LAB_ETC).
_lab_instance_pids() {
	local f pid
	for f in /proc/[0-9]*/environ; do
		pid=${f#/proc/}
		pid=${pid%/environ}
		grep -qzxF "MAIL_CONFIG=$LAB_ETC" "$f" 2>/dev/null && echo "$pid"
	done
	return 0
}

_lab_master_pid() {
	local pid
	pid=$(awk 'NR == 1 { print $1 }' "$LAB_SPOOL/pid/master.pid" 2>/dev/null)
	[[ -n $pid ]] || return 1
	[[ $(readlink "/proc/$pid/exe" 2>/dev/null) == */master ]] || return 1
	echo "$pid"
}

# ------------------------------------------------------------ configuration

_lab_policy_restriction() {
	local ep=${LAB_POLICY_ENDPOINT:-}
	case $ep in
	"") return 0 ;;
	inet) ep=inet:127.0.0.1:$LAB_POLICY_PORT ;;
	unix) ep=unix:$LAB/run/policyd.sock ;;
	esac
	printf 'check_policy_service { %s%s }' "$ep" "${LAB_POLICY_OPTS:+, $LAB_POLICY_OPTS}"
}

# The restriction-list settings for the current LAB_POLICY_* values.
_lab_policy_params() {
	local r hooks=" ${LAB_POLICY_HOOKS:-rcpt eom} " rcpt="" data="" eom=""
	r=$(_lab_policy_restriction)
	if [[ -n $r ]]; then
		[[ $hooks == *" rcpt "* ]] && rcpt=$r
		[[ $hooks == *" data "* ]] && data=$r
		[[ $hooks == *" eom "* ]] && eom=$r
	fi
	printf 'smtpd_recipient_restrictions = %s\n' "$rcpt"
	printf 'smtpd_data_restrictions = %s\n' "$data"
	printf 'smtpd_end_of_data_restrictions = %s\n' "$eom"
}

_lab_write_config() {
	: "${LAB_POLICY_OPTS=timeout=10s}"
	cat >"$LAB_ETC/main.cf" <<EOF
# Generated by tests/integration/lab.sh for a throw-away lab instance.
compatibility_level = 3.6
queue_directory = $LAB_SPOOL
data_directory = $LAB/data
mail_owner = postfix
setgid_group = postdrop
syslog_name = postfix-lab
maillog_file = $LAB_MAILLOG
maillog_file_prefixes = $LAB
myhostname = lab.localdomain
mydomain = localdomain
myorigin = \$myhostname
mydestination =
local_transport = error:5.1.1 local delivery disabled in the lab
alias_maps =
alias_database =
biff = no
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
smtp_host_lookup = native
smtp_dns_support_level = disabled
smtp_connect_timeout = 5s
relayhost = [127.0.0.1]:$LAB_SINK_OK_PORT
transport_maps = texthash:$LAB_ETC/transport
header_checks = regexp:$LAB_ETC/header_checks
virtual_mailbox_domains = local.test
virtual_mailbox_maps = texthash:$LAB_ETC/vmailbox
virtual_mailbox_base = $LAB/mail
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
queue_run_delay = 10s
minimal_backoff_time = 10s
maximal_backoff_time = 30s
in_flow_delay = 0s
smtpd_banner = \$myhostname ESMTP lab
smtpd_authorized_xclient_hosts = 127.0.0.0/8
# Relay by network: Postfix 3.7 ignores an XCLIENT login in
# permit_sasl_authenticated (docs s.4); the listener is loopback-only.
mynetworks = 0.0.0.0/0
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
$(_lab_policy_params)
${LAB_MAIN_CF_EXTRA:-}
EOF
	cat >"$LAB_ETC/master.cf" <<EOF
# Generated by tests/integration/lab.sh: no chroot, smtpd on a lab port.
127.0.0.1:$LAB_SMTP_PORT inet n - n - - smtpd
pickup      unix  n       -       n       60      1       pickup
cleanup     unix  n       -       n       -       0       cleanup
qmgr        unix  n       -       n       300     1       qmgr
tlsmgr      unix  -       -       n       1000?   1       tlsmgr
rewrite     unix  -       -       n       -       -       trivial-rewrite
bounce      unix  -       -       n       -       0       bounce
defer       unix  -       -       n       -       0       bounce
trace       unix  -       -       n       -       0       bounce
verify      unix  -       -       n       -       1       verify
flush       unix  n       -       n       1000?   0       flush
proxymap    unix  -       -       n       -       -       proxymap
proxywrite  unix  -       -       n       -       1       proxymap
smtp        unix  -       -       n       -       -       smtp
relay       unix  -       -       n       -       -       smtp
showq       unix  n       -       n       -       -       showq
error       unix  -       -       n       -       -       error
retry       unix  -       -       n       -       -       error
discard     unix  -       -       n       -       -       discard
virtual     unix  -       n       n       -       -       virtual
anvil       unix  -       -       n       -       1       anvil
scache      unix  -       -       n       -       1       scache
postlog     unix-dgram n  -       n       -       1       postlogd
EOF
	cat >"$LAB_ETC/transport" <<EOF
ok.test      smtp:[127.0.0.1]:$LAB_SINK_OK_PORT
bounce.test  smtp:[127.0.0.1]:$LAB_SINK_BOUNCE_PORT
defer.test   smtp:[127.0.0.1]:$LAB_SINK_DEFER_PORT
down.test    smtp:[127.0.0.1]:$LAB_DOWN_PORT
EOF
	cat >"$LAB_ETC/header_checks" <<'EOF'
/^Subject:.*LAB-HOLD/     HOLD held by lab header_checks
/^Subject:.*LAB-REJECT/   REJECT 5.7.1 rejected by lab header_checks
/^Subject:.*LAB-WARN/     WARN lab header_checks warning
EOF
	printf '@local.test local/\n' >"$LAB_ETC/vmailbox"
}

# Postfix will not read a file modified within the current second: it waits
# (300 ms at a time) for the file to age, so that it does not see half of an
# edit.  Freshly generated files are therefore dated two seconds back.
_lab_age_config() {
	touch -d "@$((EPOCHSECONDS - 2))" "$LAB_ETC"/*
}

_lab_start_sink() { # NAME PORT [smtp-sink options]: records LAB_SINK_PIDS
	local name=$1 port=$2 pid
	shift 2
	smtp-sink -u nobody "$@" "127.0.0.1:$port" 64 \
		>>"$LAB/log/sink-$name.log" 2>&1 </dev/null &
	pid=$!
	LAB_SINK_PIDS+=("$pid")
	if ! _lab_wait_listen "inet:127.0.0.1:$port" "$pid" 5; then
		_lab_err "smtp-sink $name did not listen on $port:"
		cat "$LAB/log/sink-$name.log" >&2
		return 1
	fi
}

# ------------------------------------------------------------- public API

lab_port() { echo $((LAB_PORT_BASE + $1)); }

# lab_add_sink NAME N DOMAIN [smtp-sink options..]: one more smtp-sink, on
# lab_port N (6..9), that DOMAIN is routed to through transport_maps, e.g.
#   lab_add_sink blocked 6 blocked.test -f RCPT -B "554 5.7.1 Service unavailable;
#       Client host [127.0.0.1] blocked using zen.spamhaus.org"
# Call it from lab_configure_hook (before Postfix starts) or later (Postfix
# is then reloaded).  Its output goes to $LAB/log/sink-NAME.log; lab_stop
# stops it with the others.
lab_add_sink() {
	local name=$1 port domain=$3
	port=$(lab_port "$2")
	shift 3
	_lab_start_sink "$name" "$port" "$@" || return 1
	printf '%s  smtp:[127.0.0.1]:%s\n' "$domain" "$port" >>"$LAB_ETC/transport"
	_lab_age_config
	if _lab_master_pid >/dev/null; then
		lab_reload || return 1
	fi
	return 0
}

lab_start() {
	if ((EUID != 0)); then
		_lab_err "must run as root (Postfix needs it)"
		return 1
	fi
	if [[ -n ${LAB:-} ]]; then
		_lab_err "a lab is already running in $LAB"
		return 1
	fi
	_lab_need postfix postconf postqueue postsuper smtp-sink swaks script ss perl timeout || return 1
	local t0 out
	t0=$(_lab_ms)
	LAB_SINK_PIDS=()
	LAB=$(mktemp -d "${LAB_TMPDIR:-/tmp}/policyd-lab.XXXXXX") || return 1
	chmod 755 "$LAB"
	LAB_ETC=$LAB/etc
	LAB_SPOOL=$LAB/spool
	LAB_MAILLOG=$LAB/log/maillog
	LAB_LOG_MARK=0
	if ! _lab_reserve_ports; then
		_lab_remove_dir
		return 1
	fi
	LAB_SMTP_PORT=$(lab_port 0)
	LAB_SINK_OK_PORT=$(lab_port 1)
	LAB_SINK_BOUNCE_PORT=$(lab_port 2)
	LAB_SINK_DEFER_PORT=$(lab_port 3)
	LAB_DOWN_PORT=$(lab_port 4)
	LAB_POLICY_PORT=$(lab_port 5)
	export LAB LAB_ETC LAB_SPOOL LAB_MAILLOG LAB_PORT_BASE LAB_SMTP_PORT \
		LAB_SINK_OK_PORT LAB_SINK_BOUNCE_PORT LAB_SINK_DEFER_PORT \
		LAB_DOWN_PORT LAB_POLICY_PORT
	mkdir -p "$LAB_ETC" "$LAB_SPOOL" "$LAB/data" "$LAB/log" "$LAB/mail" \
		"$LAB/run" "$LAB/sink/ok" "$LAB/state"
	chown postfix: "$LAB/data"
	chown nobody: "$LAB/sink/ok"
	chown 65534:65534 "$LAB/mail"
	install -m 0644 /dev/null "$LAB_MAILLOG"
	_lab_write_config
	if declare -F lab_configure_hook >/dev/null; then
		lab_configure_hook || {
			_lab_err "lab_configure_hook failed"
			lab_stop
			return 1
		}
	fi
	_lab_age_config
	_lab_info "lab in $LAB, ports $LAB_PORT_BASE..$((LAB_PORT_BASE + LAB_PORTS_PER_LAB - 1))"

	if ! _lab_start_sink ok "$LAB_SINK_OK_PORT" -D "$LAB/sink/ok/dump" ||
		! _lab_start_sink bounce "$LAB_SINK_BOUNCE_PORT" \
			-f RCPT -B "550 5.1.1 Recipient address rejected: User unknown (lab sink)" ||
		! _lab_start_sink defer "$LAB_SINK_DEFER_PORT" \
			-r RCPT -b "450 4.2.1 Mailbox temporarily unavailable, try again later (lab sink)"; then
		lab_stop
		return 1
	fi

	if ! out=$(_lab_postfix check); then
		_lab_err "postfix check failed: $out"
		lab_stop
		return 1
	fi
	[[ -n $out ]] && _lab_info "postfix check: $out"
	# `postfix start` would repeat those checks; quick-start skips them once.
	touch "$LAB_SPOOL/quick-start"
	if ! out=$(_lab_postfix start); then
		_lab_err "postfix start failed: $out"
		tail -n 20 "$LAB_MAILLOG" >&2
		lab_stop
		return 1
	fi
	# master accepts the port even when smtpd dies at once (gotcha 3):
	# only a 220 greeting proves the instance works.
	local deadline=$(($(_lab_ms) + 15000))
	until _lab_banner "$LAB_SMTP_PORT"; do
		if (($(_lab_ms) > deadline)); then
			_lab_err "no 220 banner on 127.0.0.1:$LAB_SMTP_PORT; maillog tail:"
			tail -n 20 "$LAB_MAILLOG" >&2
			lab_stop
			return 1
		fi
		sleep 0.1
	done
	LAB_START_MS=$(($(_lab_ms) - t0))
	_lab_info "lab started in ${LAB_START_MS} ms"
	return 0
}

lab_stop() {
	[[ -n ${LAB:-} ]] || return 0
	local t0 pid pids=() rc=0 deadline
	t0=$(_lab_ms)
	[[ -n ${POLICYD_PID:-} ]] && policyd_stop >/dev/null 2>&1
	[[ -n ${LAB_FAKE_POLICY_PID:-} ]] && lab_fake_policy_stop
	if pid=$(_lab_master_pid) && _lab_alive "$pid"; then
		# What `postfix stop` does, minus its 1 s sleeps: SIGTERM to master,
		# which takes its children down with it.
		kill -TERM "$pid"
		deadline=$(($(_lab_ms) + 10000))
		while _lab_alive "$pid"; do
			if (($(_lab_ms) > deadline)); then
				_lab_err "master $pid still running, postfix abort"
				_lab_postfix abort >/dev/null
				rc=1
				break
			fi
			sleep 0.05
		done
	fi
	# Children exit when master is gone; wait for them before removing files.
	deadline=$(($(_lab_ms) + 5000))
	while mapfile -t pids < <(_lab_instance_pids) && ((${#pids[@]} > 0)); do
		if (($(_lab_ms) > deadline)); then
			_lab_err "lab processes still running: ${pids[*]}; SIGKILL"
			kill -KILL "${pids[@]}" 2>/dev/null
			rc=1
			break
		fi
		sleep 0.05
	done
	for pid in "${LAB_SINK_PIDS[@]}"; do
		_lab_kill_wait "$pid"
	done
	LAB_SINK_PIDS=()
	_lab_release_ports
	LAB_STOP_MS=$(($(_lab_ms) - t0))
	if [[ ${KEEP_LAB:-0} == 1 ]]; then
		_lab_err "KEEP_LAB=1: lab kept in $LAB"
	else
		_lab_remove_dir
	fi
	LAB=
	return $rc
}

_lab_remove_dir() {
	[[ -n ${LAB:-} && -d $LAB && $LAB == */policyd-lab.* ]] && rm -rf -- "$LAB"
}

# Stop everything started, whatever state the test is in.  Safe to repeat.
lab_cleanup() {
	lab_stop
	return 0
}

# EXIT cleanup; INT/TERM (e.g. meson's timeout) become a normal exit so the
# EXIT trap runs.
lab_install_traps() {
	trap 'lab_cleanup' EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
}

# lab_send LOGIN ADDR FROM TO[,TO...] [swaks options...]
# LOGIN: XCLIENT LOGIN (empty: none).  ADDR: XCLIENT ADDR and NAME (empty:
# the real client 127.0.0.1).  Without both no XCLIENT is sent.  Prints the
# swaks transcript; returns swaks' exit code (0, or 24 = no RCPT accepted,
# 25/26 = DATA refused, see swaks(1)).
lab_send() {
	local login=$1 addr=$2 from=$3 to=$4 args
	shift 4
	args=(--server 127.0.0.1 --port "$LAB_SMTP_PORT" --ehlo client.lab.test
		--from "$from" --to "$to" --timeout 60s
		--header "Subject: lab test from ${login:-${addr:-127.0.0.1}}")
	[[ -n $login ]] && args+=(--xclient-login "$login")
	[[ -n $addr ]] && args+=(--xclient-addr "$addr" --xclient-name "${LAB_XCLIENT_NAME:-mua.lab.test}")
	swaks "${args[@]}" "$@" </dev/null 2>&1
}

# Queue ID from a swaks transcript ("250 2.0.0 Ok: queued as ID").
lab_queue_id() {
	sed -n 's/.*queued as \([0-9A-Za-z]\+\).*/\1/p' <<<"$1" | tail -n 1
}

# Server reply lines of a transcript ("<-  250 ..." / "<** 450 ...").
lab_smtp_codes() {
	sed -n 's/^<[-*][-*]* *\([0-9][0-9][0-9][ -].*\)/\1/p' <<<"$1"
}

# Remember the current end of the maillog; lab_wait_log* look only after it.
lab_log_mark() {
	LAB_LOG_MARK=$(wc -l <"$LAB_MAILLOG")
}

_lab_log_since() { tail -n "+$((${LAB_LOG_MARK:-0} + 1))" "$LAB_MAILLOG"; }

lab_log_grep() { _lab_log_since | grep -E -- "$1"; }

# lab_wait_log REGEX [TIMEOUT_S=10]: print matching lines, 1 on timeout.
lab_wait_log() {
	lab_wait_log_count "$1" 1 "${2:-10}"
}

# lab_wait_log_count REGEX N [TIMEOUT_S=10]: wait for >= N matching lines.
lab_wait_log_count() {
	local re=$1 n=$2 deadline out
	deadline=$(($(_lab_ms) + ${3:-10} * 1000))
	while :; do
		out=$(_lab_log_since | grep -E -- "$re")
		if [[ -n $out ]] && (($(grep -c '' <<<"$out") >= n)); then
			printf '%s\n' "$out"
			return 0
		fi
		(($(_lab_ms) > deadline)) && {
			[[ -n $out ]] && printf '%s\n' "$out"
			return 1
		}
		sleep 0.1
	done
}

# lab_wait_sent QID N [TIMEOUT_S=20]: N "status=sent" delivery lines for QID.
lab_wait_sent() {
	lab_wait_log_count "]: $1: to=<[^>]*>,.* status=sent " "$2" "${3:-20}"
}

lab_queue_json() { postqueue -c "$LAB_ETC" -j; }

# Queue name (hold, deferred, active, incoming, maildrop) of QID, or nothing.
lab_queue_name() {
	lab_queue_json | grep -F "\"queue_id\": \"$1\"" |
		sed -n 's/.*"queue_name": "\([a-z]*\)".*/\1/p' | head -n 1
}

# Wait until the queue holds nothing but held mail.
lab_wait_queue_empty() {
	local deadline
	deadline=$(($(_lab_ms) + ${1:-20} * 1000))
	while lab_queue_json | grep -qv '"queue_name": "hold"'; do
		(($(_lab_ms) > deadline)) && return 1
		sleep 0.1
	done
	return 0
}

lab_flush() { postqueue -c "$LAB_ETC" -f; }

lab_reload() {
	local out lab_log_mark_reload
	lab_log_mark_reload=$(wc -l <"$LAB_MAILLOG")
	out=$(_lab_postfix reload) || {
		_lab_err "postfix reload failed: $out"
		return 1
	}
	# master logs "reload -- version ..." once it has re-read main.cf.
	local deadline=$(($(_lab_ms) + 10000))
	until tail -n "+$((lab_log_mark_reload + 1))" "$LAB_MAILLOG" | grep -q 'master\[[0-9]*\]: reload'; do
		(($(_lab_ms) > deadline)) && {
			_lab_err "no reload line in the maillog"
			return 1
		}
		sleep 0.05
	done
}

# lab_postconf 'name = value'...: edit main.cf, reload if running.
lab_postconf() {
	local out
	out=$(postconf -c "$LAB_ETC" -e "$@" 2>&1) || {
		_lab_err "postconf: $out"
		return 1
	}
	_lab_age_config
	[[ -n $(_lab_master_pid) ]] && lab_reload
	return 0
}

# lab_policy_endpoint ENDPOINT (inet, unix, none or a Postfix endpoint):
# (re)write the policy checks per LAB_POLICY_HOOKS; reloads a running lab.
lab_policy_endpoint() {
	LAB_POLICY_ENDPOINT=$1
	[[ $1 == none ]] && LAB_POLICY_ENDPOINT=
	local lines=()
	mapfile -t lines < <(_lab_policy_params)
	lab_postconf "${lines[@]}"
}

# ------------------------------------------------------ fake policy server

# A tiny policy server: answers DUNNO, or the ACTION of the first rule
# "ATTR~REGEX=>ACTION" whose attribute matches; logs every request and reply
# to $LAB/fake-policy.log.  Stands in for policyd while it does not exist.
# shellcheck disable=SC2016 # Perl source
LAB_FAKE_POLICY_PL='
use strict; use warnings; use IO::Socket::INET; use IO::Socket::UNIX; use IO::Select;
my ($listen, $logf, @rules) = @ARGV;
my ($srv, $upath);
if ($listen =~ /^inet:([^:]+):(\d+)$/) {
    $srv = IO::Socket::INET->new(LocalAddr => $1, LocalPort => $2, Listen => 64,
                                 ReuseAddr => 1) or die "listen $listen: $!\n";
} elsif ($listen =~ /^unix:(.+)$/) {
    $upath = $1; unlink $upath;
    $srv = IO::Socket::UNIX->new(Local => $upath, Listen => 64) or die "listen $listen: $!\n";
    chmod 0666, $upath;
} else { die "bad endpoint $listen\n" }
my $owner = $$;
END { unlink $upath if defined $upath && $$ == $owner }
$SIG{TERM} = $SIG{INT} = sub { exit 0 };
open my $log, ">>", $logf or die "$logf: $!\n"; $log->autoflush(1);
my $sel = IO::Select->new($srv); my %buf;
while (1) {
    for my $fh ($sel->can_read) {
        if ($fh == $srv) { my $c = $srv->accept or next; $sel->add($c); $buf{$c} = ""; next }
        my $n = sysread($fh, my $chunk, 65536);
        if (!$n) { $sel->remove($fh); delete $buf{$fh}; close $fh; next }
        $buf{$fh} .= $chunk;
        while ($buf{$fh} =~ s/\A(.*?)\n\n//s) {
            my $req = $1; my %a;
            for (split /\n/, $req) { $a{$1} = $2 if /^([^=]*)=(.*)$/ }
            my $action = "DUNNO";
            for my $r (@rules) {
                my ($k, $re, $act) = $r =~ /^([^~]+)~(.*?)=>(.*)$/ or next;
                if (($a{$k} // "") =~ /$re/) { $action = $act; last }
            }
            print $log "$req\n#reply action=$action\n\n";
            syswrite($fh, "action=$action\n\n");
        }
    }
}'

# lab_fake_policy_start ENDPOINT [RULE...]; ENDPOINT inet (this lab's
# policy port), unix ($LAB/run/policyd.sock), or inet:H:P / unix:PATH.
lab_fake_policy_start() {
	local ep=$1 rc
	shift
	case $ep in
	inet) ep=inet:127.0.0.1:$LAB_POLICY_PORT ;;
	unix) ep=unix:$LAB/run/policyd.sock ;;
	esac
	perl -e "$LAB_FAKE_POLICY_PL" "$ep" "$LAB/fake-policy.log" "$@" \
		>>"$LAB/fake-policy.err" 2>&1 </dev/null &
	LAB_FAKE_POLICY_PID=$!
	_lab_wait_listen "$ep" "$LAB_FAKE_POLICY_PID" 5
	rc=$?
	if ((rc != 0)); then
		_lab_err "fake policy server did not start on $ep:"
		cat "$LAB/fake-policy.err" >&2
		lab_fake_policy_stop
		return 1
	fi
}

lab_fake_policy_stop() {
	_lab_kill_wait "${LAB_FAKE_POLICY_PID:-}"
	LAB_FAKE_POLICY_PID=
}

# ---------------------------------------------------------------- policyd

# The listen endpoint of a policyd config ([server] listen = ...).
_policyd_listen() {
	awk '
		/^[ \t]*\[/ { sec = $0; gsub(/[][ \t]/, "", sec); next }
		sec == "server" && /^[ \t]*listen[ \t]*=/ {
			sub(/^[^=]*=[ \t]*/, ""); sub(/[ \t]*([#;].*)?$/, ""); print; exit
		}' "$1"
}

# policyd_start CONFIG: run $POLICYD -c CONFIG in the background (stderr and
# stdout appended to $LAB/policyd.log), record POLICYD_PID, wait until it
# listens.  POLICYD=fake runs the fake DUNNO server on the same endpoint.
policyd_start() {
	local conf=$1 ep rc
	ep=$(_policyd_listen "$conf")
	if [[ -z $ep ]]; then
		_lab_err "$conf: no listen = in [server]"
		return 1
	fi
	if [[ ${POLICYD:-} == fake ]]; then
		lab_fake_policy_start "$ep" || return 1
		POLICYD_PID=$LAB_FAKE_POLICY_PID
		LAB_FAKE_POLICY_PID=
		return 0
	fi
	if [[ -z ${POLICYD:-} || ! -x $POLICYD ]]; then
		_lab_err "POLICYD is not an executable: '${POLICYD:-}'"
		return 1
	fi
	printf '=== %s policyd_start %s\n' "$(date '+%T.%N')" "$conf" >>"$LAB/policyd.log"
	"$POLICYD" -c "$conf" >>"$LAB/policyd.log" 2>&1 </dev/null &
	POLICYD_PID=$!
	_lab_wait_listen "$ep" "$POLICYD_PID" "${POLICYD_START_TIMEOUT:-10}"
	rc=$?
	((rc == 0)) && return 0
	if ((rc == 2)); then
		wait "$POLICYD_PID"
		_lab_err "policyd exited with status $? before listening on $ep; log tail:"
	else
		_lab_err "policyd does not listen on $ep; log tail:"
		_lab_kill_wait "$POLICYD_PID"
	fi
	POLICYD_PID=
	tail -n 20 "$LAB/policyd.log" >&2
	return 1
}

# policyd_stop: SIGTERM, wait (10 s, then SIGKILL); returns its exit status.
policyd_stop() {
	local pid=${POLICYD_PID:-} t0 rc
	[[ -n $pid ]] || return 0
	POLICYD_PID=
	kill -TERM "$pid" 2>/dev/null
	t0=$(_lab_ms)
	while _lab_alive "$pid"; do
		if (($(_lab_ms) - t0 > ${POLICYD_STOP_TIMEOUT:-10} * 1000)); then
			_lab_err "policyd $pid did not exit on SIGTERM; SIGKILL"
			kill -KILL "$pid"
			break
		fi
		sleep 0.05
	done
	wait "$pid"
	rc=$?
	printf '=== %s policyd_stop: exit status %d\n' "$(date '+%T.%N')" "$rc" >>"$LAB/policyd.log"
	((rc == 0)) || _lab_err "policyd exited with status $rc"
	return $rc
}

# policyd_check CONFIG: `policyd -t -c CONFIG`; output on stdout, its status.
policyd_check() {
	if [[ ${POLICYD:-} == fake || -z ${POLICYD:-} ]]; then
		echo "policyd_check: no policyd binary (POLICYD='${POLICYD:-}')"
		return 127
	fi
	"$POLICYD" -t -c "$1" </dev/null 2>&1
}

# ------------------------------------------------------------ TAP helpers

# Print a TAP skip-all plan and exit 0 when the lab cannot run here.
lab_skip_unless_possible() {
	local c
	if ((EUID != 0)); then
		echo "1..0 # SKIP needs root (Postfix does)"
		exit 0
	fi
	for c in postfix postconf postqueue smtp-sink swaks script ss perl; do
		if ! command -v "$c" >/dev/null 2>&1; then
			echo "1..0 # SKIP $c is not installed (packages: postfix swaks)"
			exit 0
		fi
	done
}

TAP_N=0
TAP_FAILED=0
tap_ok() { # DESC
	TAP_N=$((TAP_N + 1))
	echo "ok $TAP_N - $1"
}
tap_not_ok() { # DESC [DIAGNOSTIC...]
	TAP_N=$((TAP_N + 1))
	TAP_FAILED=$((TAP_FAILED + 1))
	echo "not ok $TAP_N - $1"
	shift
	local l
	for l in "$@"; do
		while IFS= read -r l2; do echo "#   $l2"; done <<<"$l"
	done
}
tap_check() { # DESC COMMAND...: ok if the command succeeds (its stdout is dropped)
	local desc=$1
	shift
	if "$@" >/dev/null; then tap_ok "$desc"; else tap_not_ok "$desc"; fi
}
tap_diag() { local l; while IFS= read -r l; do echo "# $l"; done <<<"$*"; }

# ---------------------------------------------------------- subcommands

# selftest: proves the lab with the fake policy server: delivery to each
# sink, a policy DEFER and HOLD, the requests Postfix sent, a clean stop.
_lab_selftest() {
	lab_skip_unless_possible
	lab_install_traps
	echo "1..10"
	local t out qid dir ports_base
	LAB_POLICY_ENDPOINT=inet
	if ! lab_start; then
		tap_not_ok "lab starts"
		exit 1
	fi
	tap_ok "lab starts (${LAB_START_MS} ms, ports from $LAB_PORT_BASE)"
	lab_fake_policy_start inet 'recipient~^defer@=>DEFER 4.7.1 lab selftest defer' \
		'recipient~^hold@=>HOLD lab selftest hold' || exit 1

	out=$(lab_send selftest 192.0.2.10 st@example.org \
		a@ok.test,b@bounce.test,c@defer.test,d@local.test)
	qid=$(lab_queue_id "$out")
	if [[ -n $qid ]] && lab_wait_log "]: $qid: to=<a@ok.test>,.* status=sent " >/dev/null &&
		lab_wait_log "]: $qid: to=<b@bounce.test>,.* status=bounced " >/dev/null &&
		lab_wait_log "]: $qid: to=<c@defer.test>,.* status=deferred " >/dev/null &&
		lab_wait_log "]: $qid: to=<d@local.test>, relay=virtual,.* status=sent " >/dev/null; then
		tap_ok "sinks: ok.test sent, bounce.test bounced, defer.test deferred, local.test virtual"
	else
		tap_not_ok "sinks: ok.test sent, bounce.test bounced, defer.test deferred, local.test virtual" \
			"$out" "$(grep -F "$qid" "$LAB_MAILLOG")"
	fi
	if lab_wait_log "]: $qid: sender non-delivery notification: " >/dev/null; then
		tap_ok "bounce produces an NDR"
	else
		tap_not_ok "bounce produces an NDR"
	fi

	out=$(lab_send selftest "" st@example.org defer@ok.test,x@ok.test)
	qid=$(lab_queue_id "$out")
	if grep -q '^<\*\* *450 4.7.1 <defer@ok.test>: Recipient address rejected: lab selftest defer' <<<"$out" &&
		[[ -n $qid ]] && lab_wait_sent "$qid" 1 >/dev/null; then
		tap_ok "policy DEFER gives 450 4.7.1 for one recipient, the other is sent"
	else
		tap_not_ok "policy DEFER gives 450 4.7.1 for one recipient, the other is sent" "$out"
	fi

	out=$(lab_send selftest "" st@example.org hold@ok.test,y@ok.test)
	qid=$(lab_queue_id "$out")
	if [[ -n $qid && $(lab_queue_name "$qid") == hold ]]; then
		tap_ok "policy HOLD puts the message in the hold queue"
	else
		tap_not_ok "policy HOLD puts the message in the hold queue" "$out" "$(lab_queue_json)"
	fi

	if grep -q '^protocol_state=END-OF-MESSAGE$' "$LAB/fake-policy.log" &&
		grep -q '^sasl_username=selftest$' "$LAB/fake-policy.log" &&
		grep -q '^client_address=192.0.2.10$' "$LAB/fake-policy.log"; then
		tap_ok "policy server sees RCPT and END-OF-MESSAGE with XCLIENT login and address"
	else
		tap_not_ok "policy server sees RCPT and END-OF-MESSAGE with XCLIENT login and address"
	fi

	out=$(lab_send "" "" st@example.org z@ok.test --quit-after RCPT)
	if lab_wait_log 'disconnect from localhost\[127.0.0.1\]' 5 >/dev/null; then
		tap_ok "plain session without XCLIENT"
	else
		tap_not_ok "plain session without XCLIENT" "$out"
	fi

	lab_log_mark
	if lab_policy_endpoint none && out=$(lab_send "" "" st@example.org defer@ok.test) &&
		qid=$(lab_queue_id "$out") && [[ -n $qid ]] && lab_wait_sent "$qid" 1 >/dev/null; then
		tap_ok "lab_policy_endpoint none + reload removes the policy check"
	else
		tap_not_ok "lab_policy_endpoint none + reload removes the policy check" "$out"
	fi

	dir=$LAB
	ports_base=$LAB_PORT_BASE
	lab_stop
	if [[ ! -e $dir ]] && ! ss -Htln | awk -v b="$ports_base" '{ n = split($4, a, ":"); if (a[n] >= b && a[n] < b + 10) f = 1 } END { exit !f }'; then
		tap_ok "lab stops (${LAB_STOP_MS} ms), removes $dir, frees its ports"
	else
		tap_not_ok "lab stops, removes its dir, frees its ports" "$(ls -d "$dir" 2>&1)"
	fi
	if [[ -z $(LAB_ETC=$dir/etc _lab_instance_pids) ]]; then
		tap_ok "no process of the lab is left"
	else
		tap_not_ok "no process of the lab is left"
	fi
	((TAP_FAILED == 0))
}

# check-contrib DIR: the contrib/postfix snippets parse (postconf), pass
# `postfix check`, and work: Postfix asks a policy server at RCPT and
# END-OF-MESSAGE through unix:private/policyd, the inet variant, and the
# master.cf submission service.
_lab_check_contrib() {
	local src=${1:?usage: lab.sh check-contrib DIR}
	local main_snip=$src/main.cf.snippet master_snip=$src/master.cf.snippet
	local tmp out params=() line f
	lab_skip_unless_possible
	lab_install_traps
	echo "1..7"
	for f in "$main_snip" "$master_snip"; do
		[[ -r $f ]] || {
			echo "Bail out! $f not readable"
			exit 1
		}
	done

	# 1. postconf parses the snippets without warnings.
	tmp=$(mktemp -d /tmp/policyd-contrib.XXXXXX)
	cp "$main_snip" "$tmp/main.cf"
	cp "$master_snip" "$tmp/master.cf"
	out=$( (postconf -c "$tmp" -n && postconf -c "$tmp" -M && postconf -c "$tmp" -P) 2>&1)
	if [[ $? -eq 0 && $out != *warning* && $out != *fatal* ]]; then
		tap_ok "postconf -n/-M/-P parse the snippets without warnings"
	else
		tap_not_ok "postconf -n/-M/-P parse the snippets without warnings" "$out"
	fi
	mapfile -t params < <(postconf -c "$tmp" -n | grep -v '^config_directory = ')
	rm -rf "$tmp"

	# The snippet's settings go into a lab; the submission service of the
	# master.cf snippet becomes a loopback listener without TLS/SASL (the lab
	# has neither) and relays by network (XCLIENT LOGIN bug of 3.7, docs s.4).
	lab_configure_hook() {
		postconf -c "$LAB_ETC" -e "${params[@]}" || return 1
		awk -v port="$(lab_port 6)" '
			/^submission[ \t]/ { keep = 1; $1 = "127.0.0.1:" port; $5 = "n"; print; next }
			/^[^ \t#]/ { keep = 0 }
			keep && /^[ \t]+-o/ {
				if ($0 ~ /smtpd_tls_|smtpd_sasl_auth_enable|smtpd_client_restrictions/) next
				sub(/smtpd_relay_restrictions=[^ \t]*/, "smtpd_relay_restrictions=permit_mynetworks,reject")
				print
			}' "$master_snip" >>"$LAB_ETC/master.cf"
	}
	LAB_POLICY_ENDPOINT=
	if lab_start; then
		tap_ok "postfix check and start accept the snippets (lab ${LAB_START_MS} ms)"
	else
		tap_not_ok "postfix check and start accept the snippets"
		exit 1
	fi
	unset -f lab_configure_hook

	_contrib_session() { # DESC PORT: RCPT + END-OF-MESSAGE reached the policy
		local desc=$1 port=$2 log=$LAB/fake-policy.log n0 n1 n2
		n0=$(grep -c . "$log" 2>/dev/null)
		out=$(LAB_SMTP_PORT=$port lab_send contrib 192.0.2.20 c@example.org r1@ok.test,r2@ok.test)
		n1=$(tail -n "+$((${n0:-0} + 1))" "$log" | grep -c '^protocol_state=RCPT$')
		n2=$(tail -n "+$((${n0:-0} + 1))" "$log" | grep -c '^protocol_state=END-OF-MESSAGE$')
		if [[ -n $(lab_queue_id "$out") ]] && ((n1 == 2 && n2 == 1)); then
			tap_ok "$desc"
		else
			tap_not_ok "$desc" "RCPT requests: $n1, END-OF-MESSAGE requests: $n2" "$out"
		fi
	}
	if ! grep -q 'unix:private/policyd' <<<"$(postconf -c "$LAB_ETC" -h smtpd_recipient_restrictions smtpd_end_of_data_restrictions)"; then
		tap_not_ok "main.cf.snippet uses unix:private/policyd in recipient and end-of-data restrictions"
	else
		tap_ok "main.cf.snippet uses unix:private/policyd in recipient and end-of-data restrictions"
	fi
	lab_fake_policy_start "unix:$LAB_SPOOL/private/policyd" || exit 1
	_contrib_session "unix:private/policyd: Postfix asks at RCPT (x2) and END-OF-MESSAGE" "$LAB_SMTP_PORT"
	_contrib_session "master.cf submission service: RCPT and END-OF-MESSAGE" "$(lab_port 6)"
	if grep -q '^policy_context=submission$' "$LAB/fake-policy.log"; then
		tap_ok "submission requests carry policy_context=submission"
	else
		tap_not_ok "submission requests carry policy_context=submission"
	fi
	lab_fake_policy_stop

	# The inet variant: the same lists with the endpoint replaced.
	local r e
	r=$(postconf -c "$LAB_ETC" -h smtpd_recipient_restrictions)
	e=$(postconf -c "$LAB_ETC" -h smtpd_end_of_data_restrictions)
	r=${r//unix:private\/policyd/inet:127.0.0.1:$LAB_POLICY_PORT}
	e=${e//unix:private\/policyd/inet:127.0.0.1:$LAB_POLICY_PORT}
	lab_fake_policy_start inet || exit 1
	if lab_postconf "smtpd_recipient_restrictions = $r" "smtpd_end_of_data_restrictions = $e"; then
		_contrib_session "inet variant: Postfix asks at RCPT (x2) and END-OF-MESSAGE" "$LAB_SMTP_PORT"
	else
		tap_not_ok "inet variant: Postfix asks at RCPT (x2) and END-OF-MESSAGE"
	fi
	lab_stop
	((TAP_FAILED == 0))
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
	case ${1:-} in
	selftest) _lab_selftest ;;
	check-contrib) _lab_check_contrib "$2" ;;
	start)
		# Manual use: start a lab with the fake policy server, print where.
		LAB_POLICY_ENDPOINT=inet
		KEEP_LAB=1
		lab_start && lab_fake_policy_start inet && {
			echo "LAB=$LAB smtpd=127.0.0.1:$LAB_SMTP_PORT policy=$LAB_POLICY_PORT"
			echo "press Enter to stop"
			read -r _
		}
		lab_stop
		;;
	*)
		echo "usage: $0 selftest | check-contrib DIR | start" >&2
		exit 2
		;;
	esac
fi
