"""One mechanism for every kind of plug-in (models, datasets, optimizers, schedules): a name -> entry map.

Each kind keeps its own entry type (what a model factory or a dataset reader needs differs) and its own
`register_*` decorator; what they share is here: refusing a name registered twice, listing the names,
and one line for a name that is not there, with a did-you-mean and the names that are.

This module imports nothing heavy, so the config can validate names without importing torch.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Callable, Generic, Iterator, TypeVar

from cifarlab.errors import UserError

Entry = TypeVar("Entry")


class Registry(Generic[Entry]):
    """Entries of one kind by name, listed alphabetically (the order modules register in is an accident
    of their imports).

    `builtins` names a module that registers the built-in entries: it is imported on the first lookup,
    so a caller that only needs the names (the config) never has to know which modules hold them.
    """

    def __init__(self, kind: str, builtins: str | None = None, listed_by: str | None = None,
                 label: Callable[[str, Entry], str] | None = None):
        self.kind = kind  # "model", "dataset", ...: the word used in messages
        self.listed_by = listed_by  # a command that describes the entries, named in the unknown-name message
        self.label = label or (lambda name, entry: name)  # how a name is shown in lists (e.g. its syntax)
        self._builtins = builtins
        self._entries: dict[str, Entry] = {}

    def add(self, name: str, entry: Entry) -> Entry:
        # No loading of the built-ins here: a built-in module registering itself would import its
        # siblings half-initialised. A plug-in taking a built-in's name is still refused, when they load.
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' registered twice")
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> None:
        """Unregister `name` (a test's temporary entry); a missing name is not an error."""
        self._entries.pop(name, None)

    def names(self) -> list[str]:
        self._load_builtins()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> Entry:
        """The entry; a UserError naming the known ones if there is none."""
        if name not in self:
            raise UserError(self.unknown(name))
        return self._entries[name]

    def listing(self, sep: str = ", ") -> str:
        """The names (as labelled), joined: for help texts and messages."""
        return sep.join(self.label(name, self._entries[name]) for name in self.names()) or "none"

    def unknown(self, name: str) -> str:
        """The one-line message for a name that is not registered."""
        close = difflib.get_close_matches(str(name), self.names(), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        more = f" (`{self.listed_by}` describes them)" if self.listed_by else ""
        return f"unknown {self.kind} '{name}': {hint}the {self.kind}s are {self.listing()}{more}"

    def _load_builtins(self) -> None:
        if self._builtins is not None:
            module, self._builtins = self._builtins, None  # cleared first: that module's registrations call add()
            importlib.import_module(module)


# The registries every layer shares, filled by the package that owns each kind (imported on the first
# lookup). They live here, below every package, so the config can check a name (`optimizer.name`,
# `data.dataset`) without importing the package that holds the entries.
MODELS: Registry = Registry("model", builtins="cifarlab.models", listed_by="cifarlab models")
DATASETS: Registry = Registry("dataset", builtins="cifarlab.data.sources", label=lambda name, kind: kind.syntax)
OPTIMIZERS: Registry = Registry("optimizer", builtins="cifarlab.train.optimizers")
SCHEDULES: Registry = Registry("schedule", builtins="cifarlab.train.schedules")
