"""Typed prompt records and an immutable, splittable set of them.

A :class:`PromptRecord` is one prompt with an optional label (``"harmful"``, ``"harmless"``, an
exact integer answer ...), an optional group (a topic or category, used for stratified splits)
and the place it came from. A :class:`PromptSet` is an ordered, immutable sequence of records
with column views (``.texts``, ``.labels``, ``.groups``), seeded splits and filters.

Example:
    >>> from deltalens.data import PromptRecord, PromptSet
    >>> ps = PromptSet([PromptRecord(text="Hi", label="harmless", group="chat", source="mine")])
    >>> train, test = ps.split(0.8, seed=0)
"""

from __future__ import annotations

import html
import random
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from difflib import get_close_matches
from typing import Any, Literal, overload

Label = str | int | None


@dataclass(frozen=True, kw_only=True)
class PromptRecord:
    """One prompt.

    Attributes:
        text: the prompt text (non-empty).
        label: what the prompt is (``"harmful"`` / ``"harmless"``), or the exact answer of a task
            (an ``int`` for arithmetic), or ``None``.
        group: a topic or category (HarmBench semantic category, harmless topic, arithmetic op).
        source: where it came from, e.g. ``"harmbench/test/<BehaviorID>"`` or a file name.

    Example:
        >>> PromptRecord(text="What is 2 + 3?", label=5, group="add", source="arithmetic")
    """

    text: str
    label: Label = None
    group: str | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TypeError(f"PromptRecord.text must be a str, got {type(self.text).__name__}")
        if not self.text.strip():
            raise ValueError(f"PromptRecord.text must be non-empty (source={self.source!r})")
        if self.label is not None and (isinstance(self.label, bool) or not isinstance(self.label, str | int)):
            raise TypeError(f"PromptRecord.label must be str, int or None, got {self.label!r}")
        if self.group is not None and not isinstance(self.group, str):
            raise TypeError(f"PromptRecord.group must be a str or None, got {self.group!r}")
        if not isinstance(self.source, str):
            raise TypeError(f"PromptRecord.source must be a str, got {self.source!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "label": self.label, "group": self.group, "source": self.source}


def _as_choice_set(value: Any) -> set[Any]:
    if isinstance(value, str) or value is None or isinstance(value, int):
        return {value}
    if isinstance(value, Collection):
        return set(value)
    raise TypeError(f"expected a value or a collection of values, got {value!r}")


class PromptSet(Sequence[PromptRecord]):
    """An ordered, immutable sequence of :class:`PromptRecord`.

    Indexing with an int gives a record; with a slice, a ``PromptSet``. ``a + b`` concatenates.

    Example:
        >>> from deltalens.data import harmless_prompts
        >>> ps = harmless_prompts()
        >>> ps.texts[:2], ps.groups[:2]
        >>> train, test = ps.split(0.75, seed=0, by="group")   # stratified per topic
        >>> poems = ps.filter(group="writing")
    """

    def __init__(self, records: Iterable[PromptRecord] = (), name: str = "") -> None:
        self._records: tuple[PromptRecord, ...] = tuple(records)
        for i, r in enumerate(self._records):
            if not isinstance(r, PromptRecord):
                raise TypeError(f"PromptSet item {i} must be a PromptRecord, got {type(r).__name__}")
        self.name = name

    @classmethod
    def from_texts(
        cls,
        texts: Iterable[str],
        *,
        label: Label = None,
        group: str | None = None,
        source: str = "",
        name: str = "",
    ) -> PromptSet:
        """Build a set from plain strings that share one label / group / source.

        Example:
            >>> PromptSet.from_texts(["Hello", "Tell me a joke"], label="harmless", source="inline")
        """
        if isinstance(texts, str):
            raise TypeError("from_texts expects an iterable of strings, got a single str; wrap it in a list")
        return cls((PromptRecord(text=t, label=label, group=group, source=source) for t in texts), name=name)

    # Sequence protocol ------------------------------------------------------------------
    @overload
    def __getitem__(self, i: int) -> PromptRecord: ...
    @overload
    def __getitem__(self, i: slice) -> PromptSet: ...
    def __getitem__(self, i: int | slice) -> PromptRecord | PromptSet:
        if isinstance(i, slice):
            return PromptSet(self._records[i], name=self.name)
        return self._records[i]

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[PromptRecord]:
        return iter(self._records)

    def __add__(self, other: PromptSet) -> PromptSet:
        if not isinstance(other, PromptSet):
            return NotImplemented
        name = "+".join(n for n in (self.name, other.name) if n)
        return PromptSet(self._records + other._records, name=name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PromptSet) and self._records == other._records

    def __hash__(self) -> int:
        return hash(self._records)

    # Column views -----------------------------------------------------------------------
    @property
    def texts(self) -> list[str]:
        return [r.text for r in self._records]

    @property
    def labels(self) -> list[Label]:
        return [r.label for r in self._records]

    @property
    def groups(self) -> list[str | None]:
        return [r.group for r in self._records]

    @property
    def sources(self) -> list[str]:
        return [r.source for r in self._records]

    def to_frame(self):
        """The records as a pandas DataFrame with columns ``text, label, group, source``."""
        import pandas as pd

        return pd.DataFrame(
            [r.to_dict() for r in self._records], columns=["text", "label", "group", "source"]
        )

    # Selection --------------------------------------------------------------------------
    def filter(
        self,
        fn: Callable[[PromptRecord], bool] | None = None,
        *,
        label: Any = None,
        group: Any = None,
        source: Any = None,
    ) -> PromptSet:
        """Keep the records that match every given condition.

        Args:
            fn: a predicate on a record.
            label, group, source: a value or a collection of values to keep. A value that no
                record has raises ``ValueError`` naming the closest existing ones (typos fail
                loudly instead of giving an empty set). ``source`` also matches a prefix
                ending at ``/`` (``source="harmbench/val"``).

        Example:
            >>> hb.filter(group=["illegal", "cybercrime_intrusion"])
            >>> ps.filter(lambda r: len(r.text) < 200, label="harmless")
        """
        keep = list(self._records)
        for field, wanted in (("label", label), ("group", group)):
            if wanted is None:
                continue
            choices = _as_choice_set(wanted)
            present = {getattr(r, field) for r in keep}
            missing = choices - present
            if missing:
                valid = sorted(str(p) for p in present if p is not None)
                hints = {m: get_close_matches(str(m), valid, n=3, cutoff=0.5) for m in missing}
                raise ValueError(
                    f"filter({field}=...): no record has {field} "
                    + ", ".join(f"{m!r}" + (f" (did you mean {h}?)" if h else "") for m, h in hints.items())
                    + f"; existing {field}s: {valid[:20]}"
                )
            keep = [r for r in keep if getattr(r, field) in choices]
        if source is not None:
            prefixes = _as_choice_set(source)
            keep = [r for r in keep if any(r.source == p or r.source.startswith(f"{p}/") for p in prefixes)]
        if fn is not None:
            keep = [r for r in keep if fn(r)]
        return PromptSet(keep, name=self.name)

    def sample(self, n: int, seed: int = 0) -> PromptSet:
        """``n`` records drawn without replacement (seeded), in their original order."""
        if not 0 <= n <= len(self):
            raise ValueError(f"sample(n={n}) needs 0 <= n <= {len(self)} (the set size)")
        idx = sorted(random.Random(seed).sample(range(len(self)), n))
        return PromptSet((self._records[i] for i in idx), name=self.name)

    def split(
        self, frac: float = 0.8, seed: int = 0, by: Literal["group", "label"] | None = "group"
    ) -> tuple[PromptSet, PromptSet]:
        """Split into two disjoint parts, ``(first, second)``, with ``frac`` of the records in ``first``.

        With ``by="group"`` (or ``"label"``) the split is *stratified*: the records of each
        group are shuffled and cut separately (``round(frac * n_group)`` go first), so every
        group keeps its share in both parts. With ``by=None`` the whole set is shuffled once.
        The result depends only on ``seed`` and the records, never on the Python hash seed.
        Order within each part follows the original order.

        Gotcha: this is not a group-*disjoint* split; to hold out whole groups, use
        ``filter(group=...)``.

        Example:
            >>> train, held_out = harmbench().split(0.6, seed=0)
        """
        if not 0.0 < frac < 1.0:
            raise ValueError(f"split(frac={frac}) needs 0 < frac < 1")
        if by not in ("group", "label", None):
            raise ValueError(f"split(by={by!r}): expected 'group', 'label' or None")
        rng = random.Random(seed)
        buckets: dict[Any, list[int]] = {}
        for i, r in enumerate(self._records):
            buckets.setdefault(getattr(r, by) if by else None, []).append(i)
        first: list[int] = []
        for idx in buckets.values():  # insertion order: first appearance
            idx = list(idx)
            rng.shuffle(idx)
            first += idx[: round(frac * len(idx))]
        chosen = set(first)
        a = PromptSet((r for i, r in enumerate(self._records) if i in chosen), name=self.name)
        b = PromptSet((r for i, r in enumerate(self._records) if i not in chosen), name=self.name)
        return a, b

    # Display ----------------------------------------------------------------------------
    def _summary(self) -> str:
        labels = Counter(str(lab) for lab in self.labels if lab is not None)
        groups = {g for g in self.groups if g is not None}
        lab = ", ".join(f"{k}: {v}" for k, v in labels.most_common(4)) + (", ..." if len(labels) > 4 else "")
        name = f"{self.name!r}, " if self.name else ""
        return f"{name}{len(self)} prompts, labels {{{lab}}}, {len(groups)} groups"

    def __repr__(self) -> str:
        head = "; ".join(repr(t[:40] + ("..." if len(t) > 40 else "")) for t in self.texts[:2])
        return f"PromptSet({self._summary()}; {head}{'; ...' if len(self) > 2 else ''})"

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(r.text[:120])}</td><td>{html.escape(str(r.label))}</td>"
            f"<td>{html.escape(str(r.group))}</td><td>{html.escape(r.source)}</td></tr>"
            for r in self._records[:10]
        )
        more = f"<p>... {len(self) - 10} more</p>" if len(self) > 10 else ""
        return (
            f"<div><b>PromptSet</b> — {html.escape(self._summary())}<table>"
            f"<tr><th>text</th><th>label</th><th>group</th><th>source</th></tr>{rows}</table>{more}</div>"
        )


def as_prompt_set(prompts: PromptSet | Sequence[str] | str, *, source: str = "inline") -> PromptSet:
    """Accept a ``PromptSet``, a list of strings or one string; return a ``PromptSet``."""
    if isinstance(prompts, PromptSet):
        return prompts
    if isinstance(prompts, str):
        prompts = [prompts]
    return PromptSet.from_texts(list(prompts), source=source)
