// backupjobd's web page: refreshes the page's content in place, submits the filters when
// one changes, signs in and out. The server renders (and escapes) every value; this script
// never builds markup from data: it moves the server's parsed nodes into the document.
"use strict";

(function () {
  const body = document.body;
  const refreshSeconds = Number(body.dataset.refresh || "0");

  function replaceFrom(fresh, id) {
    const now = document.getElementById(id);
    const next = fresh.getElementById(id);
    if (now && next) {
      now.replaceWith(document.importNode(next, true));
    }
  }

  async function refresh() {
    if (document.hidden) {
      return;
    }
    try {
      const response = await fetch(location.pathname + location.search, {
        credentials: "same-origin",
        headers: { Accept: "text/html" },
        cache: "no-store",
      });
      if (!response.ok) {
        return;
      }
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
      if (fresh.getElementById("login")) {
        location.reload(); // the session ended: show the sign-in form
        return;
      }
      replaceFrom(fresh, "content");
      replaceFrom(fresh, "updated");
    } catch (err) {
      // The daemon restarting: the next round tries again.
    }
  }

  if (refreshSeconds > 0 && document.getElementById("content")) {
    setInterval(refresh, refreshSeconds * 1000);
  }

  for (const select of document.querySelectorAll("select.autosubmit")) {
    select.addEventListener("change", function () {
      select.form.requestSubmit();
    });
  }

  const login = document.getElementById("login");
  if (login) {
    login.addEventListener("submit", async function (event) {
      event.preventDefault();
      const message = document.getElementById("login-error");
      message.textContent = "";
      const token = document.getElementById("token").value;
      const response = await fetch("/ui/session", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ token: token }),
      });
      if (response.status === 204) {
        location.reload();
        return;
      }
      let reason = "sign-in failed (" + response.status + ")";
      try {
        reason = (await response.json()).error.message;
      } catch (err) {
        // not JSON: keep the status line
      }
      message.textContent = reason;
    });
  }

  const logout = document.getElementById("logout");
  if (logout) {
    logout.addEventListener("click", async function () {
      await fetch("/ui/session", {
        method: "DELETE",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json" },
        body: "{}",
      });
      location.reload();
    });
  }
})();
