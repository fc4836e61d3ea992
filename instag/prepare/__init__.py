"""Turning a talking-head video into a training set: `pipeline` (the `instag prepare` job), `face` (face mesh, pose, AUs),
`masks` (region maps and priors), `report` (the contact sheet) and `speech_encoder` (optional audio features).

Hand-written, not generated: nbdev 2 does not make a subpackage `__init__`. It imports nothing, so importing one module
of the chapter does not load the others."""
