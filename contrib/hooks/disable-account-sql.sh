#!/bin/sh
# disable-account-sql.sh - policyd lockout hook: disable a flagged account in
# the SQL table that Dovecot (password_query) and Postfix (maps) read.
#
# Idempotent on the flag id (POLICYD_FLAG_ID, the idempotency key): the first
# run for a flag disables the account and records the flag id in the table
# policyd_lockouts, in one transaction; any later run for the same flag id
# (a retry after a crash or a failure) changes nothing, even if an admin has
# re-enabled the account meanwhile.  Exit 0: done (or already done);
# non-zero: policyd retries (lockout_retries, lockout_backoff).
#
# policyd runs it without a shell and with a clean environment (PATH and the
# POLICYD_* variables only), so settings come from arguments, or from a
# config file of shell variables (/etc/policyd/lockout-sql.conf by default):
#   --backend sqlite3|mysql|psql   (SQL_BACKEND, default sqlite3)
#   --db PATH|NAME|CONNINFO        (SQL_DB: sqlite3 file, mysql database, psql conninfo;
#                                   default /var/lib/mail/users.sqlite)
#   --table users --key email --active active   (SQL_TABLE, SQL_KEY, SQL_ACTIVE)
#   --mysql-defaults FILE          (MYSQL_DEFAULTS: [client] user/password/host)
#   --kick                         (DOVEADM_KICK=1: also `doveadm kick` its sessions)
#   --config FILE
# e.g. in policyd.conf:
#   lockout_command = /usr/local/lib/policyd/disable-account-sql.sh
#   lockout_args = --backend mysql --db mail --mysql-defaults /etc/policyd/my.cnf
# or, to pass variables without a shell: lockout_command = /usr/bin/env,
#   lockout_args = SQL_BACKEND=psql SQL_DB=dbname=mail /usr/local/lib/policyd/disable-account-sql.sh
#
# Schema (sqlite3; the mysql/psql one is the same with VARCHAR/TIMESTAMP):
#   CREATE TABLE users (
#     email    TEXT PRIMARY KEY,          -- the login: Dovecot user, Postfix sasl_username
#     password TEXT NOT NULL,
#     active   INTEGER NOT NULL DEFAULT 1 -- 0: disabled
#   );
#   CREATE TABLE policyd_lockouts (       -- created by this script when missing
#     flag_id   TEXT PRIMARY KEY,         -- the idempotency key
#     account   TEXT NOT NULL,
#     reason    TEXT,
#     locked_at TEXT NOT NULL
#   );
# Dovecot: password_query = SELECT email AS user, password FROM users
#                           WHERE email = '%u' AND active = 1
# Postfix (e.g. smtpd_sender_login_maps, virtual_mailbox_maps):
#   query = SELECT email FROM users WHERE email = '%s' AND active = 1
set -u

SQL_BACKEND=${SQL_BACKEND:-sqlite3}
SQL_DB=${SQL_DB:-/var/lib/mail/users.sqlite}
SQL_TABLE=${SQL_TABLE:-users}
SQL_KEY=${SQL_KEY:-email}
SQL_ACTIVE=${SQL_ACTIVE:-active}
MYSQL_DEFAULTS=${MYSQL_DEFAULTS:-}
DOVEADM_KICK=${DOVEADM_KICK:-0}
CONFIG=/etc/policyd/lockout-sql.conf

die() { echo "disable-account-sql: $1"; exit "${2:-1}"; }

# a config file first (if any), then the arguments override it
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
	--backend) SQL_BACKEND=${2:?}; shift ;;
	--db) SQL_DB=${2:?}; shift ;;
	--table) SQL_TABLE=${2:?}; shift ;;
	--key) SQL_KEY=${2:?}; shift ;;
	--active) SQL_ACTIVE=${2:?}; shift ;;
	--mysql-defaults) MYSQL_DEFAULTS=${2:?}; shift ;;
	--kick) DOVEADM_KICK=1 ;;
	--config) shift ;;
	*) die "unknown argument '$1'" 2 ;;
	esac
	shift
done

ACCOUNT=${POLICYD_ACCOUNT:-}
FLAG_ID=${POLICYD_FLAG_ID:-}
{ [ -n "$ACCOUNT" ] && [ -n "$FLAG_ID" ]; } || die "POLICYD_ACCOUNT and POLICYD_FLAG_ID must be set (run by policyd)" 2

# Values go into SQL text: accept only what a login and a flag id can be.
printf '%s' "$ACCOUNT" | grep -Eq '^[A-Za-z0-9._%+=@-]{1,320}$' ||
	die "refusing unsafe account name (only letters, digits and ._%+=@- allowed)" 2
printf '%s' "$FLAG_ID" | grep -Eq '^[A-Za-z0-9._-]{1,64}$' || die "refusing unsafe flag id" 2
for n in "$SQL_TABLE" "$SQL_KEY" "$SQL_ACTIVE"; do
	printf '%s' "$n" | grep -Eq '^[A-Za-z_][A-Za-z0-9_]{0,63}$' || die "bad identifier '$n'" 2
done
# the reason: printable, no quotes or backslashes, 200 bytes
REASON=$(printf '%s' "${POLICYD_REASON:-}" | tr -c '[:print:]' ' ' | tr "'\\\\" '  ' | cut -c1-200)

case $SQL_BACKEND in
sqlite3)
	command -v sqlite3 >/dev/null || die "sqlite3 is not installed"
	[ -f "$SQL_DB" ] || die "$SQL_DB: no such database"
	sql() { sqlite3 -batch -bail "$SQL_DB" "$1"; }
	NOW="datetime('now')"
	CREATE="CREATE TABLE IF NOT EXISTS policyd_lockouts (flag_id TEXT PRIMARY KEY, account TEXT NOT NULL, reason TEXT, locked_at TEXT NOT NULL);"
	BEGIN="BEGIN IMMEDIATE;"
	INSERT="INSERT OR IGNORE INTO policyd_lockouts (flag_id, account, reason, locked_at)"
	;;
mysql)
	command -v mysql >/dev/null || die "mysql client is not installed"
	sql() {
		if [ -n "$MYSQL_DEFAULTS" ]; then
			mysql --defaults-extra-file="$MYSQL_DEFAULTS" -N -B "$SQL_DB" -e "$1"
		else
			mysql -N -B "$SQL_DB" -e "$1"
		fi
	}
	NOW="NOW()"
	CREATE="CREATE TABLE IF NOT EXISTS policyd_lockouts (flag_id VARCHAR(64) PRIMARY KEY, account VARCHAR(320) NOT NULL, reason VARCHAR(255), locked_at DATETIME NOT NULL);"
	BEGIN="START TRANSACTION;"
	INSERT="INSERT IGNORE INTO policyd_lockouts (flag_id, account, reason, locked_at)"
	;;
psql)
	command -v psql >/dev/null || die "psql is not installed"
	sql() { psql -X -q -t -A -v ON_ERROR_STOP=1 "$SQL_DB" -c "$1"; }
	NOW="now()"
	CREATE="CREATE TABLE IF NOT EXISTS policyd_lockouts (flag_id VARCHAR(64) PRIMARY KEY, account VARCHAR(320) NOT NULL, reason VARCHAR(255), locked_at TIMESTAMP NOT NULL);"
	BEGIN="BEGIN;"
	INSERT="INSERT INTO policyd_lockouts (flag_id, account, reason, locked_at)"
	;;
*) die "unknown backend '$SQL_BACKEND' (sqlite3, mysql or psql)" 2 ;;
esac
CONFLICT=
[ "$SQL_BACKEND" = psql ] && CONFLICT=" ON CONFLICT (flag_id) DO NOTHING"

sql "$CREATE" >/dev/null || die "cannot create policyd_lockouts in $SQL_DB"
done_before=$(sql "SELECT count(*) FROM policyd_lockouts WHERE flag_id = '$FLAG_ID';") ||
	die "cannot read policyd_lockouts in $SQL_DB"
if [ "${done_before:-0}" != 0 ]; then
	echo "already done: $ACCOUNT for flag $FLAG_ID (attempt ${POLICYD_ATTEMPT:-?})"
	exit 0
fi
known=$(sql "SELECT count(*) FROM $SQL_TABLE WHERE $SQL_KEY = '$ACCOUNT';") ||
	die "cannot read $SQL_TABLE in $SQL_DB"
# One transaction: the account is disabled only by the first run of this flag.
sql "$BEGIN
UPDATE $SQL_TABLE SET $SQL_ACTIVE = 0 WHERE $SQL_KEY = '$ACCOUNT'
  AND NOT EXISTS (SELECT 1 FROM policyd_lockouts WHERE flag_id = '$FLAG_ID');
$INSERT VALUES ('$FLAG_ID', '$ACCOUNT', '$REASON', $NOW)$CONFLICT;
COMMIT;" >/dev/null || die "could not disable $ACCOUNT in $SQL_DB"

if [ "$DOVEADM_KICK" = 1 ] && command -v doveadm >/dev/null; then
	doveadm kick "$ACCOUNT" >/dev/null 2>&1 || true
fi
if [ "${known:-0}" = 0 ]; then
	echo "no such account in $SQL_TABLE: $ACCOUNT (flag $FLAG_ID recorded)"
else
	echo "disabled $ACCOUNT (flag $FLAG_ID)"
fi
exit 0
