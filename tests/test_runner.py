"""A trial runs and is measured without MLflow: steps, denoiser evaluations, latents, determinism."""

from __future__ import annotations

import io

import pytest
import torch

from sweeplab.runner import run_trial
from sweeplab.samplers import scheduler_class
from sweeplab.schedule import SIGMAS_FROM_ALPHAS, SIGMAS_OF_SCHEDULER
from sweeplab.trial import prepare_trial

SCHEDULERS = {"k_heun": "HeunDiscreteScheduler", "k_dpm_2": "KDPM2DiscreteScheduler", "plms": "PNDMScheduler",
              "k_euler": "EulerDiscreteScheduler", "k_lms": "KDiffusionLMSScheduler", "ddim": "DDIMScheduler"}
DOC_TRIAL = ("steps=10", "width=384", "height=384", "seed=1592514025", "prompt=fire", "sampler=k_lms")


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def run(compose_config, toy_model):
    def _run(*overrides):
        trial = prepare_trial(compose_config(*DOC_TRIAL, *overrides))
        return run_trial(trial, toy_model), toy_model.pipe

    return _run


@pytest.mark.parametrize(("strength", "expected_steps"), [(0.7, 7), (0.4, 4)])
def test_doc_trial_takes_the_doc_step_counts(run, strength, expected_steps):
    result, _ = run(f"strength={strength}")
    assert result.steps_taken == expected_steps
    assert result.denoiser_evals == expected_steps  # LMS: one evaluation per step
    assert result.step_latents.shape == (expected_steps, 4, 48, 48)
    assert result.start_latent.shape == (4, 48, 48)
    assert result.output.size == (384, 384)
    assert result.latent_strip.size == (96 * expected_steps, 96)
    assert len(result.step_images) == expected_steps and result.seconds > 0


def test_step_previews_are_rendered_only_when_they_are_logged(run):
    result, _ = run("strength=0.4", "tracking.log_step_images=false")
    assert result.step_images == [] and result.steps_taken == 4
    assert result.latent_strip.size == (96 * 4, 96) and result.start_image.size == (48, 48)  # logged either way


def test_previews_rendered_together_are_each_latents_own_and_tile_the_strip(run):
    """The linear map runs once over a trial's start and step latents: each preview has the pixels its latent
    gives alone, and the strip's tiles are those previews."""
    from PIL import Image

    from sweeplab.render import LatentRenderer, read_latent_rgb
    from sweeplab.toy import toy_model_dir

    result, _ = run("strength=0.4")
    renderer = LatentRenderer("linear", None, read_latent_rgb(toy_model_dir()))
    latents = torch.cat([result.start_latent[None], result.step_latents])
    alone = [renderer.render_all(latent[None])[0] for latent in latents]
    assert [image.tobytes() for image in alone] == [result.start_image.tobytes(),
                                                    *(image.tobytes() for image in result.step_images)]
    tile = result.latent_strip.height
    for index, image in enumerate(result.step_images):
        expected = image.resize((tile, tile), Image.Resampling.NEAREST)
        assert result.latent_strip.crop((index * tile, 0, (index + 1) * tile, tile)).tobytes() == expected.tobytes()


@pytest.mark.parametrize(
    ("sampler", "steps", "strength"),
    [("k_heun", 10, 0.7), ("k_dpm_2", 10, 0.4), ("plms", 10, 0.7), ("k_heun", 29, 0.7), ("k_euler", 29, 0.7)],
)
def test_counts_match_what_diffusers_did(run, sampler, steps, strength):
    result, pipe = run(f"sampler={sampler}", f"steps={steps}", f"strength={strength}")
    # diffusers' img2img loop runs over timesteps[t_start * order:], one UNet call each (CFG is batched).
    scheduler = scheduler_class(SCHEDULERS[sampler]).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    t_start = steps - int(steps * strength)
    assert result.denoiser_evals == len(scheduler.timesteps[t_start * scheduler.order :])
    # diffusers' get_timesteps: int(steps * strength) denoising steps from the image.
    assert result.steps_taken == int(steps * strength)
    if sampler in ("k_heun", "k_dpm_2", "plms"):
        assert result.denoiser_evals != result.steps_taken


def test_heun_and_plms_figures_from_the_reference_table(run):
    heun, _ = run("sampler=k_heun", "strength=0.7")
    plms, _ = run("sampler=plms", "strength=0.7")
    assert (heun.steps_taken, heun.denoiser_evals) == (7, 13)
    assert (plms.steps_taken, plms.denoiser_evals) == (7, 8)


def test_start_latent_is_noisier_at_higher_strength(run, toy_model):
    """The start latent is the VAE latent of the init image plus noise scaled by strength."""
    strong, _ = run("strength=0.7")
    weak, _ = run("strength=0.4")
    vae = toy_model.pipe.vae
    image = toy_model.pipe.image_processor.preprocess(strong.init_image)
    with torch.no_grad():
        clean = vae.encode(image).latent_dist.mean[0] * vae.config.scaling_factor
    noise_strong = (strong.start_latent - clean).std()
    noise_weak = (weak.start_latent - clean).std()
    assert noise_strong > 1.5 * noise_weak > 0


def test_same_trial_twice_gives_identical_bytes(run):
    first, _ = run("strength=0.7")
    second, _ = run("strength=0.7")
    assert png_bytes(first.output) == png_bytes(second.output)
    assert torch.equal(first.step_latents, second.step_latents)


def test_seed_changes_the_output(run):
    first, _ = run("strength=0.7", "seed=1")
    second, _ = run("strength=0.7", "seed=2")
    assert png_bytes(first.output) != png_bytes(second.output)


def test_sampler_swap_reuses_the_loaded_model_and_never_changes_it(compose_config):
    from sweeplab.models import PipelineCache

    cache = PipelineCache()
    loaded, unets = [], []
    for sampler, evals in (("k_lms", 4), ("k_heun", 7), ("ddim", 4)):
        trial = prepare_trial(compose_config(*DOC_TRIAL, "strength=0.4", f"sampler={sampler}"))
        model = cache.get(trial.spec.model_source, "cpu", torch.float32)
        own_scheduler = model.pipe.scheduler
        result = run_trial(trial, model)
        assert (result.steps_taken, result.denoiser_evals) == (4, evals)  # the trial's sampler ran (Heun: 2n-1)
        assert model.pipe.scheduler is own_scheduler  # each trial runs on its own pipeline object and scheduler
        loaded.append(model)
        unets.append(model.pipe.unet)
    assert loaded[0] is loaded[1] is loaded[2]
    assert unets[0] is unets[1] is unets[2]


def test_vae_preview_renders_full_resolution(run):
    result, _ = run("strength=0.4", "preview.method=vae", "preview.tile_size=32")
    assert result.start_image.size == (384, 384)
    assert result.latent_strip.size == (32 * 4, 32)


@pytest.mark.parametrize("sampler", ["k_lms", "k_heun", "ddim"])
def test_schedule_records_where_the_trial_entered_it(run, sampler):
    """The whole schedule of the nominal steps, and the entry the denoising loop started from, for any sampler."""
    result, pipe = run(f"sampler={sampler}", "strength=0.7")
    schedule = result.schedule
    assert schedule.scheduler == SCHEDULERS[sampler]  # the trial's own scheduler, not the loaded pipeline's
    fresh = scheduler_class(SCHEDULERS[sampler]).from_config(pipe.scheduler.config)
    fresh.set_timesteps(10)
    assert len(schedule.timesteps) == len(schedule.sigmas) == len(fresh.timesteps)
    assert schedule.noise_steps == result.steps_taken == 7
    assert schedule.start_index == 3 * schedule.order  # 10 - int(10 x 0.7) steps skipped, each `order` entries
    if schedule.order == 1:  # first-order samplers complete a step at every entry: the first step starts there
        assert schedule.start_timestep == result.step_timesteps[0]
        assert all(a > b for a, b in zip(schedule.sigmas, schedule.sigmas[1:]))
    assert schedule.sigma_source == (SIGMAS_FROM_ALPHAS if sampler == "ddim" else SIGMAS_OF_SCHEDULER)
    assert schedule.from_json(schedule.to_json()) == schedule
