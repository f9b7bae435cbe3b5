// Unit tests of the client's parts (window.distreload.parts), run in Chromium by tests/test_client.py.
// Each case throws on failure; the results end up in window.unitResults as {name, ok, error}.
(function () {
  "use strict";

  var parts = window.distreload.parts;
  var cases = [];
  var box = document.getElementById("box");

  function test(name, body) { cases.push({ name: name, body: body }); }

  function check(condition, message) {
    if (!condition) throw new Error(message || "check failed");
  }

  function equal(actual, expected, what) {
    if (actual !== expected) {
      throw new Error((what || "value") + ": expected " + JSON.stringify(expected) + ", got " + JSON.stringify(actual));
    }
  }

  function parse(html) {
    return new DOMParser().parseFromString(html, "text/html");
  }

  // The live side: #box holding ``html``. morphBox morphs it into a #box holding ``html`` from a parsed page.
  function mount(html) {
    box.innerHTML = html;
    return box;
  }

  function morphBox(html) {
    return parts.morph(box, parse('<div id="box">' + html + "</div>").getElementById("box"));
  }

  function byId(id) { return document.getElementById(id); }

  function nextFrame() {
    return new Promise(function (resolve) { setTimeout(resolve, 50); });
  }

  function loaded(frame) {
    return new Promise(function (resolve) { frame.addEventListener("load", resolve, { once: true }); });
  }

  // --- morph: pairing -------------------------------------------------------------------------------------

  test("text and attributes change in place: the element stays the same object", function () {
    mount('<p id="a" class="x" title="t">old</p>');
    var element = byId("a");
    var changes = morphBox('<p id="a" class="y" data-n="1">new</p>');
    check(byId("a") === element, "replaced instead of updated");
    equal(element.className, "y", "class");
    equal(element.getAttribute("data-n"), "1", "data-n");
    check(!element.hasAttribute("title"), "title not removed");
    equal(element.textContent, "new", "text");
    check(changes >= 4, "changes counted: " + changes);
  });

  test("an element inserted before keyed siblings leaves them where they are", function () {
    mount('<h2 id="h">h</h2><p id="a">a</p><p id="b">b</p>');
    var h = byId("h"), a = byId("a"), b = byId("b");
    morphBox('<p id="new">n</p><h2 id="h">h</h2><p id="a">a</p><p id="b">b</p>');
    check(byId("h") === h && byId("a") === a && byId("b") === b, "identity lost");
    equal(Array.prototype.map.call(box.children, function (e) { return e.id; }).join(","), "new,h,a,b", "order");
  });

  test("elements without an id pair by tag and position", function () {
    mount("<p>one</p><p>two</p><span>s</span>");
    var paragraphs = box.querySelectorAll("p"), span = box.querySelector("span");
    morphBox("<p>one!</p><div>new</div><p>two</p><span>s</span>");
    var now = box.querySelectorAll("p");
    check(now[0] === paragraphs[0] && now[1] === paragraphs[1] && box.querySelector("span") === span, "identity lost");
    equal(now[0].textContent, "one!", "first paragraph");
    equal(box.querySelector("div").textContent, "new", "inserted div");
    equal(box.innerHTML, "<p>one!</p><div>new</div><p>two</p><span>s</span>", "markup");
  });

  test("a reorder by id moves the elements themselves", function () {
    mount('<li id="i1">1</li><li id="i2">2</li><li id="i3">3</li>');
    var one = byId("i1"), two = byId("i2"), three = byId("i3");
    morphBox('<li id="i3">3</li><li id="i1">1</li><li id="i2">2!</li>');
    check(box.children[0] === three && box.children[1] === one && box.children[2] === two, "not moved");
    equal(two.textContent, "2!", "text of a moved element");
  });

  test("removed elements go; text nodes and comments update", function () {
    mount("text<!--c--><b>bold</b><i>gone</i>");
    morphBox("text 2<!--c2--><b>bold</b>");
    equal(box.innerHTML, "text 2<!--c2--><b>bold</b>", "markup");
  });

  test("nested changes reach deep into a kept tree", function () {
    mount('<section id="s"><div><ul><li>a</li><li>b</li></ul></div></section>');
    var section = byId("s"), list = box.querySelector("ul");
    morphBox('<section id="s"><div><ul><li>a</li><li class="x">b</li><li>c</li></ul></div></section>');
    check(byId("s") === section && box.querySelector("ul") === list, "identity lost");
    equal(list.innerHTML, '<li>a</li><li class="x">b</li><li>c</li>', "list");
  });

  test("svg elements and namespaced attributes morph", function () {
    mount('<svg id="g" viewBox="0 0 10 10"><use href="#a"></use><circle r="1"></circle></svg>');
    var circle = box.querySelector("circle");
    morphBox('<svg id="g" viewBox="0 0 20 20"><use href="#b"></use><circle r="2"></circle></svg>');
    check(box.querySelector("circle") === circle, "identity lost");
    equal(circle.getAttribute("r"), "2", "r");
    equal(box.querySelector("svg").getAttribute("viewBox"), "0 0 20 20", "viewBox");
    equal(circle.namespaceURI, "http://www.w3.org/2000/svg", "namespace");
  });

  // --- morph: what the reader did survives ------------------------------------------------------------------

  test("typed text in an input and a textarea survives; untouched fields take the new default", function () {
    mount('<input id="typed" value="a"><input id="untouched" value="a"><textarea id="area">a</textarea>');
    byId("typed").value = "typed by hand";
    byId("area").value = "notes";
    morphBox('<input id="typed" value="b"><input id="untouched" value="b"><textarea id="area">b</textarea>');
    equal(byId("typed").value, "typed by hand", "typed input");
    equal(byId("typed").getAttribute("value"), "b", "typed input's default");
    equal(byId("untouched").value, "b", "untouched input");
    equal(byId("area").value, "notes", "textarea");
    equal(byId("area").defaultValue, "b", "textarea's default");
  });

  test("checkboxes and selects keep what the reader chose", function () {
    mount('<input id="c" type="checkbox"><select id="s"><option>a</option><option>b</option></select>');
    byId("c").checked = true;
    byId("s").value = "b";
    morphBox('<input id="c" type="checkbox" class="x"><select id="s"><option>a</option><option>b</option><option>c</option></select>');
    check(byId("c").checked, "checkbox unchecked");
    equal(byId("s").value, "b", "select");
    equal(byId("s").options.length, 3, "options");
  });

  test("details stay open or closed as the reader left them", function () {
    mount('<details id="d"><summary>s</summary>x</details><details id="e" open><summary>s</summary>y</details>');
    byId("d").open = true;
    byId("e").open = false;
    morphBox('<details id="d"><summary>s</summary>x2</details><details id="e" open><summary>s</summary>y2</details>');
    check(byId("d").open, "closed by the morph");
    check(!byId("e").open, "opened by the morph");
    check(byId("d").textContent.indexOf("x2") !== -1, "content not updated");
  });

  test("focus and caret survive, even when the focused field moves", function () {
    mount('<input id="f1" value="hello world"><input id="f2">');
    var field = byId("f1");
    field.focus();
    field.setSelectionRange(3, 5);
    morphBox('<input id="f2"><input id="f1" value="hello world">');
    check(box.children[1] === field, "not moved");
    check(document.activeElement === field, "focus lost to " + document.activeElement.tagName);
    equal(field.selectionStart, 3, "selectionStart");
    equal(field.selectionEnd, 5, "selectionEnd");
    field.blur();
  });

  test("a listener on an unchanged element keeps working", function () {
    mount('<p>x</p><button id="b">b</button>');
    var clicks = 0;
    byId("b").addEventListener("click", function () { clicks += 1; });
    morphBox('<p>y</p><p>new</p><button id="b">b</button>');
    byId("b").click();
    equal(clicks, 1, "clicks");
  });

  test("a morph never inserts or runs a script", function () {
    mount('<div id="s"></div>');
    morphBox('<div id="s"><script>window.ranByMorph = true;<\/script><p>x</p></div><script>window.ranByMorph = true;<\/script>');
    equal(window.ranByMorph, undefined, "a script ran");
    equal(box.getElementsByTagName("script").length, 0, "scripts inserted");
    equal(byId("s").innerHTML, "<p>x</p>", "content");
  });

  test("the overlay's host is left alone", function () {
    mount("<p>x</p>");
    var host = document.createElement("distreload-ui");
    host.setAttribute("data-distreload-ui", "");
    box.appendChild(host);
    morphBox("<p>y</p>");
    check(host.parentNode === box, "host removed");
  });

  // --- morph: an element keeps its identity wherever the new HTML moved it --------------------------------

  function typeInto(field, text, start, end) {
    field.focus();
    field.value = text;
    field.setSelectionRange(start, end);
  }

  test("a field wrapped in a label keeps typed text, focus and caret, and stays the same element", function () {
    mount('<form id="f"><input id="name" value="a"><input id="other"></form>');
    var field = byId("name"), form = byId("f");
    field.custom = "a JS property";
    typeInto(field, "typed by hand", 2, 5);
    morphBox('<form id="f"><label>Name <input id="name" value="b"></label><div class="row"><input id="other"></div></form>');
    check(byId("name") === field && byId("f") === form, "rebuilt");
    equal(field.parentNode.tagName, "LABEL", "moved into the label");
    equal(field.value, "typed by hand", "typed text");
    equal(field.custom, "a JS property", "JS property");
    check(document.activeElement === field, "focus went to " + document.activeElement.tagName);
    equal(field.selectionStart + "-" + field.selectionEnd, "2-5", "caret");
    field.blur();
  });

  test("an id'd element moved to another parent, or whose wrapper changed tag, is moved, not rebuilt", function () {
    mount('<section id="left"><div><button id="b">b</button></div></section><section id="right"></section>' +
      '<div class="wrap"><textarea id="t">x</textarea></div>');
    var button = byId("b"), area = byId("t"), clicks = 0;
    button.addEventListener("click", function () { clicks += 1; });
    area.value = "notes";
    morphBox('<section id="left"></section><section id="right"><p>moved here</p><div><button id="b" class="x">b</button></div></section>' +
      '<article class="wrap"><textarea id="t">x</textarea></article>');
    check(byId("b") === button && byId("t") === area, "rebuilt");
    equal(button.parentNode.parentNode.id, "right", "button's new place");
    equal(button.className, "x", "attribute updated");
    equal(area.parentNode.tagName, "ARTICLE", "new wrapper");
    equal(area.value, "notes", "typed text");
    button.click();
    equal(clicks, 1, "listener");
    equal(box.querySelectorAll("#b").length + box.querySelectorAll("#t").length, 2, "copies");
  });

  test("elements swap parents both ways (an ancestor becomes a descendant)", function () {
    mount('<div id="outer"><div id="inner"><input id="i"></div></div>');
    var outer = byId("outer"), inner = byId("inner"), field = byId("i");
    field.value = "kept";
    morphBox('<div id="inner"><div id="outer"><input id="i"></div></div>');
    check(byId("outer") === outer && byId("inner") === inner && byId("i") === field, "rebuilt");
    check(inner.parentNode === box && outer.parentNode === inner && field.parentNode === outer, "structure");
    equal(field.value, "kept", "typed text");
  });

  test("a block inserted before an unkeyed wrapper of an id'd field leaves both the wrapper and the field", function () {
    mount('<div class="field"><input id="q"></div>');
    var wrapper = box.firstChild, field = byId("q");
    field.value = "query";
    morphBox('<div>notice</div><div class="field"><input id="q"></div>');
    check(box.children[1] === wrapper && byId("q") === field, "rebuilt");
    equal(box.children[0].textContent, "notice", "notice");
    equal(field.value, "query", "typed text");
  });

  test("an insertion or removal among unkeyed siblings moves no state onto another element", function () {
    mount('<details><summary>one</summary>1</details><details><summary>two</summary>2</details>');
    var one = box.children[0], two = box.children[1];
    two.open = true;
    morphBox('<details><summary>new</summary>0</details><details><summary>one</summary>1</details><details><summary>two</summary>2</details>');
    check(box.children[1] === one && box.children[2] === two, "shifted onto another element");
    check(!box.children[0].open && !one.open && two.open, "open state moved");
    // Removing the first: the others keep what the reader did to them.
    mount('<div><p>a</p><input name="x"></div><div><p>b</p><input name="x"></div><div><p>c</p><input name="x"></div>');
    var inputs = box.querySelectorAll("input");
    inputs[1].value = "typed in b";
    inputs[2].value = "typed in c";
    morphBox('<div><p>b</p><input name="x"></div><div><p>c</p><input name="x"></div>');
    var now = box.querySelectorAll("input");
    equal(now.length, 2, "inputs");
    check(now[0] === inputs[1] && now[1] === inputs[2], "shifted onto another element");
    equal(now[0].value + "|" + now[1].value, "typed in b|typed in c", "typed text");
    // A row inserted in the middle of a list of the same rows.
    mount("<ul><li>a</li><li>b</li><li>c</li></ul>");
    var items = box.querySelectorAll("li");
    items[2].custom = "c's";
    morphBox("<ul><li>a</li><li>b</li><li>b2</li><li>c</li></ul>");
    var after = box.querySelectorAll("li");
    check(after[0] === items[0] && after[1] === items[1] && after[3] === items[2], "shifted");
    equal(after[3].custom, "c's", "JS property");
  });

  test("inner scroll, an open dialog and checked boxes stay as the reader left them when their parent changes", async function () {
    mount('<div id="scroller" style="height: 50px; overflow: auto"><div style="height: 500px">tall</div></div>' +
      '<dialog id="d"><p>hi</p></dialog><input id="c" type="checkbox" checked>');
    var scroller = byId("scroller"), dialog = byId("d"), box2 = byId("c");
    scroller.scrollTop = 120;
    dialog.show();
    box2.checked = false;  // the reader unchecked what the page checked
    morphBox('<main><div id="scroller" style="height: 50px; overflow: auto"><div style="height: 500px">tall</div></div></main>' +
      '<section><dialog id="d"><p>hello</p></dialog></section><input id="c" type="checkbox" checked class="x">');
    await nextFrame();
    check(byId("scroller") === scroller && scroller.parentNode.tagName === "MAIN", "scroller rebuilt");
    equal(scroller.scrollTop, 120, "inner scroll");
    check(byId("d") === dialog && dialog.open, "dialog closed");
    equal(dialog.textContent, "hello", "dialog content");
    check(!box2.checked && box2.className === "x", "checkbox");
    dialog.close();
  });

  test("a playing media element keeps playing when it moves", async function () {
    // A muted video of a canvas: muted video may play without the reader having touched the page.
    var canvas = document.createElement("canvas");
    canvas.getContext("2d").fillRect(0, 0, 10, 10);
    var stream = canvas.captureStream(10);
    mount('<div class="player"><video id="m" muted></video></div>');
    var media = byId("m");
    media.muted = true;
    media.srcObject = stream;
    await media.play();
    check(!media.paused, "not playing before the morph");
    morphBox('<section class="player"><h2>now playing</h2><video id="m" muted></video></section>');
    await nextFrame();
    check(byId("m") === media, "rebuilt");
    check(!media.paused, "paused by the morph");
    media.pause();
    stream.getTracks().forEach(function (track) { track.stop(); });
  });

  test("an element marked data-distreload-permanent is left untouched", function () {
    mount('<div id="widget" data-distreload-permanent class="a"><p>the page drew this</p></div><p id="p">x</p>');
    var widget = byId("widget"), inside = widget.innerHTML;
    morphBox('<p id="p">y</p><div id="widget" data-distreload-permanent class="b"><p>placeholder</p></div>');
    check(byId("widget") === widget, "rebuilt");
    equal(widget.className + " " + widget.innerHTML, "a " + inside, "changed");
    equal(byId("p").textContent, "y", "the rest morphed");
  });

  test("attribute changes never throw, whatever a custom element's callbacks do", function () {
    if (!customElements.get("frame-like")) {
      // Like <turbo-frame>: setting src removes complete and busy, inside the attribute change itself.
      customElements.define("frame-like", class extends HTMLElement {
        static get observedAttributes() { return ["src"]; }
        attributeChangedCallback(name) {
          if (name === "src") { this.removeAttribute("complete"); this.removeAttribute("busy"); this.setAttribute("loaded-by", "callback"); }
        }
      });
    }
    mount('<frame-like id="fr" src="/a" complete="" busy="" data-a="1" data-b="2" data-c="3"></frame-like>');
    var frame = byId("fr");
    morphBox('<frame-like id="fr" src="/b" data-z="9"></frame-like>');
    check(byId("fr") === frame, "rebuilt");
    equal(frame.getAttribute("src"), "/b", "src");
    equal(frame.getAttribute("data-z"), "9", "data-z");
    check(!frame.hasAttribute("data-a") && !frame.hasAttribute("complete"), "stale attributes left");
  });

  test("morphDocument: an attribute the browser refuses to set is a reason to reload, not an exception", function () {
    var frame = document.createElement("iframe");
    document.body.appendChild(frame);
    var live = frame.contentDocument;
    live.open();
    live.write("<!doctype html><html><head></head><body><p id='p'>x</p></body></html>");
    live.close();
    var result = parts.morphDocument(live, parse("<!doctype html><html><head></head><body><p id='p' =odd='1'>y</p></body></html>"));
    check(/could not set =odd/.test(result.reason || ""), "reason: " + JSON.stringify(result));
    frame.remove();
  });

  test("morphDocument: what the server's HTML dropped from <head> goes; what the page's scripts added stays", async function () {
    var frame = document.createElement("iframe");
    document.body.appendChild(frame);
    var ready = loaded(frame);
    frame.srcdoc = "<!doctype html><html><head><title>h</title><meta name='theme-color' content='red'>" +
      "<style>#p { color: rgb(1, 1, 1); }</style><style>#q { color: rgb(2, 2, 2); }</style></head>" +
      "<body><p id='p'>p</p><p id='q'>q</p></body></html>";
    await ready;
    var live = frame.contentDocument, memory = new parts.HeadMemory(live);
    var added = live.createElement("style");
    added.textContent = "#q { font-weight: 700; }";
    live.head.appendChild(added);
    var kept = live.querySelectorAll("style")[1];
    var result = parts.morphDocument(live, parse("<!doctype html><html><head><title>h2</title>" +
      "<style>#q { color: rgb(2, 2, 2); }</style><meta name='description' content='new'></head>" +
      "<body><p id='p'>p</p><p id='q'>q</p></body></html>"), null, memory);
    check(!result.reason, "refused: " + result.reason);
    var view = live.defaultView;
    equal(live.title, "h2", "title");
    check(!live.querySelector("meta[name=theme-color]"), "dropped meta still there");
    check(live.querySelector("meta[name=description]"), "new meta missing");
    equal(view.getComputedStyle(live.getElementById("p")).color, "rgb(0, 0, 0)", "dropped style still applies");
    check(live.querySelectorAll("style")[0] === kept, "kept style rebuilt");
    check(added.parentNode === live.head, "the page's own style removed");
    equal(view.getComputedStyle(live.getElementById("q")).fontWeight, "700", "the page's style");
    // A second morph still knows the page's style from the server's.
    parts.morphDocument(live, parse("<!doctype html><html><head><title>h3</title></head><body><p id='p'>p</p><p id='q'>q</p></body></html>"), null, memory);
    check(added.parentNode === live.head && live.querySelectorAll("style").length === 1, "second morph");
    frame.remove();
  });

  test("random trees under random edits morph into exactly the new markup, keeping every id'd element kept", function () {
    var seed = 12345;
    function random(n) { seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n; }
    var tags = ["div", "p", "span", "section", "ul", "li", "b"], nextId = 0;
    function tree(depth) {
      var element = document.createElement(tags[random(tags.length)]);
      if (random(3) === 0) element.id = "n" + (nextId++);
      if (random(4) === 0) element.className = "c" + random(3);
      var count = depth > 0 ? random(4) : 0;
      for (var i = 0; i < count; i++) {
        element.appendChild(random(4) === 0 ? document.createTextNode("t" + random(5)) : tree(depth - 1));
      }
      return element;
    }
    function edit(root) {
      var all = root.querySelectorAll("*");
      if (!all.length) return;
      var target = all[random(all.length)];
      switch (random(7)) {
        case 0: target.parentNode.insertBefore(tree(2), target); break;                   // insert
        case 1: target.remove(); break;                                                  // remove
        case 2: { var other = all[random(all.length)];                                   // move
          if (!target.contains(other)) other.appendChild(target); break; }
        case 3: { var wrapper = document.createElement(tags[random(tags.length)]);      // wrap
          target.parentNode.insertBefore(wrapper, target); wrapper.appendChild(target); break; }
        case 4: target.className = "c" + random(5); break;                               // attribute
        case 5: target.appendChild(document.createTextNode("x" + random(5))); break;    // text
        default: if (target.parentNode !== root) target.parentNode.insertBefore(target, target.parentNode.firstChild);  // reorder
      }
    }
    for (var round = 0; round < 300; round++) {
      var start = document.createElement("div");
      for (var i = 0; i < 4; i++) start.appendChild(tree(3));
      var changed = start.cloneNode(true);
      for (var e = random(4) + 1; e > 0; e--) edit(changed);
      mount(start.innerHTML);
      var before = {};
      Array.prototype.forEach.call(box.querySelectorAll("[id]"), function (element) { before[element.id] = element; });
      var fresh = parse('<div id="box">' + changed.innerHTML + "</div>").getElementById("box");
      var expected = fresh.cloneNode(true);
      parts.morph(box, fresh);
      // isEqualNode: the same tree and attributes, in whatever order the attributes were set.
      check(box.isEqualNode(expected), "round " + round + ": " + box.innerHTML + " is not " + expected.innerHTML);
      Array.prototype.forEach.call(box.querySelectorAll("[id]"), function (element) {
        if (before[element.id] && before[element.id].tagName === element.tagName && box.querySelectorAll("#" + element.id).length === 1) {
          check(before[element.id] === element, "round " + round + ": #" + element.id + " rebuilt");
        }
      });
      check(!document.querySelector("[data-distreload-ui=pantry]"), "round " + round + ": the pantry stayed");
    }
  });

  // --- morph: scripts decide whether a morph can be trusted -------------------------------------------------

  var SCRIPTS = '<head><script src="/a.js"><\/script></head><body><p>x</p><script>one();<\/script>' +
    '<script src="/---distreload---/client.js?v=1" data-distreload="/---distreload---" data-distreload-version="aaaaaaaa-1" async><\/script></body>';

  test("scriptChange: distreload's own tag and nonces do not count", function () {
    var fresh = SCRIPTS.replace("aaaaaaaa-1", "aaaaaaaa-2").replace("<script>", '<script nonce="abc">');
    equal(parts.scriptChange(parse(SCRIPTS), parse(fresh), location.href), "", "reason");
  });

  test("scriptChange: a changed or added script is a reason, a removed one is not", function () {
    var live = parse(SCRIPTS);
    var changed = parts.scriptChange(live, parse(SCRIPTS.replace("one();", "two();")), location.href);
    check(changed.indexOf("two();") !== -1, "changed inline script: " + changed);
    var added = parts.scriptChange(live, parse(SCRIPTS.replace("<p>x</p>", '<p>x</p><script src="/b.js"><\/script>')), location.href);
    check(added.indexOf("/b.js") !== -1, "added script: " + added);
    equal(parts.scriptChange(live, parse(SCRIPTS.replace('<script src="/a.js"><\/script>', "")), location.href), "", "removed script");
  });

  test("morphDocument refuses a page with a changed script and changes nothing", function () {
    var frame = document.createElement("iframe");
    document.body.appendChild(frame);
    var live = frame.contentDocument;
    live.open();
    live.write("<!doctype html><html><head><title>t</title></head><body><p id='p'>x</p><script>window.x = 1;<\/script></body></html>");
    live.close();
    var result = parts.morphDocument(live, parse("<!doctype html><html><head><title>t2</title></head><body><p id='p'>y</p><script>window.x = 2;<\/script></body></html>"));
    check(/script changed/.test(result.reason || ""), "reason: " + JSON.stringify(result));
    equal(live.getElementById("p").textContent, "x", "changed anyway");
    equal(live.title, "t", "title changed anyway");
    frame.remove();
  });

  test("morphDocument: unchanged stylesheets stay; a changed one goes only once its successor loaded", async function () {
    // /style.css answers with the CSS in its query (tests/test_client.py routes it), loaded like any sheet.
    var sheet = function (css) { return '<link rel="stylesheet" href="/style.css?css=' + encodeURIComponent(css) + '">'; };
    var page = function (title, second, extra) {
      return "<!doctype html><html><head><title>" + title + "</title>" + sheet("#t { color: rgb(1, 2, 3); }") +
        sheet(second) + "</head><body><h1 id='t'>t</h1><p id='u'>u</p>" + (extra || "") + "</body></html>";
    };
    var frame = document.createElement("iframe");
    document.body.appendChild(frame);
    var ready = loaded(frame);
    frame.srcdoc = page("before", "#u { color: rgb(0, 0, 0); }");
    await ready;
    var live = frame.contentDocument, first = live.querySelector("link");
    live.defaultView.scrollTo(0, 0);
    var result = parts.morphDocument(live, parse(page("after", "#u { color: rgb(9, 9, 9); }", "<p id='v'>v</p>")));
    check(!result.reason, "refused: " + result.reason);
    equal(live.title, "after", "title");
    check(live.querySelector("link") === first, "unchanged sheet replaced");
    equal(live.querySelectorAll("link").length, 3, "old sheet removed before the new one loaded");
    for (var i = 0; i < 40 && live.querySelectorAll("link").length !== 2; i++) await nextFrame();
    equal(live.querySelectorAll("link").length, 2, "sheets after load");
    equal(live.defaultView.getComputedStyle(live.getElementById("u")).color, "rgb(9, 9, 9)", "new sheet applied");
    equal(live.defaultView.getComputedStyle(live.getElementById("t")).color, "rgb(1, 2, 3)", "kept sheet applied");
    check(live.getElementById("v"), "body not morphed");
    frame.remove();
  });

  test("morphDocument keeps the scroll position", async function () {
    var frame = document.createElement("iframe");
    frame.style.height = "200px";
    document.body.appendChild(frame);
    var ready = loaded(frame);
    frame.srcdoc = "<!doctype html><html><head></head><body><div id='top'>top</div><div style='height: 3000px'>tall</div></body></html>";
    await ready;
    var live = frame.contentDocument;
    live.defaultView.scrollTo(0, 1200);
    parts.morphDocument(live, parse("<!doctype html><html><head></head><body><div id='top'>a new top</div><div style='height: 3000px'>tall</div></body></html>"));
    equal(live.defaultView.scrollY, 1200, "scrollY");
    equal(live.getElementById("top").textContent, "a new top", "content");
    frame.remove();
  });

  // --- morph: nothing comes alive that a full load would keep inert ------------------------------------------

  // DOMParser parses with scripting off, so a parsed <noscript> holds elements; in a loaded page (scripting
  // on) it holds text, and nothing in it loads or runs.
  test("a morph never brings <noscript> content to life, new or changed", async function () {
    window.noscriptFired = [];
    var frame = document.createElement("iframe");
    document.body.appendChild(frame);
    var ready = loaded(frame);
    frame.srcdoc = "<!doctype html><html><head><title>n</title></head><body><p id='p'>x</p>" +
      "<noscript id='kept'><p>enable JavaScript</p></noscript></body></html>";
    await ready;
    var live = frame.contentDocument, kept = live.getElementById("kept"), keptText = kept.textContent;
    var fresh = "<!doctype html><html><head><title>n</title>" +
      "<noscript><link rel='stylesheet' href='/style.css?css=p%7Bcolor:rgb(1,2,3)%7D'></noscript></head><body>" +
      "<p id='p'>y</p><noscript><img src='/missing.png' onerror='parent.noscriptFired.push(\"img\")'></noscript>" +
      "<div><noscript><iframe src='/frame.html' onload='parent.noscriptFired.push(\"iframe\")'></iframe></noscript></div>" +
      "<noscript id='kept'><img src='/missing.png' onerror='parent.noscriptFired.push(\"kept\")'></noscript></body></html>";
    var result = parts.morphDocument(live, parse(fresh));
    check(!result.reason, "refused: " + result.reason);
    for (var i = 0; i < 10; i++) await nextFrame();
    equal(live.getElementById("p").textContent, "y", "the morph happened");
    equal(window.noscriptFired.join(), "", "handlers fired");
    equal(live.querySelectorAll("img, iframe, link").length, 0, "elements made live from <noscript>");
    equal(live.querySelectorAll("noscript").length, 4, "noscript elements");
    check(live.getElementById("kept") === kept && kept.textContent === keptText, "the live noscript changed");
    equal(live.defaultView.getComputedStyle(live.getElementById("p")).color, "rgb(0, 0, 0)", "a noscript sheet applied");
    frame.remove();
  });

  // --- which pages, which URLs ------------------------------------------------------------------------------

  test("globs on the path: the same answers as distreload/protocol.py on tests/js/globs.json", async function () {
    var table = (await (await fetch("/globs.json")).json()).cases;
    check(table.length >= 40, "table rows: " + table.length);
    table.forEach(function (row) {
      equal(parts.matchesGlob(row[0], row[1]), row[2], row[0] + " on " + row[1]);
    });
  });

  test("a glob built to backtrack is matched at once (this page would hang for minutes otherwise)", function () {
    var paths = ["/screens/lobby/display-01", "/" + "a/".repeat(1000) + "b", "/" + "a".repeat(2047)];
    var globs = ["/" + "**".repeat(30) + "X", "/" + "*a".repeat(127) + "X", "/" + "**a".repeat(85)];
    var answers = [];
    globs.forEach(function (glob) {
      paths.forEach(function (path) { answers.push(parts.matchesGlob(glob, path)); });
    });
    equal(answers.join(), "false,false,false,false,false,false,false,false,true", "answers");
  });

  test("cache-busters go on same-origin URLs among the paths only", function () {
    var base = location.origin + "/page";
    equal(parts.bustUrl("/img/a.png", base, [], "e-1"), location.origin + "/img/a.png?distreload=e-1", "relative");
    equal(parts.bustUrl("/img/a.png?distreload=e-0&x=1", base, [], "e-1"), location.origin + "/img/a.png?distreload=e-1&x=1", "replaced");
    equal(parts.bustUrl("https://elsewhere.example/a.png", base, [], "e-1"), null, "other origin");
    equal(parts.bustUrl("data:image/png;base64,AAAA", base, [], "e-1"), null, "data URL");
    equal(parts.bustUrl("/img/a.png", base, ["/img/b.png"], "e-1"), null, "not among the paths");
    equal(parts.bustUrl("/app/img/b.png", base, ["/img/b.png"], "e-1"), location.origin + "/app/img/b.png?distreload=e-1", "under a prefix");
    equal(parts.bustSrcset("/a.png 1x, /b.png 2x", base, ["/b.png"], "e-1"), "/a.png 1x, " + location.origin + "/b.png?distreload=e-1 2x", "srcset");
    equal(parts.bustSrcset("/a.png 1x", base, ["/b.png"], "e-1"), null, "srcset with nothing wanted");
    equal(parts.bustCssUrls("url('/a.png'), linear-gradient(red, blue), url(/b.png)", base, [], "e-1"),
      'url("' + location.origin + '/a.png?distreload=e-1"), linear-gradient(red, blue), url("' + location.origin + '/b.png?distreload=e-1")', "css");
  });

  // --- plans, versions, options ---------------------------------------------------------------------------

  test("reloads that have not happened yet merge into one", function () {
    var plan = function (kind, version, paths, build) { return { kind: kind, version: version, paths: paths || [], build: build, reason: kind }; };
    var merged = parts.mergePlans(plan("morph", "aaaaaaaa-1"), plan("reload", "aaaaaaaa-2"));
    equal(merged.kind, "reload", "morph then reload");
    equal(merged.version, "aaaaaaaa-2", "version");
    merged = parts.mergePlans(plan("css", "aaaaaaaa-2", ["/a.css"]), plan("css", "aaaaaaaa-1", ["/b.css", "/a.css"]));
    equal(merged.kind + " " + merged.paths.join(" ") + " " + merged.version, "css /a.css /b.css aaaaaaaa-2", "two css swaps");
    merged = parts.mergePlans(plan("css", "aaaaaaaa-1", ["/a.css"]), plan("css", "aaaaaaaa-2"));
    equal(merged.paths.length, 0, "a swap of every sheet covers one of a single sheet");
    equal(parts.mergePlans(plan("images", "aaaaaaaa-1"), plan("css", "aaaaaaaa-2")).kind, "reload", "two kinds");
    equal(parts.mergePlans(plan("reload", "aaaaaaaa-1", [], "b2"), plan("morph", "aaaaaaaa-2")).build, "b2", "build kept");
    equal(parts.mergePlans(null, plan("morph", "aaaaaaaa-1")).kind, "morph", "first plan");
  });

  test("versions: behind within an epoch, and after a new epoch only once it counted a reload", function () {
    equal(parts.isBehind("aaaaaaaa-1", "aaaaaaaa-2"), true, "behind");
    equal(parts.isBehind("aaaaaaaa-2", "aaaaaaaa-2"), false, "equal");
    equal(parts.isBehind("aaaaaaaa-3", "aaaaaaaa-2"), false, "ahead");
    equal(parts.isBehind("aaaaaaaa-5", "bbbbbbbb-0"), false, "new epoch, nothing counted");
    equal(parts.isBehind("aaaaaaaa-5", "bbbbbbbb-1"), true, "new epoch, one reload");
    equal(parts.isBehind("", "aaaaaaaa-1"), false, "unknown");
  });

  test("options: defaults, the earlier name shared_worker, and bounded intervals", function () {
    var options = parts.withDefaults({ shared_worker: false, reconnect_interval: 5, overlay: false });
    equal(options.share_connection, false, "alias");
    equal(options.reconnect_interval, 100, "lower bound");
    equal(options.overlay, false, "overlay");
    equal(options.indicator, true, "indicator default");
  });

  // --- the page's parts, without a server ------------------------------------------------------------------

  function fakeStorage() {
    var items = {};
    return { getItem: function (key) { return key in items ? items[key] : null; }, setItem: function (key, value) { items[key] = value; } };
  }

  function wait(ms) { return new Promise(function (resolve) { setTimeout(resolve, ms); }); }

  function newPlan(pathname) {
    var status = { version: "aaaaaaaa-1", paused: false, pending: null, reloading: false };
    var done = [], lines = [], changes = 0;
    var memory = new parts.TabMemory(fakeStorage(), "k");
    var plan = new parts.ReloadPlan(status, memory, function () { return pathname; }, "", {
      carryOut: function (current) { done.push(current.kind + " " + current.version + " " + current.paths.join(",")); plan.done(current); plan.finish(); },
      busy: function () { return false; },
      cancel: function () {},
      changed: function () { changes += 1; },
      log: function (text) { lines.push(text); }
    });
    return { plan: plan, status: status, done: done, lines: lines, memory: memory, changes: function () { return changes; } };
  }

  test("ReloadPlan: follows what is new and for this page, merges what comes together, waits while paused", async function () {
    var page = newPlan("/screens/lobby/1");
    page.plan.reload({ version: "aaaaaaaa-1", kind: "reload" });  // seen already
    page.plan.reload({ version: "aaaaaaaa-2", kind: "css", paths: ["/a.css"], match: "/screens/hall/*" });
    equal(page.status.version, "aaaaaaaa-2", "a reload for other pages still counts as seen");
    equal(page.memory.read().version, "aaaaaaaa-2", "remembered");
    check(/not this page/.test(page.lines.join()), page.lines.join());
    page.plan.reload({ version: "aaaaaaaa-3", kind: "css", paths: ["/a.css"], match: "/screens/lobby/*" });
    page.plan.reload({ version: "aaaaaaaa-4", kind: "css", paths: ["/b.css"] });
    await wait(20);
    equal(page.done.join("|"), "css aaaaaaaa-4 /a.css,/b.css", "one merged plan");
    page.plan.pause();
    check(page.status.paused && page.memory.read().paused === true, "paused");
    page.plan.reload({ version: "aaaaaaaa-5", kind: "morph" });
    page.plan.reload({ version: "aaaaaaaa-6", kind: "reload" });
    await wait(20);
    equal(page.done.length, 1, "acted while paused");
    check(page.changes() >= 3, "the indicator was not told");
    page.plan.resume();
    await wait(20);
    equal(page.done.join("|"), "css aaaaaaaa-4 /a.css,/b.css|reload aaaaaaaa-6 ", "caught up once on resume");
  });

  test("ReloadPlan: spread waits a random time within the window; a new build reloads once", async function () {
    var page = newPlan("/");
    page.plan.reload({ version: "aaaaaaaa-2", kind: "reload", spread: 0.05 });
    equal(page.done.length, 0, "acted before the spread");
    check(/spread over 0.05 s/.test(page.lines.join()) || page.lines.length === 0, page.lines.join());
    await wait(120);
    equal(page.done.length, 1, "not acted after the spread");
    var built = newPlan("/");
    built.plan.pageBuild = "b1";
    built.plan.hello({ version: "aaaaaaaa-1", build: "b2" });
    await wait(20);
    equal(built.done.join(), "reload aaaaaaaa-1 ", "a reload for the new build");
  });

  test("PageCheck: an error shows the overlay and retries; a good answer goes on with the plan as it stands", async function () {
    var answers = [
      function () { return Promise.resolve(new Response("Traceback: boom", { status: 500, headers: { "content-type": "text/plain" } })); },
      function () { return Promise.reject(new TypeError("Failed to fetch")); },
      function () { return Promise.resolve(new Response("<p>ok</p>", { status: 200, headers: { "content-type": "text/html" } })); }
    ];
    var requests = [], shown = [], readyWith = null;
    var fakeWindow = {
      location: { href: "http://distreload.test/page#top" },
      navigator: { onLine: true },
      fetch: function (url) { requests.push(url); return answers[requests.length - 1](); }
    };
    var ui = { showOverlay: function (title, body) { shown.push(title + ": " + body); }, hideOverlay: function () { shown.push("hidden"); } };
    var status = { overlay: false };
    var current = { kind: "morph", version: "aaaaaaaa-2", reason: "morph aaaaaaaa-2", paths: [] };
    var pageCheck = new parts.PageCheck(fakeWindow, parts.withDefaults({ reconnect_interval: 100, max_reconnect_interval: 100 }),
      ui, status, function () {}, function () { return current; },
      function (plan, response, body) { readyWith = plan.kind + " " + plan.version + " " + body; });
    pageCheck.run();
    check(pageCheck.busy(), "not busy while fetching");
    for (var j = 0; j < 40 && !status.overlay; j++) await wait(5);
    equal(pageCheck.failedFor, "aaaaaaaa-2", "the reload the overlay is for");
    current = { kind: "reload", version: "aaaaaaaa-3", reason: "merged", paths: [] };  // a reload merged in meanwhile
    for (var k = 0; k < 40 && pageCheck.failedFor !== "aaaaaaaa-3"; k++) await wait(5);
    equal(pageCheck.failedFor, "aaaaaaaa-3", "the reload the overlay is for, once its check failed too");
    for (var i = 0; i < 40 && !readyWith; i++) await wait(25);
    equal(requests.join(), "http://distreload.test/page,http://distreload.test/page,http://distreload.test/page", "requests");
    check(/answered 500: Traceback: boom/.test(shown[0]) && /no answer from the server/.test(shown[1]), shown.join(" | "));
    equal(readyWith, "reload aaaaaaaa-3 <p>ok</p>", "what went on");
    check(!pageCheck.busy() && !status.overlay && pageCheck.failedFor === "", "still busy or showing the overlay");
  });

  test("StreamShare: one tab leads; when it leaves, the next takes the stream over", async function () {
    var base = "/---nowhere-" + Math.random().toString(16).slice(2);
    var options = parts.withDefaults({ reconnect_interval: 60000 });
    var heard = [[], []], statuses = [{}, {}];
    var shares = [0, 1].map(function (index) {
      return new parts.StreamShare(window, base, options, statuses[index],
        function (message) { heard[index].push(message.type); }, function () { return ""; });
    });
    shares[0].start();
    shares[1].start();
    for (var i = 0; i < 40 && !(statuses[0].leader || statuses[1].leader); i++) await wait(25);
    check(statuses[0].leader && !statuses[1].leader, "leaders: " + statuses[0].leader + ", " + statuses[1].leader);
    equal(statuses[0].mode + " " + statuses[1].mode, "shared shared", "modes");
    // No server answers here: the leader's stream fails, and both tabs hear that it is down.
    for (i = 0; i < 40 && heard[1].indexOf("down") === -1; i++) await wait(25);
    check(heard[0].indexOf("down") !== -1 && heard[1].indexOf("down") !== -1, "heard: " + JSON.stringify(heard));
    shares[0].leave();
    for (i = 0; i < 40 && !statuses[1].leader; i++) await wait(25);
    check(statuses[1].leader && !statuses[0].leader && !shares[0].active(), "the stream was not handed on");
    shares[1].leave();
  });

  // --- the overlay ---------------------------------------------------------------------------------------

  test("the overlay: an open shadow root that page styles do not reach, whose styles do not reach the page", function () {
    var hostile = document.createElement("style");
    hostile.textContent = "* { color: rgb(0, 255, 0) !important; font-size: 40px !important; }" +
      " distreload-ui, #distreload-ui { display: none !important; opacity: 0 !important; }" +
      " pre, p, div { display: none !important; } .title { font-weight: 100 !important; }";
    document.head.appendChild(hostile);
    var probe = document.createElement("span");
    probe.className = "title";
    document.body.appendChild(probe);
    var before = getComputedStyle(probe).cssText || [getComputedStyle(probe).fontWeight, getComputedStyle(probe).color].join();
    var ui = new parts.Ui(document);
    try {
      ui.showOverlay("distreload: the server answered 500", "Traceback\n  line 2", "waiting for the server");
      var host = document.getElementById("distreload-ui");
      check(host && host.parentNode === document.documentElement, "host not on <html>");
      check(host.shadowRoot, "shadow root not open");
      var title = host.shadowRoot.querySelector(".title"), overlay = host.shadowRoot.querySelector(".overlay");
      equal(getComputedStyle(title).color, "rgb(183, 28, 28)", "title colour");
      equal(getComputedStyle(title).fontSize, "18px", "title size");
      check(overlay.getBoundingClientRect().width >= window.innerWidth - 1, "overlay not covering the page");
      equal(getComputedStyle(overlay).display, "block", "overlay display");
      equal(host.shadowRoot.querySelector(".body").textContent, "Traceback\n  line 2", "body text");
      var after = getComputedStyle(probe).cssText || [getComputedStyle(probe).fontWeight, getComputedStyle(probe).color].join();
      equal(after, before, "the page's own element");
      ui.hideOverlay();
      equal(getComputedStyle(overlay).display, "none", "hidden overlay");
      ui.showIndicator("lost", "distreload: connection lost, reconnecting");
      var indicator = host.shadowRoot.querySelector(".indicator");
      check(indicator.getBoundingClientRect().width > 0 && indicator.getBoundingClientRect().width < 400, "indicator size");
      ui.showIndicator(null);
      check(indicator.hidden, "indicator still shown");
    } finally {
      hostile.remove();
      probe.remove();
      var left = document.getElementById("distreload-ui");
      if (left) left.remove();
    }
  });

  test("the overlay shows the first lines of an error page as text, never its markup or scripts", function () {
    var page = "<html><head><title>500 Internal Server Error</title><style>h1 { x: y }</style></head><body>" +
      "<h1>Oops</h1>\n\n\n\n<pre>Traceback\n  File x</pre><script>bad()<\/script></body></html>";
    var text = parts.firstLines(page, "text/html; charset=utf-8");
    check(text.indexOf("500 Internal Server Error") === 0, text);
    check(text.indexOf("Oops") !== -1 && text.indexOf("Traceback") !== -1, text);
    check(text.indexOf("bad()") === -1 && text.indexOf("x: y") === -1 && text.indexOf("<") === -1, text);
    check(text.indexOf("\n\n\n") === -1, "blank runs kept");
    var long = [];
    for (var i = 0; i < 100; i++) long.push("line " + i);
    equal(parts.firstLines(long.join("\n"), "text/plain").split("\n").length, 15, "lines kept");
  });

  test("the overlay lays out the server's exception report as text, markup and all", function () {
    var report = {
      type: "jinja2.exceptions.TemplateSyntaxError", message: "unexpected '}' <img src=x onerror=bad()>",
      causes: ["KeyError: 'greeting'"],
      location: { file: "templates/page.html", line: 4, code: "<p>{{ greeting }</p>" },
      frames: [{ file: "app/main.py", line: 12, function: "page", code: "return render('page.html')" }],
      other_frames: 9
    };
    var text = parts.errorText(JSON.stringify(report), "application/vnd.distreload.error+json; charset=utf-8");
    equal(text, [
      "jinja2.exceptions.TemplateSyntaxError: unexpected '}' <img src=x onerror=bad()>",
      "  raised from KeyError: 'greeting'",
      "",
      "  File \"templates/page.html\", line 4",
      "    <p>{{ greeting }</p>",
      "",
      "Traceback in your code (most recent call last):",
      "  File \"app/main.py\", line 12, in page",
      "    return render('page.html')",
      "",
      "(9 frames of the framework, libraries and Python not shown)"
    ].join("\n"), "report");
    var ui = new parts.Ui(document);
    try {
      ui.showOverlay("distreload: the server answered 500", text, "waiting");
      var body = document.getElementById("distreload-ui").shadowRoot.querySelector(".body");
      equal(body.textContent, text, "shown as text");
      equal(body.querySelectorAll("*").length, 0, "no element made from the report");
    } finally {
      document.getElementById("distreload-ui").remove();
    }
    // Anything else (or a report that does not parse) is an ordinary error page: its first lines.
    equal(parts.errorText("Internal Server Error", "text/plain; charset=utf-8"), "Internal Server Error", "plain");
    equal(parts.errorText("{not json", "application/vnd.distreload.error+json"), "{not json", "broken report");
  });

  // --- page reports ------------------------------------------------------------------------------------------

  // A window whose fetch and sendBeacon record what would be sent.
  function reportingWindow() {
    var sent = [];
    return {
      sent: sent,
      crypto: window.crypto,
      navigator: { sendBeacon: function (url, body) { sent.push({ via: "beacon", url: url, body: JSON.parse(body) }); return true; } },
      fetch: function (url, init) {
        sent.push({ via: "fetch", url: url, body: JSON.parse(init.body), keepalive: init.keepalive });
        return Promise.resolve({ ok: true });
      }
    };
  }

  test("a page reports only when what it shows changes, and names its stream", function () {
    var fake = reportingWindow(), storage = fakeStorage();
    var report = new parts.PageReport(fake, "/---distreload---", storage, function () { return "/tv/1"; });
    report.shown = "aaaaaaaa-1";
    report.send({ state: "live" });
    equal(fake.sent.length, 0, "reports before the stream's hello");
    report.hello("0011223344556677");
    report.send({ state: "live" });
    report.send({ state: "live" });
    report.send(null);  // something under way: nothing to say yet
    equal(fake.sent.length, 1, "reports of an unchanged page");
    var first = fake.sent[0];
    equal(first.url, "/---distreload---/page", "url");
    check(first.keepalive, "not keepalive");
    equal(JSON.stringify(first.body), JSON.stringify({ page: report.id, path: "/tv/1", version: "aaaaaaaa-1", how: "loaded",
      state: "live", reason: "", stream: "0011223344556677" }), "report");
    report.applied("css", "aaaaaaaa-2");
    report.send({ state: "live" });
    report.send({ state: "overlay", reason: "the server answered 500", trying: "aaaaaaaa-3" });
    report.send({ state: "overlay", reason: "the server answered 500", trying: "aaaaaaaa-3" });
    equal(fake.sent.length, 3, "reports after two changes");
    equal(fake.sent[1].body.how + " " + fake.sent[1].body.version, "css aaaaaaaa-2", "applied");
    equal(fake.sent[2].body.reason + ", " + fake.sent[2].body.trying, "the server answered 500, aaaaaaaa-3", "reason");
    // The same overlay after a failed check for a newer reload is news: the worker counts it failed for that one.
    report.send({ state: "overlay", reason: "the server answered 500", trying: "aaaaaaaa-4" });
    equal(fake.sent.length + " " + fake.sent[3].body.trying, "4 aaaaaaaa-4", "a failure for a newer reload");
  });

  test("a page that goes says so with a beacon; one that reloads for a reload stays the same page", function () {
    var fake = reportingWindow(), storage = fakeStorage();
    var path = function () { return "/tv/1"; };
    var report = new parts.PageReport(fake, "/b", storage, path);
    report.hello("0011223344556677");
    report.shown = "aaaaaaaa-1";
    report.reloading("aaaaaaaa-2");
    report.leave();  // the pagehide of the reload: no leave
    equal(fake.sent.map(function (s) { return s.via + " " + s.body.state; }).join(), "fetch reloading", "sent");
    var next = new parts.PageReport(fake, "/b", storage, path);
    equal(next.id, report.id, "the reloaded page's id");
    equal(next.how + " " + next.shown, "reloaded aaaaaaaa-2", "how the new page got there");
    next.leave();
    next.leave();
    equal(fake.sent.length, 2, "one leave");
    equal(fake.sent[1].via + " " + JSON.stringify(fake.sent[1].body), "beacon " + JSON.stringify({ page: report.id, leave: true }),
      "the leave");
    var other = new parts.PageReport(fake, "/b", fakeStorage(), path);
    check(other.id !== report.id && /^[0-9a-f]{16}$/.test(other.id), "another tab's id: " + other.id);
  });

  test("a page whose stream changed names the one before, in its reports and its leave", function () {
    var fake = reportingWindow(), storage = fakeStorage();
    var path = function () { return "/tv/1"; };
    var report = new parts.PageReport(fake, "/b", storage, path);
    report.shown = "aaaaaaaa-1";
    report.hello("aaaaaaaa00000000bbbbbbbb");
    report.send({ state: "live" });
    report.hello("aaaaaaaa00000000bbbbbbbb");  // the same stream again: nothing changed
    report.send({ state: "live" });
    equal(fake.sent.length, 1, "reports through one stream");
    check(!("was" in fake.sent[0].body), "a first stream names none before it");
    report.hello("cccccccc11111111dddddddd");  // the tab that held the shared stream left
    report.send({ state: "live" });
    equal(fake.sent[1].body.stream + " " + fake.sent[1].body.was, "cccccccc11111111dddddddd aaaaaaaa00000000bbbbbbbb",
      "after a new stream");
    report.reloading("aaaaaaaa-2");
    var next = new parts.PageReport(fake, "/b", storage, path);
    next.hello("eeeeeeee22222222ffffffff");
    next.send({ state: "live" });
    var last = fake.sent[fake.sent.length - 1].body;
    equal(last.how + " " + last.stream + " " + last.was, "reloaded eeeeeeee22222222ffffffff cccccccc11111111dddddddd",
      "the reloaded document names the stream its page had");
    next.leave();
    last = fake.sent[fake.sent.length - 1].body;
    equal(JSON.stringify(last), JSON.stringify({ page: report.id, leave: true, stream: "eeeeeeee22222222ffffffff",
      was: "cccccccc11111111dddddddd" }), "the leave names both");
  });

  test("a page names the stream a reload came through until the next reload, however often it moves", function () {
    var fake = reportingWindow(), storage = fakeStorage();
    var path = function () { return "/tv/1"; };
    var report = new parts.PageReport(fake, "/b", storage, path);
    report.shown = "aaaaaaaa-1";
    report.hello("aaaaaaaa00000000bbbbbbbb");
    report.reloadCame("aaaaaaaa-2");
    report.send({ state: "live" });
    check(!("was" in fake.sent[0].body), "the stream the reload came through is the current one");
    report.reloading("aaaaaaaa-2");
    var next = new parts.PageReport(fake, "/b", storage, path);
    next.hello("cccccccc11111111dddddddd");  // a tab's new document that led for a moment
    next.hello("eeeeeeee22222222ffffffff");  // then another tab's
    next.send({ state: "live" });
    var last = fake.sent[fake.sent.length - 1].body;
    equal(last.stream + " " + last.was + " " + last.came, "eeeeeeee22222222ffffffff aaaaaaaa00000000bbbbbbbb aaaaaaaa-2",
      "the reload's stream, and that reload");
    next.reloadCame("aaaaaaaa-3");
    next.hello("9999999933333333aaaaaaaa");
    next.send({ state: "live" });
    last = fake.sent[fake.sent.length - 1].body;
    equal(last.was + " " + last.came, "eeeeeeee22222222ffffffff aaaaaaaa-3", "the next reload's stream");
  });

  // --- run --------------------------------------------------------------------------------------------------

  (async function () {
    var results = [];
    for (var i = 0; i < cases.length; i++) {
      try {
        await cases[i].body();
        results.push({ name: cases[i].name, ok: true });
      } catch (error) {
        results.push({ name: cases[i].name, ok: false, error: String(error && error.stack || error) });
      }
    }
    window.unitResults = results;
  })();
})();
