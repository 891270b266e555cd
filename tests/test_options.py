"""The InvokeAI img2img options, run on the toy model: inpainting, variations, compensated steps, prompts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sweeplab.errors import ConfigError
from sweeplab.runner import run_trial
from sweeplab.trial import prepare_trial

SMALL = ("steps=10", "width=256", "height=256", "seed=7", "prompt=fire")


def psnr(a: Image.Image, b: Image.Image) -> float:
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return 10 * np.log10(255.0**2 / max((diff**2).mean(), 1e-12))


@pytest.fixture
def holed_image(tmp_path):
    """The fireplace sketch with a transparent square in its middle."""
    from sweeplab.sketches import draw_sketch

    rgba = np.asarray(draw_sketch("fireplace", 256, 256).convert("RGBA")).copy()
    rgba[96:160, 96:160, 3] = 0
    path = tmp_path / "holed.png"
    Image.fromarray(rgba, "RGBA").save(path)
    return path


def vae_round_trip(pipe, image: Image.Image) -> Image.Image:
    with torch.no_grad():
        latents = pipe.vae.encode(pipe.image_processor.preprocess(image)).latent_dist.mode()
        decoded = pipe.vae.decode(latents).sample
    return pipe.image_processor.postprocess(decoded, output_type="pil")[0]


def test_inpainting_redraws_only_the_transparent_region(compose_config, toy_model, holed_image):
    trial = prepare_trial(compose_config(*SMALL, f"init_image={holed_image}", "strength=0.9"))
    assert trial.spec.inpaint
    result = run_trial(trial, toy_model)
    assert result.mask is not None and result.steps_taken == 9
    pipe = toy_model.pipe
    with torch.no_grad():
        init_latent = pipe.vae.encode(pipe.image_processor.preprocess(trial.init.rgb)).latent_dist.mode()[0]
    final_latent = result.step_latents[-1] / pipe.vae.config.scaling_factor
    # Latent space: outside the hole (latent rows/cols 12..20) the final latent is the init's latent.
    keep = torch.ones(32, 32, dtype=torch.bool)
    keep[12:20, 12:20] = False
    assert (final_latent - init_latent)[:, keep].abs().max() < 1e-3
    assert (final_latent - init_latent)[:, ~keep].abs().mean() > 0.1
    # Pixel space: outside, the output is the init's VAE round trip (up to the decoder's global
    # attention, a fraction of a grey level); inside it is redrawn.
    out = np.asarray(result.output, np.float64)
    reference = np.asarray(vae_round_trip(pipe, trial.init.rgb), np.float64)
    outside = np.ones((256, 256), bool)
    outside[64:192, 64:192] = False  # the hole plus a 32 px margin for the 8x latent grid
    inside = np.zeros((256, 256), bool)
    inside[104:152, 104:152] = True
    assert np.abs(out - reference)[outside].mean() < 1.0
    assert np.abs(out - reference)[inside].mean() > 10.0


def test_inpainting_with_a_nine_channel_unet(compose_config, toy_model, holed_image, tmp_path):
    """A dedicated inpainting UNet takes latents, mask and masked image: 9 input channels."""
    from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel

    base = toy_model.pipe
    config = dict(base.unet.config, in_channels=9)
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(config)
    folder = tmp_path / "toy-inpainting"
    StableDiffusionInpaintPipeline(
        vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=unet,
        scheduler=base.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(folder)
    from sweeplab.models import PipelineCache

    trial = prepare_trial(compose_config(*SMALL, f"init_image={holed_image}", f"model.path={folder}", "strength=1.0"))
    loaded = PipelineCache().get(trial.spec.model_source, "cpu", torch.float32)
    result = run_trial(trial, loaded)
    assert loaded.pipeline("inpaint").unet.config.in_channels == 9
    assert result.steps_taken == 10 and result.output.size == (256, 256)


def test_variation_amount_one_lands_on_the_variation_seed(compose_config, toy_model):
    """Slerping all the way to seed 11's noise reproduces a plain seed-11 run (the VAE sample aside)."""
    varied = run_trial(prepare_trial(compose_config(*SMALL, "strength=0.7", "variation_amount=1.0",
                                                    "variation_seed=11")), toy_model)
    plain_11 = run_trial(prepare_trial(compose_config(*SMALL, "strength=0.7", "seed=11")), toy_model)
    plain_7 = run_trial(prepare_trial(compose_config(*SMALL, "strength=0.7")), toy_model)
    assert psnr(varied.output, plain_11.output) > 40
    assert psnr(varied.output, plain_7.output) < 30


def test_partial_variation_is_deterministic_and_in_between(compose_config, toy_model):
    overrides = (*SMALL, "strength=0.7", "variation_amount=0.3")
    first = run_trial(prepare_trial(compose_config(*overrides)), toy_model)
    second = run_trial(prepare_trial(compose_config(*overrides)), toy_model)
    plain = run_trial(prepare_trial(compose_config(*SMALL, "strength=0.7")), toy_model)
    assert np.array_equal(np.asarray(first.output), np.asarray(second.output))
    assert not np.array_equal(np.asarray(first.output), np.asarray(plain.output))
    start_gap = (first.start_latent - plain.start_latent).abs().mean()
    assert start_gap > 0


def test_with_variations_matches_the_equivalent_variation_amount(compose_config, toy_model):
    listed = run_trial(prepare_trial(compose_config(*SMALL, "strength=0.5", "with_variations=[11:0.4]")), toy_model)
    amount = run_trial(prepare_trial(compose_config(*SMALL, "strength=0.5", "variation_amount=0.4",
                                                    "variation_seed=11")), toy_model)
    assert np.array_equal(np.asarray(listed.output), np.asarray(amount.output))


def test_bad_variation_pairs_are_refused(compose_config):
    with pytest.raises(ConfigError, match=r"^with_variations: 'x:0.1' is not seed:weight"):
        prepare_trial(compose_config("with_variations=[x:0.1]"))
    with pytest.raises(ConfigError, match=r"^variation_amount: 1.5 is out of range"):
        prepare_trial(compose_config("variation_amount=1.5"))


@pytest.mark.parametrize(("strength", "nominal"), [(0.4, 50), (0.7, 29)])
def test_steps_taken_target_picks_the_smallest_nominal_steps(compose_config, strength, nominal):
    spec = prepare_trial(compose_config(f"strength={strength}", "steps_taken_target=20")).spec
    assert spec.steps == nominal and spec.steps_taken_target == 20
    assert int((nominal - 1) * strength) < 20  # one step fewer would not do


def test_steps_taken_target_is_what_the_run_really_takes(compose_config, toy_model):
    trial = prepare_trial(compose_config(*SMALL, "strength=0.7", "steps_taken_target=12"))
    assert run_trial(trial, toy_model).steps_taken == 12


def test_prompt_search_and_replace(compose_config):
    trial = prepare_trial(compose_config("prompt='a red circle on a red square'", "prompt_search=red",
                                         "prompt_replace=blue"))
    assert trial.spec.prompt == "a blue circle on a blue square"
    assert trial.prompt_template == ("red", "blue")
    with pytest.raises(ConfigError, match=r"^prompt_search: 'green' does not occur in prompt"):
        prepare_trial(compose_config("prompt=fire", "prompt_search=green", "prompt_replace=blue"))


def test_long_prompt_warns_with_the_truncated_words(compose_config, toy_model):
    words = " ".join(["red circle"] * 40) + " purple triangle"
    trial = prepare_trial(compose_config(*SMALL, "strength=0.3", f"prompt='{words}'"))
    result = run_trial(trial, toy_model)
    (warning,) = result.warnings
    assert warning.startswith("prompt: 82 tokens exceed the 75-token limit")
    assert warning.endswith("purple triangle'")
