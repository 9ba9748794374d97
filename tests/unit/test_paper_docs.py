"""docs/paper_tables.md's rows section is generated from the paper's rows (rows.yaml, the one copy of the
paper's numbers): the committed doc must be what ``python -m elt.experiments.paper docs`` writes."""
from elt.experiments.paper import docs
from elt.experiments.paper.rows import ROWS


def test_committed_doc_is_generated_from_the_rows():
    text = docs.doc_path().read_text()
    assert docs.updated(text) == text, "docs/paper_tables.md is stale: run python -m elt.experiments.paper docs"


def test_every_paper_number_is_in_the_generated_section():
    section = docs.rows_section()
    for r in ROWS:
        assert r.label in section
        for v in r.metrics.values():
            assert f"{v:g}" in section, (r.label, v)
