"""A node's identities from `fedtune node-key` and the roster from `fedtune roster build`, as a node loads them."""

import stat

import pytest

from fedtune.cli import main
from fedtune.common.config import RunConfig
from fedtune.common.secagg.crypto import signing_public_key
from fedtune.node.identity import node_trust
from fedtune.node.policy import NodePolicy, PolicyError


def _keys(tmp_path, *names):
    for name in names:
        assert main(["node-key", "--out", str(tmp_path / name), "--name", name]) == 0
    entries = [str(tmp_path / n / f"{n}.roster-entry") for n in names]
    assert main(["roster", "build", "--out", str(tmp_path / "roster.toml"), *entries]) == 0
    return tmp_path / "roster.toml"


def _node_config(tmp_path, name, roster, **extra):
    return {"name": name, "data-path": str(tmp_path / "records.jsonl"), "state-dir": str(tmp_path / "state"),
            "signing-key": str(tmp_path / name / "signing-key"), "roster": str(roster), **extra}


def _trust(node_config):
    return node_trust(node_config, NodePolicy.of(node_config, RunConfig()))


def test_node_key_writes_both_identities_private_keys_owner_only(tmp_path):
    _keys(tmp_path, "st-marys")
    folder = tmp_path / "st-marys"
    assert sorted(p.name for p in folder.iterdir()) == ["node-key", "node-key.pub", "signing-key",
                                                        "st-marys.roster-entry"]
    for private in ("node-key", "signing-key"):
        assert stat.S_IMODE((folder / private).stat().st_mode) == 0o600
    assert "PRIVATE" not in (folder / "st-marys.roster-entry").read_text()
    assert main(["node-key", "--out", str(folder), "--name", "st-marys"]) == 2  # never overwritten silently


def test_a_node_loads_its_key_and_the_pinned_roster(tmp_path):
    roster = _keys(tmp_path, "a", "b", "c")
    trust = _trust(_node_config(tmp_path, "b", roster))
    assert trust.name == "b" and sorted(trust.roster.keys) == ["a", "b", "c"]
    assert trust.roster.key_of("b") == signing_public_key(trust.signing_key)


def test_a_node_refuses_a_roster_without_its_own_key_or_without_any_roster(tmp_path):
    roster = _keys(tmp_path, "a", "b")
    with pytest.raises(PolicyError, match="lists no key for this node's name 'c'"):
        _trust({**_node_config(tmp_path, "a", roster), "name": "c"})
    with pytest.raises(PolicyError, match="another key"):  # its name, someone else's key
        _trust({**_node_config(tmp_path, "a", roster), "signing-key": str(tmp_path / "b" / "signing-key")})
    config = _node_config(tmp_path, "a", roster)
    del config["roster"]
    with pytest.raises(PolicyError, match="needs 'signing-key' and 'roster'"):
        _trust(config)


def test_roster_build_refuses_duplicate_names_or_keys_and_writes_nothing(tmp_path, capsys):
    _keys(tmp_path, "a")
    entry = str(tmp_path / "a" / "a.roster-entry")
    out = tmp_path / "dup.toml"
    assert main(["roster", "build", "--out", str(out), entry, entry]) == 2
    assert "already on the roster" in capsys.readouterr().err and not out.exists()
    (tmp_path / "bad.roster-entry").write_text('"x" = "not base64!"\n')
    assert main(["roster", "build", "--out", str(out), str(tmp_path / "bad.roster-entry")]) == 2
    assert "32-byte Ed25519" in capsys.readouterr().err and not out.exists()
