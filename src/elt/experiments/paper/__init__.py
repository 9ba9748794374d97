"""The paper's tables as data: one row per published number (``rows.yaml``), each tied to an experiment config.

``python -m elt.experiments.paper plan`` composes every row's config (``experiment=paper/<row>``), builds its
model on the meta device (``shapes``: no tokenizer, autoencoder or dataset is opened) and prints parameters
and GFLOPs/sample beside the paper's, the training budget and its accelerator-hours (``plan``). It exits 1
when a row's parameter count is more than 5% off the paper's.

``python -m elt.experiments.paper run <table>`` trains every row of a table, evaluates each at every loop
count (``run``) and renders the table (``tables``). ``--scale smoke`` runs the same commands for a few steps
at tiny width on the embedded data, so that every step of a table target is exercised.

``python -m elt.experiments.paper docs`` regenerates the rows section of docs/paper_tables.md (``docs``).

Conventions (docs/paper_tables.md):

- **Parameters** are compared as the looped backbone's unique blocks (what N changes). The paper's
  MaskGIT counts are exactly 12·d²·layers (no embeddings or head), and its DiT counts put 1-3M outside
  the blocks where our DiT has 13.5M (a width×width time MLP, the class table, a 2·width final adaLN):
  comparing totals would flag the 1N×32L row (+16%) for parameters no N×L choice touches. Totals are
  printed beside.
- **GFLOPs/sample** two ways: the paper's convention, 2 × block parameters × L × tokens × steps (no
  attention scores, no guidance doubling; it gives the paper's figure for the L rows), and the project's
  analytic count ``model.flops_per_eval(L) × network evaluations per sample`` (attention, class token,
  head and the ×2 of guidance included) that eval.py prints.
- **Global batch**: ``global_batch`` is the optimizer batch whatever the device count;
  ``trainer.accumulate_grad_batches = global_batch / (data.batch_size × devices × num_nodes)``
  (``elt.runtime.batch.apply_global_batch``).
"""
