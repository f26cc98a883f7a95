"""Tokens for browsers, and the development credentials file."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from typing import Any, Dict, Optional


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def mint_token(
    secret: str,
    user_id: str,
    ttl: float = 3600,
    *,
    issuer: Optional[str] = None,
    audience: Optional[str] = None,
) -> str:
    """An HS256 JWT for ``user_id``, valid for ``ttl`` seconds, signed with the server's
    ``--jwt-secret``: what a backend hands its signed-in user's browser so that it can
    connect to ``/ws``. ``issuer`` and ``audience`` must match the server's
    ``--jwt-issuer`` and ``--jwt-audience`` when those are set.
    """
    if not secret:
        raise ValueError("the secret is empty")
    if not user_id:
        raise ValueError("the user id is empty")
    now = int(time.time())
    claims: Dict[str, Any] = {"sub": user_id, "iat": now, "exp": now + max(1, int(ttl))}
    if issuer is not None:
        claims["iss"] = issuer
    if audience is not None:
        claims["aud"] = audience
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    payload = _b64url(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode("ascii")
    signature = hmac.new(secret.encode("utf-8"), signing_input, hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64url(signature)}"


def dev_credentials(path: Optional[str] = None) -> Dict[str, str]:
    """The development credentials a server with no configuration writes
    (``{"jwt_secret": …, "api_key": …}``): from ``path``, else
    ``$AGENTWIRE_DEV_CREDENTIALS_FILE``, else
    ``$XDG_STATE_HOME/agentwire/dev-credentials.json`` (``~/.local/state`` without
    ``XDG_STATE_HOME``). Its ``api_key`` has full access; give agents a publish-only key
    (``--publish-api-keys``) instead wherever they run for real.
    """
    path = path or os.environ.get("AGENTWIRE_DEV_CREDENTIALS_FILE")
    if not path:
        state = os.environ.get("XDG_STATE_HOME") or os.path.join(
            os.path.expanduser("~"), ".local", "state"
        )
        path = os.path.join(state, "agentwire", "dev-credentials.json")
    with open(path, encoding="utf-8") as f:
        loaded = json.load(f)
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} does not hold development credentials")
    return {str(k): str(v) for k, v in loaded.items()}
