"""scalegpt compare: per-run figures from metrics.jsonl, group mean/std and Welch's p-value against scipy and numpy,
bad files, the overlaid figure; and end to end on two tiny seeds from `scalegpt train --seeds`."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from test_train import TINY, prepare_chars

A_FINALS = [1.71, 1.74, 1.69]
B_FINALS = [1.80, 1.77, 1.83, 1.79]


def write_run(run, final_loss: float, steps: int = 100, tokens_per_step: int = 1000, speed: float = 5000.0,
              hellaswag: float | None = None) -> None:
    """A metrics.jsonl as the trainer writes it: val every 50 steps (the last one = final_loss), train and speed."""
    run.mkdir(parents=True)
    rows = []
    for step in range(0, steps + 1, 50):
        loss = final_loss + 0.5 * (steps - step) / steps
        if step == 50:
            loss = final_loss - 0.01  # the best val loss is not the final one
        rows.append({"step": step, "kind": "val", "loss": loss, "bpb": loss / 0.69, "tokens_seen": step * tokens_per_step,
                     "elapsed_s": step * 0.1})
        if step:
            rows.append({"step": step, "kind": "train", "loss": loss + 0.1, "tokens_seen": step * tokens_per_step,
                         "elapsed_s": step * 0.1})
            rows.append({"step": step, "kind": "speed", "tokens_per_s": speed + step, "elapsed_s": step * 0.1})
    if hellaswag is not None:
        rows.append({"step": steps, "kind": "hella", "examples": 10, "acc": 0.2, "acc_norm": hellaswag,
                     "elapsed_s": steps * 0.1 + 1})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def groups(tmp_path):
    for i, loss in enumerate(A_FINALS):
        write_run(tmp_path / "a" / f"seed{i}", loss, hellaswag=0.30 + i / 100)
    for i, loss in enumerate(B_FINALS):
        write_run(tmp_path / "b" / f"seed{i}", loss, speed=4000.0)
    return tmp_path


def test_group_statistics_equal_scipy_and_numpy(run_cli, groups):
    rc, out, err = run_cli("compare", "--group", f"A={groups}/a/seed*", "--group", f"B={groups}/b/seed*", "--json")
    assert rc == 0, err
    result = json.loads(out)
    assert len(result["runs"]) == 7 and {r["group"] for r in result["runs"]} == {"A", "B"}
    first = result["runs"][0]
    assert first["final_val_loss"] == pytest.approx(A_FINALS[0]) and first["best_val_loss"] == pytest.approx(
        A_FINALS[0] - 0.01)
    assert first["final_bpb"] == pytest.approx(A_FINALS[0] / 0.69) and first["hellaswag"] == pytest.approx(0.30)
    assert first["tokens"] == 100_000 and first["steps"] == 100 and first["wall_s"] == pytest.approx(11.0)
    assert first["tokens_per_s"] == pytest.approx(5075.0)  # mean of 5050 and 5100
    for name, finals in (("A", A_FINALS), ("B", B_FINALS)):
        g = result["groups"][name]
        assert g["runs"] == len(finals)
        assert g["final_val_loss"]["mean"] == pytest.approx(np.mean(finals))
        assert g["final_val_loss"]["std"] == pytest.approx(np.std(finals, ddof=1))
    assert "hellaswag" in result["groups"]["A"] and "hellaswag" not in result["groups"]["B"]
    [test] = result["tests"]
    expected = stats.ttest_ind(A_FINALS, B_FINALS, equal_var=False)
    assert (test["a"], test["b"], test["n_a"], test["n_b"]) == ("A", "B", 3, 4)
    assert test["p"] == pytest.approx(expected.pvalue, rel=1e-12) and test["t"] == pytest.approx(expected.statistic)
    assert test["p"] < 0.01 and result["notes"] == []

    rc, out, _ = run_cli("compare", "--group", f"A={groups}/a/seed*", "--group", f"B={groups}/b/seed*")
    assert rc == 0
    assert f"A vs B: final val loss, Welch's t-test (two-sided): t = {expected.statistic:.3f}, " \
           f"p = {expected.pvalue:.4g} (n = 3, 4)" in out
    assert f"{np.mean(A_FINALS):.4f} ± {np.std(A_FINALS, ddof=1):.4f}" in out


def test_single_runs_a_one_run_group_and_the_figure(run_cli, groups, tmp_path):
    rc, out, err = run_cli("compare", groups / "a" / "seed0", groups / "b" / "seed1", "--out", tmp_path / "c.png")
    assert rc == 0, err
    assert "1.7100" in out and "1.8000" not in out and "1.7700" in out and "±" not in out
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rc, out, err = run_cli("compare", "--group", f"A={groups}/a/seed*", "--group", f"B={groups}/b/seed0", "--json")
    assert rc == 0, err
    result = json.loads(out)
    assert result["tests"] == []
    assert result["notes"] == ["group B has 1 run(s) with a final val loss: no standard deviation and no t-test for "
                               "it (needs >= 2 runs)"]
    assert result["groups"]["B"]["final_val_loss"]["std"] is None
    for i in range(2):  # zero variance in both groups: scipy's p is nan; said in a note, valid JSON
        write_run(tmp_path / "same_a" / f"s{i}", 1.5)
        write_run(tmp_path / "same_b" / f"s{i}", 1.6)
    rc, out, err = run_cli("compare", "--group", f"A={tmp_path}/same_a/s*", "--group", f"B={tmp_path}/same_b/s*",
                           "--json")
    assert rc == 0, err
    result = json.loads(out)
    assert result["tests"][0]["p"] is None and "undefined (both groups have zero variance)" in result["notes"][0]


@pytest.mark.parametrize("content, message", [
    (None, "metrics.jsonl: not found"),
    ("", "metrics.jsonl: empty (no records)"),
    ('{"step": 1, "kind": "val", "loss": 2.0}\nnot json\n{"step": 2, "kind": "val", "loss": 1.0}\n',
     "metrics.jsonl:2: not a JSON line"),
    ('[1, 2]\n', "metrics.jsonl:1: not a metrics record"),
])
def test_bad_metrics_file_is_one_line_naming_it(run_cli, tmp_path, content, message):
    run = tmp_path / "run"
    run.mkdir()
    if content is not None:
        (run / "metrics.jsonl").write_text(content)
    rc, out, err = run_cli("compare", run)
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("scalegpt: error: ") and str(run / message.split(":")[0]) in err and message in err


def test_a_torn_last_line_is_skipped_and_bad_group_arguments(run_cli, tmp_path):
    write_run(tmp_path / "r", 2.0)
    with open(tmp_path / "r" / "metrics.jsonl", "a") as f:
        f.write('{"step": 150, "kind": "val", "lo')  # killed mid-write
    rc, out, _ = run_cli("compare", tmp_path / "r", "--json")
    assert rc == 0 and json.loads(out)["runs"][0]["final_val_loss"] == pytest.approx(2.0)
    rc, _, err = run_cli("compare", "--group", "A")
    assert rc == 2 and "--group expects NAME=PATTERN" in err
    rc, _, err = run_cli("compare", "--group", f"A={tmp_path}/nothing*")
    assert rc == 2 and "matches no run directory" in err


def test_train_seeds_then_compare_end_to_end(run_cli, tmp_path, shakespeare_text, monkeypatch):
    data = prepare_chars(shakespeare_text[:30_000], tmp_path / "shk")
    values = {**TINY, "data.dir": str(data), "train.max_steps": 4, "eval.interval": 2, "eval.samples": 0,
              "checkpoint.interval": 4, "schedule.decay_steps": 4}
    args = [a for key, value in values.items() for a in (f"--{key}", str(value).lower())]
    rc, out, err = run_cli("train", *args, "--seeds", "1,2", "--out", tmp_path / "runs")
    assert rc == 0, err
    assert "compare them with: scalegpt compare --group" in out
    for seed in (1, 2):
        config = (tmp_path / "runs" / f"seed{seed}" / "config.toml").read_text()
        assert f"seed = {seed}\n" in config
    rc, out, err = run_cli("compare", "--group", f"A={tmp_path}/runs/seed*", "--json", "--out", tmp_path / "c.png")
    assert rc == 0, err
    result = json.loads(out)
    runs = result["runs"]
    assert [r["run"] for r in runs] == [f"{tmp_path}/runs/seed1", f"{tmp_path}/runs/seed2"]
    assert all(r["steps"] == 4 and r["tokens"] == 4 * 256 and r["wall_s"] > 0 and r["tokens_per_s"] > 0
               and r["final_bpb"] > 0 for r in runs)
    assert runs[0]["final_val_loss"] != runs[1]["final_val_loss"]  # different seeds, different runs
    finals = [r["final_val_loss"] for r in runs]
    assert result["groups"]["A"]["final_val_loss"]["std"] == pytest.approx(np.std(finals, ddof=1))
    assert (tmp_path / "c.png").is_file()
    # Under torchrun, --seeds refuses in one line.
    monkeypatch.setenv("LOCAL_RANK", "0")
    rc, _, err = run_cli("train", *args, "--seeds", "3", "--out", tmp_path / "runs2")
    assert rc == 2 and "without torchrun" in err and not (tmp_path / "runs2").exists()
    monkeypatch.delenv("LOCAL_RANK")
    rc, _, err = run_cli("train", *args, "--seeds", "1,x", "--out", tmp_path / "runs2")
    assert rc == 2 and "--seeds expects" in err


def test_compare_notes_runs_that_differ_in_steps_precision_or_dataset(run_cli, tmp_path):
    """Two seeds of one command can land on different step counts (a time budget) or precisions (the probe):
    compare says so beside the table instead of testing them as like for like."""
    write_run(tmp_path / "a", 1.7, steps=100)
    write_run(tmp_path / "b", 1.8, steps=150)
    for run, precision in (("a", "bf16"), ("b", "fp32")):
        with open(tmp_path / run / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": 0, "kind": "runtime", "precision": precision, "threads": 1,
                                "data_dir": "data/mine", "data_tokens": 1000}) + "\n")
    rc, out, err = run_cli("compare", tmp_path / "a", tmp_path / "b")
    assert rc == 0, err
    assert f"note: the runs differ in steps ({tmp_path / 'a'}: 100, {tmp_path / 'b'}: 150)" in out
    assert f"note: the runs differ in precision ({tmp_path / 'a'}: bf16, {tmp_path / 'b'}: fp32)" in out
    assert "differ in dataset" not in out
    rc, out, _ = run_cli("compare", tmp_path / "a", tmp_path / "a", "--json")
    assert json.loads(out)["conditions"] == []


def test_a_trained_run_records_how_it_computed(tmp_path, run_cli, shakespeare_text):
    from test_train import cli_args

    data = prepare_chars(shakespeare_text[:20_000], tmp_path / "data")
    rc, _, err = run_cli("train", *cli_args(data, tmp_path / "run", train__max_steps=2))
    assert rc == 0, err
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    runtime = [r for r in rows if r["kind"] == "runtime"]
    assert len(runtime) == 1 and runtime[0]["precision"] in ("fp32", "bf16")
    assert runtime[0]["threads"] >= 1 and runtime[0]["data_dir"] == str(data)
