"""Learning from few labels: episodic N-way K-shot sampling and prototypical networks (:mod:`.episodes`).

Sits above :mod:`dltricks.train` in the layering (tests/test_layering.py): it uses data sets and models and
may use the training loop, and experiments build on it.
"""

from dltricks.fewshot.episodes import (Episode, EpisodeSampler, evaluate_episodes, prototypical_logits,
                                       train_prototypical)

__all__ = ["Episode", "EpisodeSampler", "prototypical_logits", "train_prototypical", "evaluate_episodes"]
