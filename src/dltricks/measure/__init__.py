"""Measurements: parameters, FLOPs, latency, memory, receptive field, calibration."""
