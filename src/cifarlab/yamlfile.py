"""The one YAML reader of user files: configs, recipes, study files, a run's config.yaml and --set values.

Safe (no Python objects), bounded (1 MiB, a few aliases: a "billion laughs" file is refused, not
expanded), strict (a key given twice in a mapping is refused: PyYAML would keep the last silently), and
every failure is one line naming the file and what to do.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cifarlab.errors import UserError, short

MAX_YAML_ALIASES = 8  # a config needs none; nested aliases ("billion laughs") expand 463 bytes into gigabytes
MAX_YAML_BYTES = 1 << 20


class YAMLTooComplex(yaml.YAMLError):
    pass


class DuplicateKey(yaml.YAMLError):
    """A mapping that gives one key twice (YAML would silently keep the last)."""

    def __init__(self, key: str, first_line: int, line: int):
        super().__init__(f"the key '{key}' twice")
        self.key, self.first_line, self.line = key, first_line, line


_MERGE_TAG = "tag:yaml.org,2002:merge"


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses more than MAX_YAML_ALIASES alias uses (nested aliases expand exponentially)
    and any mapping that gives a key twice (plain PyYAML keeps the last one without a word)."""

    def __init__(self, stream):
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.events.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                raise YAMLTooComplex(f"more than {MAX_YAML_ALIASES} aliases (*name)")
        return super().compose_node(parent, index)

    def get_single_data(self):
        node = self.get_single_node()
        if node is None:
            return None
        self._refuse_duplicate_keys(node)
        return self.construct_document(node)

    def _refuse_duplicate_keys(self, root) -> None:
        """Walk the composed document (each node once: aliases share nodes) and raise DuplicateKey, with the
        dotted path of the key, where a mapping gives one key twice. Merge keys (<<: *base) are not duplicates:
        their keys are defaults that the mapping's own keys override."""
        stack, done = [(root, "")], set()
        while stack:
            node, path = stack.pop()
            if id(node) in done:
                continue
            done.add(id(node))
            if isinstance(node, yaml.SequenceNode):
                stack += [(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
            elif isinstance(node, yaml.MappingNode):
                seen: dict = {}
                for key_node, value_node in node.value:
                    if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                        stack.append((value_node, path))
                        continue
                    key = self.construct_object(key_node)
                    dotted, line = (f"{path}.{key}" if path else str(key)), key_node.start_mark.line + 1
                    try:
                        if key in seen:
                            raise DuplicateKey(dotted, seen[key], line)
                        seen[key] = line
                    except TypeError:  # unhashable: the constructor refuses it in its own words
                        pass
                    stack.append((value_node, dotted))


def load_yaml(text: str, where: str) -> Any:
    """The one YAML parser of user files (configs, study files, a run's config.yaml, --set values):
    safe (no Python objects), at most 1 MiB, at most a few aliases, and no key given twice in a mapping.
    Errors are one line naming `where`."""
    if len(text) > MAX_YAML_BYTES:
        raise UserError(f"{where} is {len(text) / 2**20:.1f} MiB of YAML, more than any config needs "
                        f"(limit {MAX_YAML_BYTES // 2**20} MiB): check the file")
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506  (a SafeLoader)
    except YAMLTooComplex as err:
        raise UserError(f"{where} uses {err}, which can expand without bound: write the values out") from None
    except DuplicateKey as err:
        lines = (f"on line {err.line}" if err.first_line == err.line else
                 f"on lines {err.first_line} and {err.line}")
        raise UserError(f"{where} gives the key '{short(err.key, 120, plain=True)}' twice ({lines}); YAML would "
                        "silently keep the last: keep one of them") from None
    except RecursionError:
        raise UserError(f"{where} is nested too deeply: check the file") from None


def read_yaml_mapping(text: str, where: str) -> dict:
    """A YAML text that must hold a mapping (a config or study file; empty is {}): anything else is one line."""
    try:
        raw = load_yaml(text, where)
    except yaml.reader.ReaderError:
        raise UserError(f"{where} holds characters that YAML does not allow (binary data?): give a YAML text "
                        "file") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{where} is not valid YAML{line}: fix the syntax and retry") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"{where} must hold a YAML mapping of sections (model, data, train, ...)")
    return raw


def read_yaml_text(p: Path, what: str) -> str:
    """The text of a YAML file a user named (`what`: "config file", "study file"); anything else is one line."""
    if p.is_dir():
        raise UserError(f"{what} '{p}' is a folder: give the YAML file itself (e.g. {p}/NAME.yaml)")
    if not p.exists():
        raise UserError(f"{what} '{p}' does not exist: check the path")
    if not p.is_file():  # a FIFO, device or socket: reading it could block or never end
        raise UserError(f"{what} '{p}' is not a regular file (a pipe, device or socket): give a YAML file")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"cannot read {what} '{p}': it is not UTF-8 text (byte {err.object[err.start]:#04x} "
                        f"at position {err.start}): give a YAML text file") from None
    except OSError as err:
        raise UserError(f"cannot read {what} '{p}' ({err.strerror or err}): check the file and its permissions") from None
