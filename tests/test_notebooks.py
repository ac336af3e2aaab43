"""The example notebooks run top to bottom (on tiny models and the organism), so they cannot rot."""

from __future__ import annotations

from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.ipynb"))
PROMISES = {
    # notebook 02 says utility and harm move together: each task update, projected onto the
    # alignment subspace, brings its own metric back as the subspace grows
    "02_weight_space_steering": (
        "top = sweep[sweep['method'] == 'topk'].set_index(['task', 'frac'])\n"
        "assert top.loc[('useful', 0.99), 'utility'] > top.loc[('useful', 0.01), 'utility'], top\n"
        "assert top.loc[('harmful', 0.99), 'harm'] > top.loc[('harmful', 0.01), 'harm'], top"
    ),
    # notebook 04 says attribution patching tracks real patching per head, the full circuit is faithful,
    # the harmful fine-tune rotates the refusal direction while the useful one keeps it, adding the
    # direction makes W_A refuse benign requests and ablating it shrinks its refusal margin
    "04_circuits_across_checkpoints": (
        "assert corr > 0.7, corr\n"
        "f = faith.set_index(['stage', 'n_edges']).fraction\n"
        "assert abs(f.loc[('wa', int(faith.n_edges.max()))] - 1) < 1e-3 and abs(f.loc[('wa', 0)]) < 1e-3, f\n"
        "cos = stats[stats.layer == 2].set_index('stage').cosine\n"
        "assert cos['useful'] > 0.7 > 0.6 > cos['harmful'], cos  # builds differ slightly: 0.83-0.92 seen\n"
        "assert effect['harmless how-to, direction added'][1] > effect['harmless how-to'][1] + 0.5, effect\n"
        "assert effect['harmful, direction ablated'][0] < 0.5 * effect['harmful'][0], effect"
    ),
}
NOISE = ("TqdmWarning", "IProgress not found")


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_notebook_runs(path, organism_family, monkeypatch, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("DELTALENS_ORGANISM_DIR", str(organism_family.root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    nb = nbformat.read(path, as_version=4)
    if path.stem in PROMISES:
        nb.cells.append(nbformat.v4.new_code_cell(PROMISES[path.stem]))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    streams = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert not [n for n in NOISE if n in streams], streams[-2000:]  # the dev extra brings ipywidgets
    # the views render as HTML in the notebook (no network needed)
    html = [o for o in outputs if "text/html" in o.get("data", {})]
    assert html, "no rich output rendered"


def test_examples_exist():
    assert len(EXAMPLES) == 4
