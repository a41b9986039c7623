import { describe, expect, it } from "vitest";
import type { components } from "./api/schema";
import { lisDetail } from "./components/lisStatus";

type LisDelivery = components["schemas"]["LisDelivery"];

const base: LisDelivery = {
  id: 1,
  report_version: 1,
  kind: "fhir",
  endpoint: "http://lis.example/fhir",
  status: "pending",
  attempts: 0,
  last_error: "",
  response_code: "",
  payload_hash: "ab",
  created_at: "2026-12-07T09:00:00Z",
  last_attempt_at: null,
  next_attempt_at: null,
  sent_at: null,
};

describe("lisDetail", () => {
  it("says a failed delivery's reason and its attempts", () => {
    const d = { ...base, status: "failed" as const, attempts: 3, last_error: "HTTP 422: unknown order" };
    expect(lisDetail(d)).toBe("HTTP 422: unknown order (3 attempts)");
  });
  it("says when a retrying delivery tries again and why it did not go", () => {
    const d = { ...base, status: "retrying" as const, attempts: 1, last_error: "cannot reach", next_attempt_at: "2026-12-07T09:01:00Z" };
    const text = lisDetail(d);
    expect(text.startsWith("1 attempt; next attempt ")).toBe(true);
    expect(text.endsWith("Last error: cannot reach")).toBe(true);
  });
  it("gives the receiver's answer for a sent delivery", () => {
    const d = { ...base, status: "sent" as const, attempts: 2, response_code: "AA", sent_at: "2026-12-07T09:02:00Z" };
    expect(lisDetail(d)).toMatch(/^accepted .+ \(AA\), 2 attempts$/);
  });
  it("says a pending delivery waits", () => {
    expect(lisDetail(base)).toBe("waiting to be sent");
  });
});
