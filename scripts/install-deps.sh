#!/usr/bin/env bash
# scripts/install-deps.sh — install what LANrage's demo, namespace tests and benchmarks need
# on a fresh Debian (12, bookworm) machine. Run as root. Idempotent and quiet: when every
# package is already there it does not touch apt at all.
#
#   scripts/install-deps.sh           Debian packages (wg, wireguard-go, iperf3, ip, ping, ...)
#   scripts/install-deps.sh --bench   also boringtun-cli 0.7.x (cargo install --locked), the
#                                     second reference implementation for scripts/bench.sh
#
# Environment: EXTRA_PACKAGES="pkg ..." adds Debian packages to the list.

set -euo pipefail

BENCH=0
BORINGTUN_VERSION="^0.7"
for arg in "$@"; do
    case "$arg" in
        --bench) BENCH=1 ;;
        -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "error: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
    esac
done

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

[[ "$(id -u)" == 0 ]] || die "must run as root (apt-get): try 'sudo $0 $*'"
command -v apt-get >/dev/null || die "apt-get not found: this script is for Debian"

PACKAGES=(
    wireguard-tools   # wg: configures every implementation through the UAPI socket
    wireguard-go      # reference peer for interop tests and benchmarks
    iperf3            # throughput
    iproute2          # ip, ss, tc (netem)
    iputils-ping      # ping
    iptables          # NAT lab (MASQUERADE in a router namespace)
    coturn            # NAT lab: STUN server on two addresses (RFC 5780)
    conntrack         # NAT lab: flush a router's mappings (NAT rebinding)
    miniupnpd         # NAT lab: a router offering PCP, NAT-PMP and UPnP IGD (port mapping)
    miniupnpd-nftables # its nftables backend (named: apt would otherwise pick either)
    nftables          # nft: the chains miniupnpd adds its rules to
    netcat-openbsd    # nc: UDP/TCP probes in tests
    hping3            # NAT lab: a garbage flood at full speed against a relay
    socat             # LAN discovery tests: broadcast and multicast senders and listeners
    curl              # asks the Prometheus server's API in tests
    prometheus        # scrapes the daemon's /metrics in tests
    systemd           # systemd-analyze: checks the service unit in dist/systemd
    chromium          # the web UI test's browser (headless)
    chromium-driver   # chromedriver: WebDriver for that test
    jq                # JSON from iperf3 and bench results
    gcc               # cc: compiles the C ABI's test program (ffi/tests)
    libc6-dev         # its C headers
    valgrind          # runs that program checking for leaks and memory errors
    bc                # arithmetic in the scripts
    procps            # sysctl, ps, pgrep
    coreutils         # timeout, mktemp
    ca-certificates   # cargo and apt over TLS
)
# shellcheck disable=SC2206 # split on purpose
[[ -n "${EXTRA_PACKAGES:-}" ]] && PACKAGES+=(${EXTRA_PACKAGES})

missing=()
for p in "${PACKAGES[@]}"; do
    if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" != "install ok installed" ]]; then
        missing+=("$p")
    fi
done

if ((${#missing[@]})); then
    log "installing: ${missing[*]}"
    apt_log="$(mktemp /tmp/lanrage-install-deps.XXXXXX.log)"
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; } \
        >"$apt_log" 2>&1; then
        tail -n 30 "$apt_log" >&2
        die "apt-get failed (full log: $apt_log)"
    fi
    rm -f "$apt_log"
else
    log "Debian packages: all ${#PACKAGES[@]} present"
fi

# The NAT lab runs miniupnpd inside a router namespace only: none on this machine's own network.
if command -v systemctl >/dev/null && systemctl is-enabled miniupnpd >/dev/null 2>&1; then
    systemctl disable --now miniupnpd >/dev/null 2>&1 || true
fi

if ((BENCH)); then
    have="$(boringtun-cli --version 2>/dev/null || true)"
    if [[ "$have" =~ ^boringtun[a-z-]*\ 0\.7\. ]]; then
        log "boringtun-cli: $have present"
    else
        command -v cargo >/dev/null || die "cargo not found: install Rust (rustup) to build boringtun-cli"
        log "building boringtun-cli $BORINGTUN_VERSION with cargo install (several minutes on 2 cores)"
        cargo_log="$(mktemp /tmp/lanrage-boringtun-install.XXXXXX.log)"
        if ! cargo install boringtun-cli --locked --version "$BORINGTUN_VERSION" >"$cargo_log" 2>&1; then
            tail -n 30 "$cargo_log" >&2
            die "cargo install boringtun-cli failed (full log: $cargo_log)"
        fi
        rm -f "$cargo_log"
        command -v boringtun-cli >/dev/null \
            || die "boringtun-cli installed but not on PATH: add \$HOME/.cargo/bin (or \$CARGO_HOME/bin) to PATH"
        log "boringtun-cli: $(boringtun-cli --version) installed"
    fi
fi

# What the kernel must offer; nothing to install, but say so now rather than mid-test.
[[ -c /dev/net/tun ]] || echo "warning: /dev/net/tun missing: TUN devices will fail (modprobe tun?)" >&2
if ! ip netns add "lrdeps-$$" 2>/dev/null; then
    echo "warning: cannot create network namespaces here (need root and CAP_SYS_ADMIN)" >&2
else
    ip netns del "lrdeps-$$"
fi
log "dependencies ready"
