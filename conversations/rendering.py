"""Turn model and user text into safe HTML: Markdown, Pygments highlighting, nh3 sanitising.

Nothing here imports Django; callers may ``mark_safe`` the strings these functions return.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise
from typing import Any

import nh3
from markdown_it import MarkdownIt
from markdown_it.common.utils import normalizeReference
from markdown_it.renderer import RendererHTML
from markdown_it.rules_core import StateCore
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexer import Lexer
from pygments.lexers import get_lexer_by_name
from pygments.util import ClassNotFound

__all__ = ["MarkdownUpdate", "StreamingMarkdown", "render_markdown", "render_partial_markdown"]

_LANG_UNSAFE = re.compile(r"[^A-Za-z0-9_+-]")
_MAX_LANG_LEN = 40
_TEXT_ALIGN = re.compile(r"^\s*text-align\s*:\s*(left|right|center)\s*;?\s*$")
# Code past this many characters per reply is escaped, not highlighted, to bound render time.
_HIGHLIGHT_BUDGET = 30_000
_COPY_BUTTON = '<button type="button" class="copy-code" aria-label="Copy code">Copy</button>'

_FORMATTER = HtmlFormatter(nowrap=True)

_ALLOWED_TAGS = {
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "del", "s",
    "code", "pre", "blockquote", "ul", "ol", "li", "a", "table", "thead", "tbody",
    "tr", "th", "td", "span", "div", "button",
}  # fmt: skip
_ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "span": {"class"},
    "code": {"class"},
    "pre": {"class"},
    "div": {"class"},
    "button": {"type", "class", "aria-label"},
    "ol": {"start"},
}
_ALIGN_VALUES = {"left", "right", "center"}
_CLEANER = nh3.Cleaner(
    tags=_ALLOWED_TAGS,
    clean_content_tags={"script", "style"},
    attributes=_ALLOWED_ATTRIBUTES,
    tag_attribute_values={"th": {"align": _ALIGN_VALUES}, "td": {"align": _ALIGN_VALUES}},
    set_tag_attribute_values={"a": {"target": "_blank"}},
    url_schemes={"http", "https", "mailto"},
    link_rel="noopener noreferrer nofollow",
    strip_comments=True,
)


def _safe_lang(info: str) -> str:
    """First word of a fence's info string, reduced to ``[A-Za-z0-9_+-]``."""
    words = info.split(maxsplit=1)
    return _LANG_UNSAFE.sub("", words[0])[:_MAX_LANG_LEN] if words else ""


@lru_cache(maxsize=64)
def _lexer_for(lang: str) -> Lexer | None:
    """The Pygments lexer named ``lang``, or None when unknown (never guessed)."""
    try:
        return get_lexer_by_name(lang)
    except ClassNotFound:
        return None


def _code_block(code: str, lang: str, env: EnvType) -> str:
    """Highlighted ``<pre><code>`` with a copy button, inside a ``div.code-block``."""
    budget = env.get("highlight_budget", 0)
    lexer = _lexer_for(lang.lower()) if lang and len(code) <= budget else None
    if lexer:
        env["highlight_budget"] = budget - len(code)
    body = highlight(code, lexer, _FORMATTER) if lexer else html.escape(code, quote=False)
    classes = f"highlight language-{lang}" if lang else "highlight"
    return (
        f'<div class="code-block">{_COPY_BUTTON}'
        f'<pre class="code"><code class="{classes}">{body}</code></pre></div>\n'
    )


def _render_fence(
    self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    """Render a fenced code block through Pygments."""
    token = tokens[idx]
    return _code_block(token.content, _safe_lang(token.info), env)


def _render_code_block(
    self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    """Render an indented code block like an unlabelled fence."""
    return _code_block(tokens[idx].content, "", env)


def _render_image(
    self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    """Render an image as a link to its http(s) URL, never ``<img>``; else just its alt text."""
    token = tokens[idx]
    alt = html.escape(self.renderInlineAsText(token.children or [], options, env), quote=False)
    src = str(token.attrs.get("src", ""))
    if token.meta.get("in_link") or not src.lower().startswith(("http://", "https://")):
        return alt
    label = alt or html.escape(src, quote=False)
    return f'<a href="{html.escape(src)}">{label}</a>'


def _safe_attrs(state: StateCore) -> None:
    """Turn table ``style="text-align:…"`` into ``align``; mark images that sit inside links."""
    for token in state.tokens:
        if token.type in ("th_open", "td_open") and "style" in token.attrs:
            match = _TEXT_ALIGN.match(str(token.attrs.pop("style")))
            if match:
                token.attrs["align"] = match.group(1)
        elif token.type == "inline" and token.children:
            depth = 0
            for child in token.children:
                if child.type == "link_open":
                    depth += 1
                elif child.type == "link_close":
                    depth = max(depth - 1, 0)
                elif child.type == "image" and depth:
                    child.meta["in_link"] = True


_MD = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable(
    ["table", "strikethrough"]
)
_MD.core.ruler.push("safe_attrs", _safe_attrs)
_MD.add_render_rule("fence", _render_fence)
_MD.add_render_rule("code_block", _render_code_block)
_MD.add_render_rule("image", _render_image)


# Rendering is pure, so the HTML of recent texts is kept: reopening a conversation, or
# another page on it, costs a look-up per reply instead of Markdown, Pygments and nh3.
# Worst case: 256 texts of up to 16,000 characters and their HTML, some 16 MB.
RENDER_CACHE_SIZE = 256
RENDER_CACHE_MAX_CHARS = 16_000


def render_markdown(text: str) -> str:
    """Markdown → sanitised HTML (a str safe to mark_safe)."""
    if len(text) > RENDER_CACHE_MAX_CHARS:
        return _render_markdown(text)
    return _render_markdown_cached(text)


def _render_markdown(text: str) -> str:
    return _CLEANER.clean(_MD.render(text, {"highlight_budget": _HIGHLIGHT_BUDGET}))


_render_markdown_cached = lru_cache(maxsize=RENDER_CACHE_SIZE)(_render_markdown)


# --- streaming: finished blocks once, the unfinished tail again ----------------------

# The tail is rendered again once it grew by at least 1/TAIL_GROWTH of its length
# since its last rendering: the parsing work of a reply stays within a constant
# factor of its length (at most 2 * (TAIL_GROWTH + 1) + 1: the last block may be
# parsed twice), even when one block (a long code block, a long list) never finishes.
TAIL_GROWTH = 4
_LABEL = re.compile(r"\[((?:[^\[\]\\]|\\.){1,999})\]")


@dataclass(frozen=True)
class MarkdownUpdate:
    """What a feed changed: newly finished top-level blocks (each HTML, final) and the
    unfinished tail's HTML, or None when the tail was left as it was."""

    blocks: list[str]
    tail: str | None


class StreamingMarkdown:
    """Markdown that renders while it arrives, each finished top-level block once.

    `feed` takes the next piece of text. A block is finished when no later text can
    change it: the parser has started another block after it, on a complete line
    that is followed by one more complete line (tables and setext headings look one
    line ahead). Everything after the last finished block is the tail, rendered
    again (when it grew enough) with each feed. The blocks of a whole text, followed
    by its tail after `finish`, are `render_markdown(text)`; the one exception, a
    reference definition that arrives after a block that used its label, is healed
    by `finish`, which then renders the whole text once (`reset`).
    """

    def __init__(self) -> None:
        # The text, normalised as markdown-it does (a trailing "\r" waits for the next
        # piece): finished sources, the tail, and pieces not joined to it yet.
        self._finished: list[str] = []
        self._tail = ""
        self._pieces: list[str] = []
        self._pending_cr = False
        self._length = 0  # of the normalised text
        self._finished_length = 0
        self._env: dict[str, Any] = {"highlight_budget": _HIGHLIGHT_BUDGET}
        self._unresolved: set[str] = set()  # labels used by finished blocks, undefined then
        self._stale = False
        self._tail_rendered_at = -1  # `_length` at the tail's last rendering
        self.parsed_chars = 0  # characters given to the parser, for the linear-cost test
        self.reset = False

    def feed(self, piece: str) -> MarkdownUpdate:
        """Add text; return the blocks it finished and the new tail (if rendered)."""
        self._append(piece)
        return self._advance(final=False)

    @property
    def behind(self) -> bool:
        """Text arrived that the tail does not show yet (it grew too little to render)."""
        return self._length != self._tail_rendered_at

    def refresh(self) -> MarkdownUpdate:
        """Render the tail now, however little it grew (when the text pauses)."""
        if not self.behind:
            return MarkdownUpdate(blocks=[], tail=None)
        return self._advance(final=False, force=True)

    def finish(self) -> MarkdownUpdate:
        """The text is complete: the remaining blocks, and an empty tail. When `reset`
        is set, the blocks are the whole text's rendering, replacing all before."""
        if self._pending_cr:
            self._pending_cr = False
            self._pieces.append("\n")
            self._length += 1
        update = self._advance(final=True)
        if self._stale:
            self.reset = True
            return MarkdownUpdate(blocks=[render_markdown("".join(self._finished))], tail="")
        return update

    def _append(self, piece: str) -> None:
        if not piece:
            return
        if self._pending_cr:
            piece = "\r" + piece
            self._pending_cr = False
        if piece.endswith("\r"):
            piece, self._pending_cr = piece[:-1], True
        piece = _NEWLINES.sub("\n", piece).replace("\0", "\ufffd")
        self._pieces.append(piece)
        self._length += len(piece)

    def _advance(self, *, final: bool, force: bool = False) -> MarkdownUpdate:
        grown = self._length - self._tail_rendered_at
        tail_length = self._length - self._finished_length
        if not (final or force) and (grown <= 0 or grown * TAIL_GROWTH < tail_length):
            return MarkdownUpdate(blocks=[], tail=None)
        self._tail_rendered_at = self._length
        if self._pieces:
            self._tail += "".join(self._pieces)
            self._pieces.clear()
        tail = self._tail
        env = self._tail_env()
        self.parsed_chars += len(tail)
        tokens = _MD.parse(tail, env)
        if final:
            cut_token, cut_line = len(tokens), tail.count("\n") + 1
        else:
            cut_token, cut_line = _finished_prefix(tail, tokens)
        blocks: list[str] = []
        if cut_token:
            cut = _line_offset(tail, cut_line)
            finished = tail[:cut]
            if "]:" in tail:
                # A definition may sit in the tail, parsed with it: render the finished
                # part on its own, so only definitions before its end count.
                blocks.append(self._render_finished(finished, None))
            else:
                blocks.append(self._render_finished(finished, tokens[:cut_token]))
            self._finished.append(finished)
            self._finished_length += cut
            self._tail = tail[cut:]
            tokens = tokens[cut_token:]
        if final:
            if self._tail:
                self._finished.append(self._tail)
                self._tail = ""
            self._note_definitions(env)
            return MarkdownUpdate(blocks=blocks, tail="")
        rest_env = self._tail_env()
        if "]:" in tail:
            rest_env["references"] = dict(env.get("references", {}))
        tokens = self._healed(tail, tokens, rest_env)
        html = _CLEANER.clean(_MD.renderer.render(tokens, _MD.options, rest_env)) if tokens else ""
        return MarkdownUpdate(blocks=blocks, tail=html)

    def _healed(self, tail: str, tokens: list[Token], env: dict[str, Any]) -> list[Token]:
        """The tail's tokens with its last block's open inline markup closed (and a
        fence or link being typed left out), so no raw `**` or backticks show before
        their closing half arrives. Code blocks are shown as they are."""
        starts = [i for i, t in enumerate(tokens) if t.level == 0 and t.map]
        if not starts:
            return tokens
        last = tokens[starts[-1]]
        if last.type in ("fence", "code_block"):
            return tokens
        assert last.map is not None
        source = tail[_line_offset(tail, last.map[0]) :]
        healed = heal_inline(source)
        if healed == source:
            return tokens
        self.parsed_chars += len(healed)
        return tokens[: starts[-1]] + _MD.parse(
            healed, self._tail_env() | {"references": dict(env.get("references", {}))}
        )

    def _tail_env(self) -> dict[str, Any]:
        env = dict(self._env)
        if "references" in env:
            env["references"] = dict(env["references"])
        return env

    def _render_finished(self, source: str, tokens: list[Token] | None) -> str:
        before = set(self._env.get("references", ()))
        if tokens is None:
            self.parsed_chars += len(source)
            tokens = _MD.parse(source, self._env)
        html = _CLEANER.clean(_MD.renderer.render(tokens, _MD.options, self._env))
        defined = set(self._env.get("references", ()))
        if (defined - before) & self._unresolved:
            self._stale = True
        if "[" in source:
            labels = {normalizeReference(label) for label in _LABEL.findall(source)}
            self._unresolved |= labels - defined
        return html

    def _note_definitions(self, env: dict[str, Any]) -> None:
        """Definitions in the final tail may give meaning to labels of earlier blocks."""
        known = set(self._env.get("references", ()))
        if (set(env.get("references", ())) - known) & self._unresolved:
            self._stale = True


_NEWLINES = re.compile(r"\r\n?")
# A fence or code span being opened on the last line: no content yet.
_PARTIAL_FENCE = re.compile(r"(?:^|\n) {0,3}(?:`{1,2}|~{1,2}|`{3,}|~{3,})$")
_BACKTICKS = re.compile(r"`+")
_MARKUP = re.compile(r"[*`~\[]")
_LONE_STARS = re.compile(r"(?<=\s)\*+(?=\s)")
_BULLET = re.compile(r"^[ \t]*[*+-][ \t]", re.M)
_PARTIAL_LINK = re.compile(r"!?\[([^\[\]\n]*)(?:\]\([^()\s]*|\])?$")


def heal_inline(source: str) -> str:
    """The last block of a streaming text as it will probably read once complete:
    an open code span, strong, emphasis or strikethrough closed, a marker without
    content yet and a fence or link still being typed left out."""
    if not _MARKUP.search(source):
        return source  # plain words: the common case, kept cheap
    text = _PARTIAL_FENCE.sub("", source)
    closers = ""
    plain = text
    runs = list(_BACKTICKS.finditer(text))
    index = 0
    while index < len(runs):
        run = runs[index]
        length = run.end() - run.start()
        match = next(
            (k for k in range(index + 1, len(runs)) if len(runs[k].group()) == length), None
        )
        if match is None:
            plain = text[: run.start()]
            if run.end() == len(text.rstrip()):
                text = text[: run.start()]
            else:
                closers = "`" * length
            break
        plain = plain.replace(text[run.start() : runs[match].end()], "")
        index = match + 1
    if not closers:
        text = _PARTIAL_LINK.sub(r"\1", text.rstrip())
        plain = _PARTIAL_LINK.sub(r"\1", plain.rstrip())
    plain = _LONE_STARS.sub("", plain)  # `2 * 3` opens nothing
    for marker in ("*", "~~", "**"):
        counted = _BULLET.sub("", plain).replace("**", "  ") if marker == "*" else plain
        if counted.count(marker) % 2 == 0:
            continue
        if not closers and text.rstrip().endswith(marker):
            text = text.rstrip()[: -len(marker)]
            plain = plain.rstrip()[: -len(marker)]
        else:
            text = text.rstrip() if not closers else text
            closers += marker
    return text + closers if closers else text


def _finished_prefix(tail: str, tokens: list[Token]) -> tuple[int, int]:
    """How many leading tokens of `tail` form finished top-level blocks, and the line
    where the first unfinished block starts; (0, 0) when none is finished."""
    complete_lines = tail.count("\n")  # lines 0 .. complete_lines - 1 end with "\n"
    starts = [(i, t) for i, t in enumerate(tokens) if t.level == 0 and t.map]
    cut = (0, 0)
    lines: list[str] | None = None
    for (_, previous), (index, block) in pairwise(starts):
        assert previous.map is not None and block.map is not None
        start = block.map[0]
        # A closed fence, an ATX heading or a rule ends with its own line; other
        # blocks end where the next one starts, known once that line and the next
        # are complete (a table or a setext heading is decided one line ahead).
        settled = previous.type in ("fence", "hr") or (
            previous.type == "heading_open" and previous.markup.startswith("#")
        )
        if not settled and start + 1 >= complete_lines:
            break
        if previous.map[1] < start:
            # Lines between two blocks: blank, or a reference definition, which may
            # go on (a title on the next line) until a blank line.
            if lines is None:
                lines = tail.split("\n")
            gap = lines[previous.map[1] : start]
            if any(line.strip() for line in gap) and lines[start - 1].strip():
                break
        cut = (index, start)
    return cut


def _line_offset(text: str, line: int) -> int:
    """Offset of the start of line `line` (0-based), or len(text) past the last."""
    offset = 0
    for _ in range(line):
        found = text.find("\n", offset)
        if found < 0:
            return len(text)
        offset = found + 1
    return offset


def render_partial_markdown(text: str) -> str:
    """A reply still being written, rendered as `StreamingMarkdown` shows it."""
    renderer = StreamingMarkdown()
    update = renderer.feed(text)
    return "".join(update.blocks) + (update.tail or "")
