// posthog-js in headless Chromium (Debian's package, driven by playwright-core): a page served
// from one origin sends events to the gateway on another, with the browser's own fetch, CORS,
// gzip and sendBeacon. Prints one JSON line {"errors": [...], "answers": [...]}.
//
// usage: node browser.js GATEWAY_URL KEY RUN
const http = require("http");
const fs = require("fs");
const path = require("path");
const { chromium } = require("playwright-core");

const [gateway, key, run] = process.argv.slice(2);
const lib = fs.readFileSync(path.join(__dirname, "node_modules/posthog-js/dist/array.full.js"));
const page = `<!doctype html><html><head><title>shop</title><script src="/posthog.js"></script></head>
<body><script>
  posthog.init(${JSON.stringify(key)}, {
    api_host: ${JSON.stringify(gateway)}, autocapture: false, capture_pageview: false,
    capture_pageleave: false, disable_session_recording: true, disable_surveys: true,
    advanced_disable_flags: true, advanced_disable_decide: true, persistence: "localStorage",
    // Headless Chromium says it is headless; posthog-js drops bot traffic unless told.
    opt_out_useragent_filter: true,
    // One request per event, so the page is done when three have been answered.
    request_batching: false,
  });
  posthog.identify("browser_user_${run}", { plan: "pro" });
  posthog.capture("browser_event", { plan: "pro", run: "${run}" });
  posthog.capture("beacon_event", { run: "${run}" }, { transport: "sendBeacon" });
</script></body></html>`;

const server = http.createServer((req, res) => {
  if (req.url === "/posthog.js") {
    res.writeHead(200, { "content-type": "application/javascript" });
    return res.end(lib);
  }
  res.writeHead(200, { "content-type": "text/html" });
  res.end(page);
});

(async () => {
  const errors = [];
  const answers = [];
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const origin = `http://127.0.0.1:${server.address().port}`;
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  try {
    const p = await browser.newPage();
    p.on("console", (m) => { if (m.type() === "error" && m.text().includes("CORS")) errors.push(m.text()); });
    p.on("requestfailed", (r) => { if (r.url().startsWith(gateway)) errors.push(`failed: ${r.url()} ${r.failure().errorText}`); });
    p.on("response", async (r) => {
      if (!r.url().startsWith(gateway) || r.request().method() !== "POST") return;
      answers.push({
        url: r.url().slice(gateway.length), status: r.status(), kind: r.request().resourceType(),
        type: r.request().headers()["content-type"] || "",
      });
    });
    await p.goto(`${origin}/`);
    // Until the gateway has answered the three events (identify, fetch, beacon), or a minute
    // has passed.
    const deadline = Date.now() + 60000;
    while (Date.now() < deadline && answers.filter((a) => a.status === 200).length < 3) {
      await p.waitForTimeout(200);
    }
    for (const a of answers) if (a.status !== 200) errors.push(`answered ${a.status}: ${a.url}`);
    if (!answers.some((a) => a.status === 200)) errors.push("the gateway never answered 200");
  } catch (e) {
    errors.push(String(e && e.stack || e));
  } finally {
    await browser.close();
    server.close();
  }
  console.log(JSON.stringify({ errors, answers, origin }));
  process.exit(errors.length ? 1 : 0);
})();
