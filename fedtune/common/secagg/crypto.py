"""SecAgg+ primitives, each from a maintained library (no home-made cryptography).

* key agreement: X25519 + HKDF-SHA256 (``cryptography``), with a purpose label and the round
  context bound into the derived key;
* key-share encryption: AES-256-GCM (``cryptography``), random 96-bit nonce, associated data
  binding round, sender, receiver and the hash of the global adapter the sender received;
* masks: AES-256-CTR keystream from the full 32-byte seed (``cryptography``), read as uint32;
* secret sharing: Shamir over GF(2^128) (PyCryptodome); a 32-byte secret is shared as two
  16-byte halves with the same share indices;
* signatures: Ed25519 (``cryptography``) over a SHA-256 digest of length-prefixed, labelled parts
  (``sign`` / ``verify``): a node's long-term key signs its advert and its view of the round.
Peer input is parsed with fixed-size slicing only (no pickle or other code-executing formats).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
from Crypto.Protocol.SecretSharing import Shamir
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
NONCE_BYTES = 12
SIGNATURE_BYTES = 64


class SecAggError(RuntimeError):
    """A protocol step failed verification; the round must abort rather than leak."""


@dataclass(frozen=True)
class KeyPair:
    private: bytes  # raw 32-byte X25519 private key
    public: bytes  # raw 32-byte X25519 public key

    @classmethod
    def generate(cls) -> "KeyPair":
        private = X25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        return cls(private, public_key_of(private))


def public_key_of(private: bytes) -> bytes:
    """The raw X25519 public key of a raw private key (checks a recovered key against its advert)."""
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def agree(private: bytes, peer_public: bytes, purpose: bytes, context: bytes) -> bytes:
    """32-byte key shared by the two parties: HKDF-SHA256(X25519(sk, pk)), labelled by purpose."""
    if len(peer_public) != KEY_BYTES or len(private) != KEY_BYTES:
        raise SecAggError("malformed X25519 key")
    secret = X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(peer_public))
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=b"fedtune-secagg|" + purpose + b"|" + context).derive(secret)


def encrypt(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def decrypt(key: bytes, ciphertext: bytes, associated: bytes) -> bytes:
    """Raises SecAggError if the ciphertext or its associated data (e.g. the model hash) differ."""
    if len(ciphertext) < NONCE_BYTES + 16:
        raise SecAggError("malformed ciphertext")
    try:
        return AESGCM(key).decrypt(ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:], associated)
    except InvalidTag as exc:
        raise SecAggError("share authentication failed: tampered ciphertext or a different global adapter") from exc


def prg_mask(seed: bytes, length: int) -> np.ndarray:
    """``length`` uint32 words of AES-256-CTR keystream keyed by the full 32-byte seed."""
    if len(seed) != KEY_BYTES:
        raise SecAggError("mask seeds are 32 bytes")
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(b"\0" * 16)).encryptor()
    stream = encryptor.update(b"\0" * (4 * length)) + encryptor.finalize()
    return np.frombuffer(stream, dtype="<u4").astype(np.uint32, copy=False)


def share_secret(secret: bytes, threshold: int, indices: list[int]) -> dict[int, bytes]:
    """Shamir-share a 32-byte secret so that any ``threshold`` of the shares recover it.

    Shares are addressed by index (1..255, PyCryptodome's range); each is 32 bytes: the shares of
    the secret's two 16-byte halves under the same index.
    """
    if len(secret) != KEY_BYTES:
        raise SecAggError("shared secrets are 32 bytes")
    n = max(indices)
    if not 1 <= threshold <= len(indices) or n > 255 or min(indices) < 1:
        raise SecAggError(f"cannot share with threshold {threshold} among indices {indices}")
    halves = [dict(Shamir.split(threshold, n, secret[i:i + 16])) for i in (0, 16)]
    return {i: halves[0][i] + halves[1][i] for i in indices}


def recover_secret(shares: dict[int, bytes], threshold: int) -> bytes:
    if len(shares) < threshold:
        raise SecAggError(f"{len(shares)} shares cannot recover a secret that needs {threshold}")
    picked = sorted(shares.items())[:threshold]
    if any(len(s) != KEY_BYTES for _, s in picked):
        raise SecAggError("malformed share")
    return b"".join(Shamir.combine([(i, s[h:h + 16]) for i, s in picked]) for h in (0, 16))


def digest(*parts: bytes) -> bytes:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "big") + p)
    return h.digest()


def sign(private: bytes, purpose: bytes, *parts: bytes) -> bytes:
    """Ed25519 signature (64 bytes) by a raw 32-byte private key over ``digest(purpose, *parts)``."""
    return Ed25519PrivateKey.from_private_bytes(private).sign(digest(b"fedtune-sig|" + purpose, *parts))


def verify(public: bytes, signature: bytes, purpose: bytes, *parts: bytes) -> bool:
    """True iff ``signature`` is ``public``'s Ed25519 signature over the same purpose and parts."""
    if len(public) != KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, digest(b"fedtune-sig|" + purpose, *parts))
    except (InvalidSignature, ValueError):
        return False
    return True


def signing_public_key(private: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(private).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def commit(purpose: bytes, context: bytes, secret: bytes) -> bytes:
    """A hash commitment to a uniformly random 32-byte secret (hiding because the secret is)."""
    return digest(b"fedtune-commit|" + purpose, context, secret)
