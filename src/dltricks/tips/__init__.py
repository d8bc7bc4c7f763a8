"""The evidence engine: each tip is a claim with an experiment and a verdict rule."""
