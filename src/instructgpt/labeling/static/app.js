// instructgpt labeling: the ranking page (and the "js" class every page uses).
//
// The list holds one box (li.group) per rank, best first; a box with two or more
// cards is a tie. A card only joins or leaves a tie when the labeler says so:
//   - "Tie ↑" (or T) moves the card into the rank above; "Untie" (or U) gives it
//     its own rank right below its tie; dropping a dragged card ONTO a rank ties it;
//   - ▲/▼ (or the arrow keys on a card) move a whole rank, tie included;
//   - dropping a dragged card BETWEEN ranks gives it a rank of its own there.
// The form always submits the rank_<pos> selects (what the page uses without
// JavaScript); refresh() keeps them equal to the boxes' order.
(function () {
  "use strict";
  document.documentElement.classList.add("js");
  var list = document.getElementById("ranklist");
  if (!list) { return; }
  var form = document.getElementById("rank-form");
  var status = document.getElementById("rank-status");
  var summary = document.getElementById("order-summary");
  var scoreStatus = document.getElementById("score-status");
  var problem = document.getElementById("submit-problem");
  var groupTemplate = document.getElementById("group-template");
  form.noValidate = true; // scores are checked in onSubmit (their inputs may be folded away)

  // ------------------------------------------------------------ model (the DOM)

  function groups() {
    return Array.prototype.filter.call(list.children, function (el) { return el.classList.contains("group"); });
  }
  function members(group) {
    return Array.prototype.slice.call(group.querySelector(".members").children);
  }
  function cards() {
    return Array.prototype.slice.call(list.querySelectorAll(".card"));
  }
  function groupOf(card) { return card.closest(".group"); }
  function letter(card) { return card.dataset.letter; }
  function score(card) {
    var checked = card.querySelector(".likert input:checked");
    return checked ? Number(checked.value) : null;
  }
  function newGroup(card) {
    var group = groupTemplate.content.firstElementChild.cloneNode(true);
    group.querySelector(".members").appendChild(card);
    return group;
  }
  function removeIfEmpty(group) {
    if (group && group.parentNode && !members(group).length) { group.parentNode.removeChild(group); }
  }
  function describe(group) {
    var rank = groups().indexOf(group) + 1;
    var names = members(group).map(letter);
    return "rank " + rank + (names.length > 1 ? " (tie of " + names.join(", ") + ")" : "");
  }

  // ------------------------------------------------------------ operations

  function moveGroup(group, delta) {
    var all = groups();
    var j = all.indexOf(group) + delta;
    if (j < 0 || j >= all.length) { return false; }
    list.insertBefore(group, delta < 0 ? all[j] : all[j].nextSibling);
    return true;
  }

  function tieUp(card) {
    var from = groupOf(card);
    var above = from.previousElementSibling;
    if (!above) { return false; }
    above.querySelector(".members").appendChild(card);
    removeIfEmpty(from);
    return true;
  }

  function untie(card) {
    var from = groupOf(card);
    if (members(from).length < 2) { return false; }
    list.insertBefore(newGroup(card), from.nextSibling);
    return true;
  }

  // target: {gap: i} = a rank of its own before groups()[i]; {join: group} = tie with it.
  function isNoop(card, target) {
    var from = groupOf(card);
    if (target.join) { return target.join === from; }
    var i = groups().indexOf(from);
    return members(from).length === 1 && (target.gap === i || target.gap === i + 1);
  }

  function dropAt(card, target) {
    if (isNoop(card, target)) { return false; }
    var from = groupOf(card);
    if (target.join) {
      target.join.querySelector(".members").appendChild(card);
    } else {
      var before = groups()[target.gap] || null;
      list.insertBefore(newGroup(card), before);
    }
    removeIfEmpty(from);
    return true;
  }

  function setScore(card, value) {
    var input = card.querySelector(".likert input[value='" + value + "']");
    if (input) { input.checked = true; }
  }

  // ------------------------------------------------------------ view

  function refresh() {
    var all = groups();
    summary.textContent = "";
    all.forEach(function (group, g) {
      var rank = g + 1;
      var names = members(group);
      var tied = names.length > 1;
      group.classList.toggle("tied", tied);
      group.querySelector(".rank-num").textContent = String(rank);
      var up = group.querySelector(".move-up");
      var down = group.querySelector(".move-down");
      up.disabled = g === 0;
      down.disabled = g === all.length - 1;
      up.setAttribute("aria-label", "Move rank " + rank + " up");
      down.setAttribute("aria-label", "Move rank " + rank + " down");
      var item = document.createElement("li");
      item.className = tied ? "tied" : "";
      var num = document.createElement("span");
      num.className = "rank-num";
      num.textContent = String(rank);
      item.appendChild(num);
      names.forEach(function (card, i) {
        var others = names.filter(function (c) { return c !== card; }).map(letter);
        card.querySelector(".rank-select").value = String(rank);
        card.querySelector(".rank-badge").textContent = tied ? "tied with " + others.join(", ") : "";
        card.querySelector(".tie-up").disabled = g === 0;
        card.querySelector(".untie").hidden = !tied;
        card.setAttribute("aria-label", "Response " + letter(card) + ", rank " + rank +
          (tied ? ", tied with " + others.join(", ") : ""));
        if (i > 0) {
          var eq = document.createElement("span");
          eq.className = "eq";
          eq.textContent = "=";
          item.appendChild(eq);
        }
        var chip = document.createElement("button");
        chip.type = "button";
        chip.className = "chip" + (score(card) === null ? " unscored" : "");
        chip.dataset.pos = card.dataset.pos;
        chip.textContent = letter(card);
        var sc = document.createElement("small");
        sc.textContent = score(card) === null ? "–" : String(score(card));
        chip.appendChild(sc);
        chip.setAttribute("aria-label", "Response " + letter(card) + ", score " +
          (score(card) === null ? "not given" : score(card)) + "; go to it");
        item.appendChild(chip);
      });
      summary.appendChild(item);
    });
    var missing = cards().filter(function (c) { return score(c) === null; });
    cards().forEach(function (card) {
      var s = score(card);
      var flags = card.querySelectorAll(".flags input:checked").length;
      var button = card.querySelector(".detail-toggle");
      button.querySelector(".score-summary").textContent = s === null ? "Score –" : "Score " + s;
      button.querySelector(".flag-count").textContent = flags ? " · " + flags + (flags > 1 ? " issues" : " issue") : "";
      button.classList.toggle("unscored", s === null);
    });
    scoreStatus.textContent = missing.length
      ? "Scores: " + (cards().length - missing.length) + " of " + cards().length + " given"
      : "All " + cards().length + " responses scored";
    scoreStatus.classList.toggle("done", !missing.length);
  }

  function announce(text) { if (status) { status.textContent = text; } }

  function settle(card, message) {
    refresh();
    card.classList.remove("moved");
    void card.offsetWidth; // restart the highlight
    card.classList.add("moved");
    card.focus({ preventScroll: true });
    card.scrollIntoView({ block: "nearest" });
    announce(message);
  }

  function toggleDetail(card, open) {
    var detail = card.querySelector(".detail");
    var button = card.querySelector(".detail-toggle");
    open = open === undefined ? detail.hidden : open;
    detail.hidden = !open;
    button.setAttribute("aria-expanded", String(open));
    return open;
  }

  // Long responses are clamped so that all K fit about one screen (4 to 12 lines each);
  // "Show all" unfolds one.
  function clampTexts() {
    var lines = Math.floor((window.innerHeight - 140) / cards().length / 21) - 1;
    list.style.setProperty("--clamp-lines", String(Math.max(4, Math.min(12, lines))));
    cards().forEach(function (card) {
      var text = card.querySelector(".response-text");
      var more = card.querySelector(".more");
      text.classList.add("clamped");
      var long = text.scrollHeight > text.clientHeight + 2;
      more.hidden = !long;
      if (!long) { text.classList.remove("clamped"); }
    });
  }

  // ------------------------------------------------------------ buttons and keys

  list.addEventListener("click", function (e) {
    var button = e.target.closest("button");
    if (!button || !list.contains(button)) { return; }
    var card = button.closest(".card");
    var group = button.closest(".group");
    if (button.classList.contains("move-up") || button.classList.contains("move-down")) {
      var up = button.classList.contains("move-up");
      if (moveGroup(group, up ? -1 : 1)) {
        refresh();
        announce("Moved " + (up ? "up" : "down") + " to " + describe(group) + ".");
      }
      (button.disabled ? members(group)[0] : button).focus();
    } else if (button.classList.contains("tie-up")) {
      if (tieUp(card)) { settle(card, "Response " + letter(card) + " is now tied: " + describe(groupOf(card)) + "."); }
    } else if (button.classList.contains("untie")) {
      if (untie(card)) { settle(card, "Response " + letter(card) + " is untied: " + describe(groupOf(card)) + "."); }
    } else if (button.classList.contains("detail-toggle")) {
      toggleDetail(card);
    } else if (button.classList.contains("more")) {
      var text = card.querySelector(".response-text");
      var folded = text.classList.toggle("clamped");
      button.textContent = folded ? "Show all" : "Show less";
      button.setAttribute("aria-label", (folded ? "Show all of response " : "Show less of response ") + letter(card));
    }
  });

  list.addEventListener("change", function () { refresh(); });

  summary.addEventListener("click", function (e) {
    var chip = e.target.closest(".chip");
    if (!chip) { return; }
    var card = list.querySelector(".card[data-pos='" + chip.dataset.pos + "']");
    card.scrollIntoView({ block: "center" });
    card.focus({ preventScroll: true });
  });

  list.addEventListener("keydown", function (e) {
    var card = e.target;
    if (!card.classList || !card.classList.contains("card") || e.altKey || e.ctrlKey || e.metaKey) { return; }
    var key = e.key;
    if (key === "ArrowUp" || key === "ArrowDown") {
      e.preventDefault();
      var group = groupOf(card);
      if (moveGroup(group, key === "ArrowUp" ? -1 : 1)) {
        settle(card, "Response " + letter(card) + " moved " + (key === "ArrowUp" ? "up" : "down") +
          " to " + describe(group) + ".");
      }
    } else if (key === "t" || key === "T" || key === "=") {
      e.preventDefault();
      if (tieUp(card)) { settle(card, "Response " + letter(card) + " is now tied: " + describe(groupOf(card)) + "."); }
    } else if (key === "u" || key === "U") {
      e.preventDefault();
      if (untie(card)) { settle(card, "Response " + letter(card) + " is untied: " + describe(groupOf(card)) + "."); }
    } else if (/^[1-7]$/.test(key)) {
      e.preventDefault();
      setScore(card, key);
      refresh();
      announce("Response " + letter(card) + " scored " + key + ".");
    } else if (key === "Enter") {
      e.preventDefault();
      var open = toggleDetail(card);
      if (open) { card.querySelector(".likert input:checked, .likert input").focus(); }
    }
  });

  // Escape inside a card's detail closes it and returns to the card.
  list.addEventListener("keyup", function (e) {
    if (e.key !== "Escape" || drag) { return; }
    var card = e.target.closest && e.target.closest(".card");
    if (card && e.target !== card && !card.querySelector(".detail").hidden) {
      toggleDetail(card, false);
      card.focus();
    }
  });

  // ------------------------------------------------------------ drag and drop
  // Pointer events (mouse, pen, touch) on the handle. Nothing moves while dragging: a
  // line shows where a rank of its own would go, or the rank it would tie with lights up.
  // Near the top or bottom edge the page keeps scrolling, even while the pointer rests.

  var drag = null;
  var line = document.createElement("div");
  line.className = "drop-line";
  line.hidden = true;
  var ghost = document.createElement("div");
  ghost.className = "drag-ghost";
  ghost.hidden = true;
  document.body.appendChild(line);
  document.body.appendChild(ghost);

  function targetAt(y) {
    var all = groups();
    for (var i = 0; i < all.length; i += 1) {
      var r = all[i].getBoundingClientRect();
      if (y < r.top) { return { gap: i }; }
      if (y <= r.bottom) {
        var edge = Math.min(22, r.height * 0.25);
        if (y < r.top + edge) { return { gap: i }; }
        if (y > r.bottom - edge) { return { gap: i + 1 }; }
        return { join: all[i] };
      }
    }
    return { gap: all.length };
  }

  function showTarget() {
    var all = groups();
    all.forEach(function (g) { g.classList.remove("drop-join"); });
    line.hidden = true;
    var t = drag.target = targetAt(drag.y);
    var noop = isNoop(drag.card, t);
    var label = "Response " + letter(drag.card) + ": ";
    if (noop) {
      ghost.textContent = label + "stays " + describe(groupOf(drag.card));
    } else if (t.join) {
      t.join.classList.add("drop-join");
      ghost.textContent = label + "tie with rank " + (all.indexOf(t.join) + 1);
    } else {
      var listBox = list.getBoundingClientRect();
      var y = t.gap < all.length ? all[t.gap].getBoundingClientRect().top - 5
        : all[all.length - 1].getBoundingClientRect().bottom + 5;
      line.style.top = Math.round(y - 2) + "px";
      line.style.left = Math.round(listBox.left) + "px";
      line.style.width = Math.round(listBox.width) + "px";
      line.hidden = false;
      ghost.textContent = label + "own rank here";
    }
    ghost.style.left = Math.round(drag.x + 14) + "px";
    ghost.style.top = Math.round(drag.y + 10) + "px";
  }

  function autoScroll() {
    if (!drag) { return; }
    var h = window.innerHeight;
    var edge = Math.max(48, h * 0.12);
    var speed = 0;
    if (drag.y < edge) {
      speed = -Math.ceil(((edge - Math.max(drag.y, 0)) / edge) * 22);
    } else if (drag.y > h - edge) {
      speed = Math.ceil(((Math.min(drag.y, h) - (h - edge)) / edge) * 22);
    }
    if (speed) {
      var before = window.scrollY;
      window.scrollBy(0, speed);
      if (window.scrollY !== before) { showTarget(); }
    }
    drag.frame = window.requestAnimationFrame(autoScroll);
  }

  function endDrag(apply) {
    if (!drag) { return; }
    var d = drag;
    drag = null;
    window.cancelAnimationFrame(d.frame);
    groups().forEach(function (g) { g.classList.remove("drop-join"); });
    line.hidden = true;
    ghost.hidden = true;
    d.card.classList.remove("dragging");
    document.documentElement.classList.remove("is-dragging");
    if (d.handle.hasPointerCapture && d.handle.hasPointerCapture(d.pointerId)) {
      d.handle.releasePointerCapture(d.pointerId);
    }
    if (apply && d.target && dropAt(d.card, d.target)) {
      settle(d.card, "Response " + letter(d.card) + " is now at " + describe(groupOf(d.card)) + ".");
    } else {
      d.card.focus({ preventScroll: true });
      if (!apply) { announce("Move cancelled; nothing changed."); }
    }
  }

  list.addEventListener("pointerdown", function (e) {
    var handle = e.target.closest(".handle");
    if (!handle || e.button !== 0 || drag) { return; }
    e.preventDefault();
    var card = handle.closest(".card");
    drag = { card: card, handle: handle, pointerId: e.pointerId, x: e.clientX, y: e.clientY, target: null, frame: 0 };
    handle.setPointerCapture(e.pointerId);
    card.classList.add("dragging");
    document.documentElement.classList.add("is-dragging");
    ghost.hidden = false;
    showTarget();
    drag.frame = window.requestAnimationFrame(autoScroll);
  });

  list.addEventListener("pointermove", function (e) {
    if (!drag || e.pointerId !== drag.pointerId) { return; }
    drag.x = e.clientX;
    drag.y = e.clientY;
    showTarget();
  });

  list.addEventListener("pointerup", function (e) {
    if (!drag || e.pointerId !== drag.pointerId) { return; }
    drag.x = e.clientX;
    drag.y = e.clientY;
    showTarget();
    endDrag(true);
  });
  list.addEventListener("pointercancel", function (e) {
    if (drag && e.pointerId === drag.pointerId) { endDrag(false); }
  });
  // Capture lost without a pointerup (the window lost focus, the handle went away, ...):
  // stop cleanly instead of leaving a half-finished drag behind.
  list.addEventListener("lostpointercapture", function (e) {
    if (drag && e.pointerId === drag.pointerId) { endDrag(false); }
  });
  document.addEventListener("keydown", function (e) {
    if (drag && e.key === "Escape") { e.preventDefault(); endDrag(false); }
  });

  // ------------------------------------------------------------ submit

  function onSubmit(e) {
    refresh();
    var missing = cards().filter(function (c) { return score(c) === null; });
    if (!missing.length) { problem.hidden = true; return; }
    e.preventDefault();
    var card = missing[0];
    problem.textContent = "Give every response a score from 1 to 7 (missing: " +
      missing.map(letter).join(", ") + ").";
    problem.hidden = false;
    toggleDetail(card, true);
    card.scrollIntoView({ block: "center" });
    card.querySelector(".likert input").focus({ preventScroll: true });
  }
  form.addEventListener("submit", onSubmit);

  cards().forEach(function (card) { toggleDetail(card, false); });
  clampTexts();
  refresh();
}());
