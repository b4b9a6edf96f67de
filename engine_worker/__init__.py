"""The engine worker: receives resolved monitor configs from the vault over mutual TLS (issue 3)."""
