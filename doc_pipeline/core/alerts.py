"""What an alert about a failure that will not be retried says, and its Slack-compatible body.

Which failures are final is `resume.final_failure`'s rule; this module only words them.
"""

from __future__ import annotations

from pathlib import PurePath

from doc_pipeline.core.resume import FinalFailure


def alert_text(
    *,
    document_id: str,
    source_file: str | None,
    title: str | None,
    run_id: str,
    failure: FinalFailure,
) -> str:
    """One line naming the document, the error class, the reason and the run, e.g.
    "doc_pipeline: not-a-book.epub (5e12a3cc…) failed, will not be retried (invalid_input):
    not a ZIP/EPUB archive (looks like a PNG image). Run c28dcc76."."""
    file_name = PurePath(source_file).name if source_file else None
    named = [part for part in (file_name, title) if part]
    label = named[0] if named else "document"
    details = ", ".join([*named[1:], f"{document_id[:8]}…"])
    reason = failure.reason
    if file_name and reason.startswith(f"{file_name}: "):  # a bad file's reason names it
        reason = reason[len(file_name) + 2 :]
    return (
        f"doc_pipeline: {label} ({details}) failed, will not be retried "
        f"({failure.error_class}): {reason.rstrip('.')}. Run {run_id[:8]}."
    )


def slack_escape(text: str) -> str:
    """`&`, `<` and `>` as Slack's entities: Slack reads `<!channel>`, `<@U123>` and
    `<https://…|label>` as mentions and links, and a file name is untrusted input."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_body(text: str) -> dict[str, str]:
    """The JSON body of a Slack incoming webhook (also accepted by its look-alikes)."""
    return {"text": slack_escape(text)}
