"""The int8 model: what stage quantize writes, and the gates it must pass against the fp32 export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from abcd.core.errors import InvalidFileError
from abcd.core.schema import ParamsError
from abcd.models.checkpoint import load_checkpoint
from abcd.ood.base import threshold_for_false_reject
from abcd.serving.backbone_store import write_store
from abcd.serving.export import backbone_graph, calibrate, export_metadata, export_onnx
from abcd.serving.gates import F1_TOLERANCE, MIN_AGREEMENT, check_source, deciding, gates_on_images
from abcd.serving.graphs import backbone_part, graph_sha256, head_part, load, write_metadata
from abcd.serving.onnx_model import OnnxClassifier, file_sha256, graph_outputs
from abcd.serving.parts import ModelParts, backbone_features, cached, write_cache
from abcd.serving.quantize import (
    BACKBONE_SCOPE,
    backbone_nodes,
    module_scope,
    quantization_settings,
    quantize_backbone,
    quantize_onnx,
)
from tests.conftest import REPO, make_image

FALSE_REJECT = 0.2  # of 9 val images: rank ceil(10 * 0.8) = 8, one rejected


@pytest.fixture(scope="module")
def quantized(exported, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """conftest's fp32 export with thresholds calibrated on 9 val images (as the export stage leaves it), and
    its int8 model calibrated on 4 "training" images."""
    tmp = tmp_path_factory.mktemp("quantized")
    val = [make_image(tmp / f"val{i}.png", seed=50 + i, size=(80 + 5 * i, 90)) for i in range(9)]
    train = [make_image(tmp / f"train{i}.png", seed=10 + i, size=(120, 100 + i)) for i in range(4)]
    fp32 = tmp / "model.onnx"
    shutil.copy(exported["onnx"], fp32)
    model = OnnxClassifier(fp32)
    write_metadata(fp32, calibrate(model.meta, graph_outputs(model, val), FALSE_REJECT))
    int8 = tmp / "model.int8.onnx"
    meta, _ = quantize_onnx(fp32, int8, train, val)
    return {"fp32": fp32, "int8": int8, "meta": meta, "val": val, "tmp": tmp}


def test_only_the_backbone_is_quantized(quantized) -> None:
    import onnx

    fp32, int8 = onnx.load(str(quantized["fp32"])).graph, onnx.load(str(quantized["int8"])).graph
    dq_suffix = "_DequantizeLinear_Output"  # quantize_static's name for a dequantized copy of a tensor

    def rest(graph: onnx.GraphProto) -> dict[str, tuple[str, list[str]]]:
        """The nodes after the backbone (head, temperature, detectors): op and inputs, read through a DQ."""
        return {
            n.name: (n.op_type, [i.removesuffix(dq_suffix) for i in n.input])
            for n in graph.node
            if not n.name.startswith(BACKBONE_SCOPE) and n.op_type not in ("QuantizeLinear", "DequantizeLinear")
        }

    # The head, temperature and detector math: the fp32 graph's nodes, unchanged, reading fp32 tensors.
    assert rest(int8) == rest(fp32)
    produced_by = {o: n.name for n in int8.node for o in n.output}
    quantizers = [n for n in int8.node if n.op_type == "QuantizeLinear"]
    # Only the backbone's tensors (the image input, weights and activations) are quantized.
    sources = [produced_by.get(q.input[0], BACKBONE_SCOPE) for q in quantizers]
    assert sources and all(s.startswith(BACKBONE_SCOPE) for s in sources)
    # Every convolution is the backbone's and reads int8 weights.
    initializers = {i.name: i for i in int8.initializer}
    convs = [n for n in int8.node if n.op_type == "Conv"]
    assert convs and all(n.name.startswith(BACKBONE_SCOPE) for n in convs)
    dequantize = {n.output[0]: n for n in int8.node if n.op_type == "DequantizeLinear"}
    for conv in convs:
        assert initializers[dequantize[conv.input[1]].input[0]].data_type == onnx.TensorProto.INT8


def test_keep_fp32_names_backbone_modules_and_refuses_one_it_lacks(exported) -> None:
    every = backbone_nodes(load(exported["onnx"]))
    kept = backbone_nodes(load(exported["onnx"]), ["conv_stem", "blocks.0"])
    left_out = set(every) - set(kept)
    assert module_scope("blocks.0") == "/backbone/blocks/blocks.0/"
    assert left_out and all(n.startswith(("/backbone/conv_stem/", "/backbone/blocks/blocks.0/")) for n in left_out)
    assert any(n.startswith("/backbone/blocks/blocks.1/") for n in kept)
    with pytest.raises(ParamsError, match=r"quantize\.keep_fp32.*no module 'layer1'"):
        backbone_nodes(load(exported["onnx"]), ["layer1"])


def test_int8_metadata_names_its_fp32_source_and_thresholds_are_its_own(quantized) -> None:
    fp32, int8 = OnnxClassifier(quantized["fp32"]), OnnxClassifier(quantized["int8"])
    assert int8.meta == quantized["meta"]
    q = int8.meta["quantization"]
    assert q["precision"] == "int8" and q["calibration"]["images"] == 4
    sha = file_sha256(quantized["fp32"])
    assert q["fp32"] == {"file": "model.onnx", "sha256": sha, "thresholds": fp32.meta["thresholds"]}
    # The rest is the fp32 file's: predict's default check (exported from models/model.pt) holds for both.
    same = ("classes", "preprocess", "temperature", "method", "max_softmax_threshold", "predict", "checkpoint")
    assert {k: int8.meta[k] for k in same} == {k: fp32.meta[k] for k in same}
    cal = int8.meta["threshold_calibration"]
    assert cal["images"] == 9 and cal["false_reject"] == FALSE_REJECT
    assert cal["checkpoint_thresholds"] == fp32.meta["threshold_calibration"]["checkpoint_thresholds"]
    scores = graph_outputs(int8, quantized["val"])
    for name, threshold in int8.meta["thresholds"].items():
        assert threshold == pytest.approx(threshold_for_false_reject(scores[name], FALSE_REJECT), rel=1e-6)


def test_quantize_refuses_an_export_without_val_calibrated_thresholds(exported, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not calibrated on val images"):
        quantize_onnx(exported["onnx"], tmp_path / "x.onnx", [make_image(tmp_path / "t.png")], [])
    assert not (tmp_path / "x.onnx").exists()


def test_gates_pass_a_model_against_itself_and_fail_one_that_decides_otherwise(quantized) -> None:
    tmp = quantized["tmp"]
    test = [make_image(tmp / f"test{i}.png", seed=200 + i, size=(100, 90)) for i in range(6)]
    ood = [make_image(tmp / f"ood{i}.png", seed=300 + i, size=(90, 100)) for i in range(6)]
    fp32 = OnnxClassifier(quantized["fp32"])
    probs = graph_outputs(fp32, test)["probabilities"]
    labels = probs.argmax(1)
    same = gates_on_images(fp32, fp32, test, labels, ood)
    assert same["passed"] and same["f1"]["delta"] == 0.0 and same["f1"]["fp32"] == same["f1"]["int8"] > 0
    assert all(v == 1.0 for split in same["agreement"].values() for v in split.values())
    # The same graph with the method's threshold below every score: everything unknown.
    method = fp32.meta["method"]
    shifted = tmp / "shifted.onnx"
    shutil.copy(quantized["fp32"], shifted)
    write_metadata(shifted, {**fp32.meta, "thresholds": {**fp32.meta["thresholds"], method: -1e9}})
    report = gates_on_images(fp32, OnnxClassifier(shifted), test, labels, ood)
    assert not report["passed"] and report["f1"]["delta"] == 0.0
    scores = graph_outputs(fp32, test)[method]
    assert report["agreement"]["test"][method] == pytest.approx(np.mean(scores > fp32.detector(method).threshold))


def test_predict_and_serve_take_the_int8_model_by_path(quantized, capsys) -> None:
    from fastapi.testclient import TestClient

    from abcd.serving import predict
    from abcd.serving.app import create_app
    from abcd.serving.settings import SERVE_LIMITS

    tmp, int8 = quantized["tmp"], OnnxClassifier(quantized["int8"])
    images = [make_image(tmp / "predict" / f"{i}.png", seed=400 + i, size=(110, 95)) for i in range(3)]
    # --runtime onnx: without it predict checks the file against ./models/model.pt, which this fixture is not from.
    args = ["--runtime", "onnx", "--model", str(quantized["int8"]), "--params", str(REPO / "params.yaml")]
    args += ["--format", "json"]
    assert predict.main([str(tmp / "predict"), *args]) == 0
    doc = json.loads(capsys.readouterr().out)
    method = doc["method"]  # unknown.method in params.yaml
    out = graph_outputs(int8, images)
    assert doc["threshold"] == pytest.approx(int8.detector(method).threshold)  # the int8 file's own threshold
    by_name = {Path(r["path"]).name: r for r in doc["results"]}
    for path, score in zip(images, out[method]):
        assert by_name[path.name]["unknown_score"] == pytest.approx(score, rel=1e-5, abs=1e-5)
    client = TestClient(create_app(int8, SERVE_LIMITS, max_pixels=None))
    assert client.get("/health").json()["model"] == "model.int8.onnx"
    answer = client.post("/predict", files=[("files", ("a.png", images[0].read_bytes(), "image/png"))]).json()
    assert answer["threshold"] == pytest.approx(int8.detector().threshold)
    assert answer["results"][0]["unknown_score"] == pytest.approx(out[method][0], rel=1e-5, abs=1e-5)


def test_gates_without_an_ood_set_give_no_verdict_and_a_foreign_fp32_file_is_refused(quantized) -> None:
    tmp = quantized["tmp"]
    test = [make_image(tmp / f"t{i}.png", seed=400 + i, size=(100, 90)) for i in range(4)]
    fp32, int8 = OnnxClassifier(quantized["fp32"]), OnnxClassifier(quantized["int8"])
    labels = graph_outputs(fp32, test)["probabilities"].argmax(1)
    report = gates_on_images(fp32, int8, test, labels, None)
    assert report["passed"] is None and list(report["agreement"]) == ["test"] and "ood" not in report["images"]
    assert set(deciding(report)) == {"passed", "f1_delta", "test_agreement"}
    check_source(fp32, int8)  # quantized from this very file
    other = tmp / "other.onnx"
    shutil.copy(quantized["fp32"], other)
    write_metadata(other, {**fp32.meta, "exported_by": "another run"})  # the same graph, other bytes
    with pytest.raises(InvalidFileError, match=r"was not quantized from .*other\.onnx.*dvc repro quantize"):
        check_source(OnnxClassifier(other), int8)


def test_the_default_model_follows_the_committed_gates_verdict() -> None:
    """metrics/int8.json is stage int8_gates' verdict on the models dvc.lock pins (tests/test_dvc_lock.py holds
    the lock to the workspace): predict and serve default to the int8 file exactly when it passed."""
    from abcd.serving import predict

    verdict = json.loads((REPO / "metrics/int8.json").read_text())["int8"]
    report = json.loads((REPO / "reports/int8.json").read_text())
    method, agreement = report["method"], report["agreement"]
    within = abs(report["f1"]["delta"]) <= F1_TOLERANCE and all(v[method] >= MIN_AGREEMENT for v in agreement.values())
    assert verdict["passed"] == report["passed"] == (within if "ood" in agreement else None)
    # The fp32 graph's F1 is evaluate's (torch): the gates judge the model the results table reports.
    test_metrics = json.loads((REPO / "metrics/test.json").read_text())["test"]
    assert report["f1"]["fp32"] == pytest.approx(test_metrics["f1_macro"], abs=1e-9)
    assert (Path(predict.DEFAULT_ONNX).name == "model.int8.onnx") == (verdict["passed"] is True)


def test_a_models_two_parts_give_its_whole_graphs_outputs(quantized) -> None:
    """The twins: calibration and the gates run a model as backbone part then head part (abcd.serving.parts),
    predict and serve run the whole graph."""
    images = [make_image(quantized["tmp"] / f"parts{i}.png", seed=500 + i, size=(100 + 7 * i, 90)) for i in range(5)]
    for name in ("fp32", "int8"):
        model = OnnxClassifier(quantized[name])
        out, origin = ModelParts(model).outputs(images, "test", None)
        whole = graph_outputs(model, images)
        assert origin.startswith("computed") and set(out) == set(whole)
        for key in whole:
            np.testing.assert_allclose(out[key], whole[key], rtol=1e-5, atol=1e-5, err_msg=f"{name} {key}")


def test_cached_features_serve_only_their_own_graph_and_images(quantized, tmp_path: Path) -> None:
    images = [make_image(tmp_path / f"c{i}.png", seed=600 + i, size=(90, 95)) for i in range(3)]
    fp32, int8 = ModelParts(OnnxClassifier(quantized["fp32"])), ModelParts(OnnxClassifier(quantized["int8"]))
    pre = fp32.model.preprocessing
    write_cache(tmp_path / "cache", {"fp32": fp32.backbone}, {"test": images}, pre)
    found, origin = cached(tmp_path / "cache", fp32.backbone, "test", images)
    assert found is not None and origin == f"cached in {tmp_path / 'cache' / 'fp32'}"
    np.testing.assert_array_equal(found, backbone_features(fp32.backbone, images, pre))
    assert cached(tmp_path / "cache", int8.backbone, "test", images)[0] is None  # another graph's
    assert cached(tmp_path / "cache", fp32.backbone, "test", images[:2])[0] is None  # other images
    assert cached(tmp_path / "cache", fp32.backbone, "val", images)[0] is None
    assert cached(tmp_path / "absent", fp32.backbone, "test", images)[0] is None


def test_the_backbone_store_gives_the_models_computing_gives(exported, tmp_path: Path) -> None:
    """Stage onnx_backbone's store, used by export and quantize, against both made from scratch: the same graphs,
    thresholds and outputs; a store of another backbone or other settings is not used."""
    loaded = load_checkpoint(exported["checkpoint"])
    loaded.extra = {**loaded.extra, "unknown_false_reject": 0.2}
    pre = loaded.preprocess
    val = [make_image(tmp_path / f"val{i}.png", seed=700 + i, size=(85, 90 + i)) for i in range(6)]
    train = [make_image(tmp_path / f"train{i}.png", seed=800 + i, size=(100, 90 + i)) for i in range(3)]
    fp32_part = backbone_graph(loaded.model.backbone, pre.input_size)
    int8_part = quantize_backbone(fp32_part, train, pre)
    settings = quantization_settings(train, [])
    record = {"backbone_sha256": loaded.backbone_sha256, "preprocess": pre.to_dict(), "quantization": settings}
    store = tmp_path / "store"
    write_store(store, record, fp32_part, int8_part, {"val": val}, pre)
    meta = export_metadata(loaded, exported["checkpoint"], "fusion", 0.6)
    a, a_from = export_onnx(loaded, tmp_path / "a.onnx", meta, val, store)
    b, b_from = export_onnx(loaded, tmp_path / "b.onnx", meta, val, None)
    assert a_from == {"backbone part": f"stored in {store}", "val features": f"cached in {store / 'features' / 'fp32'}"}
    assert b_from["backbone part"].startswith("traced here") and b_from["val features"].startswith("computed")
    assert graph_sha256(load(tmp_path / "a.onnx")) == graph_sha256(load(tmp_path / "b.onnx"))
    assert a["thresholds"] == pytest.approx(b["thresholds"], rel=1e-6)
    qa, qa_from = quantize_onnx(tmp_path / "a.onnx", tmp_path / "a8.onnx", train, val, (), store)
    qb, qb_from = quantize_onnx(tmp_path / "b.onnx", tmp_path / "b8.onnx", train, val, (), None)
    int8_cache = store / "features" / "int8"
    assert qa_from == {"int8 backbone": f"stored in {store}", "val features": f"cached in {int8_cache}"}
    assert qb_from["int8 backbone"].startswith("quantized here")
    assert graph_sha256(load(tmp_path / "a8.onnx")) == graph_sha256(load(tmp_path / "b8.onnx"))
    assert qa["thresholds"] == pytest.approx(qb["thresholds"], rel=1e-6)
    # Other calibration images: quantized again, not taken from the store.
    _, other = quantize_onnx(tmp_path / "a.onnx", tmp_path / "c8.onnx", train[:2], val, (), store)
    assert other["int8 backbone"].startswith("quantized here") and "other settings" in other["int8 backbone"]
    # Another backbone's weights (fine-tuned): the export traces its own.
    moved = {**record, "backbone_sha256": "0" * 64}
    write_store(store, moved, fp32_part, int8_part, {"val": val}, pre)
    _, traced = export_onnx(loaded, tmp_path / "d.onnx", meta, val, store)
    assert traced["backbone part"].startswith("traced here") and "another backbone" in traced["backbone part"]


def test_a_graph_without_the_features_tensor_is_refused_with_the_command_that_makes_one(tmp_path: Path) -> None:
    """A graph exported elsewhere, or by an export before the two parts, has no tensor to cut at."""
    from onnx import TensorProto, helper

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 8, 8])
    probs = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["probabilities"])], "g", [image], [probs])
    model = helper.make_model(graph)
    for cut in (backbone_part, head_part):
        with pytest.raises(InvalidFileError, match=r"no tensor 'features'.*dvc repro export"):
            cut(model)
