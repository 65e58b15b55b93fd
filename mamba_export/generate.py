"""Token-by-token generation with the recurrent state (the prompt is run once)."""

from __future__ import annotations

from collections.abc import Collection, Iterator

import torch

from .backends.base import Backend


def generate(backend: Backend, prompt_ids: list[int], max_new_tokens: int, *, temperature: float = 0.0,
             top_k: int = 0, vocab_size: int | None = None, eos_ids: Collection[int] = (),
             seed: int | None = None) -> Iterator[int]:
    """Yields new token ids, up to (not including) one of ``eos_ids``, the end of the sequence.
    temperature 0 is greedy; ``vocab_size`` masks padded vocab rows."""
    if not prompt_ids:
        raise ValueError("the prompt is empty")
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    logits, state = backend.forward(torch.tensor([prompt_ids]), backend.empty_state(1))
    for _ in range(max_new_tokens):
        scores = logits[0, -1, :vocab_size].float().cpu()
        if temperature <= 0:
            token = int(scores.argmax())
        else:
            if top_k > 0:
                kth = scores.topk(min(top_k, scores.numel())).values[-1]
                scores = scores.masked_fill(scores < kth, float("-inf"))
            token = int(torch.multinomial(torch.softmax(scores / temperature, -1), 1, generator=gen))
        if token in eos_ids:
            return
        yield token
        logits, state = backend.forward(torch.tensor([[token]]), state)
