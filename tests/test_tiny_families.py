"""The tiny random-weight pipelines of every family (sweeplab.toy.tiny): hub-like folders that diffusers' own
img2img pipelines load and run on CPU, deterministic to the byte, and what each family's flow-matching
schedulers do in them."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler, FluxImg2ImgPipeline,
                       StableDiffusion3Img2ImgPipeline, StableDiffusionImg2ImgPipeline,
                       StableDiffusionXLImg2ImgPipeline)
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from transformers import AutoTokenizer

from sweeplab.sketches import draw_sketch
from sweeplab.toy.tiny import FAMILIES, build_t5_tokenizer, build_tiny_pipeline, main

SIZE = 32  # px: a multiple of 16, as SD 3 and FLUX need
STEPS, STRENGTH = 4, 0.75
STEPS_TAKEN = int(STEPS * STRENGTH)


@dataclass(frozen=True)
class Family:
    img2img: type[DiffusionPipeline]  # the diffusers class a trial loads the folder with
    hub_class: str  # model_index.json's _class_name, as in the family's real hub folders
    denoiser: str  # the pipeline attribute that denoises
    latent_channels: int
    evals: int  # denoiser evaluations (and callbacks) at STEPS_TAKEN steps with the folder's own scheduler


FAMILY = {  # SD 1.x's PNDM runs PLMS, whose first step evaluates twice
    "sd": Family(StableDiffusionImg2ImgPipeline, "StableDiffusionPipeline", "unet", 4, STEPS_TAKEN + 1),
    "sdxl": Family(StableDiffusionXLImg2ImgPipeline, "StableDiffusionXLPipeline", "unet", 4, STEPS_TAKEN),
    "sd3": Family(StableDiffusion3Img2ImgPipeline, "StableDiffusion3Pipeline", "transformer", 16, STEPS_TAKEN),
    "flux": Family(FluxImg2ImgPipeline, "FluxPipeline", "transformer", 16, STEPS_TAKEN),
}


@dataclass
class Img2ImgRun:
    """What one pipeline call did: its output, the latent it started from, the callback's latents, evaluations."""

    output: np.ndarray
    start_latent: torch.Tensor
    step_latents: list[torch.Tensor]  # one per callback_on_step_end call
    completed_steps: int  # callbacks that end a step by the pipeline's own rule (its progress bar's)
    denoiser_evals: int


def load(folder: Path, family: str) -> DiffusionPipeline:
    pipe = FAMILY[family].img2img.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_img2img(pipe: DiffusionPipeline, family: str, seed: int = 1) -> Img2ImgRun:
    """One call on the fireplace sketch; the start latent is what prepare_latents returns (FLUX's unpacked)."""
    starts: list[torch.Tensor] = []
    prepare = pipe.prepare_latents

    def recording_prepare(*args, **kwargs):
        prepared = prepare(*args, **kwargs)
        starts.append(prepared[0] if isinstance(prepared, tuple) else prepared)  # FLUX: (latents, latent ids)
        return prepared

    step_latents: list[torch.Tensor] = []
    completed: list[bool] = []

    def on_step_end(_pipe, index, _timestep, tensors):
        step_latents.append(tensors["latents"].clone())
        completed.append((index + 1) % pipe.scheduler.order == 0 or index == pipe.num_timesteps - 1)
        return {}

    evals = []
    hook = getattr(pipe, FAMILY[family].denoiser).register_forward_hook(lambda *_: evals.append(1))
    pipe.prepare_latents = recording_prepare
    try:
        output = pipe(prompt="a red circle", image=draw_sketch("fireplace", SIZE, SIZE), strength=STRENGTH,
                      num_inference_steps=STEPS, height=SIZE, width=SIZE, output_type="np",
                      generator=torch.Generator().manual_seed(seed), callback_on_step_end=on_step_end,
                      callback_on_step_end_tensor_inputs=["latents"]).images[0]
    finally:
        hook.remove()
        del pipe.prepare_latents
    start = starts[0]
    if family == "flux":
        start = FluxImg2ImgPipeline._unpack_latents(start, SIZE, SIZE, pipe.vae_scale_factor)
    return Img2ImgRun(output, start, step_latents, sum(completed), len(evals))


@pytest.mark.parametrize("family", FAMILIES)
def test_folder_is_laid_out_like_the_familys_hub_folder(family, tiny_model_dir):
    folder = tiny_model_dir(family)
    index = DiffusionPipeline.load_config(folder)
    assert index["_class_name"] == FAMILY[family].hub_class
    components = [name for name, value in index.items() if isinstance(value, list) and value[0] is not None]
    assert all((folder / name).is_dir() for name in components)
    weights = sorted(folder.rglob("*.safetensors"))
    assert {path.parent.name for path in weights} >= {"vae", FAMILY[family].denoiser, "text_encoder"}
    assert not [path for path in folder.rglob("*") if path.suffix in {".bin", ".pt", ".ckpt", ".pth"}]
    size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
    assert size < 4_000_000, f"{family}: {size} bytes"


@pytest.mark.parametrize("family", FAMILIES)
def test_familys_img2img_pipeline_runs_the_folder_deterministically(family, tiny_model_dir):
    pipe = load(tiny_model_dir(family), family)
    first, again, other_seed = (run_img2img(pipe, family, seed) for seed in (1, 1, 2))

    assert first.output.shape == (SIZE, SIZE, 3)
    assert np.isfinite(first.output).all()
    assert first.output.std() > 0.02, "the output is (nearly) constant"
    assert first.output.tobytes() == again.output.tobytes()
    assert first.output.tobytes() != other_seed.output.tobytes()

    latent_side = SIZE // pipe.vae_scale_factor
    assert first.start_latent.shape == (1, FAMILY[family].latent_channels, latent_side, latent_side)
    assert torch.isfinite(first.start_latent).all()
    assert len(first.step_latents) == FAMILY[family].evals
    assert first.denoiser_evals == FAMILY[family].evals  # classifier-free guidance runs as one batch of two


@pytest.fixture(scope="module")
def rebuilt_in_a_fresh_process(tmp_path_factory) -> dict[str, Path]:
    """Every family built again by the command line, `python -m sweeplab.toy.tiny FAMILY OUT_DIR`, all in one fresh
    interpreter (runpy runs the module as -m does), so the imports are paid once."""
    root = tmp_path_factory.mktemp("tiny-again")
    script = ("import runpy, sys\n"
              f"for family in {list(FAMILIES)!r}:\n"
              f"    sys.argv = ['tiny', family, {str(root)!r} + '/' + family]\n"
              "    runpy.run_module('sweeplab.toy.tiny', run_name='__main__', alter_sys=True)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [str(root / family) for family in FAMILIES]  # each prints its folder
    return {family: root / family for family in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_gives_the_same_bytes_in_another_process(family, tiny_model_dir, rebuilt_in_a_fresh_process,
                                                          tmp_path):
    """Every file equal, weights and configs; a different seed changes every weight file."""
    folder, again = tiny_model_dir(family), rebuilt_in_a_fresh_process[family]
    files = sorted(path.relative_to(folder) for path in folder.rglob("*") if path.is_file())
    assert files == sorted(path.relative_to(again) for path in again.rglob("*") if path.is_file())
    assert [name for name in files if (folder / name).read_bytes() != (again / name).read_bytes()] == []

    other = build_tiny_pipeline(family, tmp_path / "seed1", seed=1)
    weights = [path.relative_to(folder) for path in folder.rglob("*.safetensors")]
    assert [name for name in weights if (folder / name).read_bytes() == (other / name).read_bytes()] == []


def test_building_keeps_the_callers_random_state_and_refuses_a_used_folder(tmp_path):
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    build_tiny_pipeline("flux", tmp_path / "flux")
    assert torch.equal(torch.rand(3), expected)
    with pytest.raises(FileExistsError, match="OUT_DIR: .* is not an empty folder"):
        build_tiny_pipeline("flux", tmp_path / "flux")
    with pytest.raises(ValueError, match="family: unknown family 'sd4'; allowed: sd, sdxl, sd3, flux"):
        build_tiny_pipeline("sd4", tmp_path / "sd4")


@pytest.mark.parametrize(("argv", "message"), [
    (["sd4", "out"], "argument FAMILY: invalid choice: 'sd4' (choose from "),  # the list's quoting varies by Python
    (["flux"], "the following arguments are required: OUT_DIR"),
    (["flux", "USED"], "OUT_DIR: USED exists and is not an empty folder; name a new or empty folder"),
])
def test_command_line_mistakes_are_one_line(argv, message, tmp_path, capsys):
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("someone's file")
    with pytest.raises(SystemExit) as exit_:
        main([str(used) if arg == "USED" else arg for arg in argv])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("python -m sweeplab.toy.tiny: error: " + message.replace("USED", str(used)))
    assert error.count("\n") == 1 and error.endswith("\n")
    assert (used / "keep.txt").read_text() == "someone's file"


def test_t5_tokenizer_is_made_in_code_and_loads_back_the_same(tmp_path):
    tokenizer = build_t5_tokenizer()
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    words = tokenizer("a red circle").input_ids
    assert tokenizer.convert_ids_to_tokens(words) == ["\u2581a", "\u2581red", "\u2581circle", "</s>"]
    assert tokenizer.unk_token_id in tokenizer("🔥").input_ids
    assert tokenizer.decode(tokenizer("Fire, 4k!").input_ids, skip_special_tokens=True) == "Fire, 4k!"
    padded = tokenizer("fire", padding="max_length", max_length=6).input_ids
    assert padded[-3:] == [0, 0, 0]

    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    texts = ["a red circle", "Fire in a fireplace, 4k!", "squirrel eating a burger", "🔥", ""]
    assert [loaded(text).input_ids for text in texts] == [tokenizer(text).input_ids for text in texts]
    assert loaded.model_max_length == tokenizer.model_max_length == 512


# What diffusers 0.42.1 does with the flow-matching schedulers: evaluations and callbacks per steps taken.
# FlowMatchHeun is second order: 2n - 1 evaluations for n steps (the last step, to sigma 0, is Euler's alone), and
# callback_on_step_end runs after each; the pipeline's rule (every order-th call, and the last) tells the steps.
FLOW_MATCH_CASES = [
    ("sd3", FlowMatchEulerDiscreteScheduler, STEPS_TAKEN),
    ("sd3", FlowMatchHeunDiscreteScheduler, 2 * STEPS_TAKEN - 1),
    ("flux", FlowMatchEulerDiscreteScheduler, STEPS_TAKEN),
]


@pytest.mark.parametrize(("family", "scheduler", "evals"), FLOW_MATCH_CASES)
def test_flow_match_scheduler_evaluations_and_callback_latents(family, scheduler, evals, tiny_model_dir):
    pipe = load(tiny_model_dir(family), family)
    pipe.scheduler = scheduler.from_config(pipe.scheduler.config)
    done = run_img2img(pipe, family)
    assert np.isfinite(done.output).all()
    assert done.denoiser_evals == evals
    assert len(done.step_latents) == evals
    assert done.completed_steps == STEPS_TAKEN
    side = SIZE // pipe.vae_scale_factor
    packed = (1, (side // 2) ** 2, 16 * 4)  # FLUX: 2x2 patches of 16 channels, one token each
    expected = packed if family == "flux" else (1, 16, side, side)
    assert {tuple(latent.shape) for latent in done.step_latents} == {expected}


def test_flux_img2img_refuses_flow_match_heun(tiny_model_dir):
    """FluxImg2ImgPipeline always passes sigmas (and mu); FlowMatchHeun's set_timesteps takes neither."""
    pipe = load(tiny_model_dir("flux"), "flux")
    pipe.scheduler = FlowMatchHeunDiscreteScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(ValueError, match="does not support custom sigmas schedules"):
        run_img2img(pipe, "flux")
