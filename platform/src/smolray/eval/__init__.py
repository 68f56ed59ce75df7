"""Evaluation: multiple-choice tasks by log-likelihood, held-out loss and bits per byte."""


class TaskError(ValueError):
    """A task file, model or eval argument that cannot be evaluated; the message says why."""
