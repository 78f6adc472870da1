// The login page of dashboard-auth: log in to a cluster with a ServiceAccount token or a kubeconfig
// file, then keep the session token fresh the way the Kubernetes Dashboard v2 frontend does.
// One module, no dependencies, no build step. It writes text only (textContent), never HTML.

const STORAGE_KEY = "dashboard-auth.session"; // sessionStorage: this tab only, gone when it closes
const DEFAULT_REFRESH_SECONDS = 60; // the longest between two refreshes (each one also re-checks revocation)
const REQUEST_TIMEOUT_MS = 30000; // API Gateway gives up at 29 s
const NETWORK_RETRY_MS = 5000;
const LOGIN_RETRIES = 3; // automatic retries of a login the service answered 503
const MAX_BODY_BYTES = 64 * 1024; // the service refuses larger bodies (413)
const UNAUTHORIZED = "MSG_LOGIN_UNAUTHORIZED_ERROR";
const EXPIRED = "MSG_TOKEN_EXPIRED_ERROR";

const $ = (id) => document.getElementById(id);

const state = {
  apiBase: "", // no trailing slash; "" = this page's own origin
  refreshMs: DEFAULT_REFRESH_SECONDS * 1000,
  clusters: [], // names; empty when the API does not list them (then the default routes are used)
  session: null, // {cluster, name, jweToken, sentAt, exp, iat, authTime}
  timer: null, // the pending refresh or retry
  loginRetry: null, // {timer, attempts}
  generation: 0, // bumped on log-out/expiry, so an answer arriving late for an old session is dropped
};

// ------------------------------------------------------------------ errors

class ApiError extends Error {
  constructor(kind, { status = 0, text = "", retryAfter = null } = {}) {
    super(kind);
    this.kind = kind; // network | timeout | expired | refused | csrf | unavailable | not-found | bad-request | other
    this.status = status;
    this.text = text;
    this.retryAfter = retryAfter; // seconds, when the service said
  }
}

function retryAfterSeconds(value) {
  if (!value) return null;
  if (/^\d+$/.test(value.trim())) return Number(value.trim());
  const date = Date.parse(value);
  return Number.isNaN(date) ? null : Math.max(0, Math.ceil((date - Date.now()) / 1000));
}

/** A sentence of the service's that is safe to show: short plain text, no token-like content. */
function serviceSentence(text) {
  const line = (text || "").trim();
  if (!line || line.length > 240 || /eyJ|[A-Za-z0-9_-]{60,}|[{}<>]/.test(line)) return "";
  return line;
}

// ------------------------------------------------------------------ the API

function apiOrigin() {
  return state.apiBase ? new URL(state.apiBase).origin : location.origin;
}

function apiUrl(cluster, path) {
  const prefix = cluster ? `/clusters/${encodeURIComponent(cluster)}` : "";
  return `${state.apiBase || location.origin}${prefix}/api/v1/${path}`;
}

async function call(url, { method = "GET", headers = {}, body } = {}) {
  let response;
  try {
    response = await fetch(url, {
      method,
      headers,
      body,
      mode: "cors",
      credentials: "omit", // nothing rides along implicitly: the session token is sent only where we put it
      cache: "no-store",
      redirect: "error",
      referrerPolicy: "no-referrer",
      signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    });
  } catch (error) {
    // A CORS refusal, a refused connection and a DNS failure all look the same from here.
    throw new ApiError(error && error.name === "TimeoutError" ? "timeout" : "network");
  }
  if (response.ok) {
    try {
      return await response.json();
    } catch {
      throw new ApiError("other", { status: response.status });
    }
  }
  const text = (await response.text().catch(() => "")).trim();
  const details = { status: response.status, text, retryAfter: retryAfterSeconds(response.headers.get("Retry-After")) };
  if (response.status === 401) {
    if (text === EXPIRED) throw new ApiError("expired", details);
    if (text === UNAUTHORIZED) throw new ApiError("refused", details);
    if (text.startsWith("CSRF")) throw new ApiError("csrf", details);
  }
  if (response.status === 503 || response.status === 429) throw new ApiError("unavailable", details);
  if (response.status === 404) throw new ApiError("not-found", details);
  if ([400, 413, 415].includes(response.status)) throw new ApiError("bad-request", details);
  throw new ApiError("other", details);
}

function postJson(url, csrfToken, body) {
  return call(url, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRF-TOKEN": csrfToken },
    body,
  });
}

function statusError(answer) {
  const status = answer && Array.isArray(answer.errors) && answer.errors[0] && answer.errors[0].ErrStatus;
  if (!status) return null;
  if (status.message === UNAUTHORIZED) return new ApiError("refused", { status: status.code || 401 });
  if (status.message === EXPIRED) return new ApiError("expired", { status: status.code || 401 });
  return new ApiError("other", { status: status.code || 0 });
}

/** The Dashboard frontend's login: a CSRF token for "login", then the POST. */
async function logIn(cluster, body) {
  if (new TextEncoder().encode(body).length > MAX_BODY_BYTES) throw new ApiError("too-large");
  const csrf = await call(apiUrl(cluster, "csrftoken/login"));
  const answer = await postJson(apiUrl(cluster, "login"), csrf.token, body);
  const error = statusError(answer);
  if (error) throw error;
  if (!answer.jweToken) throw new ApiError("other", { status: 200 });
  return answer;
}

/** The Dashboard frontend's refresh, as it runs on every navigation: login/status, a CSRF token, the POST. */
async function renew(session) {
  const status = await call(apiUrl(session.cluster, "login/status"), { headers: { jweToken: session.jweToken } });
  const csrf = await call(apiUrl(session.cluster, "csrftoken/token"));
  const answer = await postJson(apiUrl(session.cluster, "token/refresh"), csrf.token, JSON.stringify({ jweToken: session.jweToken }));
  const error = statusError(answer);
  if (error) throw error;
  if (!answer.jweToken) throw new ApiError("other", { status: 200 });
  return { jweToken: answer.jweToken, httpsMode: Boolean(status && status.httpsMode) };
}

// ------------------------------------------------------------------ the session token

/** The token's AAD (iat, exp, cluster, auth_time): plain base64url JSON, readable without any key. */
function readClaims(jweToken) {
  try {
    const aad = JSON.parse(jweToken).aad;
    const json = atob(aad.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(aad.length / 4) * 4, "="));
    const fields = JSON.parse(json);
    const time = (name) => (typeof fields[name] === "string" && !Number.isNaN(Date.parse(fields[name])) ? Date.parse(fields[name]) : null);
    return { iat: time("iat"), exp: time("exp"), authTime: time("auth_time"), cluster: typeof fields.cluster === "string" ? fields.cluster : "" };
  } catch {
    return { iat: null, exp: null, authTime: null, cluster: "" };
  }
}

/** sentAt: when the request that brought the token was sent (null: unknown, e.g. a restored token). */
function adopt(cluster, name, jweToken, sentAt) {
  const claims = readClaims(jweToken);
  return { cluster, name, jweToken, sentAt, ...claims };
}

/**
 * When the token runs out on this browser's clock, erring early. Its lifetime (exp - iat, both on
 * the service's clock) counted from when the request was sent, since it was minted after that, less
 * a second because iat is whole seconds. This needs no agreement between the two clocks; only a
 * token of unknown origin falls back on comparing exp with this browser's clock.
 */
function localEnd(session) {
  if (session.exp === null) return null;
  if (session.iat === null || session.sentAt === null) return session.exp - 1000;
  return session.sentAt + (session.exp - session.iat) - 1000;
}

function save(session) {
  try {
    sessionStorage.setItem(STORAGE_KEY, JSON.stringify({ cluster: session.cluster, name: session.name, jweToken: session.jweToken }));
  } catch {
    // storage full or disabled: the session lives in memory only, and a reload asks for a login
  }
}

function restore() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(STORAGE_KEY) || "null");
    if (saved && typeof saved.jweToken === "string" && typeof saved.name === "string" && typeof saved.cluster === "string") {
      return saved;
    }
  } catch {
    // unreadable: treated as no session
  }
  forget();
  return null;
}

function forget() {
  try {
    sessionStorage.removeItem(STORAGE_KEY);
  } catch {
    // nothing stored
  }
}

// ------------------------------------------------------------------ what the person sees

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });

function setTime(element, millis) {
  if (millis === null) {
    element.textContent = "—";
    element.removeAttribute("datetime");
    return;
  }
  element.textContent = timeFormat.format(new Date(millis));
  element.dateTime = new Date(millis).toISOString();
}

function clusterLabel(cluster) {
  return cluster || "the default cluster";
}

function show(view) {
  $("loading").hidden = view !== "loading";
  $("login-form").hidden = view !== "login";
  $("session").hidden = view !== "session";
  $("main").setAttribute("aria-busy", String(view === "loading"));
}

function say(kind, text, { focus = false } = {}) {
  const box = $("message");
  box.className = `message ${kind}`;
  box.textContent = text;
  box.hidden = !text;
  if (text && focus) box.focus();
}

function unreachable() {
  const origin = location.origin;
  if (apiOrigin() === origin) return `The sign-in service at ${origin} is not reachable. It may be down; try again later.`;
  return `The API at ${apiOrigin()} is not reachable from this page's origin (${origin}). ` +
    `It may be down, or it does not allow calls from this origin: its operator must add ${origin} to CORS_ALLOWED_ORIGINS.`;
}

function describe(error, { cluster, during }) {
  const where = clusterLabel(cluster);
  switch (error.kind) {
    case "network":
      return unreachable();
    case "timeout":
      return `The sign-in service did not answer in time.${during === "login" ? " Try again." : ""}`;
    case "refused":
      return during === "login"
        ? `${cluster ? `The cluster ${cluster}` : "The cluster"} did not accept this token. Check that it is a current ServiceAccount token for this cluster.`
        : "The sign-in service no longer accepts this session. Log in again.";
    case "expired":
      return "Your session ended. Log in again to continue.";
    case "csrf":
      return `The sign-in service refused this page's security token (CSRF).${during === "login" ? " Reload the page and try again." : ""}`;
    case "unavailable":
      return cluster ? `The sign-in service or cluster ${where} is unavailable right now.` : "The sign-in service is unavailable right now.";
    case "not-found":
      return `The cluster ${where} is not served by this sign-in service. Choose another one.`;
    case "too-large":
      return "This file is too large to be a kubeconfig (the limit is 64 KiB).";
    case "bad-request": {
      const sentence = serviceSentence(error.text);
      return sentence ? `The sign-in service could not use this: ${sentence}` : "The sign-in service could not use this request.";
    }
    case "file":
      return "This file could not be read. Choose the kubeconfig file again.";
    case "config":
      return `This page's config.json is not valid: ${error.text}`;
    default:
      return `Something went wrong${error.status ? ` (HTTP ${error.status})` : ""}.` +
        (during === "refresh" ? "" : " Try again; if it keeps happening, tell the service's operator.");
  }
}

function setBusy(busy) {
  const form = $("login-form");
  form.setAttribute("aria-busy", String(busy));
  for (const element of form.elements) element.disabled = busy;
  const button = $("login-button");
  button.classList.toggle("busy", busy);
  button.querySelector(".label").textContent = busy ? "Logging in…" : "Log in";
}

function showLogin(kind = "", text = "", { focus = true } = {}) {
  clearTimeout(state.timer);
  state.timer = null;
  show("login");
  setBusy(false);
  say(kind, text);
  if (focus) (text ? $("message") : $("title")).focus();
}

function showSession(extended) {
  const session = state.session;
  show("session");
  say("", "");
  $("session-name").textContent = session.name;
  $("session-cluster").textContent = clusterLabel(session.cluster);
  setTime($("session-since"), session.authTime);
  setTime($("session-ends"), session.exp);
  $("session-ends-note").textContent = session.exp === null
    ? "(no expiry)"
    : extended ? "(renewed automatically while this page is open)" : "(the longest this session may last)";
}

function sessionStatus(text, kind = "") {
  const line = $("session-status");
  line.className = `status ${kind}`;
  line.textContent = text;
}

// ------------------------------------------------------------------ refreshing

function schedule(delayMs) {
  clearTimeout(state.timer);
  const generation = state.generation;
  state.timer = setTimeout(() => {
    if (generation === state.generation) refreshNow();
  }, Math.max(500, delayMs));
}

/** Before the token runs out: at two thirds of what is left, and at least every refreshMs. */
function scheduleRefresh(extended) {
  const end = localEnd(state.session);
  if (end === null) return schedule(state.refreshMs);
  const left = end - Date.now();
  // A token that was not extended is at the session's hard limit: look once more just after it.
  schedule(Math.min(state.refreshMs, extended ? (left * 2) / 3 : left + 1500));
}

function endSession(kind, text) {
  state.generation += 1;
  state.session = null;
  forget();
  showLogin(kind, text);
}

let refreshing = false;

async function refreshNow() {
  if (!state.session || refreshing) return;
  refreshing = true;
  const generation = state.generation;
  const session = state.session;
  const sentAt = Date.now();
  try {
    const answer = await renew(session);
    if (generation !== state.generation) return;
    const renewed = adopt(session.cluster, session.name, answer.jweToken, sentAt);
    // Not extended: a later token with the same exp has reached the session's hard limit (MAX_SESSION_TTL
    // or the ServiceAccount token's own exp). Within one second (iat is whole seconds) nothing is known.
    const extended = renewed.exp === null || session.exp === null || renewed.exp > session.exp ||
      renewed.iat === null || session.iat === null || renewed.iat <= session.iat;
    state.session = renewed;
    save(renewed);
    showSession(extended);
    const plainHttp = !answer.httpsMode && !isLocal(apiOrigin());
    sessionStatus(`Session renewed at ${timeFormat.format(new Date())}.` +
      (plainHttp ? " Warning: the sign-in service says it is not reached over HTTPS." : ""), plainHttp ? "warning" : "");
    scheduleRefresh(extended);
  } catch (error) {
    if (generation !== state.generation) return;
    if (!(error instanceof ApiError)) throw error;
    if (error.kind === "expired" || error.kind === "refused" || error.kind === "not-found") {
      endSession(error.kind === "expired" ? "info" : "error", describe(error, { cluster: session.cluster, during: "refresh" }));
      return;
    }
    // The service or the network is down for now: keep the session while its token is still good.
    const end = localEnd(session);
    if (end !== null && Date.now() >= end) {
      endSession("info", "Your session ended while the sign-in service could not be reached. Log in again to continue.");
      return;
    }
    // After Retry-After, but while the token lasts: at half its remaining life when that comes first
    // (waiting out a Retry-After longer than the token would lose the session for certain).
    let waitMs = error.kind === "unavailable" ? (error.retryAfter ?? 5) * 1000 : NETWORK_RETRY_MS;
    if (end !== null) waitMs = Math.max(500, Math.min(waitMs, (end - Date.now()) / 2));
    if ($("session").hidden) showSession(true); // a restored session: shown, and kept trying
    sessionStatus(`${describe(error, { cluster: session.cluster, during: "refresh" })} Your session is kept; trying again in ${Math.max(1, Math.round(waitMs / 1000))} s.`, "warning");
    schedule(waitMs);
  } finally {
    refreshing = false;
  }
}

function isLocal(origin) {
  const host = new URL(origin).hostname;
  return host === "localhost" || host === "127.0.0.1" || host === "[::1]";
}

// ------------------------------------------------------------------ logging in

function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result));
    reader.onerror = () => reject(new ApiError("file"));
    reader.readAsText(file);
  });
}

async function loginBody() {
  if ($("mode-kubeconfig").checked) {
    const file = $("kubeconfig").files[0];
    if (!file) return null;
    if (file.size > MAX_BODY_BYTES) throw new ApiError("too-large");
    return JSON.stringify({ kubeconfig: await readFile(file) });
  }
  const token = $("token").value.trim();
  return token ? JSON.stringify({ token }) : null;
}

function selectedCluster() {
  return state.clusters.length ? $("cluster").value : "";
}

async function submitLogin(event) {
  if (event) event.preventDefault();
  clearTimeout(state.loginRetry && state.loginRetry.timer);
  const attempts = event ? 0 : (state.loginRetry ? state.loginRetry.attempts : 0);
  state.loginRetry = null;
  const cluster = selectedCluster();
  let body;
  try {
    body = await loginBody();
  } catch (error) {
    say("error", describe(error, { cluster, during: "login" }), { focus: true });
    return;
  }
  if (!body) {
    const missing = $("mode-kubeconfig").checked ? "Choose a kubeconfig file." : "Enter a token.";
    say("error", missing, { focus: true });
    ($("mode-kubeconfig").checked ? $("kubeconfig") : $("token")).focus();
    return;
  }
  say("", "");
  setBusy(true);
  const sentAt = Date.now();
  try {
    const answer = await logIn(cluster, body);
    state.generation += 1;
    state.session = adopt(cluster, answer.name || "(unnamed)", answer.jweToken, sentAt);
    save(state.session);
    $("token").value = "";
    $("kubeconfig").value = "";
    setBusy(false);
    showSession(true);
    sessionStatus("");
    $("session-title").focus();
    scheduleRefresh(true);
  } catch (error) {
    setBusy(false);
    if (!(error instanceof ApiError)) throw error;
    const text = describe(error, { cluster, during: "login" });
    if (error.kind === "unavailable" && attempts < LOGIN_RETRIES) {
      const waitS = error.retryAfter ?? 5;
      say("warning", `${text} Trying again in ${waitS} s.`, { focus: true });
      state.loginRetry = { attempts: attempts + 1, timer: setTimeout(() => submitLogin(null), waitS * 1000) };
      return;
    }
    say(error.kind === "unavailable" ? "warning" : "error",
      error.kind === "unavailable" ? `${text} Try again later.` : text, { focus: true });
  }
}

function logOut() {
  endSession("info", "You are logged out. The session token is forgotten in this browser.");
}

// ------------------------------------------------------------------ start

async function loadConfig() {
  let response;
  try {
    response = await fetch("config.json", { cache: "no-store", credentials: "same-origin" });
  } catch {
    return {};
  }
  if (response.status === 404 || !response.ok) return {};
  let config;
  try {
    config = await response.json();
  } catch {
    throw new ApiError("config", { text: "it is not JSON." });
  }
  if (!config || typeof config !== "object") throw new ApiError("config", { text: "it is not a JSON object." });
  return config;
}

function applyConfig(config) {
  if (config.apiBase !== undefined && config.apiBase !== "") {
    let url;
    try {
      url = new URL(config.apiBase);
    } catch {
      throw new ApiError("config", { text: "apiBase is not a URL." });
    }
    if (!["https:", "http:"].includes(url.protocol) || url.search || url.hash || url.username) {
      throw new ApiError("config", { text: "apiBase must be an http(s) URL with no query, fragment or user." });
    }
    state.apiBase = url.href.replace(/\/+$/, "");
  }
  if (config.refreshSeconds !== undefined) {
    const seconds = Number(config.refreshSeconds);
    if (!Number.isFinite(seconds) || seconds < 1) throw new ApiError("config", { text: "refreshSeconds must be a number of seconds, at least 1." });
    state.refreshMs = seconds * 1000;
  }
}

async function loadClusters() {
  for (;;) {
    try {
      const answer = await call(apiUrl("", "clusters"));
      return { clusters: Array.isArray(answer.clusters) ? answer.clusters.filter((c) => typeof c === "string") : [], defaultCluster: answer.defaultCluster };
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      if (error.kind === "not-found") return { clusters: [], defaultCluster: "" }; // a service that lists none: the default routes
      if (error.kind !== "unavailable") throw error;
      const waitS = error.retryAfter ?? 5;
      show("loading");
      say("warning", `${describe(error, { cluster: "", during: "start" })} Trying again in ${waitS} s.`);
      await new Promise((resolve) => setTimeout(resolve, waitS * 1000));
    }
  }
}

function fillClusters({ clusters, defaultCluster }) {
  state.clusters = clusters;
  const select = $("cluster");
  select.replaceChildren(...clusters.map((name) => new Option(name, name)));
  const wanted = new URLSearchParams(location.search).get("cluster");
  if (wanted && clusters.includes(wanted)) select.value = wanted;
  else if (defaultCluster && clusters.includes(defaultCluster)) select.value = defaultCluster;
  $("cluster-field").hidden = clusters.length === 0;
  return wanted && !clusters.includes(wanted) ? `There is no cluster "${wanted}" here; choose one of the list.` : "";
}

function switchMode() {
  const kubeconfig = $("mode-kubeconfig").checked;
  $("token-field").hidden = kubeconfig;
  $("kubeconfig-field").hidden = !kubeconfig;
}

async function start() {
  $("login-form").addEventListener("submit", submitLogin);
  $("mode-token").addEventListener("change", switchMode);
  $("mode-kubeconfig").addEventListener("change", switchMode);
  $("logout-button").addEventListener("click", logOut);
  // Coming back to the tab counts as a navigation: renew now (timers may have slept meanwhile).
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && state.session) refreshNow();
  });

  let note = "";
  try {
    applyConfig(await loadConfig());
    note = fillClusters(await loadClusters());
  } catch (error) {
    show("none");
    say("error", describe(error instanceof ApiError ? error : new ApiError("other"), { cluster: "", during: "start" }));
    return;
  }
  switchMode();
  const saved = restore();
  if (saved && (!state.clusters.length || state.clusters.includes(saved.cluster))) {
    state.generation += 1;
    state.session = adopt(saved.cluster, saved.name, saved.jweToken, null);
    show("loading");
    $("loading").lastChild.textContent = "Checking your session…";
    await refreshNow();
    return;
  }
  forget();
  showLogin(note ? "warning" : "", note, { focus: false });
}

start();
