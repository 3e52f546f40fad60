"""Peak memory of a piece of code: the process (or the CUDA allocator), and the tensors torch ops allocate.

Two measurements, for two questions:

:class:`PeakMemory`        how much memory a prefill needs: the peak above the level at entry, from the
                           CUDA caching allocator on a GPU (``max_memory_allocated``) or from the process's
                           resident set on Linux (``VmHWM`` after resetting it through ``/proc/self/clear_refs``).
                           On a CPU this counts everything the process touches (torch's workspaces, the
                           allocator's slack); memory that the C library kept from an earlier run and hands out
                           again is not counted, so :class:`PeakMemory` first returns free heap memory to the
                           system (``malloc_trim``). Elsewhere (macOS, no ``/proc``) it reports ``None``.
:class:`TensorAllocations` what a function allocates itself: the peak of the bytes held by the tensors that
                           torch ops create inside the context, whatever the device, deterministic (no
                           allocator, no other thread). This is how the scorers' memory is shown to grow
                           linearly with the prompt (``hybridreduce.bench.scoring_peak_bytes``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), or ``None`` where unreadable."""
    try:
        match = re.search(rf"^{field}:\s+(\d+)\s+kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _reset_rss_peak() -> bool:
    """Reset the process's peak resident set (``VmHWM``) to the current one; ``False`` where not possible."""
    try:
        _CLEAR_REFS.write_text("5")  # "5": reset the peak RSS (Linux ≥ 4.0, proc(5))
    except OSError:
        return False
    return True


def _trim_heap() -> None:
    """Hand free heap memory back to the system (glibc ``malloc_trim``), so the next peak starts clean."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        getattr(ctypes.CDLL(name), "malloc_trim", lambda _: 0)(0)
    except OSError:
        return


class PeakMemory:
    """Peak memory above the level at entry, in bytes, of the code run inside the context.

    Args:
        device: where the code runs. ``cuda``: the caching allocator's ``max_memory_allocated`` on that
            device (tensors only; synchronised at entry and exit). Otherwise the process's resident set.

    Attributes (after exit):
        bytes: the peak above the entry level, or ``None`` where this platform cannot tell.
        source: ``"cuda_allocator"``, ``"process_rss"`` or ``None``.

    Example::

        with PeakMemory("cpu") as peak:
            model(ids)
        peak.bytes
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.bytes: int | None = None
        self.source: str | None = None
        self._base: int | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        _trim_heap()
        rss = _status_kib("VmRSS")
        self._base = rss * 1024 if rss is not None and _reset_rss_peak() else None
        return self

    def __exit__(self, *exc) -> None:
        if self._base is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = max(0, torch.cuda.max_memory_allocated(self.device) - self._base)
            self.source = "cuda_allocator"
            return
        hwm = _status_kib("VmHWM")
        if hwm is not None:
            self.bytes = max(0, hwm * 1024 - self._base)
            self.source = "process_rss"


class TensorAllocations(TorchDispatchMode):
    """Bytes held by the tensors that torch ops allocate inside the context: now (``live``) and at most (``peak``).

    Every op's outputs are examined: one whose storage is neither an input's nor already counted is a new
    allocation (its storage's ``nbytes``); views of it and in-place results add a reference, and the bytes
    are released when the last tensor object referring to that storage is garbage. Tensors that existed
    before the context (model weights, the inputs of the measured function) never count, nor do views of
    them. What stays below the dispatcher (the scratch space of a fused kernel) is not seen.

    Example::

        with TensorAllocations() as alloc:
            scores = mamba2_importance(prims, q_index, q_valid, v_index, cfg)
        alloc.peak  # bytes
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.count = 0  # allocations seen
        self._refs: dict[tuple, list[int]] = {}  # storage key -> [tensor objects alive, nbytes]

    @staticmethod
    def _key(t: torch.Tensor) -> tuple | None:
        if t.layout != torch.strided or t.is_meta:
            return None
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        return (t.device, ptr) if ptr else None

    def _release(self, key: tuple) -> None:
        ref = self._refs.get(key)
        if ref is None:
            return
        ref[0] -= 1
        if ref[0] == 0:
            self.live -= ref[1]
            del self._refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {self._key(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            key = self._key(t)
            if key is None or (key in inputs and key not in self._refs):
                continue  # no storage, or a view of / a write into a tensor from before the context
            if key not in self._refs:
                nbytes = t.untyped_storage().nbytes()
                self._refs[key] = [0, nbytes]
                self.live += nbytes
                self.peak = max(self.peak, self.live)
                self.count += 1
            self._refs[key][0] += 1
            weakref.finalize(t, self._release, key)
        return out
