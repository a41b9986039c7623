// Builds src/main.tsx into static/app/app.js, which Django serves with WhiteNoise
// ({% static 'app/app.js' %} in index.html). Fixed names, no hashes: the template
// references them directly and WhiteNoise adds cache-busting after collectstatic.
import { defineConfig } from "vitest/config";

export default defineConfig({
  esbuild: { jsx: "automatic", jsxImportSource: "preact" },
  publicDir: false,
  build: {
    outDir: "static/app",
    emptyOutDir: true,
    target: "es2020",
    sourcemap: true,
    rollupOptions: {
      input: "src/main.tsx",
      output: {
        entryFileNames: "app.js",
        chunkFileNames: "[name].js",
        assetFileNames: "app.[ext]",
      },
    },
  },
  test: {
    include: ["src/**/*.test.ts"],
    environment: "node",
  },
});
