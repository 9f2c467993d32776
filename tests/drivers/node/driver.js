#!/usr/bin/env node
// node-postgres program of the driver conformance suite (tests/drivers.rs).
//
// Settings come from the environment (see tests/drivers/README.md). For every (mode, scenario)
// of PGD_PLAN one JSON line is printed with what was observed; tests/drivers.rs judges it.
'use strict'

const http = require('http')
const pg = require('pg')

const WATCHED = [
  'pgdecomp_cross_join_total',
  'pgdecomp_cross_database_modification_total',
  'pgdecomp_wrong_schema_total',
  'pgdecomp_locked_table_write_total',
  'pgdecomp_rejected_statements_total',
]

const SQL = {
  ci_ins: "INSERT INTO ci_builds (name, status) VALUES ($1, 'driver') RETURNING id",
  main_ins: 'INSERT INTO projects (name) VALUES ($1) RETURNING id',
  port: 'SELECT inet_server_port()',
  ci_sel: 'SELECT inet_server_port() FROM ci_builds WHERE id >= $1 LIMIT 1',
  main_sel: 'SELECT inet_server_port() FROM projects WHERE id >= $1 LIMIT 1',
  join: 'SELECT count(*) FROM projects p JOIN ci_builds b ON b.id = p.id WHERE p.id >= $1',
  // One simple-protocol Query holding a whole transaction.
  multi: "BEGIN; INSERT INTO ci_builds (name, status) VALUES ($1, 'driver'); INSERT INTO projects (name) VALUES ($1); COMMIT",
}

const SCENARIO_TIMEOUT_MS = 1000 * Number(process.env.PGD_SCENARIO_TIMEOUT || '60')

function env(name) {
  const v = process.env[name]
  if (v === undefined) {
    console.error(`driver.js: ${name} is not set`)
    process.exit(2)
  }
  return v
}

const NODES = {}
for (const pair of env('PGD_NODES').split(',')) {
  if (pair) {
    const [name, port] = pair.split('=')
    NODES[Number(port)] = name
  }
}
const node = (port) => NODES[Number(port)] || `port:${port}`

function metrics() {
  const url = process.env.PGD_METRICS_URL || ''
  if (!url) return Promise.resolve({})
  return new Promise((resolve, reject) => {
    const req = http.get(url, { timeout: 10000 }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (d) => (body += d))
      res.on('end', () => {
        const out = {}
        for (const line of body.split('\n')) {
          if (line.startsWith('#') || !line.includes(' ')) continue
          const at = line.lastIndexOf(' ')
          const series = line.slice(0, at)
          if (WATCHED.includes(series.split('{')[0])) out[series] = Number(line.slice(at + 1))
        }
        resolve(out)
      })
    })
    req.on('timeout', () => req.destroy(new Error('metrics request timed out')))
    req.on('error', reject)
  })
}

function delta(before, after) {
  const out = {}
  for (const s of new Set([...Object.keys(before), ...Object.keys(after)])) {
    const d = (after[s] || 0) - (before[s] || 0)
    if (d) out[s] = d
  }
  return out
}

class Recorder {
  constructor() {
    this.steps = {}
    this.errors = {}
  }
  add(step, outcome, message) {
    const counts = (this.steps[step] = this.steps[step] || {})
    counts[outcome] = (counts[outcome] || 0) + 1
    if (message !== undefined && !(outcome in this.errors)) {
      this.errors[outcome] = `${step}: ${message}`.slice(0, 300)
    }
  }
}

const outcomeOf = (e) => (e && e.code && /^[0-9A-Z]{5}$/.test(e.code) ? `err:${e.code}` : `exc:${(e && e.name) || e}`)

async function step(rec, name, action, report = 'ok') {
  let value
  try {
    value = await action()
  } catch (e) {
    rec.add(name, outcomeOf(e), String((e && e.message) || e).trim())
    return [false, e]
  }
  if (report === 'port') rec.add(name, node(value))
  else if (report === 'rows') rec.add(name, `rows:${value}`)
  else rec.add(name, 'ok')
  return [true, value]
}

async function txn(rec, s, prefix, ops) {
  let [ok] = await step(rec, prefix + 'begin', () => s.begin())
  if (ok) {
    for (const [op, key, params, report] of ops) {
      ;[ok] = await step(rec, prefix + op, () => s.run(key, params), report)
      if (!ok) break
    }
  }
  if (ok) {
    ;[ok] = await step(rec, prefix + 'commit', () => s.commit())
    return ok
  }
  await step(rec, prefix + 'rollback', () => s.rollback())
  return false
}

// ───────────────────────────── sessions ─────────────────────────────

const MODES = ['simple', 'extended', 'named', 'begin_extended', 'begin_named', 'pool']

function clientConfig(dbname) {
  return {
    host: env('PGD_HOST'),
    port: Number(env('PGD_PORT')),
    user: env('PGD_USER'),
    password: env('PGD_PASSWORD'),
    database: dbname,
    connectionTimeoutMillis: 10000,
    query_timeout: 30000,
  }
}

// Inlines $n parameters as literals, for the simple protocol.
function inline(client, sql, params) {
  return sql.replace(/\$(\d+)/g, (_, n) => {
    const v = params[Number(n) - 1]
    return typeof v === 'number' ? String(v) : client.escapeLiteral(String(v))
  })
}

class Session {
  // simple:         every statement a simple Query, parameters inlined.
  // extended:       parameterised statements (unnamed Parse/Bind/Execute); BEGIN simple.
  // named:          {name, text, values}: named statements, parsed once per connection; BEGIN simple.
  // begin_extended: as extended, and BEGIN/COMMIT/ROLLBACK also extended (queryMode: 'extended').
  // begin_named:    as named, and BEGIN/COMMIT/ROLLBACK also named statements.
  // pool:           as named, through a pg.Pool of three connections used in turn.
  constructor(mode, dbname) {
    this.mode = mode
    this.dbname = dbname
    this.clients = []
    this.turn = 0
    this.current = null
  }

  async open() {
    const config = clientConfig(this.dbname)
    if (this.mode === 'pool') {
      this.pool = new pg.Pool({ ...config, max: 3 })
      this.pool.on('error', () => {})
      for (let i = 0; i < 3; i++) this.clients.push(await this.pool.connect())
    } else {
      const c = new pg.Client(config)
      c.on('error', () => {})
      await c.connect()
      this.clients.push(c)
    }
    return this
  }

  async prepare() {}

  // In pool mode each transaction (and each statement outside one) takes the next connection.
  client() {
    if (this.current) return this.current
    return this.clients[this.turn++ % this.clients.length]
  }

  async control(sql) {
    const c = this.current || this.client()
    if (this.mode === 'begin_extended') return c.query({ text: sql, queryMode: 'extended' })
    if (this.mode === 'begin_named') return c.query({ name: `drv_${sql.toLowerCase()}`, text: sql })
    return c.query(sql)
  }

  async begin() {
    this.current = this.client()
    try {
      await this.control('BEGIN')
    } catch (e) {
      this.current = null
      throw e
    }
  }

  async commit() {
    try {
      await this.control('COMMIT')
    } finally {
      this.current = null
    }
  }

  async rollback() {
    try {
      await this.control('ROLLBACK')
    } finally {
      this.current = null
    }
  }

  async run(key, params) {
    const c = this.client()
    const values = params || []
    let res
    if (this.mode === 'simple') {
      res = await c.query(inline(c, SQL[key], values))
    } else if (this.mode === 'named' || this.mode === 'begin_named' || this.mode === 'pool') {
      res = await c.query({ name: `drv_${key}`, text: SQL[key], values, rowMode: 'array' })
    } else {
      res = await c.query({ text: SQL[key], values, rowMode: 'array', queryMode: 'extended' })
    }
    const row = res.rows[0]
    if (!row) return null
    return Array.isArray(row) ? row[0] : Object.values(row)[0]
  }

  // A multi-statement string: only a simple Query takes one.
  async runMulti(key, params) {
    const c = this.client()
    await c.query(inline(c, SQL[key], params))
  }

  async close() {
    if (this.pool) {
      for (const c of this.clients) c.release()
      await this.pool.end()
    } else {
      for (const c of this.clients) await c.end()
    }
  }
}

// ───────────────────────────── scenarios ─────────────────────────────

const N_ROUTE = 3
const N_VIOLATIONS = 20

class Ctx {
  constructor(mode, scenario) {
    this.mode = mode
    this.sessions = []
    this.prefix = `${env('PGD_RUN')}-node-${mode}-${scenario}`
  }
  marker(i) {
    return `${this.prefix}-${i}`
  }
  async session(db) {
    const dbname = env({ transparent: 'PGD_DB', main: 'PGD_DB_MAIN', ci: 'PGD_DB_CI' }[db])
    const s = new Session(this.mode, dbname)
    this.sessions.push(s)
    return s.open()
  }
  async close() {
    for (const s of this.sessions) {
      await Promise.race([s.close().catch(() => {}), new Promise((r) => setTimeout(r, 10000))])
    }
  }
}

async function route(ctx, rec, db) {
  const s = await ctx.session(db)
  for (let i = 0; i < N_ROUTE; i++) {
    if (db === 'transparent' || db === 'ci') {
      await txn(rec, s, 'ci_', [['ins', 'ci_ins', [ctx.marker(`ci-${i}`)], 'ok'], ['port', 'port', null, 'port']])
      await step(rec, 'ci_read', () => s.run('ci_sel', [0]), 'port')
    }
    if (db === 'transparent' || db === 'main') {
      await txn(rec, s, 'main_', [['ins', 'main_ins', [ctx.marker(`main-${i}`)], 'ok'], ['port', 'port', null, 'port']])
      await step(rec, 'main_read', () => s.run('main_sel', [0]), 'port')
    }
  }
}

async function after(ctx, rec, s, groups) {
  for (const g of groups) {
    await txn(rec, s, `after_${g}_`, [['ins', `${g}_ins`, [ctx.marker(`after-${g}`)], 'ok'], ['port', 'port', null, 'port']])
  }
}

async function crossDb(ctx, rec, first, second) {
  const s = await ctx.session('transparent')
  for (let i = 0; i < N_VIOLATIONS; i++) {
    const m = ctx.marker(i)
    await txn(rec, s, '', [
      [`${first}_ins`, `${first}_ins`, [m], 'ok'],
      ['port', 'port', null, 'port'],
      [`${second}_ins`, `${second}_ins`, [m], 'ok'],
    ])
  }
  await after(ctx, rec, s, ['main', 'ci'])
}

// Overlapping transactions on two connections (so two server connections), each preparing its
// statements in another order.
async function twoConns(ctx, rec) {
  const conns = [await ctx.session('transparent'), await ctx.session('transparent')]
  for (let i = 0; i < N_VIOLATIONS; i++) {
    const groups = i % 2 === 0 ? ['ci', 'main'] : ['main', 'ci']
    const alive = [false, false]
    for (let c = 0; c < 2; c++) {
      ;[alive[c]] = await step(rec, `${groups[c]}_begin`, () => conns[c].begin())
      if (!alive[c]) await step(rec, `${groups[c]}_rollback`, () => conns[c].rollback())
    }
    for (const op of ['ins', 'port']) {
      for (let c = 0; c < 2; c++) {
        if (!alive[c]) continue
        const g = groups[c]
        const [key, params, report] = op === 'ins' ? [`${g}_ins`, [ctx.marker(`${i}-${c}`)], 'ok'] : ['port', null, 'port']
        ;[alive[c]] = await step(rec, `${g}_${op}`, () => conns[c].run(key, params), report)
        if (!alive[c]) await step(rec, `${g}_rollback`, () => conns[c].rollback())
      }
    }
    for (let c = 0; c < 2; c++) {
      if (alive[c]) await step(rec, `${groups[c]}_commit`, () => conns[c].commit())
    }
  }
}

const SCENARIOS = {
  two_conns: twoConns,
  multi_statement: async (ctx, rec) => {
    const s = await ctx.session('transparent')
    for (let i = 0; i < N_VIOLATIONS; i++) {
      const [ok] = await step(rec, 'multi', () => s.runMulti('multi', [ctx.marker(i)]))
      if (!ok) await step(rec, 'rollback', () => s.rollback())
    }
    await after(ctx, rec, s, ['main', 'ci'])
  },
  route_transparent: (ctx, rec) => route(ctx, rec, 'transparent'),
  route_main: (ctx, rec) => route(ctx, rec, 'main'),
  route_ci: (ctx, rec) => route(ctx, rec, 'ci'),
  cross_db_ci_main: (ctx, rec) => crossDb(ctx, rec, 'ci', 'main'),
  cross_db_main_ci: (ctx, rec) => crossDb(ctx, rec, 'main', 'ci'),
  cross_join: async (ctx, rec) => {
    const s = await ctx.session('transparent')
    for (let i = 0; i < N_VIOLATIONS / 2; i++) {
      await txn(rec, s, '', [['join_txn', 'join', [0], 'ok']])
      await step(rec, 'join_auto', () => s.run('join', [0]))
    }
    await after(ctx, rec, s, ['main', 'ci'])
  },
  wrong_schema_ci: async (ctx, rec) => {
    const s = await ctx.session('ci')
    for (let i = 0; i < N_VIOLATIONS; i++) await txn(rec, s, '', [['main_sel', 'main_sel', [0], 'port']])
    await after(ctx, rec, s, ['ci'])
  },
  wrong_schema_main: async (ctx, rec) => {
    const s = await ctx.session('main')
    for (let i = 0; i < N_VIOLATIONS; i++) await txn(rec, s, '', [['ci_sel', 'ci_sel', [0], 'port']])
    await after(ctx, rec, s, ['main'])
  },
}

async function runScenario(mode, scenario) {
  const rec = new Recorder()
  let fatal = null
  const started = Date.now()
  const before = await metrics()
  const ctx = new Ctx(mode, scenario)
  let timer
  try {
    await Promise.race([
      SCENARIOS[scenario](ctx, rec),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`scenario did not finish within ${SCENARIO_TIMEOUT_MS} ms`)), SCENARIO_TIMEOUT_MS)
      }),
    ])
  } catch (e) {
    fatal = String((e && e.stack) || e).slice(0, 500)
  } finally {
    clearTimeout(timer)
  }
  await ctx.close()
  const line = {
    driver: 'node',
    mode,
    scenario,
    steps: rec.steps,
    errors: rec.errors,
    metrics: delta(before, await metrics()),
    fatal,
    secs: (Date.now() - started) / 1000,
  }
  process.stdout.write(JSON.stringify(line) + '\n')
}

async function main() {
  for (const part of env('PGD_PLAN').split(';')) {
    const [mode, scenarios] = part.split('=')
    for (const scenario of scenarios.split(',')) {
      if (!MODES.includes(mode) || !(scenario in SCENARIOS)) {
        process.stdout.write(JSON.stringify({ driver: 'node', mode, scenario, fatal: 'unknown mode or scenario' }) + '\n')
        continue
      }
      await runScenario(mode, scenario)
    }
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(e)
    process.exit(1)
  },
)
