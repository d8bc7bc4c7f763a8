"""Scale-out on a real PostgreSQL server: three worker processes on one study finish exactly N trials.

The server is Debian's ``postgresql`` package (``make test`` installs it when it can): a fresh cluster is
made with ``initdb`` in a temporary folder, listens on 127.0.0.1 only (and a socket in that folder), and
is stopped and deleted at the end. PostgreSQL refuses to run as root, so under root the server commands
run as the package's ``postgres`` user. Without the binaries the test is skipped, saying why.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from dltricks.search import search

optuna = pytest.importorskip("optuna")
pytest.importorskip("psycopg2", reason="psycopg2 (the PostgreSQL driver, a dltricks dependency) is not installed")


def _bindir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    bindir = _bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; `make test` installs Debian's "
                    "postgresql package, or run `apt-get install postgresql`")
    as_user: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="dltricks-pg-"))
    if os.geteuid() == 0:
        if shutil.which("runuser") is None or subprocess.run(["id", "postgres"], capture_output=True).returncode:
            pytest.skip("running as root without a `postgres` user to run the server as")
        shutil.chown(base, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = base / "data", _free_port()

    def server(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*as_user, *args], capture_output=True, text=True, timeout=120)

    made = server(str(bindir / "initdb"), "-D", str(data), "-U", "dltricks", "--auth=trust", "-E", "UTF8",
                  "--no-sync")
    assert made.returncode == 0, made.stderr
    started = server(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-w", "-o",
                     f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off", "start")
    assert started.returncode == 0, started.stderr + (base / "server.log").read_text()
    try:
        created = server(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "dltricks", "search")
        assert created.returncode == 0, created.stderr
        yield f"postgresql+psycopg2://dltricks@127.0.0.1:{port}/search"
    finally:
        server(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
def test_three_workers_on_postgresql_finish_exactly_n_trials(tmp_path, postgres_url):
    space = {"params": {"optim.lr": {"log_uniform": [1e-3, 0.5]}, "optim.momentum": {"uniform": [0.5, 0.95]}}}
    recipe = {"train": {"epochs": 1, "batch_size": 64, "device": "cpu"}}
    result = search("small_cnn", "mnist-embedded", space, trials=6, recipe=recipe, model_kwargs={"widths": [4, 8, 8]},
                    subset=256, out=tmp_path, storage=postgres_url, workers=3, sampler="random", pruner="none",
                    plots=False, heartbeat_s=1)
    states = optuna.trial.TrialState
    trials = result.study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state in (states.COMPLETE, states.PRUNED)]
    assert len(done) == 6
    assert len({t.number for t in done}) == 6
    assert len({(t.params["optim.lr"], t.params["optim.momentum"]) for t in done}) == 6  # no point trained twice
    assert not [t for t in trials if t.state in (states.RUNNING, states.WAITING)]
    assert not (tmp_path / "study.db").exists()  # everything went to PostgreSQL
    # Every finished trial records where it ran and what it was.
    assert all({"recipe", "run_dir", "metrics", "seed"} <= set(t.user_attrs) for t in done)
