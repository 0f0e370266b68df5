"""The native test programs (carvq_gguf.runtime.native), built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from carvq_gguf.runtime import native as native_build


@pytest.fixture(scope="session")
def native_bin() -> Path:
    """Directory with carvq-load and test-backend-ops (ASan+UBSan build of the patched tree)."""
    return native_build.build()
