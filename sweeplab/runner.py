"""Run one img2img trial with diffusers and record what really happened.

Everything is observed, never derived from a formula: the start latent is the one the
trial's scheduler saw first, denoiser evaluations are counted by a forward pre-hook, and the
denoising steps are the callbacks the pipeline itself counts as steps (its progress bar's rule).
Nothing shared is changed: each call runs on a pipeline object of its own with its own scheduler.
"""

from __future__ import annotations

import inspect
import time

import torch
from PIL import Image

from sweeplab import interrupts
from sweeplab.models import LoadedModel
from sweeplab.noise import NoiseVariation
from sweeplab.render import LatentRenderer
from sweeplab.result import TrialResult
from sweeplab.schedule import NoiseSchedule
from sweeplab.trial import Trial
from sweeplab.trialscheduler import TrialScheduler


class _StepRecorder:
    """A `callback_on_step_end` that keeps the latents and timestep of every denoising loop iteration."""

    def __init__(self):
        self.latents: list[torch.Tensor] = []  # [batch, ...] per iteration, as the pipeline holds them
        self.timesteps: list[float] = []

    def __call__(self, pipe, step_index: int, timestep, callback_kwargs: dict) -> dict:
        interrupts.check()  # a signal Python dropped inside a finalizer still stops the trial here
        self.latents.append(callback_kwargs["latents"].detach().float().cpu().clone())
        self.timesteps.append(float(timestep))
        return {}

    def completed(self, scheduler, nominal_steps: int) -> tuple[torch.Tensor, list[float]]:
        """The iterations that ended a denoising step, [steps, batch, ...], by the pipelines' own rule.

        diffusers' loops advance their progress bar at iteration i when it is the last one or when
        `i + 1 > warmup and (i + 1) % scheduler.order == 0`, with warmup = len(timesteps) - steps * order
        (the same for the truncated img2img schedule as for the full one). Second-order samplers (Heun,
        DPM2) spend two iterations per step; PLMS spends one warm-up iteration that the next one redoes.
        """
        order = scheduler.order
        warmup = max(len(scheduler.timesteps) - nominal_steps * order, 0)
        last = len(self.latents) - 1
        kept = [i for i in range(len(self.latents)) if i == last or (i + 1 > warmup and (i + 1) % order == 0)]
        return torch.stack([self.latents[i] for i in kept]), [self.timesteps[i] for i in kept]


class _EvalCounter:
    """Counts the denoiser's forward calls with a PyTorch forward pre-hook."""

    def __init__(self, denoiser):
        self.count = 0
        self._handle = denoiser.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.count += 1

    def remove(self):
        self._handle.remove()


def new_scheduler(loaded: LoadedModel, scheduler: str, options: dict):
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
    family = loaded.family
    loaded.lora.activate(first.lora)  # the trials of a batch share their LoRA settings (sweep.batch_key)
    scheduler = TrialScheduler(
        new_scheduler(loaded, first.scheduler, first.scheduler_options),
        tuple(NoiseVariation(t.spec.with_variations, t.spec.variation_amount, t.spec.variation_seed)
              if t.spec.varies_noise else None for t in trials),
        vae_dtype=loaded.pipe.vae.dtype,
    )
    kind = "text2img" if first.text2img else "inpaint" if first.inpaint else "img2img"
    pipe = loaded.for_trial(kind, scheduler)
    pipe.set_progress_bar_config(desc=progress_desc, leave=False)
    call_args = inspect.signature(type(pipe).__call__).parameters
    negative_prompts = [t.spec.negative_prompt for t in trials]
    extra = {} if first.text2img else {"image": [t.init.rgb for t in trials], "strength": first.strength}
    if first.inpaint:
        extra["mask_image"] = trials[0].init.mask
    if "height" in call_args:  # text-to-image, and img2img pipelines that would resize the init image to their default
        extra.update(width=first.width, height=first.height)
    steps = _StepRecorder()
    evals = _EvalCounter(loaded.denoiser)
    started = time.perf_counter()
    try:
        outputs = pipe(
            prompt=[t.spec.prompt for t in trials],
            negative_prompt=negative_prompts if any(negative_prompts) else None,
            num_inference_steps=first.steps,
            guidance_scale=first.cfg_scale,
            generator=[torch.Generator("cpu").manual_seed(t.spec.seed) for t in trials],
            output_type="pil",
            callback_on_step_end=steps,
            callback_on_step_end_tensor_inputs=["latents"],
            **extra,
        ).images
    finally:
        evals.remove()
    seconds = (time.perf_counter() - started) / len(trials)

    step_latents, step_timesteps = steps.completed(scheduler, first.steps)
    start_latents = scheduler.start_latent
    schedule = NoiseSchedule.from_scheduler(scheduler.scheduler, iterations=len(steps.latents))
    if family.packed_latents:  # FLUX's latents are 2x2 patch tokens; recorded as [channels, h, w] like the others
        def unpack(latents: torch.Tensor) -> torch.Tensor:
            return type(pipe)._unpack_latents(latents, first.height, first.width, pipe.vae_scale_factor)

        step_latents = torch.stack([unpack(latents) for latents in step_latents])
        start_latents = unpack(start_latents)
    renderer = LatentRenderer(trials[0].preview.method, pipe.vae, loaded.latent_rgb or family.latent_rgb)
    tokenizer = getattr(pipe, family.prompt_tokenizer)
    results = []
    for index, (trial, output) in enumerate(zip(trials, outputs)):
        latents = step_latents[:, index]
        start_latent = start_latents[index]
        start_image, *step_images = renderer.render_all(torch.cat([start_latent[None], latents]))
        results.append(TrialResult(
            output=output,
            init_image=trial.init.rgb if trial.init else None,
            mask=trial.init.mask if trial.init else None,
            start_latent=start_latent,
            step_latents=latents,
            step_timesteps=step_timesteps,
            schedule=schedule,
            steps_taken=len(latents),
            denoiser_evals=evals.count,
            seconds=seconds,
            warnings=[*trial.warnings, *truncation_warnings(
                tokenizer, prompt=trial.spec.prompt, negative_prompt=trial.spec.negative_prompt)],
            batch_size=len(trials),
            start_image=start_image,
            step_images=step_images if trial.step_images else [],
            latent_strip=renderer.strip(step_images, trial.preview.tile_size),
        ))
    return results
