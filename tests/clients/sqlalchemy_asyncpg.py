"""SQLAlchemy 2 ORM on asyncpg (which prepares every statement by name). The string goes to
asyncpg.connect as Berth prints it, through async_creator: given as an engine URL,
SQLAlchemy hands its query (sslmode, sslrootcert) to asyncpg.connect as keyword arguments,
which asyncpg does not take."""

import asyncio

import asyncpg
from sqlalchemy import Integer, String, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from clientlib import URL, equal, run


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "sqla_asyncpg_items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String, unique=True)
    qty: Mapped[int] = mapped_column(Integer)


async def amain():
    engine = create_async_engine("postgresql+asyncpg://", async_creator=lambda: asyncpg.connect(URL), pool_size=2)
    async with engine.begin() as conn:
        equal((await conn.execute(text("select current_database()"))).scalar_one(), "clients", "current_database()")
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)

    sessions = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)
    async with sessions() as session, session.begin():
        session.add_all([Item(name="a", qty=1), Item(name="b", qty=2), Item(name="c", qty=3)])
    async with sessions() as session:
        names = (await session.scalars(select(Item.name).order_by(Item.id))).all()
        equal(names, ["a", "b", "c"], "names in id order")
        (await session.get(Item, 2)).qty += 10
        await session.commit()
        equal(await session.scalar(select(func.sum(Item.qty))), 16, "sum of qty after the update")
        for i in range(20):  # one statement again and again: prepared once per connection
            expected = sum(qty > i for qty in (1, 12, 3))
            equal(await session.scalar(select(func.count()).where(Item.qty > i)), expected, f"count of qty > {i}")
        await session.commit()

    async with sessions() as session:
        session.add(Item(name="ghost", qty=99))
        await session.flush()
        equal(await session.scalar(select(func.count()).select_from(Item)), 4, "count inside the transaction")
        await session.rollback()
        equal(await session.scalar(select(func.count()).select_from(Item)), 3, "count after the rollback")
        equal((await session.scalars(select(Item).where(Item.name == "ghost"))).all(), [], "the rolled-back insert")
    await engine.dispose()


run(lambda: asyncio.run(amain()))
