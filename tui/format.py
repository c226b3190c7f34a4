"""How numbers, digests and times read on a small screen."""

from __future__ import annotations

from datetime import datetime


def human_bytes(size: int | None) -> str:
    """1536 -> '1.5 KiB'; None (the server cannot tell) -> '?'."""
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def plural(count: int, word: str, many: str | None = None) -> str:
    """'1 tag', '2 tags'; '1 repository', '2 repositories' with `many`."""
    return f"{count} {word}" if count == 1 else f"{count} {many or word + 's'}"


def exact_bytes(size: int) -> str:
    """'12,345 bytes (12.1 KiB)': the exact count, then the readable one."""
    return f"{size:,} bytes ({human_bytes(size)})"


def short_digest(digest: str | None, length: int = 12) -> str:
    if not digest:
        return "?"
    return digest.split(":", 1)[-1][:length]


def age(when: datetime | None, now: datetime) -> str:
    """How long ago, in one short unit: '45s', '12m', '5h', '3d', '8mo', '2y'."""
    if when is None:
        return "?"
    seconds = max(0, int((now - when).total_seconds()))
    for unit, size in (("y", 365 * 86400), ("mo", 30 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def timestamp(when: datetime | None) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S UTC") if when else "?"
