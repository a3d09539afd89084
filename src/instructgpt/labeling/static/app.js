// instructgpt labeling: reorderable ranking list (drag and drop, buttons, arrow keys).
// Without JavaScript the page still works: each card has a "Rank" select instead.
// The form always submits rank_<pos> selects; this script keeps them in step with
// the visual order and the "tied with the one above" boxes.
(function () {
  "use strict";
  document.documentElement.classList.add("js");
  var list = document.getElementById("ranklist");
  if (!list) { return; }
  var status = document.getElementById("rank-status");
  var form = document.getElementById("rank-form");
  var dragging = null;

  function cards() {
    return Array.prototype.filter.call(list.children, function (el) { return el.classList.contains("card"); });
  }

  // Dense ranks from the order: a tied card shares the rank of the card above it.
  function refresh(moved) {
    var all = cards();
    var rank = 0;
    all.forEach(function (card, i) {
      var tie = card.querySelector(".tie-box");
      if (i === 0) { tie.checked = false; }
      tie.disabled = i === 0;
      if (!tie.checked) { rank += 1; }
      card.querySelector(".rank-select").value = String(rank);
      card.querySelector(".rank-badge").textContent = "Rank " + rank + (tie.checked ? " (tied)" : "");
      card.classList.toggle("tied", tie.checked);
      card.querySelector(".move-up").disabled = i === 0;
      card.querySelector(".move-down").disabled = i === all.length - 1;
    });
    if (moved && status) {
      status.textContent = "Response " + moved.dataset.letter + " is now " +
        moved.querySelector(".rank-badge").textContent.toLowerCase() + ".";
    }
  }

  function move(card, delta) {
    var all = cards();
    var j = all.indexOf(card) + delta;
    if (j < 0 || j >= all.length) { return; }
    list.insertBefore(card, delta < 0 ? all[j] : all[j].nextSibling);
    refresh(card);
  }

  list.addEventListener("click", function (e) {
    var button = e.target.closest("button");
    if (!button) { return; }
    var card = button.closest(".card");
    if (button.classList.contains("move-up")) { move(card, -1); }
    if (button.classList.contains("move-down")) { move(card, 1); }
    if (!button.disabled) { button.focus(); } else { card.focus(); }
  });

  list.addEventListener("change", function (e) {
    if (e.target.classList.contains("tie-box")) { refresh(e.target.closest(".card")); }
  });

  // Arrow keys move the focused card (not when focus is on a control inside it).
  list.addEventListener("keydown", function (e) {
    var card = e.target;
    if (!card.classList || !card.classList.contains("card")) { return; }
    if (e.key === "ArrowUp" || e.key === "ArrowDown") {
      e.preventDefault();
      move(card, e.key === "ArrowUp" ? -1 : 1);
      card.focus();
    }
  });

  // Drag and drop with pointer events (mouse, pen and touch), by the handle.
  list.addEventListener("pointerdown", function (e) {
    var handle = e.target.closest(".handle");
    if (!handle || e.button !== 0) { return; }
    e.preventDefault();
    dragging = handle.closest(".card");
    dragging.classList.add("dragging");
    handle.setPointerCapture(e.pointerId);
  });

  list.addEventListener("pointermove", function (e) {
    if (!dragging) { return; }
    var y = e.clientY;
    if (y < 40) { window.scrollBy(0, -20); } else if (y > window.innerHeight - 40) { window.scrollBy(0, 20); }
    var before = null;
    cards().some(function (card) {
      if (card === dragging) { return false; }
      var r = card.getBoundingClientRect();
      if (y < r.top + r.height / 2) { before = card; return true; }
      return false;
    });
    if (before) {
      if (dragging.nextElementSibling !== before) { list.insertBefore(dragging, before); }
    } else if (list.lastElementChild !== dragging) {
      list.appendChild(dragging);
    }
  });

  function drop() {
    if (!dragging) { return; }
    var card = dragging;
    dragging = null;
    card.classList.remove("dragging");
    refresh(card);
  }
  list.addEventListener("pointerup", drop);
  list.addEventListener("pointercancel", drop);

  form.addEventListener("submit", function () { refresh(null); });
  refresh(null);
}());
