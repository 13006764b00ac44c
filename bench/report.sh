#!/usr/bin/env bash
# bench/report.sh DIR: one markdown table from the JSON files of a matrix run
# (DIR/<pass>/<scenario>/<broker>.json), with Tern's ratios to Mosquitto and rumqttd, then
# notes: failed checks, errors, skipped runs, runs where the load generator was saturated.
# When the run has results of the relay (`tern-bench relay`, the floor), two more columns,
# relay and Tern/relay, and a short table of Tern's delivered msg/s as a fraction of the
# relay's per scenario and pass.
#
# Cell marks: "✗" the run failed or a check failed (see notes), "⚠" the load generator was
# near its CPU limit in that run (its numbers may understate the broker), "–" no data.
set -euo pipefail
DIR="${1:?usage: report.sh RESULTS_DIR}"
if ! command -v jq > /dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq) >&2
fi
BROKERS=(tern mosquitto rumqttd)
RELAY=0
if [[ -n "$(find "$DIR" -name relay.json -print -quit)" ]]; then
    RELAY=1
    BROKERS+=(relay)
fi

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

if [[ $RELAY == 1 ]]; then
    echo "| scenario | metric | better | pass | Tern | Mosquitto | rumqttd | relay | Tern/Mosquitto | Tern/rumqttd | rumqttd/Mosquitto | Tern/relay |"
    echo "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
else
    echo "| scenario | metric | better | pass | Tern | Mosquitto | rumqttd | Tern/Mosquitto | Tern/rumqttd | rumqttd/Mosquitto |"
    echo "|---|---|---|---|---:|---:|---:|---:|---:|---:|"
fi
floor=()  # "scenario|pass|tern|relay" of the delivered msg/s rows
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
            if [[ $RELAY == 1 ]]; then
                echo "| $scen | $label | $arrow | $pass | ${cells[0]} | ${cells[1]} | ${cells[2]} | ${cells[3]} | $(ratio "${v[tern]}" "${v[mosquitto]}") | $(ratio "${v[tern]}" "${v[rumqttd]}") | $(ratio "${v[rumqttd]}" "${v[mosquitto]}") | $(ratio "${v[tern]}" "${v[relay]}") |"
                if [[ $label == "delivered msg/s" && -n "${v[relay]}" ]]; then
                    floor+=("$scen|$pass|${v[tern]}|${v[relay]}")
                fi
            else
                echo "| $scen | $label | $arrow | $pass | ${cells[0]} | ${cells[1]} | ${cells[2]} | $(ratio "${v[tern]}" "${v[mosquitto]}") | $(ratio "${v[tern]}" "${v[rumqttd]}") | $(ratio "${v[rumqttd]}" "${v[mosquitto]}") |"
            fi
            unset v
        done
    done < <(metrics_for "$scen")
done

if ((${#floor[@]} > 0)); then
    echo
    echo "Tern against the floor (delivered msg/s; the relay forwards bytes on one thread with no broker work, see bench/README.md):"
    echo
    echo "| scenario | pass | Tern | relay | Tern/relay |"
    echo "|---|---|---:|---:|---:|"
    for row in "${floor[@]}"; do
        IFS='|' read -r scen pass t r <<< "$row"
        echo "| $scen | $pass | $(fmt "$t") | $(fmt "$r") | $(ratio "$t" "$r") |"
    done
fi

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
