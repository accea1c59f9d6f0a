#!/bin/bash
# tests/integration/test_install.sh - `meson install` of the build under
# test into a temporary DESTDIR: every file where the README says, the
# unit naming the installed binary and config, the installed config
# accepted by the installed `policyd -t`, the man pages readable.  TAP.
#
# Needs: BUILD_ROOT (meson sets it), meson, PREFIX/SBINDIR/SYSCONFDIR/
# DATADIR/MANDIR as configured (meson.build passes them).
set -u
if ! command -v meson >/dev/null || [[ -z ${BUILD_ROOT:-} ]]; then
	echo "1..0 # SKIP meson or BUILD_ROOT missing"
	exit 0
fi
D=$(mktemp -d /tmp/pd-install.XXXXXX)
trap 'rm -rf "$D"' EXIT
N=0
FAILED=0
ok() {
	N=$((N + 1))
	if [[ $1 == 0 ]]; then echo "ok $N - $2"; else echo "not ok $N - $2"; FAILED=$((FAILED + 1)); fi
}
echo "1..10"
meson install -C "$BUILD_ROOT" --no-rebuild --destdir "$D" >"$D.log" 2>&1
rc=$?
ok $rc "meson install --destdir"
[[ $rc == 0 ]] || sed 's/^/# /' "$D.log" | tail -n 20
rm -f "$D.log"
for f in "$SBINDIR/policyd" "$SBINDIR/policyctl"; do
	[[ -x $D$f ]]
	ok $? "$f installed, executable"
done
for f in "$SYSCONFDIR/policyd/policyd.conf" "$DATADIR/policyd/ndr-patterns.conf" \
	"$MANDIR/man8/policyd.8" "$MANDIR/man8/policyctl.8" "$MANDIR/man5/policyd.conf.5"; do
	[[ -s $D$f ]]
	ok $? "$f installed"
done
unit=$D$PREFIX/lib/systemd/system/policyd.service
grep -q "^ExecStart=$SBINDIR/policyd -c $SYSCONFDIR/policyd/policyd.conf\$" "$unit"
ok $? "the unit starts $SBINDIR/policyd -c $SYSCONFDIR/policyd/policyd.conf"
# the installed binary checks the installed config (its paths are the live
# system's: only the syntax and values are judged)
out=$("$D$SBINDIR/policyd" -t -c "$D$SYSCONFDIR/policyd/policyd.conf" 2>&1)
ok $? "installed policyd -t accepts the installed config"
[[ $? == 0 ]] || echo "# $out"
((FAILED == 0))
