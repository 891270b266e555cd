"""The embedded toy model: shipped trained, offline-loadable, SD 1.x-shaped."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sweeplab.render import read_latent_rgb
from sweeplab.toy import SHIPPED_DIR, WORDS, build_tokenizer, build_toy_pipeline, toy_model_dir
from sweeplab.toy import build as toy_build


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return toy_model_dir()


@pytest.fixture
def no_network(monkeypatch):
    """HF_HUB_OFFLINE, plus a socket that refuses to connect: huggingface_hub reads the variable only at
    import, so the socket is what proves that loading never reaches for the network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError("the toy model tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_shipped_folder_layout_and_size(model_dir):
    assert model_dir == SHIPPED_DIR
    names = set(_files(model_dir))
    assert {"model_index.json", "latent_rgb.json", "training.json", "scheduler/scheduler_config.json"} <= names
    assert {"unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
            "text_encoder/model.safetensors", "tokenizer/vocab.json", "tokenizer/merges.txt"} <= names
    assert not any(name.endswith((".bin", ".pt", ".ckpt")) for name in names)
    assert sum(p.stat().st_size for p in model_dir.rglob("*.safetensors")) <= 20 * 1024 * 1024


def test_loads_offline_with_the_built_architecture_and_trained_weights(model_dir, no_network):
    """The shipped weights fit the architecture `build_toy_pipeline` makes, and are not its random ones."""
    from diffusers import AutoPipelineForImage2Image, StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(model_dir)
    auto = AutoPipelineForImage2Image.from_pretrained(model_dir)
    assert type(auto) is StableDiffusionImg2ImgPipeline
    rng_state = torch.get_rng_state()
    built = build_toy_pipeline()
    assert torch.equal(torch.get_rng_state(), rng_state)  # building leaves the caller's RNG alone
    for name in ("unet", "vae", "text_encoder"):
        expected = getattr(built, name).state_dict()
        loaded = getattr(pipe, name).state_dict()
        assert {k: v.shape for k, v in loaded.items()} == {k: v.shape for k, v in expected.items()}, name
        assert not all(torch.equal(loaded[k], expected[k]) for k in expected), name
    assert pipe.safety_checker is None
    scheduler = pipe.scheduler.config
    assert type(pipe.scheduler).__name__ == "PNDMScheduler"
    assert (scheduler.beta_start, scheduler.beta_end, scheduler.beta_schedule) == (0.00085, 0.012, "scaled_linear")
    assert scheduler.skip_prk_steps and scheduler.steps_offset == 1 and scheduler.clip_sample is False


def test_img2img_at_384_uses_48x48x4_latents(model_dir, no_network):
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 384, 384, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        latents = pipe.vae.encode(image).latent_dist.mode() * pipe.vae.config.scaling_factor
    assert latents.shape == (1, 4, 48, 48)
    assert 0.5 < latents.std().item() < 2.0  # scaling_factor makes UNet-space latents roughly unit-variance

    start = Image.fromarray((image[0].permute(1, 2, 0).add(1).mul(127.5)).to(torch.uint8).numpy())
    step_latents = []

    def record(pipeline, step, timestep, tensors):
        step_latents.append(tuple(tensors["latents"].shape))
        return tensors

    result = pipe("a red circle", image=start, strength=0.5, num_inference_steps=4, guidance_scale=7.5,
                  generator=torch.Generator("cpu").manual_seed(1), output_type="np", callback_on_step_end=record)
    assert step_latents and set(step_latents) == {(1, 4, 48, 48)}
    assert result.images.shape == (1, 384, 384, 3)
    assert torch.isfinite(torch.from_numpy(result.images)).all()


def test_encoding_is_nearly_deterministic(model_dir):
    """The VAE posterior is pinned narrow, as in real SD, so sampled latents are not dominated by noise."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(model_dir, subfolder="vae")
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        dist = vae.encode(image).latent_dist
    assert dist.std.max().item() < 1e-3
    assert torch.allclose(dist.sample(torch.Generator().manual_seed(0)), dist.mode(), atol=1e-3)


def test_tokenizer_maps_listed_words_to_single_tokens(model_dir):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(model_dir / "tokenizer")
    ids = tokenizer("a red circle").input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == ["<|startoftext|>", "a</w>", "red</w>", "circle</w>",
                                                    "<|endoftext|>"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id == tokenizer.pad_token_id
    for word in WORDS:
        assert len(tokenizer(word).input_ids) == 3, word
    assert tokenizer.get_vocab() == build_tokenizer().get_vocab()
    config = json.loads((model_dir / "text_encoder" / "config.json").read_text())
    assert config["vocab_size"] == len(tokenizer)
    assert (config["bos_token_id"], config["eos_token_id"]) == (tokenizer.bos_token_id, tokenizer.eos_token_id)


@pytest.mark.parametrize("text", ["", "A Photograph of fire, in THE fireplace!", "zebra xylophone",
                                  "日本語 ünïcödé 🔥\t\n"])
def test_any_text_encodes_and_pads_to_77_like_the_pipeline(text):
    """Unknown words and any unicode fall back to byte-level tokens; nothing is lost but case and spacing."""
    tokenizer = build_tokenizer()
    ids = tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids[0]
    assert ids.shape == (77,)
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.pad_token_id
    assert int(ids.max()) < len(tokenizer)
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    assert "".join(decoded.split()) == "".join(text.lower().split())


def test_long_prompts_are_truncated_to_77_tokens():
    tokenizer = build_tokenizer()
    ids = tokenizer("red circle " * 100, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True).input_ids
    assert len(ids) == 77
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True).split() == ["red", "circle"] * 37 + ["red"]


def test_latent_rgb_is_a_least_squares_fit(model_dir):
    """Refit from the saved VAE: the stored map satisfies the normal equations and beats trivial maps."""
    from diffusers import AutoencoderKL

    factors, bias = map(torch.tensor, read_latent_rgb(model_dir))
    assert factors.shape == (4, 3) and bias.shape == (3,)
    vae = AutoencoderKL.from_pretrained(model_dir, subfolder="vae")
    images = toy_build.fit_images()
    with torch.no_grad():
        latents = vae.encode(images).latent_dist.mode() * vae.config.scaling_factor
    x = latents.permute(0, 2, 3, 1).reshape(-1, 4).double()
    y = F.avg_pool2d(images, 8).permute(0, 2, 3, 1).reshape(-1, 3).double()
    residual = x @ factors.double() + bias.double() - y

    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    gradient = design.T @ residual / len(x)
    assert gradient.abs().max().item() < 1e-4  # normal equations: no direction improves the fit
    assert torch.allclose((x @ factors.double() + bias.double()).mean(0), y.mean(0), atol=1e-4)  # mean colour

    rms = residual.pow(2).mean().sqrt().item()
    assert rms == pytest.approx(json.loads((model_dir / "latent_rgb.json").read_text())["residual_rms"], abs=1e-5)
    assert rms < y.pow(2).mean().sqrt().item()  # zero map
    assert rms < 0.5 * (y - y.mean(0)).pow(2).mean().sqrt().item()  # a trained VAE's latents carry the colour
