// The console's one script: on Services and permissions, the analytics
// choices follow the edition licence as it changes. Without it the page
// still works: the server applies the same rules when the form is saved.
(function () {
  "use strict";
  var select = document.querySelector("[data-edition]");
  var auto = document.querySelector("[data-tier-auto]");
  if (!select || !auto) return;
  var radios = Array.prototype.slice.call(document.querySelectorAll("input[name=tier]"));

  function allows(radio, edition) {
    var editions = radio.getAttribute("data-editions") || "";
    if (editions === "*") return true;
    return edition !== "" && editions.split(" ").indexOf(edition) !== -1;
  }

  function follow() {
    var edition = select.value;
    var checked = null;
    radios.forEach(function (radio) {
      var ok = allows(radio, edition);
      radio.disabled = !ok;
      var reason = document.getElementById(radio.getAttribute("aria-describedby"));
      if (reason) {
        var needs = reason.getAttribute("data-needs");
        reason.hidden = ok;
        reason.textContent = ok ? "" : edition === ""
          ? "Needs an edition licence: " + needs + "."
          : "Not included in " + edition + ": needs " + needs + ".";
      }
      if (radio.checked) checked = radio;
    });
    // A choice the edition no longer allows moves down to the highest one
    // it does allow (rule 6); the form says the script moved it, so the
    // server still applies the rule and gives its notice.
    if (checked && checked.disabled) {
      var allowed = radios.filter(function (r) { return !r.disabled; });
      var target = allowed[allowed.length - 1];
      target.checked = true;
      auto.value = target.value;
    }
  }

  select.addEventListener("change", follow);
  radios.forEach(function (radio) {
    radio.addEventListener("change", function () { auto.value = ""; });
  });
})();
