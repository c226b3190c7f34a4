"""registry-tui: browse and prune a registry from a terminal. The app is a shell: screens live in screens/,
network calls in workers that post messages (messages.py), the HTTP client in client.py."""

from __future__ import annotations

import argparse
import getpass
import sys
from datetime import datetime, timezone
from typing import Callable

from textual.app import App
from textual.binding import Binding

from .client import RegistryClient
from .connect import DEFAULT_URL, Connection, SettingsError, resolve
from .screens.help import HelpScreen
from .screens.repositories import RepositoriesScreen


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class RegistryApp(App):
    TITLE = "registry-tui"
    CSS_PATH = "app.tcss"
    BINDINGS = [
        Binding("question_mark", "help", "Help"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, client: RegistryClient, *, clock: Callable[[], datetime] = utc_now,
                 gc_grace: int | None = None, credentials_source: str = ""):
        super().__init__()
        self.client = client
        self.clock = clock
        self.gc_grace = gc_grace
        self.credentials_source = credentials_source
        self.admin: bool | None = None  # None until the server has been asked

    def on_mount(self) -> None:
        self.push_screen(RepositoriesScreen())

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def on_unmount(self) -> None:
        self.client.close()


EPILOG = f"""\
where the settings come from (the first found wins):
  URL          the argument, $REGISTRY_TUI_URL, `url` in the config file,
               else {DEFAULT_URL}; a bare HOST[:PORT] means https://
               (http:// for 127.0.0.1 and localhost)
  credentials  the flags; $REGISTRY_TUI_USERNAME and $REGISTRY_TUI_PASSWORD
               (or $REGISTRY_TUI_TOKEN); `username` and `password` in the
               config file; what `docker login` stored for the host, found
               as docker finds it through $DOCKER_CONFIG/config.json
               (~/.docker/config.json): the credential helper named by
               credHelpers for the host, else by credsStore (the program
               docker-credential-NAME on PATH), else auths; else none
  config file  $XDG_CONFIG_HOME/registry-tui/config.toml, by default
               ~/.config/registry-tui/config.toml: url, username, password,
               timeout (seconds, default 10)

In the app, ? lists the keys and q quits.

examples:
  registry-tui 127.0.0.1:5000
  registry-tui https://registry.example.com -u alice --password-stdin < pw
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="registry-tui", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Browse and prune a container registry (Dockyard, or any registry with the\n"
                    "V2 API) from a terminal.")
    parser.add_argument("url", nargs="?", help="registry URL (else $REGISTRY_TUI_URL, else the config file)")
    parser.add_argument("-u", "--username", help="user name (else $REGISTRY_TUI_USERNAME or docker's config.json)")
    parser.add_argument("-p", "--password", help="password (prefer --password-stdin)")
    parser.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    parser.add_argument("--token", help="a bearer token to send as is")
    parser.add_argument("--gc-grace", type=int, default=None, metavar="SECONDS",
                        help="grace period passed to the server's garbage collection (default: the server's)")
    return parser


def connect(args: argparse.Namespace) -> Connection:
    password = args.password
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif args.username and password is None and sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.username}: ")
    return resolve(args.url, username=args.username, password=password, token=args.token)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        connection = connect(args)
    except SettingsError as exc:
        print(f"registry-tui: {exc}", file=sys.stderr)
        return 2
    client = RegistryClient(connection.url, connection.credentials, timeout=connection.timeout)
    RegistryApp(client, gc_grace=args.gc_grace, credentials_source=connection.source).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
