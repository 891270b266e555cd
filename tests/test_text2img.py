"""init_image=null is text-to-image: the family's text-to-image pipeline over the same modules, from pure noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sweeplab.errors import ConfigError
from sweeplab.models import PipelineCache
from sweeplab.runner import run_trial
from sweeplab.trial import prepare_trial

SMALL = ("width=64", "height=64", "steps=4", "seed=5", "prompt=a red circle", "sampler=k_euler")


@pytest.fixture(scope="module")
def models():
    return PipelineCache()


def run(compose_config, models, *overrides):
    trial = prepare_trial(compose_config(*SMALL, *overrides))
    return trial, run_trial(trial, models.get(trial.spec.model_source, "cpu", torch.float32))


def test_text_to_image_starts_from_noise_and_strength_one_still_sees_the_image(compose_config, models):
    text, from_text = run(compose_config, models, "init_image=null")
    assert text.spec.text2img and text.spec.strength == 1.0 and text.init is None
    assert (from_text.steps_taken, from_text.denoiser_evals) == (4, 4) and from_text.init_image is None
    image, from_image = run(compose_config, models, "strength=1.0")
    assert text.spec.config_hash != image.spec.config_hash
    assert from_image.steps_taken == 4
    # img2img at strength 1.0 noises the init image to the schedule's top and no further: its start differs
    assert not torch.equal(from_text.start_latent, from_image.start_latent)
    pixels = [np.asarray(result.output, dtype=np.int16) for result in (from_text, from_image)]
    assert np.abs(pixels[0] - pixels[1]).mean() > 1


def test_text_to_image_runs_for_a_flow_matching_family(compose_config, models, tiny_model_dir):
    trial, result = run(compose_config, models, f"model.path={tiny_model_dir('flux')}", "sampler=flow_euler",
                        "init_image=null")
    assert trial.spec.model_family == "flux" and result.start_latent.shape == (16, 8, 8)
    assert (result.steps_taken, result.denoiser_evals) == (4, 4) and result.output.size == (64, 64)


@pytest.mark.parametrize(("overrides", "message"), [
    (("width=null",), r"^width/height: text-to-image \(init_image=null\) has no image to take its size from; set "
                      r"width= and height=$"),
    (("variation_amount=0.2",), r"^variation_amount: needs an init image \(img2img\); text-to-image "
                                r"\(init_image=null\) cannot use it$"),
    (("iterations=2",), r"^iterations: needs an init image"),
])
def test_what_needs_an_init_image_fails_in_one_line(compose_config, overrides, message):
    with pytest.raises(ConfigError, match=message):
        prepare_trial(compose_config(*SMALL, "init_image=null", *overrides))
