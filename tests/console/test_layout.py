"""No layout jumps while a run streams (Chromium): in the playground and on a thread page watching a live run,
the answer is held mid-way by the scripted upstream and released in steps; at each step every element of the
page keeps its place except the growing message and what lies below it, the page's landmarks (header, nav,
earlier messages, the run panels, the composer) keep their whole boxes, and the Cumulative Layout Shift the
browser measures (`layout-shift` entries without recent input) stays 0."""

from __future__ import annotations

import uuid
from typing import Any

import openai
import pytest
from playwright.sync_api import Page, expect

from tests.conftest import DEFAULT_KEY
from tests.console.conftest import Console
from tests.fakes.upstream import FakeUpstream, Turn

pytestmark = pytest.mark.console

# Collects the page's layout shifts from its first paint on (Chromium's Layout Instability API).
OBSERVE_SHIFTS = """
window.__shifts = [];
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) window.__shifts.push({t: e.startTime, value: e.value, input: e.hadRecentInput,
    sources: (e.sources || []).map((s) => s.node ? (s.node.id || s.node.className || s.node.nodeName) : "?")});
}).observe({type: "layout-shift", buffered: true});
"""

# Every rendered element's box by its place in the document (tag and position among its siblings, so that
# a part re-rendered in place keeps its key), in the coordinates of its scroll container: scrolling to
# follow the answer is not a jump, a box moving within its container is.
BOXES = """
(messageSelector) => {
  const key = (el) => {
    const parts = [];
    for (let e = el; e && e !== document.body; e = e.parentElement) {
      let i = 1;
      for (let s = e.previousElementSibling; s; s = s.previousElementSibling) i++;
      parts.push(`${e.tagName.toLowerCase()}:${i}`);
    }
    return parts.reverse().join(">");
  };
  const all = [...document.body.querySelectorAll("*")];
  const scrollers = new Set(all.filter((el) => ["auto", "scroll"].includes(getComputedStyle(el).overflowY)));
  const boxes = {};
  for (const el of all) {
    const r = el.getBoundingClientRect();
    if (!r.width && !r.height) continue;
    let scroller = el.parentElement;
    while (scroller && !scrollers.has(scroller)) scroller = scroller.parentElement;
    let x = r.left + window.scrollX, y = r.top + window.scrollY, within = "page";
    if (scroller) {
      const c = scroller.getBoundingClientRect();
      x = r.left - c.left + scroller.scrollLeft;
      y = r.top - c.top + scroller.scrollTop;
      within = key(scroller);
    }
    boxes[key(el)] = [x, y, r.width, r.height, within];
  }
  const message = document.querySelector(messageSelector);
  return { boxes, message: message ? key(message) : null, now: performance.now() };
}
"""

Box = list[Any]


def boxes(page: Page, message: str) -> dict[str, Any]:
    result: dict[str, Any] = page.evaluate(BOXES, message)
    return result


def landmark_keys(page: Page, selectors: list[str]) -> list[str]:
    """The keys (as BOXES names them) of every element these selectors match now."""
    keys: list[str] = page.evaluate(
        """(selectors) => selectors.flatMap((s) => [...document.querySelectorAll(s)]).map((el) => {
             const parts = [];
             for (let e = el; e && e !== document.body; e = e.parentElement) {
               let i = 1;
               for (let s = e.previousElementSibling; s; s = s.previousElementSibling) i++;
               parts.push(`${e.tagName.toLowerCase()}:${i}`);
             }
             return parts.reverse().join(">");
           })""",
        selectors,
    )
    return keys


def jumps(before: dict[str, Any], after: dict[str, Any], landmarks: list[str]) -> list[str]:
    """What moved between two snapshots, other than the growing message and what lies below it."""
    message = before["message"]
    assert message is not None and after["message"] == message
    mx, my, mw, mh, mwithin = before["boxes"][message]
    found = []
    for key, box in before["boxes"].items():
        now = after["boxes"].get(key)
        if now is None:
            continue
        x, y, w, h, within = box
        growing = key == message or key.startswith(message + ">")
        below = within == mwithin and y >= my + mh - 0.5 and x < mx + mw and x + w > mx
        if growing or below:
            continue
        if abs(now[0] - x) > 0.5 or abs(now[1] - y) > 0.5:
            found.append(f"{key} moved from {box[:2]} to {now[:2]}")
        elif key in landmarks and (abs(now[2] - w) > 0.5 or abs(now[3] - h) > 0.5):
            found.append(f"{key} (a landmark) resized from {box[2:4]} to {now[2:4]}")
    return found


def assert_steady(before: dict[str, Any], after: dict[str, Any], landmarks: list[str]) -> None:
    found = jumps(before, after, landmarks)
    assert not found, f"{len(found)} jumps:\n" + "\n".join(found[:25])


def layout_shift(page: Page, since: float) -> tuple[float, list[Any]]:
    shifts: list[dict[str, Any]] = page.evaluate("window.__shifts")
    counted = [s for s in shifts if s["t"] >= since and not s["input"]]
    return sum(s["value"] for s in counted), counted


def long_answer() -> str:
    words = [
        "streaming",
        "answers",
        "grow",
        "line",
        "by",
        "line",
        "while",
        "the",
        "page",
        "around",
        "them",
        "must",
        "stay",
        "exactly",
        "where",
        "it",
        "is",
    ]
    return " ".join(words[i % len(words)] for i in range(400))


@pytest.mark.parametrize(("width", "height"), [(1280, 800), (390, 844)], ids=["desktop", "phone"])
def test_the_playground_does_not_jump_while_an_answer_streams(
    console: Console, e2e_client: openai.OpenAI, upstream: FakeUpstream, width: int, height: int
) -> None:
    assistant = e2e_client.beta.assistants.create(model="gpt-4o", name=f"Steady {uuid.uuid4().hex[:6]}")
    final = long_answer()
    gate = f"steady-{uuid.uuid4().hex}"
    holds = (3, 12, 30, 55)  # the answer holds after 2, 11, 29 and 54 pieces of 40 characters
    upstream.push(Turn.reply(final, chunk_size=40, gate=gate, gate_after=holds))
    console.page.set_viewport_size({"width": width, "height": height})
    console.page.context.add_init_script(OBSERVE_SHIFTS)
    console.sign_in_as(DEFAULT_KEY)
    page = console.open(f"/console/playground?assistant={assistant.id}")
    page.fill("textarea[name=message]", "Tell me about steady pages.")
    page.click("button:has-text('Send')")
    answer = "#chat .message.role-assistant"
    text = page.locator(f"{answer} .text")
    upstream.wait_held(gate, 1)
    expect(text).to_have_text(final[:80])
    page.wait_for_timeout(600)  # past the 500 ms after the click in which shifts count as expected
    landmarks = landmark_keys(
        page,
        [
            "header.top",
            "header.top nav",
            ".page-head",
            ".bar",
            "#chat",
            "form.composer",
            "#chat details.run-box",
            "#chat .message.role-user",
        ],
    )
    first = boxes(page, answer)
    for hold, pieces in ((2, 11), (3, 29), (4, 54)):
        upstream.release(gate)
        upstream.wait_held(gate, hold)
        expect(text).to_have_text(final[: 40 * pieces])
        assert_steady(first, boxes(page, answer), landmarks)
    upstream.release(gate)
    expect(page.locator("#chat section.run")).to_have_attribute("data-status", "completed")
    expect(text).to_have_text(final)
    assert_steady(first, boxes(page, answer), landmarks)
    # The chat followed the answer (it grew past the chat's height) by scrolling, not by moving the page.
    assert page.evaluate(
        "(() => { const c = document.querySelector('#chat'); return c.scrollTop > 0 && c.scrollHeight - c.scrollTop - c.clientHeight < 2; })()"
    )
    cls, shifts = layout_shift(page, first["now"])
    assert cls < 0.001, shifts


def test_a_thread_page_watching_a_run_does_not_jump(
    console: Console, e2e_client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    assistant = e2e_client.beta.assistants.create(model="gpt-4o")
    thread = e2e_client.beta.threads.create(
        messages=[{"role": "user", "content": f"earlier question {i}"} for i in range(3)]
    )
    upstream.push(Turn.reply("An earlier answer."))
    e2e_client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    e2e_client.beta.threads.messages.create(thread.id, role="user", content="And now a long one, please.")
    final = long_answer()
    gate = f"steady-thread-{uuid.uuid4().hex}"
    upstream.push(Turn.reply(final, chunk_size=40, gate=gate, gate_after=(3, 12, 30)))
    run = e2e_client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    upstream.wait_held(gate, 1)
    console.page.context.add_init_script(OBSERVE_SHIFTS)
    console.sign_in_as(DEFAULT_KEY)
    page = console.open(f"/console/threads/{thread.id}")
    answer = "#messages .message:last-child"
    text = page.locator(f"{answer} .text")
    expect(text).to_have_text(final[:80])
    live = page.locator(f"section.run[data-id={run.id}]")
    expect(live).to_have_attribute("data-status", "in_progress")
    landmarks = landmark_keys(
        page,
        [
            "header.top",
            "header.top nav",
            ".page-head",
            "dl.kv",
            "#messages .message:not(:last-child)",
            "details.run-box",
            "section.run",
        ],
    )
    first = boxes(page, answer)
    for hold, pieces in ((2, 11), (3, 29)):
        upstream.release(gate)
        upstream.wait_held(gate, hold)
        expect(text).to_have_text(final[: 40 * pieces])
        assert_steady(first, boxes(page, answer), landmarks)
    upstream.release(gate)
    expect(live).to_have_attribute("data-status", "completed")
    expect(text).to_have_text(final)
    # The run's summary line follows it too (its badge keeps its width).
    expect(page.locator(f"details.run-box:has(section.run[data-id={run.id}]) > summary .badge")).to_have_text(
        "completed"
    )
    assert_steady(first, boxes(page, answer), landmarks)
    cls, shifts = layout_shift(page, first["now"])
    assert cls < 0.001, shifts
