import pytest
import torch

from src.models import build_head
from src.params import TrainParams
from src.train import check_choices, fit

PARAMS = TrainParams(
    epochs=30, batch_size=16, optimizer="adamw", lr=0.01, weight_decay=0.0, scheduler="cosine", deterministic=True
)


def _blobs(n: int, views: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Four well-separated Gaussian clusters in 8-d; (N, K, D) when views is set."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(4, 8) * 4
    y = torch.arange(n) % 4
    shape = (n, views, 8) if views else (n, 8)
    noise = torch.randn(shape, generator=g)
    x = (centres[y][:, None] if views else centres[y]) + noise
    return x, y


def test_fit_learns_and_keeps_the_best_epoch_by_val_loss() -> None:
    torch.manual_seed(0)
    result = fit(build_head(8, 4, 0.1), _blobs(200, 3, 0), _blobs(80, None, 1), PARAMS, seed=0)
    losses = [row["val_loss"] for row in result.history]
    assert len(result.history) == PARAMS.epochs
    assert result.best_epoch == 1 + losses.index(min(losses))
    assert result.best_val.loss == pytest.approx(min(losses))
    assert result.best_val.accuracy > 0.95
    assert losses[-1] < losses[0]
    assert result.val_probs.shape == (80, 4)


def test_fit_is_seeded() -> None:
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        runs.append(fit(build_head(8, 4, 0.1), _blobs(64, 2, 0), _blobs(32, None, 1), PARAMS, seed=5).history)
    assert runs[0] == runs[1]


@pytest.mark.parametrize(
    ("field", "value", "choices"), [("optimizer", "rmsprop", "adam, adamw, sgd"), ("scheduler", "step", "cosine, none")]
)
def test_unknown_choices_list_the_registry(field: str, value: str, choices: str) -> None:
    bad = TrainParams(**{**PARAMS.__dict__, field: value})
    with pytest.raises(ValueError, match=f"'train.{field}' is '{value}'; choose one of {choices}"):
        check_choices(bad)


def test_ctrl_c_keeps_the_best_epoch_so_far() -> None:
    def interrupt_at_epoch_4(row: dict) -> None:
        if row["epoch"] == 4:
            raise KeyboardInterrupt

    torch.manual_seed(0)
    result = fit(build_head(8, 4, 0.1), _blobs(64, 2, 0), _blobs(32, None, 1), PARAMS, seed=5, log=interrupt_at_epoch_4)
    assert result.interrupted
    assert len(result.history) == 4  # the signal came while epoch 4 was being logged
    losses = [row["val_loss"] for row in result.history[:3]]  # epochs that completed
    assert result.best_epoch == 1 + losses.index(min(losses))
    assert result.best_val.loss == pytest.approx(min(losses))


def test_ctrl_c_before_any_epoch_propagates() -> None:
    def interrupt(row: dict) -> None:
        raise KeyboardInterrupt

    class Boom(torch.nn.Linear):
        def forward(self, x):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(Boom(8, 4), _blobs(16, 1, 0), _blobs(8, None, 1), PARAMS, seed=0, log=interrupt)
