"""``fedtune node-key``: a node's two identities, created once by its operator.

* ``node-key`` / ``node-key.pub``: the SuperNode's authentication key pair, which the SuperLink
  checks before it lets the node connect;
* ``signing-key`` / ``<name>.roster-entry``: the node's Ed25519 SecAgg+ signing key and its
  public half for the federation's roster, which the *other nodes* check before they believe an
  advert (the coordinator cannot forge or substitute it; see ``fedtune.common.secagg.roster``).

Flower 1.41–1.42 loads the private key with ``load_ssh_private_key`` and requires an EC key on a NIST
curve; ``flwr supernode register`` takes the public key in OpenSSH format (``ecdsa-sha2-nistp384``).
The node operator keeps the private key; the coordinator registers the ``.pub`` file.  Same
result as ``ssh-keygen -t ecdsa -b 384 -N ""``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedtune.common.files import atomic_write_text
from fedtune.common.secagg.roster import NAME, write_signing_key


class NodeKeyError(ValueError):
    """Bad request for a node key (nothing is written)."""


@dataclass(frozen=True)
class NodeKey:
    private: Path
    public: Path
    signing_key: Path
    roster_entry: Path


def create_node_key(out: str | Path, name: str, force: bool = False) -> NodeKey:
    """``name`` is the node's name in the federation: the ``name`` of its node config."""
    if not NAME.fullmatch(name or ""):
        raise NodeKeyError(f"node name '{name}' may only contain letters, digits, '.', '_' and '-'")
    out = Path(out).expanduser()
    paths = NodeKey(out / "node-key", out / "node-key.pub", out / "signing-key", out / f"{name}.roster-entry")
    existing = [str(p) for p in (paths.private, paths.public, paths.signing_key) if p.exists()]
    if existing and not force:
        raise NodeKeyError(f"{', '.join(existing)} already exist; a registered key cannot be re-registered after "
                        "removal, so it is never overwritten silently (use --force to replace it)")
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    atomic_write_text(paths.private, private, private=True)
    atomic_write_text(paths.public, f"{public} {name}\n")
    write_signing_key(paths.signing_key, paths.roster_entry, name)
    return paths
