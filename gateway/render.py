"""The prompt text routing sees: the whole conversation rendered deterministically (DESIGN.md section 2).

ChatML-style markers around each message (role included) so that two conversations sharing their first turns
share a text prefix, whatever the client's chat template is. Content parts of type ``text`` are concatenated;
other parts (images, audio) contribute a stable placeholder. The text is only used for routing (prefix hashing,
token estimates); the body sent upstream is never rewritten.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

CHARS_PER_TOKEN = 4.0  # a cheap token estimate for English text with BPE tokenizers


def content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        out = []
        for part in content:
            if isinstance(part, Mapping):
                if part.get("type") == "text" and isinstance(part.get("text"), str):
                    out.append(part["text"])
                else:
                    out.append(f"<{part.get('type')}>")
        return "".join(out)
    return ""


def render_messages(messages: Sequence[Mapping[str, Any]]) -> str:
    return "".join(f"<|im_start|>{m.get('role')}\n{content_text(m.get('content'))}<|im_end|>\n" for m in messages)


def render_prompt(route: str, body: Mapping[str, Any]) -> str:
    """Rendered prompt of a validated ``chat`` or ``completions`` body."""
    if route == "chat":
        return render_messages(body["messages"]) + "<|im_start|>assistant\n"
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return "\n".join(prompt)
    # Token-id prompts: their text is unknown; a stable rendering keeps prefix matching meaningful.
    return " ".join(str(t) for t in prompt) if isinstance(prompt, list) else ""


def estimate_tokens(text: str) -> int:
    return max(1, int(len(text) / CHARS_PER_TOKEN))
