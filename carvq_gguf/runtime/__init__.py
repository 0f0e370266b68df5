"""The patched llama.cpp runtime: the pinned sdist, the patched build, and llama.cpp's tools.

Imports only the standard library at import time, so it runs in an environment without torch."""
