"""Experiments built from the jobs: the paper's tables, the mini-paper, stage-one training, studies and cross-run reports."""
