"""Guards that keep bad numbers out of the weights (issue 7 builds them; the config is what `[guard]` holds)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class GuardConfig:
    skip_nonfinite: bool = True  # skip the optimizer step when the loss or the gradient norm is NaN/inf
    max_consecutive_skips: int = 5  # abort with a clear message after this many skipped steps in a row
    spike_guard: bool = False  # also skip steps whose loss or grad norm is a z-score outlier (as llm.c does)
    spike_window: int = 100  # running window of recent steps for the z-score
    spike_zscore: float = 6.0  # a value this many standard deviations above the window mean is a spike
