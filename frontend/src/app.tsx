// The shell: header with the screens this role may use, the message area, the router
// (hash routes, so Django serves one page) and the websocket shared by every screen.
import { useEffect, useMemo, useState } from "preact/hooks";
import { csrfToken } from "./api";
import { Events, eventsUrl, type ConnectionState } from "./events";
import type { Boot } from "./types";
import { ConfirmDialog, Messages, landingScreen, roles, showError } from "./ui";
import { LabelScreen } from "./views/label";
import { CaseList, CaseReview } from "./views/cases";
import { AdminConsole } from "./views/admin";
import { AdjudicateScreen } from "./views/adjudicate";
import { ExportPanel } from "./views/exports";

export interface Route {
  screen: "label" | "cases" | "case" | "admin" | "adjudicate" | "exports" | "home";
  id?: number;
  tab?: string;
}

export function parseRoute(hash: string): Route {
  const parts = hash.replace(/^#\/?/, "").split("/").filter(Boolean);
  // #/label/case/7: the labelling screen on case 7's open cells only
  if (parts[0] === "label") return parts[1] === "case" && parts[2] ? { screen: "label", id: Number(parts[2]) } : { screen: "label" };
  if (parts[0] === "adjudicate") return { screen: "adjudicate" };
  if (parts[0] === "exports") return { screen: "exports" };
  if (parts[0] === "cases" && parts[1]) return { screen: "case", id: Number(parts[1]) };
  if (parts[0] === "cases") return { screen: "cases" };
  if (parts[0] === "admin") return { screen: "admin", tab: parts[1] ?? "models" };
  return { screen: "home" };
}

function useRoute(): Route {
  const [hash, setHash] = useState(location.hash);
  useEffect(() => {
    const on = () => setHash(location.hash);
    window.addEventListener("hashchange", on);
    return () => window.removeEventListener("hashchange", on);
  }, []);
  return parseRoute(hash);
}

export function App({ boot }: { boot: Boot }) {
  const events = useMemo(() => new Events(eventsUrl(boot.urls.events)), []);
  const [conn, setConn] = useState<ConnectionState>("connecting");
  useEffect(() => {
    const off = events.onState(setConn);
    events.connect();
    const signedOut = () => showError("Your session has ended. Sign in again to go on.");
    window.addEventListener("wbc:signed-out", signedOut);
    return () => {
      off();
      events.close();
      window.removeEventListener("wbc:signed-out", signedOut);
    };
  }, []);
  let route = useRoute();
  if (route.screen === "home") route = { screen: landingScreen(boot) };
  // Bumped by every click on a header link, the current screen's too: a screen that owns
  // the keyboard (labelling) takes the focus back from the link (views/label.tsx).
  const [opened, setOpened] = useState(0);
  useEffect(() => {
    const titles: Record<string, string> = { label: "Label cells", cases: "Cases", case: "Case review", admin: "Admin console", adjudicate: "Adjudicate", exports: "Export" };
    document.title = `${titles[route.screen] ?? ""} · WBC portal`;
  }, [route.screen]);

  const nav = [
    roles.canLabel(boot) && { href: "#/label", text: "Label cells", active: route.screen === "label" },
    roles.canAdjudicate(boot) && { href: "#/adjudicate", text: "Adjudicate", active: route.screen === "adjudicate" },
    { href: "#/cases", text: "Cases", active: route.screen === "cases" || route.screen === "case" },
    roles.canExport(boot) && { href: "#/exports", text: "Export", active: route.screen === "exports" },
    roles.isAdmin(boot) && { href: "#/admin/models", text: "Admin console", active: route.screen === "admin" },
  ].filter(Boolean) as { href: string; text: string; active: boolean }[];

  return (
    <>
      <a class="skip-link" href="#main">Skip to the content</a>
      <header class="top">
        <span class="brand">WBC portal</span>
        <nav aria-label="Screens">
          {nav.map((n) => (
            <a href={n.href} aria-current={n.active ? "page" : undefined} key={n.href} onClick={() => setOpened((o) => o + 1)}>
              {n.text}
            </a>
          ))}
        </nav>
        <span class="who">
          <span data-testid="user">{boot.user.username}</span>{" "}
          <span class="role">({boot.user.roles.join(", ") || "no role"})</span>
          <span class={`conn conn-${conn}`} title="Live updates" role="status">
            {conn === "open" ? "● live" : conn === "connecting" ? "○ connecting" : "○ offline, retrying"}
          </span>
          <form method="post" action={boot.urls.logout} class="inline">
            <input type="hidden" name="csrfmiddlewaretoken" value={csrfToken()} />
            <button type="submit">Sign out</button>
          </form>
        </span>
      </header>
      <Messages />
      <main id="main" tabIndex={-1}>
        {route.screen === "label" &&
          (roles.canLabel(boot) ? (
            <LabelScreen boot={boot} events={events} opened={opened} caseId={route.id} key={route.id ?? "all"} />
          ) : (
            <Refused boot={boot} what="Labelling" />
          ))}
        {route.screen === "adjudicate" &&
          (roles.canAdjudicate(boot) ? (
            <AdjudicateScreen boot={boot} events={events} />
          ) : (
            <Refused boot={boot} what="Adjudication" />
          ))}
        {route.screen === "exports" &&
          (roles.canExport(boot) ? <ExportPanel boot={boot} /> : <Refused boot={boot} what="Exporting the dataset" />)}
        {route.screen === "cases" && <CaseList boot={boot} />}
        {route.screen === "case" && <CaseReview boot={boot} caseId={route.id!} events={events} />}
        {route.screen === "admin" &&
          (roles.isAdmin(boot) ? (
            <AdminConsole boot={boot} events={events} tab={route.tab ?? "models"} />
          ) : (
            <Refused boot={boot} what="The admin console" />
          ))}
      </main>
      <ConfirmDialog />
    </>
  );
}

function Refused({ boot, what }: { boot: Boot; what: string }) {
  return (
    <section class="refused" data-testid="refused">
      <h1>Not available to your role</h1>
      <p>
        {what} is not open to {boot.user.roles.join(", ") || "users without a role"}. Ask an admin if you need
        it.
      </p>
      <p>
        <a href="#/cases">Go to the cases</a>
      </p>
    </section>
  );
}
