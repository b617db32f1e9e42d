"""Parameter values as data: a restricted YAML reader and the check that a value reaches a
notebook as a Python literal.

Every parameter value, from ``-p NAME VALUE``, ``-c NAME VALUE`` or ``book/profiles.yml``, is
read by :func:`read_yaml`. It builds only strings, numbers, booleans, null, lists and maps with
string keys; any other YAML type (``!!binary``, ``!!timestamp``, ``!!set``, ``!!python/...``) is
refused with its reason, because papermill writes a value it does not know into the notebook as
unescaped text. Its scalars follow what a reader of a command line means rather than YAML 1.1:

- ``1e-3``, ``.5``, ``inf``, ``nan`` are floats (YAML 1.1 reads the first as text), in lists too;
- ints are decimal (``010`` is 10, not YAML 1.1's octal 8; ``1:20`` is text, not 80);
- only ``true``/``false`` are booleans (``yes``, ``no``, ``on``, ``off`` stay text);
- ``2024-01-01`` is text, not a date.

A ``#`` after a space starts a YAML comment. In a plain (unquoted) scalar value, :func:`parse_value`
takes the whole text literally instead (``imagefolder:/data/set #2`` is that path); inside a list
or a map it refuses the value and says to quote the item, since dropping part of it silently is
what went wrong before. :func:`check_literal` proves, before papermill runs, that the code
papermill injects evaluates back to exactly the values given.
"""

from __future__ import annotations

import ast
import math
import re

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner

_TAG = "tag:yaml.org,2002:"
SCALAR_TAGS = {_TAG + name for name in ("str", "int", "float", "bool", "null")}
ALLOWED_TAGS = SCALAR_TAGS | {_TAG + "seq", _TAG + "map", _TAG + "merge"}
# A value this deep or this large is no chapter parameter; the bound also stops aliases that
# expand a short text into an exponentially large value ("billion laughs").
MAX_DEPTH = 6
MAX_NODES = 10_000
MAX_TEXT = 100_000


class ValueRefused(ValueError):
    """A parameter value that is not plain data, or that YAML would read differently from its text."""


class _Resolver(BaseResolver):
    """The scalar types of :mod:`bnprivacy.values`: decimal ints, floats with or without a dot
    (and inf, nan), true/false, null; everything else is a string."""


_Resolver.add_implicit_resolver(_TAG + "bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                list("tTfF"))
_Resolver.add_implicit_resolver(_TAG + "int", re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789"))
_Resolver.add_implicit_resolver(
    _TAG + "float",
    re.compile(r"^(?:[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?\.?(?:inf|Inf|INF|infinity|Infinity)|\.?(?:nan|NaN|NAN))$"),
    list("-+0123456789.iInN"))
_Resolver.add_implicit_resolver(_TAG + "null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""])
_Resolver.add_implicit_resolver(_TAG + "merge", re.compile(r"^<<$"), ["<"])


class _Constructor(SafeConstructor):
    """SafeConstructor with ints in base 10 and floats as Python reads them (``inf``, ``1e-3``)."""

    def construct_yaml_int(self, node):
        return int(self.construct_scalar(node))

    def construct_yaml_float(self, node):
        text = self.construct_scalar(node)
        # YAML writes infinity and NaN as .inf and .nan; Python's float() wants them without the dot.
        return float(re.sub(r"^([-+]?)\.(?=[a-zA-Z])", r"\1", text))


_Constructor.add_constructor(_TAG + "int", _Constructor.construct_yaml_int)
_Constructor.add_constructor(_TAG + "float", _Constructor.construct_yaml_float)


class _Loader(Reader, Scanner, Parser, Composer, _Constructor, _Resolver):
    def __init__(self, stream):
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        _Constructor.__init__(self)
        _Resolver.__init__(self)


def read_yaml(text: str, where: str):
    """The data in the YAML ``text``: strings, numbers, booleans, null, lists and maps only.

    ``where`` names the text in errors (``-p epochs``, ``book/profiles.yml``). Raises
    :class:`ValueRefused` for another type, a non-string map key, a value nested deeper than
    :data:`MAX_DEPTH` or larger than :data:`MAX_NODES`, and for text YAML cannot read.
    """
    return _construct(_compose(text, where), where)[1]


def _compose(text: str, where: str):
    if not isinstance(text, str):
        raise ValueRefused(f"{where}: expected text, got {type(text).__name__}")
    if len(text) > MAX_TEXT:
        raise ValueRefused(f"{where}: {len(text)} characters is more than the {MAX_TEXT} a value may have")
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or str(error)
        raise ValueRefused(f"{where}: not a value YAML can read ({problem}); quote text, and write lists "
                           "like '[batch, none]'") from None
    finally:
        loader.dispose()
    return loader, node


def _construct(composed, where: str):
    loader, node = composed
    if node is None:
        return node, None
    _check_node(node, where, depth=0, seen=[0])
    return node, loader.construct_document(node)


def _check_node(node, where: str, depth: int, seen: list[int]) -> None:
    """Refuse a tag outside :data:`ALLOWED_TAGS`, a non-scalar map key, and a value too deep or large."""
    seen[0] += 1
    if seen[0] > MAX_NODES or depth > MAX_DEPTH:
        raise ValueRefused(f"{where}: the value is nested deeper than {MAX_DEPTH} levels or has more than "
                           f"{MAX_NODES} items (aliases count each time they are used); no parameter needs that")
    if node.tag not in ALLOWED_TAGS:
        tag = node.tag.replace(_TAG, "!!")
        raise ValueRefused(f"{where}: the YAML type {tag} is not allowed; a parameter value is text, a number, "
                           "true/false, null, a list or a map (quote the text if you meant it literally)")
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_node(item, where, depth + 1, seen)
    elif isinstance(node, yaml.MappingNode):
        for key, item in node.value:
            if key.tag not in {_TAG + "str", _TAG + "merge"}:
                raise ValueRefused(f"{where}: the map key {key.value!r} is not text; quote it")
            _check_node(item, where, depth + 1, seen)


def parse_value(text: str, where: str):
    """One command-line value (``-p NAME VALUE``) read with :func:`read_yaml`.

    A ``#`` that YAML would read as a comment is taken literally in a plain scalar (the whole text,
    stripped) and refused in a list or map, so no part of a value is ever dropped silently.
    """
    loader, node = _compose(text, where)
    if _has_comment(text, node):
        if node is None or (isinstance(node, yaml.ScalarNode) and node.style is None):
            return text.strip()
        raise ValueRefused(f"{where}: {text!r} holds a '#' that YAML reads as the start of a comment, which "
                           "would drop the rest; quote the item that contains it, e.g. '[\"a #1\", b]'")
    return _construct((loader, node), where)[1]


def _has_comment(text: str, node) -> bool:
    """Whether a ``#`` in ``text`` lies outside every scalar of ``node`` (so YAML dropped it)."""
    marks = [i for i, char in enumerate(text) if char == "#"]
    if not marks:
        return False
    spans = list(_scalar_spans(node)) if node is not None else []
    return any(not any(start <= i < end for start, end in spans) for i in marks)


def _scalar_spans(node, depth: int = 0):
    if depth > MAX_DEPTH + 1:
        return
    if isinstance(node, yaml.ScalarNode):
        yield node.start_mark.index, node.end_mark.index
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            yield from _scalar_spans(item, depth + 1)
    elif isinstance(node, yaml.MappingNode):
        for key, item in node.value:
            yield from _scalar_spans(key, depth + 1)
            yield from _scalar_spans(item, depth + 1)


def check_data(value, where: str, depth: int = 0) -> None:
    """Raise :class:`ValueRefused` unless ``value`` is plain data: str, int, float, bool, None, or
    lists and string-keyed dicts of them (what a parameter given from Python may hold)."""
    if depth > MAX_DEPTH:
        raise ValueRefused(f"{where}: the value is nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, (str, bool, int, float)):
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            check_data(item, where, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueRefused(f"{where}: the map key {key!r} is not text")
            check_data(item, where, depth + 1)
        return
    raise ValueRefused(f"{where}: a {type(value).__name__} is not a parameter value; allowed: text, numbers, "
                       "true/false, None, lists and maps of them")


def check_literal(parameters: dict) -> None:
    """Prove that papermill's injected code for ``parameters`` assigns exactly these values and
    runs nothing else: every statement is ``NAME = literal`` (``float('nan')``/``float('inf')``
    allowed), and each evaluates back to its value. Raises :class:`ValueRefused` otherwise."""
    from papermill.translators import translate_parameters

    for name, value in parameters.items():
        check_data(value, f"parameter {name}")
    code = translate_parameters("python3", "python", parameters, "Parameters")
    try:
        statements = ast.parse(code).body
    except SyntaxError as error:
        raise ValueRefused(f"the injected parameters do not parse as Python ({error})") from None
    found = {}
    for statement in statements:
        if not (isinstance(statement, ast.Assign) and len(statement.targets) == 1
                and isinstance(statement.targets[0], ast.Name)):
            raise ValueRefused(f"the injected parameters hold a statement that is not NAME = value: "
                               f"{ast.unparse(statement)[:200]}")
        found[statement.targets[0].id] = _literal(statement.value)
    changed = sorted(k for k in parameters if k not in found or not _same(found[k], parameters[k]))
    if changed or set(found) != set(parameters):
        raise ValueRefused(f"the values of {changed} would not reach the notebook unchanged; pass them as plain "
                           "text, numbers, lists or maps")


def _literal(node):
    """The value of a literal expression, with ``float('nan'|'inf'|'-inf')`` the only call allowed."""
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "float"
            and len(node.args) == 1 and not node.keywords and isinstance(node.args[0], ast.Constant)
            and node.args[0].value in ("nan", "inf", "-inf")):
        return float(node.args[0].value)
    if isinstance(node, ast.List):
        return [_literal(item) for item in node.elts]
    if isinstance(node, ast.Dict):
        return {_literal(key): _literal(item) for key, item in zip(node.keys, node.values)}
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise ValueRefused(f"the injected parameters hold an expression that is not a literal: "
                           f"{ast.unparse(node)[:200]}") from None


def as_plain(value):
    """``value`` with every tuple as a list: papermill writes lists, but a tuple as text."""
    if isinstance(value, (list, tuple)):
        return [as_plain(item) for item in value]
    if isinstance(value, dict):
        return {k: as_plain(v) for k, v in value.items()}
    return value


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b
