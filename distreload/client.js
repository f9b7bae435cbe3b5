// distreload browser client: reloads the page (or swaps its stylesheets) when the cluster says so.
// Served from <prefix>/client.js and loaded by the tag distreload injects into HTML pages.
(function () {
  "use strict";
  var script = document.currentScript || document.querySelector("script[data-distreload]");
  if (!script || window.__distreload) return;
  window.__distreload = true;

  var base = script.getAttribute("data-distreload");
  var pageVersion = script.getAttribute("data-distreload-version") || "";
  var pageBuild = script.getAttribute("data-distreload-build") || "";
  var options = {};
  try { options = JSON.parse(script.getAttribute("data-distreload-options") || "{}"); } catch (e) { options = {}; }
  var prefix = options.messagePrefix || "[distreload]";
  var quiet = !!options.silent;
  var baseDelay = options.reconnectInterval || 1000;
  var maxDelay = options.maxReconnectInterval || 30000;

  function log(text) { if (!quiet) console.log(prefix + " " + text); }

  function parseVersion(text) {
    var match = /^([0-9a-f]{8,32})-([0-9]{1,16})$/.exec(text || "");
    return match ? { epoch: match[1], number: parseInt(match[2], 10) } : null;
  }
  function isBehind(seen, current) {
    if (!seen || !current) return false;
    if (seen.epoch === current.epoch) return seen.number < current.number;
    return current.number > 0;
  }

  var seenVersion = pageVersion;
  var source = null;
  var attempt = 0;
  var reloading = false;

  function reloadPage(reason) {
    if (reloading) return;
    reloading = true;
    log("reloading: " + reason);
    location.reload();
  }

  function connect() {
    var url = base + "/events" + (seenVersion ? "?last_event_id=" + encodeURIComponent(seenVersion) : "");
    source = new EventSource(url);
    source.addEventListener("hello", function (event) {
      attempt = 0;
      var data = JSON.parse(event.data);
      log("connected to " + data.worker);
      if (pageBuild && data.build && data.build !== pageBuild) { reloadPage("server code changed"); return; }
      if (isBehind(parseVersion(seenVersion), parseVersion(data.version))) { reloadPage("missed a reload"); return; }
      seenVersion = data.version;
    });
    source.addEventListener("reload", function (event) {
      var data = JSON.parse(event.data);
      if (!isBehind(parseVersion(seenVersion), parseVersion(data.version))) return;
      seenVersion = data.version;
      reloadPage("version " + data.version);
    });
    source.addEventListener("shutdown", function () { retry(); });
    source.onerror = function () { retry(); };
  }

  function retry() {
    if (source) { source.close(); source = null; }
    if (reloading) return;
    var delay = Math.min(maxDelay, baseDelay * Math.pow(2, attempt));
    delay = delay / 2 + Math.random() * delay / 2;
    attempt += 1;
    log("connection lost; retrying in " + Math.round(delay) + " ms");
    setTimeout(function () {
      fetch(base, { method: "HEAD", cache: "no-store" }).then(function (response) {
        if (response.ok) connect(); else retry();
      }, retry);
    }, delay);
  }

  connect();
})();
