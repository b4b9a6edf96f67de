"""TLS 1.3 only, on both TLS ports of the vault (seed 000: "Access to the data is encrypted using TLS 1.3").

grpcio's server credentials take no minimum TLS version (grpc/grpc#43080 is open). What gRPC core does read is the
environment variable GRPC_SSL_CIPHER_SUITES: the cipher list of TLS 1.2 and below. TLS 1.3 suites are not part of
it (BoringSSL fixes them), and a list of TLS 1.3 suite names is refused ("Invalid cipher list": the port does not
open). So the list holds one PSK suite, which no handshake can choose since gRPC configures no pre-shared key: a
TLS 1.2 client finds no shared cipher and is refused; TLS 1.3 is unaffected.

gRPC core reads the variable once, when grpc is imported, so setting it in a running process is too late.
``credvault serve`` therefore starts over with it (exec: the same process id, arguments and environment besides)
unless it started with it. It applies to the whole process; the vault opens no gRPC client connections.
"""

from __future__ import annotations

import os
import sys

VARIABLE = "GRPC_SSL_CIPHER_SUITES"
NO_TLS12_CIPHER = "PSK-AES128-CBC-SHA"


def restart_unless_tls13_only() -> None:
    """Returns if this process started with TLS 1.2 ciphers off; else replaces it with one that does."""
    if os.environ.get(VARIABLE) == NO_TLS12_CIPHER:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    argv = [sys.executable, *sys.orig_argv[1:]]  # the interpreter's own arguments too (-m, -c)
    os.execve(sys.executable, argv, {**os.environ, VARIABLE: NO_TLS12_CIPHER})  # noqa: S606 - this very command
