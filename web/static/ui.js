// mlpd web UI: the live parts (GPU table and queue, job logs and state). No framework.
"use strict";

function poll(el) {
  // Replace the element's content with the server-rendered fragment every few seconds.
  var url = el.dataset.poll, every = parseInt(el.dataset.interval || "3000", 10), last = "";
  function tick() {
    if (document.hidden) { setTimeout(tick, every); return; }
    fetch(url, {credentials: "same-origin", headers: {"Accept": "text/html"}}).then(function (r) {
      if (r.status === 401 || r.redirected) { location.reload(); return null; }
      return r.ok ? r.text() : null;
    }).then(function (html) {
      // keep a keyboard user's place: no swap while focus is inside
      if (html && html !== last && !el.contains(document.activeElement)) { el.innerHTML = html; }
      if (html) { last = html; }
    }).catch(function () {}).then(function () { setTimeout(tick, every); });
  }
  setTimeout(tick, every);
}

var MAX_LOG = 1024 * 1024;
// Terminal escape sequences and control characters in a job's output are shown as nothing (as mlpd.termsafe does).
var CONTROLS = /\x1b(?:\[[0-?]*[ -\/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[PX^_][^\x1b]*\x1b\\|[ -\/]*[0-~])|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]/g;

function followLog(pre) {
  // Stream the job's output into the page; when the job ends, reload to show its final state.
  var status = document.getElementById("log-status");
  var stateUrl = pre.dataset.stateUrl, state = pre.dataset.state;
  var ended = (pre.dataset.terminalStates || "").split(" ");  // the ended states, as the server names them (mlpd.jobs)
  function say(text) { if (status) { status.textContent = text; } }
  function append(text) {
    var atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 24;
    pre.textContent += text.replace(CONTROLS, "");
    if (pre.textContent.length > MAX_LOG) { pre.textContent = pre.textContent.slice(-MAX_LOG); }
    if (atEnd) { pre.scrollTop = pre.scrollHeight; }
  }
  function waitForEnd() {
    fetch(stateUrl, {credentials: "same-origin"}).then(function (r) { return r.json(); }).then(function (s) {
      if (s.state !== state && ended.indexOf(s.state) >= 0) { location.reload(); }
      else { setTimeout(waitForEnd, 1000); }
    }).catch(function () { setTimeout(waitForEnd, 2000); });
  }
  function stream() {
    say("Following the log live...");
    fetch(pre.dataset.followUrl, {credentials: "same-origin"}).then(function (r) {
      if (!r.ok || !r.body) { throw new Error("log unavailable"); }
      var reader = r.body.getReader(), decoder = new TextDecoder();
      function read() {
        return reader.read().then(function (part) {
          if (part.done) { append(decoder.decode()); say("The job has ended."); waitForEnd(); return; }
          append(decoder.decode(part.value, {stream: true}));
          return read();
        });
      }
      return read();
    }).catch(function () { say("The live log stopped; reload the page to see more."); waitForEnd(); });
  }
  if (state === "queued") {
    // nothing to read until it starts: watch the state, then stream
    var watch = function () {
      fetch(stateUrl, {credentials: "same-origin"}).then(function (r) { return r.json(); }).then(function (s) {
        if (s.state === "queued") { setTimeout(watch, 2000); }
        else { location.reload(); }
      }).catch(function () { setTimeout(watch, 3000); });
    };
    setTimeout(watch, 2000);
  } else {
    stream();
  }
}

document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("[data-poll]").forEach(poll);
  var log = document.getElementById("log");
  if (log && log.dataset.followUrl) { followLog(log); }
});
