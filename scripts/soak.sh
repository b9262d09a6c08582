#!/usr/bin/env bash
# scripts/soak.sh — three members of one party under mixed traffic for a long while, watched for
# leaks: each daemon's resident memory, open file descriptors and threads, sampled at intervals,
# with the engine's drops by reason.
#
#   scripts/soak.sh                 30 minutes, a sample a minute
#   scripts/soak.sh 5 --every 10    5 minutes, a sample every 10 s
#   scripts/soak.sh 120 --heaptrack  2 hours, player3's heap recorded by heaptrack
#
# The party: a control server and three `lanrage up` daemons, each in its own namespace on one
# bridge. Traffic, all through the tunnel, for the whole run:
#   - bulk: TCP from player2 to player1 (iperf3, capped at 40 Mbit/s so the run measures the
#     daemons rather than starving the machine);
#   - game: 100-byte UDP datagrams at 200 kbit/s from player1 to player2 (iperf3 -u);
#   - ping: player1 -> player2, five a second;
#   - LAN discovery: a broadcast on the party's subnet from player2 every second;
#   - churn: player3 leaves the party and joins again every 2 minutes (peers added, removed).
# Samples go to soak.csv in the output directory (--out DIR, default a new one under /tmp),
# and a summary to stdout: memory and descriptors at the first sample after warm-up and at the
# last, the largest growth, drops by reason, ping loss and latency.
# With --heaptrack, player3 (the member that churns) runs under heaptrack, which records every
# allocation with its backtrace to heaptrack.player3.zst: `heaptrack_print` on it names what
# holds memory at the end. That daemon's RSS then includes the profiler's own tables.
#
# Run as root. Builds nothing: it uses target/release/lanrage (`cargo build --release` first)
# or $LANRAGE_BIN. Everything it starts is stopped, and its namespaces deleted, on exit, Ctrl-C
# or SIGTERM (started in the background, a script ignores SIGINT: stop it with kill).

set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=netns-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/netns-lib.sh"

MINUTES=30
EVERY=60
OUT=""
HEAPTRACK=0
while (($#)); do
    case "$1" in
        -h|--help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        --every) EVERY="${2:?--every needs seconds}"; shift 2 ;;
        --heaptrack) HEAPTRACK=1; shift ;;
        --out) OUT="${2:?--out needs a directory}"; shift 2 ;;
        [0-9]*) MINUTES="$1"; shift ;;
        *) nl_die "unknown argument '$1' (try --help)" ;;
    esac
done
[[ "$MINUTES" =~ ^[0-9]+$ && "$MINUTES" -ge 1 ]] || nl_die "minutes must be a whole number >= 1"
[[ "$EVERY" =~ ^[0-9]+$ && "$EVERY" -ge 1 ]] || nl_die "--every must be a whole number of seconds >= 1"

nl_require_root
nl_require_tools ip iperf3 ping socat jq
((HEAPTRACK)) && nl_require_tools heaptrack
BIN="$(nl_lanrage_bin)"
[[ -x "$BIN" ]] || nl_die "$BIN not found: cargo build --release first (or set LANRAGE_BIN)"
nl_init
OUT="${OUT:-$(mktemp -d /tmp/lanrage-soak.XXXXXX)}"
mkdir -p "$OUT"
CSV="$OUT/soak.csv"

HUB="lrsk${NL_ID}h"
HUB_IP=192.168.91.254
SERVER="http://$HUB_IP:8667"
MEMBERS=("lrsk${NL_ID}a" "lrsk${NL_ID}b" "lrsk${NL_ID}c")
PIDS=()

fail() {
    printf '%serror:%s %s\n' "$NL_C_RED" "$NL_C_OFF" "$*" >&2
    local f
    for f in "$OUT"/*.log; do
        [[ -s "$f" ]] || continue
        printf '  %s, last lines:\n' "$(basename "$f")" >&2
        tail -n 8 "$f" | sed 's/^/    | /' >&2
    done
    exit 1
}

# lanrage CLI as member I (0-based), JSON out: it reaches that member's daemon through the
# socket in its data directory.
cli() { local i="$1"; shift; LANRAGE_DATA_DIR="$NL_TMP/data$((i + 1))" nl_in "${MEMBERS[$i]}" "$BIN" "$@" --json; }

wait_for() {
    local what="$1" secs="$2"; shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || fail "timed out after ${secs}s waiting for $what"
        sleep 0.2
    done
}

nl_log "setting up: control server and three members on a bridge (output in $OUT)"
nl_make_ns "$HUB"
nl_in "$HUB" ip link add br0 type bridge
nl_in "$HUB" ip addr add "$HUB_IP/24" dev br0
nl_in "$HUB" ip link set br0 up
for i in 0 1 2; do
    ns="${MEMBERS[$i]}"
    nl_make_ns "$ns"
    ip link add "sk${NL_ID}$i" netns "$HUB" type veth peer name lan netns "$ns"
    nl_in "$HUB" ip link set "sk${NL_ID}$i" master br0 up
    nl_in "$ns" ip addr add "192.168.91.$((i + 1))/24" dev lan
    nl_in "$ns" ip link set lan up
done

# ip netns exec directly, not nl_in: a shell function in the background runs in a subshell,
# and $! would be that subshell, not the process to watch.
ip netns exec "$HUB" "$BIN" control-server --listen "$HUB_IP:8667" --db "$NL_TMP/control.db" \
    >"$OUT/control-server.log" 2>&1 </dev/null &
SERVER_PID=$!
nl_track "$SERVER_PID"
wait_for "the control server" 10 nl_in "$HUB" bash -c "ss -Hltn | grep -q ':8667'"

for i in 0 1 2; do
    n=$((i + 1))
    profiler=()
    ((HEAPTRACK && n == 3)) && profiler=(heaptrack -o "$OUT/heaptrack.player$n")
    ip netns exec "${MEMBERS[$i]}" "${profiler[@]}" "$BIN" up --interface "lrsk$n" --name "player$n" \
        --server "$SERVER" --data-dir "$NL_TMP/data$n" >"$OUT/daemon$n.log" 2>&1 </dev/null &
    PIDS+=($!)
    nl_track "$!"
done
if ((HEAPTRACK)); then
    # heaptrack is a script that starts the daemon as its child (beside subshells of its own
    # with the same command line): watch the process that runs the daemon's binary.
    daemon_pid() {
        local p
        for p in $(pgrep -f -- "--interface lrsk3 "); do
            [[ "$(readlink "/proc/$p/exe" 2>/dev/null)" == "$(readlink -f "$BIN")" ]] && echo "$p" && return 0
        done
        return 1
    }
    wait_for "player3's daemon under heaptrack" 15 daemon_pid
    HEAPTRACK_PID="${PIDS[2]}"
    PIDS[2]="$(daemon_pid)"
fi
for i in 0 1 2; do
    wait_for "player$((i + 1))'s daemon" 15 cli "$i" status
done

code="$(cli 0 party create "soak" | jq -r .code)"
[[ -n "$code" && "$code" != null ]] || fail "no party code"
cli 1 party join "$code" >/dev/null || fail "player2 could not join"
cli 2 party join "$code" >/dev/null || fail "player3 could not join"
ip_of() { cli "$1" status | jq -r .party.virtual_ip; }
IP1="$(ip_of 0)"; IP2="$(ip_of 1)"; IP3="$(ip_of 2)"
for pair in "0 $IP2" "0 $IP3" "1 $IP1" "2 $IP1"; do
    read -r i ip <<<"$pair"
    wait_for "player$((i + 1)) to ping $ip" 20 nl_in "${MEMBERS[$i]}" ping -c 1 -W 1 -q "$ip"
done
# The party subnet's directed broadcast, from player2's tunnel address (a TUN shows no brd).
cidr="$(nl_in "${MEMBERS[1]}" ip -4 -o addr show dev lrsk2 | awk '{for (i = 1; i < NF; i++) if ($i == "inet") print $(i + 1)}')"
IFS=./ read -r o1 o2 o3 o4 len <<<"$cidr"
[[ -n "${len:-}" ]] || fail "player2's tunnel has no IPv4 address"
addr=$(((o1 << 24) | (o2 << 16) | (o3 << 8) | o4))
bcast=$((addr | ((1 << (32 - len)) - 1)))
BROADCAST="$((bcast >> 24 & 255)).$((bcast >> 16 & 255)).$((bcast >> 8 & 255)).$((bcast & 255))"
nl_log "party $code: $IP1, $IP2, $IP3 (broadcast $BROADCAST); traffic for $MINUTES min, a sample every ${EVERY}s"

DURATION=$((MINUTES * 60))
background() { "$@" </dev/null & nl_track "$!"; }
background nl_in "${MEMBERS[0]}" iperf3 -s -B "$IP1" -p 5201 >"$OUT/iperf-bulk-server.log" 2>&1
background nl_in "${MEMBERS[1]}" iperf3 -s -B "$IP2" -p 5202 >"$OUT/iperf-game-server.log" 2>&1
wait_for "iperf3 servers" 10 nl_in "${MEMBERS[1]}" bash -c "ss -Hltn | grep -q ':5202'"
wait_for "iperf3 servers" 10 nl_in "${MEMBERS[0]}" bash -c "ss -Hltn | grep -q ':5201'"
background nl_in "${MEMBERS[1]}" iperf3 -c "$IP1" -p 5201 -b 40M -t "$DURATION" -i 60 --json \
    >"$OUT/iperf-bulk.json" 2>"$OUT/iperf-bulk.log"
background nl_in "${MEMBERS[0]}" iperf3 -c "$IP2" -p 5202 -u -b 200k -l 100 -t "$DURATION" -i 60 --json \
    >"$OUT/iperf-game.json" 2>"$OUT/iperf-game.log"
background nl_in "${MEMBERS[0]}" ping -q -i 0.2 -w "$DURATION" "$IP2" >"$OUT/ping.log" 2>&1
background nl_in "${MEMBERS[1]}" bash -c "while sleep 1; do printf 'lanrage soak discovery' \
    | socat -u - 'UDP-DATAGRAM:$BROADCAST:27015,broadcast' 2>/dev/null; done"
background bash -c "while sleep 120; do
    LANRAGE_DATA_DIR='$NL_TMP/data3' ip netns exec '${MEMBERS[2]}' '$BIN' party leave --json >/dev/null 2>&1
    sleep 2
    LANRAGE_DATA_DIR='$NL_TMP/data3' ip netns exec '${MEMBERS[2]}' '$BIN' party join '$code' --json >/dev/null 2>&1
done"

# One sample: a CSV row per daemon (and the control server).
sample() {
    local t="$1" name pid i
    for i in 0 1 2 3; do
        if ((i < 3)); then name="player$((i + 1))"; pid="${PIDS[$i]}"; else name=control-server; pid="$SERVER_PID"; fi
        kill -0 "$pid" 2>/dev/null || fail "$name (pid $pid) is gone"
        local rss fds threads drops=""
        rss="$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")"
        threads="$(awk '/^Threads:/ {print $2}' "/proc/$pid/status")"
        fds="$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 | wc -l)"
        if ((i < 3)); then
            drops="$(cli "$i" status | jq -r '.drops | to_entries | map("\(.key)=\(.value)") | join(" ")')"
        fi
        printf '%s,%s,%s,%s,%s,%s\n' "$t" "$name" "$rss" "$fds" "$threads" "$drops" >>"$CSV"
    done
}

printf 'seconds,process,rss_kib,fds,threads,drops\n' >"$CSV"
printf '%8s  %-14s %9s %5s %7s  %s\n' seconds process rss_kib fds threads drops
START=$SECONDS
next=0
while :; do
    elapsed=$((SECONDS - START))
    if ((elapsed >= next)); then
        sample "$elapsed"
        tail -n 4 "$CSV" | awk -F, '{printf "%8s  %-14s %9s %5s %7s  %s\n", $1, $2, $3, $4, $5, $6}'
        next=$((next + EVERY))
    fi
    ((elapsed >= DURATION)) && break
    sleep 1
done

# Let the traffic generators finish and write their reports.
sleep 3
if ((HEAPTRACK)); then
    # Stop the profiled daemon on its own so heaptrack records its shutdown and finishes the file.
    kill -TERM "${PIDS[2]}" 2>/dev/null || true
    for _ in $(seq 300); do kill -0 "$HEAPTRACK_PID" 2>/dev/null || break; sleep 0.1; done
fi
printf '\n%sSummary%s (%s min; samples in %s)\n' "$NL_C_BOLD" "$NL_C_OFF" "$MINUTES" "$CSV"
# Warm-up: the first sample after 2 minutes (a quarter of a shorter run) is the baseline;
# growth after it is what a leak would show.
WARM=$((DURATION / 4 < 120 ? DURATION / 4 : 120))
awk -F, -v warm="$WARM" '
    NR == 1 { next }
    {
        if (!($2 in base) && $1 >= warm) { base[$2] = $3; basefd[$2] = $4 }
        last[$2] = $3; lastfd[$2] = $4
        if ($3 > peak[$2]) peak[$2] = $3
        if ($4 > peakfd[$2]) peakfd[$2] = $4
    }
    END {
        printf "%-14s %22s %22s %10s %16s\n", "process", "rss KiB (base -> last)", "fds (base -> last)", "peak fds", "rss growth"
        for (p in last) {
            g = base[p] ? (last[p] - base[p]) * 100.0 / base[p] : 0
            printf "%-14s %10d -> %9d %10d -> %9d %10d %15.1f%%\n", p, base[p], last[p], basefd[p], lastfd[p], peakfd[p], g
        }
    }' "$CSV"
printf 'drops at the end:\n'
tail -n 4 "$CSV" | awk -F, '$2 != "control-server" {printf "  %-10s %s\n", $2, ($6 == "" ? "none" : $6)}'
printf 'ping player1 -> player2: %s\n' "$(grep -E 'packets transmitted|rtt' "$OUT/ping.log" | tr '\n' ' ')"
bulk="$(jq -r '.end.sum_received.bits_per_second // empty' "$OUT/iperf-bulk.json" 2>/dev/null || true)"
game="$(jq -r '.end.sum | "\(.lost_percent // "?")% lost, jitter \(.jitter_ms // "?") ms"' "$OUT/iperf-game.json" 2>/dev/null || true)"
printf 'bulk TCP: %s Mbit/s average; game UDP: %s\n' \
    "$(awk -v b="${bulk:-0}" 'BEGIN {printf "%.1f", b / 1e6}')" "${game:-no report}"
if ((HEAPTRACK)); then
    profile="$(compgen -G "$OUT/heaptrack.player3*" | head -n 1 || true)"
    printf 'player3 heap profile: %s (heaptrack_print --print-leaks %s)\n' "${profile:-missing}" "${profile:-FILE}"
fi
