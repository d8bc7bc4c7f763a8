"""The help a newcomer reads: every default said once, the examples of `--help` parse and name models, recipes
and data sets that exist, `--recipe-help` prints values that `--set` takes back, and the old option names still
work without being shown."""

from __future__ import annotations

import argparse
import re
import shlex

import pytest

from dltricks.cli import build_parser
from dltricks.config import to_dict

PARSER = build_parser()
COMMANDS = next(a for a in PARSER._actions if isinstance(a, argparse._SubParsersAction)).choices


def _help_text(p: argparse.ArgumentParser, action: argparse.Action) -> str:
    formatter = p._get_formatter()
    shown = argparse.Action(action.option_strings, action.dest, default=action.default,
                            help=formatter._get_help_string(action))
    return formatter._expand_help(shown)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_default_is_said_once(command):
    p = COMMANDS[command]
    doubled = []
    for action in p._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        text = _help_text(p, action)
        if len(re.findall(r"default:|\(the default\)", text)) > 1:
            doubled.append(f"{'/'.join(action.option_strings) or action.dest}: {text}")
    assert not doubled, "\n".join(doubled)


def _examples(command: str) -> list[list[str]]:
    """The `dltricks ...` lines of a command's epilog (comments dropped, continuation lines joined)."""
    text = (COMMANDS[command].epilog or "").replace("\\\n", " ")
    return [shlex.split(line.strip(), comments=True) for line in text.splitlines()
            if line.strip().startswith("dltricks ")]


@pytest.mark.parametrize("command", ["train", "eval", "profile", "compare"])
def test_help_examples_parse_and_name_what_exists(command):
    from dltricks.models._registry import model_entrypoint
    from dltricks.tasks import list_tasks
    from dltricks.train.recipe import recipe_path

    examples = _examples(command)
    assert examples, f"`dltricks {command} --help` shows no example"
    created = {argv[argv.index("--out") + 1] for argv in _examples("train") if "--out" in argv}
    for argv in examples:
        args = PARSER.parse_args([a for a in argv[1:] if a != ">" and not a.endswith(".json")])
        for name in [getattr(args, "model", None), *(getattr(args, "models", None) or [])]:
            if name:
                model_entrypoint(name)  # an unknown name raises
        if getattr(args, "recipe", None):
            recipe_path(args.recipe)
        if getattr(args, "data", None):
            assert args.data.split(":")[0] in list_tasks(), argv
        if command == "eval":  # the run evaluated is one that a `dltricks train --help` example writes
            assert args.checkpoint.split("/checkpoints/")[0] in created, (argv, created)
        if command == "train" and getattr(args, "init_from", None):
            assert args.init_from in created


def test_recipe_help_prints_what_set_takes_back():
    from dltricks.commands.train import recipe_defaults
    from dltricks.train.recipe import Recipe, load_recipe

    default = to_dict(Recipe())
    texts = recipe_defaults()
    assert texts["train.eval_batch_size"] == "null" and texts["optim.nesterov"] == "false"
    assert texts["optim.betas"] == "[0.9, 0.999]"
    for key, text in texts.items():
        assert to_dict(load_recipe(None, [f"{key}={text}"])) == default, (key, text)


def test_old_option_names_still_work_but_are_not_shown(capsys):
    args = PARSER.parse_args(["profile", "small_cnn", "--batch", "4"])
    assert args.batch == 4 and PARSER.parse_args(["profile", "small_cnn", "--batch-size", "4"]).batch == 4
    assert PARSER.parse_args(["compare", "a", "b", "--data", "x", "--batch", "2"]).batch == 2
    assert PARSER.parse_args(["run", "--report", "r"]).out == "r"
    assert PARSER.parse_args(["run", "--out", "r"]).out == "r"
    for command, old in (("profile", "--batch "), ("compare", "--batch "), ("run", "--report")):
        assert old not in COMMANDS[command].format_help(), (command, old)
