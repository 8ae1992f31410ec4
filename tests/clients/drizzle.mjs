// Drizzle ORM on postgres.js (which prepares every statement by name unless told not to):
// inserts with returning, filtered selects, an update, a committed transaction and one
// rolled back with tx.rollback(), whose insert must be gone.
import { TransactionRollbackError, asc, eq, gt, sql } from 'drizzle-orm'
import { integer, pgTable, serial, text } from 'drizzle-orm/pg-core'
import { drizzle } from 'drizzle-orm/postgres-js'
import postgres from 'postgres'
import { check, equal, run, url } from './lib.mjs'

const items = pgTable('drizzle_items', {
  id: serial('id').primaryKey(),
  name: text('name').notNull().unique(),
  qty: integer('qty').notNull(),
})

run(async () => {
  const client = postgres(url, { onnotice: () => {} })
  const db = drizzle(client)
  equal(await client`select current_database() as db`.then((r) => [...r]), [{ db: 'clients' }], 'current_database()')
  await db.execute(sql`drop table if exists drizzle_items`)
  await db.execute(sql`create table drizzle_items (id serial primary key, name text not null unique, qty int not null)`)

  const inserted = await db.insert(items).values([{ name: 'a', qty: 1 }, { name: 'b', qty: 2 }, { name: 'c', qty: 3 }]).returning({ id: items.id })
  equal(inserted.length, 3, 'rows returned by the insert')
  equal((await db.select().from(items).orderBy(asc(items.id))).map((i) => i.name), ['a', 'b', 'c'], 'select in id order')
  await db.update(items).set({ qty: sql`${items.qty} + 10` }).where(eq(items.name, 'b'))
  const [{ total }] = await db.select({ total: sql`sum(${items.qty})::int`.mapWith(Number) }).from(items)
  equal(total, 16, 'sum of qty after the update')
  // The same statement many times: postgres.js prepares it once by name and reuses it.
  for (let i = 0; i < 20; i++) {
    equal((await db.select({ id: items.id }).from(items).where(gt(items.qty, 2))).length, 2, `rows with qty > 2 (run ${i + 1})`)
  }

  await db.transaction(async (tx) => {
    await tx.insert(items).values({ name: 'd', qty: 4 })
    await tx.update(items).set({ qty: 0 }).where(eq(items.name, 'a'))
  })
  equal((await db.select().from(items)).length, 4, 'rows after the committed transaction')
  equal((await db.select({ qty: items.qty }).from(items).where(eq(items.name, 'a')))[0].qty, 0, "a's qty after the commit")

  let thrown
  try {
    await db.transaction(async (tx) => {
      await tx.insert(items).values({ name: 'ghost', qty: 99 })
      equal((await tx.select().from(items)).length, 5, 'rows inside the transaction that rolls back')
      tx.rollback()
    })
  } catch (e) {
    thrown = e
  }
  check(thrown instanceof TransactionRollbackError, `tx.rollback() threw ${thrown}, not a TransactionRollbackError`)
  equal(await db.select().from(items).where(eq(items.name, 'ghost')), [], 'the rolled-back insert')
  equal((await db.select().from(items)).length, 4, 'rows after the rollback')
  await client.end({ timeout: 5 })
})
