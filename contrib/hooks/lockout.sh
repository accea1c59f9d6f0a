#!/bin/sh
# lockout.sh - policyd lockout hook running both examples: disable the
# account in SQL, then mail the user a notice.  Both are idempotent on
# POLICYD_FLAG_ID, so when either fails (exit non-zero) policyd's retry runs
# both again safely.  Arguments: none; configure the two scripts through
# /etc/policyd/lockout-sql.conf and /etc/policyd/notify-user.conf.
#   lockout_command = /usr/local/lib/policyd/lockout.sh
set -u
HERE=$(dirname "$0")
out1=$("$HERE/disable-account-sql.sh" 2>&1)
rc1=$?
out2=$("$HERE/notify-user.sh" 2>&1)
rc2=$?
# the first line is what policyd keeps with the flag
echo "sql: $(printf '%s' "$out1" | head -n 1); notice: $(printf '%s' "$out2" | head -n 1)"
[ "$rc1" = 0 ] && [ "$rc2" = 0 ]
