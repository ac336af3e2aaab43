"""The model organism: a tiny chat LM family W_0 → W_A → {useful, harmful, contaminated}, built on CPU.

``data`` writes the synthetic chat data and held-out prompt sets, ``family`` holds the config,
the family object and its manifest, ``build`` trains the stages (cached by config hash),
``evaluate`` scores a stage with the organism's own judge, ``cli`` is ``deltalens organism``.

Example:
    >>> from deltalens.study import organism
    >>> fam = organism.build("organism-out", seed=0)        # doctest: +SKIP
    >>> fam["wa"], fam.checks                               # doctest: +SKIP
"""

from deltalens.study.organism.build import build, stage_keys
from deltalens.study.organism.family import (
    EVAL,
    FORMAT_VERSION,
    MANIFEST,
    PRETRAIN_TEMPLATE,
    PROMPTS,
    STAGES,
    OrganismConfig,
    OrganismFamily,
    load_stage,
    model_tokenizer,
)

__all__ = [
    "EVAL",
    "FORMAT_VERSION",
    "MANIFEST",
    "PRETRAIN_TEMPLATE",
    "PROMPTS",
    "STAGES",
    "OrganismConfig",
    "OrganismFamily",
    "build",
    "load_stage",
    "model_tokenizer",
    "stage_keys",
]
