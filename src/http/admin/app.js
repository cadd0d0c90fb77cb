"use strict";
const API = "/api/v1/admin/database";
const KEY = "dbkeep-admin-token";
const $ = (id) => document.getElementById(id);

function token() { return sessionStorage.getItem(KEY); }

async function api(method, path, body) {
  const opts = { method, headers: { "Authorization": "Bearer " + token() } };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(API + path, opts);
  if (r.status === 401) {
    sessionStorage.removeItem(KEY);
    askToken("The token was refused.");
    throw new Error("unauthorized");
  }
  const data = await r.json().catch(() => ({}));
  if (!r.ok) {
    throw new Error((data.error || r.statusText) + (data.hint ? " (" + data.hint + ")" : ""));
  }
  return data;
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function size(n) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}

function age(iso) {
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 90) return Math.round(s) + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  if (s < 129600) return Math.round(s / 3600) + " h";
  return Math.round(s / 86400) + " d";
}

function say(text, bad) {
  $("message").textContent = text;
  $("message").className = bad ? "bad" : "muted";
}

function askToken(why) {
  $("login-error").textContent = why || "";
  if (!$("login").open) $("login").showModal();
  $("token").focus();
}

async function loadTargets() {
  const [health, info, schema] = await Promise.all([
    fetch("/health").then((r) => r.json()).catch(() => ({ targets: [] })),
    api("GET", "/info"),
    api("GET", "/schema/status"),
  ]);
  const byName = (list) => Object.fromEntries(list.map((x) => [x.target, x]));
  const h = byName(health.targets || []), s = byName(schema);
  const body = $("targets").tBodies[0];
  body.replaceChildren();
  for (const t of info) {
    const tr = el("tr");
    tr.dataset.target = t.target;
    tr.append(el("td", t.target), el("td", t.kind));
    const ht = h[t.target];
    const level = ht ? (ht.level || (ht.healthy ? "green" : "red")) : "?";
    const words = { green: "healthy", amber: "attention", red: "unhealthy" };
    const hc = el("td", words[level] || "?", level === "green" ? "ok" : level === "amber" ? "warn" : "bad");
    if (ht && level === "red") hc.title = ht.problems.join("\n");
    if (ht && level === "amber") hc.title = (ht.attention || []).join("\n");
    tr.append(hc);
    const db = el("td");
    db.append(el("div", t.connected ? (t.server_version + ", " + size(t.size_bytes || 0) + ", " + t.table_count + " tables") : ("unreachable: " + t.error), t.connected ? "" : "bad"));
    db.append(el("div", t.location, "muted"));
    tr.append(db);
    const sc = el("td");
    const st = s[t.target];
    let syncable = false;
    if (!st || !st.configured) {
      sc.append(el("span", "not declared", "muted"));
    } else if (st.error) {
      sc.append(el("span", st.error, "bad"));
    } else {
      sc.append(el("span", st.in_sync ? "in sync" : "drift", st.in_sync ? "ok" : "bad"));
      const ul = el("ul", null, "diff");
      for (const sch of st.report.schemas) {
        const pending = sch.migrations.filter((m) => m.state !== "applied").length;
        if (pending) ul.append(el("li", sch.schema + ": " + pending + " migration(s) not applied"));
        for (const d of sch.differences) {
          ul.append(el("li", sch.schema + ": " + d.message));
          if (d.kind === "missing_table") syncable = true;
        }
      }
      sc.append(ul);
    }
    tr.append(sc);
    const actions = el("td");
    if (syncable) {
      const b = el("button", "Sync schema");
      b.type = "button";
      b.className = "sync";
      b.onclick = () => syncSchema(t.target, b);
      actions.append(b);
    }
    tr.append(actions);
    body.append(tr);
  }
}

async function loadBackups() {
  const list = await api("GET", "/backups");
  const body = $("backups").tBodies[0];
  body.replaceChildren();
  for (const b of list) {
    const tr = el("tr");
    tr.dataset.id = b.id;
    tr.dataset.target = b.target;
    tr.append(el("td", b.id + (b.schema ? ":" + b.schema : "") + (b.database ? " db " + b.database : "")), el("td", b.target), el("td", b.storage),
      el("td", size(b.bytes)), el("td", age(b.created)),
      el("td", b.verified_at ? "verified " + age(b.verified_at) + " ago" : "not drilled", b.verified_at ? "ok" : "muted"),
      el("td", b.suspect ? "SUSPECT: " + b.suspect : (b.reason || ""), b.suspect ? "warn" : "muted"));
    const dl = el("td");
    const a = el("a", b.file);
    a.href = b.download_url;
    a.setAttribute("download", b.file);
    a.className = "download";
    dl.append(a);
    tr.append(dl);
    const act = el("td");
    if (b.contents !== "globals") {
      const r = el("button", "Restore…", "danger");
      r.type = "button";
      r.onclick = () => askRestore(b);
      act.append(r);
    }
    tr.append(act);
    body.append(tr);
  }
}

function size(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let u = 0;
  while (n >= 1024 && u < units.length - 1) { n /= 1024; u++; }
  return (u === 0 ? n : n.toFixed(n < 10 ? 1 : 0)) + " " + units[u];
}

// "120 MiB of ~2.0 GiB (6%), 40 MiB/s, about 48s left"
function progressText(p) {
  if (!p) return "";
  let t = " " + size(p.bytes);
  if (p.total) t += " of " + (p.estimated ? "~" : "") + size(p.total);
  if (p.percent != null) t += " (" + Math.floor(p.percent) + "%)";
  t += ", " + size(p.bytes_per_second) + "/s";
  if (p.eta_seconds != null) t += ", about " + p.eta_seconds + "s left";
  return t;
}

async function follow(jobId, label) {
  for (let i = 0; i < 7200; i++) {
    const j = await api("GET", "/jobs/" + jobId);
    $("progress").textContent = label + ": " + j.state + " (" + j.done + "/" + j.total + ")" +
      j.steps.filter((s) => s.state === "running").map((s) => " " + s.target + "…" + progressText(s.progress)).join("");
    if (j.state === "succeeded" || j.state === "failed") {
      const errors = j.steps.filter((s) => s.error).map((s) => s.target + ": " + s.error);
      say(label + " " + j.state + (errors.length ? ":\n" + errors.join("\n") : ""), j.state === "failed");
      return j;
    }
    await new Promise((r) => setTimeout(r, 500));
  }
}

async function backupNow() {
  $("backup-now").disabled = true;
  try {
    const { job_id } = await api("POST", "/backup", {});
    await follow(job_id, "backup");
    await Promise.all([loadBackups(), loadTargets()]);
  } catch (e) {
    say(String(e.message || e), true);
  } finally {
    $("backup-now").disabled = false;
  }
}

async function syncSchema(target, button) {
  if (!confirm("Create the tables missing from " + target + "? A pre-sync backup is taken first; nothing existing is changed.")) return;
  button.disabled = true;
  try {
    const r = await api("POST", "/schema/sync", { target });
    say(target + ": created " + r.created_tables + " table(s)" + (r.backup_id ? " after backup " + r.backup_id : ""));
    await Promise.all([loadBackups(), loadTargets()]);
  } catch (e) {
    say(String(e.message || e), true);
    button.disabled = false;
  }
}

let restoring = null;
function askRestore(b) {
  restoring = b;
  $("restore-what").textContent = b.id + (b.schema ? ":" + b.schema : "") + (b.database ? " (database " + b.database + ")" : "");
  $("restore-target").textContent = b.target;
  $("restore-confirm").value = "";
  $("restore-dialog").showModal();
}

async function doRestore() {
  const b = restoring;
  const body = { target: b.target, id: b.id, confirm: $("restore-confirm").value };
  if (b.schema) body.schema = b.schema;
  if (b.database) body.database = b.database;
  try {
    const { job_id } = await api("POST", "/restore", body);
    await follow(job_id, "restore");
    await Promise.all([loadBackups(), loadTargets()]);
  } catch (e) {
    say(String(e.message || e), true);
  }
}

async function refresh() {
  try {
    await Promise.all([loadTargets(), loadBackups()]);
    $("who").textContent = "token set for this tab";
  } catch (e) {
    if (String(e.message) !== "unauthorized") say(String(e.message || e), true);
  }
}

$("login-form").addEventListener("submit", () => {
  sessionStorage.setItem(KEY, $("token").value.trim());
  $("token").value = "";
  refresh();
});
$("forget").onclick = () => { sessionStorage.removeItem(KEY); location.reload(); };
$("backup-now").onclick = backupNow;
$("restore-form").addEventListener("submit", doRestore);
$("restore-cancel").onclick = () => $("restore-dialog").close();

if (token()) refresh(); else askToken();
