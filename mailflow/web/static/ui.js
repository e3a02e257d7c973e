// MailFlow Relay web UI: the only script besides htmx (no inline scripts: the CSP forbids them).
"use strict";

// htmx requests carry the page's CSRF token (from <meta name="csrf-token">) in a header;
// plain forms carry it in a hidden field.
document.addEventListener("htmx:configRequest", function (event) {
  var meta = document.querySelector('meta[name="csrf-token"]');
  if (meta) {
    event.detail.headers["X-CSRF-Token"] = meta.getAttribute("content");
  }
});

// A button or form with data-confirm asks first (removing a member, a domain...).
document.addEventListener("submit", function (event) {
  var form = event.target;
  var text = form.getAttribute("data-confirm");
  if (text && !window.confirm(text)) {
    event.preventDefault();
  }
}, true);
