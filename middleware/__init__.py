"""Configured middleware: built-in middleware by name, any Falcon middleware class by dotted path.

`build_chain(config.middleware, context)` turns the `[[middleware]]` tables of the config file into Falcon
middleware components. Each entry names a built-in (`auth`, `cors`, `logging`, `ratelimit`) or a dotted path
(`package.module.ClassName`). Where each stands in the request path is decided in one place,
`dockyard.server.pipeline` (built-ins have a fixed stage, `BUILTINS`; the others run in the order written, after
authentication). What is named is called through one small interface:

* if it has a `from_config(options, context)` class method, that builds the component: `options` is the entry's
  `options` table (an `Options` reader, see below), `context` a `MiddlewareContext` (config, data directory,
  clock). Middleware see requests and identities, never the registry's storage or database;
* otherwise it is called as `Class(**options)`, so a plain third-party Falcon middleware class works unchanged.

A component may also offer `routes()`, an iterable of `(uri_template, resource)` pairs that `create_app` adds to
the app (the auth middleware serves its token endpoint this way), and `parts()`, a mapping of stage to component
when it acts at two stages (`auth`'s failed-login throttle runs before it reads credentials).

Anything wrong (an unknown name, an unknown or ill-typed option) raises `ConfigError` naming the entry and the
option, so start-up stops with a clear message.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

from dockyard.server.config import Config, ConfigError
from dockyard.server.proxies import TrustedProxies

# name -> (class, the stage of the request path it stands in; see dockyard.server.pipeline)
BUILTINS = {
    "logging": ("dockyard.middleware.logging.AccessLog", "logging"),
    "cors": ("dockyard.middleware.cors.Cors", "cors"),
    "auth": ("dockyard.middleware.auth.AuthMiddleware", "auth"),
    "ratelimit": ("dockyard.middleware.ratelimit.RateLimit", "ratelimit"),
}


def client_address(req, proxies: TrustedProxies) -> str:
    """The client's address (forwarded headers believed only from `proxies`), worked out once per request."""
    address = req.context.get("client_address")
    if address is None:
        address = req.context.client_address = proxies.client_address(req.remote_addr,
                                                                       req.get_header("X-Forwarded-For"))
    return address


def stage_of(name: str) -> str:
    """The stage of the request path a configured entry stands in: a built-in's own, else `custom`."""
    return BUILTINS[name][1] if name in BUILTINS else "custom"


class SharedState(Protocol):
    """State kept where every node of a cluster sees it (the database they share), offered by the app."""

    def take_token(self, key: str, rate: float, burst: float) -> tuple[bool, float]: ...

    def peek_tokens(self, key: str, rate: float, burst: float) -> float: ...

    def secret(self, name: str, create: Callable[[], str]) -> str: ...


@dataclass(frozen=True)
class MiddlewareContext:
    """What a middleware may need from the app it joins, handed to `from_config(options, context)`."""
    config: Config
    clock: Callable[[], float] | None = None  # tests pass a fake clock; None means time.time
    # State shared by every node, when the metadata is on a database several hosts share; None for one host.
    shared: SharedState | None = None
    _made: dict = field(default_factory=dict, repr=False, compare=False)

    def buckets(self):
        """The token-bucket store every middleware of this app shares: on the shared database when there is one
        (`buckets.SharedBucketStore`: every node draws from one bucket per key), else a file in the data directory
        that the workers of this host share (`buckets.BucketStore`)."""
        if "buckets" not in self._made:
            from .buckets import BucketStore, SharedBucketStore
            self._made["buckets"] = (SharedBucketStore(self.shared) if self.shared is not None else
                                     BucketStore(self.data_path / "ratelimit.db", clock=self.now))
        return self._made["buckets"]

    @property
    def data_path(self) -> Path:
        return self.config.data_path

    @property
    def now(self) -> Callable[[], float]:
        return self.clock or time.time


_MISSING = object()


class Options:
    """Typed access to one entry's options; `finish()` refuses any option nobody asked for."""

    def __init__(self, entry: str, options: dict, *, prefix: str = ""):
        self.entry = entry
        self.prefix = prefix  # for nested tables: "token.", "rules[0]."
        self._options = dict(options)
        self._seen: set[str] = set()

    def error(self, option: str, problem: str) -> ConfigError:
        return ConfigError(f"middleware {self.entry!r}: option {self.prefix + option!r}: {problem}")

    def has(self, option: str) -> bool:
        return option in self._options

    def get(self, option: str, kind: type | tuple, default: Any = _MISSING) -> Any:
        self._seen.add(option)
        if option not in self._options:
            if default is _MISSING:
                raise self.error(option, "is required")
            return default
        value = self._options[option]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and bool not in kinds:
            raise self.error(option, f"expected {_kind_names(kinds)}, got {value!r}")
        if not isinstance(value, kinds):
            raise self.error(option, f"expected {_kind_names(kinds)}, got {value!r}")
        return value

    def number(self, option: str, default: float, *, minimum: float = 0) -> float:
        value = self.get(option, float, float(default))
        if value < minimum:
            raise self.error(option, f"must be at least {minimum}, got {value}")
        return value

    def strings(self, option: str, default: Iterable[str] = ()) -> tuple[str, ...]:
        value = self.get(option, list, list(default))
        if not all(isinstance(v, str) for v in value):
            raise self.error(option, f"expected a list of strings, got {value!r}")
        return tuple(value)

    def proxies(self, option: str, default: TrustedProxies) -> TrustedProxies:
        """A list of proxy addresses and networks (or "*"), parsed like the `trusted_proxies` setting."""
        if not self.has(option):
            self._seen.add(option)
            return default
        try:
            return TrustedProxies.parse(self.strings(option))
        except ValueError as exc:
            raise self.error(option, str(exc)) from None

    def finish(self) -> None:
        unknown = sorted(set(self._options) - self._seen)
        if unknown:
            raise self.error(unknown[0], "unknown option" + (f" (also: {', '.join(unknown[1:])})"
                                                              if len(unknown) > 1 else ""))


def _kind_names(kinds: tuple) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list",
             dict: "a table"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def resolve(name: str) -> Any:
    """The class a middleware entry names: a built-in name or a dotted path `package.module.Class`."""
    path = BUILTINS[name][0] if name in BUILTINS else name
    module_name, _, attribute = path.rpartition(".")
    if not module_name:
        raise ConfigError(f"middleware {name!r}: unknown middleware (built-ins: {', '.join(sorted(BUILTINS))}; "
                          "or give a dotted path package.module.Class)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"middleware {name!r}: cannot import {module_name!r}: {exc}") from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ConfigError(f"middleware {name!r}: {module_name!r} has no attribute {attribute!r}") from None


def build_one(entry: dict, context: MiddlewareContext) -> Any:
    name, options = entry["name"], dict(entry.get("options") or {})
    factory = resolve(name)
    if hasattr(factory, "from_config"):
        reader = Options(name, options)
        component = factory.from_config(reader, context)
        reader.finish()
        return component
    try:
        return factory(**options)
    except TypeError as exc:
        raise ConfigError(f"middleware {name!r}: bad options {sorted(options)}: {exc}") from None


def build_chain(entries: Iterable[dict], context: MiddlewareContext) -> list[tuple[dict, Any]]:
    """(entry, component) for each configured middleware, in the configured order."""
    return [(entry, build_one(entry, context)) for entry in entries]
