"""The noise schedule a trial's sampler used, as plain numbers.

Read from the pipeline after its call and logged as `schedule.json`, so reports can draw
the schedule and say where img2img cut into it without importing torch (this module imports none).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

SIGMAS_OF_SCHEDULER = "scheduler.sigmas"  # k-diffusion style samplers hold their noise levels
SIGMAS_FROM_ALPHAS = "sqrt((1 - alphas_cumprod[t]) / alphas_cumprod[t])"  # DDIM, PNDM, ...: the same quantity


@dataclass(frozen=True)
class NoiseSchedule:
    """The whole schedule for the trial's nominal steps, and where img2img entered it."""

    scheduler: str  # the scheduler's class name
    order: int  # schedule entries per denoising step (2 for Heun and DPM2, whose timesteps repeat)
    timesteps: list[float]  # every timestep of the schedule, noisiest first
    sigmas: list[float]  # the noise level at each of those timesteps (same length)
    sigma_source: str  # how `sigmas` were read: SIGMAS_OF_SCHEDULER or SIGMAS_FROM_ALPHAS
    start_index: int  # the entry the pipeline started denoising from; its start latent was noised to that level

    @classmethod
    def from_scheduler(cls, scheduler, iterations: int) -> "NoiseSchedule":
        """After a call: the schedule `set_timesteps` built and the share of it the denoising loop ran.

        The loop ran the schedule's last `iterations` entries, whatever the scheduler (DDIM and PNDM keep
        no begin index).
        """
        timesteps = [float(t) for t in scheduler.timesteps]
        if getattr(scheduler, "sigmas", None) is not None:
            sigmas, source = [float(s) for s in scheduler.sigmas[: len(timesteps)]], SIGMAS_OF_SCHEDULER
        else:
            alphas = scheduler.alphas_cumprod
            sigmas = [math.sqrt((1 - float(alphas[int(t)])) / float(alphas[int(t)])) for t in timesteps]
            source = SIGMAS_FROM_ALPHAS
        start = len(timesteps) - iterations
        return cls(type(scheduler).__name__, int(scheduler.order), timesteps, sigmas, source, start)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "NoiseSchedule":
        return cls(**json.loads(text))

    @property
    def start_timestep(self) -> float:
        return self.timesteps[self.start_index]

    @property
    def start_sigma(self) -> float:
        return self.sigmas[self.start_index]

    @property
    def noise_steps(self) -> int:
        """Denoising steps from the start to the end: the "slices of noise" the start latent stands for."""
        return math.ceil((len(self.timesteps) - self.start_index) / self.order)
