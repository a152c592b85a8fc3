"""A tiny random-weight Qwen-Image (`QwenImagePipeline`) that runs offline on a CPU (`--model tiny-qwen-image`).

Every component is the class `Qwen/Qwen-Image` uses, only smaller: a `Qwen2_5_VLForConditionalGeneration`
text encoder (with a one-block vision tower it never uses for text), a `Qwen2Tokenizer`, a
`QwenImageTransformer2DModel` over 2x2-packed 16-channel latents and an `AutoencoderKLQwenImage` (the
causal video VAE) that downsamples 8x, with the real VAE's per-channel `latents_mean`/`latents_std`.
The scheduler is Qwen-Image's own (dynamic shifting, terminal sigma 0.02), so the sampler sigmas are
the real model's at the same latent size.

The tokenizer matters more than usual here: the pipeline wraps each prompt in a chat template and
drops the template's first `prompt_template_encode_start_idx` (34) tokens, the system prompt as the
real Qwen2 tokenizer splits it. A plain byte-level vocabulary would split the system prompt into
~150 tokens and leave most of it in the embedding. This tokenizer's BPE merges spell out the
template's words, so the template splits into the real tokenizer's tokens and the drop leaves what
it leaves for the real model: the prompt's tokens and the template's 5-token tail.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .kit import save_kit_pipeline

TINY_RESOLUTION = 64
# 4 sampler steps for a final image, 2 for a search preview: both cheap, and previews differ from finals.
TINY_NUM_INFERENCE_STEPS = 4
TINY_PREVIEW_STEPS = 2
TINY_TEXT_HIDDEN = 32

# Qwen/Qwen-Image's scheduler/scheduler_config.json.
QWEN_IMAGE_SCHEDULER = {
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 0.9,
    "base_image_seq_len": 256,
    "max_image_seq_len": 8192,
    "shift_terminal": 0.02,
    "time_shift_type": "exponential",
    "invert_sigmas": False,
    "stochastic_sampling": False,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
}

_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def tiny_qwen_image_tokenizer(template: str):
    """A `Qwen2Tokenizer` (Qwen2's own pre-tokenizer) over the 256 byte symbols, plus BPE merges that make
    each word of `template` (the pipeline's prompt template) one token, as in the real vocabulary."""
    from tokenizers import pre_tokenizers
    from transformers import Qwen2Tokenizer

    byte_symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: index for index, symbol in enumerate(byte_symbols)}
    # Split the template as the tokenizer will: around its special tokens, then by Qwen2's pre-tokenizer.
    pre_tokenizer = Qwen2Tokenizer(vocab=dict(vocab), merges=[]).backend_tokenizer.pre_tokenizer
    text = template.replace("{}", "")
    segments = [segment for segment in re.split("|".join(map(re.escape, _SPECIAL_TOKENS)), text) if segment]
    merges: list[tuple[str, str]] = []
    for segment in segments:
        for word, _ in pre_tokenizer.pre_tokenize_str(segment):
            # One merge per prefix of the word: "Ġ"+"t", "Ġt"+"h", "Ġth"+"e" makes "Ġthe" a single token.
            for end in range(2, len(word) + 1):
                if word[:end] not in vocab:
                    vocab[word[:end]] = len(vocab)
                    merges.append((word[: end - 1], word[end - 1]))
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None
    )
    tokenizer.add_special_tokens({"additional_special_tokens": _SPECIAL_TOKENS[1:]})
    tokenizer.model_max_length = 2048
    return tokenizer


def _check_template_drop(tokenizer, template: str, drop_index: int) -> None:
    """The pipeline drops the first `drop_index` tokens: they must be exactly the template before the prompt."""
    prefix = template.split("{}")[0]
    count = len(tokenizer(prefix).input_ids)
    if count != drop_index:
        raise RuntimeError(
            f"the tiny tokenizer splits the prompt template's prefix into {count} tokens, but the pipeline "
            f"drops {drop_index}: the tiny prompt embeddings would not hold what the real ones hold."
        )


def build_tiny_qwen_image(out_dir: str | Path, seed: int = 0) -> Path:
    """Build a tiny Qwen-Image-like `QwenImagePipeline` from `seed`, `save_pretrained` it to `out_dir`,
    write the kit marker; returns `out_dir`."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    # The template and its drop index are set in `QwenImagePipeline.__init__` (not saved with the
    # pipeline): read them from a pipeline without components.
    bare = QwenImagePipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None, transformer=None)
    tokenizer = tiny_qwen_image_tokenizer(bare.prompt_template_encode)
    _check_template_drop(tokenizer, bare.prompt_template_encode, bare.prompt_template_encode_start_idx)

    head_dim = 16
    text_encoder = Qwen2_5_VLForConditionalGeneration(
        Qwen2_5_VLConfig(
            text_config={
                "vocab_size": len(tokenizer),
                "hidden_size": TINY_TEXT_HIDDEN,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": TINY_TEXT_HIDDEN // head_dim,
                "num_key_value_heads": TINY_TEXT_HIDDEN // head_dim,
                "max_position_embeddings": 2048,
                # Multimodal rope sections sum to head_dim / 2, as (16, 24, 24) does to 128 / 2.
                "rope_parameters": {
                    "rope_type": "default",
                    "mrope_section": [2, 3, 3],
                    "rope_theta": 1000000.0,
                },
                "bos_token_id": None,
                "eos_token_id": tokenizer.eos_token_id,
                "pad_token_id": tokenizer.pad_token_id,
            },
            vision_config={
                "depth": 1,
                "hidden_size": 16,
                "intermediate_size": 16,
                "num_heads": 2,
                "out_hidden_size": TINY_TEXT_HIDDEN,
                "fullatt_block_indexes": [0],
            },
        )
    )
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=64,  # 16 latent channels x a 2x2 patch, as the real model
        out_channels=16,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TINY_TEXT_HIDDEN,
        axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim, as (16, 56, 56) does to 128
        guidance_embeds=False,
    )
    # The real 16 latent channels, 8x downsampling (three levels), causal 3-D convs and (the class
    # defaults) Qwen-Image's latents_mean/latents_std; only the widths are tiny.
    vae = AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=16,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )
    pipe = QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
    marker = {
        "kind": "qwen-image",
        "seed": seed,
        "resolution": TINY_RESOLUTION,
        "generator_kwargs": {
            "num_inference_steps": TINY_NUM_INFERENCE_STEPS,
            "preview_steps": TINY_PREVIEW_STEPS,
        },
    }
    return save_kit_pipeline(pipe, out_dir, marker)
