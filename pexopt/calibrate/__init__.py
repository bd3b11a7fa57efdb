"""`pexopt calibrate`: micro models (`micro`) solved, run under QEMU and fitted into a target
profile's cost coefficients (`calibrate`). Above the pipeline and the target: it solves and
measures like `pexopt bench --target`, so neither `latency` nor `target` imports it."""
