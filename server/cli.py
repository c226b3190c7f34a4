"""The `dockyard` command: `serve` runs the registry under gunicorn."""

from __future__ import annotations

import argparse
import sys

from .config import ConfigError, load_config


def _serve(args: argparse.Namespace) -> int:
    from gunicorn.app.base import BaseApplication

    from .app import create_app

    config = load_config(args.config, overrides={"bind": args.bind, "data": args.data, "workers": args.workers})

    class Server(BaseApplication):
        def load_config(self) -> None:
            settings = {
                "bind": config.bind,
                "workers": config.worker_count,
                "worker_class": "gthread",
                "threads": config.threads,
                "timeout": config.timeout,
                "graceful_timeout": 30,
                "keepalive": 75,  # docker and containerd keep connections open between requests
                "preload_app": True,  # build the app (and migrate the database) once, before forking
                "sendfile": config.sendfile,
                "loglevel": config.log_level,
                "errorlog": "-",
                "limit_request_line": 8190,
                "proc_name": "dockyard",
            }
            if "control_socket_disable" in self.cfg.settings:
                # gunicorn >= 24 opens a control socket at one fixed path per user: two registries would clash.
                settings["control_socket_disable"] = True
            for key, value in settings.items():
                self.cfg.set(key, value)

        def load(self):
            return create_app(config)

    Server().run()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dockyard", description="A container image registry.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the registry under gunicorn")
    serve.add_argument("--bind", help="HOST:PORT to listen on (default 0.0.0.0:5000)")
    serve.add_argument("--data", help="data directory (default ./data)")
    serve.add_argument("--config", help="TOML config file (or DOCKYARD_CONFIG)")
    serve.add_argument("--workers", type=int, help="worker processes (default: two per core)")
    serve.set_defaults(func=_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"dockyard: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
