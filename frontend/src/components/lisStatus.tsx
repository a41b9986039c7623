// Where the case's signed reports went: one row per report version and LIS receiver
// (FHIR over HTTP, HL7 v2 over MLLP), from GET /api/cases/{id}/lis-deliveries/, with the
// status (sent, failed with the reason, retrying with its attempts and when the next one
// is due) and, for admins, "Send again" on a failed delivery. docs/lis.md.
import { useEffect } from "preact/hooks";
import { api } from "../api";
import type { components } from "../api/schema";
import type { Boot } from "../types";
import { roles, showError, showInfo, useLoad } from "../ui";

type LisDelivery = components["schemas"]["LisDelivery"];

const POLL_MS = 4000;
const RECEIVER: Record<LisDelivery["kind"], string> = { fhir: "FHIR", hl7: "HL7 v2" };
const when = (iso: string | null | undefined) => (iso ? new Date(iso).toLocaleString() : "");

/** The words after the status: what happened, or what happens next. */
export function lisDetail(d: LisDelivery): string {
  const tries = `${d.attempts} attempt${d.attempts === 1 ? "" : "s"}`;
  switch (d.status) {
    case "sent":
      return `accepted ${when(d.sent_at)}${d.response_code ? ` (${d.response_code})` : ""}, ${tries}`;
    case "failed":
      return `${d.last_error || "failed"} (${tries})`;
    case "retrying":
      return `${tries}; next attempt ${when(d.next_attempt_at)}. Last error: ${d.last_error}`;
    default:
      return "waiting to be sent";
  }
}

export function LisStatusPanel({ boot, caseId, refreshKey }: { boot: Boot; caseId: number; refreshKey: unknown }) {
  const [state, reload] = useLoad(
    () => api.get("/api/cases/{case_id}/lis-deliveries/", { path: { case_id: caseId } }),
    [caseId, refreshKey],
    "reading the LIS delivery status",
  );
  const open = state?.deliveries.some((d) => d.status === "pending" || d.status === "retrying") ?? false;
  useEffect(() => {
    if (!open) return;
    const timer = window.setInterval(reload, POLL_MS);
    return () => window.clearInterval(timer);
  }, [open]);

  if (!state || (!state.enabled && state.deliveries.length === 0)) {
    return state ? (
      <section class="lis-status" data-testid="lis-status">
        <h3>LIS delivery</h3>
        <p class="muted">No laboratory information system is configured; signed reports stay in the portal.</p>
      </section>
    ) : null;
  }
  const resend = async (d: LisDelivery) => {
    try {
      await api.post("/api/lis-deliveries/{delivery_id}/retry/", { path: { delivery_id: d.id } });
      showInfo(`Report v${d.report_version} is being sent to the ${RECEIVER[d.kind]} receiver again.`, "re-sending to the LIS");
      reload();
    } catch (e) {
      showError(e, "re-sending to the LIS");
    }
  };
  return (
    <section class="lis-status" aria-labelledby="lis-title" data-testid="lis-status">
      <h3 id="lis-title">LIS delivery</h3>
      {state.deliveries.length === 0 ? (
        <p class="muted">Sent to the LIS ({state.receivers.map((k) => RECEIVER[k]).join(", ")}) when the case is signed.</p>
      ) : (
        <table class="data compact">
          <thead>
            <tr>
              <th>Report</th>
              <th>Receiver</th>
              <th>Status</th>
              <th>Detail</th>
              {roles.isAdmin(boot) && <th />}
            </tr>
          </thead>
          <tbody>
            {state.deliveries.map((d) => (
              <tr key={d.id} data-testid={`lis-delivery-${d.report_version}-${d.kind}`} data-status={d.status}>
                <td>v{d.report_version}</td>
                <td title={d.endpoint}>{RECEIVER[d.kind]}</td>
                <td>
                  <span class={`status lis-${d.status}${d.status === "sent" ? " status-succeeded" : d.status === "failed" ? " status-failed" : ""}`}>{d.status}</span>
                </td>
                <td class="lis-detail">{lisDetail(d)}</td>
                {roles.isAdmin(boot) && (
                  <td>
                    {d.status === "failed" && (
                      <button type="button" onClick={() => void resend(d)} data-testid={`lis-resend-${d.id}`}>
                        Send again
                      </button>
                    )}
                  </td>
                )}
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
