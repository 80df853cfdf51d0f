#!/usr/bin/env bash
# Ingest throughput while the alerts' webhook is down, against the same ingest with the
# webhook up: one Mosquitto on loopback, a simulated faulty fleet replayed at --speed max
# into `wallscope run` (live rules and alerts on), three runs each way, median msg/s from
# first to last durable row. Then, with the webhook still down after the ingest, the
# receiver comes up and must get every notification the alerts table holds.
#
#   cargo build --release && benches/alerts_outage.sh [devices] [duration] [down_s]
#
# Needs mosquitto and python3. Prints a Markdown table for the README.
set -euo pipefail
devices=${1:-200}
duration=${2:-6h}
down_s=${3:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${WALLSCOPE_BIN:-$root/target/release/wallscope}
tmp=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

mq_port=$(free_port)
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\n' "$mq_port" >"$tmp/m.conf"
mosquitto -c "$tmp/m.conf" >/dev/null 2>&1 & pids+=($!)
sleep 0.5
"$bin" simulate --devices "$devices" --duration "$duration" --seed 5 --fault-rate 0.3 \
    --out "$tmp/cap.jsonl" >/dev/null
n=$(wc -l <"$tmp/cap.jsonl")

# A webhook receiver that answers 200 and records each idempotency key (one per line).
cat >"$tmp/recv.py" <<'PY'
import http.server, sys
out = open(sys.argv[2], "a")
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        out.write(self.headers.get("idempotency-key", "") + "\n"); out.flush()
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY

# One ingest of the capture; echoes msg/s. $1: webhook port, $2: data dir.
ingest() {
    local hook=$1 data=$2
    mkdir -p "$data"
    cp "$tmp/devices.csv" "$data/devices.csv"
    printf '[alerts]\ngroup_wait_ms = 1000\n[[alerts.sinks]]\nname = "hook"\nkind = "webhook"\nurl = "http://127.0.0.1:%s/"\nbackoff_max_ms = 5000\n' "$hook" >"$data.toml"
    "$bin" -v --data-dir "$data" run --broker "mqtt://127.0.0.1:$mq_port" --config "$data.toml" \
        --client-id "bench-$(basename "$data")" --status-interval-s 0 >"$data.log" 2>&1 &
    local ws=$!
    until grep -q subscribed "$data.log" 2>/dev/null; do sleep 0.05; done
    local t0; t0=$(date +%s.%N)
    "$bin" replay "$tmp/cap.jsonl" --to "mqtt://127.0.0.1:$mq_port" --speed max >/dev/null
    until python3 - "$data" "$n" <<'PY'
import json, sys
try:
    s = json.load(open(sys.argv[1] + "/ingest-status.json"))
    sys.exit(0 if s["received"] >= int(sys.argv[2]) and s["acks_pending"] == 0 else 1)
except Exception:
    sys.exit(1)
PY
    do sleep 0.05; done
    local t1; t1=$(date +%s.%N)
    kill "$ws"; wait "$ws" || true
    python3 -c "print(round($n/($t1-$t0)))"
}

up_port=$(free_port)
python3 "$tmp/recv.py" "$up_port" "$tmp/up-keys.txt" & pids+=($!)
down_port=$(free_port)
up=(); down=()
for i in 1 2 3; do
    up+=("$(ingest "$up_port" "$tmp/up$i")")
    down+=("$(ingest "$down_port" "$tmp/down$i")")
done
median() { printf '%s\n' "$@" | sort -n | sed -n 2p; }

# The outage: run again on the last "down" store with no new data while the receiver
# stays down for down_s, then comes up; count what it gets against the table.
data="$tmp/down3"
"$bin" -v --data-dir "$data" run --broker "mqtt://127.0.0.1:$mq_port" --config "$data.toml" \
    --client-id "bench-down3" --status-interval-s 0 >>"$data.log" 2>&1 &
ws=$!
sleep "$down_s"
python3 "$tmp/recv.py" "$down_port" "$tmp/down-keys.txt" & pids+=($!)
want=$("$bin" --data-dir "$data" sql "SELECT count(DISTINCT notification_id) FROM alerts WHERE notification_id IS NOT NULL" --format csv 2>/dev/null | tail -1)
for _ in $(seq 1 600); do
    got=$(sort -u "$tmp/down-keys.txt" 2>/dev/null | grep -c . || true)
    [ "${got:-0}" -ge "$want" ] && break
    sleep 0.1
done
kill "$ws"; wait "$ws" || true

echo "| ingest of $n messages ($devices chargers × $duration, 30 % faulty) at --speed max | webhook up | webhook down |"
echo "| --- | ---: | ---: |"
echo "| durable msg/s, median of 3 (runs: up ${up[*]}; down ${down[*]}) | $(median "${up[@]}") | $(median "${down[@]}") |"
echo
echo "after ${down_s} s down, the receiver got $got of $want notifications in the alerts table"
