"""The pieces of mid-stream continuation: event boundaries, stream state, continuation bodies, usage rewrite."""

from __future__ import annotations

import orjson

from gateway.continuation import continuable, continuation_body
from gateway.stream_state import EventRecorder, StreamState


def ev(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


ROLE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}


def text(t: str, finish: str | None = None) -> dict:
    return {**ROLE, "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": finish}]}


def test_recorder_holds_back_partial_events() -> None:
    r = EventRecorder()
    a, b = ev(ROLE), ev(text("Hel"))
    assert r.feed(a + b[:10]) == a  # the half event waits
    assert r.feed(b[10:]) == b
    assert r.feed(b"data: [DO") == b""
    assert r.rest() == b"data: [DO"
    assert r.recorded() == a + b


def test_recorder_crlf_events_and_overflow() -> None:
    r = EventRecorder(limit=50)
    e = b'data: {"x": 1}\r\n\r\n'
    assert r.feed(e) == e
    assert r.feed(e * 5) == e * 5 and r.overflow and r.recorded() == b""


def test_state_from_bytes() -> None:
    data = ev(ROLE) + ev(text("Hello ")) + ev(text("world")) + b": comment\n\n"
    s = StreamState.from_bytes(data)
    assert (s.id, s.created, s.model, s.text, s.role_sent, s.finish_reason) == \
        ("chatcmpl-1", 7, "m", "Hello world", True, None)
    s2 = StreamState.from_bytes(data + ev(text("", "stop")) + ev({**ROLE, "choices": [], "usage": {"a": 1}}))
    assert s2.finish_reason == "stop" and s2.usage_sent
    assert StreamState.from_bytes(ev({"error": {"message": "x"}})).errored
    other = {**text("x"), "id": "chatcmpl-2", "created": 9}
    s.restamp(other)
    assert other["id"] == "chatcmpl-1" and other["created"] == 7


def test_continuation_bodies() -> None:
    chat = {"model": "m", "messages": [{"role": "user", "content": "q"}], "max_tokens": 10, "stream": True}
    c = continuation_body("chat", chat, "partial", 3)
    assert c["messages"][-1] == {"role": "assistant", "content": "partial"}
    assert c["continue_final_message"] is True and c["add_generation_prompt"] is False and c["max_tokens"] == 7
    assert chat["max_tokens"] == 10 and len(chat["messages"]) == 1  # the original is untouched
    assert continuation_body("chat", chat, "", 0) == chat
    prefilled = {**chat, "messages": [*chat["messages"], {"role": "assistant", "content": "A: "}],
                 "continue_final_message": True}
    assert continuation_body("chat", prefilled, "yes", 1)["messages"][-1]["content"] == "A: yes"
    comp = {"model": "m", "prompt": ["Once"], "max_completion_tokens": 5}
    c2 = continuation_body("completions", comp, " upon", 2)
    assert c2["prompt"] == "Once upon" and c2["max_completion_tokens"] == 3
    assert continuation_body("completions", {"model": "m", "prompt": [1, 2]}, "x", 1) is None
    assert not continuable("completions", {"prompt": [1, 2]})
    assert not continuable("chat", {"n": 2}) and continuable("chat", {"n": 1})


def test_text_chunks_counted() -> None:
    s = StreamState.from_bytes(ev(ROLE) + ev(text("a")) + ev(text("")) + ev(text("bc")))
    assert s.text == "abc" and s.text_chunks == 2
