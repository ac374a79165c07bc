"""Argument types for the command lines (``edgevision`` and ``edgevision-run``): checked numbers with clear messages."""

from __future__ import annotations

import argparse
from typing import Callable, TypeVar

N = TypeVar("N", int, float)


def checked_number(convert: Callable[[str], N], expected: str, ok: Callable[[N], bool], bound: str) -> Callable[[str], N]:
    """An argparse ``type=`` that converts with ``convert`` and refuses values where ``ok`` is false.

    Args:
        convert: ``int`` or ``float``.
        expected: what a malformed value should have been ("a whole number").
        ok: the range check.
        bound: the message for a value out of range ("must be 1 or more").
    """

    def parse(text: str) -> N:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{bound}, got {value}")
        return value

    return parse


positive_int = checked_number(int, "a whole number", lambda v: v >= 1, "must be 1 or more")
positive_float = checked_number(float, "a number", lambda v: v > 0, "must be more than 0")
probability = checked_number(float, "a probability between 0 and 1", lambda v: 0.0 <= v <= 1.0,
                             "must be a probability between 0 and 1")
port = checked_number(int, "a port number", lambda v: 0 <= v <= 65535, "must be 0..65535")
