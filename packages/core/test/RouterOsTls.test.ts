import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { RouterOsClient, RouterOsCommands } from "@natpmp-bridge/core"
import { RouterOsSimulator } from "@natpmp-bridge/core/testing"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import { execFileSync } from "node:child_process"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"

let dir = ""
let key = ""
let cert = ""
let fingerprint = ""

beforeAll(() => {
  // a self-signed certificate like the one a RouterOS api-ssl service usually has
  dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "routeros-tls-"))
  execFileSync("/usr/bin/openssl", [
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
    "-keyout",
    Path.join(dir, "key.pem"),
    "-out",
    Path.join(dir, "cert.pem"),
    "-days",
    "2",
    "-subj",
    "/CN=router.test",
    "-addext",
    "subjectAltName=IP:127.0.0.1,DNS:router.test"
  ], { stdio: "ignore" })
  key = Fs.readFileSync(Path.join(dir, "key.pem"), "utf8")
  cert = Fs.readFileSync(Path.join(dir, "cert.pem"), "utf8")
  fingerprint = new Crypto.X509Certificate(cert).fingerprint256
})

afterAll(() => {
  if (dir !== "") Fs.rmSync(dir, { recursive: true, force: true })
})

const startTls = () => RouterOsSimulator.make({ user: "api", password: "pw", tls: { key, cert } })

const connect = (sim: RouterOsSimulator.Simulator, tls: RouterOsClient.Options["tls"], password = "pw") =>
  RouterOsClient.make({ ...sim.clientOptions, password: Redacted.make(password), tls, reconnect: false })

describe("RouterOsClient over TLS", () => {
  it.scopedLive("rejects a self-signed certificate by default", () =>
    Effect.gen(function*() {
      const sim = yield* startTls()
      const error = yield* connect(sim, true).pipe(Effect.flip)
      expect(error).toMatchObject({ _tag: "RouterOsConnectionError", reason: "Tls" })
      expect(error.message).toContain(`RouterOS API at 127.0.0.1:${sim.port}: TLS failure`)
      expect(error.message).toMatch(/self[- ]signed/i)
      expect(yield* sim.commandCount()).toBe(0)
    }))

  it.scopedLive("accepts the certificate with the pinned SHA-256 fingerprint, in any notation", () =>
    Effect.gen(function*() {
      const sim = yield* startTls()
      const client = yield* connect(sim, { fingerprint256: fingerprint })
      expect((yield* client.command("/system/identity/print")).rows).toEqual([{ name: "MikroTik" }])
      const bare = yield* connect(sim, { fingerprint256: fingerprint.replaceAll(":", "").toLowerCase() })
      expect((yield* bare.command("/ip/route/print")).rows).toEqual([])
    }))

  it.scopedLive("rejects a certificate that does not match the pin", () =>
    Effect.gen(function*() {
      const sim = yield* startTls()
      const wrong = "00" + fingerprint.replaceAll(":", "").slice(2)
      const error = yield* connect(sim, { fingerprint256: wrong }).pipe(Effect.flip)
      expect(error).toMatchObject({ _tag: "RouterOsConnectionError", reason: "Tls" })
      expect(error.message).toContain("does not match the pinned one")
      const malformed = yield* connect(sim, { fingerprint256: "abc" }).pipe(Effect.flip)
      expect(malformed.message).toContain("64 hex digits")
    }))

  it.scopedLive("verifies against a CA given as PEM or file, including the host name", () =>
    Effect.gen(function*() {
      const sim = yield* startTls()
      const client = yield* connect(sim, { ca: cert })
      expect((yield* client.command("/system/identity/print")).rows.length).toBe(1)
      const fromFile = yield* connect(sim, { caFile: Path.join(dir, "cert.pem") })
      expect((yield* fromFile.command("/system/identity/print")).rows.length).toBe(1)
      const byName = yield* connect(sim, { ca: cert, servername: "router.test" })
      expect((yield* byName.command("/system/identity/print")).rows.length).toBe(1)
      const otherName = yield* connect(sim, { ca: cert, servername: "other.test" }).pipe(Effect.flip)
      expect(otherName).toMatchObject({ reason: "Tls" })
      const missingFile = yield* connect(sim, { caFile: Path.join(dir, "missing.pem") }).pipe(Effect.flip)
      expect(missingFile.message).toContain("cannot read CA file")
    }))

  it.scopedLive("reports wrong credentials over TLS as a login error", () =>
    Effect.gen(function*() {
      const sim = yield* startTls()
      const error = yield* connect(sim, { fingerprint256: fingerprint }, "wrong").pipe(Effect.flip)
      expect(error).toMatchObject({ _tag: "RouterOsLoginError", reason: "invalid user name or password (6)" })
    }))

  it.scopedLive("speaks anonymous DH only when explicitly enabled", () =>
    Effect.gen(function*() {
      const sim = yield* RouterOsSimulator.make({ user: "api", password: "pw", tls: { anonymousDh: true } })
      const refused = yield* connect(sim, true).pipe(Effect.flip)
      expect(refused).toMatchObject({ _tag: "RouterOsConnectionError", reason: "Tls" })
      expect(refused.message).toContain("offers only anonymous DH")
      expect(refused.message.split("\n").length).toBe(1)
      const client = yield* connect(sim, { anonymousDh: true })
      expect((yield* client.command("/system/identity/print")).rows).toEqual([{ name: "MikroTik" }])
    }))

  it.scopedLive("runs the typed commands over TLS", () =>
    Effect.gen(function*() {
      const sim = yield* startTls()
      yield* sim.setRoutes(RouterOsSimulator.vpnRouterV7().routes ?? [])
      const client = Layer.scoped(RouterOsClient.RouterOsClient, connect(sim, { fingerprint256: fingerprint }))
      const iface = yield* RouterOsCommands.interfaceTowards("10.2.0.1").pipe(Effect.provide(client))
      expect(iface).toBe("wg-proton")
    }))
})
