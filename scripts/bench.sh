#!/usr/bin/env bash
# scripts/bench.sh — namespace benchmark of userspace WireGuard implementations.
#
# Two network namespaces joined by a veth pair. For each implementation (lanrage,
# wireguard-go, boringtun-cli) a tunnel is set up the same way: the daemon in the foreground
# in each namespace, configured through `wg` (UAPI socket), MTU 1420. "raw" measures the veth
# without a tunnel (the ceiling). Each measurement is repeated --runs times; the median is
# reported. See DESIGN.md's performance reference table.
#
# Run as root. Usage: scripts/bench.sh [options]   (scripts/bench.sh --help)

set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=netns-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/netns-lib.sh"

RUNS=3
DURATION=10
ONLY="raw,lanrage,wireguard-go,boringtun-cli"
LR_THREADS=""
BT_THREADS="$(nproc)"
JSON_OUT=""
# 150k packets/s of 100-byte payloads: the rate the performance targets name.
UDP_RATE=120M
UDP_LEN=100
# The receiving iperf3's socket buffer. With the default (~208 KiB) its own socket overflowed
# at 150k packets/s on 2 vCPUs while the tunnel's sockets dropped nothing (ss: d5073 vs d0),
# so the loss measured the tool, not the tunnel. The kernel caps it at net.core.rmem_max.
UDP_WINDOW=4M
PING_COUNT=50
PING_INTERVAL=0.01
IPERF_PORT=5201

usage() {
    cat <<EOF
Usage: $0 [options]

Benchmarks userspace WireGuard implementations between two network namespaces.

Options:
  --only LIST         comma-separated subset of: raw,lanrage,wireguard-go,boringtun-cli
                      (default: all four; "raw" is the veth without a tunnel)
  --runs N            repeat each measurement N times, report the median (default $RUNS)
  --duration S        seconds per iperf3 test (default $DURATION)
  --threads N         passed to lanrage as 'lanrage wg --threads N' (dropped, with a
                      warning, if this lanrage does not know the option)
  --bt-threads N      boringtun-cli --threads (default: nproc = $BT_THREADS; its own default is 4)
  --udp-rate R        iperf3 -b for the UDP test (default $UDP_RATE = 150k pkts/s; 0 = as fast
                      as the sender can)
  --json PATH         also write the results (all samples and medians) as JSON to PATH
  -h, --help          this help

Environment: LANRAGE_BIN (default target/release/lanrage), NO_COLOR.

Columns: TCP throughput (iperf3, 1 stream, receiver side); UDP ${UDP_LEN}-byte datagrams
delivered per second at the receiver and the loss; ping RTT average idle ($PING_COUNT pings,
${PING_INTERVAL}s apart) and while an iperf3 TCP stream saturates the tunnel; peak RSS
(VmHWM) of the tunnel daemons (the larger of the two sides).
EOF
}

while (($#)); do
    case "$1" in
        --only) ONLY="${2:?--only needs a list}"; shift 2 ;;
        --only=*) ONLY="${1#*=}"; shift ;;
        --runs) RUNS="${2:?--runs needs a number}"; shift 2 ;;
        --runs=*) RUNS="${1#*=}"; shift ;;
        --duration) DURATION="${2:?--duration needs seconds}"; shift 2 ;;
        --duration=*) DURATION="${1#*=}"; shift ;;
        --threads) LR_THREADS="${2:?--threads needs a number}"; shift 2 ;;
        --threads=*) LR_THREADS="${1#*=}"; shift ;;
        --bt-threads) BT_THREADS="${2:?--bt-threads needs a number}"; shift 2 ;;
        --bt-threads=*) BT_THREADS="${1#*=}"; shift ;;
        --udp-rate) UDP_RATE="${2:?--udp-rate needs a rate}"; shift 2 ;;
        --udp-rate=*) UDP_RATE="${1#*=}"; shift ;;
        --json) JSON_OUT="${2:?--json needs a path}"; shift 2 ;;
        --json=*) JSON_OUT="${1#*=}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; nl_die "unknown argument '$1'" ;;
    esac
done

[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || nl_die "--runs must be a positive integer"
if ! [[ "$DURATION" =~ ^[1-9][0-9]*$ ]] || ((DURATION < 3)); then
    nl_die "--duration must be an integer >= 3"
fi
[[ -z "$LR_THREADS" || "$LR_THREADS" =~ ^[1-9][0-9]*$ ]] || nl_die "--threads must be a positive integer"
[[ "$BT_THREADS" =~ ^[1-9][0-9]*$ ]] || nl_die "--bt-threads must be a positive integer"

IFS=, read -r -a IMPLS <<<"$ONLY"
((${#IMPLS[@]})) || nl_die "--only: empty list"

nl_require_root "$@"
nl_require_tools ip ss wg iperf3 ping jq bc awk timeout getconf sysctl
for impl in "${IMPLS[@]}"; do nl_impl_require "$impl"; done
if [[ -n "$JSON_OUT" ]]; then
    touch "$JSON_OUT" 2>/dev/null || nl_die "cannot write --json file '$JSON_OUT'"
fi

# lanrage --threads: pass it only if this build knows it.
if [[ -n "$LR_THREADS" ]] && printf '%s\n' "${IMPLS[@]}" | grep -qx lanrage; then
    if ! "$(nl_lanrage_bin)" wg --help 2>&1 | grep -q -- '--threads'; then
        nl_warn "'lanrage wg --help' does not mention --threads: running lanrage with its default"
        LR_THREADS=""
    fi
fi

nl_init
NS_A="lrbench-${NL_ID}-a"
NS_B="lrbench-${NL_ID}-b"

nl_log "namespaces $NS_A <-> $NS_B (veth, $(nproc) cores, kernel $(uname -r))"
nl_make_pair "$NS_A" "$NS_B"

# One iperf3 server in B for every test (they run one after another).
ip netns exec "$NS_B" iperf3 -s -p "$IPERF_PORT" >"$NL_TMP/iperf3-server.log" 2>&1 </dev/null &
nl_track $!
for ((i = 0; i < 50; i++)); do
    nl_in "$NS_B" ss -ltnH "sport = :$IPERF_PORT" 2>/dev/null | grep -q . && break
    sleep 0.1
done

# ---------------------------------------------------------------------------------------------
# measurements (each prints its numbers, or "null" on failure)

IPERF_TIMEOUT=$((DURATION + 20))

# TCP Gbit/s, receiver side.
measure_tcp() {
    local dst="$1" out
    out="$(timeout --foreground "$IPERF_TIMEOUT" ip netns exec "$NS_A" \
        iperf3 -c "$dst" -p "$IPERF_PORT" -t "$DURATION" --connect-timeout 3000 -J 2>/dev/null)" \
        || { echo null; return 0; }
    local v
    v="$(jq -r '(.end.sum_received.bits_per_second // empty) / 1e9' <<<"$out" 2>/dev/null || true)"
    echo "${v:-null}"
}

# UDP: "delivered_pps loss_percent offered_pps", receiver side.
measure_udp() {
    local dst="$1" out
    out="$(timeout --foreground "$IPERF_TIMEOUT" ip netns exec "$NS_A" \
        iperf3 -c "$dst" -p "$IPERF_PORT" -u -l "$UDP_LEN" -b "$UDP_RATE" -w "$UDP_WINDOW" -t "$DURATION" \
        --connect-timeout 3000 -J 2>/dev/null)" || { echo "null null null"; return 0; }
    jq -r '.end as $e
        | if ($e.sum_received.seconds // 0) > 0 then
            [ (($e.sum_received.packets - $e.sum_received.lost_packets) / $e.sum_received.seconds),
              $e.sum_received.lost_percent,
              ($e.sum_sent.packets / $e.sum_sent.seconds) ] | map(tostring) | join(" ")
          else "null null null" end' <<<"$out" 2>/dev/null || echo "null null null"
}

# Ping average RTT (ms) idle.
measure_ping_idle() {
    local dst="$1" avg
    read -r _ avg _ _ < <(nl_ping_stats "$NS_A" "$dst" "$PING_COUNT" "$PING_INTERVAL")
    [[ "$avg" == nan ]] && avg=null
    echo "$avg"
}

# Ping "avg max" RTT (ms) while one iperf3 TCP stream saturates the path.
measure_ping_loaded() {
    local dst="$1" load_pid count avg max
    timeout --foreground "$IPERF_TIMEOUT" ip netns exec "$NS_A" \
        iperf3 -c "$dst" -p "$IPERF_PORT" -t "$DURATION" --connect-timeout 3000 -J \
        >"$NL_TMP/load.json" 2>/dev/null </dev/null &
    load_pid=$!
    sleep 1.5    # past slow start: the queue is full
    # Ping for all but the last ~1.5 s of the load.
    count="$(awk -v d="$DURATION" -v i="$PING_INTERVAL" 'BEGIN { c = int((d - 3) / i / 2); if (c < 20) c = 20; print c }')"
    read -r _ avg max _ < <(nl_ping_stats "$NS_A" "$dst" "$count" "$(awk -v i="$PING_INTERVAL" 'BEGIN { print i * 2 }')")
    wait "$load_pid" 2>/dev/null || true
    [[ "$avg" == nan ]] && { avg=null; max=null; }
    echo "$avg $max"
}

# ---------------------------------------------------------------------------------------------
# bookkeeping

declare -A SAMPLES=()   # "$impl.$metric" -> space-separated samples
declare -A INFO=()      # "$impl.$key" -> value
FAILED=()

add_sample() { SAMPLES["$1.$2"]="${SAMPLES["$1.$2"]:-}${SAMPLES["$1.$2"]:+ }$3"; }

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

daemons_alive() {
    local pid
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null || return 1; done
}

bench_impl() {
    local impl="$1" k="$2" dst ifa ifb pids="" r tcp pps loss offered idle lavg lmax
    local threads=""
    if [[ "$impl" == raw ]]; then
        dst="$NL_UNDERLAY_B"
    else
        ifa="lb${NL_ID}${k}a"; ifb="lb${NL_ID}${k}b"
        case "$impl" in
            lanrage) threads="$LR_THREADS" ;;
            boringtun-cli) threads="$BT_THREADS" ;;
        esac
        nl_log "$impl: starting daemons ($ifa in $NS_A, $ifb in $NS_B)${threads:+, threads $threads}"
        nl_tunnel_up "$impl" "$NS_A" "$NS_B" "$ifa" "$ifb" "$threads"
        pids="$NL_PID_A $NL_PID_B"
        local hs hs_rtt hs_seen
        if ! hs="$(nl_wait_handshake "$NS_A" "$ifa" "$NL_TUN_B" 10)"; then
            nl_warn "$impl: no handshake within 10 s"
            show_logs "$impl" "$ifa" "$ifb"
            FAILED+=("$impl")
            nl_tunnel_down "$pids" "$ifa $ifb"
            return 0
        fi
        read -r hs_rtt hs_seen <<<"$hs"
        [[ "$hs_rtt" == nan ]] && hs_rtt=null
        INFO["$impl.first_ping_ms"]="$hs_rtt"
        INFO["$impl.handshake_s"]="$hs_seen"
        if ! nl_wait_ping "$NS_A" "$NL_TUN_B" 10; then
            nl_warn "$impl: handshake done but no ping reply through the tunnel"
            show_logs "$impl" "$ifa" "$ifb"
            FAILED+=("$impl")
            nl_tunnel_down "$pids" "$ifa $ifb"
            return 0
        fi
        dst="$NL_TUN_B"
        nl_log "$impl: first ping (with handshake) ${hs_rtt} ms; wg show saw the handshake after ${hs_seen}s; measuring"
    fi
    INFO["$impl.version"]="$(nl_impl_version "$impl")"
    INFO["$impl.threads"]="$threads"

    for ((r = 1; r <= RUNS; r++)); do
        tcp="$(measure_tcp "$dst")"; add_sample "$impl" tcp_gbps "$tcp"; sleep 1
        read -r pps loss offered < <(measure_udp "$dst")
        add_sample "$impl" udp_pps "$pps"; add_sample "$impl" udp_loss_pct "$loss"
        add_sample "$impl" udp_offered_pps "$offered"; sleep 1
        idle="$(measure_ping_idle "$dst")"; add_sample "$impl" ping_idle_ms "$idle"
        read -r lavg lmax < <(measure_ping_loaded "$dst")
        add_sample "$impl" ping_loaded_ms "$lavg"; add_sample "$impl" ping_loaded_max_ms "$lmax"
        printf '    run %d/%d %-14s TCP %s Gbit/s | UDP %s pps (loss %s%%) | ping idle %s ms, loaded %s ms (max %s)\n' \
            "$r" "$RUNS" "$impl" "$(fmt 2 "$tcp")" "$(fmt 0 "$pps")" "$(fmt 1 "$loss")" \
            "$(fmt 3 "$idle")" "$(fmt 2 "$lavg")" "$(fmt 2 "$lmax")" >&2
        # shellcheck disable=SC2086 # two pids, split on purpose
        [[ -n "$pids" ]] && record_daemon_stats "$impl" $pids
        # shellcheck disable=SC2086
        if [[ -n "$pids" ]] && ! daemons_alive $pids; then
            nl_warn "$impl: a daemon died during run $r"
            show_logs "$impl" "$ifa" "$ifb"
            FAILED+=("$impl")
            break
        fi
        sleep 1
    done

    if [[ -n "$pids" ]]; then
        # shellcheck disable=SC2086 # two pids, split on purpose
        record_daemon_stats "$impl" $pids
        nl_tunnel_down "$pids" "$ifa $ifb"
    fi
}

# record_daemon_stats IMPL PID_A PID_B — peak RSS and CPU time so far; called after every run
# so that the last values survive a daemon that dies.
record_daemon_stats() {
    local impl="$1" side pid v
    for side in a b; do
        if [[ "$side" == a ]]; then pid="$2"; else pid="$3"; fi
        v="$(nl_peak_rss_kib "$pid")"; [[ -n "$v" ]] && INFO["$impl.rss_kib_$side"]="$v"
        v="$(nl_cpu_seconds "$pid")"; [[ -n "$v" ]] && INFO["$impl.cpu_s_$side"]="$v"
    done
    return 0
}

show_logs() {
    local impl="$1" f
    shift
    for f in "$@"; do
        [[ -s "$NL_TMP/$impl-$f.log" ]] || continue
        printf '  %s (%s) output, last lines:\n' "$impl" "$f" >&2
        tail -n 15 "$NL_TMP/$impl-$f.log" | sed 's/^/    | /' >&2
    done
}

# fmt DECIMALS VALUE — number or "n/a"
fmt() { if [[ "$2" == null || -z "$2" ]]; then echo "n/a"; else printf "%.${1}f" "$2"; fi; }

# pps as "56k" / "1.2M"
fmt_pps() {
    [[ "$1" == null ]] && { echo "n/a"; return; }
    awk -v v="$1" 'BEGIN { if (v >= 1e6) printf "%.2fM", v / 1e6; else if (v >= 1e4) printf "%.0fk", v / 1e3; else printf "%.1fk", v / 1e3 }'
}

# ratio A B DECIMALS — "1.23×" or "n/a"
ratio() {
    if [[ "$1" == null || "$2" == null ]] || [[ "$(echo "$2 == 0" | bc)" == 1 ]]; then echo "n/a"; return; fi
    awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f×", a / b }'
}

rss_mib() {
    local a="${INFO["$1.rss_kib_a"]:-null}" b="${INFO["$1.rss_kib_b"]:-null}"
    [[ "$a" == null && "$b" == null ]] && { echo null; return; }
    [[ "$a" == null ]] && a=0; [[ "$b" == null ]] && b=0
    awk -v a="$a" -v b="$b" 'BEGIN { m = a > b ? a : b; printf "%.1f\n", m / 1024 }'
}

# ---------------------------------------------------------------------------------------------
# run

T_START="$(date +%s)"
k=0
for impl in "${IMPLS[@]}"; do
    k=$((k + 1))
    nl_log "[$k/${#IMPLS[@]}] $impl: $RUNS run(s) of ${DURATION}s TCP + ${DURATION}s UDP + pings"
    bench_impl "$impl" "$k"
done

# ---------------------------------------------------------------------------------------------
# report

{
    echo
    echo "LANrage namespace benchmark — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, kernel $(uname -r), median of $RUNS run(s), ${DURATION}s per iperf3 test, tunnel MTU $NL_TUN_MTU"
    echo
    echo "| path | TCP Gbit/s (iperf3, 1 stream) | UDP ${UDP_LEN}-byte pkts/s delivered (loss) | ping idle | ping while TCP saturates | peak RSS (daemon) |"
    echo "| --- | --- | --- | --- | --- | --- |"
    for impl in "${IMPLS[@]}"; do
        name="$impl"
        [[ "$impl" == raw ]] && name="raw veth, no tunnel"
        [[ -n "${INFO["$impl.threads"]:-}" ]] && name+=" (${INFO["$impl.threads"]} threads)"
        [[ " ${FAILED[*]} " == *" $impl "* ]] && name+=" **FAILED**"
        if [[ " ${FAILED[*]} " == *" $impl "* && -z "${SAMPLES["$impl.tcp_gbps"]:-}" ]]; then
            echo "| $name | failed | failed | failed | failed | — |"
            continue
        fi
        loss="$(med "$impl" udp_loss_pct)"
        rss="—"
        [[ "$impl" != raw ]] && rss="$(fmt 1 "$(rss_mib "$impl")") MiB"
        printf '| %s | %s | %s (%s%% lost) | %s ms | %s ms | %s |\n' "$name" \
            "$(fmt 2 "$(med "$impl" tcp_gbps)")" "$(fmt_pps "$(med "$impl" udp_pps)")" \
            "$(fmt 0 "$loss")" "$(fmt 3 "$(med "$impl" ping_idle_ms)")" \
            "$(fmt 2 "$(med "$impl" ping_loaded_ms)")" "$rss"
    done
    # Ratios of lanrage to the others (throughput: higher is better; ping, RSS: lower is better).
    if [[ " ${IMPLS[*]} " == *" lanrage "* ]]; then
        for other in wireguard-go boringtun-cli; do
            [[ " ${IMPLS[*]} " == *" $other "* ]] || continue
            printf '| lanrage / %s | %s | %s | %s | %s | %s |\n' "$other" \
                "$(ratio "$(med lanrage tcp_gbps)" "$(med "$other" tcp_gbps)")" \
                "$(ratio "$(med lanrage udp_pps)" "$(med "$other" udp_pps)")" \
                "$(ratio "$(med lanrage ping_idle_ms)" "$(med "$other" ping_idle_ms)")" \
                "$(ratio "$(med lanrage ping_loaded_ms)" "$(med "$other" ping_loaded_ms)")" \
                "$(ratio "$(rss_mib lanrage)" "$(rss_mib "$other")")"
        done
    fi
    echo
    echo "UDP offered load: iperf3 -u -l $UDP_LEN -b $UDP_RATE -w $UDP_WINDOW (0 = sender-bound). Ping: $PING_COUNT × ${PING_INTERVAL}s idle; every $(awk -v i="$PING_INTERVAL" 'BEGIN { print i * 2 }')s under load. Ratios: throughput higher is better, ping and RSS lower is better."
    for impl in "${IMPLS[@]}"; do
        if [[ "$impl" == raw ]]; then
            printf -- '- raw: UDP offered %s pps\n' "$(fmt_pps "$(med raw udp_offered_pps)")"
            continue
        fi
        printf -- '- %s: %s; first ping incl. handshake %s ms (wg show reported it after %s s); daemon CPU %s s + %s s; UDP offered %s pps; ping under load max %s ms\n' "$impl" \
            "${INFO["$impl.version"]:-?}" "${INFO["$impl.first_ping_ms"]:-n/a}" "${INFO["$impl.handshake_s"]:-n/a}" \
            "${INFO["$impl.cpu_s_a"]:-n/a}" "${INFO["$impl.cpu_s_b"]:-n/a}" \
            "$(fmt_pps "$(med "$impl" udp_offered_pps)")" "$(fmt 2 "$(med "$impl" ping_loaded_max_ms)")"
    done
    if ((${#FAILED[@]})); then echo; echo "FAILED: ${FAILED[*]}"; fi
}

if [[ -n "$JSON_OUT" ]]; then
    metrics=(tcp_gbps udp_pps udp_loss_pct udp_offered_pps ping_idle_ms ping_loaded_ms ping_loaded_max_ms)
    results='{}'
    for impl in "${IMPLS[@]}"; do
        obj="$(jq -n --arg v "${INFO["$impl.version"]:-}" --arg t "${INFO["$impl.threads"]:-}" \
            --arg hs "${INFO["$impl.handshake_s"]:-}" --arg fp "${INFO["$impl.first_ping_ms"]:-}" \
            --arg ra "${INFO["$impl.rss_kib_a"]:-null}" --arg rb "${INFO["$impl.rss_kib_b"]:-null}" \
            --arg ca "${INFO["$impl.cpu_s_a"]:-null}" --arg cb "${INFO["$impl.cpu_s_b"]:-null}" \
            --argjson failed "$([[ " ${FAILED[*]} " == *" $impl "* ]] && echo true || echo false)" \
            'def num: if . == "" or . == "null" then null else tonumber end;
             {version: $v, threads: ($t | num), failed: $failed,
              first_ping_ms: ($fp | num), handshake_reported_s: ($hs | num),
              peak_rss_kib: {a: ($ra | num), b: ($rb | num)},
              cpu_s: {a: ($ca | num), b: ($cb | num)}}')"
        for m in "${metrics[@]}"; do
            s="${SAMPLES["$impl.$m"]:-}"
            # shellcheck disable=SC2086
            obj="$(jq --arg m "$m" --arg s "$s" --arg med "$(med "$impl" "$m")" \
                '.[$m] = {median: ($med | if . == "null" then null else tonumber end),
                          samples: ($s | split(" ") | map(select(. != "") | if . == "null" then null else tonumber end))}' \
                <<<"$obj")"
        done
        results="$(jq --arg i "$impl" --argjson o "$obj" '.[$i] = $o' <<<"$results")"
    done
    jq -n --argjson r "$results" --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        --arg kernel "$(uname -r)" --argjson cores "$(nproc)" --argjson runs "$RUNS" \
        --argjson duration "$DURATION" --arg udp_rate "$UDP_RATE" --argjson udp_len "$UDP_LEN" \
        --argjson mtu "$NL_TUN_MTU" --argjson elapsed "$(( $(date +%s) - T_START ))" \
        '{date: $date, kernel: $kernel, cores: $cores, runs: $runs, duration_s: $duration,
          udp: {len: $udp_len, rate: $udp_rate}, tunnel_mtu: $mtu, elapsed_s: $elapsed,
          statistic: "median", results: $r}' >"$JSON_OUT"
    nl_log "JSON results written to $JSON_OUT"
fi

((${#FAILED[@]} == 0)) || exit 1
