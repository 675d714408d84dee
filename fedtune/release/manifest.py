"""``MANIFEST.sha256``: one line ``<sha256>  <relative path>`` per exported file (the format
``sha256sum -c`` reads), and its check.  The manifest itself and a signature beside it are not listed."""

from __future__ import annotations

import hashlib
from pathlib import Path

from fedtune.release.run_files import ReleaseError

MANIFEST = "MANIFEST.sha256"
NOT_LISTED = (MANIFEST, MANIFEST + ".sig")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def listed_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and p.relative_to(folder).as_posix() not in NOT_LISTED)


def manifest_text(folder: Path) -> str:
    return "".join(f"{sha256_file(folder / rel)}  {rel}\n" for rel in listed_files(folder))


def read_manifest(folder: Path) -> dict[str, str]:
    path = folder / MANIFEST
    if not path.is_file():
        raise ReleaseError(f"{folder} has no {MANIFEST}: it is not a folder written by `fedtune export`")
    entries = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        digest, sep, rel = line.partition("  ")
        if not sep or len(digest) != 64 or not rel:
            raise ReleaseError(f"{path} line {number} is not '<sha256>  <file>'")
        entries[rel] = digest
    return entries


def verify(folder: str | Path) -> list[str]:
    """Problems found, one per file (empty: every file is as exported and none was added)."""
    root = Path(folder).expanduser()
    expected = read_manifest(root)
    present = set(listed_files(root))
    problems = [f"{rel}: missing" for rel in sorted(set(expected) - present)]
    problems += [f"{rel}: not in the manifest (added after the export)" for rel in sorted(present - set(expected))]
    problems += [f"{rel}: changed (SHA-256 differs from the manifest)" for rel in sorted(present & set(expected))
                 if sha256_file(root / rel) != expected[rel]]
    return problems


# -- signature: who released it (Ed25519 over the manifest's bytes) ----------------------------
SIGNATURE = MANIFEST + ".sig"


def load_key(path: Path, private: bool):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    kind = "private" if private else "public"
    try:
        data = Path(path).expanduser().read_bytes()
        key = (serialization.load_pem_private_key(data, password=None) if private
               else serialization.load_pem_public_key(data))
    except (OSError, ValueError, TypeError) as exc:
        raise ReleaseError(f"cannot read the Ed25519 {kind} key {path} ({exc}); make a pair with: openssl genpkey "
                           "-algorithm ed25519 -out release.key && openssl pkey -in release.key -pubout -out "
                           "release.pub") from exc
    if not isinstance(key, Ed25519PrivateKey if private else Ed25519PublicKey):
        raise ReleaseError(f"{path} is not an Ed25519 {kind} key (PEM)")
    return key


def sign(folder: Path, key_path: str | Path) -> None:
    """Write ``MANIFEST.sha256.sig``: the releaser's Ed25519 signature over the manifest."""
    from fedtune.common.files import atomic_write_bytes

    key = load_key(Path(key_path), private=True)
    atomic_write_bytes(folder / SIGNATURE, key.sign((folder / MANIFEST).read_bytes()))


def check_signature(folder: str | Path, public_key: str | Path) -> str | None:
    """None if the manifest carries a valid signature by ``public_key``; else what is wrong."""
    from cryptography.exceptions import InvalidSignature

    root, key = Path(folder).expanduser(), load_key(Path(public_key), private=False)
    if not (root / SIGNATURE).is_file():
        return f"{SIGNATURE}: missing (the export was not signed)"
    try:
        key.verify((root / SIGNATURE).read_bytes(), (root / MANIFEST).read_bytes())
    except InvalidSignature:
        return f"{MANIFEST}: not signed by {Path(public_key).name} (signature invalid)"
    return None
