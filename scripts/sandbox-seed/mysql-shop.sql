-- scripts/sandbox-seed/mysql-shop.sql
-- The `shop` database for every MariaDB shard: a small relational schema plus
-- an `all_types` table full of edge-case values, a view, a trigger, a stored
-- procedure and a stored function.
--
-- scripts/sandbox feeds this file to the `mariadb` client (batch mode, aborts
-- on the first error, --default-character-set=utf8mb4) after setting:
--   @shard_offset  BIGINT   shard number * 1000000 (mysql-0 -> 0, mysql-1 -> 1000000, ...)
--   @shard_name    VARCHAR  the shard name, e.g. 'mysql-1'
-- customers/orders/order_lines/events_nopk keys are offset by @shard_offset;
-- all_types is identical on every shard (ids 1..20).
-- Everything is deterministic (no NOW()/RAND()); re-running drops and recreates `shop`.

DROP DATABASE IF EXISTS shop;
CREATE DATABASE shop CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
USE shop;

-- ---------------------------------------------------------------- schema

CREATE TABLE customers (
  id         BIGINT       NOT NULL PRIMARY KEY,
  email      VARCHAR(191) NOT NULL,
  name       VARCHAR(100) NOT NULL,
  country    CHAR(2)      NULL,
  created_at DATETIME(6)  NOT NULL,
  updated_at DATETIME(6)  NULL,
  UNIQUE KEY uq_customers_email (email)
) ENGINE=InnoDB;

-- AUTO_INCREMENT: the seed inserts explicit ids, place_order() relies on the counter.
CREATE TABLE orders (
  id          BIGINT        NOT NULL AUTO_INCREMENT PRIMARY KEY,
  customer_id BIGINT        NOT NULL,
  status      ENUM('new','paid','shipped','cancelled') NOT NULL DEFAULT 'new',
  total       DECIMAL(12,2) NOT NULL DEFAULT 0.00,
  created_at  DATETIME(6)   NOT NULL,
  KEY idx_orders_customer_id (customer_id),
  KEY idx_orders_created_at (created_at),
  CONSTRAINT fk_orders_customer FOREIGN KEY (customer_id) REFERENCES customers (id)
) ENGINE=InnoDB;

CREATE TABLE order_lines (
  order_id   BIGINT        NOT NULL,
  line_no    INT           NOT NULL,
  sku        VARCHAR(32)   NOT NULL,
  quantity   INT           NOT NULL,
  unit_price DECIMAL(10,2) NOT NULL,
  PRIMARY KEY (order_id, line_no),
  CONSTRAINT fk_order_lines_order FOREIGN KEY (order_id) REFERENCES orders (id) ON DELETE CASCADE
) ENGINE=InnoDB;

-- No primary key and no unique key at all; contains fully duplicated rows.
CREATE TABLE events_nopk (
  happened_at DATETIME(6)  NULL,
  kind        VARCHAR(32)  NULL,
  customer_id BIGINT       NULL,
  payload     VARCHAR(255) NULL
) ENGINE=InnoDB;

CREATE TABLE all_types (
  id              INT NOT NULL PRIMARY KEY,
  c_bool          BOOLEAN NULL,
  c_tinyint       TINYINT NULL,
  c_tinyint_u     TINYINT UNSIGNED NULL,
  c_smallint      SMALLINT NULL,
  c_mediumint     MEDIUMINT NULL,
  c_int           INT NULL,
  c_int_u         INT UNSIGNED NULL,
  c_bigint        BIGINT NULL,
  c_bigint_u      BIGINT UNSIGNED NULL,
  c_decimal       DECIMAL(38,10) NULL,
  c_decimal_small DECIMAL(5,2) NULL,
  c_float         FLOAT NULL,
  c_double        DOUBLE NULL,
  c_bit           BIT(8) NULL,
  c_char          CHAR(10) NULL,
  c_varchar       VARCHAR(255) NULL,
  c_text          TEXT NULL,
  c_longtext      LONGTEXT NULL,
  c_binary        BINARY(8) NULL,
  c_varbinary     VARBINARY(255) NULL,
  c_blob          BLOB NULL,
  c_date          DATE NULL,
  c_datetime      DATETIME(6) NULL,
  c_timestamp     TIMESTAMP(6) NULL,
  c_time          TIME(6) NULL,
  c_year          YEAR NULL,
  c_json          JSON NULL,
  c_enum          ENUM('small','medium','large') NULL,
  c_set           SET('red','green','blue') NULL,
  c_uuid          UUID NULL,
  c_inet6         INET6 NULL
) ENGINE=InnoDB;

-- ---------------------------------------------------------------- view, trigger, routines

CREATE VIEW customer_totals AS
SELECT c.id                      AS customer_id,
       c.name                    AS name,
       COUNT(o.id)               AS order_count,
       COALESCE(SUM(o.total), 0) AS total_amount
  FROM customers c
  LEFT JOIN orders o ON o.customer_id = c.id
 GROUP BY c.id, c.name;

DELIMITER //

-- Keeps customers.updated_at at the newest order's created_at (deterministic: no NOW()).
CREATE TRIGGER trg_orders_touch_customer
AFTER INSERT ON orders
FOR EACH ROW
BEGIN
  UPDATE customers
     SET updated_at = GREATEST(COALESCE(updated_at, NEW.created_at), NEW.created_at)
   WHERE id = NEW.customer_id;
END//

CREATE PROCEDURE place_order(IN p_customer_id BIGINT, IN p_total DECIMAL(12,2), OUT p_order_id BIGINT)
MODIFIES SQL DATA
BEGIN
  INSERT INTO orders (customer_id, status, total, created_at)
  VALUES (p_customer_id, 'new', p_total, UTC_TIMESTAMP(6));
  SET p_order_id = LAST_INSERT_ID();
END//

CREATE FUNCTION customer_total(p_customer_id BIGINT) RETURNS DECIMAL(14,2)
READS SQL DATA
BEGIN
  RETURN (SELECT COALESCE(SUM(total), 0) FROM orders WHERE customer_id = p_customer_id);
END//

DELIMITER ;

-- ---------------------------------------------------------------- data

-- 1000 customers; every 17th has no country.
INSERT INTO customers (id, email, name, country, created_at, updated_at)
SELECT @shard_offset + seq,
       CONCAT('customer', seq, '@', @shard_name, '.example.com'),
       CONCAT('Customer ', seq, ' (', @shard_name, ')'),
       IF(seq % 17 = 0, NULL, ELT(1 + seq % 5, 'US', 'DE', 'JP', 'BR', 'FR')),
       TIMESTAMP'2023-01-01 00:00:00' + INTERVAL seq * 3600 SECOND + INTERVAL seq MICROSECOND,
       NULL
  FROM seq_1_to_1000;

-- 5000 orders spread over the customers (the trigger fills customers.updated_at).
INSERT INTO orders (id, customer_id, status, total, created_at)
SELECT @shard_offset + seq,
       @shard_offset + 1 + (seq * 7) % 1000,
       ELT(1 + seq % 4, 'new', 'paid', 'shipped', 'cancelled'),
       ROUND(5 + (seq % 500) * 3.17, 2),
       TIMESTAMP'2024-01-01 00:00:00' + INTERVAL seq * 600 SECOND + INTERVAL (seq * 7919) % 1000000 MICROSECOND
  FROM seq_1_to_5000;

-- 1..3 lines per order (10000 or 10001 lines, depending on the offset).
INSERT INTO order_lines (order_id, line_no, sku, quantity, unit_price)
SELECT o.id,
       l.seq,
       CONCAT('SKU-', LPAD((o.id * 31 + l.seq) % 10000, 5, '0')),
       1 + (o.id + l.seq) % 5,
       ROUND(1 + ((o.id * 13 + l.seq) % 1000) / 10, 2)
  FROM orders o
  JOIN seq_1_to_3 l ON l.seq <= 1 + o.id % 3;

-- 200 distinct events, then rows 1..50 once more and rows 1..10 a third time,
-- plus two rows that are entirely NULL: 262 rows, 60 of them duplicates.
INSERT INTO events_nopk (happened_at, kind, customer_id, payload)
SELECT TIMESTAMP'2024-05-01 00:00:00' + INTERVAL seq * 90 SECOND,
       ELT(1 + seq % 3, 'login', 'view', 'logout'),
       @shard_offset + 1 + seq % 1000,
       CONCAT('{"seq":', seq, '}')
  FROM seq_1_to_200;
INSERT INTO events_nopk SELECT * FROM events_nopk WHERE payload IN (SELECT CONCAT('{"seq":', seq, '}') FROM seq_1_to_50);
INSERT INTO events_nopk SELECT DISTINCT * FROM events_nopk WHERE payload IN (SELECT CONCAT('{"seq":', seq, '}') FROM seq_1_to_10);
INSERT INTO events_nopk VALUES (NULL, NULL, NULL, NULL), (NULL, NULL, NULL, NULL);

-- all_types: 20 rows of edge cases, identical on every shard.
-- 1: ordinary values in every column
INSERT INTO all_types VALUES (
  1, TRUE, 42, 200, 1234, 123456, 12345678, 3000000000, 1234567890123, 12345678901234567890,
  1234567890123456789012345678.0123456789, 123.45, 3.5, 2.718281828459045, b'10101010',
  'abc', 'hello', 'some text', 'some longer text', X'0102030405060708', X'DEADBEEF', X'CAFEBABE',
  '2024-06-15', '2024-06-15 12:34:56.123456', '2024-06-15 12:34:56.654321', '12:34:56.789012', 2024,
  '{"a": 1, "b": [true, false, null], "c": {"d": "e"}}', 'medium', 'red,blue',
  '123e4567-e89b-12d3-a456-426614174000', '2001:db8::ff00:42:8329');
-- 2: NULL in every nullable column
INSERT INTO all_types (id) VALUES (2);
-- 3: minimum values
INSERT INTO all_types (id, c_bool, c_tinyint, c_tinyint_u, c_smallint, c_mediumint, c_int, c_int_u, c_bigint, c_bigint_u,
                       c_decimal, c_decimal_small, c_float, c_double, c_bit, c_date, c_datetime, c_timestamp, c_time, c_year,
                       c_uuid, c_inet6)
VALUES (3, FALSE, -128, 0, -32768, -8388608, -2147483648, 0, -9223372036854775808, 0,
        -9999999999999999999999999999.9999999999, -999.99, -3.40282e38, -1.7976931348623157e308, b'00000000',
        '1000-01-01', '1000-01-01 00:00:00.000000', '1970-01-01 00:00:01.000000', '-838:59:59.999999', 1901,
        '00000000-0000-0000-0000-000000000000', '::');
-- 4: maximum values
INSERT INTO all_types (id, c_bool, c_tinyint, c_tinyint_u, c_smallint, c_mediumint, c_int, c_int_u, c_bigint, c_bigint_u,
                       c_decimal, c_decimal_small, c_float, c_double, c_bit, c_date, c_datetime, c_timestamp, c_time, c_year,
                       c_uuid, c_inet6)
VALUES (4, TRUE, 127, 255, 32767, 8388607, 2147483647, 4294967295, 9223372036854775807, 18446744073709551615,
        9999999999999999999999999999.9999999999, 999.99, 3.40282e38, 1.7976931348623157e308, b'11111111',
        '9999-12-31', '9999-12-31 23:59:59.999999', '2038-01-19 03:14:07.999999', '838:59:59.999999', 2155,
        'ffffffff-ffff-ffff-ffff-ffffffffffff', 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff');
-- 5: unicode and emoji
INSERT INTO all_types (id, c_char, c_varchar, c_text, c_longtext, c_json)
VALUES (5, '日本語', 'héllo wörld', '日本語', '👍🏽🚀 emoji (skin tone modifier + 4-byte chars)',
        '{"greeting": "héllo wörld", "jp": "日本語", "emoji": "👍🏽🚀"}');
-- 6: control characters and backslashes in strings
INSERT INTO all_types (id, c_char, c_varchar, c_text, c_longtext)
VALUES (6, 'a\tb', 'tab\there', 'line1\nline2\r\nline3\rend', 'back\\slash \\\\ double \\n not-a-newline');
-- 7: NULL look-alikes and empty strings
INSERT INTO all_types (id, c_char, c_varchar, c_text, c_longtext, c_varbinary, c_blob, c_json, c_set)
VALUES (7, '', '\\N', 'NULL', 'null', X'', X'', 'null', '');
-- 8: quotes and SQL-looking text
INSERT INTO all_types (id, c_char, c_varchar, c_text, c_longtext)
VALUES (8, '\'"`', 'it\'s "quoted" `ticked`', 'C:\\path\\to\\file; -- not a comment /* nor this */ % _ $1 ?', 'DROP TABLE all_types; --');
-- 9: binary data with NUL, tab, newline, CR, backslash, quotes and 0xFF
INSERT INTO all_types (id, c_binary, c_varbinary, c_blob)
VALUES (9, X'00090A0D5CFF2722', X'00090A0D5C27225CFF00', UNHEX('FF00FE01090A0D5C'));
-- 10: tiny floats (subnormals)
INSERT INTO all_types (id, c_float, c_double, c_decimal, c_decimal_small)
VALUES (10, 1e-45, 2.2250738585072014e-308, 0.0000000001, 0.01);
-- 11: negative zero (MariaDB normalises it to 0), inexact binary fractions, negative decimals
INSERT INTO all_types (id, c_float, c_double, c_decimal, c_decimal_small)
VALUES (11, -0.0, 0.1, -1234567890123456789012345678.0123456789, -0.01);
-- 12: 1 MiB text value and a 60000-byte blob
INSERT INTO all_types (id, c_longtext, c_blob)
VALUES (12, REPEAT('x', 1048576), REPEAT(X'00FF0A0D5C', 12000));
-- 13: JSON with escapes and nesting
INSERT INTO all_types (id, c_json, c_enum, c_set)
VALUES (13, '{"s": "tab\\tnl\\nquote\\"bs\\\\", "n": -1.5e300, "big": 12345678901234567890, "nested": {"a": [1, [2, [3]]]}}', 'small', 'red,green,blue');
-- 14: JSON scalars and arrays
INSERT INTO all_types (id, c_json, c_enum, c_set)
VALUES (14, '[1, "two", 3.0, null, {}]', 'large', 'green');
-- 15: CHAR/VARCHAR with trailing spaces (MariaDB strips them from CHAR on read, keeps them in VARCHAR)
INSERT INTO all_types (id, c_char, c_varchar, c_text)
VALUES (15, 'ab   ', 'ab   ', '   leading and trailing   ');
-- 16: bits and booleans
INSERT INTO all_types (id, c_bool, c_bit, c_tinyint)
VALUES (16, FALSE, b'00000001', 0);
-- 17: fractional seconds edges
INSERT INTO all_types (id, c_date, c_datetime, c_timestamp, c_time, c_year)
VALUES (17, '2024-02-29', '2024-02-29 23:59:59.999999', '2024-03-10 09:59:59.999999', '00:00:00.000001', 2000);
-- 18..20: ordinary generated rows
INSERT INTO all_types (id, c_bool, c_int, c_bigint, c_decimal, c_double, c_varchar, c_datetime, c_json, c_enum, c_set, c_uuid, c_inet6)
SELECT 17 + seq, seq % 2, seq * 1000, seq * 1000000000000, seq * 1.5, seq / 3, CONCAT('row ', 17 + seq),
       TIMESTAMP'2020-01-01 00:00:00' + INTERVAL seq DAY, CONCAT('{"row": ', 17 + seq, '}'),
       ELT(seq, 'small', 'medium', 'large'), ELT(seq, 'red', 'green', 'blue'),
       CONCAT('00000000-0000-0000-0000-00000000000', seq), CONCAT('::ffff:192.0.2.', seq)
  FROM seq_1_to_3;

ANALYZE TABLE customers, orders, order_lines, events_nopk, all_types;
