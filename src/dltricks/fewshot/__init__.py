"""Learning from few labels, and from none.

* :mod:`.episodes`: episodic N-way K-shot sampling, the MNIST and CIFAR-10 class splits, prototypical networks,
  the 95 % episode interval;
* :mod:`.metric`: matching networks and Siamese networks (contrastive loss);
* :mod:`.baseline`: the fine-tuned baseline (a classifier of the training classes, a new head per episode);
* :mod:`.maml`: MAML (second order), first-order MAML and Reptile as an episode task of ``fit``, set by the
  recipe section ``maml`` (:func:`~dltricks.fewshot.maml.fit_meta`);
* :mod:`.zeroshot`: attribute-based zero-shot recognition (DAP, attribute compatibility), GZSL metrics.

Every training run goes through :func:`dltricks.train.fit`; docs/fewshot.md has the measured results.

Sits above :mod:`dltricks.train` in the layering (tests/test_layering.py): it uses data sets and models and
may use the training loop, and experiments build on it.
"""

from dltricks.fewshot.episodes import (Episode, EpisodeSampler, evaluate_episodes, prototypical_logits,
                                       train_prototypical)

__all__ = ["Episode", "EpisodeSampler", "prototypical_logits", "train_prototypical", "evaluate_episodes"]
