"""Regularised (aging) evolution as an Optuna sampler: ``--sampler evolution``.

Real, Aggarwal, Huang & Le, "Regularized Evolution for Image Classifier Architecture Search", AAAI 2019,
Algorithm 1. A population of ``P`` models is kept as a queue; each cycle

    1. samples ``S`` members of the population uniformly at random (with replacement),
    2. takes the best of them as the parent,
    3. trains a child: the parent with exactly one choice mutated (here: one parameter of the trial,
       picked uniformly among those that can change, redrawn to a different value),
    4. appends the child and removes the *oldest* member, not the worst (the "aging" that regularises:
       a model survives by having good children, not by one lucky evaluation).

The first ``P`` trials are random (the initial population). As an Optuna sampler the queue is not stored:
it is read from the study at the start of every trial as the ``P`` complete trials that finished last, so
workers on one storage (SQLite, PostgreSQL) share one population and a resumed search goes on where it
stopped. A child records its parent (user attribute ``evolution_parent``) and the mutated parameter
(``evolution_mutated``). Parameters the parent does not have (a conditional branch the mutation opened)
are drawn at random. Pruned and failed trials are not members; several objectives are refused (the
paper's tournament needs one ranking; put a parameter or latency limit into the space's ``constraints``).

Real et al. report aging evolution reaching higher accuracy earlier than reinforcement learning and random
search on the NASNet space, with P = 100 and S = 25 over 20,000 models per search; our defaults (``P = 10``,
``S = 3``) are sized for searches of tens of trials. ``tests/test_search_nas.py`` checks the algorithm step
by step against a direct transcription of Algorithm 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState

__all__ = ["RegularizedEvolutionSampler"]


class RegularizedEvolutionSampler(BaseSampler):
    """Aging evolution (Real et al. 2019) over the study's parameters; one objective.

    Args:
        population_size: P, the complete trials that form the population (the last P to finish).
        sample_size: S, the tournament size (members drawn with replacement; the best is the parent).
        seed: seed of the tournament, the mutations and the random start.
    """

    def __init__(self, *, population_size: int = 10, sample_size: int = 3, seed: int | None = None) -> None:
        if population_size < 2 or not 1 <= sample_size:
            raise ValueError(f"population_size >= 2 and sample_size >= 1 needed, got {population_size}, {sample_size}")
        self.population_size, self.sample_size = population_size, sample_size
        self._rng = np.random.RandomState(seed)
        self._random = RandomSampler(seed=seed)
        self._plans: dict[int, tuple[FrozenTrial, str | None]] = {}  # trial id -> (parent, mutated parameter)

    def reseed_rng(self) -> None:
        self._rng.seed()
        self._random.reseed_rng()

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}

    def population(self, study: optuna.Study) -> list[FrozenTrial]:
        """The ``P`` complete trials that finished last (oldest first)."""
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        done = sorted(done, key=lambda t: (t.datetime_complete, t.number))
        return done[-self.population_size:] if len(done) >= self.population_size else []

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if len(study.directions) != 1:
            raise ValueError("RegularizedEvolutionSampler optimises one objective")
        members = self.population(study)
        if not members or "fixed_params" in trial.system_attrs:
            return  # the initial population (random trials), or a retried or enqueued trial (its parameters given)
        sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
        tournament = [members[i] for i in self._rng.randint(len(members), size=self.sample_size)]
        parent = max(tournament, key=lambda t: sign * t.value)
        mutable = [name for name, dist in parent.distributions.items() if not dist.single()]
        mutated = mutable[self._rng.randint(len(mutable))] if mutable else None
        self._plans[trial._trial_id] = (parent, mutated)
        study._storage.set_trial_user_attr(trial._trial_id, "evolution_parent", parent.number)
        study._storage.set_trial_user_attr(trial._trial_id, "evolution_mutated", mutated)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        plan = self._plans.get(trial._trial_id)
        if plan is None:
            return self._random.sample_independent(study, trial, param_name, param_distribution)
        parent, mutated = plan
        same_space = parent.distributions.get(param_name) == param_distribution
        if not same_space:
            return self._random.sample_independent(study, trial, param_name, param_distribution)
        if param_name != mutated:
            return parent.params[param_name]
        return self._mutate(study, trial, param_name, param_distribution, parent.params[param_name])

    def _mutate(self, study: optuna.Study, trial: FrozenTrial, name: str, dist: BaseDistribution, value: Any) -> Any:
        """A value of ``dist`` other than ``value``: another category, or a fresh random draw."""
        if isinstance(dist, CategoricalDistribution):
            others: Sequence[Any] = [c for c in dist.choices if c != value]
            return others[self._rng.randint(len(others))]
        for _ in range(100):  # a continuous draw equals the parent's with probability zero; ints may repeat
            new = self._random.sample_independent(study, trial, name, dist)
            if new != value:
                return new
        return new

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._plans.pop(trial._trial_id, None)
