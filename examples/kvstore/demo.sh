#!/usr/bin/env bash
# craftkv demo: a 3-node replicated key-value store on 127.0.0.1.
#
# Bootstraps n1, joins n2 and n3 through n1's HTTP API, writes and reads
# keys with curl (also through a follower, which redirects to the leader),
# kills the leader, shows the new leader serving the data, restarts the
# killed node and shows it caught up, then stops everything.
#
#   bash examples/kvstore/demo.sh
#
# Environment: CRAFTKV=path/to/craftkv (default: build it in ./build with
# scripts/setup.sh), BASE_PORT (default 27100: raft ports BASE+1..3, HTTP
# ports BASE+11..13). Loopback only.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"

if ! command -v curl >/dev/null; then
    echo "demo: installing curl"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq curl >/dev/null
fi
if [ -z "${CRAFTKV:-}" ]; then
    bash "$root/scripts/setup.sh" "$root/build" >/dev/null
    CRAFTKV="$root/build/examples/kvstore/craftkv"
fi

base=${BASE_PORT:-27100}
tmp="$(mktemp -d /tmp/craftkv-demo-XXXXXX)"
declare -A pid
raft() { echo "127.0.0.1:$((base + $1))"; }
http() { echo "127.0.0.1:$((base + 10 + $1))"; }

cleanup() {
    for n in "${!pid[@]}"; do
        kill -9 "${pid[$n]}" 2>/dev/null || true
    done
    rm -rf "$tmp"
}
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show_cmd() { # prints "$ cmd args", quoting the arguments that need it
    local out="$" a
    for a in "$@"; do
        if [[ "$a" =~ ^[A-Za-z0-9_./:=@-]+$ ]]; then out+=" $a"; else out+=" '$a'"; fi
    done
    printf '%s\n' "$out"
}
run() {
    show_cmd "$@"
    "$@"
    echo
}
run_json() { # as run, pretty-printing the JSON answer when python3 is there
    show_cmd "$@"
    if command -v python3 >/dev/null; then "$@" | python3 -m json.tool; else "$@"; fi
    echo
}

start() { # start N [extra args...]
    local n=$1
    shift
    "$CRAFTKV" --id "n$n" --raft "$(raft "$n")" --http "$(http "$n")" --dir "$tmp/n$n" \
        "$@" >>"$tmp/n$n.log" 2>&1 &
    pid[$n]=$!
    echo "started n$n (pid ${pid[$n]}): raft $(raft "$n"), http $(http "$n"), log $tmp/n$n.log"
}

wait_for() { # wait_for DESCRIPTION COMMAND...: up to 60 s
    for _ in $(seq 600); do
        if "${@:2}" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "demo: timed out waiting for $1" >&2
    tail -n 30 "$tmp"/n*.log >&2
    exit 1
}

is_leader() { curl -sf "$(http "$1")/status" | grep -q '"state":"Leader"'; }
leader() {
    for n in 1 2 3; do
        if [ -n "${pid[$n]:-}" ] && is_leader "$n"; then echo "$n"; return 0; fi
    done
    return 1
}
members() { curl -sf "$(http 1)/status" | grep -o '"suffrage"' | wc -l; }
has_members() { [ "$(members)" -eq "$1" ]; }
stale_is() { [ "$(curl -sf "$(http "$1")/kv/$2?stale=1")" = "$3" ]; }

say "start n1 and bootstrap a one-node cluster"
start 1 --bootstrap "n1=$(raft 1)@$(http 1)"
wait_for "n1 to lead" is_leader 1

say "start n2 and n3; they join through n1's HTTP API (POST /join)"
start 2 --join "$(http 1)"
start 3 --join "$(http 1)"
wait_for "3 members" has_members 3
run_json curl -s "$(http 1)/status"

say "writes go to the leader"
run curl -s -X PUT --data 'red' "$(http 1)/kv/color" -w '%{http_code}\n'
run curl -s -X PUT --data 'craft' "$(http 1)/kv/name" -w '%{http_code}\n'
say "a follower answers writes with 307 to the leader (curl -L follows it)"
run curl -s -i -X PUT --data '42' "$(http 2)/kv/answer"
run curl -s -L -X PUT --data '42' "$(http 2)/kv/answer" -w '%{http_code}\n'

say "linearizable reads (ReadIndex on the leader), and stale local reads"
run curl -s -L "$(http 3)/kv/color"
run curl -s "$(http 3)/kv/name?stale=1"
run curl -s -i "$(http 1)/kv/missing"

say "compare-and-set"
run curl -s -X POST --data 'blue' "$(http 1)/kv/color?cas=green" -w '%{http_code}\n'
run curl -s -X POST --data 'blue' "$(http 1)/kv/color?cas=red" -w '%{http_code}\n'
run curl -s "$(http 1)/kv/color"

l=$(leader)
say "kill the leader n$l (SIGKILL)"
{ kill -9 "${pid[$l]}" && wait "${pid[$l]}"; } 2>/dev/null || true
unset "pid[$l]"
wait_for "a new leader" leader
nl=$(leader)
echo "new leader: n$nl"
run curl -s "$(http "$nl")/kv/color"
run curl -s "$(http "$nl")/kv/answer"
run curl -s -X PUT --data 'after failover' "$(http "$nl")/kv/note" -w '%{http_code}\n'

say "restart n$l on its data directory: it catches up"
start "$l"
wait_for "n$l to catch up" stale_is "$l" note 'after failover'
run curl -s "$(http "$l")/kv/note?stale=1"
run_json curl -s "$(http "$l")/status"

say "stop everything (SIGTERM: clean shutdown)"
for n in "${!pid[@]}"; do
    kill -TERM "${pid[$n]}"
done
for n in "${!pid[@]}"; do
    wait "${pid[$n]}" && echo "n$n exited cleanly"
    unset "pid[$n]"
done
