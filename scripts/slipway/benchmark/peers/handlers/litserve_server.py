"""LitServe: a LitAPI around the shared pipeline, served with LitServe's defaults
(one inference worker on a CPU) unless ``PEER_WORKERS`` sets ``workers_per_device``.

Run as ``python litserve_server.py``; ``PEER_PORT`` names the port. LitServe takes the raw PNG
body when ``decode_request`` declares it as ``Annotated[bytes, Body()]``.
"""

# No `from __future__ import annotations`: the server reads these annotations at run time.
import json
import os
from typing import Annotated

import litserve as ls
from fastapi import Body
from peer_pipeline import Pipeline


class DetectorAPI(ls.LitAPI):
    def setup(self, device):
        self.pipeline = Pipeline()

    def decode_request(self, request: Annotated[bytes, Body(media_type="image/png")]):
        return request

    def predict(self, x):
        return self.pipeline(x)

    def encode_response(self, output):
        return output


if __name__ == "__main__":
    options = {"workers_per_device": int(os.environ["PEER_WORKERS"])} if os.environ.get("PEER_WORKERS") else {}
    server = ls.LitServer(DetectorAPI(), accelerator="cpu", **options)
    workers = int(server.workers_per_device) * len(server.devices)
    cpus = len(os.sched_getaffinity(0))
    # Threads per inference worker: the CPUs shared out (set before LitServe starts its workers).
    os.environ["PEER_THREADS"] = os.environ.get("PEER_THREADS") or str(max(1, cpus // workers))
    print("PEER_SETTINGS " + json.dumps({"workers": workers, "threads": int(os.environ["PEER_THREADS"])}), flush=True)
    server.run(port=int(os.environ["PEER_PORT"]), generate_client_file=False)
