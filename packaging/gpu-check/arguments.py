"""Argument types that the GPU check's scripts share, so every input is
bounded the same way."""

import argparse


def bounded(low, high):
    """An integer from LOW to HIGH."""

    def parse(text):
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer from {low} to {high}")
        return value

    return parse


def counts(text):
    """Stream counts (transformers' batch sizes): comma-separated, 1 to 256 each."""
    values = [int(v) for v in text.split(",")]
    if not values or any(not 1 <= v <= 256 for v in values):
        raise argparse.ArgumentTypeError("expected a comma-separated list of integers from 1 to 256")
    return values
