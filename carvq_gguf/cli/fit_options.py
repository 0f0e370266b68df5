"""The options of the model-in-the-loop fit, shared by `convert` and `compress`."""

from __future__ import annotations

import argparse


def add_fit_arguments(p: argparse.ArgumentParser) -> None:
    """Add --tune-steps and --metric-rounds (None when not given: the preset's)."""
    p.add_argument("--tune-steps", type=int, default=None, metavar="N",
                   help="steps of end-to-end tuning of the codec against the model's KL on --calib-text "
                        "(default: the preset's; 0: none)")
    p.add_argument("--metric-rounds", type=int, default=None, metavar="N",
                   help="rounds of re-encoding the codes under the model's sensitivity to an embedding error "
                        "(its Fisher on --calib-text) with GPTQ-style error feedback (default: the preset's; 0: none; "
                        "with --tune-steps 0 too, the fit is to the matrix alone and needs no model)")
