"""``fedtune node-key``: a SuperNode's authentication key pair, in the format Flower expects.

Flower 1.41 loads the private key with ``load_ssh_private_key`` and requires an EC key on a NIST
curve; ``flwr supernode register`` takes the public key in OpenSSH format (``ecdsa-sha2-nistp384``).
The node operator keeps the private key; the coordinator registers the ``.pub`` file.  Same
result as ``ssh-keygen -t ecdsa -b 384 -N ""``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedtune.common.files import atomic_write_text


class NodeKeyError(ValueError):
    """Bad request for a node key (nothing is written)."""


@dataclass(frozen=True)
class NodeKey:
    private: Path
    public: Path


def create_node_key(out: str | Path, name: str, force: bool = False) -> NodeKey:
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name or ""):
        raise NodeKeyError(f"node key name '{name}' may only contain letters, digits, '.', '_' and '-'")
    out = Path(out).expanduser()
    paths = NodeKey(out / name, out / f"{name}.pub")
    existing = [str(p) for p in (paths.private, paths.public) if p.exists()]
    if existing and not force:
        raise NodeKeyError(f"{', '.join(existing)} already exist; a registered key cannot be re-registered after "
                        "removal, so it is never overwritten silently (use --force to replace it)")
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    atomic_write_text(paths.private, private, private=True)
    atomic_write_text(paths.public, f"{public} {name}\n")
    return paths
