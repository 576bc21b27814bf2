// QueueCTL stats page: live updates and actions without page reloads.
//
// Safety rule: this script never builds HTML out of data. Live regions are
// replaced by fragments the server rendered (and escaped) with Jinja; any value
// the script shows itself goes through textContent.
(function () {
  "use strict";

  var OVERVIEW_EVERY = 2000;
  var JOB_EVERY = 1000;
  // Live output kept on a job's page: the broker keeps the last 1 MiB per
  // stream, and a chatty job left open for hours must not exhaust the tab.
  var OUTPUT_KEEP = 1 << 20, OUTPUT_TRIM_AT = 2 << 20;
  var TERMINAL = { completed: true, dead: true, canceled: true };

  function $(selector, root) { return (root || document).querySelector(selector); }
  function $all(selector, root) { return Array.prototype.slice.call((root || document).querySelectorAll(selector)); }

  function csrfToken() {
    var meta = $('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  // --- broker state and messages ---------------------------------------------------

  // why: "page" when the stats page itself did not answer (the fetch failed),
  // else the page answered that no broker did (a 503).
  function setBrokerDown(down, why) {
    var pageGone = down && why === "page";
    var banner = $("[data-testid=broker-banner]");
    var pageBanner = $("[data-testid=page-banner]");
    var live = $("[data-testid=live-indicator]");
    if (banner) banner.hidden = !down || pageGone;
    if (pageBanner) pageBanner.hidden = !pageGone;
    if (live) {
      live.classList.toggle("down", down);
      live.classList.toggle("up", !down);
      var text = $(".live-text", live);
      if (text) text.textContent = pageGone ? "page not answering" : down ? "broker unavailable" : "live";
    }
    document.body.classList.toggle("stale", down);
    if (!down) {
      var updated = $("[data-testid=updated]");
      if (updated) updated.textContent = "updated " + new Date().toLocaleTimeString();
    }
  }

  function flash(message, ok) {
    var area = $("[data-testid=flash]");
    if (!area) return;
    var p = document.createElement("p");
    p.className = "flash " + (ok ? "flash-ok" : "flash-error");
    p.textContent = message;
    area.insertBefore(p, area.firstChild);
    while (area.children.length > 3) area.removeChild(area.lastChild);
    setTimeout(function () { if (p.parentNode) p.parentNode.removeChild(p); }, 8000);
  }

  // --- live regions -----------------------------------------------------------------

  function swapRegions(html) {
    var doc = new DOMParser().parseFromString(html, "text/html");
    $all("[data-region]", doc).forEach(function (fresh) {
      var name = fresh.getAttribute("data-region");
      $all("[data-region]").forEach(function (target) {
        if (target.getAttribute("data-region") !== name) return;
        var nodes = Array.prototype.map.call(fresh.childNodes, function (node) {
          return document.importNode(node, true);
        });
        target.replaceChildren.apply(target, nodes);
      });
    });
  }

  function poller(fetchOnce, every) {
    var timer = null, running = false, again = false, stopped = false;
    function tick() {
      if (stopped) return;
      if (running) { again = true; return; }
      clearTimeout(timer);
      running = true;
      Promise.resolve().then(fetchOnce).then(function (keepGoing) {
        if (keepGoing === false) stopped = true;
      }, function () { /* reported by fetchOnce */ }).then(function () {
        running = false;
        if (stopped) return;
        if (again) { again = false; tick(); return; }
        timer = setTimeout(tick, every);
      });
    }
    return { now: tick };
  }

  // --- the overview -----------------------------------------------------------------

  var overview = $("#overview");
  var overviewPoller = null;
  var filterForm = $("form[data-filters]");

  function filterQuery() {
    if (!filterForm) return "";
    var params = new URLSearchParams();
    $all("select, input", filterForm).forEach(function (field) {
      if (field.name && field.value.trim() !== "") params.set(field.name, field.value.trim());
    });
    var text = params.toString();
    return text ? "?" + text : "";
  }

  function refreshOverview() {
    var url = overview.getAttribute("data-live-url") + filterQuery();
    return fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) {
        if (response.status === 401) { window.location.reload(); return false; }
        if (!response.ok) { setBrokerDown(true); return; }
        return response.text().then(function (html) { swapRegions(html); setBrokerDown(false); });
      }, function () { setBrokerDown(true, "page"); });
  }

  if (overview) {
    overviewPoller = poller(refreshOverview, OVERVIEW_EVERY);
    setTimeout(overviewPoller.now, OVERVIEW_EVERY);
    if (filterForm) {
      var debounce = null;
      var onChange = function () {
        clearTimeout(debounce);
        debounce = setTimeout(function () {
          var query = filterQuery();
          history.replaceState(null, "", window.location.pathname + query + window.location.hash);
          overviewPoller.now();
        }, 250);
      };
      filterForm.addEventListener("input", onChange);
      filterForm.addEventListener("change", onChange);
      filterForm.addEventListener("submit", function (event) { event.preventDefault(); onChange(); });
      var clear = $("[data-clear-filters]", filterForm);
      if (clear) clear.addEventListener("click", function (event) {
        event.preventDefault();
        $all("select, input", filterForm).forEach(function (field) { field.value = ""; });
        onChange();
      });
    }
  }

  // --- a job's page -----------------------------------------------------------------

  var jobRoot = $("[data-job-root]");

  function jobPage(root) {
    var attempt = root.getAttribute("data-attempt") || null;
    var out = parseInt(root.getAttribute("data-out") || "0", 10);
    var err = parseInt(root.getAttribute("data-err") || "0", 10);
    var stdout = $("[data-testid=stdout]", root), stderr = $("[data-testid=stderr]", root);
    var label = $("[data-testid=output-attempt]", root), skipped = $("[data-testid=output-skipped]", root);
    var liveMark = $("[data-testid=output-live]", root);
    var ticks = 0;

    function append(pre, text) {
      if (!text) return;
      var atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 24;
      pre.appendChild(document.createTextNode(text));
      if (pre.textContent.length > OUTPUT_TRIM_AT) {
        pre.textContent = pre.textContent.slice(-OUTPUT_KEEP);
        if (skipped) skipped.hidden = false;
      }
      if (atBottom) pre.scrollTop = pre.scrollHeight;
    }

    function refreshFields() {
      return fetch(root.getAttribute("data-partial-url"), { credentials: "same-origin" })
        .then(function (response) {
          if (!response.ok) { if (response.status >= 500) setBrokerDown(true); return; }
          return response.text().then(function (html) {
            swapRegions(html);
            setBrokerDown(false);
          });
        });
    }

    function refreshLogs() {
      var url = new URL(root.getAttribute("data-logs-url"), window.location.href);
      url.searchParams.set("out", String(out));
      url.searchParams.set("err", String(err));
      if (attempt !== null) url.searchParams.set("attempt", String(attempt));
      return fetch(url.toString(),
                   { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (response) {
          if (!response.ok) { if (response.status >= 500) setBrokerDown(true); return null; }
          return response.json();
        }, function () { setBrokerDown(true, "page"); return null; })
        .then(function (data) {
          if (!data) return true;
          setBrokerDown(false);
          var now = data.attempt === null ? null : String(data.attempt);
          if (now !== attempt) {
            stdout.textContent = "";
            stderr.textContent = "";
            attempt = now;
            label.textContent = attempt === null ? "not started yet" : "attempt " + attempt;
          }
          append(stdout, data.stdout);
          append(stderr, data.stderr);
          out = data.out; err = data.err;
          if (data.skipped) skipped.hidden = false;
          var finished = data.done && TERMINAL[data.state] === true;
          ticks += 1;
          if (finished || ticks % 2 === 0) {
            return refreshFields().then(function () {
              if (finished && liveMark) liveMark.hidden = true;
              return !finished;
            }, function () { return !finished; });
          }
          return true;
        });
    }

    if (root.getAttribute("data-live") === "1") {
      var p = poller(refreshLogs, JOB_EVERY);
      setTimeout(p.now, JOB_EVERY);
      return p;
    }
    return { now: function () { refreshFields(); } };
  }

  var jobPoller = jobRoot ? jobPage(jobRoot) : null;

  // --- an error page shown because the broker was down ------------------------------

  // It has no live regions: ask for the same URL until the broker answers, then reload.
  if ($("[data-retry-when-up]")) {
    poller(function () {
      return fetch(window.location.href, { credentials: "same-origin", method: "HEAD" })
        .then(function (response) {
          if (response.status === 503) return true;
          window.location.reload();
          return false;
        }, function () { return true; });
    }, OVERVIEW_EVERY).now();
  }

  // --- actions (cancel, retry, retry all) -------------------------------------------

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.hasAttribute || !form.hasAttribute("data-js-action")) return;
    event.preventDefault();
    var button = $("button[type=submit]", form);
    var label = button ? button.textContent : "";
    if (button) {
      button.disabled = true;
      if (button.getAttribute("data-busy")) button.textContent = button.getAttribute("data-busy");
    }
    fetch(form.getAttribute("action"), {
      method: "POST", credentials: "same-origin", body: new FormData(form),
      headers: { "Accept": "application/json", "X-CSRFToken": csrfToken() },
    }).then(function (response) {
      return response.json().then(function (data) {
        if (response.status === 503) setBrokerDown(true);
        var message = data.message || data.error || ("HTTP " + response.status);
        flash(message, response.ok && data.ok !== false);
      }, function () {
        flash("The action failed (HTTP " + response.status + ").", false);
      });
    }, function () {
      flash("The stats page did not answer; is it still running?", false);
    }).then(function () {
      if (button && button.isConnected) { button.disabled = false; button.textContent = label; }
      if (overviewPoller) overviewPoller.now();
      if (jobPoller) jobPoller.now();
    });
  });
})();
