"""A bounded YAML reader for the config repo: hostile or absurd input becomes a clear error, never a crash
or a memory blow-up.

PyYAML's `SafeLoader` refuses arbitrary Python objects but not size: its composer keeps every node of a
document (with two source marks each, several hundred bytes a node), recurses once per nesting level,
and builds aliases as shared objects that explode only later, when the data is walked (JSON, pydantic,
hashing): the "billion laughs" document. Its constructors also raise plain `ValueError`/`KeyError`/...
for values such as `2024-13-01`, a 5,000-digit integer or `!!bool maybe`, which the caller would not
expect from a YAML parser.

`BoundedLoader` counts while it composes, so it stops at the limit instead of after the damage:

- `MAX_NODES` nodes and `MAX_ALIASES` alias references per file, `MAX_DEPTH` levels of nesting;
- a value that its tag cannot construct is a `yaml.constructor.ConstructorError` at that node's line.

`check_graph` then measures what aliases make of a composed document (its expanded size and depth)
before anything walks it. Each refusal names the limit it hit. The limits are far above anything a real
config repo needs (an InferenceService is 20-100 nodes, 5-10 levels deep, with a handful of
`<<: *defaults` merges) and low enough that the worst accepted file costs a few tens of MB.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import AliasEvent
from yaml.resolver import Resolver

#: Larger files are refused before they are read.
MAX_FILE_BYTES = 1 << 20
#: Nodes (scalars, sequences, mappings) composed per file, over all its documents.
MAX_NODES = 50_000
#: Alias references (`*name`) per file.
MAX_ALIASES = 1_000
#: Nesting levels of a document, counted through aliases.
MAX_DEPTH = 100
#: Nodes that aliases may add on top of a document's own nodes once expanded.
MAX_ALIAS_EXPANSION = 10_000
#: The config repo as a whole (YAML files under the configured paths, and their total size).
MAX_REPO_FILES = 5_000
MAX_REPO_BYTES = 8 << 20
#: Nodes over all files: what the desired state keeps of every document until it is built.
MAX_REPO_NODES = 500_000

_SHORT = 60


class YamlLimitError(yaml.YAMLError):
    """A document exceeds one of the limits above. `line` is 1-based; the message names the limit."""

    def __init__(self, line: int, message: str, field: str = "(yaml)") -> None:
        super().__init__(message)
        self.line, self.message, self.field = line, message, field


def short(value: object, limit: int = _SHORT) -> str:
    """`repr(value)`, cut to `limit` characters: an error message must not echo a megabyte of input."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _line(mark: Any) -> int:
    return int(mark.line) + 1 if mark is not None else 1


def _base() -> type[Any]:
    """`yaml.SafeLoader`, with libyaml's parser when PyYAML was built with it: events come from C, about
    ten times faster than the pure-Python scanner. Composition (where the limits hook in) and construction
    stay in Python either way: the composer comes first in the bases, so its `get_node`/`compose_node` are
    used over libyaml's C composer."""
    try:
        from yaml._yaml import CParser
    except ImportError:  # pragma: no cover - PyYAML without libyaml
        return yaml.SafeLoader

    class _CSafeLoader(Composer, CParser, SafeConstructor, Resolver):
        def __init__(self, stream: str | bytes) -> None:
            CParser.__init__(self, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)

    return _CSafeLoader


class BoundedLoader(_base()):  # type: ignore[misc]
    """`yaml.SafeLoader` with node, alias and depth limits per file, and construction errors as YAML errors."""

    def __init__(self, stream: str | bytes, *, max_nodes: int = MAX_NODES, max_aliases: int = MAX_ALIASES,
                 max_depth: int = MAX_DEPTH, repo_nodes_left: int | None = None,
                 repo_max_nodes: int = MAX_REPO_NODES) -> None:
        """`repo_nodes_left`: what the files read before this one left of the repo's `repo_max_nodes`."""
        super().__init__(stream)
        self.max_nodes, self.max_aliases, self.max_depth = max_nodes, max_aliases, max_depth
        self.repo_nodes_left, self.repo_max_nodes = repo_nodes_left, repo_max_nodes
        self.nodes = 0
        self.aliases = 0
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            self.aliases += 1
            if self.aliases > self.max_aliases:
                raise YamlLimitError(_line(event.start_mark),
                                     f"more than {self.max_aliases} YAML alias references in this file"
                                     f" (limit: {self.max_aliases} aliases per file)")
            node: yaml.Node | None = super().compose_node(parent, index)
            return node
        self.nodes += 1
        if self.repo_nodes_left is not None and self.nodes > self.repo_nodes_left:
            raise YamlLimitError(_line(event.start_mark),
                                 f"more than {self.repo_max_nodes} YAML nodes in the config repo"
                                 f" (limit: {self.repo_max_nodes} nodes per repo)", field="(repo)")
        if self.nodes > self.max_nodes:
            raise YamlLimitError(_line(event.start_mark),
                                 f"more than {self.max_nodes} YAML nodes in this file"
                                 f" (limit: {self.max_nodes} nodes per file); split it up")
        self._depth += 1
        try:
            if self._depth > self.max_depth:
                raise YamlLimitError(_line(event.start_mark),
                                     f"YAML nested deeper than {self.max_depth} levels"
                                     f" (limit: {self.max_depth} levels)")
            node = super().compose_node(parent, index)
            return node
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (yaml.YAMLError, RecursionError):
            raise
        except Exception as exc:  # PyYAML's own constructors raise ValueError, KeyError, AttributeError...
            tag = str(node.tag).rsplit(":", 1)[-1]
            value = node.value if isinstance(node, yaml.ScalarNode) else f"<{type(node).__name__}>"
            detail = f": {exc}" if isinstance(exc, ValueError) and str(exc) else ""
            raise ConstructorError(
                None, None,
                f"cannot read {short(value)} as a YAML {tag}{detail} (quote it to make it a string)",
                node.start_mark,
            ) from None


def _children(node: yaml.Node) -> Iterator[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            yield k
            yield v
    elif isinstance(node, yaml.SequenceNode):
        yield from node.value


def check_graph(root: yaml.Node, *, max_expansion: int = MAX_ALIAS_EXPANSION, max_depth: int = MAX_DEPTH) -> None:
    """Refuse recursive aliases, alias bombs and alias-deepened documents before anything walks them.

    One pass over the distinct nodes computes each node's expanded size and depth (an alias counts as
    a copy of what it points to), which is what a JSON dump or a validator would walk.
    """
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        nid = id(node)
        if done:
            open_nodes.discard(nid)
            kids = [id(c) for c in _children(node)]
            size[nid] = 1 + sum(size[k] for k in kids)
            depth[nid] = 1 + max((depth[k] for k in kids), default=0)
            continue
        if nid in size:
            continue
        open_nodes.add(nid)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in open_nodes:
                raise YamlLimitError(_line(child.start_mark),
                                     "recursive YAML alias (a node that contains itself) is not allowed")
            if id(child) not in size:
                stack.append((child, False))
    extra = size[id(root)] - len(size)
    if extra > max_expansion:
        raise YamlLimitError(
            _line(root.start_mark),
            f"YAML aliases expand this document by {extra} nodes (limit: {max_expansion} nodes added by"
            " aliases); refusing a possible alias bomb",
        )
    if depth[id(root)] > max_depth:
        raise YamlLimitError(
            _line(root.start_mark),
            f"YAML aliases nest this document {depth[id(root)]} levels deep (limit: {max_depth} levels)",
        )
