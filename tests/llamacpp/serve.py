"""`python -m llama_cpp.server`, with llama.cpp's extra CPU buffer types off (run by .venv-llamacpp's Python).

With them on (weights repacked for AVX-512/AMX kernels, which llama.cpp picks on CPUs that report
AMX, as this project's machines do), llama-cpp-python 0.3.36 crashes with SIGSEGV on the first prompt
of more than one token. Off, the same kernels as everywhere else run. Arguments are the server's own.
"""

from __future__ import annotations

from typing import Any

import llama_cpp.llama_cpp as bindings  # what `llama_cpp.Llama` reads its defaults from
from llama_cpp.server.__main__ import main

_defaults = bindings.llama_model_default_params


def _without_extra_buffer_types() -> Any:
    params = _defaults()
    params.use_extra_bufts = False
    return params


bindings.llama_model_default_params = _without_extra_buffer_types

if __name__ == "__main__":
    main()
