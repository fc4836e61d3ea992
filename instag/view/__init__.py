"""The live viewer: `viewer` (the viser server, `render_fn`, the `instag view` job) and `scenes` (what it can show: a toy
head, a dataset, a synthetic ground truth, a trained run).

Hand-written, not generated: nbdev 2 does not make a subpackage `__init__`. It imports nothing."""
