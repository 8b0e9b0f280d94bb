"""The peer benchmark: Slipway's CPU images against TorchServe, LitServe and BentoML.

    make bench-peers                      (= slipway bench --peers --report-dir docs/bench)
    make bench-peers PEERS_PROJECT=examples/street   (the same in that project: docs/bench/street)
    slipway bench --peers --rounds 1 --seconds 2 --warmup 1     (a quick look, about 3 minutes)

Like uv's benchmarks against pip and poetry, it runs the real peers: each is installed at a pinned
version (``spec``) in its own virtualenv (``envs``), beside the same torch, numpy and pillow as
Slipway's images, and serves the same exported TorchScript model of the project's release (the
model, images and golden set come from the project's plan: ``run.scope``) with Slipway's own
``model_export`` pre/postprocessing inside its handler (``handlers/``). Every server is pinned to
the same CPUs; one load generator on loopback (``load``) drives c=1 and c=8, after a warm-up, in
interleaved rounds (``run``), while the memory (PSS) of the server's process tree is sampled
(``slipway.benchmark.procs``, which the served bench uses too).
Each server's detections on the golden images must equal the export's reference. The summary
(medians, goals: ``results``) and the report (Markdown and SVG: ``report``) are rebuilt from the
recorded ``peers.json`` alone, which the tests do with a recorded run.

A full run (8 configurations x 3 rounds x (start and check, about 15 s, + 2 levels x (2 s warm-up
+ 10 s))) takes about 15 minutes once the peers are installed; the first run installs them (a few
minutes more).
Not part of ``make test``: it downloads the peers.
"""
