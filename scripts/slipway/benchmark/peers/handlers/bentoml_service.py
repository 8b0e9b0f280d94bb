"""BentoML: a service around the shared pipeline, ``bentoml serve bentoml_service:Detector``.

``PEER_WORKERS`` sets the service's worker processes. BentoML parses request bodies as JSON or
multipart; the raw PNG body is taken through a subclass of its public ``bentoml.IODescriptor``
that reads the body as it is.
"""

# No `from __future__ import annotations`: the server reads these annotations at run time.
import os
from typing import Any

import bentoml
from peer_pipeline import Pipeline


class PngBody(bentoml.IODescriptor):
    image: bytes = b""

    @classmethod
    async def from_http_request(cls, request, serde):
        return cls(image=await request.body())


@bentoml.service(workers=int(os.environ.get("PEER_WORKERS", "2")), traffic={"timeout": 60})
class Detector:
    def __init__(self) -> None:
        self.pipeline = Pipeline()

    @bentoml.api(route="/predict", input_spec=PngBody)
    def predict(self, image: bytes) -> dict[str, Any]:
        return self.pipeline(image)
