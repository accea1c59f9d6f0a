#!/bin/bash
# Installs what the tests need, builds policyd twice (plain -Werror and
# ASan+UBSan), runs every test (unit, integration against a real Postfix,
# the unit tests and the daemon again under valgrind, fuzzing for a bounded
# time) and prints `N passed, N failed` last.
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
count_meson() { # builddir label [logbase]
	local log="$1/meson-logs/${3:-testlog}.json"
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

	# valgrind on the gcc build: every unit test, and policyd itself in the
	# postfix_limits integration test (a wrapper given as POLICYD; a definite
	# leak or a memory error makes policyd exit 99, which policyd_stop reports)
	if [ -f build-ci/build.ninja ] && command -v valgrind >/dev/null; then
		echo "== valgrind (unit tests, postfix_limits)"
		vg="valgrind --leak-check=full --errors-for-leak-kinds=definite --error-exitcode=99 --quiet"
		# not `hook`: under valgrind posix_spawn() of a missing command
		# succeeds (valgrind runs CLONE_VFORK as a fork) and the child exits
		# 127, so test_cannot_run's "cannot run ..." check cannot hold there
		vg_units=$(meson test -C build-ci --no-rebuild --list --suite unit 2>/dev/null |
			sed -n 's|^[^ ]*:unit / ||p' | grep -vx hook)
		# shellcheck disable=SC2086 # one test name a word
		meson test -C build-ci --no-rebuild --wrapper "$vg" --logbase valgrind --timeout-multiplier 10 \
			--print-errorlogs --num-processes 2 $vg_units || true
		count_meson build-ci "valgrind" valgrind-valgrind # meson adds the wrapper's name
		wrapper=$top/build-ci/valgrind-policyd
		printf '#!/bin/sh\nexec %s --log-file=%s/build-ci/meson-logs/valgrind-policyd.%%p.log %s "$@"\n' \
			"$vg" "$top" "$top/build-ci/policyd/policyd" >"$wrapper"
		chmod +x "$wrapper"
		rm -f build-ci/meson-logs/valgrind-policyd.*.log
		out=$(POLICYD=$wrapper POLICYD_START_TIMEOUT=60 POLICYD_STOP_TIMEOUT=60 \
			timeout 600 bash tests/integration/test_postfix_limits.sh 2>&1)
		rc=$?
		if [ $rc -eq 0 ] && ! grep -q '^not ok' <<<"$out" && grep -q '^ok' <<<"$out"; then
			passed=$((passed + 1))
		elif [ $rc -eq 0 ] && grep -q '^1\.\.0 # SKIP' <<<"$out"; then
			echo "valgrind postfix_limits: $(grep '^1\.\.0' <<<"$out")"
		else
			grep -E '^(not ok|#)' <<<"$out" | head -20
			cat build-ci/meson-logs/valgrind-policyd.*.log 2>/dev/null | head -60
			failed=$((failed + 1)); failures+=("valgrind: postfix_limits (policyd)")
		fi
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
