"""Object ids: OpenAI's prefixes, 24 symbols of [A-Za-z0-9], every symbol in use, no repeats."""

from __future__ import annotations

import re
from collections import Counter

from loom.ids import PREFIXES, new_id


def test_ids_have_the_prefix_and_shape() -> None:
    for kind, prefix in PREFIXES.items():
        value = new_id(kind)
        assert value.startswith(prefix)
        assert re.fullmatch(r"[A-Za-z0-9]{24}", value[len(prefix) :]), value


def test_ids_do_not_repeat_and_use_the_whole_alphabet() -> None:
    ids = [new_id("run") for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    symbols = Counter(ch for value in ids for ch in value[len("run_") :])
    assert len(symbols) == 62
    # 120,000 draws over 62 symbols: about 1,935 each; a biased mapping would leave some far off.
    assert min(symbols.values()) > 1600
    assert max(symbols.values()) < 2300
