// An example guest in JavaScript: NanoMQ's WebHook, delivering a `message_publish` only when its
// payload is JSON that meets one configured condition. The JavaScript twin of
// guest/payload-filter (and of guest/python/payload_filter.py); its settings are theirs:
//
// - `field`: with a leading `/`, a JSON pointer (RFC 6901) such as `/sensor/temp`; without one,
//   a top-level key such as `temp`.
// - `op`: `gt`, `lt`, `eq`, `ne` or `exists`.
// - `value`: what the field is compared with; required by every op but `exists`.
//
// `gt` and `lt` compare numbers; `eq` and `ne` compare JSON values (`value` read as JSON when it
// is JSON, else as a string). Every op but `exists` needs the field to be there.
//
// Built with componentize-qjs `--sync` against `wit/mqhook.wit` (world `filter`).

import { Filter, fromUtf8 } from "./nanomq.js";

const OPS = "gt, lt, eq, ne or exists";

/** What `configure` derived from the settings: the component instance's state. */
let configured = null;

/** JSON equality: objects by members, arrays by items, the rest by value. */
function jsonEqual(a, b) {
  if (Array.isArray(a) || Array.isArray(b)) {
    return Array.isArray(a) && Array.isArray(b) && a.length === b.length && a.every((item, i) => jsonEqual(item, b[i]));
  }
  if (a !== null && b !== null && typeof a === "object" && typeof b === "object") {
    const keys = Object.keys(a);
    return keys.length === Object.keys(b).length && keys.every((key) => Object.hasOwn(b, key) && jsonEqual(a[key], b[key]));
  }
  return a === b;
}

/** The value at `field` in `document`, or `undefined` when it has none. */
function find(document, field) {
  if (!field.startsWith("/")) {
    return document !== null && typeof document === "object" && !Array.isArray(document) && Object.hasOwn(document, field)
      ? document[field] : undefined;
  }
  let value = document;
  for (const raw of field.slice(1).split("/")) {
    const token = raw.replaceAll("~1", "/").replaceAll("~0", "~");
    if (Array.isArray(value)) {
      if (!/^(0|[1-9][0-9]*)$/.test(token) || Number(token) >= value.length) return undefined;
      value = value[Number(token)];
    } else if (value !== null && typeof value === "object" && Object.hasOwn(value, token)) value = value[token];
    else return undefined;
  }
  return value;
}

/** Reads `field`, `op` and `value`; throws a message for a missing, unknown or invalid one. */
function condition(settings) {
  const given = new Map();
  for (const [key, value] of settings) {
    if (!["field", "op", "value"].includes(key)) throw `unknown setting \`${key}\`: this guest reads \`field\`, \`op\` and \`value\``;
    if (given.has(key)) throw `setting \`${key}\` is given twice`;
    given.set(key, value);
  }
  const field = given.get("field");
  const op = given.get("op");
  let value = given.get("value");
  if (!field) throw 'setting `field` is required: a JSON pointer such as "/temp" or a top-level key';
  if (op === undefined) throw `setting \`op\` is required: ${OPS}`;
  if (!["gt", "lt", "eq", "ne", "exists"].includes(op)) throw `unknown \`op\` ${JSON.stringify(op)}: one of ${OPS}`;
  if (op === "exists" && value !== undefined) throw "`op = exists` takes no `value`";
  if (op !== "exists" && value === undefined) throw `setting \`value\` is required with \`op = ${op}\``;
  if (op === "gt" || op === "lt") {
    const bound = parse(value);
    if (typeof bound !== "number") throw `\`op = ${op}\` compares numbers; \`value\` ${JSON.stringify(value)} is not a number`;
    value = bound;
  } else if (op === "eq" || op === "ne") {
    const json = parse(value);
    value = json === undefined ? value : json;
  }
  return { field, op, value };
}

/** `text` as JSON, or `undefined` when it is not JSON. */
function parse(text) {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** Whether `payload` is JSON whose field passes the test. */
function holds({ field, op, value }, payload) {
  const text = fromUtf8(payload);
  const document = text === null ? undefined : parse(text);
  if (document === undefined) return false;
  const found = find(document, field);
  if (found === undefined) return false;
  switch (op) {
    case "gt": return typeof found === "number" && found > value;
    case "lt": return typeof found === "number" && found < value;
    case "eq": return jsonEqual(found, value);
    case "ne": return !jsonEqual(found, value);
    default: return true;
  }
}

/** Reads the condition and the rules; throws (the world's `result` error) on a bad setting. */
export function configure(config) {
  configured = { condition: condition(config.settings), filter: new Filter(config) };
}

/** NanoMQ's delivery for `event`, or `null` when no rule selects it or its payload fails. */
export function handle(event) {
  const { condition: test, filter } = configured;
  if (!filter.selects(event)) return null;
  if (event.tag === "message-publish" && !holds(test, event.val.payload)) return null;
  return { body: filter.write(event), headers: [], path: null, endpoint: null };
}

/** Each event as `handle` answers it. */
export function handleBatch(events) {
  return events.map(handle);
}
