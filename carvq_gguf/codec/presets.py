"""Named compression presets: row quantizer, adaptor shape, correction rows and training settings.

A budgeted preset (carvq-1.6 ...) fixes the row quantizer (a bitshift trellis, or RVQ levels) and
the adaptor shape, then spends what is left of its bpw budget, for the given (V, n), on correction
rows for the most important tokens. If the fixed parts alone exceed the budget, the adaptor table is
narrowed, then the trellis tables halved, until they fit. So every budgeted preset stays at or under
the number in its name.

Measured on SmolLM2-135M (docs/EXPERIMENTS.md): per bit, correction rows on the most frequent
tokens restore far more than the adaptor's per-token table (which costs 16 * m1 bits per
token), so the main presets carry no adaptor; `carvq-1.6-adaptor` keeps a small one (m1 = 1)
in the same budget for comparison, and `carvq-paper` is the paper's configuration.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .bits import bits_from_config, correction_row_bits, total_bits
from ..errors import CarvqError
from .state import AdaptorConfig, RvqConfig, TrellisConfig


@dataclass(frozen=True)
class TrainConfig:
    """How a codec is fitted.

    weighted: use the token importance weights (calibration frequencies) for k-means, the
              adaptor's batch sampling and the choice of correction rows; otherwise every
              row weighs the same (as in the paper).
    importance: "frequency" (calibration counts + floor) or "fisher" (counts times the model's
              measured per-row sensitivity, hf/importance.py; needs the model and its
              tokenizer at fit time).
    refine_rounds: rounds of joint least-squares codebooks + beam-search re-encoding after the
              greedy level-by-level k-means (rvq.refine); 0 = greedy RVQ as in the paper.
    metric_rounds: rounds of re-encoding the codes under the model's sensitivity to a row error
              (its Fisher with respect to the input embedding), group by group with GPTQ-style
              error feedback (codec/metric.py); 0 = codes nearest in plain squared error. Needs
              the model and its tokenizer.
    tune_steps: steps of end-to-end tuning after the k-means fit (hf/tune.py): codebooks and
              correction rows trained, codes fixed, to minimise the model's KL on the
              calibration text; 0 = fit to the matrix only. Needs the model and its tokenizer.
    prediction: thresholds on cos^2 for predicting a trellis row from its nearest row
              (codec/prediction.py), paid for by correction rows. With the model in the loop
              the fit keeps whichever (or none) gives the lowest KL on calibration and sampled
              text (hf/fit.choose_prediction); without it, the first. Empty: no row is predicted.
    """

    kmeans_iters: int = 15
    epochs: int = 30
    batch_size: int = 1024
    lr: float = 3e-3
    weighted: bool = True
    importance: str = "frequency"
    refine_rounds: int = 3
    metric_rounds: int = 0
    tune_steps: int = 0
    prediction: tuple[float, ...] = ()


@dataclass(frozen=True)
class ResolvedPreset:
    """A preset made concrete for one matrix shape."""

    name: str
    rvq: RvqConfig
    adaptor: AdaptorConfig
    correction_rows: int
    train: TrainConfig
    trellis: TrellisConfig | None = None


@dataclass(frozen=True)
class Preset:
    """A named recipe; resolve(V, n) gives the concrete settings.

    max_bpw None means no budget: correction_rows is then taken as given.
    max_correction_fraction caps the correction rows at this fraction of V.
    trellis: code the rows with this bitshift trellis instead of rvq (codec/trellis.py); a
    budgeted preset halves its tables until they fit a small matrix.
    """

    name: str
    max_bpw: float | None
    rvq: RvqConfig
    adaptor: AdaptorConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    correction_rows: int = 0
    max_correction_fraction: float = 0.25
    trellis: TrellisConfig | None = None

    def resolve(self, vocab_size: int, embedding_dim: int) -> ResolvedPreset:
        """Concrete settings for a [vocab_size, embedding_dim] matrix."""
        V, n = vocab_size, embedding_dim
        if V < 1 or n < 1:
            raise CarvqError(f"cannot resolve preset {self.name!r} for a {V} x {n} matrix")
        if self.trellis is None:
            self.rvq.validate(n)
        else:
            self.trellis.validate(n)
        adaptor = self.adaptor
        if self.max_bpw is None:
            return ResolvedPreset(self.name, self.rvq, adaptor, min(self.correction_rows, V), self.train, self.trellis)
        budget = int(self.max_bpw * V * n)
        trellis = self.trellis

        def fixed_bits(adaptor: AdaptorConfig) -> int:
            return total_bits(bits_from_config(V, n, self.rvq, adaptor, trellis=trellis))

        while adaptor.enabled and fixed_bits(adaptor) > budget:
            narrower = adaptor.table_dim - 1
            adaptor = replace(adaptor, table_dim=narrower, hidden_dims=adaptor.hidden_dims if narrower else ())
        while trellis is not None and trellis.groups > 1 and fixed_bits(adaptor) > budget:
            trellis = replace(trellis, groups=trellis.groups // 2)  # small matrices: fewer tables
        spare = budget - fixed_bits(adaptor)
        if spare < 0:
            raise CarvqError(f"preset {self.name!r} cannot fit {self.max_bpw} bpw for a {V} x {n} matrix")
        rows = min(spare // correction_row_bits(n), int(self.max_correction_fraction * V))
        return ResolvedPreset(self.name, self.rvq, adaptor, int(rows), self.train, trellis)


def _column(levels: int) -> RvqConfig:
    return RvqConfig(subvector_dim=8, codebook_bits=4, levels=levels, group_layout="column")


_NO_ADAPTOR = AdaptorConfig(table_dim=0, hidden_dims=())
_SMALL_ADAPTOR = AdaptorConfig(table_dim=1, hidden_dims=(64,))
_PAPER_ADAPTOR = AdaptorConfig(table_dim=16, hidden_dims=(384, 512))
_PAPER_RVQ = RvqConfig(subvector_dim=8, codebook_bits=4, levels=2, group_layout="block", group_size=1024)
_PAPER_TRAIN = TrainConfig(weighted=False, refine_rounds=0)

# The model in the loop: codes re-encoded under its Fisher metric (codec/metric.py), then end-to-end
# tuning (hf/tune.py). Measured on SmolLM2 and Gemma 3 270M (docs/EXPERIMENTS.md); these settings
# keep the whole fit within 5 min (SmolLM2) and 30 min (Gemma 3) on 2 CPU cores.
_TUNED = TrainConfig(metric_rounds=2, tune_steps=60)
# The trellis presets also predict rows from related rows where the model's KL says it pays; the
# tuning's steps make room for that search in SmolLM2's 5 minutes.
_PREDICTED = replace(_TUNED, prediction=(0.4,), tune_steps=45)

_PRESETS = [
    # Rows coded by a bitshift trellis (codec/trellis.py) at k bits per 2 values: 1.0 bit per value
    # for carvq-1.2, 1.5 for carvq-1.6 and -2.0, 2.0 for carvq-2.4; the rest of each budget buys
    # correction rows. At 1.6 bpw it beats three 4-bit RVQ levels on text from another domain and is
    # level on text like the calibration, on SmolLM2 and Gemma 3 (docs/EXPERIMENTS.md).
    Preset("carvq-1.2", 1.2, _column(2), _NO_ADAPTOR, _PREDICTED, trellis=TrellisConfig(step_bits=2)),
    Preset("carvq-1.6", 1.6, _column(3), _NO_ADAPTOR, _PREDICTED, trellis=TrellisConfig(step_bits=3)),
    Preset("carvq-2.0", 2.0, _column(3), _NO_ADAPTOR, _PREDICTED, trellis=TrellisConfig(step_bits=3)),
    Preset("carvq-2.4", 2.4, _column(4), _NO_ADAPTOR, _PREDICTED, trellis=TrellisConfig(step_bits=4)),
    # The same budget with three 4-bit RVQ levels per column instead of the trellis (format version 1,
    # which runtimes without the trellis patches read).
    Preset("carvq-1.6-rvq", 1.6, _column(3), _NO_ADAPTOR, _TUNED),
    Preset("carvq-1.6-adaptor", 1.6, _column(3), _SMALL_ADAPTOR),
    # Model-aware importance (diagonal Fisher); measured worse than frequency on SmolLM2, kept to compare.
    Preset("carvq-1.6-fisher", 1.6, _column(3), _NO_ADAPTOR, TrainConfig(importance="fisher")),
    Preset("carvq-paper", None, _PAPER_RVQ, _PAPER_ADAPTOR, _PAPER_TRAIN),
    # RVQ-only ablations: the RVQ of carvq-1.6-rvq and of the paper, no adaptor, no rows, no model.
    Preset("rvq-1.6", None, _column(3), _NO_ADAPTOR),
    Preset("rvq-paper", None, _PAPER_RVQ, _NO_ADAPTOR, _PAPER_TRAIN),
]

PRESETS: dict[str, Preset] = {p.name: p for p in _PRESETS}
PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)


def get_preset(name: str) -> Preset:
    """The preset called name; CarvqError naming the known presets otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise CarvqError(f"unknown preset {name!r}; known presets: {', '.join(PRESET_NAMES)}") from None
