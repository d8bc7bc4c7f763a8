"""Few-shot and zero-shot accuracy on digit classes never seen in training (issue 19; docs/fewshot.md).

Few-shot: every method trains on the 10,000 embedded MNIST images of digits 0-4 and is tested on 600
5-way episodes of digits 5-9 (1 shot and 5 shots, 15 queries per class), then on 600 one-shot episodes of
scikit-learn's 8x8 digits 5-9 put into the MNIST frame (a second domain, never trained on). Zero-shot: an
attribute model trained on the images of the seven seen digits is tested on the embedded validation split,
unseen digits 3, 7, 8 (:mod:`dltricks.fewshot.zeroshot`). Accuracies are means over episodes (per-class
means for zero-shot) with the 95 % interval over episodes; one seed per line unless ``--seeds``.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/fewshot_mnist.py --methods prototypical maml --out results.json
    OMP_NUM_THREADS=1 python benchmarks/fewshot_mnist.py --methods dap compatibility
    python benchmarks/fewshot_mnist.py --summarise results.json --plot docs/img/fewshot_seeds.png

``--summarise`` reads such a file back: per method and column, the mean and the standard deviation across
training seeds, and a plot of every seed's accuracy with its 95 % episode interval (docs/fewshot.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from dltricks.data.mnist import load_mnist_embedded
from dltricks.data.shift import load_sklearn_digits
from dltricks.fewshot import EpisodeSampler, evaluate_episodes
from dltricks.fewshot.baseline import FinetunedHead, class_subset, train_classifier
from dltricks.fewshot.episodes import create_encoder
from dltricks.fewshot.maml import fit_meta
from dltricks.fewshot.metric import matching_logits, nearest_neighbour_logits, train_episodic
from dltricks.fewshot.zeroshot import DIGIT_ATTRIBUTES, UNSEEN_DIGITS, evaluate_zero_shot, train_attribute_model
from dltricks.models import create_model
from dltricks.train.recipe import load_recipe

HYPER = {
    "widths": (16, 32, 64),  # small_cnn stages: conv-BN-ReLU, max-pool, global average pooling
    "train_classes": [0, 1, 2, 3, 4],
    "test_classes": [5, 6, 7, 8, 9],
    "episodes": 300,  # training episodes (5-way 1-shot, 15 queries) = optimizer steps, Adam lr 1e-3
    "test_episodes": 600,
    "baseline_epochs": 2,  # the fine-tuned baseline: epochs of plain classification over digits 0-4
    "meta_recipe": "maml-fewshot",  # MAML / first-order MAML: 1 inner step of 0.4, 3 at test (recipe section maml)
    "reptile": {"maml.method": "reptile", "maml.inner_steps": 3, "maml.inner_lr": 0.1, "maml.eval_steps": 3,
                "optim.name": "sgd", "optim.lr": 1.0, "optim.momentum": 0.0},  # outer SGD, epsilon = 1
    "zsl_epochs": 2,  # attribute model: epochs over the 8,000 embedded training images of the seen digits
}
COLUMNS = ("mnist_1shot", "mnist_5shot", "digits8x8_1shot")  # the test columns of the table, in order
FEWSHOT = ("prototypical", "matching", "siamese", "baseline", "maml", "fomaml", "reptile")
ZEROSHOT = ("dap", "compatibility")


def _classify(method: str, learner: torch.nn.Module):
    if method in ("maml", "fomaml", "reptile"):
        return lambda m, ep: m.episode_logits(ep)
    if method == "baseline":
        return FinetunedHead()
    return {"matching": matching_logits, "siamese": nearest_neighbour_logits}.get(method, None)


def run_fewshot(method: str, seed: int, columns: tuple[str, ...] = COLUMNS) -> dict:
    data = load_mnist_embedded("all")
    x, y = data.images, data.labels
    digits = load_sklearn_digits()
    train = EpisodeSampler(x, y, classes=HYPER["train_classes"], ways=5, shots=1, queries=15, seed=seed)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    if method in ("maml", "fomaml", "reptile"):
        net = create_model("small_cnn", num_classes=5, widths=HYPER["widths"])
        changes = HYPER["reptile"] if method == "reptile" else {"maml.method": method}
        recipe = load_recipe(HYPER["meta_recipe"], [("train.steps", HYPER["episodes"]), *changes.items()])
        model, _ = fit_meta(net, train, recipe)
    elif method == "baseline":
        net = create_model("small_cnn", num_classes=5, widths=HYPER["widths"])
        train_classifier(net, class_subset(x, y, HYPER["train_classes"], name="digits 0-4"),
                         epochs=HYPER["baseline_epochs"], seed=seed)
        net.reset_classifier(0)
        model = net
    else:
        model = create_encoder("small_cnn", widths=HYPER["widths"])
        train_episodic(model, train, method=method, episodes=HYPER["episodes"])
    train_s = time.perf_counter() - t0
    classify = _classify(method, model)
    kw = {"classify": classify} if classify is not None else {}
    n = HYPER["test_episodes"]
    out = {"method": method, "seed": seed, "train_s": round(train_s, 1)}
    for name, images, labels, shots in (("mnist_1shot", x, y, 1), ("mnist_5shot", x, y, 5),
                                        ("digits8x8_1shot", digits.images, digits.labels, 1)):
        if name not in columns:
            continue
        sampler = EpisodeSampler(images, labels, classes=HYPER["test_classes"], ways=5, shots=shots, queries=15,
                                 seed=10_000 + seed)
        r = evaluate_episodes(model, sampler, episodes=n, **kw)
        out[name] = {"accuracy": r["accuracy"], "ci95": r["ci95"], "time_s": round(r["time_s"], 1)}
    return out


def run_zeroshot(method: str, seed: int) -> dict:
    seen = [c for c in range(10) if c not in UNSEEN_DIGITS]
    train, val = load_mnist_embedded("train"), load_mnist_embedded("val")
    torch.manual_seed(seed)
    net = create_model("small_cnn", num_classes=DIGIT_ATTRIBUTES.shape[1], widths=HYPER["widths"])
    t0 = time.perf_counter()
    train_attribute_model(net, class_subset(train.images, train.labels, seen, name="seen digits"),
                          DIGIT_ATTRIBUTES[seen], method=method, epochs=HYPER["zsl_epochs"], seed=seed)
    train_s = time.perf_counter() - t0
    r = evaluate_zero_shot(net, val.images, val.labels, seen=seen, unseen=list(UNSEEN_DIGITS), method=method)
    return {"method": method, "seed": seed, "train_s": round(train_s, 1), **r}


def summarise(path: Path) -> dict[str, dict[str, dict]]:
    """``{method: {column: {"seeds", "accuracy", "ci95", "mean", "std"}}}`` from a results file (one run a line)."""
    table: dict[str, dict[str, dict]] = {}
    for line in path.read_text().splitlines():
        run = json.loads(line)
        for column in COLUMNS:
            if column in run:
                cell = table.setdefault(run["method"], {}).setdefault(column, {"seeds": [], "accuracy": [], "ci95": []})
                cell["seeds"].append(run["seed"])
                cell["accuracy"].append(run[column]["accuracy"])
                cell["ci95"].append(run[column]["ci95"])
    for columns in table.values():
        for cell in columns.values():
            cell["mean"] = statistics.fmean(cell["accuracy"])
            cell["std"] = statistics.stdev(cell["accuracy"]) if len(cell["accuracy"]) > 1 else None
    return table


def plot(table: dict[str, dict[str, dict]], path: Path, column: str = "mnist_1shot") -> None:
    """Every seed's accuracy with its 95 % episode interval, and the mean over seeds, per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in FEWSHOT if column in table.get(m, {})]
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for i, method in enumerate(methods):
        cell = table[method][column]
        n = len(cell["accuracy"])
        xs = [i + 0.12 * (j - (n - 1) / 2) for j in range(n)]
        ax.errorbar(xs, [100 * a for a in cell["accuracy"]], yerr=[100 * c for c in cell["ci95"]], fmt="o",
                    color="tab:blue", capsize=3, ms=4, label="one training seed, 95 % episode interval" if i == 0
                    else None)
        ax.hlines(100 * cell["mean"], i - 0.3, i + 0.3, color="black", label="mean over seeds" if i == 0 else None)
    ax.axhline(20, color="grey", ls=":", label="chance (5-way)")
    ax.set_xticks(range(len(methods)), methods)
    ax.set_ylabel("query accuracy (%)")
    shown = {"mnist_1shot": "MNIST 5-way 1-shot", "mnist_5shot": "MNIST 5-way 5-shot",
             "digits8x8_1shot": "8x8 digits 5-way 1-shot"}[column]
    ax.set_title(f"{shown}: trained on digits 0-4, tested on 5-9", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _print_summary(table: dict[str, dict[str, dict]]) -> None:
    print("| method | column | seeds | accuracy per seed (± 95 % episode interval) | mean ± std over seeds |")
    print("| --- | --- | --- | --- | --- |")
    for method, columns in table.items():
        for column, cell in columns.items():
            per_seed = ", ".join(f"{100 * a:.1f} ± {100 * c:.1f}" for a, c in zip(cell["accuracy"], cell["ci95"]))
            spread = f"{100 * cell['mean']:.1f} ± {100 * cell['std']:.1f}" if cell["std"] is not None else "n = 1"
            print(f"| {method} | {column} | {len(cell['seeds'])} | {per_seed} | {spread} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(FEWSHOT + ZEROSHOT), choices=FEWSHOT + ZEROSHOT)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", help="append one JSON line per run to this file")
    parser.add_argument("--episodes", type=int, default=HYPER["episodes"], help="training episodes")
    parser.add_argument("--test-episodes", type=int, default=HYPER["test_episodes"])
    parser.add_argument("--columns", nargs="+", default=list(COLUMNS), choices=COLUMNS,
                        help="few-shot test columns to evaluate (each costs 600 episodes)")
    parser.add_argument("--summarise", type=Path, help="summarise this results file instead of running")
    parser.add_argument("--plot", type=Path, help="with --summarise: write the per-seed plot here")
    parser.add_argument("--epochs", type=int, default=HYPER["zsl_epochs"], help="baseline and zero-shot epochs")
    args = parser.parse_args()
    if args.summarise:
        table = summarise(args.summarise)
        _print_summary(table)
        if args.plot:
            plot(table, args.plot)
        return
    HYPER.update(episodes=args.episodes, test_episodes=args.test_episodes, zsl_epochs=args.epochs,
                 baseline_epochs=args.epochs)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} thread(s)", flush=True)
    for method in args.methods:
        for seed in args.seeds:
            t0 = time.perf_counter()
            if method in ZEROSHOT:
                result = run_zeroshot(method, seed)
            else:
                result = run_fewshot(method, seed, tuple(args.columns))
            result["total_s"] = round(time.perf_counter() - t0, 1)
            result["hyper"] = HYPER
            print(json.dumps(result), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
