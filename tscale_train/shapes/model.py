"""The components of the shapes model: every class is the one FLUX.2-klein uses, only small.

- tokenizer: a byte-level BPE `Qwen2TokenizerFast` whose merges make each word of the shapes world's
  grammar one token (any other text still tokenizes, byte by byte);
- text encoder: a two-layer `Qwen3ForCausalLM`, frozen at random weights (the transformer learns to read it);
- VAE: an `AutoencoderKLFlux2` with 4x downsampling and 8 latent channels, trained to reconstruct the
  world's images; its batch-norm statistics are those of the patchified training latents, as the
  pipeline expects;
- transformer: a `Flux2Transformer2DModel` of 2 double and 4 single blocks, 4 heads of 32.

At 64x64 the transformer sees an 8x8 grid of 32-channel tokens and 24 text tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..tiny.flux2 import save_klein_pipeline, tiny_qwen3_config

RESOLUTION = 64
MAX_SEQUENCE_LENGTH = 24
TEXT_HIDDEN = 64
TEXT_ENCODER_OUT_LAYERS = (1, 2)
LATENT_CHANNELS = 8
# The sampler settings every command picks up (recorded next to the pipeline): an undistilled
# (klein-base-like) model sampled with classifier-free guidance.
NUM_INFERENCE_STEPS = 16
PREVIEW_STEPS = 8
GUIDANCE_SCALE = 3.0

# Every word of the world's grammar, plus the chat template's role names.
VOCABULARY = (
    "user", "assistant", "a", "an", "and", "to", "the", "left", "right", "of", "above", "below",
    "small", "large", "two", "three", "four", "red", "green", "blue", "yellow", "purple", "orange",
    "cyan", "black", "circle", "square", "triangle", "circles", "squares", "triangles",
)  # fmt: skip
_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def shapes_tokenizer():
    """Byte-level BPE with one merge chain per word (with and without the leading space), longest words
    first, so that each grammar word becomes one token and every other string still encodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import Qwen2TokenizerFast

    vocab = {symbol: index for index, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    merges: list[tuple[str, str]] = []
    for spaced in (True, False):  # every chain of spaced words ranks before any unspaced one
        for word in sorted(VOCABULARY, key=len, reverse=True):
            symbols = ("\u0120" if spaced else "") + word
            for end in range(1, len(symbols)):
                pair = (symbols[:end], symbols[end])
                if pair not in merges:
                    merges.append(pair)
                vocab.setdefault(symbols[: end + 1], len(vocab))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tokenizer.chat_template = _CHAT_TEMPLATE
    tokenizer.model_max_length = 512
    return tokenizer


def shapes_text_encoder(tokenizer, seed: int):
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = tiny_qwen3_config(
        tokenizer,
        vocab_size=512,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=128,
        head_dim=32,
        tie_word_embeddings=True,
    )
    return Qwen3ForCausalLM(config).eval().requires_grad_(False)


def shapes_vae(seed: int):
    from diffusers import AutoencoderKLFlux2

    torch.manual_seed(seed)
    return AutoencoderKLFlux2(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=8,
        sample_size=RESOLUTION,
        mid_block_add_attention=False,
    )


def shapes_transformer(seed: int):
    from diffusers import Flux2Transformer2DModel

    torch.manual_seed(seed)
    return Flux2Transformer2DModel(
        patch_size=1,
        in_channels=4 * LATENT_CHANNELS,
        num_layers=2,
        num_single_layers=4,
        attention_head_dim=32,
        num_attention_heads=4,
        joint_attention_dim=TEXT_HIDDEN * len(TEXT_ENCODER_OUT_LAYERS),
        timestep_guidance_channels=256,
        mlp_ratio=3.0,
        axes_dims_rope=(8, 8, 8, 8),
        guidance_embeds=False,
    )


def marker(seed: int, training: dict | None = None) -> dict:
    """What `tscale_tiny.json` records next to the pipeline: the generator settings every command uses."""
    return {
        "seed": seed,
        "text_encoder_out_layers": list(TEXT_ENCODER_OUT_LAYERS),
        "max_sequence_length": MAX_SEQUENCE_LENGTH,
        "resolution": RESOLUTION,
        "generator_kwargs": {
            "num_inference_steps": NUM_INFERENCE_STEPS,
            "preview_steps": PREVIEW_STEPS,
            "guidance_scale": GUIDANCE_SCALE,
        },
        "training": training or {},
    }


def save_shapes_pipeline(
    out_dir: str | Path, *, vae, text_encoder, tokenizer, transformer, seed: int, training: dict | None = None
) -> Path:
    """Assemble the trained components as an undistilled `Flux2KleinPipeline` and save it."""
    return save_klein_pipeline(
        out_dir, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
        distilled=False, marker=marker(seed, training),
    )  # fmt: skip
