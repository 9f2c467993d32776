#!/usr/bin/env ruby
# frozen_string_literal: true

# Ruby pg and ActiveRecord program of the driver conformance suite (tests/drivers.rs), with
# Debian's ruby-pg and ruby-activerecord (GitLab's own stack).
#
# Settings come from the environment (see tests/drivers/README.md). For every (mode, scenario)
# of PGD_PLAN one JSON line is printed with what was observed; tests/drivers.rs judges it.

require 'json'
require 'net/http'
require 'timeout'
require 'uri'
require 'pg'
require 'active_record'

WATCHED = %w[
  pgdecomp_cross_join_total
  pgdecomp_cross_database_modification_total
  pgdecomp_wrong_schema_total
  pgdecomp_locked_table_write_total
  pgdecomp_rejected_statements_total
].freeze

SQL = {
  'ci_ins' => "INSERT INTO ci_builds (name, status) VALUES ($1, 'driver') RETURNING id",
  'main_ins' => 'INSERT INTO projects (name) VALUES ($1) RETURNING id',
  'port' => 'SELECT inet_server_port()',
  'ci_sel' => 'SELECT inet_server_port() FROM ci_builds WHERE id >= $1 LIMIT 1',
  'main_sel' => 'SELECT inet_server_port() FROM projects WHERE id >= $1 LIMIT 1',
  'join' => 'SELECT count(*) FROM projects p JOIN ci_builds b ON b.id = p.id WHERE p.id >= $1',
  # One simple-protocol Query holding a whole transaction.
  'multi' => "BEGIN; INSERT INTO ci_builds (name, status) VALUES ($1, 'driver'); " \
             'INSERT INTO projects (name) VALUES ($1); COMMIT'
}.freeze

MODES = %w[exec exec_params prepared ar_prepared ar_unprepared].freeze
N_ROUTE = 3
N_VIOLATIONS = 20
SCENARIO_TIMEOUT = Float(ENV.fetch('PGD_SCENARIO_TIMEOUT', '60'))

def env(name)
  ENV.fetch(name) { abort("driver.rb: #{name} is not set") }
end

NODES = env('PGD_NODES').split(',').reject(&:empty?).to_h do |pair|
  name, port = pair.split('=')
  [Integer(port), name]
end

def node(port)
  NODES.fetch(Integer(port)) { "port:#{port}" }
end

def metrics
  url = ENV.fetch('PGD_METRICS_URL', '')
  return {} if url.empty?

  uri = URI(url)
  body = Net::HTTP.start(uri.host, uri.port, open_timeout: 10, read_timeout: 10) { |h| h.get(uri.path).body }
  body.lines.each_with_object({}) do |line, out|
    next if line.start_with?('#') || !line.include?(' ')

    series, value = line.strip.rpartition(' ').values_at(0, 2)
    out[series] = Float(value) if WATCHED.include?(series.split('{', 2)[0])
  end
end

def delta(before, after)
  (before.keys | after.keys).each_with_object({}) do |s, out|
    d = after.fetch(s, 0.0) - before.fetch(s, 0.0)
    out[s] = d unless d.zero?
  end
end

class Recorder
  attr_reader :steps, :errors

  def initialize
    @steps = {}
    @errors = {}
  end

  def add(step, outcome, message = nil)
    counts = (@steps[step] ||= {})
    counts[outcome] = counts.fetch(outcome, 0) + 1
    @errors[outcome] ||= "#{step}: #{message.strip}"[0, 300] if message
  end
end

def outcome_of(exc)
  pg = exc.is_a?(PG::Error) ? exc : exc.cause
  state = pg.is_a?(PG::Error) && pg.result && pg.result.error_field(PG::PG_DIAG_SQLSTATE)
  state ? "err:#{state}" : "exc:#{exc.class.name}"
end

def step(rec, name, report = 'ok')
  value = yield
  case report
  when 'port' then rec.add(name, node(value))
  when 'rows' then rec.add(name, "rows:#{value}")
  else rec.add(name, 'ok')
  end
  [true, value]
rescue StandardError => e
  rec.add(name, outcome_of(e), e.message.to_s)
  [false, e]
end

# BEGIN; each [op, key, param, report]; COMMIT, or ROLLBACK after the first failure.
def txn(rec, sess, prefix, ops)
  return sess.txn(rec, prefix, ops) if sess.respond_to?(:txn)

  ok, = step(rec, "#{prefix}begin") { sess.begin }
  if ok
    ops.each do |op, key, param, report|
      ok, = step(rec, "#{prefix}#{op}", report) { sess.run(key, param) }
      break unless ok
    end
  end
  if ok
    ok, = step(rec, "#{prefix}commit") { sess.commit }
    return ok
  end
  step(rec, "#{prefix}rollback") { sess.rollback }
  false
end

# ───────────────────────────── ruby-pg ─────────────────────────────

# exec:        simple Queries, parameters inlined with escape_literal.
# exec_params: Parse/Bind/Execute of the unnamed statement for every execution.
# prepared:    conn.prepare before any transaction, exec_prepared inside later ones.
# BEGIN/COMMIT/ROLLBACK are simple Queries in all three, as PG::Connection#transaction sends them.
class PgSession
  def initialize(mode, dbname)
    @mode = mode
    @conn = PG.connect(host: env('PGD_HOST'), port: env('PGD_PORT'), user: env('PGD_USER'),
                       password: env('PGD_PASSWORD'), dbname: dbname, connect_timeout: 10)
    @prepared = {}
  end

  def prepare(keys)
    return unless @mode == 'prepared'

    keys.each do |k|
      @conn.prepare("drv_#{k}", SQL.fetch(k))
      @prepared[k] = true
    end
  end

  def begin
    @conn.exec('BEGIN')
  end

  def commit
    @conn.exec('COMMIT')
  end

  def rollback
    @conn.exec('ROLLBACK')
  end

  def run(key, param)
    params = param.nil? ? [] : [param]
    res = case @mode
          when 'exec'
            sql = SQL.fetch(key).gsub('$1') { param.is_a?(Integer) ? param.to_s : @conn.escape_literal(param.to_s) }
            @conn.exec(sql)
          when 'exec_params'
            @conn.exec_params(SQL.fetch(key), params)
          else
            unless @prepared[key]
              @conn.prepare("drv_#{key}", SQL.fetch(key))
              @prepared[key] = true
            end
            @conn.exec_prepared("drv_#{key}", params)
          end
    res.ntuples.positive? ? res.getvalue(0, 0) : nil
  end

  # A multi-statement string: only a simple Query (exec) takes one.
  def run_multi(key, param)
    @conn.exec(SQL.fetch(key).gsub('$1') { @conn.escape_literal(param.to_s) })
  end

  def close
    @conn.close
  end
end

# ───────────────────────────── ActiveRecord ─────────────────────────────

class TransparentRecord < ActiveRecord::Base
  self.abstract_class = true
end

class MainDbRecord < ActiveRecord::Base
  self.abstract_class = true
end

class CiDbRecord < ActiveRecord::Base
  self.abstract_class = true
end

BASES = { 'transparent' => TransparentRecord, 'main' => MainDbRecord, 'ci' => CiDbRecord }.freeze
MODELS = BASES.to_h do |db, base|
  [db, {
    'ci' => Object.const_set("#{base.name}CiBuild", Class.new(base) { self.table_name = 'ci_builds' }),
    'main' => Object.const_set("#{base.name}Project", Class.new(base) { self.table_name = 'projects' })
  }]
end

# ar_prepared / ar_unprepared: ActiveRecord with prepared_statements true / false, transactions by
# `transaction do ... end`, statements from models (binds: named statements a1, a2... when
# prepared) and the port by select_value.
class ArSession
  def initialize(mode, db, dbname)
    @base = BASES.fetch(db)
    @models = MODELS.fetch(db)
    @base.establish_connection(
      adapter: 'postgresql', host: env('PGD_HOST'), port: Integer(env('PGD_PORT')),
      username: env('PGD_USER'), password: env('PGD_PASSWORD'), database: dbname,
      prepared_statements: mode == 'ar_prepared', connect_timeout: 10, pool: 1, advisory_locks: false
    )
    @base.connection.verify!
    # Load the table metadata now, outside any transaction, as GitLab's schema cache has it at
    # boot. Loaded lazily, ActiveRecord reads pg_attribute, pg_class and max_identifier_length
    # inside the first transaction, and a catalog query first pins a transparent transaction to
    # the session's group (main).
    @models.each_value do |m|
      m.reset_column_information
      m.columns_hash
      m.primary_key
      m.table_exists?
    end
    @base.connection.max_identifier_length
  end

  def prepare(_keys); end

  def txn(rec, prefix, ops)
    failed = false
    rec.add("#{prefix}begin", 'ok')
    begin
      @base.transaction do
        ops.each do |op, key, param, report|
          ok, = step(rec, "#{prefix}#{op}", report) { run(key, param) }
          next if ok

          failed = true
          raise ActiveRecord::Rollback
        end
      end
      rec.add("#{prefix}#{failed ? 'rollback' : 'commit'}", 'ok')
    rescue StandardError => e
      rec.add("#{prefix}#{failed ? 'rollback' : 'commit'}", outcome_of(e), e.message.to_s)
    end
    !failed
  end

  # Inserts by create! (ActiveRecord 6.1 never prepares them: unnamed Parse/Bind/Execute with
  # binds, or literals when prepared_statements is false); reads by find_by_sql with a bind and
  # preparable: true, which ActiveRecord runs as named statements a1, a2... when prepared.
  def run(key, param)
    ci = @models.fetch('ci')
    main = @models.fetch('main')
    case key
    when 'ci_ins' then ci.create!(name: param, status: 'driver').id
    when 'main_ins' then main.create!(name: param).id
    when 'port' then @base.connection.select_value('SELECT inet_server_port()')
    when 'ci_sel', 'main_sel', 'join' then select(key == 'ci_sel' ? ci : main, key, param)
    else raise ArgumentError, "no ActiveRecord form of #{key}"
    end
  end

  def select(model, key, param)
    sql = SQL.fetch(key).sub('SELECT inet_server_port()', 'SELECT inet_server_port() AS v')
                        .sub('SELECT count(*)', 'SELECT count(*) AS v')
    bind = ActiveRecord::Relation::QueryAttribute.new('id', param, ActiveRecord::Type::Integer.new)
    model.find_by_sql(sql, [bind], preparable: true).first&.v
  end

  def close
    @base.remove_connection
  end
end

# ───────────────────────────── scenarios ─────────────────────────────

class Ctx
  attr_reader :prefix

  def initialize(mode, scenario)
    @mode = mode
    @prefix = "#{env('PGD_RUN')}-ruby-#{mode}-#{scenario}"
    @sessions = []
  end

  def marker(idx)
    "#{@prefix}-#{idx}"
  end

  def session(db, keys = [])
    dbname = env({ 'transparent' => 'PGD_DB', 'main' => 'PGD_DB_MAIN', 'ci' => 'PGD_DB_CI' }.fetch(db))
    s = @mode.start_with?('ar_') ? ArSession.new(@mode, db, dbname) : PgSession.new(@mode, dbname)
    @sessions << s
    s.prepare(keys)
    s
  end

  def close
    @sessions.each do |s|
      Timeout.timeout(10) { s.close }
    rescue StandardError, Timeout::Error
      nil
    end
  end
end

ROUTE_KEYS = {
  'transparent' => %w[ci_ins main_ins port ci_sel main_sel],
  'main' => %w[main_ins port main_sel],
  'ci' => %w[ci_ins port ci_sel]
}.freeze

def route(ctx, rec, db)
  s = ctx.session(db, ROUTE_KEYS.fetch(db))
  N_ROUTE.times do |i|
    if %w[transparent ci].include?(db)
      txn(rec, s, 'ci_', [['ins', 'ci_ins', ctx.marker("ci-#{i}"), 'ok'], ['port', 'port', nil, 'port']])
      step(rec, 'ci_read', 'port') { s.run('ci_sel', 0) }
    end
    next unless %w[transparent main].include?(db)

    txn(rec, s, 'main_', [['ins', 'main_ins', ctx.marker("main-#{i}"), 'ok'], ['port', 'port', nil, 'port']])
    step(rec, 'main_read', 'port') { s.run('main_sel', 0) }
  end
end

def after(ctx, rec, sess, groups)
  groups.each do |g|
    txn(rec, sess, "after_#{g}_", [['ins', "#{g}_ins", ctx.marker("after-#{g}"), 'ok'], ['port', 'port', nil, 'port']])
  end
end

def cross_db(ctx, rec, first, second)
  s = ctx.session('transparent', %w[ci_ins main_ins port])
  N_VIOLATIONS.times do |i|
    m = ctx.marker(i)
    txn(rec, s, '', [["#{first}_ins", "#{first}_ins", m, 'ok'], ['port', 'port', nil, 'port'],
                     ["#{second}_ins", "#{second}_ins", m, 'ok']])
  end
  after(ctx, rec, s, %w[main ci])
end

# Overlapping transactions on two connections (so two server connections), each preparing its
# statements in another order.
def two_conns(ctx, rec)
  conns = [ctx.session('transparent'), ctx.session('transparent')]
  N_VIOLATIONS.times do |i|
    groups = i.even? ? %w[ci main] : %w[main ci]
    alive = [false, false]
    conns.each_with_index do |s, c|
      alive[c], = step(rec, "#{groups[c]}_begin") { s.begin }
      step(rec, "#{groups[c]}_rollback") { s.rollback } unless alive[c]
    end
    %w[ins port].each do |op|
      conns.each_with_index do |s, c|
        next unless alive[c]

        g = groups[c]
        key, param, report = op == 'ins' ? ["#{g}_ins", ctx.marker("#{i}-#{c}"), 'ok'] : ['port', nil, 'port']
        alive[c], = step(rec, "#{g}_#{op}", report) { s.run(key, param) }
        step(rec, "#{g}_rollback") { s.rollback } unless alive[c]
      end
    end
    conns.each_with_index do |s, c|
      step(rec, "#{groups[c]}_commit") { s.commit } if alive[c]
    end
  end
end

SCENARIOS = {
  'two_conns' => ->(ctx, rec) { two_conns(ctx, rec) },
  'multi_statement' => lambda do |ctx, rec|
    s = ctx.session('transparent')
    N_VIOLATIONS.times do |i|
      ok, = step(rec, 'multi') { s.run_multi('multi', ctx.marker(i)) }
      step(rec, 'rollback') { s.rollback } unless ok
    end
    after(ctx, rec, s, %w[main ci])
  end,
  # Statements prepared and never executed: nothing ran, so nothing is refused or counted.
  'prepare_only' => lambda do |ctx, rec|
    s = ctx.session('main')
    step(rec, 'prepare_main_db') { s.prepare(%w[ci_ins ci_sel main_ins port]) }
    t = ctx.session('transparent')
    step(rec, 'prepare_transparent') { t.prepare(%w[join]) }
    after(ctx, rec, s, %w[main])
  end,
  'route_transparent' => ->(ctx, rec) { route(ctx, rec, 'transparent') },
  'route_main' => ->(ctx, rec) { route(ctx, rec, 'main') },
  'route_ci' => ->(ctx, rec) { route(ctx, rec, 'ci') },
  'cross_db_ci_main' => ->(ctx, rec) { cross_db(ctx, rec, 'ci', 'main') },
  'cross_db_main_ci' => ->(ctx, rec) { cross_db(ctx, rec, 'main', 'ci') },
  'cross_join' => lambda do |ctx, rec|
    s = ctx.session('transparent', %w[join ci_ins main_ins port])
    (N_VIOLATIONS / 2).times do
      txn(rec, s, '', [%w[join_txn join] + [0, 'ok']])
      step(rec, 'join_auto') { s.run('join', 0) }
    end
    after(ctx, rec, s, %w[main ci])
  end,
  'wrong_schema_ci' => lambda do |ctx, rec|
    s = ctx.session('ci', %w[main_sel ci_ins port])
    N_VIOLATIONS.times { txn(rec, s, '', [['main_sel', 'main_sel', 0, 'port']]) }
    after(ctx, rec, s, %w[ci])
  end,
  'wrong_schema_main' => lambda do |ctx, rec|
    s = ctx.session('main', %w[ci_sel main_ins port])
    N_VIOLATIONS.times { txn(rec, s, '', [['ci_sel', 'ci_sel', 0, 'port']]) }
    after(ctx, rec, s, %w[main])
  end
}.freeze

def run_scenario(mode, scenario)
  rec = Recorder.new
  fatal = nil
  started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  before = metrics
  ctx = Ctx.new(mode, scenario)
  begin
    Timeout.timeout(SCENARIO_TIMEOUT) { SCENARIOS.fetch(scenario).call(ctx, rec) }
  rescue Timeout::Error
    fatal = "scenario did not finish within #{SCENARIO_TIMEOUT}s"
  rescue StandardError => e
    fatal = "#{e.class}: #{e.message}"[0, 500]
  end
  ctx.close
  line = {
    driver: 'ruby', mode: mode, scenario: scenario, steps: rec.steps, errors: rec.errors,
    metrics: delta(before, metrics), fatal: fatal,
    secs: (Process.clock_gettime(Process::CLOCK_MONOTONIC) - started).round(3)
  }
  $stdout.puts(JSON.generate(line))
  $stdout.flush
end

ActiveRecord::Base.logger = nil
env('PGD_PLAN').split(';').each do |part|
  mode, scenarios = part.split('=')
  scenarios.split(',').each do |scenario|
    unless MODES.include?(mode) && SCENARIOS.key?(scenario)
      $stdout.puts(JSON.generate(driver: 'ruby', mode: mode, scenario: scenario, fatal: 'unknown mode or scenario'))
      next
    end
    run_scenario(mode, scenario)
  end
end
