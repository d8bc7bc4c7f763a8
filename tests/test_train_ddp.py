"""Distributed data parallel on CPU: `torchrun --nproc_per_node 2 -m dltricks.cli train ...` with the gloo
backend gives the same weights as one process with the two ranks' batches together."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from dltricks.train.checkpoint import read_tensors

# An MLP (no batch norm, no dropout) and no augmentation: the only difference between 2 ranks x 32 and
# 1 process x 64 is then the order of floating-point sums.
ARGS = ["train", "mlp", "--data", "mnist-embedded", "--subset", "512", "--epochs", "2", "--model-opt", "hidden=[32]",
        "--set", "optim.lr=0.05", "--set", "schedule.name=cosine", "--no-progress"]


@pytest.mark.slow
def test_two_ranks_match_one_process_with_the_global_batch(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DLTRICKS_PROGRESS": "0"}
    single = tmp_path / "single"
    proc = subprocess.run([sys.executable, "-m", "dltricks.cli", *ARGS, "--set", "train.batch_size=64", "--out",
                           str(single)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"single process: exit status {proc.returncode}\n{proc.stderr[-3000:]}"
    ddp = tmp_path / "ddp"
    # --standalone: the launcher binds a free port itself. Picking one here, closing it and handing its number to
    # torchrun raced with every other process on the machine (another test run could take it in between).
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "dltricks.cli", *ARGS, "--set", "train.batch_size=32", "--out", str(ddp)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"two ranks: exit status {proc.returncode}\n{proc.stderr[-3000:]}"

    a, b = load_file(str(single / "model.safetensors")), load_file(str(ddp / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    ra = json.loads((single / "result.json").read_text())
    rb = json.loads((ddp / "result.json").read_text())
    assert ra["steps"] == rb["steps"] == 16
    # Metric sums are all-reduced: the same validation numbers as one process (2,000 images, no padding).
    assert abs(ra["val_accuracy"] - rb["val_accuracy"]) <= 2 / 2000
    assert ra["val_loss"] == pytest.approx(rb["val_loss"], rel=1e-3)
    # Only rank 0 wrote files; the checkpoint holds both ranks' RNG states.
    assert json.loads((ddp / "config.json").read_text())["world_size"] == 2
    tensors, meta = read_tensors(ddp / "checkpoints" / "last.safetensors")
    assert {"rng/torch/0", "rng/torch/1"} <= set(tensors) and meta["world_size"] == 2
    assert "epoch 2/2" in proc.stderr and proc.stderr.count("epoch 2/2") == 1  # rank 0 logs only
