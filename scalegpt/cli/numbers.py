"""Numeric command-line flags, typed and bounded in one place: finite, and within a stated range.

    add_integer(p, "--max-new-tokens", 1, MAX_NEW_TOKENS, default=100)
    add_real(p, "--top-p", 0.0, 1.0, low_open=True)

A value is parsed when argparse reads the flag, so a bad one stops the command before any work, as one line naming
the flag: '--max-new-tokens must be <= 100,000, got 1e12'. Integers may be written 100_000_000, 100,000,000 or 1e8.
(The [section] keys of train and quickstart --set go through scalegpt.config's RANGES and MAXIMA instead.)
"""
from __future__ import annotations

import math

from scalegpt.errors import ScalegptError

SEED_MAX = 2**64 - 1  # what torch.manual_seed and numpy's generators accept
INT_MAX = 2**63 - 1  # a C int64, whatever the flag


def _bounds_error(flag: str, value, low, high, low_open: bool, high_open: bool, interval: bool) -> ScalegptError:
    if interval:
        return ScalegptError(f"{flag} must be in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
                             f", got {value}")
    if low is not None and (value < low or (low_open and value == low)):
        return ScalegptError(f"{flag} must be {'>' if low_open else '>='} {low:,}, got {value}")
    return ScalegptError(f"{flag} must be {'<' if high_open else '<='} {high:,}, got {value}")


def integer(flag: str, low: int | None, high: int):
    """An argparse `type` for an integer flag in [low, high] (low None: checked later by the command itself)."""
    def parse(text: str) -> int:
        clean = text.strip().replace("_", "").replace(",", "")
        try:
            value = int(clean)
        except ValueError:
            try:
                as_float = float(clean)
            except ValueError:
                raise ScalegptError(f"{flag}: expected an integer, got '{text}'") from None
            if not math.isfinite(as_float) or as_float != int(as_float):
                raise ScalegptError(f"{flag}: expected a finite integer, got '{text}'") from None
            value = int(as_float)
        if (low is not None and value < low) or value > high:
            raise _bounds_error(flag, value, low, high, False, False, False)
        return value
    return parse


def real(flag: str, low: float, high: float, low_open: bool = False, high_open: bool = False):
    """An argparse `type` for a finite float flag in the interval low..high (ends open or closed)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ScalegptError(f"{flag}: expected a number, got '{text}'") from None
        inside = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
        if not (math.isfinite(value) and inside):
            raise _bounds_error(flag, value, low, high, low_open, high_open, True)
        return value
    return parse


def add_integer(parser, flag: str, low: int | None, high: int, **kwargs):
    return parser.add_argument(flag, type=integer(flag, low, high), **kwargs)


def add_real(parser, flag: str, low: float, high: float, low_open: bool = False, high_open: bool = False, **kwargs):
    return parser.add_argument(flag, type=real(flag, low, high, low_open, high_open), **kwargs)


def add_seed(parser, flag: str = "--seed", **kwargs):
    return add_integer(parser, flag, 0, SEED_MAX, **kwargs)


def temperature(flag: str = "--temperature"):
    """0 (greedy) or within scalegpt.config's [MIN_TEMPERATURE, MAX_TEMPERATURE]."""
    from scalegpt.config.sections import check_temperature

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ScalegptError(f"{flag}: expected a number, got '{text}'") from None
        if not value >= 0:  # NaN too
            raise ScalegptError(f"{flag} must be >= 0 (0 = greedy), got {value}")
        check_temperature(value, flag)
        return value
    return parse
