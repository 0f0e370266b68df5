"""A short fuzz run of the patched loader (the long run is scripts/fuzz_loader.py): mutated
CARVQ-GGUFs are loaded and one batch decoded under ASan+UBSan; every file must load or be
refused with a message, none may crash."""

from __future__ import annotations

from pathlib import Path

import pytest

from carvq_gguf.eval import loader_fuzz
from fuzz_corpus import make_corpus
from native_fixtures import native_bin

pytestmark = pytest.mark.native
_ = native_bin


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return make_corpus(tmp_path_factory.mktemp("fuzz-corpus"))


def test_every_corpus_file_loads_and_decodes(native_bin: Path, corpus: list[Path]) -> None:
    outcomes = loader_fuzz.run_files(native_bin / "carvq-load", corpus)
    assert [(o.path, o.status) for o in outcomes] == [(p, "ok") for p in corpus], outcomes


def test_the_harness_reports_a_rejection_with_its_message(native_bin: Path, tmp_path: Path) -> None:
    bad = tmp_path / "not-a-gguf.gguf"
    bad.write_bytes(b"GGUF" + b"\xff" * 60)
    (outcome,) = loader_fuzz.run_files(native_bin / "carvq-load", [bad])
    assert outcome.status == "rejected" and outcome.message, outcome


def test_a_short_fuzz_run_has_no_crash(native_bin: Path, corpus: list[Path], tmp_path: Path) -> None:
    summary = loader_fuzz.fuzz(native_bin / "carvq-load", corpus, n_cases=300, seed=20261128,
                               keep_crashes=tmp_path / "crashes")
    details = "\n\n".join(f"{c.path.name}: {c.message[:3000]}" for c in summary.crashes[:3])
    assert summary.n_crashes == 0, f"{summary.n_crashes} crashes, kept in {tmp_path / 'crashes'}\n{details}"
    assert summary.rejected_without_message == 0
    assert summary.cases == 300
    # the mutations reach the CARVQ checks, not only the generic GGUF parser
    assert any("carvq" in m for m in summary.messages), summary.messages
    assert summary.rejected > 100, summary
