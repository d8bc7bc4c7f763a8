"""Recipe loading: YAML + overrides, strict keys and types, range and cross-field checks, shipped recipes."""

from __future__ import annotations

import json

import pytest

from dltricks.data.augment import AugmentConfig
from dltricks.errors import ConfigError
from dltricks.train.recipe import Recipe, describe_recipe, list_recipes, load_recipe


def test_defaults_and_overrides():
    r = load_recipe()
    assert isinstance(r, Recipe) and r.optim.name == "sgd" and r.train.epochs == 10
    assert isinstance(r.augment, AugmentConfig)
    r = load_recipe(None, ["optim.lr=0.05", "train.amp=true", "schedule.milestones=[2, 4]", "augment.hflip=true"])
    assert r.optim.lr == 0.05 and r.train.amp is True and r.schedule.milestones == (2.0, 4.0) and r.augment.hflip


def test_yaml_file_and_overrides_win(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("optim: {name: adamw, lr: 1.0e-3, weight_decay: 5e-2}\ntrain: {epochs: 3}\n")
    r = load_recipe(path, ["train.epochs=5"])
    assert r.optim.name == "adamw" and r.optim.lr == 1e-3 and r.train.epochs == 5
    assert r.optim.weight_decay == 0.05  # "5e-2" is a string for YAML 1.1; recipes read it as a number


def test_scientific_notation_in_overrides():
    assert load_recipe(None, ["optim.lr=3e-4"]).optim.lr == 3e-4


@pytest.mark.parametrize("override, key", [
    ("optim.lrr=0.1", "optim.lrr"),
    ("trian.epochs=3", "trian"),
    ("train.epochs=three", "train.epochs"),
    ("train.amp=maybe", "train.amp"),
    ("optim.name=adamax", "optim.name"),
    ("optim.lr=0", "optim.lr"),
    ("optim.lr=-0.1", "optim.lr"),
    ("train.label_smoothing=1.5", "train.label_smoothing"),
    ("train.batch_size=0", "train.batch_size"),
    ("train.device=tpu", "train.device"),
    ("ema.decay=1.0", "ema.decay"),
    ("schedule.name=multistep", "schedule.milestones"),
    ("optim.nesterov=true", "optim.nesterov"),
])
def test_bad_values_name_the_key(override, key):
    extra = ["optim.momentum=0"] if override == "optim.nesterov=true" else []
    with pytest.raises(ConfigError) as info:
        load_recipe(None, [override, *extra])
    assert key in str(info.value)


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError, match="Did you mean: lr"):
        load_recipe(None, ["optim.lrr=0.1"])


def test_missing_recipe_file_and_unknown_name():
    with pytest.raises(ConfigError, match="neither a YAML file nor a shipped recipe"):
        load_recipe("no-such-recipe")


def test_shipped_recipes_load():
    names = list_recipes()
    assert {"quick", "mnist-classic", "mnist-speedrun", "cifar10-resnet"} <= set(names)
    for name in names:
        assert isinstance(load_recipe(name), Recipe)
    classic = load_recipe("mnist-classic")
    assert ((classic.optim.name, classic.optim.lr, classic.schedule.gamma, classic.train.batch_size)
            == ("adadelta", 1.0, 0.7, 64))


def test_describe_lists_every_option_with_help():
    rows = describe_recipe()
    keys = {row[0] for row in rows}
    assert {"optim.lr", "schedule.warmup_epochs", "train.accum_steps", "ema.decay", "augment.mixup_alpha",
            "early_stop.patience", "checkpoint.every_steps"} <= keys
    assert all(row[3] for row in rows), [row[0] for row in rows if not row[3]]


def test_shipped_recipe_names_its_model_and_train_uses_it(tmp_path, capsys):
    """`dltricks train --recipe R` without MODEL trains the recipe's own model (recipe key `model`)."""
    from dltricks.cli import main
    from dltricks.models._registry import model_entrypoint
    from dltricks.train.recipe import list_recipes, load_recipe

    named = {name: load_recipe(name).model for name in list_recipes()}
    assert named["cifar10-speedrun"] == "airbench_cifar" and named["isbi-unet"] == "unet_small"
    for model in filter(None, named.values()):
        model_entrypoint(model)  # every named model is registered
    out = tmp_path / "run"
    assert main(["train", "--recipe", "mnist-speedrun", "--data", "mnist-embedded", "--subset", "64",
                 "--val-subset", "32", "--set", "train.max_steps=2", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["meta"]["model"] == "speedrun_cnn"
    capsys.readouterr()
    assert main(["train", "--recipe", "quick", "--data", "mnist-embedded", "--out", str(tmp_path / "q")]) == 2
    assert "names no model" in capsys.readouterr().err
