import { defineConfig } from "vite";

// The bundle is embedded in the tern binary and served at / by the admin listener, so it must
// be self-contained: no CDN, no external fonts, relative asset paths under /assets/.
export default defineConfig({
  esbuild: { jsx: "automatic", jsxImportSource: "preact" },
  build: {
    outDir: "dist",
    emptyOutDir: true,
    assetsInlineLimit: 0,
    sourcemap: false,
    target: "es2022",
    reportCompressedSize: true,
  },
  server: {
    // `npm run dev`: proxy the API to a local tern (admin.addr default).
    proxy: Object.fromEntries(["/api", "/healthz", "/readyz", "/metrics"].map((p) => [p, "http://127.0.0.1:8080"])),
  },
});
