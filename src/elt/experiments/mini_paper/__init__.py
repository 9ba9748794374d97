"""The mini-paper: the paper's claims tested with seeds on Fashion-MNIST, through the real two-stage
pipeline (stage-one VQModel / AutoencoderKL → prepare.py shards → train.py → eval.py), on a CPU.

    python -m elt.experiments.mini_paper plan  [--quick]          the commands and the arms, nothing run
    python -m elt.experiments.mini_paper run   [--quick] [--jobs 2] train and evaluate what is missing, then report
    python -m elt.experiments.mini_paper report                    outputs/mini_paper/report.md from the finished evals

Every arm of a family is the same experiment config (configs/experiment/mini/fashion_<family>.yaml)
with a few overrides (``arms.yaml``): the same data, steps, batch and optimizer. ``plan`` gives every
command a run directory and a ``.done`` marker, so a rerun skips what is done (train.py's
``ckpt_path=last`` / eval.py's row cache resume an interrupted one); the shared runner runs them in
parallel, ``--jobs`` at a time, one thread each. ``claims`` decides each verdict from the numbers
(``stats``), ``report`` writes it, ``budget`` estimates each mode's wall time from the measured commands.
"""
