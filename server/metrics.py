"""Prometheus metrics shared by every gunicorn worker, in the Prometheus text exposition format (version 0.0.4).

A request lands on one worker; a scrape lands on another. So each process writes its samples into a file of its own,
`<directory>/<pid>.metrics`, memory-mapped, and a scrape reads and adds up the files of all processes. Writing a
sample is a dictionary lookup and an 8-byte store into the map: no lock between processes, no system call.

File layout: records one after another, each `u32 key length | key (UTF-8, padded to 8) | f64 value`, ended by a
zero length. A new record's key and value are written before its length, so a reader that sees a length sees the
whole record (x86-64 and arm64 keep stores in order for a reader of the same page; values are aligned 8-byte stores).

Counters and histograms are summed over every file, including those of workers that have exited (their requests
happened). Gauges are summed over live processes only. The directory is emptied when the server starts
(`Metrics.reset`, called from gunicorn's `on_starting` hook in `dockyard.server.serving`), so totals start at zero
with each start of the server, as Prometheus expects of counters.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import mmap
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LENGTH = struct.Struct("<I")
_VALUE = struct.Struct("<d")
_INITIAL_SIZE = 64 * 1024

log = logging.getLogger("dockyard")

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    kind: str  # counter, gauge, histogram
    help: str
    buckets: tuple = ()


def _allocate_file(fd: int, size: int) -> None:
    """Give the file real blocks up to `size` (posix_fallocate), never a sparse hole: touching a page of a
    memory-mapped hole on a full disk (or a full tmpfs) is SIGBUS, which kills the worker; a failed fallocate is an
    OSError (ENOSPC) the caller can live with."""
    os.posix_fallocate(fd, 0, size)


class ProcessFile:
    """This process's memory-mapped sample file, its blocks allocated before they are mapped."""

    def __init__(self, path: Path):
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            size = max(os.fstat(fd).st_size, _INITIAL_SIZE)
            _allocate_file(fd, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._slots: dict[str, int] = {}
        self._end = 0
        for key, offset, _ in _records(self._map):  # a file left by an earlier process with this pid: carry on
            self._slots[key] = offset
        self._end = _records_end(self._map)

    def add(self, key: str, amount: float) -> None:
        offset = self._slots.get(key)
        if offset is None:
            offset = self._allocate(key)
        _VALUE.pack_into(self._map, offset, _VALUE.unpack_from(self._map, offset)[0] + amount)

    def set(self, key: str, value: float) -> None:
        offset = self._slots.get(key)
        if offset is None:
            offset = self._allocate(key)
        _VALUE.pack_into(self._map, offset, value)

    def _allocate(self, key: str) -> int:
        encoded = key.encode()
        padded = (len(encoded) + 7) // 8 * 8
        needed = self._end + _LENGTH.size + 4 + padded + _VALUE.size + _LENGTH.size
        if needed > len(self._map):
            size = len(self._map)
            while size < needed:
                size *= 2
            fd = os.open(self.path, os.O_RDWR)
            try:
                _allocate_file(fd, size)  # before the old map goes: on ENOSPC this file stays as it was
                self._map.close()
                self._map = mmap.mmap(fd, size)
            finally:
                os.close(fd)
        start = self._end
        key_at = start + _LENGTH.size + 4  # 4 bytes of padding keep the value 8-aligned
        value_at = key_at + padded
        self._map[key_at:key_at + len(encoded)] = encoded
        _VALUE.pack_into(self._map, value_at, 0.0)
        _LENGTH.pack_into(self._map, start, len(encoded))  # last: the record now exists for readers
        self._slots[key] = value_at
        self._end = value_at + _VALUE.size
        return value_at

    def close(self) -> None:
        self._map.close()


def _records(data) -> Iterable[tuple[str, int, float]]:
    position, size = 0, len(data)
    while position + _LENGTH.size <= size:
        length = _LENGTH.unpack_from(data, position)[0]
        if length == 0:
            return
        key_at = position + _LENGTH.size + 4
        value_at = key_at + (length + 7) // 8 * 8
        if value_at + _VALUE.size > size:
            return
        yield bytes(data[key_at:key_at + length]).decode(), value_at, _VALUE.unpack_from(data, value_at)[0]
        position = value_at + _VALUE.size


def _records_end(data) -> int:
    end = 0
    for _, value_at, _ in _records(data):
        end = value_at + _VALUE.size
    return end


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Iterable[tuple[str, str]]) -> str:
    text = ",".join(f'{name}="{_escape(str(value))}"' for name, value in labels)
    return "{" + text + "}" if text else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


class Metrics:
    """The metric families and their samples, written by this process and read across all of them.

    `directory` holds one file per process. `collectors` are called at each scrape and return extra
    `(family name, labels, value)` gauge samples computed on the spot (e.g. storage use from the database).
    """

    def __init__(self, directory: str | os.PathLike, families: Iterable[Family],
                 collectors: Iterable[Callable[[], Iterable[tuple[str, tuple, float]]]] = (),
                 getpid: Callable[[], int] = os.getpid):
        self.directory = Path(directory)
        self.families = {family.name: family for family in families}
        self.collectors = list(collectors)
        self._getpid = getpid
        self._file: ProcessFile | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._keys: dict[tuple, str] = {}
        self._histograms: dict[tuple, tuple] = {}
        self._unrecorded = 0  # samples dropped for want of disk space

    @staticmethod
    def reset(directory: str | os.PathLike) -> None:
        """Empty the directory: called once by the server's master process before it forks its workers."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for entry in directory.glob("*.metrics"):
            entry.unlink(missing_ok=True)

    # -- writing -------------------------------------------------------------------------------------------------

    def _process_file(self) -> ProcessFile:
        pid = self._getpid()
        if self._file is None or self._pid != pid:
            # The first sample of this process (a fresh worker after fork): its own file and its own lock.
            self._lock = threading.Lock()
            self.directory.mkdir(parents=True, exist_ok=True)
            self._file = ProcessFile(self.directory / f"{pid}.metrics")
            self._pid = pid
            for key in list(self._file._slots):  # gauges of a dead process that had this pid are not ours
                family = self.families.get(json.loads(key)[0])
                if family is not None and family.kind == "gauge":
                    self._file.set(key, 0.0)
        return self._file

    def _key(self, name: str, suffix: str, labels: tuple) -> str:
        ident = (name, suffix, labels)
        key = self._keys.get(ident)
        if key is None:
            key = json.dumps([name, suffix, labels], separators=(",", ":"))
            if len(self._keys) < 100_000:
                self._keys[ident] = key
        return key

    def inc(self, name: str, labels: tuple = (), amount: float = 1.0) -> None:
        """Add to a counter or a gauge; `labels` is a tuple of (name, value) pairs in a fixed order."""
        self.add([(self._key(name, "", labels), amount)])

    def observe(self, name: str, labels: tuple, value: float) -> None:
        """One observation of a histogram: its bucket (stored per bucket, made cumulative at the scrape), sum, count."""
        self.add(self.observation(name, labels, value))

    def observation(self, name: str, labels: tuple, value: float) -> list[tuple[str, float]]:
        """The (key, amount) additions of one histogram observation, for `add`."""
        bounds, bucket_keys, sum_key, count_key = self._histogram_keys(name, labels)
        return [(bucket_keys[bisect.bisect_left(bounds, value)], 1.0), (sum_key, value), (count_key, 1.0)]

    def _histogram_keys(self, name: str, labels: tuple) -> tuple:
        """(bucket bounds, a key per bucket and +Inf, sum key, count key), made once per label set: this runs on
        every request, so no key is encoded twice."""
        cached = self._histograms.get((name, labels))
        if cached is None:
            buckets = self.families[name].buckets
            bucket_keys = tuple(self._key(name, "_bucket", labels + (("le", _number(bound)),))
                                for bound in (*buckets, math.inf))
            cached = (buckets, bucket_keys, self._key(name, "_sum", labels), self._key(name, "_count", labels))
            if len(self._histograms) < 10_000:
                self._histograms[(name, labels)] = cached
        return cached

    def key(self, name: str, labels: tuple = ()) -> str:
        """The key of a counter or gauge sample, for `add`."""
        return self._key(name, "", labels)

    def add(self, additions: list[tuple[str, float]]) -> None:
        """Several additions under one lock: what one request records. With no room for the samples (a full disk),
        they are not recorded, once said in the log; the request is not failed for it."""
        with self._lock:
            try:
                file = self._process_file()
                for key, amount in additions:
                    file.add(key, amount)
            except OSError as exc:
                if not self._unrecorded:
                    log.warning("metrics not recorded: %s (%s)", exc.strerror or exc, self.directory)
                self._unrecorded += 1

    # -- reading -------------------------------------------------------------------------------------------------

    def samples(self) -> dict[tuple[str, str, tuple], float]:
        """Every sample summed across processes: {(family, suffix, labels): value}."""
        totals: dict[tuple[str, str, tuple], float] = {}
        if not self.directory.is_dir():
            return totals
        for path in self.directory.glob("*.metrics"):
            try:
                pid = int(path.stem)
                data = path.read_bytes()
            except (ValueError, FileNotFoundError):
                continue
            live = None
            for key, _, value in _records(data):
                name, suffix, labels = json.loads(key)
                family = self.families.get(name)
                if family is None:
                    continue
                if family.kind == "gauge":
                    live = _alive(pid) if live is None else live
                    if not live:
                        continue
                ident = (name, suffix, tuple(tuple(pair) for pair in labels))
                totals[ident] = totals.get(ident, 0.0) + value
        return totals

    def value(self, name: str, labels: tuple = (), suffix: str = "") -> float:
        """One summed sample (0 when never written); for tests and health checks."""
        return self.samples().get((name, suffix, tuple(labels)), 0.0)

    def render(self) -> bytes:
        """The exposition text of every family."""
        totals = self.samples()
        for collector in self.collectors:
            for name, labels, value in collector():
                totals[(name, "", tuple(labels))] = value
        by_family: dict[str, list] = {}
        for (name, suffix, labels), value in totals.items():
            by_family.setdefault(name, []).append((suffix, labels, value))
        lines = []
        for family in self.families.values():
            lines.append(f"# HELP {family.name} {family.help}")
            lines.append(f"# TYPE {family.name} {family.kind}")
            samples = by_family.get(family.name, [])
            if family.kind == "histogram":
                lines.extend(self._histogram_lines(family, samples))
            else:
                for _, labels, value in sorted(samples):
                    lines.append(f"{family.name}{_labels(labels)} {_number(value)}")
        return ("\n".join(lines) + "\n").encode()

    @staticmethod
    def _histogram_lines(family: Family, samples: list) -> list[str]:
        series: dict[tuple, dict] = {}
        for suffix, labels, value in samples:
            if suffix == "_bucket":
                base = tuple(pair for pair in labels if pair[0] != "le")
                le = dict(labels)["le"]
                series.setdefault(base, {}).setdefault("buckets", {})[le] = value
            else:
                series.setdefault(labels, {})[suffix] = value
        lines = []
        for labels in sorted(series):
            entry = series[labels]
            counts = entry.get("buckets", {})
            running = 0.0
            for bound in (*family.buckets, math.inf):
                running += counts.get(_number(bound), 0.0)
                lines.append(f"{family.name}_bucket{_labels(labels + (('le', _number(bound)),))} {_number(running)}")
            lines.append(f"{family.name}_sum{_labels(labels)} {_number(entry.get('_sum', 0.0))}")
            lines.append(f"{family.name}_count{_labels(labels)} {_number(entry.get('_count', running))}")
        return lines
