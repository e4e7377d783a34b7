// Pushes log lines through winston + winston-loki (a real Loki client) and prints, as
// its last stdout line, the JSON {"contentType": ...} the transport used.
//
//   node loki_client.js URL TOKEN DEPLOYMENT protobuf|json COUNT SECRET
const winston = require('winston')
const LokiTransport = require('winston-loki')

const [url, token, deployment, mode, count, secret] = process.argv.slice(2)
let failed = null
const transport = (step) => new LokiTransport({
  host: url,
  headers: { Authorization: `Bearer ${token}` },
  json: mode === 'json',
  labels: { deployment, step, job: 'ci' },
  format: winston.format.printf(info => info.message),
  batching: true,
  interval: 0.2,
  timeout: 10000,
  onConnectionError: (err) => { failed = err }
})
const build = transport('build')
const test = transport('test')
const log = (t) => winston.createLogger({ level: 'debug', transports: [t] })

async function main () {
  const b = log(build)
  const t = log(test)
  for (let i = 0; i < Number(count); i++) b.info(`compile ${i}`)
  await build.flush()
  t.warn(`using token ${secret}`)
  await test.flush()
  t.error('tests failed')
  await test.flush()
  await Promise.all([build.close(), test.close()])
  if (failed) throw failed
  console.log(JSON.stringify({ contentType: build.batcher.contentType }))
}
main().catch(err => { console.error(err); process.exit(1) })
