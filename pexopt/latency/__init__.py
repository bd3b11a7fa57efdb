"""Latency: target profiles (`profile`), kernel counts per plan step (`features`), the cost
model (`cost`) and its calibration under QEMU (`micro`, `calibrate`, `nnls`)."""
