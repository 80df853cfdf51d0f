#!/usr/bin/env bash
# Load on the console while ingest runs: wrk against devices' health reports
# (GET /api/v1/devices/{id}) served by `run --http` over a store of N chargers × D of
# history, while a live fleet of the same chargers publishes through MQTT into the same run.
#
#   benches/api_load.sh [devices=1000] [history=7d] [rate_per_s=200] [seconds=60] [paths=1|N]
#
# Ingest goes through Mosquitto (installed by ./scripts/test). `paths` is how many different chargers the requests rotate over: 1 is a specialist (or a
# wall screen) on one charger, N spreads the load so that reports must be computed. Needs
# wrk (Debian package) and the release binary. Prints wrk's latency distribution and the
# ingest figures; the README records the results.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
HIST=${2:-7d}
RATE=${3:-200}
SECS=${4:-60}
PATHS=${5:-1}
BIN=${BIN:-target/release/wallscope}
[ -x "$BIN" ] || { echo "build the release binary first: cargo build --release"; exit 1; }
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)"; exit 1; }
W=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/wallscope-load.XXXXXX")}
echo "work directory: $W"
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

now_s=$(date -u +%s)
hist_s=$(python3 -c "
import re; m = re.fullmatch(r'(\d+)([smhd])', '$HIST')
print(int(m[1]) * {'s': 1, 'm': 60, 'h': 3600, 'd': 86400}[m[2]])")
start=$(date -u -d "@$(( (now_s - hist_s) / 60 * 60 ))" +%Y-%m-%dT%H:%M:%SZ)
live_start=$(date -u -d "@$(( now_s / 60 * 60 ))" +%Y-%m-%dT%H:%M:%SZ)

if [ ! -d "$W/data" ]; then
  t0=$(date +%s)
  "$BIN" simulate --devices "$N" --duration "$HIST" --poll-interval 30s --seed 5 --fault-rate 0.05 \
    --no-quirks --start "$start" --out "$W/history.jsonl" >/dev/null
  "$BIN" --data-dir "$W/data" import "$W/history.jsonl" >/dev/null
  cp "$W/devices.csv" "$W/data/devices.csv"
  echo "history: $N chargers × $HIST imported in $(( $(date +%s) - t0 )) s"
fi
# The live fleet: the same chargers every 2 s from now on, published on schedule.
"$BIN" simulate --devices "$N" --duration "$(( SECS + 120 ))s" --poll-interval 2s --seed 6 \
  --no-quirks --start "$live_start" --out "$W/live.jsonl" --devices-out "$W/live-devices.csv" \
  --labels-out "$W/live-labels.csv" >/dev/null
TOKEN=$("$BIN" --data-dir "$W/data" token create --name "load-$RANDOM" --role read 2>/dev/null)
MQ=$(port); HP=$(port)
# Mosquitto, as in production (its in-flight window open: acks come after fsync).
mkdir -p "$W/mosquitto"
cat >"$W/mosquitto/mosquitto.conf" <<CONF
listener $MQ 127.0.0.1
allow_anonymous true
max_queued_messages 0
max_inflight_messages 0
persistence false
CONF
mosquitto -c "$W/mosquitto/mosquitto.conf" >"$W/mosquitto/log" 2>&1 &
MQPID=$!
sleep 0.5
"$BIN" --data-dir "$W/data" run --broker "mqtt://127.0.0.1:$MQ" \
  --http "127.0.0.1:$HP" --no-alerts --status-interval-s 10 >"$W/run.log" 2>&1 &
RUN=$!
REPLAY=
trap 'kill $RUN $REPLAY $MQPID 2>/dev/null; wait 2>/dev/null' EXIT
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$HP/healthz" && break; sleep 0.2; done
"$BIN" replay "$W/live.jsonl" --to "mqtt://127.0.0.1:$MQ" --speed 1 >"$W/replay.log" 2>&1 &
REPLAY=$!

DEVICES=$(head -$(( PATHS + 1 )) "$W/data/devices.csv" | tail -n +2 | cut -d, -f1 | paste -sd, -)
CONNS=8
DELAY_MS=$(( CONNS * 1000 / RATE ))
cat >"$W/health.lua" <<'LUA'
local token = os.getenv("WS_TOKEN")
local devices = {}
for d in string.gmatch(os.getenv("WS_DEVICES"), "[^,]+") do table.insert(devices, d) end
local delay_ms = tonumber(os.getenv("WS_DELAY_MS"))
local i = 0
request = function()
  i = i + 1
  local d = devices[(i % #devices) + 1]
  return wrk.format("GET", "/api/v1/devices/" .. d, { ["Authorization"] = "Bearer " .. token })
end
delay = function() return delay_ms end
done = function(summary, latency, requests)
  io.write(string.format("requests %d, errors %d (status %d), %.1f req/s\n", summary.requests,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.timeout,
    summary.errors.status, summary.requests / (summary.duration / 1e6)))
  for _, p in ipairs({ 50, 90, 99, 99.9 }) do
    io.write(string.format("p%s %.1f ms\n", p, latency:percentile(p) / 1000))
  end
  io.write(string.format("max %.1f ms\n", latency.max / 1000))
end
LUA
# Warm up: the first report per charger is computed, later ones come from the cache.
for d in ${DEVICES//,/ }; do
  curl -s -o /dev/null -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$HP/api/v1/devices/$d"
done
sleep 5
R0=$(curl -s -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$HP/metrics" | grep '^wallscope_ingest_received_messages_total ' || true)
echo "wrk: $CONNS connections, ${DELAY_MS} ms between requests each (≈ $RATE req/s), $SECS s, over $PATHS charger(s), while ingesting:"
WS_TOKEN=$TOKEN WS_DEVICES=$DEVICES WS_DELAY_MS=$DELAY_MS \
  wrk -t2 -c"$CONNS" -d"${SECS}s" -s "$W/health.lua" "http://127.0.0.1:$HP" | tail -7
echo "ingest during the run (received messages before and after wrk, ack p99):"
echo "  before: $R0"
curl -s -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$HP/metrics" \
  | grep -E '^wallscope_(ingest_received_messages_total|ingest_ack_latency_p99_seconds|ingest_status_age_seconds) ' | sed 's/^/  /'
tail -2 "$W/replay.log" | sed 's/^/  replay: /'
