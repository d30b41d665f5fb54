"""The one exception a user can cause. The CLI prints it as a single line and exits with code 2."""


class UserError(Exception):
    """Something the user gave us is wrong (a flag, a config key, a path, an archive, a checkpoint).

    The message says what is wrong and what to do about it, on one line.
    """

    exit_code = 2

    def __init__(self, message: str = ""):
        # a message quotes what the user typed, which may hold line breaks: keep the promise of one line
        super().__init__("\\n".join(str(message).splitlines()) if message else message)


class CifarlabWarning(UserWarning):
    """Something in the user's input was worked around (e.g. files skipped); the CLI prints it on one line."""


class TrainingDiverged(UserError):
    """The loss became NaN/inf; the message names the likely cause. Checkpoints of earlier epochs stay."""


class WriteFailed(UserError):
    """A file could not be written (disk full, read-only, quota). Files written before stay intact."""

    def __init__(self, path, reason: str, advice: str = "free space on that disk or write somewhere else"):
        self.path, self.reason = path, reason
        super().__init__(f"cannot write '{path}' ({reason}): {advice}")

    @classmethod
    def from_os_error(cls, path, err: OSError) -> "WriteFailed":
        return cls(path, err.strerror or str(err))
