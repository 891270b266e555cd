"""The embedded ``toy`` model: Stable Diffusion 1.x architecture with tiny random weights.

It lets sweeps run end to end offline and in seconds on a CPU; see ``build.py``.
"""

from sweeplab.toy.build import (
    TOY_VERSION,
    LatentRGB,
    build_toy_pipeline,
    default_cache_root,
    fit_latent_rgb,
    toy_model_dir,
)
from sweeplab.toy.tokenizer import WORDS, build_tokenizer

__all__ = [
    "TOY_VERSION",
    "WORDS",
    "LatentRGB",
    "build_tokenizer",
    "build_toy_pipeline",
    "default_cache_root",
    "fit_latent_rgb",
    "toy_model_dir",
]
