"""`dockyard check-config`: the effective settings and the middleware chain, or the error and exit status 2."""

import pytest

from dockyard.server.cli import main


def check(tmp_path, capsys, text: str, *argv, monkeypatch=None):
    path = tmp_path / "dockyard.toml"
    path.write_text(text)
    code = main(["check-config", "--config", str(path), *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    import os
    for key in [k for k in os.environ if k.startswith("DOCKYARD_")]:
        monkeypatch.delenv(key)


def test_prints_effective_settings_and_the_chain(tmp_path, capsys):
    code, out, err = check(tmp_path, capsys, 'trusted_proxies = "127.0.0.1"\nthreads = 4\n'
                           '[[middleware]]\nname = "logging"\n', "--workers", "3")
    assert code == 0, err
    lines = out.splitlines()
    assert 'trusted_proxies = "127.0.0.1"' in lines and "threads = 4" in lines and "workers = 3" in lines
    assert "sendfile = false" in lines and 'accel_redirect = ""' in lines
    assert any(line.startswith("#   logging: dockyard.middleware.") for line in lines)
    assert not (tmp_path / "data").exists()  # a check writes nothing


@pytest.mark.parametrize("text,message", [
    ('trusted_proxies = "not-an-ip"\n', "trusted_proxies"),
    ('base_url = "ftp://x"\n', "base_url"),
    ('accel_redirect = "_dockyard_blobs"\n', "accel_redirect"),
    ('threads = 0\n', "threads"),
    ('[[middleware]]\nname = "no.such.Middleware"\n', "no.such.Middleware"),
    ('[[middleware]]\nname = "logging"\n[middleware.options]\nno_such_option = 1\n', "no_such_option"),
])
def test_errors_exit_2_with_the_message(tmp_path, capsys, text, message):
    code, out, err = check(tmp_path, capsys, text)
    assert code == 2 and message in err and "configuration error" in err


def test_storage_settings_are_shown_without_the_secret(tmp_path, capsys):
    code, out, err = check(tmp_path, capsys, '[storage]\ndriver = "s3"\nbucket = "registry"\n'
                           'secret_access_key = "hunter2-secret"\n')
    assert code == 0, err
    assert "driver='s3'" in out and "bucket='registry'" in out and "hunter2" not in out
