#!/usr/bin/env bash
# The one prepared check for a machine with a GPU (ROCm or CUDA): at most 8 minutes on one GPU.
#   build -> GPU tests -> kernel benchmarks -> Triton benchmarks -> serving benchmark on tiny-scout ->
#   rocprofv3/torch.profiler smoke.  Everything lands as JSON/logs in $OUT (else ./perf-results).
# Every step is time-boxed with `timeout` and cut to the time left; a failing step is recorded in
# summary.json and the script goes on. Exit code: 0 when every step that ran passed, 1 otherwise.
#   usage: perf/gpu_check.sh   (env: OUT, PYTHON, GPU_CHECK_BUDGET_S=470, SERVE_PORT=8765,
#                               GPU_CHECK_SKIP=build,pytest_ops,... to leave steps out)
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-./perf-results}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python3}"
BUDGET="${GPU_CHECK_BUDGET_S:-470}"   # 8 min = 480 s, minus a margin for the summary
PORT="${SERVE_PORT:-8765}"
START=$(date +%s)
STEPS="$OUT/steps.tsv"
: > "$STEPS"
export PYTHONUNBUFFERED=1

left() { echo $(( BUDGET - ($(date +%s) - START) )); }

# step NAME CAP_SECONDS CMD... : run CMD with timeout min(CAP, time left), log to $OUT/NAME.log
step() {
  local name="$1" cap="$2"; shift 2
  if [[ ",${GPU_CHECK_SKIP:-}," == *",$name,"* ]]; then skip "$name" "GPU_CHECK_SKIP"; return 0; fi
  local t=$(( $(left) < cap ? $(left) : cap ))
  if (( t < 5 )); then
    printf '%s\tskipped\t0\t0\tno time left\n' "$name" >> "$STEPS"; echo "== $name: skipped (no time left)"; return 0
  fi
  echo "== $name (timeout ${t}s)"
  local s=$(date +%s)
  timeout -k 5 "$t" "$@" > "$OUT/$name.log" 2>&1
  local rc=$? d=$(( $(date +%s) - s )) status=ok
  (( rc == 124 || rc == 137 )) && status=timeout
  (( rc != 0 && rc != 124 && rc != 137 )) && status=failed
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$d" "$name.log" >> "$STEPS"
  echo "   -> $status (rc=$rc, ${d}s)"; tail -n 3 "$OUT/$name.log" | sed 's/^/      /'
  return 0
}
skip() { printf '%s\tskipped\t0\t0\t%s\n' "$1" "$2" >> "$STEPS"; echo "== $1: skipped ($2)"; }

# 0. facts about the machine
step info 20 bash -c "$PY -m amd_llama4.cli info --json > '$OUT/info.json' 2>/dev/null || $PY -c 'import torch;print(torch.__version__, torch.version.hip, torch.version.cuda, torch.cuda.is_available())'; (rocm-smi --showproductname --showmeminfo vram 2>/dev/null || nvidia-smi 2>/dev/null || true)"

# 1. build (no network on GPU machines: no build isolation, no dependency resolution first)
step build 170 bash -c "$PY -m pip install -e . --no-build-isolation --no-deps || $PY -m pip install -e ."
step info_after_build 15 bash -c "$PY -m amd_llama4.cli info --json > '$OUT/info.json'"

# 2. GPU tests (tests marked gpu if any, else the op tests)
if grep -rqs "pytest.mark.gpu" tests; then
  step pytest_gpu 100 "$PY" -m pytest -m gpu -q -x -p no:cacheprovider --junitxml="$OUT/pytest_gpu.xml" tests
else
  step pytest_ops 100 "$PY" -m pytest -q -p no:cacheprovider --junitxml="$OUT/pytest_ops.xml" tests/ops
fi

# 3. kernel benchmarks at Scout/Maverick shapes (a representative subset that fits the budget)
step bench_kernels 110 "$PY" perf/bench_kernels.py --tp 1,8 --tokens 1,16,256,4096 --iters 10 \
  --max-seconds-per-case 0.5 --time-budget 90 --out "$OUT/bench_kernels.json" -v

# 4. Triton kernel benchmarks (another helper's script), when present
if [[ -f perf/bench_triton.py ]]; then
  if grep -q -- "--out" perf/bench_triton.py; then
    TRITON_ARGS=(--out "$OUT/bench_triton.json")
    grep -q -- "--quick" perf/bench_triton.py && TRITON_ARGS+=(--quick)
    step bench_triton 40 "$PY" perf/bench_triton.py "${TRITON_ARGS[@]}"
  else
    step bench_triton 40 bash -c "$PY perf/bench_triton.py > '$OUT/bench_triton.txt'"
  fi
else
  skip bench_triton "perf/bench_triton.py not present"
fi

# 5. serving benchmark against our server on tiny-scout (random weights), when `serve` exists
if "$PY" -m amd_llama4.cli serve --help > "$OUT/serve_help.txt" 2>&1; then
  SERVE_ARGS=(--model tiny-scout)
  grep -q -- "--host" "$OUT/serve_help.txt" && SERVE_ARGS+=(--host 127.0.0.1)
  grep -q -- "--port" "$OUT/serve_help.txt" && SERVE_ARGS+=(--port "$PORT")
  grep -q -- "--no-ray" "$OUT/serve_help.txt" && SERVE_ARGS+=(--no-ray)  # one process: starts in seconds
  setsid "$PY" -m amd_llama4.cli serve "${SERVE_ARGS[@]}" > "$OUT/serve.log" 2>&1 &
  SERVER_PID=$!
  step serve_ready 60 "$PY" - "$PORT" <<'EOF'
import sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/v1/models"
for _ in range(240):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                print("ready:", r.read(300).decode(errors="replace")); sys.exit(0)
    except Exception as e:  # noqa: BLE001
        err = e
    time.sleep(0.25)
sys.exit(f"server not ready: {err}")
EOF
  if grep -q "^serve_ready	ok" "$STEPS"; then
    step bench_serving 75 "$PY" perf/bench_serving.py --base-url "http://127.0.0.1:$PORT" --model tiny-scout \
      --num-prompts 32 --input-len 32 --max-tokens 32 --concurrency 1,4,16 --ignore-eos \
      --request-timeout 20 --max-duration 20 --out "$OUT/bench_serving.json"
  else
    skip bench_serving "server did not become ready (see serve.log)"
  fi
  kill -TERM -- "-$SERVER_PID" 2>/dev/null || kill -TERM "$SERVER_PID" 2>/dev/null
  sleep 1; kill -KILL -- "-$SERVER_PID" 2>/dev/null || true
else
  skip serve_ready "amd-llama4 serve not available"
  skip bench_serving "amd-llama4 serve not available"
fi

# 6. profiler smoke: rocprofv3 (ROCm) or torch.profiler (CUDA) on a short benchmark, then our parser
step profile 45 "$PY" -m amd_llama4.cli profile --out "$OUT/profile" -- "$PY" perf/bench_kernels.py \
  --ops rms_norm,fused_moe --models scout --tp 8 --tokens 16 --iters 3 --out "$OUT/profile_bench.json"
step profile_summary 15 bash -c "$PY -m amd_llama4.cli profile summarize '$OUT/profile' --json > '$OUT/profile_summary.json'"

# summary.json: every step with status, exit code and seconds
"$PY" - "$STEPS" "$OUT/summary.json" "$START" <<'EOF'
import json, sys, time
steps = []
for line in open(sys.argv[1]):
    name, status, rc, secs, note = line.rstrip("\n").split("\t")
    steps.append({"step": name, "status": status, "rc": int(rc), "seconds": int(secs), "log_or_reason": note})
ran = [s for s in steps if s["status"] != "skipped"]
doc = {"ok": all(s["status"] == "ok" for s in ran), "total_seconds": int(time.time()) - int(sys.argv[3]),
       "failed": [s["step"] for s in ran if s["status"] != "ok"], "steps": steps}
json.dump(doc, open(sys.argv[2], "w"), indent=1)
print(json.dumps({k: doc[k] for k in ("ok", "total_seconds", "failed")}))
sys.exit(0 if doc["ok"] else 1)
EOF
