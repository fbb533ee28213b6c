"""Footnotes: note references become markdown markers, note bodies become definitions."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterator

from lxml import etree

from doc_pipeline.core.epub.documents import Doc
from doc_pipeline.core.epub.hrefs import resolve_href
from doc_pipeline.core.epub.markup import HEADING_TAGS, epub_types, remove, tokens_of

_NOTE_TYPES = {"footnote", "endnote", "rearnote"}
_NOTE_ROLES = {"doc-footnote", "doc-endnote"}
_NOTES_CONTAINER_TYPES = {"footnotes", "endnotes", "rearnotes"}
_NOTES_CONTAINER_ROLES = {"doc-endnotes", "doc-footnotes"}
_BACKLINK_TEXT = {"↩", "↩\ufe0e", "↩\ufe0f", "↑", "^", "back"}


class Notes:
    """Finds note references and note bodies, replaces each reference with a markdown
    footnote marker "[^label]" and detaches the bodies, which become definitions through the
    caller's `render` (element -> markdown)."""

    def __init__(self, docs: list[Doc]) -> None:
        self.by_name = {doc.name: doc for doc in docs}
        self.bodies: dict[tuple[str, str], etree._Element] = {}
        self.labels: dict[tuple[str, str], str] = {}
        # document name (or owning note key) -> notes first referenced there, in order
        self.first_ref_in: dict[object, list[tuple[str, str]]] = {}
        self.emitted: set[tuple[str, str]] = set()
        for doc in docs:
            self._find_bodies(doc)
        for doc in docs:
            self._find_typed_ref_targets(doc)
        for doc in docs:
            self._replace_refs(doc)
        self._detach_bodies()

    def _find_bodies(self, doc: Doc) -> None:
        for el in doc.body.iter():
            types, roles = epub_types(el), tokens_of(el, "role")
            if el.get("id") and (types & _NOTE_TYPES or roles & _NOTE_ROLES):
                self.bodies[(doc.name, el.get("id"))] = el
            elif types & _NOTES_CONTAINER_TYPES or roles & _NOTES_CONTAINER_ROLES:
                for child in el.iter("li"):
                    if child.get("id"):
                        self.bodies.setdefault((doc.name, child.get("id")), child)

    def _targets(self, doc: Doc) -> Iterator[tuple[etree._Element, tuple[str, str]]]:
        base = posixpath.dirname(doc.name)
        for a in doc.body.iter("a"):
            target_doc, frag = resolve_href(a.get("href") or "", base)
            if frag:
                yield a, (target_doc or doc.name, frag)

    def _find_typed_ref_targets(self, doc: Doc) -> None:
        for a, key in self._targets(doc):
            typed = "noteref" in epub_types(a) or "doc-noteref" in tokens_of(a, "role")
            target_doc = self.by_name.get(key[0])
            if not typed or key in self.bodies or target_doc is None:
                continue
            target = target_doc.ids.get(key[1])
            if target is not None and target.tag not in {"body", "html"} and a not in target.iter():
                self.bodies[key] = target

    def _replace_refs(self, doc: Doc) -> None:
        owner_of = {el: key for key, el in self.bodies.items() if key[0] == doc.name}
        for a, key in list(self._targets(doc)):
            if key not in self.bodies:
                continue
            if key not in self.labels:
                self.labels[key] = self._new_label(key[1])
                # A reference inside another note is defined right after that note.
                owner = next(
                    (owner_of[anc] for anc in a.iterancestors() if anc in owner_of), doc.name
                )
                self.first_ref_in.setdefault(owner, []).append(key)
            marker = f"[^{self.labels[key]}]"
            a.tail = marker + (a.tail or "")
            remove(a)

    def _new_label(self, fragment: str) -> str:
        base = re.sub(r"[^A-Za-z0-9-]+", "-", fragment).strip("-") or "note"
        used = set(self.labels.values())
        label, n = base, 1
        while label in used:
            n += 1
            label = f"{base}-{n}"
        return label

    def _detach_bodies(self) -> None:
        containers = set()
        for (doc_name, _frag), el in self.bodies.items():
            self.by_name[doc_name].had_notes = True
            for anc in el.iterancestors():
                if epub_types(anc) & _NOTES_CONTAINER_TYPES or tokens_of(anc, "role") & (
                    _NOTES_CONTAINER_ROLES
                ):
                    containers.add(anc)
            if el.getparent() is not None:
                remove(el)
            for a in [a for a in el.iter("a") if _is_backlink(a)]:
                remove(a)
        for container in containers:
            if not _has_content_besides_headings(container) and container.getparent() is not None:
                remove(container)

    def definitions_for(self, owner: object, render: Callable[[etree._Element], str]) -> list[str]:
        definitions = []
        for key in self.first_ref_in.get(owner, []):
            if key not in self.emitted:
                definitions.append(self._definition(key, render))
                definitions.extend(self.definitions_for(key, render))
        return definitions

    def leftovers(self, render: Callable[[etree._Element], str]) -> list[str]:
        keys = [key for key in self.bodies if key not in self.emitted]
        for key in keys:
            self.labels.setdefault(key, self._new_label(key[1]))
        return [self._definition(key, render) for key in keys]

    def _definition(self, key: tuple[str, str], render: Callable[[etree._Element], str]) -> str:
        self.emitted.add(key)
        text = render(self.bodies[key]).strip()
        lines = [
            line if not line or i == 0 else "    " + line
            for i, line in enumerate(text.splitlines())
        ]
        return f"[^{self.labels[key]}]: " + "\n".join(lines)


def _is_backlink(a: etree._Element) -> bool:
    if "backlink" in epub_types(a) or "doc-backlink" in tokens_of(a, "role"):
        return True
    return "".join(a.itertext()).strip().lower() in _BACKLINK_TEXT


def _has_content_besides_headings(el: etree._Element) -> bool:
    skip = {h for tag in (*HEADING_TAGS, "hgroup") for h in el.iter(tag)}
    for node in el.iter():
        inside_heading = node in skip or any(a in skip for a in node.iterancestors())
        if not inside_heading and (node.text or "").strip():
            return True
        if node is not el and (node.tail or "").strip():
            return True
    return False
