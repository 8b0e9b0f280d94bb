"""Slipway: a release pipeline for ML inference models."""
__version__ = "0.1.0"
