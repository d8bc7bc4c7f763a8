"""Checkpoints: nothing is ever unpickled, writes are atomic (also under kill -9), state round-trips
exactly, and `dltricks train` killed with SIGKILL at an arbitrary step resumes to the uninterrupted result."""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dltricks.cli import main as cli_main
from dltricks.errors import CheckpointError
from dltricks.train import fit, load_recipe, load_weights
from dltricks.train import checkpoint as ckpt
from dltricks.train.checkpoint import (optimizer_from_flat, optimizer_to_flat, read_metadata, read_tensors,
                                       restore_rng_state, rng_state_to_flat, save_weights, write_tensors)
from train_helpers import TOY, strip_times, tiny_cnn, tiny_mlp, toy_task

ROOT = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this creates ``marker`` (via builtins.open(marker, "w")): proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _malicious_files(tmp_path: Path) -> tuple[Path, list[Path]]:
    marker = tmp_path / "PWNED"
    payload = pickle.dumps({"state_dict": _Payload(marker)}, protocol=4)
    raw = tmp_path / "evil.safetensors"  # a pickle with a safetensors name
    raw.write_bytes(payload)
    proto0 = tmp_path / "evil0.ckpt"
    proto0.write_bytes(pickle.dumps(_Payload(marker), protocol=0))
    zipped = tmp_path / "evil.pt"  # what torch.save writes: a zip holding data.pkl
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("archive/data.pkl", payload)
    return marker, [raw, proto0, zipped]


def test_the_payload_really_runs_code_when_unpickled(tmp_path):
    marker, files = _malicious_files(tmp_path)
    pickle.loads(files[0].read_bytes())  # what torch.load(weights_only=False) would do
    assert marker.exists()


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    marker, files = _malicious_files(tmp_path)
    for path in files:
        for load in (read_metadata, read_tensors, lambda p: load_weights(tiny_mlp(), p)):
            with pytest.raises(CheckpointError, match="pickle") as info:
                load(path)
            assert "nothing in it was executed" in str(info.value)
    assert not marker.exists()


def test_malicious_checkpoint_in_a_run_dir_is_refused_by_resume(tmp_path):
    marker, files = _malicious_files(tmp_path)
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.safetensors").write_bytes(files[0].read_bytes())
    with pytest.raises(CheckpointError, match="pickle"):
        fit(tiny_cnn(), toy_task(), load_recipe(None, ["train.epochs=1", *TOY]), run_dir=run_dir, resume=True,
            progress=False)
    assert not marker.exists()


def test_malicious_checkpoint_is_refused_by_the_cli(tmp_path, capsys):
    marker, files = _malicious_files(tmp_path)
    for path in files:
        assert cli_main(["eval", str(path), "--data", "mnist-embedded"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "pickle" in err[0] and "Traceback" not in err[0]
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage", "header"])
def test_damaged_files_are_refused(tmp_path, damage):
    path = tmp_path / "w.safetensors"
    save_weights(path, tiny_mlp(), {"model": "mlp"})
    data = path.read_bytes()
    damaged = {"truncate": data[: len(data) // 2], "empty": b"", "garbage": os.urandom(256),
               "header": data[:8] + b"[" + data[9:]}[damage]
    path.write_bytes(damaged)
    with pytest.raises(CheckpointError):
        load_weights(tiny_mlp(), path)


def test_weights_round_trip_and_wrong_model(tmp_path):
    model = tiny_mlp(1)
    save_weights(tmp_path / "w.safetensors", model, {"model": "mlp", "num_classes": 4})
    other = tiny_mlp(2)
    meta = load_weights(other, tmp_path / "w.safetensors")
    assert meta["model"] == "mlp" and meta["format"] == ckpt.WEIGHTS_FORMAT
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_weights(tiny_cnn(), tmp_path / "w.safetensors")


def test_tied_weights_can_be_saved(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    model[1].weight = model[0].weight  # shared storage: safetensors alone refuses this
    save_weights(tmp_path / "t.safetensors", model)
    clone = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    clone[1].weight = clone[0].weight
    load_weights(clone, tmp_path / "t.safetensors")
    assert torch.equal(clone[0].weight, model[0].weight)


def test_optimizer_state_round_trip():
    model = tiny_mlp()
    opt = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.8, 0.9))
    for _ in range(3):
        model(torch.randn(2, 1, 8, 8)).sum().backward()
        opt.step()
    tensors, meta = optimizer_to_flat(opt, prefix="")
    meta = json.loads(json.dumps(meta))  # through JSON, as in a file
    fresh = torch.optim.Adam(tiny_mlp().parameters(), lr=0.5)
    optimizer_from_flat(fresh, tensors, meta)
    a, b = opt.state_dict(), fresh.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for i in a["state"]:
        for k in a["state"][i]:
            assert torch.equal(a["state"][i][k], b["state"][i][k])


def test_rng_state_round_trip():
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    tensors, meta = rng_state_to_flat()
    meta = json.loads(json.dumps(meta))
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    restore_rng_state(tensors, meta)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.safetensors"
    write_tensors(path, {"w": torch.ones(1000)}, {"step": 1})

    def crash_mid_write(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 100)  # a partial file...
        raise OSError("disk full")  # ...and the writer dies

    monkeypatch.setattr(ckpt, "save_file", crash_mid_write)
    with pytest.raises(OSError):
        write_tensors(path, {"w": torch.zeros(1000)}, {"step": 2})
    tensors, meta = read_tensors(path)
    assert meta == {"step": 1} and torch.equal(tensors["w"], torch.ones(1000))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.safetensors"]  # no temporary file left


def test_kill_during_a_checkpoint_write_leaves_the_old_checkpoint(tmp_path):
    path = tmp_path / "last.safetensors"
    write_tensors(path, {"w": torch.ones(10)}, {"step": 1})
    script = textwrap.dedent(f"""
        import time, torch
        from pathlib import Path
        from dltricks.train import checkpoint as ckpt
        real = ckpt.save_file
        def slow(tensors, filename, metadata=None):
            real(tensors, filename, metadata=metadata)
            data = Path(filename).read_bytes()
            Path(filename).write_bytes(data[: len(data) // 2])  # half written...
            time.sleep(60)  # ...when the kill comes
        ckpt.save_file = slow
        ckpt.write_tensors({str(path)!r}, {{"w": torch.zeros(10)}}, {{"step": 2}})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 60
        while not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp") and p.stat().st_size > 0]:
            assert proc.poll() is None and time.time() < deadline, "writer ended before the kill"
            time.sleep(0.02)
        time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    tensors, meta = read_tensors(path)  # the old, complete checkpoint
    assert meta == {"step": 1} and torch.equal(tensors["w"], torch.ones(10))
    assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # the partial write stayed aside


# --------------------------------------------------------------------------------------------------
# kill -9 at an arbitrary step, then --resume

_TRAIN_SCRIPT = textwrap.dedent("""
    # `dltricks train` with one extra model that sleeps a little per training step, so that the parent
    # can kill it in the middle of the run without needing a big (slow-to-compute) model.
    import sys, time, torch
    torch.set_num_threads(1)
    from dltricks.models import register_model
    from dltricks.models.simple import SmallCNN

    class SlowCNN(SmallCNN):
        def forward(self, x):
            if self.training:
                time.sleep(0.03)
            return super().forward(x)

    @register_model(input_size=(1, 28, 28))
    def slow_cnn(**kwargs):
        return SlowCNN(**kwargs)

    from dltricks.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _train_command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-c", _TRAIN_SCRIPT, "train", "slow_cnn", "--data", "mnist-embedded", "--subset", "384",
            "--epochs", "3", "--model-opt", "widths=[4, 8]", "--set", "train.batch_size=32",
            "--set", "checkpoint.every_steps=1", "--set", "optim.lr=0.05", "--set", "ema.decay=0.9",
            "--set", "augment.crop_padding=2", "--set", "schedule.name=cosine", "--model-opt", "drop_rate=0.2",
            "--out", str(out), "--no-progress", *extra]


def _records(run_dir: Path) -> list[dict]:
    return strip_times([json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()])


def test_kill_9_at_an_arbitrary_step_then_resume_is_exact(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DLTRICKS_PROGRESS": "0"}
    reference = tmp_path / "reference"
    subprocess.run(_train_command(reference), env=env, check=True, capture_output=True, timeout=300)

    interrupted = tmp_path / "interrupted"
    proc = subprocess.Popen(_train_command(interrupted), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoint = interrupted / "checkpoints" / "last.safetensors"
    kill_after = random.Random().randint(4, 24)  # 12 steps per epoch: anywhere in the first two epochs
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, f"training ended before the kill: {proc.stderr.read().decode()}"
            assert time.time() < deadline
            if checkpoint.exists() and read_metadata(checkpoint)["state"]["step"] >= kill_after:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    state = read_metadata(checkpoint)["state"]  # a complete checkpoint, whatever the kill interrupted
    assert kill_after <= state["step"] < 36
    assert not (interrupted / "result.json").exists()

    resumed = subprocess.run(_train_command(interrupted, "--resume"), env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr
    assert _records(interrupted) == _records(reference)
    final_a = load_file(str(reference / "model.safetensors"))
    final_b = load_file(str(interrupted / "model.safetensors"))
    assert final_a.keys() == final_b.keys() and all(torch.equal(final_a[k], final_b[k]) for k in final_a)


def test_reading_while_the_writer_replaces_the_file_sees_one_whole_file(tmp_path, monkeypatch):
    """A reader polling a live run (the kill test above, `dltricks eval` during training) can stat the old
    checkpoint and open the new one, which the writer renamed over it in between. The sizes the header is
    checked against must come from the file that was opened, not from the path's earlier stat; this race made
    the kill test fail now and then with "byte offsets outside the file's data bytes (truncated or tampered)"."""
    path = tmp_path / "last.safetensors"
    ckpt.write_tensors(path, {"w": torch.zeros(4)}, {"state": {"step": 1}})
    real_sniff = ckpt._sniff

    def sniff_then_replace(p):
        info = real_sniff(p)  # the old file's stat
        ckpt.write_tensors(path, {"w": torch.zeros(4), "rng": torch.zeros(64)}, {"state": {"step": 2}})  # bigger
        return info

    monkeypatch.setattr(ckpt, "_sniff", sniff_then_replace)
    assert read_metadata(path)["state"]["step"] == 2
