"""Hub-wide configuration and security helpers."""
