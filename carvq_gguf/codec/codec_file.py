"""Save and load a codec state as a file (the `compress -o CODEC` output).

The file is torch.save of a plain dict: format tag and version, shape, the two configs as
dicts, the tensors in their stored dtypes and the preset name. It is loaded with
torch.load(weights_only=True) (no pickled code) and checked before it is returned. Writing
goes to a temporary file in the same directory and is renamed into place, so a failed write
never leaves a half-written codec.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from ..atomic import atomic_output
from ..errors import CarvqError
from .state import AdaptorConfig, CarvqState, RowPrediction, RvqConfig, TrellisCodes, TrellisConfig

CODEC_FORMAT = "carvq-codec"
CODEC_VERSION = 1


def save_codec(state: CarvqState, path: str | Path) -> None:
    """Write state to path atomically (after checking it)."""
    state.check()
    payload = {
        "format": CODEC_FORMAT,
        "version": CODEC_VERSION,
        "vocab_size": state.vocab_size,
        "embedding_dim": state.embedding_dim,
        "rvq": asdict(state.rvq),
        "adaptor": {**asdict(state.adaptor), "hidden_dims": list(state.adaptor.hidden_dims)},
        "codes": state.codes,
        "codebooks": state.codebooks,
        "sigma0": state.sigma0,
        "linears": [[w, b] for w, b in state.linears],
        "norms": [[w, b] for w, b in state.norms],
        "correction_ids": state.correction_ids,
        "correction_rows": state.correction_rows,
        "preset": state.preset,
        "trellis": None if state.trellis is None else {
            "config": asdict(state.trellis.config), "streams": state.trellis.streams,
            "tables": state.trellis.tables, "columns": state.trellis.columns,
            "prediction": None if state.trellis.prediction is None else asdict(state.trellis.prediction)},
    }
    with atomic_output(Path(path)) as tmp:
        torch.save(payload, tmp)


def load_codec(path: str | Path) -> CarvqState:
    """Read a codec file written by save_codec; CarvqError if it is missing, not a codec or inconsistent."""
    path = Path(path)
    if not path.is_file():
        raise CarvqError(f"codec file {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types on garbage input
        raise CarvqError(f"{str(path)!r} is not a readable codec file: {e}") from e
    if not isinstance(payload, dict) or payload.get("format") != CODEC_FORMAT:
        raise CarvqError(f"{str(path)!r} is not a CARVQ codec file")
    if payload.get("version") != CODEC_VERSION:
        raise CarvqError(f"{str(path)!r} has codec version {payload.get('version')}, expected {CODEC_VERSION}")
    try:
        adaptor = dict(payload["adaptor"])
        adaptor["hidden_dims"] = tuple(adaptor["hidden_dims"])
        coded = payload.get("trellis")
        predicted = None if coded is None else coded.get("prediction")
        trellis = None if coded is None else TrellisCodes(
            config=TrellisConfig(**coded["config"]), streams=coded["streams"], tables=coded["tables"],
            columns=coded["columns"], prediction=None if predicted is None else RowPrediction(**predicted))
        state = CarvqState(
            vocab_size=int(payload["vocab_size"]), embedding_dim=int(payload["embedding_dim"]),
            rvq=RvqConfig(**payload["rvq"]), adaptor=AdaptorConfig(**adaptor),
            codes=payload["codes"], codebooks=payload["codebooks"], sigma0=payload["sigma0"],
            linears=[(w, b) for w, b in payload["linears"]], norms=[(w, b) for w, b in payload["norms"]],
            correction_ids=payload["correction_ids"], correction_rows=payload["correction_rows"],
            preset=str(payload["preset"]), trellis=trellis)
    except (KeyError, TypeError, ValueError) as e:
        raise CarvqError(f"{str(path)!r} is a damaged codec file: {e}") from e
    state.check()
    return state
