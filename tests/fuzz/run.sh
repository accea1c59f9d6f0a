#!/bin/sh
# tests/fuzz/run.sh - build the libFuzzer targets with clang in build-fuzz
# and run each for a bounded time on a copy of its seed corpus.
#
# Usage: tests/fuzz/run.sh [SECONDS]   (default 30 per target)
# Prints one line per target: `fuzz_request: N runs, ok` (or `CRASH ...`).
# Exits non-zero when a target crashes, leaks or times out; the crashing
# input and the log are kept in the temporary directory it names.
#
# Seed corpora: tests/fuzz/corpus/<target without fuzz_>/.  Each input
# starts with a small header the target reads first (see the comment at the
# top of the target's source).
set -eu

secs=${1:-30}
case $secs in
'' | *[!0-9]*)
	echo "usage: $0 [SECONDS]" >&2
	exit 2
	;;
esac

top=$(cd "$(dirname "$0")/../.." && pwd)
build=$top/build-fuzz
# every tests/fuzz/fuzz_*.c is a target (tests/fuzz/meson.build builds each)
targets=$(cd "$top/tests/fuzz" && ls fuzz_*.c | sed 's/\.c$//')

if [ ! -f "$build/build.ninja" ]; then
	(cd "$top" && CC=clang meson setup build-fuzz -Dfuzz=true >/dev/null)
fi
for t in $targets; do
	ninja -C "$build" "tests/fuzz/$t" >/dev/null
done

work=$(mktemp -d "${TMPDIR:-/tmp}/policyd-fuzz.XXXXXX")
status=0
for t in $targets; do
	seeds=$top/tests/fuzz/corpus/${t#fuzz_}
	corpus=$work/$t-corpus
	mkdir -p "$corpus" "$work/$t-artifacts"
	if [ -d "$seeds" ]; then
		cp "$seeds"/* "$corpus"/
	fi
	log=$work/$t.log
	if "$build/tests/fuzz/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
		-print_final_stats=1 -artifact_prefix="$work/$t-artifacts/" \
		"$corpus" >"$log" 2>&1; then
		runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
		echo "$t: ${runs:-?} runs, ok"
	else
		status=1
		echo "$t: CRASH, see $log and $work/$t-artifacts/"
		grep -m 5 -E '^==[0-9]+==ERROR|SUMMARY|runtime error|deadly signal' "$log" | sed 's/^/  /' || true
	fi
done

if [ "$status" -eq 0 ]; then
	rm -rf "$work"
fi
exit "$status"
