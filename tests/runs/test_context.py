"""Prompt building and truncation (loom.runs.context), with offline token counts (loom.tokens)."""

from __future__ import annotations

from typing import Any

from loom import tokens
from loom.llm.types import ChatMessage
from loom.runs.context import bound_message, build_prompt, count_message

AUTO = {"type": "auto", "last_messages": None}


def _history(n: int, words: int = 50) -> list[ChatMessage]:
    return [{"role": "user", "content": f"m{i} " + "word " * words} for i in range(n)]


def _build(history: list[ChatMessage], **kw: Any) -> Any:
    args: dict[str, Any] = {
        "model": "gpt-4o",
        "instructions": "Be brief.",
        "history": history,
        "transcript": [],
        "tools": [],
        "truncation": AUTO,
        "context_window": 128_000,
        "max_prompt_tokens": None,
        "completion_reserve": 0,
    }
    args.update(kw)
    return build_prompt(**args)


def test_token_counts_use_the_models_vocabulary() -> None:
    text = "Grüße aus Köln — 日本語のテキスト, and some code: def f(x): return x**2"
    assert tokens.encoding_for_model("gpt-4o").name == "o200k_base"
    assert tokens.encoding_for_model("gpt-3.5-turbo").name == "cl100k_base"
    assert tokens.count_tokens(text, "gpt-4o") != tokens.count_tokens(text, "gpt-4")
    message: ChatMessage = {"role": "user", "content": text}
    assert count_message(message, "gpt-4o") == tokens.count_tokens(text, "gpt-4o") + 4


def test_everything_fits() -> None:
    prompt = _build(_history(5))
    assert [m["role"] for m in prompt.messages] == ["system"] + ["user"] * 5
    assert not prompt.over_budget
    assert prompt.tokens == sum(count_message(m, "gpt-4o") for m in prompt.messages) + 3


def test_auto_drops_oldest_to_fit_the_window_less_the_reply() -> None:
    history = _history(10)
    one = count_message(history[0], "gpt-4o")
    prompt = _build(history, context_window=one * 4 + 60, completion_reserve=60)
    kept = [m for m in prompt.messages if m["role"] == "user"]
    assert 0 < len(kept) < 10
    assert kept == history[-len(kept) :]
    assert prompt.tokens <= one * 4 and not prompt.over_budget


def test_auto_respects_max_prompt_tokens_and_flags_what_cannot_fit() -> None:
    history = _history(6)
    one = count_message(history[0], "gpt-4o")
    prompt = _build(history, max_prompt_tokens=one * 3)
    assert prompt.tokens <= one * 3 and not prompt.over_budget
    assert prompt.messages[-1] == history[-1]
    # The newest message is always kept; if even it is too big the prompt is over budget.
    prompt = _build(history, max_prompt_tokens=10)
    assert prompt.over_budget and prompt.messages[-1] == history[-1]


def test_last_messages_keeps_the_newest_n() -> None:
    history = _history(5, words=1)
    prompt = _build(history, truncation={"type": "last_messages", "last_messages": 2})
    assert prompt.messages[1:] == history[-2:]


def test_the_runs_own_transcript_is_never_dropped() -> None:
    transcript: list[ChatMessage] = [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "result"},
    ]
    history = _history(8)
    one = count_message(history[0], "gpt-4o")
    prompt = _build(history, transcript=transcript, context_window=one * 3, completion_reserve=0)
    assert prompt.messages[-2:] == transcript
    assert prompt.messages[0] == {"role": "system", "content": "Be brief."}


def test_byte_bound_is_never_below_the_token_count() -> None:
    samples = ["", "hello", "Grüße 日本語 🚀🚀🚀", "x" * 1000, '<|endoftext|> {"a": [1, 2]}', "\n\n\t  "]
    for text in samples:
        for model in ("gpt-4o", "gpt-4"):
            message: ChatMessage = {"role": "user", "content": text}
            assert bound_message(message) >= count_message(message, model)


def test_a_prompt_that_obviously_fits_is_counted_only_when_asked() -> None:
    history = _history(3)
    prompt = _build(history)
    assert prompt.counted is None  # nothing was tokenized
    assert prompt.tokens == sum(count_message(m, "gpt-4o") for m in prompt.messages) + 3
    # Close to the limit the exact count decides, and gives the same answer as counting everything.
    exact = prompt.tokens
    tight = _build(history, context_window=exact, completion_reserve=0)
    assert tight.counted == exact and tight.messages == prompt.messages
