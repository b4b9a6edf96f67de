"""The `credvault` console script (:mod:`vault_service.cli.main`), one module per command group.

:mod:`vault_service.cli.session` is the toolkit the client command groups share: connection and session, gRPC error
mapping, secret input, parsing and output.
"""
