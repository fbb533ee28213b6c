"""Where alerts about failures that will not be retried go: a webhook (Slack's, or any that
takes `{"text": ...}`).

The URL is a secret (a Slack webhook's path is its token), so it is read from an environment
variable and never kept in the resource config, a log line or an error message: only its host
is ever shown.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from dagster import ConfigurableResource

WEBHOOK_URL_ENV = "DOC_PIPELINE_ALERT_WEBHOOK_URL"
# Slack answers a refused post with a short code in the body ("invalid_token", "no_service",
# "channel_is_archived"); anything else in a body may echo the URL, so it is not shown.
_ERROR_CODE = re.compile(r"[a-z_]{1,64}")


class AlertNotSent(Exception):
    """The webhook did not take the alert; the message names its host, never its URL."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # A redirected POST becomes a GET without the body: report it instead of losing the alert.
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


class Alerts(ConfigurableResource):
    """`webhook_url_env`: the environment variable holding the webhook URL (default
    DOC_PIPELINE_ALERT_WEBHOOK_URL); unset or empty, alerts are only logged.
    `timeout_seconds`: how long one post may take; the sensor posts up to 5 alerts per
    evaluation, so this stays well inside Dagster's 60 s limit on an evaluation."""

    webhook_url_env: str = WEBHOOK_URL_ENV
    timeout_seconds: float = 5.0

    def _url(self) -> str | None:
        return os.environ.get(self.webhook_url_env, "").strip() or None

    def destination(self) -> str | None:
        """Where alerts go, fit to show: the webhook's host; None when no URL is set."""
        url = self._url()
        return None if url is None else _host(url)

    def post(self, body: dict) -> None:
        """POST `body` as JSON to the webhook. Raises AlertNotSent, naming only the host."""
        url = self._url()
        if url is None:
            raise AlertNotSent(f"no webhook URL in ${self.webhook_url_env}")
        host = _host(url)
        if _scheme(url) not in ("http", "https"):
            raise AlertNotSent(f"${self.webhook_url_env} is not a valid http(s) URL (host {host})")
        try:
            request = urllib.request.Request(
                url,
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json; charset=utf-8"},
                method="POST",
            )
            with _OPENER.open(request, timeout=self.timeout_seconds) as response:
                response.read(1024)
        except urllib.error.HTTPError as error:
            try:
                code = error.read(100).decode(errors="replace").strip()
            except Exception:  # the body is only a hint
                code = ""
            detail = f" ({code})" if _ERROR_CODE.fullmatch(code) else ""
            problem = f"it answered HTTP {error.code}{detail}"
        except urllib.error.URLError as error:
            problem = _safe(error.reason, url)
        except Exception as error:  # http.client and socket errors, a malformed URL
            problem = _safe(error, url)
        else:
            return
        # `from None`: the original error (e.g. http.client.InvalidURL) may carry the URL.
        raise AlertNotSent(f"alert not sent to {host}: {problem}") from None


def _host(url: str) -> str:
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return "an unparsable URL"
    if not host:
        return "a URL without a host"
    return f"{host}:{port}" if port else host


def _scheme(url: str) -> str:
    try:
        return urlsplit(url).scheme
    except ValueError:
        return ""


def _safe(error: object, url: str) -> str:
    """The error's type, and its message if it is the network's (refused, timed out, no such
    host, a certificate): others, such as http.client's InvalidURL, quote the URL itself.
    The URL and its path are cut out all the same."""
    if isinstance(error, OSError):
        text = f"{type(error).__name__}: {error}"
    elif isinstance(error, BaseException):
        text = type(error).__name__
    else:  # URLError's reason as a string
        text = str(error)
    try:
        path = urlsplit(url).path
    except ValueError:
        path = ""
    for secret in (url, path if len(path) > 1 else None):
        if secret:
            text = text.replace(secret, "…")
    return text
