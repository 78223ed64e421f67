#!/bin/sh
# Run each test program given as an argument (through $WEFT_RUN, e.g. qemu, when set), show
# its output, and end with the total: "N passed, N failed".
passed=0
failed=0
echo "event backend: ${WEFT_BACKEND:-auto}"
for t in "$@"; do
    out=$(mktemp)
    $WEFT_RUN "$t" 2>&1 | tee "$out"
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
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
