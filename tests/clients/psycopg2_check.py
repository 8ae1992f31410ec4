"""psycopg2 (psycopg2-binary, libpq underneath): TLS in use, parameterized queries,
executemany, a rollback and a commit, a server-side (named) cursor read in batches, and an
error that leaves the connection usable after a rollback."""

import psycopg2
import psycopg2.errors
from clientlib import URL, check, equal, fail, run


def main():
    conn = psycopg2.connect(URL)
    check(conn.info.ssl_in_use, "the connection is not TLS")
    cur = conn.cursor()
    cur.execute("select 1 + 1, current_database()")
    equal(cur.fetchone(), (2, "clients"), "select 1 + 1, current_database()")
    cur.execute("drop table if exists psycopg2_items")
    cur.execute("create table psycopg2_items (id int primary key, name text not null)")
    cur.executemany("insert into psycopg2_items values (%s, %s)", [(i, f"item {i}") for i in range(1, 11)])
    conn.commit()
    cur.execute("select count(*), max(name) from psycopg2_items")
    equal(cur.fetchone(), (10, "item 9"), "count and max after executemany")

    cur.execute("insert into psycopg2_items values (11, 'ghost')")
    conn.rollback()
    cur.execute("select count(*) from psycopg2_items where id = 11")
    equal(cur.fetchone(), (0,), "the rolled-back insert")
    cur.execute("insert into psycopg2_items values (12, 'twelve')")
    conn.commit()

    with conn.cursor(name="batches") as named:  # DECLARE ... CURSOR inside a transaction
        named.itersize = 3
        named.execute("select id from psycopg2_items order by id")
        ids = [row[0] for row in named]
    conn.commit()
    equal(ids, list(range(1, 11)) + [12], "ids read through a server-side cursor")

    try:
        cur.execute("select * from no_such_table")
    except psycopg2.errors.UndefinedTable:
        pass
    else:
        fail("selecting from a missing table did not fail")
    conn.rollback()
    cur.execute("select %s::text || %s::text", ("still ", "usable"))
    equal(cur.fetchone(), ("still usable",), "a query after the error")
    conn.close()


run(main)
