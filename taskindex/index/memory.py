"""Hand memory freed while opening an index back to the operating system.

Opening a large index decodes every segment's Parquet rows (Arrow's allocator keeps
the freed buffers) and builds the FAISS structure (glibc keeps the freed heap). A
fresh process at 100k rows held 1.7 KiB a row this way, of which ~0.4 KiB was
memory already freed (tools/bench_query.py, RSS line).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys


def release_freed() -> None:
    """Return freed heap pages: Arrow's pool (if pyarrow is loaded) and glibc's malloc_trim where present."""
    pyarrow = sys.modules.get("pyarrow")
    if pyarrow is not None:
        pyarrow.default_memory_pool().release_unused()
    if sys.platform.startswith("linux"):
        name = ctypes.util.find_library("c")
        libc = ctypes.CDLL(name) if name else None
        trim = getattr(libc, "malloc_trim", None)  # glibc only (musl has none)
        if trim is not None:
            trim(0)
