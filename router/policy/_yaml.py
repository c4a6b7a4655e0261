"""Reading policy YAML strictly: one document, no duplicate keys, every error with a line number.

Split from the loader because it is a job of its own: the loader validates what
this returns and never sees a YAML error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from router.policy import _fields as f
from router.policy._fields import Invalid

_MERGE_TAG = "tag:yaml.org,2002:merge"


EMPTY = object()  # a file with no document at all, told apart from a literal `null`


def read_file(source: str, what: str) -> str:
    """The text of a YAML file; ValueError with the reason (not UTF-8, cannot read `what`), for the caller
    to raise as its own typed error naming `source`."""
    try:
        return Path(source).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"the file is not valid UTF-8 ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise ValueError(f"cannot read {what}: {error.strerror or error}") from None


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, which plain YAML resolves by keeping the last one.

    A repeated `max_attempts:` two screens apart is exactly the typo that must not pass silently.
    """

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return EMPTY
        self._reject_duplicate_keys(node)
        return self.construct_document(node)

    def _reject_duplicate_keys(self, root: yaml.Node) -> None:
        stack: list[tuple[yaml.Node, str]] = [(root, "")]
        visited: set[int] = set()  # aliases can share (or even contain) a node
        duplicates: list[tuple[int, Invalid]] = []
        while stack:
            node, path = stack.pop()
            if id(node) in visited:
                continue
            visited.add(id(node))
            if isinstance(node, yaml.SequenceNode):
                stack.extend((child, f.item(path, i)) for i, child in enumerate(node.value))
            elif isinstance(node, yaml.MappingNode):
                stack.extend(self._mapping_children(node, path, duplicates))
        if duplicates:
            # The walk is depth-first, not file order: report the duplicate that comes first in the file.
            raise min(duplicates, key=lambda found: found[0])[1]

    def _mapping_children(self, node: yaml.MappingNode, path: str,
                          duplicates: list[tuple[int, Invalid]]) -> list[tuple[yaml.Node, str]]:
        first_line: dict[Any, int] = {}
        children: list[tuple[yaml.Node, str]] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                children.append((value_node, path))
                continue
            # Compare constructed keys, so `1` and `01` (both the int 1) count as the same key.
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in first_line:
                problem = f"duplicate key `{key}` (lines {first_line[key]} and {line})"
                duplicates.append((key_node.start_mark.index, Invalid(problem, f.join(path, key))))
            first_line.setdefault(key, line)
            children.append((value_node, f.join(path, key)))
        return children


def read_yaml(text: str) -> Any:
    try:
        return _load_single_document(text)
    except yaml.MarkedYAMLError as error:
        raise Invalid(_marked_problem(error), "") from None
    except yaml.reader.ReaderError as error:
        line = text[: error.position].count("\n") + 1
        raise Invalid(f"invalid YAML at line {line}: unacceptable character #x{error.character:04x}", "") \
            from None
    except yaml.YAMLError as error:
        raise Invalid("invalid YAML: " + " ".join(str(error).split()), "") from None
    except (ValueError, TypeError, LookupError, AttributeError, OverflowError) as error:
        # SafeLoader's scalar constructors are not hardened: `2024-13-45` raises ValueError,
        # `!!int ""` IndexError, `!!bool maybe` KeyError, `!!timestamp x` AttributeError.
        # PyYAML's messages quote the value (`invalid literal for int(): '...'`), which may be a secret.
        raise Invalid(f"invalid YAML value ({type(error).__name__}): a date or an explicitly tagged value "
                      "(`!!int`, `!!float`, `!!bool`, `!!timestamp`, ...) that does not parse", "") from None
    except RecursionError:
        raise Invalid("invalid YAML: nested too deeply", "") from None


def _load_single_document(text: str) -> Any:
    loader = _StrictLoader(text)  # the reader already rejects control characters here
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _marked_problem(error: yaml.MarkedYAMLError) -> str:
    mark = error.problem_mark or error.context_mark
    what = "; ".join(part for part in (error.context, error.problem) if part) or "syntax error"
    if mark is None:
        return f"invalid YAML: {what}"
    return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {what}"
