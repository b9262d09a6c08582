# shellcheck shell=bash disable=SC2034
# (SC2034: variables here are used by the scripts that source this file.)
# scripts/netns-lib.sh — shared helpers for LANrage's namespace scripts (demo.sh, bench.sh).
#
# Source it; do not run it. It gives:
#   - two network namespaces joined by a veth pair (the "underlay"),
#   - a userspace WireGuard daemon per namespace (lanrage, wireguard-go or boringtun-cli),
#     configured through `wg` over the cross-platform UAPI socket exactly as a user would,
#   - one cleanup that kills only the processes these helpers started and deletes only the
#     namespaces they made; it runs on exit, on error and on Ctrl-C.
#
# Addresses (inside our own namespaces only; nothing leaves the machine):
#   underlay  198.18.0.1/30 <-> 198.18.0.2/30   (RFC 2544 benchmarking range), MTU 1500
#   tunnel    100.64.0.1/24 <-> 100.64.0.2/24   MTU 1420
#
# Names are unique per run (NL_ID) so that concurrent runs and the integration tests never
# collide. Note that the UAPI socket lives in /var/run/wireguard/IFNAME.sock, which is shared
# by all namespaces: tunnel interface names must therefore be unique machine-wide, not just
# per namespace.

# Guard against double sourcing.
if [[ -n "${NL_LIB_LOADED:-}" ]]; then return 0; fi
NL_LIB_LOADED=1

NL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NL_UNDERLAY_A=198.18.0.1
NL_UNDERLAY_B=198.18.0.2
NL_TUN_A=100.64.0.1
NL_TUN_B=100.64.0.2
NL_TUN_MTU=1420
NL_WG_PORT_A=51820
NL_WG_PORT_B=51821
NL_WG_SOCK_DIR=/var/run/wireguard

# Short unique id: 4 hex digits from the pid and $RANDOM. Interface names stay <= 15 chars.
NL_ID="${NL_ID:-$(printf '%04x' $(( ($$ * 31 + RANDOM) % 65536 )))}"
NL_TMP=""
NL_NAMESPACES=()    # namespaces we created
NL_PIDS=()          # processes we started (killed on cleanup)
NL_IFNAMES=()       # tunnel names we asked daemons to create (their sockets get removed)
NL_QUIET="${NL_QUIET:-0}"
NL_CLEANED=0

# ---------------------------------------------------------------------------------------------
# messages

if [[ -t 1 && -z "${NO_COLOR:-}" ]]; then
    NL_C_DIM=$'\e[2m'; NL_C_BOLD=$'\e[1m'; NL_C_RED=$'\e[31m'; NL_C_GRN=$'\e[32m'
    NL_C_YEL=$'\e[33m'; NL_C_CYN=$'\e[36m'; NL_C_OFF=$'\e[0m'
else
    NL_C_DIM=""; NL_C_BOLD=""; NL_C_RED=""; NL_C_GRN=""; NL_C_YEL=""; NL_C_CYN=""; NL_C_OFF=""
fi

nl_log()  { [[ "$NL_QUIET" == 1 ]] || printf '%s==>%s %s\n' "$NL_C_CYN" "$NL_C_OFF" "$*" >&2; }
nl_warn() { printf '%swarning:%s %s\n' "$NL_C_YEL" "$NL_C_OFF" "$*" >&2; }
nl_die()  { printf '%serror:%s %s\n' "$NL_C_RED" "$NL_C_OFF" "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# preconditions

nl_require_root() {
    [[ "$(id -u)" == 0 ]] || nl_die "must run as root (network namespaces, TUN devices): try 'sudo $0'"
}

# nl_require_tools TOOL... — fail with the Debian package to install for each missing tool.
nl_require_tools() {
    local t missing=()
    for t in "$@"; do
        command -v "$t" >/dev/null 2>&1 || missing+=("$t")
    done
    if ((${#missing[@]})); then
        local pkgs="" extra=""
        for t in "${missing[@]}"; do
            case "$t" in
                wg) pkgs+=" wireguard-tools" ;;
                ping) pkgs+=" iputils-ping" ;;
                ip|ss|tc) pkgs+=" iproute2" ;;
                nc) pkgs+=" netcat-openbsd" ;;
                pgrep|pkill|ps|sysctl) pkgs+=" procps" ;;
                timeout|mktemp) pkgs+=" coreutils" ;;
                getconf) pkgs+=" libc-bin" ;;
                boringtun-cli) extra=" 'scripts/install-deps.sh --bench' (boringtun-cli via cargo)" ;;
                *) pkgs+=" $t" ;;
            esac
        done
        local how="run"
        [[ -n "$pkgs" ]] && how+=" scripts/install-deps.sh (Debian:${pkgs})"
        [[ -n "$pkgs" && -n "$extra" ]] && how+=" and"
        [[ -n "$extra" ]] && how+="${extra}"
        nl_die "missing tool(s): ${missing[*]} — ${how}"
    fi
}

# Path to the lanrage binary: $LANRAGE_BIN, else target/release/lanrage (honouring
# CARGO_TARGET_DIR). Prints the path whether or not it exists; see nl_impl_require.
nl_lanrage_bin() {
    printf '%s\n' "${LANRAGE_BIN:-${CARGO_TARGET_DIR:-$NL_ROOT/target}/release/lanrage}"
}

# ---------------------------------------------------------------------------------------------
# lifecycle

# nl_init — make a private temp dir and install the cleanup traps. Call once, early.
nl_init() {
    NL_TMP="$(mktemp -d "/tmp/lanrage-netns.${NL_ID}.XXXXXX")"
    chmod 700 "$NL_TMP"
    trap 'nl_cleanup' EXIT
    trap 'nl_interrupted INT 130' INT
    trap 'nl_interrupted TERM 143' TERM
    trap 'nl_interrupted HUP 129' HUP
}

nl_interrupted() {
    trap - INT TERM HUP
    printf '\n%sinterrupted (%s): cleaning up%s\n' "$NL_C_YEL" "$1" "$NL_C_OFF" >&2
    exit "$2"
}

# nl_track PID — have cleanup kill PID.
nl_track() { NL_PIDS+=("$1"); }

# nl_kill_pid PID [GRACE_TENTHS] — TERM, wait, then KILL. Only for pids we started.
nl_kill_pid() {
    local pid="$1" grace="${2:-30}" i
    if ! kill -0 "$pid" 2>/dev/null; then
        nl_untrack "$pid"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.1
    fi
    wait "$pid" 2>/dev/null || true
    nl_untrack "$pid"
}

# nl_untrack PID — forget PID (it is gone; its number may be reused by someone else's process).
nl_untrack() {
    local p keep=()
    for p in "${NL_PIDS[@]}"; do [[ "$p" == "$1" ]] || keep+=("$p"); done
    NL_PIDS=("${keep[@]}")
}

nl_cleanup() {
    local rc=$?
    [[ "$NL_CLEANED" == 1 ]] && return "$rc"
    NL_CLEANED=1
    trap - EXIT INT TERM HUP
    set +e
    local pid ns ifname p
    for pid in "${NL_PIDS[@]}"; do nl_kill_pid "$pid" 20; done
    # Anything else still running inside our namespaces was started by us (iperf3, ping, a
    # daemon that forked); end it by pid.
    for ns in "${NL_NAMESPACES[@]}"; do
        for p in $(ip netns pids "$ns" 2>/dev/null); do nl_kill_pid "$p" 10; done
    done
    for ns in "${NL_NAMESPACES[@]}"; do ip netns del "$ns" 2>/dev/null; done
    for ifname in "${NL_IFNAMES[@]}"; do rm -f "$NL_WG_SOCK_DIR/$ifname.sock"; done
    [[ -n "$NL_TMP" && -d "$NL_TMP" ]] && rm -rf "$NL_TMP"
    return "$rc"
}

# ---------------------------------------------------------------------------------------------
# namespaces and underlay

# nl_in NS CMD... — run CMD inside namespace NS.
nl_in() { local ns="$1"; shift; ip netns exec "$ns" "$@"; }

# nl_make_ns NS — a fresh namespace, removed by nl_cleanup: loopback up, IPv6 off (no router
# solicitations or DAD noise in the tunnel).
nl_make_ns() {
    local ns="$1"
    if ip netns list | awk '{print $1}' | grep -qx -- "$ns"; then
        nl_die "namespace '$ns' already exists"
    fi
    ip netns add "$ns" || nl_die "cannot create namespace '$ns'"
    NL_NAMESPACES+=("$ns")
    nl_in "$ns" ip link set lo up
    nl_in "$ns" sysctl -q -w net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 >/dev/null 2>&1 || true
}

# nl_link NS_X NS_Y IFX IFY IPX IPY — a veth pair between two namespaces, /30 addresses, up.
nl_link() {
    local x="$1" y="$2" ifx="$3" ify="$4" ipx="$5" ipy="$6"
    ip link add "$ifx" netns "$x" type veth peer name "$ify" netns "$y" \
        || nl_die "cannot create veth pair $ifx/$ify"
    nl_in "$x" ip addr add "$ipx/30" dev "$ifx"
    nl_in "$y" ip addr add "$ipy/30" dev "$ify"
    nl_in "$x" ip link set "$ifx" up
    nl_in "$y" ip link set "$ify" up
}

# nl_make_pair NS_A NS_B — two fresh namespaces (nl_make_ns) joined by a veth pair
# (198.18.0.1 <-> .2).
nl_make_pair() {
    local a="$1" b="$2" ns
    for ns in "$a" "$b"; do
        nl_make_ns "$ns"
    done
    local va="va${NL_ID}" vb="vb${NL_ID}"
    nl_link "$a" "$b" "$va" "$vb" "$NL_UNDERLAY_A" "$NL_UNDERLAY_B"
    # Wait for carrier so that the first packets are not lost.
    local i
    for ((i = 0; i < 50; i++)); do
        nl_in "$a" ping -c 1 -W 1 -q "$NL_UNDERLAY_B" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    nl_die "underlay veth $va <-> $vb does not pass traffic"
}

# ---------------------------------------------------------------------------------------------
# userspace WireGuard daemons

NL_IMPLS_ALL=(lanrage wireguard-go boringtun-cli)

# nl_impl_cmd IMPL IFNAME THREADS — fill the array NL_CMD with the foreground command line.
# THREADS may be empty (implementation default).
nl_impl_cmd() {
    local impl="$1" ifname="$2" threads="${3:-}"
    NL_CMD=()
    case "$impl" in
        lanrage)
            NL_CMD=("$(nl_lanrage_bin)" wg -f)
            [[ -n "$threads" ]] && NL_CMD+=(--threads "$threads")
            NL_CMD+=("$ifname")
            ;;
        wireguard-go)
            # Debian's wireguard-go (0.0.20220316) only prints a banner when the kernel has
            # WireGuard; older builds refused to start without this variable. Set it anyway.
            NL_CMD=(env WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 wireguard-go -f "$ifname")
            ;;
        boringtun-cli)
            # -f: foreground. Stay root: the UAPI socket and TUN fd need it in a namespace.
            NL_CMD=(boringtun-cli -f --disable-drop-privileges)
            [[ -n "$threads" ]] && NL_CMD+=(--threads "$threads")
            NL_CMD+=("$ifname")
            ;;
        *) nl_die "unknown implementation '$impl' (known: ${NL_IMPLS_ALL[*]})" ;;
    esac
}

# nl_impl_require IMPL — fail early if IMPL's program is not installed/built.
nl_impl_require() {
    case "$1" in
        lanrage)
            local bin; bin="$(nl_lanrage_bin)"
            [[ -x "$bin" ]] || nl_die "lanrage binary not found at '$bin': build it with 'cargo build --release' or set LANRAGE_BIN"
            ;;
        wireguard-go) nl_require_tools wireguard-go ;;
        boringtun-cli) nl_require_tools boringtun-cli ;;
        raw) ;;
        *) nl_die "unknown implementation '$1' (known: raw ${NL_IMPLS_ALL[*]})" ;;
    esac
}

# nl_impl_version IMPL — one line describing the version, or "?".
nl_impl_version() {
    local v=""
    case "$1" in
        lanrage) v="$("$(nl_lanrage_bin)" --version 2>/dev/null | head -n1)" ;;
        wireguard-go) v="$(wireguard-go --version 2>/dev/null | head -n1)" ;;
        boringtun-cli) v="$(boringtun-cli --version 2>/dev/null | head -n1)" ;;
        raw) v="veth, kernel $(uname -r)" ;;
    esac
    printf '%s\n' "${v:-?}"
}

# nl_start_daemon IMPL NS IFNAME LOG [THREADS] — start IMPL in the foreground in NS, wait for
# its UAPI socket and TUN device. Sets NL_DAEMON_PID.
nl_start_daemon() {
    local impl="$1" ns="$2" ifname="$3" log="$4" threads="${5:-}"
    local sock="$NL_WG_SOCK_DIR/$ifname.sock"
    ((${#ifname} <= 15)) || nl_die "interface name '$ifname' longer than 15 characters"
    [[ -e "$sock" ]] && nl_die "$sock already exists: another daemon uses '$ifname'"
    nl_impl_cmd "$impl" "$ifname" "$threads"
    NL_IFNAMES+=("$ifname")
    ip netns exec "$ns" "${NL_CMD[@]}" >"$log" 2>&1 </dev/null &
    NL_DAEMON_PID=$!
    nl_track "$NL_DAEMON_PID"
    local i
    for ((i = 0; i < 100; i++)); do
        if ! kill -0 "$NL_DAEMON_PID" 2>/dev/null; then
            nl_daemon_failed "$impl" "$log" "exited during start-up"
        fi
        if [[ -S "$sock" ]] && nl_in "$ns" ip link show dev "$ifname" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    nl_daemon_failed "$impl" "$log" "no UAPI socket $sock or no device $ifname after 10 s"
}

nl_daemon_failed() {
    local impl="$1" log="$2" why="$3"
    {
        printf '%s%s %s%s\n' "$NL_C_RED" "$impl" "$why" "$NL_C_OFF"
        printf '  command: %s\n' "${NL_CMD[*]}"
        if [[ -s "$log" ]]; then
            printf '  last lines of its output:\n'
            tail -n 15 "$log" | sed 's/^/    | /'
        fi
    } >&2
    nl_die "$impl failed to start"
}

# nl_peak_rss_kib PID — VmHWM (peak resident set) of PID in KiB, or empty.
nl_peak_rss_kib() {
    awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || true
}

# nl_cpu_seconds PID — user+system CPU seconds of PID so far (all threads), or empty.
nl_cpu_seconds() {
    local hz; hz="$(getconf CLK_TCK)"
    # Fields after the ")" of comm: utime is 14th, stime 15th overall.
    sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null \
        | awk -v hz="$hz" '{printf "%.2f\n", ($12 + $13) / hz}' || true
}

# nl_wg_keypair PREFIX — write PREFIX.key and PREFIX.pub (mode 600) in NL_TMP.
nl_wg_keypair() {
    local p="$NL_TMP/$1"
    (umask 077; wg genkey >"$p.key")
    wg pubkey <"$p.key" >"$p.pub"
}

# nl_tunnel_up IMPL NS_A NS_B IF_A IF_B [THREADS]
# Start IMPL on both sides, configure both through `wg` with fresh keys, give the tunnel
# addresses (100.64.0.1/.2) and MTU 1420, bring the links up. Sets NL_PID_A, NL_PID_B.
# Does not wait for the handshake (see nl_wait_handshake).
nl_tunnel_up() {
    local impl="$1" a="$2" b="$3" ifa="$4" ifb="$5" threads="${6:-}"
    nl_start_daemon "$impl" "$a" "$ifa" "$NL_TMP/$impl-$ifa.log" "$threads"
    NL_PID_A="$NL_DAEMON_PID"
    nl_start_daemon "$impl" "$b" "$ifb" "$NL_TMP/$impl-$ifb.log" "$threads"
    NL_PID_B="$NL_DAEMON_PID"

    nl_wg_keypair "$ifa"
    nl_wg_keypair "$ifb"
    nl_in "$a" wg set "$ifa" private-key "$NL_TMP/$ifa.key" listen-port "$NL_WG_PORT_A" \
        peer "$(cat "$NL_TMP/$ifb.pub")" allowed-ips "$NL_TUN_B/32" \
        endpoint "$NL_UNDERLAY_B:$NL_WG_PORT_B" \
        || nl_die "wg set $ifa failed ($impl)"
    nl_in "$b" wg set "$ifb" private-key "$NL_TMP/$ifb.key" listen-port "$NL_WG_PORT_B" \
        peer "$(cat "$NL_TMP/$ifa.pub")" allowed-ips "$NL_TUN_A/32" \
        endpoint "$NL_UNDERLAY_A:$NL_WG_PORT_A" \
        || nl_die "wg set $ifb failed ($impl)"

    nl_in "$a" ip addr add "$NL_TUN_A/24" dev "$ifa"
    nl_in "$b" ip addr add "$NL_TUN_B/24" dev "$ifb"
    nl_in "$a" ip link set "$ifa" mtu "$NL_TUN_MTU" up
    nl_in "$b" ip link set "$ifb" mtu "$NL_TUN_MTU" up
    # NL_TUN_TXQLEN: the tunnel devices' transmit queue (for a TUN device, the ring the daemon
    # reads from); unset keeps the kernel's default.
    if [[ -n "${NL_TUN_TXQLEN:-}" ]]; then
        nl_in "$a" ip link set "$ifa" txqueuelen "$NL_TUN_TXQLEN"
        nl_in "$b" ip link set "$ifb" txqueuelen "$NL_TUN_TXQLEN"
    fi
}

# nl_latest_handshake NS IFNAME — unix time of the newest handshake with any peer (0 = none).
nl_latest_handshake() {
    nl_in "$1" wg show "$2" latest-handshakes 2>/dev/null \
        | awk 'BEGIN {m = 0} $2 > m {m = $2} END {print m}'
}

# nl_wait_handshake NS IFNAME DST TIMEOUT_S — send one ping to DST (the packet that makes the
# initiator start a handshake) and wait until `wg show` reports a handshake. Prints two
# numbers: "FIRST_RTT_MS SEEN_S":
#   FIRST_RTT_MS  round-trip time of that first ping as ping measured it — the packet waits in
#                 the daemon for the handshake, so this is handshake + one RTT ("nan" if that
#                 ping got no answer);
#   SEEN_S        seconds until `wg show IFNAME latest-handshakes` reported it (polled every
#                 5 ms; some daemons report late, e.g. boringtun-cli only on its next timer
#                 tick, about 1 s).
# Returns 1 on timeout.
nl_wait_handshake() {
    local ns="$1" ifname="$2" dst="$3" timeout="${4:-10}"
    local t0 t1 deadline ping_out="$NL_TMP/first-ping.$ifname"
    t0="$(date +%s.%N)"
    deadline="$(echo "$t0 + $timeout" | bc)"
    nl_in "$ns" ping -n -c 1 -W "$timeout" "$dst" >"$ping_out" 2>&1 &
    local ping_pid=$!
    while [[ "$(nl_latest_handshake "$ns" "$ifname")" == 0 ]]; do
        if (( $(echo "$(date +%s.%N) > $deadline" | bc) )); then
            nl_kill_pid "$ping_pid" 5
            return 1
        fi
        sleep 0.005
    done
    t1="$(date +%s.%N)"
    wait "$ping_pid" 2>/dev/null || true
    local rtt
    rtt="$(sed -n 's/.*time=\([0-9.]*\) ms.*/\1/p' "$ping_out" | head -n1)"
    printf '%s %.3f\n' "${rtt:-nan}" "$(echo "$t1 - $t0" | bc)"
}

# nl_wait_ping NS DST TIMEOUT_S — until DST answers a ping (tunnel passes traffic).
nl_wait_ping() {
    local ns="$1" dst="$2" timeout="${3:-10}" i
    for ((i = 0; i < timeout * 4; i++)); do
        nl_in "$ns" ping -c 1 -W 0.25 -q "$dst" >/dev/null 2>&1 && return 0
    done
    return 1
}

# nl_tunnel_down PID... IFNAME... — stop the daemons (by pid) and wait for their devices and
# sockets to disappear. Usage: nl_tunnel_down "$NL_PID_A $NL_PID_B" "$IF_A $IF_B"
nl_tunnel_down() {
    local pids="$1" ifnames="$2" pid ifname i
    for pid in $pids; do nl_kill_pid "$pid" 30; done
    for ifname in $ifnames; do
        for ((i = 0; i < 30; i++)); do
            [[ -e "$NL_WG_SOCK_DIR/$ifname.sock" ]] || break
            sleep 0.1
        done
        rm -f "$NL_WG_SOCK_DIR/$ifname.sock"
    done
}

# nl_ping_stats NS DST COUNT INTERVAL — prints "min avg max loss%" (ms, ms, ms, %), or
# "nan nan nan 100" if nothing came back.
nl_ping_stats() {
    local ns="$1" dst="$2" count="$3" interval="$4" out
    out="$(nl_in "$ns" ping -q -n -c "$count" -i "$interval" -W 1 "$dst" 2>&1 || true)"
    awk '
        /packet loss/ { for (i = 1; i <= NF; i++) if ($i ~ /%$/) { loss = $i; sub(/%/, "", loss) } }
        /^(rtt|round-trip)/ { split($4, r, "/"); min = r[1]; avg = r[2]; max = r[3] }
        END {
            if (avg == "") print "nan nan nan", (loss == "" ? 100 : loss)
            else print min, avg, max, loss
        }' <<<"$out"
}
