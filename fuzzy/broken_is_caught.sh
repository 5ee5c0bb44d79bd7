#!/bin/sh
# fuzzy_broken_build_is_caught: craft-fuzz-broken (the follower skips the
# AppendEntries prev-log term check) must report a violation. A scenario
# run is timing-driven, so one seed can miss the bug (seen once under TSan
# at seed 1 in session 10); up to four seeds are tried, and the first
# violation (exit 1) passes the test. No violation in any seed, or a setup
# error (exit 2), fails it.
#   broken_is_caught.sh CRAFT_FUZZ_BROKEN OUTDIR
bin=$1
out=$2
for seed in 1 2 3 4; do
    "$bin" --scenario leader_partitions --seed "$seed" --duration 8 --no-scale --quiet \
        --out "$out-$seed"
    rc=$?
    if [ "$rc" -eq 1 ]; then
        echo "caught at seed $seed"
        exit 0
    fi
    if [ "$rc" -ne 0 ]; then
        echo "craft-fuzz-broken failed to run (exit $rc)"
        exit 1
    fi
done
echo "the verifiers missed the broken consistency check in 4 seeds"
exit 1
