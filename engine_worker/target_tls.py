"""TLS for the monitored targets (not the vault): client contexts with the system's trust roots (plus
``--target-ca``) and, for a client-certificate login, the credential's certificate and key.

A context without a client certificate holds configuration only (trust roots, protocol floor): Python's client
contexts keep no sessions unless one is passed explicitly, so one such context serves every execution. A context with
a client certificate holds a secret and is made for the one execution that needs it.

``ssl`` loads a certificate chain only from a path. The key must never touch a disk, so on Linux it is written to an
anonymous in-memory file (``memfd_create``), loaded through ``/proc/self/fd``, overwritten with zeros and closed
before the context is used. Where there is no memfd the client-certificate login fails with a clear reason rather
than writing the key to a temporary file.
"""

from __future__ import annotations

import os
import pathlib
import ssl

from credvault.v1 import credentials_pb2

__all__ = ["TargetTls", "TargetTlsError"]


class TargetTlsError(Exception):
    """A client certificate that cannot be used; the message names no secret."""


def _trust_directory() -> str | None:
    """A hashed certificate directory: loaded lazily (0.4 ms a context) where the bundle file costs ~50 ms."""
    paths = ssl.get_default_verify_paths()
    for directory in (paths.capath, paths.openssl_capath):
        if directory and os.path.isdir(directory):
            return directory
    return None


class TargetTls:
    def __init__(self, extra_ca_file: pathlib.Path | None = None) -> None:
        self._extra_ca = extra_ca_file.read_bytes().decode("ascii") if extra_ca_file is not None else None
        self._capath = _trust_directory()
        self._verifying: ssl.SSLContext | None = None

    def verifying(self) -> ssl.SSLContext:
        """The shared context without a client certificate."""
        if self._verifying is None:
            self._verifying = self.context()
        return self._verifying

    def context(self, client_certificate: credentials_pb2.CertificateDetails | None = None) -> ssl.SSLContext:
        """A new context; with ``client_certificate``, one that presents it."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the peer and its host name
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self._capath is not None:
            ctx.load_verify_locations(capath=self._capath)
        else:
            ctx.load_default_certs()
        if self._extra_ca is not None:
            ctx.load_verify_locations(cadata=self._extra_ca)
        if client_certificate is not None:
            _load_in_memory(ctx, client_certificate)
        return ctx


def _load_in_memory(ctx: ssl.SSLContext, certificate: credentials_pb2.CertificateDetails) -> None:
    if not certificate.certificate_chain_pem or not certificate.private_key_pem:
        raise TargetTlsError("the certificate credential has no certificate chain or no private key")
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is None:
        raise TargetTlsError("client certificates need an in-memory file (memfd_create, Linux); none here")
    data = bytearray(certificate.private_key_pem)
    data += b"\n" + certificate.certificate_chain_pem
    fd = memfd_create("credvault-client-certificate", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        try:
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
        except ssl.SSLError as exc:
            raise TargetTlsError(f"the client certificate or its key cannot be loaded ({exc.reason})") from None
    finally:
        os.pwrite(fd, bytes(len(data)), 0)
        os.close(fd)
        data[:] = bytes(len(data))
