// Builds the CLI bins for a fast start (`natpmp map` should cost little more than `node -e 0`):
//
// - esbuild bundles each src/bin/<name>.ts with the workspace packages' TypeScript sources (no prior
//   `tsc -b` needed; typechecking is `tsc -b` on the package's tsconfig) into one minified file,
//   dist/bin/<name>.cjs. CommonJS, because only a classic script can use a V8 code cache on Node 20.
// - dist/bin/<name>.js, the executable (shebang), compiles that bundle with the V8 code cache
//   dist/bin/<name>.cjs.cache, so V8 neither parses nor compiles the bundle again at each start.
//   The cache is written here by a warm-up run of each bin; when V8 rejects it (another Node
//   version), the bin still runs and rewrites the cache on exit, if it may.
// - Modules only some runs need are evaluated on first use: the default-gateway package (only for
//   auto-detection) and the Node terminal (only for --wizard, see CliMain.ts).
import * as esbuild from "esbuild"
import { execFileSync } from "node:child_process"
import { createSocket } from "node:dgram"
import { chmod, mkdir, readdir, rename, rm, writeFile } from "node:fs/promises"
import * as path from "node:path"
import { fileURLToPath } from "node:url"

const here = path.dirname(fileURLToPath(import.meta.url))
const packages = path.join(here, "..")
const bindir = path.join(here, "dist", "bin")
// Built aside, then moved into dist/bin file by file (rename is atomic): bins that run while another build is going
// on (tests, the demo) always find complete files.
const outdir = path.join(here, "dist", `.bin-${process.pid}`)

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

/** default-gateway (and execa under it) evaluated only when a gateway is auto-detected. */
const lazyDefaultGateway = {
  name: "lazy-default-gateway",
  setup(build) {
    build.onResolve(
      { filter: /^default-gateway$/ },
      (args) => args.namespace === "lazy" ? undefined : { path: "default-gateway", namespace: "lazy" }
    )
    build.onLoad({ filter: /.*/, namespace: "lazy" }, () => ({
      contents: [
        "export const gateway4async = (...args) => import(\"default-gateway\").then((m) => m.gateway4async(...args))",
        "export const gateway6async = (...args) => import(\"default-gateway\").then((m) => m.gateway6async(...args))"
      ].join("\n"),
      resolveDir: path.join(packages, "core"),
      loader: "js"
    }))
  }
}

/** The executable: compiles the bundle with the code cache and runs it as a CommonJS module. */
const loader = (name) =>
  `#!/usr/bin/env node
// ${name}: runs ./${name}.cjs (the esbuild bundle) with the V8 code cache ./${name}.cjs.cache (see packages/cli/build.mjs)
import{readFileSync as r,writeFileSync as w,renameSync as n}from"node:fs";import{createRequire as q}from"node:module";import{Script as S}from"node:vm";import{fileURLToPath as u}from"node:url";
const f=u(new URL("./${name}.cjs",import.meta.url)),c=f+".cache";let d;try{d=r(c)}catch{}
const s=new S("(function(exports,require,module,__filename,__dirname){"+r(f,"utf8")+"\\n})",{filename:f,cachedData:d});
if(d===undefined||s.cachedDataRejected||process.env.NATPMP_CLI_WRITE_CODE_CACHE==="1")process.once("exit",()=>{try{const t=c+"."+process.pid;w(t,s.createCachedData());n(t,c)}catch{}});
const m={exports:{}};s.runInThisContext()(m.exports,q(f),m,f,u(new URL(".",import.meta.url)));
`

const names = (await readdir(path.join(here, "src", "bin")))
  .filter((file) => file.endsWith(".ts"))
  .map((file) => path.basename(file, ".ts"))

await rm(outdir, { recursive: true, force: true })
await mkdir(bindir, { recursive: true })
const result = await esbuild.build({
  entryPoints: names.map((name) => path.join(here, "src", "bin", `${name}.ts`)),
  outdir,
  outExtension: { ".js": ".cjs" },
  bundle: true,
  platform: "node",
  format: "cjs",
  target: "node20",
  minify: true,
  legalComments: "none",
  plugins: [workspaceSources, lazyDefaultGateway],
  logLevel: "warning",
  metafile: process.env.NATPMP_CLI_METAFILE !== undefined
})
if (result.metafile) await writeFile(process.env.NATPMP_CLI_METAFILE, JSON.stringify(result.metafile))

for (const name of names) {
  const bin = path.join(outdir, `${name}.js`)
  await writeFile(bin, loader(name))
  await chmod(bin, 0o755)
}

/** A loopback UDP port nothing listens on: the warm-up's client gets an immediate ICMP "unreachable". */
const closedPort = await new Promise((resolve) => {
  const socket = createSocket("udp4")
  socket.bind(0, "127.0.0.1", () => {
    const { port } = socket.address()
    socket.close(() => resolve(port))
  })
})

/** Runs that exercise the common paths, so the code cache holds their compiled functions too. */
const warmUps = {
  natpmp: [
    ["--help"],
    ["map", "--help"],
    ["map", "-g", "127.0.0.1", "--port", String(closedPort), "--timeout", "100", "--retries", "0", "1", "1"],
    ["address", "--json", "-g", "127.0.0.1", "--port", String(closedPort), "--timeout", "100", "--retries", "0"]
  ]
}

for (const name of names) {
  for (const args of warmUps[name] ?? [["--help"]]) {
    try {
      execFileSync(process.execPath, [path.join(outdir, `${name}.js`), ...args], {
        stdio: "ignore",
        timeout: 10_000,
        env: { ...process.env, NATPMP_CLI_WRITE_CODE_CACHE: "1" }
      })
    } catch {
      // warm-up runs may exit non-zero (the closed port); only the cache they leave matters
    }
  }
}

for (const name of names) {
  for (const file of [`${name}.cjs`, `${name}.cjs.cache`, `${name}.js`]) {
    await rename(path.join(outdir, file), path.join(bindir, file)).catch((error) => {
      // no cache when the warm-up could not run: the first run of the bin writes it
      if (!(file.endsWith(".cache") && error.code === "ENOENT")) throw error
    })
  }
}
await rm(outdir, { recursive: true, force: true })
