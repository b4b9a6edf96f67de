"""Server TLS that follows its files: a renewed certificate (cert-manager, a rotated Secret) is served from the next
handshake on, without a restart and without touching open connections.

gRPC asks a certificate-configuration fetcher at every new handshake (``grpc.dynamic_ssl_server_credentials``). The
fetcher looks at the files' identity (device, inode, size, modification time: a ``stat`` each, cheap) and only when
one changed reads them again. A new set is served only once it is whole: the key belongs to the certificate and every
file parses. A half-done renewal (the certificate replaced, its key not yet) keeps the previous set and is tried again
at the next handshake after the files change again. The fetcher runs on a gRPC thread: it never raises, and it logs
file names and reasons only, never contents.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import threading
from collections.abc import Callable
from typing import cast

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = ["CertificateFiles", "ReloadingServerCredentials", "TlsFilesError", "load_certificate_files"]

log = logging.getLogger(__name__)

Stamp = tuple[tuple[int, int, int, int], ...]


class TlsFilesError(ValueError):
    """A set of TLS files that cannot be served; the message names the file and the rule, never its contents."""


@dataclasses.dataclass(frozen=True, repr=False)
class CertificateFiles:
    """One readable, consistent set: the chain, its key and (mutual TLS) the CA bundle that verifies clients."""

    chain_pem: bytes
    key_pem: bytes
    client_ca_pem: bytes | None
    leaf: x509.Certificate
    client_cas: tuple[x509.Certificate, ...]

    def __repr__(self) -> str:
        return f"CertificateFiles(subject={self.leaf.subject.rfc4514_string()!r}, key=<redacted>)"

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(self.key_pem, self.chain_pem)], self.client_ca_pem)


def _read(path: pathlib.Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsFilesError(f"cannot read the {what} file {path}: {exc.strerror or exc}") from None


def _spki(key: object) -> bytes:
    public = key.public_key()  # type: ignore[attr-defined]
    data: bytes = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return data


def load_certificate_files(
    cert_file: pathlib.Path, key_file: pathlib.Path, client_ca_file: pathlib.Path | None = None
) -> CertificateFiles:
    """Reads and checks a set; TlsFilesError when it cannot be served as it is."""
    chain = _read(cert_file, "certificate")
    try:
        certificates = x509.load_pem_x509_certificates(chain)
    except ValueError:
        raise TlsFilesError(f"{cert_file}: not a PEM certificate chain") from None
    key_pem = _read(key_file, "key")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise TlsFilesError(f"{key_file}: not an unencrypted PEM private key") from None
    if _spki(key) != _spki(certificates[0]):
        raise TlsFilesError(f"{key_file}: the key does not belong to the certificate in {cert_file}")
    ca_pem: bytes | None = None
    cas: tuple[x509.Certificate, ...] = ()
    if client_ca_file is not None:
        ca_pem = _read(client_ca_file, "CA")
        try:
            cas = tuple(x509.load_pem_x509_certificates(ca_pem))
        except ValueError:
            raise TlsFilesError(f"{client_ca_file}: not a PEM certificate bundle") from None
    return CertificateFiles(chain, key_pem, ca_pem, certificates[0], cas)


def _stamp(paths: tuple[pathlib.Path, ...]) -> Stamp:
    out = []
    for path in paths:
        try:
            st = os.stat(path)  # follows the symbolic links a Kubernetes Secret volume swaps
        except OSError:
            out.append((0, 0, -1, 0))
            continue
        out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


class ReloadingServerCredentials:
    """Server credentials of one port, re-read when their files change. ``on_loaded(port, files, reloaded)`` hears
    each set served, at start (``reloaded`` False) and after each reload, for the metrics."""

    def __init__(
        self,
        port_name: str,
        cert_file: pathlib.Path,
        key_file: pathlib.Path,
        client_ca_file: pathlib.Path | None = None,
        on_loaded: Callable[[str, CertificateFiles, bool], None] | None = None,
    ) -> None:
        self.port_name = port_name
        self._cert_file, self._key_file, self._ca_file = cert_file, key_file, client_ca_file
        self._paths = tuple(p for p in (cert_file, key_file, client_ca_file) if p is not None)
        self._on_loaded = on_loaded
        self._lock = threading.Lock()
        self._stamp = _stamp(self._paths)
        self.current = load_certificate_files(cert_file, key_file, client_ca_file)  # start-up: errors propagate
        self.reloads = 0
        self._notify(self.current, reloaded=False)

    def credentials(self) -> grpc.ServerCredentials:
        # grpc-stubs types the fetcher's result without None, which gRPC documents as "keep the current one".
        fetcher = cast(Callable[[], grpc.ServerCertificateConfiguration], self._fetch)
        return grpc.dynamic_ssl_server_credentials(
            self.current.configuration(), fetcher, require_client_authentication=self._ca_file is not None
        )

    def _notify(self, files: CertificateFiles, *, reloaded: bool) -> None:
        if self._on_loaded is not None:
            self._on_loaded(self.port_name, files, reloaded)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's fetcher: a new configuration when the files changed into a servable set, else None (keep)."""
        try:
            return self.reload_if_changed()
        except Exception:  # never into gRPC's thread; the previous set stays
            log.exception("%s port: checking the TLS files failed; serving the previous certificate", self.port_name)
            return None

    def reload_if_changed(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            stamp = _stamp(self._paths)
            if stamp == self._stamp:
                return None
            self._stamp = stamp
            try:
                loaded = load_certificate_files(self._cert_file, self._key_file, self._ca_file)
            except TlsFilesError as exc:
                log.warning("%s port: the TLS files changed, but %s; serving the previous set", self.port_name, exc)
                return None
            now_served = (self.current.chain_pem, self.current.key_pem, self.current.client_ca_pem)
            if (loaded.chain_pem, loaded.key_pem, loaded.client_ca_pem) == now_served:
                return None  # touched, not changed
            self.current = loaded
            self.reloads += 1
        log.info(
            "%s port: TLS files reloaded (certificate %s, valid until %s)",
            self.port_name,
            loaded.leaf.subject.rfc4514_string(),
            loaded.leaf.not_valid_after_utc.isoformat(),
        )
        self._notify(loaded, reloaded=True)
        return loaded.configuration()
