"""The reference registry's configuration for the end-to-end tests: one base (filesystem storage, deletes on, its
access log on, 127.0.0.1 only), with the sections a test needs appended (auth, notifications)."""

from __future__ import annotations

from pathlib import Path

BASE = """\
version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


def reference_config(root: Path | str, port: int, extra: str = "") -> str:
    """The YAML for `docker-registry serve`: the base, then `extra` (top-level sections of its own)."""
    return BASE.format(root=root, port=port) + extra
