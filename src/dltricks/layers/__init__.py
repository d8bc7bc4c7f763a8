"""Reusable building blocks (convolutions, norms, attention, SSM scans...) composed by ``models/``."""
