"""The console by keyboard alone (Chromium): sign in, reach every main page, open a thread from the list, and
send a playground message with Tab, Enter, typing and the arrow keys; every stop shows where the focus is."""

from __future__ import annotations

import re
import uuid

import openai
import pytest
from playwright.sync_api import Page, expect

from tests.conftest import DEFAULT_KEY
from tests.console.conftest import Console
from tests.fakes.upstream import FakeUpstream, Turn

pytestmark = pytest.mark.console

# What has the focus, and whether it is visibly marked: an outline on it or, for a control drawn by its label
# (the hidden file input inside "Attach files"), on that label.
FOCUS = """() => {
  const el = document.activeElement;
  if (!el || el === document.body) return null;
  const drawn = el.matches("label.button input") ? el.closest("label") : el;
  const style = getComputedStyle(drawn);
  const outlined = style.outlineStyle !== "none" && parseFloat(style.outlineWidth) >= 2;
  return {
    tag: el.tagName.toLowerCase(), text: (el.textContent || "").trim(), name: el.getAttribute("name"),
    href: el.getAttribute("href"), inMain: !!el.closest("main"),
    visible: el.matches(":focus-visible") && outlined,
  };
}"""


def focused(page: Page) -> dict[str, object]:
    info = page.evaluate(FOCUS)
    assert info is not None, "the focus was lost (it is on the page body)"
    assert info["visible"], f"the focus is not visible on {info}"
    return dict(info)


def tab_to(page: Page, wanted: str, *, key: str = "Tab", limit: int = 60) -> dict[str, object]:
    """Press Tab until the focused element's text, name or href is `wanted`; every stop on the way shows focus."""
    for _ in range(limit):
        page.keyboard.press(key)
        info = focused(page)
        if wanted in (info["text"], info["name"], info["href"]):
            return info
    raise AssertionError(f"{wanted!r} is not reachable with {key} in {limit} presses")


def test_sign_in_browse_open_a_thread_and_chat_by_keyboard(
    console: Console, e2e_client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    tag = uuid.uuid4().hex[:8]
    mine = e2e_client.beta.assistants.create(model="gpt-4o", name=f"Keys {tag}", instructions=f"keyboard {tag}")
    e2e_client.beta.assistants.create(model="gpt-4o", name=f"Decoy {tag}")  # newer: listed first in the picker
    thread = e2e_client.beta.threads.create(
        messages=[{"role": "user", "content": f"typed without a mouse {tag}"}], metadata={"kbd": tag}
    )
    page = console.page

    # Sign in: the key field has the focus; type, Enter.
    page.goto(f"{console.origin}/console/")
    page.wait_for_url(re.compile(r"/console/signin"))
    console.ready()
    assert focused(page)["name"] == "key"
    page.keyboard.type(DEFAULT_KEY)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{console.origin}/console/threads")
    console.ready()
    assert focused(page)["inMain"], "after sign-in the focus is lost"

    # The skip link (first in the page) takes the focus past the navigation into the page.
    tab_to(page, "Skip to content", key="Shift+Tab")
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")
    assert focused(page)["name"] == "q"  # the threads search box, not the navigation

    # Every main page from the navigation (above the page: back with Shift+Tab, then along it with Tab).
    for label, path, key in (
        ("Assistants", "/console/assistants", "Shift+Tab"),
        ("Files", "/console/files", "Tab"),
        ("Vector stores", "/console/vector_stores", "Tab"),
        ("Threads", "/console/threads", "Shift+Tab"),
    ):
        tab_to(page, label, key=key)
        page.keyboard.press("Enter")
        page.wait_for_url(f"{console.origin}{path}")
        assert console.ready() == "ready"
        expect(page.locator("h1")).to_have_text(label)

    # Search the threads list, open the thread from it: the focus moves into the page it opened.
    tab_to(page, "q")
    page.keyboard.type(f"kbd={tag}")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/console/threads\?q="))
    console.ready()
    expect(page.locator("#threads-table tbody tr")).to_have_count(1)
    tab_to(page, f"/console/threads/{thread.id}")
    page.keyboard.press("Enter")
    page.wait_for_url(f"{console.origin}/console/threads/{thread.id}")
    console.ready()
    expect(page.locator("#messages .message.role-user")).to_contain_text(f"typed without a mouse {tag}")
    assert page.evaluate(FOCUS) is not None and page.evaluate(FOCUS)["inMain"], "the focus stayed behind"

    # Continue in the playground: pick the assistant with the arrow keys, type, send with Enter on Send.
    tab_to(page, "Continue in playground")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/console/playground\?thread="))
    console.ready()
    tab_to(page, "assistant")
    for _ in range(10):
        if page.eval_on_selector("select[name=assistant]", "s => s.value") == mine.id:
            break
        page.keyboard.press("ArrowDown")
    assert page.eval_on_selector("select[name=assistant]", "s => s.value") == mine.id
    upstream.push(Turn.reply(f"Answered by keyboard {tag}.", chunk_size=4))
    tab_to(page, "message")
    page.keyboard.type("What did I type?")
    tab_to(page, "Send")
    page.keyboard.press("Enter")
    expect(page.locator("#chat .message.role-assistant .text")).to_have_text(f"Answered by keyboard {tag}.")
    expect(page.locator("#chat section.run")).to_have_attribute("data-status", "completed")
    assert upstream.last_request.messages[0]["content"].endswith(f"keyboard {tag}")
    # Ready for the next message: the focus is back in the message box.
    assert focused(page)["name"] == "message"
    console.shot("keyboard-playground")
