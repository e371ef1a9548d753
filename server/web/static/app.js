// Kiln dashboard: the little the pages need beyond htmx.
(function () {
  "use strict";
  // A log box follows its end as chunks arrive, unless the reader has
  // scrolled up in it.
  document.addEventListener("htmx:sseBeforeMessage", function (evt) {
    var log = evt.target;
    if (log && log.id === "log") {
      log.dataset.follow = log.scrollTop + log.clientHeight >= log.scrollHeight - 24 ? "1" : "";
    }
  });
  document.addEventListener("htmx:sseMessage", function (evt) {
    var log = evt.target;
    if (log && log.id === "log" && log.dataset.follow) {
      log.scrollTop = log.scrollHeight;
    }
  });
  // The stream of a work request ends with its log: say so.
  document.addEventListener("htmx:sseClose", function () {
    var log = document.getElementById("log");
    if (log) {
      log.classList.add("ended");
    }
  });
})();
