"""The shipped toy model draws what the prompt says: `sweeplab.toy.evaluate`'s thresholds on a fixed subset."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from sweeplab.toy.evaluate import (
    DEFAULT_STRENGTH,
    MAX_RECURRING_SHARE,
    MAX_SPIKE_SHARE,
    MIN_ARTEFACT_PIXELS,
    PALETTE_NAMES,
    Settings,
    StrengthSweep,
    border_artefact,
    border_artefacts,
    centroid,
    centroid_shifts,
    colour_adherence,
    decoder_peaks,
    distance_by_strength,
    dominant_object_colour,
    held_out_scenes,
    load_toy_pipeline,
    palette_classes,
    rises_strictly,
    recurring_artefact,
    rms_distance,
    spike_share,
    strength_sweep,
    vae_psnr,
)
from sweeplab.toy.scenes import COLOURS, Scene, render

SUBSET = Settings(samples=16, colour_samples=16)


@pytest.fixture(scope="module")
def pipe():
    return load_toy_pipeline()


def test_measures_read_colour_and_position_off_a_drawing():
    """The measures themselves: a known scene gives its own colour and centre, a plain image none."""
    scene = Scene("shape", seed=3, colour="purple", shape="square", background="yellow", cx=0.3, cy=0.65, size=0.3)
    for sketch in (False, True):
        image = render(scene, 128, sketch=sketch)
        assert dominant_object_colour(image) == "purple"
        x, y = centroid(image, "purple")
        assert abs(x - 0.3) < 0.03 and abs(y - 0.65) < 0.03
    assert centroid(Image.new("RGB", (64, 64), COLOURS["yellow"]), "purple") is None


def test_vae_round_trip_psnr_is_at_least_24_db(pipe):
    psnr_db = vae_psnr(pipe.vae, held_out_scenes(8, SUBSET.seed), SUBSET.size)
    assert psnr_db["all"] >= 24, psnr_db


def test_the_prompt_decides_the_colour_at_strength_1(pipe):
    # 64 cases, the count: over 16 a share's standard error is 10 points
    adherence, misses, _ = colour_adherence(pipe, replace(SUBSET, colour_samples=64))
    assert adherence >= 0.8, misses


@pytest.mark.parametrize("strength", [0.5, DEFAULT_STRENGTH])
def test_layout_survives_strength_half_and_the_default(pipe, strength):
    shifts = centroid_shifts(pipe, SUBSET, strength)
    assert np.median(shifts) <= 0.10, shifts


@pytest.fixture(scope="module")
def sweep(pipe):
    return strength_sweep(pipe, replace(SUBSET, samples=8))


def test_distance_to_the_init_image_rises_with_strength(sweep):
    distances = distance_by_strength(sweep)
    assert rises_strictly(distances), distances


def test_border_artefact_finds_a_new_saturated_blob_near_the_border_only():
    """The measure itself: a finished rendering of its own sketch has none; a 5x5 px blob of a colour the sketch
    lacks, pasted at the bottom-left corner, is 25 px; the same blob in the middle of the picture is not counted."""
    scene = Scene("shape", seed=5, colour="blue", shape="circle", background="yellow", cx=0.5, cy=0.5, size=0.4)
    sketch, finished = render(scene, 128, sketch=True), render(scene, 128)
    assert border_artefact(finished, sketch) == 0
    for (x, y), size in (((2, 121), 25), ((60, 60), 0)):
        blotched = finished.copy()
        blotched.paste((200, 30, 200), (x, y, x + 5, y + 5))  # purple: neither yellow nor blue
        assert border_artefact(blotched, sketch) == size


def test_finished_scenes_have_no_border_artefact_against_their_sketches():
    """What img2img should draw, the finished scene, is never flagged against its own sketch."""
    for scene in held_out_scenes(16, SUBSET.seed + 3):
        assert border_artefact(render(scene, SUBSET.size), render(scene, SUBSET.size, sketch=True)) < MIN_ARTEFACT_PIXELS


def test_a_blob_at_the_same_place_in_every_output_recurs_and_content_at_the_edges_does_not():
    """The measure itself, on finished renderings of their own sketches: a 5x5 px purple blob pasted at the
    bottom-left corner of 3 of 4 outputs recurs in 75% of them, in the cell at x 0, y 112 (128 px images); the same
    blob pasted at a different edge in each output recurs in 25%; no blob, nothing."""
    scenes = [Scene("shape", seed=5 + index, colour="blue", shape="circle", background="yellow", cx=0.5, cy=0.5,
                    size=0.4) for index in range(4)]
    sketches, finished = [render(s, 128, sketch=True) for s in scenes], [render(s, 128) for s in scenes]

    def blotched(places):
        images = [image.copy() for image in finished]
        for image, place in zip(images, places):
            if place:
                image.paste((200, 30, 200), (*place, place[0] + 5, place[1] + 5))
        return StrengthSweep(["a blue circle"] * 4, sketches, {0.5: images})

    assert recurring_artefact(blotched([(2, 121)] * 3 + [None])) == (0.75, (0, 112))
    assert recurring_artefact(blotched([(2, 121), (121, 2), (60, 121), (2, 60)]))[0] == 0.25
    assert recurring_artefact(blotched([None] * 4))[0] == 0


def test_no_border_blob_recurs_at_one_place(sweep):
    """trained-v3's corner blob recurred in the bottom-left cell of 63% of its outputs (issue 20); the blobs of
    scene content at the edges, counted in `border_artefacts`, move with the scenes."""
    share, cell = recurring_artefact(sweep)
    assert share <= MAX_RECURRING_SHARE, (share, cell, border_artefacts(sweep))


def test_the_decoder_makes_no_spike_to_beat_its_groupnorm(pipe):
    """Issue 20's mechanism: on round trips of 8 held-out scenes and their sketches at 256 px, at most 1% of the
    decoder's GroupNorm input channels peak above 12 deviations (trained-v3: a third, up to 118, in the corner)."""
    peaks = decoder_peaks(pipe.vae, held_out_scenes(8, SUBSET.seed), 256)
    assert spike_share(peaks) <= MAX_SPIKE_SHARE, peaks.max().item()


def test_held_out_scenes_are_not_training_scenes():
    from sweeplab.toy.scenes import random_scene
    from sweeplab.toy.train import TrainConfig

    rng = random.Random(TrainConfig().seed)
    training = {random_scene(rng).seed for _ in range(TrainConfig().scenes)}
    assert not training & {scene.seed for scene in held_out_scenes(64, SUBSET.seed)}


@pytest.fixture(scope="module")
def doc_outputs(toy_model):
    """The InvokeAI doc's trial (experiments/invokeai_img2img.yaml, 10 steps) at 0.4 and 0.7, through the runner."""
    from conftest import CONF_DIR
    from hydra import compose, initialize_config_dir

    from sweeplab.runner import run_trial
    from sweeplab.trial import prepare_trial

    outputs = {}
    for strength in (0.4, 0.7):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=["experiment=invokeai_img2img", "steps=10", f"strength={strength}"])
        trial = prepare_trial(cfg)
        outputs[strength] = run_trial(trial, toy_model).output
    return trial.init.rgb, outputs


def test_doc_fire_is_drawn_over_the_fireplace_and_04_stays_closer(doc_outputs):
    """"fire" over the fireplace sketch: the flames stay flame-coloured, the picture keeps the
    sketch's layout, and strength 0.4 stays closer to the sketch than 0.7 (the doc's point)."""
    sketch, outputs = doc_outputs
    distance = {strength: rms_distance(output, sketch) for strength, output in outputs.items()}
    assert distance[0.4] < distance[0.7], distance

    bright = np.asarray(sketch, np.float64).max(-1) / 255 > 0.6
    flames = bright & np.isin(palette_classes(sketch), [PALETTE_NAMES.index(c) for c in ("orange", "yellow")])
    assert flames.mean() > 0.02  # the sketch has flames to keep
    warm = [PALETTE_NAMES.index(c) for c in ("red", "orange", "yellow")]
    for strength, output in outputs.items():
        assert np.isin(palette_classes(output)[flames], warm).mean() > 0.6, strength
        layout = np.asarray(output.resize((8, 8), Image.Resampling.BOX), np.float64) / 255
        assert np.abs(layout - np.asarray(sketch.resize((8, 8), Image.Resampling.BOX)) / 255).mean() < 0.15, strength
