"""Precise-mode request keys: the DESIGN.md section 2 block ids of a prompt in the served model's tokenizer.

The gateway tokenizes the rendered prompt exactly as the replicas do (``tokenizers`` on the model folder's
``tokenizer.json``, no special tokens added; the rendered chat text uses the same ChatML markers as the replicas'
template for ChatML models) and hashes full blocks with ``foresight.hashing`` (same block size and seed as the
replicas), so the ids compare directly with the ids in the replicas' KV events. Tokenizing a long prompt takes
milliseconds; results are memoised per prompt text (a bounded LRU), since retries and repeated prompts are common,
and block digests per block (``BlockHashMemo``), since a conversation's next turn repeats its earlier blocks.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from foresight.hashing import BlockHashMemo, block_id


class PromptBlocks:
    def __init__(self, tokenizer: str, block_size: int, seed: str, cache_size: int = 1024,
                 block_memo_size: int = 1 << 16) -> None:
        from tokenizers import Tokenizer

        path = Path(tokenizer)
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json" if path.is_dir() else path))
        self.block_size = block_size
        self.cache_size = cache_size
        self._memo: OrderedDict[str, tuple[int, list[int]]] = OrderedDict()
        # Per block too: the next turn of a conversation repeats the previous prompt's blocks.
        self.hash_memo = BlockHashMemo(block_memo_size, seed)

    def tokens_and_ids(self, text: str) -> tuple[int, list[int]]:
        """``(prompt token count, block ids of its full blocks)``."""
        hit = self._memo.get(text)
        if hit is not None:
            self._memo.move_to_end(text)
            return hit
        tokens = self.tokenizer.encode(text, add_special_tokens=False).ids
        out = (len(tokens), [block_id(d) for d in self.hash_memo.chain(tokens, self.block_size)])
        self._memo[text] = out
        if len(self._memo) > self.cache_size:
            self._memo.popitem(last=False)
        return out

    def block_ids(self, text: str) -> list[int]:
        return self.tokens_and_ids(text)[1]
