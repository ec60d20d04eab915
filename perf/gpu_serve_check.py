"""Serve a random Scout-shaped checkpoint with `amd-llama4 serve` and check its greedy tokens.

  1. write a checkpoint folder on the fly: Scout's hidden sizes (5120, 40/8 heads, 16 experts of
     8192), `--layers` layers (layer 0 chunked RoPE, the last one global NoPE), `--vocab` rows,
     random weights in `--dtype`, transformers' text layout, the built-in tiny tokenizer.
     lm_head rows are zero except for the tokenizer ids whose text is readable and unique, so a
     greedy token's text names its id (the GEMM and the sampler still see the full vocabulary);
  2. `amd-llama4 serve --no-ray` on `--device`, HIP/CUDA graphs on, then with --enforce-eager;
     each queried with the official `openai` client: completions (JSON and streamed, with
     logprobs) and one chat completion (JSON and streamed);
  3. the same prompts through `LLM(..., device="cpu", dtype="float32")` with top-5 logprobs;
  4. compare: the served tokens must equal the fp32 ones up to the first difference, and there
     the fp32 run must rank the served token within `--tol` nats of its own pick (a near tie that
     bf16 rounding may flip); after a difference the sequences are not comparable.
Writes serve_check.json and serve_check.md to --out; exit 1 when a check failed.
  usage: perf/gpu_serve_check.py --out DIR [--shape scout|tiny] [--layers 2] [--device auto]
  (`--shape tiny`: tiny-scout sizes, seconds on a CPU; what tests/perf/test_gpu_serve_check.py runs)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script from a source checkout, installed or not
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

from amd_llama4.config import Llama4Config, preset  # noqa: E402

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]
CHAT = [{"role": "user", "content": "Name three colors."}]
TOKENIZER_VOCAB = 512  # the packaged tiny tokenizer's ids
_SHARD_BYTES = 4 << 30


def make_config(shape: str, layers: int, vocab: int | None) -> Llama4Config:
    """Scout (or tiny-scout) sizes with `layers` layers: the last one global NoPE, the others
    chunked RoPE (1 = uses RoPE: transformers' naming); tiny tokenizer's special ids."""
    if layers < 2:
        raise ValueError(f"--layers {layers}: need >= 2 (a chunked RoPE layer and a global NoPE layer)")
    base = "scout" if shape == "scout" else "tiny-scout"
    over = dict(num_hidden_layers=layers, no_rope_layers=[1] * (layers - 1) + [0], bos_token_id=1,
                eos_token_id=[2, 3, 4], pad_token_id=0, torch_dtype="bfloat16")
    if vocab is not None:
        if vocab < TOKENIZER_VOCAB:
            raise ValueError(f"--vocab {vocab}: must be >= {TOKENIZER_VOCAB} (the tokenizer's ids)")
        over["vocab_size"] = vocab
    return preset(base, **over)


def write_checkpoint(folder: str, cfg: Llama4Config, dtype: torch.dtype, device: str, seed: int = 0) -> dict:
    """Random weights, tensor by tensor (generated on `device`, saved from the host), in shards of
    at most 4 GiB with a model.safetensors.index.json, like a downloaded checkpoint."""
    from safetensors.torch import save_file

    from amd_llama4.engine.tokenizer import tiny_tokenizer_dir
    from amd_llama4.model.loader import build_model

    t0 = time.time()
    keep = _distinct_ids()
    os.makedirs(folder, exist_ok=True)
    names = {n: p.shape for n, p in build_model(cfg, dtype, "meta").state_dict().items()}
    gen = torch.Generator(device=device).manual_seed(seed)
    weight_map, shard, shard_bytes, total = {}, {}, 0, 0

    def flush() -> None:
        nonlocal shard, shard_bytes
        if shard:
            file = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
            save_file(shard, os.path.join(folder, file), metadata={"format": "pt"})
            weight_map.update({n: file for n in shard})
            shard, shard_bytes = {}, 0

    for name, shape in names.items():
        t = torch.randn(shape, generator=gen, device=device, dtype=torch.float32)
        t = 1 + 0.1 * t if "norm" in name else 0.02 * t  # std 0.02: transformers' initializer_range
        if name == "lm_head.weight":  # greedy picks stay among distinct, readable tokens (module doc)
            mask = torch.ones(t.shape[0], dtype=torch.bool, device=t.device)
            mask[keep.to(t.device)] = False
            t[mask] = 0
        t = t.to(dtype).cpu()
        if shard_bytes + t.nbytes > _SHARD_BYTES:
            flush()
        shard[name], shard_bytes, total = t, shard_bytes + t.nbytes, total + t.nbytes
    flush()
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(dict(cfg.to_hf_dict(), torch_dtype=str(dtype).removeprefix("torch.")), f, indent=1)
    for file in os.listdir(tiny_tokenizer_dir()):
        shutil.copy(os.path.join(tiny_tokenizer_dir(), file), folder)
    return {"bytes": total, "tensors": len(names), "seconds": round(time.time() - t0, 1)}


def _distinct_ids() -> torch.Tensor:
    """Tokenizer ids whose one-token text is non-empty, whole UTF-8 and unique: the served text of a
    token then names its id, so comparing texts compares ids."""
    from amd_llama4.engine.tokenizer import Tokenizer

    tok, seen = Tokenizer.from_pretrained("tiny-scout"), {}
    for i in range(TOKENIZER_VOCAB):
        text = tok.decode([i])
        if text.strip() and "\ufffd" not in text:
            seen.setdefault(text, []).append(i)
    return torch.tensor(sorted(ids[0] for ids in seen.values() if len(ids) == 1))


# ---- the server ----

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_command(folder: str, port: int, a: argparse.Namespace, eager: bool) -> tuple[list[str], str]:
    """`amd-llama4 serve` when it has the flags we need, else run_server() with the same engine args."""
    engine = {"model": folder, "device": a.device, "dtype": a.dtype, "enforce_eager": eager,
              "max_model_len": a.max_model_len, "max_num_seqs": a.max_num_seqs}
    cli = [sys.executable, "-m", "amd_llama4.cli", "serve"]
    helptext = subprocess.run(cli + ["--help"], cwd=ROOT, capture_output=True, text=True).stdout
    if "--device" in helptext and "--enforce-eager" in helptext:
        cmd = cli + ["--model", folder, "--no-ray", "--host", "127.0.0.1", "--port", str(port),
                     "--device", a.device, "--dtype", a.dtype, "--max-model-len", str(a.max_model_len),
                     "--max-num-seqs", str(a.max_num_seqs)]
        return cmd + (["--enforce-eager"] if eager else []), "amd-llama4 serve"
    return [sys.executable, os.path.abspath(__file__), "--_serve", json.dumps([engine, port])], "run_server()"


@contextlib.contextmanager
def server(folder: str, a: argparse.Namespace, eager: bool, log_path: str):
    port = _free_port()
    cmd, how = _serve_command(folder, port, a, eager)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        t0, deadline = time.time(), time.time() + a.ready_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} before ready; see {log_path}")
            try:
                with urllib.request.urlopen(f"{base}/v1/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"server not ready after {a.ready_timeout} s; see {log_path}")
            time.sleep(0.5)
        yield base, {"ready_seconds": round(time.time() - t0, 1), "launched_by": how}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # our own process group (start_new_session)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def query(base: str, model: str, max_tokens: int) -> dict:
    """Greedy completions (JSON, then streamed) per prompt, and one chat completion both ways."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{base}/v1", api_key="none", timeout=120, max_retries=0)
    greedy = dict(model=model, max_tokens=max_tokens, temperature=0.0, extra_body={"ignore_eos": True})
    out: dict = {"prompts": [], "problems": []}
    for prompt in PROMPTS:
        t0 = time.time()
        r = client.completions.create(prompt=prompt, logprobs=1, **greedy)
        seconds = time.time() - t0
        t0, first, streamed = time.time(), None, []
        for chunk in client.completions.create(prompt=prompt, stream=True, **greedy):
            if chunk.choices and chunk.choices[0].text:
                first = first if first is not None else time.time() - t0
                streamed.append(chunk.choices[0].text)
        c = r.choices[0]
        out["prompts"].append({"prompt": prompt, "text": c.text, "tokens": c.logprobs.tokens,
                               "completion_tokens": r.usage.completion_tokens, "seconds": round(seconds, 3),
                               "tokens_per_s": round(r.usage.completion_tokens / seconds, 1),
                               "ttft_s": None if first is None else round(first, 3)})
        if "".join(streamed) != c.text:
            out["problems"].append(f"{prompt!r}: streamed text differs from the JSON response")
        if r.usage.completion_tokens != max_tokens:
            out["problems"].append(f"{prompt!r}: {r.usage.completion_tokens} tokens, asked {max_tokens}")
    chat = client.chat.completions.create(messages=CHAT, **greedy)
    parts = [ch.choices[0].delta.content or "" for ch in
             client.chat.completions.create(messages=CHAT, stream=True, **greedy) if ch.choices]
    out["chat"] = chat.choices[0].message.content
    if "".join(parts) != out["chat"]:
        out["problems"].append("chat: streamed text differs from the JSON response")
    return out


# ---- the fp32 CPU reference and the comparison ----

def cpu_reference(folder: str, max_model_len: int, max_tokens: int) -> list[dict]:
    from amd_llama4.engine.llm import LLM
    from amd_llama4.engine.sampling_params import SamplingParams
    from amd_llama4.serve.generation import TokenText

    llm = LLM(model=folder, device="cpu", dtype="float32", max_model_len=max_model_len, max_num_seqs=4)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, logprobs=5)
    text_of = TokenText(llm.tokenizer)
    ref = []
    for out in llm.generate(PROMPTS, params):
        c = out.outputs[0]
        ref.append({"text": c.text, "tokens": [text_of(s) for s, _ in c.logprobs],
                    "top": [{text_of(x): x.logprob for x in alts} | {text_of(s): s.logprob}
                            for s, alts in c.logprobs]})
    llm.shutdown()
    return ref


def compare(ref: list[dict], got: list[dict], tol: float) -> list[dict]:
    """Per prompt: tokens equal up to the first difference; there, the reference must rank the
    served token within `tol` nats of its own greedy pick."""
    rows = []
    for r, g in zip(ref, got, strict=True):
        n = min(len(r["tokens"]), len(g["tokens"]))
        i = next((k for k in range(n) if r["tokens"][k] != g["tokens"][k]), n)
        row = {"matched": i, "of": len(r["tokens"]), "ok": i == len(r["tokens"]) == len(g["tokens"])}
        if i < n:
            top = r["top"][i]
            gap = top[r["tokens"][i]] - top[g["tokens"][i]] if g["tokens"][i] in top else None
            row.update(gap=gap, ok=gap is not None and gap <= tol,
                       why=f"token {i}: served {g['tokens'][i]!r}, fp32 {r['tokens'][i]!r} "
                           + (f"(fp32 logprob gap {gap:.3f})" if gap is not None else "(not in fp32 top-5)"))
        rows.append(row)
    return rows


def markdown(res: dict) -> str:
    lines = [f"### serve check: {res['shape']} shape, {res['layers']} layers, vocab {res['vocab']}, "
             f"{res['dtype']} on {res['device']} — {'PASS' if res['ok'] else 'FAIL'}", ""]
    if "checkpoint" in res:
        ck = res["checkpoint"]
        lines.append(f"checkpoint: {ck['bytes'] / 2**30:.2f} GiB, {ck['tensors']} tensors, written in {ck['seconds']} s")
    for mode, m in res.get("modes", {}).items():
        if "error" in m:
            lines.append(f"- **{mode}**: error: {m['error']}")
            continue
        tps = [p["tokens_per_s"] for p in m["prompts"]]
        ttft = [p["ttft_s"] for p in m["prompts"] if p["ttft_s"] is not None]
        cmp_ = ", ".join(f"{c['matched']}/{c['of']}" + ("" if c["ok"] else f" FAIL ({c.get('why', 'length')})")
                         for c in m.get("compare", [])) or "(not compared yet)"
        lines.append(f"- **{mode}** ({m['launched_by']}): ready in {m['ready_seconds']} s; "
                     f"{min(tps)}-{max(tps)} tok/s per request; TTFT {min(ttft or [0])}-{max(ttft or [0])} s; "
                     f"tokens matching fp32 CPU: {cmp_}; problems: {m['problems'] or 'none'}")
    if "cpu_reference" in res:
        lines.append(f"- fp32 CPU reference (LLM API): {res['cpu_reference']['seconds']} s")
    if res.get("graphs_equal_eager") is not None:
        lines.append(f"- graphs and eager give the same tokens: {res['graphs_equal_eager']}")
    if "error" in res:
        lines.append(f"- error: {res['error']}")
    return "\n".join(lines) + "\n"


def _save(a: argparse.Namespace, res: dict) -> None:
    """After every phase: a step cut by its timeout still leaves what it found."""
    with open(os.path.join(a.out, "serve_check.json"), "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.join(a.out, "serve_check.md"), "w") as f:
        f.write(markdown(res))


def run(a: argparse.Namespace) -> dict:
    cfg = make_config(a.shape, a.layers, a.vocab)
    res: dict = {"shape": a.shape, "layers": a.layers, "vocab": cfg.vocab_size, "dtype": a.dtype,
                 "device": a.device, "max_tokens": a.max_tokens, "tol": a.tol, "modes": {}, "ok": False}
    folder = os.path.join(a.workdir, f"{a.shape}-{a.layers}l-{cfg.vocab_size}v-{a.dtype}")
    gen_device = "cuda" if a.device != "cpu" and torch.cuda.is_available() else "cpu"
    ref_proc = None
    try:
        res["checkpoint"] = write_checkpoint(folder, cfg, getattr(torch, a.dtype), gen_device)
        _save(a, res)
        # the fp32 CPU run goes on while the servers use the GPU
        ref_file, t0 = os.path.join(a.out, "cpu_reference.json"), time.time()
        with open(os.path.join(a.out, "cpu_reference.log"), "w") as log:
            ref_proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--_reference",
                                         json.dumps([folder, ref_file, a.max_model_len, a.max_tokens])],
                                        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        for mode in ("graphs", "eager") if not a.skip_eager else ("graphs",):
            try:
                with server(folder, a, mode == "eager", os.path.join(a.out, f"serve_{mode}.log")) as (base, info):
                    res["modes"][mode] = dict(info, **query(base, folder, a.max_tokens))
            except Exception as e:  # noqa: BLE001 - record and go on to the next mode
                res["modes"][mode] = {"error": f"{type(e).__name__}: {e}"}
            _save(a, res)
        if ref_proc.wait() != 0:
            raise RuntimeError(f"the fp32 CPU reference failed (rc {ref_proc.returncode}); see cpu_reference.log")
        with open(ref_file) as f:
            ref = json.load(f)
        res["cpu_reference"] = {"seconds": round(time.time() - t0, 1), "texts": [r["text"] for r in ref]}
        for m in res["modes"].values():
            if "prompts" in m:
                m["compare"] = compare(ref, m["prompts"], a.tol)
        runs = [m for m in res["modes"].values() if "prompts" in m]
        if len(runs) == 2:
            res["graphs_equal_eager"] = [p["tokens"] for p in runs[0]["prompts"]] == \
                                        [p["tokens"] for p in runs[1]["prompts"]]
        res["ok"] = bool(res["modes"]) and all(
            "compare" in m and not m["problems"] and all(c["ok"] for c in m["compare"]) for m in res["modes"].values())
    except Exception as e:  # noqa: BLE001 - the report must always be written
        res["error"] = f"{type(e).__name__}: {e}"
    finally:
        if ref_proc is not None and ref_proc.poll() is None:
            ref_proc.kill()  # our own child
            ref_proc.wait()
        if not a.keep:
            shutil.rmtree(folder, ignore_errors=True)
    _save(a, res)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="folder for serve_check.json/.md and the server logs (required)")
    p.add_argument("--workdir", default=None, help="where the checkpoint is written (default: --out)")
    p.add_argument("--shape", default="scout", choices=["scout", "tiny"])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=None, help="default: the shape's (202048 for scout)")
    p.add_argument("--device", default="auto", help="the server's --device (auto = the GPU if any)")
    p.add_argument("--dtype", default="bfloat16", help="checkpoint and server dtype")
    p.add_argument("--tol", type=float, default=None,
                   help="nats at a first difference (default 0.3 for bf16/fp16, 1e-3 for fp32)")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--max-num-seqs", type=int, default=8)
    p.add_argument("--ready-timeout", type=float, default=180.0)
    p.add_argument("--skip-eager", action="store_true", help="one server run (graphs, the default) only")
    p.add_argument("--keep", action="store_true", help="keep the checkpoint folder")
    p.add_argument("--_serve", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_reference", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._reference is not None:  # the fp32 CPU run, in its own process (see run)
        folder, ref_file, max_model_len, max_tokens = json.loads(a._reference)
        ref = cpu_reference(folder, max_model_len, max_tokens)
        with open(ref_file, "w") as f:
            json.dump(ref, f)
        return 0
    if a._serve is not None:  # fallback server process (see _serve_command)
        from amd_llama4.serve.local import run_server

        engine, port = json.loads(a._serve)
        run_server(engine, host="127.0.0.1", port=port, use_ray=False)
        return 0
    if not a.out:
        p.error("--out is required")
    os.makedirs(a.out, exist_ok=True)
    a.workdir = a.workdir or a.out
    a.tol = a.tol if a.tol is not None else (1e-3 if a.dtype == "float32" else 0.3)
    res = run(a)
    print(markdown(res))
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
