"""Credentials out of everything smolray writes or prints.

A URI may carry a key pair (s3://KEY:SECRET@bucket/...) or secrets in its
options (?secret_key=..., ?session_token=...), which pyarrow reads. They
stay in the recipe in memory, where the filesystems need them, and are
masked in every copy that leaves the process: recipe.json in checkpoints,
the prepared data's meta.json, the dry run, summaries and error messages.
"""

from __future__ import annotations

import json
import re
from typing import Any

MASK = "***"
_USERINFO = re.compile(r"([A-Za-z][\w+.-]*://)[^/@\s\"'?#]+@")
_SECRET_OPTION = re.compile(
    r"([?&;](?:access_key|secret_key|session_token|secret|password|passwd|token|sig|signature|"
    r"account_key|sas_token|client_secret|credentials?)=)[^&\s\"'#]+", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with the credentials of every URI in it masked."""
    return _SECRET_OPTION.sub(r"\1" + MASK, _USERINFO.sub(r"\1" + MASK + "@", text))


def redact_obj(value: Any) -> Any:
    """The same for every string inside a JSON-like value (dicts, lists)."""
    return json.loads(redact(json.dumps(value)))
