"""Error classes and the exit code each one maps to.

A user (or a workflow) can tell from the exit code alone what kind of failure stopped a release.
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
