"""The Loom console: a web UI served by `loom serve` at `/console/`.

The pages are hand-written HTML, CSS and ES modules under `static/` (no build step). The browser talks to the
public `/v1` API with the user's key; what `/v1` cannot do goes through the small console API of `api.py`,
keyed and project-scoped exactly like `/v1`.
"""
