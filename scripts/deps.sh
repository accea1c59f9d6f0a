#!/bin/sh
# Installs the Debian 12 packages policyd needs to build (and, with --test,
# to run its tests: Postfix, swaks, redis-server, dnsmasq, clang for fuzzing).
# Idempotent; runs apt-get only when something is missing.
set -eu
build="build-essential meson ninja-build pkg-config libev-dev libc-ares-dev libhiredis-dev
libinih-dev libjansson-dev libmicrohttpd-dev"
test="libcmocka-dev postfix swaks redis-server redis-tools dnsmasq-base clang libclang-rt-14-dev
iproute2 util-linux procps python3 perl curl passwd chromium sqlite3 valgrind"
want="$build"
[ "${1:-}" = "--test" ] && want="$build $test"
missing=""
for p in $want; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
# Postfix: install without configuring or starting a system instance.
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
