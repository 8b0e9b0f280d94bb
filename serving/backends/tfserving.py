"""An external TensorFlow Serving, over its REST predict API (the tfserving-client image).

No TensorFlow and no numpy here: the image is sent as ``{"instances": [image]}`` (uint8 HWC as nested lists,
the SavedModel's ``serving_default`` does the resize and NMS) to
``POST {TFSERVING_URL}/v1/models/<name>:predict``, where ``<name>`` is model.json's ``name``, and
the ``{"predictions": [...]}`` answer is read like the SavedModel's own outputs.

When the server is unreachable, or does not (yet) serve the model, predict answers 503 and
/readyz says why; the backend keeps retrying, so it becomes ready once the server is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from serving.backends._tf import detections_from_outputs
from serving.backends.base import Backend, BackendError, BackendUnavailable, Detection

if TYPE_CHECKING:
    from PIL import Image

_DECIMAL = [str(i) for i in range(256)]


def instances_json(image: Image.Image) -> str:
    """``{"instances": [image]}`` with the RGB image as nested [H][W][3] lists, built from its bytes.

    Written without numpy (the tfserving-client image has none) and without building millions of
    Python ints for json.dumps.
    """
    width, height = image.size
    data = image.tobytes()
    stride = width * 3
    rows = []
    for y in range(height):
        row = data[y * stride : (y + 1) * stride]
        pixels = [
            f"[{_DECIMAL[r]},{_DECIMAL[g]},{_DECIMAL[b]}]"
            for r, g, b in zip(row[0::3], row[1::3], row[2::3], strict=True)
        ]
        rows.append("[" + ",".join(pixels) + "]")
    return '{"instances":[[' + ",".join(rows) + "]]}"


class TFServingBackend(Backend):
    name = "tfserving"
    input_kind = "pil"

    def __init__(
        self, *args: Any, tfserving_url: str | None = None, tfserving_timeout_s: float = 30.0, **kw: Any
    ):
        super().__init__(*args, **kw)
        if not tfserving_url:
            raise ValueError("the tfserving backend needs TFSERVING_URL")
        self.url = tfserving_url.rstrip("/")
        self.timeout_s = tfserving_timeout_s
        self.remote_name = self.manifest["name"]
        self._client = None

    def load(self) -> None:
        import httpx

        self._httpx = httpx
        if self._client is None:  # load is retried while the server is down; keep one connection pool
            self._client = httpx.Client(base_url=self.url, timeout=self.timeout_s)
        problem = self.check()
        if problem:
            raise BackendUnavailable(problem)

    def _status(self, timeout: float) -> str | None:
        """None when the server reports a version of the model AVAILABLE, else what is wrong."""
        where = f"TF Serving at {self.url}"
        try:
            response = self._client.get(f"/v1/models/{self.remote_name}", timeout=timeout)
        except self._httpx.HTTPError as exc:
            return f"{where} is unreachable: {type(exc).__name__}: {exc}"
        if response.status_code != 200:
            return f"{where} answered {response.status_code} for model {self.remote_name!r}: {response.text[:200]}"
        try:
            versions = response.json().get("model_version_status") or []
        except ValueError:
            return f"{where} sent a model status that is not JSON"
        if not any(v.get("state") == "AVAILABLE" for v in versions):
            states = ", ".join(f"{v.get('version')}: {v.get('state')}" for v in versions) or "no versions"
            return f"{where} has no AVAILABLE version of {self.remote_name!r} ({states})"
        return None

    def check(self) -> str | None:
        if self._client is None:
            return "not started"
        # Short: /readyz is polled and must answer quickly even when the server hangs.
        return self._status(timeout=min(2.0, self.timeout_s))

    def _predict(self, image: Image.Image) -> list[Detection]:
        # Unnamed row format: valid for a one-input signature whatever its input is called.
        body = instances_json(image)
        try:
            response = self._client.post(
                f"/v1/models/{self.remote_name}:predict",
                content=body,
                headers={"content-type": "application/json"},
            )
        except self._httpx.HTTPError as exc:
            raise BackendUnavailable(
                f"TF Serving at {self.url} is unreachable: {type(exc).__name__}: {exc}"
            ) from None
        if response.status_code in (404, 429, 502, 503, 504):
            raise BackendUnavailable(
                f"TF Serving at {self.url} answered {response.status_code}: {response.text[:200]}"
            )
        if response.status_code != 200:
            raise BackendError(f"TF Serving answered {response.status_code}: {response.text[:500]}")
        try:
            predictions = response.json()["predictions"]
            first = predictions[0]
        except (ValueError, KeyError, IndexError, TypeError):
            raise BackendError(f"TF Serving's answer has no predictions: {response.text[:300]}") from None
        if not isinstance(first, dict):
            raise BackendError(
                "TF Serving answered one unnamed output; expected boxes, scores, classes, num_detections"
            )
        return detections_from_outputs(first, self.manifest.get("labels") or [])

    def describe(self) -> dict[str, Any]:
        return {
            "device": "remote",
            "runtime": "tensorflow-serving REST",
            "tfserving_url": self.url,
            "remote_model": self.remote_name,
        }
