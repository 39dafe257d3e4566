// Gatehouse passkeys (SPEC §14). A button with data-passkey="register", "step-up" or "sign-in"
// sits in a form that posts to gatehouse. Pressed, it posts the form with action=passkey-options,
// passes the options gatehouse answers to the browser's WebAuthn API, and posts the browser's
// answer with the same form (action=passkey). Without WebAuthn the buttons stay hidden.
(function () {
  "use strict";
  if (!window.PublicKeyCredential || !navigator.credentials) {
    return;
  }

  function decode(text) {
    var base64 = text.replace(/-/g, "+").replace(/_/g, "/");
    while (base64.length % 4) {
      base64 += "=";
    }
    var binary = atob(base64);
    var bytes = new Uint8Array(binary.length);
    for (var i = 0; i < binary.length; i++) {
      bytes[i] = binary.charCodeAt(i);
    }
    return bytes.buffer;
  }

  function encode(buffer) {
    var bytes = new Uint8Array(buffer);
    var binary = "";
    for (var i = 0; i < bytes.length; i++) {
      binary += String.fromCharCode(bytes[i]);
    }
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function creation(options) {
    options.challenge = decode(options.challenge);
    options.user.id = decode(options.user.id);
    (options.excludeCredentials || []).forEach(function (c) { c.id = decode(c.id); });
    return options;
  }

  function request(options) {
    options.challenge = decode(options.challenge);
    (options.allowCredentials || []).forEach(function (c) { c.id = decode(c.id); });
    return options;
  }

  function answer(credential) {
    var r = credential.response;
    var out = {
      id: credential.id,
      rawId: encode(credential.rawId),
      type: credential.type,
      extensions: credential.getClientExtensionResults ? credential.getClientExtensionResults() : {},
      response: { clientDataJSON: encode(r.clientDataJSON) }
    };
    if (r.attestationObject) {
      out.response.attestationObject = encode(r.attestationObject);
      if (r.getTransports) {
        out.response.transports = r.getTransports();
      }
    } else {
      out.response.authenticatorData = encode(r.authenticatorData);
      out.response.signature = encode(r.signature);
      if (r.userHandle) {
        out.response.userHandle = encode(r.userHandle);
      }
    }
    return JSON.stringify(out);
  }

  function field(form, name) {
    return form.querySelector("input[name=\"" + name + "\"]");
  }

  function say(form, text) {
    var status = form.querySelector(".passkey-status");
    if (status) {
      status.textContent = text;
      status.hidden = false;
    }
  }

  function run(button) {
    var form = button.form;
    var kind = button.getAttribute("data-passkey");
    var data = new URLSearchParams(new FormData(form));
    data.set("action", "passkey-options");
    // Not form.action: the form's input named "action" shadows that property.
    return fetch(form.getAttribute("action"), {
      method: "POST",
      body: data,
      credentials: "same-origin",
      headers: { "Accept": "application/json" }
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (body) {
        if (!response.ok) {
          throw new Error(body.detail || "Passkeys cannot be used right now. Try again in a moment.");
        }
        var call = kind === "register"
          ? navigator.credentials.create({ publicKey: creation(body.publicKey) })
          : navigator.credentials.get({ publicKey: request(body.publicKey) });
        return call.then(function (credential) {
          field(form, "ceremony").value = body.ceremony;
          field(form, "credential").value = answer(credential);
          field(form, "action").value = "passkey";
          form.submit();
        }, function (e) {
          throw new Error(e && e.name === "NotAllowedError"
            ? "The passkey request was cancelled or timed out. Try again."
            : "This passkey could not be used (" + (e && e.name) + ").");
        });
      });
    }).catch(function (e) {
      say(form, e.message);
      button.disabled = false;
    });
  }

  var buttons = document.querySelectorAll("button[data-passkey]");
  for (var i = 0; i < buttons.length; i++) {
    (function (button) {
      button.hidden = false;
      button.addEventListener("click", function (event) {
        event.preventDefault();
        button.disabled = true;
        run(button);
      });
    })(buttons[i]);
  }
})();
