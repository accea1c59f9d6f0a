#!/bin/bash
# Installs what the tests need, builds policyd twice (plain -Werror and
# ASan+UBSan), runs every test (unit, integration against a real Postfix,
# fuzzing for a bounded time) and prints `N passed, N failed` last.
# Exit status 0 only when nothing failed.  Usage: scripts/test.sh [--quick]
#   FUZZ_SECONDS=N  seconds per fuzz target (default 30)
set -u
cd "$(dirname "$0")/.."
top=$(pwd)
quick=0
[ "${1:-}" = "--quick" ] && quick=1
passed=0
failed=0
failures=()

sh scripts/deps.sh --test || { echo "installing packages failed"; echo "0 passed, 1 failed"; exit 1; }

# count meson's results from its JSON log
count_meson() { # builddir label
	local log="$1/meson-logs/testlog.json"
	[ -f "$log" ] || { failed=$((failed + 1)); failures+=("$2: no test log"); return; }
	local p f
	p=$(grep -c '"result": "OK"' "$log" || true)
	f=$(grep -Ec '"result": "(FAIL|TIMEOUT|ERROR|UNEXPECTEDPASS)"' "$log" || true)
	passed=$((passed + p))
	failed=$((failed + f))
	if [ "$f" -gt 0 ]; then
		while read -r name; do failures+=("$2: $name"); done < <(
			python3 -c 'import json,sys
for l in open(sys.argv[1]):
    t=json.loads(l)
    if t["result"] not in ("OK","SKIP","EXPECTEDFAIL"): print(t["name"])' "$log")
	fi
}

build() { # dir args...
	local dir=$1; shift
	if [ ! -f "$dir/build.ninja" ]; then
		meson setup "$dir" "$@" >"$dir.setup.log" 2>&1 || { cat "$dir.setup.log"; return 1; }
	fi
	ninja -C "$dir" >"$dir.ninja.log" 2>&1 || { tail -50 "$dir.ninja.log"; return 1; }
}

echo "== build (gcc, -Werror)"
if build build-ci --werror -Dtests=enabled; then
	meson test -C build-ci --print-errorlogs --num-processes 2 || true
	count_meson build-ci "gcc"
else
	failed=$((failed + 1)); failures+=("gcc build")
fi

if [ $quick -eq 0 ]; then
	echo "== build (clang, ASan+UBSan)"
	if CC=clang build build-asan --werror -Dtests=enabled -Db_sanitize=address,undefined -Db_lundef=false; then
		ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
			meson test -C build-asan --print-errorlogs --num-processes 2 || true
		count_meson build-asan "asan"
	else
		failed=$((failed + 1)); failures+=("asan build")
	fi

	echo "== fuzz (${FUZZ_SECONDS:-30}s per target)"
	if [ -x tests/fuzz/run.sh ]; then
		while read -r line; do
			echo "$line"
			case "$line" in
			*": "*" ok"*|*", ok") passed=$((passed + 1)) ;;
			fuzz_*) failed=$((failed + 1)); failures+=("$line") ;;
			esac
		done < <(bash tests/fuzz/run.sh "${FUZZ_SECONDS:-30}" 2>&1 | grep -E '^fuzz_')
	fi
fi

echo "== summary"
for f in "${failures[@]}"; do echo "FAILED: $f"; done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
