#!/usr/bin/env bash
# scripts/scaling.sh — how lanrage's throughput scales with its worker count.
#
# The same two namespaces and tunnel set-up as scripts/bench.sh, but the load is several
# iperf3 flows at once (one client process per flow, so that the load generator is not one
# thread), and lanrage is brought up once per worker count. wireguard-go and boringtun-cli run
# once each with all cores, as references in the same run. Both tunnel ends and every iperf3
# process share this machine's cores: at high worker counts they compete, and the curve says so.
#
# Run as root. Usage: scripts/scaling.sh [options]   (scripts/scaling.sh --help)

set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=netns-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/netns-lib.sh"

WORKERS="1,2,4,8,16"
REFS="wireguard-go,boringtun-cli"
FLOWS=8
DURATION=8
UDP_LEN=100
JSON_OUT=""
BASE_PORT=5301
RAW=1

usage() {
    cat <<EOF
Usage: $0 [options]

Measures lanrage's aggregate throughput between two namespaces for several worker counts.

Options:
  --workers LIST      lanrage worker counts to measure (default $WORKERS)
  --refs LIST         references run with $(nproc) threads: wireguard-go,boringtun-cli, or
                      "none" (default $REFS)
  --flows N           concurrent iperf3 flows, one process each (default $FLOWS)
  --duration S        seconds per test (default $DURATION)
  --no-raw            skip the veth-without-tunnel row
  --json PATH         also write the results as JSON to PATH
  -h, --help          this help

Columns: TCP Gbit/s summed over the flows (receiver side); average ping RTT through the tunnel
while those flows run (every 20 ms); UDP ${UDP_LEN}-byte datagrams
delivered per second summed over the flows, each sender as fast as it can; CPU seconds the two
daemons used per Gbit moved during the TCP test.
EOF
}

while (($#)); do
    case "$1" in
        --workers) WORKERS="${2:?--workers needs a list}"; shift 2 ;;
        --refs) REFS="${2:?--refs needs a list}"; shift 2 ;;
        --flows) FLOWS="${2:?--flows needs a number}"; shift 2 ;;
        --duration) DURATION="${2:?--duration needs seconds}"; shift 2 ;;
        --json) JSON_OUT="${2:?--json needs a path}"; shift 2 ;;
        --no-raw) RAW=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; nl_die "unknown argument '$1'" ;;
    esac
done

[[ "$FLOWS" =~ ^[1-9][0-9]*$ ]] || nl_die "--flows must be a positive integer"
if ! [[ "$DURATION" =~ ^[1-9][0-9]*$ ]] || ((DURATION < 3)); then nl_die "--duration must be an integer >= 3"; fi
IFS=, read -r -a WORKER_COUNTS <<<"$WORKERS"
for n in "${WORKER_COUNTS[@]}"; do [[ "$n" =~ ^[1-9][0-9]*$ ]] || nl_die "--workers: '$n' is not a positive integer"; done
REF_IMPLS=()
[[ "$REFS" == none ]] || IFS=, read -r -a REF_IMPLS <<<"$REFS"

nl_require_root "$@"
nl_require_tools ip ss wg iperf3 ping jq awk timeout
nl_impl_require lanrage
for impl in "${REF_IMPLS[@]}"; do nl_impl_require "$impl"; done

nl_init
NS_A="lrscale-${NL_ID}-a"
NS_B="lrscale-${NL_ID}-b"
nl_log "namespaces $NS_A <-> $NS_B ($(nproc) cores, kernel $(uname -r)), $FLOWS flows, ${DURATION}s per test"
nl_make_pair "$NS_A" "$NS_B"

# run_flows DST MODE — FLOWS iperf3 clients at once; sets FLOW_SUM to the receiver-side sum and
# FLOW_N to how many flows reported: MODE tcp: Gbit/s; MODE udp: datagrams delivered per second.
# (Not run in a subshell: it restarts iperf3 servers, whose pids the cleanup must know.)
# iperf3 never resends the datagram that opens a UDP test, so a flow that starts while the
# others already flood the tunnel can lose it and wait forever: UDP flows get a short deadline,
# and the sum is over the flows that finished (their senders alone outrun the tunnel).
run_flows() {
    local dst="$1" mode="$2" f pids=() extra=() deadline=$((DURATION + 20))
    [[ "$mode" == udp ]] && { extra=(-u -l "$UDP_LEN" -b 0 -w 4M); deadline=$((DURATION + 4)); }
    rm -f "$NL_TMP"/flow-*.json
    for ((f = 0; f < FLOWS; f++)); do
        timeout --foreground "$deadline" ip netns exec "$NS_A" \
            iperf3 -c "$dst" -p $((BASE_PORT + f)) -t "$DURATION" --connect-timeout 3000 -J "${extra[@]}" \
            >"$NL_TMP/flow-$f.json" 2>/dev/null </dev/null &
        pids+=($!)
    done
    for f in "${pids[@]}"; do wait "$f" || true; done
    local sum='.end.sum_received.bits_per_second / 1e9'
    [[ "$mode" == udp ]] && sum='.end.sum_received | (.packets - .lost_packets) / .seconds'
    read -r FLOW_SUM FLOW_N < <(jq -rs "map(select((.end.sum_received.seconds // 0) > 0) | $sum)
            | if length == 0 then \"null 0\" else \"\\(add) \\(length)\" end" \
        "$NL_TMP"/flow-*.json 2>/dev/null || echo "null 0")
    # The server of a flow that never started still waits for it: restart those servers.
    for ((f = 0; f < FLOWS; f++)); do
        jq -e '(.end.sum_received.seconds // 0) > 0' "$NL_TMP/flow-$f.json" >/dev/null 2>&1 || restart_server "$f"
    done
}

# restart_server F — a fresh iperf3 server for flow F (a stuck one keeps its port busy).
declare -A SERVER_PID=()
restart_server() {
    local f="$1" i
    [[ -n "${SERVER_PID[$f]:-}" ]] && { kill "${SERVER_PID[$f]}" 2>/dev/null || true; wait "${SERVER_PID[$f]}" 2>/dev/null || true; }
    ip netns exec "$NS_B" iperf3 -s -p $((BASE_PORT + f)) >>"$NL_TMP/iperf3-server-$f.log" 2>&1 </dev/null &
    SERVER_PID[$f]=$!
    nl_track $!
    for ((i = 0; i < 50; i++)); do
        nl_in "$NS_B" ss -ltnH "sport = :$((BASE_PORT + f))" | grep -q . && return 0
        sleep 0.1
    done
    nl_warn "iperf3 server for flow $f did not come back"
}

for ((f = 0; f < FLOWS; f++)); do restart_server "$f"; done

cpu_of() { local s=0 p v; for p in "$@"; do v="$(nl_cpu_seconds "$p")"; s="$(awk -v a="$s" -v b="${v:-0}" 'BEGIN { print a + b }')"; done; echo "$s"; }

ROWS=()    # "label|workers|tcp|udp|cpu_per_gbit"
measure() {
    local impl="$1" threads="$2" label="$3" k="$4" dst ifa ifb pids=() c0 c1 tcp tcp_n udp udp_n cpg lping
    if [[ "$impl" == raw ]]; then
        dst="$NL_UNDERLAY_B"
    else
        ifa="ls${NL_ID}${k}a"; ifb="ls${NL_ID}${k}b"
        nl_tunnel_up "$impl" "$NS_A" "$NS_B" "$ifa" "$ifb" "$threads"
        pids=("$NL_PID_A" "$NL_PID_B")
        if ! nl_wait_handshake "$NS_A" "$ifa" "$NL_TUN_B" 10 >/dev/null || ! nl_wait_ping "$NS_A" "$NL_TUN_B" 10; then
            nl_warn "$label: no tunnel within 10 s"
            tail -n 5 "$NL_TMP/$impl-$ifa.log" >&2 || true
            nl_tunnel_down "${pids[*]}" "$ifa $ifb"
            ROWS+=("$label|$threads|null|null|null|0|null")
            return 0
        fi
        dst="$NL_TUN_B"
    fi
    c0="$(cpu_of "${pids[@]}")"
    # Ping through the tunnel while the TCP flows saturate it, from 2 s in to 2 s before the end.
    (sleep 2; nl_ping_stats "$NS_A" "$dst" $((DURATION > 6 ? (DURATION - 4) * 50 : 100)) 0.02 >"$NL_TMP/ping-loaded") &
    local ping_pid=$!
    run_flows "$dst" tcp; tcp="$FLOW_SUM"; tcp_n="$FLOW_N"
    c1="$(cpu_of "${pids[@]}")"
    wait "$ping_pid" || true
    read -r _ lping _ _ <"$NL_TMP/ping-loaded" || lping=null
    [[ "$lping" == nan || -z "$lping" ]] && lping=null
    ((tcp_n == FLOWS)) || { nl_warn "$label: only $tcp_n of $FLOWS TCP flows finished"; tcp=null; }
    sleep 1
    run_flows "$dst" udp; udp="$FLOW_SUM"; udp_n="$FLOW_N"
    cpg=null
    if ((${#pids[@]})) && [[ "$tcp" != null ]]; then
        cpg="$(awk -v a="$c0" -v b="$c1" -v g="$tcp" -v d="$DURATION" 'BEGIN { if (g > 0) printf "%.3f", (b - a) / (g * d) }')"
    fi
    ((${#pids[@]})) && nl_tunnel_down "${pids[*]}" "$ifa $ifb"
    printf '    %-28s TCP %6.2f Gbit/s (ping %s ms) | UDP %8.0f pkts/s (%d/%d flows) | CPU s per Gbit %s\n' "$label" \
        "${tcp/null/0}" "$lping" "${udp/null/0}" "$udp_n" "$FLOWS" "$cpg" >&2
    ROWS+=("$label|$threads|$tcp|$udp|$cpg|$udp_n|$lping")
}

k=0
((RAW)) && measure raw "" "raw veth, no tunnel" $((k++))
for n in "${WORKER_COUNTS[@]}"; do
    nl_log "lanrage, $n worker(s)"
    measure lanrage "$n" "lanrage, $n worker(s)" $((k++))
done
for impl in "${REF_IMPLS[@]}"; do
    threads=""
    [[ "$impl" == boringtun-cli ]] && threads="$(nproc)"
    nl_log "$impl"
    measure "$impl" "$threads" "$impl${threads:+ ($threads threads)}" $((k++))
done

base=""
for row in "${ROWS[@]}"; do
    IFS='|' read -r label _ tcp _ _ <<<"$row"
    [[ "$label" == lanrage* && -z "$base" && "$tcp" != null ]] && base="$tcp"
done
{
    echo
    echo "LANrage scaling — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, kernel $(uname -r), $FLOWS iperf3 flows, ${DURATION}s per test, tunnel MTU $NL_TUN_MTU"
    echo
    echo "| path | TCP Gbit/s ($FLOWS flows) | vs 1st lanrage row | ping during TCP | UDP ${UDP_LEN} B pkts/s delivered (flows that reported) | daemon CPU s per Gbit |"
    echo "| --- | --- | --- | --- | --- | --- |"
    for row in "${ROWS[@]}"; do
        IFS='|' read -r label _ tcp udp cpg udp_n lping <<<"$row"
        rel="—"
        [[ -n "$base" && "$tcp" != null && "$label" != raw* ]] && rel="$(awk -v a="$tcp" -v b="$base" 'BEGIN { printf "%.2f×", a / b }')"
        printf '| %s | %s | %s | %s | %s | %s |\n' "$label" \
            "$( [[ "$tcp" == null ]] && echo failed || printf '%.2f' "$tcp")" "$rel" \
            "$( [[ "$lping" == null ]] && echo — || printf '%.3f ms' "$lping")" \
            "$( [[ "$udp" == null ]] && echo failed || printf '%.0f (%d/%d)' "$udp" "$udp_n" "$FLOWS")" "$( [[ "$cpg" == null ]] && echo — || echo "$cpg")"
    done
}
if [[ -n "$JSON_OUT" ]]; then
    printf '%s\n' "${ROWS[@]}" | jq -R -s --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        --arg kernel "$(uname -r)" --argjson cores "$(nproc)" --argjson flows "$FLOWS" \
        --argjson duration "$DURATION" \
        'def num: if . == "" or . == "null" then null else tonumber end;
         {date: $date, kernel: $kernel, cores: $cores, flows: $flows, duration_s: $duration,
          rows: (split("\n") | map(select(. != "") | split("|")
                 | {path: .[0], workers: (.[1] | num), tcp_gbps: (.[2] | num),
                    udp_pps: (.[3] | num), cpu_s_per_gbit: (.[4] | num),
                    udp_flows_reported: (.[5] | num), ping_loaded_ms: (.[6] | num)}))}' >"$JSON_OUT"
    nl_log "JSON results written to $JSON_OUT"
fi
