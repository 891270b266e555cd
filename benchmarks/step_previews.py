"""What per-step previews cost in MLflow: `log_image` per step against sweeplab's one upload per trial.

    python benchmarks/step_previews.py [--steps 20] [--size 32] [--trials 10]

Both write the same files under `images/` (a PNG and a WebP thumbnail per step, named as `log_image`
names them, which is all the UI's image slider reads). Prints milliseconds per trial for each way, into a
fresh SQLite store. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="previews per trial (the start image and each step)")
    parser.add_argument("--size", type=int, default=32, help="preview side in pixels (a 256 px image's latent: 32)")
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()

    from mlflow import MlflowClient

    from sweeplab.tracking import STEP_IMAGE_KEY, write_step_images

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (args.size, args.size, 3), dtype=np.uint8))
              for _ in range(args.steps + 1)]
    with tempfile.TemporaryDirectory() as tmp:
        client = MlflowClient(f"sqlite:///{Path(tmp) / 'mlflow.db'}")
        experiment = client.create_experiment("previews", artifact_location=(Path(tmp) / "artifacts").as_uri())

        def per_step() -> None:
            run_id = client.create_run(experiment).info.run_id
            for step, image in enumerate(images):
                client.log_image(run_id, image, key=STEP_IMAGE_KEY, step=step)

        def one_upload() -> None:
            run_id = client.create_run(experiment).info.run_id
            with tempfile.TemporaryDirectory() as folder:
                write_step_images(Path(folder) / "images", images, int(time.time() * 1000))
                client.log_artifacts(run_id, folder)
            client.set_tag(run_id, "mlflow.loggedImages", "True")

        for name, way in (("log_image per step", per_step), ("one upload per trial", one_upload)):
            way()  # warm-up
            times = []
            for _ in range(args.trials):
                started = time.perf_counter()
                way()
                times.append((time.perf_counter() - started) * 1000)
            print(f"{name:<22} {statistics.median(times):8.1f} ms per trial of {args.steps + 1} previews "
                  f"({args.size}x{args.size}), min {min(times):.1f}")


if __name__ == "__main__":
    main()
