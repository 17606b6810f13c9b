// Release Pipeline portal: the live deployment log (server-sent events) and profile rows.
// Everything works without it except live updates and "add row" conveniences.
(function () {
  "use strict";

  var TONES = { succeeded: "ok", failed: "bad", refused: "bad", queued: "wait", building: "busy",
                deploying: "busy", superseded: "muted" };

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text; // textContent: log text is never HTML
    return node;
  }

  // Column counts: set here, since the Content-Security-Policy allows no inline style attributes.
  document.querySelectorAll("[data-phases], [data-cols]").forEach(function (node) {
    if (node.dataset.phases) node.style.setProperty("--phases", node.dataset.phases);
    if (node.dataset.cols) node.style.setProperty("--cols", node.dataset.cols);
  });

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
      item.appendChild(el("time", "", (line.at || "").slice(11, 19)));
      item.appendChild(el("span", "stream", line.stream));
      item.appendChild(el("span", "text", line.text));
      log.appendChild(item);
      var empty = document.getElementById("log-empty");
      if (empty) empty.remove();
      lines += 1;
      if (count) count.textContent = lines + (lines === 1 ? " line" : " lines");
      if (follow) log.scrollTop = log.scrollHeight;
    });

    source.addEventListener("status", function (event) {
      var data = JSON.parse(event.data);
      document.querySelectorAll("h1 [data-status-badge]").forEach(function (badge) {
        badge.className = "badge tone-" + (TONES[data.status] || "muted");
        badge.textContent = data.status;
        if (["queued", "building", "deploying"].indexOf(data.status) >= 0) {
          badge.insertBefore(el("span", "pulse"), badge.firstChild);
        }
      });
    });

    source.addEventListener("done", function () {
      source.close();
      if (indicator) indicator.hidden = true;
      // The finished page shows the outcome, the URL and, on failure, the evidence.
      window.setTimeout(function () { window.location.reload(); }, 1500);
    });
    log.scrollTop = log.scrollHeight;
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
