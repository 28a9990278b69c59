// Swaps in the live rooms every few seconds; the page itself works without it.
(function () {
  var box = document.getElementById("rooms");
  if (!box) return;
  var every = parseInt(box.getAttribute("data-refresh-ms"), 10) || 5000;
  function update() {
    fetch("/now/live", { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.text(); })
      .then(function (html) { box.innerHTML = html; box.removeAttribute("data-stale"); })
      .catch(function () { box.setAttribute("data-stale", "1"); })
      .finally(function () { setTimeout(update, every); });
  }
  setTimeout(update, every);
})();
