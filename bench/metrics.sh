# shellcheck shell=bash
# The metrics report.sh and compare.sh take from tern-bench's JSON, per matrix scenario, and
# the number formatting they share. Source it (needs jq).

ORDER="qos0-fanin qos0-pairs qos1-pairs qos2-pairs qos0-fanout lat-10k lat-20k conn-rate conn-storm idle-10k idle-50k retained-storm"

# label;jq expression;better (up, down, or info)
metrics_for() {
    case "$1" in
        qos0-fanin | qos0-pairs | qos1-pairs | qos2-pairs | qos0-fanout)
            printf '%s\n' "delivered msg/s;.delivery.delivered_per_s;up" \
                "p99 latency ms;.latency_us | select(.count > 0) | .p99 / 1000;down" \
                "broker peak RSS MiB;.broker.rss_peak_kib / 1024;down" \
                "broker CPU %;.broker.cpu_pct;info" ;;
        lat-*)
            printf '%s\n' "p50 latency ms;.latency_us | select(.count > 0) | .p50 / 1000;down" \
                "p99 latency ms;.latency_us | select(.count > 0) | .p99 / 1000;down" \
                "p99.9 latency ms;.latency_us | select(.count > 0) | .p999 / 1000;down" \
                "broker peak RSS MiB;.broker.rss_peak_kib / 1024;down" ;;
        conn-rate)
            printf '%s\n' "connections/s;.connect.rate_per_s;up" \
                "time to connect all s;.connect.time_to_connect_all_s;down" ;;
        conn-storm)
            printf '%s\n' "connections/s;.connect.rate_per_s;up" \
                "p50 handshake ms;.connect.handshake_ms.p50;down" \
                "p99 handshake ms;.connect.handshake_ms.p99;down" \
                "max handshake ms;.connect.handshake_ms.max;down" ;;
        idle-*)
            printf '%s\n' "broker bytes per connection;.broker.rss_per_conn_bytes;down" \
                "broker RSS connected MiB;.broker.rss_connected_kib / 1024;down" \
                "connections/s;.connect.rate_per_s;up" ;;
        retained-storm)
            printf '%s\n' "retained deliveries/s;.storm.delivered_per_s;up" \
                "all retained p99 ms;.storm.time_to_all_retained_us | select(.count > 0) | .p99 / 1000;down" \
                "broker peak RSS MiB;.broker.rss_peak_kib / 1024;down" ;;
        *) printf '%s\n' "ok;.ok;info" ;;
    esac
}

num() { # file expr -> number or empty
    [[ -f "$1" ]] || return 0
    jq -r "($2) // empty | numbers" "$1" 2> /dev/null || true
}

fmt() { # number -> short human form
    [[ -z "$1" ]] && { echo "–"; return; }
    awk -v v="$1" 'BEGIN { a = (v < 0 ? -v : v);
        if (a >= 1000) printf "%.0f", v; else if (a >= 100) printf "%.0f", v;
        else if (a >= 10) printf "%.1f", v; else printf "%.2f", v }'
}
