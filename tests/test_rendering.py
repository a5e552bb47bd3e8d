"""What a reader sees when replies go through conversations.rendering (no DB, no Django)."""

import re

from conversations.rendering import _HIGHLIGHT_BUDGET, render_markdown

# Excerpts copied from the seed replies (Claude Sonnet 4 / Haiku 4.5 model cards).
HEADING_BOLD_LIST = """\
## First Law of Thermodynamics
**Energy cannot be created or destroyed, only converted from one form to another.**
- Also known as the law of conservation of energy
- The total energy of an isolated system remains constant

## Key Components of Recursion

1. **Base case**: A condition that stops the recursion
2. **Recursive case**: The function calling itself with a modified input
"""

PYTHON_FENCE = """\
## Simple Example: Calculating Factorial

```python
def factorial(n):
    # Base case: stop the recursion
    if n == 0 or n == 1:
        return 1
    return n * factorial(n - 1)

print(factorial(5))  # Output: 120
```
"""

TABLE = """\
## Key Differences
| Method | Use Case |
|--------|----------|
| `json.load()` | Read from a file object |
| `json.loads()` | Parse a JSON string |
"""

COPY_BUTTON = '<button type="button" class="copy-code" aria-label="Copy code">Copy</button>'


def test_heading_bold_and_lists_become_tags() -> None:
    out = render_markdown(HEADING_BOLD_LIST)
    assert "<h2>First Law of Thermodynamics</h2>" in out
    assert "<strong>Energy cannot be created or destroyed" in out
    assert "<ul>" in out
    assert "<li>Also known as the law of conservation of energy</li>" in out
    assert "<ol>" in out
    assert "<li><strong>Base case</strong>: A condition that stops the recursion</li>" in out


def test_emphasis_strikethrough_and_inline_code() -> None:
    out = render_markdown("*soft* ~~gone~~ `x < y`")
    assert "<em>soft</em>" in out
    assert "<s>gone</s>" in out or "<del>gone</del>" in out
    assert "<code>x &lt; y</code>" in out


def test_python_fence_is_highlighted_with_copy_button() -> None:
    out = render_markdown(PYTHON_FENCE)
    assert '<div class="code-block">' in out
    assert COPY_BUTTON in out
    assert '<pre class="code"><code class="highlight language-python">' in out
    assert '<span class="k">def</span>' in out
    assert '<span class="nf">factorial</span>' in out
    assert re.search(r'<span class="c1"># Base case: stop the recursion</span>', out)
    assert "onclick" not in out


def test_code_in_fence_is_escaped() -> None:
    out = render_markdown('```python\nprint("<script>alert(1)</script>")\n```')
    assert "<script" not in out
    assert "&lt;script&gt;" in out


def test_unknown_fence_language_falls_back_to_escaped_text() -> None:
    out = render_markdown("```nosuchlanguage\n<b>bold?</b> & more\n```")
    assert '<code class="highlight language-nosuchlanguage">' in out
    assert "&lt;b&gt;bold?&lt;/b&gt; &amp; more" in out
    assert "<span" not in out
    assert COPY_BUTTON in out


def test_code_beyond_highlight_budget_is_still_shown_escaped() -> None:
    huge = "x = '<y>'\n" * (_HIGHLIGHT_BUDGET // 10 + 1)
    out = render_markdown(f"```python\n{huge}```\n\n```python\nimport os\n```")
    big, small = out.split("</pre></div>")[:2]
    assert '<code class="highlight language-python">' in big
    assert "<span" not in big
    assert big.count("x = '&lt;y&gt;'") == _HIGHLIGHT_BUDGET // 10 + 1
    assert COPY_BUTTON in big
    assert '<span class="kn">import</span>' in small


def test_fence_without_language_and_indented_code() -> None:
    for text in ("```\nplain <i>\n```", "    plain <i>"):
        out = render_markdown(text)
        assert '<pre class="code"><code class="highlight">plain &lt;i&gt;' in out
        assert COPY_BUTTON in out


def test_fence_language_is_sanitised_before_use_as_class() -> None:
    out = render_markdown('```py"><script>x</script>\nx = 1\n```')
    assert "<script" not in out
    match = re.search(r'<code class="([^"]*)"', out)
    assert match is not None
    assert re.fullmatch(r"highlight language-[A-Za-z0-9_+-]+", match.group(1))
    assert '"&gt;' not in match.group(1)


def test_table_renders_with_alignment_but_no_style() -> None:
    out = render_markdown(TABLE)
    assert "<table>" in out and "<thead>" in out and "<tbody>" in out
    assert "<th>Method</th>" in out
    assert "<td><code>json.load()</code></td>" in out
    aligned = render_markdown("| a | b |\n|:--|--:|\n| 1 | 2 |")
    assert '<th align="left">a</th>' in aligned
    assert '<td align="right">2</td>' in aligned
    assert "style=" not in aligned


def test_script_tag_is_shown_as_text() -> None:
    out = render_markdown("<script>alert(1)</script>")
    assert "<script" not in out
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out


def test_img_with_onerror_is_inert() -> None:
    out = render_markdown("look <img src=x onerror=alert(1)> here")
    assert "<img" not in out
    assert re.search(r"<[^>]*onerror=", out) is None
    assert "&lt;img src=x onerror=alert(1)&gt;" in out


def test_raw_html_block_and_inline_html_are_escaped() -> None:
    out = render_markdown('<div onclick="steal()">\nhello\n</div>\n\nsome <b style="x">bold</b>')
    assert "<div" not in out
    assert "<b" not in out
    assert "&lt;div onclick=" in out
    assert "&lt;b style=" in out
    assert "<!--" not in render_markdown("<!-- hidden -->")


def test_javascript_and_data_links_get_no_href() -> None:
    for text in (
        "[click](javascript:alert(1))",
        "[click](JaVaScRiPt:alert(1))",
        "[click](data:text/html,<script>alert(1)</script>)",
        "<javascript:alert(1)>",
    ):
        out = render_markdown(text)
        assert 'href="javascript' not in out.lower()
        assert 'href="data' not in out.lower()
        assert "<script" not in out


def test_safe_link_gets_rel_and_target() -> None:
    out = render_markdown("[ok](https://example.com)")
    assert 'href="https://example.com"' in out
    assert 'rel="noopener noreferrer nofollow"' in out
    assert 'target="_blank"' in out


def test_mailto_links_are_kept() -> None:
    assert 'href="mailto:team@example.com"' in render_markdown("[mail](mailto:team@example.com)")


def test_images_render_as_links_not_img() -> None:
    out = render_markdown("![a chart](http://example.com/chart.png)")
    assert "<img" not in out
    assert '<a href="http://example.com/chart.png"' in out
    assert ">a chart</a>" in out
    data = render_markdown("![pixel](data:image/png;base64,AAAA)")
    assert "<img" not in data and "data:" not in data and "pixel" in data
    nested = render_markdown("[![badge](https://example.com/b.svg)](https://example.com)")
    assert "<img" not in nested
    assert nested.count("<a ") == 1


def test_a_text_rendered_again_comes_from_memory_and_long_texts_are_not_kept() -> None:
    from conversations import rendering

    text = "# Again\n\n```python\nprint('hi')\n```\n"
    first = render_markdown(text)
    hits = rendering._render_markdown_cached.cache_info().hits
    assert render_markdown(text) == first
    assert rendering._render_markdown_cached.cache_info().hits == hits + 1

    long_text = "word " * (rendering.RENDER_CACHE_MAX_CHARS // 5 + 1)
    size = rendering._render_markdown_cached.cache_info().currsize
    assert render_markdown(long_text).startswith("<p>word word")
    assert rendering._render_markdown_cached.cache_info().currsize == size
