#!/usr/bin/env bash
# Builds and runs the whole test suite (installing the Go packages the
# interop suite needs when they are missing).
#   scripts/test.sh           plain build (build/)
#   scripts/test.sh asan      AddressSanitizer + UBSan (build-asan/)
#   scripts/test.sh tsan      ThreadSanitizer (build-tsan/)
#   scripts/test.sh valgrind  memcheck with leak checking, no fork (build/)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-plain}
run=()
mult=1
case "$mode" in
plain) dir=build; opts=() ;;
asan)  dir=build-asan; opts=(-Db_sanitize=address,undefined -Db_lundef=false); mult=3
       export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
       export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
       export CRAFT_TEST_TIME_SCALE=${CRAFT_TEST_TIME_SCALE:-3} ;;
tsan)  dir=build-tsan; opts=(-Db_sanitize=thread -Db_lundef=false); mult=4
       export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}
       export CRAFT_TEST_TIME_SCALE=${CRAFT_TEST_TIME_SCALE:-5}
       # TSan needs a low-entropy address space on some kernels.
       if command -v setarch >/dev/null; then run=(setarch "$(uname -m)" -R); fi ;;
valgrind) dir=build; opts=(); mult=20
       command -v valgrind >/dev/null || { apt-get install -y -qq valgrind >/dev/null; }
       export CK_FORK=no CRAFT_TEST_TIME_SCALE=${CRAFT_TEST_TIME_SCALE:-10}
       run=() ;;
*) echo "usage: $0 [plain|asan|tsan|valgrind]" >&2; exit 2 ;;
esac
bash scripts/setup.sh "$dir" "${opts[@]}" >/dev/null
# The interop suite (tests/interop/) builds a Go node against Debian's
# hashicorp/raft v1.1.2; it fails, saying so, when they are missing.
if [ "$mode" != valgrind ]; then
    go_missing=()
    for p in golang-go golang-github-hashicorp-raft-dev golang-github-hashicorp-raft-boltdb-dev; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || go_missing+=("$p")
    done
    if [ ${#go_missing[@]} -gt 0 ]; then
        echo "test: installing ${go_missing[*]} for the interop suite"
        SUDO=""
        [ "$(id -u)" -eq 0 ] || SUDO="sudo"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${go_missing[@]}" >/dev/null
    fi
fi
status=0
extra=()
if [ "$mode" = valgrind ]; then
    extra=(--wrapper "valgrind --quiet --leak-check=full --errors-for-leak-kinds=definite,indirect --error-exitcode=9" --suite unit --suite integration)
fi
"${run[@]}" meson test -C "$dir" --print-errorlogs --timeout-multiplier "$mult" "${extra[@]}" || status=$?
log="$dir/meson-logs/testlog.json"
if [ -f "$log" ]; then
    python3 - "$log" "$mode" <<'PY' || true
import json, sys
ok = bad = 0
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("result") in ("OK", "EXPECTEDFAIL"):
        ok += 1
    elif r.get("result") != "SKIP":
        bad += 1
print(f"{sys.argv[2]}: {ok} passed, {bad} failed")
PY
fi
exit $status
