#!/usr/bin/env bash
# scripts/ping-ab.sh — idle ping of two userspace WireGuard implementations, A/B interleaved.
#
# Both tunnels are up at the same time, each between its own pair of namespaces, and the
# rounds alternate between them, so machine noise hits both alike. That makes differences of
# a few tens of microseconds visible, which the sequential benchmark cannot resolve.
#
#   scripts/ping-ab.sh                         lanrage vs boringtun-cli, 8 rounds of 100 pings
#   scripts/ping-ab.sh --impls lanrage,wireguard-go --rounds 5 --count 200
#   scripts/ping-ab.sh --pin 0                 daemons and ping all on CPU 0
#
# --pin CPU puts both daemons (every thread) and ping on one CPU: no cross-CPU wake-ups, so
# what remains is each implementation's own per-packet cost. On virtual machines whose idle
# CPUs halt, waking a thread on another CPU costs tens of microseconds, and which
# implementation happens to keep the other CPU awake shows up in the unpinned figures.
#
# Run as root. Prints each round's average RTT, the median of the rounds, and the 10th, 50th
# and 90th percentile of every echo per implementation.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=netns-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/netns-lib.sh"

IMPLS="lanrage,boringtun-cli"
ROUNDS=8
COUNT=100
INTERVAL=0.01
PIN=""
while (($#)); do
    case "$1" in
        --impls) IMPLS="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --count) COUNT="$2"; shift 2 ;;
        --pin) PIN="$2"; shift 2 ;;
        -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) nl_die "unknown argument '$1' (try --help)" ;;
    esac
done

nl_require_root
nl_require_tools ip wg ping awk bc
[[ -z "$PIN" ]] || nl_require_tools taskset
[[ -z "$PIN" || "$PIN" =~ ^[0-9]+$ ]] || nl_die "--pin takes a CPU number"
PING=(ping)
[[ -z "$PIN" ]] || PING=(taskset -c "$PIN" ping)
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
    if [[ -n "$PIN" ]]; then
        for pid in "$NL_PID_A" "$NL_PID_B"; do
            taskset -a -p -c "$PIN" "$pid" >/dev/null || nl_die "cannot pin $impl to CPU $PIN"
        done
    fi
    nl_log "$impl: tunnel up${PIN:+, pinned to CPU $PIN}"
done

# ping_round K — one round of pings through tunnel K: appends each echo's RTT (ms) to
# $NL_TMP/echoes-K and prints the round's mean, or "nan" if nothing came back.
ping_round() {
    nl_in "${NS[$1]}-a" "${PING[@]}" -n -c "$COUNT" -i "$INTERVAL" -W 1 "$NL_TUN_B" 2>/dev/null \
        | sed -n 's/.*time=\([0-9.]*\).*/\1/p' >"$NL_TMP/round" || true
    cat "$NL_TMP/round" >>"$NL_TMP/echoes-$1"
    awk '{s += $1} END {if (NR) printf "%.3f\n", s / NR; else print "nan"}' "$NL_TMP/round"
}
# percentile P K — the P-th percentile of every echo through tunnel K.
percentile() { sort -g "$NL_TMP/echoes-$2" | awk -v p="$1" '{v[NR] = $1} END {i = int(NR * p / 100); if (i < 1) i = 1; print (NR ? v[i] : "nan")}'; }
: >"$NL_TMP/echoes-0"; : >"$NL_TMP/echoes-1"

declare -a samples0 samples1
printf '%-7s %14s %14s\n' round "${impls[0]}" "${impls[1]}"
for ((r = 1; r <= ROUNDS; r++)); do
    a0="$(ping_round 0)"
    a1="$(ping_round 1)"
    samples0+=("$a0"); samples1+=("$a1")
    printf '%-7s %11s ms %11s ms\n' "$r" "$a0" "$a1"
done

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
m0="$(median "${samples0[@]}")"
m1="$(median "${samples1[@]}")"
printf '%-7s %11s ms %11s ms   (%s / %s = %.2f)\n' median "$m0" "$m1" "${impls[0]}" "${impls[1]}" \
    "$(echo "$m0 / $m1" | bc -l)"
for p in 10 50 90; do
    q0="$(percentile "$p" 0)"; q1="$(percentile "$p" 1)"
    printf '%-7s %11s ms %11s ms   (%.2f)\n' "p$p" "$q0" "$q1" "$(echo "$q0 / $q1" | bc -l)"
done
