"""A CARVQ-GGUF works through the plain llama_cpp.Llama API and through llama_cpp.server, with
no code change on the user's side: the same calls as for any GGUF, the same text as the model
with the dense decode of the same embedding."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import make_random_state
from test_runtime_parity import TINY_PROMPTS, tiny_base, vocab_and_width, write_carvq, write_dense_decode

pytestmark = pytest.mark.runtime
_ = tiny_base  # the session fixture, shared with the parity tests


@pytest.fixture(scope="module")
def models(tiny_base, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(CARVQ-GGUF, dense-decode GGUF) of a tiny tied qwen2 model."""
    source = tiny_base("qwen2")
    V, n = vocab_and_width(source)
    state = make_random_state(vocab_size=V, embedding_dim=n, seed=11)
    root = tmp_path_factory.mktemp("api")
    return write_carvq(source, state, root / "carvq.gguf"), write_dense_decode(source, state, root / "dense.gguf")


def complete(path: Path, prompt: str) -> str:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, verbose=False)
    out = llm.create_completion(prompt, max_tokens=10, temperature=0.0)
    return out["choices"][0]["text"]


def test_llama_api_completes_like_the_dense_model(models: tuple[Path, Path]) -> None:
    carvq, dense = models
    for prompt in TINY_PROMPTS[:3]:
        text = complete(carvq, prompt)
        assert text == complete(dense, prompt)
        assert len(text) > 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def test_server_serves_a_carvq_file(models: tuple[Path, Path], tmp_path: Path) -> None:
    carvq, _ = models
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(carvq), "--host", "127.0.0.1",
                               "--port", str(port), "--n_ctx", "256"], stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{base}/v1/models", timeout=2) as resp:
                    models_list = json.loads(resp.read())
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("llama_cpp.server did not come up: " + (tmp_path / "server.log").read_text()[-3000:])
        assert models_list["data"]
        prompt = TINY_PROMPTS[0]
        out = post(f"{base}/v1/completions", {"prompt": prompt, "max_tokens": 10, "temperature": 0.0})
        assert out["choices"][0]["text"] == complete(carvq, prompt)
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
