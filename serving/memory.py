"""The service's process memory: how the C allocator keeps memory, and the framework's pages the
service process holds only because it imported the framework for its workers.

Both measured on the street example's TorchScript image (2 worker processes, 2 CPUs):

- **The allocator.** glibc returns freed memory above a threshold to the kernel (``munmap`` of
  large blocks, trimming the top of the heap), and each request's arrays (the decoded image, the
  preprocessed tensor, the model's activations: about 3 MB) then come back as fresh pages, each
  a page fault that zeroes 4 KiB: 830 faults a request, 1.9 ms of a worker's 13.9 ms. With blocks
  up to ``MMAP_THRESHOLD`` taken from the heap and up to ``TRIM_THRESHOLD`` of free heap kept,
  a worker takes no page fault after its first requests (p50 at one client 16.1 -> 13.6 ms). The
  cost is that free memory stays with the process (measured: 4 MiB more per worker under load).
  glibc's own variables ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` choose otherwise.
- **Import-only pages.** The service imports the framework so its forked workers share what the
  import built; the import also touched library code that only runs at import time (libtorch
  registers its thousands of operators then: 33 MiB of libtorch_cpu.so). The workers never map
  those pages again; the service, which runs no inference, holds them alone. Once the workers are
  ready it drops its mappings of the framework's read-only, unmodified library pages
  (``madvise(MADV_DONTNEED)``: they stay in the page cache, and a later access reads them back
  from there, the same bytes); pages the process modified are never touched.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

log = logging.getLogger("serving.memory")

MMAP_THRESHOLD = 32 << 20  # glibc's own ceiling for its adaptive threshold
TRIM_THRESHOLD = 64 << 20
_M_TRIM_THRESHOLD = -1  # <malloc.h>
_M_MMAP_THRESHOLD = -3
_MADV_DONTNEED = 4
_ALLOCATOR_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def _libc():
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - every Linux Python has its C library loaded
        return None


def tune_allocator() -> bool:
    """Keep freed memory in the process (see the module's text). False, and nothing changed, when
    either glibc variable is set (the user's choice) or the C library has no ``mallopt`` (musl's
    does nothing; macOS has none)."""
    if any(name in os.environ for name in _ALLOCATOR_VARIABLES):
        return False
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def _mappings():
    """(start, end, perms, path, rss bytes, anonymous bytes) for each file mapping of this process."""
    current = None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            first = line.split(None, 1)[0]
            if not first.endswith(":"):  # a mapping's header: start-end perms offset dev inode [path]
                if current is not None:
                    yield current
                parts = line.split(None, 5)
                start, end = (int(v, 16) for v in parts[0].split("-"))
                path = parts[5].strip() if len(parts) > 5 else ""
                current = [start, end, parts[1], path, 0, 0]
            elif current is not None and first in ("Rss:", "Anonymous:"):
                current[4 if first == "Rss:" else 5] = int(line.split()[1]) * 1024
    if current is not None:
        yield current


def release_import_pages(package_dir: str | os.PathLike) -> int:
    """Drop this process's mappings of the read-only, unmodified pages of every file under
    ``package_dir`` (a framework's package: its shared libraries); the bytes it no longer maps.

    Only mappings that are not writable and hold no anonymous (copied-on-write) page: what they
    map is exactly the file's bytes, which a later access maps again from the page cache.
    """
    madvise = getattr(_libc(), "madvise", None)
    if madvise is None or not os.path.exists("/proc/self/smaps"):
        return 0
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    prefix = str(Path(package_dir).resolve()) + os.sep
    released = 0
    for start, end, perms, path, rss, anonymous in list(_mappings()):
        if not path.startswith(prefix) or "w" in perms or anonymous or not rss:
            continue
        if madvise(start, end - start, _MADV_DONTNEED) == 0:
            released += rss
    return released


def release_framework_pages(module_name: str) -> int:
    """``release_import_pages`` for the package of an imported module (``torch``); 0 if it is not imported."""
    import sys

    module = sys.modules.get(module_name)
    origin = getattr(module, "__file__", None)
    if not origin:
        return 0
    released = release_import_pages(Path(origin).resolve().parent)
    if released:
        log.info("released %.0f MiB of %s's library pages that only its import used", released / 2**20, module_name)
    return released
