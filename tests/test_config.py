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


def test_a_recipe_replaces_the_defaults_and_what_you_set_wins(tmp_path, monkeypatch):
    from defakenet import recipes

    monkeypatch.setitem(recipes.RECIPES, "small-test", {"about": "a test recipe", "settings": {
        "data.image_size": 96, "optim.lr": 3e-4, "augment.scale_min": 1.0, "tune.space": {"optim": {"lr": {
            "loguniform": [1e-4, 1e-3]}}}}})
    cfg = Config.from_sources(None, ["train.recipe=small-test"])
    assert (cfg.data.image_size, cfg.optim.lr, cfg.augment.scale_min, cfg.train.recipe) == (96, 3e-4, 1.0, "small-test")
    assert cfg.tune.space == {"optim": {"lr": {"loguniform": [1e-4, 1e-3]}}}
    f = tmp_path / "exp.yaml"
    f.write_text("train: {recipe: small-test}\ndata: {image_size: 64}\n")
    cfg = Config.from_sources(f, ["optim.lr=1e-2"])  # file and --set over the recipe
    assert (cfg.data.image_size, cfg.optim.lr, cfg.augment.scale_min) == (64, 1e-2, 1.0)
    # a run's logged config rebuilds the same config
    assert Config.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match=r"unknown recipe 'nope'; recipes: paper.*small-test"):
        Config.from_sources(None, ["train.recipe=nope"])


def test_every_shipped_recipe_is_a_valid_config():
    from defakenet.recipes import RECIPES

    for name, r in RECIPES.items():
        cfg = Config.from_sources(None, [f"train.recipe={name}"])
        for key, value in r["settings"].items():
            section, field_ = key.split(".")
            got = getattr(getattr(cfg, section), field_)
            assert got == (tuple(value) if isinstance(value, list) else value), (name, key)
