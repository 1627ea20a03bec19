// The login form: POST /console/api/login, then back to the page that sent us here.
"use strict";

document.getElementById("login").addEventListener("submit", async (e) => {
  e.preventDefault();
  const result = document.getElementById("result");
  const button = document.getElementById("submit");
  button.disabled = true;
  try {
    await C.api("/console/api/login", {
      method: "POST",
      noRedirect: true,
      body: {
        user: document.getElementById("user").value,
        password: document.getElementById("password").value,
      },
    });
    const next = C.param("next");
    // Only a path of this console: never an address elsewhere.
    location.href = next && next.startsWith("/console/") && !next.startsWith("//") ? next : "/console/";
  } catch (err) {
    C.message(result, err.status === 401 ? "Wrong user or password." : err.message, false);
    document.getElementById("password").select();
  } finally {
    button.disabled = false;
  }
});
