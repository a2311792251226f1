#!/usr/bin/env bash
# `make demo`: what a newcomer should see, on the embedded default (no Docker, no cluster).
# Starts the controller, applies the examples with the client, invokes them synchronously
# (client and cURL) and asynchronously (a file uploaded to the service's input bucket through
# the controller's S3 endpoint, as OSCAR's dashboard or oscar-cli would), then
# stops everything. Everything started here is stopped here.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
controller_pid=""
cleanup() {
  if [ -n "$controller_pid" ]; then
    kill -TERM "$controller_pid" 2>/dev/null || true
    wait "$controller_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '\033[2m$ %s\033[0m\n' "$*"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port)
s3_port=$(free_port)  # the S3 endpoint's (9000 unless told: free here, whatever else runs)
export FAAS_ENDPOINT="http://127.0.0.1:$port" FAAS_USER=oscar FAAS_PASSWORD=demo-password
data="$work/data"

say "1. The controller, on this machine alone (the embedded default)"
show "faas-supervisor controller --port $port --s3-port $s3_port --data-dir $data"
faas-supervisor controller --host 127.0.0.1 --port "$port" --s3-port "$s3_port" --data-dir "$data" \
  >"$work/controller.log" 2>&1 &
controller_pid=$!
until curl -fs "$FAAS_ENDPOINT/health" >/dev/null 2>&1; do
  kill -0 "$controller_pid" 2>/dev/null || { cat "$work/controller.log"; exit 1; }
  sleep 0.1
done
echo "ready at $FAAS_ENDPOINT (user oscar, password from FAAS_PASSWORD), S3 at http://127.0.0.1:$s3_port"

say "2. Create the example services from an OSCAR FDL file"
show "faas-supervisor service apply -f examples/fdl.yaml"
faas-supervisor service apply -f examples/fdl.yaml
show "faas-supervisor service list"
faas-supervisor service list

say "3. A synchronous invocation with the client: JSON in, text out"
show "faas-supervisor service run cowsay --text-input '{\"message\": \"Hello from faas-supervisor\"}'"
faas-supervisor service run cowsay --text-input '{"message": "Hello from faas-supervisor"}'

say "4. The same with cURL and the service's token: a file in, the result decoded to a file"
token=$(curl -s -u "oscar:$FAAS_PASSWORD" "$FAAS_ENDPOINT/system/services/split-lines" \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')
printf 'first line\nsecond line\nthird line\n' > "$work/poem.txt"
show "base64 poem.txt | curl -H \"Authorization: Bearer \$TOKEN\" -d @- $FAAS_ENDPOINT/run/split-lines | base64 -d > result.zip"
base64 "$work/poem.txt" | curl -s -H "Authorization: Bearer $token" -d @- \
  "$FAAS_ENDPOINT/run/split-lines" | base64 -d > "$work/result.zip"
python3 -m zipfile -l "$work/result.zip"

say "5. An asynchronous job: a file uploaded to the service's input bucket over S3"
output="$data/storage/split-lines/output"
show "faas-supervisor service put-file split-lines minio split-lines/input/ poem.txt"
faas-supervisor service put-file split-lines minio split-lines/input/ "$work/poem.txt"
deadline=$((SECONDS + 30))
until [ -f "$output/size.txt" ]; do
  [ $SECONDS -lt $deadline ] || { echo "no output after 30 s"; cat "$work/controller.log"; exit 1; }
  sleep 0.2
done
show "faas-supervisor service list-files split-lines minio split-lines/output"
faas-supervisor service list-files split-lines minio split-lines/output
show "faas-supervisor service get-file split-lines minio split-lines/output/size.txt"
faas-supervisor service get-file split-lines minio split-lines/output/size.txt
show "faas-supervisor service logs split-lines"
until faas-supervisor service logs split-lines | grep -qE 'Succeeded|Failed'; do sleep 0.2; done
faas-supervisor service logs split-lines
job=$(faas-supervisor service logs split-lines | awk 'NR > 1 {print $1; exit}')
show "faas-supervisor service logs split-lines $job"
faas-supervisor service logs split-lines "$job"

say "6. A failing script: 500, its exit code, the reason first, then the logs"
show "curl -i -u oscar:\$FAAS_PASSWORD -d '{}' $FAAS_ENDPOINT/run/failing"
curl -s -i -u "oscar:$FAAS_PASSWORD" -d '{}' "$FAAS_ENDPOINT/run/failing" \
  | grep -v -E '^(Date|Server|X-Duration-Seconds|X-Invocation-Id):' || true

say "7. Stopping: the controller stops its services' watchdogs and exits"
kill -TERM "$controller_pid"; wait "$controller_pid" && echo "controller stopped cleanly"
controller_pid=""
