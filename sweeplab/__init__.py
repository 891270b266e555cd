"""sweeplab: declarative Hydra parameter sweeps for diffusion img2img, logged to MLflow."""

__version__ = "0.1.0"
