"""Pluggable Falcon middleware for Dockyard (authentication, access logging, rate limiting)."""
