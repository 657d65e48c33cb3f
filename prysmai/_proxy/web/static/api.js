// JSON from the dashboard's own endpoints (same origin; the session cookie goes along).

export class ApiError extends Error {}

export async function getJSON(path, params) {
  const query = params ? new URLSearchParams(params).toString() : "";
  const response = await fetch("/ui/api/" + path + (query ? "?" + query : ""), {
    credentials: "same-origin",
    headers: { accept: "application/json" },
  });
  if (response.status === 401) {
    location.assign("/login?next=" + encodeURIComponent(location.pathname + location.search));
    throw new ApiError("logged out");
  }
  const doc = await response.json();
  if (!response.ok) throw new ApiError((doc.error && doc.error.message) || "HTTP " + response.status);
  return doc;
}

/** A write of the dashboard (a score): same origin, JSON. The browser adds Origin and
 * Sec-Fetch-Site, which the server checks; the session cookie is SameSite=Strict. */
export async function sendJSON(method, path, body) {
  const response = await fetch("/ui/api/" + path, {
    method,
    credentials: "same-origin",
    headers: { accept: "application/json", "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) {
    location.assign("/login?next=" + encodeURIComponent(location.pathname + location.search));
    throw new ApiError("logged out");
  }
  const doc = await response.json();
  if (!response.ok) throw new ApiError((doc.error && doc.error.message) || "HTTP " + response.status);
  return doc;
}
