"""Throughput of a CARVQ-GGUF against the dense-embedding GGUF of the same model.

Runs llama.cpp's llama-bench (built by `carvq-gguf build-runtime` from the patched tree) on the
two files in turn, one repetition at a time, alternating dense and CARVQ, so both see the same
machine load; reports the median tokens/s of each and the ratios CARVQ / dense for prompt
processing (pp) and generation (tg).

    .venv/bin/python scripts/bench_runtime.py --json
    .venv/bin/python scripts/bench_runtime.py --model SOURCE.gguf [--carvq SOURCE-carvq.gguf]

Without --carvq, the CARVQ file is made from SOURCE with a random codec state of the paper's
shape (L = 2, h = 8, K = 16, column codebooks, adaptor 16-384-512, 1024 correction rows):
throughput does not depend on the values, only on the shapes.

A CARVQ-GGUF of a tied model carries its head as an explicit output.weight. The dense reference
must compute the same head the same way, so a tied SOURCE is first written with the same
explicit output.weight (its bytes copied); measured here, the tied and the untied dense files
alone differ by about 2% in prompt processing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from gguf import GGUFReader
from tqdm import tqdm

from carvq_gguf.codec.synthetic import random_state
from carvq_gguf.data.models import smollm2_gguf
from carvq_gguf.errors import CarvqError
from carvq_gguf.gguf import rewrite as gguf_source
from carvq_gguf.gguf.names import OUTPUT
from carvq_gguf.runtime import build as runtime



def make_carvq(source: Path, out: Path) -> Path:
    """Write source with token_embd replaced by a random paper-shaped CARVQ state."""
    reader = GGUFReader(source)
    matrix, _ = gguf_source.token_embedding(reader)
    V, n = int(matrix.shape[0]), int(matrix.shape[1])
    state = random_state(V, n, levels=2, table_dim=16, hidden_dims=(384, 512), n_corrections=min(1024, V))
    gguf_source.write_carvq_model(reader, state, out, gguf_source.output_head(reader, matrix, None), progress=False)
    return out


def bench_once(model: Path, n_prompt: int, n_gen: int, threads: int, tool: Path | None = None) -> float:
    """tokens/s of one llama-bench repetition (pp if n_prompt else tg); tool: another llama-bench."""
    cmd = [str(tool or runtime.tool_path("llama-bench")), "-m", str(model), "-p", str(n_prompt), "-n", str(n_gen),
           "-r", "1", "-t", str(threads), "-o", "json"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise CarvqError(f"llama-bench failed on {model}:\n{result.stderr[-2000:]}")
    rows = json.loads(result.stdout)
    return float(rows[0]["avg_ts"])


def bench(dense: Path, carvq: Path, reps: int, n_prompt: int, n_gen: int, threads: int,
          tool: Path | None = None) -> dict:
    """Interleaved repetitions; medians and ratios."""
    samples: dict[str, dict[str, list[float]]] = {k: {"pp": [], "tg": []} for k in ("dense", "carvq")}
    with tqdm(total=reps * 4, desc="llama-bench", file=sys.stderr) as bar:
        for rep in range(reps):
            order = [("dense", dense), ("carvq", carvq)] if rep % 2 == 0 else [("carvq", carvq), ("dense", dense)]
            for test, (p, n) in (("pp", (n_prompt, 0)), ("tg", (0, n_gen))):
                for name, path in order:
                    samples[name][test].append(bench_once(path, p, n, threads, tool))
                    bar.update()
    med = {name: {test: statistics.median(v) for test, v in tests.items()} for name, tests in samples.items()}
    return {
        "dense_model": str(dense), "carvq_model": str(carvq), "reps": reps, "threads": threads,
        "n_prompt": n_prompt, "n_gen": n_gen,
        "dense_pp_tps": med["dense"]["pp"], "carvq_pp_tps": med["carvq"]["pp"],
        "dense_tg_tps": med["dense"]["tg"], "carvq_tg_tps": med["carvq"]["tg"],
        "pp_ratio": med["carvq"]["pp"] / med["dense"]["pp"], "tg_ratio": med["carvq"]["tg"] / med["dense"]["tg"],
        "samples": samples,
    }


def dense_reference(model: Path, out: Path) -> Path:
    """model itself if it has output.weight, else a copy of it with the tied head made explicit."""
    if gguf_source.find_tensor(GGUFReader(model), OUTPUT) is not None:
        return model
    gguf_source.untie_head(model, out)
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="dense source GGUF (default: the bundled SmolLM2)")
    parser.add_argument("--carvq", type=Path, help="its CARVQ-GGUF (default: made with a random paper-shaped state)")
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions per test")
    parser.add_argument("-p", "--n-prompt", type=int, default=256, help="prompt tokens for pp")
    parser.add_argument("-n", "--n-gen", type=int, default=64, help="generated tokens for tg")
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--llama-bench", type=Path, help="use this llama-bench (e.g. a development build)")
    args = parser.parse_args(argv)
    try:
        model = args.model or smollm2_gguf()
        if not model.is_file():
            raise CarvqError(f"{model} not found")
        with tempfile.TemporaryDirectory() as tmp:
            carvq = args.carvq or make_carvq(model, Path(tmp) / "carvq.gguf")
            dense = dense_reference(model, Path(tmp) / "dense-untied.gguf")
            result = bench(dense, carvq, args.reps, args.n_prompt, args.n_gen, args.threads, args.llama_bench)
            result["source_model"] = str(model)
    except CarvqError as e:
        print(f"bench_runtime: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"pp{args.n_prompt}: dense {result['dense_pp_tps']:.1f} t/s, CARVQ {result['carvq_pp_tps']:.1f} t/s, "
              f"ratio {result['pp_ratio']:.3f}")
        print(f"tg{args.n_gen}: dense {result['dense_tg_tps']:.1f} t/s, CARVQ {result['carvq_tg_tps']:.1f} t/s, "
              f"ratio {result['tg_ratio']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
