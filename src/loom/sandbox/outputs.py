"""What one execution printed and drew, as the host keeps it: bounded, whatever the code sends.

`OutputCollector` keeps the head of the text and (if it overflowed) its tail, and images up to their
count; `collect_iopub` reads one Jupyter iopub message into it.
"""

from __future__ import annotations

import base64
import re
from collections import deque
from collections.abc import Callable
from typing import Any

from loom.sandbox.types import ImageOutput, LogOutput, SandboxLimits

MAX_IMAGE_BYTES = 8 * 1024 * 1024
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


class OutputCollector:
    """Text and images of one execution, bounded: the head of the text, then (if it overflowed) its tail."""

    def __init__(self, limits: SandboxLimits, on_text: Callable[[str], None] | None = None) -> None:
        # Told each piece of text kept in the head as it comes (the pieces are the start of the final
        # logs: what overflows, the truncation note and notices come only at the end).
        self.on_text = on_text
        self.max_images = limits.max_images
        self.head_budget = max(1, limits.max_output_bytes * 3 // 4)
        self.tail_budget = max(1, limits.max_output_bytes - self.head_budget)
        self.outputs: list[LogOutput | ImageOutput] = []
        self.head_used = 0
        self.tail: deque[str] = deque()
        self.tail_len = 0
        self.dropped = 0
        self.images_dropped = 0
        self.truncated = False

    def _append_text(self, s: str) -> None:
        if self.outputs and isinstance(self.outputs[-1], LogOutput):
            self.outputs[-1] = LogOutput(self.outputs[-1].text + s)
        else:
            self.outputs.append(LogOutput(s))

    def text(self, s: str) -> None:
        if not s:
            return
        if not self.truncated:
            n = len(s.encode("utf-8", "surrogatepass"))
            if self.head_used + n <= self.head_budget:
                self.head_used += n
                self._append_text(s)
                if self.on_text is not None:
                    self.on_text(s)
                return
            room = self.head_budget - self.head_used
            head = s.encode("utf-8", "surrogatepass")[:room].decode("utf-8", "ignore")
            self._append_text(head)
            if self.on_text is not None and head:
                self.on_text(head)
            self.head_used = self.head_budget
            self.truncated = True
            s = s[len(head) :]
        self.tail.append(s)
        self.tail_len += len(s)
        while self.tail_len > self.tail_budget and self.tail:
            first = self.tail[0]
            excess = self.tail_len - self.tail_budget
            if len(first) <= excess:
                self.tail.popleft()
                self.tail_len -= len(first)
                self.dropped += len(first)
            else:
                self.tail[0] = first[excess:]
                self.tail_len -= excess
                self.dropped += excess

    def image(self, png: bytes) -> None:
        if len([o for o in self.outputs if isinstance(o, ImageOutput)]) >= self.max_images:
            self.images_dropped += 1
            return
        self.outputs.append(ImageOutput(png))

    def finish(self, notice: str | None) -> list[LogOutput | ImageOutput]:
        if self.truncated:
            tail = "".join(self.tail)
            # Start the tail on a line boundary when one is near.
            cut = tail.find("\n")
            if 0 <= cut < 200 and cut + 1 < len(tail):
                self.dropped += cut + 1
                tail = tail[cut + 1 :]
            self._append_text(f"\n[... output truncated: {self.dropped} characters not shown ...]\n{tail}")
        if self.images_dropped:
            self._append_text(f"\n[{self.images_dropped} more image(s) not shown: limit {self.max_images}]\n")
        if notice:
            logs = "".join(o.text for o in self.outputs if isinstance(o, LogOutput))
            self._append_text(("" if not logs or logs.endswith("\n") else "\n") + notice + "\n")
        return self.outputs


def collect_iopub(m: dict[str, Any], out: OutputCollector) -> bool:
    """Collect one iopub message; True when it is the kernel's "idle" for our request."""
    kind = m.get("msg_type")
    content = m.get("content") or {}
    if kind == "status":
        return content.get("execution_state") == "idle"
    if kind == "stream":
        text = content.get("text")
        if isinstance(text, str):
            out.text(text)
    elif kind == "error":
        tb = content.get("traceback")
        if isinstance(tb, list) and tb:
            text = "\n".join(str(line).rstrip("\n") for line in tb)
        else:
            text = f"{content.get('ename', 'Error')}: {content.get('evalue', '')}"
        out.text(_ANSI.sub("", text) + "\n")
    elif kind in ("execute_result", "display_data", "update_display_data"):
        data = content.get("data") or {}
        png = data.get("image/png") if isinstance(data, dict) else None
        if isinstance(png, str) and len(png) <= MAX_IMAGE_BYTES * 4 // 3 + 4:
            try:
                raw = base64.b64decode(png)
            except ValueError:
                raw = b""
            if raw.startswith(PNG_MAGIC):
                out.image(raw)
                return False
        text = data.get("text/plain") if isinstance(data, dict) else None
        if isinstance(text, str):
            out.text(_ANSI.sub("", text) + "\n")
    return False
