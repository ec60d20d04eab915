#!/usr/bin/env bash
# The one prepared check for a machine with a GPU (ROCm or CUDA): at most 8 minutes on one GPU.
#   build -> GPU-marked tests -> serve a random Scout-shaped checkpoint (perf/gpu_serve_check.py:
#   `amd-llama4 serve` with graphs on and --enforce-eager, the openai client, greedy tokens against
#   a CPU fp32 run) -> kernel benchmarks -> Triton benchmarks -> serving benchmark -> profiler smoke.
# Results land in $OUT (else ./perf-results): logs, JSON, summary.json and summary.md.
# Every step is time-boxed with `timeout` and cut to the time left; a failing step is recorded and
# the script goes on. Exit code: 0 when every step that ran passed, 1 otherwise.
#   usage: perf/gpu_check.sh   (env: OUT, PYTHON, GPU_CHECK_BUDGET_S=470, SERVE_PORT=8765,
#                               GPU_CHECK_SKIP=build,pytest_gpu,... to leave steps out,
#                               GPU_CHECK_DEVICE=cpu: a smoke run on a machine without a GPU, tiny
#                               shapes, no build / GPU tests / profiler)
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-./perf-results}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python3}"
BUDGET="${GPU_CHECK_BUDGET_S:-470}"   # 8 min = 480 s, minus a margin for the summary
PORT="${SERVE_PORT:-8765}"
DEVICE="${GPU_CHECK_DEVICE:-auto}"
if [[ "$DEVICE" == cpu ]]; then  # smoke mode: the same steps at tiny sizes
  GPU_CHECK_SKIP="${GPU_CHECK_SKIP:-},build,info_after_build,pytest_gpu,pytest_ops,bench_triton,bench_serving,profile,profile_summary"
fi
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

# 2. GPU tests: those marked gpu (real graphs), then the ones that run on the GPU when it exists
#    (Triton ops on cuda tensors, no-sync checks under set_sync_debug_mode, the sampler on cuda)
step pytest_gpu 60 "$PY" -m pytest -m gpu -q -p no:cacheprovider --junitxml="$OUT/pytest_gpu.xml" tests
step pytest_ops 90 "$PY" -m pytest -q -p no:cacheprovider --junitxml="$OUT/pytest_ops.xml" \
  tests/ops tests/test_no_sync_moe.py tests/test_no_sync_decode.py tests/engine/test_sampler.py

# 3. serve a random Scout-shaped checkpoint (5120 hidden, 16 experts, 2 layers, vocab 202048, bf16)
#    on the GPU, graphs on and off, openai client; greedy tokens against the CPU fp32 run
if [[ "$DEVICE" == cpu ]]; then
  SERVE_CHECK_ARGS=(--shape tiny --device cpu --dtype float32 --max-tokens 8)
else
  SERVE_CHECK_ARGS=(--shape scout --layers 2 --device "$DEVICE" --dtype bfloat16 --max-tokens 16)
fi
step serve_check 170 "$PY" perf/gpu_serve_check.py --out "$OUT/serve_check" "${SERVE_CHECK_ARGS[@]}"

# 4. kernel benchmarks at Scout/Maverick shapes (a representative subset that fits the budget)
if [[ "$DEVICE" == cpu ]]; then
  step bench_kernels 60 "$PY" perf/bench_kernels.py --ops rms_norm,moe_topk_sigmoid,fused_moe --models scout \
    --tp 8 --tokens 1 --iters 2 --max-seconds-per-case 0.2 --time-budget 10 --out "$OUT/bench_kernels.json" -v
else
  step bench_kernels 60 "$PY" perf/bench_kernels.py --tp 1,8 --tokens 1,16,256,4096 --iters 10 \
    --max-seconds-per-case 0.5 --time-budget 50 --out "$OUT/bench_kernels.json" -v
fi

# 5. Triton kernel benchmarks (another helper's script), when present
if [[ -f perf/bench_triton.py ]]; then
  if grep -q -- "--out" perf/bench_triton.py; then
    TRITON_ARGS=(--out "$OUT/bench_triton.json")
    grep -q -- "--quick" perf/bench_triton.py && TRITON_ARGS+=(--quick)
    step bench_triton 25 "$PY" perf/bench_triton.py "${TRITON_ARGS[@]}"
  else
    step bench_triton 25 bash -c "$PY perf/bench_triton.py > '$OUT/bench_triton.txt'"
  fi
else
  skip bench_triton "perf/bench_triton.py not present"
fi

# 6. serving benchmark against our server on tiny-scout (random weights), with the time left
if [[ ",${GPU_CHECK_SKIP:-}," == *",bench_serving,"* ]]; then
  skip bench_serving "GPU_CHECK_SKIP"
elif "$PY" -m amd_llama4.cli serve --help > "$OUT/serve_help.txt" 2>&1; then
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

# 7. profiler smoke: rocprofv3 (ROCm) or torch.profiler (CUDA) on a short benchmark, then our parser
step profile 45 "$PY" -m amd_llama4.cli profile --out "$OUT/profile" -- "$PY" perf/bench_kernels.py \
  --ops rms_norm,fused_moe --models scout --tp 8 --tokens 16 --iters 3 --out "$OUT/profile_bench.json"
step profile_summary 15 bash -c "$PY -m amd_llama4.cli profile summarize '$OUT/profile' --json > '$OUT/profile_summary.json'"

# summary.json (every step: status, exit code, seconds) and summary.md (the same, with the figures)
"$PY" - "$STEPS" "$OUT" "$START" "$DEVICE" <<'EOF'
import json, os, sys, time
steps_file, out, start, device = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
steps = []
for line in open(steps_file):
    name, status, rc, secs, note = line.rstrip("\n").split("\t")
    steps.append({"step": name, "status": status, "rc": int(rc), "seconds": int(secs), "log_or_reason": note})
ran = [s for s in steps if s["status"] != "skipped"]
doc = {"ok": all(s["status"] == "ok" for s in ran), "total_seconds": int(time.time()) - start,
       "failed": [s["step"] for s in ran if s["status"] != "ok"], "steps": steps}
json.dump(doc, open(os.path.join(out, "summary.json"), "w"), indent=1)
info = {}
try:
    info = json.load(open(os.path.join(out, "info.json")))
except Exception:  # noqa: BLE001 - the summary must always be written
    pass
md = [f"# gpu_check: {'PASS' if doc['ok'] else 'FAIL'} in {doc['total_seconds']} s",
      f"device {device}: {info.get('gpu_name') or 'no GPU'} ({info.get('gpu_arch')}), torch {info.get('torch')}, "
      f"hip {info.get('hip')}, cuda {info.get('cuda')}", "", "| step | status | s | log / reason |", "|---|---|---|---|"]
md += [f"| {s['step']} | {s['status']} (rc {s['rc']}) | {s['seconds']} | {s['log_or_reason']} |" for s in steps]
for title, path, tail in (("serve check", "serve_check/serve_check.md", None),
                          ("GPU tests", "pytest_gpu.log", 3), ("kernel benchmarks", "bench_kernels.log", 25)):
    path = os.path.join(out, path)
    if os.path.exists(path):
        text = open(path, errors="replace").read().splitlines()
        md += ["", f"## {title}", ""] + (text if tail is None else ["```"] + text[-tail:] + ["```"])
open(os.path.join(out, "summary.md"), "w").write("\n".join(md) + "\n")
print(json.dumps({k: doc[k] for k in ("ok", "total_seconds", "failed")}))
sys.exit(0 if doc["ok"] else 1)
EOF
