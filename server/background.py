"""Work a worker does besides answering requests: scheduled garbage collection, upload purging and, with
notification endpoints configured, the event sender.

Started by gunicorn's `post_worker_init` hook (`serving.py`) in every worker, never by a request. Each job takes
the metadata's lock for its kind of work, so one process does it at a time whatever the number of workers (or of
nodes sharing the metadata); the others find the lock taken or the work already done and go back to sleep. The
event sender thread runs in every worker too: one per node delivers, the others stand by, and nodes share the
work through leases in the metadata (`notify`).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Callable

from .mirror import FLUSH_INTERVAL
from .registry import Registry

log = logging.getLogger("dockyard")

PURGE_INTERVAL = 60.0  # seconds between looks for expired or abandoned upload sessions and data nobody records


class BackgroundJobs:
    def __init__(self, registry: Registry, *, sleep: Callable[[float], None] = time.sleep):
        self.registry = registry
        self._sleep = sleep
        self._threads: list[threading.Thread] = []

    def jobs(self) -> list[tuple[str, float, Callable[[], None]]]:
        """(name, interval in seconds, the work) of every job the configuration asks for."""
        config = self.registry.config
        jobs = [("upload-purge", min(PURGE_INTERVAL, config.upload_max_age / 4), self._purge)]
        if config.gc_interval:
            jobs.append(("gc-schedule", float(config.gc_interval), self._collect))
        if self.registry.mirror is not None:  # pull times written in batches, cached upstreams kept to max_size
            jobs.append(("cache", FLUSH_INTERVAL, self.registry.mirror.maintain))
        return jobs

    def start(self) -> None:
        """Start each job's thread (daemon threads: they end with the worker)."""
        for name, interval, work in self.jobs():
            thread = threading.Thread(target=self._loop, args=(name, interval, work), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.registry.config.notifications:
            thread = threading.Thread(target=self.registry.notifications.run, name="events", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _loop(self, name: str, interval: float, work: Callable[[], None]) -> None:
        while True:
            # Spread the workers out, so they do not all wake at once for a lock only one can take.
            self._sleep(interval * random.uniform(0.5, 1.0))
            try:
                work()
            except Exception:
                log.exception("background job %s failed", name)

    def _collect(self) -> None:
        report = self.registry.collect_garbage_if_due()
        if report is not None:
            log.info("scheduled gc: %d blobs, %d manifests, %d bytes freed", report.blobs_removed,
                     report.manifests_removed, report.bytes_freed)

    def _purge(self) -> None:
        purged, freed = self.registry.purge_uploads()
        if purged:
            log.info("upload purge: %d expired, abandoned or unrecorded upload sessions removed, %d bytes freed",
                     purged, freed)
