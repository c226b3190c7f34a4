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
    ('node = "a/b"', "node"),
    ('node = "%s"' % ("n" * 33), "node"),
    ('node = "x&digest=sha256:0"', "node"),
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


# -- [storage] (issue 13) ----------------------------------------------------------------------------------------

def test_storage_table_then_environment(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[storage]\ndriver = "s3"\nbucket = "registry"\npath_style = true\npart_size = 16777216\n')
    config = load_config(path, environ={"DOCKYARD_STORAGE_PREFIX": "team/", "DOCKYARD_STORAGE_BUCKET": "other",
                                        "DOCKYARD_STORAGE_TLS_VERIFY": "false"})
    storage = config.storage
    assert (storage.driver, storage.bucket, storage.prefix, storage.path_style, storage.part_size,
            storage.tls_verify) == ("s3", "other", "team/", True, 16 * 1024 * 1024, False)
    assert load_config(environ={}).storage.driver == "filesystem"


def test_the_bucket_may_come_from_the_environment_alone(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[storage]\ndriver = "s3"\n')  # incomplete in the file, completed by the environment
    assert load_config(path, environ={"DOCKYARD_STORAGE_BUCKET": "b"}).storage.bucket == "b"


def test_the_secret_key_is_never_shown():
    config = load_config(environ={"DOCKYARD_STORAGE_DRIVER": "s3", "DOCKYARD_STORAGE_BUCKET": "b",
                                  "DOCKYARD_STORAGE_SECRET_ACCESS_KEY": "hunter2-secret"})
    assert config.storage.secret_access_key == "hunter2-secret"
    assert "hunter2" not in repr(config) and "hunter2" not in repr(config.storage)


@pytest.mark.parametrize("text,message", [
    ('storage = "s3"', "storage"),
    ('[storage]\ndriver = "ftp"\n', "storage.driver"),
    ('[storage]\ncolour = 1\n', "storage.colour"),
    ('[storage]\ndriver = "s3"\n', "storage.bucket"),
    ('[storage]\ndriver = "s3"\nbucket = "b"\npart_size = 1048576\n', "storage.part_size"),
    ('[storage]\ndriver = "s3"\nbucket = "b"\npart_size = "big"\n', "storage.part_size"),
    ('[storage]\ndriver = "s3"\nbucket = "b"\npath_style = "sometimes"\n', "storage.path_style"),
    ('[storage]\ndriver = "s3"\nbucket = "b"\nprefix = "../../etc"\n', "storage.prefix"),
    ('[storage]\ndriver = "s3"\nbucket = "b"\nprefix = "a b"\n', "storage.prefix"),
    ('[storage]\ndriver = "s3"\nbucket = "b"\ndownload = "carrier-pigeon"\n', "storage.download"),
    ('[storage]\ndriver = "s3"\nbucket = "b"\ndownload = "accel"\n', "accel_redirect"),
    ('[storage]\ndriver = "s3"\nbucket = "b"\npresign_expiry = 99999999\n', "storage.presign_expiry"),
    ('[storage]\ndriver = "s3"\nbucket = "b"\npresign_expiry = 0\n', "storage.presign_expiry"),
    ('[storage]\ndriver = "s3"\nbucket = "b"\nchecksums = "always"\n', "storage.checksums"),
    ('[storage]\ndriver = "s3"\nbucket = "b"\ntimeout = 0\n', "storage.timeout"),
    ('[storage]\ndownload = "redirect"\n', "storage.download"),
    ("[storage]\nbucket = 12\n", "storage.bucket"),
])
def test_bad_storage_tables(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(path, environ={})


def test_bad_storage_environment():
    with pytest.raises(ConfigError, match="DOCKYARD_STORAGE"):
        load_config(environ={"DOCKYARD_STORAGE": "s3"})
    with pytest.raises(ConfigError, match="storage.part_size"):
        load_config(environ={"DOCKYARD_STORAGE_PART_SIZE": "tiny"})
    with pytest.raises(ConfigError, match="storage_nope"):
        load_config(environ={"DOCKYARD_STORAGE_NOPE": "1"})
