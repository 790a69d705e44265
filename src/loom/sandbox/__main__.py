"""`python -m loom.sandbox check` | `python -m loom.sandbox setup [...]`."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["check"]:
        from loom.sandbox.check import main as check_main

        return check_main()
    if args[:1] == ["setup"]:
        from loom.sandbox.setup import main as setup_main

        return setup_main(args[1:])
    print("usage: python -m loom.sandbox {check | setup [--env PATH] [--python PATH] [--force] [-q]}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
