import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from src.linear_probe import fit_logistic, fit_probe


def _data(n: int, seed: int, d: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Four overlapping classes (not separable, so the optimum is finite even with a weak penalty)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    return torch.randn(n, d, generator=g, dtype=torch.float64) + torch.eye(4, d, dtype=torch.float64)[y] * 1.5, y


@pytest.mark.parametrize("c", [0.01, 1.0, 100.0])
def test_logistic_regression_has_scikit_learns_optimum(c: float) -> None:
    x, y = _data(200, 0)
    w, b = fit_logistic(x, y, 4, c, tol=1e-10)
    ref = LogisticRegression(C=c, tol=1e-10, max_iter=10_000).fit(x.numpy(), y.numpy())
    np.testing.assert_allclose(w.numpy(), ref.coef_, atol=1e-5)
    np.testing.assert_allclose(b.numpy(), ref.intercept_, atol=1e-5)


@pytest.mark.parametrize("c", [0.01, 1.0, 100.0])
def test_default_tolerance_stops_at_scikit_learns_iterate(c: float) -> None:
    # Not the optimum: the early lbfgs iterate (7-13 iterations here), which the probe's numbers depend on.
    x, y = _data(300, 1)
    w, b = fit_logistic(x, y, 4, c)
    ref = LogisticRegression(C=c, max_iter=5000).fit(x.numpy(), y.numpy())
    np.testing.assert_allclose(w.numpy(), ref.coef_, rtol=0, atol=1e-12)
    np.testing.assert_allclose(b.numpy(), ref.intercept_, rtol=0, atol=1e-12)


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
