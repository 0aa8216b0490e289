"""An example guest in Python: NanoMQ's WebHook, delivering a `message_publish` only when its
payload is JSON that meets one configured condition. The Python twin of guest/payload-filter.

Rules, topic matching and bodies are NanoMQ's (`nanomq.py`): an event is delivered when a rule
selects it, with NanoMQ's body. On top of that, a publish whose payload is not JSON, or fails the
condition, is filtered out. The condition is tested on the payload as published, whatever
`body.encoding` says. Other events are unaffected.

Settings (from `guest.settings`; `configure` refuses missing, unknown or invalid ones):

- `field`: where the tested value is. With a leading `/`, a JSON pointer (RFC 6901) such as
  `/sensor/temp`; without one, a top-level key such as `temp`.
- `op`: `gt`, `lt`, `eq`, `ne` or `exists`.
- `value`: what the field is compared with; required by every op but `exists`, which takes none.

`gt` and `lt` compare numbers: `value` must be a JSON number, and a field that is not a number
fails. `eq` and `ne` compare JSON values: `value` is read as JSON when it is valid JSON, else as a
string; `21` equals `21.0`, and `true` is not `1`. Every op but `exists` needs the field to be
there.

Built with componentize-py against `wit/mqhook.wit` (world `filter`), which generates the
`wit_world` bindings this module imports.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import log
from wit_world.imports.types import Delivery, Event, Event_MessagePublish, FilterConfig

from nanomq import Filter

OPS = "gt, lt, eq, ne or exists"

# A field the payload lacks; `None` is JSON's null.
MISSING = object()


def strict_json(text):
    """JSON as serde_json reads it: no NaN or Infinity."""
    return json.loads(text, parse_constant=lambda constant: (_ for _ in ()).throw(ValueError(constant)))


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def json_equal(found, expected):
    """JSON equality: numbers by value, and a bool is never a number (Python says `True == 1`)."""
    if is_number(found) and is_number(expected):
        return found == expected
    if type(found) is not type(expected) and not (is_number(found) and is_number(expected)):
        return False
    if isinstance(found, list):
        return len(found) == len(expected) and all(map(json_equal, found, expected))
    if isinstance(found, dict):
        return found.keys() == expected.keys() and all(json_equal(found[k], expected[k]) for k in found)
    return found == expected


def pointer(document, path):
    """The value at JSON pointer `path` (RFC 6901), or MISSING."""
    for token in path[1:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(document, dict) and token in document:
            document = document[token]
        elif isinstance(document, list) and token.isdigit() and (token == "0" or token[0] != "0"):
            if int(token) >= len(document):
                return MISSING
            document = document[int(token)]
        else:
            return MISSING
    return document


class Condition:
    """The condition a publish's payload must meet, read from the `field`, `op`, `value` settings."""

    def __init__(self, settings):
        given = {}
        for key, value in settings:
            if key not in ("field", "op", "value"):
                raise ValueError(f"unknown setting `{key}`: this guest reads `field`, `op` and `value`")
            if key in given:
                raise ValueError(f"setting `{key}` is given twice")
            given[key] = value
        field, op, value = given.get("field"), given.get("op"), given.get("value")
        if not field:
            raise ValueError('setting `field` is required: a JSON pointer such as "/temp" or a top-level key')
        if op is None:
            raise ValueError(f"setting `op` is required: {OPS}")
        if op not in ("gt", "lt", "eq", "ne", "exists"):
            raise ValueError(f'unknown `op` "{op}": one of {OPS}')
        if op == "exists" and value is not None:
            raise ValueError("`op = exists` takes no `value`")
        if op != "exists" and value is None:
            raise ValueError(f"setting `value` is required with `op = {op}`")
        if op in ("gt", "lt"):
            try:
                value = strict_json(value)
            except ValueError:
                value = None
            if not is_number(value):
                raise ValueError(f'`op = {op}` compares numbers; `value` "{given["value"]}" is not a number')
        elif op in ("eq", "ne"):
            try:
                value = strict_json(value)
            except ValueError:
                pass  # not JSON: compared as a string
        self.field, self.op, self.value = field, op, value

    def holds(self, payload: bytes) -> bool:
        """Whether `payload` is JSON whose field passes the test."""
        try:
            document = strict_json(payload)
        except (ValueError, UnicodeDecodeError):
            return False
        if self.field.startswith("/"):
            found = pointer(document, self.field)
        else:
            found = document.get(self.field, MISSING) if isinstance(document, dict) else MISSING
        if found is MISSING:
            return False
        if self.op == "gt":
            return is_number(found) and found > self.value
        if self.op == "lt":
            return is_number(found) and found < self.value
        if self.op == "eq":
            return json_equal(found, self.value)
        if self.op == "ne":
            return not json_equal(found, self.value)
        return True


# What `configure` derived from the settings: the component instance's state. componentize-py
# makes a new `WitWorld` object for every call, so it lives in the module, as a global.
configured = None


class WitWorld(wit_world.WitWorld):
    """The exports of the `filter` world; `configure` runs on every new instance before any event."""

    def configure(self, config: FilterConfig) -> None:
        global configured
        try:
            configured = (Condition(config.settings), Filter(config))
        except ValueError as reason:
            raise Err(str(reason))
        log.log(log.Level.DEBUG, f"payload filter: {configured[0].field} {configured[0].op}")

    def handle(self, event: Event) -> Delivery | None:
        condition, nanomq = configured
        if not nanomq.selects(event):
            return None
        if isinstance(event, Event_MessagePublish) and not condition.holds(event.value.payload):
            return None
        return Delivery(body=nanomq.write(event), headers=[], path=None, endpoint=None)

    def handle_batch(self, events: list[Event]) -> list[Delivery | None]:
        return [self.handle(event) for event in events]
