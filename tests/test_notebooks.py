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
    # every fine-tune shortens W_A's refusal direction and turns it (on these prompts the harmful one
    # less than the useful one), adding the direction makes W_A open benign answers with the refusal token,
    # and ablating it shrinks W_A's refusal margin without removing it. The organism build is
    # bitwise reproducible (one training thread), so these are the numbers every build gives.
    "04_circuits_across_checkpoints": (
        "assert corr > 0.7, corr\n"
        "f = faith.set_index(['stage', 'n_edges']).fraction\n"
        "assert abs(f.loc[('wa', int(faith.n_edges.max()))] - 1) < 1e-3 and abs(f.loc[('wa', 0)]) < 1e-3, f\n"
        "st = stats[stats.layer == 2].set_index('stage')\n"
        "assert (st.drop('wa').norm_ratio < 1 / 3).all() and st.norm_ratio['safety'] < 0.1, st\n"
        "assert (st.drop('wa').cosine < 0.8).all() and st.cosine['harmful'] > st.cosine['useful'], st\n"
        "added, plain = effect['harmless how-to, direction added'], effect['harmless how-to']\n"
        "assert plain[0] < 0 < added[0] and added[1] > 0.9 > 0.5 > added[2], effect\n"
        "ablated, harmful = effect['harmful, direction ablated'], effect['harmful']\n"
        "assert 0 < ablated[0] < 0.9 * harmful[0] and ablated[2] > 0.9, effect\n"
        "m = dla[dla.component.str.startswith('m')].groupby(['stage', 'component']).attribution.mean()\n"
        "assert (m['wa'] > 0).all() and (m['harmful'] < 0).all() and m['wa'].idxmax() == 'm3', m"
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
