"""One flow on one host: the runner, its state directory, its progress and result, and the
tools that act on its queues from outside a run."""
