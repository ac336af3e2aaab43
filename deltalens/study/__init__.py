"""The study that deltalens reproduces, built on the library: *Safety Subspaces are Not Distinct*.

Nothing in the library imports this package; only the ``deltalens`` command line dispatches to it.

* ``battery``: the typed battery config, the resumable runner, the verdicts, ``deltalens run``;
* ``organism``: the built-in model organism family (data, training, evaluation, ``deltalens organism``);
* ``smollm2`` and ``alignment``: SmolLM2-135M-Instruct from its PyPI package and the recipe that
  safety-aligns it (the ``smollm2`` preset);
* ``report``: ``deltalens report``, the HTML report of a battery's results folder.
* ``tables``: the battery's table schemas (the library's declared schemas plus the study's labels).
"""

PAPER_FRACS: tuple[float, ...] = (0.01, 0.25, 0.5, 0.75, 0.99)
"""The paper's rank fractions k / min(m, n) for the subspace sweeps."""

__all__ = ["PAPER_FRACS"]
