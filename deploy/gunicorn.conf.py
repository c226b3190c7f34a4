"""gunicorn configuration for Dockyard, the same as `dockyard serve` applies:

    DOCKYARD_CONFIG=/etc/dockyard/dockyard.toml gunicorn -c deploy/gunicorn.conf.py 'dockyard.server.app:get_app()'

Every value comes from Dockyard's own configuration (the TOML file named by DOCKYARD_CONFIG, then DOCKYARD_*
variables) through `dockyard.server.serving.gunicorn_settings`, the module `dockyard serve` uses too; why each
value is what it is (gthread workers, timeouts, forwarded_allow_ips = trusted_proxies) is explained there and in
deploy/README.md. Options given to gunicorn on its command line still override these.
"""

from dockyard.server.config import load_config
from dockyard.server.serving import gunicorn_settings

globals().update(gunicorn_settings(load_config()))
