"""Envelope encryption of credential contents.

Each credential version gets a fresh random 256-bit data key (DEK). The contents are sealed with AES-256-GCM under
the DEK, with associated data binding them to (credential id, version): a ciphertext copied to another row, or to
another version of the same row, does not decrypt. The DEK is wrapped (AES-256-GCM again) by a key-encryption key
(KEK) from the keyring, with associated data naming the KEK id and the same (id, version).

The keyring holds several KEKs by id; one is active for new wraps. A keyring is a JSON object
``{"active": "<id>", "keys": {"<id>": "<base64 of 32 bytes>", ...}}`` read from a file or an environment variable,
or a single base64 key (id ``default``).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import os
import pathlib
import re
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vault_service.errors import ConfigurationError, DecryptionError

KEY_BYTES = 32
NONCE_BYTES = 12
_KEK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_CHECK_PLAINTEXT = b"credvault key check v1"


@dataclasses.dataclass(frozen=True)
class SealedContents:
    """What is stored for one credential version. Nothing in it is plaintext."""

    kek_id: str
    wrapped_key: bytes  # nonce || AES-GCM(KEK, DEK)
    ciphertext: bytes  # nonce || AES-GCM(DEK, contents)


def _aad(kind: bytes, credential_id: str, version: int) -> bytes:
    return b"credvault/v1|" + kind + b"|" + credential_id.encode() + b"|" + str(version).encode()


class Keyring:
    """KEKs by id, one active. Never prints its keys."""

    def __init__(self, keys: dict[str, bytes], active: str) -> None:
        if not keys:
            raise ConfigurationError("the keyring holds no key")
        for kek_id, key in keys.items():
            if not _KEK_ID.match(kek_id):
                raise ConfigurationError(f"keyring: key id {kek_id!r} must match {_KEK_ID.pattern}")
            if len(key) != KEY_BYTES:
                raise ConfigurationError(f"keyring: key {kek_id!r} must be {KEY_BYTES} bytes, got {len(key)}")
        if active not in keys:
            raise ConfigurationError(f"keyring: the active key {active!r} is not among its keys {sorted(keys)}")
        self._keys = dict(keys)
        self.active_id = active

    def __repr__(self) -> str:
        return f"Keyring(active={self.active_id!r}, ids={sorted(self._keys)})"

    @property
    def ids(self) -> list[str]:
        return sorted(self._keys)

    def has(self, kek_id: str) -> bool:
        return kek_id in self._keys

    def _aead(self, kek_id: str) -> AESGCM:
        try:
            return AESGCM(self._keys[kek_id])
        except KeyError:
            raise DecryptionError(f"the keyring has no key {kek_id!r}") from None

    # --- serialization ---

    @classmethod
    def parse(cls, text: str, *, source: str) -> Keyring:
        text = text.strip()
        if not text:
            raise ConfigurationError(f"{source}: empty; expected a base64 key or a JSON keyring")
        if text.startswith("{"):
            try:
                doc = json.loads(text)
                active = doc["active"]
                raw = doc["keys"]
                if not isinstance(active, str) or not isinstance(raw, dict):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                raise ConfigurationError(
                    f'{source}: not a keyring; expected {{"active": "<id>", "keys": {{"<id>": "<base64>"}}}}'
                ) from None
            return cls({str(k): _decode_key(str(v), f"{source}: key {k!r}") for k, v in raw.items()}, active)
        return cls({"default": _decode_key(text, source)}, "default")

    def to_json(self) -> str:
        keys = {k: base64.b64encode(v).decode() for k, v in sorted(self._keys.items())}
        return json.dumps({"active": self.active_id, "keys": keys}, indent=2) + "\n"

    def with_new_active_key(self) -> Keyring:
        """A keyring with one more, freshly generated key that becomes active."""
        added = self.with_new_key()
        return Keyring(added._keys, added.newest_id)

    def with_new_key(self) -> Keyring:
        """A keyring with one more, freshly generated key (``kek-<n>``, :attr:`newest_id`), not active yet."""
        n = len(self._keys) + 1
        while f"kek-{n}" in self._keys:
            n += 1
        return Keyring({**self._keys, f"kek-{n}": secrets.token_bytes(KEY_BYTES)}, self.active_id)

    @property
    def newest_id(self) -> str:
        """The ``kek-<n>`` with the highest n (the one with_new_key added), else the active one."""
        numbered = [(int(k[4:]), k) for k in self._keys if k.startswith("kek-") and k[4:].isdigit()]
        return max(numbered)[1] if numbered else self.active_id

    def with_active(self, kek_id: str) -> Keyring:
        if kek_id not in self._keys:
            raise ConfigurationError(f"the keyring has no key {kek_id!r}")
        return Keyring(self._keys, kek_id)

    # --- a running replica's keyring changes in place: every part holding it sees the change at once ---

    def adopt(self, other: Keyring) -> None:
        """Take ``other``'s keys and active KEK (a reloaded keyring file)."""
        self._keys, self.active_id = dict(other._keys), other.active_id

    def activate(self, kek_id: str) -> None:
        """Wrap new data keys with ``kek_id`` from now on (the database's choice)."""
        if kek_id not in self._keys:
            raise ConfigurationError(f"the keyring has no key {kek_id!r}")
        self.active_id = kek_id

    def without(self, kek_id: str) -> Keyring:
        if kek_id == self.active_id:
            raise ConfigurationError(f"cannot retire the active key {kek_id!r}")
        if kek_id not in self._keys:
            raise ConfigurationError(f"the keyring has no key {kek_id!r}")
        return Keyring({k: v for k, v in self._keys.items() if k != kek_id}, self.active_id)

    # --- key checks: prove at start-up that a KEK is the one that encrypted the database ---

    def make_check(self, kek_id: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead(kek_id).encrypt(nonce, _CHECK_PLAINTEXT, kek_id.encode())

    def verify_check(self, kek_id: str, check: bytes) -> bool:
        try:
            return self._aead(kek_id).decrypt(check[:NONCE_BYTES], check[NONCE_BYTES:], kek_id.encode()) == (
                _CHECK_PLAINTEXT
            )
        except InvalidTag:
            return False

    # --- envelope ---

    def seal(self, credential_id: str, version: int, plaintext: bytes) -> SealedContents:
        dek = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = nonce + AESGCM(dek).encrypt(nonce, plaintext, _aad(b"data", credential_id, version))
        return SealedContents(self.active_id, self._wrap(self.active_id, credential_id, version, dek), ciphertext)

    def open(self, credential_id: str, version: int, sealed: SealedContents) -> bytes:
        dek = self._unwrap(sealed.kek_id, credential_id, version, sealed.wrapped_key)
        try:
            return AESGCM(dek).decrypt(
                sealed.ciphertext[:NONCE_BYTES], sealed.ciphertext[NONCE_BYTES:], _aad(b"data", credential_id, version)
            )
        except InvalidTag:
            raise DecryptionError(
                f"contents of {credential_id} v{version} do not authenticate (tampered or misplaced)"
            ) from None

    def rewrap(self, credential_id: str, version: int, sealed: SealedContents) -> SealedContents:
        """The same contents with the DEK wrapped by the active KEK; the ciphertext is untouched."""
        dek = self._unwrap(sealed.kek_id, credential_id, version, sealed.wrapped_key)
        wrapped = self._wrap(self.active_id, credential_id, version, dek)
        return SealedContents(self.active_id, wrapped, sealed.ciphertext)

    def _wrap(self, kek_id: str, credential_id: str, version: int, dek: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        aad = _aad(b"dek|" + kek_id.encode(), credential_id, version)
        return nonce + self._aead(kek_id).encrypt(nonce, dek, aad)

    def _unwrap(self, kek_id: str, credential_id: str, version: int, wrapped: bytes) -> bytes:
        aad = _aad(b"dek|" + kek_id.encode(), credential_id, version)
        try:
            return self._aead(kek_id).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], aad)
        except InvalidTag:
            raise DecryptionError(
                f"data key of {credential_id} v{version} does not unwrap under KEK {kek_id!r} (tampered or wrong key)"
            ) from None


def _decode_key(text: str, source: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError(f"{source}: not valid base64") from None
    if len(key) != KEY_BYTES:
        raise ConfigurationError(f"{source}: must decode to {KEY_BYTES} bytes, got {len(key)}")
    return key


def new_keyring() -> Keyring:
    return Keyring({"kek-1": secrets.token_bytes(KEY_BYTES)}, "kek-1")


def load_keyring_file(path: pathlib.Path) -> Keyring:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigurationError(f"cannot read the keyring file {path}: {exc.strerror}") from None
    return Keyring.parse(text, source=str(path))


def write_keyring_file(path: pathlib.Path, keyring: Keyring) -> None:
    """Write atomically, readable by the owner only."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(keyring.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
