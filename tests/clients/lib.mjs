// What every Node client check shares: the case the runner hands over (connection string,
// port, trust setup), a deadline, and failures that name the case. Never prints the string:
// it holds the password.
import { isDeepStrictEqual } from 'node:util'

export const url = required('BERTH_CLIENT_URL')
export const label = required('BERTH_CLIENT_CASE')
export const port = required('BERTH_CLIENT_PORT') // "direct" or "pooled"
const deadlineSeconds = Number(process.env.BERTH_CLIENT_DEADLINE_SECONDS ?? 60)

function required(name) {
  const value = process.env[name]
  if (!value) {
    console.error(`FAIL: ${name} is not set (run through scripts/lib/clients.sh)`)
    process.exit(2)
  }
  return value
}

const show = (v) => JSON.stringify(v, (_, x) => (typeof x === 'bigint' ? `${x}n` : x))

export function fail(message) {
  console.error(`FAIL ${label}: ${message}`)
  process.exit(1)
}

export function check(condition, what) {
  if (!condition) fail(what)
}

export function equal(actual, expected, what) {
  if (!isDeepStrictEqual(actual, expected)) fail(`${what}: expected ${show(expected)}, got ${show(actual)}`)
}

/// Runs `main`, failing the case on an exception or when the deadline passes, and exits:
/// pools and timers must not keep a finished check alive.
export async function run(main) {
  const timer = setTimeout(() => fail(`no result within ${deadlineSeconds} s (deadline)`), deadlineSeconds * 1000)
  try {
    await main()
  } catch (e) {
    const code = e?.code ? ` [${e.code}]` : ''
    fail(`${e?.name ?? 'Error'}${code}: ${e?.message ?? e}`)
  }
  clearTimeout(timer)
  process.exit(0)
}
