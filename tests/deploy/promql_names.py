"""Which metric names and labels a PromQL expression refers to, without a PromQL engine: enough for
the expressions of this repository's dashboard and alert rules (selectors, aggregations with
`by`/`without`, binary operators, functions, subqueries)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["PromqlRefs", "promql_refs"]

_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right", "inf", "nan"}
)
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_RANGE = re.compile(r"\[[^\]]*\]")
_MATCHERS = re.compile(r"\{([^}]*)\}")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_NUMBER = re.compile(r"(?<![A-Za-z0-9_:])\d+(?:\.\d*)?(?:[eE][+-]?\d+)?")
_MATCHER_LABEL = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)")


@dataclass
class PromqlRefs:
    """Metric names used, label names per selector, and labels named in grouping clauses."""

    metrics: set[str] = field(default_factory=set)
    selector_labels: dict[str, set[str]] = field(default_factory=dict)
    grouping_labels: set[str] = field(default_factory=set)


def promql_refs(expr: str) -> PromqlRefs:
    refs = PromqlRefs()
    # Label matchers first (their values are strings), then strip every string and range.
    selectors: list[tuple[int, set[str]]] = []

    def matchers(m: re.Match[str]) -> str:
        body = _STRING.sub('""', m.group(1))
        labels = {lm.group(1) for lm in (_MATCHER_LABEL.match(part) for part in body.split(",")) if lm}
        selectors.append((m.start(), labels))
        return f" __SELECTOR{len(selectors) - 1}__ "

    text = _RANGE.sub(" ", expr)
    text = _MATCHERS.sub(matchers, text)
    text = _STRING.sub(" ", text)
    text = _NUMBER.sub(" ", text)

    def grouping(m: re.Match[str]) -> str:
        refs.grouping_labels.update(x.strip() for x in m.group(2).split(",") if x.strip())
        return " "

    text = _GROUPING.sub(grouping, text)
    tokens = list(_IDENT.finditer(text))
    for i, tok in enumerate(tokens):
        name = tok.group(0)
        if name.startswith("__SELECTOR") or name.lower() in _KEYWORDS:
            continue
        rest = text[tok.end():].lstrip()
        if rest.startswith("("):
            continue  # a function or aggregation
        refs.metrics.add(name)
        labels = refs.selector_labels.setdefault(name, set())
        following = re.match(r"\s*__SELECTOR(\d+)__", text[tok.end():])
        if following:
            labels.update(selectors[int(following.group(1))][1])
    return refs
