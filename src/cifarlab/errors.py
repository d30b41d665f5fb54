"""The one exception a user can cause. The CLI prints it as a single line and exits with code 2."""


class UserError(Exception):
    """Something the user gave us is wrong (a flag, a config key, a path, an archive, a checkpoint).

    The message says what is wrong and what to do about it, on one line.
    """

    exit_code = 2

    def __init__(self, message: str = ""):
        # a message quotes what the user typed, which may hold line breaks: keep the promise of one line
        super().__init__("\\n".join(str(message).splitlines()) if message else message)


def short(value, limit: int = 60, plain: bool = False) -> str:
    """A value quoted in a message: its repr (or its text, `plain`), cut to `limit` characters. A message never
    repeats a whole user value (a list of a million items, a YAML bomb's expansion)."""
    text = str(value)[: 4 * limit] if plain else _bounded_repr(value, limit)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bounded_repr(value, limit: int) -> str:
    # repr() of a huge nested value would cost its whole size before being cut
    if isinstance(value, (list, tuple, dict, set, frozenset)) and len(value) > limit:
        return f"<{type(value).__name__} of {len(value)} items>"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_bounded_repr(v, limit) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_bounded_repr(k, limit)}: {_bounded_repr(v, limit)}" for k, v in value.items()) + "}"
    if isinstance(value, str) and len(value) > 4 * limit:
        value = value[: 4 * limit]
    return repr(value)


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


class Interrupted(UserError, KeyboardInterrupt):
    """Ctrl-C (or SIGTERM turned into KeyboardInterrupt) stopped a run; its checkpoints up to `epoch` are intact.
    The CLI prints the message on one line and exits 130. Still a KeyboardInterrupt, so callers that stop on
    Ctrl-C (a study's trial loop, a script) keep doing so."""

    exit_code = 130

    def __init__(self, run_dir, epoch: int):
        self.run_dir, self.epoch = run_dir, epoch
        if epoch:
            super().__init__(f"interrupted at epoch {epoch}; continue with cifarlab train --resume {run_dir}")
        else:
            super().__init__(f"interrupted before the first epoch ended; nothing to resume in {run_dir}: "
                             "start the run again with another --out")


class InterruptedExit(UserError):
    """What the CLI raises for an `Interrupted` run: not a KeyboardInterrupt, so click does not swallow it
    into its own generic "Aborted"; printed as `cifarlab: <message>` with exit code 130."""

    exit_code = 130
