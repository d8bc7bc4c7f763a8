"""Few-shot and zero-shot accuracy on digit classes never seen in training (issue 19; docs/transfer.md).

Few-shot: every method trains on the 10,000 embedded MNIST images of digits 0-4 and is tested on 600
5-way episodes of digits 5-9 (1 shot and 5 shots, 15 queries per class), then on 600 one-shot episodes of
scikit-learn's 8x8 digits 5-9 put into the MNIST frame (a second domain, never trained on). Zero-shot: an
attribute model trained on the images of the seven seen digits is tested on the embedded validation split,
unseen digits 3, 7, 8 (:mod:`dltricks.fewshot.zeroshot`). Accuracies are means over episodes (per-class
means for zero-shot) with the 95 % interval over episodes; one seed per line unless ``--seeds``.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/fewshot_mnist.py --methods prototypical maml --out results.json
    OMP_NUM_THREADS=1 python benchmarks/fewshot_mnist.py --methods dap compatibility
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from dltricks.data.mnist import load_mnist_embedded
from dltricks.data.shift import load_sklearn_digits
from dltricks.fewshot import EpisodeSampler, evaluate_episodes
from dltricks.fewshot.baseline import FinetunedHead, class_subset, train_classifier
from dltricks.fewshot.episodes import create_encoder
from dltricks.fewshot.maml import MetaLearner, train_meta
from dltricks.fewshot.metric import matching_logits, nearest_neighbour_logits, train_episodic
from dltricks.fewshot.zeroshot import DIGIT_ATTRIBUTES, UNSEEN_DIGITS, evaluate_zero_shot, train_attribute_model
from dltricks.models import create_model

HYPER = {
    "widths": (16, 32, 64),  # small_cnn stages: conv-BN-ReLU, max-pool, global average pooling
    "train_classes": [0, 1, 2, 3, 4],
    "test_classes": [5, 6, 7, 8, 9],
    "episodes": 300,  # training episodes (5-way 1-shot, 15 queries) = optimizer steps, Adam lr 1e-3
    "test_episodes": 600,
    "baseline_epochs": 2,  # the fine-tuned baseline: epochs of plain classification over digits 0-4
    "maml_inner": {"inner_steps": 1, "inner_lr": 0.4, "eval_steps": 3},  # Finn et al.'s Omniglot step size
    "reptile": {"inner_steps": 3, "inner_lr": 0.1, "eval_steps": 3, "outer": "sgd", "outer_lr": 1.0},
    "zsl_epochs": 2,  # attribute model: epochs over the 8,000 embedded training images of the seen digits
}
FEWSHOT = ("prototypical", "matching", "siamese", "baseline", "maml", "fomaml", "reptile")
ZEROSHOT = ("dap", "compatibility")


def _classify(method: str, learner: torch.nn.Module):
    if method in ("maml", "fomaml", "reptile"):
        return lambda m, ep: m.episode_logits(ep)
    if method == "baseline":
        return FinetunedHead()
    return {"matching": matching_logits, "siamese": nearest_neighbour_logits}.get(method, None)


def run_fewshot(method: str, seed: int) -> dict:
    data = load_mnist_embedded("all")
    x, y = data.images, data.labels
    digits = load_sklearn_digits()
    train = EpisodeSampler(x, y, classes=HYPER["train_classes"], ways=5, shots=1, queries=15, seed=seed)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    if method in ("maml", "fomaml", "reptile"):
        net = create_model("small_cnn", num_classes=5, widths=HYPER["widths"])
        if method == "reptile":
            r = HYPER["reptile"]
            model = MetaLearner(net, method="reptile", inner_steps=r["inner_steps"], inner_lr=r["inner_lr"],
                                eval_steps=r["eval_steps"])
            train_meta(model, train, episodes=HYPER["episodes"], lr=r["outer_lr"], optimizer=r["outer"])
        else:
            model = MetaLearner(net, method=method, **HYPER["maml_inner"])
            train_meta(model, train, episodes=HYPER["episodes"])
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(FEWSHOT + ZEROSHOT), choices=FEWSHOT + ZEROSHOT)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", help="append one JSON line per run to this file")
    parser.add_argument("--episodes", type=int, default=HYPER["episodes"], help="training episodes")
    parser.add_argument("--test-episodes", type=int, default=HYPER["test_episodes"])
    parser.add_argument("--epochs", type=int, default=HYPER["zsl_epochs"], help="baseline and zero-shot epochs")
    args = parser.parse_args()
    HYPER.update(episodes=args.episodes, test_episodes=args.test_episodes, zsl_epochs=args.epochs,
                 baseline_epochs=args.epochs)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} thread(s)", flush=True)
    for method in args.methods:
        for seed in args.seeds:
            t0 = time.perf_counter()
            result = run_zeroshot(method, seed) if method in ZEROSHOT else run_fewshot(method, seed)
            result["total_s"] = round(time.perf_counter() - t0, 1)
            result["hyper"] = HYPER
            print(json.dumps(result), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
