"""Peak memory of a stretch of work (one stage of a run): resident memory and, on CUDA, device memory.

On Linux the kernel's high-water mark of resident memory (``VmHWM``) is reset at
the start (writing 5 to ``/proc/self/clear_refs``) and read at the end, so each
stage gets its own peak. Where that is not possible the process's peak so far
is reported (``ru_maxrss``), and ``per_stage`` says so.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path


def _vm_hwm_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """``with PeakMemory() as m: ...`` then ``m.rss_bytes`` (and ``m.cuda_bytes``, None without CUDA)."""

    def __init__(self):
        self.rss_bytes: int | None = None
        self.cuda_bytes: int | None = None
        self.per_stage = False

    def __enter__(self) -> PeakMemory:
        self.per_stage = _reset_hwm() and _vm_hwm_bytes() is not None
        self._cuda = "torch" in sys.modules and sys.modules["torch"].cuda.is_available()
        if self._cuda:
            sys.modules["torch"].cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc) -> None:
        if self.per_stage:
            self.rss_bytes = _vm_hwm_bytes()
        else:
            scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
            self.rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        if self._cuda or ("torch" in sys.modules and sys.modules["torch"].cuda.is_available()):
            self.cuda_bytes = int(sys.modules["torch"].cuda.max_memory_allocated())

    def summary(self) -> dict:
        out = {"peak_rss_mb": round(self.rss_bytes / 2**20) if self.rss_bytes else None}
        if not self.per_stage:
            out["peak_rss_is_process_peak"] = True
        if self.cuda_bytes is not None:
            out["peak_cuda_mb"] = round(self.cuda_bytes / 2**20)
        return out

    def describe(self) -> str:
        if not self.rss_bytes:
            return ""
        text = f"peak memory {self.rss_bytes / 2**30:.2f} GB"
        if self.cuda_bytes is not None:
            text += f", CUDA {self.cuda_bytes / 2**30:.2f} GB"
        return text
