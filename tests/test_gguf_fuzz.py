"""The fuzzer's GGUF mutator: exact round trip of real files, deterministic mutants that differ
from their source, and mutations that reach the carvq.* keys and carvq_* tensors."""

from __future__ import annotations

from pathlib import Path

import pytest
from gguf import GGUFReader

from carvq_gguf.gguf import fuzz as gguf_fuzz
from conftest import make_random_state
from tiny_sources import make_synthetic_gguf

from carvq_gguf.gguf import rewrite as gguf_source


@pytest.fixture(scope="module")
def carvq_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    source = make_synthetic_gguf(root / "source.gguf", vocab_size=96, embedding_dim=64, tied=True)
    reader = GGUFReader(source)
    matrix, _ = gguf_source.token_embedding(reader)
    head = gguf_source.output_head(reader, matrix, None)
    out = root / "carvq.gguf"
    gguf_source.write_carvq_model(reader, make_random_state(group_layout="block"), out, head, progress=False)
    return out


def test_a_converter_file_round_trips_byte_for_byte(carvq_file: Path) -> None:
    raw = carvq_file.read_bytes()
    parsed = gguf_fuzz.parse(raw)
    assert gguf_fuzz.serialize(parsed) == raw
    assert any(k == "carvq.group_layout" for k, _, _ in parsed.kv)
    assert {t.name for t in parsed.tensors} >= {"carvq_codes", "carvq_codebooks", "carvq_corr_ids"}


def test_mutants_are_deterministic_and_differ(carvq_file: Path) -> None:
    ((_, tree, raw),) = gguf_fuzz.load_corpus([carvq_file])
    a = [gguf_fuzz.mutant(tree, raw, seed) for seed in range(50)]
    b = [gguf_fuzz.mutant(tree, raw, seed) for seed in range(50)]
    assert a == b
    assert sum(buf != raw for buf, _ in a) >= 45
    assert len({buf for buf, _ in a}) >= 45


def test_mutations_reach_keys_shapes_types_and_data(carvq_file: Path) -> None:
    ((_, tree, raw),) = gguf_fuzz.load_corpus([carvq_file])
    kinds = " ".join(gguf_fuzz.mutant(tree, raw, seed)[1] for seed in range(400))
    for kind in ("value carvq.", "type carvq.", "drop carvq.", "shape carvq_", "ggml type carvq_", "data carvq_",
                 "bytes flip", "bytes truncate"):
        assert kind in kinds, kind


def test_a_value_mutation_is_written_where_the_reader_finds_it(carvq_file: Path, tmp_path: Path) -> None:
    tree = gguf_fuzz.parse(carvq_file.read_bytes())
    tree.kv = [(k, t, 2 ** 31 if k == "carvq.group_size" else v) for k, t, v in tree.kv]
    out = tmp_path / "mutated.gguf"
    out.write_bytes(gguf_fuzz.serialize(tree))
    assert int(GGUFReader(out).fields["carvq.group_size"].contents()) == 2 ** 31
