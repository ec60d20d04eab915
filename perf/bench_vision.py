"""Vision encoder throughput and the time to first token of a one-image chat against text-only.

On the tiny preset (tiny tower: 56 px tiles, 4 tokens per tile), CPU, fp32 unless --dtype:
- encoder: images/s of `image_features` (vision tower + projector) for --batch images of --size px
  (preprocessed once; each image is --tiles tiles, thumbnail included), median of --repeats;
- TTFT: LLM.chat with one image part vs the same chat without it, one generated token, alternating,
  medians; the ratio image / text is printed (the image's cost: preprocessing, encoder, its tokens).
Prints one JSON object (and writes it to --json)."""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def _median_s(fn, repeats: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _image(size: int):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8).numpy()
    return Image.fromarray(pixels, "RGB")


def bench_encoder(model_name: str, size: int, batch: int, repeats: int) -> dict:
    from amd_llama4.model.loader import load_model
    from amd_llama4.multimodal import ImageProcessorConfig, Llama4ImageProcessor

    model = load_model(model_name, device="cpu", progress=False)
    if not hasattr(model, "image_features"):
        raise SystemExit(f"bench_vision: {model_name} has no vision tower")
    cfg = model.config.vision_config
    proc = Llama4ImageProcessor(ImageProcessorConfig(tile_size=cfg.image_size))
    processed = proc.preprocess([_image(size)] * batch)
    pixels = processed.pixel_values  # [tiles, 3, S, S]
    with torch.inference_mode():
        t = _median_s(lambda: model.image_features(pixels), repeats)
    t_pre = _median_s(lambda: proc.preprocess([_image(size)] * batch), repeats)
    return {"images": batch, "tiles": int(pixels.shape[0]), "encoder_s": t, "encoder_images_per_s": batch / t,
            "preprocess_s": t_pre, "preprocess_images_per_s": batch / t_pre}


def bench_ttft(model_name: str, size: int, repeats: int) -> dict:
    from amd_llama4 import SamplingParams
    from amd_llama4.engine.llm import LLM

    llm = LLM(model_name, device="cpu", max_model_len=1024, enable_prefix_caching=False)
    img = _image(size)
    text = [{"role": "user", "content": "Describe this picture in one word."}]
    with_image = [{"role": "user", "content": [{"type": "image", "image": img},
                                               {"type": "text", "text": "Describe this picture in one word."}]}]
    sp = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    llm.chat(text, sp), llm.chat(with_image, sp)  # warm-up
    t_text, t_img = [], []
    for _ in range(repeats):  # alternate so drift on a noisy machine hits both sides
        for conv, out in ((text, t_text), (with_image, t_img)):
            t0 = time.perf_counter()
            r = llm.chat(conv, sp)[0]
            out.append(time.perf_counter() - t0)
    n_img, n_text = (len(llm.chat(c, sp)[0].prompt_token_ids) for c in (with_image, text))
    mt, mi = statistics.median(t_text), statistics.median(t_img)
    del r
    return {"ttft_text_s": mt, "ttft_image_s": mi, "ratio_image_over_text": mi / mt,
            "prompt_tokens_text": n_text, "prompt_tokens_image": n_img}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="tiny-scout")
    ap.add_argument("--size", type=int, default=200, help="image side, px (200 on the tiny tower: 4x4 tiles + thumbnail)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-ttft", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    res = {"model": args.model, "size": args.size, "threads": torch.get_num_threads(),
           "encoder": bench_encoder(args.model, args.size, args.batch, args.repeats)}
    if not args.skip_ttft:
        res["ttft"] = bench_ttft(args.model, args.size, args.repeats)
    print(json.dumps(res, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
