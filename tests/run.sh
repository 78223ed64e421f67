#!/bin/sh
# Run each test program given as an argument (through $WEFT_RUN, e.g. qemu, when set), show
# its output, and end with the total: "N passed, N failed".
passed=0
failed=0
echo "event backend: ${WEFT_BACKEND:-auto}"
for t in "$@"; do
    out=$(mktemp)
    start=$(date +%s)
    $WEFT_RUN "$t" 2>&1 | tee "$out"
    echo "time ${t##*/}: $(($(date +%s) - start)) s"
    line=$(grep -E '^[a-z_]+: [0-9]+ passed, [0-9]+ failed$' "$out" | tail -n 1)
    if [ -z "$line" ]; then
        echo "FAIL $t: crashed before its summary"
        failed=$((failed + 1))
    else
        p=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed.*/\1/')
        f=$(echo "$line" | sed -E 's/.* ([0-9]+) failed$/\1/')
        passed=$((passed + p))
        failed=$((failed + f))
    fi
    rm -f "$out"
done
# The Tcl package (tcl/): its own make, without our make's flags (CFLAGS on our command line
# would replace the ones it needs).
if [ "${TCL_TESTS:-0}" = 1 ]; then
    out=$(mktemp)
    # shellcheck disable=SC2086
    start=$(date +%s)
    env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s -C tcl test $TCL_MAKE_ARGS 2>&1 | tee "$out"
    echo "time tcl: $(($(date +%s) - start)) s"
    line=$(grep -E '^tcl: [0-9]+ passed, [0-9]+ failed$' "$out" | tail -n 1)
    if [ -z "$line" ]; then
        echo "FAIL tcl: no summary"
        failed=$((failed + 1))
    else
        passed=$((passed + $(echo "$line" | sed -E 's/.*: ([0-9]+) passed.*/\1/')))
        failed=$((failed + $(echo "$line" | sed -E 's/.* ([0-9]+) failed$/\1/')))
    fi
    rm -f "$out"
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
