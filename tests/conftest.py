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

# Runs compared bit for bit (resume tests) must compute with one thread count: pin torch's default instead of the
# trainer measuring one per run (tests/test_runtime.py tests the measuring with this unset).
os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))

TESTS_DIR = Path(__file__).resolve().parent
# Small real fixtures shipped with the repository (tests/data/README.md): always present.
DATA_DIR = TESTS_DIR / "data"
SHAKESPEARE = DATA_DIR / "tinyshakespeare.txt"
HELLASWAG_SAMPLE = DATA_DIR / "hellaswag_val_sample.jsonl"
HELLASWAG_FIRST20 = DATA_DIR / "hellaswag_val_first20.txt"
# Large corpora that are not shipped: a checkout may have them in ../shared/data (shared/data/README.md).
SHARED_DATA_DIR = TESTS_DIR.parents[1] / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """tests/data: the small fixtures every test may rely on."""
    assert DATA_DIR.is_dir(), f"test data missing: {DATA_DIR}"
    return DATA_DIR


@pytest.fixture(scope="session")
def shakespeare_text(data_dir) -> str:
    return (data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def shared_data():
    """`shared_data("dickens/dickens.txt")`: the path of a large corpus in ../shared/data, or a skip that says which
    file is missing. Tests that use this fixture get the `shared_data` marker (see pytest_collection_modifyitems)."""

    def get(relpath: str) -> Path:
        path = SHARED_DATA_DIR / relpath
        if not path.is_file():
            pytest.skip(f"needs ../shared/data/{relpath} (large corpus, not shipped in tests/data): {path} is absent")
        return path

    return get


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.shared_data)


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


@pytest.fixture
def fake_clock(monkeypatch):
    """The trainer's clock (scalegpt.budget.clock) advancing `fake_clock.tick` seconds per reading (default 0.05):
    a time budget then fixes the same max_steps on a loaded machine as on a quiet one."""
    import types

    from scalegpt import budget

    state = types.SimpleNamespace(now=1000.0, tick=0.05)

    def clock() -> float:
        state.now += state.tick
        return state.now

    monkeypatch.setattr(budget, "clock", clock)
    return state
