"""Seeded arithmetic questions with exact integer answers, split into disjoint train / held-out sets.

Each record is ``PromptRecord(text="What is 17 + 21?", label=38, group="add", source=...)``:
the label is the exact answer (an ``int``), the group is the operation.

Held-out problems never share an *unordered* operand pair and operation with a training
problem, so ``17 + 21`` in train rules out ``21 + 17`` in held-out. Subtraction puts the
larger operand first by default, so answers are non-negative.

Example:
    >>> from deltalens.data import arithmetic_tasks
    >>> train, held_out = arithmetic_tasks(n_train=200, n_test=50, seed=0)
    >>> train[0].text, train[0].label
"""

from __future__ import annotations

import operator
import random
from collections.abc import Sequence

from deltalens.data.records import PromptRecord, PromptSet

OPS = {"+": ("add", operator.add), "-": ("sub", operator.sub), "*": ("mul", operator.mul)}
DEFAULT_TEMPLATE = "What is {a} {op} {b}?"


def _check(ops: Sequence[str], digits: int, template: str) -> None:
    bad = [o for o in ops if o not in OPS]
    if bad or not ops:
        raise ValueError(f"unknown arithmetic ops {bad or ops!r}; expected a non-empty subset of {list(OPS)}")
    if not 1 <= digits <= 6:
        raise ValueError(f"digits={digits}: expected 1..6")
    for slot in ("{a}", "{op}", "{b}"):
        if slot not in template:
            raise ValueError(
                f"template {template!r} lacks the {slot} slot; expected e.g. {DEFAULT_TEMPLATE!r}"
            )


def _problems(
    n: int, seed: int, ops: Sequence[str], digits: int, negative: bool
) -> list[tuple[str, int, int]]:
    lo, hi = (0 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1
    m = hi - lo + 1
    space = len(ops) * m * (m + 1) // 2  # unordered pairs (with a == b) per op
    if n > space:
        raise ValueError(
            f"asked for {n} distinct problems but only {space} exist for ops={list(ops)}, digits={digits}"
        )
    rng = random.Random(seed)
    seen: set[tuple[str, int, int]] = set()
    out: list[tuple[str, int, int]] = []
    while len(out) < n:
        op, a, b = rng.choice(list(ops)), rng.randint(lo, hi), rng.randint(lo, hi)
        key = (op, min(a, b), max(a, b))
        if key in seen:
            continue
        seen.add(key)
        if op == "-" and not negative and a < b:
            a, b = b, a
        out.append((op, a, b))
    return out


def _record(op: str, a: int, b: int, template: str, source: str) -> PromptRecord:
    group, fn = OPS[op]
    return PromptRecord(text=template.format(a=a, op=op, b=b), label=fn(a, b), group=group, source=source)


def arithmetic_tasks(
    n_train: int = 200,
    n_test: int = 50,
    seed: int = 0,
    ops: Sequence[str] = ("+", "-"),
    digits: int = 2,
    template: str = DEFAULT_TEMPLATE,
    negative: bool = False,
) -> tuple[PromptSet, PromptSet]:
    """Disjoint ``(train, held_out)`` arithmetic sets with exact integer answers.

    Args:
        n_train, n_test: number of problems in each part.
        seed: the same seed gives the same problems in the same order.
        ops: any of ``"+"``, ``"-"``, ``"*"``.
        digits: operands have exactly this many digits (1 digit: 0-9).
        template: the question, with ``{a}``, ``{op}`` and ``{b}`` slots. An answer-only form
            (``"What is {a} {op} {b}? Answer with just the number."``) makes first-integer
            scoring meaningful; the default lets chatty models show their working.
        negative: allow ``a - b`` with ``a < b`` (negative answers).

    Returns:
        Two :class:`PromptSet` with ``label=<int answer>``, ``group`` in ``add / sub / mul`` and
        ``source`` ``"deltalens/arithmetic/train"`` or ``".../test"``.

    Example:
        >>> train, test = arithmetic_tasks(100, 20, seed=1, ops=("+",))
        >>> assert not set(train.texts) & set(test.texts)
    """
    if n_train < 0 or n_test < 0:
        raise ValueError(f"n_train and n_test must be >= 0, got {n_train}, {n_test}")
    _check(ops, digits, template)
    probs = _problems(n_train + n_test, seed, ops, digits, negative)
    src = "deltalens/arithmetic"
    train = PromptSet(
        (_record(*p, template, f"{src}/train") for p in probs[:n_train]), name="arithmetic-train"
    )
    test = PromptSet((_record(*p, template, f"{src}/test") for p in probs[n_train:]), name="arithmetic-test")
    return train, test
