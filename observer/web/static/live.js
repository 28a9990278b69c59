// The live view: asks for the rooms every few seconds (a 304 when only the clock moved)
// and counts the seconds itself. The page works without it, as of when it was loaded.
(function () {
  var box = document.getElementById("rooms");
  if (!box) return;
  var every = parseInt(box.getAttribute("data-refresh-ms"), 10) || 5000;
  var version = null;
  var skew = 0; // the server's clock minus this one, in ms

  function human(ms) {
    var s = ms / 1000;
    if (s < 60) return s.toFixed(1) + "s";
    var t = Math.round(s), h = Math.floor(t / 3600), m = Math.floor((t % 3600) / 60);
    var pad = function (n) { return (n < 10 ? "0" : "") + n; };
    return h ? h + "h" + pad(m) + "m" + pad(t % 60) + "s" : m + "m" + pad(t % 60) + "s";
  }
  function clockFrom(html) {
    var now = box.querySelector("[data-now]");
    if (now) skew = Date.parse(now.getAttribute("data-now")) - Date.now();
  }
  function tick() {
    var at = Date.now() + skew;
    box.querySelectorAll(".tick[data-since]").forEach(function (el) {
      el.textContent = human(Math.max(0, at - Date.parse(el.getAttribute("data-since"))));
    });
  }
  function update() {
    var headers = version ? { "If-None-Match": version } : {};
    fetch("/now/live", { credentials: "same-origin", cache: "no-store", headers: headers })
      .then(function (r) {
        if (r.status === 304) return null;
        if (!r.ok) throw new Error(r.status);
        version = r.headers.get("ETag");
        return r.text();
      })
      .then(function (html) {
        if (html !== null) { box.innerHTML = html; clockFrom(); tick(); }
        box.removeAttribute("data-stale");
      })
      .catch(function () { box.setAttribute("data-stale", "1"); })
      .finally(function () { setTimeout(update, every); });
  }
  clockFrom();
  setInterval(tick, 1000);
  setTimeout(update, every);
})();
