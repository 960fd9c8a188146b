"""The server-sent-event wire marks every streaming component agrees on.

Neutral ground: the engine replica (which reads usage and finish reasons off the stream it relays
for its span) and the router (which relays, prices and assembles streams) both import these, and
neither imports the other.
"""

from __future__ import annotations

import json
import re
from typing import Any

DONE_EVENT = "data: [DONE]\n\n"
DATA_PREFIX = "data: "
# Cheap substring tests decide which events are parsed at all; JSON spacing varies by producer.
USAGE_MARK = '"usage"'
# A set (non-null) finish reason; a regex because JSON spacing varies by producer.
FINISH_MARK = re.compile(r'"finish_reason":\s*"')
ERROR_MARK = '"error"'
ERROR_PREFIX_LEN = 16


def sse(payload: dict[str, Any]) -> str:
    """One server-sent event carrying `payload` as JSON."""
    return f"{DATA_PREFIX}{json.dumps(payload)}\n\n"


def event_payload(event: str) -> dict[str, Any]:
    """The JSON object of one `data: {...}` event; {} when it holds none (the `[DONE]` mark, a comment)."""
    try:
        payload = json.loads(event[len(DATA_PREFIX) :])
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}


def finish_reasons(event: str) -> list[str]:
    """The finish reasons set in one chunk event (empty for chunks mid-answer)."""
    return [str(c["finish_reason"]) for c in event_payload(event).get("choices") or [] if c.get("finish_reason")]
