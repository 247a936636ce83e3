// The private link is /login#TOKEN: the fragment never reaches the server or its
// logs. Trade it once for an HttpOnly session cookie, then drop it from the URL.
"use strict";
(async function () {
  const status = document.getElementById("login-status");
  const token = decodeURIComponent(location.hash.replace(/^#/, ""));
  history.replaceState(null, "", "/login");
  if (!token) {
    status.textContent = "Open the private link you were given (it ends in #…).";
    return;
  }
  try {
    const r = await fetch("/api/session", {
      method: "POST", headers: { Authorization: "Bearer " + token }, credentials: "same-origin",
    });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.statusText);
    location.replace(body.next);
  } catch (e) {
    status.textContent = "Sign-in failed: " + e.message;
  }
})();
