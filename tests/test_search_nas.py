"""Neural architecture search: the ``nas_cnn`` space, per-element list options, constraints, evolution.

The shared suite (tests/test_models.py) checks ``nas_cnn``'s model contract; here: its parameter count
against the formula, the space keys ``model.OPTION.I``, rejection of over-limit architectures before they
train, regularised evolution against a direct transcription of Real et al.'s Algorithm 1, and a search
whose best architecture ``create_model`` builds and ``dltricks train`` trains.
"""

from __future__ import annotations

import collections
import json
import re
import shlex

import numpy as np
import pytest

from dltricks import create_model
from dltricks.cli import main
from dltricks.errors import ConfigError, ModelError
from dltricks.search import load_space, search
from dltricks.search.evolution import RegularizedEvolutionSampler

optuna = pytest.importorskip("optuna")
TrialState = optuna.trial.TrialState

TINY = {"train": {"epochs": 1, "batch_size": 64, "device": "cpu"}}


# The model


def conv_bn(k: int, c_in: int, c_out: int, *, groups: int = 1) -> int:
    return k * k * (c_in // groups) * c_out + 2 * c_out  # bias-free conv + BN (weight, bias)


def block_params(kind: str, c_in: int, c_out: int, k: int, stride: int, t: int) -> int:
    if kind == "plain":
        return conv_bn(k, c_in, c_out)
    if kind == "residual":
        shortcut = conv_bn(1, c_in, c_out) if stride != 1 or c_in != c_out else 0
        return conv_bn(k, c_in, c_out) + conv_bn(k, c_out, c_out) + shortcut
    mid = c_in * t  # MBConv: 1x1 expand, depthwise k x k, 1x1 linear projection
    return (conv_bn(1, c_in, mid) if t != 1 else 0) + conv_bn(k, mid, mid, groups=mid) + conv_bn(1, mid, c_out)


def expected_params(depths, widths, kernel_sizes, blocks, expand_ratios, stem=16, in_chans=1, classes=10) -> int:
    total, c_in = conv_bn(3, in_chans, stem), stem
    for i, (d, w, k, kind, t) in enumerate(zip(depths, widths, kernel_sizes, blocks, expand_ratios)):
        for j in range(d):
            total += block_params(kind, c_in, w, k, 2 if i > 0 and j == 0 else 1, t)
            c_in = w
    return total + c_in * classes + classes


@pytest.mark.parametrize("options", [
    {},
    {"depths": [2, 1, 3], "widths": [8, 24, 40], "kernel_sizes": [5, 3, 7], "blocks": ["mbconv", "plain", "mbconv"],
     "expand_ratios": [1, 4, 6]},
    {"depths": [1, 1], "widths": [8, 16], "kernel_sizes": [3, 5], "blocks": ["residual", "mbconv"],
     "expand_ratios": [3, 3], "se": [False, False]},
])
def test_nas_cnn_parameter_count_matches_the_formula(options):
    defaults = {"depths": [1, 2, 2], "widths": [16, 32, 64], "kernel_sizes": [3, 3, 3],
                "blocks": ["plain", "residual", "residual"], "expand_ratios": [4, 4, 4]}
    model = create_model("nas_cnn", **options)
    got = sum(p.numel() for p in model.parameters())
    want = expected_params(**{**defaults, **{k: v for k, v in options.items() if k != "se"}})
    assert got == want
    if not options:
        assert got == 167_962  # the module docstring's number


def test_nas_cnn_se_adds_its_gates_and_bad_stage_lists_fail_clearly():
    import torch

    plain = create_model("nas_cnn")
    gated = create_model("nas_cnn", se=[True, True, True])
    # SE after each of the 5 blocks: fc1 (C -> C/4, bias) and fc2 (C/4 -> C, bias).
    extra = sum(c * (c // 4) + c // 4 + (c // 4) * c + c for c in (16, 32, 32, 64, 64))
    assert sum(p.numel() for p in gated.parameters()) - sum(p.numel() for p in plain.parameters()) == extra
    assert gated(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ModelError, match="one entry per stage"):
        create_model("nas_cnn", depths=[1, 1])
    with pytest.raises(ModelError, match="odd"):
        create_model("nas_cnn", kernel_sizes=[3, 4, 3])
    with pytest.raises(ModelError, match="Did you mean: mbconv"):
        create_model("nas_cnn", blocks=["plain", "mbconvv", "plain"])


# The space: list options searched element by element

NAS_SPACE = {"params": {
    **{f"model.blocks.{i}": {"choice": ["plain", "residual", "mbconv"]} for i in range(3)},
    **{f"model.depths.{i}": {"int": [1, 2]} for i in range(3)},
    "model.kernel_sizes.0": {"choice": [3, 5]},
    **{f"model.widths.{i}": {"choice": [4, 8, 16]} for i in range(3)},
}}


def test_element_keys_assemble_lists_and_unsearched_elements_keep_their_value():
    from dltricks.search.study import SearchSpec, _model_options
    from dltricks.train import load_recipe

    space = load_space(NAS_SPACE, model="nas_cnn")
    assert space.element_options == {"blocks": 3, "depths": 3, "kernel_sizes": 1, "widths": 3}
    point = {**{f"model.blocks.{i}": b for i, b in enumerate(["mbconv", "plain", "residual"])},
             **{f"model.depths.{i}": d for i, d in enumerate([2, 1, 1])}, "model.kernel_sizes.0": 5,
             **{f"model.widths.{i}": w for i, w in enumerate([4, 8, 16])}}
    overrides, options = space.suggest(optuna.trial.FixedTrial(point))
    assert overrides == [] and options == {"blocks": ["mbconv", "plain", "residual"], "depths": [2, 1, 1],
                                           "kernel_sizes": [5], "widths": [4, 8, 16]}
    spec = SearchSpec(model="nas_cnn", data="mnist-embedded", space=space, recipe=load_recipe(None), trials=1,
                      storage="sqlite://", study_name="x", out=None, model_kwargs={"kernel_sizes": [7, 7, 3]})
    # kernel_sizes.0 is searched; 1 and 2 keep the fixed option's values (or, without one, the defaults).
    assert _model_options(spec, options)["kernel_sizes"] == [5, 7, 3]
    spec.model_kwargs = {}
    assert _model_options(spec, options)["kernel_sizes"] == [5, 3, 3]
    assert space.decode(point) == (overrides, options)


@pytest.mark.parametrize("params, message", [
    ({"model.blocks.0": {"choice": ["plain", "dense"]}}, "expected one of 'plain', 'residual', 'mbconv'"),
    ({"model.blocks.1": {"choice": ["plain"]}}, "model.blocks.0: missing"),
    ({"model.depths.0": {"uniform": [1, 3]}}, "the key is an integer; use int"),
    ({"model.drop_rate.0": {"uniform": [0.1, 0.2]}}, "'drop_rate' is not a list"),
    ({"model.depth.0": {"int": [1, 2]}}, "no option 'depth'. Did you mean: depths"),
    ({"model.depths": {"choice": [[1, 1, 1]]}, "model.depths.0": {"int": [1, 2]}}, "both whole and by element"),
    ({"model.blocks.0": {"choice": ["plain", "mbconv"]},
      "model.expand_ratios.0": {"choice": [3, 6], "when": {"model.blocks.0": "mbconv"}}}, "cannot have `when`"),
])
def test_bad_element_keys_name_the_key(params, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_space({"params": params}, model="nas_cnn")


@pytest.mark.parametrize("constraints, message", [({"flops": 10}, "expected one of params, latency_ms"),
                                                  ({"params": 0}, "expected an upper limit > 0"),
                                                  ([1], "constraints must be a mapping")])
def test_bad_constraints_are_refused(constraints, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_space({"params": {"optim.lr": {"log_uniform": [1e-3, 1e-1]}}, "constraints": constraints})


# Regularised evolution


def reference_evolution(initial: list[tuple[dict, float]], objective, *, choices: dict[str, list], cycles: int,
                        population_size: int, sample_size: int, seed: int) -> list[dict]:
    """Real et al. 2019, Algorithm 1 after the random initial population, with the sampler's random stream."""
    rng = np.random.RandomState(seed)
    population = collections.deque(initial)
    children = []
    for _ in range(cycles):
        sample = [population[i] for i in rng.randint(len(population), size=sample_size)]
        parent = max(sample, key=lambda m: m[1])[0]
        mutable = [k for k in choices if len(choices[k]) > 1]
        name = mutable[rng.randint(len(mutable))]
        others = [c for c in choices[name] if c != parent[name]]
        child = {**parent, name: others[rng.randint(len(others))]}
        population.append((child, objective(child)))
        population.popleft()  # the oldest dies, not the worst
        children.append(child)
    return children


def test_evolution_sampler_matches_algorithm_1():
    choices = {"a": [0, 1, 2, 3], "b": [0, 1, 2], "fixed": [7], "c": [0, 1, 2, 3, 4]}
    weights = {"a": 1.0, "b": -2.0, "fixed": 0.0, "c": 0.5}

    def objective(params: dict) -> float:
        return sum(weights[k] * v for k, v in params.items())

    sampler = RegularizedEvolutionSampler(population_size=6, sample_size=3, seed=11)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(lambda t: objective({k: t.suggest_categorical(k, v) for k, v in choices.items()}), n_trials=40)
    trials = study.trials
    initial = [(t.params, t.value) for t in trials[:6]]
    want = reference_evolution(initial, objective, choices=choices, cycles=34, population_size=6, sample_size=3,
                               seed=11)
    assert [t.params for t in trials[6:]] == want
    for t in trials[6:]:  # one choice changed, from a parent among the 6 trials that finished last
        parent = trials[t.user_attrs["evolution_parent"]]
        assert t.number - 6 <= parent.number < t.number
        assert [k for k in choices if t.params[k] != parent.params[k]] == [t.user_attrs["evolution_mutated"]]
    assert "evolution_parent" not in trials[5].user_attrs
    # Not a test of a claim, a check that selection works: the best of the last population beats the start.
    assert max(t.value for t in trials[-6:]) > max(t.value for t in trials[:6])


def test_evolution_mutates_numbers_and_refuses_several_objectives(tmp_path):
    sampler = RegularizedEvolutionSampler(population_size=3, sample_size=2, seed=0)
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: (t.suggest_float("x", -1, 1) - 0.3) ** 2 + t.suggest_int("n", 1, 4), n_trials=12)
    for t in study.trials[3:]:
        parent = study.trials[t.user_attrs["evolution_parent"]]
        assert [k for k in ("x", "n") if t.params[k] != parent.params[k]] == [t.user_attrs["evolution_mutated"]]
    with pytest.raises(ConfigError, match="evolution optimises one objective"):
        search("small_cnn", "mnist-embedded", {"objectives": ["val_accuracy", "params"],
                                               "params": {"optim.lr": {"log_uniform": [1e-2, 0.3]}}},
               trials=1, recipe=TINY, subset=256, out=tmp_path, sampler="evolution", plots=False)


# Searches


def test_nas_search_under_a_parameter_limit_exports_an_architecture_that_trains(tmp_path, capsys):
    limit = 8000
    space = {"objectives": ["val_accuracy:max", "params:min"], "constraints": {"params": limit}, **NAS_SPACE}
    out = tmp_path / "nas"
    result = search("nas_cnn", "mnist-embedded", space, trials=3, recipe=TINY, subset=256, out=out,
                    sampler="random", seed=3, plots=False)
    trials = result.study.trials
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    rejected = [t for t in trials if "infeasible" in t.user_attrs]
    assert len(done) == 3 and rejected, "the limit should reject some of this space's architectures"
    assert all(t.state == TrialState.FAIL and t.user_attrs["constraints"]["params"] > limit for t in rejected)
    assert all(t.values[1] <= limit and t.user_attrs["constraints"]["params"] == t.values[1] for t in done)
    assert not any((out / "trials" / f"trial-{t.number:04d}").exists() for t in rejected)  # never trained
    best = json.loads((out / "best.json").read_text())
    # The exported architecture: create_model builds it with the parameter count the search measured...
    model = create_model("nas_cnn", **best["model_kwargs"])
    assert sum(p.numel() for p in model.parameters()) == best["values"]["params"]
    # ...and `dltricks train` trains it from the printed command, to the value the search reported.
    command = shlex.split(best["command"])
    assert command[:3] == ["dltricks", "train", "nas_cnn"]
    assert main([*command[1:], "--out", str(tmp_path / "retrain")]) == 0
    retrained = json.loads((tmp_path / "retrain" / "result.json").read_text())
    assert retrained["val_accuracy"] == pytest.approx(best["values"]["val_accuracy"], abs=0.02)


def test_evolution_reads_its_population_back_from_the_storage(tmp_path):
    """A second sampler (another worker, or the same command started again) continues the same population."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"

    def objective(t) -> float:
        return t.suggest_categorical("a", [0, 1, 2, 3]) - t.suggest_categorical("b", [0, 1, 2])

    first = optuna.create_study(storage=storage, study_name="evo", direction="maximize",
                                sampler=RegularizedEvolutionSampler(population_size=4, sample_size=2, seed=0))
    first.optimize(objective, n_trials=6)
    again = optuna.load_study(storage=storage, study_name="evo",
                              sampler=RegularizedEvolutionSampler(population_size=4, sample_size=2, seed=1))
    again.optimize(objective, n_trials=3)
    trials = again.trials
    assert [t.number for t in trials if "evolution_parent" in t.user_attrs] == [4, 5, 6, 7, 8]
    for t in trials[6:]:
        assert t.number - 4 <= t.user_attrs["evolution_parent"] < t.number


def test_latency_limit_is_measured_on_a_copy_in_eval_mode():
    from types import SimpleNamespace

    from dltricks.search.study import _measure

    model = create_model("nas_cnn", widths=[4, 4, 8]).train()
    task = SimpleNamespace(input_shape=(1, 28, 28))
    latency = _measure("latency_ms", model, task)
    assert 0 < latency < 1000 and model.training  # the searched model is left as it was
    assert _measure("params", model, task) == sum(p.numel() for p in model.parameters())


def test_scale_nas_tip_searches_under_lenet5s_size_and_scores_on_held_out_images(tmp_path):
    """The scale.nas experiment end to end on a tiny setting: every architecture it trains fits LeNet-5's parameter
    count, the pick comes from the search's Pareto front, and the held-out images are outside the training draw."""
    import torch

    from dltricks.data.base import stratified_indices
    from dltricks.data.mnist import load_mnist_embedded
    from dltricks.evidence import Context
    from dltricks.experiments.search_tips import _held_out_test, held_out_indices, nas_vs_hand_design

    ctx = Context(tip_id="scale.nas", mode="full", settings={"trials": 2, "subset": 300, "epochs": 1, "test": 300,
                                                             "lr_grid": [1]}, seeds=[0], workdir=tmp_path)
    ev = nas_vs_hand_design(ctx)
    assert set(ev.arms) == {"NAS", "lenet5"}
    limit = ev.values["limits"]["params"]
    assert limit == 61706 and ev.arms["NAS"]["params"][0] <= limit
    found = ev.values["found"][0]
    assert found["picked"] in [f["trial"] for f in found["front"]]
    assert ev.arms["lenet5"]["latency_rel"] == [1.0] and 0.0 <= ev.arms["NAS"]["test_acc"][0] <= 1.0
    # The held-out images are exactly the training images outside the draw.
    held = held_out_indices(300)
    drawn = stratified_indices(load_mnist_embedded("train").labels, 300, seed=0)
    assert len(held) == 8000 - 300 and not set(held.tolist()) & set(torch.as_tensor(drawn).tolist())
    assert sum(len(y) for _, y in _held_out_test(300, 300).iter_epoch(0)) == 300
