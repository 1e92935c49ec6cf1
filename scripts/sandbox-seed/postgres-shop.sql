-- scripts/sandbox-seed/postgres-shop.sql
-- The `shop` database for every PostgreSQL shard: a small relational schema,
-- an `all_types` table full of edge-case values, a view, a trigger, functions,
-- an enum type and a sequence-backed (bigserial) column.
--
-- scripts/sandbox runs this file with
--   psql -X -v ON_ERROR_STOP=1 -d postgres -v shard_offset=N -v shard_name=pg-K -f postgres-shop.sql
-- as the superuser `postgres`, with client_encoding UTF8.
--   :shard_offset  shard number * 1000000 (pg-0 -> 0, pg-1 -> 1000000, ...)
--   :shard_name    the shard name, e.g. 'pg-1'
-- customers/orders/order_lines/events_nopk keys are offset by :shard_offset;
-- all_types is identical on every shard (ids 1..20).
-- Everything is deterministic (no now()/random()); re-running drops and recreates `shop`.

\set ON_ERROR_STOP on

-- Logical replication slots pin their database; drop inactive ones on `shop`
-- so the database can be recreated.
SELECT pg_drop_replication_slot(slot_name)
  FROM pg_replication_slots
 WHERE database = 'shop' AND NOT active;

DROP DATABASE IF EXISTS shop WITH (FORCE);
CREATE DATABASE shop TEMPLATE template0 ENCODING 'UTF8';

\connect shop

SET client_min_messages = warning;
SET TIME ZONE 'UTC';

-- ---------------------------------------------------------------- schema

CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');

CREATE TABLE customers (
  id         bigint       PRIMARY KEY,
  email      varchar(191) NOT NULL UNIQUE,
  name       varchar(100) NOT NULL,
  country    char(2),
  created_at timestamptz(6) NOT NULL,
  updated_at timestamptz(6)
);

-- bigserial: the seed inserts explicit ids and then moves the sequence past them.
CREATE TABLE orders (
  id          bigserial     PRIMARY KEY,
  customer_id bigint        NOT NULL REFERENCES customers (id),
  status      text          NOT NULL DEFAULT 'new' CHECK (status IN ('new', 'paid', 'shipped', 'cancelled')),
  total       numeric(12,2) NOT NULL DEFAULT 0,
  created_at  timestamptz(6) NOT NULL
);
CREATE INDEX idx_orders_customer_id ON orders (customer_id);
CREATE INDEX idx_orders_created_at ON orders (created_at);

CREATE TABLE order_lines (
  order_id   bigint        NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
  line_no    integer       NOT NULL,
  sku        varchar(32)   NOT NULL,
  quantity   integer       NOT NULL,
  unit_price numeric(10,2) NOT NULL,
  PRIMARY KEY (order_id, line_no)
);

-- No primary key and no unique key at all (default REPLICA IDENTITY); contains fully duplicated rows.
CREATE TABLE events_nopk (
  happened_at timestamptz(6),
  kind        text,
  customer_id bigint,
  payload     jsonb
);

CREATE TABLE all_types (
  id            integer PRIMARY KEY,
  c_bool        boolean,
  c_smallint    smallint,
  c_int         integer,
  c_bigint      bigint,
  c_numeric     numeric(38,10),
  c_numeric_any numeric,
  c_real        real,
  c_double      double precision,
  c_char        char(10),
  c_varchar     varchar(255),
  c_text        text,
  c_bytea       bytea,
  c_date        date,
  c_time        time(6),
  c_timetz      timetz(6),
  c_timestamp   timestamp(6),
  c_timestamptz timestamptz(6),
  c_interval    interval,
  c_json        json,
  c_jsonb       jsonb,
  c_uuid        uuid,
  c_inet        inet,
  c_cidr        cidr,
  c_macaddr     macaddr,
  c_int_array   integer[],
  c_text_array  text[],
  c_mood        mood,
  c_bit         bit(8),
  c_varbit      bit varying(16)
);

-- ---------------------------------------------------------------- view, trigger, functions

CREATE VIEW customer_totals AS
SELECT c.id                      AS customer_id,
       c.name                    AS name,
       count(o.id)               AS order_count,
       coalesce(sum(o.total), 0) AS total_amount
  FROM customers c
  LEFT JOIN orders o ON o.customer_id = c.id
 GROUP BY c.id, c.name;

-- Keeps customers.updated_at at the newest order's created_at (deterministic: no now()).
CREATE FUNCTION orders_touch_customer() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  UPDATE customers
     SET updated_at = greatest(coalesce(updated_at, NEW.created_at), NEW.created_at)
   WHERE id = NEW.customer_id;
  RETURN NEW;
END;
$$;

CREATE TRIGGER trg_orders_touch_customer
AFTER INSERT ON orders
FOR EACH ROW EXECUTE FUNCTION orders_touch_customer();

CREATE FUNCTION customer_total(p_customer_id bigint) RETURNS numeric
LANGUAGE sql STABLE AS $$
  SELECT coalesce(sum(total), 0) FROM orders WHERE customer_id = p_customer_id
$$;

-- ---------------------------------------------------------------- data

-- 1000 customers; every 17th has no country.
INSERT INTO customers (id, email, name, country, created_at, updated_at)
SELECT :shard_offset + g,
       'customer' || g || '@' || :'shard_name' || '.example.com',
       'Customer ' || g || ' (' || :'shard_name' || ')',
       CASE WHEN g % 17 = 0 THEN NULL ELSE (ARRAY['US', 'DE', 'JP', 'BR', 'FR'])[1 + g % 5] END,
       timestamptz '2023-01-01 00:00:00+00' + g * interval '1 hour' + g * interval '1 microsecond',
       NULL
  FROM generate_series(1, 1000) AS g;

-- 5000 orders spread over the customers (the trigger fills customers.updated_at).
INSERT INTO orders (id, customer_id, status, total, created_at)
SELECT :shard_offset + g,
       :shard_offset + 1 + (g * 7) % 1000,
       (ARRAY['new', 'paid', 'shipped', 'cancelled'])[1 + g % 4],
       round(5 + (g % 500) * 3.17, 2),
       timestamptz '2024-01-01 00:00:00+00' + g * interval '10 minutes' + ((g * 7919) % 1000000) * interval '1 microsecond'
  FROM generate_series(1, 5000) AS g;
SELECT setval(pg_get_serial_sequence('orders', 'id'), (SELECT max(id) FROM orders));

-- 1..3 lines per order (10000 or 10001 lines, depending on the offset).
INSERT INTO order_lines (order_id, line_no, sku, quantity, unit_price)
SELECT o.id,
       l,
       'SKU-' || lpad(((o.id * 31 + l) % 10000)::text, 5, '0'),
       1 + (o.id + l) % 5,
       round(1 + ((o.id * 13 + l) % 1000) / 10.0, 2)
  FROM orders o
  CROSS JOIN generate_series(1, 3) AS l
 WHERE l <= 1 + o.id % 3;

-- 200 distinct events, then rows 1..50 once more and rows 1..10 a third time,
-- plus two rows that are entirely NULL: 262 rows, 60 of them duplicates.
INSERT INTO events_nopk (happened_at, kind, customer_id, payload)
SELECT timestamptz '2024-05-01 00:00:00+00' + g * interval '90 seconds',
       (ARRAY['login', 'view', 'logout'])[1 + g % 3],
       :shard_offset + 1 + g % 1000,
       jsonb_build_object('seq', g)
  FROM generate_series(1, 200) AS g;
INSERT INTO events_nopk SELECT * FROM events_nopk WHERE (payload->>'seq')::int <= 50;
INSERT INTO events_nopk SELECT DISTINCT * FROM events_nopk WHERE (payload->>'seq')::int <= 10;
INSERT INTO events_nopk VALUES (NULL, NULL, NULL, NULL), (NULL, NULL, NULL, NULL);

-- all_types: 20 rows of edge cases, identical on every shard.
-- 1: ordinary values in every column
INSERT INTO all_types VALUES (
  1, true, 1234, 12345678, 1234567890123,
  1234567890123456789012345678.0123456789, 3.14159265358979323846264338327950288419716939937510,
  3.5, 2.718281828459045,
  'abc', 'hello', 'some text', '\x0102030405060708',
  '2024-06-15', '12:34:56.789012', '12:34:56.789012+02', '2024-06-15 12:34:56.123456', '2024-06-15 12:34:56.654321+00',
  '1 year 2 mons 3 days 04:05:06.789012',
  '{"a": 1, "b": [true, false, null], "c": {"d": "e"}}', '{"a": 1, "b": [true, false, null], "c": {"d": "e"}}',
  '123e4567-e89b-12d3-a456-426614174000', '192.0.2.1', '192.0.2.0/24', '08:00:2b:01:02:03',
  '{1,2,3}', '{"a","b","c"}', 'ok', B'10101010', B'101');
-- 2: NULL in every nullable column
INSERT INTO all_types (id) VALUES (2);
-- 3: minimum values
INSERT INTO all_types (id, c_bool, c_smallint, c_int, c_bigint, c_numeric, c_numeric_any, c_real, c_double, c_bit, c_varbit,
                       c_date, c_time, c_timetz, c_timestamp, c_timestamptz, c_interval, c_uuid, c_inet, c_cidr, c_macaddr, c_mood)
VALUES (3, false, -32768, -2147483648, -9223372036854775808,
        -9999999999999999999999999999.9999999999, '-Infinity', -3.4028235e38, -1.7976931348623157e308, B'00000000', B'',
        '1000-01-01', '00:00:00', '00:00:00-15:59', '1000-01-01 00:00:00', '1000-01-01 00:00:00+00', '-178000000 years',
        '00000000-0000-0000-0000-000000000000', '0.0.0.0', '0.0.0.0/0', '00:00:00:00:00:00', 'sad');
-- 4: maximum values
INSERT INTO all_types (id, c_bool, c_smallint, c_int, c_bigint, c_numeric, c_numeric_any, c_real, c_double, c_bit, c_varbit,
                       c_date, c_time, c_timetz, c_timestamp, c_timestamptz, c_interval, c_uuid, c_inet, c_cidr, c_macaddr, c_mood)
VALUES (4, true, 32767, 2147483647, 9223372036854775807,
        9999999999999999999999999999.9999999999, 'Infinity', 3.4028235e38, 1.7976931348623157e308, B'11111111', B'1111111111111111',
        '9999-12-31', '24:00:00', '23:59:59.999999+15:59', '9999-12-31 23:59:59.999999', '9999-12-31 23:59:59.999999+00', '178000000 years',
        'ffffffff-ffff-ffff-ffff-ffffffffffff', 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', '2001:db8::/32', 'ff:ff:ff:ff:ff:ff', 'happy');
-- 5: unicode and emoji
INSERT INTO all_types (id, c_char, c_varchar, c_text, c_json, c_jsonb, c_text_array)
VALUES (5, '日本語', 'héllo wörld', '👍🏽🚀 emoji (skin tone modifier + 4-byte chars)',
        '{"greeting": "héllo wörld", "jp": "日本語", "emoji": "👍🏽🚀"}',
        '{"greeting": "héllo wörld", "jp": "日本語", "emoji": "👍🏽🚀"}',
        ARRAY['héllo wörld', '日本語', '👍🏽🚀']);
-- 6: control characters and backslashes in strings
INSERT INTO all_types (id, c_char, c_varchar, c_text, c_text_array)
VALUES (6, E'a\tb', E'tab\there', E'line1\nline2\r\nline3\rend', ARRAY[E'tab\there', E'new\nline', E'back\\slash']);
-- 7: NULL look-alikes and empty strings / arrays
INSERT INTO all_types (id, c_char, c_varchar, c_text, c_bytea, c_json, c_jsonb, c_int_array, c_text_array)
VALUES (7, '', E'\\N', 'NULL', '\x', 'null', 'null', '{}', ARRAY[NULL, 'NULL', '', E'\\N']::text[]);
-- 8: quotes and SQL-looking text
INSERT INTO all_types (id, c_char, c_varchar, c_text, c_text_array)
VALUES (8, '''"`', 'it''s "quoted" `ticked`', E'C:\\path\\to\\file; -- not a comment /* nor this */ % _ $1 ? :var',
        ARRAY['quo"te', 'comma,inside', '{braces}', 'sp ace', 'it''s']);
-- 9: binary data with NUL, tab, newline, CR, backslash, quotes and 0xFF
INSERT INTO all_types (id, c_bytea)
VALUES (9, '\x00090a0d5cff2722');
-- 10: tiny floats (subnormals) and the smallest numeric step
INSERT INTO all_types (id, c_real, c_double, c_numeric, c_numeric_any)
VALUES (10, 1e-45, 2.2250738585072014e-308, 0.0000000001, 5e-324);
-- 11: negative zero, inexact binary fractions, negative numerics
INSERT INTO all_types (id, c_real, c_double, c_numeric, c_numeric_any)
VALUES (11, '-0', '-0', -1234567890123456789012345678.0123456789, -0.000000000000000000000000000000001);
-- 12: 1 MiB text value and a 60000-byte bytea
INSERT INTO all_types (id, c_text, c_bytea)
VALUES (12, repeat('x', 1048576), decode(repeat('00ff0a0d5c', 12000), 'hex'));
-- 13: NaN and infinities
INSERT INTO all_types (id, c_real, c_double, c_numeric, c_numeric_any, c_date, c_timestamp, c_timestamptz)
VALUES (13, 'NaN', 'NaN', 'NaN', 'NaN', 'infinity', 'infinity', '-infinity');
INSERT INTO all_types (id, c_real, c_double, c_numeric_any, c_date, c_timestamp, c_timestamptz)
VALUES (14, 'Infinity', '-Infinity', 0.1, '-infinity', '-infinity', 'infinity');
-- 15: CHAR/VARCHAR with trailing spaces (char(n) pads to n, varchar keeps them)
INSERT INTO all_types (id, c_char, c_varchar, c_text)
VALUES (15, 'ab   ', 'ab   ', '   leading and trailing   ');
-- 16: JSON with escapes and nesting (json keeps the text verbatim, jsonb normalises it)
INSERT INTO all_types (id, c_json, c_jsonb, c_int_array)
VALUES (16, '{"s": "tab\tnl\nquote\"bs\\", "n": -1.5e300, "dup": 1, "dup": 2,  "big": 12345678901234567890}',
            '{"s": "tab\tnl\nquote\"bs\\", "n": -1.5e300, "dup": 1, "dup": 2,  "big": 12345678901234567890}',
        '{{1,2},{3,4}}');
-- 17: time zones and fractional-second edges (stored as UTC; the session time zone is UTC)
INSERT INTO all_types (id, c_date, c_time, c_timetz, c_timestamp, c_timestamptz, c_interval)
VALUES (17, '2024-02-29', '00:00:00.000001', '23:59:59.999999-08', '2024-02-29 23:59:59.999999',
        '2024-03-10 01:59:59.999999-08', '-1 days +02:03:04.000005');
INSERT INTO all_types (id, c_date, c_timestamp, c_timestamptz, c_interval, c_int_array)
VALUES (18, '0044-03-15 BC', '0044-03-15 12:00:00 BC', '2024-03-10 03:00:00.5+05:30', '0 seconds',
        ARRAY[NULL, -2147483648, 2147483647]);
-- 19..20: ordinary generated rows
INSERT INTO all_types (id, c_bool, c_int, c_bigint, c_numeric, c_double, c_varchar, c_timestamptz, c_jsonb, c_mood, c_uuid, c_inet)
SELECT 18 + g, g % 2 = 0, g * 1000, g * 1000000000000, g * 1.5, g / 3.0, 'row ' || (18 + g),
       timestamptz '2020-01-01 00:00:00+00' + g * interval '1 day', jsonb_build_object('row', 18 + g),
       (ARRAY['sad', 'ok', 'happy']::mood[])[g], ('00000000-0000-0000-0000-00000000000' || g)::uuid, ('192.0.2.' || g)::inet
  FROM generate_series(1, 2) AS g;

ANALYZE;
