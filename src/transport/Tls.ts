/**
 * Internode TLS: TLS 1.3 with an external pre-shared key (RFC 8446 section 2.2, no
 * certificates), the key derived from the cluster secret with HKDF-SHA256 under a fixed label.
 * Both ends prove they hold the key (the client's binder, the server's Finished), so a peer
 * with another secret fails the handshake and no byte it sends reaches the frame decoder.
 *
 * A secret file holds one secret per line: the first is the one this node connects with, any
 * further ones are also accepted from peers (the previous secret, during a rotation). Each key
 * is offered under an identity derived from it with a second label, so the server picks the
 * right key without the secret itself ever crossing the wire.
 */
import * as crypto from "node:crypto"
import * as fs from "node:fs"
import * as net from "node:net"
import * as tls from "node:tls"

/** Shortest secret accepted, in bytes. */
export const MIN_SECRET_BYTES = 16

/** Cipher suite of every internode connection. */
export const CIPHER = "TLS_AES_128_GCM_SHA256"

const KEY_LABEL = "tally internode tls-psk v1"
const IDENTITY_LABEL = "tally internode psk identity v1"

/** One accepted key: the identity peers name it by, and the key itself. */
export interface PskKey {
  readonly identity: string
  readonly psk: Buffer
}

/** The keys of a node: `keys[0]` is the one it connects with; all are accepted. */
export interface InternodeTls {
  readonly keys: ReadonlyArray<PskKey>
}

const derive = (secret: Uint8Array, label: string, bytes: number): Buffer =>
  Buffer.from(crypto.hkdfSync("sha256", secret, new Uint8Array(0), label, bytes))

/** The PSK and identity of one secret. */
export const pskKey = (secret: Uint8Array): PskKey => ({
  identity: `tally-${derive(secret, IDENTITY_LABEL, 12).toString("hex")}`,
  psk: derive(secret, KEY_LABEL, 32)
})

/** Internode TLS from secrets, current first. */
export const fromSecrets = (secrets: ReadonlyArray<Uint8Array | string>): InternodeTls => {
  if (secrets.length === 0) throw new Error("no cluster secret")
  return { keys: secrets.map((s) => pskKey(typeof s === "string" ? Buffer.from(s, "utf8") : s)) }
}

/**
 * The secrets in a secret file's text: one per non-empty line, surrounding whitespace and a
 * trailing newline ignored. A string is a problem, stated for the operator.
 */
export const parseSecretText = (path: string, text: string): ReadonlyArray<Buffer> | string => {
  const lines = text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l !== "")
  if (lines.length === 0) return `cluster secret file ${path} is empty: put a secret of at least ${MIN_SECRET_BYTES} bytes on its first line (e.g. openssl rand -hex 32)`
  if (lines.length > 2) return `cluster secret file ${path} has ${lines.length} secrets: it holds the current one and at most one previous one, a line each`
  const short = lines.findIndex((l) => Buffer.byteLength(l, "utf8") < MIN_SECRET_BYTES)
  if (short >= 0) return `the secret on line ${short + 1} of cluster secret file ${path} has ${Buffer.byteLength(lines[short]!, "utf8")} bytes; it needs at least ${MIN_SECRET_BYTES} (e.g. openssl rand -hex 32)`
  return lines.map((l) => Buffer.from(l, "utf8"))
}

/** Reads a secret file at start; throws an Error with a clear message when it is unusable. */
export const readSecretFile = (path: string): InternodeTls => {
  let text: string
  try {
    text = fs.readFileSync(path, "utf8")
  } catch (e) {
    const code = (e as { code?: unknown }).code
    const why = code === "ENOENT" ? "no such file" : code === "EACCES" ? "permission denied" : code === "EISDIR" ? "it is a directory" : String(e)
    throw new Error(`cannot read cluster secret file ${path}: ${why}`)
  }
  const secrets = parseSecretText(path, text)
  if (typeof secrets === "string") throw new Error(secrets)
  return fromSecrets(secrets)
}

const PROTOCOL = { minVersion: "TLSv1.3", maxVersion: "TLSv1.3", ciphersuites: CIPHER } as const

/** Options of the listener: accepts a peer naming any of our keys, nothing else. */
export const serverOptions = (config: InternodeTls, handshakeTimeoutMs: number): tls.TlsOptions => {
  const byIdentity = new Map(config.keys.map((k) => [k.identity, k.psk]))
  return {
    ...PROTOCOL,
    handshakeTimeout: handshakeTimeoutMs,
    pskCallback: (_socket, identity) => byIdentity.get(identity) ?? null
  }
}

/** Options of a connection to a peer: offers our current key. */
export const connectOptions = (config: InternodeTls): tls.ConnectionOptions => {
  const key = config.keys[0]!
  return {
    ...PROTOCOL,
    // No certificate: the peer is authenticated by the key, not by a name.
    checkServerIdentity: () => undefined,
    pskCallback: () => ({ psk: key.psk, identity: key.identity })
  }
}

/** Whether a socket error is a failed TLS handshake (another secret, or no TLS at all). */
export const isHandshakeFailure = (e: Error | undefined): boolean => {
  const code = (e as { code?: unknown } | undefined)?.code
  return typeof code === "string" && code.startsWith("ERR_SSL_")
}

/** Starts a listener: plain TCP without `config`, internode TLS with it; `onSocket` sees only authenticated sockets. */
export const createServer = (config: InternodeTls | undefined, handshakeTimeoutMs: number, onSocket: (socket: net.Socket) => void, onHandshakeFailure: (error: Error, socket: net.Socket) => void): net.Server => {
  if (config === undefined) return net.createServer(onSocket)
  const server = tls.createServer(serverOptions(config, handshakeTimeoutMs), onSocket)
  server.on("tlsClientError", (e, socket) => {
    onHandshakeFailure(e, socket)
    socket.destroy()
  })
  return server
}

/** Connects to a peer; the socket's "ready" event (see `readyEvent`) fires once it may carry frames. */
export const connect = (config: InternodeTls | undefined, host: string, port: number): net.Socket =>
  config === undefined ? net.connect({ host, port }) : tls.connect({ host, port, ...connectOptions(config) })

/** The event after which a socket from `connect` may carry frames. */
export const readyEvent = (config: InternodeTls | undefined): "connect" | "secureConnect" => (config === undefined ? "connect" : "secureConnect")
