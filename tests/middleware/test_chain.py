"""Issue 3: the chain is built from the config; the README's third-party example loads by dotted path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import webtest

from dockyard.middleware import BUILTINS, MiddlewareContext, Options, build_chain
from dockyard.server.app import create_app
from dockyard.server.config import Config, ConfigError

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def readme_example() -> tuple[str, str, str]:
    """(module path, python source, toml) of the third-party example in the README's Middleware section."""
    section = README[README.index("### Writing a middleware"):]
    module = re.search(r"`(\w+/\w+)\.py`", section).group(1)
    source = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    toml = re.search(r"\n((?:    .*\n)+)", section[section.index("```\n", section.index("```python")):]).group(1)
    return module, source, "\n".join(line[4:] for line in toml.splitlines())


def test_every_builtin_is_documented():
    for name in BUILTINS:
        assert f"### `{name}`" in README, f"middleware {name!r} has no section in the README"


def test_readme_example_loads_by_dotted_path(tmp_path, monkeypatch):
    module, source, toml = readme_example()
    package = tmp_path / "lib" / module.split("/")[0]
    package.mkdir(parents=True)
    (package / f"{module.split('/')[1]}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    config_file = tmp_path / "dockyard.toml"
    config_file.write_text(f'data = "{tmp_path / "data"}"\n' + toml)
    from dockyard.server.config import load_config
    config = load_config(config_file, environ={})
    assert config.middleware[0]["name"] == module.replace("/", ".") + ".ServedBy"
    client = webtest.TestApp(create_app(config))
    r = client.get("/v2/")
    assert r.headers["X-Served-By"] == "registry-1"
    assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"  # RegistryHeaders stays in front
    r = client.get("/v2/no/such/tags/list", status=404)
    assert r.headers["X-Served-By"] == "registry-1"  # errors too


def test_plain_class_with_bad_options_is_a_config_error(tmp_path, monkeypatch):
    module, source, _ = readme_example()
    lib = tmp_path / "lib"
    (lib / module.split("/")[0]).mkdir(parents=True)
    (lib / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(lib))
    name = module.replace("/", ".") + ".ServedBy"
    with pytest.raises(ConfigError, match=re.escape(repr(name))):
        create_app(Config(data=str(tmp_path / "data"), middleware=({"name": name, "options": {"colour": 1}},)))


class Recorder:
    """A middleware with from_config, to check what the factory receives."""

    seen: list = []

    def __init__(self, tag, context):
        self.tag, self.context = tag, context

    @classmethod
    def from_config(cls, options: Options, context: MiddlewareContext):
        return cls(options.get("tag", str, "none"), context)

    def process_request(self, req, resp):
        Recorder.seen.append(self.tag)


def test_chain_order_and_factory_interface(tmp_path):
    config = Config(data=str(tmp_path / "data"),
                    middleware=({"name": f"{__name__}.Recorder", "options": {"tag": "a"}},
                                {"name": f"{__name__}.Recorder", "options": {"tag": "b"}}))
    Recorder.seen = []
    app = create_app(config)
    webtest.TestApp(app).get("/v2/")
    assert Recorder.seen == ["a", "b"]
    (entry, component), _ = build_chain(config.middleware, MiddlewareContext(config))
    assert entry["options"] == {"tag": "a"} and component.context.data_path == tmp_path / "data"
    assert not hasattr(component.context, "registry")  # middleware see requests and identities, not the state
    with pytest.raises(ConfigError, match=r"middleware '.*Recorder': option 'tag': expected a string"):
        build_chain(({"name": f"{__name__}.Recorder", "options": {"tag": 3}},), MiddlewareContext(config))
    with pytest.raises(ConfigError, match=r"option 'extra': unknown option"):
        build_chain(({"name": f"{__name__}.Recorder", "options": {"extra": 3}},), MiddlewareContext(config))
