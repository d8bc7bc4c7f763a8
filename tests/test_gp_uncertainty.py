"""GP-based uncertainty: SNGP's random-feature GP layer (vs the exact kernel and a brute-force Laplace sum), the
GPyTorch variational GP head fitted through ``fit``, and ``dltricks eval --uncertainty gp|sngp``."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dltricks.errors import ConfigError
from dltricks.layers.random_features import LaplacePrecision, RandomFourierFeatures, mean_field_logits, rbf_kernel
from dltricks.measure.uncertainty import sngp_layers, sngp_probs
from dltricks.models import create_model


def test_random_fourier_features_approximate_the_rbf_kernel() -> None:
    torch.manual_seed(0)
    x = torch.randn(24, 6)
    for lengthscale in (1.0, 2.5):
        rff = RandomFourierFeatures(6, 40_000, lengthscale=lengthscale)
        phi = rff(x)  # (24, D)
        exact = rbf_kernel(x, x, lengthscale=lengthscale)
        # Each entry is a mean of D bounded terms: error ~ 1 / sqrt(D) = 0.005.
        torch.testing.assert_close(phi @ phi.T, exact, atol=0.03, rtol=0)
    assert rbf_kernel(x, x, lengthscale=1.0).diagonal().eq(1).all()


def test_laplace_precision_update_equals_brute_force_sum() -> None:
    torch.manual_seed(1)
    laplace = LaplacePrecision(5)
    batches = [(torch.randn(7, 5), torch.randn(7, 3) * 2) for _ in range(3)]
    for phi, logits in batches:
        laplace.update(phi, logits)
    expected = torch.eye(5, dtype=torch.float64)
    for phi, logits in batches:
        for i in range(len(phi)):
            p = float(torch.softmax(logits[i].double(), 0).max())
            v = phi[i].double().unsqueeze(1)  # (D, 1)
            expected += p * (1 - p) * (v @ v.T)
    torch.testing.assert_close(laplace.precision.double(), expected, rtol=1e-5, atol=1e-5)
    assert int(laplace.count) == 21
    # Variance phi^T Sigma phi vs the explicit inverse.
    phi = torch.randn(4, 5)
    reference = torch.einsum("bi,ij,bj->b", phi.double(), torch.linalg.inv(expected), phi.double())
    torch.testing.assert_close(laplace.variance(phi).double(), reference, rtol=1e-4, atol=1e-6)
    # After an eval-mode pass the next update starts again from the identity.
    laplace.mark_evaluated()
    laplace.update(*batches[0])
    assert int(laplace.count) == 7


def test_mean_field_keeps_the_argmax_and_flattens_with_variance() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.3, 0.2]])
    scaled = mean_field_logits(logits, torch.tensor([0.0, 10.0]))
    torch.testing.assert_close(scaled[0], logits[0])
    torch.testing.assert_close(scaled[1], logits[1] / math.sqrt(1 + math.pi / 8 * 10))
    assert torch.equal(scaled.argmax(1), logits.argmax(1))


def test_sngp_model_accumulates_the_last_pass_and_predicts_mean_field() -> None:
    torch.manual_seed(0)
    model = create_model("sngp_mlp", width=16, depth=2, num_random_features=32)
    x = torch.randn(6, 1, 28, 28)
    model.train()
    model(x)
    model(x)
    assert int(model.laplace.count) == 12
    model.eval()
    plain = model(x)
    model.train()
    model(x)
    assert int(model.laplace.count) == 6, "an eval pass restarts the sum"
    model.eval()
    probs, _ = sngp_probs(model, [(x, torch.zeros(6, dtype=torch.long))])
    assert not model.mean_field
    assert torch.equal(probs.argmax(1), plain.argmax(1))
    assert (probs.max(1).values <= plain.softmax(1).max(1).values + 1e-6).all()
    # The spectrally normalised layers have largest singular value 1 (in eval mode, from the stored u, v).
    sigma = torch.linalg.matrix_norm(model.blocks[0].fc.weight.detach(), ord=2)
    assert abs(float(sigma) - 1.0) < 0.05
    with pytest.raises(ConfigError, match="random-feature GP output layer"):
        sngp_probs(create_model("mlp"), [(x, torch.zeros(6, dtype=torch.long))])
    assert not sngp_layers(create_model("sngp_mlp", gp_head=False))


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 3.0], [3.0, -2.0], [-3.0, -2.0]])
    y = torch.randint(0, 3, (n,), generator=g)
    return centres[y] + 0.6 * torch.randn(n, 2, generator=g), y


@pytest.mark.slow
def test_gp_head_fitted_through_fit_knows_far_inputs() -> None:
    from dltricks.train.gp_head import fit_gp_head

    x, y = _blobs(300, 0)
    head = fit_gp_head(x, y, num_classes=3, num_inducing=16, epochs=30, lr=0.05, batch_size=100)
    x_test, y_test = _blobs(200, 1)
    probs = head.predict_probs(x_test)
    torch.testing.assert_close(probs.sum(1), torch.ones(200))
    assert (probs.argmax(1) == y_test).float().mean() > 0.95
    torch.testing.assert_close(head.predict_probs(x_test), probs, rtol=0, atol=0)  # fixed seed: repeatable
    far = head.predict_probs(torch.tensor([[30.0, 30.0], [-25.0, 20.0]]))
    assert far.max(1).values.max() < probs.max(1).values.median()
    with pytest.raises(ValueError, match="label smoothing"):
        head.elbo_loss(head(x[:4]), y[:4], label_smoothing=0.1)


def test_gp_head_needs_pre_logit_features() -> None:
    from dltricks.train.gp_head import check_feature_model, pre_logit_features

    with pytest.raises(ConfigError, match="forward_features"):
        check_feature_model(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), "seq")
    model = create_model("mlp")
    z, y = pre_logit_features(model, [(torch.randn(3, 1, 28, 28), torch.tensor([0, 1, 2]))])
    assert z.shape == (3, model.head_hidden_size) and y.tolist() == [0, 1, 2]


# --- dltricks eval --uncertainty gp | sngp ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gp_runs(tmp_path_factory) -> tuple[str, str]:
    from dltricks.cli import main

    root = tmp_path_factory.mktemp("gp-runs")
    for name, model in (("plain", "mlp"), ("sngp", "sngp_mlp")):
        assert main(["train", model, "--data", "mnist-embedded", "--epochs", "1", "--subset", "600",
                     "--out", str(root / name), "--no-progress"]) == 0
    return str(root / "plain"), str(root / "sngp")


@pytest.mark.slow
def test_eval_uncertainty_gp_and_sngp(gp_runs, capsys) -> None:
    import json

    from dltricks.cli import main

    plain, sngp = gp_runs
    assert main(["eval", plain, "--uncertainty", "gp", "--gp-epochs", "2", "--gp-inducing", "16", "--ood", "digits",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    gp = report["metrics"]["gp"]
    assert report["fitted"] == {"inducing_points": 16, "epochs": 2}
    assert 0.0 <= gp["ood_auroc_digits"] <= 1.0 and gp["accuracy"] > 0.5 and math.isfinite(gp["nll"])
    assert main(["eval", sngp, "--uncertainty", "sngp", "--ood", "digits", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = report["metrics"]
    assert rows["sngp"]["accuracy"] == rows["softmax"]["accuracy"]  # mean-field scaling keeps the arg-max
    assert rows["sngp"]["mean_confidence"] <= rows["softmax"]["mean_confidence"] + 1e-9


@pytest.mark.slow
def test_eval_uncertainty_sngp_on_a_plain_model_exits_2(gp_runs, capsys) -> None:
    from dltricks.cli import main

    plain, _ = gp_runs
    assert main(["eval", plain, "--uncertainty", "sngp", "--ood"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("dltricks eval: error:") and "no random-feature GP output layer" in err[-1]
    assert main(["eval", plain, "--uncertainty", "gp", "--gp-epochs", "0", "--ood"]) == 2
    assert "--gp-epochs must be positive" in capsys.readouterr().err
