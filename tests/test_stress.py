"""The kill-and-resume stress test, shortened for CI: 3 SIGKILLs instead of 20 (scripts/stress_kill_resume.py)."""
import importlib.util
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "stress_kill_resume.py"


def _script_module():
    spec = importlib.util.spec_from_file_location("stress_kill_resume", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_three_kills_and_resumes_end_bit_identical(tmp_path):
    p = subprocess.run([sys.executable, str(SCRIPT), "--kills", "3", "--steps", "40", "--seed", "1",
                        "--workdir", str(tmp_path / "work")], capture_output=True, text=True, timeout=300)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert out.strip().splitlines()[-1] == "PASS", out
    assert out.count("SIGKILL") == 3, out
    assert "bit-identical to the uninterrupted run's" in out
    assert "all bit-identical to the reference's" in out


def test_the_checker_notices_a_broken_checkpoint(tmp_path):
    # The stress test is only as good as its checker: a damaged checkpoint must be reported, not passed.
    from scalegpt.model import GPT, preset_config
    from scalegpt.checkpoint.train_state import save_checkpoint

    stress = _script_module()
    model = GPT(preset_config("tiny", vocab_size=100))
    good = save_checkpoint(tmp_path, 2, model, None, {"step": 2}, "")
    bad = save_checkpoint(tmp_path, 4, model, None, {"step": 4}, "")
    assert stress.check_loadable(good) is None
    (bad / "train_state.pt").write_bytes((bad / "train_state.pt").read_bytes()[:100])
    assert "train_state.pt" in stress.check_loadable(bad)
    (good / "model.safetensors").unlink()
    assert stress.check_loadable(good) is not None
    assert [c.name for c in stress.checkpoint_dirs(tmp_path)[0]] == ["step_000002", "step_000004"]


def test_logged_losses_reads_exact_train_records_and_skips_a_torn_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 1, "kind": "train", "loss": 4.123456789012345, "grad_norm": 0.5}\n'
        '{"step": 1, "kind": "val", "loss": 3.9}\n'
        '{"step": 2, "kind": "train", "loss": 3.5, "grad_norm": 0.25}\n'
        '{"step": 3, "kind": "tr')
    assert _script_module().logged_losses(tmp_path) == [(1, 4.123456789012345, 0.5), (2, 3.5, 0.25)]
