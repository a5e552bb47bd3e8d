"""Markdown rendered while it streams: whatever the pieces, the page ends with exactly
the whole text's rendering, every state on the way is sanitised, well-formed HTML,
and the work grows linearly with the reply."""

from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conversations.rendering import (
    _CLEANER,
    TAIL_GROWTH,
    MarkdownUpdate,
    StreamingMarkdown,
    render_markdown,
)
from tests.emulator import split_tokens

SEED_REPLIES = {
    path.stem: path.read_text()
    for path in sorted((Path(__file__).parent / "fixtures" / "seed_replies").glob("*.md"))
}
# The four seed examples of both model pages (and each page's first example).
assert len(SEED_REPLIES) == 10

VOID = {"br", "hr"}


class _Balance(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(f"unexpected </{tag}>")


def assert_safe_html(fragment: str) -> None:
    """Balanced tags, and already what the sanitiser would make of it."""
    checker = _Balance()
    checker.feed(fragment)
    checker.close()
    assert not checker.errors and not checker.stack, (checker.errors, checker.stack, fragment)
    assert _CLEANER.clean(fragment) == fragment, fragment


class Page:
    """What a page holds: finished blocks appended once, the tail replaced."""

    def __init__(self) -> None:
        self.blocks: list[str] = []
        self.tail = ""

    def apply(self, update: MarkdownUpdate, *, reset: bool = False) -> None:
        if reset:
            self.blocks = []
        self.blocks += update.blocks
        if update.tail is not None:
            self.tail = update.tail

    @property
    def html(self) -> str:
        return "".join(self.blocks) + self.tail


def stream(pieces: list[str], *, check_each: bool = True) -> tuple[Page, StreamingMarkdown]:
    page, renderer = Page(), StreamingMarkdown()
    for piece in pieces:
        update = renderer.feed(piece)
        page.apply(update)
        if check_each:
            for block in update.blocks:
                assert_safe_html(block)
            if update.tail is not None:
                assert_safe_html(update.tail)
    final = renderer.finish()
    page.apply(final, reset=renderer.reset)
    assert final.tail == ""
    return page, renderer


def cut(text: str, sizes: list[int]) -> list[str]:
    pieces, at, index = [], 0, 0
    while at < len(text):
        size = sizes[index % len(sizes)]
        pieces.append(text[at : at + size])
        at, index = at + size, index + 1
    return pieces


@pytest.mark.parametrize("name", SEED_REPLIES)
def test_seed_reply_streamed_in_emulator_pieces_ends_as_the_whole_rendering(name) -> None:
    text = SEED_REPLIES[name]
    page, _ = stream(split_tokens(text))
    assert page.html == render_markdown(text)


@pytest.mark.parametrize("name", SEED_REPLIES)
def test_seed_reply_cut_at_every_boundary_ends_as_the_whole_rendering(name) -> None:
    text = SEED_REPLIES[name]
    whole = render_markdown(text)
    # One character a piece visits every boundary as an intermediate state.
    page, _ = stream(list(text))
    assert page.html == whole
    for at in range(1, len(text)):
        page, _ = stream([text[:at], text[at:]], check_each=False)
        assert page.html == whole, at


def test_seed_reply_shows_rendered_blocks_before_it_ends() -> None:
    text = SEED_REPLIES["sonnet-4-recursion"]
    page, renderer = Page(), StreamingMarkdown()
    seen_open_fence = False
    for piece in cut(text, [24]):
        page.apply(renderer.feed(piece))
        if '<code class="highlight language-python">' in page.tail:
            seen_open_fence = seen_open_fence or '<span class="k">def</span>' in page.tail
    assert seen_open_fence  # the open code fence was highlighted as it grew
    assert len(page.blocks) > 5  # finished blocks went out before the end


@pytest.mark.parametrize("name", SEED_REPLIES)
@pytest.mark.parametrize("size", [1, 4, 24])
def test_seed_reply_never_shows_raw_markup_while_it_streams(name, size) -> None:
    page, renderer = Page(), StreamingMarkdown()
    for piece in cut(SEED_REPLIES[name], [size]):
        page.apply(renderer.feed(piece))
        assert "**" not in page.html and "```" not in page.html, page.tail


# --- random Markdown from a grammar of the constructs whose extent is not local ---

words = st.sampled_from(
    ["alpha", "beta", "gamma", "x", "ΔU", "1.", "2)", "-", "*", "+", "#", "|", ">", "=", "`",
     "tok", "a_b", "<div>", "</p>", "&amp;", "[foo]", "[Bar][]", "[x](https://e.org)",
     "**bold**", "*em*", "`code`", "~~del~~", "![img](https://e.org/i.png)", "\\*"]
)  # fmt: skip
inline = st.lists(words, min_size=1, max_size=6).map(" ".join)
indent = st.sampled_from(["", " ", "  ", "   ", "    ", "\t"])


def _lines(draw_lines: list[str]) -> str:
    return "\n".join(draw_lines)


paragraph = st.lists(inline, min_size=1, max_size=3).map(_lines)
atx = st.tuples(st.integers(1, 6), inline).map(lambda t: "#" * t[0] + " " + t[1])
setext = st.tuples(inline, st.sampled_from(["===", "---", "-", "=", "- - -"])).map(
    lambda t: f"{t[0]}\n{t[1]}"
)
hr = st.sampled_from(["---", "***", "___", "- - -"])
code_lines = st.lists(
    st.sampled_from(
        ["def f(x):", "    return x", "", "print('hi')", "```", "~~~", "{", '  "a": 1']
    ),
    min_size=0,
    max_size=5,
).map(_lines)
fence = st.tuples(
    st.sampled_from(["```", "~~~", "````"]),
    st.sampled_from(["", "python", "json", "js", "nosuchlang", "py{x}"]),
    code_lines,
    st.sampled_from(["```", "~~~", "````", "", "``"]),
).map(lambda t: f"{t[0]}{t[1]}\n{t[2]}\n{t[3]}" if t[2] else f"{t[0]}{t[1]}\n{t[3]}")
indented_code = st.lists(st.sampled_from(["    code()", "", "     more", "\tx = 1"]), min_size=1,
                         max_size=4).map(_lines)  # fmt: skip
item = st.tuples(
    st.sampled_from(["- ", "* ", "+ ", "1. ", "2. ", "1) ", "10. "]), indent, inline
).map(lambda t: t[0] + t[2] if not t[1] else f"{t[0]}{t[2]}\n{t[1]}{t[2]}")
bullet_list = st.lists(
    st.tuples(item, st.sampled_from(["\n", "\n\n", "\n  ", "\n    "])), min_size=1, max_size=4
).map(lambda items: "".join(a + b for a, b in items).rstrip())
table = st.tuples(st.integers(1, 3), st.lists(inline, min_size=0, max_size=3)).map(
    lambda t: "\n".join(
        ["| " + " | ".join(["h"] * t[0]) + " |", "|" + "|".join([":--"] * t[0]) + "|"]
        + ["| " + row + " |" for row in t[1]]
    )
)
blockquote = st.lists(st.tuples(st.sampled_from(["> ", ">", ""]), inline), min_size=1,
                      max_size=3).map(lambda rows: "\n".join(a + b for a, b in rows))  # fmt: skip
definition = st.tuples(st.sampled_from(["foo", "bar", "FOO"]), st.sampled_from(["", ' "t"'])).map(
    lambda t: f"[{t[0]}]: https://example.org/{t[0]}{t[1]}"
)
html_block = st.sampled_from(["<div>", "<script>alert(1)</script>", "<!-- c -->", "</div>"])
block = st.one_of(
    paragraph, atx, setext, hr, fence, indented_code, bullet_list, table, blockquote,
    definition, html_block,
)  # fmt: skip
separator = st.sampled_from(["\n", "\n\n", "\n\n\n", "\n \n", "\r\n\r\n"])
document = st.lists(st.tuples(block, separator), min_size=1, max_size=8).map(
    lambda blocks: "".join(a + b for a, b in blocks)
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=document, sizes=st.lists(st.integers(1, 40), min_size=1, max_size=8))
def test_random_markdown_in_random_pieces_ends_as_the_whole_rendering(text, sizes) -> None:
    page, _ = stream(cut(text, sizes))
    assert page.html == render_markdown(text)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=document, at=st.integers(0, 10_000))
def test_random_markdown_cut_anywhere_ends_as_the_whole_rendering(text, at) -> None:
    at %= len(text) + 1
    page, _ = stream([text[:at], text[at:]])
    assert page.html == render_markdown(text)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=document)
def test_random_markdown_one_character_at_a_time(text) -> None:
    page, _ = stream(list(text))
    assert page.html == render_markdown(text)


def test_a_late_definition_heals_the_earlier_reference_at_the_end() -> None:
    text = "See [the docs][docs].\n\nMore text.\n\nAnd more.\n\n[docs]: https://example.org/\n"
    page, renderer = stream(cut(text, [5]))
    assert renderer.reset
    assert page.html == render_markdown(text)
    assert 'href="https://example.org/"' in page.html


def test_raw_html_never_reaches_a_state() -> None:
    text = "<script>alert(1)</script>\n\n<img src=x onerror=alert(2)>\n\n```\n<b>x</b>\n"
    renderer = StreamingMarkdown()
    for piece in cut(text, [3]):
        update = renderer.feed(piece)
        for part in [*update.blocks, update.tail or ""]:
            assert "<script" not in part and "<img" not in part and "<b>" not in part


# --- linear cost: characters given to the parser, not time ----------------------------


# Each rendering of the tail parses at most TAIL_GROWTH times what arrived since the
# last, and its last block once more when open markup is closed for the display.
LINEAR_BOUND = 2 * (TAIL_GROWTH + 1) + 1


def long_reply(blocks: int) -> str:
    replies = list(SEED_REPLIES.values())
    return "\n\n".join(replies[i % len(replies)] for i in range(blocks))


@pytest.mark.parametrize("piece", [1, 7, 60])
def test_parsing_work_is_linear_in_the_reply(piece) -> None:
    costs = []
    for repeats in (10, 40):
        text = long_reply(repeats)
        renderer = StreamingMarkdown()
        for part in cut(text, [piece]):
            renderer.feed(part)
        renderer.finish()
        costs.append(renderer.parsed_chars / len(text))
    small, large = costs
    # The same characters per character of reply at 4x the length: no quadratic term.
    assert large < small * 1.25, costs
    assert large <= LINEAR_BOUND, costs


@pytest.mark.parametrize(
    "text",
    [
        "```python\n" + "x = 1\n" * 8_000,  # a code block that never closes
        "- item\n" * 3_000,  # one long list
        "word " * 16_000,  # one long paragraph
    ],
    ids=["open-fence", "long-list", "long-paragraph"],
)
def test_a_block_that_never_finishes_costs_linear_work(text) -> None:
    renderer = StreamingMarkdown()
    tails = 0
    for part in cut(text, [11]):
        tails += renderer.feed(part).tail is not None
    renderer.finish()
    assert renderer.parsed_chars <= LINEAR_BOUND * len(text)
    assert tails > 20  # it was still shown growing
