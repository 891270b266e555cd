"""The toy model's training script runs end to end, writes a loadable pipeline and resumes."""

from __future__ import annotations

import random
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from sweeplab.toy.scenes import COLOURS, caption, random_scene, render
from sweeplab.toy.train import Checkpoint, TrainConfig, build_dataset, train

TINY = dict(scenes=6, image_size=64, vae_crop=32, vae_batch=2, vae_whole_steps=1, vae_whole_pixels=4096,
            unet_sizes="32,64", unet_latent_pixels=32, repair_steps=0,
            checkpoint_every=1, device="cpu")


def test_scenes_are_seeded_and_captioned():
    first = [random_scene(random.Random(5)) for _ in range(3)]
    assert first == [random_scene(random.Random(5)) for _ in range(3)]
    rng = random.Random(1)
    shapes = [s for s in (random_scene(rng) for _ in range(200)) if s.kind == "shape"]
    assert {s.colour for s in shapes} == set(COLOURS)
    scene = shapes[0]
    assert scene.colour in caption(scene, random.Random(0)) and scene.shape in caption(scene, random.Random(0))
    photo, sketch = np.asarray(render(scene, 64)), np.asarray(render(scene, 64, sketch=True))
    assert photo.shape == sketch.shape == (64, 64, 3)
    centre = tuple(int(v * 64) for v in (scene.cy, scene.cx))
    target = np.array(COLOURS[scene.colour])
    assert np.abs(sketch[centre] - target).max() < 40  # the object is where the scene says, in its colour


def test_the_dataset_is_the_seeded_scenes_in_order_whatever_renders_them(tmp_path):
    """The dataset is rendered by a pool of processes; it holds each scene of the seeded sequence, in order,
    beside its sketch and its caption, drawn from one generator as a loop would."""
    config = TrainConfig(**{**TINY, "scenes": 9})
    data = build_dataset(config, tmp_path)
    rng = random.Random(config.seed)
    for index in range(config.scenes):
        scene = random_scene(rng)
        assert data["captions"][index] == caption(scene, rng)
        assert np.array_equal(data["photos"][index], np.asarray(render(scene, config.image_size)))
        assert np.array_equal(data["sketches"][index], np.asarray(render(scene, config.image_size, sketch=True)))
    assert build_dataset(config, tmp_path)["captions"] == data["captions"]  # read back from the cache


def test_training_writes_a_pipeline_and_resumes(tmp_path):
    from diffusers import StableDiffusionImg2ImgPipeline

    work, out = tmp_path / "work", tmp_path / "out"
    first = TrainConfig(**TINY, vae_steps=2, unet_steps=2, loss_weight_cap=20.0, ema_decay=0.999)
    report = train(first, work, out, resume=False)
    state = Checkpoint(work).load()
    assert (state["stage"], state["step"]) == ("unet", 2)
    assert list(report["stage_seconds"]) == ["dataset", "vae", "latents", "unet"]  # no repair steps: no stage
    assert report["weights_bytes"] < 20 * 1024 * 1024
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(out)
    assert pipe.vae.config.scaling_factor > 0 and (out / "latent_rgb.json").is_file()
    before = state["modules"]  # the last step's weights
    train(replace(first, repair_steps=3), work, out, resume=True)
    state = Checkpoint(work).load()
    assert (state["stage"], state["step"]) == ("repair", 3)
    after = state["modules"]
    assert any(not torch.equal(before["unet"][k], after["unet"][k]) for k in before["unet"])  # trained further
    assert all(torch.equal(v, after["text_encoder"][k]) for k, v in before["text_encoder"].items())  # frozen
    assert after["average"]["optimization_step"] == 5  # the average went on over the resumed stage


@pytest.mark.parametrize("ema_decay", [0.0, 0.999])
def test_the_weights_written_are_the_last_steps_or_their_average(tmp_path, ema_decay):
    from diffusers import UNet2DConditionModel

    work, out = tmp_path / "work", tmp_path / "out"
    train(TrainConfig(**TINY, vae_steps=2, unet_steps=3, ema_decay=ema_decay), work, out, resume=False)
    state = Checkpoint(work).load()
    written = UNet2DConditionModel.from_pretrained(out, subfolder="unet")
    last = state["modules"]["unet"]
    as_last = [torch.equal(value, last[name]) for name, value in written.named_parameters()]
    if ema_decay == 0:
        assert all(as_last) and "average" not in state["modules"]
    else:
        assert not all(as_last)
        average = state["modules"]["average"]["shadow_params"]  # the UNet's parameters, then the text encoder's
        assert all(torch.equal(value, averaged) for value, averaged in zip(written.parameters(), average))


def test_a_reused_vae_skips_stage_one_and_the_prediction_type_ships_in_the_scheduler(tmp_path):
    from diffusers import AutoencoderKL, LMSDiscreteScheduler, StableDiffusionImg2ImgPipeline

    from sweeplab.toy.build import SHIPPED_DIR

    out = tmp_path / "out"
    config = TrainConfig(**TINY, vae_steps=2, unet_steps=2, vae_from=str(SHIPPED_DIR))
    train(config, tmp_path / "work", out, resume=False)
    # loaded, not trained: two VAE steps at lr 1e-3 would change the weights compared below
    shipped, reused = AutoencoderKL.from_pretrained(SHIPPED_DIR / "vae"), AutoencoderKL.from_pretrained(out / "vae")
    assert all(torch.equal(value, reused.state_dict()[name]) for name, value in shipped.state_dict().items())
    assert reused.config.norm_num_groups == shipped.config.norm_num_groups  # the model reused, not its weights alone
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(out)
    # every sampler swapped in through from_config inherits what the UNet predicts
    assert LMSDiscreteScheduler.from_config(pipe.scheduler.config).config.prediction_type == "v_prediction"


def test_every_groupnorm_of_the_toy_vae_spans_several_channels():
    """Issue 20's cause: a GroupNorm of one channel erases that channel's absolute level (a flat background's
    colour), and trained-v3's decoder smuggled it past the norm with a corner spike that painted a blob. The toy
    VAE, built and shipped, normalises groups of 4 to 8 channels, as SD's VAE does groups of 4 to 16."""
    from diffusers import AutoencoderKL

    from sweeplab.toy.build import SHIPPED_DIR, build_toy_pipeline

    for vae in (build_toy_pipeline().vae, AutoencoderKL.from_pretrained(SHIPPED_DIR / "vae")):
        norms = [module for module in vae.modules() if isinstance(module, torch.nn.GroupNorm)]
        widths = {norm.num_channels // norm.num_groups for norm in norms}
        assert min(widths) >= 4, widths


def test_an_unknown_prediction_type_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"^prediction_type: 'x0' is not one of epsilon, v_prediction$"):
        TrainConfig(prediction_type="x0")


@pytest.mark.parametrize("ema_decay", [1.0, -0.1])
def test_an_ema_decay_outside_0_to_1_is_refused_in_one_line(ema_decay):
    with pytest.raises(ValueError, match=rf"^ema_decay: {ema_decay} is outside \[0, 1\); 0 turns the average off$"):
        TrainConfig(ema_decay=ema_decay)


def test_the_command_line_reports_a_bad_option_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "sweeplab.toy.train", "--workdir", str(tmp_path), "--ema-decay", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == "train.py: error: ema_decay: 1.0 is outside [0, 1); 0 turns the average off"
