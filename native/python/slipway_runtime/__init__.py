"""slipway_runtime: run a Slipway PyTorch export (TorchScript + model.json) with the C++ runtime.

    from slipway_runtime import Detector
    detector = Detector("dist/1.2.3/models/shapes-torch", threads=2)
    detector.predict(image)   # image: numpy uint8 [H, W, 3] RGB
    -> [{"box": [x1, y1, x2, y2], "score": 0.98, "class_id": 0, "label": "circle"}, ...]

Two wheels ship this package: 'slipway-runtime' bundles libtorch (no torch needed, but torch can
then not be imported in the same process), 'slipway-runtime-torch' uses the installed torch.
"""

from __future__ import annotations

import os as _os

from slipway_runtime import _build_info

__version__ = _build_info.VERSION
KIND = _build_info.KIND
TORCH_VERSION = _build_info.TORCH_VERSION

# The package folder is also a CMake prefix: find_package(SlipwayRuntime) with
# CMAKE_PREFIX_PATH set to this finds the C++ library and its header.
cmake_prefix_path = _os.path.dirname(_os.path.abspath(__file__))

if KIND == "self-contained":
    from slipway_runtime import _guard

    # auditwheel puts the vendored libraries in <site-packages>/slipway_runtime.libs.
    _guard.check_no_torch(_os.path.join(_os.path.dirname(cmake_prefix_path), "slipway_runtime.libs"))
    # The blocker goes in only once the vendored libtorch has loaded: if loading fails, torch stays usable.
    from slipway_runtime import _core

    _guard.block_torch()
else:
    # Load libtorch from the torch package first; the runtime links against that very copy.
    import torch as _torch

    if _torch.__version__.split("+")[0] != TORCH_VERSION:
        raise ImportError(
            f"slipway-runtime-torch {__version__} was built against torch=={TORCH_VERSION}, but torch "
            f"{_torch.__version__} is installed; install torch=={TORCH_VERSION}"
        )
    from slipway_runtime import _core  # noqa: F401

from slipway_runtime._detector import Detector, Error, bench  # noqa: E402

__all__ = ["KIND", "TORCH_VERSION", "Detector", "Error", "__version__", "bench", "cmake_prefix_path"]
