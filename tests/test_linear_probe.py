import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from abcd.training.probe import fit_probe


def _data(n: int, seed: int, d: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Four overlapping classes (not separable, so the optimum is finite even with a weak penalty)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    return torch.randn(n, d, generator=g, dtype=torch.float64) + torch.eye(4, d, dtype=torch.float64)[y] * 1.5, y


@pytest.mark.parametrize("c", [0.01, 1.0, 100.0])
def test_probe_is_scikit_learns_pipeline_on_raw_features(c: float) -> None:
    # Standardise + lbfgs logistic regression at sklearn's default tolerance, folded into weights on the
    # raw features. Not the optimum but the early iterate (7-13 iterations here): the probe's numbers depend on it.
    (x, y), (xv, yv) = _data(300, 1), _data(100, 4)
    x, xv = x * 3.0 + 1.0, xv * 3.0 + 1.0
    probe = fit_probe((x, y), (xv, yv), 4, [c])
    got = torch.softmax(xv @ probe.weight.T + probe.bias, dim=1).numpy()
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000)).fit(x.numpy(), y.numpy())
    np.testing.assert_allclose(got, ref.predict_proba(xv.numpy()), rtol=0, atol=1e-12)
    assert probe.c == c and probe.val_loss == pytest.approx(log_loss(yv.numpy(), got), rel=1e-12)
    optimum = make_pipeline(StandardScaler(), LogisticRegression(C=c, tol=1e-10, max_iter=10_000))
    assert np.abs(optimum.fit(x.numpy(), y.numpy()).predict_proba(xv.numpy()) - got).max() > 1e-9  # tells them apart


def test_two_classes_give_scikit_learns_binary_probabilities() -> None:
    x, y = _data(200, 5)
    y = y % 2
    probe = fit_probe((x, y), (x, y), 2, [1.0])
    assert probe.weight.shape == (2, x.shape[1]) and probe.bias.shape == (2,)
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000)).fit(x.numpy(), y.numpy())
    got = torch.softmax(x @ probe.weight.T + probe.bias, dim=1).numpy()
    np.testing.assert_allclose(got, ref.predict_proba(x.numpy()), rtol=0, atol=1e-12)


def test_a_class_missing_from_training_is_an_error() -> None:
    x, y = _data(100, 6)
    with pytest.raises(ValueError, match=r"training labels \[0, 1, 2\], expected each of 0..3"):
        fit_probe((x[y < 3], y[y < 3]), (x, y), 4, [1.0])


def test_probe_picks_c_by_val_loss_and_takes_raw_features() -> None:
    train, val = _data(160, 2), _data(80, 3)
    # Scale and shift the features, with one constant column: standardisation must absorb all of it.
    scale = torch.linspace(0.01, 100.0, 12, dtype=torch.float64)
    raw = [(x * scale + 7.0, y) for x, y in (train, val)]
    for x, _ in raw:
        x[:, 5] = 3.0
    grid = [0.001, 0.1, 10.0]
    probe = fit_probe(raw[0], raw[1], 4, grid)
    losses = {}
    for c in grid:
        single = fit_probe(raw[0], raw[1], 4, [c])
        losses[c] = single.val_loss
        logits = raw[1][0] @ single.weight.T + single.bias
        assert torch.nn.functional.cross_entropy(logits, raw[1][1]).item() == pytest.approx(single.val_loss)
    assert probe.c == min(losses, key=losses.get) and probe.val_loss == min(losses.values())
    assert torch.isfinite(probe.weight).all() and probe.weight[:, 5].abs().max() < 1e-12  # constant: no weight
    with pytest.raises(ValueError, match="grid of C values is empty"):
        fit_probe(raw[0], raw[1], 4, [])
