#!/usr/bin/env bash
# `make demo`: what a newcomer should see. Starts watchdogs on the examples, on free ports,
# and sends them the seed's invocations with cURL. Everything started here is stopped here.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
say() { printf '\n\033[1m%s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; }

start_watchdog() {  # example-name -> prints the port
  local name=$1 port
  port=$(free_port)
  TMPDIR="$work" suppress_lock=true faas-supervisor watchdog --host 127.0.0.1 --port "$port" \
    --script "examples/$name/script.sh" --config "examples/$name/function_config.yaml" \
    >"$work/$name.log" 2>&1 &
  pids+=($!)
  until curl -fs "http://127.0.0.1:$port/_/health" >/dev/null 2>&1; do
    kill -0 "${pids[-1]}" 2>/dev/null || { cat "$work/$name.log"; exit 1; }
    sleep 0.05
  done
  echo "$port"
}

say "1. A watchdog serves the cowsay example (JSON in, text out)"
cow=$(start_watchdog cowsay)
echo "watchdog on http://127.0.0.1:$cow, ready: $(curl -s "http://127.0.0.1:$cow/_/health")"
show "curl -d '{\"message\": \"Hello from faas-supervisor\"}' http://127.0.0.1:$cow/run/cowsay"
curl -s -d '{"message": "Hello from faas-supervisor"}' "http://127.0.0.1:$cow/run/cowsay"

say "2. A file sent base64-encoded, the result decoded to a file"
split=$(start_watchdog split-lines)
printf 'first line\nsecond line\nthird line\n' > "$work/poem.txt"
show "base64 poem.txt | curl --data-binary @- http://127.0.0.1:$split/run/split-lines | base64 -d > result.zip"
base64 "$work/poem.txt" | curl -s --data-binary @- "http://127.0.0.1:$split/run/split-lines" \
  | base64 -d > "$work/result.zip"
echo "result.zip holds:"
python3 -m zipfile -l "$work/result.zip"
show "the same, asking for the raw bytes: curl -H 'Accept: application/zip' ..."
base64 "$work/poem.txt" | curl -s -H 'Accept: application/zip' --data-binary @- \
  "http://127.0.0.1:$split/run/split-lines" -o "$work/raw.zip"
echo "raw.zip is $(wc -c < "$work/raw.zip") bytes, a $(head -c 2 "$work/raw.zip") archive"

say "3. A failing script: 500, its exit code, the reason first, then the logs"
fail=$(start_watchdog failing)
show "curl -i -d '{}' http://127.0.0.1:$fail/run/failing"
curl -s -i -d '{}' "http://127.0.0.1:$fail/run/failing" | grep -v -E '^(Date|Server):'

say "4. What the watchdog measured (GET /metrics)"
curl -s "http://127.0.0.1:$cow/metrics" | grep -E '^faas_invocations_total'

say "Stopping the watchdogs (SIGTERM: in-flight work drains, folders are removed)"
