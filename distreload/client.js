// distreload browser client: reloads the page (or swaps its stylesheets) when the cluster says so.
//
// Served from <prefix>/client.js and loaded by the tag distreload injects into HTML pages. The same file
// runs in two places:
//   * in a page, where it decides when that page reloads;
//   * as a SharedWorker (when the browser has them), where it holds the one EventSource that every tab of
//     this origin shares, so a dozen tabs cost one connection instead of a dozen (browsers allow only six
//     per host over HTTP/1.1, which starves tabs that each hold a stream).
// A page that cannot start the worker (no SharedWorker, a CSP that forbids it, another origin) opens its own
// EventSource instead; the decisions stay in the page either way.
//
// Every page compares versions ("epoch-number", the cluster's reload counter) and builds (a fingerprint of
// the server's code): a page reloads once per version it has not seen, and when the server's build differs
// from the one that rendered it (a code-change restart). Reconnecting alone never reloads anything.
(function (global) {
  "use strict";

  // --- shared by the page and the worker -----------------------------------------------------------------

  var DEFAULTS = {
    message_prefix: "[distreload]",
    connected_message: "connected",
    reconnect_message: "connection lost; retrying in ${reconnectInterval} ms",
    reconnect_interval: 1000,
    max_reconnect_interval: 10000,
    silent: false,
    shared_worker: true
  };
  var BACKOFF_FACTOR = 1.5;
  var WORKER_START_TIMEOUT = 3000;

  function withDefaults(options) {
    var merged = {};
    for (var key in DEFAULTS) {
      merged[key] = options && options[key] !== undefined && options[key] !== null ? options[key] : DEFAULTS[key];
    }
    merged.reconnect_interval = Math.max(100, Number(merged.reconnect_interval) || DEFAULTS.reconnect_interval);
    merged.max_reconnect_interval = Math.max(merged.reconnect_interval,
      Number(merged.max_reconnect_interval) || DEFAULTS.max_reconnect_interval);
    return merged;
  }

  // Bounded exponential backoff with jitter: attempt 0 waits 0.5-1 x the base interval, each further
  // attempt 1.5 times longer, never more than the maximum; the jitter spreads a cluster's worth of
  // browsers out after a restart.
  function backoffDelay(options, attempt) {
    var ceiling = Math.min(options.max_reconnect_interval,
      options.reconnect_interval * Math.pow(BACKOFF_FACTOR, Math.min(attempt, 30)));
    return Math.round(ceiling / 2 + Math.random() * ceiling / 2);
  }

  function parseVersion(text) {
    var match = /^([0-9a-f]{8,32})-([0-9]{1,16})$/.exec(text || "");
    return match ? { epoch: match[1], number: parseInt(match[2], 10) } : null;
  }

  // Mirrors ClusterVersion.is_behind on the server: another epoch means Redis started its count again,
  // and only a reload counted since then (number > 0) was missed.
  function isBehind(seenText, currentText) {
    var seen = parseVersion(seenText), current = parseVersion(currentText);
    if (!seen || !current) return false;
    if (seen.epoch === current.epoch) return seen.number < current.number;
    return current.number > 0;
  }

  // One EventSource to <base>/events with distreload's own reconnection: after an error or a shutdown
  // event it closes the EventSource (whose built-in retry has no backoff), waits, checks readiness with a
  // HEAD and only then opens a new stream. Reports {type: "hello" | "reload" | "down"} to ``report``.
  function Connection(base, options, report) {
    this.base = base;
    this.options = options;
    this.report = report;
    this.source = null;
    this.timer = null;
    this.attempt = 0;
    this.state = null;     // the last hello, its version kept current: what a newly attached tab is told
    this.connected = false;
  }

  Connection.prototype.start = function () {
    if (!this.source && !this.timer) this.open();
  };

  Connection.prototype.open = function () {
    var self = this;
    var url = this.base + "/events";
    if (this.state) url += "?last_event_id=" + encodeURIComponent(this.state.version);
    var source = this.source = new EventSource(url);
    source.addEventListener("hello", function (event) {
      var data = safeJson(event.data);
      if (!data || source !== self.source) return;
      self.attempt = 0;
      self.connected = true;
      self.state = { type: "hello", version: data.version, build: data.build, worker: data.worker };
      self.report(self.state);
    });
    source.addEventListener("reload", function (event) {
      var data = safeJson(event.data);
      if (!data || source !== self.source) return;
      if (self.state && isBehind(self.state.version, data.version)) self.state.version = data.version;
      self.report({ type: "reload", version: data.version, kind: data.kind, paths: data.paths || [] });
    });
    source.addEventListener("shutdown", function () {
      if (source === self.source) self.lost();
    });
    source.onerror = function () {
      if (source === self.source) self.lost();
    };
  };

  Connection.prototype.lost = function () {
    if (this.source) { this.source.close(); this.source = null; }
    this.connected = false;
    this.schedule();
  };

  Connection.prototype.schedule = function () {
    var self = this;
    if (this.timer) return;
    var delay = backoffDelay(this.options, this.attempt);
    this.attempt += 1;
    this.report({ type: "down", delay: delay });
    this.timer = setTimeout(function () { self.timer = null; self.check(); }, delay);
  };

  // The readiness check: a HEAD on <base> is cheap and answers only once the app is serving again.
  Connection.prototype.check = function () {
    var self = this;
    fetch(this.base, { method: "HEAD", cache: "no-store", credentials: "same-origin" }).then(function (response) {
      if (self.source) return;
      if (response.ok) self.open(); else self.schedule();
    }, function () { self.schedule(); });
  };

  // Back online or visible again: try now instead of waiting out the backoff.
  Connection.prototype.wake = function () {
    if (!this.timer) return;
    clearTimeout(this.timer);
    this.timer = null;
    this.attempt = 0;
    this.check();
  };

  Connection.prototype.stop = function () {
    if (this.timer) { clearTimeout(this.timer); this.timer = null; }
    if (this.source) { this.source.close(); this.source = null; }
    this.connected = false;
  };

  function safeJson(text) {
    try { return JSON.parse(text); } catch (e) { return null; }
  }

  // --- the SharedWorker ------------------------------------------------------------------------------------

  function runSharedWorker(scope) {
    // The worker's own URL is <base>/client.js?v=...: the endpoint base is everything before /client.js.
    var base = scope.location.href.split("?")[0].replace(/\/client\.js$/, "");
    var ports = [];
    var connection = null;

    function broadcast(message) {
      for (var i = 0; i < ports.length; i++) ports[i].postMessage(message);
    }

    scope.addEventListener("connect", function (event) {
      var port = event.ports[0];
      port.onmessage = function (message) {
        var data = message.data || {};
        if (data.type === "start") {
          if (ports.indexOf(port) === -1) ports.push(port);
          if (!connection) connection = new Connection(base, withDefaults(data.options), broadcast);
          port.postMessage({ type: "ready" });
          if (connection.connected && connection.state) port.postMessage(connection.state);
          connection.start();
        } else if (data.type === "wake" && connection) {
          connection.wake();
        } else if (data.type === "bye") {
          var index = ports.indexOf(port);
          if (index !== -1) ports.splice(index, 1);
        }
      };
      port.start();
    });
  }

  // --- the page ----------------------------------------------------------------------------------------

  function runPage(window, document) {
    var script = document.currentScript || document.querySelector("script[data-distreload]");
    if (!script || window.__distreload) return;

    var base = script.getAttribute("data-distreload");
    var pageBuild = script.getAttribute("data-distreload-build") || "";
    var options = withDefaults(safeJson(script.getAttribute("data-distreload-options") || "{}") || {});
    var storageKey = "distreload:" + base;
    var status = window.__distreload = {
      mode: "starting", connected: false, worker: null, version: script.getAttribute("data-distreload-version") || "",
      build: pageBuild, reloading: false
    };
    var port = null;
    var connection = null;

    function log(text) {
      if (!options.silent && window.console) window.console.log(options.message_prefix + " " + text);
    }

    // What this tab has already acted on survives its own reload: a page re-rendered by a worker that has
    // not heard of the newest version yet must not reload a second time for it.
    var remembered = readMemory();
    if (remembered.version) {
      var page = parseVersion(status.version), known = parseVersion(remembered.version);
      if (known && (!page || (page.epoch === known.epoch && page.number < known.number))) status.version = remembered.version;
    }

    function readMemory() {
      try { return safeJson(window.sessionStorage.getItem(storageKey)) || {}; } catch (e) { return {}; }
    }
    function writeMemory(value) {
      try { window.sessionStorage.setItem(storageKey, JSON.stringify(value)); } catch (e) { /* private mode */ }
    }

    function handle(message) {
      if (message.type === "ready") return;
      if (message.type === "down") {
        // One line per retry: the backoff keeps them few, and the growing waits show it working.
        log(String(options.reconnect_message).split("${reconnectInterval}").join(String(message.delay)));
        status.connected = false;
        return;
      }
      if (message.type === "hello") {
        if (!status.connected) log(options.connected_message + " (" + message.worker + ")");
        status.connected = true;
        status.worker = message.worker;
        if (pageBuild && message.build && message.build !== pageBuild) {
          if (remembered.build === message.build) {
            // Already reloaded once for this build and the page still says otherwise (a worker whose code
            // differs): reloading again could never settle it, so take it as this page's build.
            pageBuild = message.build;
          } else {
            reloadWhenReady("the server's code changed", message.version, message.build);
            return;
          }
        }
        if (isBehind(status.version, message.version)) {
          reloadWhenReady("missed reload " + message.version, message.version, null);
        } else if (parseVersion(message.version)) {
          status.version = message.version;
        }
        return;
      }
      if (message.type === "reload") {
        if (!isBehind(status.version, message.version)) return;
        if (message.kind === "css") {
          status.version = message.version;
          writeMemory({ version: message.version, build: remembered.build });
          swapStylesheets(message.paths || [], message.version);
        } else {
          reloadWhenReady("reload " + message.version, message.version, null);
        }
      }
    }

    // Reload only once the server answers (and, after a code change, answers with the new code), so the
    // tab never lands on a connection-refused page; keep retrying with the same bounded backoff.
    var reloadAttempt = 0, reloadTimer = null, reloadTarget = null;
    function reloadWhenReady(reason, version, build) {
      if (status.reloading) return;
      status.reloading = true;
      reloadTarget = build;
      log("reloading: " + reason);
      writeMemory({ version: version, build: build || remembered.build });
      probeThenReload();
    }
    function probeThenReload() {
      reloadTimer = null;
      fetch(base, { method: "HEAD", cache: "no-store", credentials: "same-origin" }).then(function (response) {
        var build = response.headers.get("x-distreload-build");
        if (response.ok && (!reloadTarget || !build || build === reloadTarget)) {
          window.location.reload();
        } else {
          retryReload();
        }
      }, retryReload);
    }
    function retryReload() {
      reloadTimer = setTimeout(probeThenReload, backoffDelay(options, reloadAttempt));
      reloadAttempt += 1;
    }
    function wake() {
      if (port) port.postMessage({ type: "wake" });
      if (connection) connection.wake();
      if (reloadTimer) { clearTimeout(reloadTimer); reloadAttempt = 0; probeThenReload(); }
    }

    // The CSS kind: each matching stylesheet gets a fresh copy inserted after it; the old one goes only
    // once the new one has loaded, so the page never shows unstyled. Nothing navigates: scroll position and
    // form state stay as they are.
    function swapStylesheets(paths, version) {
      var links = document.querySelectorAll('link[rel~="stylesheet"][href]');
      var swapped = 0;
      for (var i = 0; i < links.length; i++) {
        var link = links[i];
        if (link.__distreloadReplaced) continue;
        var url;
        try { url = new URL(link.href, document.baseURI); } catch (e) { continue; }
        if (url.origin !== window.location.origin) continue;
        if (paths.length && !matchesAny(url.pathname, paths)) continue;
        url.searchParams.set("distreload", version);
        replaceLink(link, url.href);
        swapped += 1;
      }
      log("swapped " + swapped + " stylesheet" + (swapped === 1 ? "" : "s") + " for " + version);
    }
    function matchesAny(pathname, paths) {
      for (var i = 0; i < paths.length; i++) {
        // A path published as /static/site.css also names /app/static/site.css behind a proxy prefix.
        if (pathname === paths[i] || pathname.slice(-paths[i].length) === paths[i]) return true;
      }
      return false;
    }
    function replaceLink(link, href) {
      var fresh = link.cloneNode(false);
      if (link.nonce) fresh.nonce = link.nonce;
      fresh.href = href;
      link.__distreloadReplaced = true;
      function done() { if (link.parentNode) link.parentNode.removeChild(link); }
      fresh.addEventListener("load", done);
      fresh.addEventListener("error", function () {
        // Keep the old sheet when the new one fails: a broken request must not unstyle the page.
        if (fresh.parentNode) fresh.parentNode.removeChild(fresh);
        link.__distreloadReplaced = false;
      });
      link.parentNode.insertBefore(fresh, link.nextSibling);
    }

    function startInPage() {
      if (connection) return;
      if (port) { try { port.postMessage({ type: "bye" }); port.close(); } catch (e) { /* gone */ } port = null; }
      status.mode = "page";
      connection = new Connection(base, options, handle);
      connection.start();
    }

    function startShared() {
      var worker;
      try {
        worker = new SharedWorker(script.src, { name: "distreload " + base });
      } catch (e) {
        return false;
      }
      var started = false;
      worker.onerror = function () { if (!started) startInPage(); };
      port = worker.port;
      port.onmessage = function (message) {
        if (!started) { started = true; status.mode = "shared"; }
        handle(message.data || {});
      };
      port.start();
      port.postMessage({ type: "start", options: options });
      // A worker that never answers (blocked without an error event) must not leave the page deaf.
      setTimeout(function () { if (!started) startInPage(); }, WORKER_START_TIMEOUT);
      return true;
    }

    function start() {
      var sameOrigin = false;
      try { sameOrigin = new URL(script.src, document.baseURI).origin === window.location.origin; } catch (e) { /* */ }
      if (!(options.shared_worker && sameOrigin && typeof window.SharedWorker === "function" && startShared())) {
        startInPage();
      }
    }

    window.addEventListener("online", wake);
    document.addEventListener("visibilitychange", function () { if (document.visibilityState === "visible") wake(); });
    window.addEventListener("pagehide", function () {
      // Leave the worker's list, and free this page's own connection for the back-forward cache.
      if (port) port.postMessage({ type: "bye" });
      if (connection) connection.stop();
    });
    window.addEventListener("pageshow", function (event) {
      if (!event.persisted) return;
      if (port) port.postMessage({ type: "start", options: options });
      if (connection) connection.start();
    });

    start();
  }

  if (typeof SharedWorkerGlobalScope !== "undefined" && global instanceof SharedWorkerGlobalScope) {
    runSharedWorker(global);
  } else if (typeof document !== "undefined") {
    runPage(global, document);
  }
})(self);
