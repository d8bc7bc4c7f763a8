"""Human-readable dates -> ISO 8601: the classic attention demonstration, as a trainable task.

    "Saturday 9 May 1998", "9 mai 1998", "Samstag, 9. Mai 1998", "09/05/98", "the 9th of May 1998"
        -> "1998-05-09"

Each target character is found in one or two places of the source (the day digits, the month name, the
year digits), at positions that move with the format, so an attention decoder learns a sharp, readable
alignment while a decoder that reads one summary vector must memorise the whole input.

Generator
---------
* Dates are the 36,525 days from 1950-01-01 to 2049-12-31. Two-digit years follow one pivot
  (50-99 -> 19xx, 00-49 -> 20xx), so every string has exactly one reading.
* 57 formats (:data:`FORMATS`) in 6 groups drawn with equal probability: numeric (day first, as in
  most of the world: "09/05/98", "9.5.1998", "1998/05/09", "19980509"...), English ("May 9th, 1998",
  "Sat, 9 May 98"...), French ("le 1er mai 1998", "samedi 9 mai 1998"...), German, Spanish and Italian.
  Formats with words are randomly kept as written, lower-cased or upper-cased.
* Held-out dates: a day belongs to the validation split iff a hash of its ordinal says so (10 % of
  days). No validation *date* occurs in training, in any format, so the task measures generalisation,
  not memorisation. Samples are drawn with ``random.Random(seed).random()`` (the one stream Python
  guarantees across versions), so a (seed, size) pair always gives the same data.

Vocabularies (character level): the source vocabulary is ``<pad>``, ``<unk>`` and every character the
generator can produce (:data:`SOURCE_VOCAB`, 76 symbols); the target vocabulary is ``<pad> <bos> <eos>``,
``-`` and the digits (14 symbols). Targets are [``<bos>``, 10 characters, ``<eos>``].

Task (``--data dates``)
-----------------------
Batches are ``((src, tgt_in), tgt_out)``: source ids (B, S) right-padded with 0, ``tgt_in`` = ``<bos>`` + the
ISO string (teacher forcing), ``tgt_out`` = the ISO string + ``<eos>``; a model is called as
``model(src, tgt_in)`` and returns logits (B, T, V). The loss is token-level cross-entropy with padding
ignored; the metrics are the per-sample mean token loss, ``accuracy`` = exact match of the whole string
and ``token_accuracy``. Exact match under teacher forcing equals exact match of greedy decoding: if every
arg-max is right given the true prefix, greedy decoding reproduces that prefix step by step.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import random
from collections.abc import Iterator, Sequence

import torch

from dltricks.data.loader import derive_seed
from dltricks.errors import ConfigError, DataError

__all__ = ["LANGUAGES", "FORMATS", "SOURCE_VOCAB", "TARGET_VOCAB", "PAD_ID", "UNK_ID", "BOS_ID", "EOS_ID",
           "FIRST_DAY", "LAST_DAY", "is_held_out", "format_date", "sample_dates", "encode_source", "encode_target",
           "decode_target", "DatesDataset", "DatesLoader"]

FIRST_DAY, LAST_DAY = dt.date(1950, 1, 1), dt.date(2049, 12, 31)
HELD_OUT_FRACTION = 0.1

# Month names, abbreviated month names, weekday names (Monday first), abbreviated weekday names.
LANGUAGES: dict[str, dict[str, tuple[str, ...]]] = {
    "en": {
        "months": ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
                   "November", "December"),
        "months_abbr": ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
        "weekdays": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
        "weekdays_abbr": ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"),
    },
    "fr": {
        "months": ("janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre", "octobre",
                   "novembre", "décembre"),
        "months_abbr": ("janv.", "févr.", "mars", "avr.", "mai", "juin", "juil.", "août", "sept.", "oct.", "nov.",
                        "déc."),
        "weekdays": ("lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche"),
        "weekdays_abbr": ("lun.", "mar.", "mer.", "jeu.", "ven.", "sam.", "dim."),
    },
    "de": {
        "months": ("Januar", "Februar", "März", "April", "Mai", "Juni", "Juli", "August", "September", "Oktober",
                   "November", "Dezember"),
        "months_abbr": ("Jan.", "Feb.", "März", "Apr.", "Mai", "Juni", "Juli", "Aug.", "Sept.", "Okt.", "Nov.", "Dez."),
        "weekdays": ("Montag", "Dienstag", "Mittwoch", "Donnerstag", "Freitag", "Samstag", "Sonntag"),
        "weekdays_abbr": ("Mo.", "Di.", "Mi.", "Do.", "Fr.", "Sa.", "So."),
    },
    "es": {
        "months": ("enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto", "septiembre", "octubre",
                   "noviembre", "diciembre"),
        "months_abbr": ("ene.", "feb.", "mar.", "abr.", "may.", "jun.", "jul.", "ago.", "sept.", "oct.", "nov.",
                        "dic."),
        "weekdays": ("lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo"),
        "weekdays_abbr": ("lun.", "mar.", "mié.", "jue.", "vie.", "sáb.", "dom."),
    },
    "it": {
        "months": ("gennaio", "febbraio", "marzo", "aprile", "maggio", "giugno", "luglio", "agosto", "settembre",
                   "ottobre", "novembre", "dicembre"),
        "months_abbr": ("gen", "feb", "mar", "apr", "mag", "giu", "lug", "ago", "set", "ott", "nov", "dic"),
        "weekdays": ("lunedì", "martedì", "mercoledì", "giovedì", "venerdì", "sabato", "domenica"),
        "weekdays_abbr": ("lun", "mar", "mer", "gio", "ven", "sab", "dom"),
    },
}

# Templates: {d} day, {dd} zero-padded day, {m}/{mm} month number, {yyyy}/{yy} year, {M}/{Mab} month name /
# abbreviation, {W}/{Wab} weekday / abbreviation, {do} English ordinal day (9th), {d1er} French day (1er).
FORMATS: dict[str, tuple[str, ...]] = {
    "num": ("{dd}/{mm}/{yyyy}", "{d}/{m}/{yyyy}", "{dd}/{mm}/{yy}", "{d}/{m}/{yy}", "{dd}.{mm}.{yyyy}",
            "{d}.{m}.{yyyy}", "{dd}.{mm}.{yy}", "{dd}-{mm}-{yyyy}", "{d}-{m}-{yy}", "{yyyy}/{mm}/{dd}",
            "{yyyy}.{mm}.{dd}", "{yyyy}{mm}{dd}"),
    "en": ("{d} {M} {yyyy}", "{dd} {M} {yyyy}", "{d} {Mab} {yyyy}", "{d} {M} {yy}", "{M} {d}, {yyyy}",
           "{Mab} {d}, {yyyy}", "{M} {d} {yyyy}", "{M} {do}, {yyyy}", "{do} {M} {yyyy}", "the {do} of {M} {yyyy}",
           "{W} {d} {M} {yyyy}", "{W}, {M} {d}, {yyyy}", "{Wab} {d} {Mab} {yyyy}", "{Wab}, {d} {Mab} {yy}",
           "{dd}-{Mab}-{yyyy}", "{M} {d}, '{yy}"),
    "fr": ("{d1er} {M} {yyyy}", "le {d1er} {M} {yyyy}", "{W} {d1er} {M} {yyyy}", "{W}, {d} {M} {yyyy}",
           "{d} {Mab} {yyyy}", "{d} {M} {yy}", "{Wab} {d} {Mab} {yyyy}"),
    "de": ("{d}. {M} {yyyy}", "{dd}. {M} {yyyy}", "{W}, {d}. {M} {yyyy}", "{W}, den {d}. {M} {yyyy}",
           "{d}. {Mab} {yyyy}", "{d}. {M} {yy}", "{Wab}, {d}. {Mab} {yyyy}"),
    "es": ("{d} de {M} de {yyyy}", "{W}, {d} de {M} de {yyyy}", "{d} {M} {yyyy}", "{d} de {M} de {yy}",
           "{d} {Mab} {yyyy}", "{Wab} {d} {Mab} {yyyy}", "{W} {d} de {M}, {yyyy}"),
    "it": ("{d} {M} {yyyy}", "{W} {d} {M} {yyyy}", "{d} {M} {yy}", "{W}, {d} {M} {yyyy}", "{d} {Mab} {yyyy}",
           "{Wab} {d} {Mab} {yyyy}", "{d}/{Mab}/{yyyy}", "{Wab}, {dd} {M} {yyyy}"),
}
_GROUPS = tuple(FORMATS)


def _ordinal_en(day: int) -> str:
    suffix = "th" if 10 <= day % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def format_date(date: dt.date, template: str, lang: str = "en", case: str = "keep") -> str:
    """Fill a :data:`FORMATS` template for ``date`` in ``lang`` (``num`` uses English names, never needed);
    ``case`` is ``keep``, ``lower`` or ``upper``."""
    names = LANGUAGES[lang if lang in LANGUAGES else "en"]
    text = template.format(
        d=date.day, dd=f"{date.day:02d}", m=date.month, mm=f"{date.month:02d}", yyyy=f"{date.year:04d}",
        yy=f"{date.year % 100:02d}", M=names["months"][date.month - 1], Mab=names["months_abbr"][date.month - 1],
        W=names["weekdays"][date.weekday()], Wab=names["weekdays_abbr"][date.weekday()], do=_ordinal_en(date.day),
        d1er="1er" if date.day == 1 else str(date.day))
    if case == "lower":
        return text.lower()
    if case == "upper":
        return text.upper()
    return text


def _source_alphabet() -> str:
    chars = set("0123456789 ,./-'")
    pieces = [name for lang in LANGUAGES.values() for names in lang.values() for name in names]
    pieces += [t for templates in FORMATS.values() for t in templates] + ["st", "nd", "rd", "th", "er"]
    for piece in pieces:
        for variant in (piece, piece.lower(), piece.upper()):
            chars.update(variant)
    chars -= set("{}")  # template braces
    return "".join(sorted(chars))


PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 1, 2
SOURCE_VOCAB: tuple[str, ...] = ("<pad>", "<unk>", *_source_alphabet())
TARGET_VOCAB: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "-", *"0123456789")
_SRC_INDEX = {c: i for i, c in enumerate(SOURCE_VOCAB) if len(c) == 1}
_TGT_INDEX = {c: i for i, c in enumerate(TARGET_VOCAB) if len(c) == 1}
TARGET_LEN = 12  # <bos> + 10 characters + <eos>


def is_held_out(date: dt.date) -> bool:
    """True for the ~10 % of days reserved for validation (a fixed hash of the day's ordinal)."""
    return derive_seed(date.toordinal(), 20240509) % 1000 < HELD_OUT_FRACTION * 1000


@functools.lru_cache(maxsize=2)
def _days(held_out: bool) -> tuple[dt.date, ...]:
    n = (LAST_DAY - FIRST_DAY).days + 1
    days = (FIRST_DAY + dt.timedelta(days=i) for i in range(n))
    return tuple(d for d in days if is_held_out(d) == held_out)


def sample_dates(num: int, *, held_out: bool, seed: int = 0,
                 groups: Sequence[str] = _GROUPS) -> list[tuple[str, str, str]]:
    """``num`` samples ``(source text, ISO target, format group)`` from training days (``held_out=False``)
    or validation days (``held_out=True``); a pure function of its arguments."""
    unknown = [g for g in groups if g not in FORMATS]
    if unknown or not groups:
        raise ConfigError(f"unknown date format groups {unknown}; choose from {', '.join(_GROUPS)}")
    days = _days(held_out)
    rng = random.Random(derive_seed(seed, int(held_out)))
    out = []
    for _ in range(num):
        date = days[int(rng.random() * len(days))]
        group = groups[int(rng.random() * len(groups))]
        templates = FORMATS[group]
        template = templates[int(rng.random() * len(templates))]
        u = rng.random()
        case = "keep" if group == "num" or u < 0.6 else ("lower" if u < 0.8 else "upper")
        out.append((format_date(date, template, group, case), date.isoformat(), group))
    return out


def encode_source(texts: Sequence[str], max_len: int | None = None) -> torch.Tensor:
    """Character ids (N, S), right-padded with ``PAD_ID``; unknown characters map to ``UNK_ID``."""
    S = max_len or max(len(t) for t in texts)
    rows = []
    for text in texts:
        if len(text) > S:
            raise DataError(f"date string {text!r} has {len(text)} characters, more than the {S} allowed")
        rows.append([_SRC_INDEX.get(c, UNK_ID) for c in text] + [PAD_ID] * (S - len(text)))
    return torch.tensor(rows, dtype=torch.long).view(len(texts), S)


def encode_target(isos: Sequence[str]) -> torch.Tensor:
    """(N, 12) ids: ``<bos>`` + ISO characters + ``<eos>``."""
    rows = [[BOS_ID, *(_TGT_INDEX[c] for c in iso), EOS_ID] for iso in isos]
    if any(len(r) != TARGET_LEN for r in rows):
        raise DataError("ISO dates must have exactly 10 characters (YYYY-MM-DD)")
    return torch.tensor(rows, dtype=torch.long)


def decode_target(ids: Sequence[int] | torch.Tensor) -> str:
    """Target ids -> string, stopping at ``<eos>`` and skipping ``<bos>``/``<pad>``."""
    chars = []
    for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids):
        if i == EOS_ID:
            break
        if i in (PAD_ID, BOS_ID):
            continue
        chars.append(TARGET_VOCAB[i])
    return "".join(chars)


class DatesDataset:
    """Encoded samples: ``src`` (N, S) and ``tgt`` (N, 12) ids, with the texts and format groups."""

    def __init__(self, samples: Sequence[tuple[str, str, str]], *, name: str) -> None:
        if not samples:
            raise DataError(f"{name}: no samples")
        self.name = name
        self.texts = [s[0] for s in samples]
        self.isos = [s[1] for s in samples]
        self.groups = [s[2] for s in samples]
        self.src = encode_source(self.texts)
        self.tgt = encode_target(self.isos)
        self.lengths = (self.src != PAD_ID).sum(1)

    def __len__(self) -> int:
        return len(self.texts)


class DatesLoader:
    """Batches ``((src, tgt_in), tgt_out)`` of a :class:`DatesDataset`; each batch is cut to its longest source.

    Follows the loader protocol of :mod:`dltricks.tasks.base`: the order of epoch e is
    ``torch.randperm`` seeded with ``derive_seed(seed, e)`` (or in order without shuffling); rank r of
    ``world_size`` takes positions r, r + world_size, ... of it.
    """

    def __init__(self, dataset: DatesDataset, *, batch_size: int, shuffle: bool = False, drop_last: bool = False,
                 seed: int = 0, rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu") -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigError(f"batch_size: got {batch_size!r}, expected an integer >= 1")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} / world_size {world_size}: expected 0 <= rank < world_size")
        self.dataset, self.batch_size, self.shuffle, self.drop_last = dataset, batch_size, shuffle, drop_last
        self.seed, self.rank, self.world_size = int(seed), rank, world_size
        self.device = torch.device(device)
        self._src, self._tgt, self._lengths = dataset.src.to(self.device), dataset.tgt.to(self.device), dataset.lengths
        shard = len(range(rank, len(dataset), world_size))
        self._num_batches = shard // batch_size if drop_last else math.ceil(shard / batch_size)
        if self._num_batches == 0:
            raise DataError(f"{dataset.name}: {shard} samples per rank, fewer than one batch of {batch_size}")
        self.num_samples = self._num_batches * batch_size if drop_last else shard
        self.epoch = 0

    def __len__(self) -> int:
        return self._num_batches

    def order(self, epoch: int) -> torch.Tensor:
        N = len(self.dataset)
        if self.shuffle:
            order = torch.randperm(N, generator=torch.Generator().manual_seed(derive_seed(self.seed, epoch)))
        else:
            order = torch.arange(N)
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]]:
        return self.iter_epoch(self.epoch)

    def iter_epoch(self, epoch: int,
                   start_batch: int = 0) -> Iterator[tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]]:
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch {start_batch} is outside [0, {len(self)}]")
        order = self.order(epoch)
        for b in range(start_batch, len(self)):
            index = order[b * self.batch_size:(b + 1) * self.batch_size]
            S = int(self._lengths[index].max())
            index = index.to(self.device)
            src = self._src.index_select(0, index)[:, :S]  # (B, S)
            tgt = self._tgt.index_select(0, index)  # (B, 12)
            yield (src, tgt[:, :-1]), tgt[:, 1:]

    def __repr__(self) -> str:
        return f"DatesLoader({self.dataset.name}, batch_size={self.batch_size}, batches={len(self)})"
