/**
 * The client API's HTTPS (`--tls-cert FILE --tls-key FILE`): the PEM files are read once at
 * start, and a pair that does not load (missing file, not PEM, a key that is not the
 * certificate's) stops the node before it listens, with the reason.
 */
import * as fs from "node:fs"
import * as tls from "node:tls"

/** What Fastify's `https` option takes. */
export interface HttpsFiles {
  readonly cert: Buffer
  readonly key: Buffer
}

/** A certificate or key that cannot be used, named, with why. */
export class HttpsFilesError extends Error {}

const read = (what: string, file: string): Buffer => {
  try {
    return fs.readFileSync(file)
  } catch (e) {
    const code = (e as { code?: unknown }).code
    throw new HttpsFilesError(`cannot read the ${what} ${file}: ${code === "ENOENT" ? "no such file" : code === "EACCES" ? "permission denied" : String(e)}`)
  }
}

/** Reads and checks the pair (a TLS context is built from it, as the server will). */
export const readHttpsFiles = (certFile: string, keyFile: string): HttpsFiles => {
  const files = { cert: read("certificate (--tls-cert)", certFile), key: read("private key (--tls-key)", keyFile) }
  try {
    tls.createSecureContext(files)
  } catch (e) {
    throw new HttpsFilesError(`--tls-cert ${certFile} and --tls-key ${keyFile} cannot serve HTTPS: ${(e as Error).message} (PEM files, the key the certificate's)`)
  }
  return files
}
