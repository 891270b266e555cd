"""Run one img2img trial with diffusers and record what really happened.

Everything is observed, never derived from a formula: the start latent is the one the
pipeline's `prepare_latents` returned, UNet evaluations are counted by a forward hook,
and denoising steps are the callbacks after which the scheduler stood between steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from PIL import Image

from sweeplab.models import LoadedModel
from sweeplab.noise import NoiseVariation
from sweeplab.render import LatentRenderer
from sweeplab.schedule import NoiseSchedule
from sweeplab.trial import Trial


@dataclass
class TrialResult:
    """What one trial produced; plain data, no tracker involved."""

    output: Image.Image
    init_image: Image.Image
    mask: Image.Image | None  # white = redrawn (inpainting); None for plain img2img
    start_latent: torch.Tensor  # [4, h, w]: the noised init image the denoiser starts from
    step_latents: torch.Tensor  # [steps_taken, 4, h, w]: the latent after each denoising step
    step_timesteps: list[float]  # the timestep each recorded step started from
    schedule: NoiseSchedule  # the sampler's whole schedule and where the trial entered it (logged as schedule.json)
    steps_taken: int
    unet_evals: int
    seconds: float  # wall time of the pipeline call, shared equally by the trials of a batch
    warnings: list[str]  # things the user should know, e.g. a truncated prompt
    batch_size: int  # how many trials shared the pipeline call
    start_image: Image.Image = field(repr=False)  # start_latent rendered
    step_images: list[Image.Image] = field(repr=False)  # step_latents rendered
    latent_strip: Image.Image = field(repr=False)


class _StepRecorder:
    """A `callback_on_step_end` that keeps each batch of latents and whether it completed a step."""

    def __init__(self):
        self.latents: list[torch.Tensor] = []  # [batch, 4, h, w] per callback
        self.timesteps: list[float] = []
        self.completes_step: list[bool] = []

    def __call__(self, pipe, step_index: int, timestep, callback_kwargs: dict) -> dict:
        self.latents.append(callback_kwargs["latents"].detach().float().cpu().clone())
        self.timesteps.append(float(timestep))
        self.completes_step.append(_scheduler_between_steps(pipe.scheduler))
        return {}

    def completed(self) -> tuple[torch.Tensor, list[float]]:
        """Latents that ended a denoising step, [steps, batch, 4, h, w]; the last callback always ends the run."""
        marks = list(self.completes_step)
        if marks:
            marks[-1] = True
        kept = [index for index, mark in enumerate(marks) if mark]
        return torch.stack([self.latents[i] for i in kept]), [self.timesteps[i] for i in kept]


def _scheduler_between_steps(scheduler) -> bool:
    """Ask the scheduler whether its last `step()` finished a denoising step.

    Second-order samplers (Heun, DPM2) keep a half-finished step until their correction;
    PLMS spends its first step on a provisional update that the second evaluation redoes.
    """
    if hasattr(scheduler, "state_in_first_order"):
        return bool(scheduler.state_in_first_order)
    if type(scheduler).__name__ == "PNDMScheduler" and scheduler.config.skip_prk_steps:
        return scheduler.counter != 1
    return True


class _UnetEvalCounter:
    """Counts UNet forward calls with a PyTorch forward pre-hook."""

    def __init__(self, unet):
        self.count = 0
        self._handle = unet.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.count += 1

    def remove(self):
        self._handle.remove()


def swap_scheduler(loaded: LoadedModel, scheduler: str, options: dict):
    """A fresh scheduler of the trial's class, built from the model's own scheduler config."""
    from sweeplab.samplers import scheduler_class

    return scheduler_class(scheduler).from_config(loaded.scheduler_config, **options)


def truncation_warnings(tokenizer, **prompts: str) -> list[str]:
    """Name the words CLIP will drop: text beyond the tokenizer's 77-token window is cut silently."""
    found = []
    limit = tokenizer.model_max_length
    for key, text in prompts.items():
        ids = tokenizer(text, truncation=False).input_ids
        if len(ids) > limit:
            dropped = tokenizer.decode(ids[limit - 1 : -1], skip_special_tokens=True)
            found.append(f"{key}: {len(ids) - 2} tokens exceed the {limit - 2}-token limit; truncated: '{dropped}'")
    return found


def run_trial(trial: Trial, loaded: LoadedModel, progress_desc: str | None = None) -> TrialResult:
    """Run one trial deterministically: a fresh CPU generator seeded with the trial's seed."""
    return run_batch([trial], loaded, progress_desc)[0]


def run_batch(trials: list[Trial], loaded: LoadedModel, progress_desc: str | None = None) -> list[TrialResult]:
    """Run trials that differ only in seed, prompts or noise variations in one pipeline call.

    Each trial keeps its own fresh CPU generator (diffusers draws every batch item's VAE sample and
    noise from that item's generator), so its start latent is the one it gets alone; the denoiser's
    kernels see a larger batch, which may change low bits of the output (see the README).
    """
    first = trials[0].spec
    pipe = loaded.pipeline(inpaint=first.inpaint)
    pipe.scheduler = swap_scheduler(loaded, first.scheduler, first.scheduler_options)
    pipe.noise_variations = tuple(
        NoiseVariation(t.spec.seed, t.spec.with_variations, t.spec.variation_amount, t.spec.variation_seed)
        if t.spec.varies_noise else None
        for t in trials
    )
    pipe.set_progress_bar_config(desc=progress_desc, leave=False)
    negative_prompts = [t.spec.negative_prompt for t in trials]
    inpaint_args = (
        {"mask_image": trials[0].init.mask, "width": first.width, "height": first.height} if first.inpaint else {}
    )
    steps = _StepRecorder()
    unet_evals = _UnetEvalCounter(pipe.unet)
    started = time.perf_counter()
    try:
        outputs = pipe(
            prompt=[t.spec.prompt for t in trials],
            negative_prompt=negative_prompts if any(negative_prompts) else None,
            image=[t.init.rgb for t in trials],
            strength=first.strength,
            num_inference_steps=first.steps,
            guidance_scale=first.cfg_scale,
            generator=[torch.Generator("cpu").manual_seed(t.spec.seed) for t in trials],
            output_type="pil",
            callback_on_step_end=steps,
            callback_on_step_end_tensor_inputs=["latents"],
            **inpaint_args,
        ).images
    finally:
        unet_evals.remove()
        pipe.noise_variations = ()
    seconds = (time.perf_counter() - started) / len(trials)

    step_latents, step_timesteps = steps.completed()
    schedule = NoiseSchedule.from_pipeline(pipe)
    renderer = LatentRenderer(trials[0].preview.method, pipe, loaded.latent_rgb)
    results = []
    for index, (trial, output) in enumerate(zip(trials, outputs)):
        latents = step_latents[:, index]
        start_latent = pipe.recorded_start_latent[index]
        results.append(TrialResult(
            output=output,
            init_image=trial.init.rgb,
            mask=trial.init.mask,
            start_latent=start_latent,
            step_latents=latents,
            step_timesteps=step_timesteps,
            schedule=schedule,
            steps_taken=len(latents),
            unet_evals=unet_evals.count,
            seconds=seconds,
            warnings=[*trial.warnings, *truncation_warnings(
                pipe.tokenizer, prompt=trial.spec.prompt, negative_prompt=trial.spec.negative_prompt)],
            batch_size=len(trials),
            start_image=renderer.render(start_latent),
            step_images=[renderer.render(latent) for latent in latents],
            latent_strip=renderer.strip(latents, trial.preview.tile_size),
        ))
    return results
