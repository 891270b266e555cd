"""sweeplab: declarative Hydra parameter sweeps for diffusion img2img, logged to MLflow."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sweeplab")  # pyproject.toml's, as installed: the one place it is written
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "unknown"
