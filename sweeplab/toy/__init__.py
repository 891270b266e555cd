"""The embedded ``toy`` model: Stable Diffusion 1.x architecture, tiny, trained on procedural scenes.

It lets sweeps run end to end offline and in seconds on a CPU; see ``build.py``, ``train.py``
and ``evaluate.py``.
"""

from sweeplab.toy.build import (
    SHIPPED_DIR,
    TOY_VERSION,
    LatentRGB,
    build_toy_pipeline,
    fit_latent_rgb,
    toy_model_dir,
)
from sweeplab.toy.tokenizer import WORDS, build_tokenizer

__all__ = [
    "SHIPPED_DIR",
    "TOY_VERSION",
    "WORDS",
    "LatentRGB",
    "build_tokenizer",
    "build_toy_pipeline",
    "fit_latent_rgb",
    "toy_model_dir",
]
