"""The console in a real browser (Debian's Chromium, headless, driven by Playwright): sign-in, a thread by deep
link with its messages, runs and steps, a run followed live, the playground streaming and taking function
outputs by hand, a vector store ingesting and searching, an assistant edited, and another project seeing none
of it. Screenshots of the main pages land in test-artifacts/console/."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import openai
import pytest
from playwright.sync_api import Browser, FilePayload, expect

from tests.conftest import DEFAULT_KEY
from tests.console.conftest import CHROMIUM_ARGS, WAIT_MS, Console
from tests.fakes.upstream import FakeUpstream, ToolCallSpec, Turn
from tests.support.server import LoomServer

pytestmark = pytest.mark.console

FUNCTION_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_sign_in_keeps_the_deep_link_and_a_bad_key_returns_to_sign_in(
    console: Console, e2e_client: openai.OpenAI
) -> None:
    thread = e2e_client.beta.threads.create(messages=[{"role": "user", "content": "hello from the sign-in test"}])
    page = console.page
    page.goto(f"{console.origin}/console/threads/{thread.id}")
    page.wait_for_url(re.compile(r"/console/signin\?next="))
    page.fill("input[name=key]", "sk-not-a-real-key-0000")
    page.click("button[type=submit]")
    expect(page.locator("[role=alert]")).to_contain_text("Incorrect API key provided: sk-not***0000.")
    console.shot("signin")
    page.fill("input[name=key]", DEFAULT_KEY)
    page.click("button[type=submit]")
    page.wait_for_url(f"{console.origin}/console/threads/{thread.id}")
    console.ready()
    expect(page.locator(".message.role-user")).to_contain_text("hello from the sign-in test")
    expect(page.locator("#project")).to_have_text("project default")
    # The key is revoked (here: replaced by one the server does not know): the next request returns to sign-in.
    page.evaluate("sessionStorage.setItem('loom.console.key', 'sk-revoked-key-99999')")
    page.click("nav >> text=Assistants")
    page.wait_for_url(re.compile(r"/console/signin\?next=%2Fconsole%2Fassistants"))
    expect(page.locator("[role=alert]")).to_contain_text("Incorrect API key provided")
    assert page.evaluate("sessionStorage.getItem('loom.console.key')") is None


def test_open_mode_signs_in_directly(browser: Browser, upstream: FakeUpstream) -> None:
    with LoomServer(api_keys=(), upstream_base_url=upstream.base_url) as server:
        context = browser.new_context()
        context.set_default_timeout(WAIT_MS)
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{server.port}/")
        page.wait_for_url(re.compile(r"/console/threads$"))
        page.wait_for_selector("main[data-state=ready]")
        expect(page.locator("#project")).to_have_text("open mode")
        context.close()


def test_thread_deep_link_shows_messages_runs_and_steps(
    console: Console, e2e_client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    assistant = e2e_client.beta.assistants.create(model="gpt-4o", tools=[FUNCTION_TOOL])
    thread = e2e_client.beta.threads.create(
        messages=[{"role": "user", "content": "What is the weather in Paris?"}], metadata={"customer": "acme"}
    )
    upstream.push(Turn.calls(ToolCallSpec("get_weather", {"city": "Paris"}, id="call_weather1")))
    upstream.push(Turn.reply("It is sunny in Paris."))
    run = e2e_client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    assert run.status == "requires_action" and run.required_action is not None
    call_id = run.required_action.submit_tool_outputs.tool_calls[0].id
    run = e2e_client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": call_id, "output": "sunny, 24C"}]
    )
    assert run.status == "completed" and run.usage is not None

    console.sign_in_as(DEFAULT_KEY)
    page = console.open(f"/console/threads/{thread.id}")
    messages = page.locator("#messages .message")
    expect(messages).to_have_count(2)
    expect(messages.nth(0)).to_contain_text("What is the weather in Paris?")
    expect(messages.nth(1)).to_contain_text("It is sunny in Paris.")
    expect(page.locator("dl.kv").first).to_contain_text("customer=acme")
    run_el = page.locator(f"section.run[data-id={run.id}]")
    expect(run_el).to_have_attribute("data-status", "completed")
    expect(run_el).to_contain_text("gpt-4o")
    usage = run.usage
    expect(run_el).to_contain_text(
        f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion = {usage.total_tokens} tokens"
    )
    call = run_el.locator(".step.t-tool_calls .call.fn")
    expect(call).to_contain_text("get_weather")
    expect(call.locator("pre.args")).to_contain_text('"city": "Paris"')
    expect(call.locator("pre.output")).to_have_text("sunny, 24C")
    expect(run_el.locator(".step.t-message_creation")).to_contain_text("created message")
    console.shot("thread")


def test_a_run_in_progress_updates_live(console: Console, e2e_client: openai.OpenAI, upstream: FakeUpstream) -> None:
    assistant = e2e_client.beta.assistants.create(model="gpt-4o")
    thread = e2e_client.beta.threads.create(messages=[{"role": "user", "content": "Count slowly."}])
    final = "one two three four five six seven eight nine ten eleven twelve"
    gate = f"live-{uuid.uuid4().hex}"
    # The reply holds after its first event and again after three pieces, each time until this test releases
    # it: the run is mid-stream for as long as the test needs, however loaded the machine.
    upstream.push(Turn.reply(final, chunk_size=2, gate=gate, gate_after=(1, 4)))
    run = e2e_client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    upstream.wait_held(gate, 1)
    console.sign_in_as(DEFAULT_KEY)
    page = console.page
    with page.expect_response(lambda r: r.url.endswith(f"/runs/{run.id}/events")):
        console.open(f"/console/threads/{thread.id}")  # the page follows the run's events from here on
    page.evaluate("window.__sameDocument = true")
    run_el = page.locator(f"section.run[data-id={run.id}]")
    expect(run_el).to_have_attribute("data-status", "in_progress")
    text = page.locator("#messages .message.role-assistant .text")
    upstream.release(gate)
    upstream.wait_held(gate, 2)
    # Part of the answer shows while the run is still going (its events, as they come).
    expect(text).to_have_text("one tw")
    expect(run_el).to_have_attribute("data-status", "in_progress")
    upstream.release(gate)
    expect(run_el).to_have_attribute("data-status", "completed")
    expect(text).to_have_text(final)
    assert page.evaluate("window.__sameDocument") is True  # no reload: the page followed the run's events


def test_a_page_opened_mid_answer_shows_the_text_so_far_then_the_rest_once(
    console: Console, e2e_client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    assistant = e2e_client.beta.assistants.create(model="gpt-4o")
    thread = e2e_client.beta.threads.create(messages=[{"role": "user", "content": "Count slowly."}])
    final = "one two three four five six seven eight nine ten eleven twelve"
    gate = f"joined-{uuid.uuid4().hex}"
    # Six pieces, then the reply holds: the page opens mid-answer. The engine saves streamed text about once a
    # second and only as pieces arrive, so what the page shows of it comes from the run's live record.
    upstream.push(Turn.reply(final, chunk_size=3, gate=gate, gate_after=7))
    run = e2e_client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    upstream.wait_held(gate)
    so_far = final[:18]
    console.sign_in_as(DEFAULT_KEY)
    page = console.open(f"/console/threads/{thread.id}")
    answer = page.locator("#messages .message.role-assistant")
    expect(answer.locator(".text")).to_have_text(so_far)
    expect(page.locator(f"section.run[data-id={run.id}]")).to_have_attribute("data-status", "in_progress")
    upstream.release(gate)
    expect(page.locator(f"section.run[data-id={run.id}]")).to_have_attribute("data-status", "completed")
    expect(answer.locator(".text")).to_have_text(final)  # every piece once: none lost, none twice
    expect(answer).to_have_count(1)


def test_playground_streams_an_answer_token_by_token(
    console: Console, e2e_client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    assistant = e2e_client.beta.assistants.create(model="gpt-4o", name=f"Streamer {uuid.uuid4().hex[:6]}")
    final = "Streaming arrives a few characters at a time, and the page shows each piece as it comes."
    gate = f"playground-{uuid.uuid4().hex}"
    # Four pieces, then the reply holds until released: the page is seen mid-answer on any machine.
    upstream.push(Turn.reply(final, chunk_size=3, gate=gate, gate_after=5))
    console.sign_in_as(DEFAULT_KEY)
    page = console.open(f"/console/playground?assistant={assistant.id}")
    page.fill("textarea[name=message]", "Tell me about streaming.")
    page.click("button:has-text('Send')")
    upstream.wait_held(gate)
    answer = page.locator("#chat .message.role-assistant .text")
    expect(answer).to_have_text("Streaming ar")
    expect(page.locator("#chat section.run")).to_have_attribute("data-status", "in_progress")
    upstream.release(gate)
    expect(answer).to_have_text(final)
    expect(page.locator("#chat section.run")).to_have_attribute("data-status", "completed")
    expect(page.locator("#chat .message.role-user")).to_contain_text("Tell me about streaming.")
    thread_link = page.locator("a[href^='/console/threads/thread_']")
    thread_id = (thread_link.text_content() or "").strip()
    assert [m.role for m in e2e_client.beta.threads.messages.list(thread_id, order="asc").data] == ["user", "assistant"]
    console.shot("playground")


def test_playground_takes_function_outputs_by_hand(
    console: Console, e2e_client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    assistant = e2e_client.beta.assistants.create(model="gpt-4o", tools=[FUNCTION_TOOL])
    upstream.push(Turn.calls(ToolCallSpec("get_weather", {"city": "Oslo"}, id="call_oslo")))
    upstream.push(Turn.reply("Oslo is cold today."))
    console.sign_in_as(DEFAULT_KEY)
    page = console.open(f"/console/playground?assistant={assistant.id}")
    page.fill("textarea[name=message]", "Weather in Oslo?")
    page.click("button:has-text('Send')")
    form = page.locator("form.tool-outputs")
    expect(form).to_contain_text("get_weather")
    expect(form.locator("pre.args")).to_contain_text('"city": "Oslo"')
    expect(page.locator("#chat section.run")).to_have_attribute("data-status", "requires_action")
    expect(form.locator("textarea")).to_be_focused()  # the next keystroke belongs to the output the run waits for
    console.shot("playground-requires-action")
    form.locator("textarea").fill("-3C and snowing")
    form.locator("button:has-text('Submit outputs')").click()
    expect(page.locator("#chat .message.role-assistant .text")).to_have_text("Oslo is cold today.")
    expect(page.locator("#chat section.run")).to_have_attribute("data-status", "completed")
    expect(page.locator("#chat .call.fn pre.output")).to_have_text("-3C and snowing")
    tool_messages = [m for m in upstream.requests[-1].messages if m.get("role") == "tool"]
    assert [m["content"] for m in tool_messages] == ["-3C and snowing"]


def test_vector_store_upload_reaches_completed_and_search_finds_it(console: Console) -> None:
    console.sign_in_as(DEFAULT_KEY)
    page = console.open("/console/vector_stores")
    name = f"handbook {uuid.uuid4().hex[:6]}"
    page.fill("input[name=name]", name)
    page.click("button:has-text('Create vector store')")
    page.wait_for_url(re.compile(r"/console/vector_stores/vs_"))
    console.ready()
    expect(page.locator("h1")).to_have_text(name)
    text = (
        "The office espresso machine is descaled every Friday by the facilities team.\n"
        "Parking permits are renewed each January at the front desk.\n"
    )
    payload: FilePayload = {"name": "handbook.txt", "mimeType": "text/plain", "buffer": text.encode()}
    page.set_input_files("form.upload input[type=file]", files=[payload])
    page.click("form.upload button:has-text('Upload')")
    row = page.locator("#store-files-table tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_have_attribute("data-status", "completed")
    expect(row).to_contain_text("handbook.txt")
    expect(page.locator("dl.kv")).to_contain_text("1/1 completed")
    page.fill("input[name=query]", "when is the espresso machine descaled")
    page.click("form.search button:has-text('Search')")
    first = page.locator("#search-results ol.results li").first
    expect(first).to_contain_text("descaled every Friday")
    expect(first).to_contain_text("handbook.txt")
    score = float(first.locator(".score").text_content() or "nan")
    assert 0 < score <= 1
    console.shot("vector-store")


def test_edit_an_assistant(console: Console, e2e_client: openai.OpenAI) -> None:
    assistant = e2e_client.beta.assistants.create(model="gpt-4o", name="Before", instructions="Old instructions.")
    console.sign_in_as(DEFAULT_KEY)
    page = console.open(f"/console/assistants/{assistant.id}")
    expect(page.locator("input[name=name]")).to_have_value("Before")
    page.fill("input[name=name]", "After")
    page.fill("textarea[name=instructions]", "New instructions.")
    page.check("input[name=file_search]")
    page.fill("input[name=temperature]", "0.3")
    page.fill("textarea[name=metadata]", "{")
    page.click("button:has-text('Save')")
    expect(page.locator("form .status-line [role=alert]")).to_contain_text("Metadata is not valid JSON")
    page.fill("textarea[name=metadata]", json.dumps({"team": "support"}))
    page.click("button:has-text('Save')")
    expect(page.locator("form .status-line")).to_contain_text(f"Saved {assistant.id}.")
    console.shot("assistant")
    saved = e2e_client.beta.assistants.retrieve(assistant.id)
    assert (saved.name, saved.instructions, saved.temperature) == ("After", "New instructions.", 0.3)
    assert [t.type for t in saved.tools] == ["file_search"] and saved.metadata == {"team": "support"}
    # An error from the API shows OpenAI's message.
    page.fill("textarea[name=metadata]", json.dumps({"team": "x" * 600}))
    page.click("button:has-text('Save')")
    expect(page.locator("form .status-line [role=alert]")).to_contain_text("Invalid 'metadata")


def test_another_project_sees_none_of_it(
    console: Console, e2e_client: openai.OpenAI, e2e_other_key: str, upstream: FakeUpstream
) -> None:
    assistant = e2e_client.beta.assistants.create(model="gpt-4o", name="Private helper")
    thread = e2e_client.beta.threads.create(messages=[{"role": "user", "content": "secret"}])
    store = e2e_client.vector_stores.create(name="private store")
    console.sign_in_as(e2e_other_key)
    page = console.open("/console/threads")
    expect(page.locator("#project")).to_have_text("project console-other")
    assert thread.id not in (page.locator("main").text_content() or "")
    page = console.open(f"/console/threads?q={thread.id}")
    expect(page.locator("p.empty")).to_contain_text("No thread matches")
    for path, message in (
        (f"/console/threads/{thread.id}", f"No thread found with id '{thread.id}'."),
        (f"/console/assistants/{assistant.id}", f"No assistant found with id '{assistant.id}'."),
        (f"/console/vector_stores/{store.id}", f"No vector store found with id '{store.id}'."),
    ):
        assert console.open(path) and console.ready() == "error", path
        expect(page.locator("main [role=alert]")).to_have_text(message)
    page = console.open("/console/assistants")
    assert "Private helper" not in (page.locator("main").text_content() or "")


def test_threads_list_pages_and_fits_a_phone(
    browser: Browser, e2e_server: LoomServer, e2e_client: openai.OpenAI
) -> None:
    tag = uuid.uuid4().hex
    ids = [e2e_client.beta.threads.create(metadata={"suite": tag}).id for _ in range(55)]
    context = browser.new_context(viewport={"width": 390, "height": 844})
    context.set_default_timeout(WAIT_MS)
    context.add_init_script(f"sessionStorage.setItem('loom.console.key', {json.dumps(DEFAULT_KEY)})")
    page = context.new_page()
    page.goto(f"http://127.0.0.1:{e2e_server.port}/console/threads?q=suite%3D{tag}")
    page.wait_for_selector("main[data-state=ready]")
    rows = page.locator("#threads-table tbody tr")
    expect(rows).to_have_count(50)
    expect(rows.first).to_contain_text(ids[-1])
    # Nothing wider than the screen but the table, which scrolls inside its own box.
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.click("button:has-text('Older')")
    page.wait_for_url(re.compile(r"after=thread_"))
    page.wait_for_selector("main[data-state=ready]")
    expect(rows).to_have_count(5)
    expect(rows.last).to_contain_text(ids[0])
    page.click("button:has-text('Newer')")
    page.wait_for_url(re.compile(r"before=thread_"))
    page.wait_for_selector("main[data-state=ready]")
    expect(rows).to_have_count(50)
    expect(rows.first).to_contain_text(ids[-1])
    context.close()


def test_chromium_flags_keep_the_browser_offline() -> None:
    # The suite's browser never reaches out (updates, sync, QUIC probes): nothing leaves this machine.
    for flag in ("--disable-background-networking", "--disable-component-update", "--disable-sync", "--headless"):
        assert flag in CHROMIUM_ARGS


def test_a_long_thread_shows_every_message_once_in_order(console: Console, e2e_client: openai.OpenAI) -> None:
    # More than two pages of /v1 messages, read from both ends at once: none lost, none twice, in order.
    thread = e2e_client.beta.threads.create()
    for i in range(251):
        e2e_client.beta.threads.messages.create(thread.id, role="user", content=f"message number {i}")
    console.sign_in_as(DEFAULT_KEY)
    page = console.open(f"/console/threads/{thread.id}")
    texts = page.locator("#messages .message .text").all_text_contents()
    assert texts == [f"message number {i}" for i in range(251)]
