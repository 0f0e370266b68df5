"""End-to-end tuning of a CARVQ codec with the model in the loop.

The k-means fit (codec/rvq.py) minimises a weighted reconstruction error of the matrix, which
is only a proxy for what matters: how far the model's next-token distribution moves. Here the
4-bit codes (or trellis streams) stay fixed and the continuous parts of the codec (the F16
codebooks, or trellis tables and column scales and means, and the F16 correction rows) are
trained to minimise KL(original || compressed) of the model's next-token distribution on
calibration text, as AQLM's global fine-tuning does for weights. A weighted
reconstruction term over all rows (the k-means objective, on a random sample of rows each
step) keeps the rows the calibration text never reads close to where k-means put them, so a
text from another domain does not pay for the fit.

This needs a torch causal LM (transformers-style: get_input_embeddings, inputs_embeds=), so it
lives with the model layer, not with the codec maths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..codec import trellis
from ..codec.state import CarvqState, TrellisCodes
from ..errors import CarvqError
from .model import embed_scale, eval_mode

LOGITS_PER_PASS = 1 << 27  # next-token logits one pass of a KL probe may hold (512 MB in float32)


@dataclass(frozen=True)
class TuneConfig:
    """How the codec is tuned end to end.

    steps: optimizer steps; each reads batch_windows windows of window tokens.
    lr: Adam's step relative to the RMS of the matrix (Adam moves every parameter by about
        lr whatever the gradient's size, so an absolute rate would mean a different change
        for every model's embedding scale).
    anchor: weight of the relative weighted reconstruction error against the KL.
    anchor_rows: rows sampled per step for the reconstruction term.
    eval_windows: calibration windows, spread over the text, on which the KL is reported
              before and after.
    kl_positions: positions per window, drawn at random each step, where the KL is taken; the
              rest of the window is still read as context. The output head, which for a
              262k-token vocabulary costs more than the whole transformer, then runs on a
              quarter of the tokens.
    check_step: after this many steps the KL on the eval windows is measured once; if it has
              not fallen below its start, the tuning starts again from the fit with the rate
              times retry_lr for the steps left (0: never). Adam's first steps move every
              parameter by about the rate, too far for a fit already close (SmolLM2 at 2.0 bpw,
              Gemma 3 at 1.6: the KL rises, docs/EXPERIMENTS.md); a fit far from the model's
              optimum (SmolLM2 at 1.6 bpw) gains most from the larger rate.
    retry_lr: the factor on lr after a failed check.
    """

    steps: int = 60
    window: int = 256
    batch_windows: int = 2
    lr: float = 5e-3
    anchor: float = 0.1
    anchor_rows: int = 8192
    eval_windows: int = 8
    kl_positions: int = 64
    check_step: int = 20
    retry_lr: float = 0.2


class _Decoder(torch.nn.Module):
    """Differentiable decode of a codec state with fixed codes: RVQ sum or trellis walk, plus
    the correction rows."""

    def __init__(self, state: CarvqState):
        super().__init__()
        if state.adaptor.enabled:
            raise CarvqError("end-to-end tuning supports codecs without an adaptor")
        V, n = state.vocab_size, state.embedding_dim
        self.trellis = state.trellis
        if state.trellis is None:
            self.register_buffer("codes", state.codes.long())
            self.register_buffer("groups", state.rvq.group_index(V, n))
            self.codebooks = torch.nn.Parameter(state.codebooks.to(torch.float32).clone())
        else:
            self.tables = torch.nn.Parameter(state.trellis.tables.to(torch.float32).clone())
            self.columns = torch.nn.Parameter(state.trellis.columns.to(torch.float32).clone())
            predicted = state.trellis.prediction
            self.prediction_columns = torch.nn.Parameter(
                torch.zeros(2, n) if predicted is None else predicted.columns.to(torch.float32).clone())
        rows = state.correction_rows
        self.correction_rows = torch.nn.Parameter(
            torch.zeros(0, n) if rows is None else rows.to(torch.float32).clone())
        slot = torch.full((V,), -1, dtype=torch.int64)
        slot[state.correction_ids.long()] = torch.arange(state.n_correction_rows)
        self.register_buffer("slot", slot)

    def param_groups(self, lr: float, rms: float) -> list[dict]:
        """Adam parameter groups: every parameter moves by about lr times its own scale (the
        matrix's RMS for codebooks and rows, 1 for the normalised trellis tables, the mean
        column scale for the column scales and means)."""
        if self.trellis is None:
            return [{"params": [self.codebooks, self.correction_rows], "lr": lr * rms}]
        scale = float(self.columns[0].detach().abs().mean())
        own_scale = float(self.prediction_columns[0].detach().abs().mean())
        return [{"params": [self.tables], "lr": lr}, {"params": [self.columns], "lr": lr * scale},
                {"params": [self.prediction_columns], "lr": lr * own_scale},
                {"params": [self.correction_rows], "lr": lr * rms}]

    def _trellis_codes(self) -> TrellisCodes:
        """The codes with the trainable tables and columns (the predicted rows' references and
        multiples fixed, as the streams are)."""
        predicted = self.trellis.prediction
        if predicted is not None:
            predicted = replace(predicted, columns=self.prediction_columns)
        return replace(self.trellis, tables=self.tables, columns=self.columns, prediction=predicted)

    def _codes_part(self, flat: torch.Tensor) -> torch.Tensor:
        if self.trellis is not None:  # the reference decode, on the trainable tables and columns
            return trellis.decode(self._trellis_codes(), flat.cpu())
        codes, groups = self.codes[flat], self.groups[flat]  # [T, L, S], [T, S]
        out = sum(self.codebooks[level][groups, codes[:, level]] for level in range(codes.shape[1]))
        return out.reshape(flat.shape[0], -1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        out = self._codes_part(flat)
        slot = self.slot[flat]
        hit = slot >= 0
        if bool(hit.any()):
            out = out.index_put((hit.nonzero().squeeze(1),), self.correction_rows[slot[hit]], accumulate=True)
        return out.reshape(*ids.shape, -1)

    def stored_state(self, state: CarvqState) -> CarvqState:
        """state with the tuned parameters rounded to their stored F16."""
        def f16(p: torch.Tensor) -> torch.Tensor:
            return p.detach().cpu().to(torch.float16).contiguous()

        rows = None if state.correction_rows is None else f16(self.correction_rows)
        if state.trellis is None:
            out = replace(state, codebooks=f16(self.codebooks), correction_rows=rows)
        else:
            predicted = state.trellis.prediction
            if predicted is not None:
                predicted = replace(predicted, columns=f16(self.prediction_columns))
            out = replace(state, correction_rows=rows,
                          trellis=replace(state.trellis, tables=f16(self.tables), columns=f16(self.columns),
                                          prediction=predicted))
        out.check()
        return out


def calibration_windows(token_ids: torch.Tensor, window: int, bos: int | None = None) -> torch.Tensor:
    """int64 [W, window + 1]: consecutive windows of the calibration ids, each led by bos when
    given (the +1 is the target of the last position); CarvqError when the text is shorter
    than one window."""
    ids = torch.as_tensor(token_ids, dtype=torch.int64).flatten()
    body = window if bos is None else window - 1
    count = (ids.numel() - 1) // body
    if body < 1 or count < 1:
        raise CarvqError(f"the calibration text has {ids.numel()} tokens; end-to-end tuning needs at least "
                         f"{body + 1}")
    out = torch.stack([ids[i * body: i * body + body + 1] for i in range(count)])
    if bos is not None:
        out = torch.cat([torch.full((count, 1), bos, dtype=torch.int64), out], 1)
    return out


def _kl(model, student: torch.Tensor, teacher: torch.Tensor, positions: torch.Tensor | int = 0) -> torch.Tensor:
    """Mean KL(teacher || student) of the next-token distributions, from inputs_embeds, at the given
    positions of every window (0: all)."""
    with torch.no_grad():
        ref = F.log_softmax(model(inputs_embeds=teacher, logits_to_keep=positions).logits.float(), -1)
    got = F.log_softmax(model(inputs_embeds=student, logits_to_keep=positions).logits.float(), -1)
    return F.kl_div(got, ref, log_target=True, reduction="none").sum(-1).mean()


def spread_windows(windows: torch.Tensor, count: int) -> torch.Tensor:
    """count of windows [W, T] spread evenly over the text (all of them when W <= count)."""
    pick = torch.linspace(0, windows.shape[0] - 1, min(count, windows.shape[0])).round().long()
    return windows[pick.to(windows.device)]


def probe_windows(token_ids: torch.Tensor, config: TuneConfig = TuneConfig(), bos: int | None = None) -> torch.Tensor:
    """The config.eval_windows calibration windows [W, window] (inputs only), spread over the
    text, on which a codec's calibration KL is measured."""
    return spread_windows(calibration_windows(token_ids, config.window, bos), config.eval_windows)[:, :-1]


def _decoder_kl(model, decoder: _Decoder, matrix: torch.Tensor, probe: torch.Tensor) -> float:
    """Mean KL(original || decoder) over the windows probe, all on the model's device. The
    windows go through the model a few at a time: 16 windows of 256 tokens over Gemma 3's
    262k-token vocabulary are 4.3 GB of logits per copy, and the KL holds several copies."""
    scale = embed_scale(model)
    per_pass = max(1, LOGITS_PER_PASS // (probe.shape[1] * matrix.shape[0]))
    total = 0.0
    with torch.no_grad():
        for part in probe.split(per_pass):
            total += float(_kl(model, decoder(part) * scale, matrix[part] * scale)) * part.shape[0]
    return total / probe.shape[0]


def codec_kl(model, state: CarvqState, matrix: torch.Tensor, probe: torch.Tensor) -> float:
    """Mean KL(original || codec) of the model's next-token distributions over the windows probe
    [W, T], the model's input embedding matrix [V, n] replaced by state's decode."""
    device = next(model.parameters()).device
    with eval_mode(model):
        return _decoder_kl(model, _Decoder(state).to(device), matrix.detach().to(device, torch.float32),
                           probe.to(device))


def tune_codec(model, state: CarvqState, matrix: torch.Tensor, token_ids: torch.Tensor,
               row_weights: torch.Tensor | None = None, config: TuneConfig = TuneConfig(), seed: int = 0,
               bos: int | None = None, progress: bool = True) -> tuple[CarvqState, dict]:
    """Tune state's codebooks (or trellis tables and columns) and correction rows (codes fixed)
    to bring the model's next-token distribution with the codec close to the one with matrix;
    returns (tuned state, stats).

    model is a transformers causal LM whose input embedding is matrix (its output head, tied or
    not, is left alone: only the input side sees the codec). token_ids are calibration tokens
    under the model's tokenizer (windows start with bos when given); row_weights [V] weigh the
    reconstruction term (None: all 1). stats holds the mean KL on eval_windows calibration
    windows before and after (kl_start, kl_end); when tuning did not lower it, state comes back
    unchanged (kept False); when it had not lowered it by config.check_step the tuning started
    again at a lower rate (retried_at). When every calibration token has a correction row the KL can only
    measure F16 rounding and has nothing to teach the codebooks: the model is not run, state
    comes back unchanged and stats is {"skipped": reason}. Deterministic for a seed on one machine.
    """
    V, n = state.vocab_size, state.embedding_dim
    if tuple(matrix.shape) != (V, n):
        raise CarvqError(f"matrix is {tuple(matrix.shape)}, the codec {V} x {n}")
    windows = calibration_windows(token_ids, config.window, bos)
    if int(windows.max()) >= V:
        raise CarvqError(f"calibration token id {int(windows.max())} >= vocabulary size {V}")
    if state.n_correction_rows and bool(torch.isin(windows[:, :-1], state.correction_ids.long()).all()):
        return state, {"skipped": "every calibration token has a correction row"}
    device = next(model.parameters()).device
    matrix = matrix.detach().to(device, torch.float32)
    weights = torch.ones(V) if row_weights is None else row_weights.detach().to(torch.float32)
    weights = weights.to(device)
    windows = windows.to(device)
    scale = embed_scale(model)
    generator = torch.Generator().manual_seed(seed)
    rms = float(matrix.pow(2).mean().sqrt())
    energy = float((weights * matrix.pow(2).sum(1)).sum()) / V
    probe = probe_windows(token_ids, config, bos).to(device)

    def probe_kl(decoder: _Decoder) -> float:
        return _decoder_kl(model, decoder, matrix, probe)

    def train(decoder: _Decoder, lr: float, steps: int, bar, check_step: int = 0, kl_start: float = 0.0) -> bool:
        """steps Adam steps on a cosine schedule; False when stopped at check_step with the KL
        not below kl_start."""
        optimizer = torch.optim.Adam(decoder.param_groups(lr, rms))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
        for step in range(steps):
            if step and step == check_step and not probe_kl(decoder) < kl_start:
                return False
            pick = torch.randint(windows.shape[0], (config.batch_windows,), generator=generator)
            inputs = windows[pick.to(device), :-1]
            positions = torch.randperm(inputs.shape[1], generator=generator)[:config.kl_positions].sort().values
            kl = _kl(model, decoder(inputs) * scale, matrix[inputs] * scale, positions.to(device))
            rows = torch.randint(V, (config.anchor_rows,), generator=generator).to(device)
            err = (weights[rows] * (decoder(rows) - matrix[rows]).pow(2).sum(1)).mean() / energy
            optimizer.zero_grad(set_to_none=True)
            (kl + config.anchor * err).backward()
            optimizer.step()
            schedule.step()
            bar.update()
        return True

    with eval_mode(model):
        frozen = [p for p in model.parameters() if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        try:
            decoder = _Decoder(state).to(device)
            stats = {"kl_start": probe_kl(decoder)}
            with torch.enable_grad(), tqdm(total=config.steps, desc="tuning codec", disable=not progress) as bar:
                if not train(decoder, config.lr, config.steps, bar, config.check_step, stats["kl_start"]):
                    stats["retried_at"] = config.check_step  # start again, gentler, for the steps left
                    decoder = _Decoder(state).to(device)
                    train(decoder, config.lr * config.retry_lr, config.steps - config.check_step, bar)
            tuned = decoder.stored_state(state)
            stats["kl_end"] = probe_kl(_Decoder(tuned).to(device))  # what is stored: F16-rounded
            if not stats["kl_end"] < stats["kl_start"]:  # Adam's steps only added noise to a fit this close
                tuned, stats["kl_end"] = state, stats["kl_start"]
            stats["kept"] = tuned is not state
        finally:
            for p in frozen:
                p.requires_grad_(True)
    return tuned, stats
