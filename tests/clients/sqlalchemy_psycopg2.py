"""SQLAlchemy 2 ORM on psycopg2, given the string as Berth prints it with the scheme naming
the driver: SQLAlchemy 2.1 reads postgresql:// as psycopg (3). Tables from the models,
sessions that commit and one that rolls back, on a pool of two connections."""

from sqlalchemy import Integer, String, create_engine, func, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from clientlib import URL, check, equal, run


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "sqla_psycopg2_items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String, unique=True)
    qty: Mapped[int] = mapped_column(Integer)


def main():
    engine = create_engine(URL.replace("postgresql://", "postgresql+psycopg2://", 1), pool_size=2, pool_pre_ping=True)
    check(engine.dialect.driver == "psycopg2", f"driver {engine.dialect.driver}")
    with engine.connect() as conn:
        equal(conn.execute(text("select current_database()")).scalar_one(), "clients", "current_database()")
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)

    with Session(engine) as session, session.begin():
        session.add_all([Item(name="a", qty=1), Item(name="b", qty=2), Item(name="c", qty=3)])
    with Session(engine) as session:
        equal(session.scalars(select(Item.name).order_by(Item.id)).all(), ["a", "b", "c"], "names in id order")
        session.get(Item, 2).qty += 10
        session.commit()
        equal(session.scalar(select(func.sum(Item.qty))), 16, "sum of qty after the update")

    with Session(engine) as session:
        session.add(Item(name="ghost", qty=99))
        session.flush()
        equal(session.scalar(select(func.count()).select_from(Item)), 4, "count inside the transaction")
        session.rollback()
        equal(session.scalar(select(func.count()).select_from(Item)), 3, "count after the rollback")
        equal(session.scalars(select(Item).where(Item.name == "ghost")).all(), [], "the rolled-back insert")
    engine.dispose()


run(main)
