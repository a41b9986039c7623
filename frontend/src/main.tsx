import { render } from "preact";
import { App } from "./app";
import { readBoot } from "./ui";

const root = document.getElementById("app");
if (root) {
  try {
    render(<App boot={readBoot()} />, root);
  } catch (error) {
    root.textContent = `The portal could not start: ${(error as Error).message}`;
  }
}
