"""Run folders: the one module that owns how a command writes its output folder (DESIGN decision 16).

Every command that writes (``run``, ``merge``, ``analyze``, ``demo``, ``calibrate``, ``train-toy``) goes through
:class:`RunFolder`, which gives it, for the time it writes:

- **a lock** (:class:`RunFolder` as a context manager): ``<folder>/.hybridreduce.lock`` (``.hybridreduce.<shard>.lock``
  for one shard of a split, so that the shards of one split write beside each other), held with ``flock``; a second
  writer is refused with the holder's pid and command. The operating system drops the lock when its process dies,
  so a killed run never leaves a folder locked.
- **atomic writes** (:func:`atomic_path`, :meth:`RunFolder.write_text`, :meth:`RunFolder.stage`): a file is written
  under a hidden temporary name in its own folder, flushed to disk, then renamed over the old one. A kill, Ctrl-C or
  a full disk mid-write leaves the previous file (or none), never a truncated one; the error is an
  :class:`~hybridreduce.errors.OutputError` that says so.
- **a manifest of the files it wrote** (``<folder>/.hybridreduce-files.json``: file name → the command, pid and time
  that wrote it), which the refusal below quotes.
- **refusal to replace another run's files** (:func:`refuse_to_replace`): a command lists the files it will write
  before any work, and those already in the folder are refused unless ``--overwrite`` is given; the message names the
  command that wrote them.

Also here: whole folders staged beside their target and swapped in (:func:`staging_dir`, :func:`install_dir`, for
an analysis run), shard names and parsing (:func:`shard_name`, :func:`parse_shard`, :func:`find_shards`,
:func:`missing_shards`) and the rank-0 barrier of ``torchrun`` (:func:`on_rank_zero_after_all`).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import InputError, OutputError

#: Names of the bookkeeping files a run folder holds besides the run's own files (all start with this).
HIDDEN_PREFIX = ".hybridreduce"
LOCK_NAME = ".hybridreduce.lock"
MANIFEST_NAME = ".hybridreduce-files.json"
#: ``shard-<index>-of-<count>``: groups index and count.
SHARD_RE = re.compile(r"shard-(\d+)-of-(\d+)")

#: The command line recorded in locks and manifests; :func:`hybridreduce.cli.main` sets it to what was typed.
COMMAND: str | None = None

__all__ = [
    "RunFolder",
    "atomic_path",
    "check_shard",
    "display_path",
    "find_shards",
    "holds_files",
    "install_dir",
    "missing_shards",
    "on_rank_zero_after_all",
    "parse_shard",
    "refuse_mixed_split",
    "refuse_to_replace",
    "shard_name",
    "stage",
    "staging_dir",
    "write_text",
    "written_by",
]


def current_command() -> str:
    """What started this process: :data:`COMMAND` when the command line set it, else ``sys.argv``."""
    return COMMAND if COMMAND is not None else shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])


def display_path(path: str | Path) -> str:
    """``path`` relative to the working directory when it lies under it, else absolute."""
    relative = os.path.relpath(path)
    return relative if not relative.startswith("..") else str(Path(path).absolute())


def holds_files(path: str | Path) -> bool:
    """Whether ``path`` is a folder with something in it besides the bookkeeping files of this module."""
    path = Path(path)
    return path.is_dir() and any(not p.name.startswith(HIDDEN_PREFIX) for p in path.iterdir())


# Atomic writes -----------------------------------------------------------------------------------
def _output_error(path: Path, exc: OSError) -> OutputError:
    why = {
        errno.ENOSPC: "the disk is full; free space",
        errno.EDQUOT: "the disk quota is exceeded; free space",
        errno.EROFS: "the file system is read-only; write elsewhere",
        errno.EACCES: "permission denied; write to a folder you own",
        errno.EPERM: "permission denied; write to a folder you own",
    }.get(exc.errno, f"{exc.strerror or exc}; fix the cause")
    return OutputError(f"cannot write {display_path(path)}: {why} and run again (the previous file, if any, is kept)")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Inside: a hidden temporary path beside ``path``, with its suffix (``savefig`` reads the format from it); after
    the block the file is flushed to disk and renamed to ``path``. An exception (Ctrl-C included) removes the
    temporary file and leaves ``path`` as it was; an ``OSError`` (full disk, read-only folder) becomes an
    :class:`~hybridreduce.errors.OutputError`."""
    path = Path(path)
    tmp = path.with_name(f"{HIDDEN_PREFIX}.tmp-{os.getpid()}-{path.stem}{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise _output_error(path, exc) from exc
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (:func:`atomic_path`); a file that holds ``text`` already is left
    untouched (a rerun with nothing to do changes nothing). Returns ``path``."""
    path, data = Path(path), text.encode()
    try:
        if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
            return path
    except OSError:
        pass
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


# The manifest and the refusal to replace ----------------------------------------------------------
def read_manifest(folder: str | Path) -> dict[str, dict[str, Any]]:
    """File name → ``{"command", "pid", "time"}`` of the files written into ``folder`` (empty when unknown)."""
    try:
        files = json.loads((Path(folder) / MANIFEST_NAME).read_text()).get("files", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return files if isinstance(files, dict) else {}


def written_by(folder: str | Path, name: str) -> str:
    """``"by `hybridreduce calibrate ...` at 2026-12-06 20:41"``, or ``""`` when the manifest does not know ``name``."""
    entry = read_manifest(folder).get(name)
    if not isinstance(entry, dict) or "command" not in entry:
        return ""
    return f" (written by `{entry['command']}` at {entry.get('time', '?')})"


def refuse_to_replace(folder: str | Path, names: Iterable[str], overwrite: bool, what: str = "--out") -> None:
    """Refuse, unless ``overwrite``, to write the files ``names`` into ``folder`` where some exist already.

    Called with every file a command will write, before any work: two runs into one folder never silently replace
    each other's files (``calibrate --out a.yaml`` then ``--out b.yaml`` would both write ``calibration.json``).
    """
    folder = Path(folder)
    present = [n for n in names if (folder / n).exists()]
    if present and not overwrite:
        by: dict[str, list[str]] = {}  # the files of each writer together
        for n in present:
            by.setdefault(written_by(folder, n), []).append(n)
        shown = "; ".join(f"{', '.join(names)}{writer}" for writer, names in by.items())
        raise InputError(
            f"{what} {display_path(folder)!r} already holds {shown}; pass --overwrite to replace "
            f"{'it' if len(present) == 1 else 'them'}, or give another {what}"
        )


# The lock and the folder --------------------------------------------------------------------------
def _holder(lock: Path) -> str:
    try:
        info = json.loads(lock.read_text())
        return f"pid {info['pid']} on {info['host']} (`{info['command']}`, since {info['time']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


class RunFolder:
    """A folder a command writes, locked while the ``with`` block runs; the files it writes are recorded.

    Args:
        path: the folder (created on entry).
        shard: ``(index, count)`` of a split's shard: the lock is that shard's own, so shards write side by side.
        command: recorded in the lock and the manifest (default: the command line).

    Raises (on entry):
        InputError: another process holds the lock (its pid and command are named).
        OutputError: the folder cannot be created.
    """

    def __init__(self, path: str | Path, shard: tuple[int, int] = (0, 1), command: str | None = None) -> None:
        self.path = Path(path)
        self.shard = shard
        self.command = command or current_command()
        self.written: list[str] = []
        self._fd: int | None = None
        self._created = False

    @property
    def lock_path(self) -> Path:
        name = LOCK_NAME if self.shard[1] == 1 else f"{HIDDEN_PREFIX}.{shard_name(self.shard)}.lock"
        return self.path / name

    def __enter__(self) -> RunFolder:
        import fcntl

        try:
            self._created = not self.path.exists()
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _output_error(self.path, exc) from exc
        while True:  # the standard lock-file loop: retry when the file was replaced between open and flock
            lock = self.lock_path
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise InputError(
                    f"{display_path(self.path)} is being written by {_holder(lock)}; wait for it to finish, or give "
                    "another --out"
                ) from None
            except OSError as exc:  # a file system without locks (some network mounts): write unguarded, say so
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise _output_error(lock, exc) from exc
                print(f"hybridreduce: warning: {display_path(self.path)} cannot be locked ({exc.strerror}); make "
                      "sure no other command writes there meanwhile", file=sys.stderr)  # fmt: skip
                break
            try:
                same = os.fstat(fd).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command, "time": _now()}
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(info) + "\n").encode())
        self._fd = fd
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            if self.written:
                self.record(self.written)
        finally:
            self.release()

    def release(self) -> None:
        """Drop the lock. A folder this run created and left without files is removed again (a refused or
        interrupted run leaves no trace); otherwise the lock file stays."""
        if self._fd is None:
            return
        if self._created and not holds_files(self.path):
            shutil.rmtree(self.path, ignore_errors=True)  # a writer that opened the lock file meanwhile retries
        else:
            os.ftruncate(self._fd, 0)  # the holder's record is for while it holds the lock
        os.close(self._fd)
        self._fd = None

    def record(self, names: Iterable[str], folder: Path | None = None) -> None:
        """Add ``names`` to the manifest of ``folder`` (default: this folder) as written by this command."""
        folder = self.path if folder is None else folder
        files = read_manifest(folder)
        for name in names:
            try:
                mtime = (folder / name).stat().st_mtime_ns
            except OSError:
                continue
            if not isinstance(files.get(name), dict) or files[name].get("mtime_ns") != mtime:  # changed by this run
                files[name] = {"command": self.command, "pid": os.getpid(), "time": _now(), "mtime_ns": mtime}
        files = {n: e for n, e in files.items() if (folder / n).exists()}
        write_text(folder / MANIFEST_NAME, json.dumps({"files": files}, indent=1) + "\n")

    def file(self, name: str) -> Any:
        """``with folder.file("x.png") as tmp: fig.savefig(tmp)``: :func:`atomic_path` of ``name``, recorded."""
        self.written.append(name)
        return atomic_path(self.path / name)

    def write_text(self, name: str, text: str) -> Path:
        """Write ``name`` atomically; returns its path."""
        with self.file(name) as tmp:
            tmp.write_text(text)
        return self.path / name

    def stage(self, write: Callable[[Path], Iterable[str | Path]]) -> list[Path]:
        """:func:`stage` into this folder; the files moved in are recorded."""
        moved = stage(self.path, write)
        self.written += [p.name for p in moved]
        return moved


def stage(folder: str | Path, write: Callable[[Path], Iterable[str | Path]]) -> list[Path]:
    """Call ``write(staging)`` on a fresh hidden folder in ``folder``, then move each file it returns into ``folder``.

    For writers that produce several files at once (``save_pretrained``, a set of tables and plots): an interrupted
    or failed ``write`` leaves ``folder`` as it was; the files then move in one by one, each by an atomic rename.
    """
    folder = Path(folder)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f"{HIDDEN_PREFIX}.stage-", dir=folder))
    except OSError as exc:
        raise _output_error(folder, exc) from exc
    try:
        written = list(write(staging))
        moved = []
        for path in written:
            final = folder / Path(path).name
            with open(path, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(path, final)
            moved.append(final)
        return moved
    except OSError as exc:
        raise _output_error(folder, exc) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


# Whole folders staged and swapped in (an analysis run) --------------------------------------------
def staging_dir(target: Path) -> Path:
    """A new hidden directory beside ``target``, on its file system, so that moving it into place is a rename."""
    parent = target.absolute().parent
    while not parent.exists():
        parent = parent.parent
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))


def install_dir(staging: Path, target: Path, folder: RunFolder | None = None) -> Path:
    """Move the complete directory ``staging`` to ``target``; what was there is moved aside first, deleted last.

    With ``folder`` (the locked :class:`RunFolder` of ``target`` or of the folder above it): the files of ``staging``
    are recorded in the manifest ``target`` gets, and a lock file inside ``target`` moves along (the same file, so
    the lock holds on the new directory too).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = None
    if folder is not None:
        folder.record(sorted(p.name for p in staging.iterdir() if not p.name.startswith(HIDDEN_PREFIX)), staging)
        if folder.lock_path.parent == target and folder.lock_path.exists():
            lock = staging / folder.lock_path.name
            os.replace(folder.lock_path, lock)
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    try:
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
        staging.rename(target)
    except BaseException:  # Ctrl-C (or an OSError) between the two renames: put the old directory back
        if old.exists() and not target.exists():
            old.rename(target)
        if lock is not None and lock.exists():
            os.replace(lock, folder.lock_path)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return target


# Shards and the rank-0 barrier -------------------------------------------------------------------
def shard_name(shard: tuple[int, int]) -> str:
    """``shard-<index>-of-<count>``: the name part every shard's file or folder carries."""
    return f"shard-{shard[0]}-of-{shard[1]}"


def check_shard(shard: tuple[int, int], shown: str | None = None) -> tuple[int, int]:
    """``(index, count)`` with ``count >= 1`` and ``0 <= index < count``; ``shown`` is how the user wrote it
    (``"3/2"``)."""
    ok = isinstance(shard, tuple) and len(shard) == 2
    ok = ok and all(isinstance(x, int) and not isinstance(x, bool) for x in shard) and 0 <= shard[0] < shard[1]
    if not ok:
        shown = shown if shown is not None else repr(shard)
        raise InputError(f"shard (--shard) {shown}: a shard must be i/N with N >= 1 and 0 <= i < N, e.g. 0/4")
    return shard


def parse_shard(spec: str | None, env: dict | None = None) -> tuple[int, int]:
    """``(index, count)`` from ``"i/N"``; without a spec, from torchrun's ``RANK``/``WORLD_SIZE``; else ``(0, 1)``."""
    env = os.environ if env is None else env
    if spec is None:
        if "WORLD_SIZE" in env and "RANK" in env:
            try:
                return check_shard((int(env["RANK"]), int(env["WORLD_SIZE"])), f"RANK/WORLD_SIZE {env['RANK']}/"
                                   f"{env['WORLD_SIZE']}")  # fmt: skip
            except ValueError:
                raise InputError(
                    f"RANK {env['RANK']!r} and WORLD_SIZE {env['WORLD_SIZE']!r} must be integers (torchrun sets them)"
                ) from None
        return 0, 1
    try:
        i, count = (int(x) for x in str(spec).split("/"))
    except ValueError:
        raise InputError(f"--shard must look like i/N (e.g. 0/4), got {spec!r}") from None
    return check_shard((i, count), spec)


def find_shards(folder: str | Path, pattern: str) -> dict[tuple[int, int], Path]:
    """The paths in ``folder`` matching ``pattern`` (a glob with ``{shard}`` for :func:`shard_name`, e.g.
    ``"predictions.{shard}.jsonl"``), by ``(index, count)``."""
    folder = Path(folder)
    found = {}
    regex = re.compile(re.escape(pattern).replace(re.escape("{shard}"), SHARD_RE.pattern))
    for path in sorted(folder.glob(pattern.replace("{shard}", "shard-*-of-*"))) if folder.is_dir() else []:
        match = regex.fullmatch(path.name)
        if match:
            found[(int(match[1]), int(match[2]))] = path
    return found


def missing_shards(have: Iterable[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """``(splits, missing)``: the counts N seen among the shards ``have``, and (for one split) the indices absent."""
    have = set(have)
    splits = sorted({count for _, count in have})
    if len(splits) != 1:
        return splits, []
    return splits, [i for i in range(splits[0]) if (i, splits[0]) not in have]


def refuse_mixed_split(
    out: Path, shard: tuple[int, int], shards: dict, whole: str | None, again: str, overwrite: bool | None = None
) -> None:
    """The out-dir rule of every sharded command: refuse to write ``shard`` = ``(index, count)`` into ``out`` beside the
    shards of another split (``shards``: every shard found there, by ``(index, count)``), or, for ``N > 1`` and
    unless ``overwrite``, beside a run made without ``--shard`` (``whole``: the file that holds it; None when there
    is none). Either way the same items would be ``again`` (``"answer"``, ``"score"``) a second time. ``overwrite``
    None: the command has no ``--overwrite``."""
    i, count = shard
    me = "a run without --shard" if count == 1 else f"shard {i}/{count}"
    other = sorted(path.name for (_, n), path in shards.items() if n != count)
    if other:
        raise InputError(
            f"{display_path(out)} already holds shards of another split ({', '.join(other)}); {me} would {again} "
            "their items again. Finish that split (the same --shard N, then `hybridreduce merge`), or give another "
            "--out"
        )
    if count > 1 and whole is not None and not overwrite:
        hint = "" if overwrite is None else ", or --overwrite to add shards beside it (their merge replaces it)"
        raise InputError(
            f"{display_path(out)}: {whole} holds a run made without --shard; {me} would {again} its items again. Give "
            f"another --out{hint}"
        )


def shards_being_written(folder: str | Path) -> list[str]:
    """The shards of ``folder`` whose writer holds its lock now (``"shard 1/4 by pid 123 ..."``)."""
    import fcntl

    busy = []
    for lock in sorted(Path(folder).glob(f"{HIDDEN_PREFIX}.shard-*-of-*.lock")):
        fd = os.open(lock, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            busy.append(f"{lock.name[len(HIDDEN_PREFIX) + 1 : -5]} by {_holder(lock)}")
        finally:
            os.close(fd)
    return busy


def on_rank_zero_after_all(rank: int, work):
    """Under torchrun: wait until every rank gets here (a gloo barrier), then run ``work()`` on rank 0 only.

    Returns ``work()``'s result on rank 0 and None elsewhere. The barrier waits up to two days, since ranks
    whose shards are lighter may finish hours apart (the default gloo timeout is 30 minutes).
    """
    from datetime import timedelta

    import torch.distributed as dist

    dist.init_process_group("gloo", timeout=timedelta(days=2))
    try:
        dist.barrier()
        result = work() if rank == 0 else None
        dist.barrier()  # no rank exits while rank 0 still reads their files
    finally:
        dist.destroy_process_group()
    return result
