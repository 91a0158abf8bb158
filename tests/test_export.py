"""The ONNX export: preprocessing without albumentations, parity with the torch model, predict without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from abcd.core.params import RuntimeParams
from abcd.core.preprocess import Preprocess
from abcd.core.registry import INTERPOLATIONS, UNKNOWN_METHODS
from abcd.data.images import load_rgb
from abcd.evaluation.calibration import calibrated_probs
from abcd.features.runtime import resolve_runtime
from abcd.features.transforms import eval_transform
from abcd.inference.pipeline import classify
from abcd.inference.torch_model import TorchRuntime
from abcd.models.checkpoint import load_checkpoint
from abcd.ood.base import threshold_for_false_reject
from abcd.ood.detectors import detector_from_extra, head_logits
from abcd.ood.fit import fit_inference_extras
from abcd.serving.export import OPSET, InferenceGraph, calibrate, export_metadata, export_onnx
from abcd.serving.onnx_model import OnnxClassifier, OnnxRuntime, graph_outputs, preprocess
from tests.conftest import CLASSES, REPO, make_image

METHODS = tuple(UNKNOWN_METHODS)  # the graph computes every registered detector
CPU_FP32 = resolve_runtime(RuntimeParams(device="cpu", precision="fp32", num_workers=0, processes=1))


@pytest.mark.parametrize("interpolation", INTERPOLATIONS.names())
@pytest.mark.parametrize("size", [(64, 48), (300, 301), (257, 1000), (224, 224), (256, 300), (20, 600), (601, 17)])
def test_preprocess_is_the_eval_transform(interpolation: str, size: tuple[int, int]) -> None:
    """The OpenCV form (ONNX) and the albumentations form (torch) of one Preprocess give the same input."""
    pre = Preprocess(224, 256, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), interpolation)
    rgb = np.random.default_rng(sum(size)).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    expected = eval_transform(pre)(rgb).numpy()
    got = preprocess(rgb, pre)
    assert got.shape == expected.shape == (3, 224, 224) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_both_runtimes_preprocess_with_the_checkpoints_preprocess(exported, tmp_path: Path) -> None:
    loaded = load_checkpoint(exported["checkpoint"])
    model = OnnxClassifier(exported["onnx"])
    assert model.preprocessing == loaded.preprocess  # stored by the export, read back whole
    assert Preprocess.from_dict(loaded.preprocess.to_dict()) == loaded.preprocess
    rgb = load_rgb(make_image(tmp_path / "x.png", seed=3, size=(333, 250)))
    onnx = OnnxRuntime(model, model.detector()).preprocess(rgb)
    torch_side = TorchRuntime(loaded, CPU_FP32, detector_from_extra(loaded.extra, "fusion", None)).preprocess(rgb)
    assert onnx.dtype == torch_side.dtype == np.float32
    np.testing.assert_allclose(onnx, torch_side, atol=1e-5)


def torch_fp32(checkpoint: Path, images: list[np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The torch path's probabilities and every detector's score, in fp32 (predict's math, no autocast)."""
    loaded = load_checkpoint(checkpoint)
    transform = eval_transform(loaded.preprocess)
    x = torch.stack([transform(im) for im in images])
    with torch.inference_mode():
        feats = loaded.model.backbone(x).float()
        logits = loaded.model.head(feats).double().numpy()
    probs = calibrated_probs(logits, float(loaded.extra["temperature"]))
    scores = {m: detector_from_extra(loaded.extra, m, None).score(feats.numpy(), logits) for m in METHODS}
    return probs, scores


def test_onnx_matches_torch_fp32_probabilities_scores_and_decisions(exported, tmp_path: Path) -> None:
    images = [load_rgb(make_image(tmp_path / f"{i}.png", seed=i, size=(90 + 7 * i, 70 + 3 * i))) for i in range(5)]
    probs, scores = torch_fp32(exported["checkpoint"], images)
    model = OnnxClassifier(exported["onnx"])
    loaded = load_checkpoint(exported["checkpoint"], lazy=True)
    batch = np.stack([model.preprocess(im) for im in images])
    for method in METHODS:
        onnx_probs, onnx_scores = model.run(batch, method)
        assert np.abs(onnx_probs - probs).max() <= 1e-4
        np.testing.assert_allclose(onnx_scores, scores[method], rtol=1e-4, atol=1e-4)
        rule = model.detector(method, 0.6)
        expected = [
            "unknown" if s > rule.threshold else CLASSES[int(np.argmax(p))] for p, s in zip(probs, scores[method])
        ]
        # The one loop on either runtime: the same decisions, probabilities and scores.
        on_onnx = classify(OnnxRuntime(model, rule), images, batch_size=2)
        detector = detector_from_extra(loaded.extra, method, 0.6)
        on_torch = classify(TorchRuntime(loaded, CPU_FP32, detector), images, batch_size=2)
        assert [p.label for p in on_onnx] == [p.label for p in on_torch] == expected
        for a, b in zip(on_onnx, on_torch):
            assert np.abs(a.probs - b.probs).max() <= 1e-4 and a.score == pytest.approx(b.score, rel=1e-4, abs=1e-4)


class _FromFeatures(torch.nn.Module):
    """The graph after the backbone: (N, D) features -> (probabilities, every score)."""

    def __init__(self, graph: InferenceGraph) -> None:
        super().__init__()
        self.inner = graph.eval()

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.inner.from_features(feats)


# The ONNX graph scores in float32, the pipeline in float64, with the same torch functions: they
# differ by float32 rounding only, at most this fraction of the largest score's size (or of 1).
# The single scores stay within 2e-6 of it; fusion divides its parts' rounding by their val
# standard deviations, small beside Mahalanobis++'s distances (1.5e-5 here).
SCORE_RTOL = 1e-4


def test_onnx_scores_equal_the_pipelines_for_every_registered_detector(exported, tmp_path: Path) -> None:
    import onnxruntime

    loaded = load_checkpoint(exported["checkpoint"])
    rng = np.random.default_rng(1)
    # Refitted on more training rows than ViM's subspace has dimensions (the fixture's are fewer, so
    # its training residuals are 0 and alpha is huge): every detector on a non-degenerate fit.
    train = rng.normal(0, 1, (400, loaded.num_features)).astype(np.float32)
    val = rng.normal(0, 1, (40, loaded.num_features)).astype(np.float32)
    kw = {"train_eval_x": None, "false_reject": 0.02, "knn_k": 3, "ece_bins": 10, "calibrate": True}
    loaded.extra = {
        **loaded.extra,
        **fit_inference_extras(loaded.head, train, np.arange(400) % 4, val, np.arange(40) % 4, **kw),
    }
    graph = InferenceGraph(loaded)
    assert graph.methods == list(UNKNOWN_METHODS)
    path = tmp_path / "scores.onnx"
    example = torch.zeros(2, loaded.num_features)
    dynamic = {"feats": {0: "batch"}}
    torch.onnx.export(
        _FromFeatures(graph),
        (example,),
        str(path),
        input_names=["feats"],
        dynamic_axes=dynamic,
        opset_version=OPSET,
        dynamo=False,
    )
    # Training rows, new rows like them, and rows off their scale and mean.
    like, far = rng.normal(0, 1, (6, loaded.num_features)), rng.normal(2, 3, (6, loaded.num_features))
    feats = np.concatenate([train[:4], like, far]).astype(np.float32)
    got = onnxruntime.InferenceSession(str(path)).run(None, {"feats": feats})[1:]
    logits = head_logits(loaded.head, feats)
    for name, onnx_scores in zip(graph.methods, got, strict=True):
        expected = detector_from_extra(loaded.extra, name, None).score(feats, logits)
        assert onnx_scores.dtype == np.float32 and expected.dtype == np.float64
        tolerance = SCORE_RTOL * max(1.0, float(np.abs(expected).max()))
        assert np.abs(onnx_scores - expected).max() <= tolerance, name


def test_metadata_holds_what_predict_needs(exported) -> None:
    model = OnnxClassifier(exported["onnx"])
    extra = load_checkpoint(exported["checkpoint"], lazy=True).extra
    assert model.classes == CLASSES and model.meta["backbone"] == "efficientnet_lite0"
    assert model.meta["preprocess"]["input_size"] == 224 and model.meta["method"] == "fusion"
    # Every detector the graph computes has its threshold.
    exported_thresholds = {m: pytest.approx(float(extra["unknown"][m]["threshold"])) for m in METHODS}
    assert model.meta["thresholds"] == exported_thresholds
    assert model.detector().name == "fusion" and model.detector("max_softmax").threshold == pytest.approx(0.4)
    assert model.exported_from(exported["checkpoint"]) and not model.exported_from(exported["onnx"])


@pytest.mark.slow  # a second export of the model; the fast loop's is conftest's `exported`
def test_thresholds_are_calibrated_on_the_graphs_own_val_scores(exported, tmp_path: Path) -> None:
    # Train calibrated on featurize's features (bf16 on an AMX CPU); the graph runs fp32. The export
    # recalibrates on val images through the graph itself, with train's split-conformal rank.
    val = [make_image(tmp_path / f"v{i}.png", seed=50 + i, size=(80 + 5 * i, 90)) for i in range(9)]
    loaded = load_checkpoint(exported["checkpoint"])
    loaded.extra = {**loaded.extra, "unknown_false_reject": 0.2}  # rank ceil(10 * 0.8) = 8 of 9: one rejected
    out = tmp_path / "calibrated.onnx"
    export_onnx(loaded, out, export_metadata(loaded, exported["checkpoint"], "fusion", 0.6), val)
    model = OnnxClassifier(out)
    batch = np.stack([model.preprocess(load_rgb(p)) for p in val])
    checkpoint_thresholds = OnnxClassifier(exported["onnx"]).meta["thresholds"]
    assert set(model.meta["thresholds"]) == set(checkpoint_thresholds) == set(METHODS)
    for method in METHODS:
        _, scores = model.run(batch, method)
        threshold = model.meta["thresholds"][method]
        assert threshold == pytest.approx(threshold_for_false_reject(scores, 0.2), rel=1e-6)
        assert (scores > threshold).sum() == 1, method  # exactly n - ceil((n + 1)(1 - alpha)) val images
    cal = model.meta["threshold_calibration"]
    assert cal["images"] == 9 and cal["false_reject"] == 0.2
    assert cal["checkpoint_thresholds"] == pytest.approx(checkpoint_thresholds)
    # calibrate() on its own gives the same metadata; without the rate a checkpoint cannot be calibrated.
    again = calibrate(model.meta, graph_outputs(model, val), 0.2)
    assert again["thresholds"] == pytest.approx(model.meta["thresholds"])
    del loaded.extra["unknown_false_reject"]
    with pytest.raises(ValueError, match="no unknown_false_reject"):
        export_onnx(loaded, tmp_path / "x.onnx", export_metadata(loaded, exported["checkpoint"], "fusion", 0.6), val)
    assert not (tmp_path / "x.onnx").exists()  # nothing half-written


def test_export_refuses_a_method_the_checkpoint_lacks(exported, tmp_path: Path) -> None:
    loaded = load_checkpoint(exported["checkpoint"], lazy=True)
    loaded.extra = {"temperature": 1.0, "unknown": {}}
    with pytest.raises(ValueError, match=r"unknown\.method is 'knn', which the export does not compute"):
        export_metadata(loaded, exported["checkpoint"], "knn", 0.6)
    # fusion is exported only with every component it sums: without vim's state, neither is.
    extra = load_checkpoint(exported["checkpoint"], lazy=True).extra
    loaded.extra = {**extra, "unknown": {k: v for k, v in extra["unknown"].items() if k != "vim"}}
    msg = r"'fusion', which the export does not compute \(it exports: max_softmax, energy, knn, mahalanobis_pp\)"
    with pytest.raises(ValueError, match=msg):
        export_metadata(loaded, exported["checkpoint"], "fusion", 0.6)


def test_predict_with_onnx_runtime_never_imports_torch_nor_albumentations(exported, tmp_path: Path) -> None:
    images = [make_image(tmp_path / f"{i}.jpg", seed=i, size=(120, 90)) for i in range(3)]
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    code = (
        "import sys, json; from abcd.serving.predict import main\n"
        f"status = main([{str(tmp_path)!r}, '--runtime', 'onnx', '--onnx', {str(exported['onnx'])!r},"
        f" '--method', 'fusion', '--params', {str(REPO / 'params.yaml')!r}, '--format', 'json'])\n"
        "print(json.dumps({'status': status, 'torch': sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'albumentations'))}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.strip().splitlines()
    summary = json.loads(out[-1])
    assert summary == {"status": 1, "torch": []}  # 1: bad.jpg failed; no torch (nor albumentations) module imported
    doc = json.loads("\n".join(out[:-1]))
    by_name = {Path(r["path"]).name: r for r in doc["results"]}
    assert "cannot decode" in by_name["bad.jpg"]["error"]
    probs, scores = torch_fp32(exported["checkpoint"], [load_rgb(p) for p in images])
    for image, p, s in zip(images, probs, scores["fusion"]):
        row = by_name[image.name]
        assert [row["probabilities"][c] for c in CLASSES] == pytest.approx(list(p), abs=1e-4)
        assert row["unknown_score"] == pytest.approx(s, abs=1e-4)
        assert row["prediction"] == ("unknown" if s > doc["threshold"] else CLASSES[int(np.argmax(p))])


def test_predict_defaults_to_the_export_only_when_it_is_the_default_checkpoints(
    exported, tmp_path: Path, monkeypatch, capsys
) -> None:
    import shutil

    from abcd.serving.predict import onnx_model_to_use

    monkeypatch.chdir(tmp_path)
    onnx = Path("models/model.onnx")
    assert onnx_model_to_use(None, None, onnx) is None  # no export: torch
    (tmp_path / "models").mkdir()
    shutil.copy(exported["onnx"], onnx)
    shutil.copy(exported["checkpoint"], "models/model.pt")
    assert onnx_model_to_use(None, None, onnx) is not None
    assert onnx_model_to_use("torch", None, onnx) is None
    assert onnx_model_to_use(None, Path("other.pt"), onnx) is None  # another checkpoint asked for: torch
    assert onnx_model_to_use("onnx", Path("other.pt"), onnx) is not None
    Path("models/model.pt").write_bytes(b"retrained since the export")
    assert onnx_model_to_use(None, None, onnx) is None
    assert "was exported from another models/model.pt" in capsys.readouterr().err
