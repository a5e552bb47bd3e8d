"""Turn model and user text into safe HTML: Markdown, Pygments highlighting, nh3 sanitising.

Nothing here imports Django; callers may ``mark_safe`` the strings these functions return.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from functools import lru_cache

import nh3
from markdown_it import MarkdownIt
from markdown_it.renderer import RendererHTML
from markdown_it.rules_core import StateCore
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexer import Lexer
from pygments.lexers import get_lexer_by_name
from pygments.util import ClassNotFound

__all__ = ["render_markdown"]

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
