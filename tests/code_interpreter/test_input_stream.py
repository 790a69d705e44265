"""The incremental decoder of the code interpreter's `code` argument (what streams as `input` deltas)."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from loom.runs.code_interpreter import CodeDecoder, CodeInputStream, code_from_arguments


def streamed(arguments: str, cuts: list[int]) -> list[str]:
    """The input pieces a stream emits when the arguments arrive cut at these offsets."""
    stream = CodeInputStream("call_x")
    assert stream.opening() == {
        "id": "call_x",
        "type": "code_interpreter",
        "code_interpreter": {"input": "", "outputs": []},
    }
    pieces: list[str] = []
    bounds = [0, *sorted(cuts), len(arguments)]
    for start, end in itertools.pairwise(bounds):
        delta = stream.feed(arguments[start:end])
        if delta is not None:
            assert set(delta) == {"type", "code_interpreter"}  # never the id again
            pieces.append(delta["code_interpreter"]["input"])
    delta = stream.close(arguments)
    if delta is not None:
        pieces.append(delta["code_interpreter"]["input"])
    return pieces


CODES = [
    "print('hello')",
    'x = "quoted \\"inner\\" text"\nprint(x)\n',
    "path = 'C:\\\\temp\\\\new'\t# tab\r\n",
    "s = 'café 😀 € \u2028 \x00 \x1f'",
    "",
    "/* slash */ \b \f",
]


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("ascii_only", [True, False])
def test_every_cut_gives_the_code(code: str, ascii_only: bool) -> None:
    arguments = json.dumps({"code": code}, ensure_ascii=ascii_only)
    assert code_from_arguments(arguments) == code
    for cut in range(len(arguments) + 1):  # one cut anywhere: inside escapes, \uXXXX, surrogate pairs
        assert "".join(streamed(arguments, [cut])) == code
    assert "".join(streamed(arguments, list(range(1, len(arguments))))) == code  # one character at a time


def test_random_cuts_and_whitespace() -> None:
    rnd = random.Random(7)
    alphabet = ["a", '"', "\\", "\n", "\t", "é", "😀", "/", " ", "\u0001"]
    for _ in range(300):
        code = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 40)))
        arguments = json.dumps({"code": code}, ensure_ascii=rnd.random() < 0.5, indent=rnd.choice([None, 2]))
        cuts = rnd.sample(range(len(arguments) + 1), k=min(len(arguments), rnd.randint(0, 12)))
        pieces = streamed(arguments, cuts)
        assert "".join(pieces) == code == code_from_arguments(arguments)
        assert all(pieces)


def test_the_code_streams_before_the_arguments_end() -> None:
    decoder = CodeDecoder()
    assert decoder.feed('{"co') == ""
    assert decoder.feed('de": "impo') == "impo"
    assert decoder.feed("rt os\\") == "rt os"  # the escape waits for its second character
    assert decoder.feed("nprint(1)\\u00") == "\nprint(1)"
    assert decoder.feed("e9\\ud83d") == "é"  # a high surrogate waits for its low half
    assert decoder.feed('\\ude00"') == "😀"
    assert decoder.done
    assert decoder.feed(', "other": "ignored"}') == ""
    assert decoder.text == "import os\nprint(1)é😀"


def test_raw_code_and_other_shapes_fall_back_to_the_whole_input() -> None:
    for arguments, code in [
        ("print(1)", "print(1)"),
        ('{"input": "print(2)"}', "print(2)"),
        ('"print(3)"', "print(3)"),
        ("{}", ""),
        ("", ""),
    ]:
        assert code_from_arguments(arguments) == code
        assert streamed(arguments, list(range(1, len(arguments)))) == ([code] if code else [])


def test_sloppy_json() -> None:
    # Raw newlines inside the string (invalid JSON, common from small models) are kept as written.
    assert code_from_arguments('{"code": "a = 1\nprint(a)"}') == "a = 1\nprint(a)"
    # Arguments cut short (finish_reason "length"): the code written so far, as streamed.
    assert code_from_arguments('{"code": "print(1') == "print(1"
    assert "".join(streamed('{"code": "print(1\\', [3, 12])) == "print(1"
    # Lone surrogates cannot be encoded: replaced, identically streamed or not.
    assert code_from_arguments('{"code": "a\\ud83db\\ude00"}') == "a\ufffdb\ufffd"
    assert "".join(streamed('{"code": "x\\ud83d"}', [10, 14])) == "x\ufffd"
    assert code_from_arguments('{"code": "\\q\\u12G4"}') == "q\ufffd"
