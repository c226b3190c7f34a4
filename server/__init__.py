"""The Dockyard registry server: a Falcon WSGI app implementing the OCI Distribution Spec v1.1."""
