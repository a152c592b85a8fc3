"""A tiny random-weight FLUX.2-dev (`Flux2Pipeline`) that runs offline on a CPU (`--model tiny-flux2-dev`).

Every component is the class `black-forest-labs/FLUX.2-dev` uses, only smaller, so the saved pipeline
loads back through the same `Flux2Pipeline.from_pretrained(path)` code as the real one:

- text encoder: a `Mistral3ForConditionalGeneration` (a Mistral language model plus a Pixtral vision
  tower and its projector), whose intermediate hidden states the pipeline stacks, as the real one's
  layers 10, 20 and 30 of 40;
- tokenizer: a `PixtralProcessor` (a `PixtralImageProcessor` and a byte-level BPE tokenizer with
  Mistral's special tokens and a Mistral-style chat template), the class the real checkpoint's
  `tokenizer/` holds; the pipeline calls its `apply_chat_template` on system + user messages;
- transformer: a guidance-distilled `Flux2Transformer2DModel` (`guidance_embeds=True`);
- VAE and scheduler: the FLUX.2 `AutoencoderKLFlux2` (tiny, as in the klein kit) and FLUX.2's scheduler.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .flux2 import FLUX2_SCHEDULER, tiny_flux2_transformer, tiny_flux2_vae
from .kit import save_kit_pipeline

TINY_TEXT_HIDDEN = 32
# Four layers, three stacked: intermediate layers as on the real model (10, 20, 30 of 40), never the last.
TINY_TEXT_LAYERS = 4
TINY_TEXT_ENCODER_OUT_LAYERS = (1, 2, 3)
# The system message and chat markup take 32 of these tokens (see `_tokenizer`), prompts the rest.
TINY_MAX_SEQUENCE_LENGTH = 64
# 64 x 64 px: 4 x 4 transformer tokens.
TINY_RESOLUTION = 64
# 4 steps for a final image, 2 for a search preview: both cheap, and previews differ from finals.
TINY_GENERATOR_KWARGS = {"num_inference_steps": 4, "preview_steps": 2}
# The Pixtral vision tower: 32 px images in 4 px patches, merged 2 x 2 before the projector.
TINY_IMAGE_SIZE = 32
TINY_PATCH_SIZE = 4
TINY_SPATIAL_MERGE_SIZE = 2

# Mistral's control tokens that the chat template and the Pixtral processor use, at the front of the
# vocabulary as in Mistral's tokenizers (`<unk>`, `<s>`, `</s>` first).
_SPECIAL_TOKENS = [
    "<unk>",
    "<s>",
    "</s>",
    "[INST]",
    "[/INST]",
    "[IMG]",
    "<pad>",
    "[IMG_BREAK]",
    "[IMG_END]",
    "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]",
]
# Mistral-Small-3.1's chat template, reduced to what its messages can hold: a system prompt, then user
# turns of text (or text and image blocks, which become `[IMG]` for the processor to expand) and
# assistant turns.
_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- if messages[0]['content'] is string %}{%- set system_message = messages[0]['content'] %}"
    "{%- else %}{%- set system_message = messages[0]['content'][0]['text'] %}{%- endif %}"
    "{{- '[SYSTEM_PROMPT]' + system_message + '[/SYSTEM_PROMPT]' }}"
    "{%- set loop_messages = messages[1:] %}"
    "{%- else %}{%- set loop_messages = messages %}{%- endif %}"
    "{%- for message in loop_messages %}"
    "{%- if message['content'] is string %}{%- set blocks = [{'type': 'text', 'text': message['content']}] %}"
    "{%- else %}{%- set blocks = message['content'] %}{%- endif %}"
    "{%- if message['role'] == 'user' %}{{- '[INST]' }}{%- endif %}"
    "{%- for block in blocks %}"
    "{%- if block['type'] == 'text' %}{{- block['text'] }}"
    "{%- elif block['type'] in ['image', 'image_url'] %}{{- '[IMG]' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if message['role'] == 'user' %}{{- '[/INST]' }}{%- elif message['role'] == 'assistant' %}{{- eos_token }}{%- endif %}"
    "{%- endfor %}"
)


def _tokenizer():
    """A Mistral-style byte-level BPE tokenizer (a `LlamaTokenizerFast`, as Mistral checkpoints name theirs).

    Its merges are learnt from the pipeline's system message, which then takes 27 tokens instead of
    ~190 bytes: `max_sequence_length` truncates on the right, and with one token per byte the
    system message alone would fill the tiny length and leave no room for the prompt.
    """
    from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=1,
        show_progress=False,
    )
    backend.train_from_iterator([SYSTEM_MESSAGE], trainer=trainer)
    tokenizer = LlamaTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": _SPECIAL_TOKENS[3:6] + _SPECIAL_TOKENS[7:]})
    return tokenizer


def _processor(tokenizer):
    """The `PixtralProcessor` that `Flux2Pipeline` calls its tokenizer, with the tiny vision tower's patching."""
    from transformers import PixtralImageProcessor, PixtralProcessor

    # The processor hands the image processor `patch_size * spatial_merge_size`: images are cut to
    # whole merged patches, one `[IMG]` token each.
    merged_patch = TINY_PATCH_SIZE * TINY_SPATIAL_MERGE_SIZE
    image_processor = PixtralImageProcessor(
        size={"longest_edge": TINY_IMAGE_SIZE}, patch_size={"height": merged_patch, "width": merged_patch}
    )
    return PixtralProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=TINY_PATCH_SIZE,
        spatial_merge_size=TINY_SPATIAL_MERGE_SIZE,
        chat_template=_CHAT_TEMPLATE,
    )


def _text_encoder(tokenizer):
    """A random `Mistral3ForConditionalGeneration` for `tokenizer`. Draws from the global RNG: seed it first."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = Mistral3Config(
        text_config={
            "model_type": "mistral",
            "vocab_size": len(tokenizer),
            "hidden_size": TINY_TEXT_HIDDEN,
            "intermediate_size": 64,
            "num_hidden_layers": TINY_TEXT_LAYERS,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "max_position_embeddings": 512,
            "rms_norm_eps": 1e-5,
            "rope_theta": 1e9,
            "sliding_window": None,
            **special,
        },
        vision_config={
            "model_type": "pixtral",
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "head_dim": 8,
            "image_size": TINY_IMAGE_SIZE,
            "patch_size": TINY_PATCH_SIZE,
            "num_channels": 3,
        },
        image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"),
        spatial_merge_size=TINY_SPATIAL_MERGE_SIZE,
        vision_feature_layer=-1,
        **special,
    )
    return Mistral3ForConditionalGeneration(config)


def build_tiny_flux2_dev(out_dir: str | Path, seed: int = 0) -> Path:
    """Build a tiny FLUX.2-dev-like `Flux2Pipeline` from `seed`, `save_pretrained` it to `out_dir`, write
    the kit marker; returns `out_dir`."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2Pipeline

    torch.manual_seed(seed)
    tokenizer = _tokenizer()
    text_encoder = _text_encoder(tokenizer)
    transformer = tiny_flux2_transformer(
        joint_attention_dim=TINY_TEXT_HIDDEN * len(TINY_TEXT_ENCODER_OUT_LAYERS), guidance_embeds=True
    )
    vae = tiny_flux2_vae()
    pipe = Flux2Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX2_SCHEDULER),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=_processor(tokenizer),
        transformer=transformer,
    )
    marker = {
        "kind": "flux2-dev",
        "seed": seed,
        "resolution": TINY_RESOLUTION,
        "text_encoder_out_layers": list(TINY_TEXT_ENCODER_OUT_LAYERS),
        "max_sequence_length": TINY_MAX_SEQUENCE_LENGTH,
        "generator_kwargs": TINY_GENERATOR_KWARGS,
    }
    return save_kit_pipeline(pipe, out_dir, marker)
