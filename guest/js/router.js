// An example guest in JavaScript: NanoMQ's WebHook, with each request's path and headers chosen
// from the event's topic. The JavaScript twin of guest/router.
//
// Rules, topic matching and bodies are NanoMQ's (`nanomq.js`): an event is delivered when a rule
// selects it, with NanoMQ's body. This guest adds:
//
// - the path: the path of the first route, in settings order, whose topic filter matches the
//   event's topic; the `default` path when none does or the event carries no topic; no path (the
//   configured URL as it is) when there is no `default` either.
// - the headers: every `header.<name>` setting, in settings order, then `x-mqhook-topic` with the
//   event's topic, for events that carry one, its bytes other than visible ASCII (and `%`)
//   percent-encoded.
//
// Settings (`configure` refuses unknown, repeated or invalid ones): `route.<topic-filter>`,
// `default`, `header.<name>`. A path starts with `/` and holds only visible ASCII, no `#`.
//
// Built with componentize-qjs `--sync` against `wit/mqhook.wit` (world `filter`); the world's
// exports are this module's `configure`, `handle` and `handleBatch`, its `log` import the module
// "mqhook:filter/log@0.2.0".

import log from "mqhook:filter/log@0.2.0";

import { checkTopicFilter, Filter, matches, topicOf, utf8 } from "./nanomq.js";

/** The header that carries the event's topic. */
const TOPIC_HEADER = "x-mqhook-topic";

/** What `configure` derived from the settings: the component instance's state. */
let router = null;

/** `path` when the host can append it to a URL: `/` first, then visible ASCII except `#`. */
function checkedPath(path) {
  if (/^\/[\x21-\x22\x24-\x7e]*$/.test(path)) return path;
  throw `the path ${JSON.stringify(path)} must start with \`/\` and hold only visible ASCII, no \`#\``;
}

/** Refuses what HTTP does not allow: a name that is not a token, a value with control or non-ASCII characters. */
function checkHeader(name, value) {
  if (!/^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$/.test(name)) throw `${JSON.stringify(name)} is not a valid header name`;
  if (!/^[\x20-\x7e\t]*$/.test(value)) {
    throw `the value of header ${JSON.stringify(name)} may hold only visible ASCII, spaces and tabs`;
  }
}

/** `topic` as a header value: visible ASCII but `%` as it is, every other byte percent-encoded. */
function headerValue(topic) {
  let value = "";
  for (const byte of utf8(topic)) {
    value += byte > 0x20 && byte < 0x7f && byte !== 0x25
      ? String.fromCharCode(byte) : "%" + byte.toString(16).toUpperCase().padStart(2, "0");
  }
  return value;
}

/** Reads the routes, default path and headers; throws (the world's `result` error) on a bad setting. */
export function configure(config) {
  const routes = [];
  const headers = [];
  let fallback = null;
  const seen = new Set();
  for (const [key, value] of config.settings) {
    if (seen.has(key)) throw `setting \`${key}\` is given twice`;
    seen.add(key);
    if (!key.startsWith("route.") && !key.startsWith("header.") && key !== "default") {
      throw `unknown setting \`${key}\`: this guest reads \`route.<topic-filter>\`, \`default\` and \`header.<name>\``;
    }
    try {
      if (key.startsWith("route.")) routes.push([checkTopicFilter(key.slice("route.".length)), checkedPath(value)]);
      else if (key === "default") fallback = checkedPath(value);
      else {
        const name = key.slice("header.".length);
        checkHeader(name, value);
        headers.push([name, value]);
      }
    } catch (reason) {
      throw `setting \`${key}\`: ${reason}`;
    }
  }
  router = { filter: new Filter(config), routes, fallback, headers };
  log.log("debug", `router: ${routes.length} routes`);
}

/** NanoMQ's body for `event` with the path and headers its topic chooses, or `null` (filtered out). */
export function handle(event) {
  const body = router.filter.body(event);
  if (body === null) return null;
  const topic = topicOf(event);
  const route = topic === null ? undefined : router.routes.find(([filter]) => matches(filter, topic));
  const headers = topic === null ? router.headers : [...router.headers, [TOPIC_HEADER, headerValue(topic)]];
  return { body, headers, path: route ? route[1] : router.fallback, endpoint: null };
}

/** Each event as `handle` answers it. */
export function handleBatch(events) {
  return events.map(handle);
}
