"""Model export for Slipway: example models, synthetic data, exporters, verification.

What other stages use:
- ``model_export.export.export_model(model_cfg, out_dir, *, version, git_commit, log)`` -> manifest
- ``model_export.preprocess.preprocess(image, input_spec)`` / ``preprocess_batch``
- ``model_export.postprocess.postprocess(boxes, scores, classes, *, input_size, image_size, output, labels)``
- ``model_export.compare.compare_detections(ref, got, iou, score)``, ``mean_average_precision``, ``accuracy``
- ``model_export.golden.load_golden(model_cfg, name)``: a model's golden set (COCO folder or hook)
- ``python -m model_export.verify MODEL_DIR --format ...`` (a fresh-process check of an export folder)
TensorFlow and PyTorch are imported only by the modules that need them.
"""
