"""Latency: target profiles (`profile`), kernel counts per plan step (`features`), the cost
model (`cost`) and the least squares its calibration fits with (`nnls`; the calibration under
QEMU is `pexopt.calibrate`)."""
