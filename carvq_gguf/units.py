"""Sizes written for people: one format for every report and message."""


def megabytes(n_bytes: int, digits: int = 2) -> str:
    """n_bytes in decimal megabytes (1 MB = 10^6 bytes), without the unit."""
    return f"{n_bytes / 1e6:.{digits}f}"
