"""U-Net on ISBI 2012 membranes on a CPU: training time and held-out Dice; step time by precision and layout.

Two modes:

``--speed``: one U-Net training step (forward, BCE + Dice, backward, Adam) on a batch of 256 px crops,
measured side by side for float32 / bf16 autocast and NCHW / NHWC (channels_last): median of
``--repeats`` after a warm-up step, printed as seconds per step and ratios to float32 NCHW.

default: the shipped ``isbi-unet`` recipe trained by :func:`dltricks.train.fit` (what ``dltricks train unet_small
--data isbi2012-membrane --recipe isbi-unet`` runs): ``unet`` with ``--base-channels`` (16 = ``unet_small``,
1.9 M parameters) trained for ``--steps`` Adam steps (cosine schedule, warm-up) on random 256 px crops of the
25 training slices (flips, 90-degree rotations, elastic deformation), bf16 + channels_last, then evaluated on
the 5 held-out slices: whole 512x512 slices, 256 px sliding windows (overlap 0.5, Gaussian blending), and
sliding windows + 8 flips. Writes ``results.json``, the weights (safetensors) and the predicted masks
(PNG, membrane black as in the labels) to ``--out``. Training time is reported as wall-clock seconds of the
training loop (data loading included, evaluation excluded) and as the CPU seconds of the process: on a shared
machine the wall time depends on the other jobs, the CPU time much less.

Usage::

    nice -n 10 python benchmarks/isbi_unet.py --threads 2 --out runs/isbi-unet      # ~20-40 min, shared CPU
    python benchmarks/isbi_unet.py --threads 1 --folds 0,1,2,3,4 --out runs/isbi-cv   # 5-fold CV, ~13 min a fold
    python benchmarks/isbi_unet.py --speed --threads 1
    python benchmarks/isbi_unet.py --figures runs/isbi-unet --out docs/img   # the docs' error and weight maps
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from dltricks.models import create_model
from dltricks.tasks.segmentation.evaluate import evaluate_segmentation, save_predicted_masks
from dltricks.tasks.segmentation.isbi import isbi2012_membrane_task
from dltricks.tasks.segmentation.losses import bce_dice_loss
from dltricks.train import fit, prepare
from dltricks.train.recipe import load_recipe
from dltricks.utils.io import atomic_write_json, atomic_write_with


def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "torch": torch.__version__, "threads": str(torch.get_num_threads()),
            "python": sys.version.split()[0], "date": time.strftime("%Y-%m-%d")}


def speed(args: argparse.Namespace) -> dict[str, float]:
    results = {}
    for amp in (False, True):
        for channels_last in (False, True):
            torch.manual_seed(0)
            model = create_model("unet", num_classes=1, base_channels=args.base_channels)
            x = torch.randn(args.batch_size, 1, args.crop_size, args.crop_size)
            y = (torch.rand_like(x) < 0.22).float()
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
                x = x.contiguous(memory_format=torch.channels_last)
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
            times = []
            for i in range(args.repeats + 1):
                start = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                    out = model(x)
                loss = bce_dice_loss(out.float(), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if i:  # the first step warms up the allocator and oneDNN kernels
                    times.append(time.perf_counter() - start)
            name = f"{'bf16' if amp else 'fp32'} {'NHWC' if channels_last else 'NCHW'}"
            results[name] = statistics.median(times)
    base = results["fp32 NCHW"]
    print(f"unet base {args.base_channels}, batch {args.batch_size} x {args.crop_size}^2, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    for name, t in results.items():
        print(f"  {name}: {t:.3f} s/step   speed-up x{base / t:.2f}")
    return results


def train_and_evaluate(args: argparse.Namespace, fold: int | None = None) -> dict[str, object]:
    out = Path(args.out) if fold is None else Path(args.out) / f"fold{fold}"
    out.mkdir(parents=True, exist_ok=True)
    data = {"crop_size": args.crop_size, "elastic": args.elastic, "fold": fold, "num_folds": args.num_folds,
            "border_weight": args.border_weight, "border_sigma": args.border_sigma,
            "balance_classes": args.balance_classes, "final_window": None, "final_tta": False}
    recipe = load_recipe("isbi-unet", [f"train.steps={args.steps}", f"train.batch_size={args.batch_size}",
                                       f"optim.lr={args.lr!r}", f"schedule.warmup_steps={args.warmup}",
                                       f"train.seed={args.seed}", "train.device=cpu", f"train.eval_every={args.steps}",
                                       *(f"data.{k}={json.dumps(v)}" for k, v in data.items())])
    model, task = prepare("unet", "isbi2012-membrane", recipe, data_dir=args.data_dir,
                          model_kwargs={"base_channels": args.base_channels})
    print(f"validation slices {', '.join(task.extra['val_slices'])}", flush=True)
    params = sum(p.numel() for p in model.parameters())
    print(f"unet base {args.base_channels} ({params:,} parameters), {args.steps} steps of {args.batch_size} x "
          f"{args.crop_size}^2 crops, elastic={args.elastic}, {torch.get_num_threads()} threads", flush=True)
    wall, cpu = time.perf_counter(), time.process_time()
    run = fit(model, task, recipe, log=lambda s: print(s, flush=True), progress=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    model = model.to(memory_format=torch.contiguous_format).eval()
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    metadata = {"model": "unet", "model_kwargs": json.dumps({"num_classes": 1, "in_chans": 1,
                                                             "base_channels": args.base_channels})}
    atomic_write_with(out / "unet_isbi.safetensors", lambda tmp: save_file(state, str(tmp), metadata=metadata))
    evals = {}
    for name, kwargs in (("whole_slice", {}), ("sliding_256", {"window": 256}),
                         ("sliding_256_tta", {"window": 256, "tta": True})):
        start = time.perf_counter()
        evals[name] = evaluate_segmentation(model, task.val_loader, **kwargs)
        evals[name]["seconds"] = time.perf_counter() - start
        print(name, json.dumps({k: round(v, 4) for k, v in evals[name].items()}), flush=True)
    # The training slices themselves, whole and unaugmented: how well the model fits the labels it learnt from.
    evals["train_whole_slice"] = evaluate_segmentation(model, task.extra["train_eval_loader"])
    print("train_whole_slice", json.dumps({k: round(v, 4) for k, v in evals["train_whole_slice"].items()}),
          flush=True)
    save_predicted_masks(model, task, out / "masks", window=256, tta=True)
    result = {"machine": machine(), "config": {**vars(args), "fold": fold},
              "val_slices": list(task.extra["val_slices"]), "params": params,
              "train_seconds": sum(r["train_time_s"] for r in run.history),
              "train_wall_seconds": wall, "train_cpu_seconds": cpu, "steps": run.final["steps"],
              "final_loss": run.history[-1]["train_loss"], "eval": evals}
    atomic_write_json(out / "results.json", result, indent=1)
    print(json.dumps({"train_seconds": round(result["train_seconds"], 1), "wall": round(wall, 1), "cpu": round(cpu, 1),
                      "dice_tta": round(evals["sliding_256_tta"]["dice"], 4)}))
    return result


CV_KEYS = ("dice", "dice_background", "dice_tolerance1", "pixel_accuracy", "boundary_f1", "isbi_pixel_error")


def summarize_folds(out: Path) -> dict[str, object]:
    """Mean and spread over the ``fold*/results.json`` under ``out`` (whole-slice evaluation and train fit)."""
    folds = sorted(out.glob("fold*/results.json"))
    if not folds:
        raise SystemExit(f"no fold*/results.json under {out}")
    runs = [json.loads(p.read_text()) for p in folds]
    summary: dict[str, object] = {"folds": [r["config"]["fold"] for r in runs]}
    for split in ("whole_slice", "train_whole_slice"):
        table = {}
        for key in CV_KEYS:
            values = [r["eval"][split][key] for r in runs if key in r["eval"].get(split, {})]
            if values:
                table[key] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
                              "per_fold": values}
        summary[split] = table
    atomic_write_json(out / "cv.json", summary, indent=1)
    print(f"{len(runs)} folds: " + ", ".join(f"{k} {v['mean']:.4f} ({v['min']:.4f}-{v['max']:.4f})"
                                            for k, v in summary["whole_slice"].items()))
    return summary


def figures(args: argparse.Namespace) -> list[Path]:
    """The figures of docs/segmentation.md: the error map of held-out slice ``--slice`` predicted by the model
    in ``--figures RUN`` (sliding windows + flips, as in the results table) and U-Net's weight map of the
    first training slice."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from dltricks.experiments.segmentation import plot_error_map, plot_weight_map
    from dltricks.tasks.segmentation.inference import predict_sliding_window
    from dltricks.tasks.segmentation.weights import class_balance_weights, unet_weight_map

    run = Path(args.figures)
    weights_file = run / "unet_isbi.safetensors"
    with safe_open(str(weights_file), "pt") as f:
        model_kwargs = json.loads(f.metadata()["model_kwargs"])
    model = create_model("unet", **model_kwargs)
    model.load_state_dict(load_file(str(weights_file)))
    model.eval()
    task = isbi2012_membrane_task(batch_size=1, data_dir=args.data_dir)
    val_ids = list(task.extra["val_slices"])
    if str(args.slice) not in val_ids:
        raise SystemExit(f"--slice {args.slice}: expected one of the held-out slices {', '.join(val_ids)}")
    out = Path(args.out)
    std, mean = task.extra["std"][0], task.extra["mean"][0]
    for i, (x, y) in enumerate(task.val_loader.iter_epoch(0)):
        if val_ids[i] != str(args.slice):
            continue
        with torch.no_grad():
            logits = predict_sliding_window(model, x, window=256, overlap=0.5, tta=True)
        image = x[0, 0] * std + mean  # back to [0, 1]
        paths = [plot_error_map(image, y[0, 0].bool(), logits[0, 0] > 0, out / f"isbi_unet_slice{args.slice}.png",
                                title=f"U-Net ({sum(p.numel() for p in model.parameters()):,} parameters), "
                                      f"held-out slice {args.slice}")]
    train = task.train_loader.data
    membrane = train.masks[0, 0].bool()
    weights = unet_weight_map(membrane, w0=10.0, sigma=5.0, class_weights=class_balance_weights(train.masks))
    paths.append(plot_weight_map(train.images[0, 0].float() / 255, membrane, weights, out / "isbi_weight_map.png",
                                 title="U-Net weight map of training slice 0: w0 = 10, sigma = 5 px, class balance"))
    for path in paths:
        print(f"wrote {path}")
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--speed", action="store_true", help="only measure the step time of fp32/bf16 x NCHW/NHWC")
    p.add_argument("--figures", default=None, metavar="RUN",
                   help="only draw the docs figures (error map of --slice, weight map) from the model in RUN")
    p.add_argument("--slice", type=int, default=27, help="held-out slice of the error-map figure")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--base-channels", type=int, default=16)
    p.add_argument("--crop-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--elastic", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--border-weight", type=float, default=0.0,
                   help="w0 of U-Net's weight map (paper: 10); 0 = unweighted cross-entropy")
    p.add_argument("--border-sigma", type=float, default=5.0)
    p.add_argument("--balance-classes", action="store_true", help="inverse class frequency weights (U-Net's w_c)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--folds", default=None,
                   help="k-fold cross-validation: comma-separated folds to train (e.g. 0,1,2,3,4), each into "
                        "OUT/foldK; then OUT/cv.json summarises every fold found there")
    p.add_argument("--num-folds", type=int, default=5)
    p.add_argument("--out", default="runs/isbi-unet")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.figures:
        figures(args)
    elif args.speed:
        speed(args)
    elif args.folds:
        for fold in (int(f) for f in args.folds.split(",")):
            train_and_evaluate(args, fold)
        summarize_folds(Path(args.out))
    else:
        train_and_evaluate(args)


if __name__ == "__main__":
    main()
