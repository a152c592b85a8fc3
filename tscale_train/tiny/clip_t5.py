"""Tiny CLIP and T5 text encoders with tokenizers built offline, shared by the FLUX.1 and SD3 kits.

Both families encode prompts with CLIP text towers (FLUX.1 one `CLIPTextModel`, SD3 two
`CLIPTextModelWithProjection`) and a T5 encoder. The classes here are the real checkpoints' classes;
only the sizes are tiny, and the tokenizers are built from vocabularies written here instead of
downloaded:

- CLIP: the byte-level BPE with no merges that the tiny PickScore reward uses (`rewards.py`),
  77 tokens long like the real one (the pipelines pad CLIP to `tokenizer.model_max_length`).
- T5: a `T5TokenizerFast` (a `tokenizers` Unigram model) whose pieces are the printable ASCII
  characters, each also with the word-start mark "▁" before it, with T5's special-token layout
  (`<pad>` 0, `</s>` 1, `<unk>` 2) and no sentinels: about one token per character.
"""

from __future__ import annotations

import string

from .rewards import byte_level_clip_vocab

CLIP_MAX_LENGTH = 77


def tiny_clip_tokenizer():
    """A `CLIPTokenizer` over the 256 byte symbols (no merges), padded to CLIP's 77 tokens."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=byte_level_clip_vocab(), merges=[], model_max_length=CLIP_MAX_LENGTH)


def tiny_clip_text_encoder(
    tokenizer, *, hidden_size: int, projection_dim: int | None = None, num_layers: int = 2
):
    """A random `CLIPTextModel` (or, with `projection_dim`, a `CLIPTextModelWithProjection`) for `tokenizer`.

    Draws from the global RNG: seed it before calling.
    """
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        max_position_embeddings=CLIP_MAX_LENGTH,
        projection_dim=projection_dim or hidden_size,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model_class = CLIPTextModel if projection_dim is None else CLIPTextModelWithProjection
    return model_class(config)


def tiny_t5_tokenizer():
    """A `T5TokenizerFast` whose pieces are the printable ASCII characters, alone and word-initial
    ("▁a"), plus T5's specials: a prompt of n characters is about n tokens."""
    from transformers import T5TokenizerFast

    characters = string.printable.strip()
    # A word-initial piece scores above "▁" plus the character, so Unigram spells each word as its
    # first character with the mark, then one piece per character. Anything outside printable
    # ASCII becomes <unk>, as a real T5 does with symbols it never saw.
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(character, -3.0) for character in characters]
    pieces += [("\u2581" + character, -4.0) for character in characters]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=512)


def tiny_t5_encoder(tokenizer, *, d_model: int, num_layers: int = 2):
    """A random `T5EncoderModel` (T5 v1.1 layout: gated GELU, untied) for `tokenizer`.

    Draws from the global RNG: seed it before calling.
    """
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=d_model // 4,
        d_ff=2 * d_model,
        num_layers=num_layers,
        num_heads=4,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5EncoderModel(config)
