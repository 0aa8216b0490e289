"""NanoMQ's WebHook in Python: the rules, MQTT topic matching and the twelve bodies.

The Python twin of the Rust library `mqhook-guest-nanomq` (spec §2-§4), for guests built with
componentize-py. `Filter(config)` checks the rules once; `Filter.body(event)` is NanoMQ's body for
an event a rule selects, else `None`. Bodies are compact JSON, keys in NanoMQ's order, escaped as
the spec says (`json.dumps` with `ensure_ascii=False` writes exactly those escapes).

The types are the ones componentize-py generates from `wit/mqhook.wit` (`wit_world.imports.types`).
"""

import base64
import json

from wit_world.imports import encoding
from wit_world.imports.types import (
    Event_ClientConnack,
    Event_ClientConnect,
    Event_ClientConnected,
    Event_ClientDisconnected,
    Event_ClientSubscribe,
    Event_ClientUnsubscribe,
    Event_MessageAcked,
    Event_MessageDelivered,
    Event_MessagePublish,
    Event_SessionSubscribed,
    Event_SessionTerminated,
    Event_SessionUnsubscribed,
    EventKind,
    FilterConfig,
    PayloadEncoding,
)

# Each event case's kind and NanoMQ action name.
KINDS = {
    Event_ClientConnect: (EventKind.CLIENT_CONNECT, "client_connect"),
    Event_ClientConnack: (EventKind.CLIENT_CONNACK, "client_connack"),
    Event_ClientConnected: (EventKind.CLIENT_CONNECTED, "client_connected"),
    Event_ClientDisconnected: (EventKind.CLIENT_DISCONNECTED, "client_disconnected"),
    Event_ClientSubscribe: (EventKind.CLIENT_SUBSCRIBE, "client_subscribe"),
    Event_ClientUnsubscribe: (EventKind.CLIENT_UNSUBSCRIBE, "client_unsubscribe"),
    Event_SessionSubscribed: (EventKind.SESSION_SUBSCRIBED, "session_subscribed"),
    Event_SessionUnsubscribed: (EventKind.SESSION_UNSUBSCRIBED, "session_unsubscribed"),
    Event_SessionTerminated: (EventKind.SESSION_TERMINATED, "session_terminated"),
    Event_MessagePublish: (EventKind.MESSAGE_PUBLISH, "message_publish"),
    Event_MessageDelivered: (EventKind.MESSAGE_DELIVERED, "message_delivered"),
    Event_MessageAcked: (EventKind.MESSAGE_ACKED, "message_acked"),
}
ACTIONS = {kind: action for kind, action in KINDS.values()}

SUBSCRIPTIONS = (Event_ClientSubscribe, Event_ClientUnsubscribe, Event_SessionSubscribed, Event_SessionUnsubscribed)
MESSAGES = (Event_MessagePublish, Event_MessageDelivered, Event_MessageAcked)
TOPIC_KINDS = {KINDS[case][0] for case in SUBSCRIPTIONS + MESSAGES}

BASE62_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def topic_of(event):
    """The topic of a message, or the topic filter of a subscription event; `None` for the rest."""
    return event.value.topic if isinstance(event, SUBSCRIPTIONS + MESSAGES) else None


def check_topic_filter(topic_filter):
    """Refuses a filter that is empty, holds NUL, or has a `#` level before its last."""
    if not topic_filter:
        raise ValueError("the topic filter is empty")
    if "\0" in topic_filter:
        raise ValueError(f"the topic filter {topic_filter!r} contains a NUL character")
    if "#" in topic_filter.split("/")[:-1]:
        raise ValueError(f"the topic filter {topic_filter!r} has `#` before its last level")
    return topic_filter


def matches(topic_filter, topic):
    """MQTT matching (spec §4): `+` one level, a last `#` the rest; no wildcard first for `$` topics."""
    levels = topic_filter.split("/")
    if topic.startswith("$") and levels[0] in ("+", "#"):
        return False
    topic_levels = topic.split("/")
    for index, level in enumerate(levels):
        if level == "#":
            return True
        if index >= len(topic_levels) or (level != "+" and level != topic_levels[index]):
            return False
    return len(levels) == len(topic_levels)


def base62(payload):
    """The payload as one big-endian integer in base 62; each leading 0x00 byte adds a `0`.

    The host computes it (the `encoding` import, native speed) up to its cap of 64 KiB; past
    that, it is computed here, by repeated division, which is quadratic in the payload's size.
    """
    digits = encoding.base62(payload)
    if digits is not None:
        return digits
    significant = payload.lstrip(b"\0")
    digits = []
    value = int.from_bytes(significant, "big")
    while value:
        value, digit = divmod(value, 62)
        digits.append(BASE62_ALPHABET[digit])
    return "0" * (len(payload) - len(significant)) + "".join(reversed(digits))


def payload_members(encoding, payload):
    """The `payload` member(s) of a message body, as (key, value) pairs (spec §3)."""
    if encoding == PayloadEncoding.BASE64:
        return [("payload", base64.b64encode(payload).decode() if payload else None)]
    if encoding == PayloadEncoding.BASE62:
        return [("payload", base62(payload))]
    if not payload:
        return []
    try:
        return [("payload", payload.decode("utf-8"))]
    except UnicodeDecodeError:
        # Never invalid JSON: bytes that are not UTF-8 go base64-encoded, and the body says so.
        return [("payload", base64.b64encode(payload).decode()), ("payload_encoding", "base64")]


def username(name):
    """NanoMQ writes a missing or empty username as "undefined"."""
    return name or "undefined"


def compact(members):
    """A JSON object of (key, value) pairs in this order, without whitespace."""
    return json.dumps(dict(members), ensure_ascii=False, separators=(",", ":")).encode()


class Filter:
    """The configured rules (OR-ed, at most one body per event) and the payload encoding."""

    def __init__(self, config: FilterConfig):
        self.encoding = config.encoding
        self.rules = []
        for number, rule in enumerate(config.rules, 1):
            topic = rule.topic if rule.event in TOPIC_KINDS else None
            if topic is not None:
                try:
                    check_topic_filter(topic)
                except ValueError as reason:
                    raise ValueError(f"rule {number} (on_{ACTIONS[rule.event]}): {reason}") from None
            self.rules.append((rule.event, topic))

    def selects(self, event):
        """Whether any rule selects `event`."""
        kind = KINDS[type(event)][0]
        topic = topic_of(event)
        return any(
            event_kind == kind and (topic_filter is None or topic is None or matches(topic_filter, topic))
            for event_kind, topic_filter in self.rules
        )

    def body(self, event):
        """NanoMQ's body for `event`, or `None` when no rule selects it."""
        return self.write(event) if self.selects(event) else None

    def write(self, event):
        """NanoMQ's body for `event`, keys in NanoMQ's order (EMQX 4's for the nine NanoMQ lacks)."""
        value, action = event.value, KINDS[type(event)][1]
        if isinstance(event, Event_ClientConnack):
            client = value.client
            return compact([
                ("proto_ver", value.proto_ver), ("keepalive", value.keepalive),
                ("conn_ack", "success" if value.reason_code == 0 else "fail"),
                ("username", username(client.username)), ("clientid", client.clientid), ("action", action),
            ])
        if isinstance(event, Event_ClientDisconnected):
            client = value.client
            return compact([
                ("reason", value.reason), ("username", username(client.username)),
                ("clientid", client.clientid), ("action", action),
            ])
        if isinstance(event, Event_SessionTerminated):
            client = value.client
            return compact([
                ("clientid", client.clientid), ("username", username(client.username)),
                ("reason", value.reason), ("action", action),
            ])
        if isinstance(event, (Event_ClientConnect, Event_ClientConnected)):
            client = value.client
            members = [
                ("clientid", client.clientid), ("username", username(client.username)),
                ("ipaddress", value.ipaddress), ("keepalive", value.keepalive), ("proto_ver", value.proto_ver),
            ]
            if isinstance(event, Event_ClientConnected):
                members.append(("connected_at", value.connected_at))
            return compact(members + [("action", action)])
        if isinstance(event, SUBSCRIPTIONS):
            client = value.client
            members = [("clientid", client.clientid), ("username", username(client.username)), ("topic", value.topic)]
            if not isinstance(event, Event_SessionUnsubscribed):
                opts = value.opts
                flags = [("nl", opts.nl), ("rap", opts.rap), ("rh", opts.rh)]
                members.append(("opts", dict([("qos", opts.qos)] + [(k, f) for k, f in flags if f is not None])))
            return compact(members + [("action", action)])
        payload = payload_members(self.encoding, value.payload)
        if isinstance(event, Event_MessagePublish):
            return compact([
                ("ts", value.ts), ("topic", value.topic), ("retain", value.retain), ("qos", value.qos),
                ("action", action), ("from_username", username(value.from_username)),
                ("from_client_id", value.from_clientid),
            ] + payload)
        receiver = value.receiver
        return compact([
            ("ts", value.ts), ("clientid", receiver.clientid if receiver else None),
            ("username", username(receiver.username) if receiver else "undefined"),
            ("from_client_id", value.from_clientid), ("from_username", username(value.from_username)),
            ("topic", value.topic), ("qos", value.qos), ("retain", value.retain), ("action", action),
        ] + payload)
