"""Exceptions raised by hybridreduce.

Each one carries a message that names the problem and the fix; none of them should ever surface
as a traceback from deep inside torch. They all derive from :class:`HybridReduceError` so that
command-line entry points can catch them and print just the message.
"""

from __future__ import annotations


class HybridReduceError(Exception):
    """Base class of every error hybridreduce raises on purpose."""


class UnsupportedModelError(HybridReduceError, ValueError):
    """The model's architecture has no adapter."""


class InputError(HybridReduceError, ValueError):
    """A mask, a schedule or an argument is malformed (wrong shape, dtype, empty, ...).

    ``field``: the setting the message is about (``"keep"``), when there is one; a reader of a YAML file
    (:func:`hybridreduce.yamlio.located`) uses it to add the file and line of that setting to the message.
    """

    field: str | None = None


class VideoError(InputError):
    """A video cannot be read: missing, corrupt, unsupported, or with too few frames."""


class ScoreError(HybridReduceError, RuntimeError):
    """A scorer produced non-finite values or could not score a block."""


class CompatibilityError(HybridReduceError, RuntimeError):
    """The installed transformers calls its modules in a way hybridreduce does not know (a renamed or new
    argument); the message names the argument, the module and the installed version."""


class OutputError(HybridReduceError, OSError):
    """A file could not be written (a full disk, a read-only folder, no permission); the previous file, if any,
    is kept (:mod:`hybridreduce.rundir` writes every file under a temporary name and renames it when complete)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped a command's work; the message says, in one line, what was kept and where.

    A ``KeyboardInterrupt``, so that no ``except Exception`` swallows it; the command line prints the message
    instead of its generic line and exits with status 130.
    """
