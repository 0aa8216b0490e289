// NanoMQ's WebHook in JavaScript: the rules, MQTT topic matching and the twelve bodies.
//
// The JavaScript twin of the Rust library `mqhook-guest-nanomq` (spec §2-§4), for guests built
// with componentize-qjs. `new Filter(config)` checks the rules once; `filter.body(event)` is
// NanoMQ's body (UTF-8 bytes) for an event a rule selects, else `null`. Bodies are compact JSON,
// keys in NanoMQ's order; `JSON.stringify` writes exactly the escapes the spec asks for.
//
// Values arrive as componentize-qjs maps them from `wit/mqhook.wit`: a variant is
// `{ tag: "message-publish", val }`, records have camelCase keys, enums are their case names,
// `option` is the value or `null`, `list<u8>` a `Uint8Array`. QuickJS has no TextEncoder or
// TextDecoder, so UTF-8 is done here.

import encoding from "mqhook:filter/encoding@0.2.0";

const SUBSCRIPTIONS = new Set(["client-subscribe", "client-unsubscribe", "session-subscribed", "session-unsubscribed"]);
const MESSAGES = new Set(["message-publish", "message-delivered", "message-acked"]);
const BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/** The action name of an event kind: `message-publish` is `message_publish`. */
export const action = (kind) => kind.replaceAll("-", "_");

/** Whether events of `kind` carry a topic (subscriptions and messages). */
export const carriesTopic = (kind) => SUBSCRIPTIONS.has(kind) || MESSAGES.has(kind);

/** The topic of a message, or the topic filter of a subscription event; `null` for the rest. */
export const topicOf = (event) => (carriesTopic(event.tag) ? event.val.topic : null);

/** Refuses a filter that is empty, holds NUL, or has a `#` level before its last. */
export function checkTopicFilter(filter) {
  if (filter === "") throw "the topic filter is empty";
  if (filter.includes("\0")) throw `the topic filter ${JSON.stringify(filter)} contains a NUL character`;
  if (filter.split("/").slice(0, -1).includes("#")) {
    throw `the topic filter ${JSON.stringify(filter)} has \`#\` before its last level`;
  }
  return filter;
}

/** MQTT matching (spec §4): `+` one level, a last `#` the rest; no wildcard first for `$` topics. */
export function matches(filter, topic) {
  const levels = filter.split("/");
  if (topic.startsWith("$") && (levels[0] === "+" || levels[0] === "#")) return false;
  const topicLevels = topic.split("/");
  for (let i = 0; i < levels.length; i++) {
    if (levels[i] === "#") return true;
    if (i >= topicLevels.length || (levels[i] !== "+" && levels[i] !== topicLevels[i])) return false;
  }
  return levels.length === topicLevels.length;
}

// QuickJS interprets: a loop over bytes costs about a microsecond per byte in wasm, so the byte
// work below goes through native built-ins (String.fromCharCode, encodeURIComponent, btoa) where
// one exists.

/** Bytes as a "binary string", one char per byte, built natively in chunks. */
function binary(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 8192) text += String.fromCharCode.apply(null, bytes.subarray(i, i + 8192));
  return text;
}

/** A string's UTF-8 bytes (WIT strings hold no lone surrogates, and JSON.stringify escapes them). */
export function utf8(text) {
  const encoded = unescape(encodeURIComponent(text));
  const bytes = new Uint8Array(encoded.length);
  for (let i = 0; i < encoded.length; i++) bytes[i] = encoded.charCodeAt(i);
  return bytes;
}

/** `bytes` as text when they are valid UTF-8 (decodeURIComponent refuses overlong forms and surrogates), else `null`. */
export function fromUtf8(bytes) {
  try {
    return decodeURIComponent(escape(binary(bytes)));
  } catch {
    return null;
  }
}

/** RFC 4648 base64 of `bytes`. */
export function base64(bytes) {
  return btoa(binary(bytes));
}

/**
 * The payload as one big-endian integer in base 62; each leading 0x00 byte adds a `0`. The host
 * computes it (the `encoding` import, native speed) up to its cap of 64 KiB; past that, it is
 * computed here by repeated division, which is quadratic in the payload's size.
 */
export function base62(bytes) {
  const computed = encoding.base62(bytes);
  if (computed !== null && computed !== undefined) return computed;
  let zeros = 0;
  while (zeros < bytes.length && bytes[zeros] === 0) zeros++;
  let value = 0n;
  for (let i = zeros; i < bytes.length; i++) value = (value << 8n) | BigInt(bytes[i]);
  let digits = "";
  while (value > 0n) {
    digits = BASE62[Number(value % 62n)] + digits;
    value /= 62n;
  }
  return "0".repeat(zeros) + digits;
}

/** Adds the `payload` member(s) of a message body to `body` (spec §3). */
function addPayload(body, encoding, payload) {
  if (encoding === "base64") body.payload = payload.length ? base64(payload) : null;
  else if (encoding === "base62") body.payload = base62(payload);
  else if (payload.length) {
    const text = fromUtf8(payload);
    if (text !== null) body.payload = text;
    else {
      // Never invalid JSON: bytes that are not UTF-8 go base64-encoded, and the body says so.
      body.payload = base64(payload);
      body.payload_encoding = "base64";
    }
  }
  return body;
}

/** NanoMQ writes a missing or empty username as "undefined". */
const username = (name) => name || "undefined";

/** NanoMQ's body object for `event`, keys in NanoMQ's order (EMQX 4's for the nine it lacks). */
function bodyObject(event, encoding) {
  const v = event.val;
  const act = action(event.tag);
  switch (event.tag) {
    case "client-connack":
      return { proto_ver: v.protoVer, keepalive: v.keepalive, conn_ack: v.reasonCode === 0 ? "success" : "fail",
        username: username(v.client.username), clientid: v.client.clientid, action: act };
    case "client-disconnected":
      return { reason: v.reason, username: username(v.client.username), clientid: v.client.clientid, action: act };
    case "session-terminated":
      return { clientid: v.client.clientid, username: username(v.client.username), reason: v.reason, action: act };
    case "client-connect":
    case "client-connected": {
      const body = { clientid: v.client.clientid, username: username(v.client.username), ipaddress: v.ipaddress,
        keepalive: v.keepalive, proto_ver: v.protoVer };
      if (event.tag === "client-connected") body.connected_at = v.connectedAt;
      body.action = act;
      return body;
    }
    case "message-publish":
      return addPayload({ ts: v.ts, topic: v.topic, retain: v.retain, qos: v.qos, action: act,
        from_username: username(v.fromUsername), from_client_id: v.fromClientid }, encoding, v.payload);
    case "message-delivered":
    case "message-acked":
      return addPayload({ ts: v.ts, clientid: v.receiver ? v.receiver.clientid : null,
        username: v.receiver ? username(v.receiver.username) : "undefined", from_client_id: v.fromClientid,
        from_username: username(v.fromUsername), topic: v.topic, qos: v.qos, retain: v.retain, action: act },
        encoding, v.payload);
    default: {
      // The four subscription events; session_unsubscribed has no `opts`.
      const body = { clientid: v.client.clientid, username: username(v.client.username), topic: v.topic };
      if (event.tag !== "session-unsubscribed") {
        body.opts = { qos: v.opts.qos };
        for (const flag of ["nl", "rap", "rh"]) if (v.opts[flag] !== null) body.opts[flag] = v.opts[flag];
      }
      body.action = act;
      return body;
    }
  }
}

/** The configured rules (OR-ed, at most one body per event) and the payload encoding. */
export class Filter {
  constructor(config) {
    this.encoding = config.encoding;
    this.rules = config.rules.map((rule, index) => {
      const topic = carriesTopic(rule.event) ? rule.topic : null;
      if (topic !== null) {
        try {
          checkTopicFilter(topic);
        } catch (reason) {
          throw `rule ${index + 1} (on_${action(rule.event)}): ${reason}`;
        }
      }
      return { event: rule.event, topic };
    });
  }

  /** Whether any rule selects `event`. */
  selects(event) {
    const topic = topicOf(event);
    return this.rules.some((rule) => rule.event === event.tag && (rule.topic === null || topic === null || matches(rule.topic, topic)));
  }

  /** NanoMQ's body for `event` as UTF-8 bytes, or `null` when no rule selects it. */
  body(event) {
    return this.selects(event) ? this.write(event) : null;
  }

  /** NanoMQ's body for `event` as UTF-8 bytes, whether or not a rule selects it. */
  write(event) {
    return utf8(JSON.stringify(bodyObject(event, this.encoding)));
  }
}
