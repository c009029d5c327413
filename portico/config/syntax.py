"""nginx's configuration syntax: tokens, blocks and includes, every piece knowing its file:line.

Theory of operation: ``tokenize`` turns text into words and the three punctuation marks
(``;`` ``{`` ``}``); ``parse_file`` folds them into a tree of ``Node`` (a directive with
its arguments and, for a block directive, its children) and splices ``include``d files
in place, so later stages never see an ``include``. Nothing here knows what a directive
means: that is the directive table's job.

The rules, as nginx applies them:

- a word ends at white space, ``;``, ``{`` or ``}``; ``#`` starts a comment only where a
  word could start (``a#b`` is one word);
- ``"..."`` and ``'...'`` quote a word; inside, ``\\"`` ``\\'`` ``\\\\`` ``\\n`` ``\\r``
  ``\\t`` are escapes and any other backslash is kept as written;
- ``${name}`` inside a word is one variable, so its braces are not block punctuation;
- ``include PATTERN;`` is resolved relative to the folder of the file that holds it;
  a pattern with glob characters may match nothing, a plain path must exist.

We tokenize ourselves rather than use crossplane: crossplane's parser knows nginx's
directive table (our directives would need its checks turned off), reports errors in its
own exception types and resolves includes relative to the main file's prefix rather than
the including file; the format is small enough that forty lines of tokenizer are clearer
than adapting it, and it keeps the runtime dependencies to uvloop and httptools.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass

from portico.errors import ConfigError

MAX_INCLUDE_DEPTH = 32


@dataclass(frozen=True, slots=True)
class Token:
    text: str
    line: int
    # Punctuation is only punctuation when written bare: a quoted "{" is a word.
    quoted: bool = False

    @property
    def is_word(self) -> bool:
        return self.quoted or self.text not in (";", "{", "}")


@dataclass(frozen=True, slots=True)
class Node:
    """One directive: ``name arg...;`` or ``name arg... { children }``."""

    name: str
    args: tuple[str, ...]
    file: str
    line: int
    children: tuple[Node, ...] | None = None

    @property
    def is_block(self) -> bool:
        return self.children is not None

    def error(self, message: str) -> ConfigError:
        return ConfigError(message, self.file, self.line)


_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "n": "\n", "r": "\r", "t": "\t"}
_SPACE = " \t\r\n"
_PUNCTUATION = ";{}"


def tokenize(text: str, file: str) -> Iterator[Token]:
    """Yield the tokens of one file; raise ConfigError for an unterminated quote."""
    line = 1
    i = 0
    end = len(text)
    while i < end:
        char = text[i]
        if char in _SPACE:
            if char == "\n":
                line += 1
            i += 1
        elif char == "#":
            newline = text.find("\n", i)
            i = end if newline < 0 else newline
        elif char in _PUNCTUATION:
            yield Token(char, line)
            i += 1
        elif char in "\"'":
            start_line = line
            parts: list[str] = []
            i += 1
            while True:
                if i >= end:
                    raise ConfigError(
                        "unexpected end of file, expecting a closing quote", file, start_line
                    )
                c = text[i]
                if c == char:
                    i += 1
                    break
                if c == "\\" and i + 1 < end:
                    parts.append(_ESCAPES.get(text[i + 1], "\\" + text[i + 1]))
                    if text[i + 1] == "\n":
                        line += 1
                    i += 2
                    continue
                if c == "\n":
                    line += 1
                parts.append(c)
                i += 1
            if i < end and text[i] not in _SPACE and text[i] not in _PUNCTUATION:
                raise ConfigError(f'unexpected "{text[i]}" after a quoted string', file, line)
            yield Token("".join(parts), start_line, quoted=True)
        else:
            start = i
            while i < end:
                c = text[i]
                if c in _SPACE or c in ";}":
                    break
                if c == "{":
                    # "${name}" is a variable, not the start of a block
                    if i > start and text[i - 1] == "$":
                        close = text.find("}", i)
                        if close < 0:
                            raise ConfigError(
                                'the closing bracket in a "${" variable is missing', file, line
                            )
                        i = close + 1
                        continue
                    break
                i += 1
            yield Token(text[start:i], line)


def parse_text(text: str, file: str) -> tuple[Node, ...]:
    """Parse one file's text without resolving includes (they stay ``include`` nodes)."""
    tokens = tokenize(text, file)
    children, closing = _parse_block(tokens, file)
    if closing is not None:
        raise ConfigError('unexpected "}"', file, closing.line)
    return children


def _parse_block(tokens: Iterator[Token], file: str) -> tuple[tuple[Node, ...], Token | None]:
    """Parse directives until a bare "}" (returned) or the end of the file (None)."""
    nodes: list[Node] = []
    words: list[Token] = []
    for token in tokens:
        if token.is_word:
            words.append(token)
            continue
        if token.text == "}":
            if words:
                raise ConfigError('unexpected "}", expecting ";"', file, token.line)
            return tuple(nodes), token
        if not words:
            raise ConfigError(f'unexpected "{token.text}"', file, token.line)
        name, args = words[0], tuple(w.text for w in words[1:])
        words = []
        if token.text == ";":
            nodes.append(Node(name.text, args, file, name.line))
            continue
        children, closing = _parse_block(tokens, file)
        if closing is None:
            raise ConfigError('unexpected end of file, expecting "}"', file, name.line)
        nodes.append(Node(name.text, args, file, name.line, children))
    if words:
        raise ConfigError('unexpected end of file, expecting ";" or "}"', file, words[0].line)
    return tuple(nodes), None


def parse_file(path: str, text: str | None = None) -> tuple[Node, ...]:
    """Parse a config file and every file it includes into one tree.

    ``text`` stands in for the file's content (the built-in default config has no file).
    """
    if text is None:
        text = _read(path, None)
    return _expand(parse_text(text, path), path, depth=0)


def _read(path: str, node: Node | None) -> str:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return f.read()
    except OSError as e:
        reason = e.strerror or str(e)
        if node is None:
            raise ConfigError(f'cannot open "{path}": {reason}') from None
        raise node.error(f'cannot open included file "{path}": {reason}') from None


def _expand(nodes: tuple[Node, ...], path: str, depth: int) -> tuple[Node, ...]:
    out: list[Node] = []
    for node in nodes:
        if node.name == "include" and not node.is_block:
            out.extend(_include(node, path, depth))
        elif node.children is not None:
            children = _expand(node.children, path, depth)
            out.append(Node(node.name, node.args, node.file, node.line, children))
        else:
            out.append(node)
    return tuple(out)


def _include(node: Node, path: str, depth: int) -> list[Node]:
    if len(node.args) != 1:
        raise node.error('invalid number of arguments in "include" directive')
    if depth >= MAX_INCLUDE_DEPTH:
        raise node.error(f"includes nested deeper than {MAX_INCLUDE_DEPTH} (an include loop?)")
    pattern = node.args[0]
    if not os.path.isabs(pattern):
        pattern = os.path.join(os.path.dirname(os.path.abspath(path)), pattern)
    if glob.has_magic(pattern):
        files = sorted(glob.glob(pattern))
    else:
        if not os.path.exists(pattern):
            raise node.error(f'cannot open included file "{pattern}": No such file or directory')
        files = [pattern]
    out: list[Node] = []
    for file in files:
        out.extend(_expand(parse_text(_read(file, node), file), file, depth + 1))
    return out
