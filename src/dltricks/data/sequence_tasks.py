"""Long-sequence tasks from the state-space-model papers, as trainer tasks (``--data NAME``).

* **Selective Copying** (Gu & Dao 2023, Mamba, sec. 4.1.1 and Fig. 2): ``num_tokens`` = 16 data tokens
  are scattered at random positions of a sequence otherwise filled with a noise token; at the end
  ``num_tokens`` copy markers ask the model to output the data tokens in order. Unlike the plain copying
  task, the spacing varies, so a time-invariant model (a fixed convolution) cannot solve it: the
  model must select what to remember by content. Vocabulary 16 = 14 data tokens + noise + marker;
  ``seq_len`` (the whole input, markers included) up to 4096 and beyond.
* **Induction Heads** (Olsson et al. 2022; Mamba sec. 4.1.2): random tokens from a vocabulary of 16
  (15 ordinary + one trigger); the trigger appears once at a random position followed by a random
  token v, and again as the last token, where the model must predict v. Mamba trains at length 256
  and is evaluated at up to 2^20; here any ``seq_len`` (e.g. 2^14) works for evaluation.
* **Sequential / permuted MNIST** (Le, Jaitly & Hinton 2015): a 28×28 digit read one pixel at a time,
  784 steps of one normalised value; the permuted variant applies one fixed permutation of the 784
  positions (here: pixels ordered by the SHA-256 of ``"dltricks-psmnist:<i>"``, stable across library
  versions), which destroys locality.
* **ListOps** (Nangia & Bowman 2018; the Long Range Arena generator of Tay et al. 2021): nested
  prefix expressions over digits with MAX, MIN, MED (median, truncated to an integer) and SM (sum
  modulo 10), e.g. ``[MAX 4 3 [MIN 2 3 ] 1 0 ]`` = 4; ten classes. Trees are generated as in LRA's
  ``listops.py`` (max depth 10, up to 10 arguments, a leaf with probability 0.75 at every non-final
  depth, rejection to a length range, 500-2000 tokens in LRA); tokens are the operators, digits and
  ``]`` (parentheses dropped, as the S4 ListOps loader does). Sequences are padded on the *left*, so
  that a causal model's last position is the expression's last token.

Synthetic batches are generated on the fly from a seed derived from ``(seed, epoch, batch, rank)``:
every epoch sees fresh data, and a resumed run regenerates exactly the same batches (the loader
protocol of :mod:`dltricks.tasks.base`). Validation batches are fixed.

Token targets use ``IGNORE_INDEX`` (-100) at positions that are not scored; :func:`masked_token_loss`
and :func:`masked_token_metrics` score only the others (the task's ``loss`` and ``batch_metrics``).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from typing import Any

import torch

from dltricks.data.loader import derive_seed
from dltricks.errors import ConfigError

__all__ = ["IGNORE_INDEX", "selective_copying_batch", "induction_heads_batch", "SyntheticLoader",
           "psmnist_permutation", "ListOpsVocab", "listops_tree", "listops_tokens", "listops_value",
           "generate_listops", "SequenceImageLoader", "TensorPairLoader"]

IGNORE_INDEX = -100


# ---------------------------------------------------------------------------------------------------
# Generators
# ---------------------------------------------------------------------------------------------------

def selective_copying_batch(batch_size: int, *, seq_len: int = 4096, num_tokens: int = 16, vocab_size: int = 16,
                            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of Selective Copying: ``(x, y)``, both (B, seq_len) int64.

    Tokens: data 0..vocab−3, noise = vocab−2, copy marker = vocab−1. The first ``seq_len − num_tokens``
    positions hold the data tokens at sorted random positions and noise elsewhere; the last ``num_tokens``
    positions are markers. ``y`` holds the data tokens in order at the marker positions, IGNORE_INDEX
    elsewhere.
    """
    context = seq_len - num_tokens
    if vocab_size < 3 or context < num_tokens or num_tokens < 1:
        raise ConfigError(f"selective copying needs vocab_size >= 3 and seq_len >= 2 * num_tokens; got vocab_size="
                          f"{vocab_size}, seq_len={seq_len}, num_tokens={num_tokens}")
    noise, marker = vocab_size - 2, vocab_size - 1
    data = torch.randint(0, vocab_size - 2, (batch_size, num_tokens), generator=generator)  # (B, K)
    # K distinct positions per row: the K smallest of L' random keys, then sorted (order kept).
    keys = torch.rand(batch_size, context, generator=generator)
    positions = keys.topk(num_tokens, dim=1, largest=False).indices.sort(dim=1).values  # (B, K)
    x = torch.full((batch_size, seq_len), noise, dtype=torch.int64)
    x.scatter_(1, positions, data)
    x[:, context:] = marker
    y = torch.full((batch_size, seq_len), IGNORE_INDEX, dtype=torch.int64)
    y[:, context:] = data
    return x, y


def induction_heads_batch(batch_size: int, *, seq_len: int = 256, vocab_size: int = 16,
                          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of Induction Heads: ``(x, y)``, both (B, seq_len) int64.

    Ordinary tokens 0..vocab−2, trigger = vocab−1. The trigger sits at a random position p ≤ L−3 and at
    L−1; ``y`` is the token after the first trigger at position L−1, IGNORE_INDEX elsewhere.
    """
    if seq_len < 4 or vocab_size < 3:
        raise ConfigError(f"induction heads needs seq_len >= 4 and vocab_size >= 3; got {seq_len} and {vocab_size}")
    trigger = vocab_size - 1
    x = torch.randint(0, vocab_size - 1, (batch_size, seq_len), generator=generator)
    p = torch.randint(0, seq_len - 2, (batch_size,), generator=generator)  # first trigger in [0, L-3]
    rows = torch.arange(batch_size)
    x[rows, p] = trigger
    x[:, -1] = trigger
    y = torch.full((batch_size, seq_len), IGNORE_INDEX, dtype=torch.int64)
    y[:, -1] = x[rows, p + 1]  # the token to recall (never the trigger: p + 1 <= L - 2)
    return x, y


# ---------------------------------------------------------------------------------------------------
# ListOps (LRA generator)
# ---------------------------------------------------------------------------------------------------

class ListOpsVocab:
    """Token ids: 0 pad, 1-10 digits 0-9, 11 [MIN, 12 [MAX, 13 [MED, 14 [SM, 15 ] (16 in all)."""

    PAD = 0
    OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
    END = "]"
    TOKENS = ("<pad>",) + tuple(str(d) for d in range(10)) + OPERATORS + (END,)
    SIZE = len(TOKENS)
    INDEX = {t: i for i, t in enumerate(TOKENS)}

    @classmethod
    def encode(cls, tokens: list[str]) -> list[int]:
        return [cls.INDEX[t] for t in tokens]

    @classmethod
    def decode(cls, ids: list[int]) -> list[str]:
        return [cls.TOKENS[i] for i in ids if i != cls.PAD]


_LEAF_PROBABILITY = 0.75  # LRA: VALUE_P = 0.25 is the probability of an operator node


def listops_tree(rng: random.Random, *, depth: int = 1, max_depth: int = 10, max_args: int = 10) -> tuple[Any, int]:
    """A random expression as nested lists ``[op, arg, ...]`` (digits are ints) and its token count.

    LRA's rule: below ``max_depth`` a node is a digit with probability 0.75, else an operator with
    2..max_args arguments; at ``max_depth`` it is always a digit. An operator costs two tokens (op and ]).
    """
    if depth >= max_depth or rng.random() < _LEAF_PROBABILITY:
        return rng.randrange(10), 1
    n_args = rng.randint(2, max_args)
    op = rng.choice(ListOpsVocab.OPERATORS)
    args, length = [], 2
    for _ in range(n_args):
        sub, sub_len = listops_tree(rng, depth=depth + 1, max_depth=max_depth, max_args=max_args)
        args.append(sub)
        length += sub_len
    return [op, *args], length


def listops_tokens(tree: Any) -> list[str]:
    """Prefix tokens of an expression: ``[MAX 4 [MIN 2 3 ] ]``."""
    if isinstance(tree, int):
        return [str(tree)]
    out = [tree[0]]
    for arg in tree[1:]:
        out += listops_tokens(arg)
    return out + [ListOpsVocab.END]


def listops_value(tree: Any) -> int:
    """The value of an expression (MED is the median truncated to an integer, as LRA's int(np.median))."""
    if isinstance(tree, int):
        return tree
    op, values = tree[0], [listops_value(a) for a in tree[1:]]
    if op == "[MIN":
        return min(values)
    if op == "[MAX":
        return max(values)
    if op == "[SM":
        return sum(values) % 10
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else int((ordered[mid - 1] + ordered[mid]) / 2)


def generate_listops(num_samples: int, *, seed: int = 0, min_length: int = 500, max_length: int = 2000,
                     max_depth: int = 10, max_args: int = 10, max_tries: int = 10_000_000
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_samples`` distinct expressions with min_length < tokens < max_length (LRA's rejection rule),
    as left-padded ids (N, max_length − 1) and labels (N,)."""
    if not 0 < min_length < max_length - 1:
        raise ConfigError(f"ListOps: need 0 < min_length < max_length - 1, got {min_length} and {max_length}")
    rng = random.Random(seed)
    seen: set[tuple[int, ...]] = set()
    width = max_length - 1
    ids = torch.full((num_samples, width), ListOpsVocab.PAD, dtype=torch.int64)
    labels = torch.empty(num_samples, dtype=torch.int64)
    tries = 0
    while len(seen) < num_samples:
        tries += 1
        if tries > max_tries:
            raise ConfigError(f"ListOps: only {len(seen)} of {num_samples} expressions of length ({min_length}, "
                              f"{max_length}) after {max_tries} trees; widen the length range")
        tree, length = listops_tree(rng, max_depth=max_depth, max_args=max_args)
        if not min_length < length < max_length:
            continue
        encoded = tuple(ListOpsVocab.encode(listops_tokens(tree)))
        if encoded in seen:
            continue
        i = len(seen)
        seen.add(encoded)
        ids[i, width - len(encoded):] = torch.tensor(encoded)
        labels[i] = listops_value(tree)
    return ids, labels


# ---------------------------------------------------------------------------------------------------
# Loaders, loss and metrics
# ---------------------------------------------------------------------------------------------------

class SyntheticLoader:
    """Batches from ``generate(generator, batch_size) -> (x, y)``, following the loader protocol.

    Batch b of epoch e is generated from a seed derived from (seed, e, b, rank), so data are fresh every
    epoch and reproducible; ``fixed=True`` (validation) reuses epoch 0's batches every epoch. A training
    loader is a *stream* (``stream = True``): its "epoch" is only an evaluation period of ``num_batches``
    fresh batches, and a run is measured in optimizer steps (``train.steps``).
    """

    stream = True

    def __init__(self, generate: Callable[..., tuple[torch.Tensor, torch.Tensor]], *,
                 batch_size: int, num_batches: int, seed: int = 0, rank: int = 0, device: str | torch.device = "cpu",
                 fixed: bool = False, indexed: bool = False) -> None:
        if batch_size < 1 or num_batches < 1:
            raise ConfigError(f"batch_size and number of batches must be >= 1, got {batch_size} and {num_batches}")
        self.generate, self.batch_size, self._num_batches = generate, batch_size, num_batches
        self.seed, self.rank, self.device, self.fixed = int(seed), rank, torch.device(device), fixed
        self.indexed = indexed  # generate(g, n, i) also gets the running batch number i (for a curriculum)
        self.num_samples = batch_size * num_batches

    def __len__(self) -> int:
        return self._num_batches

    def iter_epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for b in range(start_batch, self._num_batches):
            e = 0 if self.fixed else epoch
            g = torch.Generator().manual_seed(derive_seed(self.seed, e, b, self.rank))
            if self.indexed:
                x, y = self.generate(g, self.batch_size, e * self._num_batches + b)
            else:
                x, y = self.generate(g, self.batch_size)
            yield x.to(self.device), y.to(self.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_epoch(0)


class TensorPairLoader:
    """Shuffled batches of fixed tensors (x, y) (for ListOps), with the loader protocol's determinism."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, shuffle: bool, seed: int = 0,
                 rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu") -> None:
        self.x, self.y = x[rank::world_size], y[rank::world_size]
        self.batch_size, self.shuffle, self.seed, self.device = batch_size, shuffle, seed, torch.device(device)
        self.num_samples = self.x.shape[0]

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    def iter_epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.shuffle:
            order = torch.randperm(self.num_samples,
                                   generator=torch.Generator().manual_seed(derive_seed(self.seed, epoch)))
        else:
            order = torch.arange(self.num_samples)
        for b in range(start_batch, len(self)):
            index = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield self.x[index].to(self.device), self.y[index].to(self.device)


# ---------------------------------------------------------------------------------------------------
# Sequential MNIST
# ---------------------------------------------------------------------------------------------------

_PSMNIST_SALT = b"dltricks-psmnist:"


def psmnist_permutation(num: int = 784) -> torch.Tensor:
    """The fixed pixel permutation of permuted sequential MNIST (SHA-256 order, library-independent)."""
    keys = [hashlib.sha256(_PSMNIST_SALT + str(i).encode()).digest()[:8] for i in range(num)]
    return torch.tensor(sorted(range(num), key=keys.__getitem__), dtype=torch.int64)


class SequenceImageLoader:
    """Wraps an image loader: (B, C, H, W) batches become pixel sequences (B, H·W, C), optionally permuted."""

    def __init__(self, inner: Any, permutation: torch.Tensor | None = None) -> None:
        self.inner, self.permutation = inner, permutation
        self.num_samples = inner.num_samples

    def __len__(self) -> int:
        return len(self.inner)

    def iter_epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, Any]]:
        for x, y in self.inner.iter_epoch(epoch, start_batch):
            seq = x.flatten(2).transpose(1, 2)  # (B, H*W, C), row-major pixel order
            if self.permutation is not None:
                seq = seq[:, self.permutation.to(seq.device)]
            yield seq, y
