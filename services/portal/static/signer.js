// Keys stay with their owners: the member's Ed25519 signing key is made here by WebCrypto as
// non-extractable, kept in this browser's IndexedDB (a CryptoKey, which cannot be read out), and
// used to sign chain transactions. Only the public key and signed transactions ever leave the page.
// Canonical JSON as docs/signing.md specifies (sorted keys by code point, integers only, no spaces).

const DB = "rdx-portal-keys", STORE = "keys";

function openDb() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

async function idb(mode, fn) {
  const db = await openDb();
  return new Promise((resolve, reject) => {
    const tx = db.transaction(STORE, mode), req = fn(tx.objectStore(STORE));
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

const b64 = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes)));

function codePointOrder(a, b) {
  const x = Array.from(a), y = Array.from(b);
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    const d = x[i].codePointAt(0) - y[i].codePointAt(0);
    if (d !== 0) return d;
  }
  return x.length - y.length;
}

function canonical(value, depth = 1) {
  if (value === null || value === true || value === false) return String(value);
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value)) throw new Error("only integers within ±(2^53 − 1)");
    return Object.is(value, -0) ? "0" : String(value);
  }
  if (typeof value === "string") return JSON.stringify(value);
  if (depth > 16) throw new Error("nested too deep");
  if (Array.isArray(value)) return "[" + value.map((v) => canonical(v, depth + 1)).join(",") + "]";
  const keys = Object.keys(value).sort(codePointOrder);
  return "{" + keys.map((k) => JSON.stringify(k) + ":" + canonical(value[k], depth + 1)).join(",") + "}";
}

export async function publicKey(account) {
  const pair = await idb("readonly", (s) => s.get(account));
  return pair ? b64(await crypto.subtle.exportKey("raw", pair.publicKey)) : null;
}

export async function makeKey(account) {
  const pair = await crypto.subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]);
  await idb("readwrite", (s) => s.put(pair, account));
  return b64(await crypto.subtle.exportKey("raw", pair.publicKey));
}

export async function signTx(account, chainId, nonce, type, payload) {
  const pair = await idb("readonly", (s) => s.get(account));
  if (!pair) throw new Error("no signing key in this browser");
  const envelope = { chain_id: chainId, nonce, payload, signer: account, type };
  const sig = await crypto.subtle.sign({ name: "Ed25519" }, pair.privateKey, new TextEncoder().encode(canonical(envelope)));
  return { ...envelope, sig: b64(sig) };
}

async function accountState(account) {
  return fetch(`/api/account?account=${encodeURIComponent(account)}`, { credentials: "same-origin" }).then((r) => r.json());
}

function csrf() {
  return document.querySelector("meta[name=csrf]").content;
}

async function post(path, body) {
  const answer = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
                                     body: JSON.stringify(body), credentials: "same-origin" });
  return { ok: answer.ok, body: await answer.json().catch(() => ({})) };
}

// The key page: show this browser's key for the member (an analyst: for the delegate account it
// asks for), or make one.
const keyPanel = document.getElementById("browser-key");
if (keyPanel) {
  const account = keyPanel.dataset.account, out = document.getElementById("public-key");
  publicKey(account).then((pk) => { if (pk) out.textContent = pk; });
  document.getElementById("make-key").addEventListener("click", async () => {
    out.textContent = await makeKey(account);
  });
}

// Signs the next tx of `signer` (the member, or one of its delegates) in this browser and sends it
// through the portal; says how it went in `status` (data-state done or failed) with the element's
// data-done / data-failed texts.
async function signAndSend(status, signer, type, payload, texts) {
  try {
    const seen = await accountState(signer);
    const tx = await signTx(signer, seen.chain_id, seen.nonce + 1, type, payload);
    const answer = await post("/api/tx", { tx });
    status.textContent = answer.ok ? `${texts.done} ${answer.body.tx_hash}` : `${texts.failed} ${answer.body.detail || ""}`;
    status.dataset.state = answer.ok ? "done" : "failed";
    return answer.ok;
  } catch (err) {
    status.textContent = `${texts.failed} ${err.message}`;
    status.dataset.state = "failed";
    return false;
  }
}

// An analyst's form names the delegate account that signs (a select marked data-held): the first
// whose key is in this browser is chosen.
document.querySelectorAll("select[data-held]").forEach(async (select) => {
  for (const option of select.options) {
    if (await publicKey(option.value)) { select.value = option.value; break; }
  }
});
const signerOf = (form, select) => (select ? select.value : form.dataset.account);

// The listing page's access request.
const requestForm = document.getElementById("request-access");
if (requestForm) {
  requestForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(requestForm);
    const payload = { id: data.get("grant"), asset: requestForm.dataset.asset, operations: [data.get("operation")],
                      purpose: data.get("purpose"), max_runs: Number(data.get("max_runs")),
                      expires_at: Math.floor(Date.now() / 1000) + 30 * 86400 };
    await signAndSend(document.getElementById("request-status"),
                      signerOf(requestForm, document.getElementById("request-signer")), "access.Request",
                      payload, requestForm.dataset);
  });
}

// The access inbox: a provider's admin approves a request.
document.querySelectorAll("button[data-approve]").forEach((button) => {
  button.addEventListener("click", async () => {
    button.disabled = true;
    await signAndSend(document.getElementById("approve-status"), button.dataset.account, "access.Approve",
                      { id: button.dataset.approve }, button.dataset);
    button.disabled = false;
  });
});

// The jobs page: a computation on the member's grants (one, or one per provider for aggregation and
// supply-chain verification), at most the quoted price, signed here; then its page. The form's parts
// marked data-kinds show (and are sent) only for those computations. (No field of the form may be
// named "dataset", "id" or "name": it would hide the form's own property of that name.)
const jobForm = document.getElementById("submit-job");
if (jobForm) {
  const grant = document.getElementById("job-grant"), price = document.getElementById("job-price");
  const type = document.getElementById("job-type"), kinds = JSON.parse(jobForm.dataset.jobKinds);
  const quoteText = document.getElementById("job-quote");
  const multi = () => kinds[type.value][2];
  const checked = () => Array.from(jobForm.querySelectorAll("input[name=inputs]:checked:enabled"));
  const showQuote = (amount) => {
    price.value = amount;
    quoteText.textContent = `${jobForm.dataset.quoteText}: ${jobForm.dataset.credits.replace("{amount}", amount)}`;
  };
  const requote = async () => {
    if (!multi()) {
      if (grant.selectedOptions[0]) showQuote(grant.selectedOptions[0].dataset.quote);
      return;
    }
    const assets = checked().map((box) => box.dataset.asset);
    if (!assets.length) return showQuote(0);
    const query = assets.map((a) => `asset=${encodeURIComponent(a)}`).join("&");
    const answer = await fetch(`/api/quote?${query}`, { credentials: "same-origin" });
    if (answer.ok) showQuote((await answer.json()).max_price);
  };
  const shown = (element) => {
    for (let at = element.closest("[data-kinds]"); at; at = at.parentElement?.closest("[data-kinds]")) {
      if (!at.dataset.kinds.split(" ").includes(type.value)) return false;
    }
    return true;
  };
  const choose = () => {
    jobForm.querySelectorAll("[data-kinds]").forEach((part) => { part.hidden = !shown(part); });
    jobForm.querySelectorAll("input, select, option").forEach((field) => { field.disabled = !shown(field); });
    if (!multi() && grant.selectedOptions[0]?.disabled) {
      const first = Array.from(grant.options).find((o) => !o.disabled);
      if (first) grant.value = first.value;
    }
    requote();
  };
  type.addEventListener("change", choose);
  grant.addEventListener("change", requote);
  jobForm.querySelectorAll("input[name=inputs]").forEach((box) => box.addEventListener("change", requote));
  choose();
  const list = (text) => text.split(",").map((v) => v.trim()).filter((v) => v);
  jobForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(jobForm), kind = type.value, status = document.getElementById("job-submit-status");
    const inputs = multi() ? checked().map((box) => ({ asset: box.dataset.asset, grant: box.value }))
                           : [{ asset: grant.selectedOptions[0].dataset.asset, grant: grant.value }];
    if (multi() && !inputs.length) {
      status.textContent = jobForm.dataset.noInput;
      status.dataset.state = "failed";
      return;
    }
    const stats = data.getAll("stats"), own = data.get("own_dataset");
    let params;
    if (kind === "psi" || kind === "psi_cardinality") params = { dataset: own, key: data.get("key") };
    else if (kind === "aggregation") {
      params = { columns: list(data.get("columns")), stats };
      if (data.get("group_by").trim()) Object.assign(params, { group_by: data.get("group_by").trim(), groups: list(data.get("groups")) });
    } else if (kind === "he_scoring") {
      params = { dataset: own, features: list(data.get("features")) };
      if (data.get("id_column").trim()) params.id = data.get("id_column").trim();
    } else if (kind === "he_statistics") {
      params = { mode: "statistics", dataset: own, column: data.get("column").trim(), stats };
      if (data.get("join_key").trim()) params.key = data.get("join_key").trim();
    } else if (kind === "supply_chain") {
      const consumer = signerOf(jobForm, document.getElementById("job-signer")).split(".")[0];
      params = { dataset: own, kinds: { [consumer]: data.get("own_kind") } };
      checked().forEach((box) => { params.kinds[box.dataset.provider] = data.get(`kind-${box.dataset.provider}`); });
    }
    const payload = { id: data.get("job"), type: kinds[kind][0], max_price: Number(data.get("max_price")),
                      inputs, params, timeout_s: 300 };
    if (await signAndSend(status, signerOf(jobForm, document.getElementById("job-signer")), "jobs.Submit",
                          payload, jobForm.dataset)) {
      window.location.assign(`/jobs/${encodeURIComponent(payload.id)}`);
    }
  });
}

// A job's page: its chain record as it changes, pushed by the portal (server-sent events), until it ends.
const jobPanel = document.getElementById("job");
const ENDED = ["completed", "failed", "aborted"];
if (jobPanel && !ENDED.includes(jobPanel.dataset.status)) {
  const texts = document.getElementById("status-texts").content, live = document.getElementById("job-live");
  const source = new EventSource(`/jobs/${encodeURIComponent(jobPanel.dataset.job)}/events`);
  live.hidden = false;
  source.addEventListener("job", (event) => {
    const job = JSON.parse(event.data);
    const text = texts.querySelector(`[data-status="${job.status}"]`);
    document.getElementById("job-status").textContent = text ? text.textContent : job.status;
    document.getElementById("job-reason").textContent = job.ended_reason || "";
    document.getElementById("job-ended").textContent = job.ended_height || "";
    document.getElementById("job-result-hash").textContent = job.result_hash || "";
    jobPanel.dataset.status = job.status;
    if (ENDED.includes(job.status)) { source.close(); live.hidden = true; }
  });
}

// Staff: the kill switches (suspend or resume a member, abort a job, suspend a listing), each after a
// confirmation that asks for the reason. The button names the tx type (data-tx), its payload without
// the reason (data-payload), whether the reason goes into it (data-with-reason) and where to say how
// it went (data-status).
const dialog = document.getElementById("confirm");
document.querySelectorAll("button[data-tx]").forEach((button) => {
  button.addEventListener("click", () => {
    document.getElementById("confirm-text").textContent = button.dataset.confirm;
    document.getElementById("confirm-reason").value = "";
    dialog.onclose = async () => {
      const reason = document.getElementById("confirm-reason").value;
      if (dialog.returnValue !== "ok" || !reason) return;
      const payload = JSON.parse(button.dataset.payload);
      if (button.dataset.withReason) payload.reason = reason;
      button.disabled = true;
      await signAndSend(document.getElementById(button.dataset.status), button.dataset.account, button.dataset.tx,
                        payload, button.dataset);
      button.disabled = false;
    };
    dialog.showModal();
  });
});

// The member admin's delegated keys: delegate an analyst's key (members.Delegate) or end one
// (members.Undelegate), each after a confirmation, signed in this browser with the member's key.
const ask = document.getElementById("ask");
function confirmed(text, then) {
  document.getElementById("ask-text").textContent = text;
  ask.returnValue = "";
  ask.onclose = () => { if (ask.returnValue === "ok") then(); };
  ask.showModal();
}
const delegateForm = document.getElementById("delegate-form");
if (delegateForm) {
  delegateForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(delegateForm), status = document.getElementById("delegate-status");
    const now = Math.floor(Date.now() / 1000), days = Number(data.get("days")), powers = data.getAll("powers");
    if (!powers.length) {
      status.textContent = delegateForm.dataset.noPower;
      status.dataset.state = "failed";
      return;
    }
    // at most 90 days after the block that applies it: 5 minutes spare for this clock and the block's
    const expires = Math.min(now + days * 86400, now + Number(delegateForm.dataset.maxDays) * 86400 - 300);
    const payload = { label: data.get("label"), public_key: data.get("public_key").trim(), powers, expires_at: expires };
    const account = `${delegateForm.dataset.member}.delegate-${payload.label}`;
    const text = delegateForm.dataset.confirm.replace("{account}", account).replace("{powers}", powers.join(", "))
      .replace("{days}", String(days));
    confirmed(text, () => signAndSend(status, delegateForm.dataset.account, "members.Delegate", payload, delegateForm.dataset));
  });
}
document.querySelectorAll("button[data-undelegate]").forEach((button) => {
  button.addEventListener("click", () => {
    confirmed(button.dataset.confirm, async () => {
      button.disabled = true;
      await signAndSend(document.getElementById("undelegate-status"), button.dataset.account, "members.Undelegate",
                        { account: button.dataset.undelegate }, button.dataset);
      button.disabled = false;
    });
  });
});

// Staff admit a member (members.Register) with the public key its admin made in its own browser, and
// its compute node's key and endpoint when it has one, after a confirmation, signed in this browser
// with the association's key.
const admitForm = document.getElementById("admit-form");
if (admitForm) {
  admitForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(admitForm), status = document.getElementById("admit-status");
    const roles = data.getAll("roles"), nodeKey = data.get("node_key").trim(), endpoint = data.get("endpoint").trim();
    const refuse = (text) => { status.textContent = text; status.dataset.state = "failed"; };
    if (!roles.length) return refuse(admitForm.dataset.noRole);
    if (!nodeKey !== !endpoint) return refuse(admitForm.dataset.halfNode);
    const payload = { id: data.get("member_id").trim(), name: data.get("member_name").trim(), roles,
                      public_key: data.get("public_key").trim() };
    if (nodeKey) payload.node = { public_key: nodeKey, endpoint };
    delete status.dataset.state;
    status.textContent = "";
    const text = admitForm.dataset.confirm.replace("{member}", payload.id).replace("{roles}", roles.join(", "));
    confirmed(text, () => signAndSend(status, admitForm.dataset.account, "members.Register", payload, admitForm.dataset));
  });
}

// The listing wizard: a draft the catalog found valid is published with assets.List (a new version of
// one of the member's listings: assets.Update, data-tx-type), its canonical payload (as the catalog gave
// it) signed in this browser with the member's key, after a confirmation.
const publishButton = document.getElementById("publish-listing");
if (publishButton) {
  publishButton.addEventListener("click", () => {
    confirmed(publishButton.dataset.confirm, async () => {
      publishButton.disabled = true;
      const ok = await signAndSend(document.getElementById("publish-status"), publishButton.dataset.account,
                                   publishButton.dataset.txType, JSON.parse(publishButton.dataset.payload),
                                   publishButton.dataset);
      document.getElementById("published").hidden = !ok;
      publishButton.disabled = ok;
    });
  });
}

// Staff publish the policy's next version (governance.PublishPolicy) after a confirmation, signed in
// this browser with the association's key (the chain takes it only if its board left the policy to it).
const policyForm = document.getElementById("publish-policy");
if (policyForm) {
  policyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const payload = { version: Number(policyForm.dataset.version), text: new FormData(policyForm).get("text") };
    confirmed(policyForm.dataset.confirm, () => signAndSend(document.getElementById("policy-status"),
                                                             policyForm.dataset.account, "governance.PublishPolicy",
                                                             payload, policyForm.dataset));
  });
}
