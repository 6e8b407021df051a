// Bundles the CLI bins with esbuild (startup time: one file, minified, no module graph to walk).
// Sources of the workspace packages are bundled directly, so this needs no prior `tsc -b`;
// typechecking is `tsc -b` on the package's tsconfig.
import * as esbuild from "esbuild"
import { chmod, readdir } from "node:fs/promises"
import * as path from "node:path"
import { fileURLToPath } from "node:url"

const here = path.dirname(fileURLToPath(import.meta.url))
const packages = path.join(here, "..")
const outdir = path.join(here, "dist", "bin")

/** `@natpmp-bridge/core`, `@natpmp-bridge/server` and their `/testing` entries -> TypeScript sources. */
const workspaceSources = {
  name: "workspace-sources",
  setup(build) {
    build.onResolve({ filter: /^@natpmp-bridge\/(core|server)(\/testing)?$/ }, (args) => {
      const [, pkg, testing] = /^@natpmp-bridge\/(core|server)(\/testing)?$/.exec(args.path)
      return { path: path.join(packages, pkg, "src", testing ? "testing/index.ts" : "index.ts") }
    })
  }
}

const entryPoints = (await readdir(path.join(here, "src", "bin")))
  .filter((file) => file.endsWith(".ts"))
  .map((file) => path.join(here, "src", "bin", file))

const result = await esbuild.build({
  entryPoints,
  outdir,
  bundle: true,
  platform: "node",
  format: "esm",
  target: "node20",
  minify: true,
  legalComments: "none",
  banner: { js: "import{createRequire as __cr}from'module';const require=__cr(import.meta.url);" },
  plugins: [workspaceSources],
  logLevel: "warning",
  metafile: process.env.NATPMP_CLI_METAFILE !== undefined
})

if (result.metafile) {
  const { writeFile } = await import("node:fs/promises")
  await writeFile(process.env.NATPMP_CLI_METAFILE, JSON.stringify(result.metafile))
}

for (const entry of entryPoints) {
  await chmod(path.join(outdir, path.basename(entry, ".ts") + ".js"), 0o755)
}
