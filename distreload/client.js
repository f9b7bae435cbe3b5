// distreload browser client: keeps a page in step with the cluster. When a reload is published it reloads
// the page, swaps its stylesheets or images, or morphs the page's new HTML into the live document.
//
// Loaded by the tag distreload injects into HTML pages (<base>/client.js, data-distreload="<base>").
//
// One tab per origin holds the event stream for all of them (browsers allow six connections per host over
// HTTP/1.1, so a stream per tab starves the seventh tab). The tabs elect that tab with the Web Locks API and
// hear from it over a BroadcastChannel: no worker is involved, so this works under any Content-Security-
// Policy (a SharedWorker needs worker-src, and Android Chrome has none). When the tab holding the stream
// closes, the next one in the lock's queue takes over and resumes from the last version it heard of.
// Browsers without Web Locks (a plain-HTTP origin other than localhost) give each tab its own stream.
//
// Every page compares versions ("epoch-number", the cluster's reload counter) and builds (a fingerprint of
// the server's code): a page acts once per version it has not seen, and when the server's build differs from
// the one that rendered it (a code-change restart). Reconnecting alone never reloads anything. Before a page
// reloads or morphs it fetches itself: a server error or no answer shows an overlay and the page waits,
// rather than navigating onto an error page.
//
// The parts, each usable on its own (the client's tests drive them in a browser without a server, through
// distreload.parts): Connection (one EventSource with its own backoff), StreamShare (one stream per browser),
// ReloadPlan (accept, merge, spread, match, pause), PageCheck (fetch, backoff, overlay), Morph and
// morphDocument, the stylesheet and image swaps, Ui and Indicator, TabMemory, PageReport (what the tab
// shows, told to the worker). runPage only wires them.
(function (global) {
  "use strict";

  var DEFAULTS = {
    message_prefix: "[distreload]",
    connected_message: "connected",
    reconnect_message: "connection lost; retrying in ${reconnectInterval} ms",
    reconnect_interval: 1000,
    max_reconnect_interval: 10000,
    silent: false,
    share_connection: true,
    overlay: true,
    indicator: true
  };
  // Earlier names that still mean the same.
  var ALIASES = { shared_worker: "share_connection" };
  var BACKOFF_FACTOR = 1.5;
  // After a hello that shows a missed reload, the server sends that reload (its kind, paths and match) next;
  // a full reload happens only if it does not.
  var CATCH_UP_GRACE = 300;
  // A stream back within this time never showed the indicator: a blip is not worth a flicker.
  var LOST_GRACE = 1000;
  var OVERLAY_LINES = 15;
  var UI_ATTRIBUTE = "data-distreload-ui";
  var ACCEPT_HTML = "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8";

  // --- versions, options, backoff ---------------------------------------------------------------------------

  function withDefaults(options) {
    var given = {}, merged = {}, key;
    for (key in options || {}) given[ALIASES[key] || key] = options[key];
    for (key in DEFAULTS) {
      merged[key] = given[key] !== undefined && given[key] !== null ? given[key] : DEFAULTS[key];
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

  function newer(a, b) {
    if (!parseVersion(a)) return parseVersion(b) ? b : a;
    return isBehind(a, b) ? b : a;
  }

  function safeJson(text) {
    try { return JSON.parse(text); } catch (e) { return null; }
  }

  // --- what a reload is for: globs on the path, URL paths, cache-busters --------------------------------------

  // The glob of a reload's "match": "*" is any run of characters but "/", "**" any run at all, "?" one
  // character but "/". Matched against the whole of location.pathname, the same as glob_matches in
  // distreload/protocol.py. A run of "*" is one token ("**" for two or more, which is what it means).
  function globTokens(glob) {
    var characters = Array.from(glob), tokens = [], i = 0;
    while (i < characters.length) {
      var end = i;
      while (characters[end] === "*") end += 1;
      if (end > i) { tokens.push(end - i > 1 ? "**" : "*"); i = end; }
      else { tokens.push(characters[i]); i += 1; }
    }
    return tokens;
  }

  // Never backtracks (a RegExp made from "**" does, for minutes, on a crafted glob): it follows every way
  // the glob could match at once, one flag per glob position, one path character at a time.
  function matchesGlob(glob, pathname) {
    if (!glob) return true;
    var tokens = globTokens(glob), size = tokens.length;
    var states = new Uint8Array(size + 1), next = new Uint8Array(size + 1);
    function skipStars(flags) {  // a star may match nothing
      for (var p = 0; p < size; p++) if (flags[p] && (tokens[p] === "*" || tokens[p] === "**")) flags[p + 1] = 1;
    }
    states[0] = 1;
    skipStars(states);
    var characters = Array.from(pathname);
    for (var i = 0; i < characters.length; i++) {
      var character = characters[i], alive = false;
      next.fill(0);
      for (var p = 0; p < size; p++) {
        if (!states[p]) continue;
        var token = tokens[p];
        if (token === "**" || (token === "*" && character !== "/")) { next[p] = 1; alive = true; }
        else if (token === character || (token === "?" && character !== "/")) { next[p + 1] = 1; alive = true; }
      }
      if (!alive) return false;
      skipStars(next);
      var swap = states; states = next; next = swap;
    }
    return states[size] === 1;
  }

  function matchesAny(pathname, paths) {
    for (var i = 0; i < paths.length; i++) {
      // A path published as /static/site.css also names /app/static/site.css behind a proxy prefix.
      if (pathname === paths[i] || pathname.slice(-paths[i].length) === paths[i]) return true;
    }
    return false;
  }

  // ``text`` resolved against ``base`` with ?distreload=<version>, when it names a same-origin resource among
  // ``paths`` (empty: any); null otherwise.
  function bustUrl(text, base, paths, version) {
    var url;
    try { url = new URL(text, base); } catch (e) { return null; }
    if (url.origin !== new URL(base).origin || !/^https?:$/.test(url.protocol)) return null;
    if (paths.length && !matchesAny(url.pathname, paths)) return null;
    url.searchParams.set("distreload", version);
    return url.href;
  }

  function withoutBuster(text, base) {
    try {
      var url = new URL(text, base);
      url.searchParams.delete("distreload");
      return url.href;
    } catch (e) { return text; }
  }

  // A srcset with every wanted candidate busted; null when none is wanted.
  function bustSrcset(srcset, base, paths, version) {
    var changed = false;
    var candidates = srcset.split(",").map(function (candidate) {
      var parts = candidate.trim().split(/\s+/);
      var busted = parts[0] && bustUrl(parts[0], base, paths, version);
      if (!busted) return candidate.trim();
      changed = true;
      parts[0] = busted;
      return parts.join(" ");
    });
    return changed ? candidates.join(", ") : null;
  }

  // A CSS value (background-image and the like) with every wanted url(...) busted; null when none is wanted.
  function bustCssUrls(value, base, paths, version) {
    var changed = false;
    var result = value.replace(/url\(\s*(["']?)([^"')]+)\1\s*\)/g, function (whole, quote, target) {
      var busted = bustUrl(target, base, paths, version);
      if (!busted) return whole;
      changed = true;
      return 'url("' + busted + '")';
    });
    return changed ? result : null;
  }

  // --- plans: what a page is about to do ---------------------------------------------------------------------

  var KINDS = { reload: true, css: true, images: true, morph: true };

  // Two reloads that have not happened yet make one: the newer version, and a kind that covers both.
  // Stylesheet or image swaps add their paths up (none named means all); any two different kinds make a
  // full reload, as does anything with a full reload.
  function mergePlans(a, b) {
    if (!a) return { kind: b.kind, version: b.version, paths: b.paths.slice(), build: b.build || null, reason: b.reason };
    var same = a.kind === b.kind;
    var paths = same && a.paths.length && b.paths.length ? a.paths.concat(b.paths.filter(function (path) {
      return a.paths.indexOf(path) === -1;
    })) : [];
    return {
      kind: same ? a.kind : "reload",
      version: newer(a.version, b.version),
      paths: paths,
      build: b.build || a.build || null,
      reason: same ? b.reason : a.reason + ", then " + b.reason
    };
  }

  // --- the stream ---------------------------------------------------------------------------------------

  // One EventSource to <base>/events with distreload's own reconnection: after an error or a shutdown
  // event it closes the EventSource (whose built-in retry has no backoff), waits, checks readiness with a
  // HEAD and only then opens a new stream, resuming from the newest version it heard of. Reports
  // {type: "hello" | "reload" | "down"} to ``report``.
  function Connection(base, options, report, resumeFrom) {
    this.base = base;
    this.options = options;
    this.report = report;
    this.resumeFrom = resumeFrom || "";
    this.source = null;
    this.timer = null;
    this.attempt = 0;
    this.state = null;     // the last hello, its version kept current: what a tab that joins is told
    this.connected = false;
  }

  Connection.prototype.start = function () {
    if (!this.source && !this.timer) this.open();
  };

  Connection.prototype.open = function () {
    var self = this;
    var url = this.base + "/events";
    if (parseVersion(this.resumeFrom)) url += "?last_event_id=" + encodeURIComponent(this.resumeFrom);
    var source = this.source = new EventSource(url);
    source.addEventListener("hello", function (event) {
      var data = safeJson(event.data);
      if (!data || source !== self.source) return;
      self.attempt = 0;
      self.connected = true;
      self.resumeFrom = newer(self.resumeFrom, data.version);
      self.state = { type: "hello", version: data.version, build: data.build, worker: data.worker,
        stream: typeof data.stream === "string" ? data.stream : "" };
      self.report(self.state);
    });
    source.addEventListener("reload", function (event) {
      var data = safeJson(event.data);
      if (!data || source !== self.source) return;
      self.resumeFrom = newer(self.resumeFrom, data.version);
      if (self.state) self.state.version = newer(self.state.version, data.version);
      // Servers from before spread and match leave them out: no spread, every page.
      self.report({ type: "reload", version: data.version, kind: data.kind, paths: data.paths || [],
        spread: Number(data.spread) || 0, match: typeof data.match === "string" ? data.match : "" });
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

  // --- morph: the new HTML applied to the live document in place ------------------------------------------
  //
  // An element keeps its identity whenever the new HTML still holds it by id, wherever it moved: as in
  // idiomorph, every element knows the ids it holds (itself and its descendants) among those that both the
  // live page and the new HTML hold once, with the same tag (the persistent ids), so a wrapper is paired
  // with the wrapper that holds the same ids, and an id'd element whose parent changed is moved over, not
  // rebuilt. Siblings without ids are paired by tag, preferring one whose content is unchanged (an
  // insertion before an unchanged element never takes that element over), then one whose attributes are;
  // a soft pair never takes an element holding persistent ids or one that a following new sibling matches
  // better. A paired node is updated in place, so what the page holds in it stays: typed text, caret,
  // focus, checked state, inner scroll, open <details>/<dialog>, playing media, listeners, JS properties.
  // Moves use moveBefore where the browser has it (state kept as is); elsewhere focus, caret and inner
  // scroll are put back afterwards. An unchanged subtree is recognised with isEqualNode and not walked.

  var PERMANENT_ATTRIBUTE = "data-distreload-permanent";
  // How many sibling elements ahead pairing looks for an unchanged one, and for any other.
  var LOOKAHEAD_SAME = 50;
  var LOOKAHEAD = 8;

  function isScript(node) { return node.nodeType === 1 && node.tagName === "SCRIPT"; }
  function isOwnScript(node) { return isScript(node) && node.hasAttribute("data-distreload"); }
  function isUi(node) { return node.nodeType === 1 && node.hasAttribute(UI_ATTRIBUTE); }
  function isStylesheetLink(node) {
    return node.nodeType === 1 && node.tagName === "LINK" && node.hasAttribute("href") &&
      /(^|\s)stylesheet(\s|$)/i.test(node.getAttribute("rel") || "");
  }
  function isPermanent(node) { return node.nodeType === 1 && node.hasAttribute(PERMANENT_ATTRIBUTE); }

  // What identifies a script when asking whether it changed: its type, and its URL or its code; never its
  // nonce, which every response renews.
  function scriptSignature(script, base) {
    var src = script.getAttribute("src");
    return (script.getAttribute("type") || "") + " " + (src ? withoutBuster(src, base) : "inline " + script.textContent);
  }

  function describeScript(script) {
    var src = script.getAttribute("src");
    return src || JSON.stringify(script.textContent.replace(/\s+/g, " ").trim().slice(0, 60));
  }

  // Why the page's scripts forbid a morph, or "" when they allow it. Every script of the new page must be in
  // the live one already: a new or changed script would have to run, and running code again in a page where
  // the old code ran is not what loading the page does. Scripts only the live page has are left alone
  // (pages and their libraries add scripts of their own at run time). distreload's own tag is not counted:
  // it carries the version, which changes with every reload.
  function scriptChange(liveDocument, freshDocument, base) {
    var available = {}, reason = "";
    eachScript(liveDocument, function (script) {
      var signature = scriptSignature(script, base);
      available[signature] = (available[signature] || 0) + 1;
    });
    eachScript(freshDocument, function (script) {
      var signature = scriptSignature(script, base);
      if (available[signature]) available[signature] -= 1;
      else if (!reason) reason = "a script changed: " + describeScript(script);
    });
    return reason;
  }

  function eachScript(document, visit) {
    var scripts = document.getElementsByTagName("script");
    for (var i = 0; i < scripts.length; i++) if (!isOwnScript(scripts[i])) visit(scripts[i]);
  }

  // DOMParser parses with scripting off: a parsed <noscript> holds real elements (an <img onerror>, a
  // tracking <iframe>, a <link>) that a page loaded with scripting on never has, where it holds the same
  // markup as inert text. Made text before anything is imported, they stay as inert as a full load keeps them.
  function inertNoscripts(root) {
    var found = root.getElementsByTagName("noscript");
    for (var i = found.length - 1; i >= 0; i--) {
      var noscript = found[i];
      if (noscript.childElementCount) noscript.textContent = noscript.innerHTML;
    }
  }

  // The open state of <details> and <dialog> is the reader's: a morph neither opens nor closes them.
  function isReadersAttribute(element, name) {
    return name === "open" && (element.tagName === "DETAILS" || element.tagName === "DIALOG");
  }

  function readSelection(element) {
    try {
      return element.selectionStart === null || element.selectionStart === undefined ? null
        : { start: element.selectionStart, end: element.selectionEnd, direction: element.selectionDirection };
    } catch (e) {
      return null;  // an input type without a caret
    }
  }

  function idOf(node) { return node.nodeType === 1 ? node.getAttribute("id") || "" : ""; }

  // Every element with an id under ``root`` (itself included), by id; ids held more than once map to null.
  function elementsById(root) {
    var found = new Map(), list = root.querySelectorAll("[id]"), i, id;
    if (idOf(root)) found.set(idOf(root), root);
    for (i = 0; i < list.length; i++) {
      id = list[i].getAttribute("id");
      found.set(id, found.has(id) ? null : list[i]);
    }
    return found;
  }

  // One morph of ``liveRoot`` into ``freshRoot`` (parsed, noscripts made inert). ``serverHead`` (optional):
  // the <head> elements that came from the server's HTML; the others were added by the page and stay.
  function Morph(liveRoot, freshRoot, base, serverHead) {
    this.base = base;
    this.document = liveRoot.ownerDocument || liveRoot;
    this.serverHead = serverHead || null;
    this.changes = 0;
    this.failures = [];
    this.newSheets = [];
    this.staleSheets = [];
    this.used = new Set();
    this.pantry = null;
    this.moved = [];
    this.liveIds = new Map();
    this.freshIds = new Map();
    var live = elementsById(liveRoot), self = this;
    this.liveById = new Map();
    elementsById(freshRoot).forEach(function (b, id) {
      var a = live.get(id);
      if (!a || !b || a.namespaceURI !== b.namespaceURI || a.localName !== b.localName) return;
      self.liveById.set(id, a);
      addToAncestors(self.liveIds, a, liveRoot, id);
      addToAncestors(self.freshIds, b, freshRoot, id);
    });
  }

  function addToAncestors(map, element, root, id) {
    for (var node = element; node; node = node === root ? null : node.parentNode) {
      var ids = map.get(node);
      if (!ids) map.set(node, ids = new Set());
      ids.add(id);
    }
  }

  Morph.prototype.isPersistent = function (id) {
    return Boolean(id) && this.liveById.has(id);
  };

  // A live element's persistent ids not yet placed: what it still holds for the new HTML.
  Morph.prototype.holdsWanted = function (node) {
    var ids = this.liveIds.get(node);
    if (!ids) return false;
    var self = this, wanted = false;
    ids.forEach(function (id) { if (!self.used.has(self.liveById.get(id))) wanted = true; });
    return wanted;
  };

  // Whether ``live`` may stand for ``fresh`` at all: same kind of node; an element keeps a persistent id
  // only for the element of that id; a permanent element only by its id; form fields keep name and type.
  Morph.prototype.compatible = function (live, fresh) {
    if (live.nodeType !== fresh.nodeType) return false;
    if (live.nodeType !== 1) return true;
    if (live.namespaceURI !== fresh.namespaceURI || live.localName !== fresh.localName) return false;
    var liveId = idOf(live), freshId = idOf(fresh);
    if (liveId !== freshId && (this.isPersistent(liveId) || this.isPersistent(freshId) || isPermanent(live))) return false;
    if (isPermanent(live) && !this.isPersistent(liveId)) return false;
    if (/^(INPUT|SELECT|TEXTAREA|BUTTON)$/.test(live.tagName) &&
        (live.getAttribute("name") !== fresh.getAttribute("name") || live.getAttribute("type") !== fresh.getAttribute("type"))) {
      return false;
    }
    return true;
  };

  // How well ``live`` stands for ``fresh``: 3 unchanged, 2 same attributes, 1 same tag, 0 not at all.
  Morph.prototype.likeness = function (live, fresh) {
    if (!this.compatible(live, fresh)) return 0;
    if (sameContent(live, fresh)) return 3;
    if (live.nodeType !== 1) return 1;
    return sameAttributes(live, fresh) ? 2 : 1;
  };

  // isEqualNode, except for the reader's own attributes (an open <details> the new HTML has closed).
  function sameContent(live, fresh) {
    if (live.isEqualNode(fresh)) return true;
    if (live.nodeType !== 1 || !(live.tagName === "DETAILS" || live.tagName === "DIALOG")) return false;
    if (!sameAttributes(live, fresh) || live.childNodes.length !== fresh.childNodes.length) return false;
    for (var i = 0; i < live.childNodes.length; i++) if (!live.childNodes[i].isEqualNode(fresh.childNodes[i])) return false;
    return true;
  }

  function sameAttributes(live, fresh) {
    var count = 0, i, attribute;
    for (i = 0; i < fresh.attributes.length; i++) {
      attribute = fresh.attributes[i];
      if (attribute.localName === "nonce" || isReadersAttribute(live, attribute.localName)) continue;
      if (live.getAttributeNS(attribute.namespaceURI, attribute.localName) !== attribute.value) return false;
      count += 1;
    }
    for (i = 0; i < live.attributes.length; i++) {
      attribute = live.attributes[i];
      if (attribute.localName !== "nonce" && !isReadersAttribute(live, attribute.localName)) count -= 1;
    }
    return count === 0;
  }

  // Nodes the morph steps over in the live tree: distreload's own UI and the morph's pantry.
  function skipped(node) {
    while (node && isUi(node)) node = node.nextSibling;
    return node;
  }

  // The live node that is to become ``fresh``, among ``parent``'s children from ``cursor`` on, or (for an
  // element of a persistent id) anywhere; null when ``fresh`` is new.
  Morph.prototype.partnerOf = function (parent, cursor, fresh) {
    if (cursor && !isScript(cursor) && this.compatible(cursor, fresh) && sameContent(cursor, fresh)) return cursor;
    var id = idOf(fresh);
    if (this.isPersistent(id)) {
      var element = this.liveById.get(id);
      return this.used.has(element) || element.contains(parent) ? null : element;
    }
    if (fresh.nodeType !== 1) {
      // Text and comments pair only in place: never worth moving, nor removing elements to reach.
      return cursor && cursor.nodeType === fresh.nodeType && !this.used.has(cursor) ? cursor : null;
    }
    if (this.freshIds.get(fresh)) {
      var holder = this.holderOf(parent, fresh);
      if (holder) return holder;
    }
    // Siblings without persistent ids: an unchanged one further on, else the best one near, unless a
    // following new sibling is better for it.
    var best = null, bestLikeness = 0, node = cursor, seen = 0;
    for (; node && seen < LOOKAHEAD_SAME; node = node.nextSibling) {
      if (node.nodeType !== 1 || isUi(node) || isScript(node) || this.used.has(node)) continue;
      seen += 1;
      if (this.holdsWanted(node)) continue;
      var likeness = seen <= LOOKAHEAD ? this.likeness(node, fresh)
        : this.compatible(node, fresh) && sameContent(node, fresh) ? 3 : 0;
      if (likeness > bestLikeness) {
        best = node;
        bestLikeness = likeness;
        if (likeness === 3) break;
      }
    }
    if (!best || bestLikeness === 3) return best;
    var next = fresh.nextSibling;
    for (seen = 0; next && seen < LOOKAHEAD; next = next.nextSibling, seen += 1) {
      if (next.nodeType === 1 && this.likeness(best, next) > bestLikeness) return null;
    }
    return best;
  };

  // The live child of ``parent`` that holds the same persistent ids as ``fresh`` does.
  Morph.prototype.holderOf = function (parent, fresh) {
    var self = this, holder = null;
    this.freshIds.get(fresh).forEach(function (id) {
      if (holder) return;
      var node = self.liveById.get(id);
      if (self.used.has(node)) return;
      while (node && node.parentNode !== parent) node = node.parentNode;
      if (node && !self.used.has(node) && self.compatible(node, fresh)) holder = node;
    });
    return holder;
  };

  // Move ``node`` to before ``before`` in ``parent``, keeping its state: moveBefore keeps focus, selection,
  // inner scroll, iframes and playing media where the browser has it; elsewhere the scroll offsets inside
  // are put back at the end (focus and caret are put back by morphDocument).
  Morph.prototype.move = function (parent, node, before) {
    if (node.parentNode === parent && node.nextSibling === before) return;
    if (typeof parent.moveBefore === "function") {
      try { parent.moveBefore(node, before); this.changes += 1; return; } catch (e) { /* another root: insert */ }
    }
    if (node.nodeType === 1) {
      var scrolled = [node].concat(Array.prototype.slice.call(node.getElementsByTagName("*")));
      for (var i = 0; i < scrolled.length; i++) {
        if (scrolled[i].scrollTop || scrolled[i].scrollLeft) {
          this.moved.push({ element: scrolled[i], top: scrolled[i].scrollTop, left: scrolled[i].scrollLeft });
        }
      }
    }
    parent.insertBefore(node, before);
    this.changes += 1;
  };

  // A live node that the new HTML no longer has. Scripts stay (they ran: removing undoes nothing);
  // stylesheets go once their successors have loaded (the page is never unstyled); a node still holding
  // persistent ids waits in the pantry until they are taken.
  Morph.prototype.remove = function (node) {
    if (isScript(node)) return;
    if (isStylesheetLink(node)) {
      if (this.staleSheets.indexOf(node) === -1) this.staleSheets.push(node);
      return;
    }
    if (this.holdsWanted(node)) {
      if (!this.pantry) {
        this.pantry = this.document.createElement("div");
        this.pantry.setAttribute(UI_ATTRIBUTE, "pantry");
        this.pantry.hidden = true;
        (this.document.documentElement || this.document).appendChild(this.pantry);
      }
      this.move(this.pantry, node, null);
      return;
    }
    node.parentNode.removeChild(node);
    this.changes += 1;
  };

  // A node of the new HTML made live: a copy, without the scripts in it (never run a second time).
  Morph.prototype.create = function (fresh) {
    var node = this.document.importNode(fresh, true);
    if (node.nodeType !== 1) return node;
    var scripts = node.getElementsByTagName("script");
    for (var i = scripts.length - 1; i >= 0; i--) scripts[i].parentNode.removeChild(scripts[i]);
    var sheets = isStylesheetLink(node) ? [node] : node.querySelectorAll('link[rel~="stylesheet"][href]');
    for (i = 0; i < sheets.length; i++) this.newSheets.push(sheets[i]);
    return node;
  };

  Morph.prototype.children = function (live, fresh) {
    var last = null, cursor, freshChild, partner, byScript = null;
    for (freshChild = fresh.firstChild; freshChild; freshChild = freshChild.nextSibling) {
      // Where the next node goes: after the last one placed. Worked out each time, because placing a node
      // may have moved what followed it (an element of a persistent id taken into the node just placed).
      cursor = skipped(last ? last.nextSibling : live.firstChild);
      if (isScript(freshChild)) {
        // A script pairs with the same script among these children, wherever it is, and never moves; one
        // the page lacks is never inserted (scriptChange vetted that it is not new code).
        if (!byScript) byScript = this.scriptsAmong(live);
        var same = byScript[scriptSignature(freshChild, this.base)];
        partner = same && same.shift();
        if (partner) {
          this.used.add(partner);
          if (partner === cursor) last = partner;
        }
        continue;
      }
      partner = this.partnerOf(live, cursor, freshChild);
      if (!partner) {
        // A new element holding persistent ids is built empty and filled by the morph, so that they move in.
        var holds = this.freshIds.get(freshChild);
        partner = holds ? this.document.importNode(freshChild, false) : this.create(freshChild);
        live.insertBefore(partner, cursor);
        this.changes += 1;
        this.used.add(partner);
        last = partner;
        if (holds) this.children(partner, freshChild);
        continue;
      }
      this.used.add(partner);
      if (partner !== cursor) {
        if (partner.parentNode === live && this.between(cursor, partner, freshChild)) {
          // Everything between is wanted by nothing that follows: it goes, and the partner stays put.
          while (cursor !== partner) {
            var gone = cursor;
            cursor = skipped(cursor.nextSibling);
            if (!this.used.has(gone)) this.remove(gone);
          }
        } else {
          this.move(live, partner, cursor);
        }
      }
      last = partner;
      this.node(partner, freshChild);
    }
    cursor = skipped(last ? last.nextSibling : live.firstChild);
    while (cursor) {
      var rest = cursor;
      cursor = skipped(cursor.nextSibling);
      if (!this.used.has(rest)) this.removeLeftover(live, rest);
    }
  };

  // Whether the live nodes from ``cursor`` up to ``partner`` can all go: none is unchanged in one of the
  // new siblings that follow (those holding persistent ids wait in the pantry).
  Morph.prototype.between = function (cursor, partner, fresh) {
    var count = 0;
    for (var node = cursor; node && node !== partner; node = node.nextSibling) {
      if (node.nodeType !== 1 || isUi(node) || isScript(node) || this.used.has(node)) continue;
      if ((count += 1) > LOOKAHEAD_SAME) return false;
      for (var next = fresh.nextSibling, seen = 0; next && seen < LOOKAHEAD; next = next.nextSibling, seen += 1) {
        if (next.nodeType === 1 && this.compatible(node, next) && sameContent(node, next)) return false;
      }
    }
    return node === partner;
  };

  Morph.prototype.removeLeftover = function (parent, node) {
    // In <head>, what the page's own scripts added stays; what the server's HTML dropped goes.
    if (parent.tagName === "HEAD" && node.nodeType === 1 && this.serverHead && !this.serverHead.has(node)) return;
    this.remove(node);
  };

  Morph.prototype.scriptsAmong = function (live) {
    var found = {};
    for (var node = live.firstChild; node; node = node.nextSibling) {
      if (!isScript(node) || isOwnScript(node) || this.used.has(node)) continue;
      var signature = scriptSignature(node, this.base);
      (found[signature] = found[signature] || []).push(node);
    }
    return found;
  };

  Morph.prototype.node = function (live, fresh) {
    if (live.nodeType !== 1) {
      if (live.nodeValue !== fresh.nodeValue) { live.nodeValue = fresh.nodeValue; this.changes += 1; }
      return;
    }
    if (isScript(live) || (isStylesheetLink(live) && sameAttributes(live, fresh))) return;
    if (isPermanent(live)) return;  // the page's to keep as it is
    if (sameContent(live, fresh)) return;
    if (isStylesheetLink(live)) {
      // Another sheet under the same element: the new one goes in beside it and the old goes once it loaded.
      var sheet = this.create(fresh);
      live.parentNode.insertBefore(sheet, live.nextSibling);
      this.used.add(sheet);
      this.remove(live);
      return;
    }
    this.attributes(live, fresh);
    if (live.tagName === "NOSCRIPT") return;  // inert while scripting is on: kept as the page has it
    if (live.tagName === "TEXTAREA") {
      // The text is the default value: what the reader typed (the current value) stays.
      if (live.defaultValue !== fresh.textContent) { live.defaultValue = fresh.textContent; this.changes += 1; }
    } else if (live.tagName === "TEMPLATE") {
      if (live.innerHTML !== fresh.innerHTML) { live.innerHTML = fresh.innerHTML; this.changes += 1; }
    } else if (live.tagName === "HEAD") {
      this.head(live, fresh);
    } else {
      this.children(live, fresh);
    }
  };

  // Attributes are read from snapshots and every change is guarded: a custom element whose callback adds
  // or removes attributes while the morph sets another (as <turbo-frame> does) cannot derail the loop, and
  // one the browser refuses to set is a reason to reload rather than an exception halfway through.
  Morph.prototype.attributes = function (live, fresh) {
    var wanted = Array.prototype.slice.call(fresh.attributes), present = Array.prototype.slice.call(live.attributes);
    var i, attribute, name;
    for (i = 0; i < wanted.length; i++) {
      attribute = wanted[i];
      name = attribute.localName;
      if (name === "nonce" || isReadersAttribute(live, name)) continue;
      try {
        if (live.getAttributeNS(attribute.namespaceURI, name) !== attribute.value) {
          live.setAttributeNS(attribute.namespaceURI, attribute.name, attribute.value);
          this.changes += 1;
        }
      } catch (error) {
        this.failures.push("could not set " + attribute.name + " on <" + live.localName + "> (" + error.name + ")");
      }
    }
    for (i = 0; i < present.length; i++) {
      attribute = present[i];
      name = attribute.localName;
      if (name === "nonce" || isReadersAttribute(live, name)) continue;
      try {
        if (!fresh.hasAttributeNS(attribute.namespaceURI, name) && live.hasAttributeNS(attribute.namespaceURI, name)) {
          live.removeAttributeNS(attribute.namespaceURI, name);
          this.changes += 1;
        }
      } catch (error) {
        this.failures.push("could not remove " + attribute.name + " from <" + live.localName + "> (" + error.name + ")");
      }
    }
  };

  // <head>: elements pair by what they are (a sheet by its URL, a script by its code, anything else by its
  // tag, attributes and content; the title and id'd elements are updated). New ones go in after the
  // element their predecessor paired with, so the order of the cascade holds.
  function headKey(element, base) {
    if (isScript(element)) return "script " + scriptSignature(element, base);
    if (isStylesheetLink(element)) {
      return "sheet " + withoutBuster(element.getAttribute("href"), base) + " " + (element.getAttribute("media") || "");
    }
    if (element.tagName === "TITLE") return "title";
    if (idOf(element)) return "#" + idOf(element);
    var attributes = [];
    for (var i = 0; i < element.attributes.length; i++) {
      var attribute = element.attributes[i];
      if (attribute.localName !== "nonce") attributes.push(attribute.name + "=" + attribute.value);
    }
    return element.localName + " " + attributes.sort().join(" ") + " " + element.innerHTML;
  }

  Morph.prototype.head = function (live, fresh) {
    var byKey = {}, node, key, after = null;
    for (node = live.firstElementChild; node; node = node.nextElementSibling) {
      if (isUi(node) || isOwnScript(node)) continue;
      key = headKey(node, this.base);
      (byKey[key] = byKey[key] || []).push(node);
    }
    for (var freshChild = fresh.firstElementChild; freshChild; freshChild = freshChild.nextElementSibling) {
      key = headKey(freshChild, this.base);
      var partner = byKey[key] && byKey[key].shift();
      if (partner) {
        this.used.add(partner);
        if (key === "title" || key.charAt(0) === "#") this.node(partner, freshChild);
        after = partner;
        continue;
      }
      if (isScript(freshChild)) continue;  // never inserted: scriptChange vetted it
      var created = this.create(freshChild);
      live.insertBefore(created, after ? after.nextSibling : live.firstChild);
      this.used.add(created);
      this.changes += 1;
      after = created;
    }
    for (node = live.firstElementChild; node;) {
      var next = node.nextElementSibling;
      if (!this.used.has(node) && !isUi(node) && !isOwnScript(node)) this.removeLeftover(live, node);
      node = next;
    }
  };

  // What is left once the morph went through: the pantry's leftovers go, moved containers get their
  // scroll back, and outgoing stylesheets go once the incoming ones have loaded.
  Morph.prototype.finish = function () {
    if (this.pantry && this.pantry.parentNode) this.pantry.parentNode.removeChild(this.pantry);
    for (var i = 0; i < this.moved.length; i++) {
      var entry = this.moved[i];
      if (entry.element.isConnected) {
        entry.element.scrollTop = entry.top;
        entry.element.scrollLeft = entry.left;
      }
    }
    var waiting = this.newSheets.length, stale = this.staleSheets;
    function retire() {
      for (var j = 0; j < stale.length; j++) if (stale[j].parentNode) stale[j].parentNode.removeChild(stale[j]);
    }
    if (!waiting) { retire(); return; }
    var settle = function () { waiting -= 1; if (!waiting) retire(); };
    for (i = 0; i < this.newSheets.length; i++) {
      var sheet = this.newSheets[i];
      if (sheet.sheet) { settle(); continue; }  // already loaded (from the cache)
      sheet.addEventListener("load", settle);
      sheet.addEventListener("error", settle);
    }
  };

  // The <head> elements that came from the server's HTML, so that a morph can tell them from those the
  // page's own scripts added: the ones there when the client started, then whatever each morph put there.
  function HeadMemory(document) {
    this.elements = new WeakSet();
    if (document.head) for (var node = document.head.firstElementChild; node; node = node.nextElementSibling) this.elements.add(node);
  }

  HeadMemory.prototype.has = function (element) { return this.elements.has(element); };

  HeadMemory.prototype.record = function (head) {
    for (var node = head.firstElementChild; node; node = node.nextElementSibling) this.elements.add(node);
  };

  // Morph ``liveDocument`` into ``freshDocument`` (parsed from the page's new HTML). Returns {changes} or,
  // when the morph cannot be trusted, {reason}: nothing was changed when the scripts forbid it; when an
  // attribute could not be set or something threw midway, the caller reloads in full.
  function morphDocument(liveDocument, freshDocument, base, headMemory) {
    base = base || liveDocument.baseURI;
    if (!freshDocument.body || !freshDocument.head) return { reason: "the new page has no body" };
    var reason = scriptChange(liveDocument, freshDocument, base);
    if (reason) return { reason: reason };
    inertNoscripts(freshDocument);
    var view = liveDocument.defaultView, focused = liveDocument.activeElement;
    var selection = focused && readSelection(focused);
    var scrollX = view ? view.scrollX : 0, scrollY = view ? view.scrollY : 0;
    var pageAdded = null;
    if (headMemory) {
      // Page-added head elements: those not recorded as the server's.
      pageAdded = [];
      for (var node = liveDocument.head.firstElementChild; node; node = node.nextElementSibling) {
        if (!headMemory.has(node)) pageAdded.push(node);
      }
    }
    var morph = new Morph(liveDocument.documentElement, freshDocument.documentElement, base,
      headMemory || { has: function () { return true; } });
    try {
      morph.attributes(liveDocument.documentElement, freshDocument.documentElement);
      morph.node(liveDocument.head, freshDocument.head);
      morph.node(liveDocument.body, freshDocument.body);
    } finally {
      morph.finish();
    }
    if (headMemory) {
      headMemory.record(liveDocument.head);
      // What the page added stays the page's: not the server's, whatever a morph did around it.
      for (var i = 0; i < pageAdded.length; i++) headMemory.elements.delete(pageAdded[i]);
    }
    // Moving an element may blur it: put focus and caret back where the reader left them.
    if (focused && focused !== liveDocument.activeElement && focused.isConnected && focused.focus) {
      focused.focus({ preventScroll: true });
      if (selection) {
        try { focused.setSelectionRange(selection.start, selection.end, selection.direction); } catch (e) { /* */ }
      }
    }
    if (view && (view.scrollX !== scrollX || view.scrollY !== scrollY)) view.scrollTo(scrollX, scrollY);
    if (morph.failures.length) return { reason: morph.failures[0], changes: morph.changes };
    return { changes: morph.changes };
  }

  // Morph one element into a parsed one (the client's tests use it on parts of a page).
  function morphElement(live, fresh, base) {
    inertNoscripts(fresh);
    var morph = new Morph(live, fresh, base || live.ownerDocument.baseURI, null);
    try {
      morph.node(live, fresh);
    } finally {
      morph.finish();
    }
    return morph.changes;
  }

  // --- stylesheets and images swapped in place -----------------------------------------------------------

  // The CSS kind: each wanted stylesheet gets a fresh copy inserted after it; the old one goes only once
  // the new one has loaded, so the page never shows unstyled. Returns how many were swapped.
  function swapStylesheets(document, paths, version) {
    var links = document.querySelectorAll('link[rel~="stylesheet"][href]');
    var swapped = 0;
    for (var i = 0; i < links.length; i++) {
      var link = links[i];
      if (link.__distreloadReplaced) continue;
      var href = bustUrl(link.href, document.baseURI, paths, version);
      if (!href) continue;
      replaceLink(link, href);
      swapped += 1;
    }
    return swapped;
  }

  function replaceLink(link, href) {
    var fresh = link.cloneNode(false);
    if (link.nonce) fresh.nonce = link.nonce;
    fresh.href = href;
    link.__distreloadReplaced = true;
    fresh.addEventListener("load", function () { if (link.parentNode) link.parentNode.removeChild(link); });
    fresh.addEventListener("error", function () {
      // Keep the old sheet when the new one fails: a broken request must not unstyle the page.
      if (fresh.parentNode) fresh.parentNode.removeChild(fresh);
      link.__distreloadReplaced = false;
    });
    link.parentNode.insertBefore(fresh, link.nextSibling);
  }

  // The images kind, as livereload.js does it: every wanted image URL in <img src/srcset>, <picture>
  // sources, inline styles and same-origin stylesheets is fetched again with a cache-buster, and swapped in
  // only once the new image has loaded (so nothing blinks). Returns how many uses were refreshed.
  function refreshImages(document, paths, version) {
    var base = document.baseURI, count = 0, i, element;
    function whenLoaded(src, srcset, sizes, swap) {
      var probe = new Image();
      probe.onload = swap;  // on error the old image stays
      if (srcset) { probe.sizes = sizes || ""; probe.srcset = srcset; }
      if (src) probe.src = src;
    }
    var images = document.querySelectorAll("img");
    for (i = 0; i < images.length; i++) {
      (function (image) {
        var src = image.getAttribute("src"), srcset = image.getAttribute("srcset");
        var newSrc = src && bustUrl(src, base, paths, version);
        var newSrcset = srcset && bustSrcset(srcset, base, paths, version);
        if (!newSrc && !newSrcset) return;
        count += 1;
        whenLoaded(newSrc || src, newSrcset || srcset, image.getAttribute("sizes"), function () {
          if (newSrcset) image.srcset = newSrcset;
          if (newSrc) image.src = newSrc;
        });
      })(images[i]);
    }
    var sources = document.querySelectorAll("picture > source[srcset]");
    for (i = 0; i < sources.length; i++) {
      var busted = bustSrcset(sources[i].getAttribute("srcset"), base, paths, version);
      if (busted) { sources[i].srcset = busted; count += 1; }
    }
    function refreshStyle(style, styleBase) {
      var value = style.backgroundImage;
      var fresh = value && value.indexOf("url(") !== -1 && bustCssUrls(value, styleBase, paths, version);
      if (!fresh) return;
      count += 1;
      var first = /url\("([^"]+)"\)/.exec(fresh);
      whenLoaded(first && first[1], null, null, function () { style.backgroundImage = fresh; });
    }
    var styled = document.querySelectorAll("[style]");
    for (i = 0; i < styled.length; i++) {
      element = styled[i];
      if (!isUi(element)) refreshStyle(element.style, base);
    }
    function walk(rules, sheetBase) {
      for (var j = 0; j < rules.length; j++) {
        if (rules[j].style) refreshStyle(rules[j].style, sheetBase);
        if (rules[j].cssRules) walk(rules[j].cssRules, sheetBase);
      }
    }
    for (i = 0; i < document.styleSheets.length; i++) {
      var sheet = document.styleSheets[i], rules;
      try { rules = sheet.cssRules; } catch (e) { continue; }  // another origin's sheet: not ours to read
      walk(rules, sheet.href || base);
    }
    return count;
  }

  // --- the overlay and the indicator ------------------------------------------------------------------------
  //
  // Plain DOM in an open shadow root, under <distreload-ui id="distreload-ui"> appended to <html> (outside
  // <body>, which a morph rewrites). The page's styles do not reach in (the host resets everything, the
  // shadow root scopes the rest) and ours do not reach out. Constructable stylesheets are used because a
  // strict Content-Security-Policy blocks <style> elements and style attributes, but not the CSSOM.

  var UI_CSS = [
    ":host { all: initial !important; }",
    "[hidden] { display: none !important; }",
    ".overlay { position: fixed; top: 0; right: 0; bottom: 0; left: 0; z-index: 2147483647; overflow: auto;",
    "  box-sizing: border-box; padding: 8vh 16px; background: rgba(24, 24, 28, 0.72);",
    "  font: 14px/1.5 system-ui, -apple-system, 'Segoe UI', sans-serif; color: #1d1d1f; text-align: left; }",
    ".panel { box-sizing: border-box; max-width: 860px; margin: 0 auto; padding: 18px 22px; background: #fff;",
    "  border-top: 6px solid #c62828; border-radius: 6px; box-shadow: 0 12px 40px rgba(0, 0, 0, 0.45); }",
    ".title { margin: 0 0 10px; font-size: 18px; font-weight: 600; color: #b71c1c; }",
    ".body { margin: 0 0 12px; padding: 10px 12px; max-height: 45vh; overflow: auto; background: #f4f4f6;",
    "  border-radius: 4px; font: 12px/1.5 ui-monospace, Menlo, Consolas, monospace; white-space: pre-wrap;",
    "  word-break: break-word; color: #1d1d1f; }",
    ".wait { margin: 0; color: #4a4a4f; }",
    ".footer { display: flex; align-items: center; justify-content: space-between; gap: 12px; }",
    "button { font: 12px/1.4 system-ui, sans-serif; padding: 3px 10px; border: 1px solid #bbb;",
    "  border-radius: 4px; background: #fafafa; color: #1d1d1f; cursor: pointer; }",
    ".indicator { position: fixed; right: 12px; bottom: 12px; z-index: 2147483647; display: flex;",
    "  align-items: center; gap: 7px; padding: 4px 11px; border-radius: 999px; background: rgba(28, 28, 32, 0.86);",
    "  color: #fff; font: 12px/1.6 system-ui, -apple-system, 'Segoe UI', sans-serif; }",
    ".indicator button { padding: 0 8px; border-color: #777; background: transparent; color: #fff; }",
    ".dot { width: 8px; height: 8px; border-radius: 50%; background: #f0a020; }",
    ".paused .dot { background: #9a9aa0; }"
  ].join("\n");

  function Ui(document) {
    this.document = document;
    this.host = null;
    this.parts = null;
    this.dismissed = false;
  }

  Ui.prototype.build = function () {
    if (this.host && this.host.isConnected) return this.parts;
    var document = this.document;
    var host = this.host = document.createElement("distreload-ui");
    host.id = "distreload-ui";
    host.setAttribute(UI_ATTRIBUTE, "");
    host.style.setProperty("all", "initial", "important");
    var root = host.attachShadow({ mode: "open" });
    try {
      var sheet = new CSSStyleSheet();
      sheet.replaceSync(UI_CSS);
      root.adoptedStyleSheets = [sheet];
    } catch (e) {
      var style = document.createElement("style");
      style.textContent = UI_CSS;
      root.appendChild(style);
    }
    function make(parent, tag, className, text) {
      var element = document.createElement(tag);
      if (className) element.className = className;
      if (text) element.textContent = text;
      parent.appendChild(element);
      return element;
    }
    var parts = this.parts = {};
    parts.overlay = make(root, "div", "overlay");
    parts.overlay.setAttribute("role", "alertdialog");
    parts.overlay.hidden = true;
    var panel = make(parts.overlay, "div", "panel");
    parts.title = make(panel, "p", "title");
    parts.body = make(panel, "pre", "body");
    var footer = make(panel, "div", "footer");
    parts.wait = make(footer, "p", "wait");
    var self = this;
    make(footer, "button", "dismiss", "hide").addEventListener("click", function () {
      self.dismissed = true;
      parts.overlay.hidden = true;
    });
    parts.indicator = make(root, "div", "indicator");
    parts.indicator.setAttribute("role", "status");
    parts.indicator.hidden = true;
    make(parts.indicator, "span", "dot");
    parts.indicatorText = make(parts.indicator, "span", "text");
    parts.resume = make(parts.indicator, "button", "resume", "resume");
    (document.documentElement || document).appendChild(host);
    return parts;
  };

  Ui.prototype.showOverlay = function (title, body, wait) {
    if (this.dismissed) return;
    var parts = this.build();
    parts.title.textContent = title;
    parts.body.textContent = body;
    parts.body.hidden = !body;
    parts.wait.textContent = wait;
    parts.overlay.hidden = false;
  };

  Ui.prototype.hideOverlay = function () {
    this.dismissed = false;
    if (this.parts) this.parts.overlay.hidden = true;
  };

  // ``state`` is "lost", "paused" or null (hidden); ``onResume`` is what the resume button does.
  Ui.prototype.showIndicator = function (state, text, onResume) {
    if (!state && !this.parts) return;
    var parts = this.build();
    parts.indicator.hidden = !state;
    parts.indicator.className = "indicator " + (state || "");
    parts.indicatorText.textContent = text || "";
    parts.resume.hidden = !onResume;
    parts.resume.onclick = onResume || null;
  };

  // The first lines of an error page as text (its markup parsed, never rendered or run).
  function firstLines(body, contentType) {
    var text = body || "";
    if (contentType ? /html/i.test(contentType) : /^\s*</.test(text)) {
      try {
        var parsed = new DOMParser().parseFromString(text, "text/html");
        var removed = parsed.querySelectorAll("script, style, template");
        for (var i = 0; i < removed.length; i++) removed[i].parentNode.removeChild(removed[i]);
        text = (parsed.title ? parsed.title + "\n" : "") + (parsed.body ? parsed.body.textContent : "");
      } catch (e) { /* a Trusted Types policy forbids parsing: show the markup */ }
    }
    var lines = text.split(/\r?\n/).map(function (line) { return line.replace(/\s+$/, "").slice(0, 240); });
    var kept = [];
    for (var j = 0; j < lines.length && kept.length < OVERLAY_LINES; j++) {
      if (!lines[j] && (!kept.length || !kept[kept.length - 1])) continue;  // no runs of blank lines
      kept.push(lines[j]);
    }
    return kept.join("\n").replace(/\n+$/, "");
  }

  // What the overlay says of an error answer: the server's report of the exception behind it (see
  // distreload/errors.py) when the check got one, else the first lines of the page the framework sent.
  function errorText(body, contentType) {
    var report = /^\s*application\/vnd\.distreload\.error\+json/i.test(contentType || "") ? safeJson(body) : null;
    return report && typeof report.type === "string" ? errorReport(report) : firstLines(body, contentType);
  }

  // The report as text, laid out as Python prints a traceback: the exception, the template or source line
  // it points at, then the frames in the user's code, innermost last. Shown with textContent, never parsed.
  function errorReport(report) {
    var lines = [report.type + (report.message ? ": " + report.message : "")];
    (report.causes || []).forEach(function (cause) { lines.push("  raised from " + cause); });
    var where = report.location;
    if (where && where.file) {
      lines.push("", "  File \"" + where.file + "\", line " + where.line);
      if (where.code) lines.push("    " + where.code);
    }
    var frames = report.frames || [];
    if (frames.length) {
      lines.push("", "Traceback in your code (most recent call last):");
      for (var i = 0; i < frames.length; i++) {
        var frame = frames[i];
        lines.push("  File \"" + frame.file + "\", line " + frame.line + ", in " + frame.function);
        if (frame.code) lines.push("    " + frame.code);
      }
    }
    if (report.other_frames) {
      lines.push("", "(" + report.other_frames + " frame" + (report.other_frames === 1 ? "" : "s") +
        " of the framework, libraries and Python not shown)");
    }
    return lines.join("\n");
  }

  // --- what a tab remembers across its own reloads ----------------------------------------------------------

  // The version this tab acted on last, the build it reloaded for and whether it is paused, kept in
  // sessionStorage (per tab, per distreload base): a page re-rendered by a worker that has not heard of the
  // newest version yet must not reload a second time for it.
  function TabMemory(storage, key) {
    this.storage = storage;
    this.key = key;
  }

  TabMemory.prototype.read = function () {
    try { return safeJson(this.storage.getItem(this.key)) || {}; } catch (e) { return {}; }
  };

  TabMemory.prototype.write = function (changes) {
    var memory = this.read();
    for (var key in changes) memory[key] = changes[key];
    try { this.storage.setItem(this.key, JSON.stringify(memory)); } catch (e) { /* private mode */ }
  };

  TabMemory.prototype.remember = function (version, build) {
    var changes = { version: version };
    if (build) changes.build = build;
    this.write(changes);
  };

  // --- the plan: which reloads this page follows, and when -------------------------------------------------
  //
  // Reads the stream's hello and reload messages and decides what the page does: nothing (seen already, or
  // for other pages: match), wait (paused; a random time within spread), or carry out one plan at a time,
  // merged with whatever comes meanwhile. Knows neither the network nor the DOM; ``hooks`` act:
  //   carryOut(plan)  the plan's time has come (it stays current until finish())
  //   busy()          whether carrying out the current plan is still under way
  //   cancel()        stop carrying it out (paused meanwhile)
  //   changed()       paused, or what waits for resume(), changed (the indicator)
  //   log(text)
  function ReloadPlan(status, memory, pathname, pageBuild, hooks) {
    this.status = status;
    this.memory = memory;
    this.pathname = pathname;
    this.pageBuild = pageBuild;
    this.hooks = hooks;
    this.current = null;
    this.missed = null;
    this.catchUp = null;
    this.timer = null;
    this.remembered = memory.read();
    if (this.remembered.version) {
      var page = parseVersion(status.version), known = parseVersion(this.remembered.version);
      if (known && (!page || (page.epoch === known.epoch && page.number < known.number))) status.version = this.remembered.version;
    }
  }

  ReloadPlan.prototype.hello = function (message) {
    var status = this.status;
    if (this.pageBuild && message.build && message.build !== this.pageBuild) {
      if (this.remembered.build === message.build) {
        // Already reloaded once for this build and the page still says otherwise (a worker whose code
        // differs): reloading again could never settle it, so take it as this page's build.
        this.pageBuild = message.build;
      } else {
        this.accept({ kind: "reload", version: newer(status.version, message.version), paths: [], build: message.build,
          reason: "the server's code changed" });
        return;
      }
    }
    if (isBehind(status.version, message.version)) {
      this.expectCatchUp(message.version);
    } else {
      var mine = parseVersion(status.version), theirs = parseVersion(message.version);
      if (theirs && (!mine || mine.epoch !== theirs.epoch)) status.version = message.version;  // a new count
    }
  };

  // After a hello that shows a missed reload, the server sends that reload next; a full reload happens only
  // if it does not.
  ReloadPlan.prototype.expectCatchUp = function (version) {
    var self = this;
    if (this.catchUp && !isBehind(this.catchUp.version, version)) return;
    if (this.catchUp) clearTimeout(this.catchUp.timer);
    this.catchUp = { version: version, timer: setTimeout(function () {
      self.catchUp = null;
      if (isBehind(self.status.version, version)) {
        self.accept({ kind: "reload", version: version, paths: [], reason: "missed reload " + version });
      }
    }, CATCH_UP_GRACE) };
  };

  ReloadPlan.prototype.reload = function (message) {
    if (this.catchUp && !isBehind(message.version, this.catchUp.version)) {
      clearTimeout(this.catchUp.timer);
      this.catchUp = null;
    }
    if (!isBehind(this.status.version, message.version)) return;
    var kind = KINDS[message.kind] ? message.kind : "reload";
    if (!matchesGlob(message.match, this.pathname())) {
      // Not for this page; still seen, so that no later hello takes it for a missed reload.
      this.status.version = message.version;
      this.memory.remember(message.version);
      this.hooks.log(kind + " " + message.version + " is for " + message.match + ", not this page");
      return;
    }
    this.accept({ kind: kind, version: message.version, paths: message.paths || [], spread: message.spread,
      reason: kind + " " + message.version });
  };

  // At most one plan at a time, merged with whatever comes meanwhile.
  ReloadPlan.prototype.accept = function (incoming) {
    var status = this.status, self = this;
    status.version = newer(status.version, incoming.version);
    if (status.paused) {
      this.missed = mergePlans(this.missed, incoming);
      this.hooks.changed();
      return;
    }
    this.current = mergePlans(this.current, incoming);
    status.pending = this.current.kind;
    status.reloading = true;
    if (this.timer || this.hooks.busy()) return;  // the merged plan goes when the one waiting does
    var wait = incoming.spread > 0 ? Math.round(Math.random() * incoming.spread * 1000) : 0;
    if (wait) this.hooks.log(incoming.reason + " in " + (wait / 1000).toFixed(1) + " s (spread over " + incoming.spread + " s)");
    this.timer = setTimeout(function () {
      self.timer = null;
      if (self.current) self.hooks.carryOut(self.current);
    }, wait);
  };

  // The current plan was carried out (or handed to a full reload): remember it.
  ReloadPlan.prototype.done = function (plan) {
    this.memory.remember(plan.version, plan.build);
  };

  ReloadPlan.prototype.finish = function () {
    this.current = null;
    this.status.pending = null;
    this.status.reloading = false;
  };

  ReloadPlan.prototype.pause = function () {
    if (this.status.paused) return;
    this.status.paused = true;
    this.memory.write({ paused: true });
    if (this.current) {
      // What was about to happen waits for resume() too.
      this.missed = mergePlans(this.missed, this.current);
      if (this.timer) { clearTimeout(this.timer); this.timer = null; }
      this.hooks.cancel();
      this.finish();
    }
    this.hooks.changed();
    this.hooks.log("paused: reloads wait until distreload.resume()");
  };

  ReloadPlan.prototype.resume = function () {
    if (!this.status.paused) return;
    this.status.paused = false;
    this.memory.write({ paused: false });
    this.hooks.changed();
    var waiting = this.missed;
    this.missed = null;
    this.hooks.log(waiting ? "resumed: catching up with " + waiting.version : "resumed");
    if (waiting) this.accept(waiting);
  };

  // --- the check before acting: the page fetches itself first -------------------------------------------
  //
  // A reload or morph acts only on a good answer: a server error or no answer at all shows the overlay and
  // tries again with the backoff, so the tab never lands on an error page; while the old code still answers
  // (a worker not yet restarted for a new build) it waits too. ``currentPlan()`` is the plan as it stands
  // (reloads merge into it while a check is under way); ``ready(plan, response, body, requested,
  // fetchedFor)`` gets the good answer (for a morph, what gets applied) and the version it was fetched for.
  function PageCheck(window, options, ui, status, log, currentPlan, ready) {
    this.window = window;
    this.options = options;
    this.ui = ui;
    this.status = status;
    this.log = log;
    this.currentPlan = currentPlan;
    this.ready = ready;
    this.running = false;
    this.underWay = null;  // the fetch under way: one that was cancelled or overtaken is ignored
    this.timer = null;
    this.attempt = 0;
    this.failedFor = "";  // the version the overlay shown is for: the reload this page could not apply
  }

  PageCheck.prototype.busy = function () {
    return this.running;
  };

  PageCheck.prototype.pageUrl = function () {
    return this.window.location.href.split("#")[0];
  };

  PageCheck.prototype.run = function () {
    var self = this, plan = this.currentPlan(), token = {};
    this.timer = null;
    this.running = Boolean(plan);
    if (!plan) return;
    this.underWay = token;
    var requested = this.pageUrl(), fetchedFor = plan.version;
    this.window.fetch(requested, { cache: "no-store", credentials: "same-origin",
      // The header asks the server for the exception behind an error: only this request is told it.
      headers: { Accept: ACCEPT_HTML, "X-Distreload-Check": "1" } })
      .then(function (response) {
        return response.text().then(function (body) { return { response: response, body: body }; });
      })
      .then(function (answer) {
        if (self.underWay !== token) return;
        if (answer.response.status >= 500) self.failed(answer.response, answer.body);
        else self.answered(answer.response, answer.body, requested, fetchedFor);
      }, function () {  // no answer, or the connection broke off mid-page
        if (self.underWay === token) self.failed(null, "");
      });
  };

  PageCheck.prototype.retry = function (delay) {
    var self = this;
    this.underWay = null;
    this.timer = setTimeout(function () { self.run(); }, delay);
  };

  PageCheck.prototype.failed = function (response, body) {
    var plan = this.currentPlan(), delay = backoffDelay(this.options, this.attempt);
    if (!plan) { this.cancel(); return; }
    this.attempt += 1;
    var title = response ? "the server answered " + response.status + (response.statusText ? " " + response.statusText : "")
      : this.window.navigator.onLine === false ? "this browser is offline" : "no answer from the server";
    var wait = "waiting for the server: this page " + (plan.kind === "morph" ? "updates" : "reloads") +
      " once it answers (next check in " + Math.max(1, Math.round(delay / 1000)) + " s)";
    this.log(plan.reason + " waits: " + title + "; next check in " + delay + " ms");
    if (this.options.overlay) {
      this.ui.showOverlay("distreload: " + title, response ? errorText(body, response.headers.get("content-type")) : "",
        wait);
      this.status.overlay = true;
      this.failedFor = plan.version || "";
    }
    this.retry(delay);
  };

  PageCheck.prototype.answered = function (response, body, requested, fetchedFor) {
    var plan = this.currentPlan();
    if (!plan) { this.cancel(); return; }
    if (plan.build) {
      var served = /data-distreload-build="([^"]*)"/.exec(body);
      if (served && served[1] !== plan.build) {
        // The old code still answers (a worker not yet restarted): wait for the new one.
        this.retry(backoffDelay(this.options, this.attempt));
        this.attempt += 1;
        return;
      }
    }
    this.attempt = 0;
    this.underWay = null;
    this.running = false;
    this.hideOverlay();
    this.ready(plan, response, body, requested, fetchedFor);
  };

  PageCheck.prototype.hideOverlay = function () {
    this.ui.hideOverlay();
    this.status.overlay = false;
    this.failedFor = "";
  };

  PageCheck.prototype.cancel = function () {
    if (this.timer) { clearTimeout(this.timer); this.timer = null; }
    this.underWay = null;
    this.running = false;
    this.hideOverlay();
  };

  // Back online or visible again: check now instead of waiting out the backoff.
  PageCheck.prototype.wake = function () {
    if (!this.timer) return;
    clearTimeout(this.timer);
    this.timer = null;
    this.attempt = 0;
    this.run();
  };

  // Why a good answer cannot be morphed in, or "".
  function morphRefusal(response, requested) {
    if (response.redirected || response.url.split("#")[0] !== requested) {
      return "the page now redirects to " + response.url;
    }
    if (!response.ok) return "the page answered " + response.status;
    var type = response.headers.get("content-type") || "";
    if (!/^\s*(text\/html|application\/xhtml\+xml)/i.test(type)) return "the page is no longer HTML (" + type + ")";
    return "";
  }

  // --- one stream per browser: the tab holding the lock holds the stream ----------------------------------
  //
  // Every message of the stream goes to ``handle`` in every tab, the leader's included. ``resumeFrom()``
  // says which version a new stream resumes from (the newest this tab heard of).
  function StreamShare(window, base, options, status, handle, resumeFrom) {
    this.window = window;
    this.base = base;
    this.options = options;
    this.status = status;
    this.handle = handle;
    this.resumeFrom = resumeFrom;
    this.connection = null;
    this.channel = null;
    this.releaseLock = null;
    this.lockAbort = null;
  }

  StreamShare.prototype.active = function () {
    return Boolean(this.connection || this.channel);
  };

  StreamShare.prototype.start = function () {
    var navigator = this.window.navigator;
    var sharing = this.options.share_connection && navigator.locks && typeof navigator.locks.request === "function" &&
      typeof this.window.BroadcastChannel === "function";
    if (sharing) this.join(); else this.own();
  };

  StreamShare.prototype.own = function () {
    this.status.mode = "page";
    this.connection = new Connection(this.base, this.options, this.handle, this.resumeFrom());
    this.connection.start();
  };

  StreamShare.prototype.join = function () {
    var self = this, name = "distreload " + this.base, window = this.window;
    this.status.mode = "shared";
    var channel = this.channel = new window.BroadcastChannel(name);
    channel.onmessage = function (event) {
      var message = event.data || {};
      var connection = self.connection;
      if (message.type === "join") {
        // A tab that just opened: tell it where the stream stands.
        if (connection && connection.connected && connection.state) channel.postMessage(connection.state);
        else if (connection) channel.postMessage({ type: "down", quiet: true });
      } else if (message.type === "wake") {
        if (connection) connection.wake();
      } else {
        self.handle(message);
      }
    };
    this.lockAbort = typeof window.AbortController === "function" ? new window.AbortController() : null;
    window.navigator.locks.request(name, this.lockAbort ? { signal: this.lockAbort.signal } : {}, function () {
      // Held until this page goes (or leaves the back-forward cache's way): then the next tab in the queue leads.
      return new Promise(function (release) {
        self.releaseLock = release;
        self.lead();
      });
    }).catch(function () { /* the request was withdrawn: this page left */ });
    channel.postMessage({ type: "join" });
  };

  StreamShare.prototype.lead = function () {
    var self = this, channel = this.channel;
    this.status.leader = true;
    this.connection = new Connection(this.base, this.options, function (message) {
      if (channel === self.channel) channel.postMessage(message);
      self.handle(message);
    }, this.resumeFrom());
    this.connection.start();
  };

  StreamShare.prototype.wake = function () {
    if (this.connection) this.connection.wake();
    else if (this.channel) this.channel.postMessage({ type: "wake" });
  };

  StreamShare.prototype.leave = function () {
    if (this.connection) { this.connection.stop(); this.connection = null; }
    this.status.leader = false;
    if (this.releaseLock) { this.releaseLock(); this.releaseLock = null; }
    if (this.lockAbort) { this.lockAbort.abort(); this.lockAbort = null; }
    if (this.channel) { this.channel.close(); this.channel = null; }
  };

  // --- page reports: what this tab shows, told to the worker ----------------------------------------------
  //
  // Each tab is one page, whether it holds the stream or shares it. It reports (POST <base>/page) its path,
  // the version it shows, how it got there and its state, and only when one of them changed: an idle page
  // sends nothing. The report names the stream the tab listens through (its hello gives the id): the worker
  // drops the pages of a stream that closes. A tab that goes says so at once with sendBeacon; one that
  // reloads for a reload says "reloading" instead, and the page it becomes reports under the same id (kept
  // in sessionStorage), "reloaded". A tab whose stream changed (its new document got another one, the tab
  // that held the stream it shared left) also names an earlier one ("was", kept with the id): the one it
  // listened through when the latest reload came (that stream's worker counts it for that reload, and
  // "came" names that reload, so that the worker of the new stream does not count it too), or before any
  // reload, the one before. Workers that share a port pass its reports on to the worker of each.
  function PageReport(window, base, storage, pathname) {
    this.window = window;
    this.base = base;
    this.storage = storage;
    this.pathname = pathname;
    this.key = "distreload:page:" + base;
    var kept = {};
    try { kept = safeJson(storage && storage.getItem(this.key)) || {}; } catch (e) { /* no storage */ }
    this.id = /^[0-9a-f]{16}$/.test(kept.id || "") ? kept.id : randomId(window);
    this.how = kept.reloading ? "reloaded" : "loaded";
    this.shown = kept.reloading || "";
    this.stream = "";
    this.previous = streamId(kept.stream);  // the last document's
    this.was = streamId(kept.was);
    this.pinned = Boolean(kept.pinned && this.was);  // "was" is the stream a reload came through
    this.came = this.pinned && typeof kept.came === "string" ? kept.came.slice(0, 64) : "";  // that reload
    this.excluded = "";
    this.last = "";
    this.gone = false;
    this.keep();
  }

  function streamId(text) {
    return /^[0-9a-f]{8,32}$/.test(text || "") ? text : "";
  }

  function randomId(window) {
    var bytes = new Uint8Array(8), id = "";
    if (window.crypto && window.crypto.getRandomValues) window.crypto.getRandomValues(bytes);
    else for (var i = 0; i < 8; i++) bytes[i] = Math.floor(Math.random() * 256);
    for (var j = 0; j < 8; j++) id += (bytes[j] < 16 ? "0" : "") + bytes[j].toString(16);
    return id;
  }

  PageReport.prototype.remember = function (memory) {
    try { if (this.storage) this.storage.setItem(this.key, JSON.stringify(memory)); } catch (e) { /* private mode */ }
  };

  // The stream's hello: the id of the stream this tab now listens through.
  PageReport.prototype.hello = function (stream) {
    if (!stream || stream === this.stream) return;
    var before = this.stream || this.previous;
    if (!this.pinned && before && before !== stream) this.was = before;
    this.stream = stream;
    this.keep();
  };

  // A reload came through the current stream: its worker counts this page for it, wherever it goes next.
  PageReport.prototype.reloadCame = function (version) {
    if (!this.stream) return;
    this.was = this.stream;
    this.pinned = true;
    this.came = version || "";
    this.keep();
  };

  PageReport.prototype.keep = function (reloading) {
    this.remember({ id: this.id, reloading: reloading, stream: this.stream || this.previous, was: this.was,
      pinned: this.pinned, came: this.came });
  };

  // What a report says of the stream it left: {was, came} (came: the reload that came through it).
  PageReport.prototype.earlier = function () {
    if (!this.was || this.was === this.stream) return {};
    return this.pinned && this.came ? { was: this.was, came: this.came } : { was: this.was };
  };

  PageReport.prototype.applied = function (how, version) {
    this.how = how;
    this.shown = newer(this.shown, version);
    this.excluded = "";
  };

  // A reload this page is not matched by: it still shows what it showed, and says why.
  PageReport.prototype.exclude = function (version) {
    this.excluded = version;
    this.shown = newer(this.shown, version);
  };

  // ``state``: {state, reason} or null while something is under way (nothing worth saying yet).
  PageReport.prototype.send = function (state) {
    if (this.gone || !state || !this.stream) return;
    var earlier = this.earlier();
    var report = JSON.stringify({ page: this.id, path: this.pathname().slice(0, 2048) || "/", version: this.shown,
      how: this.how, state: state.state, reason: (state.reason || "").slice(0, 200), stream: this.stream,
      was: earlier.was, came: earlier.came, trying: state.trying ? String(state.trying).slice(0, 64) : undefined });
    if (report === this.last) return;
    this.last = report;
    this.post(report, false);
  };

  PageReport.prototype.post = function (body, leaving) {
    var url = this.base + "/page", navigator = this.window.navigator;
    if (leaving && navigator.sendBeacon && navigator.sendBeacon(url, body)) return;
    try {
      this.window.fetch(url, { method: "POST", body: body, keepalive: true, credentials: "same-origin",
        headers: { "content-type": "text/plain" } }).catch(function () { /* the next change reports again */ });
    } catch (e) { /* no fetch: nothing is reported */ }
  };

  // This tab reloads for ``version``: the page it becomes reports "reloaded" under the same id.
  PageReport.prototype.reloading = function (version) {
    this.keep(version);
    this.last = "";
    this.send({ state: "reloading" });
    this.gone = true;
  };

  PageReport.prototype.leave = function () {
    if (this.gone) return;
    this.gone = true;
    this.last = "";
    var earlier = this.earlier();
    this.post(JSON.stringify({ page: this.id, leave: true, stream: this.stream || undefined, was: earlier.was,
      came: earlier.came }), true);
  };

  // Back from the back-forward cache: a page again.
  PageReport.prototype.back = function () {
    this.gone = false;
    this.last = "";
  };

  // --- the indicator: stream lost, or paused ------------------------------------------------------------

  // What the indicator shows follows the status; a stream back within LOST_GRACE never showed it.
  function Indicator(ui, options, status, onResume) {
    this.ui = ui;
    this.options = options;
    this.status = status;
    this.onResume = onResume;
    this.lostTimer = null;
    this.waiting = false;
  }

  Indicator.prototype.lost = function () {
    var self = this;
    if (this.lostTimer || this.status.lost) return;
    this.lostTimer = setTimeout(function () {
      self.lostTimer = null;
      self.status.lost = true;
      self.show();
    }, LOST_GRACE);
  };

  Indicator.prototype.back = function () {
    if (this.lostTimer) { clearTimeout(this.lostTimer); this.lostTimer = null; }
    if (this.status.lost) { this.status.lost = false; this.show(); }
  };

  Indicator.prototype.show = function () {
    if (!this.options.indicator) return;
    if (this.status.paused) {
      this.ui.showIndicator("paused", "distreload paused" + (this.waiting ? ": a reload is waiting" : ""), this.onResume);
    } else if (this.status.lost) {
      this.ui.showIndicator("lost", "distreload: connection lost, reconnecting");
    } else {
      this.ui.showIndicator(null);
    }
  };

  // --- the page: the parts wired together -------------------------------------------------------------------

  function runPage(window, document, api) {
    var script = document.currentScript || document.querySelector("script[data-distreload]");
    if (!script || !script.hasAttribute("data-distreload") || window.__distreload) return;

    var base = script.getAttribute("data-distreload");
    var options = withDefaults(safeJson(script.getAttribute("data-distreload-options") || "{}") || {});
    var status = window.__distreload = {
      mode: "starting", leader: false, connected: false, worker: null,
      version: script.getAttribute("data-distreload-version") || "",
      build: script.getAttribute("data-distreload-build") || "",
      reloading: false, pending: null, paused: false, lost: false, overlay: false, morphs: 0
    };
    var heard = status.version;  // the newest version this tab heard of: where a new stream resumes from
    var ui = new Ui(document);
    var headMemory = new HeadMemory(document);  // which <head> elements came from the server's HTML
    var storage = null;
    try { storage = window.sessionStorage; } catch (e) { /* a sandboxed frame: nothing is remembered */ }
    var memory = new TabMemory(storage, "distreload:" + base);

    function log(text) {
      if (!options.silent && window.console) window.console.log(options.message_prefix + " " + text);
    }

    var check = new PageCheck(window, options, ui, status, log, function () { return plan.current; }, ready);
    var plan = new ReloadPlan(status, memory, function () { return window.location.pathname; }, status.build, {
      carryOut: carryOut,
      busy: function () { return check.busy(); },
      cancel: function () { check.cancel(); },
      changed: function () { indicator.waiting = Boolean(plan.missed); indicator.show(); },
      log: log
    });
    var indicator = new Indicator(ui, options, status, resume);
    var stream = new StreamShare(window, base, options, status, handle, function () { return heard; });
    var pathname = function () { return window.location.pathname; };
    var report = new PageReport(window, base, storage, pathname);
    if (!report.shown) report.shown = status.version;
    status.paused = Boolean(plan.remembered.paused) || /[?&]distreload=off(&|$)/.test(window.location.search);

    // Messages from the stream (this tab's own, or the one shared).
    function handle(message) {
      if (message.type === "down") {
        // One line per retry: the backoff keeps them few, and the growing waits show it working.
        if (!message.quiet) {
          log(String(options.reconnect_message).split("${reconnectInterval}").join(String(message.delay)));
        }
        status.connected = false;
        indicator.lost();
      } else if (message.type === "hello") {
        heard = newer(heard, message.version);
        if (!status.connected) log(options.connected_message + " (" + message.worker + ")");
        status.connected = true;
        status.worker = message.worker;
        indicator.back();
        plan.hello(message);
        report.hello(message.stream);
      } else if (message.type === "reload") {
        heard = newer(heard, message.version);
        report.reloadCame(message.version);
        plan.reload(message);
        if (message.match && !matchesGlob(message.match, pathname())) report.exclude(message.version);
      }
      tellWorker();
    }

    // What this page shows, for the worker (see PageReport).
    function pageState() {
      if (status.paused) return { state: "paused" };
      if (status.overlay) {
        var title = ui.parts && ui.parts.title ? ui.parts.title.textContent : "";
        // Which reload it could not apply: the worker counts it failed for that one, not for a later one
        // whose check is still to come; and a failed check for a newer reload is told as news.
        return { state: "overlay", reason: title.replace(/^distreload: /, ""), trying: check.failedFor };
      }
      if (status.reloading) return plan.timer ? { state: "waiting" } : null;
      return { state: report.excluded && report.excluded === report.shown ? "excluded" : "live" };
    }

    function tellWorker() {
      report.send(pageState());
    }

    function carryOut(current) {
      if (current.kind === "css" || current.kind === "images") {
        plan.finish();
        plan.done(current);
        if (current.kind === "css") {
          var swapped = swapStylesheets(document, current.paths, current.version);
          log("swapped " + swapped + " stylesheet" + (swapped === 1 ? "" : "s") + " for " + current.version);
        } else {
          var refreshed = refreshImages(document, current.paths, current.version);
          log("refreshed " + refreshed + " image" + (refreshed === 1 ? "" : "s") + " for " + current.version);
        }
        report.applied(current.kind, current.version);
        tellWorker();
        return;
      }
      check.run();
    }

    function ready(current, response, body, requested, fetchedFor) {
      if (current.kind !== "morph") { reloadNow(current); return; }
      var reason = morphRefusal(response, requested), result = null;
      if (!reason) {
        try {
          result = morphDocument(document, new DOMParser().parseFromString(body, "text/html"), document.baseURI,
            headMemory);
          reason = result.reason;
        } catch (error) {
          reason = "the morph failed (" + error + ")";
        }
      }
      if (reason) {
        current.reason = "a full reload instead of a morph: " + reason;
        reloadNow(current);
        return;
      }
      plan.done(current);
      status.morphs += 1;
      log("morphed the page for " + current.version + " (" + result.changes + " change" + (result.changes === 1 ? "" : "s") + ")");
      report.applied("morphed", current.version);
      if (isBehind(fetchedFor, current.version)) { check.run(); return; }  // a newer morph came in while fetching
      plan.finish();
      tellWorker();
    }

    function reloadNow(current) {
      plan.done(current);
      report.reloading(current.version);
      log("reloading: " + current.reason);
      window.location.reload();
    }

    function wake() {
      stream.wake();
      check.wake();
    }

    function pause() {
      plan.pause();
      tellWorker();
      return "paused";
    }

    function resume() {
      if (status.paused && /[?&]distreload=off(&|$)/.test(window.location.search) && window.history.replaceState) {
        // Otherwise the catch-up reload would land on a paused page again.
        var url = new URL(window.location.href);
        url.searchParams.delete("distreload");
        window.history.replaceState(window.history.state, "", url.href);
      }
      plan.resume();
      tellWorker();
      return "resumed";
    }

    window.addEventListener("online", wake);
    document.addEventListener("visibilitychange", function () { if (document.visibilityState === "visible") wake(); });
    // A page leaving (or entering the back-forward cache, or frozen) hands the stream on; back, it joins again.
    window.addEventListener("pagehide", function () { stream.leave(); report.leave(); });
    document.addEventListener("freeze", function () { stream.leave(); });
    window.addEventListener("pageshow", function (event) {
      if (event.persisted) report.back();
      if (event.persisted && !stream.active()) stream.start();
    });
    // The overlay, a spread that ran out and a check that failed change the state without a message: a
    // look once a second (local only; a report goes out only when something changed).
    window.setInterval(tellWorker, 1000);
    document.addEventListener("resume", function () { if (!stream.active()) stream.start(); });

    api.pause = pause;
    api.resume = resume;
    api.status = status;
    if (status.paused) {
      indicator.show();
      log("paused: reloads wait until distreload.resume()");
    }
    stream.start();
  }

  // The console API (pause, resume, status) and, for the client's own tests, its parts.
  var api = global.distreload = global.distreload || {};
  api.parts = {
    morphDocument: morphDocument,
    morph: morphElement,
    HeadMemory: HeadMemory,
    scriptChange: scriptChange,
    matchesGlob: matchesGlob,
    bustUrl: bustUrl,
    bustSrcset: bustSrcset,
    bustCssUrls: bustCssUrls,
    mergePlans: mergePlans,
    isBehind: isBehind,
    withDefaults: withDefaults,
    firstLines: firstLines,
    errorText: errorText,
    refreshImages: refreshImages,
    swapStylesheets: swapStylesheets,
    TabMemory: TabMemory,
    ReloadPlan: ReloadPlan,
    PageCheck: PageCheck,
    StreamShare: StreamShare,
    PageReport: PageReport,
    Indicator: Indicator,
    Ui: Ui
  };
  if (typeof document !== "undefined") runPage(global, document, api);
})(self);
