"""Stopping a run cleanly: the first SIGTERM/SIGINT asks the trainer to save a checkpoint at the end of the step and
exit; a second one means it (KeyboardInterrupt at once). Schedulers (SLURM, Kubernetes) send SIGTERM before a kill."""
from __future__ import annotations

import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path


class StopSignals:
    """`name` is None until a signal arrives, then its name ("SIGTERM"); handlers are ours between install and
    restore (only in the main thread, where Python delivers signals)."""

    def __init__(self):
        self.name: str | None = None
        self._previous: dict | None = None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def on_signal(signum, frame):
            name = signal.Signals(signum).name
            if self.name is not None:  # a second signal: the user means it
                raise KeyboardInterrupt
            self.name = name
            print(f"\n{name}: saving a checkpoint at the end of this step, then exiting "
                  f"(send it again to exit at once)", file=sys.stderr, flush=True)

        self._previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        for s in self._previous:
            signal.signal(s, on_signal)

    def restore(self) -> None:
        for s, handler in (self._previous or {}).items():
            signal.signal(s, handler)
        self._previous = None


def exit_code(stopped_by: str | None) -> int:
    """0 when training finished; 128 + the signal number when a signal stopped it (as a killed process would)."""
    return 0 if stopped_by is None else 128 + int(getattr(signal, stopped_by))


@dataclass
class TrainResult:
    run_dir: Path
    step: int  # updates done when fit() returned
    checkpoint: Path | None  # the latest checkpoint written (None when none was)
    val_loss: float | None  # the latest validation loss
    stopped_by: str | None = None  # "SIGTERM" / "SIGINT" when a signal ended the run early


def run_exit_code(result: TrainResult) -> int:
    """0 when training finished; 128 + the signal number when a signal stopped it (as a killed process would)."""
    return exit_code(result.stopped_by)
