"""Error types shared by the package: every data problem names the file and the problem."""

from __future__ import annotations

import os


class DataError(ValueError):
    """Bad input data: raised with the offending file and a plain description of the problem."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class MissingExtraError(ImportError):
    """An optional dependency is needed; the message names the extra that installs it."""

    def __init__(self, module: str, extra: str, purpose: str):
        super().__init__(
            f"{purpose} needs the optional package '{module}', which is not installed. "
            f"Install it with: pip install 'volt[{extra}]'"
        )


def require(module: str, extra: str, purpose: str):
    """Import an optional module or raise MissingExtraError naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtraError(module, extra, purpose) from exc
