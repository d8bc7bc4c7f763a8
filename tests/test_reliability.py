"""Reliability: what a new user or an attacker can throw at dltricks, and the promise that each bad input or
fault gives one clear line on stderr, a non-zero exit, no traceback, and loses nothing.

One test (at least) per class of fault:

* run directories: two trainings into one ``--out`` (exactly one runs), a resume while the run is alive, a
  stale lock of a killed process, orphaned temporary files, 40 kills during checkpoint writes then a
  resume (no temporary file left, weights bit-exact to an uninterrupted run);
* hostile recipes: a 9-level alias bomb (refused in < 1 s and < 100 MB), duplicate keys, non-UTF-8 bytes,
  an oversized file, a seed beyond 64 bits, bad model options;
* hostile checkpoints: int8 weights, a deep-JSON header, oversized model options, a tampered loop state,
  a FIFO, a pickle; the finished run's ``model.safetensors`` is unchanged afterwards;
* environment errors: a read-only folder, a path under a regular file, a full disk (before and during
  the run), ``verify --out`` and ``eval --save-masks`` to bad places, a closed stdout/stderr pipe;
* a segmentation model on classification data; the library API given wrong types; a malformed evidence
  cache entry; a NaN loss.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import random
import struct
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from train_helpers import TOY, tiny_cnn, toy_task

import dltricks.train.checkpoint as ckpt
from dltricks.cli import main
from dltricks.errors import (ArgumentError, CheckpointError, ConfigError, ModelError, RunDirError, StorageError,
                             TrainingError)
from dltricks.models import create_model
from dltricks.tasks import build_task
from dltricks.train import evaluate, fit, load_recipe
from dltricks.train.checkpoint import read_metadata, read_tensors
from dltricks.utils.io import is_temp_file
from dltricks.utils.lock import LOCK_NAME, run_dir_lock

SMALL = ["--data", "mnist-embedded", "--subset", "256", "--model-opt", "widths=[4, 8]", "--epochs", "1",
         "--set", "train.batch_size=64", "--no-progress"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "DLTRICKS_PROGRESS": "0"}


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0] and err[0].startswith("dltricks ")
    return err[0]


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str], *expected: str) -> str:
    """``argv`` exits with 2 and one line on stderr that contains every ``expected`` text."""
    assert main(argv) == 2
    line = _one_line(capsys)
    for text in expected:
        assert text in line, line
    return line


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if is_temp_file(p.name)]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch run of small_cnn on 256 embedded MNIST images (copied by the tests that change it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", "small_cnn", *SMALL, "--out", str(out)]) == 0
    return out


@pytest.fixture
def run_copy(finished_run: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(finished_run, tmp_path / "run"))


# ------------------------------------------------------------------------------------------------------------
# Run directories


def test_two_trainings_into_one_out_one_runs_the_other_is_refused(tmp_path):
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "dltricks.cli", "train", "small_cnn", "--data", "mnist-embedded", "--subset", "256",
            "--model-opt", "widths=[4, 8]", "--epochs", "2", "--set", "train.batch_size=32", "--no-progress",
            "--out", str(out)]
    procs = [subprocess.Popen([*argv, "--seed", str(seed)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for seed in (1, 2)]
    results = [(p.wait(timeout=300), p.stderr.read(), p.stdout.read()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    code, err, _ = next(r for r in results if r[0] == 2)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert "is in use by process" in lines[0] or "already holds files" in lines[0], lines[0]
    # One consistent run: the seed of the winner everywhere, two epochs, no lock or temporary file left.
    winner_seed = 1 if results[0][0] == 0 else 2
    config = json.loads((out / "config.json").read_text())
    checkpoint = read_metadata(out / "checkpoints" / "last.safetensors")
    assert config["recipe"]["train"]["seed"] == checkpoint["recipe"]["train"]["seed"] == winner_seed
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert json.loads((out / "result.json").read_text())["epochs"] == 2
    assert not (out / LOCK_NAME).exists() and not _temp_files(out)


def _hold(path: str, ready: Any, release: Any) -> None:
    with run_dir_lock(path, command="holder"):
        ready.set()
        release.wait(120)


def test_resume_while_the_run_is_alive_is_refused(run_copy, capsys):
    fork = multiprocessing.get_context("fork")
    ready, release = fork.Event(), fork.Event()
    holder = fork.Process(target=_hold, args=(str(run_copy), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        before = _snapshot(run_copy)
        # Refused twice: early (before the data is read) and, for a process that got past that, by the lock itself.
        _refused(capsys, ["train", "small_cnn", *SMALL, "--out", str(run_copy), "--resume"],
                 f"is in use by process {holder.pid} (holder", "choose another run directory")
        with pytest.raises(RunDirError, match=f"in use by process {holder.pid}"):
            with run_dir_lock(run_copy):
                pass
        assert _snapshot(run_copy) == before
    finally:
        release.set()
        holder.join(60)
    assert not (run_copy / LOCK_NAME).exists()  # released and removed by its holder


def test_stale_lock_and_orphaned_temporary_files_are_taken_over(run_copy, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run_copy / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": "h", "since": "then"}))
    orphans = [run_copy / "checkpoints" / ".last.safetensors.k2x9_a.tmp", run_copy / "checkpoints" / ".tmpAb12Cd",
               run_copy / ".metrics.jsonl.q8w7e6.tmp"]
    for path in orphans:
        path.write_bytes(b"\0" * 1000)
    assert main(["train", "small_cnn", *SMALL, "--epochs", "2", "--out", str(run_copy), "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"left by process {dead.pid}, which has ended" in err and "removed 3 temporary file(s)" in err
    assert not any(p.exists() for p in orphans) and not (run_copy / LOCK_NAME).exists()
    assert json.loads((run_copy / "result.json").read_text())["epochs"] == 2


def test_the_lock_is_reentrant_in_a_process(tmp_path):
    with run_dir_lock(tmp_path / "r") as outer, run_dir_lock(tmp_path / "r") as inner:
        assert outer is inner and outer.locked and (tmp_path / "r" / LOCK_NAME).is_file()
    assert not (tmp_path / "r").exists()  # created by the lock, left empty: removed


def _kill_recipe() -> list[str]:
    return [*TOY, "train.epochs=20", "checkpoint.every_steps=1", "optim.lr=0.05"]


def _big_mlp() -> torch.nn.Module:
    torch.manual_seed(0)  # ~0.6 M parameters: checkpoint writes (with fsync) take most of a step's time
    return create_model("mlp", num_classes=4, in_chans=1, img_size=8, hidden=(1024, 512))


def _train_until_killed(run_dir: str) -> None:
    torch.set_num_threads(1)
    fit(_big_mlp(), toy_task(), load_recipe(None, _kill_recipe()), run_dir=run_dir, resume=True, progress=False)


def test_kill_during_checkpoint_writes_then_resume_leaves_no_temporary_files_and_is_exact(tmp_path):
    # The uninterrupted run first: it also imports in this process what the first optimizer step needs
    # (seconds of torch._dynamo), so that the forked children start training at once.
    reference = fit(_big_mlp(), toy_task(), load_recipe(None, _kill_recipe()), progress=False)
    run_dir = tmp_path / "run"
    fork = multiprocessing.get_context("fork")
    rng = random.Random(0)
    orphans_seen = 0
    for _ in range(40):
        child = fork.Process(target=_train_until_killed, args=(str(run_dir),))
        child.start()
        time.sleep(rng.uniform(0.05, 0.25))
        child.kill()  # SIGKILL: no cleanup code runs in the child
        child.join()
        orphans_seen += len(_temp_files(run_dir))
    resumed = fit(_big_mlp(), toy_task(), load_recipe(None, _kill_recipe()), run_dir=run_dir, resume=True,
                  progress=False)
    assert orphans_seen > 0  # the kills did land inside writes
    assert not _temp_files(run_dir) and not (run_dir / LOCK_NAME).exists()
    assert resumed.final["steps"] == reference.final["steps"] == 240
    saved, _ = read_tensors(run_dir / "model.safetensors")
    for key, value in reference.model.state_dict().items():
        assert torch.equal(saved[key], value), key


# ------------------------------------------------------------------------------------------------------------
# Hostile recipes


def test_alias_bomb_is_refused_fast_and_small(tmp_path, capsys):
    lines = ["a0: &a0 [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]  # 10^10 values expanded
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\ntrain: {epochs: 1}\n")
    assert bomb.stat().st_size < 1000
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="aliases"):
        load_recipe(bomb)
    elapsed = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert elapsed < 1.0 and peak < 100 * 2**20, (elapsed, peak)
    out = tmp_path / "out"
    _refused(capsys, ["train", "small_cnn", *SMALL, "--recipe", str(bomb), "--out", str(out)], "aliases")
    assert not out.exists()


@pytest.mark.parametrize("content, expected", [
    (b"train:\n  epochs: 1\n  epochs: 2\n", "duplicate key 'epochs'"),
    (b"train: {epochs: 1}\n# \xff\xfe\x00 binary\n", "not UTF-8 text"),
    (b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "not UTF-8 text"),
    (b"# padding\n" * 200_000, "larger than 1024 KiB"),
])
def test_bad_recipe_files_give_one_line(tmp_path, capsys, content, expected):
    recipe = tmp_path / "r.yaml"
    recipe.write_bytes(content)
    out = tmp_path / "out"
    _refused(capsys, ["train", "small_cnn", *SMALL, "--recipe", str(recipe), "--out", str(out)], expected)
    assert not out.exists()


@pytest.mark.parametrize("extra, expected", [
    (["--seed", str(2**70)], "train.seed"),
    (["--model-opt", "drop_rate=abc"], "drop_rate: got 'abc', expected a number"),
    (["--model-opt", "drop_rate=5"], "drop_rate: got 5.0, expected a rate in [0, 1)"),
    (["--model-opt", "widths=[-4, 8]"], "widths: got [-4, 8], expected positive sizes"),
    (["--model-opt", "widths=[100000, 100000]"], "GiB of weights"),
    (["--set", "train={epochs: 1, epochs: 2}"], "duplicate key"),
])
def test_bad_options_give_one_line_and_no_run_directory(tmp_path, capsys, extra, expected):
    out = tmp_path / "out"
    _refused(capsys, ["train", "small_cnn", *SMALL, *extra, "--out", str(out)], expected)
    assert not out.exists()


# ------------------------------------------------------------------------------------------------------------
# Hostile checkpoints


def _rewrite(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    save_file(tensors, str(path), metadata={"dltricks": json.dumps(meta)})


def _deep_header(path: Path) -> None:
    """A safetensors header whose JSON nests 100,000 levels (Python's parser would overflow its stack)."""
    header = b'{"__metadata__": {"dltricks": "{}"}, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    path.write_bytes(struct.pack("<Q", len(header)) + header)


def _tamper_last(run: Path, how: str) -> None:
    path = run / "checkpoints" / "last.safetensors"
    tensors, meta = read_tensors(path)
    if how == "int8":
        tensors = {k: v.to(torch.int8) if k.startswith("model/") and v.is_floating_point() else v
                   for k, v in tensors.items()}
    elif how == "deep-json":
        nested = "[" * 50_000 + "]" * 50_000
        save_file(tensors, str(path), metadata={"dltricks": json.dumps(meta)[:-1] + f', "x": {nested}}}'})
        return
    elif how == "deep-header":
        _deep_header(path)
        return
    elif how == "step-abc":
        meta["state"]["step"] = "abc"
    elif how == "negative-batch":
        meta["state"]["batch"] = -1
    elif how == "far-batch":
        meta["state"]["batch"] = 10**6
    elif how == "no-state":
        del meta["state"]
    elif how == "python-rng":
        meta["rng"]["python"][1] = [0] * 3
    _rewrite(path, tensors, meta)


@pytest.mark.parametrize("how, expected", [
    ("int8", "is stored as int8, the model's is float32"), ("deep-json", "nested more than 32 levels"),
    ("deep-header", "nested more than 32 levels"), ("step-abc", "state.step is 'abc'"),
    ("negative-batch", "state.batch is '-1'"), ("far-batch", "batch 1000000 of an epoch of 4"),
    ("no-state", "loop state"), ("python-rng", "rng.python"),
])
def test_tampered_checkpoint_is_refused_by_resume_and_nothing_is_written(run_copy, capsys, how, expected):
    _tamper_last(run_copy, how)
    before = _snapshot(run_copy)
    _refused(capsys, ["train", "small_cnn", *SMALL, "--out", str(run_copy), "--resume"], expected)
    assert _snapshot(run_copy) == before  # model.safetensors and every other file unchanged, nothing added


@pytest.mark.parametrize("how, expected", [
    ("int8", "is stored as int8"), ("deep-header", "nested more than 32 levels"),
    ("huge-options", "GiB of weights"), ("options-list", "model options are not a mapping"),
])
def test_tampered_weights_are_refused_by_eval(run_copy, capsys, how, expected):
    path = run_copy / "model.safetensors"
    tensors, meta = read_tensors(path)
    if how == "int8":
        _rewrite(path, {k: v.to(torch.int8) if v.is_floating_point() else v for k, v in tensors.items()}, meta)
    elif how == "deep-header":
        _deep_header(path)
    elif how == "huge-options":
        _rewrite(path, tensors, {**meta, "model_kwargs": {**meta["model_kwargs"], "widths": [100_000, 100_000]}})
    else:
        _rewrite(path, tensors, {**meta, "model_kwargs": [1, 2]})
    start = time.perf_counter()
    _refused(capsys, ["eval", str(run_copy), "--data", "mnist-embedded", "--subset", "64"], expected)
    assert time.perf_counter() - start < 30  # nothing of the 670 GiB was allocated


def test_fifo_and_pickle_checkpoints_are_refused(tmp_path, capsys):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    _refused(capsys, ["eval", str(fifo), "--data", "mnist-embedded"], "is a FIFO")  # no hang: never opened
    marker = tmp_path / "pwned"
    pickle_file = tmp_path / "evil.safetensors"
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    pickle_file.write_bytes(pickle.dumps(Payload()))
    _refused(capsys, ["eval", str(pickle_file), "--data", "mnist-embedded"], "pickle")
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------------------
# Environment errors


def test_output_under_a_regular_file_gives_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    _refused(capsys, ["train", "small_cnn", *SMALL, "--out", str(tmp_path / "file" / "run")],
             "has a regular file where a folder is expected")
    _refused(capsys, ["verify", "--out", str(tmp_path / "file"), "--only", "conv.*"], "exists and is not a folder")


def test_read_only_output_folder_gives_one_line(tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access, real_statvfs = os.access, os.statvfs
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == ro else real_access(p, mode, **kw))

    class ReadOnly:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(os, "statvfs", lambda p: ReadOnly() if Path(p) == ro else real_statvfs(p))
    _refused(capsys, ["train", "small_cnn", *SMALL, "--out", str(ro / "run")], "read-only file system",
             "choose a folder on a writable disk")
    assert not (ro / "run").exists()


def test_full_disk_before_and_during_the_run_gives_one_line(tmp_path, capsys, monkeypatch):
    import shutil

    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real_usage(p)._replace(free=1000))
    out = tmp_path / "run"
    _refused(capsys, ["train", "small_cnn", *SMALL, "--out", str(out)], "not enough free space")
    assert not out.exists()
    monkeypatch.setattr(shutil, "disk_usage", real_usage)

    def full(*args, **kwargs):
        raise Exception('Error while serializing: I/O error: No space left on device (os error 28)')

    monkeypatch.setattr(ckpt, "save_file", full)
    assert main(["train", "small_cnn", *SMALL, "--out", str(out)]) == 2  # after its epoch line, one error line
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "".join(err) and [line for line in err if "error" in line] == err[-1:]
    assert "checkpoints: cannot be written: no space left on the device; free some space" in err[-1]
    assert not _temp_files(out)


def test_environment_errors_become_one_line_not_a_traceback(tmp_path, capsys, monkeypatch):
    import dltricks.utils.io as io

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "x"))

    monkeypatch.setattr(io.tempfile, "mkstemp", read_only)  # the first atomic write of the run fails
    line = _refused(capsys, ["train", "small_cnn", *SMALL, "--out", str(tmp_path / "run")], "read-only file system")
    assert str(tmp_path / "x") in line


def test_eval_save_masks_to_a_bad_place_gives_one_line_before_any_work(finished_run, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    _refused(capsys, ["eval", str(finished_run), "--data", "mnist-embedded", "--save-masks",
                      str(tmp_path / "file" / "masks")], "has a regular file where a folder is expected")


def test_closed_output_pipe_does_not_stop_training(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "dltricks.cli", "train", "small_cnn", *SMALL, "--epochs", "2",
                             "--progress", "--out", str(out)], env={**ENV, "DLTRICKS_PROGRESS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    proc.stdout.readline()
    proc.stdout.close()  # `... 2>&1 | head -1`
    proc.wait(timeout=300)
    assert json.loads((out / "result.json").read_text())["epochs"] == 2  # trained to the end


# ------------------------------------------------------------------------------------------------------------
# Model vs data kinds, library API, evidence cache, NaN


def test_segmentation_model_on_classification_data_is_refused_before_a_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    _refused(capsys, ["train", "unet_small", *SMALL[:2], "--subset", "64", "--epochs", "1", "--out", str(out)],
             "is a segmentation model", "choose a classification model")
    assert not out.exists()
    # The library refuses a hand-built pair too, by running the task's loss on two samples.
    with pytest.raises(ModelError, match="cannot take"):
        fit(create_model("unet_small", num_classes=4, in_chans=1), toy_task(), load_recipe(None, TOY),
            run_dir=out, progress=False)
    assert not out.exists()


def test_library_api_says_what_it_expected():
    task = toy_task()
    cases = [(lambda: create_model(None), "model name must be a string"),
             (lambda: fit(None, task, load_recipe(None, TOY)), "model must be a torch.nn.Module, got NoneType"),
             (lambda: fit(tiny_cnn(), "mnist-embedded"), "task must be a dltricks.tasks.Task, got str"),
             (lambda: fit(tiny_cnn(), task, 3), "recipe must be a Recipe"),
             (lambda: fit(tiny_cnn(), task, None, run_dir=5), "run_dir must be a path"),
             (lambda: build_task(None), "name must be a data set name"),
             (lambda: evaluate("model", task.val_loader), "model must be a torch.nn.Module"),
             (lambda: evaluate(tiny_cnn(), [1, 2]), "loader must be a loader with iter_epoch")]
    from dltricks.tips.verify import verify

    cases += [(lambda: verify(mode="fast"), "mode must be 'quick' or 'full'"),
              (lambda: verify(only="conv.*"), "only must be a list")]
    for call, expected in cases:
        with pytest.raises(ArgumentError, match=expected.replace(".", r"\.").replace("(", r"\(")) as info:
            call()
        assert isinstance(info.value, TypeError)


def _cache_experiment(ctx):
    from dltricks.evidence import Evidence

    ev = Evidence(setup="cache test")
    for _seed in ctx.seeds:
        ev.add("t", acc=0.9)
        ev.add("c", acc=0.1)
    return ev


@pytest.mark.parametrize("damage", ["garbage", "wrong-types", "missing-fields", "escaping-plot"])
def test_malformed_evidence_cache_entry_is_discarded_and_rebuilt(tmp_path, damage):
    from dltricks.evidence import Effect, Tip
    from dltricks.tips import cache
    from dltricks.tips.engine import run_tip

    tip = Tip(id="test.cache", title="cache", claim="t beats c", source="test", section="Tests",
              experiment=_cache_experiment, quick={"n": 1}, full={"n": 1}, rule=Effect("acc", "t", "c", min_effect=0.1))
    first, entry = run_tip(tip, mode="quick", cache_dir=tmp_path)
    assert not first.cached and (entry / "result.json").is_file()
    data = json.loads((entry / "result.json").read_text())
    broken = {"garbage": "{not json", "wrong-types": json.dumps({**data, "verdict": 3, "seeds": "x"}),
              "missing-fields": json.dumps({"id": data["id"], "key": data["key"]}),
              "escaping-plot": json.dumps({**data, "plots": ["../../../etc/passwd"]})}[damage]
    (entry / "result.json").write_text(broken)
    assert cache.load(tmp_path, tip.id, data["key"], parse=cache_parse()) is None and not entry.exists()
    again, entry = run_tip(tip, mode="quick", cache_dir=tmp_path)  # rebuilt, and trusted afterwards
    assert not again.cached and again.verdict == first.verdict
    assert run_tip(tip, mode="quick", cache_dir=tmp_path)[0].cached


def cache_parse():
    from dltricks.tips.engine import TipResult

    return TipResult.checked


def test_nan_loss_stops_at_the_first_bad_step_and_keeps_no_bad_checkpoint(tmp_path):
    model = tiny_cnn()
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingError, match="loss is nan at epoch 1, batch 1/12"):
        fit(model, toy_task(), load_recipe(None, TOY), run_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints" / "last.safetensors").exists()


def test_storage_and_checkpoint_errors_are_one_line_errors():
    assert issubclass(StorageError, OSError) and issubclass(CheckpointError, ValueError)
    with pytest.raises(CheckpointError, match="does not exist"):
        ckpt.read_metadata("/nonexistent/model.safetensors")
