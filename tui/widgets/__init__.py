"""Widgets shared by the screens of registry-tui."""
