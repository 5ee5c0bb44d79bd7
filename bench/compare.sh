#!/bin/sh
# compare.sh: craft-bench against hashicorp-bench (Debian's hashicorp/raft
# v1.1.2) on this machine, in one run, alternating the two programs cell by
# cell, then a table of craft/hashicorp ratios.
#
#   bench/compare.sh [-s SECONDS] [-w WARMUP] [-r REPEATS] [-c "1 16 64"]
#                    [-p "64 1024"] [-m "durable inmem"] [-b BUILDDIR]
#                    [-o RESULTS.jsonl] [-a] [-i] [-S US] [-L] [-P US] [-C MS] [-D]
# -a: craft's clients are completion callbacks (craft-bench --async) instead
#     of one OS thread each; hashicorp's are goroutines either way.
# -i: craft applies committed entries on the committing thread
#     (craft-bench --apply-inline, config.apply_inline: the benchmark's FSM
#     only counts bytes); hashicorp has no such option.
# -S US: craft's waiting client threads poll their future for up to US
#     microseconds before sleeping (craft-bench --wait-spin-us,
#     config.wait_spin_us); Go's scheduler spins on its own.
# -L: in the inmem mode craft's three nodes run their TCP transports on one
#     shared event-loop thread (craft-bench --shared-loop, craft_tcp_loop_t),
#     as Go's three nodes share its network poller. The durable mode keeps a
#     loop per node: a follower writes (and syncs) on its loop thread, and a
#     shared loop would serialise the three nodes' disk writes.
# -P US: in the inmem mode craft's three nodes run their TCP transports on
#     min(nproc, 3) shared event-loop threads that poll for up to US
#     microseconds when idle before sleeping (craft-bench --loops N
#     --loop-spin-us US, craft_tcp_loop_set_spin): one network thread per
#     core, as Go runs its poller on GOMAXPROCS threads that spin before
#     parking. Replaces -L.
# -C MS: both programs check for a snapshot every MS ms (--snapshot-ms:
#     SnapshotInterval / snapshot_interval_ms, randomised MS..2MS; threshold
#     8192 and trailing logs 10240 stay the libraries' defaults). Without it
#     the interval is the default 120 s: hashicorp takes no snapshot in a
#     10 s cell and keeps every entry; craft also snapshots when the log grew
#     by 2-3 x the threshold (its growth cap), whatever the interval.
# -D: run the dynamically linked craft-bench. By default craft runs as
#     craft-bench-static (libc, sqlite and libevent linked in), as Go links
#     hashicorp-bench: one binary holding only the code it uses. A dynamic
#     build maps whole shared libraries, whose touched pages (and the 64 KiB
#     the kernel faults in around each) count in its RSS: ~1.3 MB more per
#     process, the same operations. If the static link fails (no libc.a /
#     libsqlite3.a), the dynamic build is used and the header says so.
#
# Modes (both over TCP on 127.0.0.1, 3 nodes, timeouts 100/100/50 ms):
#   durable  craft --store sqlite (durability full)  vs  hashicorp bolt
#   inmem    craft --store inmem                     vs  hashicorp inmem
#   inmemtr  both on their in-memory transport and store (not a target)
# Default: 10 s per cell after a 1 s warm-up, every cell twice (the whole
# grid once, then again), 48 runs of ~12 s: ~10 minutes. Before the grid each
# program runs once, untimed (3 s, first mode, 1 client), to warm the machine. The table shows the
# median of the repeats of each cell.
# Table: ops x = craft/hashicorp ops/s; p99 x = craft/hashicorp p99; rss x =
# craft/hashicorp VmRSS (per node, same node count); anon x = the same for
# RssAnon (private memory: no shared-library text, no bolt mmap); cpu x =
# craft/hashicorp CPU time (user + system, whole process) per operation
# during the measured seconds; load = the
# 1-minute load average after the two runs (other work on the machine skews
# everything: look at it before trusting a cell).
#
# Needs: meson, ninja, a C toolchain, and for the Go side
#   apt-get install -y golang-go golang-github-hashicorp-raft-dev \
#                      golang-github-hashicorp-raft-boltdb-dev
set -eu

here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/.." && pwd)
secs=10
warm=1
reps=2
clients="1 16 64"
payloads="64 1024"
modes="durable inmem"
build=${BUILD:-/tmp/build-bench-compare}
out=""
async=""
inline=""
spin=""
loop=""
snap=""
pspin=""
link=static
while getopts s:w:r:c:p:m:b:o:aiS:LP:C:D o; do
    case $o in
    s) secs=$OPTARG ;;
    w) warm=$OPTARG ;;
    r) reps=$OPTARG ;;
    c) clients=$OPTARG ;;
    p) payloads=$OPTARG ;;
    m) modes=$OPTARG ;;
    b) build=$OPTARG ;;
    o) out=$OPTARG ;;
    a) async="--async" ;;
    i) inline="--apply-inline" ;;
    S) spin="--wait-spin-us $OPTARG" ;;
    L) loop="--shared-loop" ;;
    P) pspin=$OPTARG ;;
    C) snap="--snapshot-ms $OPTARG" ;;
    D) link=dynamic ;;
    *) sed -n '2,60p' "$0" >&2; exit 2 ;;
    esac
done
if [ -n "$pspin" ]; then
    nloops=$(nproc)
    [ "$nloops" -le 3 ] || nloops=3
    loop="--loops $nloops --loop-spin-us $pspin"
fi
cflags="$async $inline $spin" # craft-bench's extra flags (+ $loop in inmem)
[ -n "$out" ] || out=$(mktemp /tmp/compare-XXXXXX.jsonl)
: >"$out"

# ---- build both ----
if [ ! -f "$build/build.ninja" ]; then
    meson setup "$build" "$src" >/dev/null
fi
ninja -C "$build" bench/craft-bench >/dev/null
craft="$build/bench/craft-bench"
if [ "$link" = static ]; then
    if ninja -C "$build" bench/craft-bench-static >/dev/null 2>&1; then
        craft="$build/bench/craft-bench-static"
    else
        link="dynamic (the static link failed)"
    fi
fi
hashi="$build/hashicorp-bench"
(cd "$here/hashicorp" && GO111MODULE=off GOPATH=/usr/share/gocode go build -o "$hashi" .)

# ---- facts ----
echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $(uname -r) nproc=$(nproc) $(go version | cut -d' ' -f3)"
if [ -n "$async" ]; then kind="callbacks (--async)"; else kind="one thread each"; fi
if [ -n "$inline" ]; then kind="$kind, apply_inline"; fi
if [ -n "$spin" ]; then kind="$kind, wait_spin_us ${spin#--wait-spin-us }"; fi
if [ -n "$pspin" ]; then
    kind="$kind, $nloops shared loops spinning ${pspin} us (inmem)"
elif [ -n "$loop" ]; then
    kind="$kind, shared loop (inmem)"
fi
if [ -n "$snap" ]; then kind="$kind; both: snapshot interval ${snap#--snapshot-ms } ms"; fi
echo "# craft $(git -C "$src" rev-parse --short HEAD 2>/dev/null || echo '?'), ${secs}s per cell, ${warm}s warm-up, $reps repeats, craft-bench linked $link, craft clients: $kind, results in $out"

run() { # impl transport store clients payload
    extra=""
    if [ "$1" = craft ]; then
        bin=$craft; extra=$cflags
        if [ "$mode" = inmem ]; then extra="$extra $loop"; fi
    else
        bin=$hashi
    fi
    extra="$extra $snap"
    # shellcheck disable=SC2086 # $extra is flags or nothing
    line=$("$bin" --transport "$2" --store "$3" --clients "$4" --payload "$5" \
        --seconds "$secs" --warmup "$warm" --progress-ms 0 $extra 2>>"$out.stderr") || true
    if [ -z "$line" ]; then
        line="{\"impl\":\"$1\",\"transport\":\"$2\",\"store\":\"$3\",\"clients\":$4,\"payload\":$5,\"ops_per_sec\":0,\"p99_us\":0,\"failed\":true}"
    fi
    load=$(cut -d' ' -f1 /proc/loadavg)
    echo "$line" | sed "s/^{/{\"mode\":\"$mode\",\"loadavg\":$load,/" >>"$out"
    echo "$line" >&2
}

# ---- warm-up, not recorded ----
# The first runs on a machine that sat idle are slow (page cache, the virtio
# disk, CPU frequency): in earlier grids the first cell's first run made
# 0.4-0.6x of its repeat. Both programs run one short untimed round of the
# first mode first, so that neither starts the grid cold.
first_mode=${modes%% *}
case $first_mode in
durable) wtr=tcp wcs=sqlite whs=bolt ;;
*) wtr=tcp wcs=inmem whs=inmem ;;
esac
for impl in craft hashicorp; do
    if [ "$impl" = craft ]; then bin=$craft; wstore=$wcs; extra=$cflags; else bin=$hashi; wstore=$whs; extra=""; fi
    if [ "$impl" = craft ] && [ "$first_mode" = inmem ]; then extra="$extra $loop"; fi
    # shellcheck disable=SC2086 # $extra is flags or nothing
    "$bin" --transport "$wtr" --store "$wstore" --clients 1 --payload 64 \
        --seconds 3 --warmup 1 --progress-ms 0 --no-election $extra >/dev/null 2>>"$out.stderr" || true
done

n=0
rep=1
while [ "$rep" -le "$reps" ]; do
for mode in $modes; do
    case $mode in
    durable) tr=tcp cs=sqlite hs=bolt ;;
    inmem) tr=tcp cs=inmem hs=inmem ;;
    inmemtr) tr=inmem cs=inmem hs=inmem ;;
    *) echo "unknown mode $mode" >&2; exit 2 ;;
    esac
    for c in $clients; do
        for p in $payloads; do
            # Alternate which one goes first, so neither always runs on a
            # machine warmed (or dirtied) by the other.
            if [ $((n % 2)) -eq 0 ]; then
                run craft "$tr" "$cs" "$c" "$p"; run hashicorp "$tr" "$hs" "$c" "$p"
            else
                run hashicorp "$tr" "$hs" "$c" "$p"; run craft "$tr" "$cs" "$c" "$p"
            fi
            n=$((n + 1))
        done
    done
done
rep=$((rep + 1))
done

# ---- table ----
awk '
function get(line, k,   m) {
    if (match(line, "\"" k "\":[^,}]*")) {
        m = substr(line, RSTART + length(k) + 3, RLENGTH - length(k) - 3)
        gsub(/"/, "", m)
        return m
    }
    return ""
}
# median over the repeats of one cell of one implementation
function cell(arr, impl, key,   i, n, v) {
    n = cnt[impl, key]
    for (i = 1; i <= n; i++) v[i] = arr[impl, key, i]
    return median(v, n)
}
function median(a, n,   i, j, t) {
    for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] > a[j]; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
    if (n == 0) return -1
    return n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2
}
{
    impl = get($0, "impl"); key = get($0, "mode") " " get($0, "clients") " " get($0, "payload")
    if (!(key in seen)) { seen[key] = 1; order[++nk] = key }
    c = ++cnt[impl, key]
    ops[impl, key, c] = get($0, "ops_per_sec") + 0
    p99[impl, key, c] = get($0, "p99_us") + 0
    e = get($0, "election_ms") + 0
    if (e > 0) el[impl, ++ne[impl]] = e
    r = get($0, "rss_kb") / (get($0, "nodes") ? get($0, "nodes") : 3)
    if (r > rmax[impl]) rmax[impl] = r
    rs[impl, key, c] = r
    an[impl, key, c] = get($0, "rss_anon_kb") + 0
    la[impl, key, c] = get($0, "loadavg") + 0
    cu[impl, key, c] = get($0, "cpu_us_per_op") + 0
}
END {
    printf "%-8s %7s %7s | %10s %10s %7s | %9s %9s %7s | %6s %6s | %5s | %5s | %s\n", "mode", "clients", "payload",
        "craft/s", "hashi/s", "ops x", "craft p99", "hashi p99", "p99 x", "rss x", "anon x", "cpu x", "load", "targets"
    allok = 1
    for (i = 1; i <= nk; i++) {
        k = order[i]; split(k, f, " ")
        co = cell(ops, "craft", k); ho = cell(ops, "hashicorp", k)
        cp = cell(p99, "craft", k); hp = cell(p99, "hashicorp", k)
        rx = ho > 0 ? co / ho : 0; px = hp > 0 ? cp / hp : 0
        if (f[1] == "durable") need = f[2] == 1 ? 3 : 2; else need = 1.5
        t = sprintf("ops>=%.1fx %s", need, rx >= need ? "met" : "MISSED")
        if (f[1] == "durable") t = t sprintf(", p99<=0.5x %s", px <= 0.5 && px > 0 ? "met" : "MISSED")
        if (f[1] == "inmemtr") t = "(no target)"
        crs = cell(rs, "craft", k); hrs = cell(rs, "hashicorp", k)
        sx = hrs > 0 ? crs / hrs : 0
        if (sx > worst) worst = sx
        can = cell(an, "craft", k); han = cell(an, "hashicorp", k)
        ax = han > 0 ? can / han : 0
        ccu = cell(cu, "craft", k); hcu = cell(cu, "hashicorp", k)
        ux = hcu > 0 ? ccu / hcu : 0
        printf "%-8s %7s %7s | %10.0f %10.0f %7.2f | %9d %9d %7.2f | %6.2f %6.2f | %5.2f | %5.1f | %s\n", f[1], f[2], f[3], co, ho, rx, cp, hp, px, sx, ax, ux, (cell(la, "craft", k) + cell(la, "hashicorp", k)) / 2, t
    }
    for (x = 1; x <= ne["craft"]; x++) ce[x] = el["craft", x]
    for (x = 1; x <= ne["hashicorp"]; x++) he[x] = el["hashicorp", x]
    cm = median(ce, ne["craft"]); hm = median(he, ne["hashicorp"])
    printf "election after leader shutdown, median ms: craft %.1f (n=%d)  hashicorp %.1f (n=%d)  target craft <= 200 (2 x election timeout): %s\n",
        cm, ne["craft"], hm, ne["hashicorp"], (cm > 0 && cm <= 200) ? "met" : "MISSED"
    printf "rss per node (rss_kb / nodes at the end of the load): max over cells craft %.0f kB, hashicorp %.0f kB; worst per-cell ratio (rss x) %.2f, target <= 0.33: %s\n",
        rmax["craft"], rmax["hashicorp"], worst, (worst > 0 && worst <= 1/3) ? "met" : "MISSED"
}' "$out"
