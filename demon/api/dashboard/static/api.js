// The daemon's API as the page uses it: reads, writes with the operator's token,
// and the transition stream (Server-Sent Events read with fetch, so that the
// token can go in the Authorization header: EventSource cannot send one).

const TOKEN_KEY = "pytapdemon.token";

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

export const token = {
  get() { return sessionStorage.getItem(TOKEN_KEY) || ""; },
  set(value) { sessionStorage.setItem(TOKEN_KEY, value.trim()); },
  forget() { sessionStorage.removeItem(TOKEN_KEY); },
  headers() {
    const t = token.get();
    return t ? { Authorization: `Bearer ${t}` } : {};
  },
};

async function answer(resp) {
  let body = null;
  try {
    body = await resp.json();
  } catch (_) {
    body = null;
  }
  if (!resp.ok) {
    const message = (body && body.error) || `${resp.status} ${resp.statusText}`;
    throw new ApiError(resp.status, message, body);
  }
  return body;
}

export async function get(path) {
  const resp = await fetch(path, { headers: token.headers(), cache: "no-store" });
  return answer(resp);
}

// An operator action: never sent without a token (the API would refuse it anyway).
export async function post(path, body) {
  if (!token.get()) {
    throw new ApiError(401, "paste the API token first: actions need one");
  }
  const resp = await fetch(path, {
    method: "POST",
    headers: { ...token.headers(), "Content-Type": "application/json" },
    body: body === undefined ? "" : JSON.stringify(body),
  });
  return answer(resp);
}

// Follow /api/v1/transitions/stream from `after`, calling onTransition(record) for
// each one and onState("live" | "reconnecting" | "unauthorized") as the connection
// changes. Resumes from the last id seen after any break. Returns a stop function.
export function follow(after, onTransition, onState) {
  let last = after;
  let stopped = false;
  let controller = null;

  function dispatch(block) {
    let id = null;
    let event = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "id") id = value;
      else if (field === "event") event = value;
      else if (field === "data") data.push(value);
    }
    if (event !== "transition" || !data.length) return;
    const record = JSON.parse(data.join("\n"));
    if (id !== null) last = Math.max(last, Number(id));
    onTransition(record);
  }

  async function run() {
    while (!stopped) {
      controller = new AbortController();
      try {
        const resp = await fetch(`/api/v1/transitions/stream?after=${last}`, {
          headers: { ...token.headers(), Accept: "text/event-stream" },
          cache: "no-store",
          signal: controller.signal,
        });
        if (resp.status === 401) {
          onState("unauthorized");
          await answer(resp).catch(() => null);
          await sleep(3000);
          continue;
        }
        if (!resp.ok || !resp.body) throw new Error(`stream: ${resp.status}`);
        onState("live");
        const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value.replace(/\r\n?/g, "\n");
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            dispatch(block);
          }
        }
      } catch (err) {
        if (stopped) return;
      }
      if (stopped) return;
      onState("reconnecting");
      await sleep(2000);
    }
  }

  run();
  return () => {
    stopped = true;
    if (controller) controller.abort();
  };
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
