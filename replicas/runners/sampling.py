"""Token sampling on the device: greedy, temperature, top-k, top-p, with a per-request seeded generator.

One call handles every sampling row of a step with batched tensor ops; only seeded rows draw their noise in
a small per-row loop (each from its own ``torch.Generator``, so a seeded request's tokens do not depend on
what else shares its batch). Sampling uses the exponential race (``argmax(p / E)`` with ``E ~ Exp(1)``),
which draws exactly from ``p`` and needs no ``multinomial`` per row.
"""

from __future__ import annotations

import torch

from replicas.engine.request import SamplingParams


class Sampler:
    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self._generators: dict[str, torch.Generator] = {}

    def release(self, request_id: str) -> None:
        self._generators.pop(request_id, None)

    def _generator(self, request_id: str, seed: int) -> torch.Generator:
        gen = self._generators.get(request_id)
        if gen is None:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)
            self._generators[request_id] = gen
        return gen

    def sample(self, logits: torch.Tensor, params: list[SamplingParams], request_ids: list[str]) -> list[int]:
        """``logits`` ``[rows, vocab]`` -> one token id per row."""
        if logits.shape[0] != len(params):
            raise ValueError(f"{logits.shape[0]} logit rows for {len(params)} sampling requests")
        if not params:
            return []
        if all(p.greedy for p in params):
            return _argmax(logits)
        greedy = logits.argmax(dim=-1)
        dev = logits.device
        logits = logits.float()
        temps = torch.tensor([p.temperature if not p.greedy else 1.0 for p in params], device=dev)
        scaled = logits / temps[:, None]
        top_k = [p.top_k for p in params if not p.greedy]
        top_p = [p.top_p for p in params if not p.greedy]
        if any(k > 0 for k in top_k) or any(p < 1.0 for p in top_p):
            scaled = _truncate(scaled, params)
        probs = torch.softmax(scaled, dim=-1)
        noise = torch.empty_like(probs).exponential_()
        for i, (p, rid) in enumerate(zip(params, request_ids, strict=True)):
            if p.seed is not None and not p.greedy:
                noise[i].exponential_(generator=self._generator(rid, p.seed))
        drawn = (probs / noise).argmax(dim=-1)
        is_greedy = torch.tensor([p.greedy for p in params], device=dev)
        return torch.where(is_greedy, greedy, drawn).tolist()


def _argmax(logits: torch.Tensor) -> list[int]:
    """Each row's first maximal index. On a CPU through numpy: torch's argmax over a small batch costs ~16 us
    (32 x 512 floats) where numpy's costs ~3; same result, ties and NaN included (the first one wins)."""
    if logits.device.type == "cpu" and logits.dtype in (torch.float32, torch.float64, torch.float16):
        return logits.detach().numpy().argmax(axis=-1).tolist()
    return logits.argmax(dim=-1).tolist()


def _truncate(scaled: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Keep each row's top-k, then its smallest prefix of probability mass >= top-p (always >= 1 token)."""
    vocab = scaled.shape[-1]
    dev = scaled.device
    k = torch.tensor([p.top_k if 0 < p.top_k < vocab and not p.greedy else vocab for p in params], device=dev)
    # top_p >= 1 is off: 2.0 is above any cumulative mass, even one rounded past 1.0.
    top_p = torch.tensor([max(p.top_p, 0.0) if p.top_p < 1.0 and not p.greedy else 2.0 for p in params],
                         device=dev)
    sorted_logits, order = scaled.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=dev)[None, :]
    sorted_logits = sorted_logits.masked_fill(ranks >= k[:, None], float("-inf"))
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    # Drop a token once the tokens ranked above it already reach top_p; rank 0 always stays.
    drop = (mass_before >= top_p[:, None]) & (ranks > 0)
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(scaled, float("-inf")).scatter(-1, order, sorted_logits)
