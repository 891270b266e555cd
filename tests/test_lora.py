"""LoRA files as sweep axes: checked before any model loads, applied through diffusers' loaders (peft) to the
loaded toy model, and gone again for the next trial, without reloading the model."""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from safetensors.torch import save_file

from sweeplab.errors import ConfigError
from sweeplab.runner import run_trial
from sweeplab.sweep import batch_key
from sweeplab.trial import prepare_trial
from test_engine import TINY, children
from test_runner import png_bytes

SMALL = ("width=64", "height=64", "steps=8", "strength=0.5", "sampler=k_euler", "seed=7", "prompt=fire")
ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")


def lora_layers(unet, seed: int = 0, width_factor: int = 1, rank: int = 4) -> dict[str, torch.Tensor]:
    """Rank-4 LoRA matrices for the toy UNet's attention projections, A and B random and non-zero (peft's own
    initialisation sets B to zero, which would change nothing); `width_factor` 2 makes them fit no layer."""
    generator = torch.Generator().manual_seed(seed)
    layers = {}
    for name, module in unet.named_modules():
        if name.endswith(ATTENTION_PROJECTIONS):
            layers[f"{name}.lora_A.weight"] = 0.1 * torch.randn(rank, module.in_features * width_factor,
                                                                generator=generator)
            layers[f"{name}.lora_B.weight"] = 0.1 * torch.randn(module.out_features, rank, generator=generator)
    return layers


def save_lora(folder: Path, name: str, layers: dict[str, torch.Tensor]) -> Path:
    """A LoRA file in diffusers' layout (`unet.<module>.lora_A.weight`), as diffusers' trainers save it."""
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers, weight_name=name)
    return folder / name


@pytest.fixture(scope="module")
def loras(tmp_path_factory, toy_model) -> Path:
    """A folder of LoRA files made for the toy model, and some that do not fit it."""
    folder = tmp_path_factory.mktemp("loras")
    unet = toy_model.pipe.unet
    save_lora(folder, "style.safetensors", lora_layers(unet))
    save_lora(folder, "other.safetensors", lora_layers(unet, seed=1))
    save_lora(folder, "wide.safetensors", lora_layers(unet, width_factor=2))  # same layers, other widths
    # The toy's layers plus a level the toy does not have, as a LoRA for a deeper UNet of the same family holds.
    deeper = {**lora_layers(unet), **{key.replace("down_blocks.1.", "down_blocks.3."): value
                                      for key, value in lora_layers(unet, seed=2).items() if "down_blocks.1." in key}}
    save_lora(folder, "deeper.safetensors", deeper)
    # Another family: a FLUX-style transformer LoRA, which names no layer of a UNet.
    save_file({"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": torch.ones(4, 32),
               "transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight": torch.ones(32, 4)},
              folder / "flux_style.safetensors")
    return folder


@pytest.fixture
def run(compose_config, toy_model):
    def _run(*overrides: str) -> bytes:
        return png_bytes(run_trial(prepare_trial(compose_config(*SMALL, *overrides)), toy_model).output)

    return _run


def mean_distance(first: bytes, second: bytes) -> float:
    pixels = [np.asarray(Image.open(io.BytesIO(data))).astype(float) for data in (first, second)]
    return float(np.abs(pixels[0] - pixels[1]).mean())


def no_adapters(toy_model) -> bool:
    return not any(toy_model.pipe.get_list_adapters().values())


def test_scale_zero_gives_the_plain_models_bytes_and_larger_scales_change_more(run, loras, toy_model):
    style = loras / "style.safetensors"
    plain = run()
    at_zero = run(f"lora=[{style}:0]")
    weak = run(f"lora=[{style}:0.2]")
    strong = run(f"lora=[{style}:0.8]")
    assert at_zero == plain
    assert 0 < mean_distance(plain, weak) < mean_distance(plain, strong)
    # Another LoRA replaces the first (same file, two scales, then another file): the adapter set is the trial's.
    assert run(f"lora=[{loras / 'other.safetensors'}:0.8]") not in (plain, strong)
    assert run(f"lora=[{style}:0.8]") == strong
    # The next trial without LoRA gets the model's own layers back, in the same loaded model.
    assert run() == plain
    assert no_adapters(toy_model)


def test_two_loras_apply_together(run, loras):
    style, other = loras / "style.safetensors", loras / "other.safetensors"
    both = run(f"lora=[{style}:0.8,{other}:0.8]")
    assert both not in (run(f"lora=[{style}:0.8]"), run(f"lora=[{other}:0.8]"))
    assert run(f"lora=[{style}:0.8,{other}:0]") == run(f"lora=[{style}:0.8]")


@pytest.mark.parametrize(("name", "message"), [
    ("wide.safetensors", r"^lora: wide\.safetensors does not fit this Stable Diffusion 1\.x/2\.x model: Error"),
    ("deeper.safetensors", r"^lora: deeper\.safetensors matches 48 of its 64 layers in this Stable Diffusion"),
    ("flux_style.safetensors", r"^lora: flux_style\.safetensors matches 0 of its 1 layers in this Stable Diffusion"),
])
def test_a_lora_for_other_layers_fails_in_one_line_and_leaves_the_model_plain(run, loras, toy_model, compose_config,
                                                                               name, message):
    plain = run()
    trial = prepare_trial(compose_config(*SMALL, f"lora=[{loras / name}:1]"))  # its file and header are fine
    with pytest.raises(ConfigError, match=message) as failed:
        run_trial(trial, toy_model)
    assert "\n" not in str(failed.value)
    assert no_adapters(toy_model)
    assert run() == plain


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(("entry", "message"), [
    (lambda d: d / "missing.safetensors", r"^lora: '.*missing\.safetensors' does not exist; expected a LoRA"),
    (lambda d: write(d / "style.ckpt", b"pickle"), r"^lora: '.*style\.ckpt' is not a \.safetensors file; allowed: "
                                                   r"PATH\.safetensors or PATH\.safetensors:SCALE \(pickle"),
    (lambda d: write(d / "junk.safetensors", b"not a safetensors file"),
     r"^lora: '.*junk\.safetensors' is not a valid \.safetensors file$"),
    (lambda d: d / "model.safetensors", r"^lora: '.*model\.safetensors' holds no LoRA layers .*not a model checkpoint"),
    (lambda d: f"{d / 'style.safetensors'}:nan", r"^lora: '.*style\.safetensors:nan' has the scale nan; allowed a "
                                                 r"finite number"),
    (lambda d: f"{d / 'style.safetensors'}:x", r"^lora: '.*style\.safetensors:x' is not a \.safetensors file"),
    (lambda d: f"{d / 'style.safetensors'}:0.5,{d / 'copy.safetensors'}:1",
     r"^lora: copy\.safetensors holds the same weights as style\.safetensors, listed before"),
])
def test_bad_lora_entries_fail_in_one_line_before_any_model_loads(compose_config, loras, tmp_path, entry, message):
    folder = tmp_path / "loras"
    shutil.copytree(loras, folder)
    shutil.copy(folder / "style.safetensors", folder / "copy.safetensors")
    save_file({"conv_in.weight": torch.ones(4, 4)}, folder / "model.safetensors")
    with pytest.raises(ConfigError, match=message) as failed:
        prepare_trial(compose_config(*SMALL, f"lora=[{entry(folder)}]"))
    assert "\n" not in str(failed.value)


def test_the_lora_file_and_scale_are_the_identity_only_when_used(compose_config, loras, tmp_path):
    def spec(*overrides):
        return prepare_trial(compose_config(*SMALL, *overrides)).spec

    style = loras / "style.safetensors"
    plain, at_zero, at_half = spec(), spec(f"lora=[{style}:0]"), spec(f"lora=[{style}:0.5]")
    assert spec("lora=[]").config_hash == plain.config_hash  # unused, the key leaves every trial's hash as it was
    assert len({plain.config_hash, at_zero.config_hash, at_half.config_hash}) == 3
    # The file's bytes name it, not its path; an entry without a scale takes lora_scale.
    moved = shutil.copy(style, tmp_path / "renamed.safetensors")
    assert spec(f"lora=[{moved}:0.5]").config_hash == at_half.config_hash
    assert spec(f"lora=[{style}]", "lora_scale=0.5").config_hash == at_half.config_hash
    assert spec(f"lora=[{loras / 'other.safetensors'}:0.5]").config_hash != at_half.config_hash
    assert at_half.params()["lora"] == "style.safetensors:0.5" and plain.params()["lora"] == ""
    assert at_half.lora[0].sha256 == hashlib.sha256(style.read_bytes()).hexdigest()


def test_trials_with_other_lora_settings_never_share_a_batch(compose_config, loras):
    def key(*overrides):
        return batch_key(prepare_trial(compose_config(*SMALL, *overrides)))

    style = loras / "style.safetensors"
    assert key(f"lora=[{style}:0.5]", "seed=1") == key(f"lora=[{style}:0.5]", "seed=2")
    assert key(f"lora=[{style}:0.5]") != key(f"lora=[{style}:0.8]")
    assert key(f"lora=[{style}:0.5]") != key()


def test_a_sweep_over_lora_scales_logs_a_run_per_scale(sweeplab_cli, loras, tmp_path):
    style = loras / "style.safetensors"
    done = sweeplab_cli("-m", *TINY, "steps=4", "strength=0.5", "hydra.launcher.batch_size=4",
                        f"lora=[],[{style}:0],[{style}:0.8],[missing.safetensors:1]")
    assert done.returncode == 1, done.stderr[-3000:]
    assert "4 trials: 3 finished, 1 failed" in done.stderr
    # One line before any model loads (Hydra shows the swept list value with its colon escaped).
    assert ("lora=[missing.safetensors\\:1]]: lora: 'missing.safetensors' does not exist; expected a LoRA "
            ".safetensors file\n") in done.stderr
    loads = [line for line in (done.stdout + done.stderr).splitlines() if "loaded on cpu" in line]
    assert len(loads) == 1, loads  # LoRA files come and go on the loaded model
    runs = {r.data.params.get("lora"): r for r in children(tmp_path) if r.info.status == "FINISHED"}
    assert set(runs) == {"", "style.safetensors:0", "style.safetensors:0.8"}
    assert len({r.data.tags["sweeplab.config_hash"] for r in runs.values()}) == 3
    assert {r.data.tags["sweeplab.batch_size"] for r in runs.values()} == {"1"}  # they differ in LoRA: never batched
    outputs = {lora: r.data.tags["sweeplab.output_sha256"] for lora, r in runs.items()}
    assert outputs[""] == outputs["style.safetensors:0"] != outputs["style.safetensors:0.8"]
    sha256 = hashlib.sha256(style.read_bytes()).hexdigest()
    assert runs["style.safetensors:0.8"].data.tags["sweeplab.lora_sha256"] == f"style.safetensors:{sha256}"
    assert "sweeplab.lora_sha256" not in runs[""].data.tags
    assert len({r.info.run_name for r in runs.values()}) == 3
    failed = [r for r in children(tmp_path) if r.info.status == "FAILED"]
    assert [r.data.tags["sweeplab.error"].split(";")[0] for r in failed] == [
        "lora: 'missing.safetensors' does not exist"]
