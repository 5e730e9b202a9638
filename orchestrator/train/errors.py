"""Training's error for the user (kept apart so the CLI can name it without importing Ray)."""


class TrainingError(RuntimeError):
    """A fold's training raised in its worker (its code or data): the message, not retried."""
