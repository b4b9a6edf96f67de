"""The shared kernel both processes import: the generated API (credvault.v1) and the contract the vault and the
engine worker share (engine identity, id and placeholder formats, settings helpers, the /metrics endpoint, logs,
redaction, runtime). It imports neither vault_service nor engine_worker."""
