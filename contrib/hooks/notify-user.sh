#!/bin/sh
# notify-user.sh - policyd lockout hook: mail the flagged user a notice that
# the account was suspended, why, and whom to contact; through the local
# /usr/sbin/sendmail (Postfix pickup: the policy service is not asked).
#
# Idempotent on the flag id (POLICYD_FLAG_ID): a marker file per flag id in
# the state directory is written once the notice is handed to sendmail, and a
# later run for the same flag (a retry after a crash or a failure) sends
# nothing.  A crash between sendmail and the marker may send the notice twice
# (better twice than never).  Exit 0: sent (or sent before); non-zero: policyd
# retries.
#
# policyd runs it without a shell and with a clean environment, so settings
# come from arguments or a config file of shell variables
# (/etc/policyd/notify-user.conf by default):
#   --from ADDRESS      (NOTIFY_FROM, default postmaster@$(hostname -f))
#   --support TEXT      (NOTIFY_SUPPORT, e.g. "support@example.org or +1 555 0100")
#   --domain DOMAIN     (NOTIFY_DOMAIN: for logins without '@', mail LOGIN@DOMAIN)
#   --state-dir DIR     (NOTIFY_STATE, default /var/lib/policyd/notify-sent)
#   --sendmail PATH     (SENDMAIL, default /usr/sbin/sendmail)
#   --config FILE
set -u

NOTIFY_FROM=${NOTIFY_FROM:-}
NOTIFY_SUPPORT=${NOTIFY_SUPPORT:-your mail administrators}
NOTIFY_DOMAIN=${NOTIFY_DOMAIN:-}
NOTIFY_STATE=${NOTIFY_STATE:-/var/lib/policyd/notify-sent}
SENDMAIL=${SENDMAIL:-/usr/sbin/sendmail}
CONFIG=/etc/policyd/notify-user.conf

die() { echo "notify-user: $1"; exit "${2:-1}"; }

prev=
for a in "$@"; do
	[ "$prev" = --config ] && CONFIG=$a
	prev=$a
done
if [ -r "$CONFIG" ]; then
	# shellcheck disable=SC1090
	. "$CONFIG"
fi
while [ $# -gt 0 ]; do
	case $1 in
	--from) NOTIFY_FROM=${2:?}; shift ;;
	--support) NOTIFY_SUPPORT=${2:?}; shift ;;
	--domain) NOTIFY_DOMAIN=${2:?}; shift ;;
	--state-dir) NOTIFY_STATE=${2:?}; shift ;;
	--sendmail) SENDMAIL=${2:?}; shift ;;
	--config) shift ;;
	*) die "unknown argument '$1'" 2 ;;
	esac
	shift
done

ACCOUNT=${POLICYD_ACCOUNT:-}
FLAG_ID=${POLICYD_FLAG_ID:-}
{ [ -n "$ACCOUNT" ] && [ -n "$FLAG_ID" ]; } || die "POLICYD_ACCOUNT and POLICYD_FLAG_ID must be set (run by policyd)" 2
printf '%s' "$FLAG_ID" | grep -Eq '^[A-Za-z0-9._-]{1,64}$' || die "refusing unsafe flag id" 2

case $ACCOUNT in
*@*) RCPT=$ACCOUNT ;;
*)
	[ -n "$NOTIFY_DOMAIN" ] || die "account '$ACCOUNT' is not an address and no --domain is set" 2
	RCPT=$ACCOUNT@$NOTIFY_DOMAIN
	;;
esac
# an address only: no header or command-line injection through the login
printf '%s' "$RCPT" | grep -Eq '^[A-Za-z0-9._%+=-]{1,64}@[A-Za-z0-9.-]{1,253}$' ||
	die "refusing unsafe recipient address" 2
[ -n "$NOTIFY_FROM" ] || NOTIFY_FROM=postmaster@$(hostname -f 2>/dev/null || hostname)
printf '%s' "$NOTIFY_FROM" | grep -Eq '^[A-Za-z0-9._%+=-]{1,64}@[A-Za-z0-9.-]{1,253}$' ||
	die "bad --from address" 2
REASON=$(printf '%s' "${POLICYD_REASON:-unusual sending activity}" | tr -c '[:print:]' ' ' | cut -c1-200)
SUPPORT=$(printf '%s' "$NOTIFY_SUPPORT" | tr -c '[:print:]' ' ' | cut -c1-200)

mkdir -p "$NOTIFY_STATE" 2>/dev/null && chmod 700 "$NOTIFY_STATE" 2>/dev/null
{ [ -d "$NOTIFY_STATE" ] && [ -w "$NOTIFY_STATE" ]; } || die "$NOTIFY_STATE: not a writable directory"
MARK=$NOTIFY_STATE/$FLAG_ID
if [ -e "$MARK" ]; then
	echo "already notified $RCPT for flag $FLAG_ID"
	exit 0
fi
[ -x "$SENDMAIL" ] || die "$SENDMAIL: not executable"

{
	echo "From: Mail administrators <$NOTIFY_FROM>"
	echo "To: <$RCPT>"
	echo "Subject: Your mail account has been suspended"
	echo "Date: $(LC_ALL=C date -R)"
	echo "Auto-Submitted: auto-generated"
	echo "MIME-Version: 1.0"
	echo "Content-Type: text/plain; charset=UTF-8"
	echo "Content-Transfer-Encoding: 8bit"
	echo
	echo "Hello,"
	echo
	echo "your mail account $ACCOUNT has been suspended because of unusual"
	echo "sending activity, which often means that its password has been stolen:"
	echo
	echo "    $REASON"
	echo
	echo "Mail you send is held back until the account is checked. Please"
	echo "contact $SUPPORT; they will help you choose a new password and"
	echo "restore the account. Please quote this reference: $FLAG_ID"
	echo
	echo "-- "
	echo "This message was sent automatically."
} | "$SENDMAIL" -i -f "$NOTIFY_FROM" -- "$RCPT" || die "sendmail failed for $RCPT"

: >"$MARK" || die "sent, but cannot write $MARK"
echo "notified $RCPT (flag $FLAG_ID)"
exit 0
