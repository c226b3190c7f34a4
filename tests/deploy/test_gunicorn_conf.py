"""deploy/gunicorn.conf.py and `dockyard serve` run gunicorn with the same settings (issue 6)."""

import runpy
from pathlib import Path

from gunicorn.config import Config as GunicornConfig

from dockyard.server.config import Config, load_config
from dockyard.server.serving import gunicorn_settings

CONF = Path(__file__).resolve().parents[2] / "deploy" / "gunicorn.conf.py"


def load_conf_file(monkeypatch, **environ) -> dict:
    for key in [k for k in __import__("os").environ if k.startswith("DOCKYARD_")]:
        monkeypatch.delenv(key)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    namespace = runpy.run_path(str(CONF))
    known = GunicornConfig().settings
    return {k: v for k, v in namespace.items() if k in known}


def test_conf_file_equals_what_dockyard_serve_applies(monkeypatch, tmp_path):
    toml = tmp_path / "dockyard.toml"
    toml.write_text('bind = "127.0.0.1:5999"\nthreads = 4\ntrusted_proxies = "127.0.0.1, 10.0.0.0/8"\n')
    settings = load_conf_file(monkeypatch, DOCKYARD_CONFIG=str(toml), DOCKYARD_WORKERS="3")
    expected = gunicorn_settings(load_config(toml, environ={"DOCKYARD_WORKERS": "3"}))
    assert settings.keys() == {k for k in expected if k in GunicornConfig().settings}
    for key, value in settings.items():
        if not callable(value):
            assert value == expected[key], key
    assert settings["bind"] == ["127.0.0.1:5999"] and settings["workers"] == 3 and settings["threads"] == 4


def test_every_setting_is_one_gunicorn_accepts(tmp_path):
    cfg = GunicornConfig()
    for key, value in gunicorn_settings(Config(data=str(tmp_path), trusted_proxies="127.0.0.1")).items():
        if key in cfg.settings:
            cfg.set(key, value)  # gunicorn validates each value
    # gthread's kind (threads > 1: a long upload never blocks a whole worker), with Dockyard's connection handling.
    from gunicorn.workers.gthread import ThreadWorker
    assert cfg.worker_class_str == "dockyard.server.worker.DockyardWorker"
    assert issubclass(cfg.worker_class, ThreadWorker)
    assert cfg.forwarded_allow_ips == ["127.0.0.1"]
    assert cfg.preload_app and cfg.keepalive == 75


def test_forwarded_headers_trusted_from_nobody_by_default(tmp_path):
    cfg = GunicornConfig()
    cfg.set("forwarded_allow_ips", gunicorn_settings(Config(data=str(tmp_path)))["forwarded_allow_ips"])
    assert cfg.forwarded_allow_ips == []  # not gunicorn's own default of 127.0.0.1


def test_on_starting_empties_the_metrics_directory(tmp_path):
    config = Config(data=str(tmp_path / "data"))
    stale = config.data_path / "metrics" / "4242.metrics"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"\0" * 64)
    gunicorn_settings(config)["on_starting"](None)
    assert not stale.exists() and stale.parent.is_dir()
