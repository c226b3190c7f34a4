"""How Dockyard runs under gunicorn: the one place its gunicorn settings and hooks are decided.

`dockyard serve` applies `gunicorn_settings(config)`; `deploy/gunicorn.conf.py` does the same for
`gunicorn -c deploy/gunicorn.conf.py 'dockyard.server.app:get_app()'`, so both run the same server.

Why these values (measured with deploy/measure_workers.py; figures in deploy/README.md):

- gthread workers, as Dockyard's own `worker.DockyardWorker`. A blob upload holds its worker's thread for as long
  as the client takes to send the layer (nginx streams it through, unbuffered). With `sync` workers each upload
  takes a whole process, so a handful of slow pushes stop the registry answering anything else, and gunicorn's
  `timeout` kills a sync worker whose single request runs longer than it: a multi-gigabyte push would be cut off.
  gthread's heartbeat comes from the worker's main loop, not from the request, so long transfers are never killed,
  and the other threads keep serving manifests and tags while they run. DockyardWorker reads request headers in
  the event loop, times out stalled bodies and downloads, and accepts only with a free thread (its docstring).
- workers: two per core by default (`workers` setting); threads: 64 per worker (`threads`): idle and slow-header
  connections hold no thread, so threads only bound concurrent requests (stalled uploads included, until
  `body_timeout`). Hashing, socket reads and file writes release the GIL, so blob transfers overlap.
- `preload_app`: the app is built (and the database migrated) once in the master, before forking.
- `forwarded_allow_ips` is `trusted_proxies`: gunicorn believes X-Forwarded-Proto from exactly the peers the app
  believes X-Forwarded-Host from, and from nobody when it is empty.
- `keepalive` 75 s: docker and containerd keep connections open between the requests of a push.
- `post_worker_init`: each worker starts the app's background jobs (scheduled GC, upload purge) once it is ready;
  no request ever starts a thread.
"""

from __future__ import annotations

from typing import Any

from .config import Config
from .metrics import Metrics

WORKER_CLASS = "dockyard.server.worker.DockyardWorker"
GRACEFUL_TIMEOUT = 30
KEEPALIVE = 75


def metrics_directory(config: Config):
    return config.data_path / "metrics"


def gunicorn_settings(config: Config) -> dict[str, Any]:
    """gunicorn settings (names as in a gunicorn config file) for `config`."""
    directory = metrics_directory(config)

    def on_starting(server) -> None:
        # Before any worker exists: counters start at zero with each start of the server.
        Metrics.reset(directory)

    def post_worker_init(worker) -> None:
        start = getattr(worker.wsgi, "start_background", None)
        if start is not None:
            start()

    return {
        "bind": [config.bind],
        "workers": config.worker_count,
        "worker_class": WORKER_CLASS,
        "threads": config.threads,
        "timeout": config.timeout,
        "graceful_timeout": GRACEFUL_TIMEOUT,
        "keepalive": KEEPALIVE,
        "preload_app": True,
        "sendfile": config.sendfile,
        "loglevel": config.log_level,
        "errorlog": "-",
        "limit_request_line": 8190,
        "proc_name": "dockyard",
        "forwarded_allow_ips": config.trusted_proxies,
        # gunicorn >= 24 opens a control socket at one fixed path per user: two registries would clash.
        "control_socket_disable": True,
        "on_starting": on_starting,
        "post_worker_init": post_worker_init,
    }
