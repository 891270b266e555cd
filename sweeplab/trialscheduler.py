"""The scheduler one trial runs with: a fresh scheduler that also observes and varies what the pipeline does.

Every diffusers img2img pipeline noises its init latents through its scheduler (`add_noise`, or
`scale_noise` for flow matching) and advances through `step(model_output, timestep, sample)`, so
the scheduler is the one seam that sees the start latent of every family, and the noise it is
made of. A `TrialScheduler` wraps the trial's own scheduler object (never a shared one): it keeps
the first `sample` passed to `step()` (the latent the denoiser starts from) and applies seed
variations to the noise, one `NoiseVariation` per batch item. Everything else is the wrapped
scheduler's, attribute for attribute.
"""

from __future__ import annotations

import functools

import torch

from sweeplab.noise import NoiseVariation

class TrialScheduler:
    """A per-trial scheduler: the wrapped one, plus the start latent it saw and the noise variations it applies."""

    def __init__(self, scheduler, variations: tuple[NoiseVariation | None, ...] = (), vae_dtype=torch.float32):
        object.__setattr__(self, "scheduler", scheduler)  # the trial's own diffusers scheduler
        object.__setattr__(self, "variations", variations)  # per batch item; None leaves its noise alone
        object.__setattr__(self, "vae_dtype", vae_dtype)  # the dtype of the generator's first draw, the VAE sample
        object.__setattr__(self, "start_latent", None)  # [batch, ...] as the pipeline holds it (packed for FLUX)
        # Pipelines pass `generator` and `eta` only to a step() whose signature names them (ancestral samplers
        # draw their noise there), so step() carries the wrapped scheduler's signature.
        object.__setattr__(self, "step", functools.wraps(scheduler.step)(
            lambda *args, **kwargs: self._step(*args, **kwargs)))

    def __getattr__(self, name):
        return getattr(self.scheduler, name)

    def __setattr__(self, name, value):  # a pipeline's __init__ may patch its scheduler's config
        setattr(self.scheduler, name, value)

    def _step(self, model_output, timestep, sample, *args, **kwargs):
        if self.start_latent is None:
            object.__setattr__(self, "start_latent", sample.detach().float().cpu().clone())
        return self.scheduler.step(model_output, timestep, sample, *args, **kwargs)

    def add_noise(self, original_samples, noise, timesteps):
        noised = self.scheduler.add_noise(original_samples, noise, timesteps)
        if not self._varies(noise):
            return noised
        return noised + self.scheduler.add_noise(torch.zeros_like(original_samples), self._correction(noise), timesteps)

    def scale_noise(self, sample, timestep, noise=None):
        noised = self.scheduler.scale_noise(sample, timestep, noise)
        if not self._varies(noise):
            return noised
        return noised + self.scheduler.scale_noise(torch.zeros_like(sample), timestep, self._correction(noise))

    def _varies(self, noise: torch.Tensor | None) -> bool:
        return noise is not None and any(self.variations)

    def _correction(self, noise: torch.Tensor) -> torch.Tensor:
        """Varied minus drawn noise, per batch item; the caller noises it the way the pipeline noised its latents."""
        return torch.cat([
            variation.correction(noise[index : index + 1], self.vae_dtype) if variation is not None
            else torch.zeros_like(noise[index : index + 1])
            for index, variation in enumerate(self.variations)
        ])
