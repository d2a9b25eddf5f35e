"""Model cards as text: one card, or two side by side (the current model and a candidate)."""

from __future__ import annotations

from schemas.manifest import Manifest, TrainingData


def card_rows(manifest: Manifest) -> list[tuple[str, str]]:
    """(label, value) rows of a model's card; a model built before cards shows what it has."""
    card = manifest.card
    rows = [
        ("model", f"{manifest.name}@{manifest.version}"),
        ("algorithm", manifest.algorithm + (f" ({card.precision})" if card else "")),
        ("window", f"{manifest.input.window} readings of {len(manifest.input.channels)} channels"),
        ("threshold", f"{manifest.threshold:.6g}"),
        ("alarm", manifest.alarm.describe()),
    ]
    if card is None:
        return [*rows, ("card", "none (model built before model cards)")]
    validation = card.validation
    rows += [
        ("threshold rule", card.threshold_rule),
        ("features", ", ".join(card.features)),
        ("trained on", _training(card.training)),
        (
            "validation",
            "none (train with --validate FILE to measure F1/FAR/MAR)"
            if validation is None
            else (
                f"F1 {validation.f1:.3f}, FAR {validation.far:.1%}, MAR {validation.mar:.1%} "
                f"on {validation.readings} readings of {validation.files} recording(s)"
            ),
        ),
        ("protocol", "-" if validation is None else validation.protocol),
        ("latency", f"{card.latency_us_per_reading:.3g} us per reading (batched)"),
        ("memory", f"{card.memory_mb:.3g} MB"),
        ("size", f"{card.size_bytes} bytes"),
    ]
    return rows


def format_card(manifest: Manifest) -> str:
    """One card, labels aligned."""
    rows = card_rows(manifest)
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label.ljust(width)}  {value}" for label, value in rows)


def format_side_by_side(current: Manifest | None, candidate: Manifest) -> str:
    """The current model's card beside the candidate's (labels of the candidate's card)."""
    new = card_rows(candidate)
    old = dict(card_rows(current)) if current is not None else {}
    header = ("", "CURRENT", "CANDIDATE")
    lines = [header] + [(label, old.get(label, "-"), value) for label, value in new]
    widths = [max(len(line[i]) for line in lines) for i in range(2)]
    return "\n".join(
        f"{line[0].ljust(widths[0])}  {line[1].ljust(widths[1])}  {line[2]}".rstrip()
        for line in lines
    )


def _training(data: TrainingData) -> str:
    text = f"{data.readings} readings"
    if data.period_s:
        text += f" ({data.readings * data.period_s / 3600:.2g} h at {data.period_s:.3g} s)"
    if data.sources:
        shown = ", ".join(data.sources[:3])
        text += f" from {shown}" + (
            f" and {len(data.sources) - 3} more" if len(data.sources) > 3 else ""
        )
    return text
