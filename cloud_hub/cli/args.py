"""Argument types and errors shared by the ``cloud-hub`` subcommands."""

from __future__ import annotations

import argparse

from schemas.topics import TopicError, check_id


class UsageError(ValueError):
    """A command line naming something that does not exist (a model, a folder, ...): exit 2."""


def positive(text: str) -> float:
    """A number > 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def non_negative(text: str) -> float:
    """A number >= 0."""
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def node_id(text: str) -> str:
    """A valid node id."""
    return _checked(text, "node id")


def model_name(text: str) -> str:
    """A valid model name."""
    return _checked(text, "model name")


def model_version(text: str) -> str:
    """A valid model version."""
    return _checked(text, "model version")


def _checked(text: str, what: str) -> str:
    try:
        return check_id(text, what)
    except TopicError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
