"""Exceptions that entry points turn into one clear line (no Lightning import here)."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss or gradient; the message names step and quantity."""
