/* Login: validate the pasted token with GET /api/v1/me before keeping it for this tab. */
(function () {
  "use strict";
  document.addEventListener("DOMContentLoaded", () => {
    const form = IT.$("login-form");
    const input = IT.$("token");
    if (IT.param("logout") !== null) IT.clearToken();
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      IT.clearErrors();
      const value = input.value.trim();
      if (!value) {
        IT.showError(new Error("paste a token first"));
        return;
      }
      try {
        const me = await IT.request("/me", null, { token: value });
        IT.setToken(value);
        IT.$("whoami").textContent = me.name + " (" + me.role + ")";
        const next = IT.param("next");
        const safe = next && next.startsWith(IT.cfg.prefix + "/") && !next.startsWith("//") ? next : IT.cfg.prefix + "/";
        location.assign(safe);
      } catch (e) {
        IT.clearToken();
        IT.showError(e, "messages", "token rejected");
      }
    });
  });
})();
