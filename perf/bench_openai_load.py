#!/usr/bin/env python
"""One load run of an established OpenAI-endpoint benchmark tool (NVIDIA's aiperf, or vLLM's guidellm)
against `amd-llama4 serve`, and a short summary of its report: requests/s, output tokens/s, TTFT and
ITL percentiles, errors.

Both tools pull their own dependency tree (guidellm: a CUDA torch), so they live in their own venv and
the script takes the tool's executable:

    python3 -m venv /tmp/loadvenv && /tmp/loadvenv/bin/pip install aiperf   # or guidellm
    python perf/bench_openai_load.py --tool /tmp/loadvenv/bin/aiperf \
        [--url http://HOST:PORT | --model tiny-scout] [--concurrency 4] [--duration 40] \
        [--input-tokens 64] [--output-tokens 32] [--endpoint chat|completions] [--out DIR]

Without --url it starts `amd-llama4 serve --no-ray --model MODEL` on a free 127.0.0.1 port and stops it
afterwards. Prompts are the tool's synthetic text, counted with the model's tokenizer (--tokenizer, by
default the packaged tiny tokenizer, loaded from disk: no hub access); every request asks for exactly
--output-tokens (ignore_eos), and aiperf counts tokens from the server's usage, not by re-tokenising
the text. The tool's own report stays in --out; the summary is printed and written to
OUT/summary.json. Traffic goes only to the given URL; the run is bounded by --duration.

guidellm (0.8) sends stream_options.continuous_usage_stats (vLLM's per-chunk usage); a server that
rejects the field answers every request with 400, which this script reports as errors.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def start_server(model: str, log_path: Path, timeout_s: float = 180.0) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "amd_llama4.cli", "serve", "--no-ray", "--model", model, "--host", "127.0.0.1",
           "--port", "0"]
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited ({proc.returncode}):\n{log_path.read_text(errors='replace')[-3000:]}")
        m = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", log_path.read_text(errors="replace"))
        if m:
            try:
                with urllib.request.urlopen(m.group(1) + "/health", timeout=2) as r:
                    if r.status == 200:
                        return proc, m.group(1)
            except OSError:
                pass
        time.sleep(0.3)
    stop_server(proc)
    raise SystemExit(f"server not ready after {timeout_s} s; log: {log_path}")


def stop_server(proc: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait_s)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


def served_model(url: str) -> str:
    with urllib.request.urlopen(url + "/v1/models", timeout=10) as r:
        return json.load(r)["data"][0]["id"]


def tool_kind(tool: str) -> str:
    name = Path(tool).name
    for kind in ("aiperf", "guidellm"):
        if name.startswith(kind):
            return kind
    raise SystemExit(f"--tool {tool}: expected an aiperf or guidellm executable")


def aiperf_cmd(a, url: str, model: str, out: Path) -> list[str]:
    return [a.tool, "profile", "--model", model, "--url", url, "--endpoint-type", a.endpoint, "--streaming",
            "--tokenizer", a.tokenizer, "--concurrency", str(a.concurrency),
            "--benchmark-duration", str(a.duration),
            "--prompt-input-tokens-mean", str(a.input_tokens), "--prompt-input-tokens-stddev", "0",
            "--prompt-output-tokens-mean", str(a.output_tokens), "--prompt-output-tokens-stddev", "0",
            "--extra-inputs", "ignore_eos:true", "--use-server-token-count", "--random-seed", "1",
            "--output-artifact-dir", str(out), "--no-auto-plot"]


def guidellm_cmd(a, url: str, model: str, out: Path) -> list[str]:
    return [a.tool, "run", "--backend", f"kind=openai_http,target={url},model={model}",
            "--profile", f"kind=concurrent,streams={a.concurrency}",
            "--constraint", f"kind=max_duration,seconds={a.duration}",
            "--tokenizer", f"kind=hf_auto,model={a.tokenizer}",
            "--data", f"kind=synthetic_text,prompt_tokens={a.input_tokens},output_tokens={a.output_tokens}",
            "--output", f"kind=json,path={out / 'guidellm.json'}", "--output", "kind=console",
            "--disable-progress"]


def summarize_aiperf(out: Path) -> dict:
    d = json.loads((out / "profile_export_aiperf.json").read_text())
    pct = lambda m: {k: round(d[m][k], 2) for k in ("p50", "p90", "p99")}  # noqa: E731
    return {"tool": "aiperf " + str(d.get("aiperf_version")),
            "requests": int(d["request_count"]["avg"]),
            "errors": sum(int(e.get("count", 1)) for e in d.get("error_summary") or []),
            "duration_s": round(d["benchmark_duration"]["avg"], 1),
            "requests_per_s": round(d["request_throughput"]["avg"], 2),
            "output_tokens_per_s": round(d["output_token_throughput"]["avg"], 1),
            "completion_tokens_per_request": d.get("usage_completion_tokens", {}).get("avg"),
            "ttft_ms": pct("time_to_first_token"), "itl_ms": pct("inter_token_latency")}


def summarize_guidellm(out: Path) -> dict:
    d = json.loads((out / "guidellm.json").read_text())
    m = d["benchmarks"][0]["metrics"]

    def pct(name: str) -> dict:
        s = m[name]["successful"]
        p = s.get("percentiles") or {}
        return {k: round(p.get(k, 0.0), 2) for k in ("p50", "p90", "p99")} if isinstance(p, dict) else {}

    totals = m["request_totals"]
    return {"tool": "guidellm", "requests": totals["total"], "errors": totals["errored"],
            "duration_s": round(d["benchmarks"][0]["duration"], 1),
            "requests_per_s": round(m["requests_per_second"]["successful"]["mean"], 2),
            "output_tokens_per_s": round(m["output_tokens_per_second"]["successful"]["mean"], 1),
            "ttft_ms": pct("time_to_first_token_ms"), "itl_ms": pct("inter_token_latency_ms")}


def main() -> None:
    from amd_llama4.engine.tokenizer import tiny_tokenizer_dir

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tool", required=True, help="path of the aiperf or guidellm executable")
    p.add_argument("--url", help="a running server (default: start one with --model)")
    p.add_argument("--model", default="tiny-scout", help="model to serve when --url is not given")
    p.add_argument("--tokenizer", default=str(tiny_tokenizer_dir()), help="HF tokenizer folder for the prompts")
    p.add_argument("--endpoint", choices=("chat", "completions"), default="chat")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--duration", type=int, default=40, help="seconds of load")
    p.add_argument("--input-tokens", type=int, default=64)
    p.add_argument("--output-tokens", type=int, default=32)
    p.add_argument("--out", default="bench_openai_load", help="folder for the tool's report and summary.json")
    a = p.parse_args()
    kind = tool_kind(a.tool)
    if kind == "guidellm" and a.endpoint != "chat":
        raise SystemExit("--endpoint: this script drives guidellm's default (chat) route only")
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    proc = None
    url = a.url
    if url is None:
        proc, url = start_server(a.model, out / "server.log")
    try:
        model = served_model(url)
        cmd = (aiperf_cmd if kind == "aiperf" else guidellm_cmd)(a, url, model, out)
        env = dict(os.environ)
        # aiperf treats any name as a hub repo id in offline mode; a local folder needs no network anyway
        if kind == "aiperf":
            env.pop("HF_HUB_OFFLINE", None)
        else:
            env.setdefault("HF_HUB_OFFLINE", "1")
        print("+ " + " ".join(cmd), flush=True)
        with open(out / f"{kind}.log", "wb") as log:
            rc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                timeout=a.duration + 300).returncode
        if rc != 0:
            raise SystemExit(f"{kind} exited {rc}; its output: {out / f'{kind}.log'}")
        summary = (summarize_aiperf if kind == "aiperf" else summarize_guidellm)(out)
    finally:
        if proc is not None:
            stop_server(proc)
    summary.update(url=url, model=model, endpoint=a.endpoint, concurrency=a.concurrency,
                   input_tokens=a.input_tokens, output_tokens=a.output_tokens)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    if summary["errors"]:
        raise SystemExit(f"{summary['errors']} of {summary['requests']} requests failed (see {out})")


if __name__ == "__main__":
    main()
