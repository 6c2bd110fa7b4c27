"""Strict, safe YAML for specs, run configs and `--set` values: plain data only, every problem one line
naming the file and the line. It is the only YAML parser of user input: `train CONFIG --set k=v` reads
exactly as a spec's base and `run SPEC --set k=v` do.

    data = load_yaml_file("ablations/kernel_size.yaml")   # a dict, or SpecError

On top of PyYAML's SafeLoader this refuses: duplicate keys, non-string keys, tags beyond the plain
ones (no `!!python/...`, `!!binary`, `!!set`, custom `!tags`), aliases whose expansion would exceed
MAX_NODES (billion laughs) or that refer to themselves, tabs in indentation, binary or non-UTF-8
content, files over MAX_BYTES, nesting deeper than MAX_DEPTH, an empty file and a root that is not a
mapping. It also reads YAML 1.2
scalars where YAML 1.1 surprises people: `1e-4` is a float (1.1: a string) and only `true`/`false`
are booleans (1.1: `no`, `off`, `y` too); dates stay strings.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from fcdm.errors import SpecError

MAX_BYTES = 1 << 20  # a spec is a small hand-written file
MAX_NODES = 100_000  # expanded size of the document (aliases counted at every use)
MAX_DEPTH = 64  # mappings and lists inside each other: a spec or config is a few levels deep
_PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("null", "bool", "int", "float", "str", "seq", "map", "merge")}


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans and floats, no timestamps, and a duplicate-key check."""

    source = "<spec>"

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if not isinstance(key, str):
                    kind = {type(None): "null", bool: "a boolean", int: "a number", float: "a number", list: "a list",
                            dict: "a mapping"}.get(type(key), type(key).__name__)
                    if isinstance(key_node, yaml.ScalarNode):
                        raise SpecError(f"{self.source}: line {line}: key {key_node.value} is {kind}, not a string: "
                                        f"quote it ('{key_node.value}':)")
                    raise SpecError(f"{self.source}: line {line}: a key is {kind}; keys are strings")
                if key in seen:
                    raise SpecError(f"{self.source}: line {line}: key '{key}' appears twice in one mapping (first "
                                    f"on line {seen[key]}): keep one")
                seen[key] = line
        return super().construct_mapping(node, deep)


# Resolvers: copy PyYAML's table, then replace bool (1.2: true/false only) and float (1.2: 1e-4 too),
# and drop timestamps (a date in a spec is a string).
_SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers
            if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_SpecLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                  list("tTfF"))
_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+][0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def _check_nodes(root: yaml.Node, source: str) -> None:
    """Walk the composed graph once per distinct node: tags, self-reference, expanded size, nesting depth
    (an alias counts at every depth it is used: a node's height is remembered with its size)."""
    seen: dict[int, tuple[int, int]] = {}  # node -> (expanded size, height)
    active: set[int] = set()

    def deep(line: int) -> SpecError:
        return SpecError(f"{source}: line {line}: values nested more than {MAX_DEPTH} levels deep; a spec or config "
                         "is a few levels of mappings and lists: flatten it")

    def walk(node: yaml.Node, depth: int) -> tuple[int, int]:
        nid = id(node)
        line = node.start_mark.line + 1
        if nid in seen:
            if depth + seen[nid][1] - 1 > MAX_DEPTH:
                raise deep(line)
            return seen[nid]
        if depth > MAX_DEPTH:
            raise deep(line)
        if nid in active:
            raise SpecError(f"{source}: line {line}: an alias refers to the node that contains it (a recursive "
                            "structure); specs are trees: copy the value instead")
        if node.tag not in _PLAIN_TAGS:
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            raise SpecError(f"{source}: line {line}: YAML tag '{tag}' is not allowed; a spec holds plain "
                            "mappings, lists, strings, numbers, booleans and null: remove the tag")
        active.add(nid)
        children = [c for kv in node.value for c in kv] if isinstance(node, yaml.MappingNode) else (
            list(node.value) if isinstance(node, yaml.SequenceNode) else [])
        below = [walk(c, depth + 1) for c in children]
        active.discard(nid)
        total, height = 1 + sum(t for t, _ in below), 1 + max((h for _, h in below), default=0)
        if total > MAX_NODES:
            raise SpecError(f"{source}: line {line}: aliases here expand to more than {MAX_NODES:,} values (an "
                            "alias bomb?); write the values out, or use fewer nested aliases")
        seen[nid] = (total, height)
        return seen[nid]

    walk(root, 1)


def parse_yaml(text: str, source: str = "<spec>") -> Any:
    """Parse one YAML document strictly; None for an empty document. Raises SpecError."""
    for n, line in enumerate(text.splitlines(), 1):
        indent = line[: len(line) - len(line.lstrip(" \t"))]
        if "\t" in indent:
            raise SpecError(f"{source}: line {n}: tab in the indentation; YAML indents with spaces only: "
                            "replace the tab with spaces")
    loader = type("_Loader", (_SpecLoader,), {"source": source})(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node, source)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = " ".join(str(e.problem or e.context or "syntax error").split())
        if "single document" in str(e.context):
            raise SpecError(f"{source}: {where}a second YAML document ('---'); a spec is one document: remove "
                            "everything from the second '---' on, or split it into two files") from None
        raise SpecError(f"{source}: {where}not valid YAML: {problem}; fix the syntax there") from None
    except yaml.YAMLError as e:  # reader errors (control characters) carry no mark
        raise SpecError(f"{source}: not valid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:  # PyYAML composes recursively: thousands of levels end here, before MAX_DEPTH
        raise SpecError(f"{source}: values nested too deeply to read (Python's recursion limit); a spec or config is a few levels "
                        "of mappings and lists: flatten it") from None
    finally:
        loader.dispose()


def read_text(path: str | Path, what: str = "spec") -> str:
    """A small UTF-8 text file's content, or SpecError naming what is wrong with the file."""
    p = Path(path)
    if not p.exists():
        raise SpecError(f"{p}: no such file; pass the path of a YAML {what} such as ablations/kernel_size.yaml")
    if not p.is_file():
        raise SpecError(f"{p}: is a directory, not a file; pass the path of a YAML {what}")
    size = p.stat().st_size
    if size > MAX_BYTES:
        raise SpecError(f"{p}: is {size:,} bytes; a {what} is a small text file (at most {MAX_BYTES:,} bytes)")
    raw = p.read_bytes()
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise SpecError(f"{p}: binary content (NUL byte at offset {nul}); a {what} is a UTF-8 YAML text file")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SpecError(f"{p}: byte {e.start} (0x{raw[e.start]:02x}) is not UTF-8; save the {what} as UTF-8 "
                        "text") from None


def load_yaml_file(path: str | Path, what: str = "spec") -> dict:
    """Read and parse a YAML file whose root must be a non-empty mapping."""
    text = read_text(path, what)
    data = parse_yaml(text, str(path))
    if data is None:
        hint = " with at least 'name' and 'base' (see ablations/kernel_size.yaml)" if what == "spec" else ""
        raise SpecError(f"{path}: the file is empty; a {what} is a YAML mapping{hint}")
    if not isinstance(data, dict):
        kind = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
            type(data), type(data).__name__)
        raise SpecError(f"{path}: the top level is {kind}; a {what} is a mapping of keys to values"
                        + (" (name, base, profiles, axes, ...)" if what == "spec" else ""))
    return data
