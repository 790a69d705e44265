"""Loom: the OpenAI Assistants API, self-hosted."""

__version__ = "0.1.0"
