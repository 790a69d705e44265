"""What the coordinator protocol (`loom.store.coordination`) and its implementations share, in a module of
its own so that the implementations never import the package that chooses between them."""

from __future__ import annotations

from collections.abc import Callable

# A notification's handler: called on the event loop with the payload, once per notification.
Handler = Callable[[str], None]
