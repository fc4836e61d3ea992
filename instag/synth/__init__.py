"""The synthetic corpus: `speech` (a formant voice and its visemes), `head` (a procedural Gaussian head), `pose` (posing it)
and `corpus` (the `instag synth` job that renders datasets with known ground truth).

Hand-written, not generated: nbdev 2 does not make a subpackage `__init__`. It imports nothing."""
