// Prisma ORM over @prisma/adapter-pg (node-postgres underneath, so sslmode=require is
// verify-full): queries through the client and raw SQL, an interactive transaction that
// commits and one that throws, whose insert must be gone.
import { PrismaPg } from '@prisma/adapter-pg'
import { PrismaClient } from '@prisma/client'
import { check, equal, run, url } from './lib.mjs'

run(async () => {
  const prisma = new PrismaClient({ adapter: new PrismaPg({ connectionString: url }) })
  equal(await prisma.$queryRaw`select current_database()::text as db`, [{ db: 'clients' }], 'current_database()')
  await prisma.$executeRawUnsafe('drop table if exists prisma_items')
  await prisma.$executeRawUnsafe('create table prisma_items (id serial primary key, name text not null unique, qty int not null)')

  const created = await prisma.item.createMany({ data: [{ name: 'a', qty: 1 }, { name: 'b', qty: 2 }, { name: 'c', qty: 3 }] })
  equal(created.count, 3, 'createMany count')
  const names = (await prisma.item.findMany({ orderBy: { id: 'asc' } })).map((i) => i.name)
  equal(names, ['a', 'b', 'c'], 'findMany in id order')
  await prisma.item.update({ where: { name: 'b' }, data: { qty: { increment: 10 } } })
  equal((await prisma.item.aggregate({ _sum: { qty: true } }))._sum.qty, 16, 'sum of qty after the update')
  equal(await prisma.item.count({ where: { qty: { gt: 2 } } }), 2, 'items with qty > 2')

  const inside = await prisma.$transaction(async (tx) => {
    await tx.item.create({ data: { name: 'd', qty: 4 } })
    await tx.item.update({ where: { name: 'a' }, data: { qty: 0 } })
    return tx.item.count()
  })
  equal(inside, 4, 'count inside the committed transaction')
  equal(await prisma.item.count(), 4, 'count after the committed transaction')
  equal((await prisma.item.findUnique({ where: { name: 'a' } })).qty, 0, "a's qty after the commit")

  let thrown
  try {
    await prisma.$transaction(async (tx) => {
      await tx.item.create({ data: { name: 'ghost', qty: 99 } })
      equal(await tx.item.count(), 5, 'count inside the transaction that rolls back')
      throw new Error('roll this back')
    })
  } catch (e) {
    thrown = e
  }
  equal(thrown?.message, 'roll this back', 'what the rolled-back transaction threw')
  equal(await prisma.item.findUnique({ where: { name: 'ghost' } }), null, 'the rolled-back insert')
  equal(await prisma.item.count(), 4, 'count after the rollback')
  check((await prisma.$queryRaw`select 1 as one`).length === 1, 'a query after the rollback')
  await prisma.$disconnect()
})
