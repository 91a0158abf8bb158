"""The inference path, one for every runtime: decode -> preprocess -> forward -> (probabilities, score) -> decision.

``pipeline`` (no torch) holds the steps that do not depend on the runtime and the batched loop
that drives a runtime; ``torch_model`` is the checkpoint's runtime on torch, whose
after-the-backbone step the test stage also enters with cached features; the ONNX runtime is
``abcd.serving.onnx_model.OnnxRuntime``.
"""
