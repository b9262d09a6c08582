#!/usr/bin/env bash
# scripts/ping-ab.sh — idle ping of two userspace WireGuard implementations, A/B interleaved.
#
# Both tunnels are up at the same time, each between its own pair of namespaces, and the
# rounds alternate between them, so machine noise hits both alike. That makes differences of
# a few tens of microseconds visible, which the sequential benchmark cannot resolve.
#
#   scripts/ping-ab.sh                         lanrage vs boringtun-cli, 8 rounds of 100 pings
#   scripts/ping-ab.sh --impls lanrage,wireguard-go --rounds 5 --count 200
#
# Run as root. Prints each round's average RTT and the median per implementation.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=netns-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/netns-lib.sh"

IMPLS="lanrage,boringtun-cli"
ROUNDS=8
COUNT=100
INTERVAL=0.01
while (($#)); do
    case "$1" in
        --impls) IMPLS="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --count) COUNT="$2"; shift 2 ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) nl_die "unknown argument '$1' (try --help)" ;;
    esac
done

nl_require_root
nl_require_tools ip wg ping awk bc
IFS=',' read -r -a impls <<<"$IMPLS"
((${#impls[@]} == 2)) || nl_die "--impls takes exactly two implementations"
for impl in "${impls[@]}"; do nl_impl_require "$impl"; done

nl_init
declare -A NS
for k in 0 1; do
    impl="${impls[$k]}"
    NS[$k]="lrab-${NL_ID}-$k"
    nl_make_pair "${NS[$k]}-a" "${NS[$k]}-b"
    nl_tunnel_up "$impl" "${NS[$k]}-a" "${NS[$k]}-b" "la${NL_ID}${k}a" "la${NL_ID}${k}b"
    nl_wait_ping "${NS[$k]}-a" "$NL_TUN_B" 10 || nl_die "$impl: no ping through the tunnel"
    nl_log "$impl: tunnel up"
done

declare -a samples0 samples1
printf '%-7s %14s %14s\n' round "${impls[0]}" "${impls[1]}"
for ((r = 1; r <= ROUNDS; r++)); do
    read -r _ a0 _ _ < <(nl_ping_stats "${NS[0]}-a" "$NL_TUN_B" "$COUNT" "$INTERVAL")
    read -r _ a1 _ _ < <(nl_ping_stats "${NS[1]}-a" "$NL_TUN_B" "$COUNT" "$INTERVAL")
    samples0+=("$a0"); samples1+=("$a1")
    printf '%-7s %11s ms %11s ms\n' "$r" "$a0" "$a1"
done

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
m0="$(median "${samples0[@]}")"
m1="$(median "${samples1[@]}")"
printf '%-7s %11s ms %11s ms   (%s / %s = %.2f)\n' median "$m0" "$m1" "${impls[0]}" "${impls[1]}" \
    "$(echo "$m0 / $m1" | bc -l)"
