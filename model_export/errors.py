"""The one error the exporters raise for bad input or a failed check."""

from __future__ import annotations

from pathlib import Path


class ExportError(Exception):
    """An export failed. The message names the model, the file involved and the cause.

    The ``slipway export`` stage turns this into its own build/check error; this package does not
    depend on the CLI, so it defines its own class.
    """

    def __init__(self, model: str, file: str | Path | None, cause: str):
        self.model = model
        self.file = str(file) if file is not None else None
        self.cause = cause
        where = f" ({self.file})" if self.file else ""
        super().__init__(f"export of model '{model}' failed{where}: {cause}")


class VerificationError(ExportError):
    """The export was written but its verification failed (outputs differ from the eager model, or the
    verifying process failed or ran out of time): a failed check rather than a failed build."""
