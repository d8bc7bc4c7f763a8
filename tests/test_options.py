"""One reader of ``KEY=VALUE`` options: ``--set``, ``--model-opt``, ``--data-opt`` and recipe files read
values alike (YAML 1.2 scalars: ``5e-4`` is a number), and every bad item is one line on stderr with exit
code 2. Also: the command modules are thin and independent (none imports another)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from dltricks.cli import COMMAND_MODULES, main
from dltricks.config import parse_assignment, parse_value
from dltricks.errors import ConfigError
from dltricks.train.recipe import load_recipe

COMMANDS = Path(__file__).resolve().parents[1] / "src" / "dltricks" / "commands"


@pytest.mark.parametrize("text, expected", [
    ("5e-4", 5e-4), ("1e3", 1000.0), (".5", 0.5), ("-.5", -0.5), ("+1.5E+3", 1500.0), ("0.1", 0.1),
    ("3", 3), ("-3", -3), ("012", 12), ("0x1f", 31),
    ("true", True), ("False", False), ("null", None), ("~", None),
    ("[1, 2]", [1, 2]), ("[4,8]", [4, 8]), ("{a: 1}", {"a": 1}),
    ("abc", "abc"), ("cuda:0", "cuda:0"), ("runs/a", "runs/a"), ("'5e-4'", "5e-4"), ("", ""),
    # YAML 1.1 would make these a boolean, a sexagesimal number and a date; YAML 1.2 leaves them text.
    ("yes", "yes"), ("1:30", "1:30"), ("2020-01-01", "2020-01-01"),
])
def test_values_are_read_as_yaml_1_2(text, expected):
    value = parse_value(text)
    assert value == expected and type(value) is type(expected)


def test_an_assignment_is_a_dotted_key_and_a_value():
    assert parse_assignment("optim.weight_decay=5e-4", "--set") == ("optim.weight_decay", 5e-4)
    assert parse_assignment(" drop_rate = 0.1", "--model-opt") == ("drop_rate", 0.1)
    assert parse_assignment("name=a=b", "--data-opt") == ("name", "a=b")


@pytest.mark.parametrize("text, message", [
    ("x", "--set 'x': expected KEY=VALUE"),
    ("=3", "the key before '=' is empty"),
    ("a b=1", "'a b' is not a key"),
    ("optim..lr=1", "'optim..lr' is not a key"),
    ("lr=[1,", "--set lr: cannot read '[1,'"),
    ("lr=@x", "--set lr: cannot read '@x'"),
])
def test_malformed_assignments_are_one_line_errors(text, message):
    with pytest.raises(ConfigError) as info:
        parse_assignment(text, "--set")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_recipe_files_read_numbers_like_the_command_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim: {name: sgd, lr: 1e-1}\nschedule: {name: onecycle, div_factor: 1e3, pct_start: .5}\n")
    r = load_recipe(recipe, [("optim.weight_decay", 5e-4), "ema.decay=9.99e-1"])
    assert r.optim.lr == 0.1 and r.schedule.div_factor == 1000.0 and r.schedule.pct_start == 0.5
    assert r.optim.weight_decay == 5e-4 and r.ema.decay == 0.999


def test_recipe_aliases_merge_keys_and_overrides_copy_nothing_back(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim: {<<: &base {name: sgd, lr: 0.2}, momentum: 0.8}\n")
    r = load_recipe(recipe)
    assert r.optim.lr == 0.2 and r.optim.momentum == 0.8
    source = {"optim": {"lr": 0.3}}
    assert load_recipe(source, ["optim.lr=0.4"]).optim.lr == 0.4 and source == {"optim": {"lr": 0.3}}


def _alias_bomb() -> list[str]:
    """Nine lists of nine aliases of the previous list: 9**9 values once expanded, 90 in the text."""
    entries = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for prev, name in zip("abcdefgh", "bcdefghi"):
        entries.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    return entries


def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path):
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text("\n".join(_alias_bomb()) + "\n")
    # 72 alias uses: refused by their count before anything is measured (a bomb with fewer, larger aliases is
    # refused by its expanded size)
    with pytest.raises(ConfigError, match="more than 64 aliases"):
        load_recipe(recipe)
    with pytest.raises(ConfigError, match="more than 64 aliases"):
        parse_assignment("data={" + ", ".join(_alias_bomb()) + "}", "--set")
    with pytest.raises(ConfigError, match="expands to more than"):
        parse_value("&loop [*loop]")  # a list that contains itself


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


TRAIN = ["train", "small_cnn", "--data", "mnist-embedded", "--subset", "64", "--epochs", "1", "--no-progress",
         "--set", "train.batch_size=32", "--set", "train.max_steps=1", "--model-opt", "widths=[4, 8]"]


def test_model_opt_in_scientific_notation_trains(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TRAIN, "--model-opt", "drop_rate=5e-4", "--set", "optim.weight_decay=5e-4", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["meta"]["model_kwargs"] == {"widths": [4, 8], "drop_rate": 5e-4, "num_classes": 10, "in_chans": 1}
    assert config["recipe"]["optim"]["weight_decay"] == 5e-4


BAD_OPTIONS = {
    "--set": [("x", "expected KEY=VALUE"), ("=3", "key before '=' is empty"), ("optim.lr=[1,", "cannot read '[1,'"),
              ("optim.lrr=0.1", "unknown key 'optim.lrr'"),
              ("train.batch_size=1e2", "train.batch_size: got 100.0, expected an integer"),
              ("train.amp=yes", "train.amp: got 'yes', expected true/false")],
    "--model-opt": [("x", "expected KEY=VALUE"), ("=3", "key before '=' is empty"),
                    ("drop_rate=[1,", "cannot read '[1,'"), ("drop_ratez=0.1", "has no option 'drop_ratez'"),
                    ("drop_rate=abc", "drop_rate: got 'abc', expected a number"),
                    ("drop_rate=5", "drop_rate: got 5.0, expected a rate in [0, 1)")],
    "--data-opt": [("x", "expected KEY=VALUE"), ("=3", "key before '=' is empty"),
                   ("fold=[1,", "cannot read '[1,'"), ("elastik=true", "unknown key 'isbi2012-membrane.elastik'"),
                   ("fold=abc", "fold: got 'abc', expected an integer")],
}


@pytest.mark.parametrize("flag, item, message", [(f, i, m) for f, cases in BAD_OPTIONS.items() for i, m in cases])
def test_a_bad_option_is_one_line_and_exit_2(tmp_path, capsys, flag, item, message):
    out = tmp_path / "run"
    # Data options are checked against a data set that has some; its files are never read.
    data = ["--data", "isbi2012-membrane"] if flag == "--data-opt" else []
    assert main([*TRAIN, *data, flag, item, "--out", str(out)]) == 2
    line = _one_line_error(capsys)
    assert line.startswith("dltricks train: error: ") and message in line, line
    assert not out.exists()


def test_compare_reads_options_with_the_same_reader(tmp_path, capsys):
    assert main(["compare", "small_cnn", "lenet5", "--data", "mnist-embedded", "--data-opt", "x",
                 "--out", str(tmp_path / "c")]) == 2
    assert "--data-opt 'x': expected KEY=VALUE" in _one_line_error(capsys)
    assert main(["compare", "small_cnn", "lenet5", "--data", "mnist-embedded", "--set", "optim.lr=[1,",
                 "--out", str(tmp_path / "c")]) == 2
    assert "--set optim.lr: cannot read" in _one_line_error(capsys)


def _imported_modules(path: Path) -> set[str]:
    """Every ``dltricks.commands.*`` module that a file in ``commands/`` imports (relative imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "dltricks.commands" if node.level else ""
            target = ".".join(p for p in (base, node.module or "") if p)
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {m for m in found if m.startswith("dltricks.commands.")}


def test_no_command_imports_another_command():
    command_modules = {f"dltricks.commands.{p.stem}" for p in COMMANDS.glob("*.py") if not p.stem.startswith("_")}
    assert command_modules == set(COMMAND_MODULES), "a command module must be listed in dltricks.cli.COMMAND_MODULES"
    assert "dltricks.commands._args" in _imported_modules(COMMANDS / "train.py")  # the walk sees imports
    wrong = []
    for path in sorted(COMMANDS.glob("*.py")):
        this = f"dltricks.commands.{path.stem}"
        wrong += [f"{this} -> {m}" for m in sorted(_imported_modules(path) & command_modules) if m != this]
    assert not wrong, "commands share code through dltricks/commands/_args.py, not by importing each other:\n" + \
        "\n".join(wrong)
