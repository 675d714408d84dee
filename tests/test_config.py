import tomllib
from pathlib import Path

import pytest

from fedtune.common.config import ConfigError, RunConfig, flatten, load_preset, parse_assignment

ROOT = Path(__file__).resolve().parent.parent


def test_pyproject_flower_config_matches_declared_defaults():
    tree = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert flatten(tree["tool"]["flwr"]["app"]["config"]) == RunConfig().to_flat()


def test_flat_round_trip_and_int_to_float():
    cfg = RunConfig.from_flat({"train.lr": 1, "federation.rounds": 5})
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert RunConfig.from_flat(cfg.to_flat()) == cfg


@pytest.mark.parametrize(
    "flat, expected",
    [
        ({"train.lrr": 0.1}, "did you mean 'train.lr'"),
        ({"train.lr": -1.0}, "train.lr must be > 0"),
        ({"train.local-steps": 1.5}, "train.local-steps must be of type int"),
        ({"data.partition": "random"}, "data.partition must be one of label-skew, iid"),
        ({"lora.target-modules": " , "}, "lora.target-modules"),
        ({"federation.fraction-train": 0.0}, "federation.fraction-train must be in (0, 1]"),
    ],
)
def test_bad_values_name_the_key_and_the_fix(flat, expected):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_flat(flat)
    assert expected in str(err.value)


def test_parse_assignment_reads_toml_values():
    assert parse_assignment("train.lr=0.01") == ("train.lr", 0.01)
    assert parse_assignment("model.name=./models/x") == ("model.name", "./models/x")
    assert parse_assignment('model.name="a b"') == ("model.name", "a b")
    with pytest.raises(ConfigError):
        parse_assignment("no-equals")


def test_quickstart_preset_loads_with_overrides():
    cfg, preset = load_preset(ROOT / "simulations" / "quickstart.toml", ["train.lr=0.01", "simulation.nodes=5"])
    assert preset.num_nodes == 5 and cfg.train.lr == 0.01
    assert cfg.federation.rounds >= 3 and cfg.model.name == "smollm2-135m-instruct"


def test_preset_errors(tmp_path):
    with pytest.raises(ConfigError, match="preset file not found"):
        load_preset(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nlr=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_preset(bad)
    few = tmp_path / "few.toml"
    few.write_text("[simulation]\nnodes = 2\n[federation]\nmin-nodes = 3\n")
    with pytest.raises(ConfigError, match="exceeds simulation.nodes"):
        load_preset(few)


def test_new_learning_keys_are_validated_with_a_fix():
    from fedtune.common.config import ConfigError, RunConfig

    with pytest.raises(ConfigError, match="fedavgm' needs federation.server-momentum > 0"):
        RunConfig.from_flat({"federation.strategy": "fedavgm"})
    with pytest.raises(ConfigError, match="federation.strategy must be one of"):
        RunConfig.from_flat({"federation.strategy": "scaffold"})
    with pytest.raises(ConfigError, match="warmup-rounds=3 leaves no round"):
        RunConfig.from_flat({"train.warmup-rounds": 3, "federation.rounds": 3})
    with pytest.raises(ConfigError, match="data.list-labels must be one of auto, yes, no"):
        RunConfig.from_flat({"data.list-labels": "maybe"})
    cfg = RunConfig.from_flat({"federation.strategy": "fedyogi", "lora.freeze-a": True, "train.proximal-mu": 0.1})
    assert cfg.federation.strategy == "fedyogi" and cfg.lora.freeze_a and cfg.train.proximal_mu == 0.1
