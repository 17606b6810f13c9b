// Release Pipeline portal: live pages and the deployment log (server-sent events), local times, profile rows.
// Everything works without it except live updates and "add row" conveniences.
(function () {
  "use strict";

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text; // textContent: log text is never HTML
    return node;
  }

  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function clock(d) { return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()); }
  function localDay(d) { return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()); }
  function utcText(d) { return d.toISOString().slice(0, 19).replace("T", " ") + " UTC"; }
  var zone = (function () {
    try { return Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch (e) { return ""; }
  })();

  // Times: shown in the reader's own zone; the UTC time is on hover.
  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (node) {
      var d = new Date(node.getAttribute("datetime"));
      if (isNaN(d.getTime())) return;
      node.title = localDay(d) + " " + clock(d) + (zone ? " " + zone : "") + " · " + utcText(d);
      if (node.hasAttribute("data-clock")) node.textContent = clock(d);
      else if (node.hasAttribute("data-local")) node.textContent = localDay(d) + " " + clock(d);
    });
  }

  // Column counts: set here, since the Content-Security-Policy allows no inline style attributes.
  function decorate(root) {
    root.querySelectorAll("[data-phases], [data-cols]").forEach(function (node) {
      if (node.dataset.phases) node.style.setProperty("--phases", node.dataset.phases);
      if (node.dataset.cols) node.style.setProperty("--cols", node.dataset.cols);
    });
    localTimes(root);
  }
  decorate(document);

  // --- live parts ---------------------------------------------------------------------------
  // The page's [data-live-part] elements are fetched again and swapped in place when the
  // server says what they show changed: a part someone is typing in waits until they leave it.
  var pending = false, fetching = false;
  function identity(node) {
    return [node.tagName, node.getAttribute("href") || "", node.form ? node.form.getAttribute("action") : "",
            node.textContent.trim()].join("|");
  }
  function sameElement(root, node) {
    var wanted = identity(node);
    return Array.prototype.find.call(root.querySelectorAll(node.tagName), function (candidate) {
      return identity(candidate) === wanted;
    }) || null;
  }
  function refreshParts() {
    if (fetching) { pending = true; return; }
    fetching = true;
    pending = false;
    fetch(window.location.href, { headers: { Accept: "text/html" }, credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        fetching = false;
        if (html === null) return;
        var fresh = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-live-part]").forEach(function (part) {
          var replacement = part.id && fresh.getElementById(part.id);
          if (!replacement) return;
          var active = document.activeElement, focused = null;
          if (active && active !== document.body && part.contains(active)) {
            if (active.matches("input, select, textarea")) { pending = true; return; }
            focused = active;
          }
          var node = document.importNode(replacement, true);
          part.replaceWith(node);
          decorate(node);
          // A keyboard user keeps their place: the same link or button gets the focus back.
          var again = focused && sameElement(node, focused);
          if (again) again.focus();
        });
        if (pending) window.setTimeout(refreshParts, 1500);
      })
      .catch(function () { fetching = false; });
  }
  document.addEventListener("focusout", function () { if (pending && !fetching) window.setTimeout(refreshParts, 200); });

  var main = document.getElementById("main");
  if (main && main.dataset.liveStream && window.EventSource) {
    var known = main.dataset.liveState;
    var watcher = new EventSource(main.dataset.liveStream);
    watcher.addEventListener("state", function (event) {
      var data = JSON.parse(event.data);
      if (data.state === known) return;
      known = data.state;
      main.dataset.liveState = known;
      refreshParts();
    });
  }

  // --- live log ---------------------------------------------------------------------------
  var box = document.getElementById("logbox");
  if (box && box.dataset.live === "1" && window.EventSource) {
    var log = document.getElementById("log");
    var count = document.getElementById("line-count");
    var indicator = document.getElementById("live-indicator");
    var lines = log.children.length;
    var source = new EventSource(box.dataset.stream + "?after=" + encodeURIComponent(box.dataset.last || "0"));

    var nearBottom = function () { return log.scrollHeight - log.scrollTop - log.clientHeight < 40; };

    source.addEventListener("line", function (event) {
      var line = JSON.parse(event.data);
      if (log.querySelector('[data-id="' + line.id + '"]')) return;
      var follow = nearBottom();
      var item = el("li", "s-" + line.stream + " fresh");
      item.dataset.id = line.id;
      var stamp = el("time", "", (line.at || "").slice(11, 19));
      if (line.at) { stamp.setAttribute("datetime", line.at); stamp.setAttribute("data-clock", ""); }
      item.appendChild(stamp);
      localTimes(item);
      item.appendChild(el("span", "stream", line.stream));
      item.appendChild(el("span", "text", line.text));
      log.appendChild(item);
      var empty = document.getElementById("log-empty");
      if (empty) empty.remove();
      lines += 1;
      if (count) count.textContent = lines + (lines === 1 ? " line" : " lines");
      if (follow) log.scrollTop = log.scrollHeight;
    });

    source.addEventListener("status", function () {
      // Badge, facts (started, image), the URL once it serves, what a queued one waits behind.
      refreshParts();
    });

    source.addEventListener("done", function () {
      source.close();
      if (indicator) indicator.hidden = true;
      // The outcome, the URL and, on failure, the evidence; the log keeps its place at the end.
      refreshParts();
      log.scrollTop = log.scrollHeight;
    });
    log.scrollTop = log.scrollHeight;
  }

  // --- runtime logs: a live tail of each container ------------------------------------------
  var runtime = document.getElementById("runtime-logs");
  if (runtime && window.EventSource) {
    var tail = new EventSource(runtime.dataset.stream + "?since=" + encodeURIComponent(runtime.dataset.since));
    tail.addEventListener("open", function () {
      runtime.querySelectorAll("[data-tail-indicator]").forEach(function (node) { node.hidden = false; });
    });
    tail.addEventListener("line", function (event) {
      var line = JSON.parse(event.data);
      var section = runtime.querySelector('[data-source="' + CSS.escape(line.source) + '"]');
      if (!section) return;
      var list = section.querySelector("ol");
      var follow = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
      var item = el("li", "s-runtime fresh");
      var stamp = el("time", "", (line.at || "").slice(11, 19));
      stamp.setAttribute("datetime", line.at);
      stamp.setAttribute("data-clock", "");
      item.appendChild(stamp);
      item.appendChild(el("span", "stream", line.source));
      item.appendChild(el("span", "text", line.text));
      localTimes(item);
      list.appendChild(item);
      var empty = section.querySelector(".log-empty");
      if (empty) empty.remove();
      if (follow) list.scrollTop = list.scrollHeight;
    });
    runtime.querySelectorAll("ol.log").forEach(function (list) { list.scrollTop = list.scrollHeight; });
  }

  // --- profile form -----------------------------------------------------------------------
  function addRow(templateId, intoId) {
    var template = document.getElementById(templateId);
    var body = document.getElementById(intoId);
    if (!template || !body) return null;
    var row = template.content.firstElementChild.cloneNode(true);
    body.appendChild(row);
    return row;
  }

  document.querySelectorAll("[data-add-row]").forEach(function (button) {
    button.addEventListener("click", function () {
      var row = addRow(button.dataset.addRow, button.dataset.into);
      if (row) row.querySelector("input").focus();
    });
  });

  document.querySelectorAll("[data-override]").forEach(function (button) {
    button.addEventListener("click", function () {
      var row = addRow("env-row-template", "env-rows");
      if (!row) return;
      var inputs = row.querySelectorAll("input");
      inputs[0].value = button.dataset.override;
      inputs[1].value = button.dataset.value || "";
      inputs[1].focus();
      inputs[1].select();
      button.disabled = true;
    });
  });

  document.querySelectorAll("[data-override-secret]").forEach(function (button) {
    button.addEventListener("click", function () {
      var row = addRow("secret-row-template", "secret-rows");
      if (!row) return;
      var inputs = row.querySelectorAll("input");
      inputs[0].value = button.dataset.overrideSecret;
      inputs[1].focus();
      button.disabled = true;
    });
  });
})();
