"""Pluggable memory (issue 12, section 3): what the model was sent for each strategy on a long thread,
honest usage, plug-ins found as entry points, broken plug-ins failing only their run, and nothing
changed for a program that opts into nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import openai
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from loom.memory.recall import RECALL_HEADING
from loom.memory.summary import SUMMARY_HEADING, SUMMARY_INSTRUCTIONS
from tests.fakes.upstream import FakeUpstream, Turn
from tests.support.server import LoomServer

INSTRUCTIONS = "You are terse."


def _is_summary_call(body: dict[str, Any]) -> bool:
    return bool(body["messages"]) and body["messages"][0].get("content") == SUMMARY_INSTRUCTIONS


def _thread(client: openai.OpenAI, texts: list[str], **kw: Any) -> Any:
    return client.beta.threads.create(messages=[{"role": "user", "content": t} for t in texts], **kw)


def _add(client: openai.OpenAI, thread_id: str, *texts: str) -> None:
    for text in texts:
        client.beta.threads.messages.create(thread_id, role="user", content=text)


def _named(name: str, last_messages: int | None = None) -> Any:
    """A `truncation_strategy` naming a memory strategy (the SDK's type lists only OpenAI's two)."""
    return {"type": name, "last_messages": last_messages}


def _main_calls(upstream: FakeUpstream) -> list[list[dict[str, Any]]]:
    return [r.body["messages"] for r in upstream.chat_requests if not _is_summary_call(r.body)]


def _summary_calls(upstream: FakeUpstream) -> list[list[dict[str, Any]]]:
    return [r.body["messages"] for r in upstream.chat_requests if _is_summary_call(r.body)]


@pytest.fixture()
def assistant(client: openai.OpenAI) -> Any:
    return client.beta.assistants.create(model="gpt-4o", instructions=INSTRUCTIONS)


def test_nothing_opted_in_sends_the_whole_thread(client: openai.OpenAI, upstream: FakeUpstream, assistant: Any) -> None:
    texts = [f"message {i}" for i in range(30)]
    thread = _thread(client, texts)
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    assert run.status == "completed"
    assert run.truncation_strategy is not None and run.truncation_strategy.type == "auto"
    assert _main_calls(upstream) == [
        [{"role": "system", "content": INSTRUCTIONS}, *({"role": "user", "content": t} for t in texts)]
    ]
    assert _summary_calls(upstream) == []


def test_summary_folds_older_messages_and_counts_its_tokens(
    client: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    summaries = iter(["SUMMARY ONE", "SUMMARY TWO"])
    upstream.add_rule(
        _is_summary_call,
        lambda body: Turn.reply(next(summaries), usage={"prompt_tokens": 1000, "completion_tokens": 50}),
    )
    upstream.set_default(Turn.reply("ok", usage={"prompt_tokens": 100, "completion_tokens": 7}))
    texts = [f"fact number {i}" for i in range(30)]
    thread = _thread(client, texts, metadata={"loom_memory": "summary"})
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    assert run.status == "completed", run.last_error
    # The 20 oldest were folded (one call: they fit), the 10 newest sent verbatim after the summary.
    (folded,) = _summary_calls(upstream)
    assert "(none yet)" in folded[1]["content"]
    assert all(f"user: fact number {i}\n" in folded[1]["content"] + "\n" for i in range(20))
    assert "fact number 20" not in folded[1]["content"]
    assert _main_calls(upstream)[-1] == [
        {"role": "system", "content": INSTRUCTIONS},
        {"role": "system", "content": f"{SUMMARY_HEADING}\nSUMMARY ONE"},
        *({"role": "user", "content": t} for t in texts[20:]),
    ]
    # Usage is honest: the summary call's tokens are the run's too, and its step's.
    assert run.usage is not None
    assert (run.usage.prompt_tokens, run.usage.completion_tokens) == (1100, 57)
    steps = client.beta.threads.runs.steps.list(run.id, thread_id=thread.id).data
    assert sum(s.usage.prompt_tokens for s in steps if s.usage) == 1100

    # The stored summary is reused: a few more messages need no summary call.
    _add(client, thread.id, "fact number 30")
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    assert len(_summary_calls(upstream)) == 1
    sent = _main_calls(upstream)[-1]
    assert sent[1] == {"role": "system", "content": f"{SUMMARY_HEADING}\nSUMMARY ONE"}
    assert sent[2:] == [
        *({"role": "user", "content": t} for t in texts[20:]),
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "fact number 30"},
    ]
    assert run.usage is not None and run.usage.prompt_tokens == 100

    # As the thread grows the summary is refreshed from the previous one and the messages since.
    _add(client, thread.id, *(f"fact number {i}" for i in range(31, 40)))
    client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    # Pending were 23 (fact 20-29, a reply, fact 30, a reply, fact 31-39): all but the newest 10 folded.
    shown = "\n\n".join([*(f"user: fact number {i}" for i in range(20, 30)), "assistant: ok", "user: fact number 30"])
    assert _summary_calls(upstream)[1][1]["content"] == f"Summary so far:\nSUMMARY ONE\n\nNew messages:\n{shown}"
    assert _main_calls(upstream)[-1] == [
        {"role": "system", "content": INSTRUCTIONS},
        {"role": "system", "content": f"{SUMMARY_HEADING}\nSUMMARY TWO"},
        {"role": "assistant", "content": "ok"},
        *({"role": "user", "content": f"fact number {i}"} for i in range(31, 40)),
    ]


def test_recall_sends_relevant_older_messages_and_the_recent_ones(
    client: openai.OpenAI, loose: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    filler = [
        f"Let us talk about {topic} for a while."
        for topic in ("the weather in spring", "football results", "tax forms", "cooking pasta", "train timetables")
    ]
    texts = [*filler, "My cat is called Whiskers and she loves sardines.", *filler, *filler, *filler]
    thread = _thread(client, [*texts, "What food does my cat love?"])
    run = loose.beta.threads.runs.create_and_poll(
        thread_id=thread.id,
        assistant_id=assistant.id,
        truncation_strategy=_named("recall", 3),
    )
    assert run.status == "completed", run.last_error
    assert run.truncation_strategy is not None
    assert (run.truncation_strategy.type, run.truncation_strategy.last_messages) == ("recall", 3)
    sent = _main_calls(upstream)[-1]
    assert sent[0] == {"role": "system", "content": INSTRUCTIONS}
    recalled = sent[1]["content"]
    assert sent[1]["role"] == "system" and recalled.startswith(RECALL_HEADING)
    assert "[user] My cat is called Whiskers and she loves sardines." in recalled
    # Only a few are recalled, not the whole thread; the 3 newest follow verbatim.
    assert recalled.count("[user]") <= 5
    assert [m["content"] for m in sent[2:]] == [*texts[-2:], "What food does my cat love?"]
    assert _summary_calls(upstream) == []


def test_a_plug_in_found_as_an_entry_point_is_used(
    client: openai.OpenAI, loose: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    texts = [f"line {i}" for i in range(12)]
    thread = _thread(client, texts)
    run = loose.beta.threads.runs.create_and_poll(
        thread_id=thread.id,
        assistant_id=assistant.id,
        truncation_strategy=_named("newest_only"),
    )
    assert run.status == "completed", run.last_error
    assert _main_calls(upstream)[-1] == [
        {"role": "system", "content": INSTRUCTIONS},
        {"role": "system", "content": f"plugin newest_only saw 12 messages of thread {thread.id} for run {run.id}"},
        {"role": "user", "content": "line 11"},
    ]
    # Chosen by the assistant's metadata too (the thread now also holds the first reply).
    chosen = client.beta.assistants.create(model="gpt-4o", metadata={"loom_memory": "newest_only"})
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=chosen.id)
    assert run.status == "completed"
    assert _main_calls(upstream)[-1][0]["content"].startswith("plugin newest_only saw 13 messages")


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("exploding", "The memory strategy 'exploding' failed: RuntimeError: boom in the plug-in"),
        ("garbage", "The memory strategy 'garbage' returned an invalid message at index 0"),
        ("not_a_strategy", "The memory strategy 'not_a_strategy' (loom_test_memory:NotAStrategy) has no"),
        ("no_such_memory", "No memory strategy named 'no_such_memory' is installed"),
    ],
)
def test_a_broken_plug_in_fails_its_run_not_the_server(
    client: openai.OpenAI, upstream: FakeUpstream, assistant: Any, name: str, error: str
) -> None:
    thread = _thread(client, ["hello"], metadata={"loom_memory": name})
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    assert run.status == "failed"
    assert run.last_error is not None and run.last_error.code == "server_error"
    assert run.last_error.message.startswith(error), run.last_error.message
    assert "Traceback" not in run.last_error.message
    assert _main_calls(upstream) == []
    # The server goes on: the same thread runs with OpenAI's own truncation.
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id,
        assistant_id=assistant.id,
        truncation_strategy={"type": "last_messages", "last_messages": 1},
    )
    assert run.status == "completed"


def test_truncation_type_is_still_validated(client: openai.OpenAI, assistant: Any) -> None:
    thread = _thread(client, ["hi"])
    for bad in ("", "two words"):
        with pytest.raises(openai.BadRequestError) as caught:
            client.beta.threads.runs.create(
                thread_id=thread.id,
                assistant_id=assistant.id,
                truncation_strategy=_named(bad),
            )
        assert caught.value.body == {
            "message": f"Invalid value: '{bad}'. Supported values are: 'auto' or 'last_messages'.",
            "type": "invalid_request_error",
            "param": "truncation_strategy.type",
            "code": "invalid_value",
        }


def _memory_rows(server: LoomServer, thread_id: str) -> int:
    """Rows the thread has in the memory table, read from the server's own database."""
    url = server.database_url or f"sqlite+aiosqlite:///{Path(server.data_dir) / 'loom.db'}"

    async def count() -> int:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                found = await conn.execute(
                    sa.text("SELECT count(*) FROM thread_memory WHERE thread_id = :t"), {"t": thread_id}
                )
                return int(found.scalar_one())
        finally:
            await engine.dispose()

    return asyncio.run(count())


def test_a_threads_memory_goes_with_the_thread(
    client: openai.OpenAI, upstream: FakeUpstream, assistant: Any, memory_server: LoomServer
) -> None:
    upstream.add_rule(_is_summary_call, lambda body: Turn.reply("A SUMMARY"))
    upstream.set_default(Turn.reply("ok"))
    thread = _thread(client, [f"fact number {i}" for i in range(30)], metadata={"loom_memory": "summary"})
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    assert run.status == "completed", run.last_error
    assert _memory_rows(memory_server, thread.id) == 1
    assert client.beta.threads.delete(thread.id).deleted
    assert _memory_rows(memory_server, thread.id) == 0


def test_recall_after_the_embedder_changes(upstream: FakeUpstream, tmp_path: Path) -> None:
    """The thread's vectors were made by one embedder; the server restarts with another (of another size):
    recall makes them again with the new one instead of comparing two models' vectors (which failed the
    run: a 256-d matrix against a 384-d query)."""
    from tests.runs.conftest import server_env

    upstream.set_default(Turn.reply("ok"))
    filler = [f"Let us talk about {topic} for a while." for topic in ("the weather", "football", "tax forms")]
    texts = [*filler, "My cat is called Whiskers and she loves sardines.", *filler, *filler]
    loose: dict[str, Any] = {"truncation_strategy": _named("recall", 3)}
    first = LoomServer(data_dir=tmp_path, extra_env=server_env(upstream, LOOM_EMBEDDING_PROVIDER="wordllama"))
    with first, openai.OpenAI(base_url=first.base_url, api_key="sk-test-default", max_retries=0) as client:
        assistant = client.beta.assistants.create(model="gpt-4o", instructions=INSTRUCTIONS)
        thread = _thread(client, [*texts, "Which sport did we discuss?"])
        run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, **loose)
        assert run.status == "completed", run.last_error
    second = LoomServer(data_dir=tmp_path, extra_env=server_env(upstream, LOOM_EMBEDDING_PROVIDER="minilm"))
    with second, openai.OpenAI(base_url=second.base_url, api_key="sk-test-default", max_retries=0) as client:
        _add(client, thread.id, "What food does my cat love?")
        run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, **loose)
        assert run.status == "completed", run.last_error
    recalled = _main_calls(upstream)[-1][1]["content"]
    assert recalled.startswith(RECALL_HEADING) and "Whiskers and she loves sardines" in recalled
