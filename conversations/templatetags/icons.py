"""Inline SVG icons: no icon font and nothing fetched from elsewhere. Each is drawn
with `currentColor` on a 24-unit grid and hidden from assistive technology: the
button or link that holds it carries the accessible name."""

from django import template
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

register = template.Library()

# Stroke paths (round caps and joins, 2 units wide).
PATHS = {
    "plus": "M12 5v14M5 12h14",
    "search": "M11 18a7 7 0 1 0 0-14 7 7 0 0 0 0 14zM21 21l-4.3-4.3",
    "copy": "M9 9h11v11H9zM5 15H4V4h11v1",
    "edit": "M4 20h4L19 9l-4-4L4 16v4zM14 6l4 4",
    "regenerate": "M20 11a8 8 0 1 0-2.3 5.7M20 4v7h-7",
    "stop": "M7 7h10v10H7z",
    "thumb-up": (
        "M7 10v10H4V10h3zM7 10l4-7a2 2 0 0 1 3 2l-1 4h6a2 2 0 0 1 2 2l-2 7a2 2 0 0 1-2 2H7"
    ),
    "thumb-down": (
        "M17 14V4h3v10h-3zM17 14l-4 7a2 2 0 0 1-3-2l1-4H5a2 2 0 0 1-2-2l2-7a2 2 0 0 1 2-2h10"
    ),
    "pin": "M9 4h6l-1 6 4 4H6l4-4-1-6zM12 14v7",
    "archive": "M3 4h18v4H3zM5 8v12h14V8M10 12h4",
    "rename": "M4 20h16M6 16l9-9 3 3-9 9H6v-3z",
    "delete": "M4 7h16M9 7V4h6v3M6 7l1 13h10l1-13M10 11v6M14 11v6",
    "share": (
        "M18 8a3 3 0 1 0 0-6 3 3 0 0 0 0 6zM6 15a3 3 0 1 0 0-6 3 3 0 0 0 0 6z"
        "M18 22a3 3 0 1 0 0-6 3 3 0 0 0 0 6zM8.6 13.5l6.8 4M15.4 6.5l-6.8 4"
    ),
    "menu": "M4 6h16M4 12h16M4 18h16",
    "close": "M6 6l12 12M18 6L6 18",
    "settings": "M4 6h10M18 6h2M4 12h4M12 12h8M4 18h12M20 18h0M14 4v4M8 10v4M16 16v4",
    "download": "M12 4v11M7 10l5 5 5-5M5 20h14",
    "user": "M12 12a4 4 0 1 0 0-8 4 4 0 0 0 0 8zM4 21a8 8 0 0 1 16 0",
    "arrow-down": "M12 5v14M6 13l6 6 6-6",
    "chevron-left": "M15 6l-6 6 6 6",
    "chevron-right": "M9 6l6 6-6 6",
    "send": "M4 12l16-8-6 16-2-7-8-1z",
    "keyboard": "M3 6h18v12H3zM7 10h0M11 10h0M15 10h0M7 14h10",
}


# Presentation attributes, not CSS: the icon draws the same where the site's
# stylesheet is not loaded (the admin).
DRAWING = (
    'class="icon" viewBox="0 0 24 24" width="18" height="18" fill="none" stroke="currentColor" '
    'stroke-width="2" stroke-linecap="round" stroke-linejoin="round"'
)


@register.simple_tag
def icon(name: str, label: str = "") -> SafeString:
    """`{% icon "copy" %}`: decorative (the control names itself). With a label, the
    icon names itself (for an icon-only link or button that has no other text)."""
    path = PATHS[name]
    if label:
        return format_html(
            '<svg {} role="img" aria-label="{}" focusable="false"><path d="{}"/></svg>',
            mark_safe(DRAWING),  # noqa: S308 - constant
            label,
            path,
        )
    return mark_safe(  # noqa: S308 - constant markup from PATHS
        f'<svg {DRAWING} aria-hidden="true" focusable="false"><path d="{path}"/></svg>'
    )
