"""The screens of registry-tui, one per file."""
