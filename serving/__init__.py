"""Slipway's HTTP inference service.

Import-light on purpose: ``serving.testing`` and the configuration are used from the host
(smoke tests) where the backends' frameworks may be missing; each backend imports its
framework only when it is chosen.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
