"""A tiny random-weight FLUX.2-klein pipeline that runs offline on a CPU.

The component configs are the smallest that run (Qwen3 32 wide, 2 layers; a 1 + 1 block transformer): every class is the one the
real `black-forest-labs/FLUX.2-klein-*` checkpoints use, only smaller, so the pipeline saved here is
loaded back through exactly the same `Flux2KleinPipeline.from_pretrained(path)` code as the real one.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .kit import save_kit_pipeline

# The text encoder's hidden states that feed the transformer: with 2 layers, layers 1 and 2.
TINY_TEXT_ENCODER_OUT_LAYERS = (1, 2)
TINY_TEXT_HIDDEN = 32
# Short prompts only; the real default (512) would make the tiny model's attention text-dominated.
TINY_MAX_SEQUENCE_LENGTH = 64
# Default image size for the tiny model: 4x4 latent tokens, well under 0.1 s an image on a CPU.
TINY_RESOLUTION = 64

_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# FLUX.2's scheduler_config.json (shared by dev and klein): the pipeline passes its own linear sigmas
# and an empirical `mu`, which the exponential time shift applies.
FLUX2_SCHEDULER = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "time_shift_type": "exponential",
}


def _byte_level_tokenizer():
    """A Qwen2TokenizerFast whose vocabulary is the 256 byte symbols (no merges), built without downloads."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import Qwen2TokenizerFast

    byte_symbols = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: index for index, symbol in enumerate(sorted(byte_symbols))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": _SPECIAL_TOKENS[1:]})
    tokenizer.chat_template = _CHAT_TEMPLATE
    tokenizer.model_max_length = 512
    return tokenizer


def tiny_qwen3_config(tokenizer, **overrides):
    """A two-layer `Qwen3Config` of width `TINY_TEXT_HIDDEN` for `tokenizer`; `overrides` replace any setting."""
    from transformers import Qwen3Config

    settings = dict(
        vocab_size=320,
        hidden_size=TINY_TEXT_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return Qwen3Config(**{**settings, **overrides})


def tiny_flux2_transformer(*, joint_attention_dim: int, guidance_embeds: bool):
    """A random one-double-block, one-single-block `Flux2Transformer2DModel` over 4-channel latents
    patchified 2x2. Draws from the global RNG: seed it before calling."""
    from diffusers import Flux2Transformer2DModel

    return Flux2Transformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 latent channels x a 2x2 patch (the real VAE's 32 make 128)
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=joint_attention_dim,
        timestep_guidance_channels=256,
        mlp_ratio=3.0,
        axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=guidance_embeds,
    )


def tiny_flux2_vae():
    """A random 4-latent-channel `AutoencoderKLFlux2` (8x downsampling). Draws from the global RNG."""
    from diffusers import AutoencoderKLFlux2

    return AutoencoderKLFlux2(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=TINY_RESOLUTION,
    )


def build_tiny_flux2_klein(out_dir: str | Path, *, distilled: bool = True, seed: int = 0) -> Path:
    """Build a tiny FLUX.2-klein pipeline from a seed and `save_pretrained` it to `out_dir`.

    `distilled=True` mirrors FLUX.2-klein-4B (4 steps, no CFG); `False` mirrors the undistilled klein
    base models (CFG, more steps). Returns `out_dir`.
    """
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(seed)
    tokenizer = _byte_level_tokenizer()
    text_encoder = Qwen3ForCausalLM(tiny_qwen3_config(tokenizer, tie_word_embeddings=True))
    transformer = tiny_flux2_transformer(
        joint_attention_dim=TINY_TEXT_HIDDEN * len(TINY_TEXT_ENCODER_OUT_LAYERS), guidance_embeds=False
    )
    vae = tiny_flux2_vae()
    marker = {
        "seed": seed,
        "text_encoder_out_layers": list(TINY_TEXT_ENCODER_OUT_LAYERS),
        "max_sequence_length": TINY_MAX_SEQUENCE_LENGTH,
        "resolution": TINY_RESOLUTION,
    }
    return save_klein_pipeline(
        out_dir,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        distilled=distilled,
        marker=marker,
    )


def save_klein_pipeline(
    out_dir: str | Path, *, vae, text_encoder, tokenizer, transformer, distilled: bool, marker: dict
) -> Path:
    """Assemble a `Flux2KleinPipeline` with the real FLUX.2 scheduler, `save_pretrained` it, and write
    the kit marker (the generator settings `loading.generator_defaults` reads next to a kit pipeline)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline

    pipe = Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX2_SCHEDULER),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        is_distilled=distilled,
    )
    return save_kit_pipeline(pipe, out_dir, {"kind": "flux2-klein", "distilled": distilled, **marker})
