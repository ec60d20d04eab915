#!/usr/bin/env python
"""Join kernel results from two platforms into one parity report (markdown + PNG charts).

    python perf/parity.py mi300x.json h200.json --out-dir parity/ \
        [--serving mi300x_serving.json h200_serving.json] [--label-a MI300X --label-b H200]

Inputs are perf/bench_kernels.py JSON files (optionally perf/bench_serving.py JSON for the
end-to-end section). Per op and shape the best backend on each platform is compared:
speedup = latency_B / latency_A (> 1: A is ahead), each side's % of its own roofline, and the
accuracy of the outputs (relative max error against the fp32 torch reference on each side,
and their difference). Writes parity.md, parity.json, parity_ratio.png, parity_roofline.png.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import defaultdict

PAR_BAND = 0.05  # within +-5 % counts as parity


def load(path: str) -> dict:
    with open(path) as f:
        doc = json.load(f)
    if "results" not in doc:
        raise ValueError(f"{path}: not a bench_kernels results file (no 'results')")
    return doc


def label_of(doc: dict, fallback: str) -> str:
    meta = doc.get("meta") or {}
    key = meta.get("spec_key")
    if key and key != "cpu":
        return key.upper()
    return meta.get("gpu_name") or (meta.get("platform") or fallback)


def best_by_key(doc: dict) -> dict[str, dict]:
    """key -> the fastest ok row for that op+shape (over all backends)."""
    best: dict[str, dict] = {}
    for r in doc["results"]:
        if r.get("status") != "ok" or r.get("median_ms") is None:
            continue
        cur = best.get(r["key"])
        if cur is None or r["median_ms"] < cur["median_ms"]:
            best[r["key"]] = r
    return best


def _verdict(speedup: float) -> str:
    if speedup > 1 + PAR_BAND:
        return "ahead"
    if speedup < 1 - PAR_BAND:
        return "behind"
    return "par"


def join(a: dict, b: dict) -> list[dict]:
    ba, bb = best_by_key(a), best_by_key(b)
    rows = []
    for key in sorted(set(ba) & set(bb), key=lambda k: (ba[k]["op"], k)):
        ra, rb = ba[key], bb[key]
        speed = rb["median_ms"] / ra["median_ms"] if ra["median_ms"] > 0 else float("nan")
        ea, eb = ra.get("err_vs_ref"), rb.get("err_vs_ref")
        rows.append(dict(op=ra["op"], key=key, model=ra.get("model"), tp=ra.get("tp"), tokens=ra.get("tokens"),
                         shape=ra.get("shape"), a_backend=ra["backend"], b_backend=rb["backend"],
                         a_ms=ra["median_ms"], b_ms=rb["median_ms"], speedup_a=speed, verdict=_verdict(speed),
                         a_pct_roof=ra.get("pct_of_roofline"), b_pct_roof=rb.get("pct_of_roofline"),
                         a_err=ea, b_err=eb, err_delta=(ea - eb) if ea is not None and eb is not None else None,
                         a_tflops=ra.get("tflops"), b_tflops=rb.get("tflops"), intensity=ra.get("intensity")))
    return rows


def per_op_summary(rows: list[dict]) -> list[dict]:
    by_op = defaultdict(list)
    for r in rows:
        by_op[r["op"]].append(r)
    out = []
    for op, rs in by_op.items():
        sp = [r["speedup_a"] for r in rs if r["speedup_a"] and r["speedup_a"] > 0]
        geo = math.exp(sum(map(math.log, sp)) / len(sp)) if sp else float("nan")
        out.append(dict(op=op, shapes=len(rs), geomean_speedup_a=geo, verdict=_verdict(geo),
                        ahead=sum(r["verdict"] == "ahead" for r in rs), behind=sum(r["verdict"] == "behind" for r in rs),
                        worst_err_a=max((r["a_err"] for r in rs if r["a_err"] is not None), default=None),
                        worst_err_b=max((r["b_err"] for r in rs if r["b_err"] is not None), default=None)))
    return sorted(out, key=lambda s: s["op"])


SERVING_KEYS = (("output_throughput", "tok/s", True), ("request_throughput", "req/s", True),
                ("mean_ttft_ms", "ms", False), ("p99_ttft_ms", "ms", False), ("mean_itl_ms", "ms", False),
                ("p99_itl_ms", "ms", False))


def join_serving(sa: dict, sb: dict) -> list[dict]:
    """Per concurrency: each metric on both sides and the A-over-B advantage (>1: A ahead)."""
    def runs(doc):
        return {r.get("max_concurrency"): r for r in doc.get("results", [doc])}

    ra, rb = runs(sa), runs(sb)
    rows = []
    for c in sorted(set(ra) & set(rb), key=lambda v: (v is None, v or 0)):
        for name, unit, higher_better in SERVING_KEYS:
            va, vb = ra[c].get(name), rb[c].get(name)
            if va is None or vb is None:
                continue
            adv = (va / vb if higher_better else vb / va) if (vb if higher_better else va) else float("nan")
            rows.append(dict(concurrency=c, metric=name, unit=unit, a=va, b=vb, advantage_a=adv, verdict=_verdict(adv)))
    return rows


def _f(v, fmt="{:.3f}") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def _shape(r: dict) -> str:
    s = r.get("shape") or {}
    keep = [f"{k}={v}" for k, v in s.items() if k not in ("H", "D", "fmt", "granularity")]
    return f"{r.get('model')} tp{r.get('tp')} " + " ".join(keep)


def markdown(la: str, lb: str, a: dict, b: dict, rows: list[dict], summary: list[dict], serving: list[dict]) -> str:
    ma, mb = a.get("meta", {}), b.get("meta", {})
    lines = [f"# Parity report: {la} (A) vs {lb} (B)", "",
             f"- A: {ma.get('gpu_name') or ma.get('platform')} · torch {ma.get('torch')} · "
             f"hip {ma.get('hip')} · cuda {ma.get('cuda')} · git {ma.get('git_revision')}",
             f"- B: {mb.get('gpu_name') or mb.get('platform')} · torch {mb.get('torch')} · "
             f"hip {mb.get('hip')} · cuda {mb.get('cuda')} · git {mb.get('git_revision')}",
             f"- speedup = latency on {lb} / latency on {la} (> 1: {la} ahead); best backend per side; "
             f"par = within ±{int(PAR_BAND * 100)} %. % roof = share of each chip's own roofline.",
             "- err = relative max error vs the fp32 torch reference on the same chip; Δerr = err A − err B.", "",
             "## Per op (geometric mean over shapes)", "",
             "| op | shapes | speedup A | verdict | A ahead | A behind | worst err A | worst err B |",
             "|---|---:|---:|---|---:|---:|---:|---:|"]
    for s in summary:
        lines.append(f"| {s['op']} | {s['shapes']} | {_f(s['geomean_speedup_a'])} | {s['verdict']} | {s['ahead']} | "
                     f"{s['behind']} | {_f(s['worst_err_a'], '{:.1e}')} | {_f(s['worst_err_b'], '{:.1e}')} |")
    lines += ["", "## Per kernel and shape", "",
              f"| op | shape | {la} backend | {la} ms | {la} % roof | {lb} backend | {lb} ms | {lb} % roof | "
              f"speedup A | verdict | err A | err B | Δerr |",
              "|---|---|---|---:|---:|---|---:|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['op']} | {_shape(r)} | {r['a_backend']} | {_f(r['a_ms'], '{:.4f}')} | "
                     f"{_f(r['a_pct_roof'], '{:.1f}')} | {r['b_backend']} | {_f(r['b_ms'], '{:.4f}')} | "
                     f"{_f(r['b_pct_roof'], '{:.1f}')} | {_f(r['speedup_a'])} | {r['verdict']} | "
                     f"{_f(r['a_err'], '{:.1e}')} | {_f(r['b_err'], '{:.1e}')} | {_f(r['err_delta'], '{:+.1e}')} |")
    only_a = sorted(set(best_by_key(a)) - set(best_by_key(b)))
    only_b = sorted(set(best_by_key(b)) - set(best_by_key(a)))
    if only_a or only_b:
        lines += ["", f"Measured on one side only: {len(only_a)} on {la}, {len(only_b)} on {lb}."]
    lines += ["", "## End to end (serving)", ""]
    if serving:
        lines += ["| concurrency | metric | A | B | advantage A | verdict |", "|---:|---|---:|---:|---:|---|"]
        for s in serving:
            lines.append(f"| {s['concurrency']} | {s['metric']} ({s['unit']}) | {_f(s['a'], '{:.2f}')} | "
                         f"{_f(s['b'], '{:.2f}')} | {_f(s['advantage_a'])} | {s['verdict']} |")
    else:
        lines.append("No serving results given (pass `--serving A_serving.json B_serving.json`).")
    lines += ["", "Charts: `parity_ratio.png` (speedup per op), `parity_roofline.png` (each kernel on each "
              "chip's roofline).", ""]
    return "\n".join(lines)


def charts(out_dir: str, la: str, lb: str, a: dict, b: dict, rows: list[dict], summary: list[dict]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    # 1. speedup bars per op (log scale: 2x ahead and 2x behind look symmetric)
    fig, ax = plt.subplots(figsize=(8, 0.45 * max(len(summary), 2) + 1.5))
    names = [s["op"] for s in summary]
    vals = [s["geomean_speedup_a"] for s in summary]
    colors = ["tab:green" if v > 1 + PAR_BAND else "tab:red" if v < 1 - PAR_BAND else "tab:gray" for v in vals]
    ax.barh(names, vals, color=colors)
    ax.axvline(1.0, color="black", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel(f"speedup of {la} over {lb} (latency {lb} / {la}, geometric mean over shapes)")
    ax.set_title(f"Kernel parity: {la} vs {lb}")
    fig.tight_layout()
    p = os.path.join(out_dir, "parity_ratio.png")
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    # 2. roofline: each kernel as a point (intensity, achieved TFLOP/s), each chip with its own roof
    fig, ax = plt.subplots(figsize=(8, 6))
    for doc, label, color, marker in ((a, la, "tab:red", "o"), (b, lb, "tab:blue", "s")):
        pts = [(r["intensity"], r["tflops"]) for r in best_by_key(doc).values()
               if r.get("intensity") and r.get("tflops")]
        if pts:
            ax.scatter(*zip(*pts), s=14, color=color, marker=marker, alpha=0.7, label=f"{label} kernels")
        peaks = doc.get("peaks")
        if peaks:
            xs = [10 ** (i / 10) for i in range(-20, 51)]
            roof = [min(peaks["flops_bf16"], x * peaks["bytes_per_s"]) / 1e12 for x in xs]
            ax.plot(xs, roof, color=color, lw=1.5, label=f"{label} roof (bf16)")
            if peaks["flops_fp8"] != peaks["flops_bf16"]:
                ax.plot(xs, [min(peaks["flops_fp8"], x * peaks["bytes_per_s"]) / 1e12 for x in xs], color=color,
                        lw=1, ls="--", label=f"{label} roof (fp8)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("achieved TFLOP/s")
    ax.set_title("Roofline: every kernel and shape (best backend)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = os.path.join(out_dir, "parity_roofline.png")
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", help="bench_kernels JSON of platform A (e.g. MI300X)")
    p.add_argument("b", help="bench_kernels JSON of platform B (e.g. H200)")
    p.add_argument("--serving", nargs=2, metavar=("A_SERVING", "B_SERVING"), help="bench_serving JSON files")
    p.add_argument("--label-a")
    p.add_argument("--label-b")
    p.add_argument("--out-dir", default="parity")
    p.add_argument("--no-charts", action="store_true")
    args = p.parse_args(argv)
    a, b = load(args.a), load(args.b)
    la, lb = args.label_a or label_of(a, "A"), args.label_b or label_of(b, "B")
    if la == lb:
        la, lb = f"{la} (A)", f"{lb} (B)"
    rows = join(a, b)
    summary = per_op_summary(rows)
    serving = []
    if args.serving:
        with open(args.serving[0]) as fa, open(args.serving[1]) as fb:
            serving = join_serving(json.load(fa), json.load(fb))
    os.makedirs(args.out_dir, exist_ok=True)
    md = markdown(la, lb, a, b, rows, summary, serving)
    with open(os.path.join(args.out_dir, "parity.md"), "w") as f:
        f.write(md)
    with open(os.path.join(args.out_dir, "parity.json"), "w") as f:
        json.dump({"a": la, "b": lb, "per_op": summary, "per_kernel": rows, "serving": serving}, f, indent=1)
    written = [] if args.no_charts else charts(args.out_dir, la, lb, a, b, rows, summary)
    print(md)
    print(f"wrote {args.out_dir}/parity.md, parity.json" + "".join(f", {os.path.basename(w)}" for w in written),
          file=sys.stderr)
    if not rows:
        print("warning: the two files share no op+shape", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
