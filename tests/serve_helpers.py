"""Helpers for the `scalegpt serve` tests: a small checkpoint whose greedy choices are clear-cut, and a server
process on a free port that is always stopped."""
from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
STARTUP_S = 240  # importing torch + fastapi on a loaded 2-core machine takes a while


def make_checkpoint(directory: Path, text: str, block_size: int = 256, **model) -> Path:
    """A tiny char-level model with weights drawn wider than GPT-2's init, so its logits are spread out and greedy
    argmaxes are far from ties (batched and unbatched float rounding then cannot flip them)."""
    from scalegpt.checkpoint import save_model_dir
    from scalegpt.model import GPT, preset_config
    from scalegpt.tokenizer import CharTokenizer

    tok = CharTokenizer.from_text(text)
    torch.manual_seed(1234)
    gpt = GPT(preset_config("tiny", vocab_size=tok.vocab_size, block_size=block_size, **model))
    with torch.no_grad():
        for name, p in gpt.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.5 if "wte" in name or "wpe" in name else 0.15)
    save_model_dir(gpt, directory, tokenizer_spec=tok.spec())
    return directory


@contextlib.contextmanager
def server(*args: str):
    """`scalegpt serve ARGS --port 0` in a subprocess; yields (base_url, process). Stopped (SIGTERM, then kill) on
    exit whatever happened."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "scalegpt", "serve", *args, "--port", "0"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        deadline, seen = time.monotonic() + STARTUP_S, []
        while True:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"the server did not start in {STARTUP_S} s: {''.join(seen)}") from None
            seen.append(line)
            if "serving" in line and "http://" in line:
                url = line.split("http://", 1)[1].split()[0]
                break
            if proc.poll() is not None:
                raise AssertionError(f"the server exited with {proc.returncode}: {''.join(seen)}")
        proc.output = lines  # the rest of its output, for tests that read it
        yield f"http://{url}", proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
