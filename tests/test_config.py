import pytest

from segdistill.config import Config, ConfigError, default_config_yaml, dump_config, load_config


def test_defaults():
    cfg = load_config()
    assert isinstance(cfg, Config) and cfg.train.loss == "bce_dice" and cfg.model.name == "unet"


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 7\n  lr: 3e-3\ndata:\n  val_stems: [24, 25]\n")
    cfg = load_config(f, ["train.epochs=9", "model.args.base=8"])
    assert cfg.train.epochs == 9  # CLI beats file
    assert cfg.train.lr == pytest.approx(3e-3)  # PyYAML reads 3e-3 as a string
    assert cfg.data.val_stems == ["24", "25"]
    assert cfg.model.args == {"base": 8}


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("trian:\n  epochs: 3\n", "unknown key 'trian'; did you mean 'train'?"),
        ("train:\n  epoch: 3\n", "unknown key 'epoch'; did you mean 'epochs'?"),
        ("train:\n  epochs: many\n", "train.epochs: expected an integer, got 'many'"),
        ("train:\n  loss: l2\n", "train.loss: 'l2' is not one of"),
        ("- 1\n- 2\n", "top level must be a mapping"),
        ("train: [\n", "is not valid YAML"),
    ],
)
def test_bad_config_messages(tmp_path, yaml_text, message):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert message in str(e.value) and str(f) in str(e.value)


def test_bad_override_messages():
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        load_config(None, ["train.batchsize=2"])
    with pytest.raises(ConfigError, match="must look like key=value"):
        load_config(None, ["train.epochs"])
    with pytest.raises(ConfigError, match="train.epochs must be at least 1"):
        load_config(None, ["train.epochs=0"])


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/nonexistent/x.yaml")


def test_default_yaml_round_trips_and_is_commented(tmp_path):
    text = default_config_yaml()
    assert "# Swap foreground and background" in text
    f = tmp_path / "d.yaml"
    f.write_text(text)
    assert dump_config(load_config(f)) == dump_config(Config())


def test_run_name_cannot_be_a_path():
    with pytest.raises(ConfigError, match="plain folder name"):
        load_config(None, ["name=../elsewhere"])


@pytest.mark.parametrize("override, message", [
    ("train.val_every=0", "train.val_every must be at least 1"),
    ("predict.tile_overlap=1.5", "predict.tile_overlap must lie in [0, 1)"),
    ("augment.scale=[0, 2]", "augment.scale must be [min, max] with 0 < min <= max"),
    ("train.ema=1.5", "train.ema must lie between 0 and 1"),
])
def test_range_checks(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value)
