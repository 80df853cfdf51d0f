#!/usr/bin/env bash
# Replay throughput at --speed max against one Mosquitto on loopback, in one run with
# `mosquitto_pub -l` fed the same payloads (QoS 1 both; mosquitto_pub publishes every line
# of stdin to one topic). Also the schedule error at --speed 10 on a short capture.
#
#   cargo build --release && benches/replay_vs_mosquitto_pub.sh [devices] [duration]
#
# Needs mosquitto, mosquitto_pub and python3. Prints a Markdown table for the README.
set -euo pipefail
devices=${1:-200}
duration=${2:-2h}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${WALLSCOPE_BIN:-$root/target/release/wallscope}
tmp=$(mktemp -d)
trap 'kill $mq 2>/dev/null || true; rm -rf "$tmp"' EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\nmax_inflight_messages 0\n' "$port" >"$tmp/m.conf"
mosquitto -c "$tmp/m.conf" >/dev/null 2>&1 & mq=$!
sleep 0.5

"$bin" simulate --devices "$devices" --duration "$duration" --seed 3 --no-quirks \
    --out "$tmp/cap.jsonl" >/dev/null
# The same payloads, one per line (the simulator's payloads are single-line JSON).
python3 - "$tmp/cap.jsonl" "$tmp/payloads.txt" <<'PY'
import json, sys
with open(sys.argv[1]) as f, open(sys.argv[2], "w") as out:
    for line in f:
        out.write(json.dumps(json.loads(line)["payload"], separators=(",", ":")) + "\n")
PY
n=$(wc -l <"$tmp/payloads.txt")

t0=$(date +%s.%N)
"$bin" replay "$tmp/cap.jsonl" --to "mqtt://127.0.0.1:$port" --speed max >"$tmp/replay.out"
t1=$(date +%s.%N)
mosquitto_pub -p "$port" -q 1 -t wc/bench/vitals -l <"$tmp/payloads.txt"
t2=$(date +%s.%N)

ws=$(python3 -c "print(f'{$n/($t1-$t0):,.0f}')")
mp=$(python3 -c "print(f'{$n/($t2-$t1):,.0f}')")
ratio=$(python3 -c "print(f'{($t2-$t1)/($t1-$t0):.2f}')")
echo "| messages | wallscope replay --speed max | mosquitto_pub -l | ratio |"
echo "| ---: | ---: | ---: | ---: |"
echo "| $n | $ws msg/s | $mp msg/s | ${ratio}x |"

# Schedule error at 10x: 20 devices at 2-s polls for 10 minutes = 60 s of replay.
"$bin" simulate --devices 20 --duration 10m --poll-interval 2s --seed 4 --no-quirks \
    --out "$tmp/short.jsonl" >/dev/null
"$bin" replay "$tmp/short.jsonl" --to "mqtt://127.0.0.1:$port" --speed 10 | tail -2
