"""What the peer benchmark compares: the pinned peers, the configurations of each, and Slipway's images.

Versions are pinned here and only here; every peer gets its own virtualenv with the same torch,
numpy and pillow as Slipway's images (read from Slipway's requirements files), so the model, the
pre/postprocessing and the libraries are the same everywhere and only the server differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TORCHSERVE = "0.12.0"
LITSERVE = "0.2.19"
BENTOML = "1.4.40"

# Debian's Java runtime for TorchServe's frontend, installed with apt-get when `java` is missing.
JAVA_PACKAGE = "openjdk-17-jre-headless"


@dataclass(frozen=True)
class Peer:
    name: str
    version: str
    # Beyond the shared torch/numpy/pillow pins. TorchServe imports yaml without declaring it.
    packages: tuple[str, ...]
    needs_java: bool = False


PEERS: dict[str, Peer] = {
    "torchserve": Peer("torchserve", TORCHSERVE,
                       (f"torchserve=={TORCHSERVE}", f"torch-model-archiver=={TORCHSERVE}", "pyyaml==6.0.2"),
                       needs_java=True),
    "litserve": Peer("litserve", LITSERVE, (f"litserve=={LITSERVE}",)),
    "bentoml": Peer("bentoml", BENTOML, (f"bentoml=={BENTOML}",)),
}

# Slipway's CPU images, by variant, as `slipway images` built them for the example models.
SLIPWAY_VARIANTS = ("pytorch-cpu", "pytorch-cpp-cpu", "onnx-cpu")
# The runtimes of the Slipway images a peer run compares: those that serve the exported PyTorch
# model (TorchScript, the C++ runtime on the TorchScript file, ONNX Runtime on its ONNX export).
# Without --variant, a project's CPU images of these runtimes are its rows.
PEER_RUNTIMES = ("torchscript", "cpp", "onnx")


@dataclass(frozen=True)
class Config:
    """One server configuration: a row of the table."""

    key: str                 # unique id in results.json, e.g. "torchserve-default"
    server: str              # "slipway" or a key of PEERS
    label: str               # what the table shows in its first column
    settings: str            # the settings column, in words
    workers: int | None = None   # server processes (None: the server's default)
    threads: int | None = None   # intra-op threads per worker (None: cpus / workers)
    batch_max: int = 1
    batch_delay_ms: int = 0
    variant: str = ""        # Slipway's image variant
    optional: bool = False   # measured only when named (--only), to keep the full run short
    env: dict[str, str] = field(default_factory=dict)


def configs(cpus: int, variants: tuple[str, ...] = SLIPWAY_VARIANTS,
            peers: tuple[str, ...] = tuple(PEERS)) -> list[Config]:
    """The configurations measured on ``cpus`` CPUs: Slipway's images with their own defaults, then each peer."""
    out = [Config(key=f"slipway-{v}", server="slipway", label=f"Slipway {v} image", variant=v,
                  settings="the image's defaults (from its labels)") for v in variants]
    if "torchserve" in peers:
        out += [
            Config(key="torchserve-default", server="torchserve", label=f"TorchServe {TORCHSERVE}",
                   settings=f"default workers ({cpus}: one per CPU) x 1 thread", workers=None, threads=1),
            Config(key="torchserve-1x", server="torchserve", label=f"TorchServe {TORCHSERVE}",
                   settings=f"1 worker x {cpus} threads", workers=1, threads=cpus),
            Config(key="torchserve-batch", server="torchserve", label=f"TorchServe {TORCHSERVE}",
                   settings="default workers x 1 thread, batch 8, 5 ms delay (oneDNN fusion off: it "
                   "collapses on mixed batch sizes)", workers=None, threads=1,
                   batch_max=8, batch_delay_ms=5),
        ]
    if "litserve" in peers:
        out += [
            Config(key="litserve-default", server="litserve", label=f"LitServe {LITSERVE}",
                   settings="its defaults (1 inference worker on a CPU), threads = CPUs / workers"),
            Config(key="litserve-per-cpu", server="litserve", label=f"LitServe {LITSERVE}",
                   settings=f"{cpus} inference workers (workers_per_device) x 1 thread", workers=cpus, threads=1,
                   optional=True),
        ]
    if "bentoml" in peers:
        out.append(Config(key="bentoml-per-cpu", server="bentoml", label=f"BentoML {BENTOML}",
                          settings=f"{cpus} workers x 1 thread", workers=cpus, threads=1))
    return out
