#!/usr/bin/env bash
# bench/report.sh DIR: one markdown table from the JSON files of a matrix run
# (DIR/<pass>/<scenario>/<broker>.json), with Tern's ratios to Mosquitto and rumqttd, then
# notes: failed checks, errors, skipped runs, runs where the load generator was saturated.
#
# Cell marks: "✗" the run failed or a check failed (see notes), "⚠" the load generator was
# near its CPU limit in that run (its numbers may understate the broker), "–" no data.
set -euo pipefail
DIR="${1:?usage: report.sh RESULTS_DIR}"
if ! command -v jq > /dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq) >&2
fi
BROKERS=(tern mosquitto rumqttd)

# shellcheck source=bench/metrics.sh
source "$(dirname "${BASH_SOURCE[0]}")/metrics.sh"

ratio() {
    [[ -z "$1" || -z "$2" ]] && { echo "–"; return; }
    awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "–"; else printf "%.2f", a / b }'
}

mark() { # file -> marks
    [[ -f "$1" ]] || return 0
    local m=""
    [[ "$(jq -r '.ok' "$1" 2> /dev/null)" == "false" ]] && m+=" ✗"
    [[ "$(jq -r '.loadgen.saturated // false' "$1" 2> /dev/null)" == "true" ]] && m+=" ⚠"
    printf '%s' "$m"
}

echo "| scenario | metric | better | pass | Tern | Mosquitto | rumqttd | Tern/Mosquitto | Tern/rumqttd | rumqttd/Mosquitto |"
echo "|---|---|---|---|---:|---:|---:|---:|---:|---:|"
passes=()
for p in pinned unpinned; do [[ -d "$DIR/$p" ]] && passes+=("$p"); done
for d in "$DIR"/*/; do
    p="$(basename "$d")"
    [[ " ${passes[*]} " == *" $p "* ]] || passes+=("$p")
done
for scen in $ORDER; do
    while IFS=';' read -r label expr better; do
        for pass in "${passes[@]}"; do
            f="$DIR/$pass/$scen"
            [[ -d "$f" ]] || continue
            declare -A v=()
            cells=()
            for b in "${BROKERS[@]}"; do
                v[$b]="$(num "$f/$b.json" "$expr")"
                if [[ "$(jq -r '.skipped // false' "$f/$b.json" 2> /dev/null)" == "true" ]]; then
                    cells+=("skipped")
                else
                    cells+=("$(fmt "${v[$b]}")$(mark "$f/$b.json")")
                fi
            done
            case "$better" in up) arrow="↑" ;; down) arrow="↓" ;; *) arrow="" ;; esac
            echo "| $scen | $label | $arrow | $pass | ${cells[0]} | ${cells[1]} | ${cells[2]} | $(ratio "${v[tern]}" "${v[mosquitto]}") | $(ratio "${v[tern]}" "${v[rumqttd]}") | $(ratio "${v[rumqttd]}" "${v[mosquitto]}") |"
            unset v
        done
    done < <(metrics_for "$scen")
done

echo
echo "Notes:"
found=0
while IFS= read -r f; do
    rel="${f#"$DIR"/}"
    rel="${rel%.json}"
    msg="$(jq -r '[.error // empty, (.failures // [])[], ((.warnings // [])[] | select(test("load generator|one load-generator")))] | join("; ")' "$f" 2> /dev/null || echo "unreadable JSON")"
    if [[ -n "$msg" ]]; then
        echo "- $rel: $msg"
        found=1
    fi
done < <(find "$DIR" -name '*.json' | sort)
[[ $found == 1 ]] || echo "- none: every run completed, every check passed, the load generator was never saturated"
