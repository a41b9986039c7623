// The one typed client of the REST API. Every URL is a key of the schema's `paths`
// (./schema.d.ts, generated from the server's OpenAPI schema by `npm run gen:api`), with
// its `{name}` parameters, query and JSON body checked against that operation; a path the
// server does not have, or a method it does not allow there, is a type error. Responses are
// the schema's, or the narrower types of `Responses` below where the schema is loose.
// The transport (CSRF header, error messages, upload progress) is ./http.ts.
import type {
  AdjudicationItem,
  AgreementSummary,
  CaseListItem,
  CaseDetail,
  Cell,
  CellDetail,
  ModelVersion,
  ModelVersionComparison,
  ModelVersionDetail,
  Page,
  ReviewItem,
  RoutingConfig,
  TrainingJob,
  TrainingJobDetail,
  UploadSummary,
} from "../types";
import { query, request, upload, type UploadProgress } from "./http";
import type { paths } from "./schema";

export { ApiError, csrfToken, describeError, errorFromBody, type UploadProgress } from "./http";

export type ApiPath = keyof paths;
type HttpMethod = "get" | "post" | "put" | "patch" | "delete";

/** The paths with an operation for `M`. */
export type PathWith<M extends HttpMethod> = { [P in ApiPath]: paths[P][M] extends undefined ? never : P }[ApiPath];

type Operation<P extends ApiPath, M extends HttpMethod> = NonNullable<paths[P][M]>;

/** The `{name}` parameters of a path template: "/api/cells/{cell_id}/" -> "cell_id". */
type ParamNames<S> = S extends `${string}{${infer N}}${infer Rest}` ? N | ParamNames<Rest> : never;

type Json<R> = R extends { content: { "application/json": infer T } } ? T : never;
type SchemaResponse<P extends ApiPath, M extends HttpMethod> =
  Operation<P, M> extends { responses: infer R }
    ? R extends Record<number, unknown>
      ? Json<R[200 & keyof R]> | Json<R[201 & keyof R]> | Json<R[202 & keyof R]> | (204 extends keyof R ? undefined : never)
      : never
    : never;

/**
 * Responses the schema types loosely (a dict without keys, `unknown` JSON columns, a nested
 * serializer typed as a dict), with the types the server actually sends (../types.ts).
 * `_NarrowsTheSchema` below checks that each is assignable to the schema's own type, so an
 * entry can narrow the schema but never contradict it.
 */
interface Responses {
  "/api/adjudication/": { get: AdjudicationItem[] };
  "/api/agreement/": { get: AgreementSummary };
  "/api/cases/": { get: Page<CaseListItem> };
  "/api/cases/{case_id}/": { get: CaseDetail };
  "/api/cells/": { get: Page<Cell> };
  "/api/cells/{cell_id}/": { get: CellDetail };
  "/api/cells/upload/": { post: UploadSummary };
  "/api/model-versions/": { get: Page<ModelVersion> };
  "/api/model-versions/{version_id}/": { get: ModelVersionDetail };
  "/api/model-versions/compare/": { get: ModelVersionComparison };
  "/api/queue/items/{item_id}/flag/": { post: ReviewItem };
  "/api/routing-config/": { get: RoutingConfig; patch: RoutingConfig };
  "/api/training-jobs/": { get: Page<TrainingJob>; post: TrainingJobDetail };
  "/api/training-jobs/{job_id}/": { get: TrainingJobDetail };
}

type Narrows<P, M> = P extends keyof Responses & ApiPath
  ? M extends keyof Responses[P] & HttpMethod
    ? Responses[P][M] extends SchemaResponse<P, M>
      ? true
      : { error: "Responses narrows nothing the schema says here"; path: P; method: M }
    : true
  : true;
type AllTrue<T> = T extends true ? true : T;
/** A compile error names the entry of `Responses` that contradicts the schema. */
type _NarrowsTheSchema<T extends true = AllTrue<{ [P in keyof Responses]: Narrows<P, keyof Responses[P]> }[keyof Responses]>> = T;
export type { _NarrowsTheSchema };

export type ResponseOf<P extends ApiPath, M extends HttpMethod> = P extends keyof Responses
  ? M extends keyof Responses[P]
    ? Responses[P][M]
    : SchemaResponse<P, M>
  : SchemaResponse<P, M>;

type Pagination = { limit?: number; offset?: number };
type QueryOf<P extends ApiPath, M extends HttpMethod> =
  Operation<P, M> extends { parameters: { query?: infer Q } } ? Exclude<Q, undefined> : never;
type QueryPart<P extends ApiPath, M extends HttpMethod> = [QueryOf<P, M>] extends [never]
  ? ResponseOf<P, M> extends Page<unknown>
    ? { query?: Pagination }
    : { query?: undefined }
  : Operation<P, M> extends { parameters: { query: object } }
    ? { query: QueryOf<P, M> }
    : { query?: QueryOf<P, M> & (ResponseOf<P, M> extends Page<unknown> ? Pagination : unknown) };

type PathPart<P extends ApiPath> = [ParamNames<P>] extends [never]
  ? { path?: undefined }
  : { path: Record<ParamNames<P>, number | string> };

type BodyOf<P extends ApiPath, M extends HttpMethod> = Operation<P, M> extends { requestBody?: infer B } ? Json<B> : never;
type BodyPart<P extends ApiPath, M extends HttpMethod> = [BodyOf<P, M>] extends [never]
  ? { body?: undefined }
  : Operation<P, M> extends { requestBody: object }
    ? { body: BodyOf<P, M> }
    : { body?: BodyOf<P, M> };

export type Options<P extends ApiPath, M extends HttpMethod> = PathPart<P> & QueryPart<P, M> & BodyPart<P, M>;

/** The options argument, which may be left out when nothing in it is required. */
type OptionsArg<P extends ApiPath, M extends HttpMethod> = {} extends Options<P, M> ? [options?: Options<P, M>] : [options: Options<P, M>];

/** The URL of a path with its parameters filled in, e.g. for a `fetch` the client cannot make. */
export function apiUrl<P extends ApiPath>(
  path: P,
  params?: Record<string, number | string>,
  search?: Record<string, string | number | boolean | undefined | null>,
): string {
  const filled = path.replace(/\{(\w+)\}/g, (_, name: string) => {
    const value = params?.[name];
    if (value === undefined) throw new Error(`${path} needs the parameter ${name}`);
    return encodeURIComponent(String(value));
  });
  return filled + (search ? query(search) : "");
}

function call<P extends ApiPath, M extends HttpMethod>(method: M, path: P, options: Options<P, M> | undefined, init?: RequestInit): Promise<ResponseOf<P, M>> {
  const o = (options ?? {}) as { path?: Record<string, number | string>; query?: Record<string, string | number | boolean | undefined | null>; body?: unknown };
  const verb = method.toUpperCase() as "GET" | "POST" | "PUT" | "PATCH" | "DELETE";
  return request<ResponseOf<P, M>>(verb, apiUrl(path, o.path, o.query), o.body, init);
}

type PathWithoutParams = { [P in ApiPath]: [ParamNames<P>] extends [never] ? P : never }[ApiPath];
type ItemOf<R> = R extends Page<infer T> ? T : never;
type PagedPath = { [P in PathWith<"get">]: ResponseOf<P, "get"> extends Page<unknown> ? P : never }[PathWith<"get">];

export const api = {
  get: <P extends PathWith<"get">>(path: P, ...[options]: OptionsArg<P, "get">) => call("get", path, options),
  post: <P extends PathWith<"post">>(path: P, ...[options]: OptionsArg<P, "post">) => call("post", path, options),
  put: <P extends PathWith<"put">>(path: P, ...[options]: OptionsArg<P, "put">) => call("put", path, options),
  patch: <P extends PathWith<"patch">>(path: P, ...[options]: OptionsArg<P, "patch">) => call("patch", path, options),
  delete: <P extends PathWith<"delete">>(path: P, ...[options]: OptionsArg<P, "delete">) => call("delete", path, options),
  /** A POST that outlives the page (`fetch` keepalive): for what a screen sends as it is
   * left, e.g. giving back its leases. Unlike `navigator.sendBeacon` it carries the
   * CSRF header and its answer can be read (and the call retried) when the page stays. */
  postKeepalive: <P extends PathWith<"post">>(path: P, ...[options]: OptionsArg<P, "post">) => call("post", path, options, { keepalive: true }),

  /** Every page of a paginated list (the server's `next` links), `limit` items a request. */
  async getAll<P extends PagedPath>(path: P, ...[options]: OptionsArg<P, "get">): Promise<ItemOf<ResponseOf<P, "get">>[]> {
    const o = (options ?? {}) as { path?: Record<string, number | string>; query?: Record<string, string | number | undefined | null> };
    const out: ItemOf<ResponseOf<P, "get">>[] = [];
    let next: string | null = apiUrl(path, o.path, { ...o.query, limit: o.query?.limit ?? 500 });
    while (next) {
      const page: Page<ItemOf<ResponseOf<P, "get">>> = await request("GET", next);
      out.push(...page.results);
      next = page.next;
    }
    return out;
  },

  /** A multipart POST with upload progress (fetch cannot report it). */
  upload: <P extends PathWith<"post"> & PathWithoutParams>(path: P, form: FormData, onProgress: (p: UploadProgress) => void) =>
    upload<ResponseOf<P, "post">>(apiUrl(path), form, onProgress),
};
