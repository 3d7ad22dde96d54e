import pytest

from defakenet.config import Config, parse_set, valid_keys
from defakenet.errors import ConfigError


def test_defaults_roundtrip_through_flat_sets():
    cfg = Config().replace(**{"optim.lr": 3e-4, "data.split": [0.8, 0.1, 0.1], "resources.use_gpu": True})
    again = Config.from_sources(None, [f"{k}={v}" for k, v in cfg.flat().items()])
    assert again == cfg
    assert again.optim.lr == 3e-4 and again.data.split == (0.8, 0.1, 0.1) and again.resources.use_gpu is True


def test_yaml_file_then_sets_win(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text("optim:\n  lr: 0.01\n  name: sgd\ntrain:\n  epochs: 3\n")
    cfg = Config.from_sources(f, ["optim.lr=2e-3", "train.batch_size=8"])
    assert (cfg.optim.lr, cfg.optim.name, cfg.train.epochs, cfg.train.batch_size) == (2e-3, "sgd", 3, 8)
    assert cfg.model.freeze_depth == Config().model.freeze_depth


def test_unknown_key_lists_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown config key optim\.lrr; valid keys: optim\.name, optim\.lr"):
        Config.from_sources(None, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="unknown config key optimizer"):
        Config.from_dict({"optimizer": {}})


@pytest.mark.parametrize(
    "item, msg",
    [
        ("train.epochs=two", "train.epochs expects int"),
        ("train.epochs=1.5", "train.epochs expects int"),
        ("train.epochs=0", "train.epochs must be > 0"),
        ("model.freeze_depth=6", r"model.freeze_depth must be in 0\.\.5"),
        ("optim.name=adam", "optim.name must be one of adamw, sgd"),
        ("augment.jpeg_p=1.5", r"augment.jpeg_p is a probability in \[0, 1\]"),
        ("data.split=[0.5,0.5,0.5]", "data.split needs three non-negative shares summing to 1"),
        ("resources.use_gpu=maybe", "resources.use_gpu expects bool"),
        ("epochs=3", "section.key"),
        ("train.epochs", "section.key=value"),
    ],
)
def test_bad_values_name_the_key(item, msg):
    with pytest.raises(ConfigError, match=msg):
        Config.from_sources(None, [item])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        Config.from_sources(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        Config.from_sources(bad)


def test_config_is_frozen_and_keys_listed():
    cfg = Config()
    with pytest.raises(Exception):
        cfg.optim.lr = 1.0  # type: ignore[misc]
    assert "optim.lr" in valid_keys() and "model.freeze_depth" in valid_keys()
    assert parse_set("data.root=/a=b") == ("data.root", "/a=b")


def test_set_keeps_strings_verbatim():
    cfg = Config.from_sources(None, ["train.amp=off", "tracking.run_name=no", "data.root=/data/yes", "optim.lr=3e-5"])
    assert (cfg.train.amp, cfg.tracking.run_name, cfg.data.root, cfg.optim.lr) == ("off", "no", "/data/yes", 3e-5)
