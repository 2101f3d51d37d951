"""Label and field selectors with the grammar of apimachinery's `labels.Parse` and `fields.ParseSelector`.

Controllers select what they watch with these (`team=a`, `app in (x,y)`, `!canary`,
`metadata.name=iris`); a selector the real server rejects must be rejected here too (400), or a typo
would silently match everything in tests and nothing in production.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from canaryd.sandbox.kubeapi.errors import ApiError, bad_request

_SPECIAL = set("=!(),<> \t\n")
_OPERATORS = frozenset(["=", "==", "!=", "!", "(", ")", ",", "<", ">"])
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_NAME_PART = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def qualified_name_errors(key: str) -> list[str]:
    """validation.IsQualifiedName: `[prefix/]name`, the shape of label and annotation keys."""
    parts = key.split("/")
    if len(parts) == 1:
        name = parts[0]
        errs: list[str] = []
    elif len(parts) == 2:
        prefix, name = parts
        errs = []
        if not prefix:
            errs.append("prefix part must be non-empty")
        elif len(prefix) > 253:
            errs.append("prefix part must be no more than 253 characters")
        elif not _DNS_SUBDOMAIN.match(prefix):
            errs.append(
                "prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
                "'-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex "
                "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
    else:
        return ["a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and "
                "end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used "
                "for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain "
                "prefix and '/' (e.g. 'example.com/MyName')"]
    if not name:
        errs.append("name part must be non-empty")
    elif len(name) > 63:
        errs.append("name part must be no more than 63 characters")
    elif not _NAME_PART.match(name):
        errs.append("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
                    "with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used "
                    "for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')")
    return errs


def label_value_errors(value: str) -> list[str]:
    errs = []
    if len(value) > 63:
        errs.append("must be no more than 63 characters")
    if not _LABEL_VALUE.match(value):
        errs.append("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
                    "'.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or "
                    "'my_value',  or '12345', regex used for validation is "
                    "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')")
    return errs


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # in notin exists !exists gt lt
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op == "in":
            return present and labels[self.key] in self.values
        if self.op == "notin":
            return not present or labels[self.key] not in self.values
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if not present:
            return False
        try:
            have = int(labels[self.key])
        except ValueError:
            return False
        want = int(next(iter(self.values)))
        return have > want if self.op == "gt" else have < want


@dataclass(frozen=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c.isspace():
            i += 1
        elif text.startswith("==", i) or text.startswith("!=", i):
            out.append(text[i:i + 2])
            i += 2
        elif c in "=!(),<>":
            out.append(c)
            i += 1
        else:
            j = i
            while j < len(text) and text[j] not in _SPECIAL:
                j += 1
            out.append(text[i:j])
            i = j
    return out


def _parse_error(why: str) -> ApiError:
    return bad_request(f"unable to parse requirement: {why}")


def parse_label_selector(text: str | None) -> LabelSelector:
    """labels.Parse; raises a 400 ApiError for what the real server rejects."""
    if not text or not text.strip():
        return LabelSelector()
    toks = _tokens(text)
    reqs: list[Requirement] = []
    i = 0

    def ident(tok: str | None, what: str = "identifier") -> str:
        if tok is None or tok in _OPERATORS:
            raise _parse_error(f"found '{tok or ''}', expected: {what}")
        return tok

    while i < len(toks):
        negate = toks[i] == "!"
        if negate:
            i += 1
        key = ident(toks[i] if i < len(toks) else None)
        i += 1
        _check_key(key)
        nxt = toks[i] if i < len(toks) else None
        if negate:
            reqs.append(Requirement(key, "!exists"))
        elif nxt is None or nxt == ",":
            reqs.append(Requirement(key, "exists"))
        elif nxt in ("=", "==", "!="):
            i += 1
            value = ""
            if i < len(toks) and toks[i] != ",":
                value = ident(toks[i], "identifier")
                i += 1
            _check_value(value)
            reqs.append(Requirement(key, "notin" if nxt == "!=" else "in", frozenset([value])))
        elif nxt in ("in", "notin"):
            i += 1
            if i >= len(toks) or toks[i] != "(":
                raise _parse_error(f"found '{toks[i] if i < len(toks) else ''}', expected: '('")
            i += 1
            values: list[str] = []
            while True:
                tok = toks[i] if i < len(toks) else None
                if tok is None:
                    raise _parse_error("found '', expected: ')'")
                if tok in (",", ")"):
                    values.append("")
                else:
                    values.append(ident(tok))
                    i += 1
                    tok = toks[i] if i < len(toks) else None
                i += 1
                if tok == ")":
                    break
                if tok != ",":
                    raise _parse_error(f"found '{tok or ''}', expected: ',' or ')'")
            for v in values:
                _check_value(v)
            reqs.append(Requirement(key, nxt, frozenset(values)))
        elif nxt in (">", "<"):
            i += 1
            value = ident(toks[i] if i < len(toks) else None)
            i += 1
            try:
                int(value)
            except ValueError:
                raise _parse_error(f"for 'Gt', 'Lt' operators, the value must be an integer: {value}") from None
            reqs.append(Requirement(key, "gt" if nxt == ">" else "lt", frozenset([value])))
        else:
            raise _parse_error(f"found '{nxt}', expected: in, notin, =, ==, !=, gt, lt")
        if i < len(toks):
            if toks[i] != ",":
                raise _parse_error(f"found '{toks[i]}', expected: ',' or 'end of string'")
            i += 1
            if i >= len(toks):
                raise _parse_error("found '', expected: identifier after ','")
    return LabelSelector(tuple(reqs))


def _check_key(key: str) -> None:
    errs = qualified_name_errors(key)
    if errs:
        raise _parse_error(f"key: Invalid value: {key!r}: " + "; ".join(errs))


def _check_value(value: str) -> None:
    errs = label_value_errors(value)
    if errs:
        raise _parse_error(f"values[0][{value}]: Invalid value: {value!r}: " + "; ".join(errs))


@dataclass(frozen=True)
class FieldTerm:
    field: str
    value: str
    equal: bool


@dataclass(frozen=True)
class FieldSelector:
    terms: tuple[FieldTerm, ...] = ()

    def matches(self, obj: Mapping[str, Any]) -> bool:
        for t in self.terms:
            have = field_value(obj, t.field)
            if (have == t.value) != t.equal:
                return False
        return True

    def fields(self) -> set[str]:
        return {t.field for t in self.terms}


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """The string a field selector compares against: missing fields read as the empty string."""
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, Mapping):
            return ""
        cur = cur.get(part)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur.append(text[i:i + 2])
            i += 2
            continue
        if c == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


def parse_field_selector(text: str | None, allowed: Callable[[str], bool]) -> FieldSelector:
    """fields.ParseSelector plus the per-resource check of which fields may be selected on."""
    if not text or not text.strip():
        return FieldSelector()
    terms: list[FieldTerm] = []
    for part in _split_unescaped(text, ","):
        if not part:
            continue
        match = re.match(r"^([^=!]*)(!=|==|=)(.*)$", part, re.S)
        if match is None:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        key, op, value = match.group(1).strip(), match.group(2), _unescape(match.group(3))
        equal = op != "!="
        if not allowed(key):
            raise bad_request(f'field label not supported: {key}')
        terms.append(FieldTerm(key, value, equal))
    return FieldSelector(tuple(terms))
