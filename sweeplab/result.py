"""What one trial produced, as plain data: the runner fills it, the tracker logs it; no torch import here."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from PIL import Image

from sweeplab.schedule import NoiseSchedule

if TYPE_CHECKING:  # the runner's latents are tensors; the store's are numpy arrays (for_store)
    import numpy
    import torch


@dataclass
class TrialResult:
    """What one trial produced; plain data, no tracker involved."""

    output: Image.Image
    init_image: Image.Image | None  # None: text-to-image
    mask: Image.Image | None  # white = redrawn (inpainting); None for plain img2img
    start_latent: torch.Tensor | numpy.ndarray  # [channels, h, w]: the noised init image the denoiser starts from
    step_latents: torch.Tensor | numpy.ndarray  # [steps_taken, channels, h, w]: the latent after each denoising step
    step_timesteps: list[float]  # the timestep each recorded step started from
    schedule: NoiseSchedule  # the sampler's whole schedule and where the trial entered it (logged as schedule.json)
    steps_taken: int
    denoiser_evals: int  # forward calls of the UNet or transformer
    seconds: float  # wall time of the pipeline call, shared equally by the trials of a batch
    warnings: list[str]  # things the user should know, e.g. a truncated prompt
    batch_size: int  # how many trials shared the pipeline call
    start_image: Image.Image = field(repr=False)  # start_latent rendered
    step_images: list[Image.Image] = field(repr=False)  # step_latents rendered; none when they are not logged
    latent_strip: Image.Image = field(repr=False)

    def for_store(self) -> TrialResult:
        """A copy whose latents are float16 numpy arrays, as latents.safetensors keeps them: the store's
        process (storeprocess.py) logs it without importing torch."""
        return dataclasses.replace(self, start_latent=self.start_latent.half().contiguous().numpy(),
                                   step_latents=self.step_latents.half().contiguous().numpy())
