#!/usr/bin/env bash
# bench/compare.sh [--broker tern] [--pass pinned] NAME=DIR[,DIR...] NAME=DIR[,DIR...] ...
#
# One markdown table comparing configurations of one broker across matrix runs (e.g. the
# same binary with and without a feature): per scenario and metric, each configuration's
# median over its runs (the DIRs after NAME=, each a run-matrix.sh --out folder) with the
# range of its runs in brackets, and the ratio of its median to the first configuration's.
# "✗" marks a configuration with a failed run or check in that scenario.
#
#   bench/compare.sh off=res/off-1,res/off-2 on=res/on-1,res/on-2 polled=res/poll-1,res/poll-2
set -euo pipefail
# shellcheck source=bench/metrics.sh
source "$(dirname "${BASH_SOURCE[0]}")/metrics.sh"
BROKER=tern
PASS=pinned
NAMES=()
DIRS=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --broker) BROKER="$2"; shift 2 ;;
        --pass) PASS="$2"; shift 2 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *=*) NAMES+=("${1%%=*}"); DIRS+=("${1#*=}"); shift ;;
        *) echo "unknown argument $1 (see --help)" >&2; exit 1 ;;
    esac
done
((${#NAMES[@]} >= 1)) || { echo "usage: compare.sh NAME=DIR[,DIR...] ..." >&2; exit 1; }

median() { sort -g | awk '{v[NR] = $1} END { if (NR == 0) exit; print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

head="| scenario | metric | better |"
rule="|---|---|---|"
for n in "${NAMES[@]}"; do head+=" $n |"; rule+="---:|"; done
for n in "${NAMES[@]:1}"; do head+=" $n/${NAMES[0]} |"; rule+="---:|"; done
echo "$head"
echo "$rule"
for scen in $ORDER; do
    present=0
    for d in "${DIRS[@]}"; do
        IFS=',' read -r -a ds <<< "$d"
        for x in "${ds[@]}"; do [[ -f "$x/$PASS/$scen/$BROKER.json" ]] && present=1; done
    done
    ((present)) || continue
    while IFS=';' read -r label expr better; do
        row="| $scen | $label | $(case "$better" in up) echo "↑" ;; down) echo "↓" ;; esac) |"
        meds=()
        for d in "${DIRS[@]}"; do
            IFS=',' read -r -a ds <<< "$d"
            vals=() bad=""
            for x in "${ds[@]}"; do
                f="$x/$PASS/$scen/$BROKER.json"
                [[ -f "$f" ]] || continue
                [[ "$(jq -r '.ok' "$f" 2> /dev/null)" == "false" ]] && bad=" ✗"
                v="$(num "$f" "$expr")"
                [[ -n "$v" ]] && vals+=("$v")
            done
            if ((${#vals[@]} == 0)); then
                meds+=("")
                row+=" –$bad |"
                continue
            fi
            m="$(printf '%s\n' "${vals[@]}" | median)"
            meds+=("$m")
            cell="$(fmt "$m")"
            if ((${#vals[@]} > 1)); then
                lo="$(printf '%s\n' "${vals[@]}" | sort -g | head -1)"
                hi="$(printf '%s\n' "${vals[@]}" | sort -g | tail -1)"
                cell+=" ($(fmt "$lo")–$(fmt "$hi"))"
            fi
            row+=" $cell$bad |"
        done
        for m in "${meds[@]:1}"; do
            if [[ -z "$m" || -z "${meds[0]}" ]]; then
                row+=" – |"
            else
                row+=" $(awk -v a="$m" -v b="${meds[0]}" 'BEGIN { if (b == 0) print "–"; else printf "%.3f", a / b }') |"
            fi
        done
        echo "$row"
    done < <(metrics_for "$scen")
done
