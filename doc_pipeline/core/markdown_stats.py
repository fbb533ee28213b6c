"""Small views of markdown text shown to users."""


def preview(markdown: str, characters: int = 1500) -> str:
    """The opening of the text, cut at a line end, for the Dagster UI."""
    if len(markdown) <= characters:
        return markdown
    cut = markdown.rfind("\n", 0, characters)
    return markdown[: cut if cut > 0 else characters] + "\n\n…"
