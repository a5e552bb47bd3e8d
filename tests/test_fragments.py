"""The streaming pieces are cut from their templates once and filled many times a
second: what they send must be exactly what the templates render, for any text."""

from django.template.loader import render_to_string
from django.utils.safestring import mark_safe
from hypothesis import given, settings
from hypothesis import strategies as st

from conversations.fragments import stream_view_fragment, text_fragment
from conversations.rendering import render_markdown

# Any text a model may write, markup and template syntax included.
texts = st.text(
    st.characters(blacklist_categories=("Cs",)) | st.sampled_from(list("<>&\"'{}%\x00")),
    max_size=60,
)
turn_ids = st.integers(min_value=1, max_value=2**31)


def rendered(name: str, **context) -> str:
    return render_to_string("conversations/partials/" + name, context)


@settings(max_examples=300, deadline=None)
@given(turn_id=turn_ids, text=texts, replace=st.booleans())
def test_a_text_piece_is_what_its_template_renders(turn_id, text, replace):
    piece = text_fragment(turn_id, text, replace=replace)
    assert piece == rendered("text_piece.html", turn_id=turn_id, text=text, replace=replace)
    assert "<" not in piece.split(">", 1)[1].rsplit("<", 1)[0]  # the text is escaped


@settings(max_examples=200, deadline=None)
@given(
    turn_id=turn_ids,
    blocks=st.lists(texts, max_size=3),
    tail=st.none() | texts,
    whole=st.booleans(),
)
def test_a_stream_view_is_what_its_template_renders(turn_id, blocks, tail, whole):
    blocks_html = "".join(render_markdown(block) for block in blocks)
    tail_html = None if tail is None else render_markdown(tail)
    expected = rendered(
        "stream_view.html",
        turn_id=turn_id,
        blocks=mark_safe(blocks_html),  # noqa: S308 - sanitised by nh3
        tail=mark_safe(tail_html or ""),  # noqa: S308 - sanitised by nh3
        whole=whole,
        oob=True,
        has_blocks=bool(blocks_html),
        has_tail=tail_html is not None,
    )
    assert stream_view_fragment(turn_id, blocks_html, tail_html, whole=whole) == expected
    if not whole:
        assert (f'id="turn-{turn_id}-tail"' in expected) is (tail is not None)
