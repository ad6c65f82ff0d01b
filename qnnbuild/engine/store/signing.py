"""Signed shared-cache entries: who wrote an entry, not only that its files match its manifest.

Without signatures any writer holding the bucket's credentials can upload an entry that is consistent (files
matching a manifest describing the key) and malicious, and every reader takes it. With them:

- a writer with a signing key (`QNNBUILD_CACHE_SIGNING_KEY`: an OpenSSH ed25519 private key file, as
  `ssh-keygen -t ed25519 -N ''` writes it) signs each entry it uploads: the key and the sha256 of the manifest
  bytes, stored beside the entry as `<key>/signatures/<manifest sha256>.<signer>` before the manifest (the
  commit marker), so a reader never sees a committed entry whose signature is still on its way, and two
  writers of one key never overwrite each other's signature;
- a reader that lists the keys it trusts (`QNNBUILD_CACHE_TRUSTED_KEYS`: a file of OpenSSH public keys, one
  per line, as in authorized_keys; CI's, typically) refuses an entry no trusted key signed, with a warning, and
  builds locally instead;
- a writer whose own key is not among the keys it trusts (or that has none) does not upload: readers of that
  team would refuse its entries anyway. Developers' machines read CI's entries and push only where trusted.

Keys are read with `cryptography` (the `remote` extra), the library pyca keeps; no key material is ever
printed: signers are named by a fingerprint (the first 16 hex digits of the sha256 of the raw public key).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qnnbuild.errors import UsageError

SIGNING_ENV = "QNNBUILD_CACHE_SIGNING_KEY"
TRUST_ENV = "QNNBUILD_CACHE_TRUSTED_KEYS"
DOMAIN = b"qnnbuild shared cache entry v1\n"  # a signature over anything else never verifies as an entry's


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        raise UsageError(f"{SIGNING_ENV} and {TRUST_ENV} need the remote extra: pip install 'qnnbuild[remote]'") \
            from None
    return serialization


def fingerprint(public: Any) -> str:
    """The signer's name in signature files and warnings: sha256 of the raw 32-byte public key, 16 hex digits."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return hashlib.sha256(public.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()[:16]


def message(key: str, manifest: bytes) -> bytes:
    """What is signed: the entry's key and its manifest's digest (the manifest holds every file's sha256)."""
    return DOMAIN + key.encode() + b"\n" + hashlib.sha256(manifest).hexdigest().encode()


def _read(variable: str, path: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise UsageError(f"{variable}: cannot read {path}: {exc.strerror}") from None


def _private(path: str) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    serialization = _crypto()
    body = _read(SIGNING_ENV, path)
    try:
        key = (serialization.load_ssh_private_key(body, password=None) if b"OPENSSH PRIVATE KEY" in body
               else serialization.load_pem_private_key(body, password=None))
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{SIGNING_ENV}: {path} is not an unencrypted private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"{SIGNING_ENV}: {path} is not an ed25519 key (ssh-keygen -t ed25519)")
    return key


def _trusted(path: str) -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    serialization = _crypto()
    found = {}
    for number, line in enumerate(_read(TRUST_ENV, path).decode(errors="replace").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            public = serialization.load_ssh_public_key(" ".join(line.split()[:2]).encode())
        except (ValueError, TypeError, IndexError):
            raise UsageError(f"{path}, line {number}: not an OpenSSH public key ({TRUST_ENV})") from None
        if not isinstance(public, Ed25519PublicKey):
            raise UsageError(f"{path}, line {number}: not an ed25519 key (ssh-keygen -t ed25519)")
        found[fingerprint(public)] = public
    return found


@dataclass
class Signing:
    """This machine's signing key (or None) and the keys it trusts ({} when it checks no signatures)."""

    private: Any = None
    trusted: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> Signing:
        signing, trust = os.environ.get(SIGNING_ENV, ""), os.environ.get(TRUST_ENV, "")
        return cls(_private(signing) if signing else None, _trusted(trust) if trust else {})

    @property
    def signer(self) -> str | None:
        return fingerprint(self.private.public_key()) if self.private is not None else None

    def sign(self, key: str, manifest: bytes) -> tuple[str, bytes] | None:
        """(signature file name, signature) for the entry, or None without a signing key."""
        if self.private is None:
            return None
        return f"{hashlib.sha256(manifest).hexdigest()}.{self.signer}", self.private.sign(message(key, manifest))

    def refuses_upload(self) -> str | None:
        """Why this machine must not upload (readers that trust what it trusts would refuse its entries)."""
        if not self.trusted:
            return None
        if self.private is None:
            return f"no signing key ({SIGNING_ENV}), and readers trust only signed entries ({TRUST_ENV})"
        if self.signer not in self.trusted:
            return f"this machine's signing key ({self.signer}) is not among the trusted keys ({TRUST_ENV})"
        return None

    def check(self, key: str, manifest: bytes, signature: Callable[[str], bytes | None]) -> str | None:
        """None when no signatures are checked or a trusted key signed this manifest for this key; else why
        not. `signature(name)`: the signature file of that name, None when there is none."""
        if not self.trusted:
            return None
        from cryptography.exceptions import InvalidSignature

        digest = hashlib.sha256(manifest).hexdigest()
        wrong = False
        for signer, public in sorted(self.trusted.items()):
            body = signature(f"{digest}.{signer}")
            if body is None:
                continue
            try:
                public.verify(body, message(key, manifest))
            except InvalidSignature:
                wrong = True
            else:
                return None
        return "its signature by a trusted key does not verify" if wrong else "no trusted key signed it"
