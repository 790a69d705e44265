"""Wall-clock time as the API shows it: integer Unix seconds."""

from __future__ import annotations

import time


def now() -> int:
    return int(time.time())
