// The lmlab playground: one request to the server's OpenAI-compatible API, streamed into the page.
// No framework and no build step: the browser runs this file as it is.
"use strict";

const $ = (id) => document.getElementById(id);
const SLIDERS = ["max_tokens", "temperature", "top_k", "top_p"];
const ALTERNATIVES = 5;

let apiKey = sessionStorage.getItem("lmlab-api-key") || "";
let model = null;
let running = null; // the AbortController of the request in flight
let tokens = []; // [{text, logprob, top: [{token, logprob}]}] of the answer shown

function headers() {
  const h = { "Content-Type": "application/json" };
  if (apiKey) h.Authorization = `Bearer ${apiKey}`;
  return h;
}

function setStatus(text) { $("status").textContent = text; }

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    return `${response.status}: ${body.error.message}`;
  } catch {
    return `${response.status}: ${response.statusText}`;
  }
}

// Defaults come from the server; a 401 means the server wants an API key first.
async function connect() {
  showError("");
  let response;
  try {
    response = await fetch("/playground/defaults", { headers: headers() });
  } catch {
    setStatus("server unreachable");
    showError("Cannot reach the server.");
    return;
  }
  if (response.status === 401) {
    $("key-panel").hidden = false;
    $("submit").disabled = true;
    setStatus("needs an API key");
    if (apiKey) showError("The API key is wrong.");
    return;
  }
  if (!response.ok) {
    setStatus("not ready");
    showError(await errorMessage(response));
    if (response.status === 503) setTimeout(connect, 2000);
    return;
  }
  const defaults = await response.json();
  $("key-panel").hidden = true;
  model = defaults.model;
  $("model").textContent = model;
  $("max_tokens").max = String(Math.max(1, Math.min(2048, defaults.context_window - 1)));
  for (const name of SLIDERS) $(name).value = String(defaults[name]);
  if (!defaults.chat) {
    document.querySelector('input[value="completion"]').checked = true;
    document.querySelector('input[value="chat"]').disabled = true;
  }
  showSliderValues();
  showMode();
  setStatus("ready");
  $("submit").disabled = false;
}

function showSliderValues() {
  for (const name of SLIDERS) $(`${name}-value`).textContent = $(name).value;
}

function mode() { return document.querySelector('input[name="mode"]:checked').value; }

function showMode() { $("system-field").hidden = mode() !== "chat"; }

function request() {
  const probabilities = $("show-probabilities").checked;
  const body = {
    model,
    max_tokens: Number($("max_tokens").value),
    temperature: Number($("temperature").value),
    top_k: Number($("top_k").value),
    top_p: Number($("top_p").value),
    stream: true,
    stream_options: { include_usage: true },
  };
  const seed = $("seed").value.trim();
  if (seed !== "") body.seed = Number(seed);
  const stops = $("stop-strings").value.split("\n").filter((s) => s !== "");
  if (stops.length) body.stop = stops;
  if (mode() === "chat") {
    const system = $("system").value.trim();
    body.messages = [...(system ? [{ role: "system", content: system }] : []),
                     { role: "user", content: $("prompt").value }];
    body.logprobs = true; // the token count comes from them; alternatives only when shown
    body.top_logprobs = probabilities ? ALTERNATIVES : 0;
    return ["/v1/chat/completions", body];
  }
  body.prompt = $("prompt").value;
  body.logprobs = probabilities ? ALTERNATIVES : 0;
  return ["/v1/completions", body];
}

// Each chunk's token log-probabilities, in one shape for both endpoints.
function chunkTokens(choice) {
  const lp = choice.logprobs;
  if (!lp) return [];
  if (lp.content) {
    return lp.content.map((t) => ({ text: t.token, logprob: t.logprob,
                                   top: t.top_logprobs.map((a) => ({ token: a.token, logprob: a.logprob })) }));
  }
  return lp.tokens.map((text, i) => ({
    text, logprob: lp.token_logprobs[i],
    top: Object.entries(lp.top_logprobs[i] || {}).map(([token, logprob]) => ({ token, logprob })),
  }));
}

function visible(text) { return text.replace(/\n/g, "\u21b5").replace(/ /g, "\u00b7"); }

function showAlternatives(index) {
  const token = tokens[index];
  document.querySelectorAll("#output .token.chosen").forEach((el) => el.classList.remove("chosen"));
  document.querySelector(`#output .token[data-index="${index}"]`)?.classList.add("chosen");
  const rows = token.top.map((a) => {
    const p = Math.exp(a.logprob);
    const tr = document.createElement("tr");
    if (a.token === token.text) tr.className = "picked";
    tr.innerHTML = '<td class="text"></td><td class="p"></td><td class="bar"><div class="fill"></div></td>';
    tr.querySelector(".text").textContent = visible(a.token);
    tr.querySelector(".p").textContent = `${(100 * p).toFixed(1)}%`;
    tr.querySelector(".fill").style.width = `${(100 * p).toFixed(1)}%`;
    return tr;
  });
  const table = document.createElement("table");
  table.append(...rows);
  const title = document.createElement("p");
  title.textContent = `"${visible(token.text)}": ${(100 * Math.exp(token.logprob)).toFixed(1)}%, and the ` +
                      `${token.top.length} most likely tokens at that step`;
  $("alternatives").replaceChildren(title, table);
  $("alternatives").hidden = false;
}

// With probabilities shown, the answer is drawn token by token, shaded by each token's probability.
function addTokens(list) {
  for (const t of list) {
    tokens.push(t);
    if (!$("show-probabilities").checked) continue;
    const span = document.createElement("span");
    span.className = "token";
    span.dataset.index = String(tokens.length - 1);
    span.textContent = t.text.replace(/\n/g, "\u21b5\n"); // a new line shows as a mark one can click
    const p = Math.exp(t.logprob);
    span.style.background = `rgba(47, 95, 208, ${(0.08 + 0.5 * (1 - p)).toFixed(2)})`;
    span.title = `${(100 * p).toFixed(1)}%`;
    span.addEventListener("click", () => showAlternatives(Number(span.dataset.index)));
    $("output").append(span);
  }
}

async function submit() {
  const [path, body] = request();
  showError("");
  $("output").replaceChildren();
  $("alternatives").hidden = true;
  tokens = [];
  const controller = new AbortController();
  running = controller;
  $("submit").disabled = true;
  $("stop").disabled = false;
  setStatus("generating…");
  let first = null; // when the first token came: tokens/s counts the generation, not the wait before it
  const count = (n) => {
    $("token-count").textContent = String(n);
    if (n > 0 && first === null) first = performance.now();
    const seconds = first === null ? 0 : (performance.now() - first) / 1000;
    $("speed").textContent = (n > 1 && seconds > 0 ? (n - 1) / seconds : 0).toFixed(1);
  };
  count(0);
  try {
    const response = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body),
                                         signal: controller.signal });
    if (!response.ok) {
      showError(await errorMessage(response));
      setStatus(response.status === 401 ? "needs an API key" : "error");
      if (response.status === 401) $("key-panel").hidden = false;
      return;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let finish = null;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const events = buffer.split("\n\n");
      buffer = events.pop();
      for (const event of events) {
        const data = event.replace(/^data: /, "");
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) { showError(chunk.error.message); continue; }
        if (chunk.usage) count(chunk.usage.completion_tokens);
        for (const choice of chunk.choices) {
          const text = choice.text ?? choice.delta?.content ?? "";
          addTokens(chunkTokens(choice));
          if (!$("show-probabilities").checked) $("output").append(text);
          if (choice.finish_reason) finish = choice.finish_reason;
        }
        if (!chunk.usage) count(tokens.length);
      }
    }
    setStatus(finish === "length" ? "done (max new tokens reached)" : "done");
  } catch (err) {
    if (err.name === "AbortError") setStatus("stopped");
    else { showError(`The request failed: ${err.message}`); setStatus("error"); }
  } finally {
    running = null;
    $("submit").disabled = false;
    $("stop").disabled = true;
  }
}

function stop() { if (running) running.abort(); }

for (const name of SLIDERS) $(name).addEventListener("input", showSliderValues);
document.querySelectorAll('input[name="mode"]').forEach((el) => el.addEventListener("change", showMode));
$("submit").addEventListener("click", submit);
$("stop").addEventListener("click", stop);
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && !$("submit").disabled) submit();
});
$("key-panel").addEventListener("submit", (e) => {
  e.preventDefault();
  apiKey = $("api-key").value.trim();
  sessionStorage.setItem("lmlab-api-key", apiKey);
  connect();
});
showSliderValues();
connect();
