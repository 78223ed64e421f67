#!/bin/sh
# Run every tcl/tests/*.test file in its own tclsh, each bounded in time, and
# print one summary line "tcl: N passed, N failed".  A file that crashes or
# times out counts as (at least) one failure.
# Environment: WEFT_TCL_BUILD (dir with pkgIndex.tcl, libweft_tcl.so, loadgen),
# TCLSH (default tclsh8.6), WEFT_TEST_TIMEOUT (seconds per file, default 150),
# WEFT_SAN_ENV (VAR=value words for the sanitizer runtime, see Makefile).
here=$(cd "$(dirname "$0")" && pwd)
: "${TCLSH:=tclsh8.6}"
: "${WEFT_TEST_TIMEOUT:=150}"
export TCLLIBPATH="${WEFT_TCL_BUILD:?set WEFT_TCL_BUILD} ${WEFT_TCLLIBPATH_EXTRA:-}"
export WEFT_TCL_BUILD
passed=0; failed=0
for f in "$here"/*.test; do
    name=$(basename "$f")
    # WEFT_SAN_ENV (set by make SAN=1) preloads the sanitizer runtime into
    # tclsh only (and so into the servers and load generator it starts).
    out=$(timeout -k 5 "$WEFT_TEST_TIMEOUT" env $WEFT_SAN_ENV $TCLSH "$f" 2>&1)
    rc=$?
    printf '%s\n' "$out" | grep -E '^(==== |---- |Test file error|.*Total)' | grep -v '^---- .*start$' >&2
    summary=$(printf '%s\n' "$out" | grep -E "^$name:[[:space:]]+Total" | tail -1)
    if [ -z "$summary" ]; then
        printf '%s\n' "$out" | tail -20 >&2
        echo "$name: crashed or timed out (exit $rc)" >&2
        failed=$((failed + 1))
        continue
    fi
    p=$(printf '%s\n' "$summary" | sed -E 's/.*Passed[[:space:]]+([0-9]+).*/\1/')
    fl=$(printf '%s\n' "$summary" | sed -E 's/.*Failed[[:space:]]+([0-9]+).*/\1/')
    passed=$((passed + p)); failed=$((failed + fl))
    if [ "$rc" -ne 0 ] && [ "$fl" -eq 0 ]; then
        echo "$name: exit status $rc" >&2
        failed=$((failed + 1))
    fi
done
echo "tcl: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
