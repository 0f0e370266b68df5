"""Texts shipped inside the package, and the real models that ship in other PyPI packages (models.py).

calib.txt (calibration) and eval.txt (perplexity) are CPython docstrings from disjoint modules;
prose.txt is English prose from another domain, for checking that a codec calibrated on
docstrings holds up on text it was not fitted to (scripts/make_texts.py says where each comes
from)."""

from pathlib import Path


def bundled_text(name: str) -> Path:
    """Path of a text bundled with the package: 'calib.txt', 'eval.txt' or 'prose.txt'."""
    return Path(__file__).resolve().parent / name
