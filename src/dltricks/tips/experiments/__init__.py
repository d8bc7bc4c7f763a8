"""Experiments behind the tips, grouped by topic; each is ``fn(ctx: Context) -> Evidence``.

Experiments measure and return numbers; they never decide. Verdict rules live in the catalog.
Tips whose experiment belongs to another area (segmentation, SSM, attention) call that area's
experiment functions in :mod:`dltricks.experiments` rather than re-implementing them.
"""
