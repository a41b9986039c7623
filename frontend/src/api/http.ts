// The transport under the typed client (./index.ts): calls with the browser session, the
// CSRF header on writes, and every error turned into an ApiError whose message a person
// can read (the API's own {"error": {"code", "message", "fields"}} when there is one).
// It takes URLs as strings; screens never call it directly, they use ./index.ts, whose
// URLs come from the schema's paths.

export class ApiError extends Error {
  /** the call that failed, as requestKey() names it (set by request()) */
  request?: string;

  constructor(
    message: string,
    readonly status: number,
    readonly code: string,
    readonly fields: Record<string, string> = {},
  ) {
    super(message);
  }
}

/** One name per call: the method and the URL's path (its query left out), e.g.
 * "PATCH /api/routing-config/". A later success of the same call makes an error shown
 * for it out of date (../ui.tsx). */
export function requestKey(method: string, url: string): string {
  return `${method.toUpperCase()} ${url.split("?")[0].replace(/^https?:\/\/[^/]+/, "")}`;
}

/** Told the requestKey of every call that succeeded. */
export const requestSucceeded = new Set<(key: string) => void>();

/** The requestKey an error carries, when it came from request(). */
export function failedRequest(error: unknown): string | undefined {
  const key = (error as { request?: unknown } | null)?.request;
  return typeof key === "string" ? key : undefined;
}

export function csrfToken(): string {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

/** The readable message of an API error body, or a sentence about the HTTP status. */
export function errorFromBody(status: number, body: unknown, statusText = ""): ApiError {
  const err = (body as { error?: { code?: string; message?: string; fields?: Record<string, string> } })?.error;
  if (err && typeof err.message === "string") {
    return new ApiError(err.message, status, err.code ?? "error", err.fields ?? {});
  }
  const generic: Record<number, string> = {
    401: "You are signed out. Sign in again.",
    403: "Your role may not do this.",
    404: "Not found.",
    413: "The upload is too large for the server.",
    502: "The server is not reachable (bad gateway). Try again in a moment.",
    503: "The server is busy or restarting. Try again in a moment.",
    504: "The server took too long to answer. Try again.",
  };
  const text = generic[status] ?? `The server answered ${status} ${statusText}`.trim() + ".";
  return new ApiError(text, status, `http_${status}`);
}

export function describeError(error: unknown): string {
  if (error instanceof ApiError) {
    const fields = Object.entries(error.fields);
    if (fields.length && !fields.every(([k, v]) => error.message.includes(`${k}: ${v}`))) {
      return `${error.message} (${fields.map(([k, v]) => `${k}: ${v}`).join("; ")})`;
    }
    return error.message;
  }
  if (error instanceof TypeError) return `The server could not be reached: ${error.message}. Check the connection and try again.`;
  if (error instanceof Error) return error.message;
  return String(error);
}

export type Method = "GET" | "POST" | "PATCH" | "PUT" | "DELETE";

export async function request<T>(
  method: Method,
  url: string,
  body?: unknown,
  init: RequestInit = {},
): Promise<T> {
  const headers: Record<string, string> = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRFToken"] = csrfToken();
  let payload: BodyInit | undefined;
  if (body instanceof FormData) payload = body;
  else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const key = requestKey(method, url);
  let response: Response;
  try {
    response = await fetch(url, {
      method,
      headers,
      body: payload,
      credentials: "same-origin",
      ...init,
    });
  } catch (error) {
    if (error instanceof Error) Object.assign(error, { request: key });
    throw error;
  }
  const type = response.headers.get("Content-Type") ?? "";
  const data: unknown =
    response.status !== 204 && type.includes("json") ? await response.json().catch(() => null) : null;
  if (!response.ok) {
    if (response.status === 401 || (response.status === 403 && isSignedOut(data))) {
      window.dispatchEvent(new CustomEvent("wbc:signed-out"));
    }
    const error = errorFromBody(response.status, data, response.statusText);
    error.request = key;
    throw error;
  }
  for (const listener of requestSucceeded) listener(key);
  return (response.status === 204 ? undefined : data) as T;
}

function isSignedOut(data: unknown): boolean {
  const code = (data as { error?: { code?: string } })?.error?.code;
  return code === "not_authenticated";
}

/** `?a=1&b=2`, leaving out parameters that are unset or empty. */
export function query(params: Record<string, string | number | boolean | undefined | null>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  const s = q.toString();
  return s ? `?${s}` : "";
}

export interface UploadProgress {
  loaded: number;
  total: number;
}

/** Multipart upload with progress (fetch cannot report upload progress). */
export function upload<T>(url: string, form: FormData, onProgress: (p: UploadProgress) => void): Promise<T> {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", url);
    xhr.setRequestHeader("X-CSRFToken", csrfToken());
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.onprogress = (e) => onProgress({ loaded: e.loaded, total: e.lengthComputable ? e.total : 0 });
    xhr.onload = () => {
      let data: unknown = null;
      try {
        data = JSON.parse(xhr.responseText);
      } catch {
        data = null;
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve(data as T);
      else reject(errorFromBody(xhr.status, data, xhr.statusText));
    };
    xhr.onerror = () => reject(new TypeError("the upload was interrupted"));
    xhr.send(form);
  });
}
