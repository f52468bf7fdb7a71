"""Shared test fixtures. Tests run offline on CPU: the HF hub is switched off before anything imports it."""
from __future__ import annotations

import os

# Must happen before huggingface_hub/transformers are imported, which read these once at import time; without them
# a hub lookup would wait on network timeouts instead of failing at once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
SHAKESPEARE = DATA_DIR / "tinyshakespeare.txt"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    assert DATA_DIR.is_dir(), f"shared test data missing: {DATA_DIR}"
    return DATA_DIR


@pytest.fixture(scope="session")
def shakespeare_text(data_dir) -> str:
    return (data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")


@pytest.fixture
def tiny_model():
    """A 2-layer model small enough for any test (vocab 100, padded to 128)."""
    from scalegpt.model import GPT, preset_config

    return GPT(preset_config("tiny", vocab_size=100)).eval()


@pytest.fixture
def run_cli(capsys):
    """Run `scalegpt ARGS...` in-process: returns (exit code, stdout, stderr)."""
    from scalegpt.cli import main

    def run(*args: str):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:  # argparse exits for --help, --version and usage errors
            rc = e.code
        out, err = capsys.readouterr()
        return rc, out, err

    return run
