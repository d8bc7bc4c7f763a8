"""Domain adaptation MNIST -> grey MNIST-M (digits blended onto CIFAR-10 crops by |patch - digit|), the second
shift of docs/domain-adaptation.md.

Source: the 8,000 embedded MNIST training images (labelled). Target: the 2,000 embedded MNIST validation digits
blended onto seeded grey CIFAR-10 test crops (:func:`dltricks.data.shift.mnist_m_grey`, needs cifar10-jpg.zip),
split class-stratified in half (seed 0): 1,000 images to adapt with (no labels), 1,000 to test on. Arms and
settings are those of the ``learn.domain-adaptation`` tip's full mode (TinyCNN width 16, 300 steps of 64 images,
SGD + Nesterov, lr 0.03, cosine): source only, AdaBN, CORAL, DANN, self-training. Prints one Markdown table:
target accuracy per seed, mean ± sd, and the paired difference to source only with its 95 % t-interval. A run
whose loss became non-finite (the trainer stops it) is shown as "diverged" and left out of its arm's mean and
interval (the n in the table says how many seeds remain).

    OMP_NUM_THREADS=1 python benchmarks/mnist_m_adaptation.py [--seeds 5] [--steps 300] [--data-dir ../shared/data]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    from scipy import stats

    from dltricks.data.mnist import load_mnist_embedded
    from dltricks.data.shift import mnist_m_grey, split_target
    from dltricks.errors import TrainingError
    from dltricks.experiments.unlabelled_tips import ADAPT_ARMS, ADAPT_OPTIONS, _fit, target_accuracy
    from dltricks.train.unlabelled import adabn

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    adapt, test = split_target(mnist_m_grey(load_mnist_embedded("val"), data_dir=args.data_dir), seed=0)
    acc: dict[str, list[float]] = {arm: [] for arm in ADAPT_ARMS}
    t0, cpu0 = time.perf_counter(), time.process_time()
    for seed in range(args.seeds):
        for arm in ADAPT_ARMS:
            if arm == "AdaBN":
                continue
            try:
                result, _ = _fit(seed, 8000, args.steps, 64, 16, ADAPT_OPTIONS[arm], adapt, val_subset=500)
            except TrainingError:
                acc[arm].append(float("nan"))  # diverged: the trainer refused a non-finite loss
                continue
            acc[arm].append(target_accuracy(result.model, test))
            if arm == "source only":
                adabn(result.model, adapt)
                acc["AdaBN"].append(target_accuracy(result.model, test))
        print(f"seed {seed}: " + ", ".join(f"{a} {v[-1]:.3f}" for a, v in acc.items()), file=sys.stderr, flush=True)
    print(f"{args.seeds} seeds, {args.steps} steps; {time.process_time() - cpu0:.0f} s CPU, "
          f"{time.perf_counter() - t0:.0f} s wall; torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print("| arm | target accuracy per seed | mean ± sd | paired difference vs source only, 95 % t-interval |")
    print("| --- | --- | --- | --- |")
    for arm, values in acc.items():
        cells = ", ".join("diverged" if v != v else f"{v:.3f}" for v in values)
        kept = [v for v in values if v == v]
        spread = statistics.stdev(kept) if len(kept) > 1 else float("nan")
        mean = statistics.mean(kept) if kept else float("nan")
        row = f"| {arm} | {cells} | {mean:.3f} ± {spread:.3f} (n={len(kept)}) | "
        d = [a - b for a, b in zip(values, acc["source only"]) if a == a and b == b]
        if arm == "source only" or len(d) < 2:
            row += "- |"
        else:
            half = stats.t.ppf(0.975, len(d) - 1) * statistics.stdev(d) / len(d) ** 0.5
            m = statistics.mean(d)
            row += f"{m:+.3f} [{m - half:+.3f}, {m + half:+.3f}] |"
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
