"""Prompt sets as typed records: HarmBench behaviours, written harmless instructions, arithmetic
tasks and user CSV / JSONL files.

Example:
    >>> import deltalens.data as D
    >>> harmful, harmless = D.harmbench(), D.harmless_prompts()
    >>> train, held_out = (harmful + harmless).split(0.6, seed=0, by="label")
    >>> arith_train, arith_test = D.arithmetic_tasks(200, 50, seed=0)
"""

from deltalens.data.arithmetic import arithmetic_tasks
from deltalens.data.files import (
    PinnedWheel,
    WheelError,
    cache_dir,
    fetch_wheel,
    load_prompts,
    read_from_wheel,
)
from deltalens.data.harmbench import harmbench
from deltalens.data.harmless import HARMLESS, harmless_prompts
from deltalens.data.records import PromptRecord, PromptSet, as_prompt_set
from deltalens.data.toxicity import do_not_answer, realtoxicityprompts

__all__ = [
    "HARMLESS",
    "PinnedWheel",
    "PromptRecord",
    "PromptSet",
    "WheelError",
    "arithmetic_tasks",
    "as_prompt_set",
    "cache_dir",
    "do_not_answer",
    "fetch_wheel",
    "harmbench",
    "harmless_prompts",
    "load_prompts",
    "read_from_wheel",
    "realtoxicityprompts",
]
