"""How much memory this machine can give a run, so that sizes are refused before allocating.

An allocation that does not fit ends with an allocator error deep inside torch or numpy (or
with the kernel's OOM killer); comparing a rough estimate with the memory available first
turns that into one message naming the setting to lower.
"""

from __future__ import annotations

import os

GIB = 1 << 30


def available_bytes(device: str = "cpu") -> int | None:
    """Free memory on ``device``: MemAvailable (else physical memory) for the CPU, free memory
    for a CUDA device; None when it cannot be told (the caller then does not refuse)."""
    if device.startswith("cuda"):
        try:
            import torch

            return int(torch.cuda.mem_get_info(torch.device(device))[0])
        except (ImportError, RuntimeError, ValueError, AssertionError):
            return None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def gib(n_bytes: float) -> str:
    """``"40.1 GiB"``: sizes in messages."""
    return f"{n_bytes / GIB:.1f} GiB"


def too_large(needed: float, device: str = "cpu") -> str:
    """'' when ``needed`` bytes fit, else the start of an error message with both sizes."""
    free = available_bytes(device)
    if free is None or needed <= free:
        return ""
    where = "this machine" if device == "cpu" else device
    return f"needs about {gib(needed)}, {where} has {gib(free)} available"
