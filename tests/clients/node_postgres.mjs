// node-postgres (`pg`): TLS verified (pg treats sslmode=require as verify-full), plain and
// parameterized queries, a transaction rolled back and one committed, and a named prepared
// statement executed 50 times: parsed once by name, then only bound, on both ports.
import pg from 'pg'
import { check, equal, port, run, url } from './lib.mjs'

const SUM = 'select $1::int + $2::int as sum'

run(async () => {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  const socket = client.connection.stream
  check(socket.encrypted === true, 'the connection is not TLS')
  check(socket.authorized === true, `the server certificate was not verified: ${socket.authorizationError}`)

  equal((await client.query('select 1 + 1 as two')).rows, [{ two: 2 }], 'select 1 + 1')
  equal((await client.query('select current_database() as db')).rows, [{ db: 'clients' }], 'current_database()')
  await client.query('drop table if exists pg_items')
  await client.query('create table pg_items (id int primary key, name text not null)')
  for (const [id, name] of [[1, 'one'], [2, 'two'], [3, 'three']]) {
    await client.query('insert into pg_items values ($1, $2)', [id, name])
  }
  const all = await client.query('select id, name from pg_items order by id')
  equal(all.rowCount, 3, 'rows after three inserts')
  equal(all.rows.map((r) => r.name), ['one', 'two', 'three'], 'names in id order')

  await client.query('begin')
  await client.query("insert into pg_items values (4, 'ghost')")
  await client.query('rollback')
  await client.query('begin')
  await client.query("insert into pg_items values (5, 'five')")
  await client.query('commit')
  const ids = (await client.query('select id from pg_items order by id')).rows.map((r) => r.id)
  equal(ids, [1, 2, 3, 5], 'ids after a rolled-back and a committed insert')

  // Count what node-postgres sends for add_one: a named statement is parsed once per
  // connection, then only bound by name.
  const sent = { parse: 0, bind: 0 }
  const connection = client.connection
  const parse = connection.parse.bind(connection)
  connection.parse = (message) => {
    if (message.name === 'add_one') sent.parse++
    return parse(message)
  }
  const bind = connection.bind.bind(connection)
  connection.bind = (message) => {
    if (message.statement === 'add_one') sent.bind++
    return bind(message)
  }
  for (let i = 0; i < 50; i++) {
    const r = await client.query({ name: 'add_one', text: SUM, values: [i, 1] })
    equal(r.rows, [{ sum: i + 1 }], `execution ${i + 1} of the named statement`)
  }
  equal(sent, { parse: 1, bind: 50 }, 'Parse and Bind messages of add_one sent for 50 executions')

  // And on the server: the direct port relays the client's own statement; the pooled port
  // keeps one shared statement per text on each server under its own name.
  if (port === 'direct') {
    const r = await client.query(
      "select count(*)::int as n, sum(generic_plans + custom_plans)::int as runs from pg_prepared_statements where name = 'add_one'",
    )
    equal(r.rows, [{ n: 1, runs: 50 }], 'add_one on the server (pg_prepared_statements)')
  } else {
    await client.query('begin')
    for (let i = 0; i < 3; i++) await client.query({ name: 'add_one', text: SUM, values: [i, 1] })
    const r = await client.query(
      'select name, generic_plans + custom_plans as runs from pg_prepared_statements where statement = $1',
      [SUM],
    )
    await client.query('commit')
    equal(r.rowCount, 1, 'statements with add_one\'s text on the server it ran on')
    check(r.rows[0].name.startsWith('berth_'), `not the pool's shared statement: ${r.rows[0].name}`)
    check(Number(r.rows[0].runs) >= 3, `the server ran it ${r.rows[0].runs} times, expected at least 3`)
    equal(sent, { parse: 1, bind: 53 }, 'Parse and Bind messages of add_one sent after the transaction')
  }
  await client.end()
})
