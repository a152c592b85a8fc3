"""Train the shapes model from a seed, on 2 CPU cores, resumably.

Two stages, each checkpointed to `work_dir` (atomically; re-running the same command resumes):

1. the VAE (`AutoencoderKLFlux2`), by reconstruction (L1 + MSE, a small KL term) of fresh training
   scenes; then its batch-norm statistics are set to those of the patchified latents;
2. the transformer (`Flux2Transformer2DModel`), by rectified flow matching on the VAE's latents
   (logit-normal sigmas, 10% empty captions for classifier-free guidance), with an EMA of its weights;
3. the VAE's decoder again, with the encoder (and so the latent space the transformer learnt) frozen:
   a short first stage keeps the transformer's wait short, and the decoder's sharpness and exact
   colours, which the verifier checks, are what longer training buys.

Every batch is drawn from `rewards.shapes.world.training_batch(seed, step)` (the training split: no
held-out colour-shape pair or relation appears), so a resumed run sees exactly the batches an
uninterrupted one would. Checkpoints hold only tensors and plain numbers and are read back with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rewards.shapes.world import training_batch

from ..io_utils import atomic_directory
from . import model as shapes_model

# How a stage's batches are seeded: far apart, so the VAE's and the transformer's streams never overlap.
_VAE_STREAM = 1_000_003
_TRANSFORMER_STREAM = 2_000_003
_DECODER_STREAM = 3_000_017


@dataclass
class ShapesTrainingConfig:
    seed: int = 0
    vae_steps: int = 400
    vae_batch_size: int = 16
    vae_learning_rate: float = 1e-3
    kl_weight: float = 1e-6
    transformer_steps: int = 14000
    batch_size: int = 32
    learning_rate: float = 6e-4
    warmup_steps: int = 200
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    decoder_steps: int = 1500
    decoder_learning_rate: float = 5e-4
    checkpoint_every: int = 100


def scene_pixels(scenes) -> torch.Tensor:
    """Rendered scenes as a float tensor [N, 3, H, W] in [-1, 1] (the VAE's input range)."""
    array = np.stack([np.asarray(scene.render()) for scene in scenes])
    return torch.from_numpy(array).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _save_state(path: Path, state: dict) -> None:
    temporary = path.with_name(path.name + ".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def _load_state(path: Path) -> dict | None:
    return torch.load(path, weights_only=True) if path.is_file() else None


def _resume(state_path: Path, model, optimizer, stage: str) -> tuple[int, dict | None]:
    """Load a stage's checkpoint into `model` and `optimizer`; returns (step reached, the whole state or None)."""
    state = _load_state(state_path)
    if state is None:
        return 0, None
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    _log(f"{stage}: resumed at step {int(state['step'])}")
    return int(state["step"]), state


def _checkpoint(state_path: Path, model, optimizer, step: int, **extra) -> None:
    _save_state(
        state_path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, **extra}
    )


class _Clock:
    def __init__(self, max_minutes: float | None) -> None:
        self.start = time.monotonic()
        self.deadline = None if max_minutes is None else self.start + 60 * max_minutes

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def minutes(self) -> float:
        return (time.monotonic() - self.start) / 60


def _log(message: str) -> None:
    print(message, flush=True)


def train_vae(work_dir: Path, config: ShapesTrainingConfig, clock: _Clock, log_every: int = 50):
    """Stage 1; returns the trained VAE, or None when `clock` ran out first (the state is saved)."""
    from diffusers import AutoencoderKLFlux2

    final_dir = work_dir / "vae"
    if (final_dir / "config.json").is_file():
        return AutoencoderKLFlux2.from_pretrained(final_dir)
    vae = shapes_model.shapes_vae(config.seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_learning_rate, weight_decay=0.0)
    state_path = work_dir / "vae_state.pt"
    step, _ = _resume(state_path, vae, optimizer, "vae")
    vae.train()
    generator = torch.Generator().manual_seed(config.seed)
    while step < config.vae_steps:
        if clock.out_of_time():
            _checkpoint(state_path, vae, optimizer, step)
            return None
        images = scene_pixels(training_batch(config.seed * _VAE_STREAM + step, config.vae_batch_size))
        generator.manual_seed(config.seed * _VAE_STREAM + step)
        posterior = vae.encode(images).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=generator)
        latents = posterior.mean + posterior.std * noise
        reconstruction = vae.decode(latents).sample
        loss = F.l1_loss(reconstruction, images) + F.mse_loss(reconstruction, images)
        loss = loss + config.kl_weight * posterior.kl().mean()
        for group in optimizer.param_groups:  # cosine decay to a tenth
            group["lr"] = config.vae_learning_rate * (
                0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / config.vae_steps))
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step % log_every == 0 or step == config.vae_steps:
            _log(f"vae: step {step}/{config.vae_steps} loss {loss.item():.4f} ({clock.minutes():.1f} min)")
        if step % config.checkpoint_every == 0:
            _checkpoint(state_path, vae, optimizer, step)
    vae.eval()
    _set_latent_statistics(vae, config)
    with atomic_directory(final_dir, remove_stale=True) as staging:
        vae.save_pretrained(staging, safe_serialization=True)
    state_path.unlink(missing_ok=True)
    return vae


@torch.no_grad()
def _set_latent_statistics(vae, config: ShapesTrainingConfig, batches: int = 16) -> None:
    """The pipeline normalises patchified latents by the VAE's batch-norm running statistics: make them
    the statistics of the training latents (the posterior means the transformer is trained on)."""
    from diffusers import Flux2KleinPipeline

    latents = torch.cat(
        [
            Flux2KleinPipeline._patchify_latents(
                vae.encode(scene_pixels(training_batch(-1 - index, 64))).latent_dist.mode()
            )
            for index in range(batches)
        ]
    )
    vae.bn.running_mean.copy_(latents.mean(dim=(0, 2, 3)))
    vae.bn.running_var.copy_(latents.var(dim=(0, 2, 3)))


class LatentEncoder:
    """Scenes -> the transformer's packed, normalised clean latents [N, h*w, C], as the pipeline makes them."""

    def __init__(self, vae) -> None:
        self.vae = vae.eval().requires_grad_(False)
        self.mean = vae.bn.running_mean.view(1, -1, 1, 1)
        self.std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)

    @torch.no_grad()
    def __call__(self, scenes) -> tuple[torch.Tensor, torch.Tensor]:
        from diffusers import Flux2KleinPipeline

        latents = self.vae.encode(scene_pixels(scenes)).latent_dist.mode()
        latents = (Flux2KleinPipeline._patchify_latents(latents) - self.mean) / self.std
        ids = Flux2KleinPipeline._prepare_latent_ids(latents)
        return Flux2KleinPipeline._pack_latents(latents), ids


class CaptionEncoder:
    """Captions -> (prompt_embeds, text_ids) exactly as `Flux2KleinPipeline.encode_prompt` makes them, cached."""

    def __init__(self, text_encoder, tokenizer) -> None:
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        from diffusers import Flux2KleinPipeline

        missing = sorted({caption for caption in captions if caption not in self.cache})
        if missing:
            embeds = Flux2KleinPipeline._get_qwen3_prompt_embeds(
                self.text_encoder, self.tokenizer, missing, dtype=torch.float32, device=torch.device("cpu"),
                max_sequence_length=shapes_model.MAX_SEQUENCE_LENGTH,
                hidden_states_layers=list(shapes_model.TEXT_ENCODER_OUT_LAYERS),
            )  # fmt: skip
            self.cache.update(zip(missing, embeds, strict=True))
        prompt_embeds = torch.stack([self.cache[caption] for caption in captions])
        return prompt_embeds, Flux2KleinPipeline._prepare_text_ids(prompt_embeds)


def refine_decoder(work_dir: Path, config: ShapesTrainingConfig, vae, clock: _Clock, log_every: int = 50):
    """Stage 3: train the decoder alone on the frozen encoder's latents; returns the VAE, or None when
    `clock` ran out first (the state is saved)."""
    from diffusers import AutoencoderKLFlux2

    final_dir = work_dir / "vae_refined"
    if (final_dir / "config.json").is_file():
        return AutoencoderKLFlux2.from_pretrained(final_dir)
    if config.decoder_steps == 0:
        return vae
    decoder = [vae.post_quant_conv, vae.decoder]
    parameters = [parameter for module in decoder for parameter in module.parameters()]
    vae.requires_grad_(False)
    for parameter in parameters:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(parameters, lr=config.decoder_learning_rate, weight_decay=0.0)
    state_path = work_dir / "decoder_state.pt"
    step, _ = _resume(state_path, vae, optimizer, "decoder")
    vae.eval()
    for module in decoder:
        module.train()

    def save() -> None:
        _checkpoint(state_path, vae, optimizer, step)

    while step < config.decoder_steps:
        if clock.out_of_time():
            save()
            return None
        images = scene_pixels(training_batch(config.seed * _DECODER_STREAM + step, config.vae_batch_size))
        with torch.no_grad():
            latents = vae.encode(images).latent_dist.mode()
        reconstruction = vae.decode(latents).sample
        loss = F.l1_loss(reconstruction, images) + F.mse_loss(reconstruction, images)
        for group in optimizer.param_groups:
            group["lr"] = config.decoder_learning_rate * (
                0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / config.decoder_steps))
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        step += 1
        if step % log_every == 0 or step == config.decoder_steps:
            _log(
                f"decoder: step {step}/{config.decoder_steps} loss {loss.item():.4f} ({clock.minutes():.1f} min)"
            )
        if step % config.checkpoint_every == 0:
            save()
    vae.eval().requires_grad_(False)
    with atomic_directory(final_dir, remove_stale=True) as staging:
        vae.save_pretrained(staging, safe_serialization=True)
    state_path.unlink(missing_ok=True)
    return vae


def train_transformer(work_dir: Path, config: ShapesTrainingConfig, vae, clock: _Clock, log_every: int = 25):
    """Stage 2; returns the EMA transformer, or None when `clock` ran out first (the state is saved)."""
    from diffusers import Flux2Transformer2DModel

    final_dir = work_dir / "transformer"
    if (final_dir / "config.json").is_file():
        return Flux2Transformer2DModel.from_pretrained(final_dir)
    tokenizer = shapes_model.shapes_tokenizer()
    captions = CaptionEncoder(shapes_model.shapes_text_encoder(tokenizer, config.seed), tokenizer)
    encode = LatentEncoder(vae)
    transformer = shapes_model.shapes_transformer(config.seed)
    ema = {name: value.detach().clone() for name, value in transformer.state_dict().items()}
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=config.learning_rate, weight_decay=0.0)
    state_path = work_dir / "transformer_state.pt"
    step, state = _resume(state_path, transformer, optimizer, "transformer")
    if state is not None:
        ema = state["ema"]

    def save() -> None:
        _checkpoint(state_path, transformer, optimizer, step, ema=ema)

    transformer.train()
    generator = torch.Generator()
    running = None
    while step < config.transformer_steps:
        if clock.out_of_time():
            save()
            return None
        batch_seed = config.seed * _TRANSFORMER_STREAM + step
        scenes = training_batch(batch_seed, config.batch_size)
        generator.manual_seed(batch_seed)
        dropped = torch.rand(len(scenes), generator=generator) < config.caption_dropout
        prompt_embeds, text_ids = captions(
            ["" if drop else scene.prompt for scene, drop in zip(scenes, dropped, strict=True)]
        )
        clean, latent_ids = encode(scenes)
        noise = torch.randn(clean.shape, generator=generator)
        sigmas = torch.sigmoid(torch.randn(len(scenes), generator=generator)).view(-1, 1, 1)
        noisy = (1 - sigmas) * clean + sigmas * noise
        prediction = transformer(
            hidden_states=noisy, timestep=sigmas.flatten(), guidance=None, encoder_hidden_states=prompt_embeds,
            txt_ids=text_ids, img_ids=latent_ids, return_dict=False,
        )[0]  # fmt: skip
        loss = F.mse_loss(prediction, noise - clean)
        warmup = min(1.0, (step + 1) / config.warmup_steps)
        decay = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / config.transformer_steps))
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate * warmup * decay
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        optimizer.step()
        step += 1
        decay_now = min(config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for name, value in transformer.state_dict().items():
                if value.is_floating_point():
                    ema[name].lerp_(value, 1 - decay_now)
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if step % log_every == 0 or step == config.transformer_steps:
            _log(
                f"transformer: step {step}/{config.transformer_steps} loss {running:.4f} ({clock.minutes():.1f} min)"
            )
        if step % config.checkpoint_every == 0:
            save()
    transformer.load_state_dict(ema)
    transformer.eval()
    with atomic_directory(final_dir, remove_stale=True) as staging:
        transformer.save_pretrained(staging, safe_serialization=True)
    return transformer


def assemble_from_state(out_dir: str | Path, work_dir: str | Path) -> Path:
    """Save a pipeline from the trained VAE and the EMA weights of the latest transformer checkpoint of an
    unfinished run (to look at a run part of the way, or to ship one stopped early); returns `out_dir`."""
    from diffusers import AutoencoderKLFlux2

    work_dir = Path(work_dir)
    config = ShapesTrainingConfig(**json.loads((work_dir / "training_config.json").read_text()))
    state = _load_state(work_dir / "transformer_state.pt")
    if state is None or not (work_dir / "vae" / "config.json").is_file():
        raise FileNotFoundError(
            f"{work_dir} has no trained VAE and transformer checkpoint to assemble; train first."
        )
    transformer = shapes_model.shapes_transformer(config.seed)
    transformer.load_state_dict(state["ema"])
    tokenizer = shapes_model.shapes_tokenizer()
    training = {**asdict(config), "transformer_steps_done": int(state["step"])}
    # The refined decoder when stage 3 already ran (its encoder, and so the latent space, is stage 1's).
    vae_dir = (
        work_dir / "vae_refined" if (work_dir / "vae_refined" / "config.json").is_file() else work_dir / "vae"
    )
    with atomic_directory(Path(out_dir), remove_stale=True) as staging:
        shapes_model.save_shapes_pipeline(
            staging, vae=AutoencoderKLFlux2.from_pretrained(vae_dir), tokenizer=tokenizer,
            text_encoder=shapes_model.shapes_text_encoder(tokenizer, config.seed), transformer=transformer.eval(),
            seed=config.seed, training=training,
        )  # fmt: skip
    return Path(out_dir)


def train_shapes_model(
    out_dir: str | Path,
    work_dir: str | Path,
    config: ShapesTrainingConfig | None = None,
    *,
    max_minutes: float | None = None,
) -> Path | None:
    """Train (or resume) both stages in `work_dir` and save the pipeline to `out_dir`.

    Returns `out_dir`, or None when `max_minutes` ran out first: run it again to go on.
    """
    config = config or ShapesTrainingConfig()
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    settings_path = work_dir / "training_config.json"
    if settings_path.is_file() and json.loads(settings_path.read_text()) != asdict(config):
        raise ValueError(
            f"{work_dir} holds a run with other settings ({settings_path}); pass the same settings to resume it, "
            "or another --work-dir to start over."
        )
    settings_path.write_text(json.dumps(asdict(config), indent=2))
    torch.manual_seed(config.seed)
    clock = _Clock(max_minutes)
    vae = train_vae(work_dir, config, clock)
    if vae is None:
        return None
    transformer = train_transformer(work_dir, config, vae, clock)
    if transformer is None:
        return None
    vae = refine_decoder(work_dir, config, vae, clock)
    if vae is None:
        return None
    tokenizer = shapes_model.shapes_tokenizer()
    with atomic_directory(Path(out_dir), remove_stale=True) as staging:
        shapes_model.save_shapes_pipeline(
            staging, vae=vae, text_encoder=shapes_model.shapes_text_encoder(tokenizer, config.seed), tokenizer=tokenizer,
            transformer=transformer, seed=config.seed, training=asdict(config),
        )  # fmt: skip
    return Path(out_dir)
