"""Hyper-parameter search (dltricks.search, `dltricks search`): the space file, the study, the results.

Every search here trains a tiny CNN for one or two epochs on 256 embedded MNIST images (well under a
second per trial), so a test is a few seconds; the multi-process tests pay for starting Python workers.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dltricks.cli import main
from dltricks.errors import ConfigError
from dltricks.search import load_space, open_storage, search
from dltricks.search.study import SearchSpec, _Objective, open_study

optuna = pytest.importorskip("optuna")
TrialState = optuna.trial.TrialState

TINY = {"train": {"epochs": 1, "batch_size": 64, "device": "cpu"}}
TINY_ARGS = ["--epochs", "1", "--subset", "256", "--set", "train.batch_size=64", "--device", "cpu",
             "--model-opt", "widths=[4, 8, 8]", "--heartbeat", "1", "--no-plots"]
SPACE = {"params": {"optim.lr": {"log_uniform": [1.0e-3, 0.5]}, "optim.name": {"choice": ["sgd", "adamw"]},
                    "optim.momentum": {"uniform": [0.5, 0.95], "when": {"optim.name": "sgd"}}}}


def write_space(path: Path, space: dict = SPACE) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(space))
    return path


def finished(study) -> list:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


# The space file


def test_space_reads_every_distribution_and_condition():
    space = load_space({"objectives": ["val_accuracy", "params"], "params": {
        **SPACE["params"], "train.batch_size": {"int": [32, 128], "log": True},
        "train.label_smoothing": {"uniform": [0.0, 0.2], "grid": [0.0, 0.1]},
        "model.widths": {"choice": [[4, 8, 8], [8, 16, 16]]}}}, model="small_cnn")
    kinds = {p.key: p.kind for p in space.params}
    assert kinds == {"optim.lr": "log_uniform", "optim.name": "choice", "optim.momentum": "uniform",
                     "train.batch_size": "int", "train.label_smoothing": "uniform", "model.widths": "choice"}
    assert space.objectives == (("val_accuracy", "maximize"), ("params", "minimize"))
    trial = optuna.trial.FixedTrial({"optim.lr": 0.01, "optim.name": "adamw", "train.batch_size": 64,
                                     "train.label_smoothing": 0.1, "model.widths": "[4, 8, 8]"})
    overrides, model_kwargs = space.suggest(trial)
    assert dict(overrides) == {"optim.lr": 0.01, "optim.name": "adamw", "train.batch_size": 64,
                               "train.label_smoothing": 0.1}  # no momentum: its condition (sgd) does not hold
    assert model_kwargs == {"widths": [4, 8, 8]}


@pytest.mark.parametrize("params, message", [
    ({"optim.lrr": {"uniform": [0.1, 0.2]}}, "not a recipe key. Did you mean: optim.lr"),
    ({"optim.lr": {"log_uniform": [0.5, 0.5]}}, "empty range"),
    ({"optim.lr": {"uniform": [-1.0, 0.5]}}, "expected a number > 0"),
    ({"train.batch_size": {"uniform": [32, 128]}}, "the key is an integer; use int"),
    ({"optim.name": {"log_uniform": [0.1, 1.0]}}, "does not fit a key of type"),
    ({"optim.name": {"choice": ["sgd", "adamm"]}}, "Did you mean: adam"),
    ({"optim.lr": {"normal": [0.1, 0.2]}}, "unknown entry 'normal'"),
    ({"model.width": {"choice": [[4, 8]]}}, "the model has no option 'width'"),
    ({"optim.momentum": {"uniform": [0.1, 0.5], "when": {"optim.name": "sgd"}}}, "not a choice parameter"),
])
def test_bad_spaces_name_the_key(params, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_space({"params": params}, model="small_cnn")


def test_grid_refuses_conditional_spaces_and_lists_points():
    space = load_space({"params": {"optim.lr": {"log_uniform": [1e-3, 1e-1]}, "train.batch_size": {"int": [32, 64],
                                                                                                      "step": 32}}})
    grid = space.grid(points=3)
    assert grid["train.batch_size"] == [32, 64]
    assert grid["optim.lr"] == pytest.approx([1e-3, 1e-2, 1e-1])
    with pytest.raises(ConfigError, match="conditional"):
        load_space(SPACE).grid()


# Searches


def test_search_cli_writes_a_best_recipe_that_train_reproduces(tmp_path, capsys):
    space = write_space(tmp_path / "space.yaml")
    out = tmp_path / "search"
    assert main(["search", "small_cnn", "--data", "mnist-embedded", "--space", str(space), "--trials", "3",
                 "--out", str(out), "--plots", *TINY_ARGS[:-1]]) == 0
    printed = capsys.readouterr().out
    assert "best trial" in printed and "train it: dltricks train small_cnn" in printed
    best = json.loads((out / "best.json").read_text())
    assert {p.name for p in (out / "plots").glob("*.png")} >= {"history.png", "parallel_coordinates.png"}
    # The exported recipe trains, unchanged, to the value the search reported (same seed, same data).
    assert main(["train", "small_cnn", "--data", "mnist-embedded", "--recipe", best["recipe"], "--subset", "256",
                 "--model-opt", "widths=[4, 8, 8]", "--out", str(tmp_path / "retrain")]) == 0
    result = json.loads((tmp_path / "retrain" / "result.json").read_text())
    assert result["val_accuracy"] == pytest.approx(best["values"]["val_accuracy"], abs=0.02)


def test_search_resumes_and_runs_only_the_missing_trials(tmp_path):
    common = dict(recipe=TINY, model_kwargs={"widths": [4, 8, 8]}, subset=256, out=tmp_path, plots=False,
                  sampler="random", pruner="none")
    first = search("small_cnn", "mnist-embedded", SPACE, trials=2, **common)
    assert len(finished(first.study)) == 2
    again = search("small_cnn", "mnist-embedded", SPACE, trials=3, **common)
    trials = finished(again.study)
    assert sorted(t.number for t in trials) == [0, 1, 2]
    # The random sampler is re-seeded on resume: the third trial is a new point, not the first one again.
    assert len({t.params["optim.lr"] for t in trials}) == 3
    attrs = trials[0].user_attrs
    assert {"recipe", "seed", "metrics", "run_dir", "model_kwargs"} <= set(attrs)
    assert Path(attrs["run_dir"], "result.json").is_file()


def test_multi_objective_search_gives_a_pareto_front(tmp_path):
    space = {"objectives": ["val_accuracy:max", "params:min"],
             "params": {"optim.lr": {"log_uniform": [1e-2, 0.3]}, "model.widths": {"choice": [[4, 8, 8], [8, 8, 16]]}}}
    result = search("small_cnn", "mnist-embedded", space, trials=3, recipe=TINY, subset=256, out=tmp_path,
                    sampler="random")
    assert result.best_trials and all(len(t.values) == 2 for t in result.best_trials)
    assert (tmp_path / "plots" / "pareto_front.png").is_file()
    front = json.loads((tmp_path / "best.json").read_text())["pareto_front"]
    assert {f["trial"] for f in front} == {t.number for t in result.best_trials}


@pytest.mark.parametrize("sampler", ["cmaes", "qmc", "grid"])
def test_other_samplers_run(tmp_path, sampler):
    space = {"params": {"optim.lr": {"log_uniform": [1e-2, 0.3]}, "optim.momentum": {"uniform": [0.5, 0.9]}}}
    result = search("small_cnn", "mnist-embedded", space, trials=2, recipe=TINY, model_kwargs={"widths": [4, 8, 8]},
                    subset=256, out=tmp_path, sampler=sampler, plots=False)
    assert len(finished(result.study)) == 2


class _PruneAfterFirstEpoch(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return trial.last_step is not None and trial.last_step >= 1


def test_a_pruned_trial_stops_training_through_the_epoch_callback(tmp_path):
    from dltricks.search.study import default_storage
    from dltricks.train import load_recipe

    spec = SearchSpec(model="small_cnn", data="mnist-embedded", space=load_space(SPACE), trials=1,
                      recipe=load_recipe({"train": {**TINY["train"], "epochs": 3}}), storage=default_storage(tmp_path),
                      study_name="prune", out=tmp_path, model_kwargs={"widths": [4, 8, 8]}, subset=256)
    study = open_study(spec, pruner=_PruneAfterFirstEpoch())
    study.optimize(_Objective(spec, study), n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs["metrics"]["epochs"] == 1 and trial.user_attrs["stop_reason"] == "callback"


@pytest.mark.slow
def test_two_sqlite_workers_finish_exactly_n_trials(tmp_path):
    result = search("small_cnn", "mnist-embedded", SPACE, trials=5, recipe=TINY, model_kwargs={"widths": [4, 8, 8]},
                    subset=256, out=tmp_path, workers=2, sampler="random", pruner="none", plots=False,
                    heartbeat_s=1)
    done = finished(result.study)
    assert len(done) == 5
    assert len({t.number for t in done}) == 5 and len({t.params["optim.lr"] for t in done}) == 5
    assert all(t.state != TrialState.RUNNING for t in result.study.trials)


# Bad inputs: one line, exit code 2, nothing in the study lost


def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
    space = write_space(tmp_path / "space.yaml")
    base = ["search", "small_cnn", "--data", "mnist-embedded", "--trials", "1", *TINY_ARGS]
    bad = write_space(tmp_path / "bad.yaml", {"params": {"optim.lrr": {"uniform": [0.1, 0.2]}}})
    assert main([*base, "--space", str(bad), "--out", str(tmp_path / "a")]) == 2
    assert "not a recipe key" in capsys.readouterr().err
    assert main([*base, "--space", str(space), "--storage", "postgresql://nobody@127.0.0.1:1/none"]) == 2
    err = capsys.readouterr().err
    assert "cannot open the study storage" in err and len(err.strip().splitlines()) == 1
    # A study of another space in the same storage is refused and keeps its trials.
    out = tmp_path / "b"
    assert main([*base, "--space", str(space), "--out", str(out)]) == 0
    other = write_space(tmp_path / "other.yaml", {"params": {"optim.lr": {"log_uniform": [1e-4, 1e-3]}}})
    capsys.readouterr()
    assert main([*base, "--space", str(other), "--out", str(out)]) == 2
    assert "belongs to another search (different space)" in capsys.readouterr().err
    study = optuna.load_study(study_name="small_cnn-mnist-embedded", storage=open_storage(f"sqlite:///{out}/study.db"))
    assert len(finished(study)) == 1


@pytest.mark.slow
def test_kill_9_mid_trial_then_the_same_command_completes_the_study(tmp_path):
    space = write_space(tmp_path / "space.yaml")
    out = tmp_path / "s"
    # Trials long enough (3 epochs on 2,048 images) to be killed inside one.
    cmd = [sys.executable, "-m", "dltricks.cli", "search", "small_cnn", "--data", "mnist-embedded", "--space",
           str(space), "--trials", "2", "--out", str(out), "--sampler", "random", "--pruner", "none",
           "--epochs", "3", "--subset", "2048", "--set", "train.batch_size=64", "--device", "cpu",
           "--model-opt", "widths=[4, 8, 8]", "--heartbeat", "1", "--no-plots"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not any((out / "trials").glob("trial-*/metrics.jsonl")) and time.monotonic() < deadline:
            time.sleep(0.2)  # the first epoch of the first trial is written: the trial is mid-way
        assert proc.poll() is None, "the search ended before it could be killed"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    storage = f"sqlite:///{out}/study.db"
    killed = optuna.load_study(study_name="small_cnn-mnist-embedded", storage=open_storage(storage)).trials
    assert [t.state for t in killed].count(TrialState.RUNNING) == 1
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=300).returncode == 0
    study = optuna.load_study(study_name="small_cnn-mnist-embedded", storage=open_storage(storage))
    states = {t.number: t.state for t in study.trials}
    assert sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states.values()) == 2
    dead = next(t for t in killed if t.state == TrialState.RUNNING).number
    assert states[dead] == TrialState.FAIL  # marked failed, not counted...
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == dead]
    assert len(retry) == 1 and retry[0].params == study.trials[dead].params  # ...and retried with its parameters


# The tips' experiments (synthetic objectives, milliseconds per search)


@pytest.mark.parametrize("name, arms", [("tpe_vs_random", {"tpe", "random"}), ("random_vs_grid", {"random", "grid"}),
                                        ("pruning_saves_compute", {"median", "none"})])
def test_search_tip_experiments_pair_their_arms_by_seed(tmp_path, name, arms):
    from dltricks.evidence import Context
    from dltricks.experiments import search_tips

    settings = {"tpe_vs_random": {"trials": 12}, "random_vs_grid": {"points": 3},
                "pruning_saves_compute": {"trials": 8, "epochs": 5}}[name]
    ev = getattr(search_tips, name)(Context(tip_id=name, mode="quick", settings=settings, seeds=[0, 1],
                                            workdir=tmp_path))
    assert set(ev.arms) == arms and all(len(v) == 2 for metrics in ev.arms.values() for v in metrics.values())
    assert ev.plots and all((tmp_path / p).is_file() or Path(p).is_file() for p in ev.plots)
    if name == "random_vs_grid":
        assert ev.arms["grid"]["distinct_x"] == [3.0, 3.0] and min(ev.arms["random"]["distinct_x"]) > 3
    if name == "pruning_saves_compute":
        assert ev.arms["none"]["compute_fraction"] == [1.0, 1.0]


def test_the_table_keeps_an_objective_named_params_apart_from_the_parameters(tmp_path, capsys):
    from dltricks.search.report import print_table, trial_rows

    space = {"objectives": ["val_accuracy:max", "params:min"], "params": {"model.widths": {"choice": [[4, 8, 8],
                                                                                                       [8, 8, 16]]}}}
    result = search("small_cnn", "mnist-embedded", space, trials=2, recipe=TINY, subset=256, out=tmp_path,
                    sampler="random", plots=False)
    rows = trial_rows(result.study, metric_names=["val_accuracy", "params"])
    assert all(r["values"]["params"] in (2214.0, 4962.0) and "model.widths" in r["params"] for r in rows)
    print_table(result.study, metric_names=["val_accuracy", "params"])
    assert "params" in capsys.readouterr().out
