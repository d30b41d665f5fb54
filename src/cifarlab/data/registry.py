"""The dataset kinds a spec can name (`KIND` or `KIND:PATH`), one registry entry each.

An entry is a reader `read(path, alloc) -> RawDataset` (alloc hands out the arrays to decode into, so
the cache can map them to disk; see data/sources.py) with what its spec takes. A reader of image files
may also take `size` (data.image_size: fit each image to size x size as it decodes, images.decode_rows
does it); a reader without it serves its own size only. To add a kind:

    @register_dataset("mnist", path="required")
    def read_mnist(path, alloc=in_memory):
        '''MNIST's idx files (an archive or their folder).'''
        ...

The reader's module must be imported for its entry to exist: the built-in ones are imported by
data/sources.py, which this registry loads on its first lookup.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal

from cifarlab.registry import DATASETS

if TYPE_CHECKING:
    from cifarlab.data.types import RawDataset

PathRule = Literal["required", "optional", "none"]  # none: the spec takes no PATH (any given is ignored)


@dataclass(frozen=True)
class DatasetKind:
    name: str
    read: Callable[..., RawDataset]  # (path, alloc[, size]) -> RawDataset
    summary: str
    path: PathRule
    default: Callable[[Path], Path] | None  # the source when no PATH is given, from the cache folder
    cache_as: str  # the cache key's namespace: kinds that decode the same bytes alike share entries

    @property
    def resizes(self) -> bool:
        """Whether the reader fits images to data.image_size as it decodes them."""
        return "size" in inspect.signature(self.read).parameters

    @property
    def syntax(self) -> str:
        return {"required": f"{self.name}:PATH", "optional": f"{self.name}[:PATH]", "none": self.name}[self.path]




def register_dataset(name: str, path: PathRule = "required", default: Callable[[Path], Path] | None = None,
                     summary: str | None = None, cache_as: str | None = None):
    """Decorator over a reader `read(path, alloc)`; `default` gives the source for a spec without PATH."""
    if (default is None) != (path == "required"):
        raise ValueError(f"dataset '{name}': a default source is needed exactly when the PATH is not required")

    def add(read):
        doc = inspect.getdoc(read) or ""
        line = summary if summary is not None else (doc.splitlines()[0] if doc else "")
        DATASETS.add(name, DatasetKind(name, read, line, path, default, cache_as or name))
        return read
    return add


def spec_help(sep: str = " | ") -> str:
    """The spec syntax of every kind, e.g. `sample | cifar10[:PATH] | folder:PATH`."""
    return DATASETS.listing(sep)
