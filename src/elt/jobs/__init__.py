"""The entry-point jobs: train, evaluate, sample, prepare, warm and the Pareto search."""
