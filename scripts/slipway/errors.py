"""Error classes and the exit code each one maps to.

A user (or a workflow) can tell from the exit code alone what kind of failure stopped a release.
Every failure Slipway raises on purpose is one of these; ``slipway`` prints its message (no
traceback) and exits with its code:

====================  ====  ==========================================================================
class                 code  meaning
====================  ====  ==========================================================================
SlipwayError          1     base class (not raised itself)
ConfigError           2     release.toml, a trigger or a CLI option is wrong; nothing was built
BuildError            3     a stage failed to produce an artifact (export, wheel, image)
CheckError            4     an artifact was built but failed a check (verification, smoke, budget)
RecordError           4     a record in ``dist/<version>/`` a stage reads is corrupt or unreadable
ServiceError          5     a local service (engine, registry, index) cannot be started or reached
PublishError          6     publishing was refused or failed
RegistryError         6     a registry or package index answered something final that is neither
                            success nor "absent" (401, 403, 400...); ``status`` is its HTTP status
TransientError        6     a failure another attempt may cure (connection refused or reset, a
                            timeout, a 5xx answer); ``registry.retry`` retries only these
====================  ====  ==========================================================================

Outcomes are decided on the class and attributes of an error, never on its message text.
"""

from __future__ import annotations

from dataclasses import dataclass


class SlipwayError(Exception):
    """Base class; ``exit_code`` is what ``slipway`` exits with."""

    exit_code = 1


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a configuration file: where, what was found, what was expected."""

    file: str
    key: str
    value: object
    message: str

    def __str__(self) -> str:
        if not self.key and self.value is _MISSING:
            return f"{self.file}: {self.message}"
        shown = "(missing)" if self.value is _MISSING else _shorten(repr(self.value))
        return f"{self.file}: {self.key} = {shown}: {self.message}"


# A value is shown up to this many characters: enough to recognise it, never a screenful.
MAX_SHOWN = 80


def _shorten(text: str) -> str:
    if len(text) <= MAX_SHOWN:
        return text
    return f"{text[: MAX_SHOWN - 20]}...{text[-8:]} ({len(text)} characters)"


class _Missing:
    def __repr__(self) -> str:
        return "(missing)"


_MISSING = _Missing()
MISSING = _MISSING


class ConfigError(SlipwayError):
    """The configuration (release.toml, a trigger, a CLI option) is wrong. Nothing was built."""

    exit_code = 2

    def __init__(self, problems: list[ConfigProblem] | str):
        if isinstance(problems, str):
            problems = [ConfigProblem("", "", MISSING, problems)]
        self.problems = problems
        lines = [str(p) if p.file or p.key else p.message for p in problems]
        head = f"{len(problems)} configuration problem(s):" if len(problems) > 1 else "configuration problem:"
        super().__init__("\n".join([head, *("  - " + line for line in lines)]))


class BuildError(SlipwayError):
    """A stage failed to produce an artifact (export, wheel, image)."""

    exit_code = 3


class CheckError(SlipwayError):
    """An artifact was built but failed a check (verification, smoke test, budget)."""

    exit_code = 4


class ServiceError(SlipwayError):
    """A local service (Docker engine, registry, package index) could not be started or reached."""

    exit_code = 5


class PublishError(SlipwayError):
    """Publishing was refused or failed; what was already published is left as it was."""

    exit_code = 6


class RegistryError(PublishError):
    """A final answer from a registry or package index that is neither success nor "absent".

    ``status`` is the HTTP status (None when there was no HTTP answer); the message carries what
    the registry said.
    """

    exit_code = 6

    def __init__(self, message: str, *, status: int | None = None):
        self.status = status
        super().__init__(message)


class TransientError(PublishError):
    """A failure worth retrying: connection refused or reset, a timeout, a 5xx answer.

    Raised to the user only once the retries are spent; a stage that can do without the registry
    (a dry run) catches it.
    """

    exit_code = 6


class RecordError(SlipwayError):
    """A record that a stage reads from the output folder (``plan.json``, ``images.json``,
    ``images/<variant>.json``, ``smoke/*.json``, ``wheels.json``, ``model.json``, ``release.json``)
    exists but cannot be read or is not valid JSON of the expected shape. ``path`` names the file.

    A missing optional record is not an error: readers treat it as absent.
    """

    exit_code = 4

    def __init__(self, path: object, cause: str):
        self.path = str(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}; the record is damaged: run the stage that writes it again")
