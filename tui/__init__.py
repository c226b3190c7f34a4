"""registry-tui: a terminal client that browses and prunes a registry over its HTTP API."""
