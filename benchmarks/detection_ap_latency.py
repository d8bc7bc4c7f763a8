"""AP against latency of the detectors, from the stored full-mode evidence of the detection tips.

Every detection tip (``dltricks verify --full --only "det.*"``) trains its detectors on the MNIST-detection
scenes with one recipe (3 epochs, 4,000 scenes, paired seeds 0-4) and records, per seed, the COCO AP on the 500
validation scenes and the CPU time of ``predict`` on one scene (one thread, median of 20 scenes). This script
collects those numbers from ``src/dltricks/tips/evidence_base/det.*.json`` (one point per model and setting,
taken from the first tip that trained it), prints them as a table and draws ``docs/img/detection_ap_latency.png``.

The latencies come from different processes and days (each record's provenance says when and at which
commit); CPU time is robust to the load of the shared machine but not to everything, so compare latencies
within one tip (where both arms are timed in the same worker) before comparing across tips.

Usage::

    python benchmarks/detection_ap_latency.py [--out docs/img/detection_ap_latency.png]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from dltricks.tasks.detection.draw import plot_ap_latency

ROOT = Path(__file__).resolve().parents[1]
# (tip, arm) -> the label of the point; the first record holding a model's arm gives its numbers.
ARMS = [("det.single-shot", "RetinaNet (one stage)", "RetinaNet (FPN, focal loss)"),
        ("det.focal-loss", "focal loss", "RetinaNet (FPN, focal loss)"),
        ("det.focal-loss", "cross-entropy", "RetinaNet, plain BCE"),
        ("det.anchor-free", "FCOS", "FCOS (anchor-free)"),
        ("det.fpn", "single scale (P4)", "RetinaNet, stride-16 map only"),
        ("det.single-shot", "Faster R-CNN (two stages)", "Faster R-CNN (two stages)"),
        ("det.sliding-window", "sliding window", "sliding windows (1,793 per scene)")]


def collect(base: Path = ROOT / "src" / "dltricks" / "tips" / "evidence_base") -> list[dict]:
    points, seen = [], set()
    for tip, arm, label in ARMS:
        path = base / f"{tip}.json"
        if label in seen or not path.exists():
            continue
        record = json.loads(path.read_text())
        values = record["result"]["evidence"]["arms"].get(arm)
        if values is None or "latency_ms" not in values:  # stored before the tips timed predict
            print(f"no latency stored for {label!r} in {tip}")
            continue
        seen.add(label)
        points.append({"label": label, "tip": tip, "ap": values["map"], "latency": values["latency_ms"],
                       "commit": record["provenance"]["commit"][:7], "date": record["provenance"]["date"]})
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "img" / "detection_ap_latency.png"))
    args = parser.parse_args()
    points = collect()
    print(f"{'model':38s} {'n':>2s} {'COCO AP':>15s} {'CPU ms / scene':>16s}  from")
    for p in points:
        ap, lat = p["ap"], p["latency"]
        print(f"{p['label']:38s} {len(ap):2d} {statistics.mean(ap):7.3f} +- {statistics.stdev(ap):.3f} "
              f"{statistics.mean(lat):8.1f} +- {statistics.stdev(lat):4.1f}  {p['tip']} ({p['commit']}, {p['date']})")
    print(f"plot: {plot_ap_latency(points, args.out)}")


if __name__ == "__main__":
    main()
