"""Token safety for hub calls: where the token comes from, masking it, and one-line errors without it."""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Callable

from orthoguard.errors import OrthoguardError

log = logging.getLogger(__package__)  # "orthoguard.hub", the logger name from before the split

# hub user tokens are "hf_" + 34 letters/digits, OAuth ones "hf_oauth_…"; 8+ letters/digits leaves names such
# as "hf_hub_download" alone
_TOKEN_RE = re.compile(r"hf_(?:oauth_)?[A-Za-z0-9]{8,}")


class HubError(OrthoguardError):
    """A push or pull failed: bad adapter folder, no token, or an error from the hub client."""


# --------------------------------------------------------------------------------------------------------
# Tokens


def resolve_token(token: str | None = None) -> str | None:
    """The token argument, else ``HF_TOKEN``, else the huggingface_hub login (``hf auth login``), else None."""
    if token:
        return token
    env = os.environ.get("HF_TOKEN", "").strip()
    if env:
        return env
    try:
        from huggingface_hub import get_token

        return get_token() or None
    except Exception as exc:  # a broken login file or a failed OIDC exchange: report it without its details
        log.debug("no huggingface_hub login (%s)", type(exc).__name__)
        return None


def mask_secrets(text: str, token: str | None = None) -> str:
    """``text`` with the token and every token-like substring (``hf_…``) replaced by ``hf_***``."""
    if token:
        text = text.replace(token, "hf_***")
    return _TOKEN_RE.sub("hf_***", text)


def _one_line(exc: BaseException, token: str | None, limit: int = 400) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    text = mask_secrets(text, token)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _hub_call(what: str, fn: Callable[..., Any], *args, token: str | None, **kwargs) -> Any:
    """Call ``fn(*args, token=token, **kwargs)``; any error becomes a one-line HubError with secrets masked and no chained cause.

    The HubError is raised outside the ``except`` block so that neither ``__cause__`` nor ``__context__``
    keeps the original exception (whose message or traceback may hold the token).
    """
    try:
        return fn(*args, token=token, **kwargs)
    except Exception as exc:  # noqa: BLE001 - every client error is reported the same way
        message = _one_line(exc, token)
    raise HubError(f"{what} failed: {message}")

