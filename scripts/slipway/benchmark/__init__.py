"""What ``slipway bench`` measures, one module per kind of number.

- ``worker``: one runtime, in its own process, timed per stage on the golden images;
- ``inprocess``: starts the workers one after another and measures import times;
- ``served``: start-up and a loopback load test of a running image;
- ``sizes``: images (gzip-compressed and uncompressed, largest layers), wheels, model files;
- ``budgets``: the limits from ``[budgets]`` in release.toml, checked against one run's results;
- ``report``: the Markdown table and the PNG chart, drawn from one results.json.

Nothing here imports torch, onnxruntime or TensorFlow at module level: each runtime is loaded
only inside the worker process that measures it.
"""
