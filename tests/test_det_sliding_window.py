"""The sliding-window detector: its window grid, window labels and training batch against loops, its loss against
a hand computation, and ``fit`` passing it the targets."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from dltricks import create_model
from dltricks.errors import ModelError
from dltricks.layers.boxes import encode_boxes
from dltricks.models.detection.faster_rcnn import ROI_BOX_WEIGHTS
from dltricks.models.detection.sliding_window import SlidingWindow, label_windows, window_grid
from dltricks.tasks import build_task
from dltricks.tasks.detection import DetectionLoss
from dltricks.train import fit


def _iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


@given(h=st.integers(4, 40), w=st.integers(4, 40), stride=st.integers(1, 7),
       sizes=st.lists(st.integers(2, 30), min_size=1, max_size=4))
@settings(max_examples=60, deadline=None)
def test_window_grid_is_every_fitting_window_on_the_stride_grid(h: int, w: int, stride: int, sizes: list[int]) -> None:
    expected = [[x, y, x + s, y + s] for s in sizes for y in range(0, h - s + 1, stride)
                for x in range(0, w - s + 1, stride)]
    got = window_grid((h, w), sizes, stride)
    assert got.shape == (len(expected), 4)
    assert got.tolist() == expected


def test_default_grid_of_a_64px_scene_has_1793_windows() -> None:
    assert len(create_model("sliding_window_tiny").windows((64, 64))) == 1793


@given(seed=st.integers(0, 10_000), boxes=st.integers(0, 4), bg_iou=st.sampled_from([0.3, 0.5]))
@settings(max_examples=40, deadline=None)
def test_window_labels_match_a_loop(seed: int, boxes: int, bg_iou: float) -> None:
    g = torch.Generator().manual_seed(seed)
    windows = window_grid((32, 32), (8, 12), 4)
    xy = torch.rand(boxes, 2, generator=g) * 24
    wh = 2 + torch.rand(boxes, 2, generator=g) * 12
    gt = torch.cat([xy, xy + wh], dim=1)
    labels = torch.randint(0, 10, (boxes,), generator=g)
    classes, best, best_iou = label_windows(windows, gt, labels, 10, bg_iou=bg_iou)
    for n, win in enumerate(windows.tolist()):
        ious = [_iou(win, b) for b in gt.tolist()]
        top = max(ious, default=0.0)
        want = 10 if top < bg_iou else (-1 if top < 0.5 else int(labels[ious.index(top)]))
        assert int(classes[n]) == want, (n, ious)
        assert math.isclose(float(best_iou[n]), top, abs_tol=1e-6)
        if ious:
            assert math.isclose(ious[int(best[n])], top, abs_tol=1e-6)


def test_a_training_step_classifies_a_balanced_sample_of_windows() -> None:
    torch.manual_seed(0)
    model = create_model("sliding_window_tiny", train_windows=64).train()
    targets = torch.tensor([[[10.0, 10.0, 30.0, 34.0, 3.0], [0, 0, 0, 0, -1]],
                            [[40.0, 20.0, 58.0, 44.0, 7.0], [5.0, 40.0, 25.0, 60.0, 1.0]]])
    out = model(torch.rand(2, 1, 64, 64), targets=targets)
    assert out["windows"].shape == (2, 64, 4) and out["logits"].shape == (2, 64, 10)
    grid = {tuple(w) for w in model.windows((64, 64)).tolist()}
    for i in range(2):
        assert {tuple(w) for w in out["windows"][i].tolist()} <= grid
        assert len({tuple(w) for w in out["windows"][i].tolist()}) == 64  # without replacement
        t = targets[i][targets[i][:, 4] >= 0]
        classes, _, iou = label_windows(out["windows"][i], t[:, :4], t[:, 4], 10)
        foreground = int(((classes >= 0) & (classes < 10)).sum())
        near = int(((classes == 10) & (iou >= 0.1)).sum())
        assert 1 <= foreground <= 16 and 1 <= near <= 32  # a quarter foreground, a half near misses at most
        assert int((classes == 10).sum()) == 64 - foreground  # none ignored
    # Without targets (evaluation, prediction) every window is classified.
    assert model(torch.rand(2, 1, 64, 64))["windows"].shape == (2, 1793, 4)
    assert model.eval()(torch.rand(1, 1, 64, 64), targets=targets[:1])["windows"].shape == (1, 1793, 4)


def test_loss_is_cross_entropy_plus_smooth_l1_over_the_sampled_windows() -> None:
    torch.manual_seed(0)
    windows = torch.tensor([[0.0, 0.0, 16.0, 16.0], [32.0, 32.0, 48.0, 48.0], [2.0, 0.0, 18.0, 16.0]])
    logits = torch.randn(1, 3, 3)  # K = 2 classes + background
    deltas = torch.randn(1, 3, 4)
    out = {"windows": windows[None], "logits": logits[..., :2], "background_logits": logits[..., 2:],
           "window_deltas": deltas}
    box = torch.tensor([[0.0, 0.0, 16.0, 16.0, 1.0]])
    loss = DetectionLoss(2)(out, box[None])
    # windows 0 and 2 (IoU 1 and 0.78) are class 1, window 1 (IoU 0) background: all three sampled
    ce = F.cross_entropy(logits[0], torch.tensor([1, 2, 1]), reduction="sum")
    target = encode_boxes(box[:, :4].expand(2, -1), windows[[0, 2]], ROI_BOX_WEIGHTS)
    l1 = F.smooth_l1_loss(deltas[0, [0, 2]], target, beta=1 / 9, reduction="sum")
    assert torch.allclose(loss, (ce + l1) / 3, atol=1e-6)


def test_decoding_shifts_each_window_by_its_deltas() -> None:
    model = create_model("sliding_window_tiny").eval()
    out = model(torch.rand(1, 1, 64, 64))
    boxes, scores = model.decode({**out, "window_deltas": torch.zeros_like(out["window_deltas"])})
    assert torch.equal(boxes, out["windows"]) and scores.shape == (1, 1793, 10)
    all_logits = torch.cat([out["logits"], out["background_logits"]], dim=-1)
    assert torch.allclose(scores.sum(-1) + all_logits.softmax(-1)[..., -1], torch.ones(1, 1793), atol=1e-6)
    plain = create_model("sliding_window_tiny", regress=False).eval()
    assert "window_deltas" not in plain(torch.rand(1, 1, 64, 64))


def test_fit_gives_the_targets_to_a_model_that_samples_from_them(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, ...]] = []
    original = SlidingWindow.sample_windows

    def spy(self, windows, targets):
        calls.append(tuple(targets.shape))
        return original(self, windows, targets)

    monkeypatch.setattr(SlidingWindow, "sample_windows", spy)
    torch.manual_seed(0)
    task = build_task("mnist-detection", batch_size=4, eval_batch_size=4, train_scenes=8, val_scenes=4)
    model = create_model("sliding_window_tiny", num_classes=task.num_classes, in_chans=1)
    recipe = {"optim": {"name": "adamw", "lr": 2e-3}, "schedule": {"name": "constant"},
              "train": {"epochs": 1, "batch_size": 4, "eval_batch_size": 4, "device": "cpu", "eval_every": 1}}
    result = fit(model, task, recipe)
    assert len(calls) == 2 and all(shape[0] == 4 and shape[2] == 5 for shape in calls)  # two training steps
    assert 0 <= result.final["val_map"] <= 1


def test_bad_options_and_inputs_are_clear_errors() -> None:
    with pytest.raises(ModelError, match="window_sizes"):
        create_model("sliding_window_tiny", window_sizes=())
    with pytest.raises(ModelError, match="train_windows"):
        create_model("sliding_window_tiny", train_windows=-1)
    model = create_model("sliding_window_tiny")
    with pytest.raises(ModelError, match="empty batch"):
        model(torch.zeros(0, 1, 64, 64))
    with pytest.raises(ModelError, match="at least 28x28 pixels"):
        model(torch.zeros(1, 1, 20, 20))


def test_draw_detections_writes_boxes_of_both_kinds(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The drawing has one dashed ground-truth rectangle per object and one solid one per prediction above the
    threshold (counted on the figure before it is written)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from dltricks.tasks.detection.draw import draw_detections, plot_ap_latency

    seen: list[list[str]] = []
    original = plt.Figure.savefig

    def spy(fig, *args, **kwargs):
        seen.append([p.get_linestyle() for ax in fig.axes for p in ax.patches if isinstance(p, Rectangle)])
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(plt.Figure, "savefig", spy)
    images = torch.rand(2, 1, 32, 32)
    truth = [(torch.tensor([[2.0, 2, 10, 12]]), torch.tensor([1])), (torch.zeros(0, 4), torch.zeros(0))]
    preds = [(torch.tensor([[2.0, 2, 10, 12], [5.0, 5, 9, 9]]), torch.tensor([0.9, 0.1]), torch.tensor([1, 2])),
             (torch.tensor([[1.0, 1, 30, 30]]), torch.tensor([0.5]), torch.tensor([3]))]
    out = draw_detections(images, preds, truth, tmp_path / "d.png", classes=list("0123456789"), score_thresh=0.3)
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert sorted(seen[0]) == ["--", "solid", "solid"]  # 1 ground truth, 2 predictions above 0.3 (0.1 is not drawn)
    with pytest.raises(ValueError, match="2 images but 1 predictions"):
        draw_detections(images, preds[:1], truth, tmp_path / "e.png")
    assert not (tmp_path / "e.png").exists()
    plot = plot_ap_latency([{"label": "a", "latency": [1.0, 1.2], "ap": [0.3, 0.32]},
                            {"label": "b", "latency": [9.0], "ap": [0.1]}], tmp_path / "p.png")
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_evaluation_in_chunks_gives_the_same_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without gradients the windows are classified a few images at a time (memory); the outputs are those of
    one pass over the batch."""
    torch.manual_seed(0)
    model = create_model("sliding_window_tiny").eval()
    x = torch.rand(5, 1, 64, 64)
    with torch.no_grad():
        chunked = model(x)
    with torch.enable_grad():
        whole = model(x)  # eval mode, gradients on: one pass
    for key in ("logits", "background_logits", "window_deltas"):
        torch.testing.assert_close(chunked[key], whole[key].detach(), atol=1e-5, rtol=1e-5)
    monkeypatch.setattr(SlidingWindow, "eval_windows", 1)  # one image per chunk
    with torch.no_grad():
        torch.testing.assert_close(model(x)["logits"], chunked["logits"], atol=1e-5, rtol=1e-5)
