"""The federation's roster: node name -> Ed25519 public key, agreed out of band and pinned by every node.

A node trusts a peer's SecAgg+ advert only if it is signed by the key its own roster file lists
for that name, so the coordinator can neither substitute keys (man in the middle) nor invent
nodes (Sybils).  Files:

* ``signing-key``: the node's private Ed25519 key (PKCS#8 PEM, mode 0600), never shared;
* ``<name>.roster-entry``: one TOML line ``"<name>" = "<base64 public key>"``, sent to whoever
  assembles the roster;
* ``roster.toml``: ``[nodes]`` and every entry; each operator checks it (e.g. reads the keys out
  over the phone) and pins it with ``roster = "..."`` in their node config.

Simulated nodes have no operator and no secrets from the researcher who runs them: their keys are
derived from their names (``SimulatedRoster``), so the same signed protocol runs in a simulation.
"""

from __future__ import annotations

import base64
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedtune.common.files import atomic_write_text
from fedtune.common.secagg.crypto import KEY_BYTES, SecAggError, signing_public_key

NAME = re.compile(r"[A-Za-z0-9._-]+")


class RosterError(ValueError):
    """A roster or signing-key file is missing or malformed; the message says which and how to fix it."""


@dataclass(frozen=True)
class Roster:
    keys: dict[str, bytes]  # node name -> raw Ed25519 public key

    def key_of(self, name: str) -> bytes:
        if name not in self.keys:
            raise SecAggError(f"node '{name}' is not on this node's roster: an advert from a node nobody agreed "
                              "to (a Sybil), refusing the round")
        return self.keys[name]

    @classmethod
    def load(cls, path: str | Path) -> "Roster":
        path = Path(path).expanduser()
        try:
            table = tomllib.loads(path.read_text(encoding="utf-8")).get("nodes")
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise RosterError(f"cannot read the roster {path}: {exc}. Assemble it with `fedtune roster build`") from None
        if not isinstance(table, dict) or not table:
            raise RosterError(f"the roster {path} has no [nodes] table of name = \"<base64 key>\" entries")
        return cls({name: _public_key(name, value, path) for name, value in table.items()})


class SimulatedRoster(Roster):
    """Any name, with the key derived from it: for simulated nodes only (see the module docstring)."""

    def __init__(self):
        super().__init__({})

    def key_of(self, name: str) -> bytes:
        return signing_public_key(simulated_signing_key(name))


def simulated_signing_key(name: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None,
                info=b"fedtune-simulated-node-signing-key|" + name.encode()).derive(b"\0" * KEY_BYTES)


def _public_key(name: str, value, path: Path) -> bytes:
    try:
        key = base64.b64decode(str(value), validate=True)
    except ValueError:
        key = b""
    if not NAME.fullmatch(str(name)) or len(key) != KEY_BYTES:
        raise RosterError(f"roster {path}: entry {name!r} must be a node name = \"<base64 of a 32-byte Ed25519 "
                          "public key>\" (the line from that node's .roster-entry file)")
    return key


def load_signing_key(path: str | Path) -> bytes:
    """The raw 32-byte Ed25519 private key in a ``.signing-key`` file."""
    path = Path(path).expanduser()
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise RosterError(f"cannot read the signing key {path}: {exc}. Create one with `fedtune node-key`") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise RosterError(f"{path} is not an Ed25519 signing key; create one with `fedtune node-key`")
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())


def roster_entry(name: str, private: bytes) -> str:
    return f'"{name}" = "{base64.b64encode(signing_public_key(private)).decode()}"\n'


def write_signing_key(key_path: Path, entry_path: Path, name: str) -> None:
    """A new signing key (private, 0600) and its roster entry for the node called ``name``."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    atomic_write_text(key_path, pem, private=True)
    atomic_write_text(entry_path, roster_entry(name, private))


def build_roster(entries: list[Path], out: Path) -> Roster:
    """Join ``.roster-entry`` files into one roster file; refuses duplicate names or keys."""
    lines, seen = [], {}
    for entry in entries:
        try:
            table = tomllib.loads(Path(entry).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise RosterError(f"cannot read roster entry {entry}: {exc}") from None
        for name, value in table.items():
            key = _public_key(name, value, Path(entry))
            if name in seen or key in seen.values():
                raise RosterError(f"roster entry {entry}: the name {name!r} or its key is already on the roster")
            seen[name] = key
            lines.append(f'"{name}" = "{value}"')
    text = ("# fedtune roster: every node's SecAgg+ signing key. Check each key with its operator out of band,\n"
            "# then pin this file in every node config (roster = \"...\").\n[nodes]\n" + "\n".join(lines) + "\n")
    atomic_write_text(out, text)
    return Roster(seen)
