"""Run-time plumbing every layer may use: configs, checkpoints, resume, precision, devices, files, loggers, the command-line wrapper."""
