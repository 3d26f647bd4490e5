"""User-facing errors: one line that names the file or key and says how to fix it."""


class UserError(ValueError):
    """Bad input from the user (config, data, checkpoint). The CLI prints it as one line."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; nothing was saved over the last good checkpoint."""
