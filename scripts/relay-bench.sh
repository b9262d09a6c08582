#!/usr/bin/env bash
# scripts/relay-bench.sh — namespace benchmark of `lanrage relay`: 100-byte datagrams relayed per
# second against plain UDP between the same namespaces in the same run, and the round trip the
# relay adds.
#
# Topology: three namespaces on two veth links, routed through the relay's namespace.
#
#     A 198.18.1.1 ─veth─ 198.18.1.2 [ RELAY, lo 198.18.0.1 ] 198.18.2.1 ─veth─ 198.18.2.2 B
#
# Plain UDP goes A → B, forwarded by the relay namespace's kernel (ip_forward); relayed goes
# A → 198.18.0.1:3479 (`lanrage relay`) → B. Both paths cross the same two veth links, once
# each way, and the same three network stacks: the only difference is the relay process (its
# sockets, its threads, user space) where the plain path has the kernel's IP forwarding. The
# alternative, all three on a bridge in a fourth namespace, would have plain A → B cross two
# veth pairs and relayed A → relay → B four, charging the relay for wires the plain path never
# uses. The relay's announced address sits on its loopback so that A and B reach it alike.
#
# The load generator is benches/relay_load.rs, one binary and the same code on both paths:
# `recv` in B counts, `send` (or `ping`) in A. Relayed, each side derives its grant from the
# relay secret itself (the control server here creates that secret and takes the relay's
# registration; no party is needed), binds its side at the relay from its data socket as a
# member does, and puts the 8-byte relay header before its 100-byte payload, so the payload
# is the same size both ways. The relay runs with --session-rate 0: its default per-session
# limit (200 Mbit/s per direction) would cap one session near 230k of these datagrams per
# second, which measures the limiter, not the forwarding path.
#
# Loads (--load): "mmsg" sends separate datagrams, 64 per sendmmsg (as many clients' traffic
# reaches a relay: every datagram crosses every stack on its own); "gso" sends 64-segment UDP
# GSO trains, which stay one skb from the sender's socket to the receiver's GRO socket on the
# plain path, so it measures batching more than per-packet cost. Each run measures: plain
# rate, relayed rate (per load), then plain pings and relayed pings (one in flight, 1 ms
# apart). Medians over --runs; every run is printed too.
#
# Run as root. Usage: scripts/relay-bench.sh [options]   (scripts/relay-bench.sh --help)

set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=netns-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/netns-lib.sh"

RUNS=3
SECONDS_EACH=5
THREADS="$(nproc)"
LOADS="mmsg"
RATE=max
PING_COUNT=2000
PING_INTERVAL_MS=1
PAYLOAD=100
BATCH=64
JSON_OUT=""
TARGET_RATIO=0.80

IP_A=198.18.1.1
IP_RA=198.18.1.2
IP_RB=198.18.2.1
IP_B=198.18.2.2
IP_RELAY=198.18.0.1
RELAY_PORT=3479
CONTROL_PORT=8667
DATA_PORT=5300

usage() {
    cat <<EOF
Usage: $0 [options]

Benchmarks 'lanrage relay' against plain UDP between network namespaces A and B (routed
through the relay's namespace; see the header of this script for why this topology).

Options:
  --seconds N         seconds per rate measurement (default $SECONDS_EACH)
  --runs N            repeat every measurement N times, report the median (default $RUNS)
  --threads N         relay worker threads, 'lanrage relay --threads' (default: nproc = $THREADS)
  --load LIST         comma-separated loads: mmsg (separate datagrams, $BATCH per sendmmsg),
                      gso ($BATCH-segment UDP GSO trains), or both (default $LOADS)
  --rate R            datagrams per second A offers on both paths, or max (default $RATE: as
                      fast as A can; on few cores A then competes with the relay for CPU)
  --ping-count N      pings per latency measurement, one in flight, ${PING_INTERVAL_MS} ms apart
                      (default $PING_COUNT)
  --json FILE         also write the results (samples and medians) as JSON to FILE
  -h, --help          this help

Environment:
  LANRAGE_BIN         the lanrage binary (default: target/release/lanrage, honouring
                      CARGO_TARGET_DIR; build it with 'cargo build --release')
  RELAY_LOAD_BIN      the load generator (default: built and found with
                      'cargo bench --no-run --bench relay_load --message-format=json')
  NO_COLOR

Columns: ${PAYLOAD}-byte payloads delivered per second at B's receiver (median), what A sent,
and round-trip percentiles of ${PING_COUNT} pings (µs). The target: relayed ≥ ${TARGET_RATIO} × plain.
EOF
}

while (($#)); do
    case "$1" in
        --seconds) SECONDS_EACH="${2:?--seconds needs a number}"; shift 2 ;;
        --seconds=*) SECONDS_EACH="${1#*=}"; shift ;;
        --runs) RUNS="${2:?--runs needs a number}"; shift 2 ;;
        --runs=*) RUNS="${1#*=}"; shift ;;
        --threads) THREADS="${2:?--threads needs a number}"; shift 2 ;;
        --threads=*) THREADS="${1#*=}"; shift ;;
        --load) LOADS="${2:?--load needs a list}"; shift 2 ;;
        --load=*) LOADS="${1#*=}"; shift ;;
        --rate) RATE="${2:?--rate needs a number or max}"; shift 2 ;;
        --rate=*) RATE="${1#*=}"; shift ;;
        --ping-count) PING_COUNT="${2:?--ping-count needs a number}"; shift 2 ;;
        --ping-count=*) PING_COUNT="${1#*=}"; shift ;;
        --json) JSON_OUT="${2:?--json needs a path}"; shift 2 ;;
        --json=*) JSON_OUT="${1#*=}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; nl_die "unknown argument '$1'" ;;
    esac
done

[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || nl_die "--runs must be a positive integer"
[[ "$SECONDS_EACH" =~ ^[1-9][0-9]*$ ]] || nl_die "--seconds must be a positive integer"
[[ "$THREADS" =~ ^[1-9][0-9]*$ ]] || nl_die "--threads must be a positive integer"
[[ "$PING_COUNT" =~ ^[1-9][0-9]*$ ]] || nl_die "--ping-count must be a positive integer"
[[ "$RATE" == max || "$RATE" =~ ^[1-9][0-9]*$ ]] || nl_die "--rate must be a positive integer or max"
[[ "$LOADS" == both ]] && LOADS="mmsg,gso"
IFS=, read -r -a LOAD_LIST <<<"$LOADS"
((${#LOAD_LIST[@]})) || nl_die "--load: empty list"
for load in "${LOAD_LIST[@]}"; do
    [[ "$load" == mmsg || "$load" == gso ]] || nl_die "--load: unknown load '$load' (mmsg, gso, both)"
done

nl_require_root "$@"
nl_require_tools ip ss jq awk timeout getconf sysctl
LANRAGE="$(nl_lanrage_bin)"
[[ -x "$LANRAGE" ]] || nl_die "lanrage binary not found at '$LANRAGE': build it with 'cargo build --release' or set LANRAGE_BIN"
"$LANRAGE" relay --help 2>&1 | grep -q -- '--session-rate' \
    || nl_die "'$LANRAGE relay --help' does not know --session-rate: rebuild lanrage"
if [[ -n "$JSON_OUT" ]]; then
    touch "$JSON_OUT" 2>/dev/null || nl_die "cannot write --json file '$JSON_OUT'"
fi

nl_init

# The load generator: a harness = false bench, so its file name carries a hash; cargo says which.
if [[ -n "${RELAY_LOAD_BIN:-}" ]]; then
    LOAD_BIN="$RELAY_LOAD_BIN"
else
    command -v cargo >/dev/null 2>&1 || nl_die "cargo not found: build the load generator and set RELAY_LOAD_BIN"
    nl_log "building the load generator (cargo bench --no-run --bench relay_load)"
    LOAD_BIN="$(cd "$NL_ROOT" && cargo bench --no-run --bench relay_load --message-format=json 2>"$NL_TMP/cargo.log" \
        | jq -r 'select(.reason == "compiler-artifact" and .target.name == "relay_load" and .executable != null) | .executable' \
        | tail -n1)" || true
    if [[ -z "$LOAD_BIN" ]]; then
        tail -n 20 "$NL_TMP/cargo.log" | sed 's/^/    | /' >&2
        nl_die "cannot build benches/relay_load.rs"
    fi
fi
[[ -x "$LOAD_BIN" ]] || nl_die "load generator '$LOAD_BIN' is not executable"

# ---------------------------------------------------------------------------------------------
# namespaces

NS_A="lrrelay-$$-a"
NS_R="lrrelay-$$-relay"
NS_B="lrrelay-$$-b"

nl_log "namespaces $NS_A — $NS_R — $NS_B (two veth links, $(nproc) cores, kernel $(uname -r))"
for ns in "$NS_A" "$NS_R" "$NS_B"; do nl_make_ns "$ns"; done
nl_link "$NS_A" "$NS_R" "rla${NL_ID}" "rlr${NL_ID}a" "$IP_A" "$IP_RA"
nl_link "$NS_B" "$NS_R" "rlb${NL_ID}" "rlr${NL_ID}b" "$IP_B" "$IP_RB"
nl_in "$NS_R" ip addr add "$IP_RELAY/32" dev lo
nl_in "$NS_R" sysctl -q -w net.ipv4.ip_forward=1 >/dev/null
nl_in "$NS_A" ip route add default via "$IP_RA"
nl_in "$NS_B" ip route add default via "$IP_RB"
for ((i = 0; i < 50; i++)); do
    nl_in "$NS_A" ping -c 1 -W 1 -q "$IP_B" >/dev/null 2>&1 \
        && nl_in "$NS_B" ping -c 1 -W 1 -q "$IP_RELAY" >/dev/null 2>&1 && break
    ((i == 49)) && nl_die "the namespaces do not pass traffic ($NS_A → $IP_B, $NS_B → $IP_RELAY)"
    sleep 0.1
done

# ---------------------------------------------------------------------------------------------
# control server and relay

SECRET="$NL_TMP/relay.secret"
nl_log "control server and relay ($THREADS worker threads) in $NS_R"
ip netns exec "$NS_R" "$LANRAGE" control-server --listen "127.0.0.1:$CONTROL_PORT" \
    --db "$NL_TMP/control.db" --relay-secret-file "$SECRET" >"$NL_TMP/control.log" 2>&1 </dev/null &
CONTROL_PID=$!
nl_track "$CONTROL_PID"
for ((i = 0; i < 100; i++)); do
    [[ -s "$SECRET" ]] && nl_in "$NS_R" ss -ltnH "sport = :$CONTROL_PORT" 2>/dev/null | grep -q . && break
    kill -0 "$CONTROL_PID" 2>/dev/null || { tail -n 15 "$NL_TMP/control.log" >&2; nl_die "the control server exited"; }
    ((i == 99)) && nl_die "the control server is not listening after 10 s"
    sleep 0.1
done

ip netns exec "$NS_R" "$LANRAGE" relay --server "http://127.0.0.1:$CONTROL_PORT" \
    --public-addr "$IP_RELAY:$RELAY_PORT" --secret-file "$SECRET" --port "$RELAY_PORT" \
    --threads "$THREADS" --session-rate 0 >"$NL_TMP/relay.log" 2>&1 </dev/null &
RELAY_PID=$!
nl_track "$RELAY_PID"
for ((i = 0; i < 100; i++)); do
    grep -q 'registered with the control server' "$NL_TMP/relay.log" 2>/dev/null \
        && nl_in "$NS_R" ss -ulnH "sport = :$RELAY_PORT" 2>/dev/null | grep -q . && break
    kill -0 "$RELAY_PID" 2>/dev/null || { tail -n 15 "$NL_TMP/relay.log" >&2; nl_die "the relay exited"; }
    ((i == 99)) && { tail -n 15 "$NL_TMP/relay.log" >&2; nl_die "the relay did not bind and register within 10 s"; }
    sleep 0.1
done

# ---------------------------------------------------------------------------------------------
# measurements

declare -A SAMPLES=()   # "path.metric" -> space-separated samples
add_sample() { SAMPLES["$1.$2"]="${SAMPLES["$1.$2"]:-}${SAMPLES["$1.$2"]:+ }$3"; }

# Every measurement binds a fresh relay session: its own party number.
PARTY=$(( ($$ << 16) + RANDOM ))
RELAY_ARGS=()
new_session() { PARTY=$((PARTY + 1)); }
relay_args() {
    RELAY_ARGS=(--relay "$IP_RELAY:$RELAY_PORT" --secret "$SECRET" --side "$1" --party "$PARTY")
}

# Datagrams the relay namespace's UDP sockets dropped for a full receive buffer.
# shellcheck disable=SC2016 # awk program, not shell
relay_rcvbuf_errors() {
    nl_in "$NS_R" awk '/^Udp:/ { if (!c) { for (i = 1; i <= NF; i++) if ($i == "RcvbufErrors") c = i } else print $c }' /proc/net/snmp
}

# Packets dropped by full per-CPU backlogs (veth delivers through them), machine-wide.
backlog_drops() {
    local total=0 _p dropped _rest
    while read -r _p dropped _rest; do total=$((total + 16#$dropped)); done </proc/net/softnet_stat
    echo "$total"
}

# start_recv TAG ARGS... — a receiver in B; waits for its ready file. Sets RECV_PID, RECV_OUT.
start_recv() {
    local tag="$1" ready="$NL_TMP/ready.$1" i
    shift
    RECV_OUT="$NL_TMP/recv.$tag.json"
    rm -f "$ready"
    ip netns exec "$NS_B" "$LOAD_BIN" recv --listen "$IP_B:$DATA_PORT" --first-wait 20 \
        --ready-file "$ready" --json "$@" >"$RECV_OUT" 2>"$NL_TMP/recv.$tag.err" </dev/null &
    RECV_PID=$!
    nl_track "$RECV_PID"
    for ((i = 0; i < 200; i++)); do
        [[ -e "$ready" ]] && return 0
        kill -0 "$RECV_PID" 2>/dev/null || break
        sleep 0.05
    done
    nl_warn "receiver ($tag) not ready: $(tail -n 3 "$NL_TMP/recv.$tag.err" 2>/dev/null | tr '\n' ' ')"
    nl_kill_pid "$RECV_PID" 5
    return 1
}

# finish_recv — wait for the receiver (it stops by itself), at most 30 s.
finish_recv() {
    local i
    for ((i = 0; i < 300; i++)); do
        kill -0 "$RECV_PID" 2>/dev/null || break
        sleep 0.1
    done
    nl_kill_pid "$RECV_PID" 5
}

# jq_field FILE FILTER — the filter's value, or "null".
jq_field() {
    local v
    v="$(jq -r "$2" "$1" 2>/dev/null)" || v=null
    echo "${v:-null}"
}

# measure_rate PATH LOAD — sets M_PPS (delivered/s, at B), M_SENT (sent/s, at A), M_DROPS
# (B's socket), M_CORES (relay CPU, cores), M_RELAY_DROPS (relay's sockets), M_BACKLOG_DROPS
# ("null" where unknown).
measure_rate() {
    local path="$1" load="$2" tag="$1-$2" send_args=() recv_relay=() send_relay=()
    local cpu0 cpu1 t0 t1 rd0 rd1 bd0 bd1
    M_PPS=null; M_SENT=null; M_DROPS=null; M_CORES=null; M_RELAY_DROPS=null; M_BACKLOG_DROPS=null
    if [[ "$load" == gso ]]; then send_args+=(--gso); fi
    if [[ "$path" == relayed ]]; then
        new_session
        relay_args high; recv_relay=("${RELAY_ARGS[@]}")
        relay_args low; send_relay=("${RELAY_ARGS[@]}")
    fi
    start_recv "$tag" --seconds "$SECONDS_EACH" --idle-ms 2000 "${recv_relay[@]}" || return 0
    cpu0="$(nl_cpu_seconds "$RELAY_PID")"; rd0="$(relay_rcvbuf_errors)"; bd0="$(backlog_drops)"
    t0="$(date +%s.%N)"
    # The sender outlasts the receiver's window, which starts at the first datagram.
    if ! timeout --foreground $((SECONDS_EACH + 30)) ip netns exec "$NS_A" "$LOAD_BIN" send \
        --to "$IP_B:$DATA_PORT" --seconds "$SECONDS_EACH.5" --size "$PAYLOAD" --batch "$BATCH" --rate "$RATE" \
        --json "${send_args[@]}" "${send_relay[@]}" >"$NL_TMP/send.$tag.json" 2>"$NL_TMP/send.$tag.err" </dev/null; then
        nl_warn "sender ($tag) failed: $(tail -n 3 "$NL_TMP/send.$tag.err" | tr '\n' ' ')"
    fi
    t1="$(date +%s.%N)"
    cpu1="$(nl_cpu_seconds "$RELAY_PID")"; rd1="$(relay_rcvbuf_errors)"; bd1="$(backlog_drops)"
    finish_recv
    M_PPS="$(jq_field "$RECV_OUT" 'if .full_window then .pps else null end')"
    M_DROPS="$(jq_field "$RECV_OUT" '.socket_drops')"
    M_SENT="$(jq_field "$NL_TMP/send.$tag.json" '.pps')"
    M_BACKLOG_DROPS=$((bd1 - bd0))
    if [[ "$path" == relayed ]]; then
        M_RELAY_DROPS=$((rd1 - rd0))
        if [[ -n "$cpu0" && -n "$cpu1" ]]; then
            M_CORES="$(awk -v a="$cpu0" -v b="$cpu1" -v t0="$t0" -v t1="$t1" 'BEGIN { printf "%.2f", (b - a) / (t1 - t0) }')"
        fi
    fi
    return 0
}

# measure_ping PATH — sets P_P50 P_P90 P_P99 P_MAX (µs) and P_LOST ("null" where unknown).
measure_ping() {
    local path="$1" tag="ping-$1" recv_relay=() ping_relay=() out="$NL_TMP/ping.$1.json"
    P_P50=null; P_P90=null; P_P99=null; P_MAX=null; P_LOST=null
    if [[ "$path" == relayed ]]; then
        new_session
        relay_args high; recv_relay=("${RELAY_ARGS[@]}")
        relay_args low; ping_relay=("${RELAY_ARGS[@]}")
    fi
    start_recv "$tag" --seconds 3600 --idle-ms 1000 "${recv_relay[@]}" || return 0
    rm -f "$out"
    if ! timeout --foreground $((PING_COUNT / 100 + 60)) ip netns exec "$NS_A" "$LOAD_BIN" ping \
        --to "$IP_B:$DATA_PORT" --count "$PING_COUNT" --interval-ms "$PING_INTERVAL_MS" \
        --size "$PAYLOAD" --json "${ping_relay[@]}" >"$out" 2>"$NL_TMP/ping.$1.err" </dev/null; then
        nl_warn "ping ($path) failed: $(tail -n 3 "$NL_TMP/ping.$1.err" | tr '\n' ' ')"
    fi
    finish_recv
    P_P50="$(jq_field "$out" '.p50_us')"; P_P90="$(jq_field "$out" '.p90_us')"
    P_P99="$(jq_field "$out" '.p99_us')"; P_MAX="$(jq_field "$out" '.max_us')"
    P_LOST="$(jq_field "$out" '.lost')"
    return 0
}

# fmt DECIMALS VALUE — number or "n/a"
fmt() { if [[ "$2" == null || -z "$2" ]]; then echo "n/a"; else printf "%.${1}f" "$2"; fi; }

# fmt_signed VALUE — "+12" / "-4" (no decimals) or "n/a"
fmt_signed() { if [[ "$1" == null || -z "$1" ]]; then echo "n/a"; else printf "%+.0f" "$1"; fi; }

# pps as "56k" / "1.20M"
fmt_pps() {
    [[ "$1" == null || -z "$1" ]] && { echo "n/a"; return; }
    awk -v v="$1" 'BEGIN { if (v >= 1e6) printf "%.2fM", v / 1e6; else if (v >= 1e4) printf "%.0fk", v / 1e3; else printf "%.1fk", v / 1e3 }'
}

# median of the non-null numbers given; "null" if none.
median() {
    printf '%s\n' "$@" | { grep -Ev '^(null|nan|)$' || true; } | sort -g \
        | awk '{v[NR] = $1} END { if (NR == 0) print "null"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

med() {
    local s="${SAMPLES["$1.$2"]:-}" v
    if [[ -z "$s" ]]; then echo null; return; fi
    read -r -a v <<<"$s"
    median "${v[@]}"
}

# calc EXPR A B — awk arithmetic on two numbers, or "null".
calc() {
    [[ "$2" == null || "$3" == null || -z "$2" || -z "$3" ]] && { echo null; return; }
    awk -v a="$2" -v b="$3" "BEGIN { if (\"$1\" == \"ratio\") { if (b == 0) print \"null\"; else printf \"%.4f\", a / b } else printf \"%.1f\", a - b }"
}

load_name() {
    case "$1" in
        mmsg) echo "sendmmsg ×$BATCH" ;;
        gso) echo "GSO ×$BATCH" ;;
    esac
}

T_START="$(date +%s)"
FAILED=0
for ((r = 1; r <= RUNS; r++)); do
    nl_log "run $r/$RUNS"
    for load in "${LOAD_LIST[@]}"; do
        for path in plain relayed; do
            measure_rate "$path" "$load"
            add_sample "$path" "$load.delivered_pps" "$M_PPS"
            add_sample "$path" "$load.sent_pps" "$M_SENT"
            add_sample "$path" "$load.receiver_drops" "$M_DROPS"
            add_sample "$path" "$load.backlog_drops" "$M_BACKLOG_DROPS"
            extra=""
            if [[ "$path" == relayed ]]; then
                add_sample "$path" "$load.relay_cores" "$M_CORES"
                add_sample "$path" "$load.relay_socket_drops" "$M_RELAY_DROPS"
                extra=", relay sockets $M_RELAY_DROPS; the relay used $M_CORES cores"
            fi
            if [[ "$M_PPS" == null ]]; then FAILED=1; fi
            printf '    run %d/%d %-7s %-13s delivered %s/s, sent %s/s; drops: receiver %s, backlogs %s%s\n' \
                "$r" "$RUNS" "$path" "$(load_name "$load")" "$(fmt_pps "$M_PPS")" "$(fmt_pps "$M_SENT")" \
                "$M_DROPS" "$M_BACKLOG_DROPS" "$extra" >&2
            sleep 0.5
        done
    done
    for path in plain relayed; do
        measure_ping "$path"
        add_sample "$path" rtt_p50 "$P_P50"; add_sample "$path" rtt_p90 "$P_P90"
        add_sample "$path" rtt_p99 "$P_P99"; add_sample "$path" rtt_max "$P_MAX"
        add_sample "$path" rtt_lost "$P_LOST"
        if [[ "$P_P50" == null ]]; then FAILED=1; fi
        printf '    run %d/%d %-7s ping          RTT µs p50 %s p90 %s p99 %s max %s, lost %s\n' \
            "$r" "$RUNS" "$path" "$P_P50" "$P_P90" "$P_P99" "$P_MAX" "$P_LOST" >&2
    done
    if ! kill -0 "$RELAY_PID" 2>/dev/null; then
        tail -n 15 "$NL_TMP/relay.log" >&2
        nl_die "the relay died during run $r"
    fi
done

# ---------------------------------------------------------------------------------------------
# report

{
    echo
    echo "LANrage relay benchmark — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, kernel $(uname -r), median of $RUNS run(s), ${SECONDS_EACH}s per rate test, ${PAYLOAD}-byte payloads, relay $THREADS thread(s), offered rate $RATE, $PING_COUNT pings ${PING_INTERVAL_MS} ms apart"
    echo
    header="| path |"; sep="| --- |"
    for load in "${LOAD_LIST[@]}"; do
        header+=" pkts/s delivered, $(load_name "$load") (sent) |"; sep+=" --- |"
    done
    header+=" RTT p50 | RTT p99 | RTT max |"; sep+=" --- | --- | --- |"
    echo "$header"; echo "$sep"
    for path in plain relayed; do
        if [[ "$path" == plain ]]; then row="| plain UDP (kernel forwarding) |"; else row="| lanrage relay ($THREADS thread(s)) |"; fi
        for load in "${LOAD_LIST[@]}"; do
            row+=" $(fmt_pps "$(med "$path" "$load.delivered_pps")") ($(fmt_pps "$(med "$path" "$load.sent_pps")")) |"
        done
        row+=" $(fmt 0 "$(med "$path" rtt_p50)") µs | $(fmt 0 "$(med "$path" rtt_p99)") µs | $(fmt 0 "$(med "$path" rtt_max)") µs |"
        echo "$row"
    done
    row="| relayed / plain, added RTT |"
    for load in "${LOAD_LIST[@]}"; do
        ratio="$(calc ratio "$(med relayed "$load.delivered_pps")" "$(med plain "$load.delivered_pps")")"
        if [[ "$ratio" == null ]]; then row+=" n/a |"; else
            verdict="$(awk -v r="$ratio" -v t="$TARGET_RATIO" 'BEGIN { print (r >= t ? "meets" : "misses") }')"
            row+=" **$(fmt 2 "$ratio")×** ($verdict ≥ $TARGET_RATIO) |"
        fi
    done
    row+=" $(fmt_signed "$(calc diff "$(med relayed rtt_p50)" "$(med plain rtt_p50)")") µs | **$(fmt_signed "$(calc diff "$(med relayed rtt_p99)" "$(med plain rtt_p99)")") µs** | $(fmt_signed "$(calc diff "$(med relayed rtt_max)" "$(med plain rtt_max)")") µs |"
    echo "$row"
    echo
    echo "Topology: A — relay namespace — B on two veth links; plain UDP is forwarded by the relay namespace's kernel, relayed goes through 'lanrage relay --session-rate 0'. Delivered: counted by B's receiver over ${SECONDS_EACH}s from the first datagram; sent: A's rate over ${SECONDS_EACH}.5 s (offered: $RATE)."
    for load in "${LOAD_LIST[@]}"; do
        printf -- '- %s: drops (median per run) at B'\''s socket plain %s / relayed %s, in per-CPU backlogs plain %s / relayed %s, at the relay'\''s sockets %s; the relay used %s cores while relaying\n' \
            "$(load_name "$load")" \
            "$(med plain "$load.receiver_drops")" "$(med relayed "$load.receiver_drops")" \
            "$(med plain "$load.backlog_drops")" "$(med relayed "$load.backlog_drops")" \
            "$(med relayed "$load.relay_socket_drops")" "$(med relayed "$load.relay_cores")"
    done
    printf -- '- pings lost (median per run): plain %s, relayed %s; RTT p90 plain %s µs, relayed %s µs\n' \
        "$(med plain rtt_lost)" "$(med relayed rtt_lost)" "$(fmt 0 "$(med plain rtt_p90)")" "$(fmt 0 "$(med relayed rtt_p90)")"
    printf -- '- relay: %s\n' "$("$LANRAGE" --version 2>/dev/null | head -n1)"
    if ((FAILED)); then echo; echo "Some measurements FAILED (n/a above); see the warnings."; fi
}

if [[ -n "$JSON_OUT" ]]; then
    results='{}'
    for key in "${!SAMPLES[@]}"; do
        path="${key%%.*}"; metric="${key#*.}"
        results="$(jq --arg p "$path" --arg m "$metric" --arg s "${SAMPLES[$key]}" --arg med "$(med "$path" "$metric")" \
            '.[$p][$m] = {median: ($med | if . == "null" then null else tonumber end),
                          samples: ($s | split(" ") | map(select(. != "") | if . == "null" then null else tonumber end))}' \
            <<<"$results")"
    done
    ratios='{}'
    for load in "${LOAD_LIST[@]}"; do
        ratio="$(calc ratio "$(med relayed "$load.delivered_pps")" "$(med plain "$load.delivered_pps")")"
        ratios="$(jq --arg l "$load" --arg r "$ratio" '.[$l] = ($r | if . == "null" then null else tonumber end)' <<<"$ratios")"
    done
    jq -n --argjson r "$results" --argjson ratios "$ratios" --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        --arg kernel "$(uname -r)" --argjson cores "$(nproc)" --argjson runs "$RUNS" \
        --argjson seconds "$SECONDS_EACH" --argjson threads "$THREADS" --argjson payload "$PAYLOAD" \
        --argjson batch "$BATCH" --arg rate "$RATE" --argjson pings "$PING_COUNT" --argjson target "$TARGET_RATIO" \
        --arg p99 "$(calc diff "$(med relayed rtt_p99)" "$(med plain rtt_p99)")" \
        --arg p50 "$(calc diff "$(med relayed rtt_p50)" "$(med plain rtt_p50)")" \
        --arg version "$("$LANRAGE" --version 2>/dev/null | head -n1)" \
        --argjson elapsed "$(( $(date +%s) - T_START ))" \
        'def num: if . == "null" then null else tonumber end;
         {date: $date, kernel: $kernel, cores: $cores, runs: $runs, seconds: $seconds,
          relay_threads: $threads, payload_bytes: $payload, batch: $batch, pings: $pings,
          offered_rate: (if $rate == "max" then "max" else ($rate | tonumber) end),
          topology: "A - relay namespace - B, two veth links; plain is kernel-forwarded",
          relay: $version, elapsed_s: $elapsed, statistic: "median",
          ratio_relayed_to_plain: $ratios, target_ratio: $target,
          added_rtt_us: {p50: ($p50 | num), p99: ($p99 | num)},
          results: $r}' >"$JSON_OUT"
    nl_log "JSON results written to $JSON_OUT"
fi

((FAILED == 0)) || exit 1
