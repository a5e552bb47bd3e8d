// Chat page behaviour that htmx attributes cannot express: keyboard shortcuts,
// clearing the message box once the server acknowledged it, following the newest
// text unless the reader scrolled up, and copy buttons. No inline scripts (a CSP forbids them).
(function () {
  "use strict";

  function composer() { return document.getElementById("composer"); }

  // In the Message box only: Enter sends, Escape stops the reply, and ↑ in an empty
  // box edits your last message.
  document.addEventListener("keydown", function (event) {
    var target = event.target;
    if (!(target && target.name === "message" && target.form && target.form.id === "composer")) {
      return;
    }
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      if (target.value.trim()) { target.form.requestSubmit(); }
    } else if (event.key === "Escape") {
      var stop = document.querySelector("#reply-controls button.stop");
      if (stop) { event.preventDefault(); stop.click(); }
    } else if (event.key === "ArrowUp" && !target.value && !event.isComposing) {
      var edits = document.querySelectorAll("#turns .turn-user button.edit-turn");
      var last = edits[edits.length - 1];
      if (last && last.offsetParent !== null) { event.preventDefault(); last.click(); }
    }
  });

  document.addEventListener("htmx:wsAfterMessage", function () {
    var status = document.getElementById("composer-status");
    if (status && status.dataset.ack === "1") {
      delete status.dataset.ack;
      var form = composer();
      if (form) { form.reset(); form.elements.message.focus(); }
      followLatest();  // the reader sent a message: show its reply
    }
    keepReading();
  });

  // --- Reading while a reply streams ---------------------------------------------
  // The view follows new text while the reader is at the bottom. Scrolling up stops
  // that and shows "Jump to latest", which scrolls down and follows again. Nothing
  // here moves the focus.
  var following = true;
  var lastTop = 0;

  function scroller() {
    var turns = document.getElementById("turns");
    for (var node = turns && turns.parentElement; node && node !== document.body; node = node.parentElement) {
      var overflow = getComputedStyle(node).overflowY;
      if ((overflow === "auto" || overflow === "scroll") && node.scrollHeight > node.clientHeight) {
        return node;
      }
    }
    return document.scrollingElement || document.documentElement;
  }

  function atBottom(box) { return box.scrollHeight - box.scrollTop - box.clientHeight < 80; }

  function jumpButton(show) {
    var button = document.getElementById("jump-latest");
    // A focused button stays until focus leaves it, so focus is never dropped.
    if (button && (show || document.activeElement !== button)) { button.hidden = !show; }
  }

  function followLatest() {
    var box = scroller();
    following = true;
    box.scrollTop = box.scrollHeight;
    lastTop = box.scrollTop;
    jumpButton(false);
  }

  function keepReading() {
    var box = scroller();
    if (following) { followLatest(); } else if (!atBottom(box)) { jumpButton(true); }
  }

  document.addEventListener("scroll", function () {
    var box = scroller();
    if (atBottom(box)) {
      following = true;
      jumpButton(false);
    } else if (box.scrollTop < lastTop - 2) {
      following = false;  // the reader scrolled up (new text only ever adds below)
      jumpButton(true);
    }
    lastTop = box.scrollTop;
  }, true);

  // Intent to read back stops following at once, before any new text can scroll.
  function stopFollowing() {
    if (scroller().scrollTop > 0) { following = false; }
  }
  document.addEventListener("wheel", function (event) { if (event.deltaY < 0) { stopFollowing(); } },
    { passive: true });
  document.addEventListener("touchmove", stopFollowing, { passive: true });
  document.addEventListener("keydown", function (event) {
    if (["PageUp", "ArrowUp", "Home"].indexOf(event.key) >= 0 && !event.target.closest("textarea, input, select")) {
      stopFollowing();
    }
  });

  // A mouse click does not take focus to the button (it is hidden once followed);
  // keyboard users keep their focus on it until they move on.
  document.addEventListener("mousedown", function (event) {
    if (event.target.closest && event.target.closest("#jump-latest")) { event.preventDefault(); }
  });
  document.addEventListener("click", function (event) {
    if (event.target.closest && event.target.closest("#jump-latest")) { followLatest(); }
  });

  // A rotated phone or a resized window keeps showing the newest text.
  window.addEventListener("resize", function () { if (following) { followLatest(); } });

  document.addEventListener("focusout", function (event) {
    if (event.target.id === "jump-latest" && following) { event.target.hidden = true; }
  });

  // Refuse, here, a frame the server would refuse: past its limit the connection
  // itself would drop (daphne closes sockets on oversized messages). The body is
  // measured as the ws extension will build it.
  function showError(text) {
    var status = document.getElementById("composer-status");
    if (!status) { return; }
    var p = document.createElement("p");
    p.className = "error";
    p.textContent = text;
    status.replaceChildren(p);
  }

  document.addEventListener("htmx:wsConfigSend", function (event) {
    var chat = event.target.closest ? event.target.closest("[data-max-frame-bytes]") : null;
    if (!chat) { return; }
    var limit = parseInt(chat.dataset.maxFrameBytes, 10);
    var body = Object.assign({}, event.detail.parameters);
    if (event.detail.headers) { body.HEADERS = event.detail.headers; }
    var size = new TextEncoder().encode(JSON.stringify(body)).length;
    if (limit && size > limit) {
      event.preventDefault();
      showError("This message is too large to send (" + Math.ceil(size / 1024) +
        " KB; the limit is " + Math.floor(limit / 1024) + " KB). Shorten it, or send it in parts.");
    }
  });

  // The socket's state, quietly: "Reconnecting…" while it is down. Once it is back
  // the page names the turns it shows as still being written and its newest turn,
  // and the server brings them (and any it missed) to their stored state.
  function connection(text) {
    var status = document.getElementById("connection-status");
    if (status) { status.textContent = text; status.hidden = !text; }
  }

  var received = 0, acked = 0;
  var ACK_EVERY = 65536;
  var socket = null;

  document.addEventListener("htmx:wsClose", function () { connection("Reconnecting…"); });
  document.addEventListener("htmx:wsError", function () { connection("Reconnecting…"); });
  document.addEventListener("htmx:wsOpen", function (event) {
    connection("");
    received = 0; acked = 0;
    socket = event.detail.socketWrapper;
    sync();
  });

  function sync() {
    if (!socket) { return; }
    var turns = document.querySelectorAll("#turns article[id^='turn-']");
    var shown = [], last = null;
    turns.forEach(function (article) {
      var id = parseInt(article.id.slice(5), 10);
      if (isNaN(id)) { return; }
      last = last === null ? id : Math.max(last, id);
      var state = article.dataset.state;
      if (state === "pending" || state === "streaming") { shown.push(id); }
    });
    socket.send(JSON.stringify({ action: "sync", turns: shown, last: last }));
  }

  // Another version was shown (here or in another tab): load the active path again,
  // then sync, as after a reconnect. Focus goes back to the version button pressed.
  var switching = null;
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form.classList && form.classList.contains("version-form")) {
      var button = form.querySelector("button");
      switching = { turn: form.elements.turn.value, title: button ? button.title : "" };
    }
  }, true);

  document.addEventListener("htmx:wsAfterMessage", function () {
    var marker = document.getElementById("path-changed");
    var url = marker && marker.dataset.load;
    if (!url) { return; }
    delete marker.dataset.load;
    var pressed = switching;
    switching = null;
    htmx.ajax("GET", url, { target: "#turns", swap: "innerHTML" }).then(function () {
      sync();
      if (!pressed) { return; }
      var buttons = document.querySelectorAll("#turn-" + pressed.turn + " .version-form button");
      var again = Array.prototype.filter.call(buttons, function (b) { return b.title === pressed.title && !b.disabled; })[0]
        || Array.prototype.filter.call(buttons, function (b) { return !b.disabled; })[0];
      if (again) { again.focus(); }
    });
  });

  // Acknowledge what was read, so the server can tell a page that reads from a
  // client that does not (it bounds what it queues for one socket).
  document.addEventListener("htmx:wsAfterMessage", function (event) {
    received += (event.detail.message || "").length;
    if (received - acked >= ACK_EVERY) {
      acked = received;
      event.detail.socketWrapper.send(JSON.stringify({ action: "ack", received: received }));
    }
  });

  // A new title from the socket (the model wrote it, or another tab renamed the
  // conversation) replaced the header: the window's title and the rename control follow,
  // unless the reader is renaming right now.
  document.addEventListener("htmx:oobAfterSwap", function (event) {
    var heading = event.target;
    if (!heading || heading.id !== "conversation-title") { return; }
    var title = heading.textContent;
    var cut = document.title.lastIndexOf(" · ");
    document.title = title + (cut >= 0 ? document.title.slice(cut) : "");
    var block = heading.closest(".title-block");
    var rename = block && block.querySelector("details.rename");
    if (!rename || rename.open) { return; }
    rename.querySelector("summary").setAttribute("aria-label", "Rename " + title);
    var input = rename.querySelector("input[name=title]");
    input.defaultValue = title;
    input.value = title;
  });

  // Edit a message: show its form in place; sending replaces the later turns.
  document.addEventListener("click", function (event) {
    var edit = event.target.closest ? event.target.closest("button.edit-turn, button.edit-cancel") : null;
    if (!edit) { return; }
    var article = edit.closest("article");
    var form = article.querySelector(".edit-form");
    var toggle = article.querySelector("button.edit-turn");
    var opening = edit.classList.contains("edit-turn") && form.hidden;
    if (!opening) { form.reset(); }
    form.hidden = !opening;
    toggle.setAttribute("aria-expanded", opening ? "true" : "false");
    (opening ? form.elements.message : toggle).focus();
  });

  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("button.copy-code, button.copy-reply") : null;
    if (!button) { return; }
    if (!navigator.clipboard || !window.isSecureContext) {
      copyNote(button, "Copy is unavailable: this page is not served over HTTPS.");
      return;
    }
    var source = button.classList.contains("copy-code")
      ? button.closest(".code-block").querySelector("pre")
      : button.closest("article").querySelector(".turn-text");
    navigator.clipboard.writeText(source ? source.innerText : "").then(function () {
      copyNote(button, "Copied");
    }, function () {
      copyNote(button, "Copy failed: the browser did not allow the clipboard.");
    });
  });

  // What a copy did, said next to its button (and to screen readers), for a moment.
  function copyNote(button, text) {
    var note = button.nextElementSibling;
    if (!note || !note.classList.contains("copy-note")) {
      note = document.createElement("span");
      note.className = "copy-note";
      note.setAttribute("role", "status");
      button.after(note);
    }
    note.textContent = text;
    clearTimeout(note._timer);
    note._timer = setTimeout(function () { note.remove(); }, text === "Copied" ? 1500 : 5000);
  }
})();
