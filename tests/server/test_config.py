"""Settings: defaults, TOML file, DOCKYARD_* environment, and errors that name the setting."""

import pytest

from dockyard.server.config import Config, ConfigError, load_config


def test_defaults_need_no_file(monkeypatch):
    config = load_config(environ={})
    assert config.bind == "0.0.0.0:5000" and config.data == "./data"
    assert config.worker_count >= 2


def test_file_then_environment_then_overrides(tmp_path):
    path = tmp_path / "dockyard.toml"
    path.write_text('bind = "127.0.0.1:6000"\ndata = "/srv/a"\nthreads = 4\nsendfile = true\n')
    config = load_config(path, environ={"DOCKYARD_DATA": "/srv/b"})
    assert (config.bind, config.data, config.threads, config.sendfile) == ("127.0.0.1:6000", "/srv/b", 4, True)
    config = load_config(path, environ={"DOCKYARD_DATA": "/srv/b"}, overrides={"data": "/srv/c", "bind": None})
    assert config.data == "/srv/c" and config.bind == "127.0.0.1:6000"
    assert config.config == str(path)


def test_config_path_from_environment(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("workers = 3\n")
    assert load_config(environ={"DOCKYARD_CONFIG": str(path)}).workers == 3


@pytest.mark.parametrize("text,setting", [
    ("colour = 1", "colour"),
    ('threads = "many"', "threads"),
    ("threads = 0", "threads"),
    ("bind = 5000", "bind"),
    ("sendfile = 3", "sendfile"),
    ('log_level = "chatty"', "log_level"),
    ("not toml at all [", "not valid TOML"),
])
def test_bad_file_names_the_setting(tmp_path, text, setting):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=setting):
        load_config(path, environ={})


def test_bad_environment_names_the_variable():
    with pytest.raises(ConfigError, match="DOCKYARD_NOPE"):
        load_config(environ={"DOCKYARD_NOPE": "1"})
    with pytest.raises(ConfigError, match="workers"):
        load_config(environ={"DOCKYARD_WORKERS": "lots"})


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/dockyard.toml", environ={})


def test_config_is_immutable():
    with pytest.raises(Exception):
        Config().bind = "x"


def test_middleware_tables(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[[middleware]]\nname = "logging"\n\n[[middleware]]\nname = "mypkg.mod.Thing"\n'
                    '[middleware.options]\nlimit = 3\n')
    config = load_config(path, environ={})
    assert config.middleware == ({"name": "logging", "options": {}},
                                 {"name": "mypkg.mod.Thing", "options": {"limit": 3}})


@pytest.mark.parametrize("text,message", [
    ('middleware = "auth"', "list"),
    ("[[middleware]]\noptions = {}\n", "name"),
    ('[[middleware]]\nname = "auth"\ncolour = 1\n', "colour"),
    ('[[middleware]]\nname = "auth"\noptions = 3\n', "options"),
])
def test_bad_middleware_tables(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path, environ={})
