"""Files API state of the fake Gemini server: resumable uploads and stored files, in memory.

The protocol is the one google-genai 3.6 speaks (files.py, `_api_client._upload_fd`): a start
request answered with an `X-Goog-Upload-URL` header, then upload/finalize requests to that URL,
which carry no API key and expect an `X-Goog-Upload-Status` header on every answer.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from doc_pipeline_tests.fakes.gemini_http import ApiError

_FILE_REF = re.compile(r"files/([A-Za-z0-9_-]+)$")
FileReader = Callable[[bytes, str], str | None]
"""Turns a file's bytes and MIME type into the text the fake model "reads" (None: default)."""


@dataclass
class StoredFile:
    resource: dict
    data: bytes = b""


@dataclass
class Upload:
    resource: dict
    size: int
    data: bytearray = field(default_factory=bytearray)


class FileStore:
    """Files API state: resumable upload sessions and finished files, in memory."""

    def __init__(self, reader: FileReader | None = None) -> None:
        self.reader = reader
        self.lock = threading.Lock()
        self.files: dict[str, StoredFile] = {}
        self.uploads: dict[str, Upload] = {}
        self.counter = 0

    def start(self, body: dict, headers: dict, base_url: str, version: str) -> str:
        """Opens an upload session and returns its upload URL."""
        meta = body.get("file") or {}
        size = int(headers.get("x-goog-upload-header-content-length") or meta.get("sizeBytes") or 0)
        mime = headers.get("x-goog-upload-header-content-type") or meta.get("mimeType")
        with self.lock:
            self.counter += 1
            file_id = (meta.get("name") or "").removeprefix("files/")
            if not file_id:
                seed = f"{self.counter}|{meta.get('displayName')}|{size}|{mime}"
                file_id = hashlib.sha256(seed.encode()).hexdigest()[:12]
            if file_id in self.files:
                raise ApiError(409, f"File files/{file_id} already exists.")
            resource = {"name": f"files/{file_id}", "mimeType": mime or "application/octet-stream"}
            if meta.get("displayName"):
                resource["displayName"] = meta["displayName"]
            resource["uri"] = f"{base_url}/{version}/files/{file_id}"
            upload_id = f"{file_id}-{self.counter}"
            self.uploads[upload_id] = Upload(resource, size)
        return f"{base_url}/upload/{version}/files?upload_id={upload_id}&upload_protocol=resumable"

    def chunk(self, upload_id: str, offset: int, data: bytes, finalize: bool) -> dict | None:
        """Appends a chunk; returns the file resource once finalized."""
        with self.lock:
            upload = self.uploads.get(upload_id)
            if upload is None:
                raise ApiError(404, "Upload session not found.")
            if offset != len(upload.data):
                raise ApiError(400, f"Upload offset {offset} != received {len(upload.data)}.")
            upload.data.extend(data)
            if not finalize:
                return None
            del self.uploads[upload_id]
            resource = _finished(upload.resource, bytes(upload.data))
            self.files[resource["name"].removeprefix("files/")] = StoredFile(
                resource, bytes(upload.data)
            )
            return resource

    def get(self, file_id: str) -> StoredFile:
        with self.lock:
            stored = self.files.get(file_id)
        if stored is None:  # the real API answers 403, not 404, for unknown files
            raise ApiError(
                403, f"You do not have permission to access the File {file_id} or it may not exist."
            )
        return stored

    def delete(self, file_id: str) -> None:
        self.get(file_id)
        with self.lock:
            self.files.pop(file_id, None)

    def page(self, size: int, token: str) -> dict:
        with self.lock:
            resources = [f.resource for f in self.files.values()]
        start = int(token or 0)
        size = min(max(size, 1), 100)
        body: dict[str, Any] = {}
        if resources[start : start + size]:
            body["files"] = resources[start : start + size]
        if start + size < len(resources):
            body["nextPageToken"] = str(start + size)
        return body

    def text_of(self, uri: str) -> str:
        stored = self._by_uri(uri)
        return self.read(stored.data, stored.resource["mimeType"])

    def data_of(self, uri: str) -> bytes:
        return self._by_uri(uri).data

    def _by_uri(self, uri: str) -> StoredFile:
        match = _FILE_REF.search(uri or "")
        if match is None:
            raise ApiError(400, f"Unsupported file uri: {uri}")
        return self.get(match.group(1))

    def read(self, data: bytes, mime: str) -> str:
        text = self.reader(data, mime) if self.reader else None
        return bytes_as_text(data, mime) if text is None else text


def _finished(resource: dict, data: bytes) -> dict:
    now = dt.datetime.now(dt.UTC)
    stamp = now.isoformat(timespec="microseconds").replace("+00:00", "Z")
    return {
        **resource,
        "sizeBytes": str(len(data)),  # int64 is a string in JSON
        "createTime": stamp,
        "updateTime": stamp,
        "expirationTime": (now + dt.timedelta(hours=48)).isoformat().replace("+00:00", "Z"),
        "sha256Hash": base64.b64encode(hashlib.sha256(data).hexdigest().encode()).decode(),
        "state": "ACTIVE",
        "source": "UPLOADED",
    }


def bytes_as_text(data: bytes, mime: str) -> str:
    """A file's bytes as text if they decode, else a fixed text (a model would read it)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        digest = hashlib.sha256(data).hexdigest()[:12]
        return f"This {mime} document ({len(data)} bytes, {digest}) has no readable text."
