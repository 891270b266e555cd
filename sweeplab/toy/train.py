"""Train the toy model so that it draws what the prompt says.

    python -m sweeplab.toy.train --workdir /tmp/toy-train            # full run, resumable
    python -m sweeplab.toy.train --workdir /tmp/toy-train --resume   # continue from the checkpoint

Stage 1 trains the 8x VAE on finished scenes and sketches at several scales; stage 2 trains
the UNet and the text encoder on pre-encoded latents of finished scenes, dropping captions
now and then so that classifier-free guidance works. The UNet sees each scene at several
sizes (128 to 384 px, a constant number of latent pixels per batch, like SDXL's buckets), so
a scene is drawn at the scale it is asked for instead of being tiled at a larger size.
The defaults are the shipped weights' recipe: the UNet predicts v (as SD 2.x does), which weighs the
noisiest steps, the only ones where the caption alone decides the colours, up to 215 times more than
the epsilon loss does (the epsilon loss weighs the x0 error by the SNR, 0.005 at t=999); a repair
stage then trains only low-noise timesteps, with the text encoder frozen, for the denoising that
low-strength img2img runs take. A full run took 85 minutes on a 2-core CPU (training.json).
`--prediction-type epsilon --repair-steps 0 --text-lr 3e-4 --unet-steps 5500` is the SD 1.x-style
recipe of trained-v1, the first trained model; `--loss-weight-cap C` weighs each sample's error
by min(1 / alpha_bar, C) in epsilon terms. See reports/toy-model/loss-weighting for what these did.
Everything is seeded: the same seed gives the same dataset and the same sequence of batches.
The result is written in diffusers format with a fitted latent->RGB map (by default into the
folder the project ships).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import shutil
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler
from diffusers.training_utils import EMAModel
from tqdm import tqdm

from sweeplab.toy.build import SD15_SCHEDULER_CONFIG, SHIPPED_DIR, build_toy_pipeline, to_tensor, write_latent_rgb
from sweeplab.toy.scenes import caption, random_scene, render
from sweeplab.toy.tokenizer import write_vocab


PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass
class TrainConfig:
    seed: int = 0
    scenes: int = 2400  # finished scenes (and their sketches) rendered once into the dataset
    image_size: int = 384  # rendering size; smaller training sizes are downsampled from it
    vae_crop: int = 64
    vae_steps: int = 2600
    vae_batch: int = 16
    vae_whole_steps: int = 600  # the last steps see whole scenes at the UNet's sizes, not crops
    vae_whole_pixels: int = 147456  # pixels per whole-scene batch: one 384 px scene, nine at 128 px
    vae_lr: float = 1e-3
    unet_sizes: str = "128,256,384"  # image sizes the UNet trains at, one per batch
    unet_latent_pixels: int = 18432  # latent pixels per batch: 72 scenes at 128 px, 8 at 384 px
    unet_steps: int = 4000
    unet_lr: float = 5e-4
    text_lr: float = 1e-3  # 3e-4 bound colours less (reports/toy-model/loss-weighting)
    # > 0: each sample's error, in epsilon terms whatever the UNet predicts, counts min(1 / alpha_bar, cap)
    # times: once at low noise, as in the plain epsilon loss, and up to `cap` times at the noisiest steps.
    loss_weight_cap: float = 0.0
    # What the UNet predicts: "epsilon" (SD 1.x) or "v_prediction" (SD 2.x). At the noisiest steps an epsilon
    # error reaches the image multiplied by sigma (up to 14.6), a v error unscaled. The plain v loss is the
    # epsilon loss weighted by 1 / alpha_bar: the noisiest steps, where only the caption knows the colours,
    # weigh up to 215 times more, and the low-noise steps as much as before.
    prediction_type: str = "v_prediction"
    noise_offset: float = 0.05  # lets the model change an image's mean colour (dark or bright backgrounds)
    caption_dropout: float = 0.15
    # The repair stage trains only low-noise timesteps, with the text encoder frozen, to sharpen the denoising
    # that low-strength img2img runs take.
    repair_steps: int = 1500
    repair_max_timestep: int = 300
    repair_lr: float = 4e-4
    # A trained pipeline folder whose VAE is reused instead of running stage 1 (the UNet stages are unchanged).
    vae_from: str = ""
    # > 0: the weights written are an exponential moving average of the UNet's and the text encoder's over the
    # denoising stages (diffusers' EMAModel, whose warm-up keeps the average to about the last tenth of the steps)
    # instead of the last step's. Off by default: at 0.999 the shipped recipe's average drew 75.0% of colours
    # right against the last step's 82.0% (256 cases); the repair stage drifts, and the average lags behind it.
    ema_decay: float = 0.0
    checkpoint_every: int = 250
    device: str = "cuda" if torch.cuda.is_available() else "cpu"

    def __post_init__(self):
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type: {self.prediction_type!r} is not one of {', '.join(PREDICTION_TYPES)}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay: {self.ema_decay} is outside [0, 1); 0 turns the average off")


def build_dataset(config: TrainConfig, folder: Path) -> dict:
    """Render scenes, sketches and captions once; cached in the workdir as dataset.npz."""
    path = folder / "dataset.npz"
    if path.exists():
        data = np.load(path)
        return {"photos": data["photos"], "sketches": data["sketches"], "captions": list(data["captions"])}
    rng = random.Random(config.seed)
    scenes, captions = [], []
    for _ in range(config.scenes):  # one generator draws each scene, then its caption, as it always did
        scenes.append(random_scene(rng))
        captions.append(caption(scenes[-1], rng))
    # Rendering is pure Python drawing, seeded by each scene: one process per core (2400 scenes took 400 s on
    # one core of a 2-core machine; a GPU machine has 16 cores to spare).
    with multiprocessing.get_context("fork").Pool(len(os.sched_getaffinity(0))) as pool:
        pairs = list(tqdm(pool.imap(partial(_render_pair, size=config.image_size), scenes, chunksize=8),
                          total=len(scenes), desc="rendering scenes"))
    data = {"photos": np.stack([photo for photo, _ in pairs]), "sketches": np.stack([sketch for _, sketch in pairs]),
            "captions": np.array(captions)}
    np.savez(path, **data)
    return {**data, "captions": captions}


def _render_pair(scene, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A scene as a finished picture and as its sketch, the training pair."""
    return np.asarray(render(scene, size)), np.asarray(render(scene, size, sketch=True))


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def unet_sizes(config: TrainConfig) -> list[int]:
    return [int(size) for size in config.unet_sizes.split(",")]


STAGES = ("vae", "unet", "repair")  # in the order they run


class Checkpoint:
    """Models, optimiser and step in one file, so a stopped run resumes where it was.

    Batches after a resume are drawn from generators seeded by the step, so a resumed run is
    reproducible, though not bit-identical to one that never stopped.
    """

    def __init__(self, folder: Path):
        self.path = folder / "checkpoint.pt"

    def save(self, stage: str, step: int, modules: dict, optimizer) -> None:
        state = {
            "stage": stage, "step": step, "optimizer": optimizer.state_dict(),
            "modules": {name: module.state_dict() for name, module in modules.items()},
        }
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.path)

    def load(self) -> dict | None:
        return torch.load(self.path, weights_only=False, map_location="cpu") if self.path.exists() else None


def _pin_posterior(vae) -> None:
    """Keep the VAE posterior nearly deterministic, like SD's (log-variance channels fixed at -20)."""
    latent = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[latent:] = 0.0
        vae.quant_conv.bias[latent:] = -20.0


def vae_batch(images: np.ndarray, config: TrainConfig, generator, whole: bool) -> torch.Tensor:
    """Crops of scenes downsampled by a random factor up to 3, like the UNet's smaller sizes; or whole
    scenes at a UNet size, since GroupNorm and attention statistics span the whole image."""
    if whole:
        size = int(generator.choice(unet_sizes(config)))
        picks = generator.integers(0, len(images), max(1, config.vae_whole_pixels // size**2))
        return resize(to_tensor(images[picks]), size).to(config.device)
    picks = generator.integers(0, len(images), config.vae_batch)
    region = min(config.image_size, int(config.vae_crop * generator.uniform(1.0, 3.0)))
    x, y = generator.integers(0, config.image_size - region + 1, 2)
    return resize(to_tensor(images[picks, y : y + region, x : x + region]), config.vae_crop).to(config.device)


def train_vae(pipe, data: dict, config: TrainConfig, checkpoint: Checkpoint, state: dict | None) -> None:
    vae = pipe.vae.train()
    images = np.concatenate([data["photos"], data["sketches"]])
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    start = 0
    if state and state["stage"] == "vae":
        vae.load_state_dict(state["modules"]["vae"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
    generator = np.random.default_rng(config.seed + 1 + start)
    progress = tqdm(range(start, config.vae_steps), desc="VAE", initial=start, total=config.vae_steps)
    for step in progress:
        batch = vae_batch(images, config, generator, whole=step >= config.vae_steps - config.vae_whole_steps)
        lr = config.vae_lr * min(1.0, (step + 1) / 200) * (0.1 + 0.9 * (1 - step / config.vae_steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        recon = vae.decode(vae.encode(batch).latent_dist.mode()).sample
        loss = F.mse_loss(recon, batch) + 0.5 * F.l1_loss(recon, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        _pin_posterior(vae)
        progress.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % config.checkpoint_every == 0:
            checkpoint.save("vae", step + 1, {"vae": vae}, optimizer)
    checkpoint.save("vae", config.vae_steps, {"vae": vae}, optimizer)
    vae.eval()


@torch.no_grad()
def encode_latents(vae, photos: np.ndarray, sizes: list[int], batch: int = 16) -> tuple[dict, float]:
    """All training latents once, at every training size (UNet training never runs the VAE),
    and the scaling factor that gives them unit standard deviation."""
    latents = {}
    for size in sizes:
        latents[size] = torch.cat([
            vae.encode(resize(to_tensor(photos[i : i + batch]), size).to(vae.device)).latent_dist.mode()
            for i in tqdm(range(0, len(photos), batch), desc=f"encoding latents at {size} px")
        ])
    scaling = float(f"{1.0 / latents[max(sizes)].std().item():.4g}")
    return {size: value * scaling for size, value in latents.items()}, scaling


def cached_latents(vae, photos: np.ndarray, sizes: list[int], path: Path) -> tuple[dict, float]:
    """`encode_latents`, kept in the workdir so that a resumed UNet stage does not encode again."""
    if path.exists():
        cached = torch.load(path, map_location="cpu")
        if sorted(cached["latents"]) == sorted(sizes):
            return cached["latents"], cached["scaling"]
    latents, scaling = encode_latents(vae, photos, sizes)
    torch.save({"latents": latents, "scaling": scaling}, path)
    return latents, scaling


@dataclass(frozen=True)
class DenoisingStage:
    """One stage of UNet and text-encoder training, with its own optimiser, schedule and timesteps."""

    name: str  # the checkpoint's stage name
    steps: int
    unet_lr: float
    text_lr: float
    warmup: int
    seed: int
    max_timestep: int = 1000  # timesteps are drawn from [0, max_timestep)
    weight_cap: float = 0.0  # > 0: each sample's error counts min(1 / alpha_bar, cap) times, in epsilon terms


def denoising_stages(config: TrainConfig) -> list[DenoisingStage]:
    """The main stage over all timesteps, then the low-noise repair stage."""
    return [
        DenoisingStage("unet", config.unet_steps, config.unet_lr, config.text_lr, warmup=300, seed=config.seed + 2,
                       weight_cap=config.loss_weight_cap),
        DenoisingStage("repair", config.repair_steps, config.repair_lr, 0.0, warmup=50, seed=config.seed + 4,
                       max_timestep=config.repair_max_timestep),
    ]


def denoiser_parameters(pipe) -> list[torch.nn.Parameter]:
    """The UNet's parameters, then the text encoder's: what is clipped, and averaged in this order."""
    return [*pipe.unet.parameters(), *pipe.text_encoder.parameters()]


def train_denoiser(pipe, latents: dict, captions: list[str], config: TrainConfig, stage: DenoisingStage,
                   checkpoint: Checkpoint, state: dict | None, average: EMAModel | None) -> None:
    """Denoising training with caption dropout, updating the weight average after every step."""
    unet, text_encoder, tokenizer = pipe.unet.train(), pipe.text_encoder.train(), pipe.tokenizer
    text_encoder.requires_grad_(stage.text_lr > 0)
    noise_schedule = DDPMScheduler.from_config(SD15_SCHEDULER_CONFIG)
    optimizer = torch.optim.AdamW([
        {"params": unet.parameters(), "lr": stage.unet_lr},
        {"params": text_encoder.parameters(), "lr": stage.text_lr},
    ], weight_decay=1e-2)
    start = 0
    if state and state["stage"] == stage.name:
        unet.load_state_dict(state["modules"]["unet"])
        text_encoder.load_state_dict(state["modules"]["text_encoder"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
    modules = {"unet": unet, "text_encoder": text_encoder, **({"average": average} if average else {})}
    parameters = denoiser_parameters(pipe)
    sizes = sorted(latents)
    tokens = tokenizer(captions + [""], padding="max_length", truncation=True, return_tensors="pt").input_ids
    tokens = tokens.to(config.device)
    empty = len(captions)
    weights = None  # per timestep; None: the plain loss
    if stage.weight_cap > 0:
        alphas_cumprod = noise_schedule.alphas_cumprod
        weights = (1 / alphas_cumprod).clamp(max=stage.weight_cap)
        if config.prediction_type == "v_prediction":  # a v error is the epsilon error / sqrt(alpha_bar)
            weights = weights * alphas_cumprod
        weights = weights.to(config.device)
    generator = np.random.default_rng(stage.seed + start)
    torch_generator = torch.Generator().manual_seed(stage.seed + 1 + start)
    progress = tqdm(range(start, stage.steps), desc=stage.name, initial=start, total=stage.steps)
    for step in progress:
        bucket = latents[sizes[generator.integers(len(sizes))]]
        batch = max(1, config.unet_latent_pixels // (bucket.shape[-1] * bucket.shape[-2]))
        picks = generator.integers(0, len(bucket), batch)
        dropped = generator.random(batch) < config.caption_dropout
        ids = tokens[torch.from_numpy(np.where(dropped, empty, picks)).to(config.device)]
        clean = bucket[torch.from_numpy(picks)].to(config.device)
        # CPU draws, so a run is the same on any device.
        noise = torch.randn(clean.shape, generator=torch_generator)
        noise += config.noise_offset * torch.randn(clean.shape[:2] + (1, 1), generator=torch_generator)
        noise = noise.to(config.device)
        timesteps = torch.randint(0, stage.max_timestep, (len(picks),), generator=torch_generator).to(config.device)
        noisy = noise_schedule.add_noise(clean, noise, timesteps)
        warmup = min(1.0, (step + 1) / stage.warmup)
        decay = 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * step / stage.steps))
        optimizer.param_groups[0]["lr"] = stage.unet_lr * warmup * decay
        optimizer.param_groups[1]["lr"] = stage.text_lr * warmup * decay
        prediction = unet(noisy, timesteps, encoder_hidden_states=text_encoder(ids)[0]).sample
        target = noise if config.prediction_type == "epsilon" else noise_schedule.get_velocity(clean, noise, timesteps)
        errors = F.mse_loss(prediction, target, reduction="none").mean((1, 2, 3))
        loss = errors.mean() if weights is None else (errors * weights[timesteps]).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        if average:
            average.step(parameters)
        progress.set_postfix(loss=f"{loss.item():.4f}", size=bucket.shape[-1] * 8)
        if (step + 1) % config.checkpoint_every == 0:
            checkpoint.save(stage.name, step + 1, modules, optimizer)
    checkpoint.save(stage.name, stage.steps, modules, optimizer)
    unet.eval()
    text_encoder.eval()


def train(config: TrainConfig, workdir: Path, out: Path, resume: bool) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    checkpoint = Checkpoint(workdir)
    state = checkpoint.load() if resume else None
    resumed_from = f"{state['stage']} step {state['step']}" if state else None
    started = time.perf_counter()
    seconds = {}  # per stage of this run, for the record of where the time goes

    def lap(name: str) -> None:
        seconds[name] = round(time.perf_counter() - started - sum(seconds.values()))

    data = build_dataset(config, workdir)
    pipe = build_toy_pipeline(config.seed).to(config.device)
    lap("dataset")
    if config.vae_from:  # the whole model, not only its weights: its GroupNorm groups may differ from the build's
        pipe.register_modules(vae=AutoencoderKL.from_pretrained(config.vae_from, subfolder="vae").to(config.device))
        if state is None:
            keep_vae(pipe.vae, workdir)
    elif state is None or state["stage"] == "vae":
        train_vae(pipe, data, config, checkpoint, state)
        state = None
        keep_vae(pipe.vae, workdir)
    else:
        pipe.vae.load_state_dict(torch.load(workdir / "vae.pt", map_location=config.device))
    lap("vae")
    latents, scaling = cached_latents(pipe.vae, data["photos"], unet_sizes(config), workdir / "latents.pt")
    pipe.vae.register_to_config(scaling_factor=scaling)
    lap("latents")
    denoiser = denoiser_parameters(pipe)
    average = EMAModel(denoiser, decay=config.ema_decay, foreach=True) if config.ema_decay > 0 else None
    if average and state:  # a denoising stage's checkpoint (a VAE one was cleared above)
        average.load_state_dict(state["modules"]["average"])
    for stage in denoising_stages(config):
        if stage.steps == 0 or state and STAGES.index(state["stage"]) > STAGES.index(stage.name):
            continue  # off, or finished before the resume (its weights come with the later stage's checkpoint)
        train_denoiser(pipe, latents, data["captions"], config, stage, checkpoint,
                       state if state and state["stage"] == stage.name else None, average)
        lap(stage.name)
    if average:
        average.copy_to(denoiser)
    pipe.to("cpu")
    pipe.scheduler.register_to_config(prediction_type=config.prediction_type)
    report = save_trained(pipe, out)
    report.update(config=asdict(config), seconds=round(time.perf_counter() - started), stage_seconds=seconds,
                  resumed_from=resumed_from, machine=machine_description(config.device))
    (out / "training.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    return report


def keep_vae(vae, workdir: Path) -> None:
    """The VAE the UNet stages encode with, kept for resumes; latents of any earlier VAE are stale."""
    torch.save(vae.state_dict(), workdir / "vae.pt")
    (workdir / "latents.pt").unlink(missing_ok=True)


def machine_description(device: str) -> str:
    """What the training time was measured on: the CPU model and threads, or the GPU."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        lines = cpuinfo.read_text().splitlines()
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return f"{cpu}, {torch.get_num_threads()} threads"


def save_trained(pipe, out: Path) -> dict:
    """Write the pipeline (safetensors, plain vocab files) and its fitted latent->RGB map."""
    if out.exists():
        shutil.rmtree(out)
    pipe.save_pretrained(out, safe_serialization=True)
    # transformers 5 saves only tokenizer.json; vocab.json/merges.txt let transformers 4 load it too.
    write_vocab(out / "tokenizer")
    fit = write_latent_rgb(out, pipe.vae)
    weights = sum(p.stat().st_size for p in out.rglob("*.safetensors"))
    return {"weights_bytes": weights, "latent_rgb_residual_rms": round(fit.residual_rms, 6)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="dataset cache and checkpoints")
    parser.add_argument("--out", type=Path, default=SHIPPED_DIR, help="where the trained pipeline goes")
    parser.add_argument("--resume", action="store_true", help="continue from workdir/checkpoint.pt")
    for name, value in asdict(TrainConfig()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args()
    try:
        config = TrainConfig(**{name: getattr(args, name) for name in asdict(TrainConfig())})
    except ValueError as err:
        parser.error(str(err))
    report = train(config, args.workdir, args.out, args.resume)
    print(json.dumps(report, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
