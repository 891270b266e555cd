"""The baseline sweeplab is measured against: a plain diffusers img2img loop that only saves each output PNG.

    python benchmarks/plain_img2img.py --out DIR [--seeds 1-12] [--strengths 0.5,0.8] [--size 256] [--steps 20]
        [--model DIR] [--device auto] [--dtype auto] [--batch-size 1]

It does the work `sweeplab -m` does for the same grid, and nothing else: the same pipeline class and
scheduler config (Euler from the model's own), the same init image (sweeplab's fireplace sketch, drawn at
512 px and resized as sweeplab resizes it), a fresh CPU generator per trial seeded with the trial's seed,
an empty negative prompt passed as None. At batch size 1 each output should equal sweeplab's `output.png`
byte for byte. With --batch-size N, trials of the same strength run N per call with one generator each.
Outputs are written as DIR/seed<seed>_strength<strength>.png.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def parse_seeds(text: str) -> list[int]:
    """'1-12' or '1,5,9' (or a mix: '1-4,9')."""
    seeds = []
    for part in text.split(","):
        first, dash, last = part.partition("-")
        seeds.extend(range(int(first), int(last) + 1) if dash else [int(first)])
    return seeds


def output_name(seed: int, strength: float) -> str:
    """The file a trial's output is saved as; sweep_runs matches sweeplab's outputs by the same name."""
    return f"seed{seed}_strength{strength:g}.png"


def init_image(size: int):
    """sweeplab's fireplace sketch as sweeplab draws it (512 px) and resizes it to the trial's size."""
    from PIL import Image

    from sweeplab.sketches import draw_sketch

    return draw_sketch("fireplace", 512, 512).resize((size, size), Image.Resampling.LANCZOS)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the output PNGs")
    parser.add_argument("--seeds", type=parse_seeds, default=parse_seeds("1-12"), help="e.g. 1-12 or 1,5,9")
    parser.add_argument("--strengths", type=lambda text: [float(s) for s in text.split(",")], default=[0.5, 0.8])
    parser.add_argument("--size", type=int, default=256, help="width and height in pixels")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--prompt", default="a red circle")
    parser.add_argument("--cfg-scale", type=float, default=7.5)
    parser.add_argument("--model", default=None, help="a diffusers folder; default: sweeplab's toy model")
    parser.add_argument("--device", default="auto", help="auto (as sweeplab's): cuda when there is one, else cpu")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                        help="auto (as sweeplab's): float16 on cuda, else float32")
    parser.add_argument("--batch-size", type=int, default=1, help="trials per pipeline call (same strength)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline

    model = args.model
    if model is None:
        from sweeplab.toy import toy_model_dir

        model = str(toy_model_dir())
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    dtype = ("float16" if device.startswith("cuda") else "float32") if args.dtype == "auto" else args.dtype
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(model, dtype=getattr(torch, dtype))
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe = pipe.to(device)
    init = init_image(args.size)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for strength in args.strengths:
        for first in range(0, len(args.seeds), args.batch_size):
            seeds = args.seeds[first:first + args.batch_size]
            generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
            batched = len(seeds) > 1  # one trial is called exactly as sweeplab calls it: no lists
            images = pipe(
                prompt=[args.prompt] * len(seeds) if batched else args.prompt,
                image=[init] * len(seeds) if batched else init,
                strength=strength,
                num_inference_steps=args.steps,
                guidance_scale=args.cfg_scale,
                generator=generators if batched else generators[0],
                output_type="pil",
            ).images
            for seed, image in zip(seeds, images):
                image.save(args.out / output_name(seed, strength))
    trials = len(args.seeds) * len(args.strengths)
    print(f"plain_img2img: {trials} trials in {time.perf_counter() - started:.2f} s after the model load")


if __name__ == "__main__":
    main()
