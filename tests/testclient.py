"""Starlette's TestClient, imported once for every test module that drives the app in process.

Starlette asks for its httpx fork; the TestClient works the same with httpx meanwhile.
"""

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*starlette.testclient.*")
    from fastapi.testclient import TestClient

__all__ = ["TestClient"]
