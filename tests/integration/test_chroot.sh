#!/bin/bash
# test_chroot.sh - policyd chrooted into Postfix's queue directory (issue 7):
# swaks -> Postfix -> unix:private/policyd inside the chroot, and an inet
# listener beside it.
#
# Owns: `chroot = DIR` end to end: `policyd -t` naming a path that cannot
# work under the chroot and saying whether SIGHUP can re-read the file; the
# refusal when not started as root; /proc/PID/root pointing at DIR and the
# process running as the unprivileged user; policy answers on the unix
# listener (through Postfix) and the inet one (raw requests); counts kept in
# the state_dir inside DIR across a restart; SIGHUP refused (with a log
# line) while the config file lies outside DIR, and applied when it lies
# inside; a control socket outside DIR (bound before the chroot; its
# control_group kept across a reload, with no group database inside) and a
# lockout command inside it, run chrooted with its evidence file (a small
# static program built here with cc -static; SKIP without it).  TAP on stdout.
#
# Needs: root, POLICYD and POLICYCTL (paths; meson sets them), python3 and
# setpriv.
# Creates, if missing, the system user policyd-test-nopriv (never removed:
# it owns nothing outside the lab; test_policyctl.sh uses it too).

set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lab.sh
. "$HERE/lab.sh"

if [[ -z ${POLICYD:-} || ${POLICYD:-} == fake || -z ${POLICYCTL:-} ]]; then
	echo "1..0 # SKIP POLICYD and POLICYCTL must name the binaries"
	exit 0
fi
[[ $POLICYD == /* ]] || POLICYD=$PWD/$POLICYD
[[ $POLICYCTL == /* ]] || POLICYCTL=$PWD/$POLICYCTL
export POLICYD

lab_skip_unless_possible
for tool in python3 setpriv; do
	if ! command -v "$tool" >/dev/null; then
		echo "1..0 # SKIP $tool is not installed"
		exit 0
	fi
done
lab_install_traps
echo "1..19"

# LeakSanitizer (the ASan build of CI) reads /proc/PID/task at exit, and the
# chroot has no /proc: leaks are checked by the other tests, not here.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"

NOPRIV=policyd-test-nopriv
id "$NOPRIV" >/dev/null 2>&1 || useradd -M -r -s /usr/sbin/nologin "$NOPRIV"
NOPRIV_UID=$(id -u "$NOPRIV")
NOPRIV_GID=$(id -g "$NOPRIV")

# Postfix (not chrooted in the lab) finds private/policyd under its
# queue_directory, which is policyd's chroot.
LAB_POLICY_ENDPOINT=unix:private/policyd
LAB_POLICY_HOOKS="rcpt eom"
if ! lab_start; then
	echo "Bail out! the Postfix lab did not start"
	exit 1
fi
ROOT=$LAB_SPOOL
tap_diag "lab $LAB: chroot $ROOT, policyd unix:$ROOT/private/policyd and 127.0.0.1:$LAB_POLICY_PORT"

# write_conf FILE [REPLY]: the config; paths are outside paths under $ROOT.
write_conf() {
	cat >"$1" <<EOF
[server]
listen = inet:127.0.0.1:$LAB_POLICY_PORT
listen = unix:$ROOT/private/policyd
socket_group = postfix
socket_mode = 0660
chroot = $ROOT
state_dir = $ROOT/policyd
user = $NOPRIV
log = stderr
hooks = rcpt, eom
${EXTRA_SERVER:-}

[limit per-account-recipients]
key = sasl_username
count = recipients
rate = 2/1h
action = defer
reply = ${2:-Too many recipients}
${EXTRA_SECTIONS:-}
EOF
}
CONF=$LAB/policyd.conf # outside the chroot
write_conf "$CONF"

MUA=198.51.100.7
# send LOGIN TO: the server's reply to RCPT TO:<TO> in $R, transcript in $OUT
send() {
	OUT=$(lab_send "$1" "$MUA" "$1@example.org" "$2")
	R=$(awk -v a="RCPT TO:<$2>" '
		index($0, a) { want = 1; next }
		want && /^<[-*]/ { sub(/^<[-*]+ */, ""); print; exit }' <<<"$OUT")
}
# inet_ask LOGIN: policyd's raw answer to one RCPT request on the inet listener
inet_ask() {
	python3 - "$LAB_POLICY_PORT" "$1" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
s.sendall(("request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
           "client_address=198.51.100.7\nsasl_username=%s\nsender=%s@example.org\n"
           "recipient=x@ok.test\nrecipient_count=0\ninstance=chroot-test\n\n"
           % (sys.argv[2], sys.argv[2])).encode())
b = b""
while not b.endswith(b"\n\n"):
    c = s.recv(4096)
    if not c:
        break
    b += c
print(b.decode().strip())
PY
}

# 1-2. policyd -t: the chroot and whether SIGHUP can re-read the file; a
# path that cannot work under the chroot is named.
out=$(policyd_check "$CONF")
rc=$?
if ((rc == 0)) && [[ $out == *"chroot $ROOT (SIGHUP is refused: $CONF lies outside it"* ]]; then
	tap_ok "policyd -t accepts the chroot config and says SIGHUP will be refused"
else
	tap_not_ok "policyd -t accepts the chroot config and says SIGHUP will be refused" "exit $rc: $out"
fi
sed "s#^state_dir = .*#state_dir = $LAB/state#" "$CONF" >"$LAB/bad.conf"
out=$(policyd_check "$LAB/bad.conf")
rc=$?
if ((rc == 1)) && [[ $out == *"state_dir = $LAB/state lies outside chroot $ROOT"* ]]; then
	tap_ok "policyd -t names a state_dir outside the chroot"
else
	tap_not_ok "policyd -t names a state_dir outside the chroot" "exit $rc: $out"
fi

# 3. not root: refused with a clear message, nothing started
chmod 0644 "$CONF"
out=$(setpriv --reuid="$NOPRIV_UID" --regid="$NOPRIV_GID" --clear-groups \
	"$POLICYD" -c "$CONF" 2>&1 </dev/null)
rc=$?
if ((rc == 1)) && [[ $out == *"chroot = $ROOT needs policyd to start as root"* ]]; then
	tap_ok "started as a non-root user, policyd refuses the chroot with a clear error"
else
	tap_not_ok "started as a non-root user, policyd refuses the chroot with a clear error" "exit $rc: $out"
fi

# 4-7. chrooted, as the unprivileged user
if policyd_start "$CONF"; then
	tap_ok "policyd starts chrooted into $ROOT"
else
	tap_not_ok "policyd starts chrooted into $ROOT" "$(tail -n 20 "$LAB/policyd.log")"
fi
root=$(readlink "/proc/${POLICYD_PID:-0}/root" 2>&1)
if [[ $root == "$(realpath "$ROOT")" ]]; then
	tap_ok "/proc/PID/root points at the chroot"
else
	tap_not_ok "/proc/PID/root points at the chroot" "root: $root"
fi
ids=$(awk '/^(Uid|Gid):/ { print $1, $2, $3, $4, $5 }' "/proc/${POLICYD_PID:-0}/status" 2>&1)
if [[ $ids == "Uid: $NOPRIV_UID $NOPRIV_UID $NOPRIV_UID $NOPRIV_UID"*"Gid: $NOPRIV_GID $NOPRIV_GID $NOPRIV_GID $NOPRIV_GID" ]]; then
	tap_ok "policyd runs as $NOPRIV (real, effective, saved and fs ids)"
else
	tap_not_ok "policyd runs as $NOPRIV (real, effective, saved and fs ids)" "$ids"
fi
send alice a1@ok.test
if [[ $R == 250* ]] && grep -q 'principal=alice .*verdict=DUNNO' "$LAB/policyd.log"; then
	tap_ok "Postfix asks policyd on unix:private/policyd inside the chroot: alice's 1st recipient accepted"
else
	tap_not_ok "Postfix asks policyd on unix:private/policyd inside the chroot: alice's 1st recipient accepted" \
		"reply: $R" "$(tail -n 5 "$LAB/policyd.log")" "$(tail -n 5 "$LAB_MAILLOG")"
fi

# 8. the inet listener answers too
out=$(inet_ask bob 2>&1)
if [[ $out == "action=DUNNO" ]]; then
	tap_ok "the inet listener answers a policy request (bob: DUNNO)"
else
	tap_not_ok "the inet listener answers a policy request (bob: DUNNO)" "$out"
fi

# 9. SIGHUP with the file outside the chroot: refused with a log line,
# policyd keeps answering
kill -HUP "${POLICYD_PID:-0}"
for _ in $(seq 50); do
	grep -q 'reload refused' "$LAB/policyd.log" && break
	sleep 0.1
done
out=$(inet_ask carol 2>&1)
if grep -q "error: reload refused: $CONF lies outside chroot $ROOT and cannot be read again; restart policyd" "$LAB/policyd.log" &&
	[[ $out == "action=DUNNO" ]]; then
	tap_ok "SIGHUP with the file outside the chroot is refused with a log line; policyd keeps answering"
else
	tap_not_ok "SIGHUP with the file outside the chroot is refused with a log line; policyd keeps answering" \
		"answer: $out" "$(tail -n 5 "$LAB/policyd.log")"
fi

# 10. a graceful stop saves the state inside the chroot, owned by the user
policyd_stop
rc=$?
owner=$(stat -c %U "$ROOT/policyd" 2>&1)
if ((rc == 0)) && [[ $owner == "$NOPRIV" ]] && [[ -n $(ls -A "$ROOT/policyd" 2>/dev/null) ]]; then
	tap_ok "SIGTERM: exit 0, the state is in $ROOT/policyd, owned by $NOPRIV"
else
	tap_not_ok "SIGTERM: exit 0, the state is in $ROOT/policyd, owned by $NOPRIV" \
		"exit $rc, owner $owner" "$(ls -la "$ROOT/policyd" 2>&1)"
fi

# 11-14. restart with the file inside the chroot: counts kept, SIGHUP works;
# now with a control socket outside the chroot and, when a static program
# can be built, a lockout command inside it
mkdir -p "$ROOT/etc/policyd" "$ROOT/bin" "$ROOT/hook-out"
chown "$NOPRIV" "$ROOT/hook-out"
cat >"$LAB/lock.c" <<'C'
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv)
{
	const char *ev = getenv("POLICYD_EVIDENCE_FILE");
	FILE *o = fopen("/hook-out/ran", "a"), *e = ev ? fopen(ev, "r") : NULL;
	if (o == NULL)
		return 3;
	fprintf(o, "argc=%d argv0=%s account=%s evidence=%s readable=%s\n", argc, argv[0],
	        getenv("POLICYD_ACCOUNT"), ev ? ev : "-", e ? "yes" : "no");
	return fclose(o) != 0;
}
C
HAVE_LOCK=0
if cc -static -O1 -o "$ROOT/bin/lock" "$LAB/lock.c" 2>"$LAB/cc.log"; then
	HAVE_LOCK=1
	EXTRA_SECTIONS="[flags]
lockout_command = $ROOT/bin/lock"
fi
EXTRA_SERVER="control = unix:$LAB/run/control.sock
control_group = postfix"
CONF=$ROOT/etc/policyd/policyd.conf
write_conf "$CONF"
chmod 0644 "$CONF"
out=$(policyd_check "$CONF")
if [[ $out == *"chroot $ROOT (SIGHUP re-reads $CONF inside it)"* ]]; then
	tap_ok "policyd -t: with the file under the chroot, SIGHUP re-reads it"
else
	tap_not_ok "policyd -t: with the file under the chroot, SIGHUP re-reads it" "$out"
fi
if policyd_start "$CONF"; then
	tap_ok "policyd restarts chrooted, the config file inside the chroot"
else
	tap_not_ok "policyd restarts chrooted, the config file inside the chroot" "$(tail -n 20 "$LAB/policyd.log")"
fi
send alice a2@ok.test
r2=$R
send alice a3@ok.test
if [[ $r2 == 250* && $R == "450 4.7.1 <a3@ok.test>: Recipient address rejected: Too many recipients"* ]]; then
	tap_ok "counts kept across the restart: alice's 2nd recipient accepted, the 3rd deferred (2/1h)"
else
	tap_not_ok "counts kept across the restart: alice's 2nd recipient accepted, the 3rd deferred (2/1h)" \
		"2nd: $r2" "3rd: $R"
fi
write_conf "$CONF" "Slow down, reloaded"
kill -HUP "${POLICYD_PID:-0}"
for _ in $(seq 50); do
	grep -q "event=reload config=$CONF" "$LAB/policyd.log" && break
	sleep 0.1
done
send alice a4@ok.test
if grep -q "event=reload config=$CONF" "$LAB/policyd.log" &&
	[[ $R == "450 4.7.1 <a4@ok.test>: Recipient address rejected: Slow down, reloaded"* ]]; then
	tap_ok "SIGHUP re-reads the file inside the chroot: the new reply text is used"
else
	tap_not_ok "SIGHUP re-reads the file inside the chroot: the new reply text is used" \
		"reply: $R" "$(grep -E 'reload|error' "$LAB/policyd.log" | tail -n 5)"
fi

# 15-16. policyctl over a control socket outside the chroot; the lockout
# command runs inside it, as the user, with its evidence file
out=$("$POLICYCTL" -c "$CONF" flag mallory --reason "chroot test" 2>&1)
rc=$?
if ((rc == 0)); then
	tap_ok "policyctl flags an account through the control socket bound outside the chroot"
else
	tap_not_ok "policyctl flags an account through the control socket bound outside the chroot" \
		"exit $rc: $out"
fi
if ((HAVE_LOCK == 0)); then
	tap_ok "# SKIP cc -static cannot build the lockout command: $(head -n 1 "$LAB/cc.log")"
else
	for _ in $(seq 50); do
		grep -q 'event=hook .*account=mallory .*result=' "$LAB/policyd.log" && break
		sleep 0.1
	done
	ran=$(cat "$ROOT/hook-out/ran" 2>&1)
	if [[ $ran =~ ^argc=1\ argv0=/bin/lock\ account=mallory\ evidence=/policyd/hooks/[^\ ]+\.evidence\ readable=yes$ ]] &&
		grep -q 'event=hook .*account=mallory .*exit=0 .*result=done' "$LAB/policyd.log"; then
		tap_ok "the lockout command runs inside the chroot (as /bin/lock) and reads its evidence file"
	else
		tap_not_ok "the lockout command runs inside the chroot (as /bin/lock) and reads its evidence file" \
			"ran: $ran" "$(grep -E 'hook|flag' "$LAB/policyd.log" | tail -n 5)"
	fi
fi

# 17. a reloaded file naming a path outside the chroot is refused, the
# running config kept
sed -i "s#^state_dir = .*#state_dir = $LAB/state#" "$CONF"
kill -HUP "${POLICYD_PID:-0}"
for _ in $(seq 50); do
	grep -q 'reload failed' "$LAB/policyd.log" && break
	sleep 0.1
done
out=$(inet_ask dave 2>&1)
if grep -q "reload failed, keeping the running configuration: .*state_dir = $LAB/state lies outside chroot $ROOT" "$LAB/policyd.log" &&
	[[ $out == "action=DUNNO" ]]; then
	tap_ok "a reload naming a state_dir outside the chroot fails with the path named; policyd keeps answering"
else
	tap_not_ok "a reload naming a state_dir outside the chroot fails with the path named; policyd keeps answering" \
		"answer: $out" "$(tail -n 5 "$LAB/policyd.log")"
fi

# 18. stop: exit 0
if policyd_stop; then
	tap_ok "SIGTERM: policyd exits 0"
else
	tap_not_ok "SIGTERM: policyd exits 0" "$(tail -n 10 "$LAB/policyd.log")"
fi

# 19. no error or warning was logged other than the ones provoked above
bad=$(grep -E 'policyd: (error|warning):' "$LAB/policyd.log" |
	grep -vE 'reload refused|reload failed|event=flag account=mallory')
if [[ -z $bad ]]; then
	tap_ok "no other error or warning in policyd's log"
else
	tap_not_ok "no other error or warning in policyd's log" "$bad"
fi

lab_stop
exit $((TAP_FAILED > 0))
