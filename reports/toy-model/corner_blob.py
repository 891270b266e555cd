"""corner-blob.png: VAE round trips of four held-out sketches at 256 px by two toy models, each beside its
bottom-left 40 px corner magnified 4x (issue 20).

    git worktree add --detach /tmp/v3 baacccf   # the last commit that shipped trained-v3
    python reports/toy-model/corner_blob.py /tmp/v3/sweeplab/toy/weights sweeplab/toy/weights
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image, ImageDraw

from sweeplab.toy import evaluate
from sweeplab.toy.build import to_tensor
from sweeplab.toy.scenes import render

TILE, LABEL, SIZE, CORNER = 160, 90, 256, 40


def round_trips(folder: str, inits: list[Image.Image]) -> list[Image.Image]:
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae").eval()
    with torch.no_grad():
        decoded = vae.decode(vae.encode(to_tensor(inits)).latent_dist.mode()).sample.clamp(-1, 1)
    return [Image.fromarray(((image.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8))
            for image in decoded]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", help="the toy pipeline folder of the model with the blob")
    parser.add_argument("after", help="the toy pipeline folder of the fixed model")
    parser.add_argument("--names", nargs=2, default=["trained-v3", "trained-v4"], help="the rows' labels")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("corner-blob.png"))
    args = parser.parse_args()
    inits = [render(scene, SIZE, sketch=True) for scene in evaluate.held_out_scenes(4, seed=777)]
    rows = [("sketch", inits), *((name, round_trips(folder, inits))
                                 for name, folder in zip(args.names, (args.before, args.after)))]
    sheet = Image.new("RGB", (LABEL + TILE * 2 * len(inits), TILE * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (name, images) in enumerate(rows):
        draw.text((4, row * TILE + TILE // 2 - 6), name, fill="black")
        for index, image in enumerate(images):
            sheet.paste(image.resize((TILE, TILE)), (LABEL + index * 2 * TILE, row * TILE))
            corner = image.crop((0, SIZE - CORNER, CORNER, SIZE)).resize((TILE, TILE), Image.Resampling.NEAREST)
            sheet.paste(corner, (LABEL + (index * 2 + 1) * TILE, row * TILE))
    sheet.save(args.out, optimize=True)


if __name__ == "__main__":
    main()
