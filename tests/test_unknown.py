"""Temperature scaling, the unknown-score registry, val thresholds, and their checkpoint round trip."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from abcd.core.registry import UNKNOWN_METHODS
from abcd.evaluation.calibration import calibrated_probs, fit_temperature, nll
from abcd.evaluation.unknown_metrics import detection_metrics, risk_coverage, uncalibrated
from abcd.models.backbones import Backbone, Preprocess
from abcd.models.checkpoint import load_checkpoint, save_checkpoint
from abcd.models.head import Classifier, build_head
from abcd.ood.base import threshold_for_false_reject
from abcd.ood.detectors import Detector, detector_from_extra
from abcd.ood.fit import fit_inference_extras
from abcd.ood.methods import ledoit_wolf_covariance

D, C = 16, 4


def _clusters(n: int, seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Four tight clusters around +-4 on the first axes; ``shift`` moves every point away from them."""
    rng = np.random.default_rng(seed)
    centres = np.zeros((C, D))
    centres[np.arange(C), np.arange(C)] = 4.0
    y = rng.integers(0, C, n)
    x = centres[y] + rng.normal(0, 0.5, (n, D))
    x[:, C:] += shift
    return x.astype(np.float32), y


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _score(name: str, state: dict, feats: np.ndarray, logits: np.ndarray | None = None) -> np.ndarray:
    """The route's (float64) scores of the registered method ``name`` with a fitted ``state``."""
    logits = np.zeros((len(feats), C)) if logits is None else logits
    return Detector(name, UNKNOWN_METHODS.get(name), state, 0.0, 1.0).score(feats, logits)


def _head() -> torch.nn.Module:
    head = build_head(D, C, 0.0)
    with torch.no_grad():  # logits = 2 * x[:, :C]: a head that separates the clusters
        head[1].weight.zero_()
        head[1].weight[:, :C] = 2 * torch.eye(C)
        head[1].bias.zero_()
    return head


def test_fit_temperature_recovers_the_temperature_that_generated_the_labels() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (4000, C))
    labels = np.array([rng.choice(C, p=p) for p in calibrated_probs(logits, 2.0)])
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(2.0, rel=0.1)
    assert nll(logits, labels, t) < nll(logits, labels, 1.0)


def test_threshold_rejects_at_most_the_target_fraction_of_known_scores() -> None:
    scores = np.arange(100, dtype=float)  # 0..99
    t = threshold_for_false_reject(scores, 0.02)
    assert t == 98.0 and np.mean(scores > t) == 0.01  # conformal rank ceil(101 * 0.98) = 99
    assert threshold_for_false_reject(scores, 0.0) == 99.0  # reject nothing known
    assert np.mean(scores > threshold_for_false_reject(scores, 0.055)) <= 0.055


def test_threshold_holds_the_false_reject_rate_on_new_images() -> None:
    # 4000 draws of a 184-image validation set and one new known image each: the new image
    # must be rejected at most 2% of the time (plus Monte Carlo slack); the plain empirical
    # quantile's expected rate here is 4/185 = 2.2%.
    rng = np.random.default_rng(0)
    val = rng.normal(size=(4000, 184))
    new = rng.normal(size=4000)
    thresholds = np.array([threshold_for_false_reject(v, 0.02) for v in val])
    assert np.mean(new > thresholds) <= 0.02 + 0.005


def test_unknown_method_name_lists_the_registry() -> None:
    msg = r"'unknown.method': unknown detector 'mahalonobis_pp'; choose one of max_softmax, energy, knn, "
    msg += "mahalanobis_pp, vim, fusion"
    with pytest.raises(ValueError, match=msg + r" \(did you mean 'mahalanobis_pp'\?\)"):
        UNKNOWN_METHODS.get("mahalonobis_pp", "unknown.method")


@pytest.mark.parametrize("name", ["energy", "knn", "mahalanobis_pp", "vim", "fusion"])
def test_feature_methods_score_far_points_higher(name: str) -> None:
    train_x, train_y = _clusters(400, 0)
    val_x, val_y = _clusters(200, 1)
    extra = fit_inference_extras(
        _head(),
        train_x,
        train_y,
        val_x,
        val_y,
        train_eval_x=None,
        false_reject=0.02,
        knn_k=5,
        ece_bins=10,
        calibrate=True,
    )
    det = detector_from_extra(extra, name, None)
    known_x, _ = _clusters(200, 2)
    # Energy only sees the logits, so its outliers must have small logits; the others see every axis.
    far_x = known_x * 0.1 if name == "energy" else _clusters(200, 3, shift=3.0)[0]
    if name in ("mahalanobis_pp", "fusion"):  # normalised features: far in direction, not in length
        far_x = _clusters(200, 3, shift=3.0)[0] * 0.5
    head = _head().eval()
    with torch.no_grad():
        known = det.score(known_x, head(torch.from_numpy(known_x)).numpy())
        far = det.score(far_x, head(torch.from_numpy(far_x)).numpy())
    m = detection_metrics(known, far, det.threshold, np.ones(len(far), bool))
    assert m["auroc"] > 0.99 and m["ood_rejected"] > 0.95 and m["known_rejected"] <= 0.06


def test_knn_score_is_the_cosine_distance_to_the_kth_nearest_training_feature() -> None:
    knn = UNKNOWN_METHODS.get("knn")
    # Training features along +x, +y and -x, of any length: the bank holds them on the unit circle.
    bank = np.array([[3.0, 0.0], [0.0, 0.5], [-2.0, 0.0]], np.float32)
    half = np.array([[1.0, np.sqrt(3.0)]], np.float32)  # 60 degrees from +x, 30 from +y
    queries = np.concatenate([np.array([[5.0, 0.0], [0.0, 2.0], [-1.0, -1.0]], np.float32), half])
    # Unit-sphere distance sqrt(2 - 2 cos): 0 at the same direction, sqrt(2) at 90 degrees, 2 opposite.
    r2, cos30, cos60 = np.sqrt(2.0), np.sqrt(3.0) / 2, 0.5
    dist = np.array(
        [
            [0.0, r2, 2.0],  # +x
            [r2, 0.0, r2],  # +y
            [np.sqrt(2 + 2 * np.sqrt(0.5)), np.sqrt(2 + 2 * np.sqrt(0.5)), np.sqrt(2 - 2 * np.sqrt(0.5))],  # -x-y
            [np.sqrt(2 - 2 * cos60), np.sqrt(2 - 2 * cos30), np.sqrt(2 + 2 * cos60)],  # 60 degrees
        ]
    )
    for k in (1, 2, 3):
        state = knn.fit(bank, np.zeros(3, int), k)
        expected = np.sort(dist, axis=1)[:, k - 1]
        # The bank is stored in fp16: distances agree to about 1e-3.
        np.testing.assert_allclose(_score("knn", state, queries), expected, atol=2e-3)
    with pytest.raises(ValueError, match=r"'unknown.knn_k' is 4 but the training bank has only 3 features"):
        knn.fit(bank, np.zeros(3, int), 4)


def test_detectors_fit_on_a_seeded_sample_capped_at_fit_rows_max(monkeypatch) -> None:
    import abcd.ood.base as base

    train_x, train_y = _clusters(50, 0)
    val_x, val_y = _clusters(40, 1)
    head = build_head(D, C, dropout=0.0)
    kwargs = {"train_eval_x": None, "false_reject": 0.05, "knn_k": 3, "ece_bins": 5, "calibrate": False}
    whole = fit_inference_extras(head, train_x, train_y, val_x, val_y, **kwargs)["unknown"]
    assert whole["knn"]["state"]["bank"].shape == (50, D)  # at or under the cap: every training row
    monkeypatch.setattr(base, "FIT_ROWS_MAX", 20)
    capped = fit_inference_extras(head, train_x, train_y, val_x, val_y, **kwargs)["unknown"]
    bank, full = capped["knn"]["state"]["bank"], whole["knn"]["state"]["bank"]
    assert bank.shape == (20, D)
    # Rows of the whole bank, each once, in their original order; the same ones on every fit (seeded).
    rows = [int(np.flatnonzero((full == r).all(dim=1).numpy())[0]) for r in bank]
    assert len(set(rows)) == 20 and rows == sorted(rows)
    again = fit_inference_extras(head, train_x, train_y, val_x, val_y, **kwargs)["unknown"]
    assert torch.equal(again["knn"]["state"]["bank"], bank)
    # The covariance detector fits on the same sample: its class means are those of the 20 rows.
    keep = np.sort(np.random.default_rng(0).permutation(50)[:20])
    unit, kept_y = _unit(train_x[keep]), train_y[keep]
    means = np.stack([unit[kept_y == c].mean(axis=0) for c in range(C)])
    np.testing.assert_allclose(capped["mahalanobis_pp"]["state"]["means"].numpy(), means, rtol=1e-5, atol=1e-6)


def test_mahalanobis_pp_score_is_the_min_over_classes_of_the_quadratic_form_on_the_unit_sphere() -> None:
    # The score goes through the precision's Cholesky factor: the same number as the quadratic form.
    maha = UNKNOWN_METHODS.get("mahalanobis_pp")
    x, y = _clusters(200, 0)
    state = maha.fit(x, y, 1)
    queries = _clusters(30, 1, shift=2.0)[0]
    means, precision = state["means"].double().numpy(), state["precision"].double().numpy()
    diff = _unit(queries.astype(np.float64))[:, None, :] - means[None]
    direct = np.einsum("ncd,de,nce->nc", diff, precision, diff).min(axis=1)
    np.testing.assert_allclose(_score("mahalanobis_pp", state, queries), direct, rtol=1e-10)


def test_knn_score_is_zero_not_nan_where_rounding_puts_a_point_inside_the_sphere() -> None:
    # A bank vector a rounding error longer than 1 (as fp16 storage can leave it): 2 - 2 cos < 0 there.
    state = {"bank": torch.tensor([[1.001, 0.0], [0.0, 1.0]], dtype=torch.float16), "k": torch.tensor(1)}
    assert _score("knn", state, np.array([[1.0, 0.0], [0.0, 3.0]], np.float32)).tolist() == [0.0, 0.0]


def test_extras_survive_a_weights_only_checkpoint_round_trip(tmp_path: Path, monkeypatch) -> None:
    train_x, train_y = _clusters(100, 0)
    views = np.stack([train_x, train_x + 0.01], axis=1)  # (N, K, D) as featurize writes them
    val_x, val_y = _clusters(60, 1)
    extra = fit_inference_extras(
        _head(),
        views,
        train_y,
        val_x,
        val_y,
        train_eval_x=train_x - 0.01,
        false_reject=0.05,
        knn_k=3,
        ece_bins=10,
        calibrate=True,
    )
    assert set(extra["unknown"]) == set(UNKNOWN_METHODS)
    assert extra["unknown"]["knn"]["state"]["bank"].shape == (300, D)  # every view and every eval view
    model = Classifier(torch.nn.Identity(), D, C, 0.0)
    model.head = _head()
    path = tmp_path / "m.pt"
    # Identity backbone is not a registered one: patch the loader's factory for this test.
    monkeypatch.setattr(
        "abcd.models.checkpoint.build_backbone", lambda name, pretrained: Backbone(torch.nn.Identity(), D, None)
    )
    save_checkpoint(
        path,
        model.state_dict(),
        dropout=model.head[0].p,
        classes=list("abcd"),
        backbone="identity_test",
        preprocess=Preprocess(8, 8, (0.5,) * 3, (0.5,) * 3, "bilinear"),
        params={},
        extra=extra,
    )
    loaded = load_checkpoint(path)
    assert loaded.extra["temperature"] == pytest.approx(extra["temperature"])
    for name in UNKNOWN_METHODS:
        before = detector_from_extra(extra, name, None)
        after = detector_from_extra(loaded.extra, name, None)
        logits = _head()(torch.from_numpy(val_x)).detach().numpy()
        np.testing.assert_allclose(after.score(val_x, logits), before.score(val_x, logits), rtol=1e-5)
        assert after.threshold == before.threshold


def test_knn_bank_holds_the_views_and_each_training_images_eval_view() -> None:
    # Chosen on the selection half: kNN's rows are every augmented view, then every eval view;
    # the other feature detectors fit on the views alone.
    train_x, train_y = _clusters(50, 0)
    views = np.stack([train_x + 0.3, train_x - 0.3], axis=1)
    eval_x = train_x * 1.7  # another direction than either view: distance 0 only to itself
    val_x, val_y = _clusters(40, 1)
    kw = {"false_reject": 0.02, "knn_k": 1, "ece_bins": 10, "calibrate": False}
    extra = fit_inference_extras(_head(), views, train_y, val_x, val_y, train_eval_x=eval_x, **kw)
    bank = extra["unknown"]["knn"]["state"]["bank"].float().numpy()
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    expected = unit(np.concatenate([views.reshape(-1, D), eval_x]))
    np.testing.assert_allclose(bank, expected, atol=1e-3)  # fp16 storage
    knn = detector_from_extra(extra, "knn", None)
    no_logits = np.zeros((len(eval_x), C))
    # k = 1: a training eval view finds itself; distance 0 up to the fp16 bank (sqrt(2 - 2 cos) of a 1e-4 error)
    assert np.all(knn.score(eval_x, no_logits) < 0.03)
    views_only = fit_inference_extras(_head(), views, train_y, val_x, val_y, train_eval_x=None, **kw)
    assert views_only["unknown"]["knn"]["state"]["bank"].shape == (100, D)
    assert np.all(detector_from_extra(views_only, "knn", None).score(eval_x, no_logits) > 0.15)
    # Mahalanobis++ and ViM are fitted on the views exactly as without the eval views.
    for name in ("mahalanobis_pp", "vim"):
        a, b = extra["unknown"][name], views_only["unknown"][name]
        assert a["threshold"] == b["threshold"]
        assert all(torch.equal(a["state"][key], b["state"][key]) for key in a["state"])
    # The fusion's knn term is the one with the eval views: its val standardisation differs.
    a, b = extra["unknown"]["fusion"]["state"], views_only["unknown"]["fusion"]["state"]
    assert torch.equal(a["vim"], b["vim"]) and not torch.equal(a["knn"], b["knn"])
    with pytest.raises(ValueError, match=r"one eval view per training image"):
        fit_inference_extras(_head(), views, train_y, val_x, val_y, train_eval_x=eval_x[:-1], **kw)


def test_max_softmax_keeps_the_original_rule_and_old_checkpoints_have_only_it() -> None:
    det = detector_from_extra({}, "max_softmax", 0.6)  # a checkpoint saved before detectors existed
    assert det.temperature == 1.0
    logits = np.log(np.array([[0.61, 0.19, 0.1, 0.1], [0.59, 0.21, 0.1, 0.1]]))
    assert list(det.score(np.zeros((2, D)), logits) > det.threshold) == [False, True]
    with pytest.raises(ValueError, match=r"no fitted unknown detector 'knn'.*dvc repro train"):
        detector_from_extra({}, "knn", 0.6)


def test_risk_coverage_accepts_low_scores_first() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.4])
    errors = np.array([False, False, True, True])
    cov, risk = risk_coverage(scores, errors)
    assert cov[-1] == 1.0 and risk[-1] == 0.5
    assert risk[np.searchsorted(cov, 0.5)] == 0.0  # the two lowest scores are both right
    assert np.all(np.diff(cov) >= 0)


def test_fitting_refuses_a_class_without_training_features() -> None:
    x, y = _clusters(100, 0)
    val_x, val_y = _clusters(40, 1)
    keep = y != 3  # the last class: not visible from the labels' range alone
    with pytest.raises(ValueError, match=r"no training features for class index\(es\) \[3\]"):
        fit_inference_extras(
            _head(),
            x[keep],
            y[keep],
            val_x,
            val_y,
            train_eval_x=None,
            false_reject=0.02,
            knn_k=3,
            ece_bins=10,
            calibrate=True,
        )


def test_without_calibration_the_temperature_is_one_and_a_separable_val_would_collapse_it() -> None:
    # Val logits that classify every image right: NLL keeps falling as T -> 0 (here until it is 0 in
    # float64, T < 0.04), so a fitted T collapses. This is the failure cross-validation found;
    # calibrate: false avoids it.
    logits = np.array([[4.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0], [0.0, 0.0, 5.0, 0.0], [0.0, 0.0, 0.0, 2.0]])
    labels = np.arange(4)
    assert fit_temperature(logits, labels) < 0.04
    x, y = _clusters(100, 0)
    val_x, val_y = _clusters(40, 1)
    kw = {"train_eval_x": None, "false_reject": 0.02, "knn_k": 3, "ece_bins": 10}
    off = fit_inference_extras(_head(), x, y, val_x, val_y, **kw, calibrate=False)
    on = fit_inference_extras(_head(), x, y, val_x, val_y, **kw, calibrate=True)
    assert off["temperature"] == 1.0 and on["temperature"] == pytest.approx(off["calibration"]["fitted_temperature"])


def test_shrunk_covariance_is_invertible_where_the_sample_covariance_is_not() -> None:
    from sklearn.covariance import empirical_covariance

    rng = np.random.default_rng(0)
    for n, d in ((300, 20), (40, 120)):  # more samples than dimensions, and fewer (the shrinkage matters)
        x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
        x -= x.mean(axis=0)
        cov, sample = ledoit_wolf_covariance(x), empirical_covariance(x, assume_centered=True)
        assert cov.dtype == np.float64 and np.allclose(cov, cov.T)
        assert np.linalg.eigvalsh(cov).min() > 1e-3 * np.trace(cov) / d  # well conditioned: a plain inverse is safe
        assert np.trace(cov) == pytest.approx(np.trace(sample))  # shrunk towards the mean variance, trace kept
        assert not np.allclose(cov, sample)
    assert np.linalg.matrix_rank(sample) < d  # the case shrinkage is for: d > n, singular without it


def test_temperature_search_finds_scipys_minimum() -> None:
    from scipy.optimize import minimize_scalar

    rng = np.random.default_rng(3)
    logits = rng.normal(size=(300, 4)) * 4
    labels = np.where(rng.random(300) < 0.8, logits.argmax(1), rng.integers(0, 4, 300))
    ref = minimize_scalar(lambda s: nll(logits, labels, float(np.exp(s))), bounds=(-4, 4), method="bounded")
    assert fit_temperature(logits, labels) == pytest.approx(float(np.exp(ref.x)), rel=1e-4)
    assert nll(logits, labels, fit_temperature(logits, labels)) <= ref.fun + 1e-9


def test_uncalibrated_probabilities_are_recovered_from_calibrated_ones() -> None:
    logits = np.random.default_rng(4).normal(size=(50, 4)) * 3
    t = 0.7
    np.testing.assert_allclose(uncalibrated(calibrated_probs(logits, t), t), calibrated_probs(logits, 1.0), atol=1e-12)


@pytest.mark.slow  # a Python process importing torch: seconds, for an import-time guard
def test_scoring_stages_do_not_import_scikit_learn(repo: Path) -> None:
    # test and predict score with fitted detectors; sklearn (fitting, metrics) would cost each ~0.5 s to import.
    code = "import sys, abcd.stages.test, abcd.serving.predict; print(sorted({m.split('.')[0] for m in sys.modules}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True).stdout
    assert "'torch'" in out and "'sklearn'" not in out


def test_vim_residual_is_zero_inside_the_principal_subspace_and_grows_outside() -> None:
    from abcd.ood.methods import VIM

    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.01, (300, D))
    x[:, :3] = rng.normal(0, 1, (300, 3))  # training features span 3 axes, a little noise on the others
    head = _head()
    state = VIM.fit(x, np.zeros(300, int), 1, linear=(head[1].weight, head[1].bias), dim=3)
    inside, outside = x[:5].copy(), x[:5].copy()
    outside[:, 8] = 5.0
    logits = np.zeros((5, C))  # energy the same for both: only the residual differs
    # alpha scales the residual to the training logits' size: inside, about the mean max logit (~2).
    assert np.all(np.abs(_score("vim", state, inside, logits) + np.log(C)) < 5.0)
    assert np.all(_score("vim", state, outside, logits) > _score("vim", state, inside, logits) + 50.0)


def test_mahalanobis_pp_ignores_the_feature_norm() -> None:
    from abcd.ood.methods import MAHALANOBIS_PP

    train_x, train_y = _clusters(400, 0)
    state = MAHALANOBIS_PP.fit(train_x, train_y, 1)
    x = _clusters(20, 1)[0].astype(np.float64)
    np.testing.assert_allclose(_score("mahalanobis_pp", state, 3 * x), _score("mahalanobis_pp", state, x), rtol=1e-10)


FUSED = ("knn", "energy", "mahalanobis_pp", "vim")


def _fitted_extra(false_reject: float = 0.05) -> tuple[dict, np.ndarray, np.ndarray]:
    """Extras fitted on the clusters (views + eval views, as train), and val's features and logits."""
    train_x, train_y = _clusters(100, 0)
    val_x, val_y = _clusters(200, 1)
    extra = fit_inference_extras(
        _head(),
        np.stack([train_x, train_x + 0.01], axis=1),
        train_y,
        val_x,
        val_y,
        train_eval_x=train_x - 0.01,
        false_reject=false_reject,
        knn_k=1,
        ece_bins=10,
        calibrate=False,
    )
    return extra, val_x, _head()(torch.from_numpy(val_x)).detach().numpy().astype(np.float64)


def test_fusion_is_the_sum_of_its_components_z_scores_on_val() -> None:
    extra, val_x, val_logits = _fitted_extra()
    fusion = detector_from_extra(extra, "fusion", None)
    assert [p.name for p in fusion.parts] == list(FUSED) == list(extra["unknown"]["fusion"]["state"])
    far_x = _clusters(50, 3, shift=3.0)[0] * 0.5
    far_logits = _head()(torch.from_numpy(far_x)).detach().numpy().astype(np.float64)
    expected = np.zeros(len(far_x))
    for name in FUSED:
        single = detector_from_extra(extra, name, None)
        on_val = single.score(val_x, val_logits)
        mean, std = on_val.mean(), on_val.std()  # ddof 0
        assert extra["unknown"]["fusion"]["state"][name].tolist() == [mean, std]
        expected += (single.score(far_x, far_logits) - mean) / std
    np.testing.assert_allclose(fusion.score(far_x, far_logits), expected, rtol=1e-12, atol=1e-12)
    # Scores of the components already computed on the same rows (the test stage's) are reused, not recomputed.
    computed = {name: detector_from_extra(extra, name, None).score(far_x, far_logits) for name in FUSED}
    np.testing.assert_array_equal(fusion.score(far_x, far_logits, computed), fusion.score(far_x, far_logits))
    # The val standardisation centres the fused val scores: their mean is 0.
    assert abs(fusion.score(val_x, val_logits).mean()) < 1e-9


def test_fusion_threshold_rejects_the_configured_fraction_of_val() -> None:
    for false_reject in (0.02, 0.05, 0.1):
        extra, val_x, val_logits = _fitted_extra(false_reject)
        fusion = detector_from_extra(extra, "fusion", None)
        fused = fusion.score(val_x, val_logits)
        assert fusion.threshold == threshold_for_false_reject(fused, false_reject)
        # Split conformal (no ties here): all but the ceil((n + 1)(1 - alpha)) lowest, at most the target.
        n = len(fused)
        assert np.sum(fused > fusion.threshold) == n - math.ceil((n + 1) * (1 - false_reject))
        assert np.mean(fused > fusion.threshold) <= false_reject


def _save(path: Path, extra: dict, monkeypatch) -> None:
    model = Classifier(torch.nn.Identity(), D, C, 0.0)
    model.head = _head()
    monkeypatch.setattr(
        "abcd.models.checkpoint.build_backbone", lambda name, pretrained: Backbone(torch.nn.Identity(), D, None)
    )
    save_checkpoint(
        path,
        model.state_dict(),
        dropout=0.0,
        classes=list("abcd"),
        backbone="identity_test",
        preprocess=Preprocess(8, 8, (0.5,) * 3, (0.5,) * 3, "bilinear"),
        params={},
        extra=extra,
    )


def test_fusion_checkpoint_round_trip_stores_no_component_state_twice(tmp_path: Path, monkeypatch) -> None:
    from abcd.core.errors import InvalidFileError

    extra, val_x, val_logits = _fitted_extra()
    _save(tmp_path / "m.pt", extra, monkeypatch)
    loaded = load_checkpoint(tmp_path / "m.pt").extra
    state = loaded["unknown"]["fusion"]["state"]
    # Only each component's val mean and std: no bank, precision or basis of its own.
    assert list(state) == list(FUSED)
    assert all(t.shape == (2,) and t.dtype == torch.float64 for t in state.values())
    fusion = detector_from_extra(loaded, "fusion", None)
    assert fusion.parts[0].state["bank"] is loaded["unknown"]["knn"]["state"]["bank"]  # the knn entry's own tensor
    before = detector_from_extra(extra, "fusion", None)
    np.testing.assert_array_equal(fusion.score(val_x, val_logits), before.score(val_x, val_logits))
    assert fusion.threshold == before.threshold
    # A checkpoint whose fusion names a detector it does not hold fails clearly, not with a KeyError.
    del extra["unknown"]["vim"]
    _save(tmp_path / "no_vim.pt", extra, monkeypatch)
    lacking = load_checkpoint(tmp_path / "no_vim.pt").extra
    msg = r"'fusion' sums knn, energy, mahalanobis_pp, vim, but it has no fitted 'vim'.*dvc repro train"
    with pytest.raises(InvalidFileError, match=msg):
        detector_from_extra(lacking, "fusion", None)
    assert detector_from_extra(lacking, "knn", None).threshold == before.parts[0].threshold  # the others still load


def test_a_checkpoint_with_detectors_this_code_does_not_register_still_loads(tmp_path: Path, monkeypatch) -> None:
    extra, val_x, val_logits = _fitted_extra()
    # Fitted by a version that registered more detectors: loading drops them, the others serve.
    other = {"state": {"bias": torch.zeros(C)}, "threshold": 1.0}
    extra["unknown"] = {**extra["unknown"], "mahalanobis": other, "scale": other}
    _save(tmp_path / "m.pt", extra, monkeypatch)
    loaded = load_checkpoint(tmp_path / "m.pt").extra
    assert list(loaded["unknown"]) == list(UNKNOWN_METHODS)
    for name in UNKNOWN_METHODS:
        scores = detector_from_extra(loaded, name, None).score(val_x, val_logits)
        assert scores.shape == (len(val_x),) and np.isfinite(scores).all()
