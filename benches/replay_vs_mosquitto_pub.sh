#!/usr/bin/env bash
# Replay throughput at --speed max against one Mosquitto on loopback, in one run with
# `mosquitto_pub -l` fed the same payloads (QoS 1 both; mosquitto_pub publishes every line
# of stdin to one topic), in alternating rounds. Also the schedule error at --speed 10 on
# a short capture.
#
#   cargo build --release && benches/replay_vs_mosquitto_pub.sh [devices] [duration] [rounds]
#
# Rates are what the broker received, not what a publisher read: each run's count comes from
# Mosquitto's own `$SYS/broker/publish/messages/received` counter, and a run that delivered
# fewer messages than its input holds is reported as such. That matters because
# `mosquitto_pub -l` (2.0.11, Debian 12) loses messages when more than 65,535 lines are
# queued at once — it reads stdin far faster than its 20-message window drains, and its
# packet ids wrap: fed 192,400 lines it exits 0 after delivering 61,334. It is therefore fed
# the same payloads in files of at most MP_LINES (60,000) lines, one process after another
# on the same broker.
#
# Needs mosquitto, mosquitto_pub, mosquitto_sub and python3. Prints a Markdown table.
set -euo pipefail
devices=${1:-200}
duration=${2:-2h}
rounds=${3:-3}
mp_lines=${MP_LINES:-60000}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${WALLSCOPE_BIN:-$root/target/release/wallscope}
tmp=$(mktemp -d)
trap 'kill $mq 2>/dev/null || true; rm -rf "$tmp"' EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\nmax_inflight_messages 0\nsys_interval 1\n' \
    "$port" >"$tmp/m.conf"
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
split -l "$mp_lines" -d -a 3 "$tmp/payloads.txt" "$tmp/part."

# PUBLISH packets the broker has received so far. `$SYS` topics are retained and refreshed
# about every `sys_interval` (1 s), sometimes later when the broker is busy: a reading is
# final once it reaches `want`, or after three readings a refresh apart that agree.
received() {
    local want=${1:-0} v last="" same=0 tries=0
    while :; do
        v=$(mosquitto_sub -p "$port" -t '$SYS/broker/publish/messages/received' -C 1 -W 5)
        [ "$v" -ge "$want" ] && [ "$want" -gt 0 ] && break
        if [ "$v" = "$last" ]; then same=$((same + 1)); else same=0; fi
        [ "$same" -ge 2 ] && break
        tries=$((tries + 1)); [ "$tries" -ge 30 ] && break
        last=$v
        sleep 1.1
    done
    echo "$v"
}

now() { date +%s.%N; }
ws_rates=() mp_rates=()
for r in $(seq "$rounds"); do
    before=$(received)
    t0=$(now)
    "$bin" replay "$tmp/cap.jsonl" --to "mqtt://127.0.0.1:$port" --speed max >"$tmp/replay.out"
    t1=$(now)
    ws_n=$(( $(received $((before + n))) - before ))

    before=$(received)
    t2=$(now)
    for p in "$tmp"/part.*; do
        mosquitto_pub -p "$port" -q 1 -t wc/bench/vitals -l <"$p"
    done
    t3=$(now)
    mp_n=$(( $(received $((before + n))) - before ))

    ws=$(python3 -c "print(round($ws_n/($t1-$t0)))")
    mp=$(python3 -c "print(round($mp_n/($t3-$t2)))")
    ws_rates+=("$ws") mp_rates+=("$mp")
    echo "round $r: replay $ws_n of $n in $(python3 -c "print(f'{$t1-$t0:.2f}')") s ($ws msg/s); mosquitto_pub $mp_n of $n in $(python3 -c "print(f'{$t3-$t2:.2f}')") s ($mp msg/s)" >&2
    [ "$ws_n" = "$n" ] || echo "round $r: replay delivered $ws_n of $n messages" >&2
    [ "$mp_n" = "$n" ] || echo "round $r: mosquitto_pub delivered $mp_n of $n messages" >&2
done

python3 - "$n" "${ws_rates[*]}" "${mp_rates[*]}" <<'PY'
import statistics, sys
n = int(sys.argv[1])
ws = [int(x) for x in sys.argv[2].split()]
mp = [int(x) for x in sys.argv[3].split()]
ratios = [w / m for w, m in zip(ws, mp)]
fmt = lambda xs: "–".join(f"{x:,}" for x in (min(xs), max(xs)))
print("| messages | rounds | wallscope replay --speed max | mosquitto_pub -l | ratio (median) |")
print("| ---: | ---: | ---: | ---: | ---: |")
print(f"| {n:,} | {len(ws)} | {fmt(ws)} msg/s | {fmt(mp)} msg/s | "
      f"{min(ratios):.2f}–{max(ratios):.2f}x ({statistics.median(ratios):.2f}x) |")
PY

# Schedule error at 10x: 20 devices at 2-s polls for 10 minutes = 60 s of replay.
"$bin" simulate --devices 20 --duration 10m --poll-interval 2s --seed 4 --no-quirks \
    --out "$tmp/short.jsonl" >/dev/null
"$bin" replay "$tmp/short.jsonl" --to "mqtt://127.0.0.1:$port" --speed 10 | tail -2
