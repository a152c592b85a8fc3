"""Prompt embeddings encoded on demand and kept in a bounded CPU cache.

One FLUX.2-klein prompt embedding is [1, 512, 7680] bf16 = 7.9 MB: encoding a whole prompt set up
front costs 2.4 GB per process for 300 prompts and ~390 GB for 50k. The trainer instead encodes
each round's shard when it needs it, keeps at most `max_entries` embeddings (least recently used
go first; `pin`ned ones, the eval prompts, never), and shares one negative embedding between all
prompts (CFG's negative is the empty prompt, the same for every prompt).

The text encoder (~8 GB for klein-4B) stays where it is put: with `offload=True` it lives on the
CPU and visits `device` only while a batch of misses is encoded.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch

from .generation import FlowGenerator, PromptEmbeds


class PromptEmbeddingCache:
    """`get(prompts)` -> embeddings on the CPU, encoding the misses with `generator`."""

    def __init__(
        self,
        generator: FlowGenerator,
        max_entries: int = 64,
        *,
        device: torch.device | str | None = None,
        offload: bool = True,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}.")
        self.generator = generator
        self.max_entries = max_entries
        self.device = torch.device(device) if device is not None else generator.device
        self.offload = offload
        self.encoded_count = 0  # prompts run through the text encoder so far (misses)
        self._entries: OrderedDict[str, PromptEmbeds] = OrderedDict()
        self._pinned: dict[str, PromptEmbeds] = {}
        self._shared_negative: PromptEmbeds | None = None

    def __len__(self) -> int:
        return len(self._entries) + len(self._pinned)

    def __contains__(self, prompt: str) -> bool:
        return prompt in self._entries or prompt in self._pinned

    def pin(self, prompts: Sequence[str]) -> None:
        """Encode `prompts` once and keep them for the cache's life (they do not count toward the limit)."""
        missing = [prompt for prompt in dict.fromkeys(prompts) if prompt not in self._pinned]
        for prompt, embeds in zip(missing, self._encode(missing), strict=True):
            self._entries.pop(prompt, None)
            self._pinned[prompt] = embeds

    @torch.no_grad()
    def get(self, prompts: Sequence[str]) -> list[PromptEmbeds]:
        """Embeddings of `prompts` (repeats allowed), on the CPU; misses are encoded in one visit of the encoder."""
        unique = list(dict.fromkeys(prompts))
        missing = [prompt for prompt in unique if prompt not in self]
        found = dict(zip(missing, self._encode(missing), strict=True))
        for prompt in unique:
            if prompt in self._pinned:
                found[prompt] = self._pinned[prompt]
            elif prompt in self._entries:
                self._entries.move_to_end(prompt)
                found[prompt] = self._entries[prompt]
        for prompt in missing:
            self._entries[prompt] = found[prompt]
        # Evict only after collecting: a call may need more prompts than the cache holds.
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return [found[prompt] for prompt in prompts]

    def _encode(self, prompts: list[str]) -> list[PromptEmbeds]:
        if not prompts:
            return []
        text_encoder = self.generator.pipe.text_encoder
        if self.offload:
            text_encoder.to(self.device)
        try:
            encoded = [self._to_cpu(self.generator.encode_prompt(prompt)) for prompt in prompts]
        finally:
            if self.offload:
                text_encoder.to("cpu")
        self.encoded_count += len(prompts)
        return encoded

    def _to_cpu(self, embeds: PromptEmbeds) -> PromptEmbeds:
        if embeds.negative is None:
            return embeds.to("cpu")
        if self._shared_negative is None:
            self._shared_negative = embeds.negative.to("cpu")
        return embeds.to("cpu", negative=self._shared_negative)
