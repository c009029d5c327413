"""Generate docs/configuration.md from the directive table, so the two cannot drift.

    python -m portico.config.docs > docs/configuration.md

A test compares the file with this output.
"""

from __future__ import annotations

import sys

from portico.config.directives import Directive, all_directives
from portico.variables import PREFIXES, VARIABLES

CONTEXT_ORDER = ["main", "events", "http", "server", "location", "upstream"]

INTRO = """\
# Configuration reference

portico reads nginx's configuration syntax: directives end with `;`, blocks are written
with `{ }`, `#` starts a comment, arguments may be quoted with `"` or `'`, and
`include FILE_OR_GLOB;` reads other files (relative to the folder of the file that
includes them). Sizes take `k` and `m` suffixes (`10k`, `1m`); times take `ms`, `s`, `m`,
`h`, `d` (`500ms`, `30s`, `1h 30m`). Relative paths start at the prefix: the folder of the
main config file, or `-p PREFIX`.

Check a file with `portico -t -c FILE`: every problem is printed as `FILE:LINE: what is
wrong`, and a running portico keeps its old config when a reload finds one.

This page is generated from the directive table (`portico/config/directives.py`) by
`python -m portico.config.docs`; edit the table, not this page.

A directive whose context lists several blocks is inherited downwards (http → server →
location) unless a block sets it itself; a directive that may be repeated (like
`add_header`) is inherited only by blocks that set none of their own, as in nginx.
"""


def _contexts(directive: Directive) -> str:
    return ", ".join(c for c in CONTEXT_ORDER if c in directive.contexts)


def _section(directive: Directive) -> str:
    lines = [f"### {directive.name}", "", "```", directive.syntax, "```", ""]
    default = directive.default
    facts = [f"**Context:** {_contexts(directive)}"]
    if default is not None:
        facts.append(f"**Default:** `{directive.name} {default};`")
    elif not directive.block:
        facts.append("**Default:** none")
    if directive.multiple and not directive.block:
        facts.append("**May repeat:** yes")
    lines.append(" · ".join(facts))
    lines.append("")
    lines.append(directive.doc)
    lines.append("")
    return "\n".join(lines)


def render() -> str:
    out = [INTRO]
    by_context: dict[str, list[Directive]] = {}
    for directive in all_directives():
        first = next(c for c in CONTEXT_ORDER if c in directive.contexts)
        by_context.setdefault(first, []).append(directive)
    titles = {
        "main": "Main context",
        "events": "events",
        "http": "http, server and location",
        "server": "server and location",
        "location": "location only",
        "upstream": "upstream",
    }
    for context in CONTEXT_ORDER:
        directives = by_context.get(context)
        if not directives:
            continue
        out.append(f"## {titles[context]}\n")
        for directive in sorted(directives, key=lambda d: d.name):
            out.append(_section(directive))
    out.append("## Variables\n")
    out.append(
        "Usable in `return`, `log_format`, `add_header`, `try_files`, `error_page`, "
        "`root`/`alias` and wherever a directive's value may hold `$variables`.\n"
    )
    for name in sorted(VARIABLES):
        out.append(f"- `${name}`")
    for prefix in PREFIXES:
        out.append(f"- `${prefix}NAME` (a family: for example `${prefix}x`)")
    out.append(
        "- `$1` ... `$9` and named groups `(?<name>...)` of the regex that chose the "
        "location or the server name"
    )
    out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(render())
