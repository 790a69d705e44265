"""Annotations of an assistant message: where its text quotes a citation marker or a sandbox file link."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from loom.runs.tools import Citation


def annotate(text: str, citations: Sequence[Citation]) -> list[dict[str, Any]]:
    """Annotations for every place the text quotes a citation's text, in text order; where two
    citations start at the same place, the longer one wins."""
    found: list[dict[str, Any]] = []
    taken: set[int] = set()
    for citation in sorted(citations, key=lambda c: -len(c.text)):
        start = text.find(citation.text)
        while start != -1:
            if start not in taken:
                taken.add(start)
                found.append(
                    {
                        "type": citation.kind,
                        "text": citation.text,
                        "start_index": start,
                        "end_index": start + len(citation.text),
                        citation.kind: {"file_id": citation.file_id},
                    }
                )
            start = text.find(citation.text, start + 1)
    return sorted(found, key=lambda a: a["start_index"])
