"""Issue 3: `dockyard user add|remove|list` manages an htpasswd file the auth middleware (and Apache's htpasswd)
reads."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from dockyard.middleware.htpasswd import Htpasswd, read_users
from dockyard.server.cli import main


def user(monkeypatch, *argv, stdin=""):
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return main(["user", *argv])


def test_add_list_remove(tmp_path, monkeypatch, capsys):
    path = str(tmp_path / "etc" / "htpasswd")
    assert user(monkeypatch, "add", "alice", "--htpasswd", path, "--password-stdin", "--rounds", "4",
                stdin="first pw\n") == 0
    assert user(monkeypatch, "add", "bob", "--htpasswd", path, "--password-stdin", "--rounds", "4",
                stdin="bob pw\n") == 0
    assert user(monkeypatch, "add", "alice", "--htpasswd", path, "--password-stdin", "--rounds", "4",
                stdin="second pw\n") == 0
    capsys.readouterr()
    assert user(monkeypatch, "list", "--htpasswd", path) == 0
    assert capsys.readouterr().out.split() == ["alice", "bob"]
    store = Htpasswd(path)
    assert store.verify("alice", "second pw") and not store.verify("alice", "first pw")
    assert os.stat(path).st_mode & 0o777 == 0o600
    # No password in the file (" pw" cannot occur in a bcrypt hash by chance: a space is not in its alphabet).
    assert " pw" not in Path(path).read_text()
    assert user(monkeypatch, "remove", "bob", "--htpasswd", path) == 0
    assert list(read_users(path)) == ["alice"]
    assert user(monkeypatch, "remove", "bob", "--htpasswd", path) == 1
    if shutil.which("htpasswd"):  # Apache's tool reads what we wrote
        assert subprocess.run(["htpasswd", "-vb", path, "alice", "second pw"], capture_output=True,
                              timeout=30).returncode == 0


def test_the_config_files_htpasswd_is_the_default(tmp_path, monkeypatch):
    path = tmp_path / "htpasswd"
    config = tmp_path / "dockyard.toml"
    config.write_text(f'[[middleware]]\nname = "auth"\n[middleware.options]\nhtpasswd = "{path}"\n')
    assert user(monkeypatch, "add", "carol", "--config", str(config), "--password-stdin", "--rounds", "4",
                stdin="pw\n") == 0
    assert list(read_users(path)) == ["carol"]


@pytest.mark.parametrize("argv, stdin", [
    (["add", "--password-stdin"], "pw\n"),             # no name
    (["add", "a:b", "--password-stdin"], "pw\n"),      # a colon would corrupt the file
    (["add", "dave", "--password-stdin"], "\n"),       # empty password
])
def test_refused(tmp_path, monkeypatch, argv, stdin):
    path = tmp_path / "htpasswd"
    assert user(monkeypatch, *argv, "--htpasswd", str(path), stdin=stdin) == 2
    assert read_users(path) == {}


def test_no_file_anywhere(tmp_path, monkeypatch):
    monkeypatch.delenv("DOCKYARD_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    assert user(monkeypatch, "list") == 2
