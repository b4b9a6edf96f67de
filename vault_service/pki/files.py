"""The PKI's files: ``<name>.pem`` and ``<name>.key`` pairs in a directory, written atomically (see
:mod:`vault_service.pki`)."""

from __future__ import annotations

import os
import pathlib
import re
import secrets
import stat

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from credvault.identity import EngineIdentity
from vault_service.pki.issuing import ENGINE_CA, IssuedCertificate, ca_parts, cert_pem

__all__ = ["engine_file_name", "file_paths", "load_ca", "read_files", "write_files"]

_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")


def engine_file_name(identity: EngineIdentity) -> str:
    """``engine-<location>-<engine>``: the file name (without suffix) of an engine's certificate and key."""
    return f"engine-{identity.location_id}-{identity.engine_id}"


def file_paths(directory: pathlib.Path | str, name: str) -> tuple[pathlib.Path, pathlib.Path]:
    """``<name>.pem`` and ``<name>.key`` in ``directory``; ``name`` must be a plain file name (no path)."""
    if not isinstance(name, str) or not _FILE_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a valid file name for a certificate")
    base = pathlib.Path(directory)
    return base / f"{name}.pem", base / f"{name}.key"


def _atomic_write(path: pathlib.Path, data: bytes, mode: int) -> None:
    """Writes ``data`` to ``path`` via a new temporary file (created with ``mode``) and :func:`os.replace`."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have removed bits; the mode is exactly this, never more
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_files(
    directory: pathlib.Path | str, name: str, issued: IssuedCertificate
) -> tuple[pathlib.Path, pathlib.Path]:
    """Writes ``<name>.key`` (mode 0600) and then ``<name>.pem`` (the chain, mode 0644); returns (pem, key) paths.

    The directory is created (mode 0700) if needed. Existing files are replaced: refusing to overwrite is the caller's
    decision.
    """
    pem_path, key_path = file_paths(directory, name)
    pem_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _atomic_write(key_path, issued.key_pem, 0o600)
    _atomic_write(pem_path, issued.chain_pem, 0o644)
    return pem_path, key_path


def read_files(directory: pathlib.Path | str, name: str) -> IssuedCertificate:
    """Reads back what :func:`write_files` wrote; the key must belong to the first certificate of the chain."""
    pem_path, key_path = file_paths(directory, name)
    chain_pem = pem_path.read_bytes()
    key_pem = key_path.read_bytes()
    try:
        certs = x509.load_pem_x509_certificates(chain_pem)
    except ValueError:
        raise ValueError(f"{pem_path} holds no PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise ValueError(f"{key_path} is not an unencrypted PEM private key") from None
    if key.public_key() != certs[0].public_key():
        raise ValueError(f"the key in {key_path} does not belong to the certificate in {pem_path}")
    return IssuedCertificate(cert_pem=cert_pem(certs[0]), key_pem=key_pem, chain_pem=chain_pem)


def load_ca(directory: pathlib.Path | str, name: str = ENGINE_CA) -> IssuedCertificate:
    """Loads a CA written by :func:`write_files`, refusing a key file others may read and a non-CA certificate."""
    _, key_path = file_paths(directory, name)
    if key_path.exists():
        mode = stat.S_IMODE(key_path.stat().st_mode)
        if mode & 0o077:
            raise ValueError(f"{key_path} is readable by others (mode {mode:04o}); chmod 600 {key_path}")
    ca = read_files(directory, name)
    ca_parts(ca)
    return ca
