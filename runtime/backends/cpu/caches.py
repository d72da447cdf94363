"""The CPU's caches as Linux reports them, and whether a layer streams from memory.

Layers larger than a share of the last-level cache find little of their input there, and
the kernels then hint what they read next into L2 (``prefetch_lines``): the hardware's
prefetchers here stop at each 4 KiB page, and a tile of wide pixels crosses one or two.
"""

from __future__ import annotations

import functools
from pathlib import Path

#: The share of the last-level cache above which a layer (input and output together)
#: streams from memory: MobileNetV2 at batch 8 on a 2-core Zen 4 whose 32 MB of L3 other
#: machines share (see ``from_memory``).
STREAM_SHARE = 0.25

#: Bytes of one page: a stream whose tile spans at least this much is hinted.
PAGE_BYTES = 4096


def from_memory(layer_bytes: int) -> int:
    """1 where a layer's input and output together (``layer_bytes``) exceed STREAM_SHARE of
    the last-level cache. Measured on the depthwise kernel (one thread, 2-core Zen 4):
    MobileNetV2's depthwise steps at batch 8 22.5-25.2 -> 17.9-19.5 ms with hints; at batch
    1, where the step before left the input in the cache, the hints only took load slots
    (1.69-1.79 -> 1.72-1.85 ms)."""
    return int(layer_bytes > STREAM_SHARE * last_level_cache_bytes())


@functools.cache
def last_level_cache_bytes() -> int:
    """The largest CPU cache Linux reports for CPU 0 (sysfs), else 32 MiB."""
    sizes = []
    for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            sizes.append(cache_size_bytes(path.read_text()))
        except (OSError, ValueError):
            continue
    return max(sizes, default=32 << 20)


@functools.cache
def l2_cache_bytes() -> int:
    """CPU 0's level-2 cache (sysfs; one core's), else 256 KiB."""
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            if (index / "level").read_text().strip() == "2":
                return cache_size_bytes((index / "size").read_text())
        except (OSError, ValueError):
            continue
    return 256 << 10


def cache_size_bytes(text: str) -> int:
    """A sysfs cache size ("32768K", "1M", "512") in bytes; ValueError if it is none."""
    text = text.strip().upper()
    digits = text.rstrip("KMG")
    if not digits.isdigit():
        raise ValueError(f"not a cache size: {text!r}")
    return int(digits) * {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[len(digits) :], 1)
