"""Slipway's HTTP inference service.

Import-light on purpose: the configuration is used from the host (smoke tests) where the
backends' frameworks may be missing; each backend imports its framework only when it is chosen.
The test doubles and request cases are Slipway's (``slipway.tfserving_standin``,
``slipway.request_cases``): nothing of them ships in an image.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
