"""GGUF source: every other key and tensor byte-identical, the tied head explicit, the CARVQ
state bit-identical, verification that catches a bad copy, atomic and safe output paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader, quants

from carvq_gguf.gguf import carvq_io
from carvq_gguf.gguf import rewrite as gguf_source
from carvq_gguf.atomic import atomic_output
from carvq_gguf.convert.pipeline import check_paths
from carvq_gguf.errors import CarvqError
from conftest import make_random_state
from test_gguf_io import assert_states_identical
from tiny_sources import make_synthetic_gguf

Q8_0 = GGMLQuantizationType.Q8_0


def raw_fields(reader: GGUFReader) -> dict[str, bytes]:
    return {name: b"".join(p.tobytes() for p in f.parts) for name, f in reader.fields.items()
            if not name.startswith("GGUF.")}


def raw_tensors(reader: GGUFReader) -> dict[str, tuple[str, list[int], bytes]]:
    return {t.name: (t.tensor_type.name, [int(d) for d in t.shape], np.asarray(t.data).tobytes())
            for t in reader.tensors}


def convert_with_state(tmp_path: Path, tied: bool, output_type: str | None = None,
                       embd_type: GGMLQuantizationType = Q8_0):
    src_path = make_synthetic_gguf(tmp_path / "src.gguf", tied=tied, embd_type=embd_type)
    src = GGUFReader(src_path)
    matrix, qtype = gguf_source.token_embedding(src)
    state = make_random_state(vocab_size=96, embedding_dim=64)
    head = gguf_source.output_head(src, matrix, output_type)
    out_path = tmp_path / "out.gguf"
    gguf_source.write_carvq_model(src, state, out_path, head, progress=False)
    out = GGUFReader(out_path)
    gguf_source.verify_carvq_model(src, out, state, head)
    return src, out, state, matrix, out_path


def test_token_embedding_is_dequantized(tmp_path: Path) -> None:
    src = GGUFReader(make_synthetic_gguf(tmp_path / "s.gguf", embd_type=Q8_0))
    matrix, qtype = gguf_source.token_embedding(src)
    t = src.tensors[0]
    assert qtype == Q8_0 and matrix.shape == (96, 64) and matrix.dtype == torch.float32
    assert np.array_equal(matrix.numpy(), quants.dequantize(np.asarray(t.data), Q8_0))


@pytest.mark.parametrize("tied", [True, False])
def test_every_other_key_and_tensor_is_byte_identical(tmp_path: Path, tied: bool) -> None:
    src, out, state, _, _ = convert_with_state(tmp_path, tied)
    src_fields, out_fields = raw_fields(src), raw_fields(out)
    for name, raw in src_fields.items():
        assert out_fields[name] == raw, name
    assert sorted(set(out_fields) - set(src_fields)) == sorted(
        k for k in out_fields if k.startswith("carvq."))
    src_t, out_t = raw_tensors(src), raw_tensors(out)
    assert "token_embd.weight" not in out_t
    for name, value in src_t.items():
        if name != "token_embd.weight":
            assert out_t[name] == value, name
    assert_states_identical(state, carvq_io.read_carvq_state(out))


def test_tied_head_copies_token_embd_bytes(tmp_path: Path) -> None:
    src, out, _, _, _ = convert_with_state(tmp_path, tied=True)
    assert raw_tensors(out)["output.weight"] == raw_tensors(src)["token_embd.weight"]
    names = [t.name for t in out.tensors]
    assert names[0] == "carvq_codes" and names[-1] == "output.weight"


def test_untied_model_gets_no_extra_head(tmp_path: Path) -> None:
    src, out, state, _, _ = convert_with_state(tmp_path, tied=False)
    assert len(out.tensors) == len(src.tensors) - 1 + len(carvq_io.carvq_tensors(state))


def test_output_type_requantizes_the_head(tmp_path: Path) -> None:
    src, out, _, matrix, _ = convert_with_state(tmp_path, tied=True, output_type="f16")
    head = next(t for t in out.tensors if t.name == "output.weight")
    assert head.tensor_type == GGMLQuantizationType.F16
    assert np.array_equal(np.asarray(head.data), matrix.numpy().astype(np.float16))


def test_output_type_unknown_is_rejected(tmp_path: Path) -> None:
    src = GGUFReader(make_synthetic_gguf(tmp_path / "s.gguf"))
    matrix, _ = gguf_source.token_embedding(src)
    with pytest.raises(CarvqError, match="unknown ggml type 'q9_9'"):
        gguf_source.output_head(src, matrix, "q9_9")
    with pytest.raises(CarvqError, match="cannot quantize the output head to Q4_K"):
        gguf_source.output_head(src, matrix, "q4_k")


def test_verification_catches_a_changed_tensor(tmp_path: Path) -> None:
    src, out, state, matrix, out_path = convert_with_state(tmp_path, tied=True)
    victim = next(t for t in out.tensors if t.name == "blk.0.ffn_up.weight")
    data = bytearray(out_path.read_bytes())
    data[victim.data_offset + 5] ^= 0xFF
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    head = gguf_source.output_head(src, matrix, None)
    with pytest.raises(CarvqError, match="tensor blk.0.ffn_up.weight differs from the source"):
        gguf_source.verify_carvq_model(src, GGUFReader(bad), state, head)


def test_verification_catches_a_changed_key(tmp_path: Path) -> None:
    src, out, state, matrix, out_path = convert_with_state(tmp_path, tied=True)
    data = out_path.read_bytes()
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(data.replace("synthetic".encode(), "Synthetic".encode()))
    head = gguf_source.output_head(src, matrix, None)
    with pytest.raises(CarvqError, match="key general.name differs"):
        gguf_source.verify_carvq_model(src, GGUFReader(bad), state, head)


def test_state_of_other_shape_is_rejected(tmp_path: Path) -> None:
    src = GGUFReader(make_synthetic_gguf(tmp_path / "s.gguf"))
    with pytest.raises(CarvqError, match="codec state is 64 x 64 but token_embd.weight is 96 x 64"):
        gguf_source.write_carvq_model(src, make_random_state(vocab_size=64), tmp_path / "o.gguf", None)


def test_carvq_file_is_not_a_source(tmp_path: Path) -> None:
    _, _, _, _, out_path = convert_with_state(tmp_path, tied=True)
    with pytest.raises(CarvqError, match="already a CARVQ-GGUF"):
        gguf_source.token_embedding(GGUFReader(out_path))


def test_refuses_to_overwrite_source(tmp_path: Path) -> None:
    src = make_synthetic_gguf(tmp_path / "s.gguf")
    with pytest.raises(CarvqError, match="refusing to overwrite the source"):
        check_paths(src, src)
    (tmp_path / "sub").mkdir()
    with pytest.raises(CarvqError, match="refusing to overwrite the source"):
        check_paths(src, tmp_path / "sub" / ".." / "s.gguf")
    with pytest.raises(CarvqError, match="does not exist"):
        check_paths(tmp_path / "missing.gguf", tmp_path / "o.gguf")


def test_atomic_output_leaves_nothing_on_failure(tmp_path: Path) -> None:
    dest = tmp_path / "o.gguf"
    dest.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_output(dest) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert dest.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.gguf"]
    with atomic_output(dest) as tmp:
        tmp.write_bytes(b"new")
        assert dest.read_bytes() == b"old"
    assert dest.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.gguf"]


def _dead_pid() -> int:
    import subprocess
    import sys

    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)


def test_temporaries_of_a_killed_conversion_are_removed_by_the_next(tmp_path: Path) -> None:
    """SIGKILL runs no cleanup: the next write to the same directory removes what a process that
    is gone left (its base-GGUF directory, its half-written output and unquantized file), and
    nothing of a live process or of another name."""
    import os

    from carvq_gguf.atomic import remove_stale_temporaries
    from carvq_gguf.convert.pipeline import BASE_PREFIX

    dead = _dead_pid()
    stale_dir = tmp_path / f"{BASE_PREFIX}{dead}-x1"
    stale_dir.mkdir()
    (stale_dir / "base.gguf").write_bytes(b"half")
    live_dir = tmp_path / f"{BASE_PREFIX}{os.getpid()}-x2"
    live_dir.mkdir()
    stale_out = tmp_path / f".o.gguf.{dead}-abc.tmp"
    stale_unquantized = tmp_path / f".o.gguf.{dead}-abc.tmp.unquantized"
    other = tmp_path / f".p.gguf.{dead}-abc.tmp"
    for path in (stale_out, stale_unquantized, other):
        path.write_bytes(b"half")
    assert remove_stale_temporaries(tmp_path, BASE_PREFIX) == [stale_dir]
    assert live_dir.is_dir()
    with atomic_output(tmp_path / "o.gguf") as tmp:
        assert tmp.name.startswith(f".o.gguf.{os.getpid()}-")
        tmp.write_bytes(b"new")
    assert not stale_out.exists() and not stale_unquantized.exists() and other.exists()


def test_sigterm_removes_temporaries_as_ctrl_c_does(tmp_path: Path) -> None:
    """A command stopped by SIGTERM (kill, timeout) exits 143 and its temporary directory is gone."""
    import subprocess
    import sys

    script = ("import os, signal, sys, tempfile, time\n"
              "from carvq_gguf.cli.main import exit_on_sigterm\n"
              "with exit_on_sigterm():\n"
              "    with tempfile.TemporaryDirectory(dir=sys.argv[1]) as d:\n"
              "        open(os.path.join(d, 'half.gguf'), 'wb').write(b'half')\n"
              "        os.kill(os.getpid(), signal.SIGTERM)\n"
              "        time.sleep(30)\n")
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, timeout=60)
    assert run.returncode == 143, run.stderr
    assert list(tmp_path.iterdir()) == []


def test_split_gguf_is_rejected(tmp_path: Path) -> None:
    from gguf import GGUFWriter

    w = GGUFWriter(tmp_path / "shard.gguf", "llama")
    w.add_uint16("split.no", 0)
    w.add_uint16("split.count", 2)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(CarvqError, match="one shard of a 2-way split GGUF"):
        gguf_source.token_embedding(GGUFReader(tmp_path / "shard.gguf"))
