"""Time to 99.0 % MNIST test accuracy: the classic PyTorch-examples recipe vs a recipe built from the tricks.

(a) ``classic``: the network and recipe of the PyTorch examples MNIST script: conv32-conv64-maxpool-
    dropout-fc128-dropout-fc10 (``mnist_example_cnn``, 1.2 M parameters, 12 M multiply-adds per image),
    Adadelta lr 1.0, StepLR gamma 0.7 per epoch, batch 64 (recipe ``mnist-classic``).
(b) ``tricks``: a batch-norm CNN sized for the CPU (``speedrun_cnn``: conv-BN-ReLU-maxpool x 3, 16-32-64
    channels, 29 k parameters, 1.9 M multiply-adds), one epoch of one-cycle SGD with Nesterov momentum
    at a high peak learning rate (possible thanks to BN), weight decay without norms/biases, label
    smoothing 0.1, batch 128 (recipe ``mnist-speedrun``).

Same harness for both: ``dltricks.train.fit`` on the official 60,000 training images (read from the IDX
files, ``--data-dir`` or the default locations), evaluated on the 10,000 test images after every epoch;
training stops at the first evaluation >= ``--target``. "Time to target" is the training time up to that
evaluation (evaluation excluded; the wall time with evaluations is printed too). Both run in the same
process, one after the other, with the same number of torch threads. As evaluation happens once per
epoch, the classic recipe may have crossed the target during its last epoch: the time of its previous
epochs is a lower bound, and we print the speed-up for both.

Usage: ``python benchmarks/mnist_speedrun.py [--threads 2] [--data-dir ../shared/data] [--only tricks]``
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from dltricks.models import create_model
from dltricks.train import build_task, fit, load_recipe, seed_everything

RECIPES = {
    "classic": ("mnist_example_cnn", "mnist-classic"),
    "tricks": ("speedrun_cnn", "mnist-speedrun"),
}


def macs_per_image(model: torch.nn.Module) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    model = model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 1, 28, 28))
    return counter.get_total_flops() // 2


def time_to_target(name: str, *, target: float, data_dir: str | None, seed: int, max_epochs: int | None) -> dict:
    model_name, recipe_name = RECIPES[name]
    overrides = [f"train.seed={seed}"]
    if max_epochs:
        overrides.append(f"train.epochs={max_epochs}")
    recipe = load_recipe(recipe_name, overrides)
    task = build_task("mnist", batch_size=recipe.train.batch_size, eval_batch_size=1000, data_dir=data_dir,
                      seed=seed, augment=recipe.augment if recipe.augment.active else None)
    seed_everything(seed)
    model = create_model(model_name, num_classes=10, in_chans=1)
    params = sum(p.numel() for p in model.parameters())
    macs = macs_per_image(model)
    seed_everything(seed)
    model = create_model(model_name, num_classes=10, in_chans=1)
    print(f"[{name}] {model_name}: {params:,} parameters, {macs / 1e6:.1f} M MACs/image, recipe {recipe_name} "
          f"({recipe.optim.name} lr {recipe.optim.lr:g}, {recipe.schedule.name}, batch {recipe.train.batch_size}, "
          f"up to {recipe.train.epochs} epochs)", flush=True)

    def stop_at_target(record: dict) -> bool:
        print(f"[{name}]   epoch {record['epoch']}: test acc {record['val_accuracy']:.2%}, train time "
              f"{record['train_time_s']:.1f} s, {record['images_per_s']:.0f} img/s", flush=True)
        return record["val_accuracy"] >= target

    t0 = time.perf_counter()
    result = fit(model, task, recipe, progress=False, on_epoch=stop_at_target)
    wall = time.perf_counter() - t0
    history = result.history
    reached = next((i for i, r in enumerate(history) if r["val_accuracy"] >= target), None)
    upto = history[: (reached if reached is not None else len(history) - 1) + 1]
    return {"name": name, "model": model_name, "recipe": recipe_name, "params": params, "macs": macs,
            "reached": reached is not None, "epochs": len(upto), "accuracy": upto[-1]["val_accuracy"],
            "train_time": sum(r["train_time_s"] for r in upto),
            "train_time_before_last": sum(r["train_time_s"] for r in upto[:-1]),
            "wall_time": wall, "images_per_s": sum(r["images_per_s"] for r in upto) / len(upto)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--data-dir", default=None, help="folder with the MNIST IDX files (default: standard places)")
    parser.add_argument("--target", type=float, default=0.99, help="test accuracy to reach")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=sorted(RECIPES), default=None, help="run one recipe only")
    parser.add_argument("--max-epochs-classic", type=int, default=14, help="give up on the classic recipe after this")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"MNIST speedrun to {args.target:.1%} test accuracy; torch {torch.__version__}, {args.threads} thread(s), "
          f"{platform.processor() or platform.machine()}, seed {args.seed}")
    rows = []
    for name in ([args.only] if args.only else ["tricks", "classic"]):
        rows.append(time_to_target(name, target=args.target, data_dir=args.data_dir, seed=args.seed,
                                   max_epochs=args.max_epochs_classic if name == "classic" else None))
    print(f"\n{'recipe':8s} {'model':18s} {'params':>9s} {'MMACs':>6s} {'epochs':>6s} {'test acc':>8s} "
          f"{'train s':>8s} {'wall s':>7s} {'img/s':>7s}")
    for r in rows:
        print(f"{r['name']:8s} {r['model']:18s} {r['params']:9,d} {r['macs'] / 1e6:6.1f} {r['epochs']:6d} "
              f"{r['accuracy']:8.2%} {r['train_time']:8.1f} {r['wall_time']:7.1f} {r['images_per_s']:7.0f}"
              + ("" if r["reached"] else "  (target not reached)"))
    if len(rows) == 2 and all(r["reached"] for r in rows):
        fast, slow = rows[0], rows[1]
        print(f"speed-up of tricks over classic (training time to {args.target:.1%}): "
              f"{slow['train_time'] / fast['train_time']:.1f}x "
              "(lower bound, classic's epochs before the crossing: "
              f"{slow['train_time_before_last'] / fast['train_time']:.1f}x)")


if __name__ == "__main__":
    main()
