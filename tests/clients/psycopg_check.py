"""psycopg 3 (psycopg[binary], libpq underneath): TLS in use, queries, a statement prepared
on the server and executed 10 times, executemany, a pipeline, COPY FROM STDIN, and
transaction blocks that commit and roll back."""

import psycopg
from clientlib import PORT, URL, check, equal, run

ADD_ONE = "select %s::int + 1"


def main():
    with psycopg.connect(URL) as conn:
        check(conn.info.pgconn.ssl_in_use, "the connection is not TLS")
        equal(conn.execute("select 1 + 1, current_database()").fetchone(), (2, "clients"), "select 1 + 1")
        conn.execute("drop table if exists psycopg_items")
        conn.execute("create table psycopg_items (id int primary key, name text not null)")
        conn.commit()

        for i in range(10):
            equal(conn.execute(ADD_ONE, (i,), prepare=True).fetchone(), (i + 1,), f"prepared execution {i + 1}")
        conn.commit()
        if PORT == "direct":
            runs = conn.execute(
                "select count(*), sum(generic_plans + custom_plans)::int from pg_prepared_statements"
                " where statement = 'select $1::int + 1'"
            ).fetchone()
            equal(runs, (1, 10), "the prepared statement on the server (statements, executions)")
            conn.commit()

        with conn.cursor() as cur:
            cur.executemany("insert into psycopg_items values (%s, %s)", [(i, f"item {i}") for i in range(1, 6)])
            with cur.copy("copy psycopg_items (id, name) from stdin") as copy:
                for i in range(6, 9):
                    copy.write_row((i, f"copied {i}"))
        conn.commit()
        equal(conn.execute("select count(*) from psycopg_items").fetchone(), (8,), "rows after executemany and COPY")

        with conn.pipeline():
            first = conn.execute("select name from psycopg_items where id = %s", (1,))
            last = conn.execute("select name from psycopg_items where id = %s", (8,))
            conn.execute("update psycopg_items set name = 'renamed' where id = 2")
        equal((first.fetchone(), last.fetchone()), (("item 1",), ("copied 8",)), "pipelined selects")
        conn.commit()

        with conn.transaction():
            conn.execute("insert into psycopg_items values (9, 'nine')")
        try:
            with conn.transaction():
                conn.execute("insert into psycopg_items values (10, 'ghost')")
                raise RuntimeError("roll this back")
        except RuntimeError:
            pass
        equal(
            conn.execute("select array_agg(id order by id) from psycopg_items").fetchone(),
            ([1, 2, 3, 4, 5, 6, 7, 8, 9],),
            "ids after a committed and a rolled-back transaction block",
        )
        equal(conn.execute("select name from psycopg_items where id = 2").fetchone(), ("renamed",), "pipelined update")


run(main)
