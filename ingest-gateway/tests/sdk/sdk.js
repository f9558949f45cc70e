// Drives a real Node analytics SDK against the gateway: the call types it has, then a flush.
// Prints one JSON line {"errors": [...]}; exits 1 on any delivery error.
//
// usage: node sdk.js segment|rudder|posthog|posthog-v1|jitsu|jitsu-s2s HOST KEY RUN
const [which, host, key, run] = process.argv.slice(2);
const errors = [];
const PROPS = { plan: "pro", amount: 42.5, tags: ["a", "b"], nested: { k: "v" }, unicode: "héllo ✓" };
const TRAITS = { email: "jane@example.com", name: "Jane Doe", plan: "pro", logins: 7 };
// An hour ago: the test finds the track call at this time.
const TS = new Date(Date.now() - 3600 * 1000);
const user = `u_${which}_${run}`;
// posthog-node waits between retries on unref'd timers: keep the process alive until done.
const keepAlive = setInterval(() => {}, 1000);

async function segment() {
  const { Analytics } = require("@segment/analytics-node");
  const a = new Analytics({ writeKey: key, host, maxRetries: 3, flushInterval: 100 });
  a.on("error", (e) => errors.push(String(e && (e.reason || e.message || e.code) || e)));
  a.track({
    userId: user, anonymousId: `anon_${run}`, event: "Order Completed", properties: PROPS,
    context: { ip: "203.0.113.7", sessionId: `sess_${run}` },
    integrations: { All: true, Mixpanel: false }, timestamp: TS, messageId: `msg-${which}-track-${run}`,
  });
  a.identify({ userId: user, traits: TRAITS });
  a.page({ userId: user, category: "Docs", name: "Getting Started", properties: { url: "https://example.com/docs", title: "Docs" } });
  a.screen({ userId: user, name: "Home", properties: { variant: "dark" } });
  a.group({ userId: user, groupId: `g_${run}`, traits: { name: "Acme Inc", employees: 120 } });
  a.alias({ userId: user, previousId: `prev_${run}` });
  await a.closeAndFlush({ timeout: 60000 });
}

async function rudder() {
  const Analytics = require("@rudderstack/rudder-sdk-node");
  const a = new Analytics(key, {
    dataPlaneUrl: host, flushAt: 6, flushInterval: 100, retryCount: 3, logLevel: "error",
    errorHandler: (e) => errors.push(String(e && e.message || e)),
  });
  const cb = (e) => { if (e) errors.push(String(e.message || e)); };
  a.track({
    userId: user, anonymousId: `anon_${run}`, event: "Order Completed", properties: PROPS,
    context: { ip: "203.0.113.7", sessionId: `sess_${run}` },
    integrations: { All: true, Mixpanel: false }, timestamp: TS, messageId: `msg-${which}-track-${run}`,
  }, cb);
  a.identify({ userId: user, traits: TRAITS }, cb);
  a.page({ userId: user, category: "Docs", name: "Getting Started", properties: { url: "https://example.com/docs", title: "Docs" } }, cb);
  a.screen({ userId: user, name: "Home", properties: { variant: "dark" } }, cb);
  a.group({ userId: user, groupId: `g_${run}`, traits: { name: "Acme Inc", employees: 120 } }, cb);
  a.alias({ userId: user, previousId: `prev_${run}` }, cb);
  await new Promise((resolve) => a.flush((e) => { if (e) errors.push(String(e.message || e)); resolve(); }));
  // The first event of a process goes alone and at once; wait until every callback has run.
  await new Promise((r) => setTimeout(r, 50));
}

async function posthog() {
  const { PostHog } = require("posthog-node");
  const p = new PostHog(key, { host, flushAt: 20, flushInterval: 100, fetchRetryCount: 3, fetchRetryDelay: 500 });
  p.on("error", (e) => errors.push(String(e && e.message || e)));
  p.capture({
    distinctId: user, event: "Order Completed", timestamp: TS,
    uuid: "01890000-0000-7000-8000-" + run.slice(-12).padStart(12, "0"),
    properties: { ...PROPS, $session_id: `sess_${run}`, $current_url: "https://example.com/checkout" },
  });
  p.capture({ distinctId: user, event: "$pageview", properties: { $current_url: "https://example.com/docs" } });
  p.identify({ distinctId: user, properties: { $set: TRAITS, $set_once: { first_seen: "2024-01-01" }, $anon_distinct_id: `anon_${run}` } });
  p.alias({ distinctId: user, alias: `prev_${run}` });
  p.groupIdentify({ groupType: "company", groupKey: `g_${run}`, properties: { name: "Acme Inc", employees: 120 }, distinctId: user });
  p.capture({ distinctId: user, event: "Group Event", groups: { company: `g_${run}` } });
  await p.shutdown(60000);
}

async function jitsu(s2s) {
  const { jitsuAnalytics } = require("@jitsu/js");
  // Jitsu's SDK takes only `id:secret` keys: the ingest key is one half.
  const a = jitsuAnalytics({ host, writeKey: `${key}:sluice`, s2s, errorPolicy: "rethrow" });
  const call = async (f) => { try { await f(); } catch (e) { errors.push(String(e && e.message || e)); } };
  await call(() => a.identify(user, TRAITS));
  await call(() => a.track("Order Completed", PROPS));
  await call(() => a.page("Getting Started", { url: "https://example.com/docs", title: "Docs", category: "Docs" }));
  await call(() => a.group(`g_${run}`, { name: "Acme Inc", employees: 120 }));
}

const runs = {
  segment, rudder, posthog, "posthog-v1": posthog,
  jitsu: () => jitsu(false), "jitsu-s2s": () => jitsu(true),
};
runs[which]()
  .catch((e) => errors.push(`threw: ${e && e.stack || e}`))
  .finally(() => {
    clearInterval(keepAlive);
    console.log(JSON.stringify({ errors }));
    process.exit(errors.length ? 1 : 0);
  });
