"""RunLog's metrics.jsonl: every record carries elapsed_s, and a resumed run continues the clock from its last record."""
from __future__ import annotations

import json
import time

from scalegpt.metrics import RunLog


def records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_elapsed_seconds_continue_across_a_resume(tmp_path):
    run = tmp_path / "run"
    log = RunLog(run)
    log.record(0, "val", loss=3.0)
    time.sleep(0.05)
    log.record(5, "train", loss=2.5)
    log.record(10, "train", loss=2.0)  # after the checkpoint at step 5: dropped on resume
    log.close()
    first = records(run)
    assert [r["elapsed_s"] >= 0 for r in first] == [True] * 3 and first[1]["elapsed_s"] >= 0.05
    log = RunLog(run, resume_step=5)  # the time between the kill and the restart is not counted
    log.record(6, "train", loss=2.4)
    log.close()
    rows = records(run)
    assert [r["step"] for r in rows] == [0, 5, 6]
    assert first[1]["elapsed_s"] <= rows[2]["elapsed_s"] < first[1]["elapsed_s"] + 1.0
    fresh = RunLog(tmp_path / "other")  # a new run starts at 0
    fresh.record(0, "val", loss=1.0)
    fresh.close()
    assert records(tmp_path / "other")[0]["elapsed_s"] < 1.0
