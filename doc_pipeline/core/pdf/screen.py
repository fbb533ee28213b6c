"""Checks a PDF before pdfium parses it: what is bounded in Python cannot exhaust the worker.

pdfium (C++) has no limit on what a stream inflates to: a 2 MB file whose content stream
inflates to 2 GiB makes it allocate 2 GiB (and abort under a memory cap). So the document is
read first by pypdf under `PdfLimits`: the page tree is walked and counted, every stream the
text layer needs (content streams, forms, fonts, object streams; not images, which text
extraction never decodes) is inflated with pypdf's own output limits, and actions that would
run something are listed. Only a file that passes reaches pdfium. Nothing here runs a script.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pypdf
from pypdf.errors import FileNotDecryptedError, LimitReachedError, PyPdfError
from pypdf.generic import DictionaryObject, IndirectObject, StreamObject

from doc_pipeline.core.books import InvalidBookError
from doc_pipeline.core.pdf.limits import PdfLimits

_RUNNING_ACTIONS = {"/JavaScript": "JavaScript", "/Launch": "a launch action"}


@dataclass
class Screened:
    pages: int
    warnings: list[str] = field(default_factory=list)


def screen_pdf(path: Path, name: str, limits: PdfLimits) -> Screened:
    """Raise InvalidBookError for a PDF that is encrypted, broken or over a limit; otherwise
    its page count and warnings for what was found and ignored (scripts, launch actions)."""
    try:
        with pypdf.apply_configuration(
            zlib_maximum_output_length=limits.max_stream_bytes,
            lzw_maximum_output_length=limits.max_stream_bytes,
            run_length_maximum_output_length=limits.max_stream_bytes,
            brotli_maximum_output_length=limits.max_stream_bytes,
            maximum_declared_stream_length=limits.max_stream_bytes,
        ):
            reader = pypdf.PdfReader(path, strict=False)
            if reader.is_encrypted and not _opens_without_password(reader):
                raise InvalidBookError(
                    f"{name}: password-protected PDF (it cannot be opened without its "
                    "password; none is tried)"
                )
            screened = Screened(pages=_count_pages(reader, name, limits))
            _inflate_streams(reader, name, limits)
            screened.warnings.extend(_running_actions(reader))
            return screened
    except InvalidBookError:
        raise
    except LimitReachedError as exc:
        raise InvalidBookError(
            f"{name}: a stream inflates past {limits.max_stream_bytes >> 20} MiB "
            f"(decompression bomb?); the limit is PdfLimits.max_stream_bytes ({exc})"
        ) from exc
    except FileNotDecryptedError as exc:
        raise InvalidBookError(f"{name}: password-protected PDF ({exc})") from exc
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise InvalidBookError(f"{name}: broken PDF ({type(exc).__name__}: {exc})") from exc


def _opens_without_password(reader: pypdf.PdfReader) -> bool:
    """An owner password only restricts printing or copying: the empty user password opens it."""
    try:
        return bool(reader.decrypt(""))
    except (PyPdfError, NotImplementedError, ValueError):
        return False


def _count_pages(reader: pypdf.PdfReader, name: str, limits: PdfLimits) -> int:
    try:
        declared = int(reader.trailer["/Root"]["/Pages"].get("/Count", 0))
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidBookError(f"{name}: broken PDF (no page tree: {exc})") from exc
    if declared > limits.max_pages:
        raise InvalidBookError(
            f"{name}: {declared:,} pages; the limit is {limits.max_pages:,} (PdfLimits.max_pages)"
        )
    pages = len(reader.pages)  # walks the tree: a loop or a dangling node fails here
    if pages > limits.max_pages:
        raise InvalidBookError(
            f"{name}: {pages:,} pages; the limit is {limits.max_pages:,} (PdfLimits.max_pages)"
        )
    if pages == 0:
        raise InvalidBookError(f"{name}: broken PDF (its page tree holds no page)")
    return pages


def _inflate_streams(reader: pypdf.PdfReader, name: str, limits: PdfLimits) -> None:
    numbers = [(num, gen) for gen, table in reader.xref.items() for num in table]
    if len(numbers) > limits.max_objects:
        raise InvalidBookError(
            f"{name}: {len(numbers):,} objects; the limit is {limits.max_objects:,} "
            "(PdfLimits.max_objects)"
        )
    total = 0
    for num, gen in numbers:
        try:
            obj = reader.get_object(IndirectObject(num, gen, reader))
        except (PyPdfError, ValueError, KeyError, TypeError) as exc:
            if isinstance(exc, LimitReachedError):
                raise
            continue  # an unreadable object the text layer may never need
        if not isinstance(obj, StreamObject) or obj.get("/Subtype") == "/Image":
            continue
        total += len(obj.get_data())
        if total > limits.max_inflated_bytes:
            raise InvalidBookError(
                f"{name}: its streams inflate past {limits.max_inflated_bytes >> 20} MiB "
                "(decompression bomb?); the limit is PdfLimits.max_inflated_bytes"
            )


def _running_actions(reader: pypdf.PdfReader) -> list[str]:
    """What would run something in a viewer: found, named and ignored (never run here)."""
    found: dict[str, int] = {}
    root = reader.trailer["/Root"]
    names = root.get("/Names")
    if isinstance(names, DictionaryObject) and "/JavaScript" in names:
        found["JavaScript"] = found.get("JavaScript", 0) + 1
    candidates = [root.get("/OpenAction"), root.get("/AA")]
    for page in reader.pages:
        candidates.append(page.get("/AA"))
        for annotation in page.get("/Annots") or []:
            annotation = annotation.get_object()
            if isinstance(annotation, DictionaryObject):
                candidates.extend([annotation.get("/A"), annotation.get("/AA")])
    for action in candidates:
        for kind in _action_kinds(action):
            found[kind] = found.get(kind, 0) + 1
    return [
        f"{what} ({count} found) ignored: scripts and launch actions are never run"
        for what, count in sorted(found.items())
    ]


def _action_kinds(action: object, depth: int = 0) -> list[str]:
    """The running kinds in an action dictionary, its /Next chain and an /AA map."""
    if depth > 20 or action is None:
        return []
    action = action.get_object() if isinstance(action, IndirectObject) else action
    if not isinstance(action, DictionaryObject):
        return []
    kinds = []
    what = _RUNNING_ACTIONS.get(str(action.get("/S")))
    if what:
        kinds.append(what)
    for key, value in action.items():
        if key == "/Next" or (key != "/S" and re.fullmatch(r"/[A-Z][a-zA-Z]?", key)):
            kinds.extend(_action_kinds(value, depth + 1))
    return kinds

