"""Storage: migrations and every SQL statement of the vault."""
