#!/usr/bin/env bash
# scripts/scaling-peers.sh — how a lanrage hub's throughput scales with its worker count when
# many peers send and receive at once.
#
# scripts/scaling.sh measures one pair of peers: one UDP 4-tuple, which the kernel's reuseport
# hash hands to one receiving worker, and one WireGuard session, so more workers cannot help.
# A host in a party (or a relay-less game server) talks to many members at once; here a hub
# namespace runs lanrage with N workers and P peer namespaces each run lanrage with one worker,
# each joined to the hub by its own veth. Every peer runs F iperf3 flows to the hub (peers →
# hub: the hub decrypts), then F flows back (-R: the hub encrypts). The hub is brought up once
# per worker count; the peers are restarted with it.
#
# Run as root. Usage: scripts/scaling-peers.sh [options]   (--help)

set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=netns-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/netns-lib.sh"

WORKERS="1,2,4,8,16"
PEERS=8
FLOWS=2
DURATION=6
JSON_OUT=""
BASE_PORT=5401

usage() {
    cat <<EOF
Usage: $0 [options]

Measures a lanrage hub's aggregate TCP throughput with several peers at once, per worker count.

Options:
  --workers LIST      hub worker counts to measure (default $WORKERS)
  --peers P           peer namespaces, one lanrage (1 worker) each (default $PEERS)
  --flows F           iperf3 flows per peer, one process each (default $FLOWS)
  --duration S        seconds per direction (default $DURATION)
  --json PATH         also write the results as JSON to PATH
  -h, --help          this help

Columns: TCP Gbit/s summed over all flows (receiver side), peers → hub and hub → peers; the
hub daemon's CPU seconds per Gbit over both tests; average ping from the first peer to the hub
while the peers → hub flows run.
EOF
}

while (($#)); do
    case "$1" in
        --workers) WORKERS="${2:?--workers needs a list}"; shift 2 ;;
        --peers) PEERS="${2:?--peers needs a number}"; shift 2 ;;
        --flows) FLOWS="${2:?--flows needs a number}"; shift 2 ;;
        --duration) DURATION="${2:?--duration needs seconds}"; shift 2 ;;
        --json) JSON_OUT="${2:?--json needs a path}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; nl_die "unknown argument '$1'" ;;
    esac
done

if ! [[ "$PEERS" =~ ^[1-9][0-9]*$ ]] || ((PEERS > 60)); then nl_die "--peers must be 1..60"; fi
[[ "$FLOWS" =~ ^[1-9][0-9]*$ ]] || nl_die "--flows must be a positive integer"
if ! [[ "$DURATION" =~ ^[1-9][0-9]*$ ]] || ((DURATION < 3)); then nl_die "--duration must be an integer >= 3"; fi
IFS=, read -r -a WORKER_COUNTS <<<"$WORKERS"
for n in "${WORKER_COUNTS[@]}"; do [[ "$n" =~ ^[1-9][0-9]*$ ]] || nl_die "--workers: '$n' is not a positive integer"; done

nl_require_root "$@"
nl_require_tools ip ss wg iperf3 ping jq awk timeout
nl_impl_require lanrage

nl_init
HUB="lrpeers-${NL_ID}-hub"
HUB_TUN=100.64.0.1
HUB_PORT=51820
peer_ns() { echo "lrpeers-${NL_ID}-p$1"; }
peer_tun() { echo "100.64.0.$(($1 + 10))"; }
# Underlay per peer: 10.201.P.0/30, hub .1, peer .2.
hub_underlay() { echo "10.201.$1.1"; }
peer_underlay() { echo "10.201.$1.2"; }

nl_log "hub $HUB and $PEERS peers ($(nproc) cores, kernel $(uname -r)), $FLOWS flows per peer, ${DURATION}s per direction"
nl_make_ns "$HUB"
for ((p = 0; p < PEERS; p++)); do
    nl_make_ns "$(peer_ns "$p")"
    nl_link "$HUB" "$(peer_ns "$p")" "vh${NL_ID}$p" "vp${NL_ID}$p" "$(hub_underlay "$p")" "$(peer_underlay "$p")"
done
for ((p = 0; p < PEERS; p++)); do
    for ((i = 0; i < 50; i++)); do
        nl_in "$(peer_ns "$p")" ping -c 1 -W 1 -q "$(hub_underlay "$p")" >/dev/null 2>&1 && break
        sleep 0.1
    done
done

# Keys stay the same across worker counts.
nl_wg_keypair hub
for ((p = 0; p < PEERS; p++)); do nl_wg_keypair "peer$p"; done

# iperf3 servers in the hub, one per (peer, flow).
declare -A SERVER_PID=()
start_server() {
    local port="$1" i
    [[ -n "${SERVER_PID[$port]:-}" ]] && { kill "${SERVER_PID[$port]}" 2>/dev/null || true; wait "${SERVER_PID[$port]}" 2>/dev/null || true; }
    nl_in "$HUB" iperf3 -s -p "$port" >>"$NL_TMP/iperf3-server-$port.log" 2>&1 </dev/null &
    SERVER_PID[$port]=$!
    nl_track $!
    for ((i = 0; i < 50; i++)); do
        nl_in "$HUB" ss -ltnH "sport = :$port" | grep -q . && return 0
        sleep 0.1
    done
    nl_warn "iperf3 server on port $port did not come up"
}
for ((port = BASE_PORT; port < BASE_PORT + PEERS * FLOWS; port++)); do start_server "$port"; done

# hub_up K WORKERS — the hub and every peer, configured and handshaken. Sets DAEMON_PIDS,
# HUB_PID and IFNAMES.
hub_up() {
    local k="$1" workers="$2" p hub_if peer_if args=()
    hub_if="lh${NL_ID}${k}"
    IFNAMES=("$hub_if")
    nl_start_daemon lanrage "$HUB" "$hub_if" "$NL_TMP/hub-$k.log" "$workers"
    HUB_PID="$NL_DAEMON_PID"
    DAEMON_PIDS=("$HUB_PID")
    for ((p = 0; p < PEERS; p++)); do
        args+=(peer "$(cat "$NL_TMP/peer$p.pub")" allowed-ips "$(peer_tun "$p")/32"
            endpoint "$(peer_underlay "$p"):$HUB_PORT")
    done
    nl_in "$HUB" wg set "$hub_if" private-key "$NL_TMP/hub.key" listen-port "$HUB_PORT" "${args[@]}" \
        || nl_die "wg set $hub_if failed"
    nl_in "$HUB" ip addr add "$HUB_TUN/24" dev "$hub_if"
    nl_in "$HUB" ip link set "$hub_if" mtu "$NL_TUN_MTU" up
    for ((p = 0; p < PEERS; p++)); do
        peer_if="lp${NL_ID}${k}x$p"
        IFNAMES+=("$peer_if")
        nl_start_daemon lanrage "$(peer_ns "$p")" "$peer_if" "$NL_TMP/peer$p-$k.log" 1
        DAEMON_PIDS+=("$NL_DAEMON_PID")
        nl_in "$(peer_ns "$p")" wg set "$peer_if" private-key "$NL_TMP/peer$p.key" listen-port "$HUB_PORT" \
            peer "$(cat "$NL_TMP/hub.pub")" allowed-ips "$HUB_TUN/32" endpoint "$(hub_underlay "$p"):$HUB_PORT" \
            || nl_die "wg set $peer_if failed"
        nl_in "$(peer_ns "$p")" ip addr add "$(peer_tun "$p")/24" dev "$peer_if"
        nl_in "$(peer_ns "$p")" ip link set "$peer_if" mtu "$NL_TUN_MTU" up
    done
    for ((p = 0; p < PEERS; p++)); do
        nl_wait_ping "$(peer_ns "$p")" "$HUB_TUN" 10 || nl_die "peer $p: no tunnel to the hub within 10 s"
    done
}

# run_flows MODE — every peer's flows at once (MODE up: peers → hub; down: hub → peers, -R);
# sets FLOW_SUM (Gbit/s, receiver side) and FLOW_N (flows that reported).
run_flows() {
    local mode="$1" p f port pids=() extra=()
    [[ "$mode" == down ]] && extra=(-R)
    rm -f "$NL_TMP"/flow-*.json
    for ((p = 0; p < PEERS; p++)); do
        for ((f = 0; f < FLOWS; f++)); do
            port=$((BASE_PORT + p * FLOWS + f))
            timeout --foreground $((DURATION + 20)) ip netns exec "$(peer_ns "$p")" \
                iperf3 -c "$HUB_TUN" -p "$port" -t "$DURATION" --connect-timeout 3000 -J "${extra[@]}" \
                >"$NL_TMP/flow-$port.json" 2>/dev/null </dev/null &
            pids+=($!)
        done
    done
    for f in "${pids[@]}"; do wait "$f" || true; done
    read -r FLOW_SUM FLOW_N < <(jq -rs 'map(select((.end.sum_received.seconds // 0) > 0)
            | .end.sum_received.bits_per_second / 1e9)
            | if length == 0 then "null 0" else "\(add) \(length)" end' \
        "$NL_TMP"/flow-*.json 2>/dev/null || echo "null 0")
    for ((port = BASE_PORT; port < BASE_PORT + PEERS * FLOWS; port++)); do
        jq -e '(.end.sum_received.seconds // 0) > 0' "$NL_TMP/flow-$port.json" >/dev/null 2>&1 || start_server "$port"
    done
}

ROWS=()    # "workers|up|down|cpu_per_gbit|ping"
k=0
for n in "${WORKER_COUNTS[@]}"; do
    nl_log "hub with $n worker(s), $PEERS peers"
    hub_up "$k" "$n"
    c0="$(nl_cpu_seconds "$HUB_PID")"
    (sleep 1; nl_ping_stats "$(peer_ns 0)" "$HUB_TUN" $(((DURATION - 2) * 50)) 0.02 >"$NL_TMP/ping-loaded") &
    ping_pid=$!
    run_flows up; up="$FLOW_SUM"; up_n="$FLOW_N"
    wait "$ping_pid" || true
    read -r _ lping _ _ <"$NL_TMP/ping-loaded" || lping=null
    [[ "$lping" == nan || -z "$lping" ]] && lping=null
    sleep 1
    run_flows down; down="$FLOW_SUM"; down_n="$FLOW_N"
    c1="$(nl_cpu_seconds "$HUB_PID")"
    total=$((PEERS * FLOWS))
    ((up_n == total)) || { nl_warn "$n workers: only $up_n of $total flows to the hub finished"; up=null; }
    ((down_n == total)) || { nl_warn "$n workers: only $down_n of $total flows from the hub finished"; down=null; }
    cpg="$(awk -v a="$c0" -v b="$c1" -v u="$up" -v d="$down" -v t="$DURATION" \
        'BEGIN { g = (u == "null" ? 0 : u) + (d == "null" ? 0 : d); if (g > 0) printf "%.3f", (b - a) / (g * t); else print "null" }')"
    nl_tunnel_down "${DAEMON_PIDS[*]}" "${IFNAMES[*]}"
    printf '    hub %2d worker(s): peers → hub %6.2f Gbit/s | hub → peers %6.2f Gbit/s | hub CPU s per Gbit %s | ping %s ms\n' \
        "$n" "${up/null/0}" "${down/null/0}" "$cpg" "$lping" >&2
    ROWS+=("$n|$up|$down|$cpg|$lping")
    k=$((k + 1))
done

base_up=""; base_down=""
IFS='|' read -r _ base_up base_down _ _ <<<"${ROWS[0]}"
{
    echo
    echo "LANrage hub scaling — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, kernel $(uname -r), $PEERS peers × $FLOWS iperf3 flows, ${DURATION}s per direction, tunnel MTU $NL_TUN_MTU"
    echo
    echo "| hub workers | peers → hub Gbit/s | vs 1st row | hub → peers Gbit/s | vs 1st row | hub CPU s per Gbit | ping peer → hub under load |"
    echo "| --- | --- | --- | --- | --- | --- | --- |"
    for row in "${ROWS[@]}"; do
        IFS='|' read -r n up down cpg lping <<<"$row"
        rel() {
            if [[ "$1" == null || -z "$2" || "$2" == null ]]; then echo "—"; else awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f×", a / b }'; fi
        }
        fmt() { [[ "$1" == null ]] && echo failed || printf '%.2f' "$1"; }
        printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$n" "$(fmt "$up")" "$(rel "$up" "$base_up")" \
            "$(fmt "$down")" "$(rel "$down" "$base_down")" "${cpg/null/—}" \
            "$( [[ "$lping" == null ]] && echo — || printf '%.3f ms' "$lping")"
    done
}
if [[ -n "$JSON_OUT" ]]; then
    printf '%s\n' "${ROWS[@]}" | jq -R 'split("|") | {workers: (.[0] | tonumber),
        peers_to_hub_gbit: (.[1] | tonumber? // null), hub_to_peers_gbit: (.[2] | tonumber? // null),
        hub_cpu_s_per_gbit: (.[3] | tonumber? // null), ping_ms: (.[4] | tonumber? // null)}' \
        | jq -s --argjson peers "$PEERS" --argjson flows "$FLOWS" --argjson duration "$DURATION" \
            '{peers: $peers, flows_per_peer: $flows, duration_s: $duration, rows: .}' >"$JSON_OUT"
fi
