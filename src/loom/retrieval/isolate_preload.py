"""Imported by the parsing forkserver only (`loom.retrieval.isolate`), never by the server itself.

Loads the parsers' libraries and the chunk vocabulary once, so every child forked to parse a file
starts with them in memory instead of paying for them per file.
"""

from __future__ import annotations

import bs4  # noqa: F401
import docx  # noqa: F401
import pptx  # noqa: F401
import pypdf  # noqa: F401

from loom.retrieval import chunking, parsers  # noqa: F401
from loom.tokens import get_encoding

get_encoding(chunking.CHUNK_ENCODING)
