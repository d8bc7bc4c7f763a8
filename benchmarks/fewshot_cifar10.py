"""Prototypical network on CIFAR-10's class split: train on classes 0-4, test on the novel classes 5-9.

Issue 19 asks for the class splits of MNIST and CIFAR-10. Training episodes are five-way one-shot episodes
(15 queries per class) of airplane, automobile, bird, cat and deer drawn from the 50,000 training images; test
episodes are five-way 1-shot and 5-shot episodes (15 queries) of dog, frog, horse, ship and truck drawn from
the 10,000 test images (``EpisodeSampler.for_split``). Accuracy is the mean over the test episodes with the
95 % interval over episodes (chance 20 %). Needs CIFAR-10 (``--data-dir`` or ``DLTRICKS_DATA``).

Usage::

    OMP_NUM_THREADS=1 DLTRICKS_DATA=/path/to/data python benchmarks/fewshot_cifar10.py --out results.jsonl
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from dltricks.fewshot import EpisodeSampler, evaluate_episodes, train_prototypical
from dltricks.fewshot.episodes import create_encoder

HYPER = {
    "widths": (16, 32, 64),  # small_cnn stages: conv-BN-ReLU, max-pool, global average pooling (64-d features)
    "episodes": 600,  # training episodes (5-way 1-shot, 15 queries) = Adam steps at lr 1e-3
    "test_episodes": 600,  # per test column
    "lr": 1e-3,
}


def run(seed: int, data_dir: str | None, *, untrained: bool = False) -> dict:
    t0 = time.perf_counter()
    train = EpisodeSampler.for_split("cifar10", "train", data_dir=data_dir, ways=5, shots=1, queries=15, seed=seed)
    load_s = time.perf_counter() - t0
    torch.manual_seed(seed)
    encoder = create_encoder("small_cnn", widths=HYPER["widths"], in_chans=3)
    t0 = time.perf_counter()
    losses = [] if untrained else train_prototypical(encoder, train, episodes=HYPER["episodes"], lr=HYPER["lr"])
    out = {"dataset": "cifar10", "method": "untrained encoder" if untrained else "prototypical", "seed": seed,
           "load_s": round(load_s, 1), "train_s": round(time.perf_counter() - t0, 1),
           "train_loss_first_last": [losses[0], losses[-1]] if losses else None}
    for shots in (1, 5):
        test = EpisodeSampler.for_split("cifar10", "novel", data_dir=data_dir, ways=5, shots=shots, queries=15,
                                        seed=10_000 + seed)
        r = evaluate_episodes(encoder, test, episodes=HYPER["test_episodes"])
        out[f"novel_{shots}shot"] = {"accuracy": r["accuracy"], "ci95": r["ci95"], "time_s": round(r["time_s"], 1)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--data-dir", default=None, help="folder holding CIFAR-10 (default: DLTRICKS_DATA)")
    parser.add_argument("--episodes", type=int, default=HYPER["episodes"], help="training episodes")
    parser.add_argument("--test-episodes", type=int, default=HYPER["test_episodes"])
    parser.add_argument("--untrained", action="store_true", help="evaluate the randomly initialised encoder")
    parser.add_argument("--out", help="append one JSON line per seed to this file")
    args = parser.parse_args()
    HYPER.update(episodes=args.episodes, test_episodes=args.test_episodes)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} thread(s)", flush=True)
    for seed in args.seeds:
        result = run(seed, args.data_dir, untrained=args.untrained) | {"hyper": HYPER}
        print(json.dumps(result), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
