"""User-facing errors: one line that names the file or key and says how to fix it."""


class UserError(ValueError):
    """Bad input from the user (config, data, checkpoint). The CLI prints it as one line."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; nothing was saved over the last good checkpoint."""


class TrainingInterrupted(RuntimeError):
    """SIGINT / SIGTERM during training: the run saved where it stood and stopped; the
    message says how to continue. ``signal`` is the signal's number."""

    def __init__(self, message: str, signal: int):
        super().__init__(message)
        self.signal = signal


def one_line(e: BaseException) -> str:
    """The message of a UserError, also when a DataLoader worker re-raised it with its
    traceback ('Caught UserError in DataLoader worker process 0. Original Traceback ...')."""
    text = str(e).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        _, _, text = last.partition(": ")
    return text.splitlines()[0] if text else type(e).__name__
