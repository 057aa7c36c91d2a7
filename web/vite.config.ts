import { defineConfig } from "vite";

// Relative asset paths: the relay serves the built page from its own root (--web-dir).
export default defineConfig({ base: "./", build: { outDir: "dist", sourcemap: true } });
