"""Keeps the self-contained wheel's libtorch and the ``torch`` package out of each other's way.

The self-contained wheel vendors its own copy of libtorch. A process that loads a second copy
(by importing ``torch``, in either order) registers every operator twice and libtorch aborts
the whole process ("Tried to register multiple backend fallbacks"). A Python ImportError that
says what to do is better than a dead process, so:

- before loading the vendored libtorch, refuse when any libtorch is already in the process;
- afterwards, a ``sys.meta_path`` finder refuses ``import torch`` (and ``torch.*``). It cannot
  tell an import from a probe (``importlib.util.find_spec("torch")``): a finder that stepped
  aside would let the next one find the installed torch, so a probe gets the same ImportError.
"""

from __future__ import annotations

import sys
from importlib.abc import MetaPathFinder

ADVICE = (
    "Use the 'slipway-runtime-torch' wheel instead (same API, it runs on the installed torch package), "
    "or keep slipway_runtime and torch in separate processes."
)


class TorchConflictError(ImportError):
    """torch and the self-contained slipway_runtime were asked to share one process."""


def _loaded_libtorch(own_libs_dir: str) -> list[str]:
    """Paths of libtorch/libc10 copies mapped into this process that are not our own."""
    try:
        with open("/proc/self/maps") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
        name = path.rsplit("/", 1)[-1]
        if name.startswith(("libtorch_cpu", "libc10")) and not path.startswith(own_libs_dir) and path not in found:
            found.append(path)
    return found


def check_no_torch(own_libs_dir: str) -> None:
    """Raise TorchConflictError when torch (or any other libtorch) is already loaded."""
    if "torch" in sys.modules:
        raise TorchConflictError(
            "slipway_runtime (the self-contained 'slipway-runtime' wheel) cannot be imported after 'torch': "
            "it bundles its own libtorch, and two copies in one process abort it. " + ADVICE,
            name="slipway_runtime",
        )
    others = _loaded_libtorch(own_libs_dir)
    if others:
        raise TorchConflictError(
            "slipway_runtime (the self-contained 'slipway-runtime' wheel) cannot be loaded: this process already "
            f"has another libtorch ({others[0]}), and two copies in one process abort it. " + ADVICE,
            name="slipway_runtime",
        )


class TorchBlocker(MetaPathFinder):
    """Refuses ``import torch`` once the vendored libtorch is loaded."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torch" or fullname.startswith("torch."):
            raise TorchConflictError(
                f"'import {fullname}' refused: this process has loaded slipway_runtime from the self-contained "
                "'slipway-runtime' wheel, which bundles its own libtorch, and a second copy (the torch package) "
                "would abort the process. " + ADVICE,
                name=fullname,
            )
        return None


def block_torch() -> None:
    if not any(isinstance(f, TorchBlocker) for f in sys.meta_path):
        sys.meta_path.insert(0, TorchBlocker())
