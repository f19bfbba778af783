// Technologist's console. Plain JS, no build step, no external resources.
// Every value from the server goes into the DOM through textContent (never as markup).
// No patient data in URLs: a worklist entry or a patient is sent in a POST body.
"use strict";

const POLL_MS = 1000;
const state = {
  worklist: [],          // items of POST /api/console/worklist
  selected: null,        // {body, name, detail, warning}
  procedure: null,       // procedure json of the procedure in progress
  acquiring: false,
  stopRequested: false,
  lastFrameAt: null,
  connected: false,
  emitsRadiation: false, // the device makes X-rays: every acquisition needs a second click
  maxFrames: 100,        // [api] max_frames, from /api/status
  pendingExposure: null, // {frames, continuous} while the Expose button waits
  anatomy: null,         // procedure.anatomy of POST /api/procedures: what must still be asked
  bodyParts: [],         // GET /api/body-parts: {body_part, meaning, paired}
};
// the Expose button stays armed this long; after that the technologist starts again
const EXPOSE_ARMED_MS = 15000;

const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function say(text, isError) {
  const box = $("message");
  box.textContent = text || "";
  box.title = text || "";
  box.className = isError ? "error" : "";
}

// Off loopback the page is not given the session cookie: the technologist (or service
// engineer) types the API token once; POST /api/session checks it and sets the cookie.
let askingToken = null;
let loginGivenUp = false;  // cancelled once: no more prompts (or 401 lines) until a reload
async function login() {
  if (loginGivenUp) return false;
  if (!askingToken) {
    askingToken = (async () => {
      const token = window.prompt("This console needs the agent's API token (the file [api] token_file on the acquisition computer):");
      if (!token) {
        loginGivenUp = true;
        say("Not signed in: reload the page to enter the API token", true);
        return false;
      }
      const r = await fetch("/api/session", { method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json" }, body: JSON.stringify({ token: token.trim() }) });
      return r.ok;
    })().finally(() => { setTimeout(() => { askingToken = null; }, 0); });
  }
  return askingToken;
}

async function api(method, path, body, retried) {
  if (loginGivenUp) throw Object.assign(new Error("not signed in"), { status: 401 });
  const options = { method, headers: {}, credentials: "same-origin" };
  // every request is JSON: the API refuses other content types on state-changing requests
  options.headers["Content-Type"] = "application/json";
  if (body !== undefined) {
    options.body = JSON.stringify(body);
  } else if (method !== "GET") {
    options.body = "{}";
  }
  const response = await fetch(path, options);
  if (response.status === 401 && !retried && await login()) return api(method, path, body, true);
  let payload = null;
  try { payload = await response.json(); } catch (e) { payload = null; }
  if (!response.ok) {
    const err = new Error((payload && payload.error) || `HTTP ${response.status}`);
    err.status = response.status;
    throw err;
  }
  return payload;
}

// DICOM PN "Family^Given^Middle^Prefix^Suffix" -> "Family, Given Middle"
function displayName(pn) {
  const parts = String(pn || "").split("=")[0].split("^");
  const given = parts.slice(1, 3).filter(Boolean).join(" ");
  return given ? `${parts[0]}, ${given}` : parts[0];
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "never";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${Math.round(seconds / 3600)} h`;
}

// -- worklist ---------------------------------------------------------------------------------
async function loadWorklist(refresh) {
  $("refresh").disabled = true;
  try {
    const view = await api("POST", "/api/console/worklist", { refresh: !!refresh });
    state.worklist = view.items;
    const source = $("worklist-source");
    if (view.source === "ris") {
      source.textContent = `RIS, ${age(view.age_s)} old`;
      source.className = "pill ok";
    } else {
      source.textContent = `RIS offline, cache ${age(view.age_s)} old`;
      source.className = "pill bad";
    }
    const problem = $("worklist-error");
    const text = [view.error, view.truncated ? `more than ${view.limit} entries: only the first are shown` : ""]
      .filter(Boolean).join("; ");
    problem.hidden = !text;
    problem.textContent = text;
    renderWorklist();
  } catch (err) {
    if (err.status === 404) {
      $("worklist-source").textContent = "no worklist configured";
      $("worklist-source").className = "pill warn";
      $("unscheduled-panel").open = true;
    } else {
      say(`Worklist: ${err.message}`, true);
    }
  } finally {
    $("refresh").disabled = false;
  }
}

// case- and accent-insensitive: "muller" finds "Müller"
function fold(text) {
  return String(text || "").normalize("NFD").replace(/[\u0300-\u036f]/g, "").toLowerCase();
}

function matches(item, query) {
  if (!query) return true;
  const q = fold(query);
  return [item.patient_name, displayName(item.patient_name), item.patient_id, item.accession_number]
    .some((v) => fold(v).includes(q));
}

function renderWorklist() {
  const list = $("worklist");
  const query = $("search").value.trim();
  list.replaceChildren();
  for (const item of state.worklist.filter((i) => matches(i, query))) {
    const li = el("li");
    li.tabIndex = 0;
    li.appendChild(el("div", "name", displayName(item.patient_name)));
    li.appendChild(el("div", "sub",
      `ID ${item.patient_id} · Acc ${item.accession_number || "—"} · ${item.sps_start || ""}`));
    li.appendChild(el("div", "sub",
      item.requested_procedure_description || item.sps_description || ""));
    if (item.duplicate_reason) li.appendChild(el("div", "dup", `⚠ ${item.duplicate_reason}`));
    if (state.selected && state.selected.key === item.sps_id + "|" + item.accession_number) {
      li.classList.add("selected");
    }
    li.addEventListener("click", () => selectWorklistItem(item));
    li.addEventListener("keydown", (e) => { if (e.key === "Enter") selectWorklistItem(item); });
    list.appendChild(li);
  }
  if (!list.children.length) {
    list.appendChild(el("li", "sub", state.worklist.length ? "No match" : "No worklist entries"));
  }
}

function selectWorklistItem(item) {
  if (state.procedure || state.acquiring) { say("End the current procedure first", true); return; }
  const body = item.sps_id ? { sps_id: item.sps_id } : { accession: item.accession_number };
  state.selected = {
    key: item.sps_id + "|" + item.accession_number,
    body,
    name: displayName(item.patient_name),
    detail: `ID ${item.patient_id} · born ${item.patient_birth_date || "?"} · ${item.patient_sex || "?"}` +
      ` · Acc ${item.accession_number || "—"} · ${item.requested_procedure_description || item.sps_description || ""}`,
    warning: item.duplicate_reason ? `Duplicate exam? ${item.duplicate_reason}` : "",
    hasProtocol: (item.scheduled_protocol_codes || []).length > 0,
  };
  renderWorklist();
  renderProcedure();
}

function selectUnscheduled(event) {
  event.preventDefault();
  if (state.procedure || state.acquiring) { say("End the current procedure first", true); return; }
  const form = event.target;
  const id = form.patient_id.value.trim();
  const family = form.family.value.trim();
  const given = form.given.value.trim();
  if (!id || !family) { say("Patient ID and family name are needed", true); return; }
  if (/[\\^=\u0000-\u001f]/.test(family + given)) { say("Names cannot hold ^ = or \\", true); return; }
  const name = given ? `${family}^${given}` : family;
  state.selected = {
    key: null,
    body: { unscheduled: true, patient_id: id, patient_name: name },
    name: displayName(name),
    detail: `ID ${id} · unscheduled`,
    warning: "",
  };
  renderWorklist();
  renderProcedure();
}

// -- procedure --------------------------------------------------------------------------------
function renderProcedure() {
  const sel = state.selected;
  const proc = state.procedure;
  if (proc) {
    $("sel-name").textContent = displayName(proc.patient_name);
    $("sel-detail").textContent = `ID ${proc.patient_id} · ` +
      (proc.scheduled ? `Acc ${proc.accession_number || "—"}` : "unscheduled");
  } else {
    $("sel-name").textContent = sel ? sel.name : "No patient selected";
    $("sel-detail").textContent = sel ? sel.detail : "Pick a worklist entry, or an unscheduled patient";
  }
  const warning = (proc && state.procedureWarning) || (sel && sel.warning) || "";
  $("sel-warning").hidden = !warning;
  $("sel-warning").textContent = warning;
  const images = proc ? proc.series.reduce((n, s) => n + s.images, 0) : 0;
  $("proc-state").textContent = proc ? `In progress · ${images} image(s)` : "";
  $("start").disabled = !sel || !!proc || state.acquiring;
  $("start").textContent = sel && sel.warning && !proc ? "Start anyway" : "Start procedure";
  const canAcquire = !!proc && !state.acquiring && state.connected;
  $("acquire").disabled = !canAcquire;
  $("frames").disabled = !proc || state.acquiring;
  const cont = $("continuous");
  cont.disabled = !proc || (!state.acquiring && !state.connected) || (state.acquiring && !state.continuous);
  cont.textContent = state.continuous ? (state.stopRequested ? "Stopping…" : "Stop") : "Acquire until stopped";
  cont.className = state.continuous ? "stop" : "";
  $("as-scheduled-box").hidden = !sel || !sel.hasProtocol || !!proc;
  renderAnatomy();
  $("complete").disabled = !proc || state.acquiring || images === 0;
  $("reason").disabled = !proc || state.acquiring;
  $("discontinue").disabled = !proc || state.acquiring || !$("reason").value;
}

async function startProcedure() {
  if (!state.selected) return;
  $("start").disabled = true;
  try {
    const body = Object.assign({}, state.selected.body);
    if (state.selected.hasProtocol && $("as-scheduled").checked) body.performed_as_scheduled = true;
    const result = await api("POST", "/api/procedures", body);
    state.procedure = result.procedure;
    state.anatomy = result.procedure.anatomy || null;
    $("body-part").value = "";
    $("laterality").value = "";
    state.procedureWarning = result.warning;
    say("Procedure started");
  } catch (err) {
    say(`Start: ${err.message}`, true);
  }
  renderProcedure();
}

async function acquireOnce(frames) {
  // confirm_exposure: sent only after the Expose click (or for a device without X-rays)
  const request = { procedure_id: state.procedure.procedure_id, frames, confirm_exposure: true };
  Object.assign(request, chosenAnatomy());
  const result = await api("POST", "/api/acquire", request);
  state.procedure = result.procedure;
  state.anatomy = result.procedure.anatomy || state.anatomy;
  if (result.error) say(`Acquisition: ${result.error}`, true);
  else say(`${result.objects.length} object(s) queued`);
  await refreshProcedure();
  pollQueue();
  return result;
}

// X-ray devices: Acquire only arms; the separate Expose button fires (a deliberate second action)
function askExposure(frames, continuous) {
  if (!state.emitsRadiation) return false;
  state.pendingExposure = { frames, continuous, until: Date.now() + EXPOSE_ARMED_MS };
  $("expose-text").textContent = continuous
    ? "X-ray: expose repeatedly until Stop?"
    : `X-ray: ${frames} exposure(s) for the selected patient?`;
  $("expose-confirm").hidden = false;
  $("expose").focus();
  setTimeout(() => { if (state.pendingExposure && Date.now() >= state.pendingExposure.until) cancelExposure(); },
    EXPOSE_ARMED_MS + 50);
  return true;
}

function cancelExposure() {
  state.pendingExposure = null;
  $("expose-confirm").hidden = true;
}

function confirmExposure() {
  const pending = state.pendingExposure;
  cancelExposure();
  if (!pending || Date.now() > pending.until) { say("Exposure not confirmed in time", true); return; }
  if (pending.continuous) runContinuous(); else runAcquire(pending.frames);
}

// -- body part and side: asked when the order does not give them ------------------------------
async function loadBodyParts() {
  try {
    const result = await api("GET", "/api/body-parts");
    state.bodyParts = result.body_parts;
    const select = $("body-part");
    select.replaceChildren(el("option", "", "choose…"));
    select.firstChild.value = "";
    for (const part of result.body_parts) {
      const option = el("option", "", part.meaning);
      option.value = part.body_part;
      select.appendChild(option);
    }
  } catch (err) {
    say(`Body parts: ${err.message}`, true);
  }
}

function renderAnatomy() {
  // shown for a device whose objects carry Image Laterality (DX); what the order names is
  // shown, not asked; the station checks again before the exposure
  const a = state.anatomy;
  const box = $("anatomy");
  box.hidden = !state.procedure || !a || !a.needs_side;
  if (box.hidden) return;
  const given = !a.missing;
  $("body-part").disabled = given || state.acquiring;
  $("laterality").disabled = given || state.acquiring;
  $("anatomy-source").textContent = given
    ? `From the order: ${a.body_part || "—"}, side ${a.laterality || "—"}`
    : "The order does not say: choose the body part and side";
}

function chosenAnatomy() {
  const a = state.anatomy;
  if (!a || !a.missing) return {};
  const chosen = {};
  if ($("body-part").value) chosen.body_part = $("body-part").value;
  if ($("laterality").value) chosen.laterality = $("laterality").value;
  return chosen;
}

function anatomyProblem() {
  const a = state.anatomy;
  if (!a || !a.needs_side || !a.missing) return "";
  const part = state.bodyParts.find((p) => p.body_part === $("body-part").value);
  const side = $("laterality").value;
  if (!part && !side) return "Choose the body part and side before exposing";
  if (part && part.paired && (!side || side === "U")) return `${part.meaning}: choose the side (R, L or B)`;
  if (side === "U" && (!part || part.paired)) return "U means an unpaired body part: choose one";
  return "";
}

async function acquire() {
  const frames = parseInt($("frames").value, 10);
  if (!(frames >= 1 && frames <= state.maxFrames)) { say(`Frames: 1 to ${state.maxFrames}`, true); return; }
  const problem = anatomyProblem();
  if (problem) { say(problem, true); return; }
  if (askExposure(frames, false)) return;
  await runAcquire(frames);
}

async function runAcquire(frames) {
  state.acquiring = true;
  renderProcedure();
  say(`Acquiring ${frames} frame(s)…`);
  try {
    await acquireOnce(frames);
  } catch (err) {
    say(`Acquire: ${err.message}`, true);
  } finally {
    state.acquiring = false;
    renderProcedure();
  }
}

// "until stopped": one frame at a time into the same procedure until Stop is pressed
async function toggleContinuous() {
  if (state.continuous) { state.stopRequested = true; renderProcedure(); return; }
  const problem = anatomyProblem();
  if (problem) { say(problem, true); return; }
  if (askExposure(1, true)) return;
  await runContinuous();
}

async function runContinuous() {
  state.continuous = true;
  state.acquiring = true;
  state.stopRequested = false;
  renderProcedure();
  say("Acquiring until stopped…");
  let count = 0;
  try {
    while (!state.stopRequested) {
      const result = await acquireOnce(1);
      count += result.objects.length;
      if (result.error) break;
      renderProcedure();
    }
    say(`${count} frame(s) acquired`);
  } catch (err) {
    say(`Acquire: ${err.message}`, true);
  } finally {
    state.continuous = false;
    state.acquiring = false;
    state.stopRequested = false;
    renderProcedure();
  }
}

async function refreshProcedure() {
  if (!state.procedure) return;
  try {
    const result = await api("GET", `/api/procedures/${encodeURIComponent(state.procedure.procedure_id)}`);
    state.procedure = result.procedure.state === "in_progress" ? result.procedure : null;
    state.anatomy = state.procedure ? (state.procedure.anatomy || null) : null;
  } catch (err) {
    if (err.status === 404) state.procedure = null;
  }
}

async function endProcedure(end) {
  if (!state.procedure) return;
  const body = { end };
  if (end === "discontinued") {
    body.reason = $("reason").value;
    if (!body.reason) { say("Choose a reason", true); return; }
  }
  try {
    await api("POST", `/api/procedures/${encodeURIComponent(state.procedure.procedure_id)}/end`, body);
    say(end === "completed" ? "Procedure completed" : "Procedure discontinued");
    state.procedure = null;
    state.anatomy = null;
    state.procedureWarning = "";
    state.selected = null;
    $("reason").value = "";
    loadWorklist(false);
  } catch (err) {
    say(`End: ${err.message}`, true);
  }
  renderProcedure();
}

async function loadReasons() {
  try {
    const result = await api("GET", "/api/reasons");
    const select = $("reason");
    select.replaceChildren(el("option", "", "Discontinue: choose a reason…"));
    select.firstChild.value = "";
    for (const r of result.reasons) {
      const option = el("option", "", r.meaning);
      option.value = r.code;
      select.appendChild(option);
    }
  } catch (err) {
    say(`Reasons: ${err.message}`, true);
  }
}

function renderInProgress(procedures) {
  // procedures in progress that this page is not showing (e.g. after a reload): resume them
  const box = $("in-progress");
  const others = procedures.filter((p) => !state.procedure || p.procedure_id !== state.procedure.procedure_id);
  const shown = state.acquiring ? "" : others.map((p) => p.procedure_id).join(",");
  if (box.dataset.shown === shown) return;     // unchanged: keep the buttons under the finger
  box.dataset.shown = shown;
  box.replaceChildren();
  if (!shown) return;
  box.appendChild(el("div", "sub", "Also in progress:"));
  for (const p of others) {
    const b = el("button", "", `Resume ${displayName(p.patient_name)} (${p.patient_id})`);
    b.type = "button";
    b.addEventListener("click", () => {
      state.procedure = p;
      state.anatomy = p.anatomy || null;
      state.selected = null;
      state.procedureWarning = "";
      renderProcedure();
      renderInProgress(procedures);
    });
    box.appendChild(b);
  }
}

// -- status, thumbnail, queue -----------------------------------------------------------------
async function pollStatus() {
  try {
    const s = await api("GET", "/api/status");
    const d = s.device;
    state.connected = !!d.connected;
    state.emitsRadiation = !!d.emits_radiation;
    if (s.limits && s.limits.max_frames) {
      state.maxFrames = s.limits.max_frames;
      $("frames").max = String(s.limits.max_frames);
    }
    const device = $("device");
    device.textContent = `Device ${d.driver}: ${d.connected ? "connected" : "not connected"}`;
    device.title = d.error || d.detail || "";
    device.className = "pill " + (d.connected ? "ok" : "bad");
    const ready = $("ready");
    const blocked = s.spool && s.spool.capture_blocked;
    if (!d.connected || blocked) {
      ready.textContent = blocked ? "Not ready: disk full" : "Not ready";
      ready.className = "pill bad";
    } else if (state.acquiring) {
      ready.textContent = "Acquiring";
      ready.className = "pill warn";
    } else {
      ready.textContent = "Ready";
      ready.className = "pill ok";
    }
    const down = (s.destinations || []).filter((x) => x.reachable === false || x.state === "down");
    const q = s.queue || {};
    const archive = $("archive");
    const waiting = (q.pending || 0) + (q.sending || 0);
    archive.textContent = down.length ? `Archive unreachable: ${waiting} waiting` :
      `Archive: ${waiting} waiting, ${q.failed || 0} failed`;
    archive.className = "pill " + (q.failed ? "bad" : down.length ? "warn" : "ok");
    $("queue-counts").textContent =
      `${q.pending || 0} pending · ${(q.sent || 0) + (q.commit_requested || 0)} stored · ${q.committed || 0} committed`;
    if (d.last_frame_at && d.last_frame_at !== state.lastFrameAt) {
      state.lastFrameAt = d.last_frame_at;
      const img = $("thumb");
      img.src = `/api/last-frame.png?t=${encodeURIComponent(d.last_frame_at)}`;
      img.hidden = false;
    }
    if (d.last_frame_at) {
      $("thumb-caption").textContent =
        `Last frame ${new Date(d.last_frame_at * 1000).toLocaleTimeString()} · ${d.frames_read} read`;
    }
    if (state.procedure && !state.acquiring) {
      const mine = s.procedures.find((p) => p.procedure_id === state.procedure.procedure_id);
      if (mine) state.procedure = mine;
      else await refreshProcedure();
    }
    renderInProgress(s.procedures || []);
    renderProcedure();
  } catch (err) {
    state.connected = false;
    $("device").textContent = "Agent not answering";
    $("device").className = "pill bad";
    $("ready").textContent = "Not ready";
    $("ready").className = "pill bad";
  }
}

const LABELS = { pending: "pending", sending: "sending", sent: "stored",
  commit_requested: "stored", committed: "committed", failed: "failed" };

function queueClass(o) {
  if (o.state === "failed") return "failed";
  if (o.done || o.state === "committed") return "committed";
  if (o.state === "sent" || o.state === "commit_requested") return "stored";
  return "pending";
}

async function pollQueue() {
  if (rejecting) return;
  try {
    const result = await api("GET", "/api/queue?limit=40");
    const list = $("queue");
    list.replaceChildren();
    for (const o of result.objects) {
      const cls = queueClass(o);
      const li = el("li", cls);
      li.appendChild(el("span", "sub", `#${o.queue_id}`));
      li.appendChild(el("span", "state", o.done ? "committed" : (LABELS[o.state] || o.state)));
      if (o.queued_at) li.appendChild(el("span", "sub", new Date(o.queued_at * 1000).toLocaleTimeString()));
      if (o.state === "failed") {
        const b = el("button", "", "Retry");
        b.type = "button";
        b.addEventListener("click", () => retry(o.queue_id, b));
        li.appendChild(b);
      }
      const rejected = (o.errors || []).some((e) => e.includes("rejected ("));
      if (o.sop_instance_uid && !rejected) {
        const b = el("button", "", "Reject…");
        b.type = "button";
        b.title = "Withdraw this image (IHE IOCM rejection note)";
        b.addEventListener("click", () => askReject(li, o, b));
        li.appendChild(b);
      }
      if (o.errors && o.errors.length && (o.state === "failed" || !o.done)) {
        li.appendChild(el("div", "errors", o.errors.join("; ")));
      }
      list.appendChild(li);
    }
    if (!list.children.length) list.appendChild(el("li", "sub", "Nothing queued yet"));
  } catch (err) {
    /* the status poll reports an agent that does not answer */
  }
}

// Reject: a second, deliberate step with the reason (IHE IOCM: quality, patient safety, wrong
// worklist entry); an image not sent yet is never sent, one already sent gets a note
const REJECT_REASONS = [
  ["quality", "Rejected for quality reasons"],
  ["patient-safety", "Rejected for patient safety reasons"],
  ["incorrect-modality-worklist", "Incorrect modality worklist entry"],
];
let rejecting = false;   // while the reason is being chosen the queue view is not redrawn

function askReject(li, o, button) {
  rejecting = true;
  button.disabled = true;
  const box = el("div", "row reject-confirm");
  const select = el("select");
  select.setAttribute("aria-label", "Reason for rejection");
  for (const [code, meaning] of REJECT_REASONS) {
    const option = el("option", "", meaning);
    option.value = code;
    select.appendChild(option);
  }
  const go = el("button", "danger", "Reject image");
  go.type = "button";
  const cancel = el("button", "", "Cancel");
  cancel.type = "button";
  const close = () => { rejecting = false; box.remove(); button.disabled = false; };
  cancel.addEventListener("click", close);
  go.addEventListener("click", async () => {
    go.disabled = true;
    try {
      const result = await api("POST", "/api/reject",
        { sop_instance_uids: [o.sop_instance_uid], reason: select.value });
      say(result.notes.length
        ? `#${o.queue_id} rejected: a rejection note goes to ${result.notes.map((n) => n.destinations.join(", ")).join("; ")}`
        : `#${o.queue_id} rejected: it will not be sent`);
    } catch (err) {
      say(`Reject: ${err.message}`, true);
    }
    close();
    pollQueue();
  });
  box.append(select, go, cancel);
  li.appendChild(box);
  select.focus();
}

async function retry(queueId, button) {
  button.disabled = true;
  try {
    const result = await api("POST", "/api/retry", { queue_ids: [queueId] });
    say(`Retrying #${queueId} (${result.retried} destination(s))`);
  } catch (err) {
    say(`Retry: ${err.message}`, true);
  }
  pollQueue();
}

// -- wiring -----------------------------------------------------------------------------------
function init() {
  $("refresh").addEventListener("click", () => loadWorklist(true));
  $("search").addEventListener("input", renderWorklist);
  $("unscheduled").addEventListener("submit", selectUnscheduled);
  $("start").addEventListener("click", startProcedure);
  $("acquire").addEventListener("click", acquire);
  $("expose").addEventListener("click", confirmExposure);
  $("expose-cancel").addEventListener("click", cancelExposure);
  $("continuous").addEventListener("click", toggleContinuous);
  $("complete").addEventListener("click", () => endProcedure("completed"));
  $("discontinue").addEventListener("click", () => endProcedure("discontinued"));
  $("reason").addEventListener("change", renderProcedure);
  loadReasons();
  loadBodyParts();
  loadWorklist(false);
  pollStatus();
  pollQueue();
  setInterval(pollStatus, POLL_MS);
  setInterval(pollQueue, POLL_MS);
  setInterval(() => loadWorklist(false), 15000);
}

document.addEventListener("DOMContentLoaded", init);
