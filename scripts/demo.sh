#!/usr/bin/env bash
# scripts/demo.sh — LANrage in one minute: two players ("alice" and "bob") in their own network
# namespaces, a `lanrage wg` tunnel between them configured with the stock `wg` tool, then the
# handshake, `wg show`, ping and throughput. Everything is torn down at the end (and on Ctrl-C).
#
# Run as root from anywhere. Builds nothing: it uses target/release/lanrage
# (`cargo build --release` first) or $LANRAGE_BIN.
#
# For testing the script itself: LANRAGE_DEMO_IMPL=wireguard-go (or boringtun-cli) runs the
# same demo with another userspace WireGuard.

set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=netns-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/netns-lib.sh"

IMPL="${LANRAGE_DEMO_IMPL:-lanrage}"
PING_N=10
IPERF_S=5

case "${1:-}" in
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    "") ;;
    *) nl_die "unknown argument '$1' (try --help)" ;;
esac

step_no=0
STEPS=6
step() { step_no=$((step_no + 1)); printf '\n%s[%d/%d]%s %s%s%s\n' "$NL_C_CYN" "$step_no" "$STEPS" "$NL_C_OFF" "$NL_C_BOLD" "$*" "$NL_C_OFF"; }
ok()   { printf '      %s✓%s %s\n' "$NL_C_GRN" "$NL_C_OFF" "$*"; }
info() { printf '      %s\n' "$*"; }
fail() {
    printf '\n%s✗ %s%s\n' "$NL_C_RED" "$*" "$NL_C_OFF" >&2
    local f
    for f in "$NL_TMP"/*.log; do
        [[ -s "$f" ]] || continue
        printf '  %s, last lines:\n' "$(basename "$f" .log)" >&2
        tail -n 10 "$f" | sed 's/^/    | /' >&2
    done
    exit 1
}

nl_require_root "$@"
nl_require_tools ip ss wg ping iperf3 jq bc awk timeout
nl_impl_require "$IMPL"

printf '%sLANrage demo%s — two players, one virtual LAN, peer to peer over WireGuard\n' "$NL_C_BOLD" "$NL_C_OFF"
if [[ "$IMPL" == lanrage ]]; then
    info "daemon: $(nl_lanrage_bin) ($(nl_impl_version lanrage))"
else
    info "daemon: $IMPL ($(nl_impl_version "$IMPL")) ${NL_C_YEL}[LANRAGE_DEMO_IMPL override]${NL_C_OFF}"
fi

nl_init
ALICE="alice-$NL_ID"
BOB="bob-$NL_ID"
IF_ALICE="lr-alice-$NL_ID"
IF_BOB="lr-bob-$NL_ID"

# ---------------------------------------------------------------------------------------------
step "Two homes: namespaces $ALICE and $BOB, joined by a virtual cable"
nl_make_pair "$ALICE" "$BOB"
ok "alice is $NL_UNDERLAY_A, bob is $NL_UNDERLAY_B on the underlay (veth)"

# ---------------------------------------------------------------------------------------------
step "Starting the WireGuard daemon in each home"
nl_start_daemon "$IMPL" "$ALICE" "$IF_ALICE" "$NL_TMP/alice-$IMPL.log"
PID_ALICE="$NL_DAEMON_PID"
ok "alice: ${NL_CMD[*]}  (pid $PID_ALICE)"
nl_start_daemon "$IMPL" "$BOB" "$IF_BOB" "$NL_TMP/bob-$IMPL.log"
PID_BOB="$NL_DAEMON_PID"
ok "bob:   ${NL_CMD[*]}  (pid $PID_BOB)"
info "each created a TUN device and a UAPI socket in $NL_WG_SOCK_DIR/"

# ---------------------------------------------------------------------------------------------
step "Configuring both sides with the stock 'wg' tool and fresh keys"
nl_wg_keypair alice
nl_wg_keypair bob
nl_in "$ALICE" wg set "$IF_ALICE" private-key "$NL_TMP/alice.key" listen-port "$NL_WG_PORT_A" \
    peer "$(cat "$NL_TMP/bob.pub")" allowed-ips "$NL_TUN_B/32" endpoint "$NL_UNDERLAY_B:$NL_WG_PORT_B" \
    || fail "wg set on alice's $IF_ALICE failed"
nl_in "$BOB" wg set "$IF_BOB" private-key "$NL_TMP/bob.key" listen-port "$NL_WG_PORT_B" \
    peer "$(cat "$NL_TMP/alice.pub")" allowed-ips "$NL_TUN_A/32" endpoint "$NL_UNDERLAY_A:$NL_WG_PORT_A" \
    || fail "wg set on bob's $IF_BOB failed"
nl_in "$ALICE" ip addr add "$NL_TUN_A/24" dev "$IF_ALICE"
nl_in "$BOB" ip addr add "$NL_TUN_B/24" dev "$IF_BOB"
nl_in "$ALICE" ip link set "$IF_ALICE" mtu "$NL_TUN_MTU" up
nl_in "$BOB" ip link set "$IF_BOB" mtu "$NL_TUN_MTU" up
ok "alice $NL_TUN_A  key $(cut -c1-10 "$NL_TMP/alice.pub")…  port $NL_WG_PORT_A"
ok "bob   $NL_TUN_B  key $(cut -c1-10 "$NL_TMP/bob.pub")…  port $NL_WG_PORT_B"

# ---------------------------------------------------------------------------------------------
step "Handshake: alice pings bob, which starts the WireGuard handshake"
if ! hs="$(nl_wait_handshake "$ALICE" "$IF_ALICE" "$NL_TUN_B" 10)"; then
    fail "no handshake within 10 s (wg show $IF_ALICE reports none)"
fi
read -r hs_rtt hs_seen <<<"$hs"
if [[ "$hs_rtt" != nan ]]; then
    ok "handshake done: the first ping came back after $hs_rtt ms, handshake included"
else
    ok "handshake done (the very first ping was not answered)"
fi
info "wg show reported the handshake ${hs_seen} s after the ping was sent"
nl_wait_ping "$ALICE" "$NL_TUN_B" 5 || fail "handshake done but bob does not answer pings through the tunnel"
printf '\n      %swg show %s%s (alice side):\n' "$NL_C_DIM" "$IF_ALICE" "$NL_C_OFF"
NO_COLOR=1 nl_in "$ALICE" wg show "$IF_ALICE" | sed 's/^/        /; s/[[:space:]]*$//'

# ---------------------------------------------------------------------------------------------
step "Latency: $PING_N pings from alice to bob through the tunnel"
read -r pmin pavg pmax ploss < <(nl_ping_stats "$ALICE" "$NL_TUN_B" "$PING_N" 0.2)
[[ "$pavg" != nan ]] || fail "no ping came back"
ok "$(printf 'round trip min %.3f / avg %.3f / max %.3f ms, %s%% lost' "$pmin" "$pavg" "$pmax" "$ploss")"

# ---------------------------------------------------------------------------------------------
step "Throughput: iperf3, one TCP stream alice → bob for $IPERF_S s"
ip netns exec "$BOB" iperf3 -s -1 -p 5201 >"$NL_TMP/iperf3-server.log" 2>&1 </dev/null &
nl_track $!
for ((i = 0; i < 50; i++)); do
    nl_in "$BOB" ss -ltnH 'sport = :5201' 2>/dev/null | grep -q . && break
    sleep 0.1
done
if ! out="$(timeout --foreground $((IPERF_S + 20)) ip netns exec "$ALICE" \
        iperf3 -c "$NL_TUN_B" -p 5201 -t "$IPERF_S" --connect-timeout 3000 -J 2>&1)"; then
    printf '%s\n' "$out" | jq -r '.error // empty' 2>/dev/null >&2 || true
    fail "iperf3 through the tunnel failed"
fi
gbps="$(jq -r '.end.sum_received.bits_per_second / 1e9' <<<"$out")"
retr="$(jq -r '.end.sum_sent.retransmits // 0' <<<"$out")"
ok "$(printf '%.2f Gbit/s received (%s retransmits)' "$gbps" "$retr")"
for side in alice bob; do
    pid_var="PID_${side^^}"
    rss="$(nl_peak_rss_kib "${!pid_var}")"
    if [[ -n "$rss" ]]; then
        info "$(printf '%s daemon peak memory (VmHWM): %.1f MiB' "$side" "$(echo "$rss / 1024" | bc -l)")"
    fi
done
if ! kill -0 "$PID_ALICE" 2>/dev/null || ! kill -0 "$PID_BOB" 2>/dev/null; then
    fail "a daemon exited during the demo"
fi

# ---------------------------------------------------------------------------------------------
printf '\n%sTearing down%s (daemons, namespaces, sockets)… ' "$NL_C_DIM" "$NL_C_OFF"
nl_cleanup
printf 'done.\n'
printf '%s✓ demo complete:%s handshake %s ms, ping avg %.3f ms, %.2f Gbit/s with %s\n' \
    "$NL_C_GRN" "$NL_C_OFF" "$hs_rtt" "$pavg" "$gbps" "$IMPL"
