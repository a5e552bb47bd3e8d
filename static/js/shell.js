// The app shell: the sidebar (a drawer at phone widths) and the shortcuts that work
// on every signed-in page. No inline scripts (a CSP forbids them).
(function () {
  "use strict";

  var PHONE = window.matchMedia("(max-width: 768px)");

  function sidebar() { return document.getElementById("sidebar"); }
  function toggle() { return document.getElementById("sidebar-toggle"); }
  function backdrop() { return document.querySelector(".sidebar-backdrop"); }

  function setDrawer(open, focusBack) {
    var side = sidebar(), button = toggle();
    if (!side || !button) { return; }
    document.body.classList.toggle("drawer-open", open);
    button.setAttribute("aria-expanded", open ? "true" : "false");
    if (backdrop()) { backdrop().hidden = !open; }
    if (PHONE.matches) { side.inert = !open; }
    if (open) {
      var first = side.querySelector(".new-chat");
      if (first) { first.focus(); }
    } else if (focusBack) {
      button.focus();
    }
  }

  function syncToWidth() {
    var side = sidebar();
    if (!side) { return; }
    if (PHONE.matches) {
      side.inert = !document.body.classList.contains("drawer-open");
    } else {
      side.inert = false;
      document.body.classList.remove("drawer-open");
      if (backdrop()) { backdrop().hidden = true; }
      if (toggle()) { toggle().setAttribute("aria-expanded", "false"); }
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    syncToWidth();
    var current = document.querySelector(".sidebar-list a[aria-current='page']");
    if (current) { current.scrollIntoView({ block: "nearest" }); }
  });
  PHONE.addEventListener("change", syncToWidth);

  document.addEventListener("click", function (event) {
    var target = event.target;
    if (!target.closest) { return; }
    if (target.closest("#sidebar-toggle")) {
      setDrawer(!document.body.classList.contains("drawer-open"), false);
    } else if (target.closest(".sidebar-close") || target.closest(".sidebar-backdrop")) {
      setDrawer(false, true);
    } else if (target.closest(".show-shortcuts")) {
      showShortcuts();
    }
  });

  // Choosing a preset fills the new chat's settings from it.
  document.addEventListener("change", function (event) {
    if (event.target && event.target.id === "id_preset" && event.target.form) {
      event.target.form.requestSubmit();
    }
  });

  function showShortcuts() {
    var dialog = document.getElementById("shortcuts");
    if (dialog && !dialog.open) { dialog.showModal(); }
  }

  function typing(target) {
    return target && (target.isContentEditable ||
      /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName));
  }

  document.addEventListener("keydown", function (event) {
    var mod = event.ctrlKey || event.metaKey;
    var key = (event.key || "").toLowerCase();
    if (mod && !event.shiftKey && !event.altKey && key === "k") {
      var search = document.getElementById("sidebar-q");
      if (search) {
        event.preventDefault();
        if (PHONE.matches) { setDrawer(true, false); }
        search.focus();
        search.select();
      }
    } else if (mod && event.shiftKey && !event.altKey && key === "o") {
      var newChat = document.querySelector("#sidebar .new-chat");
      if (newChat) { event.preventDefault(); window.location.assign(newChat.href); }
    } else if (event.key === "Escape" && document.body.classList.contains("drawer-open")) {
      setDrawer(false, true);
    } else if (event.key === "?" && !mod && !typing(event.target)) {
      event.preventDefault();
      showShortcuts();
    }
  });
})();
