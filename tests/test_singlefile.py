"""Single-file checkpoints: the family read from the header alone, and the toy model written as one
original-layout file that loads offline with the diffusers folder's weights and output bytes."""

from __future__ import annotations

import json
import math
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from safetensors import safe_open

from sweeplab.errors import ConfigError
from sweeplab.models import resolve_model_source
from sweeplab.schema import ModelConfig
from sweeplab.singlefile import SingleFileLayout, single_file_family, single_file_layout
from sweeplab.toy import toy_model_dir

KNOWN = "known: sd (SD 1.x/2.x), sdxl (SDXL base and refiner), sd3 (SD 3 and 3.5), flux (FLUX.1 dev and schnell)"
SD_CONV_IN = {"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}
# Key names and shapes of the real checkpoints (diffusers' CHECKPOINT_KEY_NAMES name the same keys), a few each
LAYOUTS = {
    "sd15": ("sd", "v1", {**SD_CONV_IN,
                          "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
                          "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": (77, 768)}),
    "sd21": ("sd", "v2", {**SD_CONV_IN,
                          "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
                          "cond_stage_model.model.token_embedding.weight": (49408, 1024)}),
    "sd15-inpainting": ("sd", "inpainting", {"model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3)}),
    "sdxl-base": ("sdxl", "xl_base", {
        **SD_CONV_IN,
        "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight": (77, 768),
        "conditioner.embedders.1.model.positional_embedding": (77, 1280),
        "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": (1280,)}),
    "sdxl-refiner": ("sdxl", "xl_refiner", {
        "model.diffusion_model.input_blocks.0.0.weight": (384, 4, 3, 3),
        "conditioner.embedders.0.model.text_projection": (1280, 1280),
        "conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias": (1280,)}),
    "sd3-medium": ("sd3", "sd3", {
        "model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias": (9216,),
        "model.diffusion_model.pos_embed": (1, 36864, 1536)}),
    "sd35-large": ("sd3", "sd35_large", {
        "model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias": (14592,),
        "model.diffusion_model.joint_blocks.37.x_block.mlp.fc1.weight": (9728, 2432)}),
    "flux1-dev": ("flux", "flux-dev", {  # Black Forest Labs' own file: no model.diffusion_model. prefix
        "double_blocks.0.img_attn.norm.key_norm.scale": (128,), "guidance_in.in_layer.bias": (3072,),
        "img_in.weight": (3072, 64)}),
    "flux1-schnell": ("flux", "flux-schnell", {
        "model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale": (128,),
        "model.diffusion_model.img_in.weight": (3072, 64)}),
}
UNKNOWN_LAYOUTS = {
    "diffusers-unet": ("no Stable Diffusion, SDXL, SD3 or FLUX keys", {
        "conv_in.weight": (320, 4, 3, 3), "down_blocks.0.resnets.0.conv1.weight": (320, 320, 3, 3)}),
    "flux1-fill": ("diffusers reads it as 'flux-fill'", {
        "double_blocks.0.img_attn.norm.key_norm.scale": (128,), "guidance_in.in_layer.bias": (3072,),
        "img_in.weight": (3072, 384)}),
    "sd3-odd-size": ("diffusers cannot place its keys and shapes", {
        "model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias": (9216,),
        "model.diffusion_model.pos_embed": (1, 4096, 1536)}),
    "flux2": ("diffusers reads it as 'flux-2-dev'", {
        "model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale": (128,),
        "model.diffusion_model.single_stream_modulation.lin.weight": (18432, 3072)}),
}


def write_header_only(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    """A valid .safetensors file of float16 zeros at real sizes, its data never written: the file is extended
    sparsely, so a 100 MB tensor costs no disk and any tensor load would read zeros, slowly."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 2 * math.prod(shape)
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)) + encoded)
        handle.truncate(8 + len(encoded) + offset)
    return path


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_family_and_layout_are_read_from_the_header(tmp_path, name):
    family, model_type, shapes = LAYOUTS[name]
    path = write_header_only(tmp_path / f"{name}.safetensors", shapes)
    with safe_open(str(path), "pt") as opened:  # a file safetensors itself accepts
        assert {key: tuple(opened.get_slice(key).get_shape()) for key in opened.keys()} == shapes
    single_file_layout(path)  # the first call imports diffusers' loaders
    started = time.perf_counter()
    layout = single_file_layout(path)
    print(f"{name}: {path.stat().st_size / 2**20:.0f} MiB file classified in "
          f"{(time.perf_counter() - started) * 1000:.1f} ms")
    assert layout == SingleFileLayout(family, model_type)
    assert single_file_family(str(path)) == family
    source = resolve_model_source(ModelConfig(name="mine", path=str(path)))
    assert (source.kind, source.location) == ("single_file", str(path))


@pytest.mark.parametrize("name", sorted(UNKNOWN_LAYOUTS))
def test_a_layout_of_no_known_family_is_one_line_naming_the_file_and_the_families(tmp_path, name):
    seen, shapes = UNKNOWN_LAYOUTS[name]
    path = write_header_only(tmp_path / f"{name}.safetensors", shapes)
    expected = f"model.path: '{path}' is not a checkpoint of a family sweeplab knows ({seen}); {KNOWN}"
    with pytest.raises(ConfigError) as info:
        single_file_family(path)
    assert str(info.value) == expected
    with pytest.raises(ConfigError) as info:  # before any model loads
        resolve_model_source(ModelConfig(name="mine", path=str(path)))
    assert str(info.value) == expected


def test_sweeplab_refuses_an_unknown_single_file_in_one_line(sweeplab_cli, tmp_path):
    path = write_header_only(tmp_path / "flux2.safetensors", UNKNOWN_LAYOUTS["flux2"][1])
    done = sweeplab_cli(f"model.path={path}", "steps=4")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and "Loading pipeline components" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("sweeplab: error:")]
    assert errors == [f"sweeplab: error: model.path: '{path}' is not a checkpoint of a family sweeplab knows "
                      f"(diffusers reads it as 'flux-2-dev'); {KNOWN}"]


@pytest.fixture(scope="module")
def toy_single_file(tmp_path_factory) -> Path:
    """The toy model as one original-layout file, written by the converter's command line."""
    out = tmp_path_factory.mktemp("single-file") / "toy.safetensors"
    done = subprocess.run([sys.executable, "-m", "sweeplab.toy.singlefile", str(out)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"wrote {out} (")
    return out


def test_the_toy_file_has_the_original_layout_at_the_toys_sizes(toy_single_file):
    assert single_file_layout(toy_single_file) == SingleFileLayout("sd", "v1")
    folder_tensors = sum(len(safe_open(str(file), "pt").keys()) for file in toy_model_dir().rglob("*.safetensors"))
    with safe_open(str(toy_single_file), "pt") as opened:
        shapes = {key: tuple(opened.get_slice(key).get_shape()) for key in opened.keys()}
    assert len(shapes) == folder_tensors
    assert {key.split(".")[0] for key in shapes} == {"model", "first_stage_model", "cond_stage_model"}
    # two UNet levels of two layers: level 0's downsampler closes input block 3, level 0's upsampler follows the
    # attention of output block 2; the VAE's four levels count bottom-up and attend with 1x1 convolutions
    assert shapes["model.diffusion_model.input_blocks.3.0.op.weight"] == (32, 32, 3, 3)
    assert shapes["model.diffusion_model.output_blocks.2.2.conv.weight"] == (64, 64, 3, 3)
    assert shapes["model.diffusion_model.middle_block.1.proj_in.weight"] == (64, 64, 1, 1)
    assert shapes["model.diffusion_model.output_blocks.5.0.skip_connection.weight"] == (32, 64, 1, 1)
    assert shapes["first_stage_model.decoder.up.0.block.1.norm2.weight"] == (32,)
    assert shapes["first_stage_model.encoder.mid.attn_1.q.weight"] == (64, 64, 1, 1)
    assert shapes["cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"] == (77, 32)


def test_a_folder_the_converter_cannot_write_is_one_line(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from sweeplab.toy.singlefile import main

    uneven, text_time = tmp_path / "uneven-levels", tmp_path / "text-time"
    for folder in (uneven, text_time):
        shutil.copytree(toy_model_dir(), folder)
    unet_config = uneven / "unet" / "config.json"
    unet_config.write_text(json.dumps({**json.loads(unet_config.read_text()), "layers_per_block": [2, 1]}))
    unet_weights = text_time / "unet" / "diffusion_pytorch_model.safetensors"  # SDXL's size conditioning
    save_file({**load_file(str(unet_weights)), "add_embedding.linear_1.weight": torch.zeros(64, 8)}, str(unet_weights))
    for folder, error in [
        (tmp_path, f"{tmp_path} lacks unet/config.json or unet/diffusion_pytorch_model.safetensors; expected a "
                   "diffusers SD 1.x pipeline folder with plain safetensors weights"),
        (uneven, "unet layers_per_block [2, 1]: only one count for every block has an original layout"),
        (text_time, "unet weight add_embedding.linear_1.weight has no place in the original layout; expected an "
                    "SD 1.x unet"),
    ]:
        assert main([str(tmp_path / "out.safetensors"), "--folder", str(folder)]) == 2
        assert capsys.readouterr().err == f"sweeplab.toy.singlefile: error: {error}\n"
    assert not (tmp_path / "out.safetensors").exists()


def test_the_toy_file_loads_offline_with_the_folders_weights_and_output_bytes(toy_single_file):
    from diffusers import StableDiffusionImg2ImgPipeline

    from sweeplab.sketches import draw_sketch

    folder = StableDiffusionImg2ImgPipeline.from_pretrained(str(toy_model_dir()))
    single = StableDiffusionImg2ImgPipeline.from_single_file(str(toy_single_file), config=str(toy_model_dir()),
                                                             local_files_only=True)
    for name in ("unet", "vae", "text_encoder"):
        ours, theirs = single.components[name].state_dict(), folder.components[name].state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[key], theirs[key]) for key in theirs), name
    assert dict(single.scheduler.config) == dict(folder.scheduler.config)  # v-prediction, from the folder
    init = draw_sketch("fireplace", 64, 64)
    outputs = [pipe(prompt="fire", image=init, strength=0.75, num_inference_steps=4,
                    generator=torch.Generator().manual_seed(1592514025)).images[0].tobytes()
               for pipe in (single, folder)]
    assert outputs[0] == outputs[1]


def test_sweeplab_runs_the_toy_file_offline_with_the_folders_output_bytes(sweeplab_cli, tmp_path, toy_single_file):
    trial = ["steps=4", "width=64", "height=64", "tracking.log_step_images=false"]
    outputs = {}
    for name, model in [("file", [f"model.path={toy_single_file}", f"model.config={toy_model_dir()}"]),
                        ("folder", [f"model.path={toy_model_dir()}"])]:
        cwd = tmp_path / name
        cwd.mkdir()
        done = sweeplab_cli(*model, *trial, cwd=cwd, env={"HF_HUB_OFFLINE": "1"})
        assert done.returncode == 0, done.stderr[-2000:]
        client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
        (run,) = client.search_runs([client.get_experiment_by_name("sweeplab").experiment_id])
        assert run.data.metrics["steps_taken"] == 3
        outputs[name] = Path(client.download_artifacts(run.info.run_id, "output.png", str(cwd))).read_bytes()
    assert outputs["file"] == outputs["folder"]
