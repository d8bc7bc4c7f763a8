"""`dltricks train / eval / run` end to end on a small subset of the embedded MNIST split, and every bad input
giving one line on stderr, exit code 2 and no output files."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from dltricks.cli import build_parser, main
from dltricks.train.checkpoint import read_metadata

SMALL = ["--data", "mnist-embedded", "--subset", "256", "--model-opt", "widths=[4, 8]", "--epochs", "1",
         "--set", "train.batch_size=64", "--no-progress"]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def test_train_then_eval_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "small_cnn", *SMALL, "--epochs", "2", "--out", str(out), "--seed", "3",
                 "--set", "optim.lr=0.05"]) == 0
    captured = capsys.readouterr()
    assert "small_cnn on mnist-embedded" in captured.out and "val acc" in captured.out
    assert "epoch 2/2" in captured.err  # per-epoch log lines
    config = json.loads((out / "config.json").read_text())
    assert config["meta"]["model_kwargs"] == {"widths": [4, 8], "num_classes": 10, "in_chans": 1}
    assert config["recipe"]["train"]["seed"] == 3 and config["recipe"]["optim"]["lr"] == 0.05
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == 8 and 0.0 <= result["val_accuracy"] <= 1.0

    assert main(["eval", str(out), "--data", "mnist-embedded", "--subset", "300", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == 300 and report["model"] == "small_cnn"
    assert len(report["confusion"]) == 10 and sum(map(sum, report["confusion"])) == 300
    assert set(report["per_class_accuracy"]) == {str(d) for d in range(10)}
    correct = sum(report["confusion"][i][i] for i in range(10))
    assert report["accuracy"] == pytest.approx(correct / 300)

    assert main(["eval", str(out / "checkpoints" / "last.safetensors"), "--data", "mnist-embedded"]) == 0
    text = capsys.readouterr().out
    assert "accuracy" in text and "per-class accuracy" in text and "confusion matrix" in text


def test_eval_matches_the_training_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "small_cnn", *SMALL, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--data", "mnist-embedded", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    result = json.loads((out / "result.json").read_text())
    assert report["accuracy"] == pytest.approx(result["val_accuracy"], abs=1e-12)
    assert report["loss"] == pytest.approx(result["val_loss"], rel=1e-6)


def test_resume_continues_and_overfit_batch(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "small_cnn", *SMALL, "--out", str(out), "--set", "train.max_steps=2"]) == 0
    assert read_metadata(out / "checkpoints" / "last.safetensors")["state"]["step"] == 2
    assert main(["train", "small_cnn", *SMALL, "--out", str(out), "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().err
    assert json.loads((out / "result.json").read_text())["steps"] == 4
    assert main(["train", "small_cnn", *SMALL, "--subset", "128", "--out", str(out), "--resume"]) == 2
    line = _one_line_error(capsys)
    assert "cannot resume" in line and "'subset': 256" in line and "'subset': 128" in line

    assert main(["train", "small_cnn", *SMALL, "--overfit-batch", "--out", str(tmp_path / "o"),
                 "--set", "train.batch_size=16", "--set", "optim.name=adam", "--set", "optim.lr=0.01",
                 "--set", "train.overfit_loss=0.05"]) == 0
    out = capsys.readouterr().out
    assert "overfit_batch: loss" in out and "reached" in out and "NOT" not in out


def test_run_main_job_on_a_subset(tmp_path, capsys):
    assert main(["run", "--train-demo", "--subset", "256", "--epochs", "1", "--out", str(tmp_path / "main"),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "speedrun_cnn on mnist-embedded" in out and "final validation accuracy" in out and "per digit" in out
    assert (tmp_path / "main" / "model.safetensors").exists()


BAD_TRAIN_INPUTS = {
    "unknown model": (["train", "resnet_99"], "unknown model 'resnet_99'"),
    "unknown recipe key": (["train", "small_cnn", "--set", "optim.lrr=0.1"], "unknown key 'optim.lrr'"),
    "wrong type": (["train", "small_cnn", "--set", "train.epochs=many"],
                   "train.epochs: got 'many', expected an integer"),
    "zero lr": (["train", "small_cnn", "--set", "optim.lr=0"], "optim.lr: got 0.0, expected a number > 0"),
    "negative lr": (["train", "small_cnn", "--set", "optim.lr=-0.1"], "optim.lr: got -0.1"),
    "unknown recipe": (["train", "small_cnn", "--recipe", "no-such-recipe"],
                       "neither a YAML file nor a shipped recipe"),
    "missing data dir": (["train", "small_cnn", "--data", "mnist", "--data-dir", "/no/such/dir"], "/no/such/dir"),
    "unknown data set": (["train", "small_cnn", "--data", "mnits"], "unknown data set 'mnits'"),
    "channel mismatch": (["train", "small_cnn", "--model-opt", "in_chans=3"], "takes 3-channel input but data set"),
    "unknown model option": (["train", "small_cnn", "--model-opt", "widthz=[4]"], "has no option 'widthz'"),
    "bad model option": (["train", "small_cnn", "--model-opt", "nonsense"], "expected KEY=VALUE"),
    "classes mismatch": (["train", "small_cnn", "--model-opt", "num_classes=3"], "outputs 3 classes but data set"),
    "resume without checkpoint": (["train", "small_cnn", "--resume"], "nothing to resume"),
    "bad device": (["train", "small_cnn", "--device", "tpu"], "train.device"),
    "bad subset": (["train", "small_cnn", "--subset", "0"], "--subset"),
}


@pytest.mark.parametrize("case", list(BAD_TRAIN_INPUTS))
def test_bad_train_input_one_line_exit_2_no_files(tmp_path, capsys, case):
    argv, expected = BAD_TRAIN_INPUTS[case]
    out = tmp_path / "run"
    if "--data" not in argv:
        argv = [*argv, "--data", "mnist-embedded"]
    assert main([*argv, "--subset", "64", "--out", str(out), "--no-progress"] if "--subset" not in argv
                else [*argv, "--out", str(out)]) == 2
    line = _one_line_error(capsys)
    assert line.startswith("dltricks train: error: ") and expected in line, line
    assert not out.exists()


def test_bad_recipe_file_key(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim:\n  lr: 0.1\n  momentun: 0.9\n")
    assert main(["train", "small_cnn", "--data", "mnist-embedded", "--recipe", str(recipe), "--out",
                 str(tmp_path / "run")]) == 2
    line = _one_line_error(capsys)
    assert "unknown key 'optim.momentun'" in line and "Did you mean: momentum" in line
    assert not (tmp_path / "run").exists()


def test_existing_run_dir_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["train", "small_cnn", *SMALL, "--out", str(out)]) == 2
    assert "already holds files" in _one_line_error(capsys)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_bad_eval_inputs(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "missing"), "--data", "mnist-embedded"]) == 2
    assert "does not exist" in _one_line_error(capsys)
    (tmp_path / "empty").mkdir()
    assert main(["eval", str(tmp_path / "empty"), "--data", "mnist-embedded"]) == 2
    assert "no model.safetensors" in _one_line_error(capsys)
    out = tmp_path / "run"
    assert main(["train", "small_cnn", *SMALL, "--out", str(out)]) == 0  # a real run to evaluate
    capsys.readouterr()
    assert main(["eval", str(out), "--data", "cifar10", "--data-dir", str(tmp_path / "nothing-here")]) == 2
    assert "nothing-here" in _one_line_error(capsys)


def test_debug_shows_the_traceback(capsys):
    with pytest.raises(Exception, match="unknown model"):
        main(["--debug", "train", "resnet_99", "--data", "mnist-embedded"])


def test_every_option_help_states_a_default():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command in ("train", "eval", "run"):
        p = sub.choices[command]
        formatter = p._get_formatter()
        for action in p._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue  # hidden aliases of renamed options (--report for --out) are not shown
            text = formatter._get_help_string(action) or ""
            assert len(text) > 15, (command, action.dest)
            assert "default" in text or "required" in text, (command, action.dest, text)


def test_real_entry_point_bad_input_in_a_subprocess(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dltricks.cli", "train", "small_cnn", "--data", "mnist-embedded",
                           "--set", "optim.lr=0", "--out", str(tmp_path / "run")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == "dltricks train: error: optim.lr: got 0.0, expected a number > 0"
    assert not (tmp_path / "run").exists()


def test_recipe_batch_sizes_seed_and_augmentation_reach_the_data_task():
    from dltricks.commands._args import data_args, recipe_from_args
    from dltricks.train.prepare import task_for_recipe

    args = build_parser().parse_args(["train", "small_cnn", "--data", "mnist-embedded", "--subset", "200",
                                      "--seed", "5", "--set", "train.batch_size=50",
                                      "--set", "train.eval_batch_size=70",
                                      "--set", "augment.hflip=true", "--set", "augment.cutout=4"])
    recipe = recipe_from_args(args)
    task = task_for_recipe(args.data, recipe, **data_args(args))
    assert task.train_loader.batch_size == 50 and task.val_loader.batch_size == 70
    assert task.train_loader.seed == 5 and len(task.train_loader) == 4
    assert task.train_loader.augment == recipe.augment and task.train_loader.augment.cutout == 4
    assert task.val_loader.augment is None
