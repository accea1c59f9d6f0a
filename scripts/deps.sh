#!/bin/sh
# Installs the Debian 12 packages policyd needs to build (and, with --test,
# to run its tests: Postfix, swaks, redis-server, dnsmasq, clang for fuzzing;
# with --bench, the peers tests/bench/peers.sh compares policyd with:
# postfwd, policyd-rate-limit, mtpolicyd, and redis-server, sqlite3).
# Idempotent; runs apt-get only when something is missing.  --bench installs
# the peers without starting their system services (a temporary
# /usr/sbin/policy-rc.d refuses every start); CI (--test) never installs them.
set -eu
build="build-essential meson ninja-build pkg-config libev-dev libc-ares-dev libhiredis-dev
libinih-dev libjansson-dev libmicrohttpd-dev"
test="libcmocka-dev postfix swaks redis-server redis-tools dnsmasq-base clang libclang-rt-14-dev
iproute2 util-linux procps python3 perl curl passwd chromium sqlite3 valgrind"
bench="postfwd policyd-rate-limit mtpolicyd redis-server redis-tools sqlite3 iproute2 procps
util-linux"
mode="${1:-}"
case "$mode" in
"") want="$build" ;;
--test) want="$build $test" ;;
--bench) want="$build $bench" ;;
*)
	echo "deps.sh: unknown argument '$mode' (use --test or --bench)" >&2
	exit 2
	;;
esac
missing=""
for p in $want; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
# Postfix: install without configuring or starting a system instance.
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
if [ "$mode" = --bench ]; then
	# No system service may start: invoke-rc.d asks policy-rc.d, and 101
	# means "action forbidden".  An existing policy-rc.d is kept and restored.
	rcd=/usr/sbin/policy-rc.d
	saved=""
	if [ -e "$rcd" ]; then
		saved=$(mktemp /tmp/policy-rc.d.XXXXXX)
		$SUDO cp -p "$rcd" "$saved"
	fi
	restore_rcd() {
		if [ -n "$saved" ]; then
			$SUDO mv -f "$saved" "$rcd"
		else
			$SUDO rm -f "$rcd"
		fi
	}
	trap restore_rcd EXIT
	trap 'exit 130' INT TERM HUP
	printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$rcd" >/dev/null
	$SUDO chmod 755 "$rcd"
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
if [ "$mode" = --bench ]; then
	# Should a system instance of a package installed just now have started
	# anyway (a maintainer script without invoke-rc.d), stop it by the PID in
	# its pidfile, once that PID is seen to run that program.
	for p in $missing; do
		case "$p" in
		postfwd) pfs="/run/postfwd.pid /run/postfwd/postfwd.pid /var/tmp/postfwd2-master.pid" ;;
		policyd-rate-limit) pfs="/run/policyd-rate-limit/policyd-rate-limit.pid" ;;
		mtpolicyd) pfs="/run/mtpolicyd/mtpolicyd.pid" ;;
		redis-server) pfs="/run/redis/redis-server.pid" ;;
		*) continue ;;
		esac
		for pf in $pfs; do
			[ -s "$pf" ] || continue
			pid=$(tr -dc 0-9 <"$pf")
			[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || continue
			tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "${p%-server}" || continue
			echo "deps.sh: $p's system service started anyway (pid $pid, $pf): stopping it" >&2
			$SUDO kill "$pid" || true
		done
	done
fi
